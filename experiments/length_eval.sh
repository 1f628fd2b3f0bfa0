#!/usr/bin/env bash
# The length study's evaluation (docs/results.md, "Training length"): evaluate.py on every
# finished student run of experiments/grids/length.toml in $CHECKPOINTS (default
# checkpoints/) for the seeds $SEEDS (default: the grid's, 0 1 2), then their rows into $TABLE,
# which must be given: the study's tables are experiments/xeon_runs.csv (seeds 0-2, the
# Xeon's) and experiments/zen5_runs.csv (seeds 3 and 4), which length_study.py reads by
# default, so runs of another machine go into a table of their own. A run of the grid not
# finished yet is named, not evaluated.
#   python sweep.py experiments/grids/length.toml
#   TABLE=experiments/xeon_runs.csv bash experiments/length_eval.sh
#   SEEDS="3 4" TABLE=experiments/zen5_runs.csv bash experiments/length_eval.sh   # the Zen 5's
#   python experiments/length_study.py            # reads both tables
#   TABLE=runs/my_runs.csv bash experiments/length_eval.sh && \
#       python experiments/length_study.py runs/my_runs.csv --figure runs/length.png
# (The three-machine version before it, 2026-12-04 and 05, read this script's earlier
# output, the Xeon's share of it, which is kept as experiments/xeon_part_runs.csv.)
set -euo pipefail
C=${CHECKPOINTS:-checkpoints}
PYTHON=${PYTHON:-python}
if [[ -z "${TABLE:-}" ]]; then
    echo "error: set TABLE, the results table to write (experiments/xeon_runs.csv and" \
         "experiments/zen5_runs.csv are the study's; a new machine's runs go elsewhere)" >&2
    exit 2
fi
seeds=()
if [[ -n "${SEEDS:-}" ]]; then read -ra list <<< "$SEEDS"; seeds=(--seeds "${list[@]}"); fi
# the grid's finished student runs (a run selected on validation alone, --skip-test, and
# copied here has no test record: finished all the same); sweep.py names the others
listed=$("$PYTHON" sweep.py experiments/grids/length.toml --folder "$C" ${seeds[@]+"${seeds[@]}"} \
         --checkpoints --finished)
mapfile -t runs < <(grep -E '(^|/)student_[^/]*$' <<< "$listed" || true)
if (( ${#runs[@]} == 0 )); then
    echo "no finished student run of experiments/grids/length.toml in $C" >&2; exit 2
fi
eval_dir=runs/length-eval
"$PYTHON" evaluate.py "${runs[@]}" --plots-dir "$eval_dir"
"$PYTHON" - "$eval_dir/results.csv" "$TABLE" <<'PY'
import sys
import pandas as pd
source, out = sys.argv[1:]
rows = pd.read_csv(source)
rows[rows["model"] == "student"].to_csv(out, index=False)
print(f"{(rows['model'] == 'student').sum()} rows -> {out}")
PY
