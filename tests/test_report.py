"""report.py: verdicts computed from the numbers, and a report that says them."""
import math
import subprocess
import sys
import warnings

import pandas as pd
import pytest

# Skipped where scipy or statsmodels cannot be installed (the lent GPU machine, which runs
# the suite as is).
pytest.importorskip("scipy")
pytest.importorskip("statsmodels")

from scipy import stats  # noqa: E402
from statsmodels.stats.multitest import multipletests  # noqa: E402
from statsmodels.stats.weightstats import CompareMeans, DescrStatsW  # noqa: E402

from conftest import ROOT  # noqa: E402
from kd.cli import UserError  # noqa: E402
from kd.results import recipe_labels, run_variant  # noqa: E402
from report import (  # noqa: E402
    MARGIN,
    RESULTS_COLUMNS,
    compare,
    compare_runs,
    equivalence,
    family_table,
    format_p,
    holm,
    mcnemar,
    paired_accuracy_ci,
    per_variant,
    provenance,
    raw_vs_ema_pairs,
    read_results,
)

# Raw and EMA-like runs: the seeds lie far apart, the second is always a little higher.
LOW, HIGH = [70.0, 75.0, 80.0], [70.3, 75.2, 80.4]


def test_unpaired_runs_get_welchs_interval_and_p():
    a, b = [80.0, 80.2, 79.8], [75.0, 75.3, 74.9, 75.6]
    result = compare(a, b)
    assert result["diff"] == pytest.approx(80 - 300.8 / 4)
    welch = CompareMeans(DescrStatsW(a), DescrStatsW(b))
    assert (result["ci_low"], result["ci_high"]) == pytest.approx(
        welch.tconfint_diff(usevar="unequal"))
    assert result["p"] == pytest.approx(welch.ttest_ind(usevar="unequal")[1])
    assert math.isnan(compare([80], [70, 71])["p"])  # one run: no test


def test_paired_runs_get_the_interval_of_their_differences():
    result = compare(HIGH, LOW, paired=True)
    differences = DescrStatsW([h - lo for h, lo in zip(HIGH, LOW)])
    assert (result["ci_low"], result["ci_high"]) == pytest.approx(differences.tconfint_mean())
    assert result["p"] == pytest.approx(differences.ttest_mean()[1])


def test_runs_pair_by_seed_whatever_their_order_and_pairing_decides_the_verdict():
    high = pd.DataFrame({"seed": [2, 0, 1], "test_acc": [HIGH[2], HIGH[0], HIGH[1]],
                         "checkpoint": "h"})
    low = pd.DataFrame({"seed": [0, 1, 2, 3], "test_acc": LOW + [90.0], "checkpoint": "l"})
    paired = compare_runs(high, low, ["seed"])
    assert paired["runs"] == "3 pairs by seed (of 3 and 4 runs)"  # seed 3 has no partner
    assert paired["diff"] == pytest.approx(0.3)
    table = family_table([("ema", "raw", paired)], ["comparison", "difference"])
    assert table.at[0, "verdict"].startswith("ema above raw (adjusted p = ")
    # Unpaired (no seeds in common), the same numbers are lost between the seeds.
    welch = compare_runs(high.assign(seed=[5, 6, 7]), low.iloc[:3], ["seed"])
    assert welch["runs"] == "3 and 3, unpaired (Welch)"
    verdict = family_table([("ema", "raw", welch)], ["comparison", "difference"]).at[0, "verdict"]
    assert verdict.startswith("unresolved: 95% CI [-")
    # A seed run twice on one side (two machines' runs, say) shares its initialisation and
    # batches: not two replicates (Welch's test counted them so), but one, their mean
    twice = compare_runs(pd.concat([high, high.iloc[:1].assign(test_acc=HIGH[2] + 0.1)]),
                         low.iloc[:3], ["seed"])
    assert twice["runs"] == "3 pairs by seed (of 4 and 3 runs; runs of one seed averaged)"
    assert twice["diff"] == pytest.approx(0.3 + 0.05 / 3)
    unpaired = compare_runs(pd.concat([high, high.iloc[:1]]).assign(seed=[5, 6, 7, 5]),
                            low.iloc[:3], ["seed"])
    assert unpaired["runs"] == "4 and 3, unpaired (Welch; runs of one seed averaged)"
    assert unpaired["diff"] == welch["diff"]
    # averaged to one seed a side: no test, in words that count seeds, not runs
    one = compare_runs(pd.concat([high.iloc[:1], high.iloc[:1]]), low.iloc[:1].assign(seed=9),
                       ["seed"])
    verdict = family_table([("a", "b", one)], ["comparison", "difference"]).at[0, "verdict"]
    assert verdict == ("no test: 1 and 1 seeds (runs of one seed averaged), fewer than 2 on "
                       "one side")
    unseeded = compare_runs(high.assign(seed=float("nan")), low.iloc[:3], ["seed"])
    assert unseeded["runs"] == "3 and 3, unpaired (Welch)"  # no seed recorded: none twice


def test_differences_without_spread_get_no_test_not_a_certain_verdict():
    """Two seeds whose differences agree to the printed digits (76.12 - 75.73 and 76.39 -
    76.00) give t an infinite value and scipy a p of 0: that is not evidence, and the
    verdict must not call it a difference."""
    result = compare([76.12, 76.39], [75.73, 76.00], paired=True)
    assert result["diff"] == pytest.approx(0.39)
    assert math.isnan(result["p"]) and math.isnan(result["ci_low"])
    table = family_table([("a", "b", {**result, "runs": "2 pairs by seed"})],
                         ["comparison", "difference (points)"])
    assert table["verdict"].iloc[0] == "no test: the runs' differences do not vary"
    runs = [pd.DataFrame({"seed": [0, 1], "test_acc": accs})
            for accs in ([76.12, 76.39], [75.73, 76.00])]
    assert math.isnan(compare_runs(*runs, ["seed"])["tost"])  # nor an equivalence
    welch = compare([76.0, 76.0], [75.0, 75.0])
    assert math.isnan(welch["p"])
    with warnings.catch_warnings():  # a side without spread has variance 0, exactly
        warnings.simplefilter("error")
        assert not math.isnan(compare([76.0, 76.5], [75.0, 75.0])["p"])  # one side varies


def test_holm_agrees_with_statsmodels_and_leaves_missing_tests_out():
    pvalues = [0.026, 0.01, 0.04, 0.3, 0.0001]
    assert holm(pvalues) == pytest.approx(multipletests(pvalues, method="holm")[1].tolist())
    # "KD alone beats KD + CE": p = 0.026 alone, about 0.05 in a family of eight of which it
    # is the third smallest (by hand: 6 × 0.026 = 0.156; here two smaller p-values).
    adjusted = holm([math.nan, *pvalues])
    assert math.isnan(adjusted[0]) and adjusted[1:] == pytest.approx(holm(pvalues))


def test_equivalence_is_the_paired_tost():
    a, b = [79.0, 79.5, 78.6, 79.2], [78.75, 79.4, 78.3, 79.05]  # a ahead by 0.1-0.3
    for x, y in ((a, b), (b, a)):  # each margin binds in turn
        differences = [i - j for i, j in zip(x, y)]
        # TOST by hand: the larger p of the two one-sided t-tests against the margins
        by_hand = max(stats.ttest_1samp(differences, -MARGIN, alternative="greater").pvalue,
                      stats.ttest_1samp(differences, MARGIN, alternative="less").pvalue)
        assert equivalence(x, y, MARGIN) == pytest.approx(by_hand)
    assert equivalence(a, b, MARGIN) < 0.05 and equivalence(a, b, 0.2) > 0.05


def test_mcnemar_is_the_exact_binomial_test_on_the_discordant_images():
    a = [True] * 60 + [False] * 10 + [True] * 25 + [False] * 5
    b = [True] * 60 + [True] * 3 + [False] * 25 + [False] * 12  # 25 won by a, 3 by b
    assert mcnemar(a, b) == pytest.approx(stats.binomtest(3, 28, 0.5).pvalue)
    assert mcnemar(a, a) == 1.0


def test_the_paired_interval_is_of_the_first_models_accuracy_minus_the_seconds():
    """10,000 images: a alone gets 300 right, b alone 30, so a - b = +2.7 points; the Wald
    interval of a paired difference (Agresti 10.1) written out: diff ± z·sqrt((p10 + p01 -
    diff²) / n). Guards against diff = only_b - only_a (the interval of b - a)."""
    a = [1] * 7500 + [1] * 300 + [0] * 30 + [0] * 2170
    b = [1] * 7500 + [0] * 300 + [1] * 30 + [0] * 2170
    diff = (300 - 30) / 10_000
    half = stats.norm.ppf(0.975) * math.sqrt((300 / 10_000 + 30 / 10_000 - diff ** 2) / 10_000)
    low, high = paired_accuracy_ci(a, b)
    assert (low, high) == pytest.approx((100 * (diff - half), 100 * (diff + half)))
    assert 0 < low < 2.7 < high  # a above b: the interval lies above zero
    assert paired_accuracy_ci(b, a) == pytest.approx((-high, -low))


def test_verdicts_need_adjusted_p_and_say_equivalence_only_from_tost():
    def table(*results):
        tests = [(f"a{i}", "b", {"diff": r[0], "ci_low": r[0] - 1, "ci_high": r[0] + 1,
                                 "p": r[1], "tost": r[2], "runs": ""})
                 for i, r in enumerate(results)]
        return family_table(tests, ["comparison", "difference"])["verdict"].tolist()
    verdicts = table((-0.8, 0.001, math.nan), (0.3, 0.03, 0.01), (0.1, 0.5, 0.2))
    assert verdicts[0] == "a0 below b (adjusted p = 0.003)"
    # p = 0.03 alone, 0.06 after Holm over three: not a difference; TOST 0.01 -> 0.02
    assert verdicts[1] == "equivalent within ±0.5 points (TOST, adjusted p = 0.02)"
    assert verdicts[2] == "unresolved: 95% CI [-0.90, +1.10]"


def results_csv(folder, seeds):
    rows = []
    accuracies = [(88.1, 78.6, 75.9, 0.1), (87.9, 78.9, 75.6, 0.15), (88.3, 78.4, 76.1, 0.05)]
    for seed in seeds:
        teacher, kdce, ce, gain = accuracies[seed]
        for variant, acc, model in (("teacher", teacher, "teacher"), ("kd+ce", kdce, "student"),
                                    ("ce", ce, "student"), ("ce EMA", ce + gain, "student")):
            checkpoint = f"{variant.split()[0]}_seed{seed}.pt"
            rows.append({"checkpoint": checkpoint, "weights": "ema" * variant.endswith("EMA")
                         or "raw", "model": model, "variant": variant, "seed": seed,
                         "test_acc": acc, "macs": 3.1e6, "train_minutes": 2.5})
    pd.DataFrame(rows).to_csv(folder / "results.csv", index=False)
    return rows


def report_line(report, start):
    return next(line for line in report.splitlines() if line.startswith(start))


def test_the_report_says_what_the_results_show(tmp_path):
    results_csv(tmp_path, [0, 1, 2])
    (tmp_path / "samples.png").write_bytes(b"")
    subprocess.run([sys.executable, "report.py", "--plots-dir", tmp_path], cwd=ROOT, check=True)
    report = (tmp_path / "report.md").read_text()
    assert "![The data](samples.png)" in report
    assert "binomial standard error of 0.32-0.43 points" in report  # 88.3% and 75.6%
    teacher = report_line(report, "| teacher ")
    assert [cell.strip() for cell in teacher.split("|")[1:4]] == ["teacher", "3", "88.10 ± 0.20"]
    line = report_line(report, "| kd+ce − ce")
    assert "+2.77" in line and "3 pairs by seed" in line and "kd+ce above ce" in line
    line = report_line(report, "| ce EMA − ce")
    assert "+0.10" in line and "3 pairs by checkpoint" in line
    assert "equivalent within ±0.5 points" in line  # paired: the gaps agree to 0.05
    assert "Mean-teacher" not in report  # no such runs here: no empty section
    assert "Teachers: not recorded in this results.csv" in report  # from an older evaluate.py


def test_training_length_gets_a_table_and_a_figure_per_method_trained_at_several_lengths(
        tmp_path):
    """ce and kd at 12 and 36 epochs (seeds 0 and 1), kd+ce at 12 only: the section lists ce
    and kd by length with clean training, validation and test accuracy over seeds and the
    median minutes; kd+ce (one length) and the EMA's rows stay out of it."""
    test_acc = {("ce", 12): (75.9, 75.6), ("ce", 36): (80.0, 79.6),
                ("kd", 12): (78.7, 79.7), ("kd", 36): (82.2, 82.6), ("kd+ce", 12): (78.9, 79.1)}
    rows = []
    for (method, epochs), accuracies in test_acc.items():
        for seed, acc in enumerate(accuracies):
            label = method if method == "kd+ce" else f"{method} (epochs={epochs})"
            row = {"checkpoint": f"{method}_e{epochs}_seed{seed}.pt", "weights": "raw",
                   "model": "student", "variant": label, "seed": seed, "epochs": epochs,
                   "train_acc": acc + (5 if epochs == 36 else 1), "val_acc": acc + 1,
                   "test_acc": acc, "macs": 3.1e6,
                   "train_minutes": 7.0 + seed if epochs == 36 else 2.5}
            rows.append(row)
            if method == "ce":  # its EMA: the run's second model, no length of its own
                rows.append({**row, "weights": "ema", "test_acc": 90.0,
                             "variant": f"ce EMA (epochs={epochs})"})
    pd.DataFrame(rows).to_csv(tmp_path / "results.csv", index=False)
    subprocess.run([sys.executable, "report.py", "--plots-dir", tmp_path], cwd=ROOT, check=True)
    report = (tmp_path / "report.md").read_text()
    section = report.split("## Training length")[1].split("\n## ")[0]
    assert "![Training length](length.png)" in section
    assert (tmp_path / "length.png").stat().st_size > 0
    table = [[cell.strip() for cell in line.split("|")[1:-1]]
             for line in section.splitlines() if line.startswith("| ")][1:]
    # method, epochs, seeds, clean training, validation, test (mean ± sample std), minutes
    assert table == [
        ["ce", "12", "2", "76.75 ± 0.21", "76.75 ± 0.21", "75.75 ± 0.21", "2.5"],
        ["ce", "36", "2", "84.80 ± 0.28", "80.80 ± 0.28", "79.80 ± 0.28", "7.5"],
        ["kd", "12", "2", "80.20 ± 0.71", "80.20 ± 0.71", "79.20 ± 0.71", "2.5"],
        ["kd", "36", "2", "87.40 ± 0.28", "83.40 ± 0.28", "82.40 ± 0.28", "7.5"]]


def test_the_report_says_whose_teacher_each_variants_students_learned_from(tmp_path):
    rows = pd.DataFrame(results_csv(tmp_path, [0, 1, 2]))
    kdce = rows["variant"] == "kd+ce"  # each seed its own seed's teacher
    rows.loc[kdce, "teacher_seed"] = rows.loc[kdce, "seed"]
    rows.loc[kdce, "teacher_sha256"] = [f"{seed}" * 12 for seed in rows.loc[kdce, "seed"]]
    kd = rows[kdce].assign(variant="kd", teacher_seed=0, teacher_sha256="0" * 12,
                           checkpoint=rows[kdce]["checkpoint"].str.replace("kd+ce", "kd"))
    shifted = (rows.loc[kdce, "seed"] + 1) % 3  # each from another seed's teacher
    dkd = rows[kdce].assign(variant="dkd", teacher_seed=shifted.values,
                            teacher_sha256=[f"{seed}" * 12 for seed in shifted],
                            checkpoint=rows[kdce]["checkpoint"].str.replace("kd+ce", "dkd"))
    pd.concat([rows, kd, dkd]).to_csv(tmp_path / "results.csv", index=False)
    subprocess.run([sys.executable, "report.py", "--plots-dir", tmp_path], cwd=ROOT, check=True)
    report = (tmp_path / "report.md").read_text()
    assert ("Teachers: kd+ce: each run its own seed's teacher, ± over teacher and student "
            "seeds; kd: one teacher (seed 0), ± over student seeds only; dkd: 3 teachers, not "
            "paired by seed, ± over both.") in report
    # ce has no teacher: it still pairs with kd+ce by seed
    assert "3 pairs by seed" in report_line(report, "| kd+ce − ce")


def test_runs_without_a_partner_are_counted_in_the_runs_column():
    """Ten seeds against three pair on three: the other seven were left out unsaid."""
    ten, three = (pd.DataFrame({"seed": range(n), "test_acc": [76.0 + s * s for s in range(n)]})
                  for n in (10, 3))
    assert compare_runs(ten, three, ["seed"])["runs"] == "3 pairs by seed (of 10 and 3 runs)"
    assert compare_runs(ten[:3], three, ["seed"])["runs"] == "3 pairs by seed"


def test_runs_identical_in_every_pair_say_so():
    """The same weights in both (a frozen teacher in bf16 and fp32): "the differences do
    not vary" was true, and said less than that there is no difference at all."""
    result = compare([10.95, 10.48, 10.18], [10.95, 10.48, 10.18], paired=True)
    assert result["no_test"] == "identical in every pair"


def test_one_run_against_several_is_no_test_in_its_own_words():
    """1 run against 3 was called "one run a side and no per-image predictions", which
    is neither: McNemar needs one run a side, Welch two."""
    one, three = (pd.DataFrame({"seed": seeds, "test_acc": [76.0 + s for s in seeds],
                                "checkpoint": [f"{s}.pt" for s in seeds]})
                  for seeds in ([5], [0, 1, 2]))
    result = compare_runs(one, three, ["seed"])
    table = family_table([("a", "b", result)], ["comparison", "difference (points)"])
    assert table["verdict"].iloc[0] == "no test: 1 and 3 runs, fewer than 2 on one side"
    assert result["runs"] == "1 and 3, unpaired"  # no Welch test was made


def test_one_seed_is_compared_image_by_image_when_the_predictions_are_there(tmp_path):
    rows = results_csv(tmp_path, [0])
    subprocess.run([sys.executable, "report.py", "--plots-dir", tmp_path], cwd=ROOT, check=True)
    line = report_line((tmp_path / "report.md").read_text(), "| kd+ce − ce")
    assert "no per-image predictions: no test" in line
    # 10,000 images: kd+ce gets 300 right that ce misses, ce 30 that kd+ce misses
    correct = {"kd+ce": [1] * 7500 + [1] * 300 + [0] * 30 + [0] * 2170,
               "ce": [1] * 7500 + [0] * 300 + [1] * 30 + [0] * 2170}
    columns = {f"{row['checkpoint']} ({row['weights']})": correct.get(row["variant"], [1] * 10_000)
               for row in rows}
    pd.DataFrame(columns).to_csv(tmp_path / "predictions.csv", index=False)
    subprocess.run([sys.executable, "report.py", "--plots-dir", tmp_path], cwd=ROOT, check=True)
    line = report_line((tmp_path / "report.md").read_text(), "| kd+ce − ce")
    assert "1 and 1: McNemar on 10,000 images" in line
    assert f"| {mcnemar(correct['kd+ce'], correct['ce']):.2g} |" in line
    # two models, one seed each: a verdict on these models, not on their recipes
    verdict = line.split("|")[-2].strip()
    assert verdict.startswith("this kd+ce model above this ce model on these test images")
    assert verdict.endswith("one seed each: the recipes are not compared")


HEADER = ",".join(RESULTS_COLUMNS) + "\n"


@pytest.mark.parametrize("content, says", [
    ("step,loss\n1,0.5\n", "no column checkpoint, model, variant, seed, test_acc"),  # not ours
    ("", "No columns to parse"),
    (f"{HEADER}a.pt,student,kd,0,78.81,3.1e6,1.1\nb.pt,stu", "in the middle of a line"),
    (f"{HEADER}a.pt,student,kd,0,78.81,3.1e6,1.1\nb.pt,student,kd,1,78.5\n", "line 3 is inc"),
    (f"{HEADER}a.pt,student,kd,0,78.81,3.1e6,1.1\nb.pt,student,kd,1,78.x,3.1e6,1.1\n", "line 3"),
])
def test_a_results_file_it_cannot_use_is_refused(tmp_path, content, says):
    (tmp_path / "results.csv").write_text(content)
    with pytest.raises(UserError, match=says) as refused:
        read_results(tmp_path / "results.csv")
    assert str(tmp_path / "results.csv") in str(refused.value)


@pytest.mark.parametrize("script", ["report.py", "experiments/compare_results.py"])
def test_the_scripts_refuse_it_in_one_line(tmp_path, script):
    (tmp_path / "results.csv").write_text("step,loss\n1,0.5\n")
    args = [tmp_path / "results.csv"] * 2 if "compare" in script else ["--plots-dir", tmp_path]
    proc = subprocess.run([sys.executable, script, *args], cwd=ROOT, capture_output=True,
                          text=True)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    assert proc.stderr.startswith(f"error: {tmp_path / 'results.csv'} is not a results.csv")


def test_raw_against_ema_pairs_each_runs_two_models_and_leaves_out_mean_teacher():
    # recipe_labels' labels: settings after the " EMA", and told apart per label (the EMA of
    # kd's 0.999 run needs none, as the 0-decay run has no EMA)
    configs = [{"loss": "kd", "ema_decay": 0.999, "epochs": 12},
               {"loss": "kd", "ema_decay": 0.999, "epochs": 36},
               {"loss": "kd", "ema_decay": 0.0, "epochs": 12}]
    runs = [(run_variant(c), c) for c in configs] + [(run_variant(c, ema=True), c)
                                                     for c in configs[:2]]
    labels = recipe_labels(runs)
    results = pd.DataFrame({"checkpoint": ["a.pt", "b.pt", "c.pt", "a.pt", "b.pt", "m.pt",
                                           "m.pt"],
                            "variant": [*labels, "mean-teacher", "mean-teacher teacher"]})
    assert raw_vs_ema_pairs(results) == [(labels[3], labels[0]), (labels[4], labels[1])]
    assert labels[3] == "kd EMA (epochs=12)" and labels[0] == "kd (ema_decay=0.999, epochs=12)"


@pytest.mark.parametrize("seeds", [[0], [0, 1, 2]])
def test_the_report_shows_every_teacher_seeds_curves_where_there_are_several(tmp_path, seeds):
    """Its teacher figure was seed 0's curves alone, with three teachers in its table."""
    results_csv(tmp_path, seeds)
    for figure in ("teacher_curves.png", "teachers_compare.png"):
        (tmp_path / figure).write_bytes(b"")
    subprocess.run([sys.executable, "report.py", "--plots-dir", tmp_path], cwd=ROOT, check=True)
    report = (tmp_path / "report.md").read_text()
    shown = "teachers_compare.png" if len(seeds) > 1 else "teacher_curves.png"
    assert f"![The teacher]({shown})" in report and report.count("![The teacher]") == 1
    if len(seeds) > 1:
        assert "teacher runs in `./`" in report  # results.csv's checkpoints: no folder
        results = pd.read_csv(tmp_path / "results.csv")
        moved = results["checkpoint"] == "teacher_seed1.pt"
        results.loc[moved, "checkpoint"] = "elsewhere/teacher_seed1.pt"
        results.to_csv(tmp_path / "results.csv", index=False)
        subprocess.run([sys.executable, "report.py", "--plots-dir", tmp_path], cwd=ROOT,
                       check=True)  # the figure is of one folder's teachers: not shown
        assert "![The teacher](teacher_curves.png)" in (tmp_path / "report.md").read_text()
    (tmp_path / "teachers_compare.png").unlink()  # runs from before the figure existed
    subprocess.run([sys.executable, "report.py", "--plots-dir", tmp_path], cwd=ROOT, check=True)
    assert "![The teacher](teacher_curves.png)" in (tmp_path / "report.md").read_text()


def test_a_report_of_teachers_alone_is_written(tmp_path):
    rows = [{**row, "epochs": 30} for row in results_csv(tmp_path, [0, 1, 2])
            if row["model"] == "teacher"]
    pd.DataFrame(rows).to_csv(tmp_path / "results.csv", index=False)
    proc = subprocess.run([sys.executable, "report.py", "--plots-dir", tmp_path], cwd=ROOT,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "88.10 ± 0.20" in report_line((tmp_path / "report.md").read_text(), "| teacher ")


@pytest.mark.parametrize("p, shown", [(0.0496, "0.0496"), (0.04999, "0.04999"), (0.0504, "0.05"),
                                      (0.012345, "0.012"), (0.29, "0.29"), (1.0, "1"),
                                      (3e-7, "3e-07")])
def test_a_p_value_is_never_rounded_across_the_level(p, shown):
    assert format_p(p) == shown


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


def test_two_sets_of_runs_compared_variant_by_variant_and_seed_by_seed(tmp_path):
    def results(teacher, student, extra):
        rows = [{"variant": "teacher", "seed": s, "test_acc": acc} for s, acc in enumerate(teacher)]
        rows += [{"variant": "kd", "seed": s, "test_acc": acc} for s, acc in enumerate(student)]
        rows += [{"variant": extra, "seed": 0, "test_acc": 70.0}]
        frame = pd.DataFrame(rows)
        return frame.assign(checkpoint=[f"c/{v}_seed{s}.pt"
                                        for v, s in zip(frame["variant"], frame["seed"])])
    # the frozen-teacher runs of docs/results.md: seeds far apart, fp32 and bf16 close per seed
    a = results([67.45, 58.94, 57.13], [79.1, 79.2, 79.0], "dkd")
    b = results([67.59, 58.80, 56.95], [75.1, 75.0, 75.2], "dist")  # the students fell 4 points
    for name, frame in (("a", a), ("b", b)):
        frame.to_csv(tmp_path / f"{name}.csv", index=False)
    proc = subprocess.run([sys.executable, "experiments/compare_results.py", tmp_path / "a.csv",
                           tmp_path / "b.csv", "--names", "fp32", "bf16"], cwd=ROOT,
                          capture_output=True, text=True, check=True)
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
            for line in proc.stdout.split("\n\n")[0].splitlines()[2:]}
    assert list(rows) == ["teacher", "kd"]  # only the variants both hold
    assert rows["teacher"][0] == "61.17 ± 5.51 (3)" and rows["teacher"][2] == "3 pairs by seed"
    assert rows["teacher"][3] == "-0.06"
    assert rows["teacher"][-1].startswith("equivalent within ±0.5 points")
    assert rows["kd"][3] == "-4.00" and rows["kd"][-1].startswith("bf16 below fp32")


def compare_two(tmp_path, a, b):
    for name, frame in (("a", a), ("b", b)):
        frame.to_csv(tmp_path / f"{name}.csv", index=False)
    return subprocess.run([sys.executable, "experiments/compare_results.py", tmp_path / "a.csv",
                           tmp_path / "b.csv", "--names", "gpu", "cpu"], cwd=ROOT,
                          capture_output=True, text=True)


def test_two_machines_runs_are_matched_by_name_and_pooled_per_seed(tmp_path):
    """Two evaluations label one recipe two ways (evaluate.py names only the settings that
    tell its runs apart): the runs are matched by name. The pooled row averages each seed's
    variants first (a seed's runs share a teacher) and pairs those means by seed."""
    offsets = {"teacher": 0.0, "student_kd": -0.2, "student_crd_w0.2": -0.4}
    def runs(labels, shift):
        return pd.DataFrame([{"checkpoint": f"checkpoints/{run}_seed{seed}.pt", "weights": "raw",
                              "variant": label, "seed": seed,
                              "test_acc": 80 + seed + shift[seed] + offsets[run]}
                             for run, label in labels.items() for seed in (0, 1, 2)])
    gpu = runs({"teacher": "teacher", "student_kd": "kd (epochs=12)",
                "student_crd_w0.2": "crd (crd_weight=0.2, epochs=12)"}, [0.0, 0.0, 0.0])
    cpu = runs({"teacher": "teacher", "student_kd": "kd", "student_crd_w0.2": "crd"},
               [0.1, -0.1, 0.3])
    cpu = pd.concat([cpu, cpu.iloc[:2]])  # evaluated twice (two tables of one file): kept once
    # a variant both ran on seed 0 only: left out of the pooled means, which would otherwise
    # average seed 0 over other variants than seeds 1 and 2
    gpu, cpu = (pd.concat([frame, pd.DataFrame([{
        "checkpoint": "checkpoints/student_at_seed0.pt", "weights": "raw", "variant": "at",
        "seed": 0, "test_acc": acc}])]) for frame, acc in ((gpu, 70.0), (cpu, 75.0)))
    proc = compare_two(tmp_path, gpu, cpu)
    assert proc.returncode == 0, proc.stderr
    per_variant, pool = proc.stdout.split("\n\n")
    variants = [line.split("|")[1].strip() for line in per_variant.splitlines()[2:]]
    assert set(variants) == {"teacher", "kd (epochs=12)", "crd (crd_weight=0.2, epochs=12)",
                             "at"}
    cells = [cell.strip() for cell in pool.splitlines()[2].split("|")[1:-1]]
    assert cells[:3] == ["3 variants, 9 runs a side, each seed's mean", "3 pairs by seed",
                         "+0.10"]
    diffs = [0.1, -0.1, 0.3]  # the cpu's shift per seed, the same for each of its variants
    half = stats.t.ppf(0.975, 2) * stats.tstd(diffs) / math.sqrt(3)
    assert cells[3] == f"[{0.1 - half:+.2f}, {0.1 + half:+.2f}]"


def test_variants_only_one_table_holds_are_named_not_dropped_silently(tmp_path):
    a = pd.DataFrame({"checkpoint": [f"c/{v}_seed{s}.pt" for v in ("kd", "at") for s in (0, 1)],
                      "variant": ["kd", "kd", "at", "at"], "seed": [0, 1, 0, 1],
                      "test_acc": [79.0, 79.4, 78.0, 78.2]})
    b = a.assign(variant=["kd", "kd", "at (at_weight=100)", "at (at_weight=100)"],
                 checkpoint=[f"d/{v}_seed{s}.pt" for v in ("kd", "at100") for s in (0, 1)])
    proc = compare_two(tmp_path, a, b)
    assert proc.returncode == 0, proc.stderr
    assert "note: not compared, in one table only: at (gpu); at (at_weight=100) (cpu)\n" \
        in proc.stderr


def test_pooling_leaves_out_a_variants_extra_seed_not_every_other_variant(tmp_path):
    """Pooled over the seeds every variant holds: one variant with a seed more in both
    tables pooled over that variant alone ("1 variants, 4 runs a side") and dropped the
    other three without a word."""
    def runs(shift):
        rows = [{"checkpoint": f"c/{v}_seed{s}.pt", "variant": v, "seed": s,
                 "test_acc": 80 + s + shift[s] + i} for i, v in enumerate(["ce", "kd", "dkd"])
                for s in (0, 1, 2)]
        rows += [{"checkpoint": "c/kd_seed3.pt", "variant": "kd", "seed": 3, "test_acc": 60.0},
                 {"checkpoint": "c/at_seed0.pt", "variant": "at", "seed": 0, "test_acc": 70.0}]
        return pd.DataFrame(rows)
    proc = compare_two(tmp_path, runs([0.0] * 3), runs([0.1, -0.1, 0.3]))
    assert proc.returncode == 0, proc.stderr
    pool = proc.stdout.split("\n\n")[1]
    cells = [cell.strip() for cell in pool.splitlines()[2].split("|")[1:-1]]
    assert cells[:3] == ["3 variants, 9 runs a side, each seed's mean", "3 pairs by seed",
                         "+0.10"]
    assert "note: pooled over seeds 0, 1, 2; left out: kd seed 3, at (1 seed in common)\n" \
        in proc.stderr


def test_two_runs_of_one_seed_under_one_label_are_refused_in_one_line(tmp_path):
    a = pd.DataFrame({"checkpoint": ["c/kd_seed0.pt", "c/kd_seed1.pt"], "variant": ["kd"] * 2,
                      "seed": [0, 1], "test_acc": [79.0, 79.1]})
    b = pd.concat([a, a.assign(checkpoint=["c/kd_T1_seed0.pt", "c/kd_T1_seed1.pt"],
                               test_acc=[70.0, 70.1])])
    proc = compare_two(tmp_path, a, b)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    assert "variant kd has two runs of seed 0 (kd_T1_seed0, kd_seed0)" in proc.stderr


def test_minutes_per_run_are_the_median_so_one_run_on_busy_cores_does_not_move_them():
    results = pd.DataFrame({"variant": ["teacher"] * 3, "seed": [0, 1, 2],
                            "test_acc": [87.9, 87.8, 88.2], "macs": [36e6] * 3,
                            "train_minutes": [16.1, 22.1, 15.4]})
    assert per_variant(results)["minutes per run (median)"].tolist() == [16.1]


def test_a_comparison_it_cannot_make_is_named_not_dropped(tmp_path):
    """The student alone trained at another length than the others is labelled
    "ce (epochs=36)", so no run is `ce`: the comparisons against it that have runs of
    their first variant say so (with the label ce's runs do have) instead of vanishing;
    those with no runs on either side (dkd − kd here) stay unsaid."""
    rows = []
    for seed in (0, 1):
        for variant, model, acc in (("teacher", "teacher", 88.0), ("kd+ce", "student", 79.0),
                                    ("ce (epochs=36)", "student", 80.0),
                                    ("mean-teacher", "student", 74.0)):
            rows.append({"checkpoint": f"{variant.split()[0]}_seed{seed}.pt", "weights": "raw",
                         "model": model, "variant": variant, "seed": seed,
                         "test_acc": acc + seed, "macs": 3.1e6, "train_minutes": 2.5})
    pd.DataFrame(rows).to_csv(tmp_path / "results.csv", index=False)
    subprocess.run([sys.executable, "report.py", "--plots-dir", tmp_path], cwd=ROOT, check=True)
    report = (tmp_path / "report.md").read_text()
    students = report.split("## The students")[1].split("\n## ")[0]
    mean_teacher = report.split("## Mean-teacher")[1].split("\n## ")[0]
    for section in (students, mean_teacher):
        line = next(line for line in section.splitlines() if "Not compared" in line)
        assert "no run is labelled" in line and "`ce` (its runs here: `ce (epochs=36)`)" in line
    assert "kd+ce − ce" in students and "mean-teacher − ce" not in students
    assert "mean-teacher − ce" in mean_teacher
    assert "mean-teacher − mean-teacher-no-ema" in mean_teacher  # no runs of the second
    assert "dkd" not in report and "kd+ce − kd" not in report


def students_section(tmp_path, variants):
    """report.py's students section over two seeds of the teacher and of `variants`
    ((label, model, accuracy) each)."""
    rows = [{"checkpoint": f"{variant.split()[0]}_seed{seed}.pt", "weights": "raw",
             "model": model, "variant": variant, "seed": seed, "test_acc": acc + seed,
             "macs": 3.1e6, "train_minutes": 2.5}
            for seed in (0, 1)
            for variant, model, acc in (("teacher", "teacher", 88.0), *variants)]
    pd.DataFrame(rows).to_csv(tmp_path / "results.csv", index=False)
    subprocess.run([sys.executable, "report.py", "--plots-dir", tmp_path], cwd=ROOT, check=True)
    return (tmp_path / "report.md").read_text().split("## The students")[1].split("\n## ")[0]


def test_a_comparison_whose_first_variant_has_other_labels_is_named_too(tmp_path):
    """The first variant of a comparison labelled apart ("kd+ce (temperature=2.0)": its runs
    differ from the others') is named like a second one, not dropped."""
    students = students_section(tmp_path, [("ce", "student", 76.0),
                                           ("kd+ce (temperature=2.0)", "student", 79.0)])
    assert ("no run is labelled `kd+ce` (its runs here: `kd+ce (temperature=2.0)`): "
            "kd+ce − ce") in students


def test_a_comparison_whose_two_variants_both_have_other_labels_is_named(tmp_path):
    """Both variants labelled apart ("kd+ce (temperature=2.0)" and "ce (epochs=36)"): the
    comparison is named with both labels' runs, not dropped unseen."""
    students = students_section(tmp_path, [("ce (epochs=36)", "student", 76.0),
                                           ("kd+ce (temperature=2.0)", "student", 79.0)])
    assert ("no run is labelled `kd+ce` (its runs here: `kd+ce (temperature=2.0)`) or `ce` "
            "(its runs here: `ce (epochs=36)`): kd+ce − ce") in students


def test_each_absent_label_is_named_once(tmp_path):
    """Comparisons that lack one label and comparisons that lack it and another are said in
    one line, each absent label named once with the labels its variant's runs do have."""
    students = students_section(tmp_path, [("ce (epochs=36)", "student", 76.0),
                                           ("kd", "student", 79.5),
                                           ("kd+ce (temperature=2.0)", "student", 79.0)])
    lines = [line for line in students.splitlines() if "Not compared" in line]
    assert lines == ["Not compared, as no run is labelled `kd+ce` (its runs here: "
                     "`kd+ce (temperature=2.0)`) or `ce` (its runs here: `ce (epochs=36)`): "
                     "kd+ce − ce; kd − ce; kd − kd+ce."]


def test_a_family_table_shows_the_equivalence_tests_p_values_raw_and_adjusted():
    """The docs quote TOST p-values before Holm ("0.035, 0.038 and 0.019") that no
    command printed: only a significant adjusted one appeared, inside the verdict."""
    a = pd.DataFrame({"seed": [0, 1, 2], "test_acc": [80.0, 81.0, 82.0]})
    close = a.assign(test_acc=[80.1, 80.8, 82.05])
    far = a.assign(test_acc=[78.0, 79.5, 79.0])
    tests = [("a", "close", compare_runs(a, close, ["seed"])),
             ("a", "far", compare_runs(a, far, ["seed"]))]
    table = family_table(tests, ["comparison", "difference"])
    raw = [equivalence(a["test_acc"], other["test_acc"]) for other in (close, far)]
    assert table[f"TOST p (±{MARGIN:g})"].tolist() == [format_p(p) for p in raw]
    assert table["TOST adjusted p (Holm)"].tolist() == [format_p(p) for p in holm(raw)]
    assert list(table.columns)[-3:] == [f"TOST p (±{MARGIN:g})", "TOST adjusted p (Holm)",
                                        "verdict"]


def test_runs_without_a_seed_are_compared_unpaired_not_refused_as_one_seed(tmp_path):
    """Two runs with no seed recorded were refused as "two runs of seed nan (); give a
    table with one of them": pandas' duplicated() matches NaN with NaN, its == does not."""
    a = pd.DataFrame({"checkpoint": ["c/x.pt", "c/y.pt"], "variant": ["kd"] * 2,
                      "seed": [None, None], "test_acc": [79.0, 79.4]})
    b = a.assign(test_acc=[78.0, 78.6])
    proc = compare_two(tmp_path, a, b)
    assert proc.returncode == 0, proc.stderr
    assert "unpaired (Welch)" in proc.stdout


def test_variants_without_two_seeds_in_common_are_named_as_compared_unpaired(tmp_path):
    """compare_results pairs by seed: where two tables share fewer than two seeds of a
    variant, the test is Welch's, which its runs column said and nothing else did."""
    a = pd.DataFrame({"checkpoint": [f"c/kd_seed{s}.pt" for s in (0, 1, 2)],
                      "variant": ["kd"] * 3, "seed": [0, 1, 2], "test_acc": [79.0, 79.4, 79.1]})
    b = a.assign(checkpoint=[f"c/kd_seed{s}.pt" for s in (2, 3, 4)], seed=[2, 3, 4])
    proc = compare_two(tmp_path, a, b)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ("note: kd: 1 seed in common (2), fewer than 2: compared unpaired "
                           "(Welch's test), not by seed\n")
    assert compare_two(tmp_path, a, a).stderr == ""


def test_unpaired_runs_without_spread_are_named_as_untested_not_as_welchs(tmp_path):
    """Where neither side's runs vary, compare() makes no test: the runs column said
    "(Welch)" and compare_results' note "compared unpaired (Welch's test)" all the same."""
    a = pd.DataFrame({"checkpoint": [f"c/kd_seed{s}.pt" for s in (0, 1)],
                      "variant": ["kd"] * 2, "seed": [0, 1], "test_acc": [79.0, 79.0]})
    b = a.assign(checkpoint=[f"c/kd_seed{s}.pt" for s in (2, 3)], seed=[2, 3],
                 test_acc=[78.0, 78.0])
    result = compare_runs(b, a, ["seed"])
    assert result["test"] is None and math.isnan(result["p"])
    assert result["runs"] == "2 and 2, unpaired"
    assert result["no_test"] == "neither side's runs vary"
    proc = compare_two(tmp_path, a, b)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ("note: kd: 0 seeds in common, fewer than 2: compared unpaired, "
                           "not by seed (no test: neither side's runs vary)\n")
