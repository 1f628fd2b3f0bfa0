"""Loss functions for the training loop.

Each takes (logits, labels, images) and returns a dict: "loss" is what is minimised, any
other entry is a part logged in the run's metrics CSV. The distillation losses arrive with
issue 3 (`distillation_loss`, `kd_only_loss`).
"""
import torch.nn.functional as F


def cross_entropy(logits, labels, images=None):
    """Plain cross-entropy against the labels: the teacher's loss and the student-alone baseline."""
    return {"loss": F.cross_entropy(logits.float(), labels)}
