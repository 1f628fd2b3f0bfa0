#!/usr/bin/env bash
# The student probes behind the defaults in models.py and train_student.py, compared on the
# validation split after 4 epochs on a 20k-image subset (one seed):
#   1. widths, trained alone (cross-entropy);  2. KD temperature and alpha (needs the teacher).
#   CIFAR10_ROOT=../shared/data/cifar10-jpeg bash experiments/probe_student.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
out=runs/probe_student
probe() {  # name, flags...
  local name=$1; shift
  [ -f "$out/$name.pt" ] || $PY train_student.py --train-subset 20000 --epochs 4 \
    --out "$out/$name.pt" --plots-dir "$out" "$@"
}
probe ce_w32-64   --loss ce --widths 32 64
probe ce_w48-96   --loss ce --widths 48 96
probe ce_w64-128  --loss ce --widths 64 128
for t in 2 4 8; do
  for a in 0.5 0.9; do
    probe "kd+ce_T${t}_a${a}" --loss kd+ce --temperature $t --alpha $a
  done
done
$PY experiments/summarize.py "$out"
