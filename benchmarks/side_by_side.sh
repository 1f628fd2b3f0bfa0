#!/usr/bin/env bash
# Two student runs side by side on this CPU, as `sweep.py --runs-per-device 2` starts them:
# each with torch's default threads (one per core: the runs fight over the cores) against
# each with OMP_NUM_THREADS = cores / 2 (what the sweep now gives them), and one run alone
# with the default threads (`--runs-per-device 1`), in interleaved rounds; prints each
# run's images/s (its last epoch), the median per run and the machine's total (runs at once
# x the median). An idle machine only.
#
#   bash benchmarks/side_by_side.sh DATA [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/.."
data=$1 rounds=${2:-3}
PYTHON=${PYTHON:-.venv/bin/python}
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
shared=$($PYTHON -c "import torch; print(max(1, torch.get_num_threads() // 2))")
for round in $(seq "$rounds"); do
  for mode in default shared alone; do
    seeds="0 1"
    [ $mode = alone ] && seeds=0
    for seed in $seeds; do
      ( [ $mode = shared ] && export OMP_NUM_THREADS=$shared
        TQDM_DISABLE=1 $PYTHON train_student.py --loss ce --epochs 2 --train-subset 8000 \
          --data-root "$data" --device cpu --precision fp32 --skip-test --ema-decay 0 \
          --seed $seed --out "$out/${mode}_${round}_$seed.pt" --plots-dir "$out" \
          > "$out/${mode}_${round}_$seed.log" 2>&1 ) &
    done
    wait
  done
done
$PYTHON - "$out" "$shared" <<'PY'
import sys
from pathlib import Path

import pandas as pd

MODES = {"default": ("2 at once, default threads", 2),
         "shared": (f"2 at once, {sys.argv[2]} thread(s) each", 2),
         "alone": ("1 alone, default threads", 1)}
rows = [{"mode": MODES[p.name.split("_")[0]][0], "run": p.name.removesuffix(".metrics.csv"),
         "images/s": pd.read_csv(p)["images_per_second"].iloc[-1]}
        for p in sorted(Path(sys.argv[1]).glob("*.metrics.csv"))]
table = pd.DataFrame(rows)
print(table.to_string(index=False))
summary = table.groupby("mode", sort=False)["images/s"].median().rename("median per run")
at_once = {label: n for label, n in MODES.values()}
summary = summary.to_frame().assign(
    **{"machine total": lambda t: t["median per run"] * t.index.map(at_once)})
print("\n" + summary.round(0).to_string())
PY
