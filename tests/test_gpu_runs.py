"""benchmarks/gpu_runs.sh as a CPU smoke run: the grids swept as one pool, evaluate.py on the
finished runs that report a test accuracy, one archive of records without checkpoints, the
finished teachers exported beside it."""
import importlib
import importlib.metadata
import os
import re
import subprocess
import sys
import tarfile
import tomllib
import zipfile
from pathlib import Path

import pandas as pd
import pytest
import torch

from conftest import ROOT, like_the_gpu_machine
from kd.checkpoints import load_checkpoint

pytest.importorskip("submitit")  # sweep.py's

from sweep import expand, finished, stale  # noqa: E402


def wheel_of(package, folder):
    """A pure-Python wheel of an installed package, as far as importing it goes: a zip with
    the package at its root."""
    source = Path(importlib.import_module(package).__file__).parent
    folder.mkdir(exist_ok=True)
    with zipfile.ZipFile(folder / f"{package}-0-py3-none-any.whl", "w") as wheel:
        for path in source.rglob("*"):
            if "__pycache__" in path.parts or path.is_dir():
                continue
            wheel.write(path, path.relative_to(source.parent))
    return folder


def test_gpu_runs_sweeps_evaluates_and_archives_the_records(image_folder, tmp_path):
    common = (f'flags = {{data-root = "{image_folder}", epochs = 1, batch-size = 32, '
              f'train-subset = 64}}\n[[stage]]\n')
    (tmp_path / "a.toml").write_text(f'folder = "{tmp_path}/a"\n{common}'
                                     'script = "train_teacher.py"\nname = "teacher"\n'
                                     '[[stage]]\nscript = "train_student.py"\n'
                                     'name = "alone"\nflags = {loss = "ce"}\n')
    (tmp_path / "b.toml").write_text(f'folder = "{tmp_path}/b"\n{common}'
                                     'script = "train_student.py"\nname = "picked_on_val"\n'
                                     f'flags = {{loss = "kd", teacher = "{tmp_path}/a/teacher.pt", '
                                     'skip-test = true}\n')
    out = tmp_path / "out"
    # as on the lent machine: submitit and cloudpickle come from wheels in WHEELS
    wheel_of("submitit", tmp_path / "wheels")
    env = {**os.environ, "PYTHON": sys.executable, "DEVICE": "cpu", "RUNS": "2",
           "PYTHONPATH": like_the_gpu_machine(tmp_path / "hidden"),
           "WHEELS": str(wheel_of("cloudpickle", tmp_path / "wheels"))}
    proc = subprocess.run(["bash", "benchmarks/gpu_runs.sh", str(image_folder), str(out), "10",
                           str(tmp_path / "b.toml"), str(tmp_path / "a.toml")], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    log = (out / "sweeps.log").read_text()  # one pool: b's student waits for a's teacher
    assert log.index(f"done  {tmp_path}/a/teacher") < log.index(
        f"started  {tmp_path}/b/picked_on_val")
    assert "records and results of 2 finished runs with a test" in proc.stdout
    archives = [p for p in out.iterdir() if p.name.startswith("gpu_runs-")]
    assert len(archives) == 1
    with tarfile.open(archives[0]) as tar:
        names = tar.getnames()
        tar.extractall(tmp_path / "unpacked", filter="data")
    assert not [n for n in names if n.endswith(".pt")]
    assert any(n.endswith("a/alone.metrics.csv") for n in names)
    assert any(n.endswith("b/picked_on_val.config.json") for n in names)
    results = pd.read_csv(tmp_path / "unpacked" / "results" / "results.csv")
    assert set(results["checkpoint"].map(lambda p: os.path.basename(p))) == {"alone.pt",
                                                                             "teacher.pt"}
    # the teacher comes back, exported: the same weights, without the training state
    assert sorted(p.name for p in out.iterdir()) == sorted([archives[0].name, "sweeps.log",
                                                            "a-teacher.pt"])
    exported = load_checkpoint(out / "a-teacher.pt")
    assert exported["exported"] and "optimizer_state" not in exported
    original = load_checkpoint(tmp_path / "a" / "teacher.pt")["model_state"]
    assert all(torch.equal(original[k], exported["model_state"][k]) for k in original)
    # beside its records from the archive, sweep.py takes the export for the finished run
    folder = tmp_path / "unpacked" / str(tmp_path / "a").lstrip("/")
    (out / "a-teacher.pt").rename(folder / "teacher.pt")
    grid = tomllib.loads((tmp_path / "a.toml").read_text())
    teacher = expand(grid, str(folder), seeds=[0], extra={"device": "cpu"})[0]
    assert teacher.name == "teacher" and finished(teacher) and stale(teacher) == []


def test_without_submitit_s_dependencies_it_stops_at_once_in_one_line(image_folder, tmp_path):
    env = {**os.environ, "PYTHON": sys.executable, "DEVICE": "cpu",
           "PYTHONPATH": like_the_gpu_machine(tmp_path / "hidden")}
    proc = subprocess.run(["bash", "benchmarks/gpu_runs.sh", str(image_folder),
                           str(tmp_path / "out"), "1", "experiments/grids/select-e200.toml"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert "No module named 'submitit'" in proc.stderr and "WHEELS" in proc.stderr
    assert list((tmp_path / "out").iterdir()) == []  # nothing ran


def test_docs_fetch_every_wheel_sweep_py_needs_beyond_torch_s_own():
    """docs/gpu.md's download command names each requirement of submitit that torch does
    not bring (the lent machine has torch and its dependencies, no network)."""
    def names(package):
        return {re.split(r"[ ;<>=!~\[]", requirement)[0].lower().replace("_", "-")
                for requirement in importlib.metadata.requires(package) or ()
                if "extra ==" not in requirement}
    command = next(line for line in (ROOT / "docs/gpu.md").read_text().splitlines()
                   if "pip download" in line)
    assert {"submitit", *names("submitit") - names("torch")} <= set(command.split())


@pytest.mark.parametrize("step, signal, code", [
    ("evaluate.py", "KILL", -9),  # the time limit, as evaluate.py starts
    ("-", "KILL", -9),  # as the teachers' export starts (the first inline script)
    ("sweep.py", "TERM", 143),  # a limit's TERM, as the sweep runs: packed, then it ends
])
def test_a_call_cut_short_after_the_sweep_still_brings_the_records_back(image_folder,
                                                                        tmp_path, step,
                                                                        signal, code):
    """The lent machine's time limit may end the call while the teachers are exported or
    evaluate.py runs: the records' archive is in OUT_DIR before either starts; a TERM
    during the sweep packs what the sweep leaves before the script ends."""
    (tmp_path / "a.toml").write_text(
        f'folder = "{tmp_path}/a"\nflags = {{data-root = "{image_folder}", epochs = 1, '
        f'batch-size = 32, train-subset = 64}}\n[[stage]]\nscript = "train_teacher.py"\n'
        'name = "teacher"\n')
    python = tmp_path / "python"
    then = "exit 1" if signal == "KILL" else f'exec {sys.executable} "$@"'
    python.write_text(f'#!/bin/sh\nif [ "$1" = {step} ] && [ ! -e {tmp_path}/sent ]; then '
                      f'touch {tmp_path}/sent; kill -{signal} $PPID; {then}; fi\n'
                      f'exec {sys.executable} "$@"\n')
    python.chmod(0o755)
    out = tmp_path / "out"
    # TMPDIR: a killed script leaves its mktemp folder (its EXIT trap never runs)
    env = {**os.environ, "PYTHON": str(python), "DEVICE": "cpu", "RUNS": "1",
           "TMPDIR": str(tmp_path)}
    proc = subprocess.run(["bash", "benchmarks/gpu_runs.sh", str(image_folder), str(out), "10",
                           str(tmp_path / "a.toml")], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == code, proc.stdout + proc.stderr
    archives = [p for p in out.iterdir() if p.name.startswith("gpu_runs-")]
    assert len(archives) == 1 and archives[0].name.endswith(".tar.gz"), archives
    with tarfile.open(archives[0]) as tar:
        assert any(n.endswith("a/teacher.metrics.csv") for n in tar.getnames())
    assert (out / "a-teacher.pt").exists() == (step == "evaluate.py")


def test_only_the_runs_named_in_only_are_swept(image_folder, tmp_path):
    """ONLY: sweep.py's --only patterns, passed unexpanded (the shell must not glob them),
    so a lent machine's call runs just what is owed: here the teacher, not the student."""
    (tmp_path / "a.toml").write_text(
        f'folder = "{tmp_path}/a"\nflags = {{data-root = "{image_folder}", epochs = 1, '
        'batch-size = 32, train-subset = 64}\n[[stage]]\nscript = "train_teacher.py"\n'
        'name = "teacher"\n[[stage]]\nscript = "train_student.py"\nname = "alone"\n'
        'flags = {loss = "ce"}\n')
    # t* globbed in the script's folder (the repository: tests, train_*.py) would match no run
    env = {**os.environ, "PYTHON": sys.executable, "DEVICE": "cpu", "RUNS": "1", "ONLY": "t*"}
    proc = subprocess.run(["bash", "benchmarks/gpu_runs.sh", str(image_folder),
                           str(tmp_path / "out"), "10", str(tmp_path / "a.toml")], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    log = (tmp_path / "out" / "sweeps.log").read_text()
    assert "1 run in" in log and "done  teacher" in log and "alone" not in log
