#!/usr/bin/env bash
# Development-machine half of the DoRA / bottleneck-adapter device check: trains small adapters with
# the CLI on the tiny fixtures (DoRA on GPT-2's Conv1D layers with dropout, on every Llama linear layer
# with rsLoRA, on Qwen2's biased q/k/v; a Houlsby and a Pfeiffer bottleneck adapter) and writes the
# engine's logits for each next to it, into EXPORTS (default .carry/dora-bottleneck, git-ignored).
# Then on the GPU machine (device tool, carry EXPORTS):
#   bash scripts/goldens/dora_bottleneck_selftest.sh /tmp/db EXPORTS
set -euo pipefail
cd "$(dirname "$0")/../.."
E=${1:-.carry/dora-bottleneck}
rm -rf "$E" && mkdir -p "$E"
python3 - "$E" <<'PY'
import json, sys
names = ['The Old Mill', 'The Red Lantern', 'Blue Door', 'Green Garden', 'The Harbour', 'Sun Cafe']
foods = ['noodles', 'fish', 'pasta', 'curry', 'soup', 'bread']
rows = ['prompt,completion'] + [f'"{n} serves {f}.",The {f} at {n} is good.' for n in names for f in foods]
open(sys.argv[1] + '/data.csv', 'w').write('\n'.join(rows) + '\n')
PY
cp .carry/peft-methods/inputs.json "$E/inputs.json" 2>/dev/null || cat > "$E/inputs.json" <<'JSON'
{"input_ids":[[268,221,47,334,221,45,73,284,333,269,314,72,321,261,265,291,89,14,0,0],[51,338,221,35,354,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0],[52,307,286,297,258,303,68,270,304,266,261,313,71,221,300,258,358,267,327,14]],"attention_mask":[[1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,0,0],[1,1,1,1,1,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0],[1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1]]}
JSON
train() {  # model, name, flags...
  local model=$1 name=$2; shift 2
  node scripts/node-run.mjs src/cli/train.ts --model "test/fixtures/$model" --data "$E/data.csv" --out "$E/$model--$name" \
    --steps 4 --lr 2e-2 --batch-size 4 --max-length 32 --validation 0 --seed 3 "$@"
  node scripts/node-run.mjs src/cli/logits.ts --model "test/fixtures/$model" --adapter "$E/$model--$name" \
    --inputs "$E/inputs.json" --out "$E/$model--$name/engine-logits.safetensors"
}
train tiny-gpt2 dora --method dora --rank 4 --alpha 8 --dropout 0.1 --targets c_attn,c_proj,c_fc
train tiny-llama dora-rslora --method dora --rank 4 --alpha 8 --dropout 0.1 --targets all-linear --rslora
train tiny-qwen2 dora --method dora --rank 2 --alpha 6 --dropout 0 --targets q_proj,k_proj,v_proj,o_proj
train tiny-gpt2 houlsby --method adapter --reduction-factor 8
train tiny-llama pfeiffer --method adapter --adapter-type pfeiffer --reduction-factor 4 --non-linearity gelu
