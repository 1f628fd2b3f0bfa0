"""report.py: verdicts computed from the numbers, and a report that says them."""
import math
import subprocess
import sys

import pandas as pd
import pytest

# Skipped where scipy cannot be installed (the lent GPU machine, which runs the suite as is).
pytest.importorskip("scipy")

from conftest import ROOT  # noqa: E402
from report import compare, per_variant, provenance, raw_vs_ema_pairs  # noqa: E402


def test_a_gap_far_beyond_the_spread_is_real():
    result = compare([80.0, 80.2, 79.8], [75.0, 75.3, 74.9])
    assert result["diff"] == pytest.approx(80 - 225.2 / 3)
    assert result["spread"] == pytest.approx(math.sqrt(0.08667 / 2), abs=1e-4)  # b's std
    # Welch by hand: t = d / sqrt(sa²/n + sb²/n), with sa² = 0.04, sb² = 0.043333
    assert result["t"] == pytest.approx(result["diff"] / math.sqrt((0.04 + 0.043333) / 3),
                                        rel=1e-4)
    assert result["p"] < 1e-4 and result["verdict"].startswith("real")


def test_a_gap_within_the_spread_is_no_difference_and_one_seed_no_claim():
    assert compare([80, 81, 79], [80.5, 79.5, 80])["verdict"].startswith("no difference")
    assert compare([80], [70, 71])["verdict"] == "one seed: no claim can be made"


def test_paired_runs_are_compared_by_their_differences():
    raw, ema = [70.0, 75.0, 80.0], [70.3, 75.2, 80.4]  # seeds far apart, EMA always higher
    paired = compare(ema, raw, paired=True)
    assert paired["spread"] == pytest.approx(pd.Series([0.3, 0.2, 0.4]).std())
    assert paired["verdict"].startswith("real")
    assert not compare(ema, raw)["verdict"].startswith("real")  # unpaired: lost in the seeds


def test_the_report_says_what_the_results_show(tmp_path):
    rows = []
    for seed, (teacher, kdce, ce, gain) in enumerate([(88.1, 78.6, 75.9, 0.1),
                                                      (87.9, 78.9, 75.6, 0.15),
                                                      (88.3, 78.4, 76.1, 0.05)]):
        for variant, acc, model in (("teacher", teacher, "teacher"), ("kd+ce", kdce, "student"),
                                    ("ce", ce, "student"), ("ce EMA", ce + gain, "student")):
            checkpoint = f"{variant.split()[0]}_seed{seed}.pt"
            rows.append({"checkpoint": checkpoint, "model": model, "variant": variant,
                         "seed": seed, "test_acc": acc, "macs": 3.1e6, "train_minutes": 2.5})
    pd.DataFrame(rows).to_csv(tmp_path / "results.csv", index=False)
    (tmp_path / "samples.png").write_bytes(b"")
    subprocess.run([sys.executable, "report.py", "--plots-dir", tmp_path], cwd=ROOT, check=True)
    report = (tmp_path / "report.md").read_text()
    assert "![The data](samples.png)" in report
    teacher = next(line for line in report.splitlines() if line.startswith("| teacher "))
    assert [cell.strip() for cell in teacher.split("|")[1:4]] == ["teacher", "3", "88.10 ± 0.20"]
    line = next(line for line in report.splitlines() if line.startswith("| kd+ce − ce"))
    assert "+2.77" in line and "real" in line
    line = next(line for line in report.splitlines() if line.startswith("| ce EMA − ce"))
    assert "+0.10" in line and "0.05" in line  # paired: the spread of the gaps, not the seeds
    assert "Mean-teacher" not in report  # no such runs here: no empty section


def test_raw_against_ema_leaves_out_mean_teacher_whose_ema_is_its_teacher():
    results = pd.DataFrame({"variant": ["kd", "kd EMA", "mean-teacher",
                                        "mean-teacher teacher"]})
    assert raw_vs_ema_pairs(results) == [("kd EMA", "kd")]


def test_the_report_says_where_its_runs_came_from_and_when_they_differ():
    results = pd.DataFrame({"data_sha256": ["0a1b2c3d4e5f"] * 3, "machine": ["AMD EPYC"] * 3,
                            "precision": ["bf16", "bf16", "fp32"], "torch": ["2.14.1"] * 3,
                            "commit": ["abc1234567"] * 3})
    lines = provenance(results).splitlines()
    assert "- data (sha256): `0a1b2c3d4e5f`" in lines and "- trained on: `AMD EPYC`" in lines
    assert "- precision: `bf16`, `fp32` (**the runs differ**)" in lines
    assert "- code (git commit): `abc1234567`" in lines
    # results.csv from before runs recorded it, or runs of which some did not
    assert "- precision: not recorded" in provenance(results.drop(columns="precision"))
    results.loc[0, "machine"] = None
    assert "- trained on: not recorded, `AMD EPYC` (**the runs differ**)" in provenance(results)


def test_two_sets_of_runs_compared_variant_by_variant(tmp_path):
    def results(teacher, student, extra):
        rows = [{"variant": "teacher", "test_acc": acc} for acc in teacher]
        rows += [{"variant": "kd", "test_acc": acc} for acc in student]
        rows += [{"variant": extra, "test_acc": 70.0}]
        return pd.DataFrame(rows)
    a = results([87.5, 87.8, 88.2], [79.1, 79.2, 79.0], "dkd")
    b = results([87.9, 87.6, 88.0], [75.1, 75.0, 75.2], "dist")  # the students fell 4 points
    for name, frame in (("a", a), ("b", b)):
        frame.to_csv(tmp_path / f"{name}.csv", index=False)
    proc = subprocess.run([sys.executable, "experiments/compare_results.py", tmp_path / "a.csv",
                           tmp_path / "b.csv", "--names", "fp32", "bf16"], cwd=ROOT,
                          capture_output=True, text=True, check=True)
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
            for line in proc.stdout.splitlines()[2:]}
    assert list(rows) == ["teacher", "kd"]  # only the variants both hold
    assert rows["teacher"][0] == "87.83 ± 0.35 (3)"
    assert rows["teacher"][3].startswith("no difference")
    assert rows["kd"][2] == "-4.00" and rows["kd"][3].startswith("real")


def test_minutes_per_run_are_the_median_so_one_run_on_busy_cores_does_not_move_them():
    results = pd.DataFrame({"variant": ["teacher"] * 3, "seed": [0, 1, 2],
                            "test_acc": [87.9, 87.8, 88.2], "macs": [36e6] * 3,
                            "train_minutes": [16.1, 22.1, 15.4]})
    assert per_variant(results)["minutes per run (median)"].tolist() == [16.1]
