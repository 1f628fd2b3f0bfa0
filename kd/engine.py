"""The one training loop every script uses: train_one_epoch, evaluate, and fit, which
checkpoints every epoch and writes the run records beside each checkpoint.

The training objective is an argument: a methods.Method, called as
`method(model, images, labels, positions)`, returns the model's logits, a dict whose
"loss" entry is minimised (any other entries, e.g. "ce", "kd", are logged as parts) and the
labels the training accuracy is scored against (a mixed image's larger share).
"""
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from kd import plotting
from kd.checkpoints import save_checkpoint
from kd.cli import DRY_RUN_BATCHES, UserError, note_checkpoint
from kd.data import BatchLoader
from kd.device import autocast, machine_name, peak_memory_mb
from kd.ema import ModelEMA
from kd.interrupts import check_interrupt, interrupts_deferred
from kd.records import git_commit, record_paths, test_record_matches, write_json, write_records
from kd.runs import initial_model, restore_training_state, trained_on, training_state
from kd.schedule import lr_factor, make_optimizer
from models import NUM_CLASSES, model_spec

# How often, in steps, a CUDA run reads its loss on the host (the NaN check and the progress
# bar): each read waits for every queued kernel, so reading every step would starve the GPU.
# On the CPU a read costs nothing and happens every step.
CUDA_SYNC_EVERY = 50
# Training curves are redrawn at most this often (seconds): a GPU epoch is over in about a
# second, and a redraw that keeps it waiting on matplotlib costs a fifth to a third of that.
PLOT_EVERY_SECONDS = 30


class CurvesFigure:
    """A run's training-curve figure, redrawn after an epoch when PLOT_EVERY_SECONDS have
    passed since the last drawing, or when forced (the last epoch, an interrupt)."""

    def __init__(self, path, title, second_model):
        self.path, self.title, self.second_model = path, title, second_model
        self.drawn_epochs, self.drawn_at = 0, -math.inf

    def update(self, history, force=False):
        due = force or time.monotonic() - self.drawn_at >= PLOT_EVERY_SECONDS
        if due and len(history) > self.drawn_epochs:
            plotting.plot_curves(history, self.path, title=self.title,
                                 second_model=self.second_model)
            self.drawn_epochs, self.drawn_at = len(history), time.monotonic()

    def update_as_the_run_stops(self, history):
        """The forced update after an interrupt. Further signals of the stop wait for it,
        and a drawing that fails then is a note, never the run's end: the interrupt may have
        landed inside the last drawing and left the plotting library broken for this
        process, and the stop must still end in its one line and exit status (the
        checkpoint is already whole)."""
        try:
            with interrupts_deferred():
                self.update(history, force=True)
        except KeyboardInterrupt:  # a further signal of the stop (a sweep passes it on):
            pass  # this run is stopping already
        except Exception as e:
            print(f"note: {self.path} was not redrawn ({type(e).__name__}: {e})",
                  file=sys.stderr)


def check_method_outputs(method, outputs):
    """Refuses, in one line, a method (one kept outside the repository, say) whose call returns
    what the loop does not take, which would otherwise fail deep in it with a traceback."""
    name = type(method).__name__
    if not isinstance(outputs, (tuple, list)) or len(outputs) != 3:
        count = len(outputs) if isinstance(outputs, (tuple, list)) else 1
        raise UserError(f"{name}.forward returns {count} values, not 3: the logits, the loss "
                        "and its parts, the labels scored")
    if not isinstance(outputs[1], dict) or "loss" not in outputs[1]:
        raise UserError(f"{name}.loss returns {type(outputs[1]).__name__}, not a dict with a "
                        "'loss' entry (and any parts to log)")


def train_one_epoch(model, loader, method, optimizer, scheduler, device, precision="fp32",
                    desc="train", after_step=None, sync_every=None, clip_grad_norm=0.0):
    """One pass over `loader` (batches of images, labels and positions); returns mean loss,
    accuracy (%), mean loss parts, the LR of the last step and, with `clip_grad_norm` > 0
    (each step's gradient rescaled to at most that L2 norm), the share of steps clipped.

    The forward passes and the loss (`method`) run under `precision` ("fp32" or "bf16"
    autocast).
    `after_step()` runs after every optimizer step (e.g. an EMA update). The loss is read on
    the host every `sync_every` steps (default: every step on the CPU, CUDA_SYNC_EVERY on a
    GPU) and nowhere else, so a GPU is never kept waiting in between.
    """
    if sync_every is None:
        sync_every = 1 if device.type == "cpu" else CUDA_SYNC_EVERY
    model.train()
    sums, correct, seen, lr, clipped = {}, 0, 0, None, 0
    parameters = [p for group in optimizer.param_groups for p in group["params"]]
    bar = tqdm(loader, desc=desc, leave=False, unit="batch", mininterval=1.0)
    for step, (images, labels, positions) in enumerate(bar):
        with autocast(device, precision):
            outputs = method(model, images, labels, positions)
        if step == 0:
            check_method_outputs(method, outputs)
        logits, losses, scored = outputs
        loss = losses["loss"]
        if step % sync_every == 0:
            # Before the step, so on the CPU a NaN loss never reaches the weights. On a GPU it
            # may for up to sync_every - 1 steps, but never a checkpoint: the epoch's sum is
            # checked, and fit checks the weights before they are saved.
            value = loss.item()
            if not math.isfinite(value):
                raise FloatingPointError(f"non-finite loss ({value}) at step {step + 1}")
            bar.set_postfix(loss=f"{value:.3f}", refresh=False)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if clip_grad_norm > 0:  # counted on the device: no host read per step
            clipped += torch.nn.utils.clip_grad_norm_(parameters, clip_grad_norm) > clip_grad_norm
        optimizer.step()
        lr = optimizer.param_groups[0]["lr"]  # the LR this step used, before the schedule moves
        scheduler.step()
        if after_step is not None:
            after_step()
        check_interrupt()
        n = len(labels)
        seen += n
        correct += (logits.argmax(1) == scored).sum()
        for k, v in losses.items():
            sums[k] = sums.get(k, 0.0) + v.detach().float() * n
    if not math.isfinite(total := sums.pop("loss").item()):
        last_read = (len(loader) - 1) // sync_every * sync_every + 1
        raise FloatingPointError(f"non-finite loss after step {last_read}")
    metrics = {"loss": total / seen, "acc": 100.0 * correct.item() / seen, "images": seen,
               "lr": lr}
    if clip_grad_norm > 0:
        metrics["clipped"] = float(clipped) / (step + 1)
    metrics.update({k: v.item() / seen for k, v in sums.items()})
    return metrics


@torch.no_grad()
def evaluate(model, loader, device, num_classes=NUM_CLASSES):
    """Mean cross-entropy, accuracy (%) and confusion matrix (rows: true class, columns:
    predicted) of `model` over `loader`, in eval mode and in fp32 whatever the training
    precision, so accuracies compare across devices."""
    model.eval()
    loss, seen = 0.0, 0
    confusion = torch.zeros(num_classes * num_classes, dtype=torch.int64, device=device)
    for images, labels in loader:
        logits = model(images).float()
        loss += F.cross_entropy(logits, labels, reduction="sum")
        cells = labels * num_classes + logits.argmax(1)
        # index_add_, not bincount: CUDA's bincount reads the largest index on the host.
        confusion.index_add_(0, cells, torch.ones_like(cells))
        seen += len(labels)
    confusion = confusion.view(num_classes, num_classes).cpu()
    return {"loss": float(loss) / seen, "acc": 100.0 * int(confusion.trace()) / seen,
            "images": seen, "confusion": confusion}


def compiled(model, mode):
    """torch.compile(model) in `mode`, one graph per batch shape: without dynamic=False a
    second shape (the benchmark's teacher and student share their forward's code) turns the
    batch size symbolic, and the graphs timed are not the ones a training run replays."""
    return torch.compile(model, mode=mode, dynamic=False)


def fit(model_name, method, args, device, splits, ckpt=None, title=None, model=None,
        ema=None, update_ema=True, second_model="EMA"):
    """Train `model_name` (or a given `model`) with `method` (a methods.Method, whose own
    parameters train beside the model's and whose state is saved with the run),
    checkpointing every epoch.

    An EMA of the model's weights (kd.ema.ModelEMA with --ema-decay, unless that is 0, or the
    given `ema`) is updated after every step (unless `update_ema` is False: a frozen copy),
    evaluated every epoch, saved and resumed; `second_model` names it in the figure.
    Writes the checkpoint (--out), its config JSON and metrics CSV beside it, and
    `<plots-dir>/<name>_curves.png` (redrawn at most every PLOT_EVERY_SECONDS, and after the
    last epoch or an interrupt). Returns the trained model.
    """
    if model is None:
        model = initial_model(model_name, args, ckpt)
    # channels_last: faster training steps than contiguous NCHW on the dev CPU (oneDNN;
    # benchmarks/throughput.py times both, docs/performance.md has the figures); it is also
    # the layout cuDNN convolutions prefer.
    model = model.to(device, memory_format=torch.channels_last)
    method = method.to(device)
    if ema is None and args.ema_decay > 0:
        ema = ModelEMA(model, args.ema_decay)
    if ema is not None:
        ema = ema.to(device, memory_format=torch.channels_last).eval()
    max_batches = DRY_RUN_BATCHES if args.dry_run else None
    train_loader = BatchLoader(*splits["train"], args.batch_size, device, shuffle=True,
                               augment=not args.no_augment, seed=args.seed, drop_last=True,
                               max_batches=max_batches, positions=True)
    val_loader = BatchLoader(*splits["val"], 1000, device, max_batches=max_batches)
    start_epoch, schedule_start, history = 0, 0, []
    if ckpt is not None:
        start_epoch, history = ckpt["epoch"], list(ckpt["history"])
        schedule_start = ckpt["schedule_start_epoch"]
        if (start_epoch == ckpt["epochs"] and args.epochs > start_epoch
                and args.schedule != "constant"):
            # extending a finished run: a fresh cycle (docs/reliability.md); a constant
            # schedule has none, so the run is what a straight one would be
            schedule_start = start_epoch
    spe = len(train_loader)
    schedule = lambda step: lr_factor(  # noqa: E731
        step, spe, schedule_start, args.epochs, args.schedule, args.warmup)
    optimizer = make_optimizer([*model.parameters(), *method.parameters()], args, device)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    if ckpt is not None:
        restore_training_state(ckpt, args.out, model, optimizer, scheduler, schedule, ema,
                               method)
        note_checkpoint(args.out, start_epoch, args.epochs, awaited_test_record(args))
    # The compiled module shares its parameters with `model`, which is what gets saved and
    # evaluated (in eval mode a compiled module would compile a second graph). With
    # reduce-overhead a GPU replays the forward and backward as CUDA graphs; the optimizer
    # step (fused: a kernel per parameter group) and the EMA update (one lerp over its kept
    # lists) stay outside them, so the LR and EMA decay stay host numbers that no graph
    # captures. A new graph iteration starts at each forward (no backward pending), and each
    # step's outputs are used before the next forward, as replays require.
    step_model = compiled(model, args.compile) if args.compile else model
    paths = record_paths(args.out)
    name = Path(args.out).stem
    if start_epoch >= args.epochs:
        if (ckpt or {}).get("exported"):
            advice = "; exported without its training state, it cannot be extended"
        elif args.restart_if_changed:  # make and sweep.py rerun finished stages this way
            advice = ""
        elif args.dry_run:
            advice = "; a dry run is one epoch, never extended"
        else:
            advice = f"; pass --epochs N > {start_epoch} with --resume to extend it"
        print(f"{args.out} is already complete ({start_epoch} epoch{'s' * (start_epoch != 1)})"
              f"{advice}")
        # from the checkpoint: had their write failed after its (a full disk), they lag it
        write_records(paths, ckpt["config"], history)
        if not args.skip_test and not test_record_matches(paths["test"], args.run_id,
                                                          start_epoch):
            test_and_record(model, ema, splits, device, args, paths["test"], name,
                            start_epoch)
        return model.eval()

    config = {k: v for k, v in vars(args).items() if k != "default_epochs"}
    commit, dirty = git_commit()
    machine = machine_name(device)
    recorded_machine = ckpt["config"].get("machine") if ckpt is not None else None
    config.update(model=model_spec(model), torch_version=str(torch.__version__),
                  git_commit=commit, git_dirty=dirty, device=str(device),
                  machine=trained_on(history, recorded_machine, machine),
                  cpu_threads=torch.get_num_threads(), schedule_start_epoch=schedule_start)
    print(f"{name}: {model_spec(model)} on {device}, {len(splits['train'][1]):,} training / "
          f"{len(splits['val'][1]):,} validation images, epochs {start_epoch + 1}-{args.epochs}")
    curves = CurvesFigure(Path(args.plots_dir) / f"{name}_curves.png", title or name,
                          second_model)
    after_step = (lambda: ema.update_parameters(model)) if ema and update_ema else None
    try:
        for epoch in range(start_epoch, args.epochs):
            train_loader.set_epoch(epoch)
            method.set_epoch(epoch, len(train_loader))
            start = time.perf_counter()
            try:
                train = train_one_epoch(
                    step_model, train_loader, method, optimizer, scheduler, device, args.precision,
                    desc=f"{name} {epoch + 1}/{args.epochs}",
                    after_step=after_step, clip_grad_norm=args.clip_grad_norm)
            except FloatingPointError as e:
                raise UserError(f"{e} of epoch {epoch + 1}; stopped, the last good checkpoint "
                                f"({args.out}, epoch {epoch}) is kept") from None
            method.end_epoch(epoch)
            train_seconds = time.perf_counter() - start
            val = evaluate(model, val_loader, device)
            row = {"epoch": epoch + 1, "train_loss": train["loss"], "train_acc": train["acc"],
                   "val_loss": val["loss"], "val_acc": val["acc"],
                   "lr": train["lr"],
                   "epoch_seconds": time.perf_counter() - start,
                   "images_per_second": train["images"] / train_seconds, "device": str(device),
                   # per epoch: a run resumed elsewhere, or with another thread count, ran
                   # with both
                   "machine": machine, "cpu_threads": torch.get_num_threads(),
                   **peak_memory_mb(device)}
            row.update({f"train_{k}": v for k, v in train.items()
                        if k not in ("loss", "acc", "images", "lr")})
            if ema is not None:
                ema_val = evaluate(ema, val_loader, device)
                row.update(ema_val_loss=ema_val["loss"], ema_val_acc=ema_val["acc"])
            # A finite loss can still have a NaN gradient: on an epoch's last step nothing
            # reads the loss again, so the weights (and EMA) are checked through their
            # validation loss, which a non-finite weight or BatchNorm statistic makes NaN.
            if not all(map(math.isfinite, (val["loss"], row.get("ema_val_loss", 0.0)))):
                raise UserError(f"non-finite weights after epoch {epoch + 1}; stopped, the last "
                                f"good checkpoint ({args.out}, epoch {epoch}) is kept")
            history.append(row)
            with interrupts_deferred():  # checkpoint and records always agree, no *.tmp left
                # The test record measured an earlier epoch or run: gone first, so that a
                # failed write below never leaves it beside a new run's checkpoint.
                paths["test"].unlink(missing_ok=True)
                save_checkpoint({
                    "model": model_spec(model), "epoch": epoch + 1, "epochs": args.epochs,
                    "schedule_start_epoch": schedule_start, "history": history, "config": config,
                    **training_state(model, optimizer, scheduler, ema, method)}, args.out)
                write_records(paths, config, history)
                note_checkpoint(args.out, epoch + 1, args.epochs, awaited_test_record(args))
            curves.update(history, force=epoch + 1 == args.epochs)
            check_interrupt()
            tqdm.write(f"{name} epoch {epoch + 1}/{args.epochs}  train loss {train['loss']:.4f} "
                       f"acc {train['acc']:.2f}%  val loss {val['loss']:.4f} "
                       f"acc {val['acc']:.2f}%  "
                       + (f"EMA val acc {row['ema_val_acc']:.2f}%  " if ema is not None else "")
                       + f"lr {row['lr']:.3g}  {row['epoch_seconds']:.1f}s  "
                       f"{row['images_per_second']:.0f} img/s")
    except KeyboardInterrupt:  # the figure shows every epoch the checkpoint holds
        curves.update_as_the_run_stops(history)
        raise
    if not args.skip_test:
        test_and_record(model, ema, splits, device, args, paths["test"], name, args.epochs)
    return model.eval()


def awaited_test_record(args):
    """For the message after a Ctrl-C: the test record a finished run writes, and its id."""
    return None if args.skip_test else (record_paths(args.out)["test"], args.run_id)


def test_and_record(model, ema, splits, device, args, path, name, epoch):
    """The test set, touched once after training for the final number only; the record
    names the run and the epoch its weights are from."""
    max_batches = DRY_RUN_BATCHES if args.dry_run else None
    test_loader = BatchLoader(*splits["test"], 1000, device, max_batches=max_batches)
    test = evaluate(model, test_loader, device)
    record = {"run_id": args.run_id, "epoch": epoch, "test_loss": test["loss"],
              "test_acc": test["acc"], "test_images": test["images"]}
    message = f"{name} test loss {test['loss']:.4f} acc {test['acc']:.2f}%"
    if ema is not None:
        ema_test = evaluate(ema, test_loader, device)
        record.update(ema_test_loss=ema_test["loss"], ema_test_acc=ema_test["acc"])
        message += f", EMA loss {ema_test['loss']:.4f} acc {ema_test['acc']:.2f}%"
    write_json(path, record)
    print(f"{message} ({test['images']:,} test images) -> {path}")

