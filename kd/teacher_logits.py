"""The teacher's logits for every training batch of a seed, computed by the first KD run and
reused by the others, of any length.

For one seed every distillation variant sees exactly the same batches in the same order
(tests/test_student.py checks it), so each KD run would compute the same teacher forward
passes, about half of its time on a CPU. The first complete run of a seed stores them, as
computed (dtype included), in <checkpoint folder>/teacher_logits/<key>.pt; a later run with
the same key serves them instead, so it ends with bit-identical weights. The key covers what
the logits depend on: the teacher's weights, the data, the seed, batch size, subset,
augmentation, precision, the code (models.py: a forward edited under the same weights;
kd/data.py: the split and the augmentation; and a digest of the teacher's forward on a
fixed batch, for what no file list covers: the autocast dtype, how the teacher is
loaded), and the kernels: device type, torch version and machine
(kd.device.machine_name: the CPU's model name, family and model numbers, core count and
bf16 units). Not the run's length: epoch e's batches are the
same in a run of any length (the loader draws them from the seed and e), so a longer run is
served the epochs stored and computes the rest, and then stores them all. Each stored
batch carries a fingerprint of its images, checked against the batch being trained: a
mismatch is an error, never a silent fallback.
"""
import hashlib
import json
from pathlib import Path

import torch

from kd.checkpoints import CheckpointError, save_cache
from kd.device import autocast, machine_name

# The run settings the teacher's logits depend on, besides its weights and the data.
KEY_SETTINGS = ("seed", "batch_size", "train_subset", "no_augment", "dry_run", "precision")
ROOT = Path(__file__).resolve().parent.parent
# The teacher's forward (its weights' identity does not change when it is edited) and the
# batches (an edited split or augmentation would be caught by the fingerprints, but only
# after an epoch trained on the old batches' logits).
CODE_FILES = ("models.py", "kd/data.py")


def cache_path(args, device, teacher):
    """Where the logits of this run's teacher (as loaded), data and batches are (or will be)
    stored."""
    # torch and the machine name the kernels, whose bits a served run must share: a torch
    # upgrade, or a cluster's checkpoint folder shared by two GPU models, stores apart.
    key = {"teacher": args.teacher_identity["sha256"], "data": args.data_identity["sha256"],
           "code": [hashlib.sha256((ROOT / name).read_bytes()).hexdigest()
                    for name in CODE_FILES],
           "forward": forward_digest(teacher, device, args.precision),
           "device": device.type, "torch": torch.__version__, "machine": machine_name(device),
           **{name: getattr(args, name) for name in KEY_SETTINGS}}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return Path(args.out).parent / "teacher_logits" / f"{digest}.pt"


def forward_digest(teacher, device, precision):
    """SHA-256 of the teacher's logits on a fixed batch, computed as a run computes them (as
    loaded, in the loader's layout, under the run's autocast): it changes with whatever
    changes those bits under the same weights and is in no file of CODE_FILES (the autocast
    dtype kd.device gives a precision, how runs.load_teacher prepares the teacher)."""
    images = torch.rand(8, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    images = images.to(device, memory_format=torch.channels_last)
    with torch.no_grad(), autocast(device, precision):
        logits = teacher(images)
    return hashlib.sha256(logits.float().cpu().numpy().tobytes()).hexdigest()


def fingerprint(images):
    """Three numbers that differ for any other batch in practice: the sum of the pixels,
    their sum weighted by the image's position in the batch (a reordered batch changes it),
    and by the pixel's position in its image (a flip or shift keeps an image's sum, not
    this). Stores written before the third hold the first two (SharedTeacherLogits)."""
    pixels = images.detach().double().flatten(1)
    per_image = pixels.sum(1)
    weights = torch.arange(1, len(per_image) + 1, device=images.device, dtype=torch.float64)
    places = torch.arange(1, pixels.shape[1] + 1, device=images.device, dtype=torch.float64)
    return torch.stack([per_image.sum(), (per_image * weights).sum(), (pixels @ places).sum()])


class SharedTeacherLogits:
    """teacher(images) for step `step` of epoch `epoch`, served from the stored logits when
    there are any for that batch, else computed (and kept, to be stored by `end_epoch`).

    The logits and fingerprints of the whole run live in two tensors allocated once, never a
    small tensor kept per batch: those, left between each step's temporaries on glibc's
    heap, kept it from being reused, and a DKD run on one thread grew by about 260 MB per
    epoch (docs/usage.md)."""

    def __init__(self, teacher, path, epochs):
        self.teacher, self.path, self.epochs = teacher, Path(path), epochs
        self.steps_per_epoch, self.mismatch = None, None
        self.logits = self.fingerprints = None  # (epochs, steps, ...), from the first known
        self.width = {}  # (epoch, step) of each batch known: the numbers its fingerprint has
        self.stored_epochs, self.served = 0, 0

    def set_epoch(self, epoch, steps_per_epoch):
        """On the first call, load the stored logits, if any."""
        if self.steps_per_epoch is None:
            self.steps_per_epoch = steps_per_epoch
            self.load()

    def load(self):
        if not self.path.is_file():
            return
        try:
            stored = torch.load(self.path, weights_only=True)
            epochs, steps_per_epoch, width = stored["fingerprints"].shape
        except Exception:  # an unreadable store is never trusted: this run rewrites it
            return
        if steps_per_epoch != self.steps_per_epoch:
            return
        self.stored_epochs, kept = epochs, min(epochs, self.epochs)
        self.allocate(stored["logits"][0, 0])
        self.logits[:kept] = stored["logits"][:kept]
        self.fingerprints[:kept, :, :width] = stored["fingerprints"][:kept]
        self.width = {(e, s): width for e in range(kept) for s in range(steps_per_epoch)}

    def allocate(self, batch_logits):
        """The run's two tensors, shaped and typed after one batch's logits."""
        runs = (self.epochs, self.steps_per_epoch)
        self.logits = batch_logits.new_empty(runs + tuple(batch_logits.shape))
        self.fingerprints = batch_logits.new_zeros(runs + (3,), dtype=torch.float64)

    def __call__(self, epoch, step, images):
        if self.logits is not None and self.logits.device != images.device:
            # the stored logits go to a GPU once, not per step
            self.logits, self.fingerprints = (t.to(images.device)
                                              for t in (self.logits, self.fingerprints))
        width, current = self.width.get((epoch, step)), fingerprint(images)
        if width is None:
            logits = self.teacher(images)
            if self.logits is None:
                self.allocate(logits)
            self.logits[epoch, step] = logits
            self.fingerprints[epoch, step] = current
            self.width[epoch, step] = len(current)
            return logits
        # Compared on the device and read at the epoch's end: no host sync per step on a GPU.
        # An older store's two numbers are checked as they are, and kept whole from here on.
        wrong = (current[:width] != self.fingerprints[epoch, step, :width]).any()
        self.fingerprints[epoch, step] = current
        self.width[epoch, step] = len(current)
        self.mismatch = wrong if self.mismatch is None else self.mismatch | wrong
        self.served += 1
        return self.logits[epoch, step]

    def end_epoch(self, epoch):
        """Raise if a batch served this epoch was not the batch its logits were computed
        for; after the last epoch, store the logits if every batch of the run is known and
        the store holds fewer epochs."""
        if self.mismatch is not None and bool(self.mismatch):
            raise CheckpointError(
                f"{self.path}: the stored teacher logits belong to other batches than this "
                f"run's (a change in the data pipeline?); delete the file or pass "
                f"--no-shared-logits")
        self.mismatch = None
        complete = len(self.width) == self.epochs * self.steps_per_epoch
        if epoch < self.epochs - 1 or self.stored_epochs >= self.epochs or not complete:
            return
        # Epochs of an older store that this (resumed) run did not serve keep its numbers.
        width = min(self.width.values())
        save_cache({"fingerprints": self.fingerprints[..., :width].cpu(),
                    "logits": self.logits.cpu()}, self.path, "the teacher's logits")
