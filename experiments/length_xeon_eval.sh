#!/usr/bin/env bash
# The length study on one machine (docs/results.md, "Training length"): evaluate.py on every
# student run of experiments/grids/length.toml in $CHECKPOINTS (default checkpoints/), then
# their rows into experiments/xeon_runs.csv. A run of the grid not finished yet is named,
# not evaluated.
#   python sweep.py experiments/grids/length.toml
#   bash experiments/length_xeon_eval.sh
#   python experiments/length_study.py experiments/xeon_runs.csv --figure plots/length.png \
#       --beside experiments/h200_runs.csv experiments/zen1_runs.csv experiments/xeon_part_runs.csv
# (The three-machine study before it, 2026-12-04 and 05, read this script's earlier output,
# the Xeon's share of it, which is kept as experiments/xeon_part_runs.csv.)
set -euo pipefail
C=${CHECKPOINTS:-checkpoints}
PYTHON=${PYTHON:-python}
listed=$("$PYTHON" sweep.py experiments/grids/length.toml --folder "$C" --checkpoints)
# a finished run's metrics reach the epochs its config plans (a run selected on validation
# alone, --skip-test, has no test record)
mapfile -t runs < <("$PYTHON" - "$listed" <<'PY'
import json, sys
from pathlib import Path
import pandas as pd
for checkpoint in sys.argv[1].split():
    path = Path(checkpoint)
    if not path.name.startswith("student_"):
        continue
    config, metrics = path.with_suffix(".config.json"), path.with_suffix(".metrics.csv")
    done = (path.exists() and config.exists() and metrics.exists() and
            pd.read_csv(metrics)["epoch"].max() >= json.loads(config.read_text())["epochs"])
    print(checkpoint) if done else print(f"not finished yet: {checkpoint}", file=sys.stderr)
PY
)
if (( ${#runs[@]} == 0 )); then
    echo "no student run of experiments/grids/length.toml in $C" >&2; exit 2
fi
"$PYTHON" evaluate.py "${runs[@]}" --plots-dir runs/xeon-eval
"$PYTHON" - <<'PY'
import pandas as pd
rows = pd.read_csv("runs/xeon-eval/results.csv")
rows[rows["model"] == "student"].to_csv("experiments/xeon_runs.csv", index=False)
print(f"{(rows['model'] == 'student').sum()} rows -> experiments/xeon_runs.csv; "
      "python experiments/length_study.py experiments/xeon_runs.csv")
PY
