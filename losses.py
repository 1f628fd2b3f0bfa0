"""The distillation losses as functions of logits (and, for the feature methods, of
features): each one term, its paper and its formula. The methods that combine them with
the cross-entropy, their weights and warm-ups are classes in methods.py.
"""
import math

import torch
import torch.nn.functional as F


def check_kd_args(temperature, alpha=0.0):
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if not 0 <= alpha <= 1:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")


def kd_only_loss(student_logits, teacher_logits, temperature):
    """T² · KL(softmax(teacher/T) ‖ softmax(student/T)), averaged over the batch.

    The original report's `distillation_loss_ex`. Computed from log-probabilities
    (log_softmax on both sides, `log_target=True`), which stays finite where softmax
    probabilities underflow. `reduction="batchmean"` is the true KL per example; "mean" would
    also divide by the 10 classes. The T² factor keeps the soft term's gradients on the scale
    of the hard term's as T changes (Hinton et al., 2015). No gradient reaches the teacher.
    """
    check_kd_args(temperature)
    log_p_student = F.log_softmax(student_logits.float() / temperature, dim=1)
    log_p_teacher = F.log_softmax(teacher_logits.detach().float() / temperature, dim=1)
    kl = F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True)
    return temperature ** 2 * kl


def distillation_loss(student_logits, teacher_logits, labels, temperature, alpha):
    """alpha · T² · KL(teacher_T ‖ student_T) + (1 - alpha) · CE(student, labels).

    The standard form of Hinton et al. (2015). The original report multiplied the soft term
    by T² · 2 · alpha; that factor 2 has no basis in the paper and is not used here.
    """
    check_kd_args(temperature, alpha)
    kd = kd_only_loss(student_logits, teacher_logits, temperature)
    return alpha * kd + (1 - alpha) * F.cross_entropy(student_logits.float(), labels)


def standardize_logits(logits, eps=1e-7):
    """Each sample's logits as a z-score, (z - mean) / std over the classes, with the
    population std (Sun et al., CVPR 2024, "Logit standardization in knowledge
    distillation"): the student then matches the teacher's logit *shape*, not its scale.
    (Their released code divides by the unbiased std, sqrt(K / (K - 1)) larger: their
    softmax at temperature T is ours at T * sqrt(K / (K - 1)), and our T^2 factor is
    K / (K - 1) times theirs, which the KD weight absorbs; docs/results.md says what that
    makes of their setting.)"""
    logits = logits.float()
    mean = logits.mean(1, keepdim=True)
    return (logits - mean) / (logits.std(1, keepdim=True, correction=0) + eps)


def dkd_loss(student_logits, teacher_logits, labels, temperature, alpha, beta):
    """Decoupled KD (Zhao et al., CVPR 2022): T² · (alpha · TCKD + beta · NCKD), batch mean.

    With p = softmax(z / T): TCKD is the KL divergence between the teacher's and the
    student's binary distributions (p_target, 1 - p_target); NCKD the KL divergence between
    their distributions over the non-target classes, p_i / (1 - p_target) for i != target.
    Hinton's KD is TCKD + (1 - p_target of the teacher) · NCKD; DKD frees the two weights.
    Everything is computed from log-probabilities (no division by a vanishing 1 - p). The
    CE term and DKD's warm-up belong to the training loss, not here. No gradient reaches the
    teacher."""
    check_kd_args(temperature)
    target = F.one_hot(labels, student_logits.shape[1]).bool()
    log_p_s = F.log_softmax(student_logits.float() / temperature, dim=1)
    log_p_t = F.log_softmax(teacher_logits.detach().float() / temperature, dim=1)

    def binary(log_p):  # log (p_target, 1 - p_target)
        return torch.stack([log_p.masked_fill(~target, -math.inf).logsumexp(1),
                            log_p.masked_fill(target, -math.inf).logsumexp(1)], dim=1)

    def non_target(log_p):  # log p_i / (1 - p_target) over i != target; the target: -inf
        return F.log_softmax(log_p.masked_fill(target, -math.inf), dim=1)

    def kl(log_q_t, log_q_s):  # over the classes; 0 where q_t is 0 (the masked target)
        gap = (log_q_t - log_q_s).masked_fill(torch.isneginf(log_q_t), 0)  # not -inf - -inf
        return (log_q_t.exp() * gap).sum(1)

    tckd = kl(binary(log_p_t), binary(log_p_s))
    nckd = kl(non_target(log_p_t), non_target(log_p_s))
    return temperature ** 2 * (alpha * tckd + beta * nckd).mean()


def dist_loss(student_logits, teacher_logits, temperature, beta, gamma):
    """DIST (Huang et al., NeurIPS 2022): T² · (beta · inter + gamma · intra).

    With Y = softmax(z / T) (batch x classes), inter is the mean over samples of
    1 - Pearson correlation between the student's and the teacher's row (the classes'
    ranking of one image), intra the mean over classes of 1 - Pearson correlation between
    their columns (one class across the batch). Correlation, not KL: only the relations
    must match, not the exact probabilities. No gradient reaches the teacher."""
    check_kd_args(temperature)
    y_s = F.softmax(student_logits.float() / temperature, dim=1)
    y_t = F.softmax(teacher_logits.detach().float() / temperature, dim=1)

    def one_minus_pearson(a, b, dim):
        a, b = a - a.mean(dim, keepdim=True), b - b.mean(dim, keepdim=True)
        return 1 - F.cosine_similarity(a, b, dim=dim, eps=1e-8)

    inter = one_minus_pearson(y_s, y_t, dim=1).mean()
    intra = one_minus_pearson(y_s, y_t, dim=0).mean()
    return temperature ** 2 * (beta * inter + gamma * intra)


# --------------------------------------------------------------------------------------------
# Feature-based distillation: pure losses and their trainable modules.
#
# Each takes feature maps (N, C, H, W). The losses compute in float32; the trainable modules
# (FitNet's regressor, ReviewKD's fusions, CRD's embedding heads) run in the step's
# precision, bf16 under autocast, as the networks do. The teacher's tensors are detached, so
# no gradient reaches the teacher (CRD's teacher embedding is the exception: its head is
# trained, see ContrastMemory). methods.py's fitnet, at, reviewkd and crd train with them.
# --------------------------------------------------------------------------------------------


def is_channels_last(f):
    return f.dim() == 4 and f.is_contiguous(memory_format=torch.channels_last) \
        and not f.is_contiguous()


class _GradientInLayout(torch.autograd.Function):
    """Identity forward; backward returns the gradient in the input's memory layout. The
    backward of mse_loss, of an elementwise MSE, of pooling to 1x1 and of slicing channels
    returns NCHW even for a channels_last input, and an NCHW gradient into the channels_last
    models sends every op behind it (BatchNorm's backward most) down a slow path."""

    @staticmethod
    def forward(ctx, f):
        ctx.layout = torch.channels_last if is_channels_last(f) else torch.contiguous_format
        return f.view_as(f)

    @staticmethod
    def backward(ctx, grad):
        return grad.contiguous(memory_format=ctx.layout)


def gradient_in_layout(f):
    """f itself, whose gradient comes back in f's memory layout (_GradientInLayout)."""
    return _GradientInLayout.apply(f)


def attention_map(f, p=2):
    """AT's spatial attention of a feature map: the mean over channels of f^p, flattened to
    (N, H*W) and L2-normalized per image (Zagoruyko & Komodakis, ICLR 2017)."""
    if is_channels_last(f):
        # The channel mean over the innermost dim: faster, the same values, and its gradient
        # comes back channels_last (a mean over dim 1 returns it NCHW: _GradientInLayout).
        return F.normalize(f.permute(0, 2, 3, 1).pow(p).mean(3).flatten(1), dim=1)
    return F.normalize(f.pow(p).mean(1).flatten(1), dim=1)


def at_loss(f_s, f_t, p=2):
    """Attention transfer (Zagoruyko & Komodakis, ICLR 2017, "Paying more attention to
    attention"), in the form of the authors' code, RepDistiller and mdistiller.

    f_s, f_t: one student and one teacher feature map (N, C, H, W), channel counts free.
    p: the power applied to the activations before the channel mean (the paper's p = 2; it
    writes |f|^p, the reference code f^p, which keeps the sign for an odd p).
    When the spatial sizes differ, the larger map is first adaptive-average pooled to the
    smaller. Returns the mean over images and positions of (a(f_s) - a(f_t))², a being
    attention_map. The methods' weight (RepDistiller's beta = 1000) is the caller's."""
    f_s, f_t = f_s.float(), f_t.detach().float()
    size_s, size_t = f_s.shape[-2:], f_t.shape[-2:]
    if size_s.numel() > size_t.numel():
        f_s = F.adaptive_avg_pool2d(f_s, size_t)
    elif size_t.numel() > size_s.numel():
        f_t = F.adaptive_avg_pool2d(f_t, size_s)
    return (attention_map(f_s, p) - attention_map(f_t, p)).pow(2).mean()


HCL_LEVELS = (4, 2, 1)  # ReviewKD's pooled sizes, l x l


def hcl_loss(student_feats, teacher_feats):
    """ReviewKD's hierarchical context loss (Chen et al., CVPR 2021, "Distilling knowledge
    via knowledge review").

    student_feats, teacher_feats: lists of feature maps, pairwise of equal shape (N, C, H, W).
    For each pair: the MSE (mean over all elements) at full size with weight 1, plus, for
    each l in (4, 2, 1) smaller than the map's height, the MSE of both maps adaptive-average
    pooled to l x l, the k-th level used weighted 2^-k (1/2, 1/4, ...); the pair's sum is
    divided by the sum of the weights used. The pairs' results are summed."""
    if len(student_feats) != len(teacher_feats):
        raise ValueError(f"{len(student_feats)} student maps for {len(teacher_feats)} teacher's")
    total = 0.0
    for f_s, f_t in zip(student_feats, teacher_feats):
        if f_s.shape != f_t.shape:
            raise ValueError(f"hcl_loss pairs maps of equal shape, got {tuple(f_s.shape)} "
                             f"and {tuple(f_t.shape)}")
        f_s, f_t = gradient_in_layout(f_s.float()), f_t.detach().float()
        loss, weight, weights = F.mse_loss(f_s, f_t), 1.0, 1.0
        for level in HCL_LEVELS:
            if level >= f_s.shape[2]:  # pooling to the map's own size would repeat full size
                continue
            weight /= 2
            loss = loss + weight * F.mse_loss(F.adaptive_avg_pool2d(f_s, level),
                                              F.adaptive_avg_pool2d(f_t, level))
            weights += weight
        total = total + loss / weights
    return total


class HintRegressor(torch.nn.Module):
    """FitNet's regressor (Romero et al., ICLR 2015, "FitNets: hints for thin deep nets"), in
    mdistiller's form for equal spatial sizes: 1x1 conv + BatchNorm + ReLU mapping the
    student's hint layer (s_channels) to the teacher's width (t_channels). Trained with the
    student; hint_loss compares its output with the teacher's map."""

    def __init__(self, s_channels, t_channels):
        super().__init__()
        # No bias (mdistiller's conv has one): the BatchNorm right after subtracts it again.
        self.conv = torch.nn.Conv2d(s_channels, t_channels, kernel_size=1, bias=False)
        self.bn = torch.nn.BatchNorm2d(t_channels)

    def forward(self, f_s, t_size=None):
        """f_s: the student's map (N, s_channels, H, W); t_size: the teacher map's (H, W),
        checked when given, since a 1x1 conv cannot change the spatial size."""
        if t_size is not None and tuple(f_s.shape[-2:]) != tuple(t_size):
            raise ValueError(f"HintRegressor maps equal spatial sizes; the student's is "
                             f"{tuple(f_s.shape[-2:])}, the teacher's {tuple(t_size)}")
        return F.relu(self.bn(self.conv(f_s)))


def hint_loss(regressed_s, f_t):
    """FitNet's hint loss (Romero et al., ICLR 2015): the MSE, averaged over all elements,
    between the regressed student map (HintRegressor's output) and the teacher's map."""
    if regressed_s.shape != f_t.shape:
        raise ValueError(f"hint_loss compares maps of equal shape, got "
                         f"{tuple(regressed_s.shape)} and {tuple(f_t.shape)}")
    return F.mse_loss(regressed_s.float(), f_t.detach().float())


class AttentionFusion(torch.nn.Module):
    """ReviewKD's attention-based fusion (ABF) of one student stage (Chen et al., CVPR 2021).

    in_channels: the student stage's width; mid_channels: the fused maps' width;
    out_channels: the teacher stage's width; fuse: whether a deeper fused map comes in (all
    stages but the deepest). forward(x, deeper): x is mapped by 1x1 conv + BN to the middle
    width; deeper (the next deeper stage's fused map) is upsampled (nearest) to x's size and
    the two are merged as x * a0 + deeper * a1, where (a0, a1) = sigmoid(1x1 conv of their
    concatenation): a per-position choice of how much of the deeper context to take. A 3x3
    conv + BN then maps the result to the teacher's width. Returns (output, fused map)."""

    def __init__(self, in_channels, mid_channels, out_channels, fuse):
        super().__init__()
        self.reduce = torch.nn.Sequential(
            torch.nn.Conv2d(in_channels, mid_channels, kernel_size=1, bias=False),
            torch.nn.BatchNorm2d(mid_channels))
        self.attention = torch.nn.Sequential(
            torch.nn.Conv2d(2 * mid_channels, 2, kernel_size=1), torch.nn.Sigmoid()
        ) if fuse else None
        self.out = torch.nn.Sequential(
            torch.nn.Conv2d(mid_channels, out_channels, kernel_size=3, padding=1, bias=False),
            torch.nn.BatchNorm2d(out_channels))
        for conv in (self.reduce[0], self.out[0]):  # the authors' init: unit gain, not sqrt(5)'s
            torch.nn.init.kaiming_uniform_(conv.weight, a=1)

    def forward(self, x, deeper=None):
        x = self.reduce(x)
        if self.attention is not None:
            if deeper is None:
                raise ValueError("this stage fuses a deeper map; none was given")
            deeper = F.interpolate(deeper, size=x.shape[-2:], mode="nearest")
            # the slices' backward would return the attention's gradient NCHW
            att = gradient_in_layout(self.attention(torch.cat([x, deeper], dim=1)))
            x = x * att[:, 0:1] + deeper * att[:, 1:2]
        return self.out(x), x


class ReviewFusion(torch.nn.Module):
    """ReviewKD's review path (Chen et al., CVPR 2021): one AttentionFusion per student stage,
    run from the deepest stage to the shallowest, each fusing the deeper stages' context.

    s_channels, t_channels: the student's and the teacher's stage widths, shallow to deep;
    mid_channels: the width of the fused maps. forward takes the student's stage maps
    (shallow to deep) and returns the outputs in the same order, each of the teacher
    stage's width at the student stage's spatial size, for hcl_loss against the teacher's."""

    def __init__(self, s_channels, t_channels, mid_channels):
        super().__init__()
        if len(s_channels) != len(t_channels):
            raise ValueError(f"{len(s_channels)} student stages for {len(t_channels)} teacher's")
        deepest = len(s_channels) - 1
        self.stages = torch.nn.ModuleList(
            AttentionFusion(s, mid_channels, t, fuse=i < deepest)
            for i, (s, t) in enumerate(zip(s_channels, t_channels)))

    def forward(self, feats):
        if len(feats) != len(self.stages):
            raise ValueError(f"{len(feats)} maps for {len(self.stages)} stages")
        outputs, fused = [None] * len(feats), None
        for i in reversed(range(len(feats))):
            outputs[i], fused = self.stages[i](feats[i], fused)
        return outputs


class Embed(torch.nn.Module):
    """CRD's embedding head (Tian et al., ICLR 2020, "Contrastive representation
    distillation"): the features flattened, a linear map to `dim` (128) and an L2
    normalization. One for the student and one for the teacher, both trained; the teacher's
    features must come in detached (or under no_grad), so that only this head learns."""

    def __init__(self, in_features, dim=128):
        super().__init__()
        self.linear = torch.nn.Linear(in_features, dim)

    def forward(self, f):
        return F.normalize(self.linear(f.flatten(1)), dim=1)


def nce_loss(scores, n_data, eps=1e-7):
    """CRD's NCE loss (Tian et al., ICLR 2020), as RepDistiller's ContrastLoss.

    scores: (N, 1 + K), each row the normalized score x = exp(v·m / T) / Z of the positive
    (column 0) and of its K negatives; n_data: the number of training images, the noise
    distribution being uniform over them (Pn = 1 / n_data). With P = x / (x + K·Pn), the
    probability that a pair came from the data rather than the noise, returns
    -[sum over rows of log P(positive) + sum of log(1 - P(negative))] / N.
    eps is RepDistiller's guard against a zero denominator."""
    scores = scores.float()
    noise = (scores.shape[1] - 1) / n_data  # K · Pn
    log_p_pos = torch.log(scores[:, 0] / (scores[:, 0] + noise + eps))
    log_p_neg = torch.log(noise / (scores[:, 1:] + noise + eps))  # log(1 - P)
    return -(log_p_pos.sum() + log_p_neg.sum()) / len(scores)


class ContrastMemory(torch.nn.Module):
    """CRD's memory banks and loss (Tian et al., ICLR 2020), in RepDistiller's NCE form with
    its "exact" class-wise negatives.

    labels: the training set's labels (n_data of them), indexed by the loader's image index;
    k: negatives per positive; dim: the embedding's width; temperature, momentum: the
    paper's 0.07 and 0.5; seed: for the banks' initialization and the negatives' draws.

    Two banks hold one embedding per training image, one per network, initialised uniformly
    in ±1/sqrt(dim/3) as RepDistiller does. forward(embed_s, embed_t, index) scores the
    student's embedding against the teacher's bank and the teacher's against the student's,
    on row `index` (the positive) and on k rows of images of other classes (drawn uniformly
    with replacement, or given as contrast_index, (N, 1 + k) with the positive first). A
    score is exp(v·m / T) / Z; Z is set once, from the first batch, to the mean of
    exp(v·m / T) times n_data. The loss is nce_loss of both directions, summed. Then each
    bank's rows at `index` move to momentum · old + (1 - momentum) · new, re-normalized.

    The banks and the two Z are buffers, and the seed and the number of draws so far are the
    module's extra state, so a run resumed from the state_dict continues exactly as an
    uninterrupted one. Each batch's negatives come from a generator on the banks' device,
    seeded from (seed, draws so far): no host work or copy per step on a GPU, and the same
    draws on every run of one device (the CPU's and CUDA's generators differ, so a GPU
    draws other negatives than a CPU). Gradients flow into both embeddings: the teacher's
    Embed head is trained too (the teacher itself is not).
    """

    def __init__(self, labels, k=16384, dim=128, temperature=0.07, momentum=0.5, seed=0):
        super().__init__()
        labels = torch.as_tensor(labels).long().cpu()
        self.n_data, self.k = len(labels), k
        self.temperature, self.momentum = temperature, momentum
        self.seed, self.draws, self.generators = seed, 0, {}
        generator = torch.Generator().manual_seed(seed)
        bound = 1 / math.sqrt(dim / 3)
        for name in ("memory_s", "memory_t"):
            bank = torch.rand(self.n_data, dim, generator=generator) * 2 * bound - bound
            self.register_buffer(name, bank)
        self.register_buffer("z_s", torch.tensor(-1.0))  # < 0: not set yet
        self.register_buffer("z_t", torch.tensor(-1.0))
        # The negatives are drawn from the class-sorted images with the positive's class cut
        # out: derived from the labels, so not saved, but moved with the banks.
        count = torch.bincount(labels)
        for name, value in (("labels", labels), ("order", torch.argsort(labels, stable=True)),
                            ("count", count), ("start", count.cumsum(0) - count)):
            self.register_buffer(name, value, persistent=False)

    def get_extra_state(self):
        return {"seed": self.seed, "draws": self.draws}

    def set_extra_state(self, state):
        self.seed, self.draws = state["seed"], state["draws"]

    def draw_contrast_index(self, index):
        """(N, 1 + k): each row the positive's index, then k indices of images of other
        classes, uniform with replacement: for a positive of class c, j uniform in
        [0, n_data - count[c]) over the class-sorted images with c's block skipped."""
        device = self.memory_s.device
        generator = self.generators.get(device)
        if generator is None:
            generator = self.generators[device] = torch.Generator(device=device)
        # one seed per (seed, draw), below 2^63 as manual_seed needs, whatever the run's seed
        generator.manual_seed((self.seed * 0x9E3779B97F4A7C15 + self.draws) % 2**63)
        self.draws += 1
        index = index.to(device)
        labels = self.labels[index]
        count, start = self.count[labels][:, None], self.start[labels][:, None]
        uniform = torch.rand(len(index), self.k, generator=generator, device=device,
                             dtype=torch.float64)
        j = (uniform * (self.n_data - count)).long()
        negatives = self.order[j + count * (j >= start)]
        return torch.cat([index[:, None], negatives], dim=1)

    def forward(self, embed_s, embed_t, index, contrast_index=None):
        """embed_s, embed_t: (N, dim) L2-normalized embeddings (Embed's output); index: the
        batch's image indices in the training set; contrast_index: optional (N, 1 + k)."""
        if contrast_index is None:
            contrast_index = self.draw_contrast_index(index)
        device = self.memory_s.device
        index, contrast_index = index.to(device), contrast_index.to(device)
        with torch.autocast(device.type, enabled=False):  # exp(·/0.07): float32 scores
            embed_s, embed_t = embed_s.float(), embed_t.float()
            # All n_data scores, then the 1 + k wanted: a (N, n_data) product is far smaller
            # than the (N, 1 + k, dim) rows a gather of the bank would copy.
            scores_s = torch.exp((embed_s @ self.memory_t.T).gather(1, contrast_index)
                                 / self.temperature)
            scores_t = torch.exp((embed_t @ self.memory_s.T).gather(1, contrast_index)
                                 / self.temperature)
            with torch.no_grad():
                for z, scores in ((self.z_s, scores_s), (self.z_t, scores_t)):
                    z.copy_(torch.where(z < 0, scores.mean() * self.n_data, z))  # no sync
                for name, embed in (("memory_s", embed_s), ("memory_t", embed_t)):
                    # A new bank, not an in-place write: the backward pass of the scores
                    # still needs the old one.
                    bank = getattr(self, name).clone()
                    rows = bank[index] * self.momentum + embed * (1 - self.momentum)
                    bank[index] = F.normalize(rows, dim=1)
                    setattr(self, name, bank)
            return (nce_loss(scores_s / self.z_s, self.n_data)
                    + nce_loss(scores_t / self.z_t, self.n_data))
