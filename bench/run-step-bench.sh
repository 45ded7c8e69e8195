#!/bin/bash
# Our training step alone on the GPU machine (no PyTorch): random-weight GPT-2 124M and
# SmolLM2-135M, 8 x 256, LoRA r=8; ms/step early and late in the run, per-kernel GPU times.
#   here:         bash ../shared/gpu/pack.sh && node scripts/node-run.mjs --bundle-only bench/dist bench/step-bench.ts
#   GPU machine:  bash bench/run-step-bench.sh [STEPS] [extra step-bench flags...]   (device tool, carry .gpu bench/dist)
set -uo pipefail
OUT=${OUT:-/tmp/bench-out}
STEPS=${1:-60}
shift || true
mkdir -p "$OUT" /tmp/bench
[ -d /tmp/bench/gpt2-124M ] || python3 scripts/goldens/make_random_model.py --arch gpt2-small --out /tmp/bench/gpt2-124M --tokenizer-from test/fixtures/tiny-gpt2 >/dev/null 2>&1
[ -d /tmp/bench/smollm2-135M ] || python3 scripts/goldens/make_random_model.py --arch smollm2-135m --out /tmp/bench/smollm2-135M --tokenizer-from test/fixtures/tiny-gpt2 >/dev/null 2>&1
for m in "gpt2-124M c_attn" "smollm2-135M q_proj,v_proj"; do
  set -- $m "$@"
  name=$1 targets=$2; shift 2
  for mm in ${MATMUL:-auto}; do
    bash .gpu/boot.sh node bench/dist/step-bench.mjs --model /tmp/bench/$name --targets $targets --steps "$STEPS" --matmul $mm --json "$OUT/step-$name-$mm.json" "$@" 2>&1 \
      | grep -v "^Warning\|While initializing\|    at \|^$"
  done
done
