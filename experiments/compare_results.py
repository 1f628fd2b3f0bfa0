"""Do two sets of runs of the same pipeline agree? Per variant, the test accuracy of each
(mean ± std over seeds), the difference and whether it is real (report.compare: Welch's
t-test against the seed spread). For a change that should not move accuracy: another
precision, device, machine or library version.

    python experiments/compare_results.py runs/fp32/results.csv plots/results.csv \
        --names fp32 bf16
"""
import argparse
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from kd import cli  # noqa: E402
from kd.results import seed_table, variant_rank  # noqa: E402
from report import compare  # noqa: E402


def compare_results(a, b, names):
    """One row per variant that both results (evaluate.py's results.csv) hold."""
    rows = []
    both = set(a["variant"]) & set(b["variant"])
    tables = [seed_table(r, ["variant"]).set_index("variant") for r in (a, b)]
    for variant in sorted(both, key=lambda v: (variant_rank(v.removesuffix(" EMA")), v)):
        x, y = (r.loc[r["variant"] == variant, "test_acc"] for r in (a, b))
        result = compare(y, x)
        rows.append({"variant": variant,
                     **{name: f"{t.at[variant, 'test_acc']} ({t.at[variant, 'seeds']})"
                        for name, t in zip(names, tables)},
                     f"{names[1]} − {names[0]} (points)": f"{result['diff']:+.2f}",
                     "verdict": result["verdict"]})
    return pd.DataFrame(rows)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs=2, help="two results.csv files of evaluate.py")
    parser.add_argument("--names", nargs=2, default=("A", "B"),
                        help="what to call them in the table (default: A B)")
    args = parser.parse_args()
    for path in args.results:
        if not Path(path).is_file():
            raise cli.UserError(f"no {path}: run evaluate.py to write it")
    a, b = (pd.read_csv(path) for path in args.results)
    table = compare_results(a, b, args.names)
    if table.empty:
        raise cli.UserError("the two results have no variant in common")
    print(table.to_markdown(index=False, disable_numparse=True))


if __name__ == "__main__":
    cli.run_cli(main)
