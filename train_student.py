"""Train the 2-conv StudentNet with one of the methods in methods.py (--loss): distilled from
the teacher (kd+ce), from the teacher's soft targets alone (kd), alone on the labels (ce);
the logit methods dkd and dist; the feature methods fitnet, at, reviewkd and crd; with
--mixup or --cutmix, function matching. --help lists each method's flags.

    python train_student.py --loss kd+ce     # -> checkpoints/student_kd+ce_seed0.pt
    python train_student.py --loss kd
    python train_student.py --loss ce        # the baseline: no teacher
    python train_student.py --loss dkd       # -> checkpoints/student_dkd_seed0.pt
    python train_student.py --loss kd+ce --logit-standardize   # -> student_kd+ce+ls_seed0.pt
"""
import kd.startup  # noqa: F401  (first: a Ctrl-C during the imports below is one line)

# isort: split
import contextlib
from pathlib import Path

import methods
from kd import cli, engine, plotting, runs
from kd.checkpoints import CheckpointError, load_checkpoint
from kd.ema import EMA_DECAY
from kd.results import run_variant
from kd.teacher_logits import SharedTeacherLogits, cache_path


def parse(argv=None):
    """The command's flags and the kind of run they ask for (runs.RunKind)."""
    parser = cli.parser(__doc__)
    methods.add_flags(parser)
    cli.add_teacher_arg(parser)
    cli.add_common_args(parser, out="checkpoints/student_<loss>_seed<seed>.pt", epochs=12,
                        batch_size=256, lr=0.1, optimizer="sgd", schedule="onecycle",
                        ema_decay=EMA_DECAY)
    args = parser.parse_args(argv)
    method = methods.METHODS[args.loss]
    if args.resume and not args.restart_if_changed and Path(args.out).is_file():
        # --resume continues the run's own method, which decides below whether a teacher is
        # part of its recipe (a student trained alone has none); a --loss typed is a recipe
        # flag like the others (prepare_run says it is not used). Not with
        # --restart-if-changed, which compares the run with the command, defaults included.
        # an unreadable one, or one with no run's config (a model alone), says so when resumed
        with contextlib.suppress(CheckpointError, KeyError, AttributeError):
            recorded = load_checkpoint(args.out)["config"].get("loss")
            method = methods.METHODS.get(recorded, method)
            if "loss" not in cli.typed(argv):
                args.loss = method.name
    args.out = args.out.replace("<loss>", run_variant(vars(args))).replace("<seed>",
                                                                           str(args.seed))
    flag_names = tuple(flag.name for flag in methods.all_flags())
    # The teacher's path is part of a distilling run's recipe only: make gives the student
    # trained alone its seed's --teacher too, and a new path must not make it stale.
    teacher_key = ("teacher",) if method.uses_teacher else ()
    return args, runs.RunKind("student", ("loss", *teacher_key, *flag_names),
                              lambda args: args.teacher if method.uses_teacher else None)


def main():
    args, kind = parse()
    with runs.run_lock(args):  # refused while another process trains this run
        args, device, splits, ckpt = runs.prepare_run(args, *kind)
        method = methods.METHODS[args.loss]  # after a --resume has restored the run's
        for note in methods.ignored_flags(vars(args)):
            print(note)
        teacher = (runs.load_teacher(args.teacher, device, args.teacher_identity)
                   if method.uses_teacher else None)
        shared = (SharedTeacherLogits(teacher, cache_path(args, device, teacher), args.epochs)
                  if method.uses_teacher and method.shared_logits and not args.no_shared_logits
                  else None)
        engine.fit("student", methods.build(args, teacher, shared, splits["train"][1]), args,
                   device, splits, ckpt, title=f"student ({run_variant(vars(args))})")
    plotting.plot_compare(Path(args.out).parent, Path(args.plots_dir) / "students_compare.png")


if __name__ == "__main__":
    cli.run_cli(main)
