#!/usr/bin/env bash
# Device run for DoRA and the bottleneck adapters:
#   1. make_dora_bottleneck_goldens.py, twice at once (the second run checks that the bytes repeat);
#   2. meanwhile the adapters the engine's CLI exported (EXPORTS/<model>--<name>/, made on the development
#      machine with `npm run train`, each with engine-logits.safetensors from `npm run logits -- --adapter` on
#      EXPORTS/inputs.json): DoRA ones through check_peft_adapter.py (PeftModel.from_pretrained: no key
#      warnings, same logits), in float64 and in float32; bottleneck ones through check_adapterhub_adapter.py;
#   3. check_peft_adapter.py on the DoRA adapters PEFT itself saved for every DoRA golden case, against the goldens.
#   bash scripts/goldens/dora_bottleneck_selftest.sh WORKDIR [EXPORTS]
# Results: WORKDIR/gen/{goldens,selftest}, WORKDIR/logs/*.
set -u
W=${1:-/tmp/dora-bottleneck-work}
E=${2:-.carry/dora-bottleneck}
D=scripts/goldens
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false OMP_NUM_THREADS=1
export PYTHONHASHSEED=0  # PEFT writes target_modules from a set: fixed order in adapter_config.json
rm -rf "$W"
mkdir -p "$W/logs"
status=0

echo "== versions"
python3 -c "import sys,torch,transformers,peft,tokenizers,safetensors; print(sys.version.split()[0], 'torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__, 'tokenizers', tokenizers.__version__, 'safetensors', safetensors.__version__)"
echo "-- pip list (adapters?)"
pip list 2>/dev/null | grep -i -E '^(adapters|adapter-transformers|peft|torch|transformers) ' || echo "(pip list found none of them)"

echo "== generate (twice, in parallel) and check the CLI exports"
python3 "$D/make_dora_bottleneck_goldens.py" --out "$W/gen" > "$W/logs/gen.stdout" 2> "$W/logs/gen.stderr" &
gen=$!
python3 "$D/make_dora_bottleneck_goldens.py" --out "$W/rerun" > "$W/logs/rerun.stdout" 2> "$W/logs/rerun.stderr" &
rerun=$!

summary() {  # report.json -> one line
  python3 -c "import json,sys; r=json.load(open(sys.argv[1])); print('ok=%s max_rel_error=%s max_abs_error=%s keys=%s via=%s warnings=%d failures=%s' % (r.get('ok'), r.get('max_rel_error'), r.get('max_abs_error'), (r.get('key_check') or {}).get('expected', r.get('tensors')), r.get('via', 'peft'), len(r.get('python_warnings', [])), [f[:200] for f in r.get('failures', [])]))" "$1" 2>&1
}
pids=()
for d in "$E"/*--*/; do
  d=${d%/}; name=$(basename "$d"); model=${name%%--*}
  for dt in float64 float32; do
    if [ -f "$d/adapter_model.safetensors" ]; then
      python3 "$D/check_peft_adapter.py" --base "test/fixtures/$model" --adapter "$d" --inputs "$E/inputs.json" \
        --expect "$d/engine-logits.safetensors" --tol 1e-3 --compute-dtype $dt --report "$W/logs/cli-$name-$dt.json" > /dev/null 2> "$W/logs/cli-$name-$dt.stderr" &
    else
      python3 "$D/check_adapterhub_adapter.py" --base "test/fixtures/$model" --adapter "$d" --inputs "$E/inputs.json" \
        --expect "$d/engine-logits.safetensors" --tol 1e-3 --compute-dtype $dt --report "$W/logs/cli-$name-$dt.json" > /dev/null 2> "$W/logs/cli-$name-$dt.stderr" &
    fi
    pids+=($!)
  done
done
for p in "${pids[@]}"; do wait "$p"; done
for d in "$E"/*--*/; do
  name=$(basename "${d%/}")
  for dt in float64 float32; do
    line=$(summary "$W/logs/cli-$name-$dt.json")
    case "$line" in ok=True*) echo "ok   CLI export $name ($dt): $line" ;; *) echo "FAIL CLI export $name ($dt): $line"; tail -n 5 "$W/logs/cli-$name-$dt.stderr"; status=1 ;; esac
  done
done

wait "$gen"; rc=$?
echo "-- generator rc=$rc"; cat "$W/logs/gen.stdout"; tail -n 40 "$W/logs/gen.stderr"
[ "$rc" = 0 ] || status=1
wait "$rerun"; rc2=$?
(cd "$W/gen" && find . -type f | sort) | while read -r f; do
  if cmp -s "$W/gen/$f" "$W/rerun/$f"; then echo "identical: $f"; else echo "DIFFERS: $f"; fi
done > "$W/logs/determinism.txt"
grep -v '^identical' "$W/logs/determinism.txt"; echo "rerun rc=$rc2, identical files: $(grep -c '^identical' "$W/logs/determinism.txt")"
rm -rf "$W/rerun"

echo "== check_peft_adapter on the PEFT-saved DoRA adapters of every case"
G="$W/gen/goldens"
pids=()
for d in "$W"/gen/selftest/peft-*/; do
  d=${d%/}; cname=${d##*/peft-}
  model=$(python3 -c "import json,sys; print([c['model'] for c in json.load(open(sys.argv[1]))['cases'] if c['name']==sys.argv[2]][0])" "$G/dora-bottleneck.json" "$cname" 2>/dev/null)
  python3 "$D/check_peft_adapter.py" --base "test/fixtures/$model" --adapter "$d" --inputs test/fixtures/goldens/peft-methods-checker-inputs.json \
    --expect "$G/dora-bottleneck.safetensors" --expect-key "$cname/logits" --tol 1e-4 --report "$W/logs/peft-$cname.json" > /dev/null 2> "$W/logs/peft-$cname.stderr" &
  pids+=($!)
done
for p in "${pids[@]}"; do wait "$p"; done
for d in "$W"/gen/selftest/peft-*/; do
  cname=${d%/}; cname=${cname##*/peft-}
  line=$(summary "$W/logs/peft-$cname.json")
  case "$line" in ok=True*) echo "ok   PEFT-saved $cname: $line" ;; *) echo "FAIL PEFT-saved $cname: $line"; status=1 ;; esac
done

echo "== adapter_config.json PEFT saved (gpt2-dora)"
cat "$W/gen/selftest/peft-gpt2-dora/adapter_config.json" 2>/dev/null; echo
echo "== dora/bottleneck selftest status: $status"
exit $status
