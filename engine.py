"""The one training loop every script uses: common flags, fit/train_one_epoch/evaluate,
checkpointing every epoch, exact resume, and the run records beside each checkpoint.

A loss function is an argument: `loss_fn(logits, labels, images)` returns a dict whose
"loss" entry is minimised; any other entries (e.g. "ce", "kd") are logged as parts.
"""
import contextlib
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm import tqdm

import plotting
from checkpoints import CheckpointError, load_checkpoint, save_checkpoint
from data import BatchLoader, DataError, default_data_root, load_cifar10, split_train_val
from losses import check_kd_args
from models import NUM_CLASSES, build_model, model_from_checkpoint, model_spec

# Keys of the config that define the training run itself; --resume takes them from the
# checkpoint, so a resumed run is exactly the run that was interrupted.
RECIPE_KEYS = ("batch_size", "lr", "seed", "train_subset", "optimizer", "momentum",
               "weight_decay", "schedule", "warmup", "no_augment", "dry_run")
DRY_RUN_BATCHES = 2
RESUMABLE_KEYS = ("model", "model_state", "optimizer_state", "scheduler_state", "epoch",
                  "epochs", "schedule_start_epoch", "history", "rng", "config")


class UserError(ValueError):
    """Bad input from the command line: reported in one line, never as a traceback."""


def add_common_args(parser, *, out, epochs, batch_size, lr, optimizer, schedule):
    """The flags every training script shares; the keyword arguments are its defaults."""
    add_data_device_args(parser)
    a = parser.add_argument
    a("--epochs", type=int, default=None, help=f"epochs to train (default: {epochs}; with "
      "--resume: the checkpoint's, or more to extend a finished run)")
    a("--batch-size", type=int, default=batch_size, help=f"images per step (default: {batch_size})")
    a("--lr", type=float, default=lr, help=f"peak learning rate (default: {lr})")
    a("--optimizer", choices=("sgd", "adam"), default=optimizer,
      help=f"sgd = SGD with Nesterov momentum (default: {optimizer})")
    a("--momentum", type=float, default=0.9, help="SGD momentum (default: 0.9)")
    a("--weight-decay", type=float, default=5e-4, help="L2 weight decay (default: 5e-4)")
    a("--schedule", choices=("onecycle", "constant"), default=schedule,
      help="onecycle: linear warm-up to --lr, then linear decay to 0 by the last step; "
           f"constant: --lr throughout (default: {schedule})")
    a("--warmup", type=float, default=0.2, help="onecycle: share of steps spent warming up "
      "(default: 0.2)")
    a("--no-augment", action="store_true",
      help="no random crop/flip (the original report's setting)")
    a("--widths", type=int, nargs="+", default=None, metavar="W",
      help="channel widths of the network (default: the model's own, see models.py)")
    a("--seed", type=int, default=0, help="seed for initial weights, data order and "
      "augmentation (default: 0)")
    a("--compile", action="store_true", help="torch.compile the model for its training "
      "steps (off by default: on the 2-core dev CPU it gained 1.03x per teacher step and "
      "1.1-1.3x per student step, after 5-15 s of compiling; see benchmarks/throughput.py "
      "--compile)")
    a("--train-subset", type=int, default=None, metavar="N",
      help="train on the first N training images only (default: all 45,000)")
    a("--out", default=out, help=f"checkpoint path; run records are written beside it "
      f"(default: {out})")
    a("--resume", action="store_true", help="continue the run in --out from its last epoch, "
      "or extend a finished run to --epochs")
    a("--overwrite", action="store_true", help="start over even if --out exists (the old "
      "checkpoint is replaced only when the first new epoch ends)")
    a("--skip-test", action="store_true", help="no test-set evaluation at the end (for "
      "probes and sweeps, whose choices are made on the validation split)")
    a("--dry-run", action="store_true", help=f"one epoch of {DRY_RUN_BATCHES} batches, for "
      "smoke tests")
    parser.set_defaults(default_epochs=epochs)


def add_data_device_args(parser):
    """--data-root, --device and --plots-dir, shared by the training scripts and evaluate.py."""
    a = parser.add_argument
    a("--data-root", default=default_data_root(),
      help="torchvision CIFAR-10 root or ImageFolder root with train/ and test/ "
           "(default: $CIFAR10_ROOT or ./data)")
    a("--device", choices=("auto", "cpu", "cuda"), default="auto",
      help="auto: CUDA when present (default: auto)")
    a("--plots-dir", default="plots", help="where figures go (default: plots)")


def add_kd_args(parser):
    """The distillation flags train_student.py and train_ema.py share."""
    # T and alpha chosen on the validation split (experiments/probes.sh student: kd+ce, 4
    # epochs on 20k images): T=4, alpha=0.5 reached 66.1%; T=2 65.3/65.7% and T=4, alpha=0.9
    # 65.7% (alpha 0.5/0.9), T=8 64.6/63.9%. Against 60.9% trained alone, every setting helps;
    # between T 2-4 the differences are within what one seed can tell apart.
    parser.add_argument("--temperature", type=float, default=4.0,
                        help="softmax temperature T of the KD term (default: 4)")
    parser.add_argument("--alpha", type=float, default=0.5,
                        help="weight of the KD term in kd+ce (default: 0.5)")
    parser.add_argument("--teacher", default="checkpoints/teacher.pt",
                        help="the trained teacher's checkpoint (default: checkpoints/teacher.pt)")


def check_args(args):
    positive = {"--epochs": args.epochs, "--batch-size": args.batch_size, "--lr": args.lr,
                "--train-subset": args.train_subset}
    for flag, value in positive.items():
        if value is not None and not value > 0:
            raise UserError(f"{flag} must be positive, got {value}")
    if not math.isfinite(args.lr):
        raise UserError(f"--lr must be finite, got {args.lr}")
    if not 0 <= args.momentum < 1 or args.weight_decay < 0 or not 0 <= args.warmup < 1:
        raise UserError("need 0 <= --momentum < 1, --weight-decay >= 0 and 0 <= --warmup < 1")
    if hasattr(args, "temperature"):
        try:
            check_kd_args(args.temperature, args.alpha)
        except ValueError as e:
            raise UserError(f"--{e}") from None


def select_device(name):
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda asked for, but no CUDA device is available (use "
                        "--device cpu or auto)")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def record_paths(out):
    """Run records are named after the checkpoint, so runs sharing a folder never collide."""
    out = Path(out)
    stem = out.with_suffix("")
    return {"config": Path(f"{stem}.config.json"), "metrics": Path(f"{stem}.metrics.csv"),
            "test": Path(f"{stem}.test.json")}


def git_commit():
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).parent, timeout=5).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def autocast(device):
    # bf16 autocast is a win on CUDA; on CPUs without AMX (like the 2-core dev machine) it is
    # slower than fp32, so CPU runs stay in fp32.
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def lr_factor(step, steps_per_epoch, start_epoch, epochs, schedule, warmup):
    """LR multiplier at optimizer `step`; the schedule spans epochs [start_epoch, epochs)."""
    if schedule == "constant":
        return 1.0
    total = max((epochs - start_epoch) * steps_per_epoch, 1)
    t = (step - start_epoch * steps_per_epoch) / total
    if t < warmup:
        return min(1.0, (t + 1 / total) / warmup)  # the first step at a small non-zero LR
    return max(0.0, (1 - t) / (1 - warmup))


def make_optimizer(model, args):
    if args.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    return torch.optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum,
                           nesterov=args.momentum > 0, weight_decay=args.weight_decay)


def train_one_epoch(model, loader, loss_fn, optimizer, scheduler, device, desc="train",
                    after_step=None):
    """One pass over `loader`; returns mean loss, accuracy (%) and mean loss parts.
    `after_step()` runs after every optimizer step (e.g. an EMA update)."""
    model.train()
    sums, correct, seen = {}, 0, 0
    bar = tqdm(loader, desc=desc, leave=False, unit="batch", mininterval=1.0)
    for step, (images, labels) in enumerate(bar):
        with autocast(device):
            logits = model(images)
            losses = loss_fn(logits, labels, images)
        loss = losses["loss"]
        # Checked before the step, so a NaN never reaches the weights. A sync per step is
        # free on CPU; on CUDA check every 50 steps to keep the GPU fed.
        if (device.type == "cpu" or step % 50 == 0) and not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite loss ({loss.item()}) at step {step + 1}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        if after_step is not None:
            after_step()
        check_interrupt()
        n = len(labels)
        seen += n
        correct += (logits.argmax(1) == labels).sum()
        for k, v in losses.items():
            sums[k] = sums.get(k, 0.0) + v.detach().float() * n
        if step % 20 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}")
    if not torch.isfinite(sums["loss"]):
        raise FloatingPointError(f"non-finite loss in the last {len(loader) % 50 or 50} steps")
    metrics = {"loss": sums.pop("loss").item() / seen, "acc": 100.0 * correct.item() / seen,
               "images": seen}
    metrics.update({k: v.item() / seen for k, v in sums.items()})
    return metrics


@torch.no_grad()
def evaluate(model, loader, device, num_classes=NUM_CLASSES):
    """Mean cross-entropy, accuracy (%) and confusion matrix (rows: true class, columns:
    predicted) of `model` over `loader`, in eval mode."""
    model.eval()
    loss, seen = 0.0, 0
    confusion = torch.zeros(num_classes * num_classes, dtype=torch.int64, device=device)
    for images, labels in loader:
        with autocast(device):
            logits = model(images).float()
        loss += F.cross_entropy(logits, labels, reduction="sum")
        confusion += torch.bincount(labels * num_classes + logits.argmax(1),
                                    minlength=num_classes * num_classes)
        seen += len(labels)
    confusion = confusion.view(num_classes, num_classes).cpu()
    return {"loss": float(loss) / seen, "acc": 100.0 * int(confusion.trace()) / seen,
            "images": seen, "confusion": confusion}


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
        for key in RECIPE_KEYS + tuple(recipe_keys):
            if key not in ckpt["config"]:
                raise CheckpointError(f"{out} cannot be resumed: its config lacks {key!r}")
            setattr(args, key, ckpt["config"][key])
        done, planned = ckpt["epoch"], ckpt["epochs"]
        if args.epochs is None:
            args.epochs = planned
        if done < planned and args.epochs != planned:
            raise UserError(f"{out} is an interrupted {planned}-epoch run (at epoch {done}); "
                            f"resume it with --epochs {planned}, then extend it")
    elif out.exists() and not args.overwrite:
        raise UserError(f"{out} exists; pass --resume to continue or extend it, or "
                        f"--overwrite to start over")
    else:
        try:
            build_model(model_name, arch_args(args))
        except ValueError as e:
            raise UserError(f"--widths: the {model_name} {e}") from None
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


def make_ema(model, decay):
    """An EMA copy of `model` (torch.optim.swa_utils.AveragedModel).

    BatchNorm buffers are averaged like the weights (use_buffers=True), so the EMA's running
    statistics belong to the averaged weights and no update_bn pass is needed. The first
    update copies the model; after it the decay warms up as min(decay, (1 + n) / (10 + n))
    for update n, so a short run is not dominated by the EMA's starting point. Decay 1
    switches the warm-up off too: the EMA keeps its first copy.
    """
    def update(ema_params, model_params, num_averaged):
        n = int(num_averaged)
        warm = decay if decay == 1 else min(decay, (1 + n) / (10 + n))
        get_ema_multi_avg_fn(warm)(ema_params, model_params, num_averaged)
    return AveragedModel(model, multi_avg_fn=update, use_buffers=True)


def fit(model_name, loss_fn, args, device, splits, ckpt=None, title=None, model=None,
        ema=None, update_ema=True):
    """Train `model_name` (or a given `model`) with `loss_fn`, checkpointing every epoch.

    With `ema` (from make_ema), the EMA model is updated after every step (unless
    `update_ema` is False: a frozen copy), evaluated every epoch, saved and resumed.
    Writes the checkpoint (--out), its config JSON and metrics CSV beside it, and
    `<plots-dir>/<name>_curves.png`. Returns the trained model.
    """
    if model is None:
        model = initial_model(model_name, args, ckpt)
    # channels_last: 1.14x (teacher) and 1.12-1.33x (student) faster training steps than
    # contiguous NCHW on the 2-core dev CPU (benchmarks/throughput.py, oneDNN); it is also
    # the layout cuDNN convolutions prefer.
    model = model.to(device, memory_format=torch.channels_last)
    if ema is not None:
        ema = ema.to(device, memory_format=torch.channels_last).eval()
    max_batches = DRY_RUN_BATCHES if args.dry_run else None
    train_loader = BatchLoader(*splits["train"], args.batch_size, device, shuffle=True,
                               augment=not args.no_augment, seed=args.seed, drop_last=True,
                               max_batches=max_batches)
    val_loader = BatchLoader(*splits["val"], 1000, device, max_batches=max_batches)
    start_epoch, schedule_start, history = 0, 0, []
    if ckpt is not None:
        start_epoch, history = ckpt["epoch"], list(ckpt["history"])
        schedule_start = ckpt["schedule_start_epoch"]
        if start_epoch == ckpt["epochs"] and args.epochs > start_epoch:
            schedule_start = start_epoch  # extending a finished run: a fresh cycle (see README)
    spe = len(train_loader)
    schedule = lambda step: lr_factor(  # noqa: E731
        step, spe, schedule_start, args.epochs, args.schedule, args.warmup)
    optimizer = make_optimizer(model, args)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    if ckpt is not None:
        restore_training_state(ckpt, model, optimizer, scheduler, schedule, ema)
    # The compiled module shares its parameters with `model`, which is what gets saved and
    # evaluated (in eval mode a compiled module would compile a second graph).
    step_model = torch.compile(model) if args.compile else model
    if start_epoch >= args.epochs:
        print(f"{args.out} is already complete ({start_epoch} epochs); pass --epochs N > "
              f"{start_epoch} with --resume to extend it")
        return model.eval()

    paths = record_paths(args.out)
    name = Path(args.out).stem
    config = {k: v for k, v in vars(args).items() if k != "default_epochs"}
    config.update(model=model_spec(model), torch_version=str(torch.__version__),
                  git_commit=git_commit(), device=str(device), schedule_start_epoch=schedule_start)
    print(f"{name}: {model_spec(model)} on {device}, {len(splits['train'][1]):,} training / "
          f"{len(splits['val'][1]):,} validation images, epochs {start_epoch + 1}-{args.epochs}")
    for epoch in range(start_epoch, args.epochs):
        train_loader.set_epoch(epoch)
        start = time.perf_counter()
        try:
            train = train_one_epoch(
                step_model, train_loader, loss_fn, optimizer, scheduler, device,
                desc=f"{name} {epoch + 1}/{args.epochs}",
                after_step=(lambda: ema.update_parameters(model)) if ema and update_ema else None)
        except FloatingPointError as e:
            raise UserError(f"{e} of epoch {epoch + 1}; stopped, the last good checkpoint "
                            f"({args.out}, epoch {epoch}) is kept") from None
        train_seconds = time.perf_counter() - start
        val = evaluate(model, val_loader, device)
        row = {"epoch": epoch + 1, "train_loss": train["loss"], "train_acc": train["acc"],
               "val_loss": val["loss"], "val_acc": val["acc"],
               "lr": optimizer.param_groups[0]["lr"],
               "epoch_seconds": time.perf_counter() - start,
               "images_per_second": train["images"] / train_seconds}
        row.update({f"train_{k}": v for k, v in train.items()
                    if k not in ("loss", "acc", "images")})
        if ema is not None:
            ema_val = evaluate(ema, val_loader, device)
            row.update(ema_val_loss=ema_val["loss"], ema_val_acc=ema_val["acc"])
        history.append(row)
        with interrupts_deferred():  # checkpoint and records always agree, no *.tmp left
            save_checkpoint({
                "model": model_spec(model), "epoch": epoch + 1, "epochs": args.epochs,
                "schedule_start_epoch": schedule_start, "history": history, "config": config,
                **training_state(model, optimizer, scheduler, ema)}, args.out)
            write_records(paths, config, history)
        plotting.plot_curves(history, Path(args.plots_dir) / f"{name}_curves.png",
                             title=title or name)
        check_interrupt()
        tqdm.write(f"{name} epoch {epoch + 1}/{args.epochs}  train loss {train['loss']:.4f} "
                   f"acc {train['acc']:.2f}%  val loss {val['loss']:.4f} acc {val['acc']:.2f}%  "
                   + (f"EMA val acc {row['ema_val_acc']:.2f}%  " if ema is not None else "")
                   + f"lr {row['lr']:.3g}  {row['epoch_seconds']:.1f}s  "
                   f"{row['images_per_second']:.0f} img/s")
    if args.skip_test:
        return model.eval()
    # The test set is touched once, after training, for the final number only.
    test_loader = BatchLoader(*splits["test"], 1000, device, max_batches=max_batches)
    test = evaluate(model, test_loader, device)
    record = {"epoch": args.epochs, "test_loss": test["loss"], "test_acc": test["acc"],
              "test_images": test["images"]}
    message = f"{name} test loss {test['loss']:.4f} acc {test['acc']:.2f}%"
    if ema is not None:
        ema_test = evaluate(ema, test_loader, device)
        record.update(ema_test_loss=ema_test["loss"], ema_test_acc=ema_test["acc"])
        message += f", EMA loss {ema_test['loss']:.4f} acc {ema_test['acc']:.2f}%"
    write_json(paths["test"], record)
    print(f"{message} ({test['images']:,} test images) -> {paths['test']}")
    return model.eval()


def training_state(model, optimizer, scheduler, ema=None):
    """Everything --resume needs besides the run's records: weights, optimizer, schedule, RNG
    states, and the EMA model with its update count."""
    state = {"model_state": model.state_dict(), "optimizer_state": optimizer.state_dict(),
             "scheduler_state": scheduler.state_dict(),
             "rng": {"torch": torch.get_rng_state(),
                     "cuda": torch.cuda.get_rng_state() if torch.cuda.is_initialized() else None}}
    if ema is not None:
        state["ema"] = {"model_state": ema.module.state_dict(), "updates": int(ema.n_averaged)}
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
        ema.n_averaged.fill_(ckpt["ema"]["updates"])
    torch.set_rng_state(ckpt["rng"]["torch"].cpu())
    if torch.cuda.is_initialized() and ckpt["rng"].get("cuda") is not None:
        torch.cuda.set_rng_state(ckpt["rng"]["cuda"].cpu())


def write_records(paths, config, history):
    """Config JSON and metrics CSV, rewritten whole from the checkpoint's history each epoch,
    so they always agree with the checkpoint beside them."""
    write_json(paths["config"], config)
    write_text(paths["metrics"], pd.DataFrame(history).to_csv(index=False))


def write_json(path, obj):
    write_text(path, json.dumps(obj, indent=2) + "\n")


def write_text(path, text):
    tmp = Path(f"{path}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


_interrupt_requested = False


def _note_interrupt(signum, frame):
    global _interrupt_requested
    _interrupt_requested = True


def _raise_interrupt(signum, frame):
    _note_interrupt(signum, frame)
    raise KeyboardInterrupt


def check_interrupt():
    """Raise KeyboardInterrupt if a Ctrl-C or SIGTERM came whose exception was lost: Python
    ignores exceptions raised inside finalizers (weakref callbacks, __del__), and a signal
    that lands in one, e.g. while matplotlib closes a figure, would otherwise be dropped."""
    if _interrupt_requested:
        raise KeyboardInterrupt


@contextlib.contextmanager
def interrupts_deferred():
    """Hold Ctrl-C and SIGTERM until the block ends (then raise KeyboardInterrupt), so that
    an interrupt cannot fall between writing a checkpoint and the records beside it."""
    handlers = {sig: signal.signal(sig, _note_interrupt)
                for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    check_interrupt()


def run_cli(main):
    """Run a script's main(): bad input is one line on stderr and exit 2; Ctrl-C or SIGTERM
    exits 130 with the last complete checkpoint intact (it is only ever replaced atomically)."""
    # SIGINT explicitly too: a shell starts background jobs with SIGINT ignored, and Python
    # then keeps ignoring it; a signal sent to this process on purpose should stop it cleanly.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _raise_interrupt)
    try:
        main()
    except (UserError, DataError, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("\ninterrupted: the last complete epoch's checkpoint is intact; rerun with "
              "--resume to continue", file=sys.stderr)
        sys.exit(130)
    except OSError as e:  # a full disk or a vanished folder mid-run: say what, not where
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)

