#!/usr/bin/env bash
# The probes behind the defaults in models.py, train_teacher.py and train_student.py: short
# runs (4 epochs on a 20k-image subset, one seed) compared on the validation split.
#   CIFAR10_ROOT=../shared/data/cifar10-jpeg bash experiments/probes.sh teacher   # ~10 min
#   CIFAR10_ROOT=../shared/data/cifar10-jpeg bash experiments/probes.sh student   # ~9 min, needs checkpoints/teacher.pt
#   CIFAR10_ROOT=../shared/data/cifar10-jpeg bash experiments/probes.sh long-teacher  # ~29 min
#   CIFAR10_ROOT=../shared/data/cifar10-jpeg bash experiments/probes.sh ema-decay     # ~8 min
# long-teacher: the teacher trained 40 epochs on all the data (test number included), and a
# KD + CE student distilled from it: the probe (88.3% validation against 86.6% after 20
# epochs) that made 40 epochs the teacher's default (issue 6: can the teacher reach 88%?).
# Runs go to runs/probe_<which>/ (finished ones are skipped); a table of them is printed last.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
which=${1:?usage: probes.sh teacher|student|long-teacher|ema-decay}
out=runs/probe_$which
if [ "$which" = ema-decay ]; then
  # ema-decay: the EMA decay every script keeps, on the student trained alone (no teacher
  # needed), full data and default recipe, one seed; compare ema_val_acc (the raw weights
  # are the same in all three: the EMA only watches).
  for decay in 0.99 0.995 0.999; do
    [ -f "$out/ce_decay$decay.pt" ] || $PY train_student.py --loss ce --ema-decay $decay \
      --skip-test --out "$out/ce_decay$decay.pt" --plots-dir "$out"
  done
  exec $PY experiments/summarize.py "$out"
fi
if [ "$which" = long-teacher ]; then
  [ -f "$out/teacher.pt" ] || $PY train_teacher.py --epochs 40 --out "$out/teacher.pt" \
    --plots-dir "$out"
  [ -f "$out/student_kd+ce_seed0.pt" ] || $PY train_student.py --loss kd+ce \
    --teacher "$out/teacher.pt" --out "$out/student_kd+ce_seed0.pt" --plots-dir "$out"
  exec $PY experiments/summarize.py "$out"
fi
probe() {  # name, flags...
  local name=$1; shift
  [ -f "$out/$name.pt" ] || $PY "train_$which.py" --train-subset 20000 --epochs 4 \
    --skip-test --out "$out/$name.pt" --plots-dir "$out" "$@"
}
if [ "$which" = teacher ]; then
  probe w32_b256_lr0.2   --widths 32 64 128 256 --batch-size 256 --lr 0.2
  probe w32_b128_lr0.1   --widths 32 64 128 256 --batch-size 128 --lr 0.1
  probe w32_b256_lr0.4   --widths 32 64 128 256 --batch-size 256 --lr 0.4
  probe w32_b256_wd1e-4  --widths 32 64 128 256 --batch-size 256 --lr 0.2 --weight-decay 1e-4
  probe w48_b256_lr0.2   --widths 48 96 192 256 --batch-size 256 --lr 0.2
else
  # 1. widths, trained alone; 2. KD temperature and alpha at the chosen widths
  probe ce_w32-64   --loss ce --widths 32 64
  probe ce_w48-96   --loss ce --widths 48 96
  probe ce_w64-128  --loss ce --widths 64 128
  for t in 2 4 8; do
    for a in 0.5 0.9; do
      probe "kd+ce_T${t}_a${a}" --loss kd+ce --temperature $t --alpha $a
    done
  done
fi
$PY experiments/summarize.py "$out"
