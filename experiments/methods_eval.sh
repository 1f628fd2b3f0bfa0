#!/usr/bin/env bash
# The 3-seed methods table (docs/results.md, "Every method, 3 seeds, each seed's own
# teacher"): evaluate.py over experiments/grids/methods.toml's runs in two evaluations, so
# that each holds one setting per method and report.py's comparisons apply as they are:
# the settings chosen at the real budget, and the weights the 4-epoch proxy chose; then
# their rows, with a `table` column, into experiments/methods_xeon.csv for verdicts.py.
#   python sweep.py experiments/grids/methods.toml && bash experiments/methods_eval.sh
set -euo pipefail
C=${CHECKPOINTS:-checkpoints}
PYTHON=${PYTHON:-python}
chosen=("$C"/teacher.pt "$C"/teacher_seed1.pt "$C"/teacher_seed2.pt)
proxy=()
for s in 0 1 2; do
    for run in kd+ce kd ce dkd; do
        chosen+=("$C/student_${run}_seed$s.pt"); proxy+=("$C/student_${run}_seed$s.pt")
    done
    for run in kd+ce+ls_T2_kd9_ce0.1 fitnet_w10 at_w100 crd_w0.2 \
               reviewkd_w5_mid64 kd+mixup_T4; do
        chosen+=("$C/student_${run}_seed$s.pt")
    done
    for run in dist kd+ce+ls kd+ls dkd+ls; do proxy+=("$C/student_${run}_seed$s.pt"); done
done
"$PYTHON" evaluate.py "${chosen[@]}" --plots-dir runs/methods-eval
"$PYTHON" report.py --plots-dir runs/methods-eval
"$PYTHON" evaluate.py "${proxy[@]}" --plots-dir runs/methods-proxy-eval
"$PYTHON" report.py --plots-dir runs/methods-proxy-eval
"$PYTHON" - <<'PY'
import pandas as pd
tables = {"runs/methods-eval": "chosen at the real budget",
          "runs/methods-proxy-eval": "the 4-epoch proxy's weights"}
rows = pd.concat(pd.read_csv(f"{folder}/results.csv").assign(table=name)
                 for folder, name in tables.items())
rows.to_csv("experiments/methods_xeon.csv", index=False)
print(f"{len(rows)} rows -> experiments/methods_xeon.csv; python experiments/verdicts.py")
PY
