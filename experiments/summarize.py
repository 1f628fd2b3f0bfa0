"""Summarise finished runs from their records: one row per run (its last epoch, and its test
accuracy where the run got that far), then the mean ± std over seeds of each variant.

    python experiments/summarize.py checkpoints            # the pipeline's runs
    python experiments/summarize.py runs/probe_student     # a probe (compare on val_acc)
"""
import json
import sys
from pathlib import Path

import pandas as pd


def run_table(folders):
    rows = []
    for folder in folders:
        for metrics in sorted(Path(folder).glob("*.metrics.csv")):
            stem = str(metrics)[:-len(".metrics.csv")]
            config = json.loads(Path(f"{stem}.config.json").read_text())
            history = pd.read_csv(metrics)
            last = history.iloc[-1]
            test = Path(f"{stem}.test.json")
            rows.append({
                "run": Path(stem).name, "model": config["model"]["name"],
                "variant": config.get("loss", "ce"),
                "widths": " ".join(map(str, config["model"]["arch_args"]["widths"])),
                "images": config["train_subset"] or 45000, "epochs": int(last["epoch"]),
                "batch": config["batch_size"], "lr": config["lr"], "wd": config["weight_decay"],
                # T and alpha mean nothing to a run without a teacher
                "T": config.get("temperature") if config.get("loss", "ce") != "ce" else None,
                "alpha": config.get("alpha") if config.get("loss") == "kd+ce" else None,
                "seed": config["seed"],
                "val_acc": round(last["val_acc"], 2), "val_loss": round(last["val_loss"], 4),
                "test_acc": json.loads(test.read_text())["test_acc"] if test.is_file() else None,
                "minutes": round(history["epoch_seconds"].sum() / 60, 1),
                "img/s": round(history["images_per_second"].median())})
    return pd.DataFrame(rows)


def seed_table(runs):
    """Mean ± std (sample std, ddof=1) of test accuracy over the seeds of each variant."""
    tested = runs.dropna(subset=["test_acc"])
    keys = ["model", "variant", "widths", "epochs", "T", "alpha"]
    table = tested.groupby(keys, dropna=False)["test_acc"].agg(["mean", "std", "count"])
    table = table.reset_index()
    table["test_acc"] = [f"{m:.2f} ± {s:.2f}" if n > 1 else f"{m:.2f}"
                         for m, s, n in zip(table["mean"], table["std"], table["count"])]
    return table.rename(columns={"count": "seeds"})[keys + ["seeds", "test_acc"]]


if __name__ == "__main__":
    runs = run_table(sys.argv[1:] or ["checkpoints"])
    if runs.empty:
        sys.exit("no run records (*.metrics.csv) found")
    unused = [c for c in ("T", "alpha") if runs[c].isna().all()]
    print(runs.drop(columns=unused).to_string(index=False))
    if runs["test_acc"].notna().any():
        print("\n" + seed_table(runs).drop(columns=unused).to_string(index=False))
