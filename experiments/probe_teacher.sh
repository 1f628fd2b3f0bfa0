#!/usr/bin/env bash
# The teacher probe behind the defaults in models.py and train_teacher.py: 4 epochs on a
# 20k-image subset, one seed, compared on the validation split. ~10 minutes on 2 CPU cores.
#   CIFAR10_ROOT=../shared/data/cifar10-jpeg bash experiments/probe_teacher.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
out=runs/probe_teacher
probe() {  # name, flags...
  local name=$1; shift
  [ -f "$out/$name.pt" ] || $PY train_teacher.py --train-subset 20000 --epochs 4 \
    --out "$out/$name.pt" --plots-dir "$out" "$@"
}
probe w32_b256_lr0.2   --widths 32 64 128 256 --batch-size 256 --lr 0.2
probe w32_b128_lr0.1   --widths 32 64 128 256 --batch-size 128 --lr 0.1
probe w32_b256_lr0.4   --widths 32 64 128 256 --batch-size 256 --lr 0.4
probe w32_b256_wd1e-4  --widths 32 64 128 256 --batch-size 256 --lr 0.2 --weight-decay 1e-4
probe w48_b256_lr0.2   --widths 48 96 192 256 --batch-size 256 --lr 0.2
$PY experiments/summarize.py "$out"
