"""Distillation methods, one class each, and the registry every script reads them from.

A method is an `nn.Module` subclass of `Method`, registered with `@register`. It declares
its `--loss` name, its flags (`Flag`: default, check, and what runs from before the flag
meant), whether stored teacher logits may serve it, whether it needs the networks'
features, and the variants the report compares it with; its trainable modules (a
regressor, an embedding, a memory bank) are its submodules and buffers, which the loop
optimizes with the student and saves with the run. The command line, the recipe (which
flags a run ignores), resuming checkpoints written before a flag existed, the order of
variants in tables and the report's comparisons all come from here (mdistiller's
`Distiller` and torchdistill's registered losses, see ../shared/STYLE.md).

    @register
    class Foo(Method):
        name = "foo"
        summary = "CE + the foo term"
        flags = (Flag("foo_beta", 1.0, "weight of the foo term", check=nonnegative),)

        def loss(self, student, teacher, labels, positions):
            ce = F.cross_entropy(student.logits.float(), labels)
            foo = self.foo_beta * ...
            return {"loss": ce + foo, "kd": foo.detach(), "ce": ce.detach()}

Modules named in $KD_METHODS (space-separated) are imported at the end of this file, so a
method kept outside the repo registers itself the same way.
"""
import importlib
import os
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from losses import dist_loss, dkd_loss, kd_only_loss, standardize_logits


def positive(value):
    return None if value > 0 else "must be > 0"


def nonnegative(value):
    return None if value >= 0 else "must be >= 0"


def unit_interval(value):
    return None if 0 <= value <= 1 else "must be in [0, 1]"


class _NotAddedLater:
    def __repr__(self):
        return "NOT_ADDED_LATER"


NOT_ADDED_LATER = _NotAddedLater()


@dataclass(frozen=True)
class Flag:
    """A method's setting: `--name-with-dashes` on the command line, `name` in the run's
    config. `check(value)` returns what is wrong with a value, or None. `before`: the value
    runs made before the flag existed had (their checkpoints resume and compare as such).
    `suffix`: a boolean flag that, when set, names a variant of its own (`kd+ce+ls`)."""
    name: str
    default: Any
    help: str
    check: Any = None
    before: Any = NOT_ADDED_LATER
    suffix: str | None = None

    @property
    def option(self):
        return "--" + self.name.replace("_", "-")

    def add_to(self, parser, users):
        """Add the flag to an argparse parser; `users`: the methods that read it."""
        used_by = f"{', '.join(users)}: "
        if isinstance(self.default, bool):
            parser.add_argument(self.option, action="store_true", help=used_by + self.help)
        else:
            parser.add_argument(self.option, type=type(self.default), default=self.default,
                                help=f"{used_by}{self.help} (default: {self.default:g})")

    def problem(self, value):
        """'--flag must be ..., got value', or None."""
        wrong = self.check(value) if self.check is not None else None
        return f"{self.option} {wrong}, got {value}" if wrong else None


TEMPERATURE = Flag("temperature", 4.0, "softmax temperature T of the distillation term",
                   check=positive)
ALPHA = Flag("alpha", 0.5, "weight of the KD term; CE gets 1 - alpha", check=unit_interval)
LOGIT_STANDARDIZE = Flag(
    "logit_standardize", False, "z-score each sample's logits, student's and teacher's, before "
    "the distillation term (Sun et al., 2024); the CE term keeps the raw ones", before=False,
    suffix="ls")


class Outputs(NamedTuple):
    """A network's logits and, for a method that asks, its features (models.py)."""
    logits: torch.Tensor
    features: dict | None = None


class Method(nn.Module):
    """The training objective of one variant. `forward(student, images, labels, positions)`
    runs the student (and the teacher, unless stored logits serve it) on one batch and
    returns (student logits, parts): parts["loss"] is minimised, every other part is logged.

    Class attributes a method sets: `name` (its --loss), `summary` (one line of --help),
    `flags`, `uses_teacher`, `shared_logits` (stored teacher logits may stand in for the
    teacher's forward: false for a method that needs teacher features or changes the
    teacher's input), `features` (the student's and the teacher's features are computed:
    `model(x, features=True)`), `compared_with` (the variants the report compares it with).
    """
    name = None
    summary = ""
    flags = ()
    uses_teacher = True
    shared_logits = True
    features = False
    compared_with = ("kd+ce",)

    def __init__(self, config, teacher=None, shared_logits=None, train_labels=None):
        """`config`: an argparse Namespace or dict holding the method's flags (missing ones
        take their defaults); `teacher`: the frozen teacher (eval mode); `shared_logits`: a
        teacher_logits.SharedTeacherLogits, or None; `train_labels`: the labels of the
        training split, indexed by the positions the loader gives (for memory banks)."""
        super().__init__()
        config = config if isinstance(config, dict) else vars(config)
        for flag in self.flags:
            setattr(self, flag.name, config.get(flag.name, flag.default))
        if self.uses_teacher and teacher is None:
            raise ValueError(f"{self.name} distils from a teacher; none was given")
        # Kept out of nn.Module's bookkeeping: the teacher is no part of the method's
        # parameters (the optimizer would train it) or state (the checkpoint would store it).
        object.__setattr__(self, "teacher", teacher)
        self.shared = shared_logits if self.shared_logits else None
        self.step, self.steps_per_epoch = 0, 1

    def set_epoch(self, epoch, steps_per_epoch):
        """Called by the loop before each epoch, so warm-ups and the stored teacher logits
        follow the optimizer step, resumed runs included."""
        self.step, self.steps_per_epoch = epoch * steps_per_epoch, steps_per_epoch
        if self.shared is not None:
            self.shared.set_epoch(epoch, steps_per_epoch)

    def end_epoch(self, epoch):
        """Called by the loop after each epoch, before the checkpoint is written."""
        if self.shared is not None:
            self.shared.end_epoch(epoch)

    def mix(self, images, labels):
        """The hook that may change a batch before the student's forward (mixing); the
        teacher sees the images it returns. Identity by default."""
        return images, labels

    def forward(self, student, images, labels, positions):
        images, labels = self.mix(images, labels)
        out = student(images, features=True) if self.features else student(images)
        student_out = Outputs(*out) if self.features else Outputs(out)
        teacher_out = self.teacher_outputs(images) if self.uses_teacher else None
        parts = self.loss(student_out, teacher_out, labels, positions)
        self.step += 1
        return student_out.logits, parts

    @torch.no_grad()
    def teacher_outputs(self, images):
        """The teacher on exactly the student's batch, under no_grad: from the stored
        logits where they serve, else its forward (with features if the method needs them)."""
        if self.shared is not None:
            return Outputs(self.shared(*divmod(self.step, self.steps_per_epoch), images))
        if self.features:
            return Outputs(*self.teacher(images, features=True))
        return Outputs(self.teacher(images))

    def loss(self, student, teacher, labels, positions):
        """The parts of the objective from the networks' Outputs; `positions`: each image's
        position in the training split."""
        raise NotImplementedError

    def standardized(self, student, teacher):
        """The logits the distillation term sees: z-scored with --logit-standardize."""
        if getattr(self, "logit_standardize", False):
            return standardize_logits(student.logits), standardize_logits(teacher.logits)
        return student.logits, teacher.logits


METHODS = {}


def register(cls):
    """Add a Method subclass to the registry (its `--loss` name must be new); a flag shared
    by several methods must be one Flag object, so its default is written once."""
    if cls.name in METHODS:
        raise ValueError(f"a method named {cls.name!r} is registered already")
    known = {flag.name: flag for method in METHODS.values() for flag in method.flags}
    for flag in cls.flags:
        if known.get(flag.name, flag) is not flag:
            raise ValueError(f"{cls.name}: flag {flag.name!r} is declared by another method "
                             f"with other settings; share its Flag object")
    METHODS[cls.name] = cls
    return cls


def all_flags():
    """Every registered method's flags, each once, in registration order."""
    return list({flag.name: flag for cls in METHODS.values() for flag in cls.flags}.values())


def flag_users(flag):
    return [name for name, cls in METHODS.items() if flag in cls.flags]


def unused_flags(loss):
    """The method flags a run with `--loss loss` ignores (no part of its recipe); none for a
    run that is not a registered method's (the teacher, mean-teacher)."""
    if loss not in METHODS:
        return ()
    return tuple(flag.name for flag in all_flags() if flag not in METHODS[loss].flags)


def flags_before():
    """{flag: the value runs from before it existed had}, for the flags added later."""
    return {flag.name: flag.before for flag in all_flags() if flag.before is not NOT_ADDED_LATER}


def variant(config):
    """A student run's variant: its --loss, plus `+suffix` for each variant-naming flag set
    (`kd+ce+ls`: KD + CE with logit standardization)."""
    loss = config["loss"]
    flags = METHODS[loss].flags if loss in METHODS else (LOGIT_STANDARDIZE,)
    return loss + "".join(f"+{flag.suffix}" for flag in flags
                          if flag.suffix and config.get(flag.name))


def _variants(cls):
    return [cls.name] + [f"{cls.name}+{flag.suffix}" for flag in cls.flags if flag.suffix]


def variant_order():
    """Student variants in table order: the distilling methods as registered, then their
    variants with a suffix flag set, then the methods without a teacher (the baselines)."""
    distilling = [cls for cls in METHODS.values() if cls.uses_teacher]
    return ([cls.name for cls in distilling]
            + [v for cls in distilling for v in _variants(cls)[1:]]
            + [v for cls in METHODS.values() if not cls.uses_teacher for v in _variants(cls)])


def comparisons():
    """(a, b) pairs the report compares, a − b: every method against the variants it names
    in `compared_with`, and every suffixed variant against its method without the flag."""
    pairs = []
    for cls in METHODS.values():
        pairs += [(cls.name, other) for other in cls.compared_with]
        pairs += [(v, cls.name) for v in _variants(cls)[1:]]
    return pairs


def add_flags(parser):
    """`--loss` and every registered method's flags, each once."""
    names = ", ".join(METHODS)
    parser.add_argument("--loss", choices=list(METHODS), default="kd+ce", metavar="LOSS",
                        help=f"the training method, one of {names}: " + "; ".join(
                            f"{name}: {cls.summary}" for name, cls in METHODS.items())
                        + " (default: kd+ce)")
    for flag in all_flags():
        flag.add_to(parser, flag_users(flag))


def check_flags(config):
    """What is wrong with the method flags in `config` (a dict), as a list of lines; a
    flag set away from its default that the method ignores counts when it names a variant."""
    problems = [flag.problem(config[flag.name]) for flag in all_flags() if flag.name in config]
    loss = config.get("loss")
    for flag in all_flags():
        if flag.suffix and config.get(flag.name) and loss in METHODS \
                and flag not in METHODS[loss].flags:
            problems.append(f"{flag.option} goes with --loss {', '.join(flag_users(flag))}, "
                            f"not {loss}")
    return [p for p in problems if p]


def build(config, teacher=None, shared_logits=None, train_labels=None):
    """The method `config["loss"]` names, with its flags from `config`. Its modules start
    from weights that depend on the run's seed alone (a process's own RNG starts anywhere),
    and building it leaves the global RNG as it was."""
    config = config if isinstance(config, dict) else vars(config)
    cls = METHODS[config["loss"]]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.get("seed", 0))
        return cls(config, teacher if cls.uses_teacher else None,
                   shared_logits if cls.uses_teacher else None, train_labels)


@register
class KDCE(Method):
    """Hinton et al. (2015): alpha · T² · KL(teacher_T ‖ student_T) + (1 - alpha) · CE."""
    name = "kd+ce"
    summary = "alpha * KD + (1 - alpha) * CE (Hinton et al., 2015)"
    flags = (TEMPERATURE, ALPHA, LOGIT_STANDARDIZE)
    compared_with = ("ce",)

    def loss(self, student, teacher, labels, positions):
        s, t = self.standardized(student, teacher)
        ce = F.cross_entropy(student.logits.float(), labels)
        kd = kd_only_loss(s, t, self.temperature)
        loss = self.alpha * kd + (1 - self.alpha) * ce
        return {"loss": loss, "kd": kd.detach(), "ce": ce.detach()}


@register
class KD(Method):
    """The KD term alone, T² · KL(teacher_T ‖ student_T): no labels (the report's
    `distillation_loss_ex`); the CE is logged, not trained on."""
    name = "kd"
    summary = "the KD term alone, no labels"
    flags = (TEMPERATURE, LOGIT_STANDARDIZE)
    compared_with = ("ce", "kd+ce")

    def loss(self, student, teacher, labels, positions):
        s, t = self.standardized(student, teacher)
        ce = F.cross_entropy(student.logits.float(), labels)
        kd = kd_only_loss(s, t, self.temperature)
        return {"loss": kd, "kd": kd.detach(), "ce": ce.detach()}


@register
class DKD(Method):
    """Decoupled KD (Zhao et al., CVPR 2022): CE + w · T² · (alpha · TCKD + beta · NCKD),
    w rising linearly, per step, from 0 to 1 over the first `dkd_warmup` epochs (the paper's
    20 of 240 epochs)."""
    name = "dkd"
    summary = "CE + decoupled KD (Zhao et al., 2022)"
    flags = (TEMPERATURE, LOGIT_STANDARDIZE,
             Flag("dkd_alpha", 1.0, "weight of the target-class term TCKD", nonnegative,
                  before=1.0),
             Flag("dkd_beta", 0.5, "weight of the non-target term NCKD", nonnegative,
                  before=8.0),
             Flag("dkd_warmup", 1.0, "epochs over which the DKD term's weight rises linearly "
                  "from 0 to 1", nonnegative, before=1.0))

    def loss(self, student, teacher, labels, positions):
        s, t = self.standardized(student, teacher)
        ce = F.cross_entropy(student.logits.float(), labels)
        warm = min(1.0, (self.step + 1) / (self.dkd_warmup * self.steps_per_epoch)
                   ) if self.dkd_warmup > 0 else 1.0
        kd = dkd_loss(s, t, labels, self.temperature, self.dkd_alpha, self.dkd_beta)
        return {"loss": ce + warm * kd, "kd": kd.detach(), "ce": ce.detach()}


@register
class DIST(Method):
    """DIST (Huang et al., NeurIPS 2022): CE + T² · (beta · inter + gamma · intra), the
    relations of the softmax outputs matched by Pearson correlation."""
    name = "dist"
    summary = "CE + DIST (Huang et al., 2022)"
    flags = (TEMPERATURE,
             Flag("dist_beta", 0.5, "weight of the inter-class (per-image) relation",
                  nonnegative, before=1.0),
             Flag("dist_gamma", 0.5, "weight of the intra-class (per-class) relation",
                  nonnegative, before=1.0))

    def loss(self, student, teacher, labels, positions):
        ce = F.cross_entropy(student.logits.float(), labels)
        kd = dist_loss(student.logits, teacher.logits, self.temperature, self.dist_beta,
                       self.dist_gamma)
        return {"loss": ce + kd, "kd": kd.detach(), "ce": ce.detach()}


@register
class CE(Method):
    """Cross-entropy on the labels alone: the teacher's objective and the student trained
    alone (the baseline every distilling method is measured against)."""
    name = "ce"
    summary = "cross-entropy on the labels, no teacher"
    uses_teacher = False
    compared_with = ()

    def loss(self, student, teacher, labels, positions):
        return {"loss": F.cross_entropy(student.logits.float(), labels)}


for _module in os.environ.get("KD_METHODS", "").split():
    importlib.import_module(_module)
