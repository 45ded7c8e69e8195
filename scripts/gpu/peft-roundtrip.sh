#!/bin/bash
# Does an adapter that our CLI exports load in PEFT with the same logits? And how fast is a
# GPT-2-small-shaped step on the GPU machine?
#   here:            bash scripts/gpu/peft-roundtrip.sh prepare
#   GPU machine:     bash scripts/gpu/peft-roundtrip.sh check     (device tool, carry .gpu bench/dist out)
# `prepare` trains a LoRA on the tiny GPT-2 fixture with the CLI (all four target modules, dropout
# on), computes our logits for the checker's inputs with that adapter, packs Node + Dawn (.gpu/) and
# bundles the CLI (bench/dist/). `check` runs scripts/goldens/check_peft_adapter.py on it (float64
# and float32 PyTorch), then trains a random GPT-2-small-shaped model 20 steps at 8 x 256 with our
# CLI and with PyTorch + PEFT (bench/torch_lora_baseline.py).
set -uo pipefail
cd "$(dirname "$0")/../.."
case "${1:-}" in
prepare)
  set -e
  mkdir -p out
  python3 - <<'PY'
names = ['The Old Mill', 'The Red Lantern', 'Blue Door', 'Green Garden', 'The Harbour', 'Sun Cafe']
foods = ['noodles', 'fish', 'pasta', 'curry', 'soup', 'bread']
rows = ['prompt,completion'] + [f'"{n} serves {f}.",The {f} at {n} is good.' for n in names for f in foods]
open('out/peft-check.csv', 'w').write('\n'.join(rows) + '\n')
PY
  npm run train -- --model test/fixtures/tiny-gpt2 --data out/peft-check.csv --out out/peft-check-adapter --rank 4 --alpha 8 \
    --dropout 0.1 --targets c_attn,attn.c_proj,mlp.c_fc,mlp.c_proj --steps 8 --lr 2e-2 --batch-size 4 --max-length 32
  npm run logits -- --model test/fixtures/tiny-gpt2 --adapter out/peft-check-adapter \
    --inputs test/fixtures/goldens/checker-inputs.json --out out/peft-check-adapter/our-logits.safetensors
  bash ../shared/gpu/pack.sh
  node scripts/node-run.mjs --bundle-only bench/dist src/cli/train.ts
  ;;
check)
  export PYTHONUNBUFFERED=1
  rc=0
  for dtype in float64 float32; do
    echo "== PEFT loads out/peft-check-adapter ($dtype) =="
    python3 scripts/goldens/check_peft_adapter.py --base test/fixtures/tiny-gpt2 --adapter out/peft-check-adapter \
      --inputs test/fixtures/goldens/checker-inputs.json --expect out/peft-check-adapter/our-logits.safetensors \
      --tol 1e-4 --floor 1 --compute-dtype $dtype > /tmp/report-$dtype.json 2>/tmp/log-$dtype.txt || rc=1
    python3 -c "import json; r=json.load(open('/tmp/report-$dtype.json')); print({k: r[k] for k in ('ok','failures','python_warnings','key_mentions','key_check','max_rel_error','max_abs_error','max_abs_ref')})"
  done
  echo "== GPT-2-small-shaped random model, 20 steps at 8 x 256 (ours) =="
  python3 scripts/goldens/make_random_model.py --arch gpt2-small --out /tmp/gpt2s --tokenizer-from test/fixtures/tiny-gpt2 >/dev/null 2>&1 || exit 1
  python3 - <<'PY'
import random
random.seed(0)
words = "the old mill serves noodles fish pasta curry soup bread in city centre near river cheap family cat sat sun story girl".split()
with open('/tmp/long.csv', 'w') as f:
    f.write('text\n')
    for i in range(400):
        f.write('"' + ' '.join(random.choice(words) for _ in range(400)) + '"\n')
PY
  bash .gpu/boot.sh node bench/dist/train.mjs --model /tmp/gpt2s --data /tmp/long.csv --out /tmp/o --text-column text \
    --steps 20 --batch-size 8 --max-length 256 --validation 0 --rank 8 --alpha 16 --targets c_attn --lr 1e-4 || rc=1
  echo "== the same shape with PyTorch + PEFT =="
  python3 bench/torch_lora_baseline.py --model /tmp/gpt2s --batch 8 --seq 256 --targets c_attn --steps 30 2>&1 | grep '^{' || rc=1
  exit $rc
  ;;
*)
  echo "usage: bash scripts/gpu/peft-roundtrip.sh prepare|check" >&2
  exit 2
  ;;
esac
