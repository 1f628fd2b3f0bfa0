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
import inspect
import math
import os
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from losses import (
    ContrastMemory,
    Embed,
    HintRegressor,
    ReviewFusion,
    at_loss,
    dist_loss,
    dkd_loss,
    hcl_loss,
    hint_loss,
    kd_only_loss,
    standardize_logits,
)
from models import NUM_CLASSES, StudentNet


def positive(value):
    return None if 0 < value < math.inf else "must be > 0 and finite"


def nonnegative(value):
    return None if 0 <= value < math.inf else "must be >= 0 and finite"


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
    `suffix`: a boolean flag that, when set, names a variant of its own (`kd+ce+ls`).
    `type`: the value's type where the default (None: "not given") does not tell it."""
    name: str
    default: Any
    help: str
    check: Any = None
    before: Any = NOT_ADDED_LATER
    suffix: str | None = None
    type: Any = None

    @property
    def option(self):
        return "--" + self.name.replace("_", "-")

    def add_to(self, parser, users):
        """Add the flag to an argparse parser; `users`: the methods that read it."""
        used_by = f"{', '.join(users)}: "
        if isinstance(self.default, bool):
            parser.add_argument(self.option, action="store_true", help=used_by + self.help)
        else:
            shown = "" if self.default is None else f" (default: {self.default:g})"
            parser.add_argument(self.option, type=self.type or type(self.default),
                                default=self.default, help=f"{used_by}{self.help}{shown}")

    def problem(self, value):
        """'--flag must be ..., got value', or None (a flag not given is never wrong)."""
        wrong = self.check(value) if self.check is not None and value is not None else None
        return f"{self.option} {wrong}, got {value}" if wrong else None


TEMPERATURE = Flag("temperature", 4.0, "softmax temperature T of the distillation term",
                   check=positive)
ALPHA = Flag("alpha", 0.5, "weight of the KD term; CE gets 1 - alpha", check=unit_interval)
# Weights outside alpha's convex mix: logit standardization's authors train KD + CE with a KD
# weight of 9 (their --kd-weight) and a CE weight of 0.1 (mdistiller's), which alpha <= 1
# cannot express.
KD_WEIGHT = Flag(
    "kd_weight", None, "weight of the KD term, in place of --alpha's (kd+ce: with "
    "--ce-weight; default: --alpha for kd+ce, 1 for kd)", check=nonnegative, before=None,
    type=float)
CE_WEIGHT = Flag(
    "ce_weight", None, "weight of the CE term, in place of --alpha's 1 - alpha (with "
    "--kd-weight; default: 1 - alpha)", check=nonnegative, before=None, type=float)
LOGIT_STANDARDIZE = Flag(
    "logit_standardize", False, "z-score each sample's logits, student's and teacher's, before "
    "the distillation term (Sun et al., 2024); the CE term keeps the raw ones", before=False,
    suffix="ls")
# Function matching (Beyer et al., CVPR 2022, "Knowledge distillation: a good teacher is
# patient and consistent"): the student matches the teacher on mixed images.
MIXUP = Flag(
    "mixup", False, "function matching (Beyer et al., 2022): each image mixed pixel by pixel "
    "with another of its batch at a ratio drawn from Beta(1, 1), per image unless "
    "--mix-per-batch; the teacher sees the mixed images; a CE term, where the method has "
    "one, takes the two labels weighted by the ratio", before=False, suffix="mixup")
CUTMIX = Flag(
    "cutmix", False, "function matching with CutMix: a box of another image of the batch "
    "pasted in, its area drawn from Beta(1, 1), per image unless --mix-per-batch; the "
    "teacher sees the mixed images; a CE term, where the method has one, takes the two "
    "labels weighted by the areas kept", before=False, suffix="cutmix")
MIXING = (MIXUP, CUTMIX)
MIX_PER_BATCH = Flag(
    "mix_per_batch", False, "with --mixup or --cutmix: one ratio for the whole batch, from "
    "Dirichlet(1, 1), each image keeping the larger share and mixed with the image before "
    "it in the batch, as Beyer et al.'s code (big_vision) mixes up (with --cutmix: one box "
    "for the batch, this code's extension); default: a ratio and a random partner per "
    "image", before=False)
# The flags of a method that takes function matching's mixing.
FUNCTION_MATCHING = (*MIXING, MIX_PER_BATCH)


def mixup_batch(images, targets, ratio, partner):
    """Each image i as ratio[i] · itself + (1 - ratio[i]) · image partner[i], and its target
    (one-hot or already mixed, (N, classes)) mixed alike."""
    r = ratio.view(-1, 1, 1, 1)
    return r * images + (1 - r) * images[partner], mix_targets(targets, ratio, partner)


def cutmix_batch(images, targets, ratio, partner, centre):
    """CutMix (Yun et al., ICCV 2019), per image: a box of area about 1 - ratio[i], centred at
    centre[i] (fractions of the height and width) and cut at the image's edges, replaced by
    the same box of image partner[i]; the target is weighted by the area actually kept."""
    height, width = images.shape[-2:]
    side = (1 - ratio).sqrt()

    def span(centre, size):  # the box's [start, end) along one axis, per image
        lo = (centre * size - side * size / 2).round().clamp(0, size)
        hi = (centre * size + side * size / 2).round().clamp(0, size)
        axis = torch.arange(size, device=images.device)
        return (axis >= lo[:, None]) & (axis < hi[:, None])

    box = span(centre[:, 0], height)[:, :, None] & span(centre[:, 1], width)[:, None, :]
    kept = 1 - box.flatten(1).float().mean(1)
    return (torch.where(box[:, None], images[partner], images),
            mix_targets(targets, kept, partner))


def mix_targets(targets, ratio, partner):
    r = ratio.view(-1, 1)
    return r * targets + (1 - r) * targets[partner]


def stream_seed():
    """A seed for a method's own generator, drawn from the RNG that build() seeds with the
    run's seed: the run's seed alone decides it, yet its stream is not the loader's (whose
    generator starts from the seed itself)."""
    return int(torch.randint(2 ** 62, ()))


def to_device(tensor, device):
    """A CPU tensor on `device` without waiting for it: a copy from pageable memory to a GPU
    waits for the GPU's queue to drain; one from pinned memory is queued behind it."""
    if tensor is None:
        return None
    if device.type != "cuda":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)


class Outputs(NamedTuple):
    """A network's logits and, for a method that asks, its features (models.py)."""
    logits: torch.Tensor
    features: dict | None = None


class Method(nn.Module):
    """The training objective of one variant. `forward(student, images, labels, positions)`
    runs the student (and the teacher, unless stored logits serve it) on one batch and
    returns (student logits, parts, scored labels): parts["loss"] is minimised, every other
    part is logged, and the training accuracy is scored against the labels.

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
        self.mixing = next((f.name for f in MIXING if getattr(self, f.name, False)), None)
        # The stored logits are the teacher's outputs on the loader's images; a mixed batch
        # is new images, so with mixing the teacher runs on every batch.
        self.shared = shared_logits if self.shared_logits and not self.mixing else None
        if self.mixing:
            # Drawn on a fork, so that a subclass's modules start as they do unmixed.
            with torch.random.fork_rng(devices=[]):
                self.mix_generator = torch.Generator().manual_seed(stream_seed())
        self.step, self.steps_per_epoch = 0, 1

    # The mixing generator's state is in the state dict as "mix_rng", so a resumed run draws
    # what an uninterrupted one draws. It is no buffer: a buffer moves to the GPU with the
    # method, where reading and writing it every step would wait for the device. These two
    # hooks (BatchNorm's way with its own extra keys) serve state_dict and load_state_dict
    # of the method and of any module holding it, strict loading included.
    def _save_to_state_dict(self, destination, prefix, keep_vars):
        super()._save_to_state_dict(destination, prefix, keep_vars)
        if self.mixing:
            destination[prefix + "mix_rng"] = self.mix_generator.get_state()

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict,
                                      missing_keys, unexpected_keys, error_msgs)
        key = prefix + "mix_rng"
        if not self.mixing:
            return  # a mix_rng given stays an unexpected key
        if key in unexpected_keys:
            unexpected_keys.remove(key)
        if key in state_dict:
            self.mix_generator.set_state(state_dict[key].cpu())
        elif strict:
            missing_keys.append(key)

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
        """The hook that may change a batch before the student's forward; the teacher sees
        the images it returns. With --mixup or --cutmix: each image mixed with a partner
        (a permutation of the batch) at a ratio from Beta(1, 1) (with --mix-per-batch: one
        ratio, the larger share, and the previous image), and the labels returned as
        the mixed targets (N, classes), which F.cross_entropy takes as class probabilities,
        i.e. CE against both labels weighted by the ratio. Else the batch as it came."""
        if not self.mixing:
            return images, labels
        generator, n = self.mix_generator, len(images)
        cutmix = self.mixing == "cutmix"
        if getattr(self, "mix_per_batch", False):
            # big_vision's utils.mixup at p = 1, n = 2: Dirichlet(1, 1) sorted, so the
            # image's share is the larger of a uniform draw and its complement, and the
            # partner is the batch rolled by one (a shuffled batch: a random other image)
            drawn = torch.rand(1, generator=generator)
            ratio = torch.maximum(drawn, 1 - drawn).repeat(n)
            partner = torch.arange(n).roll(1)
            centre = torch.rand(1, 2, generator=generator).repeat(n, 1) if cutmix else None
        else:
            ratio = torch.rand(n, generator=generator)  # Beta(1, 1): the uniform on [0, 1]
            partner = torch.randperm(n, generator=generator)
            centre = torch.rand(n, 2, generator=generator) if cutmix else None
        ratio, partner, centre = (to_device(t, images.device) for t in (ratio, partner, centre))
        targets = F.one_hot(labels, NUM_CLASSES).float()
        if self.mixing == "mixup":
            return mixup_batch(images, targets, ratio, partner)
        return cutmix_batch(images, targets, ratio, partner, centre)

    def forward(self, student, images, labels, positions):
        """The student's logits, the loss and its parts, and the labels its training accuracy
        is scored against: the batch's own, or for a mixed batch each image's larger share
        (the image's own label scored a mixed image against a class it may hold little of)."""
        images, targets = self.mix(images, labels)
        out = student(images, features=True) if self.features else student(images)
        student_out = Outputs(*out) if self.features else Outputs(out)
        teacher_out = self.teacher_outputs(images) if self.uses_teacher else None
        parts = self.loss(student_out, teacher_out, targets, positions)
        self.step += 1
        return student_out.logits, parts, targets if targets.dim() == 1 else targets.argmax(1)

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

    @classmethod
    def problems(cls, config):
        """What is wrong with this method's flags taken together (each flag's own check is
        Flag.check), as a list of lines."""
        return []

    def warmup_weight(self, epochs):
        """A term's weight at this step: rising linearly, per optimizer step, from 0 to 1 over
        the first `epochs` epochs (1 throughout for 0)."""
        if epochs <= 0:
            return 1.0
        return min(1.0, (self.step + 1) / (epochs * self.steps_per_epoch))

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


def ignored_flags(config):
    """Notes on the method flags in `config` set away from their defaults that its --loss
    does not use (DKD's beta given to a KD run): accepted, as a sweep's shared flags may
    hold them, but no part of the run."""
    loss = config.get("loss")
    unused = unused_flags(loss)
    return [f"note: --loss {loss} does not use {flag.option} (used by "
            f"{', '.join(flag_users(flag))}); it is ignored"
            for flag in all_flags() if flag.name in unused and not refused_elsewhere(flag)
            and config.get(flag.name, flag.default) != flag.default]


def refused_elsewhere(flag):
    """Whether the flag, set for a method that does not take it, is check_flags' error rather
    than ignored_flags' note: a flag that names a variant, or --mix-per-batch (a method that
    takes the mixing flags but not it would mix per image under it)."""
    return bool(flag.suffix) or flag is MIX_PER_BATCH


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
        if refused_elsewhere(flag) and config.get(flag.name) and loss in METHODS \
                and flag not in METHODS[loss].flags:
            problems.append(f"{flag.option} goes with --loss {', '.join(flag_users(flag))}, "
                            f"not {loss}")
    if all(config.get(flag.name) for flag in MIXING):
        problems.append("--mixup and --cutmix exclude each other; choose one")
    if config.get(MIX_PER_BATCH.name) and not any(config.get(f.name) for f in MIXING) \
            and (loss not in METHODS or MIX_PER_BATCH in METHODS[loss].flags):
        problems.append(f"{MIX_PER_BATCH.option} says how --mixup or --cutmix draw; give one "
                        "of them")
    if loss in METHODS:
        problems += METHODS[loss].problems(config)
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
    """Hinton et al. (2015): alpha · T² · KL(teacher_T ‖ student_T) + (1 - alpha) · CE, or
    with --kd-weight and --ce-weight, kd_weight · T² · KL + ce_weight · CE."""
    name = "kd+ce"
    summary = "alpha * KD + (1 - alpha) * CE (Hinton et al., 2015)"
    flags = (TEMPERATURE, ALPHA, KD_WEIGHT, CE_WEIGHT, LOGIT_STANDARDIZE, *FUNCTION_MATCHING)
    compared_with = ("ce",)

    @classmethod
    def problems(cls, config):
        given = [config.get(f.name) is not None for f in (KD_WEIGHT, CE_WEIGHT)]
        if any(given) and not all(given):
            return ["--kd-weight and --ce-weight go together (they replace --alpha)"]
        if all(given) and config.get(ALPHA.name, ALPHA.default) != ALPHA.default:
            return ["--alpha or --kd-weight and --ce-weight, not both"]
        return []

    def loss(self, student, teacher, labels, positions):
        s, t = self.standardized(student, teacher)
        ce = F.cross_entropy(student.logits.float(), labels)
        kd = kd_only_loss(s, t, self.temperature)
        if self.kd_weight is None:
            loss = self.alpha * kd + (1 - self.alpha) * ce
        else:
            loss = self.kd_weight * kd + self.ce_weight * ce
        return {"loss": loss, "kd": kd.detach(), "ce": ce.detach()}


@register
class KD(Method):
    """The KD term alone, T² · KL(teacher_T ‖ student_T) (times --kd-weight if given): no
    labels (the report's `distillation_loss_ex`); the CE is logged, not trained on."""
    name = "kd"
    summary = "the KD term alone, no labels"
    flags = (TEMPERATURE, KD_WEIGHT, LOGIT_STANDARDIZE, *FUNCTION_MATCHING)
    compared_with = ("ce", "kd+ce")

    def loss(self, student, teacher, labels, positions):
        s, t = self.standardized(student, teacher)
        ce = F.cross_entropy(student.logits.float(), labels)
        kd = kd_only_loss(s, t, self.temperature)
        loss = kd if self.kd_weight is None else self.kd_weight * kd
        return {"loss": loss, "kd": kd.detach(), "ce": ce.detach()}


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
        warm = self.warmup_weight(self.dkd_warmup)
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
                  nonnegative, before=1.0), *FUNCTION_MATCHING)

    def loss(self, student, teacher, labels, positions):
        ce = F.cross_entropy(student.logits.float(), labels)
        kd = dist_loss(student.logits, teacher.logits, self.temperature, self.dist_beta,
                       self.dist_gamma)
        return {"loss": ce + kd, "kd": kd.detach(), "ce": ce.detach()}


# The student's blocks (32x32, 16x16, 8x8) and the teacher's blocks at the same resolutions,
# each the last map at its resolution: conv2 (before the pool), conv4 and conv6 (models.py).
STUDENT_STAGES = (0, 1, 2)
TEACHER_STAGES = (1, 4, 6)
HIDDEN = 256  # models._Net's hidden layer, the same in both networks


def stage_channels(config, teacher):
    """The channel counts of STUDENT_STAGES and TEACHER_STAGES, from the student's --widths
    (else StudentNet's default) and the teacher's own widths."""
    w0, w1 = config.get("widths") or inspect.signature(StudentNet).parameters["widths"].default
    t0, t1, t2, _ = teacher.arch_args["widths"]
    return (w0, w0, w1), (t0, t1, t2)


class FeatureMethod(Method):
    """A method on both networks' features: the teacher runs on every batch (stored logits
    hold no features)."""
    shared_logits = False
    features = True

    def ce(self, student, labels):
        return F.cross_entropy(student.logits.float(), labels)


@register
class FitNet(FeatureMethod):
    """FitNets (Romero et al., ICLR 2015): CE + weight · MSE(HintRegressor(student's hint),
    teacher's guided layer). FitNet guides a middle layer of a deeper, thinner student; this
    student has two convs, so its hint is its deepest conv, conv2 (8x8x64 after its ReLU), and
    the guided layer the teacher's deepest map at that resolution, conv6 (8x8x128 after its
    ReLU). Trained in one stage with the CE (mdistiller's form), not FitNet's two stages."""
    name = "fitnet"
    summary = ("CE + FitNet's hint (Romero et al., 2015): the student's conv2 regressed onto "
               "the teacher's conv6, both 8x8 after ReLU")
    flags = (Flag("fitnet_weight", 100.0, "weight of the hint term", nonnegative),
             *FUNCTION_MATCHING)

    def __init__(self, config, teacher=None, *args, **kwargs):
        super().__init__(config, teacher, *args, **kwargs)
        config = config if isinstance(config, dict) else vars(config)
        s, t = stage_channels(config, teacher)
        self.regressor = HintRegressor(s[-1], t[-1])

    def loss(self, student, teacher, labels, positions):
        ce = self.ce(student, labels)
        f_t = teacher.features["blocks"][TEACHER_STAGES[-1]]
        hint = hint_loss(self.regressor(student.features["blocks"][STUDENT_STAGES[-1]],
                                        f_t.shape[-2:]), f_t)
        return {"loss": ce + self.fitnet_weight * hint, "kd": hint.detach(), "ce": ce.detach()}


@register
class AT(FeatureMethod):
    """Attention transfer (Zagoruyko & Komodakis, ICLR 2017): CE + weight · the sum of
    at_loss over three pairs, the last map at each resolution: the student's conv1 (32x32,
    before the ReLU that follows its pool), pool + ReLU (16x16) and conv2 (8x8, after ReLU)
    against the teacher's conv2 (32x32, before the ReLU that follows its pool), conv4 and
    conv6 (after ReLU): both networks' maps at 32x32 are taken before ReLU, the others after."""
    name = "at"
    summary = ("CE + attention transfer (Zagoruyko & Komodakis, 2017) at 32x32, 16x16 and "
               "8x8, the last map of each resolution in both networks")
    flags = (Flag("at_weight", 1000.0, "weight of the attention-transfer term", nonnegative),
             *FUNCTION_MATCHING)

    def loss(self, student, teacher, labels, positions):
        ce = self.ce(student, labels)
        s, t = student.features["blocks"], teacher.features["blocks"]
        at = sum(at_loss(s[i], t[j]) for i, j in zip(STUDENT_STAGES, TEACHER_STAGES))
        return {"loss": ce + self.at_weight * at, "kd": at.detach(), "ce": ce.detach()}


@register
class ReviewKD(FeatureMethod):
    """ReviewKD (Chen et al., CVPR 2021): CE + w · weight · hcl_loss(ReviewFusion(student's
    stages), teacher's stages before their ReLU), w rising linearly, per step, from 0 to 1
    over the first `reviewkd_warmup` epochs (the paper warms up over 20 epochs of 240). The
    student's three blocks (32x32, 16x16, 8x8, as they come out) pair with the teacher's
    conv2 (32x32, which has no ReLU of its own), conv4 and conv6 (before ReLU), the last map at
    each resolution. The fused maps are `reviewkd_mid_channels` wide: by default 64, the
    authors' rule at the default widths (their CIFAR code's min(512, the student's deepest
    stage width); with other --widths it stays 64 unless set); the review
    path's multiply-adds grow linearly with it (docs/performance.md). The paper's extra 1x1
    stage (the pooled features) is left out."""
    name = "reviewkd"
    summary = ("CE + ReviewKD (Chen et al., 2021): the student's 32x32, 16x16 and 8x8 blocks "
               "fused and matched to the teacher's conv2, conv4 and conv6 before ReLU")
    flags = (Flag("reviewkd_weight", 1.0, "weight of the hierarchical context loss",
                  nonnegative),
             Flag("reviewkd_warmup", 1.0, "epochs over which the ReviewKD term's weight rises "
                  "linearly from 0 to 1", nonnegative),
             Flag("reviewkd_mid_channels", 64, "width of the review path's fused maps",
                  positive, before=64), *FUNCTION_MATCHING)

    def __init__(self, config, teacher=None, *args, **kwargs):
        super().__init__(config, teacher, *args, **kwargs)
        config = config if isinstance(config, dict) else vars(config)
        self.fusion = ReviewFusion(*stage_channels(config, teacher),
                                   self.reviewkd_mid_channels)

    def loss(self, student, teacher, labels, positions):
        ce = self.ce(student, labels)
        blocks, preact = teacher.features["blocks"], teacher.features["preact"]
        t = [blocks[j] if preact[j] is None else preact[j] for j in TEACHER_STAGES]
        fused = self.fusion([student.features["blocks"][i] for i in STUDENT_STAGES])
        warm = self.warmup_weight(self.reviewkd_warmup)
        hcl = hcl_loss(fused, t)
        return {"loss": ce + warm * self.reviewkd_weight * hcl, "kd": hcl.detach(),
                "ce": ce.detach()}


@register
class CRD(FeatureMethod):
    """Contrastive representation distillation (Tian et al., ICLR 2020), as RepDistiller
    runs it: CE + weight · the NCE loss of ContrastMemory on Embed heads of both networks'
    256-unit hidden layer (the teacher's detached, both heads trained), the memory holding
    one embedding per training image (indexed by `positions`), temperature 0.07, momentum
    0.5, K negatives of other classes per image. It takes no mixing: a memory row and its
    positive are one training image, and a mixed image is two."""
    name = "crd"
    summary = ("CE + CRD (Tian et al., 2020): the hidden layers' embeddings contrasted with "
               "a memory of every training image's")
    flags = (Flag("crd_weight", 0.8, "weight of the contrastive term", nonnegative),
             Flag("crd_k", 4096, "negatives per image drawn from the memory", positive),
             Flag("crd_temperature", 0.07, "temperature of the contrastive scores", positive))
    momentum = 0.5  # of the memory's rows, the paper's

    def __init__(self, config, teacher=None, shared_logits=None, train_labels=None):
        super().__init__(config, teacher, shared_logits, train_labels)
        if train_labels is None:
            raise ValueError("crd keeps a memory of every training image; it needs "
                             "train_labels")
        self.embed_s, self.embed_t = Embed(HIDDEN), Embed(HIDDEN)
        self.memory = ContrastMemory(train_labels, self.crd_k, temperature=self.crd_temperature,
                                     momentum=self.momentum, seed=stream_seed())

    def loss(self, student, teacher, labels, positions):
        ce = self.ce(student, labels)
        crd = self.memory(self.embed_s(student.features["hidden"]),
                          self.embed_t(teacher.features["hidden"]), positions)
        return {"loss": ce + self.crd_weight * crd, "kd": crd.detach(), "ce": ce.detach()}


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
