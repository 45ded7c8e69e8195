#!/bin/bash
# Our training step (no PyTorch) under several kernel tunings, one process per tuning, on the GPU
# machine: ms/step over steps 10-STEPS and the per-kernel GPU times (timestamp queries) that differ.
#   here:         node scripts/node-run.mjs --bundle-only bench/dist bench/step-bench.ts
#   GPU machine:  bash bench/sweep-tuning.sh gpt2-124M c_attn 40 "" "splitKWorkgroups=640" "wideMatmulMinWorkgroups=250,halfWideMatmulMinWorkgroups=200"
#                 (device tool, carry .gpu bench/dist; "" is the defaults; models as bench/run-step-bench.sh makes them;
#                 a tuning that starts with "tc" runs with --tensor-cores: "tc", "tc,tensorCoreWideMinTiles=0")
set -uo pipefail
MODEL=$1 TARGETS=$2 STEPS=$3
shift 3
mkdir -p /tmp/bench /tmp/sweep
case $MODEL in gpt2-124M) ARCH=gpt2-small ;; smollm2-135M) ARCH=smollm2-135m ;; *) echo "unknown model $MODEL"; exit 2 ;; esac
[ -d /tmp/bench/$MODEL ] || python3 scripts/goldens/make_random_model.py --arch $ARCH --out /tmp/bench/$MODEL --tokenizer-from test/fixtures/tiny-gpt2 >/dev/null 2>&1
i=0
for t in "$@"; do
  i=$((i + 1))
  flags=()
  tt=$t
  if [[ $tt == tc* ]]; then flags+=(--tensor-cores); tt=${tt#tc}; tt=${tt#,}; fi
  [ -n "$tt" ] && flags+=(--tuning "$tt")
  bash .gpu/boot.sh node bench/dist/step-bench.mjs --model /tmp/bench/$MODEL --targets $TARGETS --steps "$STEPS" --json /tmp/sweep/$i.json "${flags[@]}" >/tmp/sweep/$i.log 2>&1 \
    || { echo "tuning '$t' failed:"; grep -v "^Warning\|While initializing\|    at " /tmp/sweep/$i.log | tail -5; }
done
python3 - "$@" <<'PY'
import json, sys
runs = []
for i, t in enumerate(sys.argv[1:], 1):
    try:
        runs.append((t or 'defaults', json.load(open(f'/tmp/sweep/{i}.json'))))
    except Exception as e:
        print(f'{t or "defaults"}: no result ({e})')
if not runs: sys.exit(0)
for t, d in runs:
    print(f'{d["msPerStep"]:7.2f} ms/step  {d["gpuBytes"] / 2**30:.2f} GiB  {t}')
names = list(dict.fromkeys(k['kernel'] for _, d in runs for k in d['kernels']))  # every run's kernels, the first run's order first
print('per-kernel ms/step (rows that move by >= 0.05 ms between tunings):')
print(' | '.join(f'{t[:28]:>28}' for t, _ in runs))
for n in names:
    vals = [next((k['msPerStep'] for k in d['kernels'] if k['kernel'] == n), 0.0) for _, d in runs]
    if max(vals) - min(vals) >= 0.05:
        print(' | '.join(f'{v:28.3f}' for v in vals) + f'   {n}')
PY
