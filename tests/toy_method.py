"""A method kept outside the repo's code, registered through $KD_METHODS (tests/test_methods.py
takes it through every script): a trainable projection of the student's hidden layer onto
the teacher's, so it needs features, cannot be served stored logits, and has state."""
import torch.nn.functional as F
from torch import nn

from methods import Flag, Method, nonnegative, register


@register
class Toy(Method):
    name = "toy"
    summary = "CE + a projected hidden-layer hint (a test's method)"
    flags = (Flag("toy_weight", 0.5, "weight of the hint", nonnegative, before=0.0),)
    shared_logits = False
    features = True

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.project = nn.Linear(256, 256)

    def loss(self, student, teacher, labels, positions):
        ce = F.cross_entropy(student.logits.float(), labels)
        # unit vectors: a barely trained teacher's hidden layer is large enough to diverge
        hint = F.mse_loss(F.normalize(self.project(student.features["hidden"].float())),
                          F.normalize(teacher.features["hidden"].float()))
        return {"loss": ce + self.toy_weight * hint, "kd": hint.detach(), "ce": ce.detach()}
