#!/usr/bin/env bash
# Device run for make_bert_goldens.py and the SEQ_CLS adapter round trip:
#   bash scripts/goldens/bert_selftest.sh WORKDIR BUNDLE
# BUNDLE holds the engine's CLIs bundled for Node (train.mjs, seqcls_logits.mjs; see README.md) and
# .gpu/ (../shared/gpu/pack.sh) must be in the repository root. Steps:
#   1. generate the tiny DistilBERT / BERT fixtures and the goldens (WORKDIR/gen)
#   2. train a LoRA classifier on each with our CLI (Dawn on this GPU) and compute our logits for the
#      goldens' batch with the exported adapter
#   3. check_peft_seqcls.py: PEFT loads each of our adapters and gives our logits (float64 and float32);
#      PEFT's own saved adapters against the goldens; a broken adapter must fail
#   4. a second generator run must give the same bytes
# Results: WORKDIR/gen, WORKDIR/cli-*, WORKDIR/logs.
set -u
W=${1:?WORKDIR}; BUNDLE=${2:?BUNDLE}
D=scripts/goldens
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONHASHSEED=0
rm -rf "$W"; mkdir -p "$W/logs"
status=0
note() { echo "== $*"; }

note versions
python3 -c "import sys,torch,transformers,peft,tokenizers,safetensors; print(sys.version.split()[0], 'torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__, 'tokenizers', tokenizers.__version__)"

note generate
timeout 150 python3 "$D/make_bert_goldens.py" --out "$W/gen" > "$W/logs/gen.stdout" 2> "$W/logs/gen.stderr" || { echo "GENERATOR FAILED"; status=1; }
tail -n 40 "$W/logs/gen.stdout"; tail -n 25 "$W/logs/gen.stderr"
[ -f "$W/gen/goldens/bert-seqcls.json" ] || { echo "no goldens"; exit 1; }

note "our CLI on the fixtures"
python3 - "$W/reviews3.csv" "$W/reviews2.csv" <<'PY'
import sys
good = ["a warm and funny film", "a great cast and a sharp script", "lovely music and a moving story", "bold , beautiful and full of heart", "a smart thriller", "a tender love story"]
bad = ["the plot makes no sense", "a dull , tired movie", "the jokes fall flat", "painful to hear", "an ugly , loud and empty film", "lazy and confusing"]
mid = ["a film about a family", "the second half", "the old house", "a movie for sunday", "it is a film", "the camera and the music"]
with open(sys.argv[1], "w") as f:
    f.write("text,label\n")
    for i in range(36):
        for lab, pool in (("positive", good), ("negative", bad), ("neutral", mid)):
            f.write('"%s %s",%s\n' % (pool[i % 6], "." if i % 2 else "!", lab))
with open(sys.argv[2], "w") as f:
    f.write("sentence,stars\n")
    for i in range(48):
        f.write('"%s ."' % (good[i % 6] if i % 2 else bad[i % 6]) + (",1\n" if i % 2 else ",0\n"))
PY
cli() { # model, csv, text col, label col, out
  timeout 90 bash .gpu/boot.sh node "$BUNDLE/train.mjs" --model "$W/gen/$1" --data "$2" --text-column "$3" --label-column "$4" --out "$5" \
    --steps 8 --eval-every 4 --lr 2e-2 --batch-size 4 --rank 4 --alpha 8 --dropout 0.1 --validation 0.2 --max-length 32 \
    > "$W/logs/$(basename "$5").log" 2>&1 || { echo "CLI FAILED on $1"; status=1; }
  grep -v '^step [2-7]/' "$W/logs/$(basename "$5").log" | tail -n 25
  timeout 60 bash .gpu/boot.sh node "$BUNDLE/seqcls_logits.mjs" --model "$W/gen/$1" --adapter "$5" \
    --inputs "$W/gen/goldens/bert-checker-inputs-$1.json" --out "$5/our-logits.safetensors" || { echo "LOGITS FAILED on $1"; status=1; }
}
cli tiny-distilbert "$W/reviews3.csv" text label "$W/cli-distilbert"
cli tiny-bert "$W/reviews2.csv" sentence stars "$W/cli-bert"

summ() {
  python3 - "$1" <<'PY'
import json, sys
try:
    r = json.load(open(sys.argv[1]))
except Exception as e:
    print("   (no JSON report: %s)" % e); sys.exit()
print("   ok=%s rel=%s abs=%s key_check=%s head_values=%s expected_mentions=%d mentions=%d predictions_agree=%s base_new=%s" % (
    r.get("ok"), r.get("max_rel_error"), r.get("max_abs_error"),
    {k: v for k, v in (r.get("key_check") or {}).items()}, r.get("head_values_loaded"),
    len(r.get("expected_key_mentions", [])), len(r.get("key_mentions", [])), r.get("predictions_agree"), r.get("base_head_keys_new")))
for f in r.get("failures", []):
    print("   failure:", f[:400])
for m in r.get("expected_key_mentions", [])[:2]:
    print("   expected (base load):", m.get("message", "")[:200])
PY
}
chk() { # name want_rc args...
  local name=$1 want=$2; shift 2
  timeout 60 python3 "$D/check_peft_seqcls.py" "$@" > "$W/logs/check-$name.json" 2> "$W/logs/check-$name.stderr"
  local rc=$?
  if [ "$want" = any ] || [ "$rc" = "$want" ]; then v=OK; else v=UNEXPECTED; status=1; fi
  echo "check $name: rc=$rc (want $want) $v"; summ "$W/logs/check-$name.json"
}
note "PEFT loads our adapters"
for m in distilbert bert; do
  [ -f "$W/cli-$m/our-logits.safetensors" ] || continue
  I="$W/gen/goldens/bert-checker-inputs-tiny-$m.json"
  chk "ours-$m" 0 --base "$W/gen/tiny-$m" --adapter "$W/cli-$m" --inputs "$I" --expect "$W/cli-$m/our-logits.safetensors" --tol 1e-4 --floor 1
  chk "ours-$m-fp32" any --base "$W/gen/tiny-$m" --adapter "$W/cli-$m" --inputs "$I" --expect "$W/cli-$m/our-logits.safetensors" --tol 1e-4 --floor 1 --compute-dtype float32
done
note "PEFT's own adapters against the goldens"
G="$W/gen/goldens/bert-seqcls.safetensors"
for c in distilbert-lora:tiny-distilbert bert-lora:tiny-bert; do
  case=${c%%:*}; m=${c#*:}
  chk "peft-$case" 0 --base "$W/gen/$m" --adapter "$W/gen/selftest/peft-$case" --inputs "$W/gen/goldens/bert-checker-inputs-$m.json" --expect "$G" --expect-key "$case/logits"
  chk "peft-$case-vs-step5" 1 --base "$W/gen/$m" --adapter "$W/gen/selftest/peft-$case" --inputs "$W/gen/goldens/bert-checker-inputs-$m.json" --expect "$G" --expect-key "$case/step5_logits"
done
note "a broken adapter (classifier bias missing) must fail"
python3 - "$W/gen/selftest/peft-distilbert-lora" "$W/broken" <<'PY'
import shutil, sys, os
from safetensors.torch import load_file, save_file
src, dst = sys.argv[1], sys.argv[2]
shutil.rmtree(dst, ignore_errors=True); shutil.copytree(src, dst)
sd = load_file(os.path.join(src, "adapter_model.safetensors"))
sd.pop("base_model.model.classifier.bias", None)
save_file(sd, os.path.join(dst, "adapter_model.safetensors"), metadata={"format": "pt"})
PY
chk broken-no-bias 1 --base "$W/gen/tiny-distilbert" --adapter "$W/broken" --inputs "$W/gen/goldens/bert-checker-inputs-tiny-distilbert.json" --expect "$G" --expect-key distilbert-lora/logits

note "determinism (second generator run)"
timeout 120 python3 "$D/make_bert_goldens.py" --out "$W/rerun" > "$W/logs/rerun.stdout" 2> "$W/logs/rerun.stderr" || { echo "RERUN FAILED"; status=1; }
for f in tiny-distilbert/model.safetensors tiny-distilbert/tokenizer.json tiny-bert/model.safetensors tiny-bert/tokenizer.json \
         goldens/bert-seqcls.json goldens/bert-seqcls.safetensors selftest/peft-bert-lora/adapter_model.safetensors selftest/peft-distilbert-lora/adapter_config.json; do
  if cmp -s "$W/gen/$f" "$W/rerun/$f"; then echo "identical: $f"; else echo "DIFFERS: $f"; status=1; fi
done
rm -rf "$W/rerun"
note files
(cd "$W" && find gen cli-* -type f -printf '%8s  %p\n' | sort -k2)
note "status: $status"
exit $status
