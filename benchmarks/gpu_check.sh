#!/usr/bin/env bash
# The GPU check in one call, for a machine with a GPU and torch already installed, no network
# and no virtual environment: the `cuda` tests, one seed of the whole pipeline on the full
# data with the scripts called directly, evaluate.py, and the benchmark.
#
#   bash benchmarks/gpu_check.sh DATA OUT_DIR
#
# DATA is a CIFAR-10 root (torchvision or ImageFolder layout) or a .tar.gz of one, unpacked
# into a temporary folder. OUT_DIR receives gpu.txt (device and versions), tests.log,
# <stage>.log for every stage, timings.tsv (seconds per stage; the pipeline's total
# includes decoding the images), results.md and results.csv (evaluate.py), the runs'
# config/metrics/test records, the figures, and benchmark.md. Checkpoints stay in a
# temporary folder. Every stage runs even if one before it failed; the exit status says
# whether all passed.
#
# Environment: PYTHON (default python3), DEVICE (default cuda), FLAGS added to every
# training command (FLAGS=--dry-run: a smoke run of this script), BENCH_FLAGS added to the
# benchmark's (default --profile).
set -uo pipefail
export LC_ALL=C  # a decimal point in $EPOCHREALTIME
if [ $# -ne 2 ]; then
  echo "usage: bash benchmarks/gpu_check.sh DATA OUT_DIR" >&2
  exit 2
fi
cd "$(dirname "$0")/.."
data=$1
out=$(mkdir -p "$2" && cd "$2" && pwd)
PYTHON=${PYTHON:-python3}
DEVICE=${DEVICE:-cuda}
FLAGS=${FLAGS:-}
BENCH_FLAGS=${BENCH_FLAGS:---profile}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# A cold decoded-image cache: the pipeline's time includes decoding, as on a first run.
export KD_CACHE_DIR=$work/cache TQDM_DISABLE=1
failed=()

if [[ $data == *.tar.gz ]]; then
  mkdir "$work/data" && tar xzf "$data" -C "$work/data" || exit 2
  data=$(find "$work/data" -mindepth 1 -maxdepth 1 -type d | head -1)
fi
{ nvidia-smi -L 2>&1 || true
  $PYTHON -c "import torch; print('torch', torch.__version__, '| CUDA', torch.version.cuda,
'|', torch.cuda.get_device_name() if torch.cuda.is_available() else 'no CUDA device')"
  git rev-parse HEAD 2>/dev/null || true; } > "$out/gpu.txt" 2>&1
printf 'stage\tseconds\n' > "$out/timings.tsv"

since() { awk -v start="$1" -v now="$EPOCHREALTIME" 'BEGIN { printf "%.1f", now - start }'; }

# stage NAME COMMAND...: run it, log to NAME.log, record its wall time and any failure
stage() {
  local name=$1 start=$EPOCHREALTIME
  shift
  echo "== $name" >&2
  if ! "$@" > "$out/$name.log" 2>&1; then
    failed+=("$name")
    echo "   FAILED, see $out/$name.log" >&2
  fi
  printf '%s\t%s\n' "$name" "$(since "$start")" >> "$out/timings.tsv"
}

stage tests $PYTHON -m pytest -q -m cuda -p no:cacheprovider tests
ck=$work/checkpoints
common=(--device "$DEVICE" --data-root "$data" --plots-dir "$out/plots" $FLAGS)
pipeline_start=$EPOCHREALTIME
stage teacher $PYTHON train_teacher.py "${common[@]}" --out "$ck/teacher.pt"
for loss in kd+ce kd ce; do
  stage "student_$loss" $PYTHON train_student.py "${common[@]}" --loss "$loss" \
    --teacher "$ck/teacher.pt" --out "$ck/student_${loss}_seed0.pt"
done
stage ema_mean-teacher $PYTHON train_ema.py "${common[@]}" --out "$ck/ema_mean-teacher_seed0.pt"
stage ema_mean-teacher-no-ema $PYTHON train_ema.py "${common[@]}" --no-ema \
  --out "$ck/ema_mean-teacher-no-ema_seed0.pt"
stage ema_mean-teacher-no-averaging $PYTHON train_ema.py "${common[@]}" --ema-decay 0 \
  --out "$ck/ema_mean-teacher-no-averaging_seed0.pt"
stage evaluate $PYTHON evaluate.py "$ck"/*.pt --device "$DEVICE" --data-root "$data" \
  --plots-dir "$out/plots"
printf 'pipeline\t%s\n' "$(since "$pipeline_start")" >> "$out/timings.tsv"
cp "$out/plots/results.md" "$out/plots/results.csv" "$out/" 2>/dev/null
mkdir -p "$out/runs" && cp "$ck"/*.json "$ck"/*.csv "$out/runs/" 2>/dev/null
stage benchmark $PYTHON benchmarks/throughput.py --device "$DEVICE" --data-root "$data" \
  $BENCH_FLAGS
grep -v '^round ' "$out/benchmark.log" > "$out/benchmark.md"

cat "$out/timings.tsv" >&2
if [ ${#failed[@]} -gt 0 ]; then
  echo "failed: ${failed[*]}" >&2
  exit 1
fi
echo "all stages passed; results in $out" >&2
