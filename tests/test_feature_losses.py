"""Feature-distillation losses (losses.py, issue 25) against float64 references written out
from the papers' formulas with explicit loops. Each test's docstring names a mutation of
losses.py it was seen failing under."""
import math

import pytest
import torch

from losses import (
    AttentionFusion,
    ContrastMemory,
    Embed,
    HintRegressor,
    ReviewFusion,
    at_loss,
    hcl_loss,
    hint_loss,
    nce_loss,
)


def maps(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def ref_pool(image, size):
    """Adaptive average pooling of one image ([C][H][W] lists) to size x size: bin i covers
    rows floor(i·H/size) to ceil((i+1)·H/size) - 1, likewise the columns."""
    height, width = len(image[0]), len(image[0][0])

    def bin_(i, n):
        return range(math.floor(i * n / size), math.ceil((i + 1) * n / size))

    return [[[sum(channel[r][c] for r in bin_(i, height) for c in bin_(j, width))
              / (len(bin_(i, height)) * len(bin_(j, width)))
              for j in range(size)] for i in range(size)] for channel in image]


def ref_attention(image, p):
    """The list over positions of mean_c f^p, divided by its L2 norm."""
    flat = [[v for row in channel for v in row] for channel in image]
    a = [sum(ch[k] ** p for ch in flat) / len(flat) for k in range(len(flat[0]))]
    norm = math.sqrt(sum(v * v for v in a))
    return [v / norm for v in a]


def ref_at(f_s, f_t, p):
    total, count = 0.0, 0
    for s, t in zip(f_s.double().tolist(), f_t.double().tolist()):
        size = min(len(s[0]), len(t[0]))
        s = ref_pool(s, size) if len(s[0]) > size else s
        t = ref_pool(t, size) if len(t[0]) > size else t
        for a, b in zip(ref_attention(s, p), ref_attention(t, p)):
            total, count = total + (a - b) ** 2, count + 1
    return total / count


def ref_mse(a, b):
    """Mean of squared differences over nested lists of equal shape."""
    if not isinstance(a, list):
        return (a - b) ** 2, 1
    total, count = 0.0, 0
    for x, y in zip(a, b):
        t, c = ref_mse(x, y)
        total, count = total + t, count + c
    return total, count


def ref_hcl(student_feats, teacher_feats):
    result = 0.0
    for f_s, f_t in zip(student_feats, teacher_feats):
        s, t = f_s.double().tolist(), f_t.double().tolist()
        total, count = ref_mse(s, t)
        loss, weights = total / count, 1.0
        levels = [level for level in (4, 2, 1) if level < len(s[0][0])]
        for k, level in enumerate(levels, start=1):
            total, count = ref_mse([ref_pool(x, level) for x in s],
                                   [ref_pool(x, level) for x in t])
            loss += 2.0 ** -k * total / count
            weights += 2.0 ** -k
        result += loss / weights
    return result


@pytest.mark.parametrize("p", [1, 2, 4])
@pytest.mark.parametrize("s_shape, t_shape", [((3, 5, 8, 8), (3, 7, 8, 8)),
                                              ((3, 5, 8, 8), (3, 7, 4, 4)),
                                              ((3, 5, 4, 4), (3, 7, 8, 8)),
                                              ((2, 4, 6, 6), (2, 3, 4, 4))])
def test_at_loss_matches_the_reference(p, s_shape, t_shape):
    """Equal sizes, either map the larger one, and a 6 -> 4 pooling with overlapping bins.
    Seen failing with: p ignored (pow(2)); pow after the channel mean; the attention
    normalized over the batch (dim=0); the smaller map pooled instead of the larger."""
    f_s, f_t = maps(*s_shape, seed=1), maps(*t_shape, seed=2)
    assert at_loss(f_s, f_t, p).item() == pytest.approx(ref_at(f_s, f_t, p), rel=1e-5)


def test_at_loss_has_the_papers_default_power_and_a_float32_result():
    """Seen failing with: p=1 as the default; the .float() of the inputs removed."""
    f_s, f_t = maps(2, 3, 4, 4, seed=3), maps(2, 5, 4, 4, seed=4)
    assert at_loss(f_s, f_t).item() == pytest.approx(ref_at(f_s, f_t, 2), rel=1e-5)
    assert at_loss(f_s.bfloat16(), f_t.bfloat16()).dtype == torch.float32


@pytest.mark.parametrize("sizes", [[8], [4], [2], [1], [8, 4, 2]])
def test_hcl_loss_matches_the_reference(sizes):
    """8x8 uses levels 4, 2, 1 (weights 1/2, 1/4, 1/8); 4x4 only 2 and 1; a list of pairs is
    summed. Seen failing with: `level >= height` as `level > height` (4x4 pooled to 4x4);
    every level weighted 1/2; the weights not normalized by their sum; the pairs averaged."""
    student = [maps(3, 4, n, n, seed=10 + n) for n in sizes]
    teacher = [maps(3, 4, n, n, seed=20 + n) for n in sizes]
    expected = ref_hcl(student, teacher)
    assert hcl_loss(student, teacher).item() == pytest.approx(expected, rel=1e-5)


def test_hcl_loss_levels_by_hand():
    """A map of one constant c: every pooled level differs by c too, so the loss is c² at
    any size. A map that only differs in a zero-mean checkerboard: the pooled levels see no
    difference, so the loss is the full-size MSE over the total weight (1.875 for 8x8 with
    levels 4, 2, 1; 1.75 for 4x4 with 2, 1). Seen failing with the 4x4 map using level 4."""
    for n in (8, 4):
        zero = torch.zeros(1, 1, n, n)
        assert hcl_loss([zero + 3], [zero]).item() == pytest.approx(9.0)
    checker = (torch.arange(8)[:, None] + torch.arange(8)) % 2 * 2 - 1.0  # ±1, mean 0 per 2x2
    for n, total_weight in ((8, 1.875), (4, 1.75)):
        diff = checker[:n, :n].reshape(1, 1, n, n)
        assert hcl_loss([diff], [torch.zeros_like(diff)]).item() == pytest.approx(
            1.0 / total_weight)


def test_hcl_loss_refuses_unequal_shapes():
    with pytest.raises(ValueError, match="equal shape"):
        hcl_loss([torch.zeros(1, 2, 4, 4)], [torch.zeros(1, 2, 8, 8)])


def fixed_regressor(s_channels, t_channels, seed):
    """A HintRegressor in eval mode with every weight and BatchNorm statistic set."""
    g = torch.Generator().manual_seed(seed)
    reg = HintRegressor(s_channels, t_channels).eval()
    with torch.no_grad():
        reg.conv.weight.copy_(torch.randn(t_channels, s_channels, 1, 1, generator=g))
        reg.bn.weight.copy_(torch.rand(t_channels, generator=g) + 0.5)
        reg.bn.bias.copy_(torch.randn(t_channels, generator=g))
        reg.bn.running_mean.copy_(torch.randn(t_channels, generator=g))
        reg.bn.running_var.copy_(torch.rand(t_channels, generator=g) + 0.5)
    return reg


def test_fitnet_hint_loss_matches_the_reference():
    """relu(BN(W x)) per position, then the MSE against the teacher. Seen failing with: the
    ReLU removed; the ReLU before the BN; the conv given a bias; hint_loss summed over
    channels (mean over N, H, W only)."""
    f_s, f_t = maps(2, 3, 4, 4, seed=5), maps(2, 5, 4, 4, seed=6)
    reg = fixed_regressor(3, 5, seed=7)
    w = reg.conv.weight.double()[:, :, 0, 0].tolist()
    gamma, beta, mean, var = (t.double().tolist() for t in (
        reg.bn.weight, reg.bn.bias, reg.bn.running_mean, reg.bn.running_var))
    x, target = f_s.double().tolist(), f_t.double().tolist()
    total, count = 0.0, 0
    for n in range(2):
        for o in range(5):
            for i in range(4):
                for j in range(4):
                    z = sum(w[o][c] * x[n][c][i][j] for c in range(3))
                    y = (z - mean[o]) / math.sqrt(var[o] + reg.bn.eps) * gamma[o] + beta[o]
                    total += (max(y, 0.0) - target[n][o][i][j]) ** 2
                    count += 1
    assert hint_loss(reg(f_s), f_t).item() == pytest.approx(total / count, rel=1e-5)


def test_fitnet_regressor_refuses_unequal_spatial_sizes():
    with pytest.raises(ValueError, match="equal spatial sizes"):
        HintRegressor(32, 64)(torch.zeros(1, 32, 8, 8), t_size=(16, 16))
    with pytest.raises(ValueError, match="equal shape"):
        hint_loss(torch.zeros(1, 64, 8, 8), torch.zeros(1, 64, 16, 16))


def test_losses_are_zero_where_student_equals_teacher():
    """at_loss also with the teacher's channels doubled (the same channel mean); FitNet with
    an identity regressor: a 1x1 conv of weight I and a BatchNorm in eval with unit
    statistics (eps 0) on a non-negative map. Seen failing with the regressor's conv given a
    bias, and with at_loss's channel mean taken over the batch axis (mean(0))."""
    f = maps(2, 4, 8, 8, seed=8)
    assert at_loss(f, f.clone()).item() == 0
    assert at_loss(f, torch.cat([f, f], dim=1)).item() == pytest.approx(0, abs=1e-12)
    g = maps(2, 4, 4, 4, seed=11)
    assert hcl_loss([f, g], [f.clone(), g.clone()]).item() == 0
    reg = HintRegressor(4, 4).eval()
    with torch.no_grad():
        reg.conv.weight.copy_(torch.eye(4)[:, :, None, None])
    reg.bn.eps = 0.0
    relu_f = f.clamp(min=0)
    assert hint_loss(reg(relu_f), relu_f).item() == 0


def test_no_gradient_reaches_the_teacher():
    """Seen failing with the .detach() of the teacher's map removed from at_loss, from
    hcl_loss and from hint_loss (each in turn)."""
    f_s = maps(2, 4, 8, 8, seed=9).requires_grad_()
    reg = HintRegressor(4, 6)
    cases = [(lambda t: at_loss(f_s, t), 6), (lambda t: hcl_loss([f_s], [t]), 4),
             (lambda t: hint_loss(reg(f_s), t), 6)]
    for loss_of, t_channels in cases:
        f_t = maps(2, t_channels, 8, 8, seed=10).requires_grad_()
        f_s.grad = None
        loss_of(f_t).backward()
        assert f_t.grad is None
        assert f_s.grad is not None and f_s.grad.abs().sum() > 0


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_the_gradient_comes_back_in_the_student_maps_layout(layout):
    """The models train channels_last; a gradient in the other layout sends every op behind
    it down a slow path (AT's step once cost 2x a KD step: docs/performance.md). Seen failing
    with attention_map's channel mean over dim 1 for a channels_last map."""
    reg = HintRegressor(4, 6).to(memory_format=layout)
    cases = [lambda f_s: at_loss(f_s, maps(2, 6, 8, 8, seed=10)),
             lambda f_s: at_loss(f_s, maps(2, 6, 4, 4, seed=10)),
             lambda f_s: hcl_loss([f_s], [maps(2, 4, 8, 8, seed=10)]),
             lambda f_s: hint_loss(reg(f_s), maps(2, 6, 8, 8, seed=10))]
    for loss_of in cases:
        f_s = maps(2, 4, 8, 8, seed=9).to(memory_format=layout).requires_grad_()
        (grad,) = torch.autograd.grad(loss_of(f_s), f_s)
        assert grad.is_contiguous(memory_format=layout)


def test_review_fusion_shapes_and_stage_widths():
    """The student's stages (shallow to deep) come out at their own spatial sizes with the
    teacher's widths; only the deepest stage fuses nothing. Seen failing with the outputs
    returned deep to shallow."""
    feats = [maps(2, 32, 32, 32, seed=1), maps(2, 32, 16, 16, seed=2), maps(2, 64, 8, 8, seed=3)]
    fusion = ReviewFusion([32, 32, 64], [32, 64, 128], mid_channels=16)
    outputs = fusion(feats)
    assert [tuple(o.shape) for o in outputs] == [(2, 32, 32, 32), (2, 64, 16, 16), (2, 128, 8, 8)]
    assert [stage.attention is None for stage in fusion.stages] == [False, False, True]
    sum(o.square().mean() for o in outputs).backward()
    assert all(p.grad is not None for p in fusion.parameters())


def test_review_fusion_runs_deep_to_shallow():
    """Context flows from the deep stages to the shallow ones, never back. Seen failing with
    the stages run shallow to deep."""
    fusion = ReviewFusion([3, 4, 5], [6, 7, 8], mid_channels=4).eval()
    feats = [maps(2, 3, 8, 8, seed=1), maps(2, 4, 4, 4, seed=2), maps(2, 5, 2, 2, seed=3)]
    base = fusion(feats)
    deeper_changed = fusion(feats[:2] + [feats[2] + 1])
    shallower_changed = fusion([feats[0] + 1] + feats[1:])
    assert not torch.allclose(deeper_changed[0], base[0])
    assert torch.equal(shallower_changed[2], base[2])
    assert torch.equal(shallower_changed[1], base[1])


@pytest.mark.parametrize("bias, take_deeper", [((40.0, -40.0), False), ((-40.0, 40.0), True)])
def test_attention_fusion_weights_the_two_maps(bias, take_deeper):
    """With the attention saturated, the fused map is this stage's reduced map (channel 0)
    or the deeper map upsampled by nearest neighbour (channel 1), each position of the
    deeper map repeated over a 2x2 block. Seen failing with att[:, 0] and att[:, 1]
    swapped, and with bilinear upsampling."""
    abf = AttentionFusion(3, 4, 5, fuse=True).eval()
    with torch.no_grad():
        abf.attention[0].weight.zero_()
        abf.attention[0].bias.copy_(torch.tensor(bias))
    x, deeper = maps(2, 3, 4, 4, seed=4), maps(2, 4, 2, 2, seed=5)
    out, fused = abf(x, deeper)
    if take_deeper:
        d = deeper.tolist()
        expected = torch.tensor([[[[d[n][c][i // 2][j // 2] for j in range(4)] for i in range(4)]
                                  for c in range(4)] for n in range(2)])
    else:
        expected = abf.reduce(x)
    assert torch.allclose(fused, expected, atol=1e-6)
    assert torch.allclose(out, abf.out(expected), atol=1e-5)
    assert out.shape == (2, 5, 4, 4)


def test_nce_loss_by_hand():
    """One row, positive 0.5 and negatives 0.1, 0.2, n_data 4: K·Pn = 2/4, P(pos) = 0.5/1.0,
    1 - P(neg) = 0.5/0.6 and 0.5/0.7. Seen failing with Pn = 1 instead of 1 / n_data."""
    scores = torch.tensor([[0.5, 0.1, 0.2]])
    expected = -(math.log(0.5) + math.log(0.5 / 0.6) + math.log(0.5 / 0.7))
    assert nce_loss(scores, 4).item() == pytest.approx(expected, rel=1e-5)


def unit_rows(n, dim, seed):
    return torch.nn.functional.normalize(maps(n, dim, seed=seed), dim=1)


def ref_crd(embed_s, embed_t, memory_s, memory_t, contrast, z_s, z_t, n_data, k, T=0.07):
    """RepDistiller's CRD step in float64: the scores, Z (set if < 0), the two NCE losses,
    and the banks after the momentum-0.5 update of the positives' rows."""
    def scores(embed, memory):
        return [[math.exp(sum(a * b for a, b in zip(e, memory[j])) / T) for j in row]
                for e, row in zip(embed, contrast)]

    def nce(x):
        noise = k / n_data
        return -sum(math.log(r[0] / (r[0] + noise)) + sum(math.log(noise / (v + noise))
                                                          for v in r[1:]) for r in x) / len(x)

    def update(memory, embed):
        memory = [row[:] for row in memory]
        for row, e in zip(contrast, embed):
            new = [0.5 * a + 0.5 * b for a, b in zip(memory[row[0]], e)]
            norm = math.sqrt(sum(v * v for v in new))
            memory[row[0]] = [v / norm for v in new]
        return memory

    e_s, e_t = embed_s.double().tolist(), embed_t.double().tolist()
    m_s, m_t = memory_s.double().tolist(), memory_t.double().tolist()
    x_s, x_t = scores(e_s, m_t), scores(e_t, m_s)  # each side against the other's bank
    mean = lambda x: sum(map(sum, x)) / sum(map(len, x))  # noqa: E731
    z_s = z_s if z_s > 0 else mean(x_s) * n_data
    z_t = z_t if z_t > 0 else mean(x_t) * n_data
    loss = nce([[v / z_s for v in r] for r in x_s]) + nce([[v / z_t for v in r] for r in x_t])
    return loss, update(m_s, e_s), update(m_t, e_t), z_s, z_t


def test_contrast_memory_matches_the_reference_on_a_tiny_bank():
    """Six images of three classes, k = 2, hand-set contrast indices, two steps: the second
    uses the first batch's Z and the updated banks. Seen failing with: temperature 0.1
    instead of 0.07; momentum 0.9 instead of 0.5; Z recomputed at every batch; the student's
    embedding scored against its own bank; Pn = 1 instead of 1 / n_data."""
    crd = ContrastMemory([0, 0, 1, 1, 2, 2], k=2, dim=3, seed=0)
    z_s, z_t = -1.0, -1.0
    steps = [(torch.tensor([0, 2]), torch.tensor([[0, 2, 4], [2, 0, 5]])),
             (torch.tensor([5, 1]), torch.tensor([[5, 1, 3], [1, 4, 4]]))]
    for step, (index, contrast) in enumerate(steps):
        embed_s, embed_t = unit_rows(2, 3, seed=step), unit_rows(2, 3, seed=10 + step)
        loss_ref, m_s, m_t, z_s, z_t = ref_crd(embed_s, embed_t, crd.memory_s, crd.memory_t,
                                               contrast.tolist(), z_s, z_t, n_data=6, k=2)
        loss = crd(embed_s, embed_t, index, contrast)
        assert loss.item() == pytest.approx(loss_ref, rel=1e-5)
        assert crd.z_s.item() == pytest.approx(z_s, rel=1e-5)
        assert crd.z_t.item() == pytest.approx(z_t, rel=1e-5)
        assert torch.allclose(crd.memory_s.double(), torch.tensor(m_s, dtype=torch.float64))
        assert torch.allclose(crd.memory_t.double(), torch.tensor(m_t, dtype=torch.float64))


def test_contrast_memory_banks_start_uniform_in_the_repdistiller_range():
    """Seen failing with the bound 1/sqrt(dim) instead of 1/sqrt(dim / 3)."""
    crd = ContrastMemory(torch.zeros(2000, dtype=torch.long), k=1, dim=12)
    bound = 1 / math.sqrt(12 / 3)
    for bank in (crd.memory_s, crd.memory_t):
        assert bank.abs().max() <= bound and bank.abs().max() > 0.99 * bound
    assert not torch.equal(crd.memory_s, crd.memory_t)


def test_negatives_are_drawn_from_the_other_classes_only():
    """Column 0 is the positive; the k negatives never share its class, and every image of
    the other classes can be drawn. Seen failing with `j >= start` as `j > start` (the
    first image of the positive's class drawn) and with the block skipped one too far."""
    labels = torch.randint(0, 4, (40,), generator=torch.Generator().manual_seed(0))
    crd = ContrastMemory(labels, k=500, dim=4)
    index = torch.arange(40)
    contrast = crd.draw_contrast_index(index)
    assert contrast.shape == (40, 501) and torch.equal(contrast[:, 0], index)
    assert (labels[contrast[:, 1:]] != labels[:, None]).all()
    for c in range(4):
        drawn = set(contrast[labels == c, 1:].flatten().tolist())
        assert drawn == set(torch.nonzero(labels != c).flatten().tolist())


def crd_steps(crd, n_steps, seed):
    """n_steps of forward + backward on fixed embeddings of batches of 16 image indices;
    returns the losses."""
    g = torch.Generator().manual_seed(seed)
    losses = []
    for _ in range(n_steps):
        index = torch.randperm(crd.n_data, generator=g)[:16]
        embed_s = torch.nn.functional.normalize(torch.randn(16, 8, generator=g), dim=1)
        embed_t = torch.nn.functional.normalize(torch.randn(16, 8, generator=g), dim=1)
        embed_s.requires_grad_()
        loss = crd(embed_s, embed_t, index)
        loss.backward()  # the banks' update must leave the backward pass its old bank
        assert embed_s.grad is not None
        losses.append(loss.item())
    return losses


def test_contrast_memory_resumes_exactly_from_its_state_dict(tmp_path):
    """A module restored mid-run from another's saved state_dict (through torch.save and a
    weights_only load) then gives the same losses, banks, Z and negatives, bit for bit, as
    the uninterrupted one; the restored one was built with another seed, so all of it comes
    from the file. Seen failing with, each in turn: the draws' count, z_s or the banks not
    persistent (the losses differ); the generator not seeded from the count before a draw; the
    banks updated in place (the backward pass then fails)."""
    labels = torch.arange(50) % 5
    first = ContrastMemory(labels, k=8, dim=8, seed=1)
    crd_steps(first, 2, seed=0)
    torch.save(first.state_dict(), tmp_path / "crd.pt")
    resumed = ContrastMemory(labels, k=8, dim=8, seed=2)
    resumed.load_state_dict(torch.load(tmp_path / "crd.pt", weights_only=True))
    assert crd_steps(first, 3, seed=1) == crd_steps(resumed, 3, seed=1)
    state, restored = first.state_dict(), resumed.state_dict()
    assert set(state) == {"memory_s", "memory_t", "z_s", "z_t", "_extra_state"}
    assert state.pop("_extra_state") == restored.pop("_extra_state") == {"seed": 1, "draws": 5}
    for name, value in state.items():
        assert torch.equal(value, restored[name]), name
    assert first.z_s > 0 and first.z_t > 0


def test_embed_is_linear_then_unit_norm():
    """Seen failing with the normalization over the batch (dim=0)."""
    embed = Embed(2 * 3 * 3, dim=128)
    out = embed(maps(4, 2, 3, 3, seed=1))
    assert out.shape == (4, 128)
    assert torch.allclose(out.norm(dim=1), torch.ones(4))
    assert torch.allclose(out * embed.linear(maps(4, 2, 3, 3, seed=1).flatten(1)).norm(
        dim=1, keepdim=True), embed.linear(maps(4, 2, 3, 3, seed=1).flatten(1)), atol=1e-6)
