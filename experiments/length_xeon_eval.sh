#!/usr/bin/env bash
# The length study on one machine (docs/results.md, "Training length"): evaluate.py on every
# student run of experiments/grids/length.toml in $CHECKPOINTS (default checkpoints/), then
# their rows into experiments/xeon_runs.csv, which experiments/length_study.py reads by
# default. A run of the grid not there yet is named, not evaluated.
#   python sweep.py experiments/grids/length.toml
#   bash experiments/length_xeon_eval.sh && python experiments/length_study.py
# (The three-machine study before it, 2026-12-04 and 05, read this script's earlier output,
# the Xeon's share of it, which is kept as experiments/xeon_part_runs.csv.)
set -euo pipefail
C=${CHECKPOINTS:-checkpoints}
PYTHON=${PYTHON:-python}
listed=$("$PYTHON" sweep.py experiments/grids/length.toml --folder "$C" --checkpoints)
runs=()
while read -r checkpoint; do
    case $(basename "$checkpoint") in
        student_*) if [[ -e $checkpoint ]]; then runs+=("$checkpoint")
                   else echo "not trained yet: $checkpoint" >&2; fi ;;
    esac
done <<< "$listed"
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
