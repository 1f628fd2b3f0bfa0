"""Do two sets of runs of the same pipeline agree? Per variant, the test accuracy of each
(mean ± std over seeds), the difference with its 95% interval, paired by seed where both
have runs of that seed (report.compare_runs), and a verdict: the variants are one family,
Holm-adjusted; "equivalent within ±0.5 points" only from a paired TOST (report.MARGIN).
For a change that should not move accuracy: another precision, device, machine or library
version.

    python experiments/compare_results.py runs/fp32/results.csv plots/results.csv \
        --names fp32 bf16
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from kd import cli  # noqa: E402
from kd.results import seed_table, variant_rank  # noqa: E402
from report import compare_runs, family_table, read_results  # noqa: E402


def compare_results(a, b, names):
    """One row per variant that both results (evaluate.py's results.csv) hold: b − a, paired
    by seed (the same variant and seed in both share initialisation and batch order)."""
    both = set(a["variant"]) & set(b["variant"])
    variants = sorted(both, key=lambda v: (variant_rank(v.removesuffix(" EMA")), v))
    tests = [(names[1], names[0], compare_runs(*(r[r["variant"] == variant] for r in (b, a)),
                                               ["seed"])) for variant in variants]
    table = family_table(tests, ["variant", f"{names[1]} − {names[0]} (points)"])
    if table.empty:
        return table
    table["variant"] = variants
    tables = [seed_table(r, ["variant"]).set_index("variant") for r in (a, b)]
    for position, (name, t) in enumerate(zip(names, tables), start=1):
        table.insert(position, name, [f"{t.at[v, 'test_acc']} ({t.at[v, 'seeds']})"
                                      for v in variants])
    return table


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs=2, help="two results.csv files of evaluate.py")
    parser.add_argument("--names", nargs=2, default=("A", "B"),
                        help="what to call them in the table (default: A B)")
    args = parser.parse_args()
    for path in args.results:
        if not Path(path).is_file():
            raise cli.UserError(f"no {path}: run evaluate.py to write it")
    a, b = (read_results(path, ["variant", "seed", "test_acc"]) for path in args.results)
    table = compare_results(a, b, args.names)
    if table.empty:
        raise cli.UserError("the two results have no variant in common")
    print(table.to_markdown(index=False, disable_numparse=True))


if __name__ == "__main__":
    cli.run_cli(main)
