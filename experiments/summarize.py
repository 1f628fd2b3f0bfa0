"""Summarise finished runs from their records: one row per run (its last epoch, and its test
accuracy where the run got that far), then the mean ± std over seeds of each variant.

    python experiments/summarize.py checkpoints            # the pipeline's runs
    python experiments/summarize.py runs/probe_student     # a probe (compare on val_acc)
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from kd.results import run_table, seed_table  # noqa: E402

if __name__ == "__main__":
    runs = run_table(sys.argv[1:] or ["checkpoints"])
    if runs.empty:
        sys.exit("no run records (*.metrics.csv) found")
    unused = [c for c in ("T", "alpha") if runs[c].isna().all()]
    print(runs.drop(columns=unused).to_string(index=False))
    if runs["test_acc"].notna().any():
        keys = ["model", "variant", "epochs"]
        print("\n" + seed_table(runs, keys).to_string(index=False))
