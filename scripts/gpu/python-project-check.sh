#!/bin/bash
# The exported Python project (src/engine/export/python-project.ts) on the GPU machine: our CLI trains
# a LoRA on tiny GPT-2 and a prompt-tuning adapter on tiny Llama, the project continues each with
# transformers + PEFT (python train.py, Trainer on Accelerate), and the result goes back through our
# importer: our logits with the imported adapter must equal PEFT's (check_peft_adapter.py, tol 1e-3;
# the same check on the adapter our CLI trained, before Python touched it, is printed as a control
# for what f32 rounding alone gives on these tiny fixtures).
#   here:         node scripts/node-run.mjs --bundle-only bench/dist src/cli/train.ts (and src/cli/logits.ts,
#                 scripts/gpu/make-python-project.ts); bash ../shared/gpu/pack.sh
#   GPU machine:  bash scripts/gpu/python-project-check.sh   (device tool, carry .gpu bench/dist)
set -uo pipefail
cd "$(dirname "$0")/../.."
node() { bash .gpu/boot.sh node "$@" 2>&1 | grep -v "^Warning\|While init\|    at "; }
printf 'text\nonce upon a time there was a cat\nthe dog ran to the park and played\nshe liked red apples very much\nhe saw a big ball in the garden\nthe sun was warm and the sky was blue\na little bird sang in the tree\n' > /tmp/pp-data.csv
echo '{"input_ids": [[1, 5, 9, 2, 7, 3], [4, 4, 8, 1, 0, 6]]}' > /tmp/pp-inputs.json
status=0
for c in "tiny-gpt2 --method lora --targets c_attn" "tiny-llama --method prompt --virtual-tokens 4"; do
  set -- $c; m=$1; shift
  echo "== $m $*"
  node bench/dist/train.mjs --model test/fixtures/$m --data /tmp/pp-data.csv --text-column text --steps 4 --lr 3e-2 --batch-size 2 --validation 0 "$@" --out /tmp/pp-a-$m | tail -1
  node bench/dist/make-python-project.mjs /tmp/pp-a-$m /tmp/pp-data.csv text "$PWD/test/fixtures/$m" /tmp/pp-proj-$m | tail -1
  (cd /tmp/pp-proj-$m && python3 train.py > /tmp/pp-train-$m.log 2>&1) || status=1
  grep -E "examples|trainable params|train_loss|wrote|error|Error" /tmp/pp-train-$m.log | tail -6
  node bench/dist/logits.mjs --model test/fixtures/$m --adapter /tmp/pp-proj-$m/output --inputs /tmp/pp-inputs.json --out /tmp/pp-ours-$m.safetensors | tail -1
  python3 scripts/goldens/check_peft_adapter.py --base test/fixtures/$m --adapter /tmp/pp-proj-$m/output --inputs /tmp/pp-inputs.json --expect /tmp/pp-ours-$m.safetensors --tol 1e-3 > /tmp/pp-check-$m.json 2>&1 || status=1
  grep -E '^  "(ok|max_rel_err|worst|virtual_positions_dropped)"|logits differ|^\{"ok"' /tmp/pp-check-$m.json || tail -5 /tmp/pp-check-$m.json
  python3 -c "import json,sys; t=open(sys.argv[1]).read(); d=json.loads(t[t.index('{\n  \"ok\"'):]); print('continued adapter:', {k: d.get(k) for k in ('ok', 'max_rel_error', 'max_abs_error', 'max_abs_ref', 'failures')})" /tmp/pp-check-$m.json 2>/dev/null
  # control: the adapter as our CLI trained it
  node bench/dist/logits.mjs --model test/fixtures/$m --adapter /tmp/pp-a-$m --inputs /tmp/pp-inputs.json --out /tmp/pp-ours0-$m.safetensors | tail -1
  python3 scripts/goldens/check_peft_adapter.py --base test/fixtures/$m --adapter /tmp/pp-a-$m --inputs /tmp/pp-inputs.json --expect /tmp/pp-ours0-$m.safetensors --tol 1e-3 > /tmp/pp-check0-$m.json 2>&1
  python3 -c "import json,sys; t=open(sys.argv[1]).read(); d=json.loads(t[t.index('{\n  \"ok\"'):]); print('control (CLI adapter):', {k: d.get(k) for k in ('ok', 'max_rel_error', 'max_abs_error', 'max_abs_ref', 'failures')})" /tmp/pp-check0-$m.json 2>/dev/null
done
echo "python-project-check: exit $status"
exit $status
