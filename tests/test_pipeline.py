"""The Makefile pipeline: stages in order, and the quick variant kept apart from the real one."""
import subprocess

from conftest import ROOT


def planned(*make_args):
    """What `make -n ...` would run (nothing is executed)."""
    return subprocess.run(["make", "-n", *make_args, "PY=python"], cwd=ROOT,
                          capture_output=True, text=True, check=True).stdout


def test_all_runs_teacher_students_ema_then_evaluate_and_report():
    plan = planned("all", "SEEDS=0 1")
    stages = ["train_teacher.py", "train_student.py", "train_ema.py", "evaluate.py",
              "report.py"]
    firsts = [plan.index(s) for s in stages]
    lasts = [plan.rindex(s) for s in stages]
    assert all(lasts[i] < firsts[i + 1] for i in range(len(stages) - 1))
    assert "for s in 0 1" in plan and "--teacher checkpoints/teacher.pt" in plan
    # an existing stage is resumed, or trained again if its recipe, data or teacher changed
    assert plan.count("--resume --restart-if-changed") == 1 + 1 + 3  # teacher, students, EMA
    assert "evaluate.py checkpoints/*.pt --plots-dir plots" in plan
    assert "report.py --plots-dir plots" in plan


def test_quick_uses_its_own_folders_and_a_subset():
    plan = planned("quick")
    train_lines = [line for line in plan.splitlines() if "python train_" in line]
    assert len(train_lines) == 1 + 1 + 3  # teacher, the students' loop, the three EMA runs
    for line in train_lines:
        assert "--train-subset 5000" in line and "--plots-dir runs/quick/plots" in line
    assert "checkpoints/" not in plan.replace("runs/quick/checkpoints/", "")
    assert "evaluate.py runs/quick/checkpoints/*.pt --plots-dir runs/quick/plots" in plan
    assert "report.py --plots-dir runs/quick/plots" in plan
