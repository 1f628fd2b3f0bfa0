"""The Makefile pipeline: stages in order, and the quick variant kept apart from the real one."""
import os
import subprocess

import pytest

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
    assert "for s in 0 1" in plan
    # an existing stage is resumed, or trained again if its recipe, data or teacher changed
    assert plan.count("--resume --restart-if-changed") == 1 + 1 + 3  # teacher, students, EMA
    assert 'evaluate.py "checkpoints"/*.pt --plots-dir "plots"' in plan
    assert 'report.py --plots-dir "plots"' in plan


def test_each_seeds_students_distil_from_that_seeds_teacher(tmp_path):
    """The stages' commands as the loops make them (PY=echo: printed, not run)."""
    commands = subprocess.run(["make", "-s", "students", "SEEDS=0 2", "PY=echo",
                               f"CKPT={tmp_path}", "-o", ".venv/installed"], cwd=ROOT,
                              capture_output=True, text=True, check=True).stdout.splitlines()
    teachers = [line.split()[2] for line in commands if line.startswith("train_teacher.py")]
    assert teachers == [f"{tmp_path}/teacher.pt", f"{tmp_path}/teacher_seed2.pt"]
    students = [line.split() for line in commands if line.startswith("train_student.py")]
    assert len(students) == 2 * 3
    for flags in students:
        seed = flags[flags.index("--seed") + 1]
        assert flags[flags.index("--teacher") + 1] == teachers[seed != "0"], flags


def test_folders_with_spaces_stay_one_argument(tmp_path):
    """CKPT="my runs" split into three arguments (--teacher, --plots-dir and evaluate.py's
    checkpoints unquoted)."""
    args = tmp_path / "args"  # stands in for python: one line per argument
    args.write_text('#!/bin/sh\nfor a in "$@"; do echo "[$a]"; done\n')
    args.chmod(0o755)
    folder = tmp_path / "my runs"
    lines = subprocess.run(["make", "-s", "students", "SEEDS=0", f"PY={args}",
                            f"CKPT={folder}", f"PLOTS={folder}/plots", "-o", ".venv/installed"],
                           cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert f"[{folder}/teacher.pt]" in lines and f"[{folder}/plots]" in lines, lines


def test_quick_uses_its_own_folders_and_a_subset():
    plan = planned("quick")
    train_lines = [line for line in plan.splitlines() if '"python" train_' in line]
    assert len(train_lines) == 1 + 1 + 3  # teacher, the students' loop, the three EMA runs
    for line in train_lines:
        assert "--train-subset 5000" in line and '--plots-dir "runs/quick/plots"' in line
    assert "checkpoints/" not in plan.replace("runs/quick/checkpoints/", "")
    assert 'evaluate.py "runs/quick/checkpoints"/*.pt --plots-dir "runs/quick/plots"' in plan
    assert 'report.py --plots-dir "runs/quick/plots"' in plan


def test_quick_keeps_the_flags_given_to_it():
    """make quick FLAGS="--precision fp32" ran in bf16: the sub-make's own FLAGS won."""
    train_lines = [line for line in planned("quick", "FLAGS=--precision fp32").splitlines()
                   if '"python" train_' in line]
    assert train_lines and all("--precision fp32" in line and "--train-subset 5000" in line
                               for line in train_lines)


def test_best_sweeps_the_frozen_recipe_then_evaluates_its_runs_alone():
    # (under `make test` a nested make also prints its "Entering/Leaving directory" lines)
    # evaluate.py reads the checkpoints the sweep lists, once it could list them: else it
    # got none, and evaluated checkpoints/
    plan = [line.strip() for line in planned("best").splitlines() if '"python"' in line]
    sweep = ('"python" sweep.py experiments/grids/best.toml --folder "checkpoints" '
             """--flags='--plots-dir "plots"'""")
    assert plan[-4:] == [
        sweep, f'{sweep} --checkpoints > "plots/best/checkpoints.txt"',
        '"python" evaluate.py @"plots/best/checkpoints.txt" --plots-dir "plots/best"',
        '"python" report.py --plots-dir "plots/best"']


def test_best_takes_the_folders_and_flags_given_to_it(tmp_path):
    """make best FLAGS="--precision fp32" CKPT=... trained in bf16 into checkpoints/ (the
    grid's folder and flags won) and put its report over the default one."""
    import sweep
    args = tmp_path / "args"  # stands in for python: one line per call, [argument] each
    args.write_text('#!/bin/sh\nfor a in "$@"; do printf "[%s]" "$a"; done; echo\n')
    args.chmod(0o755)
    folder, plots = tmp_path / "my runs", tmp_path / "my  plots"
    calls = subprocess.run(["make", "-s", "best", f"PY={args}", f"CKPT={folder}",
                            f"PLOTS={plots}", "FLAGS=--precision fp32 --tag \"it's\"",
                            "-o", ".venv/installed"], cwd=ROOT, capture_output=True,
                           text=True, check=True).stdout.splitlines()
    sweep_call, evaluate_call, report_call = [call[1:-1].split("][") for call in calls]
    assert sweep_call[:4] == ["sweep.py", "experiments/grids/best.toml", "--folder",
                              str(folder)]
    flags = sweep_call[4].removeprefix("--flags=")
    assert sweep.parse_flags(flags) == {"plots-dir": str(plots), "precision": "fp32",
                                        "tag": "it's"}
    # the sweep's list of checkpoints, as a file evaluate.py reads one path per line
    listed = plots / "best" / "checkpoints.txt"
    assert listed.read_text() == f"[{']['.join(sweep_call)}][--checkpoints]\n"
    assert evaluate_call == ["evaluate.py", f"@{listed}", "--plots-dir", f"{plots}/best"]
    assert report_call == ["report.py", "--plots-dir", f"{plots}/best"]


def test_a_given_interpreter_is_used_as_it_is_and_no_venv_is_made():
    """`make test PY=python3`: an existing environment (or a machine without a network)
    runs the stages and the suite with its own packages."""
    def every_command(*make_args):  # -B: as if nothing were up to date, .venv included
        return subprocess.run(["make", "-n", "-B", *make_args], cwd=ROOT, capture_output=True,
                              text=True, check=True).stdout
    own = every_command("all", "test", "PY=python3")
    assert "venv" not in own and "pip" not in own
    assert '"python3" -m ruff check .' in own and '"python3" train_teacher.py' in own
    # from the environment too, as SEEDS and FLAGS are: it was ignored, and .venv made
    from_env = subprocess.run(["make", "-n", "-B", "test"], cwd=ROOT, capture_output=True,
                              text=True, check=True, env={**os.environ, "PY": "python3"}).stdout
    assert "venv" not in from_env and '"python3" -m pytest' in from_env
    # an interpreter whose path has a space is one word to the shell
    spaced = every_command("all", "best", "test", "PY=/opt/my env/bin/python")
    assert '"/opt/my env/bin/python" -m ruff check .' in spaced
    assert '"/opt/my env/bin/python" train_teacher.py' in spaced
    assert '"/opt/my env/bin/python" sweep.py experiments/grids/best.toml --folder' in spaced
    default = every_command("test")
    assert "-m venv .venv" in default and '".venv/bin/python" -m ruff check .' in default
    spelled = every_command("test", "PY=./.venv/bin/python3")
    assert "-m venv .venv" in spelled  # the venv's interpreter, however it is written


@pytest.mark.parametrize("folder", ["my clone", "50% done"])
def test_a_clone_in_a_folder_with_a_space_keeps_the_given_interpreter(tmp_path, folder):
    """make split the clone's absolute path at the space, so "/tmp/my" matched itself and
    PY=python3 got a venv made and pip upgraded and requirements installed into python3; a
    '%' in the path was filter's wildcard, and the default got no venv."""
    clone = tmp_path / folder
    clone.mkdir()
    for name in ("Makefile", "requirements.txt", "constraints.txt"):
        (clone / name).write_text((ROOT / name).read_text())
    def every_command(*make_args):
        return subprocess.run(["make", "-n", "-B", "test", *make_args], cwd=clone,
                              capture_output=True, text=True, check=True).stdout
    own = every_command("PY=python3")
    assert "venv" not in own and "pip" not in own, own
    assert "-m venv .venv" in every_command()
    assert "-m venv .venv" in every_command(f"PY={clone}/.venv/bin/python")


def test_every_requirement_is_pinned_within_its_bound():
    """make's .venv installs requirements.txt under constraints.txt: a requirement without a
    pin there would install whatever is newest, and a pin outside its bound fails the install."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    def entries(name):
        lines = (line.split("#")[0].strip() for line in (ROOT / name).read_text().splitlines())
        return [Requirement(line) for line in lines if line]
    pins = {canonicalize_name(r.name): r.specifier for r in entries("constraints.txt")}
    assert all(str(spec).startswith("==") for spec in pins.values()), pins
    for requirement in entries("requirements.txt"):
        pin = pins.get(canonicalize_name(requirement.name))
        assert pin is not None, f"{requirement.name} is not in constraints.txt"
        assert requirement.specifier.contains(str(pin).removeprefix("=="))
