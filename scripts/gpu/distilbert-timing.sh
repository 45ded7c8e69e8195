#!/bin/bash
# DistilBERT-base-shaped classifier (random weights) trained 20 steps at 32 x 128 with our CLI, and
# the same shape with PyTorch + PEFT, on the GPU machine. Needs .gpu/ (../shared/gpu/pack.sh) and
# bench/dist/train.mjs (node scripts/node-run.mjs --bundle-only bench/dist src/cli/train.ts).
#   device tool: bash scripts/gpu/distilbert-timing.sh   (carry .gpu bench/dist)
set -uo pipefail
export PYTHONUNBUFFERED=1
python3 - <<'PY'
import os, random, shutil, time, json
import torch
from transformers import DistilBertConfig, DistilBertForSequenceClassification
cfg = DistilBertConfig(vocab_size=30522, dim=768, n_layers=6, n_heads=12, hidden_dim=3072, max_position_embeddings=512,
                       dropout=0.0, attention_dropout=0.0, seq_classif_dropout=0.0, num_labels=2, pad_token_id=0)
torch.manual_seed(0)
m = DistilBertForSequenceClassification(cfg).eval()
m.distilbert.save_pretrained('/tmp/dbert')          # the base encoder, as a checkpoint a user would bring
for f in ('tokenizer.json', 'tokenizer_config.json', 'special_tokens_map.json'):
    shutil.copyfile(os.path.join('test/fixtures/tiny-distilbert', f), os.path.join('/tmp/dbert', f))
random.seed(0)
vocab = json.load(open('test/fixtures/tiny-distilbert/tokenizer.json'))['model']['vocab']
words = [w for w in vocab if w.isalpha() and not w.startswith('##')][:200]
with open('/tmp/cls.csv', 'w') as f:
    f.write('text,label\n')
    for i in range(640):
        f.write('"' + ' '.join(random.choice(words) for _ in range(160)) + '",' + random.choice(['pos', 'neg']) + '\n')
# PyTorch + PEFT, same shape: LoRA r=8 on q_lin,v_lin + the classifier head, AdamW, 32 x 128
from peft import LoraConfig, get_peft_model
for dtype in ('fp32', 'bf16'):
    model = DistilBertForSequenceClassification(cfg).cuda()
    model = get_peft_model(model, LoraConfig(task_type='SEQ_CLS', r=8, lora_alpha=16, target_modules=['q_lin', 'v_lin']))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    ids = torch.randint(1000, 30000, (32, 128), device='cuda'); labels = torch.randint(0, 2, (32,), device='cuda')
    def step():
        with torch.autocast('cuda', dtype=torch.bfloat16, enabled=dtype == 'bf16'):
            loss = model(input_ids=ids, labels=labels).loss
        loss.backward(); torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0); opt.step(); opt.zero_grad(set_to_none=True)
    for _ in range(5): step()
    torch.cuda.synchronize(); t0 = time.perf_counter()
    for _ in range(30): step()
    torch.cuda.synchronize()
    print(json.dumps({'torch_peft': dtype, 'ms_per_step': round((time.perf_counter() - t0) * 1000 / 30, 2)}))
PY
bash .gpu/boot.sh node bench/dist/train.mjs --model /tmp/dbert --data /tmp/cls.csv --out /tmp/dbert-out --text-column text \
  --label-column label --steps 20 --batch-size 32 --max-length 128 --validation 0.05 --rank 8 --alpha 16 --lr 1e-4 2>&1 | grep -v '^step [0-9]*/'
