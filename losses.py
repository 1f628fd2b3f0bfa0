"""Loss functions for the training loop.

A training loss takes (logits, labels, images) and returns a dict: "loss" is what is
minimised, any other entry (e.g. "ce", "kd") is a part logged in the run's metrics CSV.
"""
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


def cross_entropy(logits, labels, images=None):
    """Plain cross-entropy against the labels: the teacher's loss and the student-alone baseline."""
    return {"loss": F.cross_entropy(logits.float(), labels)}


STUDENT_LOSSES = ("kd+ce", "kd", "ce")


def student_loss(kind, teacher=None, temperature=4.0, alpha=0.5):
    """The training loss of a student variant: "kd+ce" (distillation_loss), "kd"
    (kd_only_loss) or "ce" (cross-entropy alone, no teacher).

    The teacher sees exactly the batch the student sees (the same augmented images), in eval
    mode and under no_grad. Both parts are logged for the KD variants.
    """
    check_kd_args(temperature, alpha)
    if kind == "ce":
        return cross_entropy
    if kind not in STUDENT_LOSSES:
        raise ValueError(f"unknown student loss {kind!r}; expected one of {STUDENT_LOSSES}")

    def loss_fn(logits, labels, images):
        with torch.no_grad():
            teacher_logits = teacher(images)
        if kind == "kd":
            loss = kd_only_loss(logits, teacher_logits, temperature)
        else:
            loss = distillation_loss(logits, teacher_logits, labels, temperature, alpha)
        with torch.no_grad():  # the parts, for the log only
            kd = kd_only_loss(logits, teacher_logits, temperature)
            ce = F.cross_entropy(logits.float(), labels)
        return {"loss": loss, "kd": kd, "ce": ce}
    return loss_fn
