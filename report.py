"""Write the pipeline's report, laid out like the original report, from evaluate.py's
results: the sample grid, the teacher, the students, the EMA comparison, each comparison's
difference with the seed spread and a test of whether it is real.

    python report.py                  # plots/results.csv -> plots/report.md
    python report.py --plots-dir runs/quick/plots

Nothing in it is written by hand per run: every number and verdict comes from results.csv.
"""
import argparse
from pathlib import Path

import pandas as pd
from scipy import stats

import methods
from kd import cli
from kd.records import write_text
from kd.results import MEAN_TEACHER_VARIANTS, PROVENANCE, is_second_model, seed_table

# The original report (one run each), shown beside this run's figures.
ORIGINAL = {"teacher": "54.06%", "kd+ce": "48.85%", "kd": "50.58%",
            "mean-teacher": "47.24%", "mean-teacher-no-ema": "45.76%"}
# The students' comparisons come from the registered methods (methods.comparisons); the
# mean-teacher runs are compared with each other and with the student trained alone.
EMA_PAIRS = [("mean-teacher", other) for other in MEAN_TEACHER_VARIANTS
             if other != "mean-teacher"] + [("mean-teacher", "ce")]
LEVEL = 0.05  # a difference is called real when larger than the spread and p < LEVEL


def compare(a, b, paired=False):
    """a - b in points: the mean difference, the seed spread it is measured against (the
    larger std of the two; for paired runs, the std of their differences), Welch's t-test
    (paired: Student's on the differences) and a verdict in words."""
    a, b = pd.Series(a, dtype=float), pd.Series(b, dtype=float)
    diff = (a - b).mean() if paired else a.mean() - b.mean()
    if min(len(a), len(b)) < 2:
        return {"diff": diff, "spread": None, "t": None, "p": None,
                "verdict": "one seed: no claim can be made"}
    spread = (a - b).std() if paired else max(a.std(), b.std())
    test = stats.ttest_rel(a, b) if paired else stats.ttest_ind(a, b, equal_var=False)
    p = float(test.pvalue)
    if abs(diff) <= spread or not p < LEVEL:
        verdict = "no difference: within the seed spread" if abs(diff) <= spread else \
            f"not significant (p = {p:.2g})"
    else:
        verdict = f"real (p = {p:.2g})"
    return {"diff": diff, "spread": spread, "t": float(test.statistic), "p": p,
            "verdict": verdict}


def per_variant(results):
    """Mean ± std of the test accuracy over seeds per variant, with its cost."""
    table = seed_table(results, ["variant"]).rename(columns={"test_acc": "test accuracy (%)"})
    runs = results.groupby("variant", sort=False)
    table["MACs"] = [f"{macs / 1e6:.1f}M" for macs in runs["macs"].first()]
    # the median: one run that shared the cores with other work would move a mean
    table["minutes per run (median)"] = runs["train_minutes"].median().round(1).to_numpy()
    table["original report"] = [ORIGINAL.get(variant, "") for variant in table["variant"]]
    return table


def comparison_table(results, pairs, paired=False):
    rows = []
    by_variant = {v: runs for v, runs in results.groupby("variant", sort=False)}
    for a, b in pairs:
        if a not in by_variant or b not in by_variant:
            continue
        if paired:  # the same runs (seeds) in both: line them up by checkpoint
            both = by_variant[a].merge(by_variant[b], on="checkpoint")
            values = both["test_acc_x"], both["test_acc_y"]
        else:
            values = by_variant[a]["test_acc"], by_variant[b]["test_acc"]
        result = compare(*values, paired=paired)
        spread = "" if result["spread"] is None else f"{result['spread']:.2f}"
        rows.append({"comparison": f"{a} − {b}", "difference (points)": f"{result['diff']:+.2f}",
                     "seed spread": spread, "verdict": result["verdict"]})
    return pd.DataFrame(rows)


def raw_vs_ema_pairs(results):
    """(v EMA, v) for every variant with an EMA of its weights (a mean-teacher run's second
    model is its teacher, `v teacher`, compared in its own section)."""
    variants = list(dict.fromkeys(results["variant"]))
    return [(f"{v} EMA", v) for v in variants if f"{v} EMA" in variants]


def provenance(results):
    """Where the runs came from, as their records say (evaluate.py): data, training
    images, machine, precision, torch and code; a field on which runs differ lists every
    value, so a report over mixed runs says so."""
    lines = []
    for column, label in PROVENANCE.items():
        values = results[column].fillna("").astype(str).unique() if column in results \
            else [""]
        values = [f"`{v}`" if v else "not recorded" for v in values]
        mixed = " (**the runs differ**)" if len(values) > 1 else ""
        lines.append(f"- {label}: {', '.join(values)}{mixed}")
    return "\n".join(lines) + "\n"


def section(title, figure, plots_dir, tables):
    """A titled section with its figure and tables; empty when it has neither."""
    parts = []
    if figure and (Path(plots_dir) / figure).exists():
        parts.append(f"![{title}]({figure})\n")
    for caption, table in tables:
        if not table.empty:
            parts.append(f"{caption}\n\n{table.to_markdown(index=False, disable_numparse=True)}\n")
    return "\n".join([f"## {title}\n", *parts]) if parts else ""


def write_report(results, plots_dir):
    seeds = sorted(results["seed"].dropna().astype(int).unique())
    students = results[results["model"] == "student"]
    is_mean_teacher = students["variant"].str.startswith("mean-teacher")
    raw = results[~results["variant"].map(is_second_model)]
    text = [
        "# Knowledge distillation on CIFAR-10: the report of this run\n",
        f"Test accuracy on the CIFAR-10 test set, mean ± std over the seeds present "
        f"({', '.join(map(str, seeds))}). A difference is called real when it is larger than "
        f"the seed spread (the larger std of the two) and Welch's t-test gives p < {LEVEL}; "
        "raw against EMA weights of the same runs use a paired t-test. With one seed no claim "
        "can be made. Written by report.py from results.csv (evaluate.py).\n",
        f"{len(results)} models from {results['checkpoint'].nunique()} checkpoints:\n",
        provenance(results),
        section("The data", "samples.png", plots_dir, []),
        section("The teacher", "teacher_curves.png", plots_dir,
                [("Test accuracy:", per_variant(results[results["model"] == "teacher"]))]),
        section("The students", "students_compare.png", plots_dir,
                [("Test accuracy:", per_variant(students[~is_mean_teacher])),
                 ("Is each difference real?", comparison_table(raw, methods.comparisons()))]),
        section("Mean-teacher: with and without EMA", "ema_compare.png", plots_dir,
                [("Test accuracy (the student; `teacher` rows: its teacher):",
                  per_variant(students[is_mean_teacher])),
                 ("Is each difference real?", comparison_table(raw, EMA_PAIRS))]),
        section("Raw against EMA weights of the same runs", None, plots_dir,
                [("EMA − raw, paired by run:",
                  comparison_table(results, raw_vs_ema_pairs(results), paired=True))]),
    ]
    path = Path(plots_dir) / "report.md"
    write_text(path, "\n".join(part for part in text if part))
    return path


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plots-dir", default="plots", help="where results.csv (from "
                        "evaluate.py) and the figures are, and report.md goes (default: plots)")
    args = parser.parse_args()
    csv = Path(args.plots_dir) / "results.csv"
    if not csv.exists():
        raise cli.UserError(f"no {csv}: run evaluate.py first (make all does)")
    print(f"wrote {write_report(pd.read_csv(csv), args.plots_dir)}")


if __name__ == "__main__":
    cli.run_cli(main)
