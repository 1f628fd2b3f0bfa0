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
    (Their released code divides by the unbiased std, a constant sqrt(K / (K - 1)) apart,
    which the temperature absorbs.)"""
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
