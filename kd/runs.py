"""Starting and resuming a run: the flags checked, fresh start / resume / extension decided,
the data loaded, and the training state saved into and restored from a checkpoint."""
import contextlib
import functools
import json
import os
import socket
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import torch

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

import methods
from kd.checkpoints import TRAINING_STATE, CheckpointError, load_checkpoint, weights_sha256
from kd.cli import UserError, check_args, typed
from kd.data import VAL_SEED, DataError, load_cifar10, split_sha256, split_train_val
from kd.device import (
    bf16_is_native,
    machine_name,
    resolve_precision,
    same_machine,
    select_device,
)
from kd.records import record_paths
from kd.results import ADDED_RECIPE_KEYS, MACHINES_SEPARATOR, recipe_sha256
from kd.schedule import load_optimizer_state
from models import build_model, model_from_checkpoint

# Keys of the config that define the training run itself; --resume takes them from the
# checkpoint, so a resumed run is exactly the run that was interrupted.
RECIPE_KEYS = ("batch_size", "lr", "seed", "train_subset", "optimizer", "momentum",
               "weight_decay", "schedule", "warmup", "no_augment", "dry_run", "precision",
               "ema_decay", "clip_grad_norm", "widths")
RESUMABLE_KEYS = ("model", "model_state", "optimizer_state", "scheduler_state", "epoch",
                  "epochs", "schedule_start_epoch", "history", "rng", "config")


class RunKind(NamedTuple):
    """What a training script's run is, for prepare_run and stale_reasons: the model it
    trains, its own flags that define a run (restored on --resume like RECIPE_KEYS), and
    `teacher_of(args)`, the checkpoint path of the teacher it distils from, or None."""
    model: str
    recipe_keys: tuple = ()
    teacher_of: Callable | None = None


def prepare_run(args, model_name, recipe_keys=(), teacher_of=None):
    """Validate the flags, decide fresh start / resume / extension / restart, load the data.

    model_name, recipe_keys, teacher_of: a RunKind's fields (prepare_run(args, *kind)).
    Records in `args` (and so in the run's config) the run's id and the identity of its data
    and teacher, and refuses a teacher trained on other data
    or, on --resume, a teacher or data that changed since the checkpoint was written (with
    --restart-if-changed, such a run, or one whose recipe differs from this command's, starts
    over instead). Returns (args, device, data splits, checkpoint or None). Every rejection
    happens here, before anything is written.
    """
    check_args(args)
    device = select_device(args.device)
    out = check_out(args.out)
    for folder, flag in ((out.parent, "--out"), (Path(args.plots_dir), "--plots-dir")):
        make_folder(folder, flag)
    if not args.resume and out.exists():
        if not args.overwrite:
            raise UserError(f"{out} exists; pass --resume to continue or extend it, or "
                            f"--overwrite to start over")
        check_overwrite(out, model_name, args)
    try:
        build_model(model_name, arch_args(args))
    except ValueError as e:
        raise UserError(f"--widths: the {model_name} {e}") from None
    data = load_cifar10(args.data_root)
    args.data_identity = recorded_identity(data)
    teacher_of = teacher_of or (lambda args: None)
    ckpt = (load_resumable(out, model_name, args, recipe_keys, device, teacher_of)
            if args.resume else None)
    args.teacher_identity = teacher_identity(teacher_of(args), args.data_identity)
    if ckpt is None:
        args.epochs = epochs_asked(args)
        args.precision = resolve_precision(args.precision, device)
        if args.precision == "bf16" and not bf16_is_native(device):
            print(f"note: --precision bf16 on this {device.type}, which has no native bf16 "
                  f"units: emulated, many times slower than fp32 (docs/performance.md); "
                  f"--precision auto chooses fp32 here")
        args.run_id = uuid.uuid4().hex[:12]
        if args.epochs is None:
            args.epochs = args.default_epochs
    train, val = split_train_val(data, args.train_subset)
    if args.train_subset is not None and args.train_subset > len(train[1]):
        raise UserError(f"--train-subset {args.train_subset} exceeds the {len(train[1])} "
                        f"training images")
    if min(args.batch_size, len(train[1])) < 2:
        raise UserError("training batches need at least 2 images (BatchNorm statistics); "
                        "raise --batch-size or --train-subset")
    return args, device, {"train": train, "val": val, "test": (data["test_images"],
                                                               data["test_labels"])}, ckpt


@contextlib.contextmanager
def run_lock(args):
    """Hold the lock of the run in `args.out` while the block trains it: a second process given
    the same --out (two sweeps with overlapping runs, a run started twice by hand) is
    refused in one line, before it reads or writes anything of the run, where both would
    write the same checkpoint and records, epoch by epoch, into a run that is neither.

    An flock on `<stem>.lock` beside the checkpoint, whose text names the holder; the system
    drops it when its process ends, however it ends, so a file left by a killed process
    holds nothing. Windows, which has no flock, runs unlocked; where the file system refuses
    it (Lustre mounted without it), the run goes on unlocked after a warning."""
    check_args(args)  # a bad flag is refused before the folder is made
    out = check_out(args.out)
    path = record_paths(out)["lock"]
    make_folder(path.parent, "--out")
    handle = acquire(path, out)
    try:
        yield
    finally:
        if handle is not None:
            with contextlib.suppress(OSError):
                path.unlink()  # while still held, so no later holder's file is removed
            handle.close()


def acquire(path, out):
    """The open, flocked lock file at `path`; None where locking is not to be had."""
    if fcntl is None:
        return None
    while True:
        try:
            handle = open(path, "a+")
        except PermissionError:  # a lock file another user left: flock works read-only too
            try:
                handle = open(path)
            except PermissionError:
                raise UserError(f"cannot open {path}, the lock file another user left "
                                f"beside {out}: remove it if no process trains the run, "
                                f"or give another --out") from None
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "a process"
            handle.close()
            raise UserError(f"{out} is being trained by another process ({holder}); wait "
                            f"for it to end, or give another --out") from None
        except OSError as e:
            handle.close()
            print(f"warning: cannot lock {path} ({e.strerror}): nothing stops a second "
                  f"process from training {out} at the same time", file=sys.stderr)
            return None
        try:
            same_file = os.stat(path).st_ino == os.fstat(handle.fileno()).st_ino
        except FileNotFoundError:
            same_file = False
        if same_file:  # not a file its last holder removed as this process opened it
            break
        handle.close()
    if handle.writable():
        handle.truncate(0)
        handle.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        handle.flush()
    return handle


def check_out(out):
    out = Path(out)
    if out.is_dir():
        raise UserError(f"--out {out} is a folder; give the checkpoint's file name")
    if out.is_symlink():  # its run would lock <link>.lock, one given the target another file
        raise UserError(f"--out {out} is a symbolic link to {os.readlink(out)}; give the "
                        f"file itself (a save would replace the link by a file)")
    return out


def make_folder(folder, flag):
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"{flag}: cannot create {folder} ({e.strerror})") from None
    if not os.access(folder, os.W_OK):
        raise UserError(f"{flag}: {folder} is not writable")


def load_resumable(out, model_name, args, recipe_keys, device, teacher_of):
    """The checkpoint --resume continues, its recipe restored into `args`; None when
    --restart-if-changed finds it stale (then the run starts over)."""
    ckpt = load_checkpoint(out, map_location=device)
    # An export (checkpoints.export_finished) is a complete run without what continuing it
    # needs: resuming it is a no-op (make resumes every checkpoint it finds), extending it
    # is refused below.
    exported = bool(ckpt.get("exported"))
    missing = sorted(set(RESUMABLE_KEYS) - set(ckpt) - (set(TRAINING_STATE) if exported else set()))
    if missing:
        raise CheckpointError(f"{out} cannot be resumed: it lacks {', '.join(missing)}")
    if ckpt["model"]["name"] != model_name:
        raise UserError(f"{out} holds a {ckpt['model']['name']} run; this script trains "
                        f"the {model_name}")
    model_from_checkpoint(ckpt, out)  # its architecture and weights fit, or one line
    config = recorded_config(ckpt)
    if args.restart_if_changed:
        changes = changes_to(config, args, recipe_keys, teacher_of, device)
        if changes:
            print(f"{out} is stale ({'; '.join(changes)}): training it again from the start")
            return None
    lacking = [key for key in RECIPE_KEYS + tuple(recipe_keys) if key not in config]
    if lacking:
        raise CheckpointError(f"{out} cannot be resumed by this script: its config lacks "
                              f"{', '.join(map(repr, lacking))}, which this script's runs "
                              f"record (a run of another script?)")
    # A flag typed on the command line that differs from the recorded recipe is not used
    # (--epochs excepted: it extends the run). Typed, not merely defaulted: a bare --resume
    # differs from a run's non-default recipe in every setting it was started with.
    asked = typed() - {"epochs"}
    unused = [change for change in changed_recipe(config, args, recipe_keys, device)
              if change.split()[0] in asked]
    if unused:
        print(f"note: --resume continues {out} as recorded; this command's settings not used "
              f"(recorded -> given): {'; '.join(unused)} (--restart-if-changed would start "
              f"it over with them)")
    for key in RECIPE_KEYS + tuple(recipe_keys):
        setattr(args, key, config[key])
    args.epochs = epochs_asked(args)  # with the run's own --dry-run: never extended
    changes = changed_identity(config, args, teacher_of(args), strict=False)
    if changes:
        raise UserError(f"{out} cannot be resumed: {'; '.join(changes)}. Start it again "
                        f"with --overwrite, or give another --out")
    args.run_id = config.get("run_id") or uuid.uuid4().hex[:12]
    done, planned = ckpt["epoch"], ckpt["epochs"]
    if args.epochs is None:
        args.epochs = planned
    if exported and args.epochs != done:
        raise CheckpointError(f"{out} is a finished run exported without its training state: "
                              f"it serves as --teacher and for evaluate.py, and cannot be "
                              f"extended")
    if done < planned and args.epochs != planned:
        raise UserError(f"{out} is an interrupted {planned}-epoch run (at epoch {done}); "
                        f"resume it with --epochs {planned}, then extend it")
    if args.precision == "bf16" and args.epochs > done and not bf16_is_native(device):
        print(f"note: {out} trains in bf16, which this {device.type} has no native units "
              f"for; --precision fp32 with --restart-if-changed starts it over in fp32")
    before = torch.device(config.get("device", "cpu")).type
    if before != device.type:
        print(f"note: {out} ran on {before} and continues on {device.type}: same batches "
              f"and {args.precision} arithmetic, but other kernels, so not bit for bit "
              f"the run that stays on {before} (each epoch's device is in its metrics)")
    elif args.epochs > done:  # same device type, more epochs to train: other kernels?
        last_machine = (config.get("machine") or "").split(MACHINES_SEPARATOR)[-1]
        if config.get("compile") != args.compile:
            print(f"note: {out} ran with --compile {config.get('compile')} and continues "
                  f"with --compile {args.compile}: same batches and arithmetic, but other "
                  f"kernels, so not bit for bit the run that keeps its mode")
        if last_machine and not same_machine(last_machine, machine_name(device)):
            print(f"note: {out} ran on {last_machine} and continues on "
                  f"{machine_name(device)}: same batches and arithmetic, but another "
                  f"machine's kernels, so not bit for bit the run that stays on either (each "
                  f"epoch's machine is in its metrics)")
    return ckpt


def epochs_asked(args):
    """The epochs a command asks for (None: not given): a dry run is one epoch, whatever
    --epochs says."""
    return 1 if args.dry_run else args.epochs


def trained_on(history, recorded, current):
    """Every machine a run trained on, in order: its epochs' (those from before epochs
    recorded one ran on the config's), then this one's, which trains the next."""
    # rows from before epochs recorded one: the config's first machine (after a resume
    # elsewhere, it names both)
    first = (recorded or "").split(MACHINES_SEPARATOR)[0] or None
    names = []
    for name in [row.get("machine", first) for row in history] + [current]:
        # one machine under two spellings (before and since the CPU's family was recorded)
        # keeps the first: the later one would claim the whole run for a family its first
        # epochs did not record
        if name and not (names and same_machine(names[-1], name)):
            names.append(name)
    return MACHINES_SEPARATOR.join(names)


def recorded_config(ckpt):
    """The checkpoint's config with what older runs did not record filled in as they ran."""
    config = dict(ckpt["config"])  # the checkpoint's own stays as it was recorded
    # Runs from before --precision existed trained in bf16 on CUDA and fp32 on the CPU.
    config.setdefault("precision", "bf16" if config.get("device", "").startswith("cuda")
                      else "fp32")
    config.setdefault("widths", None)  # the models' defaults, which arch_args then held
    for key, value in ADDED_RECIPE_KEYS.items():
        config.setdefault(key, value)
    return config


def changes_to(config, args, recipe_keys, teacher_of, device):
    """What --restart-if-changed finds changed in a run (its `config`) against this command:
    its data, its teacher, or its recipe, defaults included. Empty: the run is current."""
    return (changed_identity(config, args, teacher_of(args), strict=True)
            + changed_recipe(config, args, recipe_keys, device))


def stale_reasons(args, kind):
    """What makes the run in args.out stale to the command that parsed `args` (a RunKind
    `kind`), as `--resume --restart-if-changed` would find it, without running it: for
    sweep.py, which skips finished runs and must skip the same ones make would. A run that
    cannot be checked (its checkpoint or teacher unreadable, its data missing) is stale,
    with the reason; running it says more."""
    try:
        config = recorded_config(load_checkpoint(args.out, map_location="cpu"))
        return checked_changes(config, args, kind)
    except NOT_CHECKABLE as e:
        return [f"not checked: {e}"]


# RuntimeError, AssertionError: torch asked about a CUDA device this machine lacks
NOT_CHECKABLE = (UserError, CheckpointError, DataError, OSError, RuntimeError, AssertionError)


def checked_changes(config, args, kind):
    """changes_to for sweep.py, which checks runs without running them."""
    args.data_identity = data_identity(args.data_root)
    return changes_to(config, args, kind.recipe_keys, kind.teacher_of or (lambda a: None),
                      checked_device(args))


def checked_device(args):
    """The device a run is checked as where sweep.py runs, which may lack the run's GPU (a
    cluster's login node): a run for --device cuda is checked as one on CUDA."""
    cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    return torch.device("cuda" if cuda else "cpu")


def repeated_run(args, kind):
    """A finished run beside args.out, under another name, that the command which parsed
    `args` would repeat: the same recipe, seed, teacher and data, defaults included
    (changes_to finds nothing); None where there is none. For sweep.py, which says so
    before it starts the run."""
    out = Path(args.out)
    for path in sorted(out.parent.glob("*.config.json")):
        checkpoint = Path(str(path).removesuffix(".config.json") + ".pt")
        try:
            config = json.loads(path.read_text())
            if checkpoint == out or not checkpoint.exists() or \
                    (config.get("seed"), config["model"]["name"], config.get("loss")) != \
                    (args.seed, kind.model, getattr(args, "loss", None)):
                continue
            metrics = record_paths(checkpoint)["metrics"]
            last_epoch = int(metrics.read_text().splitlines()[-1].split(",")[0])
            config = recorded_config({"config": config})
            # the recipe first: it needs neither the data nor the teacher read
            if last_epoch == config.get("epochs") and not changed_recipe(
                    config, args, kind.recipe_keys, checked_device(args)) and \
                    not checked_changes(config, args, kind):
                return checkpoint
        except (*NOT_CHECKABLE, ValueError, KeyError, IndexError):
            continue
    return None


def recorded_identity(data):
    """What a run records of its data (load_cifar10's): the images' identity and the split
    (its seed and, since 2026-12-05, a hash of its validation indices)."""
    return {**data["identity"], "val_seed": VAL_SEED,
            "split_sha256": split_sha256(len(data["train_labels"]))}


def same_data(then, now):
    """Whether two recorded data identities (recorded_identity's) are the same images split
    the same way; a split hash that either predates is not compared."""
    splits = (then.get("split_sha256"), now.get("split_sha256"))
    return (then["sha256"] == now["sha256"]
            and then.get("val_seed", VAL_SEED) == now.get("val_seed", VAL_SEED)
            and (None in splits or splits[0] == splits[1]))


@functools.cache
def data_identity(root):
    """recorded_identity of the data at `root`, read once per root and process."""
    return recorded_identity(load_cifar10(root))


def changed_identity(config, args, teacher, strict):
    """What differs between the data and teacher a checkpoint was trained with and the data
    and `teacher` (a path, or None) it is given now. A checkpoint from before runs recorded
    them cannot be checked: with `strict` it counts as changed, else it resumes with a note."""
    if "data_identity" not in config and not strict:
        print(f"note: {args.out} does not record its data or teacher (it predates that); "
              f"resuming unchecked")
        return []
    changes = []
    then = config.get("data_identity")
    if then is None or not same_data(then, args.data_identity):
        changes.append(f"its data ({describe_data(then)}) is not --data-root "
                       f"{args.data_root} ({describe_data(args.data_identity)})")
    then, now = config.get("teacher_identity"), teacher_identity(teacher, args.data_identity)
    if (then or now) and (then or {}).get("sha256") != (now or {}).get("sha256"):
        changes.append(f"its teacher ({describe_teacher(then)}) is not {teacher} "
                       f"({describe_teacher(now)})")
    return changes


def changed_recipe(config, args, recipe_keys, device):
    """The recipe settings in which a checkpoint differs from what this command asks for,
    defaults included (what `make` reruns a stage for); flags the run's loss does not use
    (DKD's for a KD student) are no part of its recipe."""
    unused = methods.unused_flags(getattr(args, "loss", None))
    asked = {key: getattr(args, key) for key in RECIPE_KEYS + tuple(recipe_keys)
             if key not in unused}
    # auto asks for no precision in particular: a run keeps the one it was started in
    # (resuming restores it), so a teacher trained in bf16 on a GPU stays current on a
    # CPU where auto would choose fp32. A precision named outright is part of the recipe.
    if args.precision == "auto":
        del asked["precision"]
    else:
        asked["precision"] = resolve_precision(args.precision, device)
    asked["epochs"] = epochs_asked(args) or args.default_epochs
    # A run extended past its planned epochs trained a second cycle on top (engine.fit):
    # what asks for its length asks for one cycle.
    asked["schedule_start_epoch"] = 0
    return [f"{key} {config.get(key)!r} -> {value!r}" for key, value in asked.items()
            if config.get(key) != value]


def describe_data(identity):
    if identity is None:
        return "not recorded"
    split = identity.get("split_sha256")
    return (f"{identity['layout']} layout, sha256 {identity['sha256'][:12]}"
            + (f", validation split {split[:12]}" if split else ""))


def describe_teacher(identity):
    if identity is None:
        return "none recorded"
    seed = identity.get("seed")  # recorded since issue 26
    return (f"weights sha256 {identity['sha256'][:12]}"
            + (f", seed {seed}" if seed is not None else "")
            + f", {identity['epochs']} epochs, {identity['val_acc']:.2f}% validation")


def teacher_identity(path, data_identity):
    """What a student records of its teacher (None for no teacher): a hash of its weights
    (which tells teachers apart: changed_identity compares it alone), its epochs, its last
    validation accuracy, its data, and since issue 26 its seed and a fingerprint of its
    recipe (results.recipe_sha256: students of teachers of one recipe, each seed its own
    teacher, pool over seeds); a teacher trained on other data is refused."""
    if path is None:
        return None
    ckpt = load_checkpoint(path)
    model_from_checkpoint(ckpt, path, kind="teacher")  # a teacher whose weights fit, or one line
    check_finished(ckpt, path)
    history = ckpt.get("history") or [{}]
    config = ckpt.get("config")  # None in a bare checkpoint: seed and recipe unknown
    teacher_data = (config or {}).get("data_identity")
    if teacher_data is not None and not same_data(teacher_data, data_identity):
        raise UserError(f"the teacher {path} was trained on other data "
                        f"({describe_data(teacher_data)}) than --data-root gives "
                        f"({describe_data(data_identity)}): its training images may be in "
                        f"this run's validation split")
    return {"sha256": weights_sha256(ckpt["model_state"]), "epochs": ckpt.get("epoch"),
            "val_acc": history[-1].get("val_acc", float("nan")), "data_sha256":
            teacher_data["sha256"] if teacher_data else None,
            "seed": config.get("seed") if config else None,
            "recipe_sha256": recipe_sha256(config) if config else None}


def check_overwrite(out, model_name, args):
    """--overwrite replaces a run of the same model only: never another kind of file, a run
    of the other model, or the teacher this run is to learn from."""
    teacher = getattr(args, "teacher", None)
    if teacher and Path(teacher).exists() and out.samefile(teacher):
        raise UserError(f"--out {out} is the --teacher file; --overwrite will not replace the "
                        f"teacher a run learns from")
    try:
        name = load_checkpoint(out)["model"]["name"]
    except (CheckpointError, KeyError, TypeError):
        raise UserError(f"--overwrite: {out} is not a checkpoint of this project; move it "
                        f"away yourself if it should go") from None
    if name != model_name:
        raise UserError(f"--overwrite: {out} holds a {name} run, and this script trains the "
                        f"{model_name}; give another --out")


def check_finished(teacher_ckpt, path):
    if teacher_ckpt.get("epoch", 0) < teacher_ckpt.get("epochs", 0):
        raise UserError(f"{path} is an unfinished run (epoch {teacher_ckpt['epoch']} of "
                        f"{teacher_ckpt['epochs']}); finish it with train_teacher.py --resume")


def load_teacher(path, device, identity):
    """The trained teacher of a finished run, in eval mode, frozen, ready for KD: the one
    whose `identity` (teacher_identity's) the run recorded, or one line. The file is read
    again here, and a teacher replaced in between (a sweep's teacher job finishing) would
    otherwise be distilled from under the other's name, its logits stored under it too."""
    ckpt = load_checkpoint(path, map_location=device)
    teacher = model_from_checkpoint(ckpt, path, device, kind="teacher")
    check_finished(ckpt, path)
    if weights_sha256(ckpt["model_state"]) != identity["sha256"]:
        raise UserError(f"{path} changed while this run started (its weights are not the "
                        f"ones checked and recorded); start the run again")
    return teacher.requires_grad_(False).to(memory_format=torch.channels_last)


def arch_args(args):
    return {"widths": args.widths} if args.widths else None


def initial_model(model_name, args, ckpt=None, seed=None):
    """The model a run starts from: its weights depend on the seed alone, so runs that differ
    only in their loss start from identical weights."""
    torch.manual_seed(args.seed if seed is None else seed)
    return build_model(model_name, ckpt["model"]["arch_args"] if ckpt else arch_args(args))


def training_state(model, optimizer, scheduler, ema=None, method=None):
    """Everything --resume needs besides the run's records: weights, optimizer, schedule, RNG
    states, the EMA model with its update count, and the method's own parameters and
    buffers (a regressor, a memory bank; none for the logit methods)."""
    state = {"model_state": model.state_dict(), "optimizer_state": optimizer.state_dict(),
             "scheduler_state": scheduler.state_dict(),
             "rng": {"torch": torch.get_rng_state(),
                     "cuda": torch.cuda.get_rng_state() if torch.cuda.is_initialized() else None}}
    if ema is not None:
        state["ema"] = {"model_state": ema.module.state_dict(), "updates": ema.updates}
    if method is not None and method.state_dict():
        state["method_state"] = method.state_dict()
    return state


def restore_training_state(ckpt, path, model, optimizer, scheduler, schedule, ema=None,
                           method=None):
    """The inverse of training_state (`path` is for messages). The optimizer and scheduler
    must be built already: building a scheduler resets the optimizer's LR, so the LR is set
    again from `schedule`."""
    exported = ckpt.get("exported")  # complete (load_resumable): its weights are all it needs
    try:
        model.load_state_dict(ckpt["model_state"])
        if ema is not None:
            ema.module.load_state_dict(ckpt["ema"]["model_state"])
            ema.load_updates(ckpt["ema"]["updates"])
        if not exported:
            load_optimizer_state(optimizer, ckpt["optimizer_state"])
            scheduler.load_state_dict(ckpt["scheduler_state"])
            if method is not None:
                method.load_state_dict(ckpt.get("method_state", {}))
    except (KeyError, TypeError, ValueError, RuntimeError) as e:  # what load_state_dict raises
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
        raise CheckpointError(f"{path} cannot be resumed: its training state does not fit "
                              f"the run ({reason})") from None
    if exported:
        return
    for group, base_lr in zip(optimizer.param_groups, scheduler.base_lrs):
        group["lr"] = base_lr * schedule(scheduler.last_epoch)
    torch.set_rng_state(ckpt["rng"]["torch"].cpu())
    if torch.cuda.is_initialized() and ckpt["rng"].get("cuda") is not None:
        torch.cuda.set_rng_state(ckpt["rng"]["cuda"].cpu())
