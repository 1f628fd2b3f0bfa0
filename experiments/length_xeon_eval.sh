#!/usr/bin/env bash
# The length study's runs on the 2-core Intel Xeon (docs/results.md, "Training length"):
# evaluate.py on them, then their student rows into experiments/xeon_runs.csv, which
# experiments/length_study.py reads beside the H200's and the Zen 1's tables.
#   python sweep.py experiments/grids/length.toml --seeds 1 2 --only ...   (docs/results.md)
#   python sweep.py experiments/grids/length.toml --only 'student_crd_w0.2_e96_seed*' 'student_dkd*'
#   bash experiments/length_xeon_eval.sh && python experiments/length_study.py
set -euo pipefail
C=${CHECKPOINTS:-checkpoints}
PYTHON=${PYTHON:-python}
# every seed of CRD at 96 epochs and of DKD; of the rest seeds 1 and 2 (seed 0's are the H200's)
runs=("$C"/student_crd_w0.2_e96_seed[012].pt
      "$C"/student_dkd_beta8_clip5{,_e36,_e96,_warm8_e96}_seed[012].pt
      "$C"/student_dkd{,_beta0.5_e36,_beta0.5_e96}_seed[012].pt)
for s in 1 2; do
    for run in kd_e36 kd+ce_e36 kd_e96 kd+ce_e96 kd+mixup_T4_e36 kd+mixup_T4_e96 crd_w0.2_e36 \
               ce_e96; do
        runs+=("$C/student_${run}_seed$s.pt")
    done
done
"$PYTHON" evaluate.py "${runs[@]}" --plots-dir runs/xeon-eval
"$PYTHON" - <<'PY'
import pandas as pd
rows = pd.read_csv("runs/xeon-eval/results.csv")
rows[rows["model"] == "student"].to_csv("experiments/xeon_runs.csv", index=False)
print(f"{(rows['model'] == 'student').sum()} rows -> experiments/xeon_runs.csv; "
      "python experiments/length_study.py")
PY
