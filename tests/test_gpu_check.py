"""benchmarks/gpu_check.sh end to end as a CPU smoke run (DEVICE=cpu, FLAGS=--dry-run), from
a .tar.gz of the data as it travels to a GPU machine: every stage runs and leaves its files."""
import os
import re
import subprocess
import sys
import tarfile

import pandas as pd

from conftest import ROOT


def test_gpu_check_runs_every_stage(image_folder, tmp_path):
    archive = tmp_path / "cifar.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(image_folder, arcname="cifar")
    out = tmp_path / "out"
    env = {**os.environ, "PYTHON": sys.executable, "DEVICE": "cpu", "FLAGS": "--dry-run",
           "BENCH_FLAGS": "--rounds 1 --batches 1"}
    proc = subprocess.run(["bash", "benchmarks/gpu_check.sh", str(archive), str(out)], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    timings = pd.read_csv(out / "timings.tsv", sep="\t")
    assert list(timings["stage"]) == [
        "tests", "teacher", "student_kd+ce", "student_kd", "student_ce", "ema_mean-teacher",
        "ema_mean-teacher-no-ema", "ema_mean-teacher-no-averaging", "evaluate", "pipeline",
        "benchmark"]
    assert (timings["seconds"] > 0).all()
    assert "skipped" in (out / "tests.log").read_text()  # the cuda tests, on this CPU
    results = pd.read_csv(out / "results.csv")
    assert set(results["variant"]) >= {"teacher", "teacher EMA", "kd+ce", "kd+ce EMA", "kd",
                                       "ce", "mean-teacher", "mean-teacher-no-ema",
                                       "mean-teacher-no-averaging teacher"}
    assert re.search(r"^\| student: train +\|", (out / "benchmark.md").read_text(), re.M)
    assert (out / "runs" / "teacher.metrics.csv").is_file()


def test_gpu_check_runs_on_after_a_failing_stage_and_says_which(tmp_path):
    env = {**os.environ, "PYTHON": "false"}  # every stage fails at once
    proc = subprocess.run(["bash", "benchmarks/gpu_check.sh", str(tmp_path), str(tmp_path / "out")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert "failed: tests teacher student_kd+ce" in proc.stderr and "benchmark" in proc.stderr
