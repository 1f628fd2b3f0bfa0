"""Train the 2-conv StudentNet: distilled from the teacher (kd+ce), from the teacher's soft
targets alone (kd), or alone on the labels (ce); or with decoupled KD (dkd) or DIST (dist).

    python train_student.py --loss kd+ce     # -> checkpoints/student_kd+ce_seed0.pt
    python train_student.py --loss kd
    python train_student.py --loss ce        # the baseline: no teacher
    python train_student.py --loss dkd       # -> checkpoints/student_dkd_seed0.pt
    python train_student.py --loss kd+ce --logit-standardize   # -> student_kd+ce+ls_seed0.pt
"""
import argparse
from pathlib import Path

import losses
from kd import cli, engine, plotting, runs
from kd.ema import EMA_DECAY
from kd.results import run_variant
from kd.teacher_logits import SharedTeacherLogits, cache_path

# The method flags that define a run, restored from the checkpoint on --resume.
METHOD_KEYS = ("logit_standardize", "dkd_alpha", "dkd_beta", "dkd_warmup", "dist_beta",
               "dist_gamma")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--loss", choices=losses.STUDENT_LOSSES, default="kd+ce",
                        help="kd+ce: alpha*KD + (1-alpha)*CE; kd: KD alone; ce: no teacher; "
                             "dkd: CE + decoupled KD; dist: CE + DIST (default: kd+ce)")
    cli.add_kd_args(parser)
    cli.add_method_args(parser)
    cli.add_common_args(parser, out="checkpoints/student_<loss>_seed<seed>.pt", epochs=12,
                        batch_size=256, lr=0.1, optimizer="sgd", schedule="onecycle",
                        ema_decay=EMA_DECAY)
    args = parser.parse_args()
    if args.logit_standardize and args.loss not in losses.STANDARDIZABLE:
        raise cli.UserError(f"--logit-standardize goes with --loss "
                            f"{', '.join(losses.STANDARDIZABLE)}, not {args.loss}")
    args.out = args.out.replace("<loss>", run_variant(vars(args))).replace("<seed>",
                                                                           str(args.seed))
    args, device, splits, ckpt = runs.prepare_run(
        args, "student", recipe_keys=("loss", "temperature", "alpha", "teacher") + METHOD_KEYS,
        teacher_of=lambda args: args.teacher if args.loss != "ce" else None)
    teacher = runs.load_teacher(args.teacher, device) if args.loss != "ce" else None
    shared = (SharedTeacherLogits(teacher, cache_path(args, device), args.epochs)
              if teacher is not None and not args.no_shared_logits else None)
    loss_fn = losses.student_loss(
        args.loss, teacher, args.temperature, args.alpha, standardize=args.logit_standardize,
        dkd_alpha=args.dkd_alpha, dkd_beta=args.dkd_beta, dkd_warmup=args.dkd_warmup,
        dist_beta=args.dist_beta, dist_gamma=args.dist_gamma, shared_logits=shared)
    engine.fit("student", loss_fn, args, device, splits, ckpt,
               title=f"student ({run_variant(vars(args))})")
    plotting.plot_compare(Path(args.out).parent, Path(args.plots_dir) / "students_compare.png")


if __name__ == "__main__":
    cli.run_cli(main)
