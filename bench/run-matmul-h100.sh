#!/bin/bash
# Matmul throughput at the benchmark models' shapes, ours against cuBLAS in the same run: the
# engine's kernels (bench/matmul-shapes.ts: the automatic choice, and what a program runs with its
# scratch, stream-K or split-K; the tensor-core products, with f16 operands and with f32 accuracy
# from hi + lo halves: tc-f32) and PyTorch's torch.matmul (bench/torch_matmul_shapes.py: f32 with
# TF32 off, the arithmetic the engine does; TF32 and bf16 for reference). Writes
# $OUT/h100-matmul-shapes.json, $OUT/h100-torch-matmul-shapes.json and prints the joined table.
#   here:         bash ../shared/gpu/pack.sh && node scripts/node-run.mjs --bundle-only bench/dist bench/matmul-shapes.ts
#   GPU machine:  bash bench/run-matmul-h100.sh   (device tool, carry .gpu bench/dist)
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/bench-out}
mkdir -p "$OUT"
bash .gpu/boot.sh node bench/dist/matmul-shapes.mjs --tensor-cores --tc-f32 --json "$OUT/h100-matmul-shapes.json" >/dev/null 2>&1 || { echo 'matmul-shapes failed'; exit 1; }
python3 bench/torch_matmul_shapes.py --json "$OUT/h100-torch-matmul-shapes.json" >/dev/null || { echo 'torch_matmul_shapes failed'; exit 1; }
python3 - "$OUT" <<'PY'
import json, sys
out = sys.argv[1]
ours = json.load(open(f'{out}/h100-matmul-shapes.json'))['rows']
torch = json.load(open(f'{out}/h100-torch-matmul-shapes.json'))['rows']
print(f"{'shape':<24} {'M':>5} {'N':>6} {'K':>6} {'ours auto':>10} {'ours prog':>10} {'cuBLAS f32':>11} {'ours/cuBLAS':>12} {'tf32':>6} {'bf16':>6} {'ours tc val':>11} {'ours tc grad':>12} {'tc-f32 val':>10} {'tc-f32 grad':>11} {'f32 b2b':>8} {'tc-f32 b2b':>10}")
for t in (r for r in torch if r['mode'] == 'f32'):
    mine = [r for r in ours if r['what'] == t['what']]
    if not mine:
        continue
    auto = next((r['tflops'] for r in mine if r['kernel'].startswith('auto')), float('nan'))
    prog = next((r['tflops'] for r in mine if r['kernel'].startswith('with scratch')), auto)
    other = {r['mode']: r['tflops'] for r in torch if r['what'] == t['what']}
    best = max(auto, prog)
    tc = {r['kernel']: r['tflops'] for r in mine if r['kernel'].startswith(('tc auto', 'tc-f32 auto')) and r.get('onTensorCores')}
    # back to back in one pass (timed as PyTorch's side): the f32 kernels' best of auto / with
    # scratch, and tc-f32 with its row scales
    b2b = lambda r: r.get('backToBackTflops', float('nan'))
    f32b = max([b2b(r) for r in mine if r['kernel'].startswith(('auto', 'with scratch'))] or [float('nan')])
    tcb = next((b2b(r) for r in mine if r['kernel'] == 'tc-f32 auto gradients' and r.get('onTensorCores')), float('nan'))
    print(f"{t['what']:<24} {t['M']:>5} {t['N']:>6} {t['K']:>6} {auto:10.1f} {prog:10.1f} {t['tflops']:11.1f} {best / t['tflops']:12.2f} {other['tf32']:6.1f} {other['bf16']:6.1f} {tc.get('tc auto values', float('nan')):11.1f} {tc.get('tc auto gradients', float('nan')):12.1f} {tc.get('tc-f32 auto values', float('nan')):10.1f} {tc.get('tc-f32 auto gradients', float('nan')):11.1f} {f32b:8.1f} {tcb:10.1f}")
PY
