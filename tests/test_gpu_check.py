"""benchmarks/gpu_check.sh end to end as a CPU smoke run (DEVICE=cpu, FLAGS=--dry-run), from
a .tar.gz of the data as it travels to a GPU machine: every stage runs and leaves its files,
in one archive of safe names, and the summary; and the summary's prediction interval."""
import os
import re
import signal
import statistics
import subprocess
import sys
import tarfile
import time

import pandas as pd
import pytest

from benchmarks.gpu_summary import accuracy_rows, cuda_tests_outcome, prediction_interval
from conftest import ROOT, like_the_gpu_machine

SAFE_NAME = re.compile(r"[A-Za-z0-9._-]+")


def test_gpu_check_runs_every_stage(image_folder, tmp_path):
    archive = tmp_path / "cifar.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(image_folder, arcname="cifar")
    out = tmp_path / "out"
    env = {**os.environ, "PYTHON": sys.executable, "DEVICE": "cpu", "FLAGS": "--dry-run",
           "BENCH_FLAGS": "--rounds 1 --batches 1 --kinds student",  # the teacher's: its own test
           "STARTUP_FLAGS": "--steady-steps 1",
           "PYTHONPATH": like_the_gpu_machine(tmp_path / "hidden")}  # it has no scipy, ...
    proc = subprocess.run(["bash", "benchmarks/gpu_check.sh", str(archive), str(out)], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr
    # one archive and the summary, nothing else, of safe names (a '+' does not travel)
    names = sorted(p.name for p in out.iterdir())
    assert len(names) == 2 and names[1] == "summary.md", names
    assert re.fullmatch(r"gpu_check-\d{8}-\d{6}-tests-pipeline-benchmark\.tar\.gz", names[0])
    with tarfile.open(out / names[0]) as tar:
        tar.extractall(tmp_path / "unpacked", filter="data")
    check = tmp_path / "unpacked" / "check"
    assert all(SAFE_NAME.fullmatch(p.name) for p in check.iterdir())
    timings = pd.read_csv(check / "timings.tsv", sep="\t")
    assert list(timings["stage"]) == [
        "tests", "startup", "start-up: import torch", "start-up: import the project",
        "start-up: cpu context", "start-up: teacher's first step beyond a steady one",
        "start-up: student's first step beyond a steady one", "teacher", "student_kd+ce",
        "student_kd", "student_ce", "ema_mean-teacher", "ema_mean-teacher-no-ema",
        "ema_mean-teacher-no-averaging", "evaluate", "pipeline", "benchmark", "check"]
    assert (timings[~timings["stage"].str.startswith("start-up")]["seconds"] > 0).all()
    assert "skipped" in (check / "tests.log").read_text()  # the cuda tests, on this CPU
    assert (check / "student_kdpce.log").is_file()
    results = pd.read_csv(check / "results.csv")
    assert set(results["variant"]) >= {"teacher", "teacher EMA", "kd+ce", "kd+ce EMA", "kd",
                                       "ce", "mean-teacher", "mean-teacher-no-ema",
                                       "mean-teacher-no-averaging teacher"}
    assert re.search(r"^\| student: train +\|", (check / "benchmark.md").read_text(), re.M)
    assert (check / "runs" / "teacher.metrics.csv").is_file()
    # the summary: printed, kept beside the archive and in it, every part there
    summary = (out / "summary.md").read_text()
    assert summary == (check / "summary.md").read_text() and summary in proc.stdout
    assert "torch" in summary and "| pipeline |" in summary and "| check |" in summary
    assert "| torchvision " in summary and "| triton " in summary  # the versions that ran
    assert re.search(r"^cuda tests: \d+ skipped, \d+ deselected in ", summary, re.M), summary
    assert "cpu context" in summary  # images/s, the host's peak GB, no GPU's on this CPU
    assert re.search(r"^\| teacher \| [\d,]+ \| [\d.]+ \|  \|$", summary, re.M), summary
    teacher = r"^\| teacher \| [\d.]+ \| 87\.94 ± 0\.19 \(3\) \| 86\.98 - 88\.90 \| (yes|NO) \|$"
    assert re.search(teacher, summary, re.M), summary
    assert re.search(r"^\| kd\+ce EMA \| [\d.]+ \| \(no CPU reference\)", summary, re.M)


def test_the_prediction_interval_is_t_based_and_widens_with_few_seeds():
    """By hand: mean ± t(0.975, n - 1) * s * sqrt(1 + 1/n); the teacher's 3 bf16 seeds
    (87.88, 87.79, 88.16: s = 0.193) give t = 4.303 and 87.94 ± 0.96."""
    low, high = prediction_interval([87.88, 87.79, 88.16])
    assert (low, high) == pytest.approx((86.985, 88.902), abs=1e-3)
    assert prediction_interval([1.0, 3.0]) == pytest.approx((2 - 12.706 * 2 ** 0.5 * 1.5 ** 0.5,
                                                             2 + 12.706 * 2 ** 0.5 * 1.5 ** 0.5))
    # one seed gives none; 12 and 40 seeds (df 11, 39: 39 is between tables, so df 30's)
    assert prediction_interval([87.9]) is None
    twelve, forty = [float(i % 2) for i in range(12)], [float(i % 2) for i in range(40)]
    s12, s40 = statistics.stdev(twelve), statistics.stdev(forty)
    assert prediction_interval(twelve)[1] == pytest.approx(0.5 + 2.201 * s12 * (13 / 12) ** 0.5)
    assert prediction_interval(forty)[1] == pytest.approx(0.5 + 2.042 * s40 * (41 / 40) ** 0.5)
    assert accuracy_rows([{"variant": "kd", "test_acc": "79.1"}], {"kd": [78.9]})[-1] == \
        "| kd | 79.10 | 78.90 (1) | (one seed: none) | |"


def test_gpu_check_runs_on_after_a_failing_stage_and_says_which(tmp_path):
    env = {**os.environ, "PYTHON": "false"}  # every stage fails at once
    proc = subprocess.run(["bash", "benchmarks/gpu_check.sh", str(tmp_path), str(tmp_path / "out")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert "failed: tests startup teacher student_kd+ce" in proc.stderr
    assert "benchmark summary" in proc.stderr  # the summary too, and the archive is still made
    assert [p.suffixes for p in (tmp_path / "out").glob("gpu_check-*")] == [[".tar", ".gz"]]


def test_the_parts_run_in_the_order_parts_names_them_and_a_misspelt_one_is_refused(tmp_path):
    """The parts ran tests first whatever PARTS said: a call cut short by its time limit
    lost the benchmark it was for (its table comes at its end). A part not known was
    silently skipped."""
    env = {**os.environ, "PYTHON": "false", "PARTS": "benchmark tests"}  # stages fail at once
    proc = subprocess.run(["bash", "benchmarks/gpu_check.sh", str(tmp_path), str(tmp_path / "out")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert "failed: benchmark tests" in proc.stderr
    env["PARTS"] = "tests benchmarks"
    proc = subprocess.run(["bash", "benchmarks/gpu_check.sh", str(tmp_path), str(tmp_path / "x")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip() == ("PARTS: unknown part 'benchmarks' (the parts: tests "
                                   "pipeline benchmark)")
    assert not (tmp_path / "x").exists()


def wait_until(condition, seconds=120):
    """Poll `condition` until it holds. Generous: on cores busy with the rest of the suite,
    the check's start (torch imported for gpu.txt) took over 10 s, and a TERM sent before
    the script's trap is set kills it outright (-15, not 143)."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"not so after {seconds} s"
        time.sleep(0.05)


def test_a_benchmark_stopped_by_the_time_limit_leaves_its_table_in_the_archive(tmp_path):
    """benchmark.md was written only after the benchmark ended: a TERM packed its log alone,
    the table of the rounds it kept among the round lines."""
    python = tmp_path / "python"  # the benchmark prints what it timed, then "runs" on
    python.write_text(f'#!/bin/bash\n[ "$1" = benchmarks/throughput.py ] || '
                      f'exec {sys.executable} "$@"\n'
                      'echo "round 1/5 done" >&2\necho "| student: train | 7 |"\nexec sleep 60\n')
    python.chmod(0o755)
    out = tmp_path / "out"
    check = subprocess.Popen(["bash", "benchmarks/gpu_check.sh", str(tmp_path), str(out)],
                             cwd=ROOT, env={**os.environ, "PYTHON": str(python),
                                            "PARTS": "benchmark"},
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    log = out / "check" / "benchmark.log"
    wait_until(lambda: log.exists() and "student" in log.read_text())  # the stand-in printed
    check.send_signal(signal.SIGTERM)
    check.communicate(timeout=30)
    [archive] = out.glob("gpu_check-*-benchmark.tar.gz")
    with tarfile.open(archive) as packed:
        table = packed.extractfile("check/benchmark.md").read().decode()
    assert table == "| student: train | 7 |\n"


def test_the_cuda_tests_are_collected_without_what_the_gpu_machine_lacks(tmp_path):
    """gpu_check.sh runs `pytest -m cuda tests`, which imports every test module: one that
    needs a package the GPU machine lacks must skip, or the collection error stops every
    `cuda` test from running there."""
    env = {**os.environ, "PYTHONPATH": like_the_gpu_machine(tmp_path),
           "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "cuda", "-p",
                           "no:cacheprovider", "--collect-only", "tests"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:]
    assert re.search(r"\b\d+/\d+ tests collected", proc.stdout)


def test_the_summary_gives_the_cuda_tests_outcome_even_when_cut_short():
    head = ("tests/test_cuda.py::test_a PASSED                  [  5%]\n"
            "tests/test_cuda.py::test_b FAILED                  [ 10%]\n")
    finished = (head + "=========== short test summary info ===========\n"
                "FAILED tests/test_cuda.py::test_b - AssertionError: 1 != 2\n"
                "====== 1 failed, 1 passed, 250 deselected in 95.20s (0:01:35) ======\n")
    assert cuda_tests_outcome(finished) == [
        "cuda tests: 1 failed, 1 passed, 250 deselected in 95.20s (0:01:35)",
        "- FAILED tests/test_cuda.py::test_b - AssertionError: 1 != 2"]
    assert cuda_tests_outcome(head + "tests/test_cuda.py::test_c ") == [
        "cuda tests: cut short after 2 (1 passed)",
        "- tests/test_cuda.py::test_b FAILED                  [ 10%]"]


def test_a_check_stopped_by_its_time_limit_packs_what_it_made(tmp_path):
    """Stopped mid-stage (a TERM, the time limit's first signal), the check left loose
    files under OUT_DIR/check, names with '+' and folders too deep to come back among them,
    and no summary; now it stops the stage and packs, as at its end."""
    python = tmp_path / "python"  # pytest "runs" until stopped; the summary is the real one
    python.write_text(f'#!/bin/bash\n[ "$1" = -m ] && exec sleep 60\nexec {sys.executable} "$@"\n')
    python.chmod(0o755)
    out = tmp_path / "out"
    check = subprocess.Popen(["bash", "benchmarks/gpu_check.sh", str(tmp_path), str(out)],
                             cwd=ROOT, env={**os.environ, "PYTHON": str(python), "PARTS": "tests"},
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_until((out / "check" / "tests.log").exists)  # the stage has started
    time.sleep(0.5)
    check.send_signal(signal.SIGTERM)  # the shell alone: the trap must stop the stage
    _, stderr = check.communicate(timeout=30)
    assert check.returncode == 143, stderr
    [archive] = out.glob("gpu_check-*-tests.tar.gz")
    assert sorted(p.name for p in out.iterdir()) == [archive.name, "summary.md"]
    with tarfile.open(archive) as packed:
        assert {"check/tests.log", "check/timings.tsv", "check/summary.md"} <= set(
            packed.getnames())
