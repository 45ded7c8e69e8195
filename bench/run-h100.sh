#!/bin/bash
# Training-step benchmark on the GPU machine: our engine (bench/step-bench.ts: the Trainer the app
# and the CLI run) and PyTorch + PEFT (eager and sdpa attention, fp32 and bf16 autocast) on the same
# random-weight models, 8 x 256 tokens, LoRA r=8, AdamW, full steps. Ours runs STEPS steps (default
# 500) and reports the mean step time over steps 10-50 and over the last 50 (steady state), then
# per-kernel GPU times; PyTorch's rows also give its GPU time in kernels per step (torch.profiler:
# a step far longer than its kernels is bound by the host's Python and launches). Ours runs twice:
# with the frozen layers' products on tensor cores (--tensor-cores: f16 operands, f32 sums, the
# precision of PyTorch's autocast; the row's ours_* figures) and with every product in f32
# (ours_f32_*); then a third time on tensor cores with the frozen weights kept in f16 (--frozen
# f16: half their memory, the tensor cores take the halves as stored; ours_f16w_*), and a fourth
# with f32 kernels and f16 weights (ours_f32_f16w_*), and a fifth on tensor cores with f32 accuracy
# (tuning.tensorCoreF32: each operand as hi + lo halves, three products; ours_tcf32_*). Writes $OUT/h100.json (rows as bench/results/h100.json) and prints a table.
#   here:         bash ../shared/gpu/pack.sh && node scripts/node-run.mjs --bundle-only bench/dist bench/step-bench.ts
#   GPU machine:  bash bench/run-h100.sh [STEPS]   (device tool, carry .gpu bench/dist)
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/bench-out}
STEPS=${1:-500}
mkdir -p "$OUT" /tmp/bench
run_case() { # name arch targets
  python3 scripts/goldens/make_random_model.py --arch "$2" --out "/tmp/bench/$1" --tokenizer-from test/fixtures/tiny-gpt2 >/dev/null 2>&1 || return 1
  bash .gpu/boot.sh node bench/dist/step-bench.mjs --model "/tmp/bench/$1" --targets "$3" --steps "$STEPS" --batch 8 --seq 256 --rank 8 \
    --tensor-cores --json "$OUT/$1-ours.json" 2>&1 | grep -v "^Warning\|While initializing\|    at \|^$" | tee "/tmp/bench/$1-ours.txt"
  bash .gpu/boot.sh node bench/dist/step-bench.mjs --model "/tmp/bench/$1" --targets "$3" --steps "$STEPS" --batch 8 --seq 256 --rank 8 \
    --json "$OUT/$1-ours-f32.json" 2>&1 | grep -v "^Warning\|While initializing\|    at \|^$" | tee "/tmp/bench/$1-ours-f32.txt"
  bash .gpu/boot.sh node bench/dist/step-bench.mjs --model "/tmp/bench/$1" --targets "$3" --steps "$STEPS" --batch 8 --seq 256 --rank 8 \
    --tensor-cores --frozen f16 --json "$OUT/$1-ours-f16w.json" 2>&1 | grep -v "^Warning\|While initializing\|    at \|^$" | tee "/tmp/bench/$1-ours-f16w.txt"
  bash .gpu/boot.sh node bench/dist/step-bench.mjs --model "/tmp/bench/$1" --targets "$3" --steps "$STEPS" --batch 8 --seq 256 --rank 8 \
    --frozen f16 --json "$OUT/$1-ours-f32-f16w.json" 2>&1 | grep -v "^Warning\|While initializing\|    at \|^$" | tee "/tmp/bench/$1-ours-f32-f16w.txt"
  bash .gpu/boot.sh node bench/dist/step-bench.mjs --model "/tmp/bench/$1" --targets "$3" --steps "$STEPS" --batch 8 --seq 256 --rank 8 \
    --tensor-cores --tuning tensorCoreF32=true --json "$OUT/$1-ours-tcf32.json" 2>&1 | grep -v "^Warning\|While initializing\|    at \|^$" | tee "/tmp/bench/$1-ours-tcf32.txt"
  python3 bench/torch_lora_baseline.py --model "/tmp/bench/$1" --batch 8 --seq 256 --targets "$3" --steps 30 --kernel-time 2>/dev/null | grep '^{' > "/tmp/bench/$1-torch.jsonl"
}
run_case gpt2-124M gpt2-small c_attn
run_case smollm2-135M smollm2-135m q_proj,v_proj
python3 - "$OUT/h100.json" "$OUT" <<'PY'
import json, re, sys
rows = []
for name in ('gpt2-124M', 'smollm2-135M'):
    ours = json.load(open(f'{sys.argv[2]}/{name}-ours.json'))
    windows = list(ours['windows'].values())
    ms = windows[0]  # steps 10-50
    steady = windows[-1]  # the last 50 steps
    ours_gib = ours['gpuBytes'] / 2**30
    torch_rows = [json.loads(l) for l in open(f'/tmp/bench/{name}-torch.jsonl')]
    best = max(torch_rows, key=lambda r: r['tokens_per_s'])
    ours_tps = 8 * 256 / ms * 1000
    f32 = json.load(open(f'{sys.argv[2]}/{name}-ours-f32.json'))
    f32_windows = list(f32['windows'].values())
    f32_tps = 8 * 256 / f32_windows[0] * 1000
    f16w = json.load(open(f'{sys.argv[2]}/{name}-ours-f16w.json'))
    f16w_windows = list(f16w['windows'].values())
    f16w_tps = 8 * 256 / f16w_windows[0] * 1000
    f32h = json.load(open(f'{sys.argv[2]}/{name}-ours-f32-f16w.json'))
    f32h_windows = list(f32h['windows'].values())
    f32h_tps = 8 * 256 / f32h_windows[0] * 1000
    tcf = json.load(open(f'{sys.argv[2]}/{name}-ours-tcf32.json'))
    tcf_windows = list(tcf['windows'].values())
    tcf_tps = 8 * 256 / tcf_windows[0] * 1000
    rows.append({"model": name, "ours_config": "tensor cores (f16 operands, f32 sums)" if ours.get('tensorCores') else "f32",
                 "ours_ms_per_step": round(ms, 2), "ours_tokens_per_s": round(ours_tps),
                 "ours_steady_ms_per_step": round(steady, 2), "ours_steady_window": list(ours['windows'])[-1],
                 "ours_steady_vs_early": round(ms / steady, 4), "torch_best_tokens_per_s": best['tokens_per_s'],
                 "torch_best_config": f"{best['attn']} {best['dtype']}", "ratio": round(ours_tps / best['tokens_per_s'], 3),
                 "ours_peak_gib": round(ours_gib, 3), "torch_peak_gib": best['peak_gib'],
                 "ours_f32_ms_per_step": round(f32_windows[0], 2), "ours_f32_steady_ms_per_step": round(f32_windows[-1], 2),
                 "ours_f32_tokens_per_s": round(f32_tps), "ratio_f32": round(f32_tps / best['tokens_per_s'], 3),
                 "ours_f32_peak_gib": round(f32['gpuBytes'] / 2**30, 3),
                 "ours_f16w_config": "tensor cores, frozen weights in f16",
                 "ours_f16w_ms_per_step": round(f16w_windows[0], 2), "ours_f16w_steady_ms_per_step": round(f16w_windows[-1], 2),
                 "ours_f16w_tokens_per_s": round(f16w_tps), "ratio_f16w": round(f16w_tps / best['tokens_per_s'], 3),
                 "ours_f16w_peak_gib": round(f16w['gpuBytes'] / 2**30, 3),
                 "ours_f32_f16w_config": "f32 kernels, frozen weights in f16",
                 "ours_f32_f16w_ms_per_step": round(f32h_windows[0], 2), "ours_f32_f16w_steady_ms_per_step": round(f32h_windows[-1], 2),
                 "ours_f32_f16w_tokens_per_s": round(f32h_tps), "ratio_f32_f16w": round(f32h_tps / best['tokens_per_s'], 3),
                 "ours_f32_f16w_peak_gib": round(f32h['gpuBytes'] / 2**30, 3),
                 "ours_tcf32_config": "tensor cores with f32 accuracy (hi + lo halves)",
                 "ours_tcf32_ms_per_step": round(tcf_windows[0], 2), "ours_tcf32_steady_ms_per_step": round(tcf_windows[-1], 2),
                 "ours_tcf32_tokens_per_s": round(tcf_tps), "ratio_tcf32": round(tcf_tps / best['tokens_per_s'], 3),
                 "ours_tcf32_peak_gib": round(tcf['gpuBytes'] / 2**30, 3), "torch_all": torch_rows})
json.dump(rows, open(sys.argv[1], 'w'), indent=2)
print(f"{'model':14} {'ours ms':>8} {'late ms':>8} {'ours tok/s':>11} {'torch best':>11} {'config':>12} {'ratio':>6} {'ours GiB':>9} {'torch GiB':>9} {'f32 ms':>8} {'f32 late':>8} {'f32 ratio':>9}")
for r in rows:
    print(f"{r['model']:14} {r['ours_ms_per_step']:8.1f} {r['ours_steady_ms_per_step']:8.1f} {r['ours_tokens_per_s']:11,} {r['torch_best_tokens_per_s']:11,} {r['torch_best_config']:>12} {r['ratio']:6.3f} {r['ours_peak_gib']:9.2f} {r['torch_peak_gib']:9.2f} {r['ours_f32_ms_per_step']:8.1f} {r['ours_f32_steady_ms_per_step']:8.1f} {r['ratio_f32']:9.3f}")
    print(f"    ours: {r['ours_config']}; with the frozen weights in f16: {r['ours_f16w_ms_per_step']:.2f} ms/step (late {r['ours_f16w_steady_ms_per_step']:.2f}), ratio {r['ratio_f16w']:.3f}, {r['ours_f16w_peak_gib']:.2f} GiB")
    print(f"    f32 kernels with the frozen weights in f16: {r['ours_f32_f16w_ms_per_step']:.2f} ms/step (late {r['ours_f32_f16w_steady_ms_per_step']:.2f}), ratio {r['ratio_f32_f16w']:.3f}, {r['ours_f32_f16w_peak_gib']:.2f} GiB")
    print(f"    tensor cores with f32 accuracy: {r['ours_tcf32_ms_per_step']:.2f} ms/step (late {r['ours_tcf32_steady_ms_per_step']:.2f}), ratio {r['ratio_tcf32']:.3f}, {r['ours_tcf32_peak_gib']:.2f} GiB")
    for t in r['torch_all']:
        print(f"    torch {t['attn']:5} {t['dtype']:4}: {t['ms_per_step']:7.2f} ms/step ({t.get('kernel_ms_per_step', float('nan')):.2f} ms in GPU kernels), {t['tokens_per_s']:,} tok/s, peak {t['peak_gib']} GiB")
PY
