#!/bin/bash
# Does an adapter that our CLI exports load in PEFT with the same logits? And how fast is a
# GPT-2-small-shaped step on the GPU machine?
#   here:            bash scripts/gpu/peft-roundtrip.sh prepare
#   GPU machine:     bash scripts/gpu/peft-roundtrip.sh check     (device tool, carry .gpu bench/dist out .carry)
# `prepare` trains a LoRA with the CLI on each tiny fixture (GPT-2, Llama, Qwen2, Qwen3; dropout on),
# computes our logits for the checker's inputs with each adapter, packs Node + Dawn (.gpu/), bundles
# the CLIs (bench/dist/) and copies stories260K + E2E into .carry/shared (ignored). `check` runs
# scripts/goldens/check_peft_adapter.py on every adapter (float64 and float32 PyTorch), replays
# PEFT's 40-step stories260K fine-tuning (npm run verify:stories), then trains random models of
# GPT-2-small, SmolLM2-135M and Qwen2.5-0.5B shape 20 steps at 8 x 256 with our CLI, and GPT-2
# small with PyTorch + PEFT (bench/torch_lora_baseline.py).
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
  for m in tiny-llama:all-linear tiny-qwen2:q_proj,v_proj tiny-qwen3:all-linear; do
    name=${m%%:*}; targets=${m#*:}
    npm run train -- --model test/fixtures/$name --data out/peft-check.csv --out out/$name-adapter --dropout 0.1 --steps 4 \
      --lr 2e-2 --batch-size 4 --max-length 32 --validation 0 --rank 4 --alpha 8 --targets $targets $( [ $name = tiny-qwen2 ] && echo --rslora )
    npm run logits -- --model test/fixtures/$name --adapter out/$name-adapter \
      --inputs test/fixtures/goldens/llama-checker-inputs.json --out out/$name-adapter/our-logits.safetensors
  done
  mkdir -p .carry/shared/models .carry/shared/data
  grep -qx '/.carry/' .git/info/exclude || echo '/.carry/' >> .git/info/exclude
  cp -r ../shared/models/stories260K-hf .carry/shared/models/
  cp ../shared/data/e2e_dev.csv .carry/shared/data/
  bash ../shared/gpu/pack.sh
  node scripts/node-run.mjs --bundle-only bench/dist src/cli/train.ts
  node scripts/node-run.mjs --bundle-only bench/dist src/verify/stories-replay-cli.ts
  ;;
check)
  export PYTHONUNBUFFERED=1
  rc=0
  check() { # model folder, adapter folder, inputs
    for dtype in float64 float32; do
      echo "== PEFT loads $2 on $1 ($dtype) =="
      python3 scripts/goldens/check_peft_adapter.py --base "$1" --adapter "$2" --inputs "$3" --expect "$2/our-logits.safetensors" \
        --tol 1e-4 --floor 1 --compute-dtype $dtype > /tmp/report.json 2>/tmp/log.txt || rc=1
      python3 -c "import json; r=json.load(open('/tmp/report.json')); print({k: r.get(k) for k in ('ok','failures','python_warnings','key_mentions','key_check','max_rel_error','max_abs_error','max_abs_ref')})"
    done
  }
  check test/fixtures/tiny-gpt2 out/peft-check-adapter test/fixtures/goldens/checker-inputs.json
  for name in tiny-llama tiny-qwen2 tiny-qwen3; do
    check test/fixtures/$name out/$name-adapter test/fixtures/goldens/llama-checker-inputs.json
  done
  echo "== stories260K: PEFT's 40-step LoRA fine-tuning replayed =="
  bash .gpu/boot.sh node bench/dist/stories-replay-cli.mjs --shared .carry/shared --fixtures test/fixtures/goldens || rc=1
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
  for arch in smollm2-135m qwen2.5-0.5b; do
    echo "== $arch-shaped random model, 20 steps at 8 x 256 (ours) =="
    python3 scripts/goldens/make_random_model.py --arch $arch --out /tmp/$arch --tokenizer-from test/fixtures/tiny-gpt2 >/dev/null 2>&1 || rc=1
    bash .gpu/boot.sh node bench/dist/train.mjs --model /tmp/$arch --data /tmp/long.csv --out /tmp/o-$arch --text-column text \
      --steps 20 --batch-size 8 --max-length 256 --validation 0 --rank 8 --alpha 16 --lr 1e-4 2>&1 | grep -v '^step [0-9]*/' || rc=1
  done
  echo "== GPT-2 small with PyTorch + PEFT =="
  python3 bench/torch_lora_baseline.py --model /tmp/gpt2s --batch 8 --seq 256 --targets c_attn --steps 30 2>&1 | grep '^{' || rc=1
  exit $rc
  ;;
*)
  echo "usage: bash scripts/gpu/peft-roundtrip.sh prepare|check" >&2
  exit 2
  ;;
esac
