"""The one checkpoint format: a plain dict of tensors and Python primitives.

Plain dicts load with `torch.load(..., weights_only=True)`, which refuses to unpickle
arbitrary objects, so a checkpoint from someone else cannot run code on your machine.
`map_location` makes a checkpoint saved on CUDA load on CPU and back.

Keys: format, model {name, arch_args}, model_state, optimizer_state, scheduler_state,
epoch (completed), epochs (planned), schedule_start_epoch, history (one dict per epoch),
rng (torch and CUDA generator states), config (the run's arguments); where the run has
them, ema {model_state, updates} (the EMA of its weights) and method_state (the parameters
and buffers of its method: a regressor, an embedding, a memory bank). A finished run
exported by export_finished lacks TRAINING_STATE and has exported = True.
"""
import errno
import hashlib
import os
import re
import sys

import torch

from kd.records import replace_atomically

FORMAT = "kd-cifar10/1"


class CheckpointError(ValueError):
    """A checkpoint file that is missing, unreadable or not one of ours."""


def save_atomically(obj, path):
    """torch.save `obj` to `path`, replacing it whole (kd.records.replace_atomically)."""
    replace_atomically(path, lambda tmp: torch.save(obj, tmp))


def save_checkpoint(ckpt, path):
    """Write atomically: a crash mid-write leaves the previous file intact. A failed write (a
    full disk: torch.save raises RuntimeError) is an OSError naming the file, and leaves no
    temporary file behind."""
    try:
        save_atomically({"format": FORMAT, **ckpt}, path)
    except (RuntimeError, OSError) as e:
        raise OSError(f"cannot write checkpoint {path} ({write_failure(e)}); the previous "
                      f"one, if any, is intact") from None


def save_cache(obj, path, what):
    """Store a cache the run does not need (the decoded images, a teacher's logits: later
    runs read them to save time); a failed write (a full disk) is one line on stderr, and
    the run goes on."""
    try:
        save_atomically(obj, path)
    except (RuntimeError, OSError) as e:
        print(f"warning: cannot store {what} in {path} ({write_failure(e)}); going on "
              f"without it", file=sys.stderr)


def write_failure(error):
    """Why a write failed, in a few words: an OSError's reason, or the first line of
    torch.save's RuntimeError without its C++ source location."""
    reason = getattr(error, "strerror", None) or str(error).strip().splitlines()[0]
    return re.sub(r"^\[enforce fail at [^\]]*\][ .]*", "", reason)[:160]


# What only resuming a run needs; a finished run exported without them is a third the size.
TRAINING_STATE = ("optimizer_state", "scheduler_state", "rng", "method_state")


def export_finished(path, out):
    """Write the finished run at `path` to `out` without its TRAINING_STATE: its model and EMA
    weights, history and config, which is all that --teacher, evaluate.py and the records
    need (a teacher brought back from a lent machine whose files must be small). Resuming
    the export is refused."""
    ckpt = load_checkpoint(path)
    if ckpt.get("epoch", 0) < ckpt.get("epochs", 0):
        raise CheckpointError(f"{path} is an unfinished run (epoch {ckpt['epoch']} of "
                              f"{ckpt['epochs']}): only a finished one is exported")
    save_checkpoint({**{k: v for k, v in ckpt.items()
                        if k not in (*TRAINING_STATE, "format")}, "exported": True}, out)


def weights_sha256(state_dict):
    """A SHA-256 of a state dict's names and values, whatever their device or memory
    format: the identity of a model's weights."""
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        tensor = state_dict[name].detach().cpu().contiguous().reshape(-1)
        digest.update(name.encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


# Errors of reading a file rather than of what it holds (torch reports a truncated archive
# as an OSError too, EINVAL): another user's file, a failing disk, a file gone meanwhile.
FILE_ERRORS = (errno.EACCES, errno.EPERM, errno.EIO, errno.ENOENT)


def load_checkpoint(path, map_location="cpu"):
    path = os.fspath(path)
    if os.path.isdir(path):
        raise CheckpointError(f"{path} is a folder, not a checkpoint file")
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:
        if isinstance(e, OSError) and e.errno in FILE_ERRORS:  # the file's, not its contents'
            raise CheckpointError(f"cannot read the checkpoint {path} ({e.strerror})") from None
        # Any: the weights-only unpickler reads a file that is no checkpoint (a metrics CSV
        # caught by a glob) as pickle opcodes, which raise IndexError ("pop from empty
        # list"), KeyError ("101"), ... as well as its own errors, whose first lines advise
        # loading unsafely. Only the line naming a refused object says something of use.
        refused = next((line.strip() for line in str(e).splitlines()
                        if "Unsupported global" in line), None)
        reason = refused[:160] if refused else "not a file torch.save wrote whole"
        raise CheckpointError(f"{path} is not a readable checkpoint ({reason})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a checkpoint of this project (format {FORMAT})")
    return ckpt
