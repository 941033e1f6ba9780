#!/usr/bin/env bash
# The one prepared GPU check (docs/benchmarks.md): the XLIP/CLIP step at ViT-B/16 bf16 batch 64
# (time, FLOPs, MFU, breakdown; then xlip-sparse, clip-flip and train.compile, issue 21), mask generation with host syncs forbidden, and a short training
# run from a prepared 224 px cache with DataLoader workers (data_wait = the share of a step spent
# waiting for data). Run from the repository root with maskkit importable; OUT (optional) is
# where the logs go.
#
#     OUT=/tmp/gpu bash benchmarks/gpu_check.sh
set -euo pipefail
OUT=${OUT:-/tmp/maskkit-gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
python3 -c "import torch; print(torch.__version__, torch.cuda.get_device_name(0))" | tee "$OUT/device.txt"

python3 benchmarks/bench_step.py --device cuda --arch ViT-B-16 --batch 64 --bf16 --decoder-depth 8 --decoder-width 512 \
    --decoder-heads 16 --rounds 10 --breakdown 2>&1 | tee "$OUT/bench_step.txt"
# issue 21: the guided sparse mode, FLIP's patch dropout and torch.compile of the forward (MFU per row)
python3 benchmarks/bench_step.py --device cuda --arch ViT-B-16 --batch 64 --bf16 --decoder-depth 8 --decoder-width 512 \
    --decoder-heads 16 --rounds 10 --configs clip,clip+compile,xlip-feature,xlip-sparse,xlip-sparse+compile,clip-flip \
    2>&1 | tee "$OUT/bench_step_sparse.txt"

python3 benchmarks/bench_masks.py --device cuda --repeat 5 2>&1 | tee "$OUT/bench_masks.txt"

work=$(mktemp -d)
python3 -m maskkit.cli phantoms --out "$work/ph" --n 1024 --size 224 >/dev/null
python3 -m maskkit.cli prepare csv --option path="$work/ph/phantoms.csv" --out "$work/cache" --size 224 >/dev/null
python3 -m maskkit.cli run preset=xlip scale=paper data=csv data.path="$work/ph/phantoms.csv" data.cache="$work/cache" \
    train.steps=60 train.batch_size=64 train.precision=bf16 train.warmup_steps=20 train.log_every=10 data.num_workers=8 \
    runtime.out_dir="$work/runs" runtime.name=gpu "runtime.evaluations=[]" runtime.progress=false 2>&1 | tail -5 | tee "$OUT/run.txt"
cp "$work/runs/gpu/metrics.jsonl" "$OUT/metrics.jsonl"
python3 - "$OUT/metrics.jsonl" <<'EOF' | tee -a "$OUT/run.txt"
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
late = rows[1:]  # the first window holds start-up
print("samples/s per window:", [round(r["samples_per_s"]) for r in rows])
print("data_wait share of the step (after start-up):", [round(r["data_wait"], 4) for r in late])
EOF
