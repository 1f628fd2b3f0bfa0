"""benchmarks/gpu_runs.sh as a CPU smoke run: the grids swept one after another, evaluate.py
on the finished runs that report a test accuracy, one archive of records without
checkpoints."""
import os
import subprocess
import sys
import tarfile

import pandas as pd
import pytest

from conftest import ROOT

pytest.importorskip("submitit")  # sweep.py's


def test_gpu_runs_sweeps_evaluates_and_archives_the_records(image_folder, tmp_path):
    common = (f'flags = {{data-root = "{image_folder}", epochs = 1, batch-size = 32, '
              f'train-subset = 64}}\n[[stage]]\nscript = "train_student.py"\n')
    (tmp_path / "a.toml").write_text(f'folder = "{tmp_path}/a"\n{common}'
                                     'name = "alone"\nflags = {loss = "ce"}\n')
    (tmp_path / "b.toml").write_text(f'folder = "{tmp_path}/b"\n{common}'
                                     'name = "picked_on_val"\nflags = {loss = "ce", '
                                     'skip-test = true}\n')
    out = tmp_path / "out"
    env = {**os.environ, "PYTHON": sys.executable, "DEVICE": "cpu", "RUNS": "2"}
    proc = subprocess.run(["bash", "benchmarks/gpu_runs.sh", str(image_folder), str(out), "10",
                           str(tmp_path / "a.toml"), str(tmp_path / "b.toml")], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    log = (out / "sweeps.log").read_text()
    assert log.index(f"== {tmp_path}/a.toml") < log.index(f"== {tmp_path}/b.toml")
    assert "records and results of 1 finished runs with a test" in proc.stdout
    archives = [p for p in out.iterdir() if p.name.startswith("gpu_runs-")]
    assert len(archives) == 1
    with tarfile.open(archives[0]) as tar:
        names = tar.getnames()
        tar.extractall(tmp_path / "unpacked", filter="data")
    assert not [n for n in names if n.endswith(".pt")]
    assert any(n.endswith("a/alone.metrics.csv") for n in names)
    assert any(n.endswith("b/picked_on_val.config.json") for n in names)
    results = pd.read_csv(tmp_path / "unpacked" / "results" / "results.csv")
    assert set(results["checkpoint"].map(lambda p: os.path.basename(p))) == {"alone.pt"}
