"""Compare variants of an evaluate.py table as a study planned them: each `--pair B A` is
B − A in test accuracy, paired by seed, with its 95% interval, all pairs one family (Holm;
"equivalent within ±0.5 points" only from a paired TOST), as report.py compares the methods
it registers. B and A are shell patterns on the runs' names (their checkpoints' stems), so
a variant is what its runs are called, not evaluate.py's label for it (which names the
settings its runs differ in, and so changes with the runs it read); where two folders of the
table hold runs of one name, those are named by their paths (`runs/a/kd_seed0`). The runs'
EMAs (a mean-teacher run's teacher), where both sides have them, are a comparison of their
own in the same family.

    python experiments/compare_variants.py runs/dkd-ls/eval/results.csv \\
        --pair 'dkd+ls_seed*' 'dkd_seed*' --pair 'dkd+ls-authors_seed*' 'dkd_seed*'
"""
import fnmatch
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from kd import cli  # noqa: E402
from kd.results import markdown, seed_table  # noqa: E402
from report import compare_runs, family_table, one_row_per_run, read_results  # noqa: E402


def runs_named(results, pattern):
    """The rows of the runs whose names match `pattern`, refused in one line where none do,
    where they hold two recipes (evaluate.py labels them apart) or a seed twice."""
    runs = results[results["run"].map(lambda name: fnmatch.fnmatchcase(name, pattern))]
    if runs.empty:
        raise cli.UserError(f"no run is named like {pattern!r}; the runs: "
                            f"{', '.join(results['run'].drop_duplicates())}")
    raw = runs[runs["weights"] == "raw"]
    labels = raw["variant"].drop_duplicates()
    if len(labels) > 1:
        raise cli.UserError(f"the runs named like {pattern!r} are of {len(labels)} recipes "
                            f"({'; '.join(labels)}): name one")
    seeded = raw.dropna(subset=["seed"])  # runs without one pair with none
    twice = seeded[seeded.duplicated("seed", keep=False)]
    if not twice.empty:
        raise cli.UserError(f"the runs named like {pattern!r} hold seed "
                            f"{twice['seed'].iloc[0]:g} twice ({', '.join(twice['run'])})")
    return runs


def second_model(runs):
    """What the runs' `ema` weights are, as evaluate.py labels them: " teacher" for a
    mean-teacher run's teacher, " EMA" for the EMA of a run's weights."""
    labels = runs.loc[runs["weights"] == "ema", "variant"].map(lambda v: v.split(" (")[0])
    return " teacher" if len(labels) and labels.str.endswith(" teacher").all() else " EMA"


def compare_variants(results, pairs):
    """(the family of comparisons, one row per pair and weights both sides have; the table of
    each side's test and validation accuracy, mean ± std over seeds)."""
    tests, sides = [], {}
    for b, a in pairs:
        runs = {pattern: runs_named(results, pattern) for pattern in (b, a)}
        sides.update(runs)
        for weights in ("raw", "ema"):
            chosen = [runs[p][runs[p]["weights"] == weights] for p in (b, a)]
            if all(len(c) for c in chosen):
                b_name, a_name = (p + second_model(runs[p]) * (weights == "ema") for p in (b, a))
                tests.append((b_name, a_name, compare_runs(*chosen, ["seed"])))
    table = family_table(tests, ["comparison", "difference (points)"])
    rows = []
    for pattern, runs in sides.items():
        for weights, kept in runs.groupby("weights", sort=False):
            kept = kept.assign(runs=pattern + second_model(runs) * (weights == "ema"))
            row = seed_table(kept, ["runs"])
            row["validation"] = seed_table(kept, ["runs"], "val_acc")["val_acc"]
            row["variant (evaluate.py)"] = kept["variant"].iloc[0]
            rows.append(row)
    accuracy = pd.concat(rows, ignore_index=True).rename(columns={"test_acc": "test"})
    return table, accuracy


def main():
    parser = cli.parser(__doc__)
    parser.add_argument("results", nargs="+", help="results.csv files of evaluate.py, read "
                        "as one table (a study evaluated a seed at a time leaves several)")
    parser.add_argument("--pair", nargs=2, action="append", required=True, metavar=("B", "A"),
                        help="compare the runs named like B with those named like A (shell "
                        "patterns), B − A; once per comparison")
    args = parser.parse_args()
    for path in args.results:
        if not Path(path).is_file():
            raise cli.UserError(f"no {path}: run evaluate.py to write it")
    tables = [read_results(path, ["variant", "seed", "test_acc", "val_acc"])
              for path in args.results]
    results = one_row_per_run(pd.concat(tables, ignore_index=True), " and ".join(args.results))
    if "weights" not in results:
        results = results.assign(weights="raw")
    table, accuracy = compare_variants(results, args.pair)
    print(markdown(accuracy))
    print()
    print(markdown(table))


if __name__ == "__main__":
    cli.run_cli(main, trains=False)
