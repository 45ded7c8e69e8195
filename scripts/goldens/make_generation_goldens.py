#!/usr/bin/env python3
"""Greedy generation goldens with LoRA adapters, from transformers + PEFT.

Usage (on a machine with torch, transformers, peft, safetensors; CPU is enough):

    python3 scripts/goldens/make_generation_goldens.py --out DIR [--fixtures test/fixtures] \
        [--stories MODEL_DIR --e2e CSV]

Writes DIR/generation-goldens/
    generation.json          one case per model: prompt text and ids, the adapter's folder, the greedy
                             tokens with the adapter (PeftModel) and without it (disable_adapter), why
                             each ended (EOS or max_new_tokens) and the smallest top-1/top-2 logit
                             margin along the way (how far from a tie the greedy choice ever was)
    tiny-gpt2-lora/          adapter_config.json + adapter_model.safetensors (PEFT save_pretrained)
    tiny-llama-lora/
    stories260k-lora/        (with --stories and --e2e)

The tiny models' adapters are deterministic LoRAs whose A and B are seeded U(-0.3, 0.3) (nonzero
B, so the adapter changes every layer it targets). The stories260K adapter is trained by PEFT for
60 AdamW steps on E2E ("mr" newline "ref" newline, loss on every token, no EOS so the adapted model
keeps writing past one sentence) in float32 on CPU with fixed seeds.

Greedy tokens are computed twice and must agree: a no-cache loop (the full forward over the
sequence so far, argmax of the last position, stop at EOS) and model.generate(do_sample=False)
with its KV cache. Everything runs in float32 on CPU; among a few candidate prompts the script
keeps the one whose greedy path stays furthest from a tie.
"""
import argparse
import csv
import json
import os
import random
import shutil
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

NEW_TOKENS = 40
STORIES_NEW_TOKENS = 48
TINY_PROMPTS = ["The sun", "Once upon a time", "The cafe is open", "Sam baked a cake", "The river"]
TINY_LORA = {
    "tiny-gpt2": {"r": 4, "lora_alpha": 8, "target_modules": ["c_attn", "c_proj"], "fan_in_fan_out": True},
    "tiny-llama": {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
                   "fan_in_fan_out": False},
}
STORIES_FT = {"r": 8, "lora_alpha": 16, "target_modules": ["q_proj", "v_proj"], "lr": 5e-3, "steps": 60, "batch_size": 8,
              "seed": 0, "max_length": 128}


def log(*a):
    print(*a, flush=True)


def load_model(mdir):
    import torch
    from transformers import AutoModelForCausalLM

    try:
        m = AutoModelForCausalLM.from_pretrained(mdir, attn_implementation="eager", dtype=torch.float32)
    except TypeError:
        m = AutoModelForCausalLM.from_pretrained(mdir, attn_implementation="eager", torch_dtype=torch.float32)
    return m.float().eval()


def greedy_no_cache(model, prompt_ids, max_new, eos):
    """Full forward over the sequence so far each step; returns (new ids, stopped at EOS, min top-1/top-2 margin)."""
    import torch

    cur = list(prompt_ids)
    new, margin = [], float("inf")
    with torch.no_grad():
        for _ in range(max_new):
            lg = model(input_ids=torch.tensor([cur])).logits[0, -1]
            top = torch.topk(lg, 2)
            margin = min(margin, float(top.values[0] - top.values[1]))
            nxt = int(top.indices[0])
            if nxt == eos:
                return new, True, margin
            new.append(nxt)
            cur.append(nxt)
    return new, False, margin


def greedy_generate(model, prompt_ids, max_new, eos):
    """model.generate (KV cache), EOS dropped from the end."""
    import torch

    inp = torch.tensor([prompt_ids])
    with torch.no_grad():
        out = model.generate(input_ids=inp, attention_mask=torch.ones_like(inp), max_new_tokens=max_new, do_sample=False,
                             num_beams=1, eos_token_id=eos, pad_token_id=eos)
    new = out[0, len(prompt_ids):].tolist()
    if new and new[-1] == eos:
        new = new[:-1]
    return new


def both_sides(peft_model, prompt_ids, max_new, eos):
    on = greedy_no_cache(peft_model, prompt_ids, max_new, eos)
    on_gen = greedy_generate(peft_model, prompt_ids, max_new, eos)
    with peft_model.disable_adapter():
        off = greedy_no_cache(peft_model, prompt_ids, max_new, eos)
        off_gen = greedy_generate(peft_model, prompt_ids, max_new, eos)
    return {
        "adapter_on": {"generated_ids": on[0], "stopped_at_eos": on[1], "min_top1_top2_margin": on[2], "generate_agrees": on_gen == on[0]},
        "adapter_off": {"generated_ids": off[0], "stopped_at_eos": off[1], "min_top1_top2_margin": off[2], "generate_agrees": off_gen == off[0]},
    }


def pick_prompt(peft_model, tok, prompts, max_new, eos, min_tokens):
    """The candidate whose adapter-on and -off greedy paths stay furthest from a tie (and, with the adapter, run min_tokens)."""
    best = None
    for text in prompts:
        ids = tok(text).input_ids
        sides = both_sides(peft_model, ids, max_new, eos)
        on = sides["adapter_on"]
        if not (on["generate_agrees"] and sides["adapter_off"]["generate_agrees"]):
            log("  prompt %r: generate() and the no-cache loop disagree, skipped" % text)
            continue
        if len(on["generated_ids"]) < min_tokens:
            log("  prompt %r: only %d tokens with the adapter, skipped" % (text, len(on["generated_ids"])))
            continue
        margin = min(on["min_top1_top2_margin"], sides["adapter_off"]["min_top1_top2_margin"])
        log("  prompt %r: margin %.3g, on/off differ: %s" % (text, margin, on["generated_ids"] != sides["adapter_off"]["generated_ids"]))
        if best is None or margin > best[0]:
            best = (margin, text, ids, sides)
    assert best is not None, "no prompt gave enough tokens"
    return best


def tiny_case(name, fixtures, out_dir):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoTokenizer

    mdir = os.path.join(fixtures, name)
    tok = AutoTokenizer.from_pretrained(mdir)
    base = load_model(mdir)
    eos = base.config.eos_token_id
    spec = TINY_LORA[name]
    cfg = LoraConfig(task_type="CAUSAL_LM", r=spec["r"], lora_alpha=spec["lora_alpha"], lora_dropout=0.0, bias="none",
                     target_modules=list(spec["target_modules"]), fan_in_fan_out=spec["fan_in_fan_out"])
    model = get_peft_model(base, cfg).eval()
    g = torch.Generator().manual_seed(20261122)
    with torch.no_grad():
        for n, p in sorted(model.named_parameters()):
            if "lora_" in n:
                p.copy_((torch.rand(p.shape, generator=g) * 0.6 - 0.3).to(p.dtype))
    model.peft_config["default"].base_model_name_or_path = name
    adir = os.path.join(out_dir, name + "-lora")
    model.save_pretrained(adir)
    margin, text, ids, sides = pick_prompt(model, tok, TINY_PROMPTS, NEW_TOKENS, eos, 0)
    return {"model": name, "model_dir": "test/fixtures/" + name, "adapter": os.path.basename(adir), "prompt": text,
            "add_special_tokens": True, "prompt_ids": ids, "max_new_tokens": NEW_TOKENS, "eos_token_id": eos,
            "lora": spec, "lora_values": "seeded U(-0.3, 0.3) for every lora_A and lora_B", **sides}


def stories_case(sdir, e2e, out_dir):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoTokenizer

    torch.manual_seed(STORIES_FT["seed"])
    tok = AutoTokenizer.from_pretrained(sdir)
    base = load_model(sdir)
    eos = base.config.eos_token_id
    with open(e2e, newline="", encoding="utf-8-sig") as f:
        rows = [r for r in csv.DictReader(f) if r["mr"].strip() and r["ref"].strip()]
    texts = [r["mr"] + "\n" + r["ref"] + "\n" for r in rows]
    cfg = LoraConfig(task_type="CAUSAL_LM", r=STORIES_FT["r"], lora_alpha=STORIES_FT["lora_alpha"], lora_dropout=0.0,
                     target_modules=list(STORIES_FT["target_modules"]))
    model = get_peft_model(base, cfg)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=STORIES_FT["lr"], weight_decay=0.0)
    rnd = random.Random(STORIES_FT["seed"])
    bs = STORIES_FT["batch_size"]
    losses = []
    model.train()
    for step in range(STORIES_FT["steps"]):
        batch = [tok(t).input_ids[: STORIES_FT["max_length"]] for t in rnd.sample(texts, bs)]
        T = max(len(b) for b in batch)
        ids = torch.full((bs, T), eos, dtype=torch.long)
        am = torch.zeros((bs, T), dtype=torch.long)
        lab = torch.full((bs, T), -100, dtype=torch.long)
        for i, b in enumerate(batch):
            ids[i, : len(b)] = torch.tensor(b)
            am[i, : len(b)] = 1
            lab[i, : len(b)] = torch.tensor(b)
        loss = model(input_ids=ids, attention_mask=am, labels=lab).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss))
    log("  stories LoRA: loss %.3f -> %.3f" % (losses[0], losses[-1]))
    model.eval()
    model.peft_config["default"].base_model_name_or_path = "stories260K-hf"
    adir = os.path.join(out_dir, "stories260k-lora")
    model.save_pretrained(adir)
    # prompts: E2E meaning representations the adapter learned the shape of (rows far apart in the file)
    prompts = [rows[k]["mr"] + "\n" for k in (3, 250, 700, 1500, 2500) if k < len(rows)]
    prompts.append("Once upon a time")
    margin, text, ids, sides = pick_prompt(model, tok, prompts, STORIES_NEW_TOKENS, eos, 40)
    return {"model": "stories260K", "model_dir": "../shared/models/stories260K-hf", "adapter": os.path.basename(adir),
            "prompt": text, "add_special_tokens": True, "prompt_ids": ids, "max_new_tokens": STORIES_NEW_TOKENS, "eos_token_id": eos,
            "lora": {k: STORIES_FT[k] for k in ("r", "lora_alpha", "target_modules")},
            "training": {**STORIES_FT, "data": "e2e_dev.csv rows with mr and ref, text = mr + '\\n' + ref + '\\n'",
                         "optimizer": "torch.optim.AdamW(weight_decay=0)", "first_loss": losses[0], "last_loss": losses[-1]},
            "text_adapter_on": tok.decode(ids + sides["adapter_on"]["generated_ids"], skip_special_tokens=True),
            "text_adapter_off": tok.decode(ids + sides["adapter_off"]["generated_ids"], skip_special_tokens=True),
            **sides}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--fixtures", default=os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "test", "fixtures"))
    ap.add_argument("--stories")
    ap.add_argument("--e2e")
    a = ap.parse_args()
    import peft
    import torch
    import transformers

    torch.set_num_threads(4)
    out_dir = os.path.join(a.out, "generation-goldens")
    shutil.rmtree(out_dir, ignore_errors=True)
    os.makedirs(out_dir)
    doc = {"versions": {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__},
           "conventions": "float32 on CPU, eager attention; generated_ids exclude the EOS that ended a generation", "cases": []}
    for name in ("tiny-gpt2", "tiny-llama"):
        log(name)
        doc["cases"].append(tiny_case(name, a.fixtures, out_dir))
    if a.stories and a.e2e:
        log("stories260K")
        doc["cases"].append(stories_case(a.stories, a.e2e, out_dir))
    with open(os.path.join(out_dir, "generation.json"), "w") as f:
        json.dump(doc, f, indent=1)
    log("wrote", out_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
