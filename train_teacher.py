"""Train the 7-conv TeacherNet on CIFAR-10 with cross-entropy.

    python train_teacher.py                       # default recipe -> checkpoints/teacher.pt
    python train_teacher.py --optimizer adam --lr 1e-3 --schedule constant --weight-decay 0 \\
        --no-augment --epochs 20                  # the original report's recipe
"""
import kd.startup  # noqa: F401  (first: a Ctrl-C during the imports below is one line)

# isort: split
from pathlib import Path

import methods
from kd import cli, engine, plotting, runs
from kd.data import CLASSES
from kd.ema import EMA_DECAY


def parse(argv=None):
    """The command's flags and the kind of run they ask for (runs.RunKind)."""
    parser = cli.parser(__doc__)
    # Recipe chosen on the validation split (experiments/grids/probe-teacher.toml and
    # probe-long-teacher.toml; the figures: docs/usage.md#training-the-teacher). No label
    # smoothing: it makes teachers distil worse (Muller et al., 2019).
    cli.add_common_args(parser, out="checkpoints/teacher.pt", epochs=40, batch_size=128,
                        lr=0.1, optimizer="sgd", schedule="onecycle", ema_decay=EMA_DECAY)
    return parser.parse_args(argv), runs.RunKind("teacher")


def main():
    args, kind = parse()
    with runs.run_lock(args):  # refused while another process trains this run
        args, device, splits, ckpt = runs.prepare_run(args, *kind)
        train_images, train_labels = splits["train"]
        first_of_class = [int((train_labels == c).nonzero()[0]) for c in train_labels.unique()]
        plotting.plot_samples(train_images[first_of_class], train_labels[first_of_class], CLASSES,
                              Path(args.plots_dir) / "samples.png")
        engine.fit("teacher", methods.CE({}), args, device, splits, ckpt, title="teacher")
    plotting.plot_teachers(Path(args.out).parent, Path(args.plots_dir) / "teachers_compare.png")


if __name__ == "__main__":
    cli.run_cli(main)
