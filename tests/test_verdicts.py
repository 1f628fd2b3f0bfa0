"""experiments/verdicts.py: the tests it makes from a summary agree with report.py's on runs
that have that summary (n = 3: mean m, std s for m - s, m, m + s)."""
import itertools
import math
import os
import shutil
import subprocess
import sys

import pandas as pd
import pytest

pytest.importorskip("statsmodels")

from scipy import stats  # noqa: E402

from conftest import ROOT  # noqa: E402
from report import compare, equivalence  # noqa: E402

sys.path.insert(0, str(ROOT / "experiments"))
from verdicts import (  # noqa: E402
    EMA_GAINS,
    EMA_SUMMARY,
    EMA_TEACHERS,
    FP32_AGAIN,
    H200_RUNS,
    MAKE_ALL,
    MEAN_TEACHER_AGAIN,
    PER_SEED,
    RERUN,
    SEEDS_34,
    TEACHERS_AGAIN,
    again_tables,
    first_table,
    five_seed_tables,
    method_tables,
    paired_from_summary,
    pipeline_table,
    rerun_tables,
    tables,
    trusted_rows,
    welch_from_summary,
)


def runs(mean, std):
    return [mean - std, mean, mean + std]


def test_welch_from_a_summary_is_welch_on_the_runs():
    summary = welch_from_summary((78.96, 0.16), (78.58, 0.35))
    result = compare(runs(78.96, 0.16), runs(78.58, 0.35))
    for key in ("diff", "ci_low", "ci_high", "p"):
        assert summary[key] == pytest.approx(result[key])


def test_paired_from_a_summary_is_the_paired_test_and_tost_on_the_runs():
    for mean in (-0.18, 0.3):  # each TOST margin binds in turn
        summary = paired_from_summary(mean, 0.08)
        raw = [70.0, 75.0, 80.0]
        ema = [r + d for r, d in zip(raw, runs(mean, 0.08))]
        result = compare(ema, raw, paired=True)
        for key in ("diff", "ci_low", "ci_high", "p"):
            assert summary[key] == pytest.approx(result[key])
        assert summary["tost"] == pytest.approx(equivalence(ema, raw))


def test_the_methods_table_summarises_raw_weights_and_pairs_students_by_seed():
    rows = []
    for seed, (ce, kd) in enumerate([(75.0, 78.0), (76.0, 79.5), (75.5, 78.4)]):
        for variant, acc, minutes in (("ce", ce, 1.0 + seed), ("kd", kd, 2.0)):
            rows.append({"table": "chosen", "weights": "raw", "variant": variant,
                         "seed": seed, "test_acc": acc, "val_acc": acc + 1,
                         "train_acc": acc + 2, "train_minutes": minutes})
            rows.append({**rows[-1], "weights": "ema", "variant": f"{variant} EMA",
                         "test_acc": 10.0})  # an EMA row is not a run of its own here
    rows += [{**row, "variant": "fitnet", "test_acc": row["test_acc"] - 0.5 - 0.1 * row["seed"]}
             for row in rows if row["variant"] == "ce"]
    (title, summary), (_, comparisons), (_, alone) = method_tables(pd.DataFrame(rows))
    assert title == "Methods, chosen: accuracy (%)"
    assert summary["variant"].tolist() == ["ce", "kd", "fitnet"]
    assert summary["per seed (test)"].tolist()[:2] == ["75.00 / 76.00 / 75.50",
                                                       "78.00 / 79.50 / 78.40"]
    assert summary["test_acc"].tolist()[:2] == ["75.50 ± 0.50", "78.63 ± 0.78"]
    assert summary["val_acc"].tolist()[:2] == ["76.50 ± 0.50", "79.63 ± 0.78"]
    assert summary["minutes per run (median)"].tolist() == [2.0, 2.0, 2.0]
    kd_ce = comparisons[comparisons["comparison"] == "kd − ce"].iloc[0]
    assert kd_ce["runs"] == "3 pairs by seed"
    assert kd_ce["difference (points)"] == "+3.13"
    # kd − ce is report.py's already; fitnet is compared with KD + CE there, absent here
    assert alone["comparison"].tolist() == ["fitnet − ce"]
    assert alone["difference (points)"].tolist() == ["-0.60"]


def ema_teachers(shifts):
    """The EMA teachers' rows of mean-teacher runs of seeds 0-2, bf16 − fp32 = shifts."""
    return pd.DataFrame([{"precision": precision, "variant": variant, "seed": seed,
                          "weights": "ema", "test_acc": base + seed
                          + (shift if precision == "bf16" else 0.0)}
                         for variant, base in zip(EMA_TEACHERS, (73.0, 10.5))
                         for seed, shift in enumerate(shifts)
                         for precision in ("bf16", "fp32")])


def test_the_ema_teachers_of_runs_again_join_bf16_against_fp32_paired_by_seed():
    rows = [{"precision": precision, "variant": "kd", "seed": seed, "test_acc": 79.0 + seed}
            for seed in range(3) for precision in ("fp32", "bf16")]
    _, table = tables(pd.DataFrame(rows), ema_teachers([0.1, 0.2, 0.3]))[-3]
    table = table.set_index("variant")
    assert list(table.index) == ["kd", *EMA_SUMMARY, *EMA_TEACHERS]
    for variant in EMA_TEACHERS:
        assert table.at[variant, "runs"] == "3 pairs by seed"
        assert table.at[variant, "bf16 − fp32 (points)"] == "+0.20"
    assert table.at["kd+ce EMA", "runs"].endswith("(Welch, from mean ± std)")


def test_an_ema_teacher_without_its_runs_again_is_no_test_not_a_key_error():
    """The EMA teachers have no kept summary to fall back on (EMA_SUMMARY names the
    students' EMA weights only): without their three trusted runs a side, the fallback's
    EMA_SUMMARY[v] raised a KeyError."""
    rows = [{"precision": precision, "variant": "kd", "seed": seed, "test_acc": 79.0 + seed}
            for seed in range(3) for precision in ("fp32", "bf16")]
    again = ema_teachers([0.1, 0.2, 0.3])
    again = again[~((again["variant"] == EMA_TEACHERS[0]) & (again["seed"] == 2))]
    _, table = tables(pd.DataFrame(rows), again)[-3]
    table = table.set_index("variant")
    assert table.at[EMA_TEACHERS[0], "verdict"] == \
        "no test: fewer than 3 runs again a side, and no summary kept"
    assert table.at[EMA_TEACHERS[0], "runs"] == "2 and 2, unpaired"
    assert table.at[EMA_TEACHERS[0], "bf16 − fp32 (points)"] == "+0.15"  # (0.1 + 0.2) / 2
    assert table.at[EMA_TEACHERS[1], "runs"] == "3 pairs by seed"


def test_runs_again_are_checked_against_their_record_and_their_teachers_summarised():
    recorded = pd.DataFrame([{"precision": p, "variant": "mean-teacher", "seed": seed,
                              "test_acc": 73.0 + seed} for p in ("bf16", "fp32")
                             for seed in range(3)])
    raw = recorded.assign(weights="raw")
    raw.loc[(raw["precision"] == "fp32") & (raw["seed"] == 1), "test_acc"] = 74.03
    (_, same), (_, teachers) = again_tables(
        "Mean-teacher runs", recorded, pd.concat([raw, ema_teachers([0.1, 0.2, 0.3])]),
        EMA_TEACHERS)
    same = same.set_index("precision")
    assert same.at["bf16", "test accuracy as recorded"] == "3 of 3"
    assert same.at["fp32", "test accuracy as recorded"] == "2 of 3"
    assert same.at["fp32", "largest difference (points)"] == "0.03"
    teachers = teachers.set_index(["precision", "variant"])
    assert teachers.at[("bf16", "mean-teacher teacher"), "per seed (test)"] == \
        "73.10 / 74.20 / 75.30"
    assert teachers.at[("fp32", "mean-teacher-no-ema teacher"), "test_acc"] == "11.50 ± 1.00"


def test_rows_stand_for_a_summary_only_where_every_run_gave_its_recorded_accuracy():
    """A variant with one run off its record keeps its summary: none of its rows, raw or
    EMA, is trusted; the EMA row of a run goes with its raw one."""
    recorded = pd.DataFrame([{"precision": "fp32", "variant": v, "seed": seed,
                              "test_acc": base + seed} for v, base in (("kd", 79.0), ("ce", 75.0))
                             for seed in range(3)])
    raw = recorded.assign(weights="raw",
                          checkpoint=recorded["variant"] + recorded["seed"].astype(str))
    raw.loc[(raw["variant"] == "ce") & (raw["seed"] == 2), "test_acc"] = 77.01
    ema = raw.assign(weights="ema", variant=raw["variant"] + " EMA",
                     test_acc=raw["test_acc"] - 0.1)
    kept = trusted_rows(recorded, pd.concat([raw, ema], ignore_index=True))
    assert sorted(kept["variant"].unique()) == ["kd", "kd EMA"]
    assert len(kept) == 6


def test_ema_gains_come_from_rows_where_every_seed_has_them(monkeypatch):
    rows = [{"precision": precision, "variant": variant, "seed": seed, "weights": weights,
             "test_acc": 79.0 + seed + (0.1 * seed if weights == "ema" else 0.0)}
            for precision in ("bf16", "fp32") for seed in range(3)
            for variant, weights in (("kd", "raw"), ("kd EMA", "ema"))]
    runs = pd.DataFrame([r for r in rows if r["weights"] == "raw"])
    again = pd.concat([pd.DataFrame(rows), ema_teachers([0.1, 0.2, 0.3])])
    title, table = tables(runs, again)[-1]
    assert title == "EMA against raw weights, fp32"
    table = table.set_index("comparison")
    assert table.at["kd EMA − kd", "runs"] == "3 pairs by seed"
    assert table.at["kd EMA − kd", "difference (points)"] == "+0.10"
    assert table.at["kd+ce EMA − kd+ce", "runs"].endswith("(from the differences' mean and std)")
    _, both = tables(runs, again)[-3]
    both = both.set_index("variant")
    assert both.at["kd EMA", "runs"] == "3 pairs by seed"
    assert both.at["kd+ce EMA", "runs"].endswith("(Welch, from mean ± std)")


def test_bf16_against_fp32_is_also_pooled_per_seed_over_every_variant():
    """Over every variant both precisions ran, each seed's mean, paired by seed: the
    precision's shift of a seed's runs, whatever it is, counts once per seed."""
    rows = [{"precision": precision, "variant": variant, "seed": seed,
             "test_acc": base + seed + (shift if precision == "bf16" else 0.0)}
            for variant, base in (("teacher", 88.0), ("kd", 79.0), ("ce", 75.5))
            for seed, shift in enumerate((0.2, -0.1, 0.05))
            for precision in ("fp32", "bf16")]
    rows.append({"precision": "bf16", "variant": "kd", "seed": 3, "test_acc": 90.0})  # unpaired
    title, table = tables(pd.DataFrame(rows), ema_teachers([0.1, 0.2, 0.3]))[-2]
    assert title == "bf16 against fp32, every variant pooled per seed"
    row = table.iloc[0]
    assert row["pooled"] == "3 variants, 9 runs a side, each seed's mean"
    assert row["bf16 − fp32 (points)"] == "+0.05"
    shifts = pd.Series([0.2, -0.1, 0.05])
    half = stats.t.ppf(0.975, 2) * shifts.std() / 3 ** 0.5
    assert row["95% CI"] == f"[{0.05 - half:+.2f}, {0.05 + half:+.2f}]"


def test_the_five_seed_mean_teacher_family_joins_seeds_3_and_4_to_their_precisions_runs():
    def rows(precision, seeds):
        return [{"precision": precision, "variant": variant, "seed": seed,
                 "test_acc": base + 0.1 * seed}
                for variant, base in (("mean-teacher", 73.0), ("mean-teacher-no-averaging", 71.0),
                                      ("mean-teacher-no-ema", 60.0), ("ce", 75.0), ("kd", 79.0))
                for seed in seeds]
    runs = pd.DataFrame(rows("bf16", [0, 1, 2]) + rows("fp32", [0, 1, 2]))
    seeds_34 = pd.DataFrame(rows("bf16", [3, 4]) + rows("fp32", [3, 4])).assign(
        weights="raw", model="student")
    seeds_34.loc[seeds_34["precision"] == "fp32", "test_acc"] -= 1  # told apart below
    teachers = seeds_34.assign(weights="ema", variant=seeds_34["variant"] + " teacher")
    tables = five_seed_tables(runs, pd.concat([seeds_34, teachers]))
    assert [title for title, _ in tables] == [
        "Mean-teacher, bf16, seeds 0-4: accuracy (%)", "Mean-teacher, bf16, seeds 0-4",
        "Mean-teacher, fp32, seeds 0-4: accuracy (%)", "Mean-teacher, fp32, seeds 0-4"]
    assert tables[2][1].set_index("variant").at["ce", "per seed (test)"] == \
        "75.00 / 75.10 / 75.20 / 74.30 / 74.40"
    (_, summary), (_, family) = tables[:2]
    assert set(summary["variant"]) == {"mean-teacher", "mean-teacher-no-averaging",
                                       "mean-teacher-no-ema", "ce"}  # kd is in no pair
    assert (summary["seeds"] == 5).all()
    assert summary.set_index("variant").at["ce", "per seed (test)"] == \
        "75.00 / 75.10 / 75.20 / 75.30 / 75.40"
    assert (family["runs"] == "5 pairs by seed").all()
    averaging = family.set_index("comparison").loc["mean-teacher − mean-teacher-no-averaging"]
    assert averaging["difference (points)"] == "+2.00"


def test_a_run_again_is_checked_run_by_run_and_gives_the_ten_seeds_validation():
    recorded = pd.DataFrame(
        [{"precision": p, "variant": v, "seed": seed, "test_acc": acc}
         for p in ("bf16", "fp32") for v, accs in (("kd+ce", (78.89, 79.24, 78.77)),
                                                   ("kd", (78.98, 79.19, 79.34)))
         for seed, acc in enumerate(accs)])
    again = recorded[recorded["precision"] == "bf16"].assign(
        weights="raw", val_acc=80.0)
    again.loc[(again["variant"] == "kd+ce") & (again["seed"] == 2), "test_acc"] = 78.70
    again["val_acc"] += again["seed"]
    ema = again.assign(weights="ema", variant=again["variant"] + " EMA", test_acc=10.0)
    (_, same), (_, ten) = rerun_tables(recorded, pd.concat([again, ema]))
    same = same.set_index("variant")
    assert same.loc["kd+ce", "test accuracy as recorded"] == "2 of 3"
    assert same.loc["kd+ce", "largest difference (points)"] == "0.07"
    assert same.loc["kd", "test accuracy as recorded"] == "3 of 3"
    assert same.loc["kd", "largest difference (points)"] == "0.00"
    ten = ten.set_index("variant")
    assert ten.loc["kd", "val_acc"] == "81.00 ± 1.00"
    assert ten.loc["kd+ce", "per seed (test)"] == "78.89 / 79.24 / 78.70"


def test_the_bf16_ema_means_verdicts_types_in_are_those_of_the_runs_again():
    """The bf16 side of three typed-in EMA summaries, against the rows of the same runs
    trained again (experiments/rerun722c855_bf16.csv, seeds 0-2)."""
    again = pd.read_csv(RERUN)
    again = again[(again["weights"] == "ema") & (again["seed"] < 3)]
    for variant in ("kd+ce EMA", "kd EMA", "ce EMA"):
        accs = again.loc[again["variant"] == variant, "test_acc"]
        assert len(accs) == 3
        assert (round(accs.mean(), 2), round(accs.std(), 2)) == EMA_SUMMARY[variant][0]


def test_the_mean_teacher_runs_again_give_every_recorded_number():
    """experiments/mt012_*.csv: each run's test accuracy as experiments/per_seed.csv records
    it, and the EMA teachers' mean ± std as the summary verdicts.py typed in before them
    (the table of commit df72e0c)."""
    again = pd.concat(map(pd.read_csv, MEAN_TEACHER_AGAIN), ignore_index=True)
    (_, same), (_, teachers) = again_tables("Mean-teacher runs", pd.read_csv(PER_SEED),
                                            again, EMA_TEACHERS)
    assert len(same) == 6 and (same["test accuracy as recorded"] == "3 of 3").all()
    assert dict(zip(zip(teachers["precision"], teachers["variant"]), teachers["test_acc"])) == {
        ("bf16", "mean-teacher teacher"): "73.03 ± 0.21",
        ("fp32", "mean-teacher teacher"): "73.06 ± 0.34",
        ("bf16", "mean-teacher-no-ema teacher"): "10.54 ± 0.39",
        ("fp32", "mean-teacher-no-ema teacher"): "10.54 ± 0.39"}


def test_the_fp32_runs_again_give_every_recorded_number():
    """experiments/fp32_again.csv: each run's test accuracy as per_seed.csv records it, and the
    fp32 EMA summaries and EMA − raw gains verdicts.py types in, from its rows."""
    again = pd.read_csv(FP32_AGAIN)
    (_, same), _ = again_tables("fp32", pd.read_csv(PER_SEED), again, [])
    assert len(same) == 6 and (same["test accuracy as recorded"] ==
                               same["seeds"].map("{0} of {0}".format)).all()
    by_variant = {v: rows.set_index("seed")["test_acc"] for v, rows in again.groupby("variant")}
    for variant in ("kd+ce EMA", "kd EMA", "ce EMA"):
        accs = by_variant[variant]
        assert (round(accs.mean(), 2), round(accs.std(), 2)) == EMA_SUMMARY[variant][1]
    for variant in ("kd+ce", "kd", "dkd", "dist", "ce"):
        gains = by_variant[f"{variant} EMA"] - by_variant[variant]
        assert (round(gains.mean(), 2) + 0.0, round(gains.std(), 2)) == EMA_GAINS[variant]


def test_the_teachers_run_again_give_every_recorded_number():
    """experiments/teachers12_*.csv with seed 0 of the earlier reruns (RERUN's bf16 teacher,
    FP32_AGAIN's): each teacher's test accuracy as per_seed.csv records it, and the teacher
    EMA's mean ± std per precision and fp32 EMA − raw gain that verdicts.py typed in."""
    again = pd.concat(map(pd.read_csv, [RERUN, FP32_AGAIN, *TEACHERS_AGAIN]), ignore_index=True)
    teachers = again[again["model"] == "teacher"]
    (_, same), _ = again_tables("Teachers", pd.read_csv(PER_SEED), teachers, ["teacher EMA"])
    assert len(same) == 2 and (same["test accuracy as recorded"] == "3 of 3").all()
    for index, (precision, rows) in enumerate(teachers.groupby("precision")):
        by_variant = {v: group.set_index("seed")["test_acc"]
                      for v, group in rows.groupby("variant")}
        ema = by_variant["teacher EMA"]
        assert list(ema.sort_index().index) == [0, 1, 2]
        assert (round(ema.mean(), 2), round(ema.std(), 2)) == EMA_SUMMARY["teacher EMA"][index]
        if precision == "fp32":
            gains = ema - by_variant["teacher"]
            assert (round(gains.mean(), 2) + 0.0, round(gains.std(), 2)) == EMA_GAINS["teacher"]


def test_the_timed_make_all_gives_every_recorded_number():
    """README's minutes come from experiments/make_all_73dfb69.csv; its runs are the recorded
    seed-0 pipeline's, to the hundredth, or its minutes would describe other runs."""
    [(_, table)] = pipeline_table(pd.read_csv(PER_SEED), pd.read_csv(MAKE_ALL))
    assert len(table) == 7 and (table["test accuracy as recorded"] == "1 of 1").all()
    assert table.set_index("variant").at["teacher", "minutes"] == 15.0


README_ROWS = {"teacher (7 conv)": "teacher", "student (2 conv), KD + CE": "kd+ce",
               "student, KD alone": "kd", "student, DKD": "dkd", "student, DIST": "dist",
               "student, KD + CE with logit standardization": "kd+ce+ls",
               "student trained alone": "ce", "mean-teacher student": "mean-teacher",
               "mean-teacher, teacher = the student": "mean-teacher-no-averaging",
               "mean-teacher, teacher frozen": "mean-teacher-no-ema"}


def test_readmes_first_table_is_the_one_verdicts_prints():
    """README's first table had no command printing its 3-seed rows (they were grouped by
    hand from per_seed.csv): each of its cells is verdicts.py's, and its seeds are those
    README's text gives."""
    seeds_34 = pd.concat([pd.read_csv(path) for path in SEEDS_34], ignore_index=True)
    [(_, printed)] = first_table(pd.read_csv(PER_SEED), seeds_34, pd.read_csv(H200_RUNS))
    printed = printed.set_index("variant")
    readme = (ROOT / "README.md").read_text()
    assert ("mean ± std over 3 seeds (KD + CE and KD alone in bf16: 10; the mean-teacher "
            "rows: 5") in " ".join(readme.split())
    lines = readme.split("| model | MACs / image |")[1].splitlines()[2:]
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in itertools.takewhile(
        lambda line: line.startswith("| "), lines)]
    assert len(rows) == len(README_ROWS)
    for label, _macs, bf16, fp32, gpu, *_ in rows:
        variant = next(v for k, v in README_ROWS.items() if label.startswith(k))
        seeds = 10 if variant in ("kd+ce", "kd") else 5 if "mean" in variant else 3
        assert f"{bf16.strip('*')} ({seeds})" == printed.at[variant, "bf16 (seeds)"], label
        assert f"{fp32} ({5 if 'mean' in variant else 3})" == \
            printed.at[variant, "fp32 (seeds)"], label
        assert gpu == printed.at[variant, "GPU, seed 0"], label


def test_a_summary_whose_differences_do_not_vary_gives_no_test_not_a_crash():
    """report.compare makes no test of differences that do not vary; from a summary the
    same case divided by zero."""
    result = paired_from_summary(0.3, 0.0)
    assert math.isnan(result["p"]) and math.isnan(result["tost"])
    assert result["no_test"] == "the runs' differences do not vary"


def test_verdicts_fails_in_one_line_not_a_traceback(tmp_path):
    """Its main ran outside cli.run_cli: a table missing (here every one, the script copied
    away from them) gave a traceback."""
    (tmp_path / "experiments").mkdir()
    for name in ("verdicts.py", "compare_results.py"):
        shutil.copy(ROOT / "experiments" / name, tmp_path / "experiments" / name)
    proc = subprocess.run([sys.executable, tmp_path / "experiments" / "verdicts.py"],
                          capture_output=True, text=True, env={**os.environ, "PYTHONPATH": ROOT})
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert "per_seed.csv" in proc.stderr
