"""Choose each method's setting on the validation split from a selection sweep's records
(experiments/grids/select.toml): per method, each setting's validation accuracy at its last
epoch (the mean over the seeds it has run), the best one, and the settings within --margin
points of it, which a second seed decides (issue 26). Runs that stopped short of the
sweep's length (diverged, or still running) are listed and never counted. The test set is
never read.

    python experiments/select_settings.py runs/select    # also writes runs/select/selection.csv
    python experiments/select_settings.py runs/select --margin 1.0
    python experiments/select_settings.py runs/select-e200 --across   # one recipe among all
    python experiments/select_settings.py runs/select --records experiments/select_seed0.csv
"""
import re
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from kd import cli  # noqa: E402
from kd.records import write_text  # noqa: E402
from kd.results import (  # noqa: E402
    is_second_model,
    label_settings,
    markdown,
    run_table,
    variant_rank,
)

MARGIN = 1.0  # points of validation accuracy within which one seed does not decide (issue 26)


def decisions(runs, margin=MARGIN, across=False):
    """One row per method and setting of `runs` (kd.results.run_table's rows; EMA rows left
    out): seeds, mean validation accuracy, minutes per run and the decision: `chosen`
    (`chosen among the finished` while a setting of its method is not: still training, or
    stopped, which the records cannot tell apart),
    `within <d> of the best: decide on a second seed` (while either has one seed), `below`,
    `tied at the best: not decided`, `only setting`, or `incomplete (epoch k of n)`. Only
    runs that reached their method's length (the most epochs any of its runs was started
    for) count; a setting's seeds still short of it are named in its decision. With
    `across`, one choice among all the runs' recipes, whatever their method (the best
    student's recipe, issue 26): the method is then "any" and the setting the whole
    recipe."""
    runs = runs[~runs["variant"].map(is_second_model)]
    # records from elsewhere (and evaluate.py's tables) have no planned length: their epochs
    planned = runs["planned_epochs"] if "planned_epochs" in runs else runs["epochs"]
    parts = runs["variant"].map(label_settings)
    runs = runs.assign(method=parts.str[0], planned=planned.fillna(runs["epochs"]),
                       setting=parts.map(lambda p: ", ".join(p[1]) or "default"))
    if across:
        runs = runs.assign(method="any", setting=runs["variant"])
    # a method's length: one of its runs started longer holds back that method alone
    budgets = runs.groupby("method")["planned"].max().astype(int)
    settings = []
    for (method, setting, variant), group in runs.groupby(["method", "setting", "variant"],
                                                          sort=False):
        budget = budgets[method]
        finished, short = group[group["epochs"] >= budget], group[group["epochs"] < budget]
        shown = finished if len(finished) else short
        waiting = short["seed"].nunique() if len(finished) else 0
        settings.append({
            "method": method, "setting": setting, "variant": variant,
            "seeds": shown["seed"].nunique(), "val_acc": shown["val_acc"].mean(),
            "epochs": shown["epochs"].min(), "minutes": shown["minutes"].median(),
            "finished": len(finished) > 0,
            "unfinished": (f" ({waiting} seed{'s' if waiting > 1 else ''} unfinished: epoch "
                           f"{short['epochs'].min()} of {budget}, not counted)"
                           if waiting else "")})
    table = pd.DataFrame(settings)
    table["decision"] = ""
    for _, rows in table.groupby("method", sort=False):
        complete = rows[rows["finished"]]
        for i in rows.index.difference(complete.index):
            table.at[i, "decision"] = (f"incomplete (epoch {table.at[i, 'epochs']} of "
                                       f"{budgets[table.at[i, 'method']]})")
        if complete.empty:
            continue
        if len(rows) == 1:
            table.at[complete.index[0], "decision"] = "only setting"
            continue
        top = complete["val_acc"].max()
        # means of accuracies in steps of 0.02 points tie: exact up to float rounding
        tied = complete.index[(top - complete["val_acc"]).abs() < 1e-9]
        best = tied[0]
        for i in complete.index.difference(tied):
            gap = top - complete.at[i, "val_acc"]
            undecided = gap <= margin and min(complete.at[i, "seeds"],
                                              complete.loc[tied, "seeds"].min()) < 2
            table.at[i, "decision"] = (f"within {gap:.2f} of the best: decide on a second seed"
                                       if undecided else "below")
        if len(tied) > 1:
            table.loc[tied, "decision"] = "tied at the best: not decided"
        elif (table.loc[complete.index, "decision"].str.startswith("within")).any():
            table.at[best, "decision"] = "best so far: decide on a second seed"
        elif len(complete) < len(rows):
            waiting = len(rows) - len(complete)
            table.at[best, "decision"] = (
                f"chosen among the finished ({waiting} setting{'s' * (waiting > 1)} "
                f"unfinished: still training, or stopped)")
        else:
            table.at[best, "decision"] = "chosen"
    table["decision"] += table["unfinished"]
    order = table["variant"].map(variant_rank)
    table = table.assign(rank=order).sort_values(["rank", "val_acc"], ascending=[True, False],
                                                 kind="stable")
    table["val_acc"] = table["val_acc"].round(2)
    return table[["method", "setting", "seeds", "val_acc", "epochs", "minutes", "decision"]
                 ].reset_index(drop=True)


# How decisions()' numbers print: accuracy to the hundredth, as everywhere; minutes to the tenth.
SHOWN = {"val_acc": ".2f", "minutes": ".1f"}


def without_seed(run):
    """A sweep's run name without its seed: "crd_w0.2_seed1" -> "crd_w0.2"."""
    return re.sub(r"_seed\d+$", "", run)


def add_records(runs, records, source):
    """`runs` with the rows of `records` (run, seed, val_acc, epochs: a seed run elsewhere,
    whose records are not at hand) added, each as the recipe of the run of the same name but
    for its `_seed<N>` ending (a record with no such run is left out, with a note); minutes
    are left empty, so they stay this folder's own."""
    missing = {"run", "seed", "val_acc", "epochs"} - set(records.columns)
    if missing:
        raise cli.UserError(f"{source}: no column {', '.join(sorted(missing))}")
    variants = dict(zip(runs["run"].map(without_seed), runs["variant"]))
    names = records["run"].map(without_seed)
    matched = names.isin(variants)
    if not matched.all():  # e.g. a second seed not run yet: say so, don't stop
        print(f"note: {source}: no run of the same name (but the seed) for "
              f"{', '.join(records['run'][~matched])}; left out", file=sys.stderr)
    added = records[matched].assign(variant=names[matched].map(variants), minutes=float("nan"))
    return pd.concat([runs, added[["run", "variant", "seed", "val_acc", "epochs", "minutes"]]],
                     ignore_index=True)


def main():
    parser = cli.parser(__doc__)
    parser.add_argument("folder", help="the selection sweep's folder (runs/select)")
    parser.add_argument("--margin", type=float, default=MARGIN,
                        help=f"points of validation accuracy within which a second seed "
                             f"decides (default: {MARGIN})")
    parser.add_argument("--across", action="store_true",
                        help="one choice among every recipe, whatever its method (the best "
                             "student: experiments/grids/select-e200.toml)")
    parser.add_argument("--records", type=Path,
                        help="a CSV (run, seed, val_acc, epochs) of runs made elsewhere whose "
                             "records are not at hand, e.g. a first seed on another machine; "
                             "each joins the folder's run of the same name but the seed")
    args = parser.parse_args()
    runs = run_table([args.folder])
    if runs.empty:
        raise cli.UserError(f"no run records (*.metrics.csv) in {args.folder}")
    if args.records:
        runs = add_records(runs, pd.read_csv(args.records), args.records)
    table = decisions(runs, args.margin, args.across)
    write_text(Path(args.folder) / "selection.csv", table.to_csv(index=False))
    also = f" and {args.records}" if args.records else ""
    print(f"Validation accuracy (%) at the last epoch, mean over the seeds run; "
          f"{args.folder}{also}; the test set is not read.\n")
    print(markdown(table, SHOWN))


if __name__ == "__main__":
    cli.run_cli(main)
