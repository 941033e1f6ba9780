#!/usr/bin/env bash
# The sweeps of docs/results.md#budget-matched-linear on one GPU machine, several runs at once:
# 'seeds' (budget-matched rows x 5 seeds, zero-shot and linear probe), then 'fig7' and 'fig6'.
# Each sweep is resumable; whatever finished is packed into $OUT/sweeps.tgz (results.md,
# paired.md, results.csv, and every run's done.json and zeroshot.json).
#
#     OUT=/tmp/sweeps JOBS=8 bash benchmarks/gpu_sweeps.sh
set -uo pipefail
OUT=${OUT:-/tmp/maskkit-sweeps}
JOBS=${JOBS:-8}
WORK=${WORK:-$(mktemp -d)}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
sweep() {  # name, time limit (s), extra arguments
    local name=$1 limit=$2; shift 2
    local t0=$SECONDS
    timeout "$limit" python3 -m maskkit.cli sweep "$name" --jobs "$JOBS" --out "$WORK/$name" "$@" > "$WORK/$name.log" 2>&1
    echo "$name: exit $? after $((SECONDS - t0)) s; $(ls "$WORK/$name"/runs/*/done.json 2>/dev/null | wc -l) runs done" | tee -a "$OUT/summary.txt"
}
sweep seeds "${T_SEEDS:-170}"
sweep fig7 "${T_FIG7:-80}"
sweep fig6 "${T_FIG6:-130}"
(cd "$WORK" && tar czf "$OUT/sweeps.tgz" --exclude='checkpoints' --exclude='tensorboard' --exclude='metrics.jsonl' \
    --exclude='config.json' --exclude='environment.json' --exclude='splits' .)
tail -n 3 "$WORK"/*.log >> "$OUT/summary.txt"
