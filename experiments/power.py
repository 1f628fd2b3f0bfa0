"""How likely a paired study of some seeds is to reach a verdict, before it runs: the power to
resolve a true difference of each size, and to call two recipes "equivalent within ±0.5
points" when they do not differ, by the report's tests (paired t-test and TOST, a Holm
family of --family comparisons, its lower bound). The spread is that of the per-seed
differences, from an earlier study of the same kind.

    python experiments/power.py --seeds 3 5 10 --sd 0.2 0.4 0.8 --difference 0.45 0.91 --family 4
"""
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from kd import cli  # noqa: E402
from kd.results import markdown  # noqa: E402
from report import MARGIN, difference_power, equivalence_power  # noqa: E402


def power_table(seeds, sds, differences, family):
    """One row per seed count and spread: the power (%) to resolve each difference, and to
    show equivalence where there is no difference."""
    rows = []
    for n in seeds:
        for sd in sds:
            row = {"seeds": n, "sd of the differences": f"{sd:g}"}
            for d in differences:
                row[f"resolves {d:g}"] = f"{100 * difference_power(n, sd, d, family):.0f}%"
            row[f"equivalent within ±{MARGIN:g} at 0"] = \
                f"{100 * equivalence_power(n, sd, family=family):.0f}%"
            rows.append(row)
    return pd.DataFrame(rows)


def main():
    parser = cli.parser(__doc__)
    parser.add_argument("--seeds", type=int, nargs="+", default=[3, 5, 10],
                        help="seeds (pairs) per comparison (default: 3 5 10)")
    parser.add_argument("--sd", type=float, nargs="+", default=[0.2, 0.4, 0.8],
                        help="standard deviation of the per-seed differences, points "
                        "(default: 0.2 0.4 0.8)")
    parser.add_argument("--difference", type=float, nargs="+", default=[0.5, 1.0],
                        help="true mean differences to resolve, points (default: 0.5 1)")
    parser.add_argument("--family", type=int, default=1,
                        help="comparisons in the Holm family (default: 1)")
    args = parser.parse_args()
    for flag, values, low in (("--seeds", args.seeds, 2), ("--family", [args.family], 1)):
        few = [v for v in values if v < low]
        if few:
            raise cli.UserError(f"{flag}: {few[0]} is too few (at least {low})")
    for flag, values in (("--sd", args.sd), ("--difference", args.difference)):
        bad = [v for v in values if not v > 0]
        if bad:
            raise cli.UserError(f"{flag}: {bad[0]:g} is not above 0")
    print(markdown(power_table(args.seeds, args.sd, args.difference, args.family)))


if __name__ == "__main__":
    cli.run_cli(main, trains=False)
