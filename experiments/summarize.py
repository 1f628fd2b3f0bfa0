"""Print one row per run (final epoch) from the run records in the given folders.

    python experiments/summarize.py runs/probe_teacher
"""
import json
import sys
from pathlib import Path

import pandas as pd


def summarize(folders):
    rows = []
    for folder in folders:
        for metrics in sorted(Path(folder).glob("*.metrics.csv")):
            stem = str(metrics)[:-len(".metrics.csv")]
            config = json.loads(Path(f"{stem}.config.json").read_text())
            last = pd.read_csv(metrics).iloc[-1]
            rows.append({"run": Path(stem).name, "model": config["model"]["name"],
                         "widths": config["model"]["arch_args"]["widths"],
                         "images": config["train_subset"] or 45000, "epochs": int(last["epoch"]),
                         "batch": config["batch_size"], "lr": config["lr"],
                         "wd": config["weight_decay"],
                         **{k: config[k] for k in ("loss", "temperature", "alpha") if k in config},
                         "val_acc": round(last["val_acc"], 2),
                         "val_loss": round(last["val_loss"], 4),
                         "img/s": round(pd.read_csv(metrics)["images_per_second"].median())})
    return pd.DataFrame(rows)


if __name__ == "__main__":
    print(summarize(sys.argv[1:] or ["runs"]).to_string(index=False))
