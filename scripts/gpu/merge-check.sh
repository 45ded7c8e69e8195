#!/bin/bash
# Our merge (npm run merge) against PEFT's merge_and_unload on the GPU machine: trains a few steps
# of LoRA / DoRA on the tiny fixtures with our CLI, merges with our CLI, then
# scripts/goldens/check_merge.py loads both with transformers and compares every tensor and the logits.
#   here:         bash ../shared/gpu/pack.sh; node scripts/node-run.mjs --bundle-only bench/dist src/cli/train.ts;
#                 node scripts/node-run.mjs --bundle-only bench/dist src/cli/merge.ts
#   GPU machine:  bash scripts/gpu/merge-check.sh   (device tool, carry .gpu bench/dist)
set -uo pipefail
cd "$(dirname "$0")/../.."
printf 'text\nonce upon a time there was a cat\nthe dog ran to the park and played\nshe liked red apples very much\nhe saw a big ball in the garden\n' > /tmp/merge-data.csv
status=0
for c in "tiny-gpt2 lora c_attn,mlp.c_proj" "tiny-llama dora all-linear" "tiny-qwen2 lora q_proj,v_proj,down_proj"; do
  set -- $c
  echo "== $1 $2 on $3"
  bash .gpu/boot.sh node bench/dist/train.mjs --model test/fixtures/$1 --data /tmp/merge-data.csv --text-column text --steps 6 --lr 3e-2 \
    --batch-size 2 --validation 0 --method $2 --rank 4 --alpha 8 --targets $3 --out /tmp/a-$1 2>&1 | grep -v "^Warning\|While init\|    at " | tail -1
  bash .gpu/boot.sh node bench/dist/merge.mjs --model test/fixtures/$1 --adapter /tmp/a-$1 --out /tmp/m-$1 2>&1 | grep -v "^Warning\|While init\|    at " | tail -1
  python3 scripts/goldens/check_merge.py --base test/fixtures/$1 --adapter /tmp/a-$1 --merged /tmp/m-$1 2>&1 | tail -1 || status=1
done
exit $status
