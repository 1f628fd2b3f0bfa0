"""Mean-teacher: the student learns from a teacher of its own architecture that is the EMA
(exponential moving average) of the student's weights, the original report's experiment.

    python train_ema.py                # teacher = EMA of the student -> ema_mean-teacher_seed0.pt
    python train_ema.py --no-ema       # teacher frozen at its random start (report: "without EMA")
    python train_ema.py --ema-decay 0  # no averaging: the teacher is the current student

The teacher starts from its own random weights (seed + 1) and, after every optimizer step,
becomes the EMA of the student's weights (kd.ema.ModelEMA states the rule and its warm-up); the
student trains on distillation_loss against the teacher's outputs. The report's "without
EMA" changes two things at once, averaging and whether the teacher learns at all; decay 0
(the teacher is the student itself, one step behind in its BatchNorm statistics only) is
the ablation that isolates averaging. The teacher runs in eval mode (its averaged
BatchNorm statistics) on the student's own augmented batch, where Tarvainen and Valpola run
it in training mode on a second, differently noised view: here the teacher's weights are
all that differs between the variants compared. Student and teacher are evaluated every
epoch.
Here --ema-decay sets the teacher's decay; in the other scripts it sets the EMA kept of a
run's own weights.
"""
import kd.startup  # noqa: F401  (first: a Ctrl-C during the imports below is one line)

# isort: split
from pathlib import Path

import methods
from kd import cli, engine, plotting, runs
from kd.ema import EMA_DECAY, ModelEMA
from kd.results import run_variant


def parse(argv=None):
    """The command's flags and the kind of run they ask for (runs.RunKind)."""
    parser = cli.parser(__doc__)
    parser.add_argument("--no-ema", action="store_true",
                        help="keep the teacher frozen at its random starting weights")
    parser.set_defaults(mode="mean-teacher")  # the one mode; named in configs and tables
    for flag in (methods.TEMPERATURE, methods.ALPHA):  # of the KD + CE objective
        flag.add_to(parser, ["mean-teacher"])
    cli.add_common_args(parser, out="checkpoints/ema_<variant>_seed<seed>.pt", epochs=12,
                        batch_size=256, lr=0.1, optimizer="sgd", schedule="onecycle",
                        ema_decay=EMA_DECAY,
                        ema_help="the teacher, the EMA of the student's weights, evaluated and "
                                 "saved beside it; 0: the teacher is the current student")
    args = parser.parse_args(argv)
    if args.no_ema and args.ema_decay == 0:
        raise cli.UserError("--no-ema (a frozen teacher) and --ema-decay 0 (the teacher is the "
                            "student) are two different teachers; give one")
    variant = run_variant(vars(args))  # mean-teacher, -no-ema or -no-averaging
    args.out = args.out.replace("<variant>", variant).replace("<seed>", str(args.seed))
    return args, runs.RunKind("student", ("mode", "no_ema", "temperature", "alpha"))


def main():
    args, kind = parse()
    variant = run_variant(vars(args))
    with runs.run_lock(args):  # refused while another process trains this run
        args, device, splits, ckpt = runs.prepare_run(args, *kind)
        student = runs.initial_model("student", args, ckpt)
        teacher = ModelEMA(runs.initial_model("student", args, ckpt, seed=args.seed + 1),
                           args.ema_decay)
        # The teacher changes every step: its logits are never stored and served.
        method = methods.KDCE(vars(args), teacher=teacher.module)
        engine.fit("student", method, args, device, splits, ckpt, title=f"student ({variant})",
                   model=student, ema=teacher, update_ema=not args.no_ema,
                   second_model="teacher")
    plotting.plot_ema_compare(Path(args.out).parent, Path(args.plots_dir) / "ema_compare.png")


if __name__ == "__main__":
    cli.run_cli(main)
