"""Summarise finished runs from their records: one row per run (its last epoch, and its test
accuracy where the run got that far), then the mean ± std over seeds of each variant.

    python experiments/summarize.py checkpoints            # the pipeline's runs
    python experiments/summarize.py runs/probe_student     # a probe (compare on val_acc)
"""
import json
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from records import test_record_matches  # noqa: E402
from results import recipe_labels, run_variant, seed_table  # noqa: E402


def run_table(folders):
    rows, configs = [], []
    for folder in folders:
        for metrics in sorted(Path(folder).glob("*.metrics.csv")):
            stem = str(metrics)[:-len(".metrics.csv")]
            config = json.loads(Path(f"{stem}.config.json").read_text())
            history = pd.read_csv(metrics)
            last = history.iloc[-1]
            # Only a test record of this very run and epoch counts.
            test = (json.loads(Path(f"{stem}.test.json").read_text())
                    if test_record_matches(f"{stem}.test.json", config.get("run_id"),
                                           int(last["epoch"])) else {})
            variant = run_variant(config)
            row = {
                "run": Path(stem).name, "model": config["model"]["name"], "variant": variant,
                "widths": " ".join(map(str, config["model"]["arch_args"]["widths"])),
                "images": config["train_subset"] or 45000, "epochs": int(last["epoch"]),
                "batch": config["batch_size"], "lr": config["lr"], "wd": config["weight_decay"],
                # T and alpha mean nothing to a run without a teacher
                "T": config.get("temperature") if variant != "ce" else None,
                "alpha": config.get("alpha") if variant not in ("ce", "kd") else None,
                "seed": config["seed"],
                "val_acc": round(last["val_acc"], 2), "val_loss": round(last["val_loss"], 4),
                "test_acc": test.get("test_acc"),
                "minutes": round(history["epoch_seconds"].sum() / 60, 1),
                "img/s": round(history["images_per_second"].median())}
            rows.append(row)
            configs.append(config)
            if "ema_val_acc" in history:  # the EMA model of the same run, as a row of its own
                rows.append({**row, "run": row["run"] + " (EMA)",
                             "variant": run_variant(config, ema=True),
                             "val_acc": round(last["ema_val_acc"], 2),
                             "val_loss": round(last["ema_val_loss"], 4),
                             "test_acc": test.get("ema_test_acc")})
                configs.append(config)
    runs = pd.DataFrame(rows)
    # Runs that differ in anything but the seed are separate variants, named by what differs.
    runs["variant"] = recipe_labels(list(zip(runs["variant"], configs)))
    return runs


if __name__ == "__main__":
    runs = run_table(sys.argv[1:] or ["checkpoints"])
    if runs.empty:
        sys.exit("no run records (*.metrics.csv) found")
    unused = [c for c in ("T", "alpha") if runs[c].isna().all()]
    print(runs.drop(columns=unused).to_string(index=False))
    if runs["test_acc"].notna().any():
        keys = ["model", "variant", "epochs"]
        print("\n" + seed_table(runs, keys).to_string(index=False))
