#!/usr/bin/env bash
# The GPU check in one call, for a machine with a GPU and torch already installed, no network
# and no virtual environment: the `cuda` tests, the start-up of a training process by stage,
# one seed of the whole pipeline on the full data with the scripts called directly,
# evaluate.py, and the benchmark.
#
#   bash benchmarks/gpu_check.sh DATA OUT_DIR
#
# DATA is a CIFAR-10 root (torchvision or ImageFolder layout) or a .tar.gz of one, unpacked
# into a temporary folder. OUT_DIR receives two files: gpu_check-<date>-<parts>.tar.gz,
# everything (the folder check/: gpu.txt with device and versions, tests.log, <stage>.log
# for every stage, timings.tsv with seconds per stage and the start-up's parts, results.md
# and results.csv from evaluate.py, the runs' config/metrics/test records, the figures,
# benchmark.md, summary.md), and summary.md, which is also printed at the end (device,
# torch, minutes per stage, images/s and peak memory per run, test accuracies beside the
# CPU's seeds from benchmarks/cpu_reference.csv). Only letters, digits, '.', '_' and '-' in
# those names.
# Until the end the files are in OUT_DIR/check/; a TERM (a time limit) packs them as the end
# does, and a KILL leaves them there.
# Checkpoints stay in a temporary folder, removed at the end, unless CHECKPOINTS names a
# folder to keep them in (later runs on the same machine distil from its teacher). Every
# stage runs even if one before it failed;
# the exit status says whether all passed.
#
# Environment: PYTHON (default python3), DEVICE (default cuda), FLAGS added to every
# training command (FLAGS=--dry-run: a smoke run of this script), BENCH_FLAGS added to the
# benchmark's (default --profile), STARTUP_FLAGS to benchmarks/startup.py's, PARTS: which
# parts to run, in that order (default "tests pipeline benchmark"; two calls, PARTS=pipeline
# and then PARTS="benchmark tests", split a check that a machine's time limit cuts short).
set -uo pipefail
export LC_ALL=C  # a decimal point in $EPOCHREALTIME
if [ $# -ne 2 ]; then
  echo "usage: bash benchmarks/gpu_check.sh DATA OUT_DIR" >&2
  exit 2
fi
cd "$(dirname "$0")/.."
data=$1
PYTHON=${PYTHON:-python3}
DEVICE=${DEVICE:-cuda}
FLAGS=${FLAGS:-}
BENCH_FLAGS=${BENCH_FLAGS:---profile}
STARTUP_FLAGS=${STARTUP_FLAGS:-}
PARTS=${PARTS:-tests pipeline benchmark}
for part in $PARTS; do
  case $part in
    tests|pipeline|benchmark) ;;
    *) echo "PARTS: unknown part '$part' (the parts: tests pipeline benchmark)" >&2; exit 2 ;;
  esac
done
out=$(mkdir -p "$2" && cd "$2" && pwd)
check=$out/check
rm -rf "$check" && mkdir "$check" || exit 2
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# A cold decoded-image cache: the pipeline's time includes decoding, as on a first run.
# unbuffered: a stage killed at the time limit has written all it printed
export KD_CACHE_DIR=$work/cache TQDM_DISABLE=1 PYTHONUNBUFFERED=1
failed=()
check_start=$EPOCHREALTIME

if [[ $data == *.tar.gz ]]; then
  mkdir "$work/data" && tar xzf "$data" -C "$work/data" || exit 2
  data=$(find "$work/data" -mindepth 1 -maxdepth 1 -type d | head -1)
fi
{ nvidia-smi -L 2>&1 || true
  $PYTHON -c "import torch, torchvision, importlib.util as u
triton = getattr(__import__('triton'), '__version__', '?') if u.find_spec('triton') else 'none'
print('torch', torch.__version__, '| torchvision', torchvision.__version__, '| triton',
triton, '| CUDA', torch.version.cuda,
'|', torch.cuda.get_device_name() if torch.cuda.is_available() else 'no CUDA device')"
  git rev-parse HEAD 2>/dev/null || true; } > "$check/gpu.txt" 2>&1
printf 'stage\tseconds\n' > "$check/timings.tsv"

since() { awk -v start="$1" -v now="$EPOCHREALTIME" 'BEGIN { printf "%.1f", now - start }'; }

# stage NAME COMMAND...: run it, log to NAME.log (NAME with '+' as 'p': kd+ce -> kdpce), record
# its wall time and any failure
# (in the background, waited for: a TERM reaches the trap at once, not when the stage ends)
current=
stage() {
  local name=$1 start=$EPOCHREALTIME
  shift
  echo "== $name" >&2
  "$@" > "$check/${name//+/p}.log" 2>&1 &
  current=$!
  if ! wait "$current"; then
    failed+=("$name")
    echo "   FAILED, see $check/${name//+/p}.log" >&2
  fi
  current=
  printf '%s\t%s\n' "$name" "$(since "$start")" >> "$check/timings.tsv"
}

# The summary and one archive of everything, its name and the output folder's other names
# of safe letters only: at the end, or on a TERM (a time limit's first signal), so that a
# check cut short still brings back what it made, packed.
finish() {
  printf 'check\t%s\n' "$(since "$check_start")" >> "$check/timings.tsv"
  # the benchmark's table, of a run stopped by a TERM too (it keeps the rounds it finished)
  if [ -f "$check/benchmark.log" ]; then
    grep -v '^round ' "$check/benchmark.log" > "$check/benchmark.md"
  fi
  $PYTHON benchmarks/gpu_summary.py "$check" > "$check/summary.md" 2>&1 || failed+=(summary)
  cp "$check/summary.md" "$out/summary.md"
  archive=gpu_check-$(date -u +%Y%m%d-%H%M%S)-${PARTS// /-}.tar.gz
  tar czf "$out/$archive" -C "$out" check && rm -rf "$check"
  cat "$out/summary.md"
}
stopped() {  # the stage running gets the TERM too (it saves and stops), then the rest is packed
  echo "stopped (TERM): packing what was made" >&2
  if [ -n "$current" ]; then
    kill -TERM "$current" 2>/dev/null
    wait "$current"
  fi
  finish
  exit 143
}
trap stopped TERM

tests() {
  # -v: each test's outcome as it ends, so a check cut short still says which passed
  stage tests $PYTHON -m pytest -v -rfE -m cuda -p no:cacheprovider tests
}
pipeline() {
  # What each of the pipeline's processes pays before its steady steps, by part (imports,
  # the CUDA context, cuDNN's algorithm search), measured once in a process of its own.
  stage startup $PYTHON benchmarks/startup.py --device "$DEVICE" $STARTUP_FLAGS
  grep '^start-up: ' "$check/startup.log" >> "$check/timings.tsv"
  ck=${CHECKPOINTS:-$work/checkpoints}
  common=(--device "$DEVICE" --data-root "$data" --plots-dir "$check/plots" $FLAGS)
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
    --plots-dir "$check/plots"
  printf 'pipeline\t%s\n' "$(since "$pipeline_start")" >> "$check/timings.tsv"
  cp "$check/plots/results.md" "$check/plots/results.csv" "$check/" 2>/dev/null
  mkdir -p "$check/runs" && cp "$ck"/*.json "$ck"/*.csv "$check/runs/" 2>/dev/null
}
benchmark() {
  stage benchmark $PYTHON benchmarks/throughput.py --device "$DEVICE" --data-root "$data" \
    $BENCH_FLAGS
}

# in the order PARTS names them: the part a call is for first, where a time limit may cut
# the last one short (a benchmark cut short keeps only the rounds it finished)
for part in $PARTS; do
  $part
done
finish
if [ ${#failed[@]} -gt 0 ]; then
  echo "failed: ${failed[*]}" >&2
  exit 1
fi
echo "all stages passed; everything in $out/$archive" >&2
