import math

import pytest
import torch
import torch.nn.functional as F

from losses import (
    dist_loss,
    distillation_loss,
    dkd_loss,
    kd_only_loss,
    standardize_logits,
)


def reference_kd(student, teacher, T):
    """T² · mean over the batch of sum_c p_t (log p_t - log p_s), in float64, written out."""
    total = 0.0
    for s_row, t_row in zip(student.double().tolist(), teacher.double().tolist()):
        zs, zt = [v / T for v in s_row], [v / T for v in t_row]
        log_zs = math.log(sum(math.exp(v - max(zs)) for v in zs)) + max(zs)
        log_zt = math.log(sum(math.exp(v - max(zt)) for v in zt)) + max(zt)
        total += sum(math.exp(t - log_zt) * ((t - log_zt) - (s - log_zs)) for s, t in zip(zs, zt))
    return T * T * total / len(student)


def reference_ce(logits, labels):
    total = 0.0
    for row, label in zip(logits.double().tolist(), labels.tolist()):
        m = max(row)
        total += m + math.log(sum(math.exp(v - m) for v in row)) - row[label]
    return total / len(labels)


@pytest.mark.parametrize("T", [1.0, 2.0, 4.0, 8.0])
def test_kd_only_loss_matches_the_reference(T):
    g = torch.Generator().manual_seed(int(T))
    s, t = 3 * torch.randn(16, 10, generator=g), 3 * torch.randn(16, 10, generator=g)
    assert kd_only_loss(s, t, T).item() == pytest.approx(reference_kd(s, t, T), rel=1e-5)


@pytest.mark.parametrize("T, alpha", [(4.0, 0.9), (2.0, 0.5), (1.0, 1.0), (8.0, 0.1)])
def test_distillation_loss_matches_the_reference(T, alpha):
    g = torch.Generator().manual_seed(7)
    s, t = 3 * torch.randn(16, 10, generator=g), 3 * torch.randn(16, 10, generator=g)
    y = torch.randint(0, 10, (16,), generator=g)
    expected = alpha * reference_kd(s, t, T) + (1 - alpha) * reference_ce(s, y)
    assert distillation_loss(s, t, y, T, alpha).item() == pytest.approx(expected, rel=1e-5)


def test_kd_term_is_zero_for_identical_logits():
    logits = torch.randn(8, 10)
    assert kd_only_loss(logits, logits.clone(), 4.0).item() == pytest.approx(0.0, abs=1e-6)


def test_alpha_zero_is_plain_cross_entropy():
    s, t, y = torch.randn(8, 10), torch.randn(8, 10), torch.randint(0, 10, (8,))
    assert torch.allclose(distillation_loss(s, t, y, 4.0, 0.0), F.cross_entropy(s, y))


def test_kl_is_averaged_over_the_batch_not_the_classes():
    s, t = torch.randn(4, 10), torch.randn(4, 10)
    # each row's KL summed over its classes, by the written-out reference (a check against
    # kd_only_loss itself row by row would pass with reduction="mean": both sides / classes)
    per_example = [reference_kd(s[i:i + 1], t[i:i + 1], 2.0) for i in range(4)]
    assert kd_only_loss(s, t, 2.0).item() == pytest.approx(sum(per_example) / 4, rel=1e-5)


def test_no_gradient_reaches_the_teacher_logits():
    s = torch.randn(8, 10, requires_grad=True)
    t = torch.randn(8, 10, requires_grad=True)
    y = torch.randint(0, 10, (8,))
    (distillation_loss(s, t, y, 4.0, 0.5) + kd_only_loss(s, t, 2.0)).backward()
    assert t.grad is None and s.grad is not None and s.grad.abs().sum() > 0


def test_stable_for_extreme_logits():
    """Where softmax underflows to 0 (a log of it would be -inf), the loss is still the KL
    of the exact distributions: the teacher's class 1 has log-probability 0 under it and
    -2e4 under the student."""
    s, t = torch.tensor([[1e4, -1e4, 0.0]]), torch.tensor([[-1e4, 1e4, 0.0]])
    assert kd_only_loss(s, t, 1.0).item() == pytest.approx(2e4, rel=1e-6)


@pytest.mark.parametrize("bad", [{"temperature": 0.0}, {"temperature": -1.0},
                                 {"alpha": -0.1}, {"alpha": 1.5}])
def test_bad_hyperparameters_are_rejected(bad):
    args = {"temperature": 4.0, "alpha": 0.5, **bad}
    s, t, y = torch.randn(2, 10), torch.randn(2, 10), torch.randint(0, 10, (2,))
    with pytest.raises(ValueError, match=next(iter(bad))):  # the bad one named
        distillation_loss(s, t, y, **args)
    if "temperature" in bad:
        with pytest.raises(ValueError, match="temperature"):
            kd_only_loss(s, t, bad["temperature"])


def softmax64(row, T):
    z = [v / T for v in row]
    m = max(z)
    e = [math.exp(v - m) for v in z]
    return [v / sum(e) for v in e]


def kl64(p, q):
    return sum(a * math.log(a / b) for a, b in zip(p, q))


def reference_dkd(student, teacher, labels, T, alpha, beta):
    """Zhao et al. (2022), eqs. 1-5 written out in float64: binary (target / rest) and
    non-target distributions, their KL divergences, weighted and scaled by T²."""
    total = 0.0
    for s_row, t_row, y in zip(student.double().tolist(), teacher.double().tolist(),
                               labels.tolist()):
        ps, pt = softmax64(s_row, T), softmax64(t_row, T)
        tckd = kl64([pt[y], 1 - pt[y]], [ps[y], 1 - ps[y]])
        rest = [i for i in range(len(ps)) if i != y]
        nckd = kl64([pt[i] / (1 - pt[y]) for i in rest], [ps[i] / (1 - ps[y]) for i in rest])
        total += alpha * tckd + beta * nckd
    return T * T * total / len(labels)


def pearson64(a, b):
    ma, mb = sum(a) / len(a), sum(b) / len(b)
    cov = sum((x - ma) * (y - mb) for x, y in zip(a, b))
    return cov / math.sqrt(sum((x - ma) ** 2 for x in a) * sum((y - mb) ** 2 for y in b))


def reference_dist(student, teacher, T, beta, gamma):
    """Huang et al. (2022), eqs. 6-9 in float64: 1 - Pearson correlation of the softened
    probabilities, per image (rows) and per class (columns), averaged, scaled by T²."""
    ys = [softmax64(row, T) for row in student.double().tolist()]
    yt = [softmax64(row, T) for row in teacher.double().tolist()]
    inter = sum(1 - pearson64(a, b) for a, b in zip(ys, yt)) / len(ys)
    columns = range(len(ys[0]))
    intra = sum(1 - pearson64([r[j] for r in ys], [r[j] for r in yt]) for j in columns)
    return T * T * (beta * inter + gamma * intra / len(ys[0]))


def random_logits(seed, n=16, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    return (scale * torch.randn(n, 10, generator=g), scale * torch.randn(n, 10, generator=g),
            torch.randint(0, 10, (n,), generator=g))


@pytest.mark.parametrize("T, alpha, beta", [(4.0, 1.0, 8.0), (1.0, 1.0, 1.0), (2.0, 0.5, 2.0)])
def test_dkd_loss_matches_the_papers_formula(T, alpha, beta):
    s, t, y = random_logits(int(T * 10 + beta))
    assert dkd_loss(s, t, y, T, alpha, beta).item() == pytest.approx(
        reference_dkd(s, t, y, T, alpha, beta), rel=1e-5)


def test_dkd_with_kd_weights_is_kd():
    """KD = TCKD + (1 - p_target of the teacher) · NCKD, per image (the paper's eq. 5)."""
    s, t, y = random_logits(3, n=6)
    for i in range(6):
        weight = 1 - F.softmax(t[i] / 4.0, 0)[y[i]].item()
        dkd = dkd_loss(s[i:i + 1], t[i:i + 1], y[i:i + 1], 4.0, 1.0, weight)
        assert dkd.item() == pytest.approx(kd_only_loss(s[i:i + 1], t[i:i + 1], 4.0).item(),
                                           rel=1e-4)


@pytest.mark.parametrize("T, beta, gamma", [(4.0, 1.0, 1.0), (1.0, 2.0, 2.0), (2.0, 1.0, 0.5)])
def test_dist_loss_matches_the_papers_formula(T, beta, gamma):
    s, t, _ = random_logits(int(T * 10 + gamma * 2))
    assert dist_loss(s, t, T, beta, gamma).item() == pytest.approx(
        reference_dist(s, t, T, beta, gamma), rel=1e-5)


def test_standardize_logits_is_a_per_sample_z_score():
    s, _, _ = random_logits(5)
    z = standardize_logits(s)
    for row, out in zip(s.double().tolist(), z.tolist()):
        mean = sum(row) / len(row)
        std = math.sqrt(sum((v - mean) ** 2 for v in row) / len(row))
        assert out == pytest.approx([(v - mean) / std for v in row], rel=1e-4, abs=1e-5)
    # what it is for: the teacher's scale and shift per image no longer matter
    assert torch.allclose(standardize_logits(3 * s + 7), z, atol=1e-5)


def test_new_losses_vanish_for_identical_logits_and_leave_the_teacher_alone():
    s, t, y = random_logits(9)
    assert dkd_loss(s, s.clone(), y, 4.0, 1.0, 8.0).item() == pytest.approx(0, abs=1e-5)
    assert dist_loss(s, s.clone(), 4.0, 1.0, 1.0).item() == pytest.approx(0, abs=1e-5)
    for loss in (lambda s, t: dkd_loss(s, t, y, 4.0, 1.0, 8.0),
                 lambda s, t: dist_loss(s, t, 4.0, 1.0, 1.0)):
        student, teacher = s.clone().requires_grad_(), t.clone().requires_grad_()
        loss(student, teacher).backward()
        assert teacher.grad is None and torch.isfinite(student.grad).all()
        assert student.grad.abs().sum() > 0
