#!/usr/bin/env bash
# The length study on one machine (docs/results.md, "Training length"): evaluate.py on every
# student run of experiments/grids/length.toml in $CHECKPOINTS (default checkpoints/), then
# their rows into experiments/xeon_runs.csv. A run of the grid not finished yet is named,
# not evaluated.
#   python sweep.py experiments/grids/length.toml
#   bash experiments/length_xeon_eval.sh
#   python experiments/length_study.py            # reads experiments/xeon_runs.csv
# (The three-machine version before it, 2026-12-04 and 05, read this script's earlier
# output, the Xeon's share of it, which is kept as experiments/xeon_part_runs.csv.)
set -euo pipefail
C=${CHECKPOINTS:-checkpoints}
PYTHON=${PYTHON:-python}
# the grid's finished student runs (a run selected on validation alone, --skip-test, and
# copied here has no test record: finished all the same); sweep.py names the others
listed=$("$PYTHON" sweep.py experiments/grids/length.toml --folder "$C" --checkpoints --finished)
mapfile -t runs < <(grep -E '(^|/)student_' <<< "$listed" || true)
if (( ${#runs[@]} == 0 )); then
    echo "no student run of experiments/grids/length.toml in $C" >&2; exit 2
fi
"$PYTHON" evaluate.py "${runs[@]}" --plots-dir runs/xeon-eval
"$PYTHON" - <<'PY'
import pandas as pd
rows = pd.read_csv("runs/xeon-eval/results.csv")
rows[rows["model"] == "student"].to_csv("experiments/xeon_runs.csv", index=False)
print(f"{(rows['model'] == 'student').sum()} rows -> experiments/xeon_runs.csv; "
      "python experiments/length_study.py")
PY
