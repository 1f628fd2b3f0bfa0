"""Loss functions for the training loop.

A training loss takes (logits, labels, images) and returns a dict: "loss" is what is
minimised, any other entry (e.g. "ce", "kd") is a part logged in the run's metrics CSV.
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


def cross_entropy(logits, labels, images=None):
    """Plain cross-entropy against the labels: the teacher's loss and the student-alone baseline."""
    return {"loss": F.cross_entropy(logits.float(), labels)}


STUDENT_LOSSES = ("kd+ce", "kd", "ce", "dkd", "dist")
STANDARDIZABLE = ("kd+ce", "kd", "dkd")  # the losses --logit-standardize applies to


def student_loss(kind, teacher=None, temperature=4.0, alpha=0.5, standardize=False,
                 dkd_alpha=1.0, dkd_beta=0.5, dkd_warmup=1.0, dist_beta=0.5, dist_gamma=0.5,
                 shared_logits=None):
    """The training loss of a student variant:

    - "kd+ce": distillation_loss (weight `alpha` on the KD term); "kd": kd_only_loss;
    - "ce": cross-entropy alone, no teacher;
    - "dkd": CE + w · dkd_loss(dkd_alpha, dkd_beta), w rising linearly from 0 to 1 over the
      first `dkd_warmup` epochs (the paper's 20 of 240 epochs is 1 of this repo's 12);
    - "dist": CE + dist_loss(dist_beta, dist_gamma).

    With `standardize`, the distillation term sees z-scored logits (standardize_logits),
    student and teacher alike; the CE term keeps the raw ones. The teacher sees exactly the
    batch the student sees (the same augmented images), in eval mode and under no_grad; with
    `shared_logits` (a teacher_logits.SharedTeacherLogits), its logits come from there. The
    distillation term ("kd") and the CE term ("ce") are logged as parts.
    """
    check_kd_args(temperature, alpha)
    if kind == "ce":
        return cross_entropy
    if kind not in STUDENT_LOSSES:
        raise ValueError(f"unknown student loss {kind!r}; expected one of {STUDENT_LOSSES}")
    if standardize and kind not in STANDARDIZABLE:
        raise ValueError(f"logit standardization goes with {', '.join(STANDARDIZABLE)}, "
                         f"not {kind}")
    prepare = standardize_logits if standardize else (lambda logits: logits)
    return StudentLoss(kind, teacher, temperature, alpha, prepare, dkd_alpha, dkd_beta,
                       dkd_warmup, dist_beta, dist_gamma, shared_logits)


class StudentLoss:
    """A distillation loss (see student_loss). fit calls set_epoch(epoch, steps_per_epoch)
    before each epoch, so that DKD's warm-up and the shared teacher logits follow the
    optimizer step, resumed runs included, and end_epoch(epoch) after it, before the
    checkpoint is written."""

    def __init__(self, kind, teacher, temperature, alpha, prepare, dkd_alpha, dkd_beta,
                 dkd_warmup, dist_beta, dist_gamma, shared_logits=None):
        self.kind, self.teacher, self.temperature, self.alpha = kind, teacher, temperature, alpha
        self.prepare = prepare
        self.dkd, self.dkd_warmup = (dkd_alpha, dkd_beta), dkd_warmup
        self.dist = (dist_beta, dist_gamma)
        self.shared = shared_logits
        self.step, self.steps_per_epoch = 0, 1

    def set_epoch(self, epoch, steps_per_epoch):
        self.step, self.steps_per_epoch = epoch * steps_per_epoch, steps_per_epoch
        if self.shared is not None:
            self.shared.set_epoch(epoch, steps_per_epoch)

    def end_epoch(self, epoch):
        if self.shared is not None:
            self.shared.end_epoch(epoch)

    def __call__(self, logits, labels, images):
        with torch.no_grad():
            if self.shared is None:
                teacher_logits = self.teacher(images)
            else:
                teacher_logits = self.shared(*divmod(self.step, self.steps_per_epoch), images)
        student, teacher, T = self.prepare(logits), self.prepare(teacher_logits), self.temperature
        ce = F.cross_entropy(logits.float(), labels)
        if self.kind == "dkd":
            warm = min(1.0, (self.step + 1) / (self.dkd_warmup * self.steps_per_epoch)
                       ) if self.dkd_warmup > 0 else 1.0
            kd = dkd_loss(student, teacher, labels, T, *self.dkd)
            loss = ce + warm * kd
        elif self.kind == "dist":
            kd = dist_loss(student, teacher, T, *self.dist)
            loss = ce + kd
        else:
            kd = kd_only_loss(student, teacher, T)
            loss = kd if self.kind == "kd" else self.alpha * kd + (1 - self.alpha) * ce
        self.step += 1
        return {"loss": loss, "kd": kd.detach(), "ce": ce.detach()}
