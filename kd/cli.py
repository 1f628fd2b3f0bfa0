"""The command line every script shares: its flags, their checks, and how errors end a run
(one line, never a traceback)."""
import math
import sys

from kd.allocator import keep_freed_memory
from kd.checkpoints import CheckpointError
from kd.data import DataError, default_data_root
from kd.interrupts import install_handlers
from losses import check_kd_args

DRY_RUN_BATCHES = 2
PRECISIONS = ("auto", "fp32", "bf16")


class UserError(ValueError):
    """Bad input from the command line: reported in one line, never as a traceback."""


def add_common_args(parser, *, out, epochs, batch_size, lr, optimizer, schedule, ema_decay):
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
    a("--ema-decay", type=float, default=ema_decay, help="decay per step of the EMA of the "
      "weights that is kept, evaluated and saved beside the model (see ema.ModelEMA); 0: "
      f"none (default: {ema_decay})")
    a("--seed", type=int, default=0, help="seed for initial weights, data order and "
      "augmentation (default: 0)")
    a("--compile", action="store_true", help="torch.compile the model for its training "
      "steps (off by default; README's Performance section says what it gains)")
    a("--train-subset", type=int, default=None, metavar="N",
      help="train on the first N training images only (default: all 45,000)")
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
             "fp32. Evaluation always runs in fp32 (default: auto)")


def add_kd_args(parser):
    """The distillation flags train_student.py and train_ema.py share."""
    # T and alpha chosen on the validation split (experiments/grids/probe-student.toml: kd+ce,
    # 4 epochs on 20k images): T=4, alpha=0.5 reached 66.1%; T=2 65.3/65.7% and T=4, alpha=0.9
    # 65.7% (alpha 0.5/0.9), T=8 64.6/63.9%. Against 60.9% trained alone, every setting helps;
    # between T 2-4 the differences are within what one seed can tell apart.
    parser.add_argument("--temperature", type=float, default=4.0,
                        help="softmax temperature T of the KD term (default: 4)")
    parser.add_argument("--alpha", type=float, default=0.5,
                        help="weight of the KD term in kd+ce (default: 0.5)")
    parser.add_argument("--teacher", default="checkpoints/teacher.pt",
                        help="the trained teacher's checkpoint (default: checkpoints/teacher.pt)")


def add_method_args(parser):
    """The flags of the distillation methods beyond Hinton's (train_student.py). Their
    defaults were chosen on the validation split from the papers' settings and below them
    (experiments/grids/methods-val.toml; docs/results.md has the figures)."""
    a = parser.add_argument
    a("--no-shared-logits", action="store_true", help="compute the teacher's logits in this "
      "run even if an earlier run of the same teacher, data and seed stored them (see "
      "kd/teacher_logits.py)")
    a("--logit-standardize", action="store_true", help="z-score each sample's logits, "
      "student's and teacher's, before the KD term's softmax (Sun et al., 2024); with "
      "--loss kd+ce, kd or dkd")
    a("--dkd-alpha", type=float, default=1.0, help="dkd: weight of the target-class term "
      "TCKD (default: 1)")
    a("--dkd-beta", type=float, default=0.5, help="dkd: weight of the non-target term NCKD "
      "(default: 0.5)")
    a("--dkd-warmup", type=float, default=1.0, help="dkd: epochs over which the DKD term's "
      "weight rises linearly from 0 to 1 (default: 1)")
    a("--dist-beta", type=float, default=0.5, help="dist: weight of the inter-class "
      "(per-image) relation (default: 0.5)")
    a("--dist-gamma", type=float, default=0.5, help="dist: weight of the intra-class "
      "(per-class) relation (default: 0.5)")


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
    if not 0 <= args.ema_decay < 1:
        raise UserError(f"--ema-decay must be in [0, 1), got {args.ema_decay}")
    if hasattr(args, "temperature"):
        try:
            check_kd_args(args.temperature, args.alpha)
        except ValueError as e:
            raise UserError(f"--{e}") from None
    for flag in ("dkd_alpha", "dkd_beta", "dkd_warmup", "dist_beta", "dist_gamma"):
        if getattr(args, flag, 0) < 0:
            raise UserError(f"--{flag.replace('_', '-')} must be >= 0, got {getattr(args, flag)}")


# The checkpoint this process has written or is resuming, for the message after a Ctrl-C.
_saved_checkpoint = None


def note_checkpoint(path):
    global _saved_checkpoint
    _saved_checkpoint = path


def run_cli(main):
    """Run a script's main(): bad input is one line on stderr and exit 2; Ctrl-C or SIGTERM
    exits 130 with the last complete checkpoint intact (it is only ever replaced atomically)."""
    keep_freed_memory()
    install_handlers()
    try:
        main()
    except (UserError, DataError, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("\ninterrupted: " + (f"{_saved_checkpoint} holds the last complete epoch; rerun "
                                   f"with --resume to continue" if _saved_checkpoint else
                                   "no checkpoint was written"), file=sys.stderr)
        sys.exit(130)
    except OSError as e:  # a full disk or a vanished folder mid-run: say what, not where
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
