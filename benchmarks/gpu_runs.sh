#!/usr/bin/env bash
# The research runs on a machine lent for a fixed time, in one call: the grids given, as
# one sweep.py pool (in their order, each run starting once the runs it needs have
# finished) with N runs at a time on the GPU (--runs-per-device), all stopped cleanly at one
# deadline (--stop-after: each run keeps its last complete epoch), then evaluate.py on
# every finished run that reports a test accuracy, and one archive of the records and
# results in OUT_DIR, with each finished teacher exported beside it (no other checkpoints:
# what comes back from a lent machine is small).
#
#   bash benchmarks/gpu_runs.sh DATA OUT_DIR MINUTES GRID...
#
# DATA: a CIFAR-10 root or a .tar.gz of one. MINUTES: when to stop the sweep (evaluate.py
# and the archive come after). OUT_DIR receives gpu_runs-<date>.tar.gz (each grid's folder
# with its run records, sweep logs and copied grid, and evaluate.py's results.* of its
# finished runs), sweeps.log, the sweep's output, also printed, and <folder>-<teacher>.pt for
# each finished teacher (kd.checkpoints.export_finished: --teacher and evaluate.py take
# it; next to its records it counts as finished for sweep.py). Runs that did not finish
# are resumed by the same command on a machine that still has their checkpoints, and started
# again elsewhere.
#
# Environment: PYTHON (default python3), RUNS (runs at a time, default 8), DEVICE (default
# auto), FLAGS (added to every run, e.g. --dry-run for a smoke run), ONLY (sweep.py's
# --only: shell patterns of the run names to sweep, space-separated, e.g.
# ONLY="teacher *_e200_*" for the 200-epoch runs and the teacher they wait for), WHEELS (a
# folder of pure-Python wheels put on the import path: sweep.py needs submitit and its
# cloudpickle, which the lent GPU machine lacks; docs/gpu.md says how to fetch them).
# Without them it stops at once, in one line.
set -uo pipefail
export LC_ALL=C
if [ $# -lt 4 ]; then
  echo "usage: bash benchmarks/gpu_runs.sh DATA OUT_DIR MINUTES GRID..." >&2
  exit 2
fi
cd "$(dirname "$0")/.."
data=$1 minutes=$3
out=$(mkdir -p "$2" && cd "$2" && pwd)
shift 3
PYTHON=${PYTHON:-python3}
RUNS=${RUNS:-8}
FLAGS=${FLAGS:-}
DEVICE=${DEVICE:-auto}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
if [ -n "${WHEELS:-}" ]; then
  # A pure-Python wheel is a zip that Python imports from as it is (zipimport): no pip,
  # which a bare machine may lack, and nothing installed.
  wheels=$(cd "$WHEELS" && pwd) || exit 2
  for wheel in "$wheels"/*.whl; do
    [ -f "$wheel" ] && PYTHONPATH=$wheel${PYTHONPATH:+:$PYTHONPATH}
  done
  export PYTHONPATH
fi
if ! reason=$($PYTHON -c "import submitit" 2>&1); then
  echo "gpu_runs.sh: sweep.py cannot import submitit (${reason##*$'\n'}); give WHEELS=FOLDER" \
    "with the wheels of submitit and cloudpickle (docs/gpu.md)" >&2
  exit 2
fi
if [[ $data == *.tar.gz ]]; then
  mkdir "$work/data" && tar xzf "$data" -C "$work/data" || exit 2
  data=$(find "$work/data" -mindepth 1 -maxdepth 1 -type d | head -1)
fi
export CIFAR10_ROOT=$data TQDM_DISABLE=1 PYTHONUNBUFFERED=1
folders=()
for grid in "$@"; do
  folder=$($PYTHON -c "import sys, tomllib; print(tomllib.load(open(sys.argv[1], 'rb'))
.get('folder', ''))" "$grid") || exit 2
  folders+=("${folder:-runs/sweeps/$(basename "$grid" .toml)}")
done
# The records, logs and copied grids of every folder, and evaluate.py's tables: no
# checkpoints. Packed as soon as the sweep ends, before the teachers' export and
# evaluate.py (about 2 s a run on an H200), and on a TERM (a time limit's first signal), so
# that a call cut short still brings the records back; packed again at the end, whole.
archive=gpu_runs-$(date -u +%Y%m%d-%H%M%S).tar.gz
mkdir -p "$work/results"
pack() {  # written aside, then renamed: the archive in OUT_DIR is always whole
  tar czf "$out/$archive.part" --exclude='*.pt' --exclude='*.png' \
    --exclude='teacher_logits' "${folders[@]}" -C "$work" results 2>/dev/null
  mv "$out/$archive.part" "$out/$archive"
}
trap 'pack; exit 143' TERM
status=0
read -r -a only <<< "${ONLY:-}"  # split on spaces, never globbed: sweep.py matches them
# One pool: no slot waits for a grid to end, and a run waits only for the runs it needs.
$PYTHON sweep.py "$@" ${only[@]+--only "${only[@]}"} --runs-per-device "$RUNS" \
  --stop-after "$minutes" \
  --flags "--device $DEVICE $FLAGS" 2>&1 | tee "$out/sweeps.log"
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1
pack
# The finished teachers, exported without their training state (a third the size, within
# what comes back), so that their students can be trained and checked elsewhere.
$PYTHON - "$out" "${folders[@]}" <<'EOF' || status=1
import sys
from pathlib import Path

from kd.checkpoints import CheckpointError, export_finished, load_checkpoint

out = Path(sys.argv[1])
for folder in map(Path, dict.fromkeys(sys.argv[2:])):
    for path in sorted(folder.glob("*.pt")):
        try:
            if load_checkpoint(path)["model"]["name"] == "teacher":
                export_finished(path, out / f"{folder.name}-{path.name}")
                print(f"exported {path} -> {out / f'{folder.name}-{path.name}'}")
        except (CheckpointError, KeyError, TypeError):  # unfinished, or not a run
            continue
EOF
# evaluate.py on the finished runs that report a test accuracy (selection runs skip it: a
# run's test record is written once, after its last epoch)
finished=$($PYTHON - "${folders[@]}" <<'EOF'
import json
import sys
from pathlib import Path

import pandas as pd

from kd.records import record_paths, test_record_matches

for folder in dict.fromkeys(sys.argv[1:]):
    for checkpoint in sorted(Path(folder).glob("*.pt")):
        paths = record_paths(checkpoint)
        try:
            run_id = json.loads(paths["config"].read_text()).get("run_id")
            last = int(pd.read_csv(paths["metrics"])["epoch"].iloc[-1])
        except (OSError, ValueError, KeyError, IndexError):
            continue
        if test_record_matches(paths["test"], run_id, last):  # finished, and tested
            print(checkpoint)
EOF
)
if [ -n "$finished" ]; then
  # shellcheck disable=SC2086  # one checkpoint path per word
  $PYTHON evaluate.py $finished --device "$DEVICE" --plots-dir "$work/results" \
    > "$work/results/evaluate.log" 2>&1 || status=1
fi
pack
echo "records and results of $(echo "$finished" | grep -c . ) finished runs with a test: $out/$archive"
exit $status
