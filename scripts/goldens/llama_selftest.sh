#!/usr/bin/env bash
# Device run for make_llama_goldens.py: generate, check that a second run gives the same bytes,
# and check the PEFT-saved adapters of every case with check_peft_adapter.py.
#   bash scripts/goldens/llama_selftest.sh WORKDIR
# Results: WORKDIR/gen/{tiny-llama,tiny-qwen2,tiny-qwen3,goldens,selftest}, WORKDIR/logs/*.
# stories260K and e2e_dev.csv are read from .carry/ (copies of ../shared), else ../shared, else /work/shared.
set -u
W=${1:-/tmp/llama-goldens-work}
D=scripts/goldens
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export PYTHONHASHSEED=0  # PEFT writes target_modules from a set: fixed order in adapter_config.json
rm -rf "$W" "$W.rerun"
mkdir -p "$W/logs"
status=0

echo "== versions"
python3 -c "import sys,torch,transformers,peft,tokenizers,safetensors; print(sys.version.split()[0], 'torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__, 'tokenizers', tokenizers.__version__, 'safetensors', safetensors.__version__)"

echo "== generate"
python3 "$D/make_llama_goldens.py" --out "$W/gen" 2> "$W/logs/gen.stderr" || { echo "GENERATOR FAILED (see below)"; status=1; }
tail -n 40 "$W/logs/gen.stderr"

echo "== determinism (second run)"
python3 "$D/make_llama_goldens.py" --out "$W.rerun" > "$W/logs/rerun.stdout" 2> "$W/logs/rerun.stderr" || { echo "RERUN FAILED"; status=1; }
(cd "$W/gen" && find . -type f | sort) | while read -r f; do
  if cmp -s "$W/gen/$f" "$W.rerun/$f"; then echo "identical: $f"; else echo "DIFFERS: $f"; fi
done | tee "$W/logs/determinism.txt" | grep -v '^identical' ; grep -c '^identical' "$W/logs/determinism.txt" | sed 's/^/identical files: /'
grep -q '^DIFFERS' "$W/logs/determinism.txt" && status=1
rm -rf "$W.rerun"

echo "== check_peft_adapter on the PEFT-saved adapters"
G="$W/gen/goldens"; I="$G/llama-checker-inputs.json"; E="$G/llama-lora.safetensors"
chk() {  # name expected_rc model case [extra args]
  local name=$1 want=$2 model=$3 key=$4; shift 4
  local rep="$W/logs/check-$name-vs-${key%/logits}$*.json"; rep=${rep// /}
  python3 "$D/check_peft_adapter.py" --base "$W/gen/$model" --adapter "$W/gen/selftest/peft-$name" --inputs "$I" \
    --expect "$E" --expect-key "$key" "$@" > "$rep" 2> "${rep%.json}.stderr"
  local rc=$?
  local line
  line=$(python3 -c "import json,sys; r=json.load(open(sys.argv[1])); print('ok=%s max_rel_error=%s warnings=%d failures=%s' % (r.get('ok'), r.get('max_rel_error'), len(r.get('python_warnings', [])), [f[:120] for f in r.get('failures', [])]))" "$rep" 2>&1)
  if [ "$want" = any ] || [ "$rc" = "$want" ]; then echo "ok   $name vs $key: rc=$rc  $line"; else echo "FAIL $name vs $key: rc=$rc (want $want)  $line"; status=1; fi
}
chk llama-all-linear 0 tiny-llama llama-all-linear/logits
chk llama-qv-rslora 0 tiny-llama llama-qv-rslora/logits
chk qwen2-all-linear 0 tiny-qwen2 qwen2-all-linear/logits
chk qwen3-all-linear 0 tiny-qwen3 qwen3-all-linear/logits
chk llama-all-linear 1 tiny-llama llama-qv-rslora/logits
chk qwen3-all-linear any tiny-qwen3 qwen3-all-linear/logits --compute-dtype float32

echo "== files"
(cd "$W/gen" && find . -type f -printf '%10s  %p\n' | sort -k2)
echo "== config.json (tiny-llama, tiny-qwen2, tiny-qwen3)"
for m in tiny-llama tiny-qwen2 tiny-qwen3; do echo "-- $m"; cat "$W/gen/$m/config.json"; echo; done
echo "== adapter_config.json (llama-all-linear)"
cat "$W/gen/selftest/peft-llama-all-linear/adapter_config.json"; echo
echo "== llama selftest status: $status"
exit $status
