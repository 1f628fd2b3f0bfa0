"""Train the student with and without EMA (exponential moving average) weight updates.

    python train_ema.py                     # mean-teacher with EMA
    python train_ema.py --no-ema            # mean-teacher, frozen teacher (report's "without EMA")
    python train_ema.py --mode model-ema    # KD from the 7-conv teacher; raw student and its EMA

Checkpoints: checkpoints/ema_<mode>_seed<seed>.pt, <mode> one of mean-teacher,
mean-teacher-no-ema, model-ema.

mean-teacher (the original report's experiment): teacher and student share the student's
architecture; the teacher starts from its own random weights (seed + 1) and, after every
optimizer step, becomes the EMA of the student's weights; the student trains on
distillation_loss against the teacher's outputs. --no-ema keeps the teacher frozen at its
starting weights. model-ema: the student distils from the trained teacher exactly as in
train_student.py --loss kd+ce, while an EMA of its weights is kept. Both the student and the
EMA model are evaluated every epoch; see ema.ModelEMA for the EMA rule.
"""
import argparse
from pathlib import Path

import cli
import engine
import losses
import plotting
import runs
from ema import ModelEMA
from results import run_variant


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=("mean-teacher", "model-ema"), default="mean-teacher",
                        help="see above (default: mean-teacher)")
    # Not tuned: 0.995 averages over ~200 steps, about one epoch at batch 256 on 45k images.
    parser.add_argument("--ema-decay", type=float, default=0.995,
                        help="EMA decay per optimizer step, in [0, 1] (default: 0.995)")
    parser.add_argument("--no-ema", action="store_true",
                        help="mean-teacher: keep the teacher frozen at its starting weights")
    cli.add_kd_args(parser)
    cli.add_common_args(parser, out="checkpoints/ema_<mode>_seed<seed>.pt", epochs=12,
                           batch_size=256, lr=0.1, optimizer="sgd", schedule="onecycle")
    args = parser.parse_args()
    if not 0 <= args.ema_decay <= 1:
        raise cli.UserError(f"--ema-decay must be in [0, 1], got {args.ema_decay}")
    if args.no_ema and args.mode != "mean-teacher":
        raise cli.UserError("--no-ema goes with --mode mean-teacher (model-ema evaluates "
                               "the raw student beside its EMA in one run)")
    mode = run_variant(vars(args))  # mean-teacher, mean-teacher-no-ema or model-ema
    args.out = args.out.replace("<mode>", mode).replace("<seed>", str(args.seed))
    args, device, splits, ckpt = runs.prepare_run(
        args, "student", recipe_keys=("mode", "ema_decay", "no_ema", "temperature", "alpha",
                                      "teacher"),
        teacher_of=lambda args: args.teacher if args.mode == "model-ema" else None)
    student = runs.initial_model("student", args, ckpt)
    if args.mode == "mean-teacher":
        ema = ModelEMA(runs.initial_model("student", args, ckpt, seed=args.seed + 1),
                       args.ema_decay)
        teacher = ema.module
    else:
        ema = ModelEMA(student, args.ema_decay)
        teacher = runs.load_teacher(args.teacher, device)
    loss_fn = losses.student_loss("kd+ce", teacher, args.temperature, args.alpha)
    engine.fit("student", loss_fn, args, device, splits, ckpt, title=f"student ({mode})",
               model=student, ema=ema, update_ema=not args.no_ema)
    plotting.plot_ema_compare(Path(args.out).parent, Path(args.plots_dir) / "ema_compare.png")


if __name__ == "__main__":
    cli.run_cli(main)
