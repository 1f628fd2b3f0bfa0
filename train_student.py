"""Train the 2-conv StudentNet: distilled from the teacher (kd+ce), from the teacher's soft
targets alone (kd), or alone on the labels (ce).

    python train_student.py --loss kd+ce     # -> checkpoints/student_kd+ce_seed0.pt
    python train_student.py --loss kd
    python train_student.py --loss ce        # the baseline: no teacher
"""
import argparse
from pathlib import Path

import cli
import engine
import losses
import plotting
import runs
from ema import EMA_DECAY


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--loss", choices=losses.STUDENT_LOSSES, default="kd+ce",
                        help="kd+ce: alpha*KD + (1-alpha)*CE; kd: KD alone; ce: no teacher "
                             "(default: kd+ce)")
    cli.add_kd_args(parser)
    cli.add_common_args(parser, out="checkpoints/student_<loss>_seed<seed>.pt", epochs=12,
                        batch_size=256, lr=0.1, optimizer="sgd", schedule="onecycle",
                        ema_decay=EMA_DECAY)
    args = parser.parse_args()
    args.out = args.out.replace("<loss>", args.loss).replace("<seed>", str(args.seed))
    args, device, splits, ckpt = runs.prepare_run(
        args, "student", recipe_keys=("loss", "temperature", "alpha", "teacher"),
        teacher_of=lambda args: args.teacher if args.loss != "ce" else None)
    teacher = runs.load_teacher(args.teacher, device) if args.loss != "ce" else None
    loss_fn = losses.student_loss(args.loss, teacher, args.temperature, args.alpha)
    engine.fit("student", loss_fn, args, device, splits, ckpt, title=f"student ({args.loss})")
    plotting.plot_compare(Path(args.out).parent, Path(args.plots_dir) / "students_compare.png")


if __name__ == "__main__":
    cli.run_cli(main)
