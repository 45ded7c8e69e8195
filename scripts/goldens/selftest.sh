#!/usr/bin/env bash
# Device run for scripts/goldens: generate the fixtures, check determinism, self-test
# check_peft_adapter.py on a good and on broken adapters, smoke-test make_random_model.py.
#   bash scripts/goldens/selftest.sh WORKDIR
# Results: WORKDIR/gen/{tiny-gpt2,goldens,selftest}, WORKDIR/logs/*.
set -u
W=${1:-/tmp/goldens-work}
D=scripts/goldens
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export PYTHONHASHSEED=0  # PEFT writes target_modules from a set: fixed order in adapter_config.json
rm -rf "$W" "$W.rerun"
mkdir -p "$W/logs"
status=0

echo "== versions"
python3 -c "import sys,torch,transformers,peft,tokenizers,safetensors; print(sys.version.split()[0], 'torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__, 'tokenizers', tokenizers.__version__, 'safetensors', safetensors.__version__)"

echo "== generate"
python3 "$D/make_gpt2_goldens.py" --out "$W/gen" 2> "$W/logs/gen.stderr" || { echo "GENERATOR FAILED"; tail -n 60 "$W/logs/gen.stderr"; exit 1; }
tail -n 15 "$W/logs/gen.stderr"

echo "== determinism (second run)"
python3 "$D/make_gpt2_goldens.py" --out "$W.rerun" > "$W/logs/rerun.stdout" 2> "$W/logs/rerun.stderr" || { echo "RERUN FAILED"; status=1; }
for f in tiny-gpt2/config.json tiny-gpt2/model.safetensors tiny-gpt2/tokenizer.json tiny-gpt2/tokenizer_config.json \
         goldens/gpt2-lora.json goldens/gpt2-lora.safetensors \
         selftest/peft-all-targets/adapter_config.json selftest/peft-all-targets/adapter_model.safetensors; do
  if cmp -s "$W/gen/$f" "$W.rerun/$f"; then echo "identical: $f"; else echo "DIFFERS: $f"; status=1; fi
done
rm -rf "$W.rerun"

echo "== broken adapters"
S="$W/gen/selftest"
python3 - "$S" <<'EOF'
import json, os, shutil, sys
from safetensors.torch import load_file, save_file
S = sys.argv[1]
good = os.path.join(S, "peft-all-targets")
def copy(name):
    d = os.path.join(S, name)
    shutil.rmtree(d, ignore_errors=True)
    shutil.copytree(good, d)
    return d
sd = load_file(os.path.join(good, "adapter_model.safetensors"))
keys = sorted(sd)
# 1. one tensor renamed to another layer index
d = copy("broken-renamed")
k = next(k for k in keys if ".h.1." in k)
s2 = dict(sd); s2[k.replace(".h.1.", ".h.7.")] = s2.pop(k)
save_file(s2, os.path.join(d, "adapter_model.safetensors"), metadata={"format": "pt"})
print("renamed", k, "->", k.replace(".h.1.", ".h.7."))
# 2. adapter name left inside one key
d = copy("broken-adapter-name")
k = keys[0]
k2 = k.replace(".weight", ".default.weight")
s2 = dict(sd); s2[k2] = s2.pop(k)
save_file(s2, os.path.join(d, "adapter_model.safetensors"), metadata={"format": "pt"})
print("renamed", k, "->", k2)
# 3. config is not JSON
d = copy("broken-config")
with open(os.path.join(d, "adapter_config.json"), "w") as f:
    f.write('{"peft_type": "LORA", "r": 4,,}')
# 4. right names, wrong values (one lora_B scaled by 1.5)
d = copy("broken-values")
k = next(k for k in keys if "lora_B" in k)
s2 = dict(sd); s2[k] = s2[k] * 1.5
save_file(s2, os.path.join(d, "adapter_model.safetensors"), metadata={"format": "pt"})
print("scaled", k)
# 5. unknown field in the config (informational)
d = copy("extra-config-field")
with open(os.path.join(d, "adapter_config.json")) as f:
    c = json.load(f)
c["some_future_field"] = 1
with open(os.path.join(d, "adapter_config.json"), "w") as f:
    json.dump(c, f, indent=2)
EOF

summ() {
  python3 - "$1" <<'EOF'
import json, sys
try:
    r = json.load(open(sys.argv[1]))
except Exception as e:
    print("   (no JSON report: %s)" % e); sys.exit()
print("   ok=%s max_rel_error=%s max_abs_error=%s python_warnings=%d log_records=%d key_mentions=%d key_check=%s" % (
    r.get("ok"), r.get("max_rel_error"), r.get("max_abs_error"), len(r.get("python_warnings", [])),
    len(r.get("log_records", [])), len(r.get("key_mentions", [])),
    {k: (v if not isinstance(v, list) else v[:2]) for k, v in (r.get("key_check") or {}).items()}))
for f in r.get("failures", []):
    print("   failure:", f[:300])
for w in r.get("python_warnings", []):
    print("   warning[%s] %s: %s" % (w["phase"], w["category"], w["message"][:200]))
EOF
}
chk() {  # name expected_rc args...
  local name=$1 want=$2; shift 2
  python3 "$D/check_peft_adapter.py" "$@" > "$W/logs/check-$name.json" 2> "$W/logs/check-$name.stderr"
  local rc=$?
  if [ "$want" = any ] || [ "$rc" = "$want" ]; then v=OK; else v=UNEXPECTED; status=1; fi
  echo "check $name: rc=$rc (want $want) $v"
  summ "$W/logs/check-$name.json"
}
echo "== check_peft_adapter self-test"
B="$W/gen/tiny-gpt2"; I="$S/inputs.json"; E="$S/all-targets-logits.safetensors"
chk good 0 --base "$B" --adapter "$S/peft-all-targets" --inputs "$I" --expect "$E"
chk good-fp32 any --base "$B" --adapter "$S/peft-all-targets" --inputs "$I" --expect "$E" --compute-dtype float32
chk good-goldens-key 0 --base "$B" --adapter "$S/peft-all-targets" --inputs "$I" --expect "$W/gen/goldens/gpt2-lora.safetensors" --expect-key all-targets/logits
chk step5-vs-init 1 --base "$B" --adapter "$S/peft-all-targets" --inputs "$I" --expect "$W/gen/goldens/gpt2-lora.safetensors" --expect-key all-targets/step5_logits
chk broken-renamed 1 --base "$B" --adapter "$S/broken-renamed" --inputs "$I" --expect "$E"
chk broken-adapter-name 1 --base "$B" --adapter "$S/broken-adapter-name" --inputs "$I" --expect "$E"
chk broken-config 1 --base "$B" --adapter "$S/broken-config" --inputs "$I" --expect "$E"
chk broken-values 1 --base "$B" --adapter "$S/broken-values" --inputs "$I" --expect "$E"
chk extra-config-field any --base "$B" --adapter "$S/extra-config-field" --inputs "$I" --expect "$E"
rm -rf "$S"/broken-* "$S/extra-config-field"

echo "== make_random_model gpt2-tiny"
python3 "$D/make_random_model.py" --arch gpt2-tiny --out "$W/rand-tiny" --tokenizer-from "$B" 2> "$W/logs/random-tiny.stderr" || { echo "RANDOM MODEL FAILED"; tail -n 30 "$W/logs/random-tiny.stderr"; status=1; }
rm -rf "$W/rand-tiny"

echo "== files"
(cd "$W/gen" && find . -type f -printf '%10s  %p\n' | sort -k2)
echo "== adapter_config.json (PEFT-saved)"
cat "$S/peft-all-targets/adapter_config.json"; echo
echo "== tokenizer_config.json"
cat "$B/tokenizer_config.json"; echo
echo "== selftest status: $status"
exit $status
