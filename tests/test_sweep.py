"""sweep.py: a grid expanded into the stage commands, run here through submitit's local
executor (skip, resume, failures), and the sbatch files the SLURM executor would submit."""
import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import tomllib
from pathlib import Path
from types import SimpleNamespace

import pytest

# Skipped where submitit cannot be installed (the lent GPU machine, which runs the suite as is).
pytest.importorskip("submitit")

import sweep as sweep_module  # noqa: E402
from conftest import ROOT, interrupted_run, run_script, write_image_folder  # noqa: E402
from kd.checkpoints import load_checkpoint, weights_sha256  # noqa: E402
from sweep import GridError, combine, expand, load_grid, parse_flags, select  # noqa: E402


def sweep(*flags, env=None):
    return subprocess.run([sys.executable, "sweep.py", *map(str, flags)], cwd=ROOT,
                          capture_output=True, text=True, timeout=600,
                          env={**os.environ, **(env or {})})


def write_grid(path, text, image_folder):
    path.write_text(f'folder = "{path.parent / "sweep"}"\n'
                    f'flags = {{data-root = "{image_folder}", device = "cpu", epochs = 2, '
                    f'batch-size = 32, train-subset = 64}}\n' + text)
    return path


STAGES = """
[[stage]]
script = "train_teacher.py"
name = "teacher"
seeds = [0]
[[stage]]
script = "train_student.py"
flags = {teacher = "{folder}/teacher.pt"}
grid = [{loss = ["kd+ce", "ce"]}]
"""


def test_expand_products_names_flags_and_needs():
    grid = {"flags": {"epochs": 2}, "stage": [
        {"script": "train_teacher.py", "name": "teacher_seed{seed}"},
        {"script": "train_student.py", "flags": {"teacher": "{folder}/teacher_seed{seed}.pt"},
         "grid": [{"loss": ["kd+ce", "kd"], "logit-standardize": [False, True]},
                  {"loss": ["dist"], "widths": [[32, 64], [48, 96]]}]}]}
    runs = expand(grid, "out", seeds=[0, 1], extra={"dry-run": True})
    assert len(runs) == 2 + 2 * (4 + 2)
    by_name = {run.name: run for run in runs}
    run = by_name["student_loss=kd_logit-standardize=true_seed1"]
    command = run.command()[1:]
    assert command[:command.index("--out")] == [
        "train_student.py", "--epochs", "2", "--teacher", "out/teacher_seed1.pt", "--loss", "kd",
        "--logit-standardize", "--dry-run", "--seed", "1"]
    assert run.needs == ["out/teacher_seed1.pt"]
    assert "--logit-standardize" not in by_name[
        "student_loss=kd_logit-standardize=false_seed0"].command()
    widths = by_name["student_loss=dist_widths=48-96_seed0"].command()
    assert widths[widths.index("--widths"):][:3] == ["--widths", "48", "96"]
    assert by_name["teacher_seed0"].needs == []
    assert by_name["teacher_seed0"].command()[-2:] == ["--plots-dir", "out/plots"]
    plots = expand({"stage": [{"script": "train_teacher.py", "flags": {"plots-dir": "p"}}]},
                   "out", seeds=[0])[0].command()
    assert plots.count("--plots-dir") == 1 and plots[plots.index("--plots-dir") + 1] == "p"


def test_each_seeds_students_can_name_that_seeds_teacher():
    """`{teacher}`: the seed's teacher run as make names it (teacher.pt for seed 0,
    teacher_seed<s>.pt else), so a grid pairs teacher and student seeds and each student
    waits for its own teacher."""
    grid = {"stage": [
        {"script": "train_teacher.py", "name": "{teacher}"},
        {"script": "train_student.py", "name": "student_{loss}_seed{seed}",
         "flags": {"teacher": "{folder}/{teacher}.pt"}, "grid": {"loss": ["kd"]}},
        {"script": "train_student.py", "grid": {"teacher": ["x.pt"]}}]}  # an axis of that name
    runs = {run.name: run for run in expand(grid, "out", seeds=[0, 2])}
    assert list(runs)[:2] == ["teacher", "teacher_seed2"]
    for seed, teacher in ((0, "teacher"), (2, "teacher_seed2")):
        student = runs[f"student_kd_seed{seed}"]
        assert student.settings["teacher"] == f"out/{teacher}.pt"
        assert student.needs == [f"out/{teacher}.pt"]
    assert runs["student_teacher=x.pt_seed2"].settings["teacher"] == "x.pt"


@pytest.mark.parametrize("grid", ["methods.toml", "kd-seeds.toml", "best.toml"])
def test_the_seed_studies_pair_every_student_with_its_seeds_teacher(grid):
    runs = expand(tomllib.loads((ROOT / "experiments" / "grids" / grid).read_text()),
                  "checkpoints", seeds=[0, 1, 2])
    teachers = {run.settings["seed"]: run.key for run in runs
                if run.script == "train_teacher.py"}
    assert teachers == {0: "checkpoints/teacher.pt", 1: "checkpoints/teacher_seed1.pt",
                        2: "checkpoints/teacher_seed2.pt"}
    for run in runs:
        if run.script == "train_student.py" and "teacher" in run.settings:
            assert run.needs == [teachers[run.settings["seed"]]], run.name


def test_expand_refuses_runs_that_would_share_a_checkpoint_and_unknown_scripts():
    stage = {"script": "train_student.py", "name": "student_seed{seed}",
             "grid": {"loss": ["kd", "ce"]}}
    with pytest.raises(GridError, match="share a checkpoint"):
        expand({"stage": [stage]}, "out", seeds=[0])
    with pytest.raises(GridError, match="script must be one of"):
        expand({"stage": [{"script": "rm.py"}]}, "out", seeds=[0])
    with pytest.raises(GridError, match="cannot be filled"):
        expand({"stage": [{**stage, "name": "{temperature}"}]}, "out", seeds=[0])


def test_a_misspelt_key_of_a_grid_or_stage_is_refused():
    """A key the sweep does not read would be dropped without a word: `sedes` ran seed 0
    alone, `grdi` one run instead of a grid."""
    stage = {"script": "train_student.py", "name": "s_{loss}_seed{seed}", "grid": {"loss": ["kd"]}}
    with pytest.raises(GridError, match=r"unknown key 'sedes' \(a grid takes: folder, seeds, "
                                        r"flags, stage\)"):
        expand({"sedes": [1], "stage": [stage]}, "out", seeds=[0])
    with pytest.raises(GridError, match=r"stage 1: unknown key 'grdi' \(a stage takes: script, "
                                        r"name, seeds, flags, grid\)"):
        expand({"stage": [{"script": "train_student.py", "grdi": {"loss": ["kd"]}}]}, "out",
               seeds=[0])


STAGE = {"script": "train_student.py", "name": "s_{loss}_seed{seed}", "grid": {"loss": ["kd"]}}


@pytest.mark.parametrize("grid, extra, says", [
    # a traceback before
    ({"seeds": 3, "stage": [STAGE]}, None, "seeds must be a list of integers"),
    ({"seeds": ["0"], "stage": [STAGE]}, None, "seeds must be a list of integers"),
    ({"flags": "x", "stage": [STAGE]}, None, "flags must be a table"),
    ({"stage": [{**STAGE, "grid": [1]}]}, None, "stage 1: grid must be a table"),
    ({"stage": [{**STAGE, "name": 5}]}, None, "stage 1: name must be a non-empty string"),
    ({"stage": [{**STAGE, "flags": {"plots-dir": "p/{x}"}}]}, None, "cannot be filled"),
    # runs silently other than their names said
    ({"stage": [{**STAGE, "grid": {"seed": [0, 1]}}]}, None, "'seed'"),
    ({"stage": [{**STAGE, "flags": {"seed": 3}}]}, None, "'seed'"),
    ({"stage": [STAGE]}, {"loss": "ce"}, "--flags sets 'loss', an axis of stage 1"),
    # no effect: the sweep's own --out came after it (and the run never counted as finished)
    ({"stage": [STAGE]}, {"out": "x.pt"}, "--flags sets 'out': the sweep names each run's"),
    # a stage's own flag (fm-mixing.toml's `epochs = 36`, its names' "e36") overridden
    ({"stage": [{**STAGE, "flags": {"epochs": 36}}]}, {"epochs": "3"},
     "--flags sets 'epochs', which stage 1 sets itself"),
    # a traceback, or nothing run and exit 0
    ({"stage": 5}, None, "stage must be a list of tables ([[stage]])"),
    ({"stage": {"script": "train_student.py"}}, None, "stage must be a list of tables"),
    ({"stage": []}, None, "the grid has no [[stage]]"),
    ({"folder": 5, "stage": [STAGE]}, None, "folder must be a string"),
    ({"seeds": [], "stage": [STAGE]}, None, "seeds must be a list of integers"),
    ({"stage": [{**STAGE, "grid": []}]}, None, "stage 1: grid must be a table or a non-empty "
                                                "list of tables"),
    ({"stage": [{**STAGE, "name": ""}]}, None, "stage 1: name must be a non-empty string"),
    # a path among the values: a name with a folder in it failed every run as it started
    ({"stage": [{"script": "train_student.py", "grid": {"teacher": ["ckpt/teacher.pt"]}}]},
     None, None),
])
def test_a_grid_that_cannot_run_as_it_reads_is_refused_in_one_line(grid, extra, says):
    if says is None:
        [run] = expand(grid, "out", seeds=[0], extra=extra)
        assert "/" not in run.name and run.name == "student_teacher=ckpt-teacher.pt_seed0"
        return
    with pytest.raises(GridError, match=re.escape(says)):
        expand(grid, "out", seeds=[0], extra=extra)


def test_a_grid_file_that_is_not_text_is_refused_in_one_line(tmp_path):
    path = tmp_path / "grid.toml"
    path.write_bytes(b"\xff\xfe[[stage]]")
    with pytest.raises(GridError, match="is not UTF-8 text"):
        load_grid(path)


def test_a_run_its_script_would_refuse_stops_the_sweep_before_any_job_starts(image_folder,
                                                                             tmp_path):
    """A typo in a later stage's flags is found before the teacher trains (16 minutes on a
    CPU), in one line naming the run and argparse's or the script's own complaint."""
    grid = write_grid(tmp_path / "grid.toml", STAGES.replace('"kd+ce"', '"kd_ce"'), image_folder)
    proc = sweep(grid)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr  # as the scripts' errors
    assert lines[0].startswith("error: ") and "invalid choice: 'kd_ce'" in lines[0]
    assert not (tmp_path / "sweep" / "teacher.pt").exists()
    lines = sweep(grid, "--flags=--help").stderr.strip().splitlines()  # argparse says nothing
    assert len(lines) == 1 and "ends on these flags without training (--help?)" in lines[0]
    grid.write_text(grid.read_text().replace('"kd_ce"', '"kd+ce"').replace(
        'epochs = 2', 'epochs = 2, lr = -1'))
    lines = sweep(grid).stderr.strip().splitlines()
    assert len(lines) == 1 and "--lr must be positive, got -1" in lines[0] and \
        "and 2 more runs" in lines[0], lines


def test_only_keeps_the_runs_a_pattern_names():
    """--only: a second seed of the close settings alone, e.g.; a pattern naming no run is
    refused in one line."""
    grid = tomllib.loads((ROOT / "experiments" / "grids" / "select.toml").read_text())
    runs = expand(grid, "runs/select", seeds=[1])
    chosen = select(runs, ["fitnet_w100_*", "at_w1000_seed1"])
    assert [run.name for run in chosen] == ["fitnet_w100_seed1", "at_w1000_seed1"]
    assert select(runs, None) == runs
    with pytest.raises(GridError, match="no run's name matches fitnet_w7"):
        select(runs, ["fitnet_w7*"])
    proc = sweep(ROOT / "experiments" / "grids" / "select.toml", "--seeds", "1", "--list",
                 "--only", "crd_*")
    assert [line.split()[0] for line in proc.stdout.splitlines()] == [
        "crd_w0.8_seed1", "crd_w0.2_seed1", "crd_w2_seed1"]
    proc = sweep(ROOT / "experiments" / "grids" / "select.toml", "--seeds", "1",
                 "--checkpoints", "--only", "crd_w0.2_*", "kd_seed1")
    assert proc.stdout.split() == ["runs/select/kd_seed1.pt", "runs/select/crd_w0.2_seed1.pt"]


def test_grids_combine_into_one_pool_that_links_runs_across_them():
    teacher = {"script": "train_teacher.py", "name": "{teacher}"}
    student = {"script": "train_student.py", "name": "kd_seed{seed}",
               "flags": {"teacher": "checkpoints/{teacher}.pt", "loss": "kd"}}
    selection = expand({"stage": [student]}, "runs/select", seeds=[1])
    study = expand({"stage": [teacher, {**student, "name": "student_kd_seed{seed}",
                                        "flags": {**student["flags"], "epochs": 36}}]},
                   "checkpoints", seeds=[1])
    again = expand({"stage": [teacher]}, "checkpoints", seeds=[1])  # the same teacher run
    assert selection[0].needs == []  # alone, its grid does not train that teacher
    runs = combine([selection, study, again])
    assert [run.label for run in runs] == ["runs/select/kd_seed1", "checkpoints/teacher_seed1",
                                           "checkpoints/student_kd_seed1"]
    assert runs[0].needs == runs[2].needs == ["checkpoints/teacher_seed1.pt"]
    other = expand({"stage": [{**teacher, "flags": {"epochs": 20}}]}, "checkpoints", seeds=[1])
    with pytest.raises(GridError, match="two grids name checkpoints/teacher_seed1.pt with "
                                        "different flags"):
        combine([study, other])
    assert [run.label for run in combine([study])] == ["teacher_seed1", "student_kd_seed1"]


def test_a_sweep_of_two_grids_runs_a_student_after_the_other_grids_teacher(image_folder,
                                                                          tmp_path):
    teacher_grid = write_grid(tmp_path / "teachers.toml", STAGES.split("[[stage]]")[0]
                              + "[[stage]]" + STAGES.split("[[stage]]")[1], image_folder)
    folder = tmp_path / "sweep"
    student_grid = tmp_path / "students.toml"
    student_grid.write_text(write_grid(tmp_path / "x.toml", "", image_folder).read_text()
                            .replace(str(folder), str(tmp_path / "other"))
                            + f'[[stage]]\nscript = "train_student.py"\nname = "kd"\n'
                              f'flags = {{teacher = "{folder}/teacher.pt", loss = "kd"}}\n')
    # The student's grid first: it waits all the same. Two runs at a time on this CPU: each
    # gets half the threads a run alone would use.
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    proc = subprocess.run([sys.executable, "sweep.py", student_grid, teacher_grid,
                           "--runs-per-device", "2"], cwd=ROOT, capture_output=True,
                          text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[:2] == [f"1 run in {tmp_path / 'other'}: 0 finished (skipped), 1 to run",
                         f"1 run in {folder}: 0 finished (skipped), 1 to run"]
    def first(text):
        return next(i for i, line in enumerate(lines) if text in line)
    assert first(f"    done  {folder}/teacher") < first(f"started  {tmp_path}/other/kd")
    assert load_checkpoint(tmp_path / "other" / "kd.pt")["epoch"] == 2
    alone = subprocess.run([sys.executable, "-c", "import torch; print(torch.get_num_threads())"],
                           capture_output=True, text=True, env=env, check=True).stdout
    for run in (folder / "teacher.pt", tmp_path / "other" / "kd.pt"):
        assert load_checkpoint(run)["config"]["cpu_threads"] == max(1, int(alone) // 2)
    for name, grid in (("other", "students.toml"), ("sweep", "teachers.toml")):
        assert len(list((tmp_path / name / "sweeps").glob(f"*_{grid}"))) == 1
        assert len(list((tmp_path / name / "logs").glob("*_log.out"))) == 1
    refused = sweep(student_grid, teacher_grid, "--folder", tmp_path / "x")
    assert refused.returncode != 0 and refused.stderr.strip() == (
        "error: --folder takes one grid; several grids go each into its own folder")


def test_extra_flags_parse_like_the_scripts_take_them():
    assert parse_flags("--train-subset 500 --dry-run --widths 32 64") == {
        "train-subset": "500", "dry-run": True, "widths": ["32", "64"]}
    # argparse's --flag=value: the key 'epochs=3' passed the axis guard, and the run kept
    # its grid's --epochs 96 beside a later --epochs=3 under the e96 name
    assert parse_flags("--epochs=3 --widths=32 --lr 0.1") == {"epochs": "3", "widths": "32",
                                                              "lr": "0.1"}
    with pytest.raises(GridError, match="--flags sets 'epochs', an axis of stage 1"):
        expand({"stage": [{**STAGE, "grid": {"epochs": [12, 96]}}]}, "out", seeds=[0],
               extra=parse_flags("--epochs=3"))
    with pytest.raises(GridError):
        parse_flags("epochs 3")


def test_a_local_sweep_runs_teacher_first_resumes_skips_and_tabulates(image_folder, tmp_path):
    grid = write_grid(tmp_path / "grid.toml", STAGES, image_folder)
    folder = tmp_path / "sweep"
    # The ce student was interrupted mid-epoch 2 by an earlier sweep: it must resume.
    ce = next(run for run in expand(tomllib.loads(grid.read_text()), str(folder), seeds=[0])
              if run.name == "student_loss=ce_seed0")
    interrupted_run("train_student.py", ce.command()[2:], step=2 + 1 + 1)
    assert load_checkpoint(ce.out)["epoch"] == 1
    # --checkpoints --finished: for evaluate.py, the finished runs only, the rest named
    listed = sweep(grid, "--checkpoints", "--finished")
    assert listed.returncode == 0 and listed.stdout == ""
    assert f"not finished: {ce.out}" in listed.stderr.splitlines()
    assert listed.stderr.count("not finished: ") == 3

    proc = sweep(grid)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == f"3 runs in {folder}: 0 finished (skipped), 3 to run"
    # the student that needs the teacher starts only once the teacher is done
    def first(text):
        return next(i for i, line in enumerate(lines) if text in line)
    assert first("    done  teacher") < first("started  student_loss=kd+ce")
    for name in ("teacher", "student_loss=kd+ce_seed0", "student_loss=ce_seed0"):
        assert load_checkpoint(folder / f"{name}.pt")["epoch"] == 2
    log = lines[first("started  student_loss=ce_seed0")].split("log: ")[1].rstrip(")")
    assert "epochs 2-2" in Path(log).read_text()  # resumed, not started over
    table = proc.stdout.split("\n\n")[-2]
    assert {"teacher", "kd+ce", "ce"} == {row.split()[1] for row in table.splitlines()[1:]}
    assert "student      ce EMA       2      1" in table  # one seed of each, 2 epochs
    saved = list((folder / "sweeps").glob("*_grid.toml"))
    assert len(saved) == 1 and saved[0].read_text().startswith("# sweep of ")
    assert "code " in saved[0].read_text().splitlines()[0]

    logs = set((folder / "logs").iterdir())
    again = sweep(grid)
    assert again.returncode == 0
    assert again.stdout.splitlines()[0] == f"3 runs in {folder}: 3 finished (skipped), 0 to run"
    assert set((folder / "logs").iterdir()) == logs  # nothing was started
    listed = sweep(grid, "--checkpoints", "--finished")
    assert listed.stdout.split() == [str(folder / f"{name}.pt") for name in
                                     ("teacher", "student_loss=kd+ce_seed0",
                                      "student_loss=ce_seed0")]
    assert listed.stderr == ""
    # whatever flags they ran with: runs copied from another grid, with their own plots
    elsewhere = sweep(grid, "--checkpoints", "--finished", "--flags", "--plots-dir elsewhere")
    assert elsewhere.stdout == listed.stdout
    assert sweep(grid, "--finished").returncode != 0  # it qualifies --checkpoints only
    changed = sweep(grid, "--list", "--flags", "--lr 0.05")
    assert "--resume --restart-if-changed" in changed.stdout


def test_the_best_students_runs_are_the_length_studys_own():
    """best.toml's runs (checkpoints and flags) are length.toml's: neither retrains the other's."""
    grids = [tomllib.loads((ROOT / "experiments" / "grids" / name).read_text())
             for name in ("best.toml", "length.toml")]
    best, length = (expand(grid, grid["folder"], seeds=best_seeds) for grid in grids
                    for best_seeds in [grids[0]["seeds"]])
    by_key = {run.key: run for run in length}
    assert len(best) == 2 * len(grids[0]["seeds"])  # a teacher and a student per seed
    for run in best:
        assert run.key in by_key and by_key[run.key].settings == run.settings, run.name


def test_a_failed_run_is_reported_with_its_log_and_the_others_go_on(image_folder, tmp_path):
    # flags its script accepts (a sweep refuses others before it starts), data it refuses
    bad = tmp_path / "no-ship"
    shutil.copytree(image_folder, bad)
    shutil.rmtree(bad / "test" / "ship")
    stages = STAGES.replace('name = "teacher"', f'name = "teacher"\nflags = {{data-root = '
                                                 f'"{bad}"}}') + (
        '[[stage]]\nscript = "train_student.py"\nname = "alone"\nflags = {loss = "ce"}\n')
    proc = sweep(write_grid(tmp_path / "grid.toml", stages, image_folder))
    assert proc.returncode == 1
    assert "    done  alone" in proc.stdout  # it needs no teacher: it ran
    failed = proc.stderr.splitlines()
    assert failed[0] == "failed or not run:"
    teacher_log = next(line for line in failed if line.startswith("  teacher: ")).split(": ")[1]
    assert "ship" in Path(teacher_log).read_text().strip().splitlines()[-1]
    assert "  student_loss=kd+ce_seed0: needs teacher" in failed
    assert "alone" in proc.stdout.split("\n\n")[1]  # the table has the run that ran


def test_slurm_gets_job_arrays_with_the_teacher_as_a_dependency(image_folder, tmp_path):
    bin_dir, submitted = tmp_path / "bin", tmp_path / "submitted"
    bin_dir.mkdir()
    submitted.mkdir()
    # A stand-in for sbatch that keeps each file it is given and answers as SLURM does.
    (bin_dir / "sbatch").write_text(f'#!/bin/sh\nn=$(ls {submitted} | wc -l)\n'
                                    f'cp "$1" {submitted}/$n.sh\n'
                                    f'echo "Submitted batch job $((700 + n))"\n')
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 1\n")
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    grid = write_grid(tmp_path / "grid.toml", STAGES, image_folder)
    proc = sweep(grid, "--seeds", 0, 1, "--executor", "slurm", "--partition", "gpu",
                 "--gpus-per-node", 1, "--array-parallelism", 3, "--time-min", 30,
                 "--sbatch", "account=kd", "--no-wait",
                 env={"PATH": f"{bin_dir}:{os.environ['PATH']}"})
    assert proc.returncode == 0, proc.stderr
    teachers, students = [(submitted / f"{i}.sh").read_text().splitlines() for i in (0, 1)]
    assert not list(submitted.glob("2.sh"))
    for lines in (teachers, students):
        for line in ("#SBATCH --partition=gpu", "#SBATCH --gpus-per-node=1",
                     "#SBATCH --time=30", "#SBATCH --account=kd"):
            assert line in lines
    assert not any("--dependency" in line for line in teachers)
    assert "#SBATCH --array=0-3%3" in students  # 2 losses x 2 seeds, 3 at a time
    assert "#SBATCH --dependency=afterok:700" in students
    assert "submitted  student_loss=ce_seed1  (job 701_3" in proc.stdout


def test_runs_share_a_device_and_stop_cleanly_at_the_deadline(image_folder, tmp_path):
    # Two runs that need nothing, each far longer than the deadline.
    stages = ('[[stage]]\nscript = "train_student.py"\nname = "alone_seed{seed}"\n'
              'seeds = [0, 1]\nflags = {loss = "ce", epochs = 400}\n')
    grid = write_grid(tmp_path / "grid.toml", stages, image_folder)
    proc = sweep(grid, "--runs-per-device", 2, "--stop-after", 0.3)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    started = [i for i, line in enumerate(lines) if line.startswith(" started  ")]
    assert len(started) == 2 and started[1] < min(
        i for i, line in enumerate(lines) if line.startswith(" stopped  "))  # side by side
    assert " stopped  at --stop-after: 2 running, 0 waiting" in lines
    # (submitit's job controllers print their own KeyboardInterrupt before it)
    assert proc.stderr.splitlines()[-3:] == [
        "not finished (stopped at --stop-after: run the sweep again to go on):",
        "  alone_seed0: at --stop-after; run the sweep again to resume it",
        "  alone_seed1: at --stop-after; run the sweep again to resume it"]
    for seed in (0, 1):  # interrupted, not finished: a later sweep resumes them
        metrics = tmp_path / "sweep" / f"alone_seed{seed}.metrics.csv"
        assert not metrics.exists() or len(metrics.read_text().splitlines()) < 401
    # Each training process itself was interrupted, said so in its job's log, and had ended
    # before the sweep returned (no records land after its table). On a loaded machine one
    # may still have been starting at the deadline: its one line then says so.
    assert not processes_writing(tmp_path / "sweep")
    logs = [log.read_text() for log in (tmp_path / "sweep" / "logs").glob("*_log.err")]
    assert len(logs) == 2 and all(
        "\ninterrupted: " in log or "interrupted while starting: nothing was written" in log
        for log in logs), logs


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_terminated_sweep_stops_its_running_job_too(image_folder, tmp_path, sig):
    """`kill` (SIGTERM) of a local sweep, as of any job a scheduler or a shell ends, or
    `kill -INT` of the sweep alone, stops the training process it started, which keeps its
    last complete epoch, as Ctrl-C does; left running, it would go on training beside
    whatever runs next."""
    stages = ('[[stage]]\nscript = "train_student.py"\nname = "alone_seed{seed}"\n'
              'flags = {loss = "ce", epochs = 400}\n')
    grid = write_grid(tmp_path / "grid.toml", stages, image_folder)
    out, err = tmp_path / "sweep.out", tmp_path / "sweep.err"
    with out.open("w") as stdout, err.open("w") as stderr:
        proc = subprocess.Popen([sys.executable, "sweep.py", str(grid)], cwd=ROOT,
                                stdout=stdout, stderr=stderr)
    try:
        metrics = tmp_path / "sweep" / "alone_seed0.metrics.csv"  # training has begun
        deadline = time.time() + 120
        while not metrics.exists() and time.time() < deadline and proc.poll() is None:
            time.sleep(0.2)
        assert metrics.exists(), err.read_text()
        proc.send_signal(sig)
        assert proc.wait(timeout=120) != 0
        assert err.read_text().strip().splitlines()[-1:] == [
            "interrupted: every finished run and each stopped run's last complete epoch are "
            "on disk; run the sweep again to go on"], err.read_text()
        assert not processes_writing(tmp_path / "sweep")
    finally:  # a failure must not leave a 400-epoch run behind
        proc.kill()
        subprocess.run(["pkill", "-f", str(tmp_path / "sweep")])
    logs = [log.read_text() for log in (tmp_path / "sweep" / "logs").glob("*_log.err")]
    assert len(logs) == 1, logs
    assert "\ninterrupted: " in logs[0], "the job's log:\n" + logs[0]  # whole: pytest cuts a repr


def processes_writing(folder):
    """The command lines of the processes alive that name `folder`."""
    alive = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            text = cmdline.read_bytes().replace(b"\0", b" ").decode()
        except OSError:  # it ended meanwhile
            continue
        if str(folder) in text:
            alive.append(text)
    return alive


def test_a_sweep_refuses_no_runs_at_a_time_in_one_line(tmp_path):
    proc = sweep(tmp_path / "grid.toml", "--runs-per-device", 0)
    assert proc.returncode != 0
    assert proc.stderr.strip() == "error: --runs-per-device must be at least 1, got 0"


@pytest.mark.parametrize("flags, says", [
    (["--time-min", 0], "--time-min must be at least 1, got 0"),
    (["--stop-after", "nan"], "--stop-after must be a positive number of minutes, got nan"),
    (["--executor", "slurm", "--array-parallelism", 0],
     "--array-parallelism must be at least 1, got 0"),
    (["--executor", "slurm", "--cpus-per-task", -1], "--cpus-per-task must be at least 1, got -1"),
    (["--executor", "slurm", "--mem-gb", 0], "--mem-gb must be at least 1, got 0"),
    (["--executor", "slurm", "--gpus-per-node", -1], "--gpus-per-node must be at least 0, got -1"),
    (["--flags", "--epochs 'x"], "--flags: No closing quotation"),
], ids=str)
def test_a_sweep_refuses_nonsense_numbers_and_flags_in_one_line(tmp_path, flags, says):
    """Each was accepted: --time-min 0 failed every local run at once, --stop-after nan
    never stopped, SLURM's counts reached sbatch, an unclosed quote was a traceback."""
    grid = tmp_path / "grid.toml"
    grid.write_text('[[stage]]\nscript = "train_teacher.py"\n')
    proc = sweep(grid, "--list", *flags)
    assert proc.returncode == 2, proc.stdout
    assert proc.stderr.strip() == f"error: {says}"


def test_a_folder_that_is_a_file_is_refused_in_one_line(tmp_path, image_folder):
    grid = write_grid(tmp_path / "grid.toml", '[[stage]]\nscript = "train_teacher.py"\n',
                      image_folder)
    (tmp_path / "afile").write_text("")
    proc = sweep(grid, "--folder", tmp_path / "afile")
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"error: cannot make the folder {tmp_path / 'afile'}: " \
                                  "File exists"


class FinishedJob:
    """A submitit job that has already finished successfully when it is first looked at."""
    paths = SimpleNamespace(stdout="job.out", stderr="job.err")

    def done(self):
        return True

    def result(self):
        return None

    def cancel(self, check=True):
        pass

    def wait(self):
        pass


class StartingJob(FinishedJob):
    """A job still starting when it is looked at; a cancel is noted in `cancelled`."""
    def __init__(self, cancelled):
        self.cancelled = cancelled

    def done(self):
        return False

    def cancel(self, check=True):
        self.cancelled.append(self)


class Executor:
    def update_parameters(self, **parameters):
        pass

    def submit(self, function):
        return FinishedJob()


def one_run(folder):
    """A run named "a" in `folder` that needs nothing, its command `true`."""
    return SimpleNamespace(key="a", label="a", needs=[], folder=str(folder), name="a",
                           command=lambda: ["true"])


def test_a_stop_returns_once_the_training_processes_themselves_have_ended(tmp_path):
    """A terminal's Ctrl-C reaches submitit's job controller too, which kills the job's own
    process a second later: the job has ended while the training process it started may
    still be stopping. The sweep returns (and says all is on disk) only once that process
    has ended too."""
    stopping = subprocess.Popen(
        [sys.executable, "-c", "import signal, time; signal.signal(signal.SIGINT, lambda *a: "
         "None); print(flush=True); time.sleep(3)"], stdout=subprocess.PIPE)
    stopping.stdout.readline()  # its handler is in place
    threading.Thread(target=stopping.wait, daemon=True).start()  # reaped as its parent would
    run = SimpleNamespace(key="a", folder=str(tmp_path), name="a")
    sweep_module.pid_file(run).parent.mkdir()
    sweep_module.pid_file(run).write_text(str(stopping.pid))
    sweep_module.stop_jobs({"a": (FinishedJob(), None, time.time())}, {"a": run})
    with pytest.raises(ProcessLookupError):
        os.kill(stopping.pid, 0)


def test_a_stop_as_a_job_starts_stops_that_job_too(tmp_path):
    """A Ctrl-C that lands while submitit starts a job (its controller already running)
    still finds the job among those to stop; it would otherwise train on unseen."""
    cancelled = []

    class InterruptedAsItSubmits(Executor):
        def submit(self, function):
            job = StartingJob(cancelled)
            signal.getsignal(signal.SIGINT)(signal.SIGINT, None)  # as the signal would
            return job

    run = one_run(tmp_path)
    # sweep.main's handler, set here: with whatever the process had (ignored, in a shell's
    # background job), the stop never came and the sweep waited on the job for ever
    signal.signal(signal.SIGINT, sweep_module.interrupt)
    with pytest.raises(KeyboardInterrupt):
        sweep_module.run_here([run], {str(tmp_path): InterruptedAsItSubmits()}, gpus=[])
    assert len(cancelled) == 1  # no training process yet: the job itself is stopped


def test_a_sweep_whose_output_closes_stops_its_jobs_and_says_so(tmp_path, monkeypatch,
                                                                capsys):
    """`sweep.py GRID | head`: the progress line after the reader went raised BrokenPipeError
    and the sweep ended silently, its started jobs training on unwatched and its waiting
    runs never started. It stops them as a Ctrl-C does, each keeping its last complete
    epoch, and says so on stderr."""
    cancelled = []

    class Starts(Executor):
        def submit(self, function):
            return StartingJob(cancelled)

    def closed_stdout(*args, file=None, **kwargs):
        if file is None:
            raise BrokenPipeError(32, "Broken pipe")
        print(*args, file=file, **kwargs)
    monkeypatch.setattr(sweep_module, "print", closed_stdout, raising=False)
    with pytest.raises(BrokenPipeError):
        sweep_module.run_here([one_run(tmp_path)], {str(tmp_path): Starts()}, gpus=[])
    assert len(cancelled) == 1
    assert "output closed: the running jobs were stopped" in capsys.readouterr().err


def test_a_stopped_job_is_not_requeued_by_its_time_limit(tmp_path):
    """A stop (--stop-after or Ctrl-C) and the job's time-limit signal in the same moment:
    submitit asks the job's checkpoint() whether to requeue it, which said yes, and the run
    trained on after the sweep had said it stopped. A run the sweep starts again is
    requeued at its time limit as before."""
    run = one_run(tmp_path)
    sweep_module.pid_file(run).parent.mkdir()
    job = sweep_module.job_function(run)
    assert job.checkpoint() is not None
    sweep_module.stop_jobs({"a": (FinishedJob(), None, time.time())}, {"a": run})
    assert job.checkpoint() is None
    started = []

    class Starting(Executor):
        def submit(self, function):
            started.append(function.checkpoint())
            return super().submit(function)
    sweep_module.run_here([run], {str(tmp_path): Starting()}, gpus=[])
    assert started[0] is not None


def test_a_stop_of_a_local_sweep_does_not_keep_a_slurm_job_from_its_requeue(tmp_path):
    """Only a local sweep removed a stopped run's marker: the same folder's runs submitted
    to SLURM after a local --stop-after failed at their time limit instead of resuming."""
    run = one_run(tmp_path)
    marker = sweep_module.stop_marker(sweep_module.pid_file(run))
    marker.parent.mkdir()
    marker.touch()
    requeued = []

    class Slurm(Executor):
        def batch(self):
            return contextlib.nullcontext()

        def submit(self, function):
            requeued.append(function.checkpoint() is not None)
            return SimpleNamespace(job_id="1", paths=SimpleNamespace(stdout="log"))
    sweep_module.submit_to_slurm([run], {str(tmp_path): Slurm()})
    assert requeued == [True]


def test_a_run_that_finished_by_the_deadline_is_reported_done_not_stopped(tmp_path,
                                                                          monkeypatch):
    """At --stop-after, a run whose job ended since the last look is done: the sweep's table
    must not send its user to resume a finished run."""
    monkeypatch.setattr(sweep_module, "POLL_SECONDS", 0.2)
    run = one_run(tmp_path)
    outcome = sweep_module.run_here([run], {str(tmp_path): Executor()}, gpus=[],
                                    stop_at=time.time() + 0.1)
    assert outcome["a"][0] == "done", outcome


def test_flags_that_would_train_finished_runs_again_are_refused(image_folder, tmp_path):
    """`--flags '--epochs 1'` for a trial on the grid's own folder made every finished run
    stale and trained it again from the start, over its results (the 40-epoch teacher of
    checkpoints/ among them); a grid changed on purpose still trains its runs again."""
    grid = write_grid(tmp_path / "grid.toml", '[[stage]]\nscript = "train_teacher.py"\n'
                      'name = "teacher"\n', image_folder)
    assert sweep(grid).returncode == 0
    weights = (tmp_path / "sweep" / "teacher.pt").read_bytes()
    proc = sweep(grid, "--flags", "--epochs 1")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith("error: --flags would train 1 finished run again from the "
                                  "start (teacher: epochs 2 -> 1)")
    assert (tmp_path / "sweep" / "teacher.pt").read_bytes() == weights
    # other data too: its reason is no flag's ("its data (...) is not --data-root ...")
    other = tmp_path / "other-data"
    write_image_folder(other, n_train=30, n_test=5, seed=7)
    proc = sweep(grid, "--flags", f"--data-root {other}")
    assert proc.returncode == 2 and "--flags would train 1 finished run again" in proc.stderr
    assert sweep(grid, "--flags", "--epochs 1", "--folder", tmp_path / "trial").returncode == 0
    grid.write_text(grid.read_text().replace("epochs = 2", "epochs = 1"))
    assert sweep(grid).returncode == 0
    assert load_checkpoint(tmp_path / "sweep" / "teacher.pt")["epochs"] == 1


def test_flags_that_would_restart_an_interrupted_run_are_refused_too(image_folder, tmp_path):
    """The refusal looked at finished runs only: a run interrupted mid-way was resumed with
    `--resume --restart-if-changed` and the trial's flags, which started it again from
    epoch 0 and threw its epochs away."""
    grid = write_grid(tmp_path / "grid.toml", '[[stage]]\nscript = "train_teacher.py"\n'
                      'name = "teacher"\n', image_folder)
    teacher, = expand(tomllib.loads(grid.read_text()), str(tmp_path / "sweep"), seeds=[0])
    interrupted_run("train_teacher.py", teacher.command()[2:], step=2 + 1)
    assert load_checkpoint(teacher.out)["epoch"] == 1
    weights = teacher.out.read_bytes()
    proc = sweep(grid, "--flags", "--epochs 1")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith("error: --flags would train 1 interrupted run again from "
                                  "the start (teacher: epochs 2 -> 1)")
    assert teacher.out.read_bytes() == weights


def test_a_finished_run_is_skipped_under_auto_device_and_precision(image_folder, tmp_path):
    """A run records the device and precision `auto` resolved to: benchmarks/gpu_runs.sh's
    `--flags "--device auto"` found no finished run ("cpu" is not "auto") and started every
    one again; whether auto now resolves otherwise is stale()'s question, as for make."""
    grid = write_grid(tmp_path / "grid.toml", '[[stage]]\nscript = "train_teacher.py"\n'
                      'name = "teacher"\n', image_folder)
    assert sweep(grid).returncode == 0
    proc = sweep(grid, "--flags", "--device auto --precision auto", "--list")
    assert proc.returncode == 0, proc.stderr
    proc = sweep(grid, "--flags", "--device auto --precision auto")
    assert proc.returncode == 0, proc.stderr
    assert "1 run in " in proc.stdout and ": 1 finished (skipped), 0 to run" in proc.stdout


def test_a_run_trained_without_its_test_is_not_finished_for_a_grid_that_tests(image_folder,
                                                                              tmp_path):
    """ran_to_end read `skip_test` from the run's own record: a probe's run (--skip-test)
    reused by a grid that wants the test was skipped for good, without a test record."""
    stage = '[[stage]]\nscript = "train_teacher.py"\nname = "teacher"\n'
    probe = write_grid(tmp_path / "probe.toml", stage + "flags = {skip-test = true}\n",
                       image_folder)
    assert sweep(probe).returncode == 0
    test_record = tmp_path / "sweep" / "teacher.test.json"
    assert not test_record.exists()
    weights = weights_sha256(load_checkpoint(tmp_path / "sweep" / "teacher.pt")["model_state"])
    grid = write_grid(tmp_path / "grid.toml", stage, image_folder)
    proc = sweep(grid)
    assert proc.returncode == 0, proc.stderr
    assert ": 0 finished (skipped), 1 to run" in proc.stdout
    assert test_record.exists()  # resumed at its end: tested, not trained again
    assert weights_sha256(
        load_checkpoint(tmp_path / "sweep" / "teacher.pt")["model_state"]) == weights


def test_a_finished_run_whose_teacher_changed_is_run_again_as_make_would(
        image_folder, teacher_checkpoint, tmp_path):
    """A sweep skips the finished runs that make would skip, not every run whose flags
    match: a student whose teacher was retrained at the same path is stale and runs again."""
    teacher = tmp_path / "teacher.pt"
    shutil.copy(teacher_checkpoint, teacher)
    grid = write_grid(tmp_path / "grid.toml", f'[[stage]]\nscript = "train_student.py"\n'
                      f'name = "kd"\nflags = {{loss = "kd", teacher = "{teacher}"}}\n',
                      image_folder)
    assert sweep(grid).returncode == 0
    again = sweep(grid)
    assert again.stdout.splitlines()[0].endswith("1 finished (skipped), 0 to run")
    run_script("train_teacher.py", "--dry-run", "--seed", 1, "--data-root", image_folder,
               "--out", teacher, "--plots-dir", tmp_path, "--overwrite")
    proc = sweep(grid)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].endswith("0 finished (skipped), 1 to run")
    assert lines[1].startswith("   stale  kd  (its teacher (weights sha256 ")
    assert lines[1].endswith(": run again")
    student = load_checkpoint(tmp_path / "sweep" / "kd.pt")
    assert student["config"]["teacher_identity"]["seed"] == 1


def test_a_run_that_repeats_a_finished_one_under_another_name_is_named(
        image_folder, teacher_checkpoint, tmp_path):
    """Two names for one recipe: a grid naming a setting at its default trains the very run
    another grid finished under a shorter name. The sweep says so before it starts it."""
    teacher = tmp_path / "teacher.pt"
    shutil.copy(teacher_checkpoint, teacher)
    stage = '[[stage]]\nscript = "train_student.py"\nname = "{name}"\nflags = {{{flags}}}\n'
    first = write_grid(tmp_path / "first.toml", stage.format(
        name="kd", flags=f'loss = "kd", teacher = "{teacher}"'), image_folder)
    assert sweep(first).returncode == 0
    second = write_grid(tmp_path / "second.toml", stage.format(
        name="kd_T4", flags=f'loss = "kd", teacher = "{teacher}", temperature = 4') + stage.format(
        name="kd_T2", flags=f'loss = "kd", teacher = "{teacher}", temperature = 2'),
        image_folder)
    proc = sweep(second)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    repeats = [line for line in proc.stdout.splitlines() if line.startswith(" repeats")]
    assert repeats == [f" repeats  kd_T4  (the same recipe, seed, teacher and data as "
                       f"{tmp_path / 'sweep' / 'kd.pt'}, finished: the same run under another "
                       "name)"]


def documented_grids():
    """The grids written out in docs/sweeps.md (```toml blocks) and in sweep.py's docstring
    (its indented block from `folder =`)."""
    docs = (ROOT / "docs/sweeps.md").read_text().split("```toml\n")[1:]
    grids = [block.split("```")[0] for block in docs]
    lines = sweep_module.__doc__.split("\n    folder =")[1].split("\n\n")[0].splitlines()
    grids.append("folder =" + "\n".join(line.removeprefix("    ") for line in lines))
    return grids


@pytest.mark.parametrize("text", documented_grids())
def test_the_documented_grids_expand(text):
    """Every example grid the docs give expands into runs, each its own checkpoint."""
    grid = tomllib.loads(text)
    runs = expand(grid, grid["folder"], grid.get("seeds", [0]))
    assert runs and len({run.name for run in runs}) == len(runs)


class SlurmExecutor:
    """Records what submitit's SLURM executor would be given: each job's dependency."""

    def __init__(self):
        self.dependency, self.submitted, self.counter = None, [], iter(range(700, 800))

    def update_parameters(self, slurm_dependency=None):
        self.dependency = slurm_dependency

    def batch(self):
        return contextlib.nullcontext()

    def submit(self, function):
        job = SimpleNamespace(job_id=str(next(self.counter)), paths=SimpleNamespace(stdout="log"))
        self.submitted.append((self.dependency, job.job_id))
        return job


def test_an_sbatch_refusal_is_one_line_that_names_the_jobs_already_queued(
        capsys, tmp_path, monkeypatch):
    """sbatch refusing an array (a partition misspelt, an account over its limit) was a
    traceback, and the teachers' array submitted before it went on unreported."""
    monkeypatch.chdir(tmp_path)  # the runs' folders, their job ids kept in logs/
    teacher = {"script": "train_teacher.py", "name": "{teacher}"}
    student = {"script": "train_student.py", "name": "kd_seed{seed}",
               "flags": {"teacher": "checkpoints/{teacher}.pt", "loss": "kd"}}
    runs = expand({"stage": [teacher, student]}, "checkpoints", seeds=[0])

    class Refusing(SlurmExecutor):
        @contextlib.contextmanager
        def batch(self):
            yield
            if self.submitted[-1][0] is not None:  # the students' array, held for the teacher
                raise sweep_module.FailedJobError("sbatch: error: Batch job submission failed:"
                                                  " Invalid account\nmore")
    with pytest.raises(SystemExit) as exit:
        sweep_module.submit_to_slurm(runs, {"checkpoints": Refusing()})
    assert exit.value.code == 2
    assert capsys.readouterr().err == (
        "error: sbatch refused the jobs of kd_seed0: sbatch: error: Batch job submission "
        "failed: Invalid account; submitted before them and still queued: job 700 (teacher): "
        "scancel 700 to stop them\n")


def test_slurm_holds_a_run_listed_before_the_run_it_needs(tmp_path, monkeypatch):
    """Two grids pooled, the selection's student first and the study's teacher after it:
    the student's array still waits for the teacher's (a need later in the pool once
    counted as none)."""
    monkeypatch.chdir(tmp_path)  # the runs' folders, their job ids kept in logs/
    teacher = {"script": "train_teacher.py", "name": "{teacher}"}
    student = {"script": "train_student.py", "name": "kd_seed{seed}",
               "flags": {"teacher": "checkpoints/{teacher}.pt", "loss": "kd"}}
    runs = combine([expand({"stage": [student]}, "runs/select", seeds=[1]),
                    expand({"stage": [teacher]}, "checkpoints", seeds=[1])])
    assert [run.label for run in runs] == ["runs/select/kd_seed1", "checkpoints/teacher_seed1"]

    executors = {"runs/select": SlurmExecutor(), "checkpoints": SlurmExecutor()}
    jobs = dict((run.label, job) for run, job in sweep_module.submit_to_slurm(runs, executors))
    (teacher_dependency, _), = executors["checkpoints"].submitted
    (student_dependency, _), = executors["runs/select"].submitted
    assert teacher_dependency is None
    assert student_dependency == f"afterok:{jobs['checkpoints/teacher_seed1'].job_id}"


def test_slurm_holds_each_run_for_its_own_needs_only_and_drops_those_a_failure_strands(
        tmp_path, monkeypatch):
    """One array per level held for the union of its runs' needs: one failed teacher held
    every seed's students, pending for ever (SLURM's default), and the sweep waited on
    them. Now each array waits for what its runs need, and a job whose need failed is
    cancelled by SLURM (kill-on-invalid-dep) and reported as not run."""
    monkeypatch.chdir(tmp_path)  # the runs' folders, their job ids kept in logs/
    teacher = {"script": "train_teacher.py", "name": "{teacher}"}
    student = {"script": "train_student.py", "name": "kd_seed{seed}",
               "flags": {"teacher": "checkpoints/{teacher}.pt", "loss": "kd"}}
    runs = expand({"stage": [teacher, student]}, "checkpoints", seeds=[0, 1])

    executor = SlurmExecutor()
    jobs = dict((run.label, job.job_id) for run, job in
                sweep_module.submit_to_slurm(runs, {"checkpoints": executor}))
    held = {job_id: dependency for dependency, job_id in executor.submitted}
    assert held[jobs["kd_seed0"]] == f"afterok:{jobs['teacher']}"
    assert held[jobs["kd_seed1"]] == f"afterok:{jobs['teacher_seed1']}"
    cancelled = SimpleNamespace(state="CANCELLED", result=lambda: (_ for _ in ()).throw(
        sweep_module.UncompletedJobError("cancelled")), paths=SimpleNamespace(stderr="log"))
    assert sweep_module.job_outcome(cancelled) == ("not run", "a run it needs failed")


def test_a_finished_student_is_checked_again_after_its_teacher_runs_again(image_folder,
                                                                         tmp_path):
    """A teacher whose recipe changed is trained again in the sweep; its finished student,
    current against the old teacher when the sweep starts, runs after it (with --resume
    --restart-if-changed, which restarts it from the new teacher), as make would: decided
    before the teacher ran, it was skipped and kept the old teacher's student."""
    stages = ('[[stage]]\nscript = "train_teacher.py"\nname = "teacher"\nseeds = [0]\n'
              'flags = {lr = 0.05}\n[[stage]]\nscript = "train_student.py"\nname = "kd"\n'
              'flags = {teacher = "{folder}/teacher.pt", loss = "kd"}\n')
    grid = write_grid(tmp_path / "grid.toml", stages, image_folder)
    assert sweep(grid).returncode == 0
    grid.write_text(grid.read_text().replace("lr = 0.05", "lr = 0.04"))
    proc = sweep(grid)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].endswith("0 finished (skipped), 2 to run"), lines
    assert any(line.startswith(" recheck  kd  (needs teacher, which runs first") for line in lines)
    teacher = load_checkpoint(tmp_path / "sweep" / "teacher.pt")
    student = load_checkpoint(tmp_path / "sweep" / "kd.pt")
    assert teacher["config"]["lr"] == 0.04
    assert student["config"]["teacher_identity"]["sha256"] == weights_sha256(
        teacher["model_state"])


def test_a_job_at_its_time_limit_stops_its_training_process(tmp_path):
    """submitit ends a local job near its time limit by a signal whose handler raises in the
    job (not a KeyboardInterrupt): the training process gets its Ctrl-C too, and the job
    waits for it, instead of leaving it training unseen."""
    saved, ready = tmp_path / "saved", tmp_path / "ready"
    child = (f"import signal, sys, time, pathlib\n"
             f"def stop(*_):\n    pathlib.Path({str(saved)!r}).write_text('saved')\n"
             f"    sys.exit(130)\n"
             f"signal.signal(signal.SIGINT, stop)\n"
             f"pathlib.Path({str(ready)!r}).touch()\ntime.sleep(60)\n")
    command = sweep_module.TrainingCommand([sys.executable, "-c", child], tmp_path / "run.pid")

    class TimeLimit(Exception):
        pass

    def limit(*_):
        raise TimeLimit

    def at_the_limit():  # once the child has its handler, however slowly it started
        deadline = time.monotonic() + 60
        while not ready.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        # SLURM signals every process of the job step: the training process too, which died
        # of it (its default action) before the job's Ctrl-C could reach it
        os.kill(int((tmp_path / "run.pid").read_text()), signal.SIGUSR2)
        os.kill(os.getpid(), signal.SIGUSR2)
    previous = signal.signal(signal.SIGUSR2, limit)
    timer = threading.Thread(target=at_the_limit, daemon=True)
    timer.start()
    try:
        with pytest.raises(TimeLimit):
            command()
    finally:
        timer.join()
        signal.signal(signal.SIGUSR2, previous)
    assert saved.read_text() == "saved"
    assert not (tmp_path / "run.pid").exists()


@contextlib.contextmanager
def signalled_as_it_starts(tmp_path, monkeypatch, sig, handler):
    """A job's command (a minute's sleep) that gets `sig`, handled by `handler`, in the
    moment after its training process starts, before its pid file names it: yields (the
    command, the processes it started); kills any still running after."""
    started, popen = [], subprocess.Popen

    def start_then_signal(*args, **kwargs):
        started.append(popen(*args, **kwargs))
        os.kill(os.getpid(), sig)
        for _ in range(1000):  # the handler's turn, before the process is returned
            pass
        return started[-1]
    monkeypatch.setattr(subprocess, "Popen", start_then_signal)
    command = sweep_module.TrainingCommand(
        [sys.executable, "-c", "import time; time.sleep(60)"], tmp_path / "run.pid")
    previous = signal.signal(sig, handler)
    try:
        yield command, started
    finally:
        signal.signal(sig, previous)
        if started and started[0].poll() is None:
            started[0].kill()


def test_a_job_at_its_time_limit_is_requeued_and_resumes(tmp_path):
    """A job timed out was not requeued ("timed-out and not checkpointable"): the rest of its
    run waited for someone to run the sweep again. Now it is requeued (here by submitit's
    local executor, as on SLURM) and its second attempt builds its command anew. The
    training process stands in as a file: the first attempt's saves it, then waits to be
    stopped; the second's finds it."""
    saved = tmp_path / "saved"
    child = (f"import pathlib, signal, sys, time\n"
             f"saved = pathlib.Path({str(saved)!r})\n"
             f"if saved.exists():\n    sys.exit(0)\n"
             f"signal.signal(signal.SIGINT, lambda *_: sys.exit(130))\n"
             f"saved.touch()\ntime.sleep(60)\n")
    executor = sweep_module.submitit.LocalExecutor(folder=tmp_path / "logs")
    # the time-limit signal 12 s into a 30 s limit: after the job's start-up (it imports
    # torch) has put submitit's handler in place, on a loaded machine too
    executor.update_parameters(timeout_min=0.5, signal_delay_s=18)
    job = executor.submit(sweep_module.TrainingCommand([sys.executable, "-c", child],
                                                       tmp_path / "run.pid"))
    job.result()  # raised UncompletedJobError: timed out, not requeued
    assert saved.exists()
    assert Path(job.paths.stdout).read_text().count("command: ") == 2  # the two attempts


def test_a_ctrl_c_as_a_job_starts_its_training_process_reaches_that_process(tmp_path,
                                                                           monkeypatch):
    """A stop in the moment after the training process starts, before its pid file names
    it, reaches the job (stop_jobs cancels a job without one): the job passes it on and
    waits, where it left the run training on, unseen."""
    with signalled_as_it_starts(tmp_path, monkeypatch, signal.SIGINT,
                                signal.default_int_handler) as (command, started):
        with pytest.raises((KeyboardInterrupt, subprocess.CalledProcessError)) as stopped:
            command()
        assert stopped.type is subprocess.CalledProcessError  # the run's own exit, waited for
        assert started[0].poll() is not None
    assert not (tmp_path / "run.pid").exists()


def test_the_time_limit_signal_as_a_job_starts_reaches_its_training_process(tmp_path,
                                                                          monkeypatch):
    """submitit's time-limit signal in the moment after the training process starts, before
    the job holds it: the job's handler still runs, after the process is held, and the job
    stops that process and waits for it, where it left it training on, unseen."""
    class TimeLimit(Exception):
        pass

    def limit(*_):
        raise TimeLimit
    with signalled_as_it_starts(tmp_path, monkeypatch, signal.SIGUSR2,
                                limit) as (command, started):
        with pytest.raises(TimeLimit):
            command()
        assert started[0].poll() is not None
    assert not (tmp_path / "run.pid").exists()


def test_the_time_limit_signal_is_submitits_and_usr2_without_its_private_helper(monkeypatch):
    assert sweep_module.time_limit_signal() == sweep_module.submitit.JobEnvironment._usr_sig()
    monkeypatch.delattr(sweep_module.submitit.JobEnvironment, "_usr_sig")
    assert sweep_module.time_limit_signal() == signal.SIGUSR2


def test_a_pid_file_left_by_an_earlier_process_is_not_signalled(tmp_path, monkeypatch):
    """A pid file left behind (a machine restarted mid-run) is removed before the run's job
    starts, so that a stop in the moment before the new job writes its own pid signals no
    stranger."""
    run = expand({"stage": [{"script": "train_student.py", "name": "ce", "flags": {
        "loss": "ce"}}]}, str(tmp_path), seeds=[0])[0]
    pid_file = sweep_module.pid_file(run)
    pid_file.parent.mkdir(parents=True)
    pid_file.write_text("999999999")
    seen = []

    class Executor:
        def update_parameters(self, **_):
            pass

        def submit(self, function):
            seen.append(pid_file.exists())
            return SimpleNamespace(done=lambda: True, result=lambda: None,
                                   paths=SimpleNamespace(stdout="log", stderr="err"))

    sweep_module.run_here([run], {str(tmp_path): Executor()}, [])
    assert seen == [False]


def test_two_sweeps_started_in_one_second_keep_both_grid_copies(tmp_path, monkeypatch):
    grid = tmp_path / "grid.toml"
    grid.write_text("# a grid\n")
    monkeypatch.setattr(sweep_module.time, "strftime", lambda _: "20261206-032318")
    sweep_module.save_grid(grid, tmp_path)
    monkeypatch.setattr(sweep_module.os, "getpid", lambda: 1)
    sweep_module.save_grid(grid, tmp_path)
    assert len(list((tmp_path / "sweeps").glob("*_grid.toml"))) == 2


def test_a_requeued_job_builds_its_command_as_it_starts(tmp_path, capfd):
    """The command was fixed at submission: a job requeued after a preemption, its run's
    checkpoint saved by then, started it again without --resume, which the script refuses
    ("exists; pass --resume")."""
    script = tmp_path / "ok.py"
    script.write_text("")
    run = sweep_module.Run("s", str(script), {}, str(tmp_path))
    (tmp_path / "logs").mkdir()
    job = sweep_module.job_function(run)
    (tmp_path / "s.pt").write_bytes(b"")  # the first attempt saved an epoch
    job()
    [line] = [line for line in capfd.readouterr().out.splitlines() if line.startswith("command:")]
    assert line.endswith("--resume --restart-if-changed"), line


def test_a_sweep_of_relative_folders_from_outside_the_repository_is_refused(tmp_path):
    """Its jobs run in the repository, where the folders are; from elsewhere the sweep
    looked for their checkpoints in the wrong place (finished runs run again, then refused:
    "exists; pass --resume")."""
    grid = tmp_path / "grid.toml"
    grid.write_text('folder = "runs/elsewhere"\n[[stage]]\nscript = "train_teacher.py"\n')
    proc = subprocess.run([sys.executable, ROOT / "sweep.py", grid, "--list"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        f"error: the runs' folders are relative to the repository, where their jobs run: "
        f"run sweep.py from {ROOT}, or give the grid an absolute folder"], proc.stderr


@pytest.mark.parametrize("flags, says", [
    (["--executor", "slurm", "--stop-after", "5"], "--stop-after is for --executor local"),
    (["--executor", "slurm", "--runs-per-device", "2"],
     "--runs-per-device is for --executor local"),
    (["--no-wait"], "--no-wait is for --executor slurm"),
    (["--partition", "gpu"], "--partition is for --executor slurm"),
    (["--sbatch", "account=x"], "--sbatch is for --executor slurm"),
    (["--job-name", "x"], "--job-name is for --executor slurm"),  # was ignored
])
def test_an_option_of_the_other_executor_is_refused_not_ignored(tmp_path, flags, says):
    grid = tmp_path / "grid.toml"
    grid.write_text(f'folder = "{tmp_path}"\n[[stage]]\nscript = "train_teacher.py"\n')
    proc = sweep(grid, *flags)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert says in proc.stderr


def test_only_refuses_a_run_whose_needed_run_it_leaves_out_unfinished(image_folder, tmp_path):
    """`--only 'student_*'` before the grid's teacher had run: each student started, then
    failed in its job log for want of the teacher's checkpoint."""
    grid = write_grid(tmp_path / "grid.toml", STAGES, image_folder)
    proc = sweep(grid, "--only", "student_*")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith("error: --only: student_loss=kd+ce_seed0 needs teacher, "
                                  "which it leaves out and which has not finished")
    assert sweep(grid, "--only", "student_*", "--list").returncode == 0  # nothing runs


def _stand_ins(bin_dir, submitted, queue):
    """sbatch that keeps each file it is given, squeue that lists the ids in `queue`."""
    bin_dir.mkdir(exist_ok=True)
    submitted.mkdir(exist_ok=True)
    (bin_dir / "sbatch").write_text(f'#!/bin/sh\nn=$(ls {submitted} | wc -l)\n'
                                    f'cp "$1" {submitted}/$n.sh\n'
                                    f'echo "Submitted batch job $((700 + n))"\n')
    (bin_dir / "squeue").write_text(f'#!/bin/sh\ncat {queue}\n')
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 1\n")
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    return {"PATH": f"{bin_dir}:{os.environ['PATH']}"}


def _submitted_once(image_folder, tmp_path):
    """A `--no-wait` sweep of STAGES submitted to the stand-ins, the queue empty: (the folder
    of the submitted job files, the queue's file, a function that sweeps the grid again)."""
    submitted, queue = tmp_path / "submitted", tmp_path / "queue"
    env = _stand_ins(tmp_path / "bin", submitted, queue)
    grid = write_grid(tmp_path / "grid.toml", STAGES, image_folder)
    queue.write_text("")

    def sweep_again():
        return sweep(grid, "--executor", "slurm", "--no-wait", env=env)
    assert sweep_again().returncode == 0
    return submitted, queue, sweep_again


def test_a_rerun_of_a_no_wait_sweep_does_not_submit_the_runs_still_queued(image_folder,
                                                                           tmp_path):
    """A second `--no-wait` sweep before the first one's jobs had ended submitted every
    queued run again: two jobs writing one checkpoint."""
    submitted, queue, sweep_again = _submitted_once(image_folder, tmp_path)
    assert sorted(path.name for path in submitted.iterdir()) == ["0.sh", "1.sh"]
    queue.write_text("700\n701_0\n701_1\n")  # squeue --array: an array's tasks one by one
    proc = sweep_again()
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        "error: teacher is still queued or running in SLURM (job 700): run the sweep again "
        "once it has ended (or scancel it), or leave it out with --only (and 2 more runs: "
        "student_loss=kd+ce_seed0, student_loss=ce_seed0)")
    assert len(list(submitted.iterdir())) == 2
    queue.write_text("701_1\n")  # the teacher and one student ended (failed: no checkpoints)
    proc = sweep_again()
    assert "student_loss=ce_seed0" in proc.stderr and "teacher is" not in proc.stderr
    # an ended job's id is forgotten: no later sweep asks squeue about it
    logs = tmp_path / "sweep" / "logs"
    assert not (logs / "teacher.job").exists() and (logs / "student_loss=ce_seed0.job").exists()
    queue.write_text("")  # all ended: the unfinished runs are submitted again
    assert sweep_again().returncode == 0
    assert len(list(submitted.iterdir())) == 4


def test_a_submitted_run_is_not_submitted_again_where_squeue_cannot_say(image_folder,
                                                                         tmp_path):
    """Where squeue failed, a sweep warned and submitted again the runs of jobs that might
    still be queued: two jobs writing one checkpoint. It refuses them, saying how to go on."""
    submitted, queue, sweep_again = _submitted_once(image_folder, tmp_path)
    (tmp_path / "bin" / "squeue").write_text("#!/bin/sh\necho 'slurm_load_jobs error' >&2\n"
                                             "exit 1\n")
    proc = sweep_again()
    assert proc.returncode == 2 and len(list(submitted.iterdir())) == 2
    job_file = tmp_path / "sweep" / "logs" / "teacher.job"
    assert proc.stderr.strip().startswith(
        f"error: teacher was submitted to SLURM (job 700), and squeue cannot say whether it "
        f"has ended (if it has: delete {job_file}): run the sweep again once it has ended")
    for run in ("teacher", "student_loss=kd+ce_seed0", "student_loss=ce_seed0"):
        (tmp_path / "sweep" / "logs" / f"{run}.job").unlink()
    assert sweep_again().returncode == 0
    assert len(list(submitted.iterdir())) == 4


def test_a_training_process_that_has_ended_unreaped_is_not_in_flight(tmp_path):
    """A process that has exited but that its parent has not yet waited for (a zombie: on
    Linux its command line reads empty) counted as the run still training."""
    if not Path("/proc/self").exists():
        pytest.skip("zombies are told by /proc")
    run = sweep_module.Run(name="alone_seed0", script="train_student.py", settings={},
                           folder=str(tmp_path))
    sweep_module.pid_file(run).parent.mkdir()
    ended = subprocess.Popen([sys.executable, "-c", "pass", "--out", str(run.out)])
    try:
        deadline = time.monotonic() + 30
        while sweep_module.process_state(ended.pid) != "Z" and time.monotonic() < deadline:
            time.sleep(0.05)
        sweep_module.pid_file(run).write_text(str(ended.pid))
        assert sweep_module.training_here(run) is None
    finally:
        ended.wait()


def test_a_run_still_training_here_is_not_started_twice(image_folder, tmp_path):
    """A sweep ended while its training processes went on (killed, or its terminal closed),
    or one still running, and a second sweep of the same runs started each run again."""
    grid = write_grid(tmp_path / "grid.toml", STAGES, image_folder)
    runs = expand(load_grid(grid), str(tmp_path / "sweep"), seeds=[0])
    teacher = next(run for run in runs if run.name == "teacher")
    sweep_module.pid_file(teacher).parent.mkdir(parents=True)
    # a process of this run's command (its --out), and one of another's, with a pid file
    training = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)",
                                 "--out", str(teacher.out)])
    try:
        sweep_module.pid_file(teacher).write_text(str(training.pid))
        assert sweep_module.in_flight(runs) == {
            "teacher": f"is still training here (process {training.pid})"}
        proc = sweep(grid)
        assert proc.returncode == 2 and not (tmp_path / "sweep" / "teacher.pt").exists()
        assert proc.stderr.startswith(f"error: teacher is still training here (process "
                                      f"{training.pid}): run the sweep again once it has ended")
        # a pid reused by another process (a machine restarted) is no run in flight
        sweep_module.pid_file(teacher).write_text(str(os.getpid()))
        assert sweep_module.in_flight(runs) == {}
    finally:
        training.kill()
        training.wait()
    sweep_module.pid_file(teacher).write_text(str(training.pid))  # ended
    assert sweep_module.in_flight(runs) == {}


def test_squeue_s_pending_arrays_are_read_task_by_task():
    """A Slurm that lists a pending array collapsed, --array or not."""
    assert sweep_module.array_tasks("700_[0-3,5%2]") == ["700_0", "700_1", "700_2", "700_3",
                                                          "700_5"]
    assert sweep_module.array_tasks("700_[4]") == ["700_4"]
    assert sweep_module.array_tasks("701_3") == ["701_3"]
    assert sweep_module.array_tasks("702") == ["702"]


def test_a_run_another_sweep_starts_meanwhile_is_not_started_again(tmp_path):
    """A sweep checked for runs in flight only as it began: a run it was still waiting to
    start, started meanwhile by a second sweep (`--only` the waiting runs), was started again
    on the checkpoint the other was writing, its pid file removed."""
    run = sweep_module.Run(name="alone_seed0", script="train_student.py", settings={},
                           folder=str(tmp_path))
    sweep_module.pid_file(run).parent.mkdir()
    training = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)",
                                 "--out", str(run.out)])

    class NoStart:
        def update_parameters(self, **kwargs):
            pass

        def submit(self, function):
            raise AssertionError("started a run another sweep trains")
    try:
        sweep_module.pid_file(run).write_text(str(training.pid))
        outcome = sweep_module.run_here([run], {str(tmp_path): NoStart()}, [])
        assert outcome["alone_seed0"][0] == "not run"
        assert f"process {training.pid}" in outcome["alone_seed0"][1]
        assert sweep_module.pid_file(run).read_text() == str(training.pid)  # kept
    finally:
        training.kill()
        training.wait()
