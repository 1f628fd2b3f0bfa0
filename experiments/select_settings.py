"""Choose each method's setting on the validation split from a selection sweep's records
(experiments/grids/select.toml): per method, each setting's validation accuracy at its last
epoch (the mean over the seeds it has run), the best one, and the settings within --margin
points of it, which a second seed decides (issue 26). Runs that stopped short of the
sweep's length (diverged, or still running) are listed and never chosen. The test set is
never read.

    python experiments/select_settings.py runs/select    # also writes runs/select/selection.csv
    python experiments/select_settings.py runs/select --margin 1.0
    python experiments/select_settings.py runs/best --across   # one recipe among all methods
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from kd import cli  # noqa: E402
from kd.records import write_text  # noqa: E402
from kd.results import is_second_model, label_settings, run_table, variant_rank  # noqa: E402

MARGIN = 1.0  # points of validation accuracy within which one seed does not decide (issue 26)


def decisions(runs, margin=MARGIN, across=False):
    """One row per method and setting of `runs` (kd.results.run_table's rows; EMA rows left
    out): seeds, mean validation accuracy, minutes per run and the decision: `chosen`,
    `within <d> of the best: decide on a second seed` (while either has one seed), `below`,
    `only setting`, or `incomplete (epoch k of n)`. With `across`, one choice among all
    the runs' recipes, whatever their method (the best student's recipe, issue 26): the
    method is then "any" and the setting the whole recipe."""
    runs = runs[~runs["variant"].map(is_second_model)]
    budget = runs["epochs"].max()
    parts = runs["variant"].map(label_settings)
    runs = runs.assign(method=parts.str[0],
                       setting=parts.map(lambda p: ", ".join(p[1]) or "default"))
    if across:
        runs = runs.assign(method="any", setting=runs["variant"])
    table = runs.groupby(["method", "setting", "variant"], sort=False).agg(
        seeds=("seed", "nunique"), val_acc=("val_acc", "mean"), epochs=("epochs", "min"),
        minutes=("minutes", "median")).reset_index()
    table["decision"] = ""
    for _, rows in table.groupby("method", sort=False):
        complete = rows[rows["epochs"] == budget]
        for i in rows.index.difference(complete.index):
            table.at[i, "decision"] = f"incomplete (epoch {table.at[i, 'epochs']} of {budget})"
        if complete.empty:
            continue
        best = complete["val_acc"].idxmax()
        if len(rows) == 1:
            table.at[best, "decision"] = "only setting"
            continue
        table.at[best, "decision"] = "chosen"
        for i in complete.index.drop(best):
            gap = complete.at[best, "val_acc"] - complete.at[i, "val_acc"]
            undecided = gap <= margin and min(complete.at[i, "seeds"],
                                              complete.at[best, "seeds"]) < 2
            table.at[i, "decision"] = (f"within {gap:.2f} of the best: decide on a second seed"
                                       if undecided else "below")
        if (table.loc[complete.index, "decision"].str.startswith("within")).any():
            table.at[best, "decision"] = "best so far: decide on a second seed"
    order = table["variant"].map(variant_rank)
    table = table.assign(rank=order).sort_values(["rank", "val_acc"], ascending=[True, False],
                                                 kind="stable")
    table["val_acc"] = table["val_acc"].round(2)
    return table[["method", "setting", "seeds", "val_acc", "epochs", "minutes", "decision"]
                 ].reset_index(drop=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", help="the selection sweep's folder (runs/select)")
    parser.add_argument("--margin", type=float, default=MARGIN,
                        help=f"points of validation accuracy within which a second seed "
                             f"decides (default: {MARGIN})")
    parser.add_argument("--across", action="store_true",
                        help="one choice among every recipe, whatever its method (the best "
                             "student of experiments/grids/best.toml)")
    args = parser.parse_args()
    runs = run_table([args.folder])
    if runs.empty:
        raise cli.UserError(f"no run records (*.metrics.csv) in {args.folder}")
    table = decisions(runs, args.margin, args.across)
    write_text(Path(args.folder) / "selection.csv", table.to_csv(index=False))
    print(f"Validation accuracy (%) at the last epoch, mean over the seeds run; "
          f"{args.folder}; the test set is not read.\n")
    print(table.to_markdown(index=False))


if __name__ == "__main__":
    cli.run_cli(main)
