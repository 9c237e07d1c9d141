#!/usr/bin/env bash
# Run blocks of a grid's cells on a lent GPU machine before a deadline; the finished cells come back as
# $OUT/results.tgz (report.json, scores.json, curve.json; no model weights). On the device tool:
#   1. here: .venv/bin/python gpu/prepare_carry.py; commit, so the copied tree is that commit
#   2. run (carry ["carry"], timeout_s 600):
#      BEDKD_SOURCE_COMMIT=<HEAD> BUDGET_S=565 bash gpu/sweep.sh 'sst2/badnets/*' 'olid/*/none,olid/*/bedkd-fixed'
#   3. here: tar xzf <files_at>/results.tgz   (then `bedkd sweep --grid paper --status`)
# Each argument is one block: comma-separated --only patterns, run in order while time is left. A block cut off
# by the deadline loses only its unfinished cell (the sweep writes each cell atomically); rerunning resumes.
# Settable: WHEELS (default carry/wheels), GRID (default paper), RESULTS (default results), PYTHON, OUT and
# SWEEP_ARGS (say "--scale quick" for a dry run here; "--backend pool --workers 8" runs 8 cells at once on the
# one GPU, never two that may train the same victim; "--rerun-mismatched" reruns stored cells made with other
# settings, such as the full-scale cells whose clean pool overlapped the victim's training rows).
# benchmarks/bench_sweep_pool.py measures the pool's cells per minute against one worker in the same call.
# Rehearse here first, at quick scale, with wheels for this machine's Python and results outside the repository:
#   .venv/bin/python gpu/prepare_carry.py --datasets sst2/clean --python-version 3.11
#   OUT=/tmp/reh/out RESULTS=/tmp/reh/results BEDKD_CACHE=/tmp/reh/cache PYTHON=.venv/bin/python \
#     SWEEP_ARGS="--scale quick --backend pool --workers 2" bash gpu/sweep.sh 'sst2/badnets/none,sst2/badnets/rap'
# (then prepare the carry again without --python-version before the device call).
set -u
repo=$(cd "$(dirname "$0")/.." && pwd)
deadline=$(( $(date +%s) + ${BUDGET_S:-540} ))
grid=${GRID:-paper}
python=${PYTHON:-python3}
out=${OUT:?set OUT to the folder the results archive goes to}
results=${RESULTS:-$repo/results}
site=$(mktemp -d)
$python -m pip install -q --no-index --no-deps --no-compile --target "$site" ${WHEELS:-$repo/carry/wheels}/*.whl || exit 1
export PYTHONPATH=$repo:$site HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TQDM_DISABLE=1 \
    BEDKD_DATA=$repo/carry/data BEDKD_MINILM_DIR=$repo/carry/minilm-fp16
$python -c "import torch, transformers, datasets; print('torch', torch.__version__, 'transformers', transformers.__version__,
'datasets', datasets.__version__, 'device', torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'cpu')" || exit 1
for block in "$@"; do
    left=$(( deadline - $(date +%s) ))
    if [ "$left" -lt 30 ]; then echo "deadline: block '$block' not started"; continue; fi
    only=()
    IFS=, read -ra patterns <<< "$block"
    for pattern in "${patterns[@]}"; do only+=(--only "$pattern"); done
    echo "== block '$block' ($left s left)"
    timeout "$left" $python -m bedkd_core sweep --grid "$grid" --out "$results" "${only[@]}" ${SWEEP_ARGS:-}
done
$python -m bedkd_core sweep --grid "$grid" --out "$results" --status ${SWEEP_ARGS:-} | tail -n 60
tar czf "$out/results.tgz" --exclude=purified_model --exclude='.partial-*' --exclude='.sweep.lock' \
    -C "$results/.." "$(basename "$results")/$grid"
ls -la "$out"
