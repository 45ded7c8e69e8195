#!/bin/bash
# Issue #6's acceptance run: does every adapter method of ours learn on the real stories260K with
# E2E (../shared/models/stories260K-hf, ../shared/data/e2e_dev.csv) at least as PEFT does with the
# same settings? 60 steps, batch 8, lr 3e-2 (linear decay, no warmup, weight decay 0, clipping at 1:
# the CLI's defaults), max length 256, 10% validation, seeds 42, 1 and 2, for IA3 (PEFT's llama defaults:
# k_proj, v_proj, down_proj), prefix tuning (10 virtual tokens, no projection), prompt tuning
# (10 virtual tokens, random init), LoRA and DoRA (r 8, alpha 16, dropout 0.05, q_proj,v_proj).
#   here:         bash scripts/gpu/stories-methods.sh prepare
#   GPU machine:  bash scripts/gpu/stories-methods.sh run      (device tool; carry .gpu bench/dist
#                 .carry/shared .carry/stories-methods; $OUT gets the logs and the JSON)
# `prepare` copies the model and data into .carry/shared (ignored by git), packs Node + Dawn (.gpu/),
# bundles the CLI (bench/dist/train.mjs) and writes .carry/stories-methods/ours-examples.json: the
# examples, validation split and batch order our CLI builds (from our own code), which the PyTorch
# side checks its own against. `run` trains every method with transformers + PEFT
# (scripts/gpu/stories_methods_peft.py: the same examples, split, batch order, optimizer and
# schedule) and with our CLI, then prints the table (first-5 / last-5 step mean loss, final eval loss
# on the same held-out examples), per seed and averaged over the seeds.
set -uo pipefail
cd "$(dirname "$0")/../.."
STEPS=${STEPS:-60}
METHODS=${METHODS:-ia3 prefix prompt lora dora}
MODEL=.carry/shared/models/stories260K-hf
DATA=.carry/shared/data/e2e_dev.csv
VALIDATION=${VALIDATION:-0.1}  # (a smaller one only to try the script out)
SEEDS=${SEEDS:-42 1 2}
# INIT=ours: the PyTorch side starts from our CLI's initial adapter values for the seed (ported, exact)
# instead of PEFT's own random ones; LORA_DROPOUT for LoRA and DoRA on both sides; OURS=0 runs the
# PyTorch side only; TAG names this variant's outputs (peft$TAG-seed$S.json, ours$TAG-seed$S/, table$TAG.json)
INIT=${INIT:-peft}
LORA_DROPOUT=${LORA_DROPOUT:-0.05}
OURS=${OURS:-1}
TAG=${TAG:-}
COMMON="--steps $STEPS --batch-size 8 --lr 3e-2 --max-length 256 --validation $VALIDATION"
flags() { # our CLI's method flags
  case $1 in
  ia3) echo "--method ia3" ;;  # the CLI's IA3 defaults are PEFT's (k_proj,v_proj,down_proj; down_proj feedforward)
  prefix) echo "--method prefix --virtual-tokens 10" ;;
  prompt) echo "--method prompt --virtual-tokens 10 --prompt-init random" ;;
  lora | dora) echo "--method $1 --rank 8 --alpha 16 --dropout $LORA_DROPOUT --targets q_proj,v_proj" ;;
  esac
}
case "${1:-}" in
prepare)
  set -e
  mkdir -p .carry/shared/models .carry/shared/data .carry/stories-methods out
  grep -qx '/.carry/' .git/info/exclude || echo '/.carry/' >> .git/info/exclude
  [ -f .carry/shared/models/stories260K-hf/model.safetensors ] || cp -r ../shared/models/stories260K-hf .carry/shared/models/
  [ -f .carry/shared/data/e2e_dev.csv ] || cp ../shared/data/e2e_dev.csv .carry/shared/data/
  [ -f .gpu/boot.sh ] || bash ../shared/gpu/pack.sh
  node scripts/node-run.mjs --bundle-only bench/dist src/cli/train.ts
  cat > out/stories-methods-dump.ts <<'EOF'
// Written by scripts/gpu/stories-methods.sh prepare: the examples, split and batch order our CLI uses
import fs from 'node:fs';
import path from 'node:path';
import { nodeModelFiles } from '../src/io/model-files-node';
import { loadHfModel } from '../src/io/model-files';
import { loadTokenizer } from '../src/data/tokenizer';
import { decodeTableBytes, parseTableText } from '../src/data/table';
import { buildCausalExamples } from '../src/data/examples';
import { epochOrder, splitTrainValidation } from '../src/data/batches';

const [modelDir, dataPath, out, maxLengthS, validationS, seedS] = process.argv.slice(2);
const hf = await loadHfModel(nodeModelFiles(modelDir));
const tok = loadTokenizer(hf.tokenizerJson!, hf.tokenizerConfig, { chatTemplate: hf.chatTemplate, name: hf.name });
const table = parseTableText(decodeTableBytes(new Uint8Array(fs.readFileSync(dataPath)), path.basename(dataPath)), path.basename(dataPath));
const { examples } = buildCausalExamples(table, { kind: 'prompt-completion', prompt: 'mr', completion: 'ref', template: '{mr}\n' }, tok, { maxLength: Number(maxLengthS) });
const idx = examples.map((_, i) => i);
const { train, validation } = splitTrainValidation(idx, Number(validationS), Number(seedS));
const order = Array.from(epochOrder(train.length, 0, Number(seedS)));
fs.writeFileSync(out, JSON.stringify({
  eos: tok.eosId, bos: tok.bosId, pad: tok.padId,
  // labels: -100 on the first `prompt` ids (the prompt), the ids themselves after
  examples: examples.map((e) => {
    const prompt = e.labels.findIndex((l) => l !== -100);
    if (prompt < 0 || e.labels.some((l, t) => (t < prompt ? l !== -100 : l !== e.inputIds[t]))) throw new Error(`row ${e.row}: labels are not -100 then the ids`);
    return [e.row, prompt, e.inputIds];
  }),
  train, validation, order0: order,
}));
console.log(`wrote ${out}: ${examples.length} examples, ${train.length} train, ${validation.length} validation`);
EOF
  node scripts/node-run.mjs out/stories-methods-dump.ts $MODEL $DATA .carry/stories-methods/ours-examples.json 256 0.1 42
  ;;
run)
  export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
  OUT=${OUT:-/tmp/stories-methods-out}
  W=/tmp/stories-methods
  mkdir -p "$OUT" "$W"
  rc=0
  runs=()
  for seed in $SEEDS; do
    # the seed sets the validation split, the batch order and the adapter's initial values (both sides);
    # ours-examples.json is ours for seed 42: the PyTorch side checks its examples, split and order against it
    check=""; [ "$seed" = 42 ] && check="--ours-examples .carry/stories-methods/ours-examples.json"
    echo "== seed $seed: transformers + PEFT =="
    # shellcheck disable=SC2086
    python3 scripts/gpu/stories_methods_peft.py train --model $MODEL --data $DATA --out "$OUT/peft$TAG-seed$seed.json" \
      --methods "$(echo $METHODS | tr ' ' ,)" --steps "$STEPS" --batch-size 8 --lr 3e-2 --max-length 256 --validation $VALIDATION \
      --seed "$seed" --virtual-tokens 10 --init "$INIT" --lora-dropout "$LORA_DROPOUT" $check 2>&1 | grep -v '^Loading weights' || rc=1
    mkdir -p "$W/ours$TAG-seed$seed"
    [ "$OURS" = 1 ] && for m in $METHODS; do
      echo "== seed $seed: ours, $m =="
      # shellcheck disable=SC2046,SC2086
      bash .gpu/boot.sh node bench/dist/train.mjs --model $MODEL --data $DATA --out "$W/ours$TAG-seed$seed/$m" --prompt-column mr \
        --completion-column ref $(flags $m) $COMMON --seed "$seed" 2>&1 | grep -v '^Warning\|While initializing\|    at \|^$' | tee "$W/ours$TAG-seed$seed/$m.txt"
      [ "${PIPESTATUS[0]}" = 0 ] || rc=1
    done
    runs+=(--run "$OUT/peft$TAG-seed$seed.json" "$W/ours$TAG-seed$seed")
  done
  # adapters, trainer_state.json and console log of each of our runs
  tar -C "$W" -cf "$OUT/ours$TAG.tar" .
  echo "== table (PyTorch side: init $INIT; LoRA / DoRA dropout $LORA_DROPOUT) =="
  python3 scripts/gpu/stories_methods_peft.py table "${runs[@]}" --json "$OUT/table$TAG.json" || rc=1
  exit $rc
  ;;
*)
  echo "usage: bash scripts/gpu/stories-methods.sh prepare|run" >&2
  exit 2
  ;;
esac
