import math

import pytest
import torch
import torch.nn.functional as F

from losses import cross_entropy, distillation_loss, kd_only_loss, student_loss


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
    per_example = [kd_only_loss(s[i:i + 1], t[i:i + 1], 2.0) for i in range(4)]
    assert kd_only_loss(s, t, 2.0).item() == pytest.approx(sum(per_example).item() / 4, rel=1e-5)


def test_no_gradient_reaches_the_teacher_logits():
    s = torch.randn(8, 10, requires_grad=True)
    t = torch.randn(8, 10, requires_grad=True)
    y = torch.randint(0, 10, (8,))
    (distillation_loss(s, t, y, 4.0, 0.5) + kd_only_loss(s, t, 2.0)).backward()
    assert t.grad is None and s.grad is not None and s.grad.abs().sum() > 0


def test_stable_for_extreme_logits():
    s, t = torch.tensor([[1e4, -1e4, 0.0]]), torch.tensor([[-1e4, 1e4, 0.0]])
    assert math.isfinite(kd_only_loss(s, t, 1.0).item())


@pytest.mark.parametrize("bad", [{"temperature": 0.0}, {"temperature": -1.0},
                                 {"alpha": -0.1}, {"alpha": 1.5}])
def test_bad_hyperparameters_are_rejected(bad):
    args = {"temperature": 4.0, "alpha": 0.5, **bad}
    s, t, y = torch.randn(2, 10), torch.randn(2, 10), torch.randint(0, 10, (2,))
    with pytest.raises(ValueError, match="temperature|alpha"):
        distillation_loss(s, t, y, **args)
    if "temperature" in bad:
        with pytest.raises(ValueError, match="temperature"):
            kd_only_loss(s, t, bad["temperature"])


def test_student_losses_log_their_parts_and_use_the_same_batch():
    seen = []

    def teacher(images):
        seen.append(images)
        return images.flatten(1)[:, :10] * 5

    images, labels = torch.rand(4, 3, 32, 32), torch.randint(0, 10, (4,))
    logits = torch.randn(4, 10)
    out = student_loss("kd+ce", teacher, 4.0, 0.75)(logits, labels, images)
    assert seen[0] is images
    expected = 0.75 * out["kd"].item() + 0.25 * out["ce"].item()
    assert out["loss"].item() == pytest.approx(expected, rel=1e-5)
    kd = student_loss("kd", teacher, 4.0, 0.75)(logits, labels, images)
    assert torch.allclose(kd["loss"], kd["kd"])
    assert student_loss("ce") is cross_entropy
