"""The verdicts README and docs/results.md state, recomputed with report.py's rules from the
numbers docs/results.md records (the runs are not in the repository): the per-seed test
accuracies of experiments/per_seed.csv, paired by seed; for EMA weights, of which only a
summary was kept (mean ± std, the raw-against-EMA differences' mean and std), the rows of
the same runs trained again where every run gave its recorded accuracy, else tests from
that summary, as each table says.

    python experiments/verdicts.py

Each table is one family (Holm), as in report.py.
"""
import math
import sys
from pathlib import Path

import pandas as pd
from scipy import stats

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from compare_results import pooled  # noqa: E402

import methods  # noqa: E402
from kd import cli  # noqa: E402
from kd.results import markdown, seed_table  # noqa: E402
from report import (  # noqa: E402
    EMA_PAIRS,
    LEVEL,
    MARGIN,
    RESULTS_COLUMNS,
    compare_runs,
    comparison_table,
    family_table,
    read_results,
)

PER_SEED = Path(__file__).with_name("per_seed.csv")
# evaluate.py's rows of experiments/grids/methods.toml's runs (Intel Xeon, bf16, each seed's
# students distilling from that seed's teacher), `table` naming the evaluation they came
# from: the settings chosen at the real budget, or those the 4-epoch proxy chose.
METHOD_RUNS = Path(__file__).with_name("methods_xeon.csv")
# EMA weights, mean and std of 3 seeds (bf16, fp32), as evaluate.py gave them: the table of
# docs/results.md's "bf16 against fp32" in commit df72e0c (its per-seed values were not kept,
# so the section now quotes the verdicts alone). Where runs trained again give the rows of
# both precisions (trusted_rows), they are compared instead; tests/test_verdicts.py checks
# that the rows give these summaries.
EMA_SUMMARY = {"teacher EMA": ((87.95, 0.19), (87.82, 0.29)),
               "kd+ce EMA": ((78.96, 0.16), (78.58, 0.15)),
               "kd EMA": ((78.97, 0.17), (78.99, 0.18)),
               "ce EMA": ((75.82, 0.14), (75.86, 0.17))}
# docs/results.md, "Raw against EMA weights": fp32, EMA − raw per run, mean and std of 3;
# rows trained again replace them as for EMA_SUMMARY.
EMA_GAINS = {"teacher": (-0.01, 0.05), "kd+ce": (-0.10, 0.06), "kd": (-0.18, 0.08),
             "dkd": (-0.05, 0.20), "dist": (-0.01, 0.23), "ce": (0.00, 0.10)}
RUNS = 3
# docs/results.md, "The mean-teacher family on five seeds" (bf16, fp32): evaluate.py's
# results.csv of seeds 3 and 4 (the Zen 5 model of seeds 0-2) of the mean-teacher runs and
# the student trained alone, one file per precision.
SEEDS_34 = [Path(__file__).with_name(f"seeds34_{precision}.csv")
            for precision in ("bf16", "fp32")]


# docs/results.md, "The bf16 runs, run again": evaluate.py's results.csv of the ten-seed and
# methods runs of seeds 0-9 of the bf16 pipeline (the seed-0 teacher, KD + CE and KD on ten
# seeds, the other methods and the student alone on three), trained again from the grids
# and code of commit 722c855 on a Zen 5: their validation and EMA rows were not kept.
RERUN = Path(__file__).with_name("rerun722c855_bf16.csv")
TEN_SEEDS = ("kd+ce", "kd")
# docs/results.md, "The mean-teacher runs of seeds 0-2, run again": evaluate.py's results.csv
# of the nine mean-teacher runs of seeds 0-2 per precision, trained again on a Zen 5: the
# per-seed values of their EMA teachers, of which the first results kept a summary only.
MEAN_TEACHER_AGAIN = [Path(__file__).with_name(f"mt012_{precision}.csv")
                      for precision in ("bf16", "fp32")]
# the EMA teachers of the mean-teacher runs (the no-averaging run's is its student)
EMA_TEACHERS = ("mean-teacher teacher", "mean-teacher-no-ema teacher")
# docs/results.md, "The fp32 teacher and students, run again": evaluate.py's results.csv of
# the fp32 seed-0 teacher and its students of seeds 0-2, trained again on a Zen 5.
FP32_AGAIN = Path(__file__).with_name("fp32_again.csv")
# docs/results.md, "The teachers of seeds 1 and 2, run again": evaluate.py's results.csv of
# those teachers per precision, trained again on a Zen 5; with seed 0's of RERUN (bf16) and
# FP32_AGAIN, the per-seed values of the teacher's EMA.
TEACHERS_AGAIN = [Path(__file__).with_name(f"teachers12_{precision}.csv")
                  for precision in ("bf16", "fp32")]
# docs/performance.md, "Timed again": evaluate.py's results.csv of one seed of `make all`,
# timed on a fresh clone of commit 73dfb69 on a Zen 5 (its runs' minutes are README's).
MAKE_ALL = Path(__file__).with_name("make_all_73dfb69.csv")
# the EMA models of the bf16 − fp32 family, from rows where both precisions have them
EMA_MODELS = (*EMA_SUMMARY, *EMA_TEACHERS)
# docs/results.md, "The same study on three machines": evaluate.py's rows of the one lent
# GPU session (an H200, bf16); seed 0's pipeline runs (the teacher, the 12-epoch students,
# the mean-teacher runs) are README's GPU column.
H200_RUNS = Path(__file__).with_name("h200_runs.csv")


def welch_from_summary(a, b, n=RUNS):
    """Welch's test of a − b from (mean, std) of n runs each: scipy's p-value; its interval
    by hand (scipy gives none from a summary), with Welch-Satterthwaite's degrees of freedom."""
    (mean_a, std_a), (mean_b, std_b) = a, b
    p = stats.ttest_ind_from_stats(mean_a, std_a, n, mean_b, std_b, n, equal_var=False).pvalue
    va, vb = std_a ** 2 / n, std_b ** 2 / n
    df = (va + vb) ** 2 / ((va ** 2 + vb ** 2) / (n - 1))
    half = stats.t.ppf(1 - LEVEL / 2, df) * math.sqrt(va + vb)
    diff = mean_a - mean_b
    return {"diff": diff, "ci_low": diff - half, "ci_high": diff + half, "p": float(p),
            "runs": f"{n} and {n}, unpaired (Welch, from mean ± std)"}


def paired_from_summary(mean, std, n=RUNS):
    """The paired t-test, its interval and the paired TOST (±MARGIN) from the mean and std of
    n per-run differences: report.compare and report.equivalence on the differences
    themselves, by hand because only their (rounded) summary was kept."""
    if std == 0:  # as report.compare: no spread, no test (t would be infinite)
        return {"diff": mean, "ci_low": math.nan, "ci_high": math.nan, "p": math.nan,
                "tost": math.nan, "no_test": "the runs' differences do not vary",
                "runs": f"{n} pairs by run (from the differences' mean and std)"}
    se = std / math.sqrt(n)
    t = stats.t(n - 1)
    half = t.ppf(1 - LEVEL / 2) * se
    tost = max(t.sf((mean + MARGIN) / se), t.cdf((mean - MARGIN) / se))
    return {"diff": mean, "ci_low": mean - half, "ci_high": mean + half,
            "p": float(2 * t.sf(abs(mean) / se)), "tost": float(tost),
            "runs": f"{n} pairs by run (from the differences' mean and std)"}


def untested(a, b, why):
    """The runs `a` against `b` where no test can be made, in family_table's terms: the
    difference of their means alone."""
    return {"diff": a["test_acc"].mean() - b["test_acc"].mean(), "ci_low": math.nan,
            "ci_high": math.nan, "p": math.nan, "no_test": why,
            "runs": f"{len(a)} and {len(b)}, unpaired"}


def by_variant(runs):
    return {v: rows for v, rows in runs.groupby("variant", sort=False)}


def seeds_0_2(rows, precision, variant):
    return rows[(rows["precision"] == precision) & (rows["variant"] == variant)
                & (rows["seed"] < RUNS)]


def tables(runs, again):
    """(title, table) for every family docs/results.md states verdicts on; `again`: the rows
    of runs trained again that may stand for a kept summary (trusted_rows), each EMA model
    with RUNS seeds of them compared from them (paired by seed), the others from their
    summary."""
    precisions = {p: by_variant(rows) for p, rows in runs.groupby("precision", sort=False)}
    names = ["comparison", "difference (points)"]
    out = []
    for title, pairs in (("Students", methods.comparisons()), ("Mean-teacher", EMA_PAIRS)):
        for precision, variants in precisions.items():
            tests = [(a, b, compare_runs(variants[a], variants[b], ["seed"]))
                     for a, b in pairs if a in variants and b in variants]
            out.append((f"{title}, {precision}", family_table(tests, names)))
    bf16, fp32 = precisions["bf16"], precisions["fp32"]
    tests = [("bf16", "fp32", compare_runs(bf16[v], fp32[v], ["seed"])) for v in fp32]
    for v in EMA_MODELS:
        a, b = (seeds_0_2(again, p, v) for p in ("bf16", "fp32"))
        tests.append(("bf16", "fp32", compare_runs(a, b, ["seed"]) if len(a) == len(b) == RUNS
                      else welch_from_summary(*EMA_SUMMARY[v]) if v in EMA_SUMMARY
                      else untested(a, b, f"fewer than {RUNS} runs again a side, and no "
                                    "summary kept")))
    table = family_table(tests, ["variant", "bf16 − fp32 (points)"])
    table["variant"] = list(fp32) + list(EMA_MODELS)
    out.append(("bf16 against fp32", table))
    fp32_runs, bf16_runs = (runs[runs["precision"] == p] for p in ("fp32", "bf16"))
    table = pooled(fp32_runs, bf16_runs, ("fp32", "bf16"))
    if table is not None:
        out.append(("bf16 against fp32, every variant pooled per seed", table))
    tests = []
    for v, gain in EMA_GAINS.items():
        ema, raw = seeds_0_2(again, "fp32", f"{v} EMA"), seeds_0_2(again, "fp32", v)
        tests.append((f"{v} EMA", v, compare_runs(ema, raw, ["seed"])
                      if len(ema) == len(raw) == RUNS else paired_from_summary(*gain)))
    out.append(("EMA against raw weights, fp32", family_table(tests, names)))
    return out


def first_table(runs, seeds_34, gpu):
    """(title, table): README's first table, each variant's test accuracy per precision, mean
    ± std over its seeds (the mean-teacher runs' with SEEDS_34's seeds 3 and 4), and the
    GPU's seed-0 pipeline run beside them."""
    later = seeds_34[(seeds_34["weights"] == "raw")
                     & seeds_34["variant"].str.startswith("mean-teacher")]
    both = pd.concat([runs, later[runs.columns]], ignore_index=True)
    table = seed_table(both, ["variant", "precision"])
    table = table.assign(cell=table["test_acc"] + " (" + table["seeds"].astype(str) + ")")
    table = table.pivot(index="variant", columns="precision", values="cell")
    table = table.reindex(both["variant"].unique())[["bf16", "fp32"]]
    table.columns = ["bf16 (seeds)", "fp32 (seeds)"]
    pipeline = gpu[(gpu["seed"] == 0) & (gpu["weights"] == "raw")
                   & gpu["epochs"].isin([12, 40])]
    variants = pipeline["variant"].str.removesuffix(" (epochs=12)")
    table["GPU, seed 0"] = table.index.map(
        dict(zip(variants, pipeline["test_acc"].map("{:.2f}".format)))).fillna("")
    return [("README's first table: test accuracy (%)", table.reset_index())]


def five_seed_tables(runs, seeds_34):
    """(title, table) per precision SEEDS_34 holds: the mean-teacher family on seeds 0-4,
    PER_SEED's seeds 0-2 with SEEDS_34's 3 and 4 of that precision, each variant's mean ±
    std and per-seed accuracies, then the comparisons (one Holm family, paired by seed)."""
    seeds_34 = seeds_34[seeds_34["weights"] == "raw"]  # not the EMA teachers' rows
    names = {v for pair in EMA_PAIRS for v in pair}
    out = []
    for precision, later in seeds_34.groupby("precision", sort=False):
        both = pd.concat([runs[runs["precision"] == precision], later[runs.columns]],
                         ignore_index=True)
        both = both[both["variant"].isin(names)]
        summary = seed_table(both, ["variant"])
        summary["per seed (test)"] = summary["variant"].map(per_seed_accuracies(both))
        out += [(f"Mean-teacher, {precision}, seeds 0-4: accuracy (%)", summary),
                (f"Mean-teacher, {precision}, seeds 0-4",
                 comparison_table(both, EMA_PAIRS, ["seed"]))]
    return out


def per_seed_accuracies(runs):
    """{variant: its test accuracies in seed order, "75.45 / 76.22 / ..."}."""
    per_seed = runs.sort_values("seed", kind="stable").groupby("variant", sort=False)
    return per_seed["test_acc"].agg(lambda accs: " / ".join(f"{a:.2f}" for a in accs))


def matched(raw, runs):
    """The runs in `raw` (trained again), each with the test accuracy `runs` (PER_SEED)
    records for it and whether it gave that, to the hundredth, as it was recorded."""
    keys = ["precision", "variant", "seed"]
    both = raw.merge(runs[[*keys, "test_acc"]], on=keys, how="left",
                     suffixes=("", "_recorded"), validate="one_to_one")
    both["same"] = both["test_acc"].round(2) == both["test_acc_recorded"]
    return both


def trusted_rows(runs, again):
    """The rows of `again` (evaluate.py's, raw and EMA, of runs trained again) of the runs
    whose precision and variant gave every test accuracy `runs` records: docs/results.md's
    rule for the rows that may stand for a kept summary."""
    both = matched(again[again["weights"] == "raw"], runs)
    good = both.groupby(["precision", "variant"])["same"].transform("all")
    keys = ["checkpoint", "precision"]
    return again.merge(both.loc[good, keys], on=keys)


def as_recorded(raw, runs):
    """Per precision and variant: how many of the runs in `raw` (trained again) gave the test
    accuracy `runs` (PER_SEED) records for them (matched)."""
    both = matched(raw, runs)
    both["off"] = (both["test_acc"] - both["test_acc_recorded"]).abs()
    same = both.groupby(["precision", "variant"], sort=False).agg(
        seeds=("seed", "count"), recorded=("test_acc_recorded", "count"),
        same=("same", "sum"), largest_difference=("off", "max")).reset_index()
    same["test accuracy as recorded"] = [f"{n} of {m}" for n, m in
                                         zip(same.pop("same"), same.pop("recorded"))]
    same["largest difference (points)"] = same.pop("largest_difference").map("{:.2f}".format)
    return same


def rerun_tables(runs, rerun):
    """(title, table): whether the run again gave each run's test accuracy that PER_SEED
    records (bf16; to the hundredth, as it was recorded), per variant; then KD + CE and KD
    alone on ten seeds with their validation accuracy, which only the run again kept."""
    raw = rerun[(rerun["weights"] == "raw") & (rerun["precision"] == "bf16")]
    same = as_recorded(raw, runs).drop(columns="precision")
    ten = raw[raw["variant"].isin(TEN_SEEDS)]
    summary = seed_table(ten, ["variant"]).merge(
        seed_table(ten, ["variant"], "val_acc").drop(columns="seeds"), on="variant")
    summary["per seed (test)"] = summary["variant"].map(per_seed_accuracies(ten))
    return [("bf16 runs again (commit 722c855): each run's test accuracy", same),
            ("KD alone against KD + CE, bf16, ten seeds (run again): accuracy (%)", summary)]


def again_tables(name, runs, again, ema_models):
    """(title, table): whether the runs `name` trained again gave each run's recorded test
    accuracy (the condition for using their EMA rows), then the EMA models `ema_models`'
    mean ± std and per-seed accuracies per precision."""
    raw = again[again["weights"] == "raw"]
    ema = again[again["variant"].isin(ema_models)]
    summary = seed_table(ema, ["precision", "variant"])
    per_seed = {(precision, variant): per_seed_accuracies(rows)[variant] for
                (precision, variant), rows in ema.groupby(["precision", "variant"])}
    summary["per seed (test)"] = [per_seed[key] for key in
                                  zip(summary["precision"], summary["variant"])]
    return [(f"{name} again: each run's test accuracy", as_recorded(raw, runs)),
            (f"{name} again: EMA weights (%)", summary)]


def pipeline_table(runs, pipeline):
    """(title, table): whether the timed `make all` gave each run's recorded test accuracy,
    with its minutes of training."""
    raw = pipeline[pipeline["weights"] == "raw"]
    same = as_recorded(raw, runs).drop(columns=["precision", "seeds"])
    same["minutes"] = same["variant"].map(
        raw.groupby("variant")["train_minutes"].first().round(1))
    return [("make all, seed 0, bf16, timed at commit 73dfb69: each run's test accuracy",
             same)]


def method_tables(runs):
    """(title, table) per evaluation in METHOD_RUNS: each variant's test accuracy (mean ± std
    and per seed), validation and clean training accuracy and median minutes per run, then
    report.py's comparisons of the students, then each other distilling method against the
    student alone (paired by seed, each table one Holm family)."""
    out, compared = [], methods.comparisons()
    for name, rows in runs.groupby("table", sort=False):
        rows = rows[rows["weights"] == "raw"]
        summary = seed_table(rows, ["variant"])
        for column in ("val_acc", "train_acc"):
            summary = summary.merge(seed_table(rows, ["variant"], column).drop(
                columns="seeds"), on="variant")
        summary["per seed (test)"] = summary["variant"].map(per_seed_accuracies(rows))
        summary["minutes per run (median)"] = summary["variant"].map(
            rows.groupby("variant")["train_minutes"].median().round(1))
        out.append((f"Methods, {name}: accuracy (%)", summary))
        out.append((f"Methods, {name}: comparisons",
                    comparison_table(rows, compared, ["seed"])))
        # Whether a method distils anything at all: report.py compares most of them with
        # KD + CE only.
        alone = [(v, "ce") for v in summary["variant"] if v not in ("ce", "teacher")
                 and (v, "ce") not in compared]
        out.append((f"Methods, {name}: against the student alone",
                    comparison_table(rows, alone, ["seed"])))
    return out


def main():
    runs = read_results(PER_SEED, ["precision", "variant", "seed", "test_acc"])
    method_runs = read_results(METHOD_RUNS, [*RESULTS_COLUMNS, "table", "weights"])
    seeds_34 = pd.concat([read_results(path, [*RESULTS_COLUMNS, "precision", "weights"])
                          for path in SEEDS_34], ignore_index=True)
    rerun = read_results(RERUN, [*RESULTS_COLUMNS, "weights", "val_acc", "precision"])
    columns = [*RESULTS_COLUMNS, "precision", "weights"]
    mean_teacher = pd.concat([read_results(path, columns) for path in MEAN_TEACHER_AGAIN],
                             ignore_index=True)
    fp32 = read_results(FP32_AGAIN, columns)
    teachers = pd.concat([read_results(path, columns) for path in TEACHERS_AGAIN],
                         ignore_index=True)
    again = pd.concat([rerun, mean_teacher, fp32, teachers], ignore_index=True)
    all_teachers = again[again["model"] == "teacher"]
    again = trusted_rows(runs, again)
    for title, table in (first_table(runs, seeds_34, pd.read_csv(H200_RUNS))
                         + tables(runs, again)
                         + again_tables("Mean-teacher runs of seeds 0-2", runs, mean_teacher,
                                        EMA_TEACHERS)
                         + again_tables("fp32 teacher and students", runs, fp32,
                                        [f"{v} EMA" for v in EMA_GAINS if v != "teacher"])
                         + again_tables("Teachers of seeds 0-2", runs, all_teachers,
                                        ["teacher EMA"])
                         + five_seed_tables(runs, seeds_34) + rerun_tables(runs, rerun)
                         + pipeline_table(runs, read_results(MAKE_ALL, columns))
                         + method_tables(method_runs)):
        print(f"## {title}\n\n{markdown(table)}\n")


if __name__ == "__main__":
    cli.run_cli(main)
