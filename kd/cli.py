"""The command line every script shares: its flags, their checks, and how errors end a run
(one line, never a traceback)."""
import argparse
import math
import os
import re
import select
import sys

import methods
from kd.allocator import keep_freed_memory
from kd.checkpoints import CheckpointError
from kd.data import TRAIN_SIZE, DataError, default_data_root
from kd.interrupts import check_interrupt, install_handlers
from kd.interrupts import hold as hold_interrupts
from kd.records import test_record_matches
from kd.startup import exit_if_interrupted

DRY_RUN_BATCHES = 2
PRECISIONS = ("auto", "fp32", "bf16")
# torch.compile's modes: reduce-overhead is the CUDA-graph path (a CPU compiles it as default).
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune")


class UserError(ValueError):
    """Bad input from the command line: reported in one line, never as a traceback."""


def add_common_args(parser, *, out, epochs, batch_size, lr, optimizer, schedule, ema_decay,
                    ema_help="the EMA of the weights that is kept, evaluated and saved beside "
                             "the model (see kd.ema.ModelEMA); 0: none"):
    """The flags every training script shares; the keyword arguments are its defaults."""
    add_data_device_args(parser)
    a = parser.add_argument
    add_precision_arg(parser)
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
    a("--clip-grad-norm", type=float, default=0.0, metavar="MAX",
      help="rescale each step's gradient (model and method together) to an L2 norm of at "
           "most MAX (torch.nn.utils.clip_grad_norm_); 0: no clipping (default: 0)")
    a("--ema-decay", type=float, default=ema_decay,
      help=f"decay per step of {ema_help} (default: {ema_decay})")
    a("--seed", type=int, default=0, help="seed for initial weights, data order and "
      "augmentation, 0 to 2**32 - 1 (default: 0)")
    a("--compile", nargs="?", const="default", choices=COMPILE_MODES, metavar="MODE",
      help="torch.compile the model for its training steps, in torch.compile's MODE: "
      "default (bare --compile), reduce-overhead (its forward and backward replayed as CUDA "
      "graphs on a GPU) or max-autotune (off by default; docs/performance.md and docs/gpu.md "
      "say what each gains)")
    a("--train-subset", type=int, default=None, metavar="N",
      help=f"train on the first N training images only, in the fixed shuffled order the "
      f"validation split is drawn from: a random draw, not class-balanced (default: all "
      f"{TRAIN_SIZE:,})")
    a("--out", default=out, help=f"checkpoint path; run records are written beside it "
      f"(default: {out})")
    a("--resume", action="store_true", help="continue the run in --out from its last epoch, "
      "or extend a finished run to --epochs; refused if its data or teacher changed")
    a("--restart-if-changed", action="store_true", help="with --resume: start the run over "
      "if its data, teacher or recipe (defaults included) differ from this command's, "
      "instead of resuming it (what make all does)")
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


def add_precision_arg(parser):
    parser.add_argument(
        "--precision", choices=PRECISIONS, default="auto",
        help="arithmetic of the training steps: bf16 autocast or fp32; auto: bf16 where the "
             "hardware has it (a CUDA GPU from Ampere on, a CPU with AMX or AVX512_BF16), else "
             "fp32; a run resumed under auto keeps its own. Evaluation always runs in fp32 "
             "(default: auto)")


def add_teacher_arg(parser):
    parser.add_argument("--teacher", default="checkpoints/teacher.pt",
                        help="the trained teacher's checkpoint (default: checkpoints/teacher.pt)")
    parser.add_argument("--no-shared-logits", action="store_true",
                        help="compute the teacher's logits in this run even if an earlier run "
                             "of the same teacher, data and seed stored them (see "
                             "kd/teacher_logits.py)")


def parser(doc):
    """A script's argument parser: its --help opens with the docstring's first sentence, and
    flags are taken whole (no abbreviations), so that `typed` reads what was asked for."""
    return argparse.ArgumentParser(description=summary(doc), allow_abbrev=False)


def typed(argv=None):
    """The flags typed on the command line (`argv`, else sys.argv's), as argparse names
    them (--dkd-beta: dkd_beta): what a user asked for, as against a flag's default."""
    return {token.split("=")[0][2:].replace("-", "_")
            for token in (sys.argv[1:] if argv is None else map(str, argv))
            if token.startswith("--")}


def summary(doc):
    """The first sentence of a script's docstring, for its --help (the first line of the
    docstring ends mid-sentence)."""
    paragraph = " ".join(doc.strip().split("\n\n")[0].split())
    end = re.search(r"[.?!](\s|$)", paragraph)
    return paragraph[:end.start() + 1] if end else paragraph


def check_args(args):
    positive = {"--epochs": args.epochs, "--batch-size": args.batch_size, "--lr": args.lr,
                "--train-subset": args.train_subset}
    for flag, value in positive.items():
        if value is not None and not value > 0:
            raise UserError(f"{flag} must be positive, got {value}")
    if not math.isfinite(args.lr):
        raise UserError(f"--lr must be finite, got {args.lr}")
    if not 0 <= args.momentum < 1 or not 0 <= args.weight_decay < math.inf \
            or not 0 <= args.warmup < 1:
        raise UserError("need 0 <= --momentum < 1, a finite --weight-decay >= 0 and "
                        "0 <= --warmup < 1")
    if not args.clip_grad_norm >= 0:
        raise UserError(f"--clip-grad-norm must be >= 0, got {args.clip_grad_norm}")
    if not 0 <= args.seed < 2**32:  # the seeds derived from it stay in manual_seed's range
        raise UserError(f"--seed must be in [0, 2**32), got {args.seed}")
    if not 0 <= args.ema_decay < 1:
        raise UserError(f"--ema-decay must be in [0, 1), got {args.ema_decay}")
    problems = methods.check_flags(vars(args))
    if problems:
        raise UserError("; ".join(problems))


# The checkpoint this process has written or is resuming, for the message after a Ctrl-C.
_saved_checkpoint = None


def note_checkpoint(path, epoch, epochs, test_record=None):
    """`test_record`: (its path, the run's id) for a run tested once trained, else None."""
    global _saved_checkpoint
    _saved_checkpoint = (path, epoch, epochs, test_record)


def stopped_line(trains):
    if not trains:
        return "interrupted"
    if _saved_checkpoint:
        path, epoch, epochs, test_record = _saved_checkpoint
        if epoch < epochs:
            return (f"interrupted: {path} holds the last complete epoch; rerun with "
                    f"--resume to continue")
        untested = test_record is not None and not test_record_matches(*test_record, epoch)
        return (f"interrupted: {path} is complete ({epoch} of {epochs} epochs)"
                + "; rerun with --resume to write its test record" * untested)
    return "interrupted: no checkpoint was written"


def run_cli(main, trains=True):
    """Run a script's main(): bad input is one line on stderr and exit 2; Ctrl-C or SIGTERM
    exits 130, a training script's (`trains`) with the last complete checkpoint intact (it
    is only ever replaced atomically) and a line that says where it is."""
    exit_if_interrupted()
    keep_freed_memory()
    install_handlers()
    try:
        main()
        check_interrupt()  # one a finalizer swallowed: the user still asked to stop
        if sys.stdout is not None:  # None: no stdout at all (`script >&-`)
            sys.stdout.flush()  # here, where a reader gone (below) is caught, not at exit
    except (UserError, DataError, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        hold_interrupts()
        print("\n" + stopped_line(trains), file=sys.stderr)
        sys.exit(130)
    except OSError as e:  # a full disk or a vanished folder mid-run: say what, not where
        if isinstance(e, BrokenPipeError) and reader_gone():
            if trains:
                print(stopped_line(trains), file=sys.stderr)
            sys.exit(1)
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)


def reader_gone():
    """Whether stdout's reader has gone (`script | head`). A shell tool then ends quietly,
    killed by SIGPIPE; Python raises BrokenPipeError instead. Stdout then points at devnull,
    so that the flush at exit cannot raise it again (the way out Python's docs give, in
    the signal module's note on SIGPIPE)."""
    # asked of the pipe, not read off the error: a BrokenPipeError from another pipe is an
    # error to report (Linux marks a pipe's writing end POLLERR once no reader is left, BSDs
    # POLLHUP; Windows has no poll)
    try:
        stdout = sys.stdout.fileno()
    except (AttributeError, ValueError, OSError):  # none, or no file (a harness's StringIO)
        return False
    if not hasattr(select, "poll"):
        return False
    poller = select.poll()
    poller.register(stdout, select.POLLOUT)
    if not any(events & (select.POLLERR | select.POLLHUP) for _, events in poller.poll(0)):
        return False
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return True
