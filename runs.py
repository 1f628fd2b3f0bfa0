"""Starting and resuming a run: the flags checked, fresh start / resume / extension decided,
the data loaded, and the training state saved into and restored from a checkpoint."""
import os
from pathlib import Path

import torch

from checkpoints import CheckpointError, load_checkpoint
from cli import UserError, check_args
from data import load_cifar10, split_train_val
from device import resolve_precision, select_device
from models import build_model, model_from_checkpoint

# Keys of the config that define the training run itself; --resume takes them from the
# checkpoint, so a resumed run is exactly the run that was interrupted.
RECIPE_KEYS = ("batch_size", "lr", "seed", "train_subset", "optimizer", "momentum",
               "weight_decay", "schedule", "warmup", "no_augment", "dry_run", "precision")
RESUMABLE_KEYS = ("model", "model_state", "optimizer_state", "scheduler_state", "epoch",
                  "epochs", "schedule_start_epoch", "history", "rng", "config")


def prepare_run(args, model_name, recipe_keys=()):
    """Validate the flags, decide fresh start / resume / extension, and load the data.

    `recipe_keys` names a script's own flags that, like RECIPE_KEYS, define the run and are
    restored from the checkpoint on --resume. Returns (args, device, data splits, checkpoint
    or None). Every rejection happens here, before anything is written.
    """
    check_args(args)
    device = select_device(args.device)
    out = Path(args.out)
    ckpt = None
    if out.is_dir():
        raise UserError(f"--out {out} is a folder; give the checkpoint's file name")
    for folder, flag in ((out.parent, "--out"), (Path(args.plots_dir), "--plots-dir")):
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UserError(f"{flag}: cannot create {folder} ({e.strerror})") from None
        if not os.access(folder, os.W_OK):
            raise UserError(f"{flag}: {folder} is not writable")
    if args.resume:
        ckpt = load_checkpoint(out, map_location=device)
        missing = sorted(set(RESUMABLE_KEYS) - set(ckpt))
        if missing:
            raise CheckpointError(f"{out} cannot be resumed: it lacks {', '.join(missing)}")
        if ckpt["model"]["name"] != model_name:
            raise UserError(f"{out} holds a {ckpt['model']['name']} run; this script trains "
                            f"the {model_name}")
        config = ckpt["config"]
        # Runs from before --precision existed trained in bf16 on CUDA and fp32 on the CPU.
        config.setdefault("precision", "bf16" if config.get("device", "").startswith("cuda")
                          else "fp32")
        for key in RECIPE_KEYS + tuple(recipe_keys):
            if key not in config:
                raise CheckpointError(f"{out} cannot be resumed: its config lacks {key!r}")
            setattr(args, key, config[key])
        done, planned = ckpt["epoch"], ckpt["epochs"]
        if args.epochs is None:
            args.epochs = planned
        if done < planned and args.epochs != planned:
            raise UserError(f"{out} is an interrupted {planned}-epoch run (at epoch {done}); "
                            f"resume it with --epochs {planned}, then extend it")
        before = torch.device(config.get("device", "cpu")).type
        if before != device.type:
            print(f"note: {out} ran on {before} and continues on {device.type}: same batches "
                  f"and {args.precision} arithmetic, but other kernels, so not bit for bit "
                  f"the run that stays on {before} (each epoch's device is in its metrics)")
    elif out.exists() and not args.overwrite:
        raise UserError(f"{out} exists; pass --resume to continue or extend it, or "
                        f"--overwrite to start over")
    else:
        try:
            build_model(model_name, arch_args(args))
        except ValueError as e:
            raise UserError(f"--widths: the {model_name} {e}") from None
    args.precision = resolve_precision(args.precision, device)
    if ckpt is None and (args.epochs is None or args.dry_run):
        args.epochs = 1 if args.dry_run else args.default_epochs
    data = load_cifar10(args.data_root)
    train, val = split_train_val(data, args.train_subset)
    if args.train_subset is not None and args.train_subset > len(train[1]):
        raise UserError(f"--train-subset {args.train_subset} exceeds the {len(train[1])} "
                        f"training images")
    if min(args.batch_size, len(train[1])) < 2:
        raise UserError("training batches need at least 2 images (BatchNorm statistics); "
                        "raise --batch-size or --train-subset")
    return args, device, {"train": train, "val": val, "test": (data["test_images"],
                                                               data["test_labels"])}, ckpt


def load_teacher(path, device):
    """The trained teacher of a finished run, in eval mode, frozen, ready for KD."""
    ckpt = load_checkpoint(path, map_location=device)
    teacher = model_from_checkpoint(ckpt, path, device, kind="teacher")
    if ckpt.get("epoch", 0) < ckpt.get("epochs", 0):
        raise UserError(f"{path} is an unfinished run (epoch {ckpt['epoch']} of "
                        f"{ckpt['epochs']}); finish it with train_teacher.py --resume")
    return teacher.requires_grad_(False).to(memory_format=torch.channels_last)


def arch_args(args):
    return {"widths": args.widths} if args.widths else None


def initial_model(model_name, args, ckpt=None, seed=None):
    """The model a run starts from: its weights depend on the seed alone, so runs that differ
    only in their loss start from identical weights."""
    torch.manual_seed(args.seed if seed is None else seed)
    return build_model(model_name, ckpt["model"]["arch_args"] if ckpt else arch_args(args))


def training_state(model, optimizer, scheduler, ema=None):
    """Everything --resume needs besides the run's records: weights, optimizer, schedule, RNG
    states, and the EMA model with its update count."""
    state = {"model_state": model.state_dict(), "optimizer_state": optimizer.state_dict(),
             "scheduler_state": scheduler.state_dict(),
             "rng": {"torch": torch.get_rng_state(),
                     "cuda": torch.cuda.get_rng_state() if torch.cuda.is_initialized() else None}}
    if ema is not None:
        state["ema"] = {"model_state": ema.module.state_dict(), "updates": ema.updates}
    return state


def restore_training_state(ckpt, model, optimizer, scheduler, schedule, ema=None):
    """The inverse of training_state. The optimizer and scheduler must be built already:
    building a scheduler resets the optimizer's LR, so the LR is set again from `schedule`."""
    model.load_state_dict(ckpt["model_state"])
    optimizer.load_state_dict(ckpt["optimizer_state"])
    scheduler.load_state_dict(ckpt["scheduler_state"])
    for group, base_lr in zip(optimizer.param_groups, scheduler.base_lrs):
        group["lr"] = base_lr * schedule(scheduler.last_epoch)
    if ema is not None:
        ema.module.load_state_dict(ckpt["ema"]["model_state"])
        ema.load_updates(ckpt["ema"]["updates"])
    torch.set_rng_state(ckpt["rng"]["torch"].cpu())
    if torch.cuda.is_initialized() and ckpt["rng"].get("cuda") is not None:
        torch.cuda.set_rng_state(ckpt["rng"]["cuda"].cpu())
