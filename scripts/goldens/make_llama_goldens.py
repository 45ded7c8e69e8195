#!/usr/bin/env python3
"""Tiny Llama / Qwen2 / Qwen3 test models, their PyTorch + PEFT LoRA goldens, and the stories260K references.

Usage (on a machine with torch, transformers, peft, tokenizers, safetensors):

    python3 scripts/goldens/make_llama_goldens.py --out DIR [--stories MODEL_DIR] [--e2e CSV] [--skip-stories]

Writes
    DIR/tiny-llama/, DIR/tiny-qwen2/, DIR/tiny-qwen3/
                                   config.json, generation_config.json, model.safetensors (float32),
                                   tokenizer.json, tokenizer_config.json, special_tokens_map.json
                                   (the tokenizer files are copied from test/fixtures/tiny-gpt2)
    DIR/goldens/llama-lora.json    batch, losses, grad norms, names, adapter configs, all-linear expansion
    DIR/goldens/llama-lora.safetensors
                                   float32 tensors base/<model>/logits, <case>/logits, <case>/init/<name>,
                                   <case>/grad/<name>, <case>/step5/<name>
    DIR/goldens/llama-checker-inputs.json
                                   the batch as check_peft_adapter.py --inputs takes it
    DIR/goldens/stories260k.json   greedy generation, last-position logits and a PEFT LoRA run on E2E
    DIR/goldens/stories260k-lora.safetensors
                                   float32 LoRA tensors of that run: init/<name>, step40/<name>
    DIR/selftest/                  PEFT-saved adapters of every case (float32, initial LoRA values)

The tiny-model references are computed in float64 on CPU (see "conventions" in the JSON), the
stories260K run in float32 on CPU, single thread, fixed seeds: a second run gives the same bytes.
"""
import argparse
import contextlib
import csv
import json
import math
import os
import shutil
import sys
import tempfile
import traceback

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)
from make_gpt2_goldens import causal_lm_loss, nice_below, peft_name  # noqa: E402

TOKENIZER_FROM = os.path.join(REPO, "test", "fixtures", "tiny-gpt2")
TOKENIZER_FILES = ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"]
EOS = "<|endoftext|>"
SEED = 4321

# The three tiny models. Common: hidden 32, 2 layers, 4 heads, silu, rms_norm_eps 1e-6,
# max_position_embeddings 64, initializer_range 0.1, bos = eos = <|endoftext|> (id 0), no pad token.
MODELS = {
    "tiny-llama": {
        "class": "LlamaForCausalLM", "config_class": "LlamaConfig", "model_type": "llama",
        "kw": {"intermediate_size": 88, "num_key_value_heads": 2, "head_dim": 8, "tie_word_embeddings": False,
               "attention_bias": False, "mlp_bias": False},
        "rope_theta": 10000.0,
        "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                         "original_max_position_embeddings": 16},
        "optional": {},
    },
    "tiny-qwen2": {
        "class": "Qwen2ForCausalLM", "config_class": "Qwen2Config", "model_type": "qwen2",
        "kw": {"intermediate_size": 64, "num_key_value_heads": 1, "tie_word_embeddings": True},
        "rope_theta": 1000000.0, "rope_scaling": None,
        "optional": {"use_sliding_window": False},
    },
    "tiny-qwen3": {
        "class": "Qwen3ForCausalLM", "config_class": "Qwen3Config", "model_type": "qwen3",
        "kw": {"intermediate_size": 64, "num_key_value_heads": 2, "head_dim": 16, "tie_word_embeddings": True,
               "attention_bias": False},
        "rope_theta": 1000000.0, "rope_scaling": None,
        "optional": {"use_sliding_window": False},
    },
}
COMMON = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "hidden_act": "silu",
          "rms_norm_eps": 1e-6, "max_position_embeddings": 64, "initializer_range": 0.1}
REQUIRED_CONFIG_FIELDS = ["model_type", "architectures", "vocab_size", "hidden_size", "intermediate_size",
                          "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "rms_norm_eps",
                          "max_position_embeddings", "tie_word_embeddings", "bos_token_id", "eos_token_id",
                          "hidden_act"]

ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
CASES = [
    {"name": "llama-all-linear", "model": "tiny-llama",
     "lora": {"r": 4, "lora_alpha": 8, "target_modules": ALL_LINEAR, "use_rslora": False}},
    {"name": "llama-qv-rslora", "model": "tiny-llama",
     "lora": {"r": 8, "lora_alpha": 16, "target_modules": ["q_proj", "v_proj"], "use_rslora": True}},
    {"name": "qwen2-all-linear", "model": "tiny-qwen2",
     "lora": {"r": 4, "lora_alpha": 8, "target_modules": ALL_LINEAR, "use_rslora": False}},
    {"name": "qwen3-all-linear", "model": "tiny-qwen3",
     "lora": {"r": 4, "lora_alpha": 8, "target_modules": ALL_LINEAR, "use_rslora": False}},
]
# Same optimizer as the GPT-2 goldens.
OPT = {"lr": 1e-2, "betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": 0.01, "max_grad_norm": 1.0, "steps": 5}

# The batch: (prompt, completion); each row is ids(prompt) + ids(completion) + [eos], right-padded.
# Token counts with the tiny byte-level BPE: 3+6+1 = 10, 3+8+1 = 12, 2+6+1 = 9 -> T = 12.
PAIRS = [("The sun", " went down."), ("The cafe", " is open late."), ("Sam", " baked a cake.")]

# stories260K
STORIES_PROMPT = "Once upon a time"
STORIES_README_TEXT = ("Once upon a time, there was a little girl named Lily. She loved to play outside in the park. "
                       "One day, she saw a big, red ball.")
STORIES_NEW_TOKENS = 40
FT = {"r": 4, "lora_alpha": 8, "lora_dropout": 0.0, "lr": 3e-3, "betas": [0.9, 0.999], "eps": 1e-8,
      "weight_decay": 0.0, "max_grad_norm": 1.0, "batch_size": 8, "steps": 40, "max_length": 256,
      "shuffle_seed": 0, "eval_rows": 64, "eval_every": 10, "init_seed": 0}


def log(*a):
    print(*a, flush=True)


def rel_err(a, b):
    """max |a - b| / max |b| (the metric of the engine's logits check)."""
    import torch

    a = a.detach().to(torch.float64)
    b = b.detach().to(torch.float64)
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-300))


# --------------------------------------------------------------------------------------------
# The engine's batch order (src/data/batches.ts: mulberry32, mixSeed, epochOrder), ported exactly.
# --------------------------------------------------------------------------------------------
_M32 = 0xFFFFFFFF


def _imul(a, b):
    return ((a & _M32) * (b & _M32)) & _M32


def seeded_random(seed):
    state = [seed & _M32]

    def rnd():
        state[0] = (state[0] + 0x6D2B79F5) & _M32
        t = state[0]
        t = _imul(t ^ (t >> 15), t | 1)
        t ^= (t + _imul(t ^ (t >> 7), t | 61)) & _M32
        return ((t ^ (t >> 14)) & _M32) / 4294967296

    return rnd


def mix_seed(a, b):
    a &= _M32
    b &= _M32
    h = _imul(a ^ 0x9E3779B9, 0x85EBCA6B)
    h = _imul(h ^ (h >> 13) ^ b, 0xC2B2AE35)
    h ^= _imul(b, 0x27D4EB2F)
    return (h ^ (h >> 16)) & _M32


def epoch_order(n, epoch, seed):
    order = list(range(n))
    rnd = seeded_random(mix_seed(seed, epoch))
    for i in range(n - 1, 0, -1):
        j = int(rnd() * (i + 1))
        order[i], order[j] = order[j], order[i]
    return order


def ids_checksum(ids):
    """sum over t of (t + 1) * ids[t]: an exact integer that JavaScript can recompute."""
    return sum((t + 1) * int(x) for t, x in enumerate(ids))


# --------------------------------------------------------------------------------------------
# RoPE and an independent float64 forward pass (cross-check of transformers, not the golden)
# --------------------------------------------------------------------------------------------
def own_inv_freq(theta, dim, scaling):
    """inv_freq in float64: default RoPE, or Llama 3 scaling (transformers' _compute_llama3_parameters)."""
    import torch

    inv = 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim))
    if not scaling or scaling.get("rope_type", "default") == "default":
        return inv
    assert scaling["rope_type"] == "llama3", scaling
    factor = float(scaling["factor"])
    lo, hi = float(scaling["low_freq_factor"]), float(scaling["high_freq_factor"])
    old = float(scaling["original_max_position_embeddings"])
    low_wl, high_wl = old / lo, old / hi
    wl = 2 * math.pi / inv
    out = torch.where(wl > low_wl, inv / factor, inv)
    smooth = (old / wl - lo) / (hi - lo)
    smoothed = (1 - smooth) * out / factor + smooth * out
    medium = ~(wl < high_wl) & ~(wl > low_wl)
    return torch.where(medium, smoothed, out)


def own_forward(sd, meta, ids, am, lora=None):
    """Pure float64 Llama/Qwen2/Qwen3 forward from a state dict. lora: {module path: (A, B, scaling)}."""
    import torch

    B, T = ids.shape
    H, KV, D = meta["heads"], meta["kv_heads"], meta["head_dim"]
    eps = meta["eps"]

    def rms(x, w):
        return w * (x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps))

    def lin(x, path):
        y = x @ sd[path + ".weight"].T
        if path + ".bias" in sd:
            y = y + sd[path + ".bias"]
        if lora and path in lora:
            A, Bm, s = lora[path]
            y = y + s * ((x @ A.T) @ Bm.T)
        return y

    def rot(x):
        h = x.shape[-1] // 2
        return torch.cat((-x[..., h:], x[..., :h]), dim=-1)

    pos = torch.arange(T, dtype=torch.float64)
    freqs = pos[:, None] * meta["inv_freq"][None, :]
    emb = torch.cat((freqs, freqs), dim=-1)
    cos, sin = emb.cos(), emb.sin()
    allowed = torch.tril(torch.ones(T, T, dtype=torch.bool))[None] & (am[:, None, :] == 1)  # [B, Tq, Tk]
    x = sd["model.embed_tokens.weight"][ids]
    for l in range(meta["layers"]):
        p = "model.layers.%d." % l
        h = rms(x, sd[p + "input_layernorm.weight"])
        q = lin(h, p + "self_attn.q_proj").view(B, T, H, D)
        k = lin(h, p + "self_attn.k_proj").view(B, T, KV, D)
        v = lin(h, p + "self_attn.v_proj").view(B, T, KV, D)
        if meta["qk_norm"]:
            q = rms(q, sd[p + "self_attn.q_norm.weight"])
            k = rms(k, sd[p + "self_attn.k_norm.weight"])
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        q = q * cos + rot(q) * sin
        k = k * cos + rot(k) * sin
        k = k.repeat_interleave(H // KV, dim=1)
        v = v.repeat_interleave(H // KV, dim=1)
        s = (q @ k.transpose(-1, -2)) / math.sqrt(D)
        s = s.masked_fill(~allowed[:, None], float("-inf"))
        o = (torch.softmax(s, dim=-1) @ v).transpose(1, 2).reshape(B, T, H * D)
        x = x + lin(o, p + "self_attn.o_proj")
        h = rms(x, sd[p + "post_attention_layernorm.weight"])
        g = lin(h, p + "mlp.gate_proj")
        x = x + lin(torch.nn.functional.silu(g) * lin(h, p + "mlp.up_proj"), p + "mlp.down_proj")
    x = rms(x, sd["model.norm.weight"])
    head = sd.get("lm_head.weight", sd["model.embed_tokens.weight"])
    return x @ head.T


# --------------------------------------------------------------------------------------------
# Tiny models
# --------------------------------------------------------------------------------------------
def make_config(name, vocab_size, eos_id, notes):
    import transformers

    spec = MODELS[name]
    cls = getattr(transformers, spec["config_class"])
    kw = dict(COMMON, vocab_size=vocab_size, bos_token_id=eos_id, eos_token_id=eos_id, pad_token_id=None,
              **spec["kw"])
    rp = {"rope_type": "default", "rope_theta": spec["rope_theta"]}
    if spec["rope_scaling"]:
        rp.update(spec["rope_scaling"])
    attempts = [
        ("rope_parameters", dict(kw, rope_parameters=dict(rp), **spec["optional"])),
        ("rope_parameters, no optional fields", dict(kw, rope_parameters=dict(rp))),
        ("rope_theta/rope_scaling", dict(kw, rope_theta=spec["rope_theta"], rope_scaling=spec["rope_scaling"],
                                         **spec["optional"])),
    ]
    errors = []
    for what, a in attempts:
        try:
            cfg = cls(**a)
        except Exception as e:  # noqa: BLE001
            errors.append("%s: %s: %s" % (what, type(e).__name__, e))
            continue
        if errors:
            notes.append("%s config built with %s after: %s" % (name, what, " | ".join(errors)))
        return cfg
    raise RuntimeError("cannot build %s config: %s" % (name, " | ".join(errors)))


def config_rope(cfg):
    """(theta, scaling or None) as the config holds them (transformers 5 rope_parameters or classic fields)."""
    rp = getattr(cfg, "rope_parameters", None)
    if isinstance(rp, dict) and "rope_theta" not in rp and rp and all(isinstance(v, dict) for v in rp.values()):
        rp = next(iter(rp.values()))  # per-layer-type parameters: all layers here are full attention
    if isinstance(rp, dict) and "rope_theta" in rp:
        sc = {k: v for k, v in rp.items() if k != "rope_theta"}
        return float(rp["rope_theta"]), (None if sc.get("rope_type", "default") == "default" else sc)
    sc = getattr(cfg, "rope_scaling", None)
    if sc and sc.get("rope_type", sc.get("type")) == "default":
        sc = None
    return float(getattr(cfg, "rope_theta")), sc


def build_model(name, vocab_size, eos_id, mdir, seed, notes):
    import torch
    import transformers

    spec = MODELS[name]
    cfg = make_config(name, vocab_size, eos_id, notes)
    torch.manual_seed(seed)
    model = getattr(transformers, spec["class"])(cfg).float()
    g = torch.Generator().manual_seed(seed + 1)
    n_norm = n_bias = 0
    with torch.no_grad():
        for mname, m in sorted(model.named_modules()):
            if type(m).__name__.endswith("RMSNorm"):
                m.weight.copy_(1.0 + (torch.rand(m.weight.shape, generator=g) * 0.4 - 0.2))
                n_norm += 1
        for pname, p in sorted(model.named_parameters()):
            if pname.endswith(".bias"):
                p.copy_(torch.rand(p.shape, generator=g) * 0.2 - 0.1)
                n_bias += 1
    emb = model.get_input_embeddings().weight
    head = model.get_output_embeddings().weight
    tied = head.data_ptr() == emb.data_ptr()
    assert tied == spec["kw"]["tie_word_embeddings"], (name, "tied", tied)
    std = float(emb.detach().std())
    assert 0.07 < std < 0.13, (name, "embedding std", std)  # initializer_range 0.1 took effect
    model.save_pretrained(mdir)
    assert os.path.exists(os.path.join(mdir, "model.safetensors")), "model.safetensors not written"
    cpath = os.path.join(mdir, "config.json")
    with open(cpath) as f:
        cj = json.load(f)
    missing = [k for k in REQUIRED_CONFIG_FIELDS if k not in cj]
    if "rope_parameters" not in cj and "rope_theta" not in cj:
        missing.append("rope_parameters/rope_theta")
    if spec["model_type"] != "qwen2" and "head_dim" not in cj and "head_dim" in spec["kw"]:
        missing.append("head_dim")
    if missing:
        notes.append("%s: config.json from save_pretrained lacked %s; rewritten with to_json_file(use_diff=False)"
                     % (name, missing))
        model.config.to_json_file(cpath, use_diff=False)
        with open(cpath) as f:
            cj = json.load(f)
    assert cj.get("model_type") == spec["model_type"], cj.get("model_type")
    for fn in TOKENIZER_FILES:
        shutil.copyfile(os.path.join(TOKENIZER_FROM, fn), os.path.join(mdir, fn))
    return model, {"rmsnorm_weights_perturbed": n_norm, "biases_perturbed": n_bias, "embedding_std": std,
                   "tied": tied}


def load_model(mdir, dtype):
    import torch
    from transformers import AutoModelForCausalLM

    try:
        m = AutoModelForCausalLM.from_pretrained(mdir, attn_implementation="eager", dtype=torch.float32)
    except TypeError:
        m = AutoModelForCausalLM.from_pretrained(mdir, attn_implementation="eager", torch_dtype=torch.float32)
    return m.to(dtype)


def model_meta(model):
    import torch

    c = model.config
    try:
        theta, scaling = config_rope(c)
    except Exception:  # noqa: BLE001 (the inv_freq check against transformers' values follows)
        name = [k for k, v in MODELS.items() if v["model_type"] == c.model_type][0]
        theta, scaling = MODELS[name]["rope_theta"], MODELS[name]["rope_scaling"]
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    return {
        "heads": c.num_attention_heads, "kv_heads": c.num_key_value_heads, "head_dim": head_dim,
        "layers": c.num_hidden_layers, "eps": c.rms_norm_eps, "qk_norm": c.model_type == "qwen3",
        "theta": theta, "scaling": scaling,
        "inv_freq": own_inv_freq(theta, head_dim, scaling).to(torch.float64),
    }


def build_batch(encode, eos_id):
    seqs, labs, texts = [], [], []
    for p, c in PAIRS:
        pi, ci = encode(p), encode(c)
        seqs.append(pi + ci + [eos_id])
        labs.append([-100] * len(pi) + ci + [eos_id])
        texts.append({"prompt": p, "completion": c, "prompt_tokens": len(pi), "completion_tokens": len(ci)})
    lens = [len(s) for s in seqs]
    T = max(lens)
    assert len(set(lens)) == 3, ("row lengths must differ", lens)
    assert 10 <= T <= 20, T
    batch = {"input_ids": [], "attention_mask": [], "labels": []}
    for ids, lab in zip(seqs, labs):
        pad = T - len(ids)
        batch["input_ids"].append(ids + [eos_id] * pad)
        batch["attention_mask"].append([1] * len(ids) + [0] * pad)
        batch["labels"].append(lab + [-100] * pad)
    return batch, texts


def lora_config(lc, **extra):
    from peft import LoraConfig

    return LoraConfig(task_type="CAUSAL_LM", fan_in_fan_out=False, lora_dropout=0.0, bias="none",
                      r=lc["r"], lora_alpha=lc["lora_alpha"], target_modules=lc["target_modules"] if isinstance(
                          lc["target_modules"], str) else list(lc["target_modules"]),
                      use_rslora=lc["use_rslora"], **extra)


def lora_dict_for_own(pnames, values, scaling):
    """PEFT names -> {module path: (A, B, scaling)} for own_forward."""
    import torch

    out = {}
    for n in pnames:
        if ".lora_A." not in n:
            continue
        path = n[len("base_model.model."):-len(".lora_A.weight")]
        out[path] = (values[n].to(torch.float64), values[n.replace(".lora_A.", ".lora_B.")].to(torch.float64), scaling)
    return out


def run_case(case, mdir, batch_t, case_idx, own_sd, meta, notes):
    import torch
    from peft import get_peft_model, get_peft_model_state_dict

    name = case["name"]
    lc = case["lora"]
    base = load_model(mdir, torch.float64)
    config = lora_config(lc)
    model = get_peft_model(base, config)
    model = model.double()

    named = [(n, p) for n, p in model.named_parameters() if "lora_" in n]
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert sorted(trainable) == sorted(n for n, _ in named), (trainable, [n for n, _ in named])
    assert all(p.dtype == torch.float64 for _, p in model.named_parameters())
    pnames = [peft_name(n) for n, _ in named]
    sd_keys = list(get_peft_model_state_dict(model).keys())
    assert sorted(sd_keys) == sorted(pnames), ("PEFT state-dict names differ", sd_keys, pnames)
    params = [p for _, p in named]
    n_layers = meta["layers"]
    assert len(pnames) == 2 * n_layers * len(lc["target_modules"]), (name, len(pnames))
    for n, p in zip(pnames, params):
        if ".lora_A." in n:
            assert p.shape[0] == lc["r"], (n, p.shape)
        else:
            assert p.shape[1] == lc["r"], (n, p.shape)

    g = torch.Generator().manual_seed(SEED + 100 + case_idx)
    init = {}
    with torch.no_grad():
        for n, p in zip(pnames, params):
            v = torch.rand(p.shape, generator=g, dtype=torch.float32) * 0.6 - 0.3
            init[n] = v.clone()
            p.copy_(v.to(torch.float64))

    scaling = lc["lora_alpha"] / (math.sqrt(lc["r"]) if lc["use_rslora"] else lc["r"])
    for mn, m in model.named_modules():
        if hasattr(m, "scaling") and isinstance(getattr(m, "scaling"), dict) and "default" in m.scaling:
            assert abs(m.scaling["default"] - scaling) < 1e-12, (mn, m.scaling, scaling)

    ids, am, labels = batch_t
    model.train()
    model.zero_grad(set_to_none=True)
    out = model(input_ids=ids, attention_mask=am, labels=labels)
    logits = out.logits
    assert logits.dtype == torch.float64, logits.dtype
    loss = causal_lm_loss(logits, labels)
    hf_loss = float(out.loss)
    if abs(hf_loss - float(loss)) > 1e-5 * max(1.0, abs(float(loss))):
        raise AssertionError("own loss %r != transformers loss %r" % (float(loss), hf_loss))
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in zip(pnames, params)}
    g0 = math.sqrt(sum(float((gr * gr).sum()) for gr in grads.values()))

    with torch.no_grad():
        pos = torch.arange(ids.shape[1]).unsqueeze(0).expand_as(ids)
        lg2 = model(input_ids=ids, attention_mask=am, position_ids=pos).logits
        assert torch.allclose(lg2, logits, rtol=0, atol=1e-12), "position_ids default differs from arange"
        own = own_forward(own_sd, meta, ids, am, lora_dict_for_own(pnames, init, scaling))
        own_err = rel_err(own, logits)
    if own_err > 1e-5:
        notes.append("WARNING %s: own float64 forward differs from transformers+PEFT by %.3g (rel to max|logit|)"
                     % (name, own_err))

    max_norm = OPT["max_grad_norm"]
    lowered = False
    if g0 <= max_norm:
        max_norm = nice_below(g0)
        lowered = True
        notes.append("%s: grad norm %.4g <= 1, max_grad_norm lowered to %g" % (name, g0, max_norm))

    with torch.no_grad():
        for n, p in zip(pnames, params):
            p.copy_(init[n].to(torch.float64))
    opt = torch.optim.AdamW(params, lr=OPT["lr"], betas=tuple(OPT["betas"]), eps=OPT["eps"],
                            weight_decay=OPT["weight_decay"])
    step_losses, step_norms, clipped = [], [], []
    for _ in range(OPT["steps"]):
        opt.zero_grad(set_to_none=True)
        o = model(input_ids=ids, attention_mask=am)
        l = causal_lm_loss(o.logits, labels)
        l.backward()
        tn = torch.nn.utils.clip_grad_norm_(params, max_norm=max_norm)
        opt.step()
        step_losses.append(float(l))
        step_norms.append(float(tn))
        clipped.append(bool(float(tn) > max_norm))
    assert abs(step_losses[0] - float(loss)) < 1e-12
    assert abs(step_norms[0] - g0) < 1e-9 * max(1.0, g0)
    step5 = {n: p.detach().clone() for n, p in zip(pnames, params)}
    with torch.no_grad():
        step5_logits = model(input_ids=ids, attention_mask=am).logits.detach().clone()

    rec = {
        "name": name,
        "model": case["model"],
        "lora": {"r": lc["r"], "lora_alpha": lc["lora_alpha"], "target_modules": list(lc["target_modules"]),
                 "use_rslora": lc["use_rslora"], "lora_dropout": 0.0, "fan_in_fan_out": False, "bias": "none",
                 "scaling": scaling},
        "optimizer": {"lr": OPT["lr"], "betas": OPT["betas"], "eps": OPT["eps"],
                      "weight_decay": OPT["weight_decay"], "max_grad_norm": max_norm,
                      "max_grad_norm_lowered": lowered, "steps": OPT["steps"]},
        "loss": float(loss),
        "loss_transformers": hf_loss,
        "grad_norm": g0,
        "step_losses": step_losses,
        "step_grad_norms": step_norms,
        "step_clipped": clipped,
        "loss_after_steps": float(causal_lm_loss(step5_logits, labels)),
        "own_float64_forward_rel_err": own_err,
        "param_names": pnames,
        "param_shapes": {n: list(init[n].shape) for n in pnames},
    }
    tensors = {"%s/logits" % name: logits.detach()}
    for n in pnames:
        tensors["%s/init/%s" % (name, n)] = init[n]
        tensors["%s/grad/%s" % (name, n)] = grads[n]
        tensors["%s/step5/%s" % (name, n)] = step5[n]
    return rec, tensors, init


def peft_save(out_dir, mdir_rel, config, init, sub):
    """get_peft_model on the float32 base, set the LoRA values, PEFT save_pretrained; returns adapter_config.json."""
    import torch
    from peft import get_peft_model

    with contextlib.chdir(out_dir):
        base = load_model(mdir_rel, torch.float32)
        model = get_peft_model(base, config)
        if init is not None:
            with torch.no_grad():
                for n, p in model.named_parameters():
                    if "lora_" in n:
                        p.copy_(init[peft_name(n)].to(p.dtype))
        model.peft_config["default"].base_model_name_or_path = mdir_rel
        model.save_pretrained(sub)
        expanded = model.peft_config["default"].target_modules
        wrapped = sorted({n[: -len(".lora_A")] for n, _ in model.named_modules() if n.endswith(".lora_A")})
    card = os.path.join(out_dir, sub, "README.md")
    if os.path.exists(card):
        os.remove(card)
    with open(os.path.join(out_dir, sub, "adapter_config.json")) as f:
        ac = json.load(f)
    return ac, expanded, wrapped


def tiny_part(out, notes):
    import torch
    from safetensors.torch import save_file
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    gdir = os.path.join(out, "goldens")
    sdir = os.path.join(out, "selftest")
    tok_raw = Tokenizer.from_file(os.path.join(TOKENIZER_FROM, "tokenizer.json"))
    eos_id = tok_raw.token_to_id(EOS)
    V = tok_raw.get_vocab_size()
    assert eos_id == 0 and V == 360, (eos_id, V)

    def encode(text):
        return list(tok_raw.encode(text).ids)

    batch, texts = build_batch(encode, eos_id)
    ids = torch.tensor(batch["input_ids"], dtype=torch.long)
    am = torch.tensor(batch["attention_mask"], dtype=torch.long)
    labels = torch.tensor(batch["labels"], dtype=torch.long)
    B, T = ids.shape

    models_out, tensors, base_info = {}, {}, {}
    metas, own_sds = {}, {}
    for mi, name in enumerate(MODELS):
        mdir = os.path.join(out, name)
        built, binfo = build_model(name, V, eos_id, mdir, SEED + 10 * mi, notes)
        built_sd = {k: v.detach().clone() for k, v in built.state_dict().items()}
        del built
        # reload (what users of the fixture do): same weights, tokenizer loads and agrees
        m32 = load_model(mdir, torch.float32)
        sd32 = m32.state_dict()
        assert sorted(sd32) == sorted(built_sd), (name, sorted(set(sd32) ^ set(built_sd)))
        for k in built_sd:
            assert torch.equal(sd32[k], built_sd[k]), (name, "reloaded weight differs", k)
        try:
            at = AutoTokenizer.from_pretrained(mdir)
            for p, c in PAIRS:
                for s in (p, c):
                    if at(s)["input_ids"] != encode(s):
                        notes.append("WARNING %s: AutoTokenizer ids differ on %r" % (name, s))
            tok_class = type(at).__name__
        except Exception as e:  # noqa: BLE001
            tok_class = None
            notes.append("WARNING %s: AutoTokenizer.from_pretrained failed: %s: %s" % (name, type(e).__name__, e))
        meta = model_meta(m32)
        rot = [m for n_, m in m32.named_modules() if n_.endswith("rotary_emb") and hasattr(m, "inv_freq")]
        tf_inv = rot[0].inv_freq.detach().to(torch.float64)
        if tf_inv.shape != meta["inv_freq"].shape or float(
                ((tf_inv - meta["inv_freq"]).abs() / meta["inv_freq"]).max()) > 1e-6:
            notes.append("WARNING %s: transformers' inv_freq %s differs from the expected %s; own_forward uses "
                         "transformers' values" % (name, tf_inv.tolist(), meta["inv_freq"].tolist()))
            meta["inv_freq"] = tf_inv
        own_sd = {k: v.detach().to(torch.float64) for k, v in sd32.items()}
        if "lm_head.weight" not in own_sd:
            own_sd["lm_head.weight"] = own_sd["model.embed_tokens.weight"]
        metas[name], own_sds[name] = meta, own_sd
        with open(os.path.join(mdir, "config.json")) as f:
            cj = json.load(f)
        with safe_open_keys(os.path.join(mdir, "model.safetensors")) as keys:
            file_keys = keys
        del m32

        base = load_model(mdir, torch.float64)
        base.eval()
        with torch.no_grad():
            bl = base(input_ids=ids, attention_mask=am).logits
            pos = torch.arange(T).unsqueeze(0).expand_as(ids)
            bl2 = base(input_ids=ids, attention_mask=am, position_ids=pos).logits
        assert torch.allclose(bl2, bl, rtol=0, atol=1e-12), "position_ids default differs from arange"
        own = own_forward(own_sd, meta, ids, am)
        own_err = rel_err(own, bl)
        if own_err > 1e-5:
            notes.append("WARNING %s: own float64 forward differs from transformers by %.3g" % (name, own_err))
        tensors["base/%s/logits" % name] = bl
        base_loss = float(causal_lm_loss(bl, labels))
        del base
        models_out[name] = {
            "class": MODELS[name]["class"],
            "config": cj,
            "tokenizer_class": tok_class,
            "file_tensors": file_keys,
            "rope_theta": meta["theta"],
            "rope_scaling": meta["scaling"],
            "inv_freq_transformers": [float(x) for x in tf_inv.tolist()],
            "inv_freq_float64": [float(x) for x in meta["inv_freq"].tolist()],
            "base_loss": base_loss,
            "own_float64_forward_rel_err": own_err,
            **binfo,
        }

    cases_out, inits = [], {}
    for ci, case in enumerate(CASES):
        mdir = os.path.join(out, case["model"])
        rec, ts, init = run_case(case, mdir, (ids, am, labels), ci, own_sds[case["model"]], metas[case["model"]],
                                 notes)
        rec["batch"] = batch
        ac, expanded, wrapped = peft_save(out, case["model"], lora_config(case["lora"]), init,
                                          os.path.join("selftest", "peft-" + case["name"]))
        rec["adapter_config"] = dict(ac, target_modules=sorted(ac["target_modules"])
                                     if isinstance(ac.get("target_modules"), list) else ac.get("target_modules"))
        rec["adapter_config_target_modules_as_written"] = ac.get("target_modules")
        rec["lora_wrapped_modules"] = wrapped
        cases_out.append(rec)
        tensors.update(ts)
        inits[case["name"]] = init
    if not any(any(c["step_clipped"]) for c in cases_out):
        notes.append("WARNING no case clipped in its 5 steps")

    # PEFT's own handling of target_modules="all-linear"
    all_linear = {}
    for name in MODELS:
        lc = {"r": 4, "lora_alpha": 8, "target_modules": "all-linear", "use_rslora": False}
        ac, expanded, wrapped = peft_save(out, name, lora_config(lc), None, os.path.join("selftest", "all-linear-" + name))
        full = sorted(expanded) if not isinstance(expanded, str) else [expanded]
        all_linear[name] = {
            "target_modules": full,
            "module_names": sorted({m.rsplit(".", 1)[-1] for m in full}),
            "adapter_config_target_modules": ac.get("target_modules"),
            "lora_wrapped_modules": wrapped,
            "lm_head_wrapped": any(w.endswith("lm_head") for w in wrapped),
        }
        shutil.rmtree(os.path.join(sdir, "all-linear-" + name))
    for rec in cases_out:
        rec["all_linear_equivalent"] = sorted(set(rec["lora"]["target_modules"])) == all_linear[rec["model"]]["module_names"]

    doc = {
        "models": models_out,
        "vocab_size": V,
        "eos_token_id": eos_id,
        "batch_texts": texts,
        "all_linear_modules": all_linear["tiny-llama"]["target_modules"],
        "all_linear_module_names": all_linear["tiny-llama"]["module_names"],
        "all_linear_note": "LoraConfig(target_modules='all-linear') on tiny-llama, after get_peft_model: PEFT replaces "
                           "the string by the set of full module paths of every nn.Linear except the output layer "
                           "(lm_head); all_linear_modules is that set sorted, all_linear_module_names their last "
                           "components; adapter_config_target_modules is the list PEFT writes to adapter_config.json "
                           "(set order: it depends on PYTHONHASHSEED, 0 here)",
        "all_linear_by_model": all_linear,
        "cases": cases_out,
        "conventions": {
            "dtype": "references computed on CPU by transformers + PEFT on the float32 weights upcast to float64 "
                     "(model.double()); tensors stored as float32. transformers casts to float32 in three places "
                     "even in a float64 model: RMSNorm normalizes in float32 (x.to(float32) * rsqrt(mean(x^2)+eps), "
                     "then back, then * weight), RoPE cos/sin are computed in float32 from the float32 inv_freq, and "
                     "the eager softmax runs in float32. own_float64_forward_rel_err says how far a pure float64 "
                     "re-implementation (make_llama_goldens.own_forward) is from these logits",
            "attention": "eager; causal mask plus key mask from attention_mask (padded query rows attend to the "
                         "real keys before them); scores scaled by 1/sqrt(head_dim); GQA: query head h uses key/value "
                         "head h // (num_attention_heads / num_key_value_heads) (repeat_kv)",
            "position_ids": "0..T-1 for every row (right padding); transformers' default without position_ids is "
                            "the same (checked: explicit arange gives identical logits)",
            "rope": "rotate_half convention: x*cos + rotate_half(x)*sin with cos/sin = cat(freqs, freqs), "
                    "freqs[t, i] = t * inv_freq[i], inv_freq[i] = theta^(-2i/head_dim); llama3 scaling: "
                    "wavelen = 2*pi/inv_freq; > original_max/low_freq_factor -> inv_freq/factor; "
                    "< original_max/high_freq_factor -> unchanged; between -> (1-s)*inv_freq/factor + s*inv_freq "
                    "with s = (original_max/wavelen - low_freq_factor)/(high_freq_factor - low_freq_factor). "
                    "models.<m>.inv_freq_transformers holds the values transformers uses",
            "block": "x += o_proj(attn(input_layernorm(x))); x += down_proj(silu(gate_proj(h)) * up_proj(h)) with "
                     "h = post_attention_layernorm(x); logits = lm_head(norm(x)); RMSNorm(x) = w * x / sqrt(mean(x^2) + eps)",
            "qwen2": "q_proj, k_proj, v_proj have biases, o_proj has none",
            "qwen3": "q_norm / k_norm: RMSNorm over head_dim of each head, after q_proj/k_proj and before RoPE; "
                     "head_dim 16 while hidden/heads = 8, so q_proj is 32 -> 64 and o_proj 64 -> 32",
            "loss": "logits[:, :-1] vs labels[:, 1:], cross-entropy averaged over targets != -100",
            "lora": "y = base(x) + scaling * (x @ A^T) @ B^T, A = lora_A.weight [r, in], B = lora_B.weight [out, r]; "
                    "scaling = alpha/r, or alpha/sqrt(r) with use_rslora; fan_in_fan_out false (nn.Linear)",
            "clip": "torch.nn.utils.clip_grad_norm_: total = sqrt(sum of squared grads of all LoRA params); "
                    "coef = min(1, max_norm / (total + 1e-6)); grads *= coef",
            "adamw": "torch.optim.AdamW: p *= 1 - lr*wd; m,v updated; p -= lr * (m/(1-b1^t)) / (sqrt(v/(1-b2^t)) + eps)",
            "steps": "step_losses[i] and step_grad_norms[i] are measured before update i+1; step5 = params after "
                     "5 updates; loss_after_steps = loss with those params",
            "tensors": "base/<model>/logits (no adapter), <case>/logits, <case>/init/<name>, <case>/grad/<name>, "
                       "<case>/step5/<name>; <name> is the PEFT state-dict name",
        },
        "notes": notes,
    }
    save_file({k: v.detach().to(torch.float32).contiguous() for k, v in sorted(tensors.items())},
              os.path.join(gdir, "llama-lora.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(gdir, "llama-checker-inputs.json"), "w") as f:
        json.dump({"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}, f)
        f.write("\n")
    return doc, tensors, texts, (B, T)


@contextlib.contextmanager
def safe_open_keys(path):
    from safetensors import safe_open

    with safe_open(path, framework="pt") as f:
        yield sorted(f.keys())


# --------------------------------------------------------------------------------------------
# stories260K
# --------------------------------------------------------------------------------------------
def stories_part(out, sdir, e2e_path, notes):
    import torch
    import torch.nn.functional as F
    from peft import LoraConfig, get_peft_model, get_peft_model_state_dict
    from safetensors.torch import save_file
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    gdir = os.path.join(out, "goldens")
    tok = AutoTokenizer.from_pretrained(sdir)
    raw = Tokenizer.from_file(os.path.join(sdir, "tokenizer.json"))
    with open(os.path.join(sdir, "config.json")) as f:
        scfg = json.load(f)
    eos = tok.eos_token_id
    bos = tok.bos_token_id
    assert eos == scfg["eos_token_id"] and bos == scfg["bos_token_id"], (eos, bos)
    doc = {"model": "stories260K", "config": scfg, "tokenizer_class": type(tok).__name__,
           "bos_token_id": bos, "eos_token_id": eos}

    # ---- (a) greedy generation, (b) last-position logits
    m32 = load_model(sdir, torch.float32).eval()
    m64 = load_model(sdir, torch.float64).eval()
    pids = tok(STORIES_PROMPT).input_ids
    raw_pids = raw.encode(STORIES_PROMPT).ids
    if raw_pids != pids:
        notes.append("stories: tokenizer.json ids %s differ from AutoTokenizer ids %s for the prompt" % (raw_pids, pids))
    inp = torch.tensor([pids])
    with torch.no_grad():
        gen = m32.generate(inp, attention_mask=torch.ones_like(inp), max_new_tokens=STORIES_NEW_TOKENS,
                           do_sample=False, num_beams=1, pad_token_id=eos)
    new_ids = gen[0, len(pids):].tolist()
    text = tok.decode(gen[0].tolist(), skip_special_tokens=True)

    def greedy(model):
        cur = list(pids)
        margins = []
        with torch.no_grad():
            for _ in range(STORIES_NEW_TOKENS):
                lg = model(input_ids=torch.tensor([cur])).logits[0, -1]
                top = torch.topk(lg, 2)
                margins.append(float(top.values[0] - top.values[1]))
                nxt = int(top.indices[0])
                cur.append(nxt)
                if nxt == eos:
                    break
        return cur[len(pids):], margins

    g32, marg32 = greedy(m32)
    g64, _ = greedy(m64)
    with torch.no_grad():
        l32 = m32(input_ids=inp).logits[0, -1]
        l64 = m64(input_ids=inp).logits[0, -1]
    top = torch.topk(l64, 10)
    doc["generation"] = {
        "prompt": STORIES_PROMPT, "add_special_tokens": True, "prompt_ids": pids, "max_new_tokens": STORIES_NEW_TOKENS,
        "do_sample": False, "generated_ids": new_ids, "text": text,
        "generated_text": tok.decode(new_ids, skip_special_tokens=True),
        "readme_text": STORIES_README_TEXT, "matches_readme": text == STORIES_README_TEXT,
        "greedy_no_cache_float32_same": g32 == new_ids, "greedy_no_cache_float64_same": g64 == new_ids,
        "min_top1_top2_margin_float32": min(marg32),
    }
    doc["last_prompt_logits"] = {
        "position": len(pids) - 1,
        "top10_ids": [int(i) for i in top.indices.tolist()],
        "top10_logits_float64": [float(l64[i]) for i in top.indices.tolist()],
        "top10_logits_float32": [float(l32[i]) for i in top.indices.tolist()],
        "logsumexp_float64": float(torch.logsumexp(l64, 0)),
        "logsumexp_float32": float(torch.logsumexp(l32.double(), 0)),
        "float32_vs_float64_max_abs": float((l32.double() - l64).abs().max()),
        "note": "float64 = the float32 weights upcast; eager attention; single sequence, no padding",
    }
    del m64

    # ---- (c) PEFT LoRA fine-tuning on E2E, examples built as src/data/examples.ts builds them
    with open(e2e_path, newline="", encoding="utf-8-sig") as f:
        rows = list(csv.DictReader(f))
    examples, skipped, truncated, tok_mismatch = [], [], 0, 0
    for i, r in enumerate(rows):
        mr, ref = r["mr"], r["ref"]
        if mr.strip() == "" or ref.strip() == "":
            skipped.append(i)
            continue
        prompt = mr + "\n"
        p_ids = tok(prompt).input_ids
        c_ids = tok(ref, add_special_tokens=False).input_ids + [eos]
        if raw.encode(prompt).ids != p_ids or raw.encode(ref, add_special_tokens=False).ids != c_ids[:-1]:
            tok_mismatch += 1
        ids = p_ids + c_ids
        labs = [-100] * len(p_ids) + c_ids
        full = len(ids)
        if full > FT["max_length"]:
            ids, labs = ids[:FT["max_length"]], labs[:FT["max_length"]]
        if not any(x != -100 for x in labs[1:]):
            skipped.append(i)
            continue
        truncated += full > FT["max_length"]
        examples.append({"row": i, "ids": ids, "labels": labs, "prompt_len": len(p_ids), "full_len": full})
    if tok_mismatch:
        notes.append("stories: %d of %d E2E rows tokenize differently with tokenizer.json than with AutoTokenizer"
                     % (tok_mismatch, len(rows)))
    n = len(examples)
    order = epoch_order(n, 0, FT["shuffle_seed"])
    bs, steps = FT["batch_size"], FT["steps"]
    step_idx = [[order[(s * bs + k) % n] for k in range(bs)] for s in range(steps)]
    eval_idx = [k for k, e in enumerate(examples) if e["row"] < FT["eval_rows"]]

    def make_batch(idx, dtype_ignored=None):
        exs = [examples[k] for k in idx]
        T = max(len(e["ids"]) for e in exs)
        ids = torch.full((len(exs), T), eos, dtype=torch.long)
        am = torch.zeros((len(exs), T), dtype=torch.long)
        lab = torch.full((len(exs), T), -100, dtype=torch.long)
        for b, e in enumerate(exs):
            L = len(e["ids"])
            ids[b, :L] = torch.tensor(e["ids"])
            am[b, :L] = 1
            lab[b, :L] = torch.tensor(e["labels"])
        return ids, am, lab

    def run(dtype, init_from=None):
        base = load_model(sdir, dtype)
        cfg = LoraConfig(task_type="CAUSAL_LM", r=FT["r"], lora_alpha=FT["lora_alpha"], lora_dropout=FT["lora_dropout"])
        torch.manual_seed(FT["init_seed"])
        model = get_peft_model(base, cfg).to(dtype)
        named = [(peft_name(nm), p) for nm, p in model.named_parameters() if p.requires_grad]
        assert all("lora_" in nm for nm, _ in named)
        assert all(p.dtype == dtype for _, p in model.named_parameters())
        assert sorted(nm for nm, _ in named) == sorted(get_peft_model_state_dict(model).keys())
        params = [p for _, p in named]
        if init_from is not None:
            with torch.no_grad():
                for nm, p in named:
                    p.copy_(init_from[nm].to(dtype))
        init = {nm: p.detach().clone() for nm, p in named}
        opt = torch.optim.AdamW(params, lr=FT["lr"], betas=tuple(FT["betas"]), eps=FT["eps"],
                                weight_decay=FT["weight_decay"])

        def evaluate():
            model.eval()
            tot, cnt = 0.0, 0
            with torch.no_grad():
                for s in range(0, len(eval_idx), bs):
                    ids, am, lab = make_batch(eval_idx[s:s + bs])
                    lg = model(input_ids=ids, attention_mask=am).logits
                    tl = lab[:, 1:]
                    tot += float(F.cross_entropy(lg[:, :-1].reshape(-1, lg.shape[-1]).double(), tl.reshape(-1),
                                                 ignore_index=-100, reduction="sum"))
                    cnt += int((tl != -100).sum())
            model.train()
            return tot / cnt, cnt

        losses, norms, clipped, evals, tokens = [], [], [], [], []
        ev, ev_tokens = evaluate()
        evals.append({"after_step": 0, "loss": ev})
        first_hf = None
        model.train()
        for s in range(steps):
            ids, am, lab = make_batch(step_idx[s])
            opt.zero_grad(set_to_none=True)
            o = model(input_ids=ids, attention_mask=am, labels=lab if s == 0 else None)
            loss = causal_lm_loss(o.logits, lab)
            if s == 0:
                first_hf = float(o.loss)
            loss.backward()
            tn = torch.nn.utils.clip_grad_norm_(params, max_norm=FT["max_grad_norm"])
            opt.step()
            losses.append(float(loss))
            norms.append(float(tn))
            clipped.append(bool(float(tn) > FT["max_grad_norm"]))
            tokens.append(int((lab[:, 1:] != -100).sum()))
            if (s + 1) % FT["eval_every"] == 0:
                ev, _ = evaluate()
                evals.append({"after_step": s + 1, "loss": ev})
        final = {nm: p.detach().clone() for nm, p in named}
        return {"init": init, "final": final, "losses": losses, "norms": norms, "clipped": clipped,
                "evals": evals, "eval_tokens": ev_tokens, "tokens": tokens, "first_hf": first_hf,
                "targets": sorted(model.peft_config["default"].target_modules), "names": [nm for nm, _ in named]}

    r32 = run(torch.float32)
    r64 = run(torch.float64, init_from=r32["init"])
    used = sorted(set(k for st in step_idx for k in st) | set(eval_idx))
    doc["lora_finetune"] = {
        "data": "e2e_dev.csv (columns mr, ref), %d rows, %d examples, %d skipped, %d truncated" % (
            len(rows), n, len(skipped), truncated),
        "example": "ids = tok(mr + '\\n').input_ids (BOS first) + tok(ref, add_special_tokens=False).input_ids + [eos]; "
                   "labels -100 on the prompt part; cut to max_length; rows with no target after the cut are skipped "
                   "(none here)",
        "settings": dict(FT, target_modules=r32["targets"], task_type="CAUSAL_LM", bias="none",
                         init="PEFT default (lora_A kaiming-uniform, lora_B zero) after torch.manual_seed(%d); the "
                              "values are in stories260k-lora.safetensors init/<name>" % FT["init_seed"],
                         lr_schedule="constant", dtype="float32", device="cpu, 1 thread", attention="eager"),
        "batches": "step s (0-based) uses examples order[(s*8 + k) % n], k = 0..7, with order = epochOrder(n, 0, 0) of "
                   "src/data/batches.ts (mulberry32 + mixSeed, ported in make_llama_goldens.epoch_order); each batch "
                   "is right-padded with eos to its longest row (the engine pads to a fixed T; the loss is the same)",
        "n_examples": n,
        "order_head": order[:16],
        "step_indices": step_idx,
        "eval": "mean cross-entropy over all target tokens of the examples from the first %d rows (file order), "
                "token-weighted, model.eval(), no dropout; after_step 0 = before training" % FT["eval_rows"],
        "eval_indices": eval_idx,
        "eval_target_tokens": r32["eval_tokens"],
        "step_losses": r32["losses"],
        "step_target_tokens": r32["tokens"],
        "step_grad_norms": r32["norms"],
        "step_clipped": r32["clipped"],
        "eval_losses": r32["evals"],
        "first_step_loss_transformers": r32["first_hf"],
        "float64_same_init": {
            "step_losses": r64["losses"], "step_grad_norms": r64["norms"], "eval_losses": r64["evals"],
            "max_abs_step_loss_diff": max(abs(a - b) for a, b in zip(r32["losses"], r64["losses"])),
            "note": "the same run with the model upcast to float64: how far float32 rounding moves the curve",
        },
        "param_names": r32["names"],
        "examples_used": [[k, examples[k]["row"], examples[k]["prompt_len"], len(examples[k]["ids"]),
                           ids_checksum(examples[k]["ids"])] for k in used],
        "examples_used_columns": ["example index", "csv row (0-based, header excluded)", "prompt tokens",
                                  "total tokens", "sum over t of (t+1)*ids[t]"],
        "example_0_ids": examples[0]["ids"], "example_0_labels": examples[0]["labels"],
        "tokenizer_json_mismatched_rows": tok_mismatch,
    }
    lt = {}
    for nm in r32["names"]:
        lt["init/" + nm] = r32["init"][nm]
        lt["step40/" + nm] = r32["final"][nm]
    save_file({k: v.detach().to(torch.float32).contiguous() for k, v in sorted(lt.items())},
              os.path.join(gdir, "stories260k-lora.safetensors"), metadata={"format": "pt"})
    return doc


def dump_json(obj, path):
    """json with one item per line, but lists of numbers/strings on one line (small, diffable files)."""

    def fmt(o, ind):
        pad = " " * (ind + 1)
        if isinstance(o, dict):
            if not o:
                return "{}"
            items = [pad + json.dumps(str(k), ensure_ascii=False) + ": " + fmt(v, ind + 1) for k, v in o.items()]
            return "{\n" + ",\n".join(items) + "\n" + " " * ind + "}"
        if isinstance(o, (list, tuple)):
            if all(not isinstance(x, (dict, list, tuple)) for x in o):
                return "[" + ", ".join(json.dumps(x, ensure_ascii=False) for x in o) + "]"
            return "[\n" + ",\n".join(pad + fmt(x, ind + 1) for x in o) + "\n" + " " * ind + "]"
        return json.dumps(o, ensure_ascii=False)

    text = fmt(obj, 0) + "\n"
    assert json.loads(text) == json.loads(json.dumps(obj)), "dump_json round trip"
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


def find_default(cands):
    for c in cands:
        if c and os.path.exists(c):
            return c
    return None


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--stories", default=None, help="stories260K-hf folder (default: .carry/, ../shared/, /work/shared/)")
    ap.add_argument("--e2e", default=None, help="e2e_dev.csv (default: .carry/, ../shared/data/, /work/shared/data/)")
    ap.add_argument("--skip-stories", action="store_true")
    args = ap.parse_args()

    import numpy as np
    import peft
    import safetensors
    import tokenizers
    import torch
    import transformers

    torch.set_num_threads(1)
    torch.manual_seed(SEED)
    np.random.seed(SEED)
    out = os.path.abspath(args.out)
    gdir = os.path.join(out, "goldens")
    sdir = os.path.join(out, "selftest")
    for d in [os.path.join(out, m) for m in MODELS] + [gdir, sdir]:
        if os.path.exists(d):
            shutil.rmtree(d)
        os.makedirs(d)
    versions = {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__,
                "tokenizers": tokenizers.__version__, "safetensors": safetensors.__version__,
                "python": sys.version.split()[0]}
    failed = []

    # ---- tiny models + LoRA goldens
    notes = []
    doc = None
    try:
        doc, tensors, texts, (B, T) = tiny_part(out, notes)
        doc["versions"] = versions
        dump_json(doc, os.path.join(gdir, "llama-lora.json"))
    except Exception:  # noqa: BLE001
        failed.append("tiny")
        traceback.print_exc()

    # ---- stories260K
    snotes = []
    sdoc = None
    if not args.skip_stories:
        stories = args.stories or find_default([os.path.join(REPO, ".carry", "stories260K-hf"),
                                                os.path.join(REPO, "..", "shared", "models", "stories260K-hf"),
                                                "/work/shared/models/stories260K-hf"])
        e2e = args.e2e or find_default([os.path.join(REPO, ".carry", "e2e_dev.csv"),
                                        os.path.join(REPO, "..", "shared", "data", "e2e_dev.csv"),
                                        "/work/shared/data/e2e_dev.csv"])
        try:
            assert stories and e2e, ("stories260K or e2e_dev.csv not found", stories, e2e)
            sdoc = stories_part(out, stories, e2e, snotes)
            sdoc["versions"] = versions
            sdoc["notes"] = snotes
            dump_json(sdoc, os.path.join(gdir, "stories260k.json"))
        except Exception:  # noqa: BLE001
            failed.append("stories")
            traceback.print_exc()

    # ---- summary
    log("=" * 72)
    log("versions:", json.dumps(versions))
    if doc is not None:
        log("batch: B=%d T=%d lengths=%s" % (B, T, [sum(r) for r in doc["cases"][0]["batch"]["attention_mask"]]))
        for t in texts:
            log("  %r + %r  (%d + %d tokens + eos)" % (t["prompt"], t["completion"], t["prompt_tokens"],
                                                       t["completion_tokens"]))
        for name, m in doc["models"].items():
            log("model %s: %s tied=%s rope_theta=%g scaling=%s base_loss=%.10f own_f64_rel_err=%.3g" % (
                name, m["class"], m["tied"], m["rope_theta"], json.dumps(m["rope_scaling"]), m["base_loss"],
                m["own_float64_forward_rel_err"]))
            log("  inv_freq (transformers) =", ["%.9g" % x for x in m["inv_freq_transformers"]])
            log("  tensors in model.safetensors: %d, rmsnorm perturbed %d, biases perturbed %d" % (
                len(m["file_tensors"]), m["rmsnorm_weights_perturbed"], m["biases_perturbed"]))
        log("all-linear expansion (PEFT):")
        for name, a in doc["all_linear_by_model"].items():
            log("  %s: %d modules, names %s, lm_head wrapped: %s" % (
                name, len(a["target_modules"]), a["module_names"], a["lm_head_wrapped"]))
            log("    target_modules (sorted): %s" % a["target_modules"])
            log("    adapter_config.json as written: %s" % a["adapter_config_target_modules"])
        for c in doc["cases"]:
            log("case %s (%s): scaling=%g loss=%.12f (transformers %.8f) grad_norm=%.8f own_f64_rel_err=%.3g" % (
                c["name"], c["model"], c["lora"]["scaling"], c["loss"], c["loss_transformers"], c["grad_norm"],
                c["own_float64_forward_rel_err"]))
            log("  max_grad_norm=%g lowered=%s all_linear_equivalent=%s" % (
                c["optimizer"]["max_grad_norm"], c["optimizer"]["max_grad_norm_lowered"], c["all_linear_equivalent"]))
            log("  step_losses     =", ["%.10f" % x for x in c["step_losses"]])
            log("  step_grad_norms =", ["%.10f" % x for x in c["step_grad_norms"]])
            log("  step_clipped    =", c["step_clipped"])
            log("  loss after 5 steps = %.10f" % c["loss_after_steps"])
            log("  %d LoRA tensors, e.g. %s %s" % (len(c["param_names"]), c["param_names"][0],
                                                    c["param_shapes"][c["param_names"][0]]))
            log("  adapter_config.json target_modules as written: %s" % c["adapter_config_target_modules_as_written"])
        log("tensors in llama-lora.safetensors:", len(tensors))
        for n_ in notes:
            log("NOTE:", n_)
    if sdoc is not None:
        g = sdoc["generation"]
        log("stories260K: tokenizer %s, prompt ids %s" % (sdoc["tokenizer_class"], g["prompt_ids"]))
        log("  generated ids:", g["generated_ids"])
        log("  text: %r" % g["text"])
        log("  matches README: %s; greedy without cache float32 same: %s, float64 same: %s; min top1-top2 margin %.4f" % (
            g["matches_readme"], g["greedy_no_cache_float32_same"], g["greedy_no_cache_float64_same"],
            g["min_top1_top2_margin_float32"]))
        lp = sdoc["last_prompt_logits"]
        log("  last prompt position %d top10 ids %s" % (lp["position"], lp["top10_ids"]))
        log("  top10 logits f64 %s" % ["%.6f" % x for x in lp["top10_logits_float64"]])
        log("  logsumexp f64 %.8f f32 %.8f; f32 vs f64 max abs %.3g" % (
            lp["logsumexp_float64"], lp["logsumexp_float32"], lp["float32_vs_float64_max_abs"]))
        ft = sdoc["lora_finetune"]
        log("  LoRA: %s; targets %s; first batch rows %s" % (ft["data"], ft["settings"]["target_modules"],
                                                             ft["step_indices"][0]))
        log("  step losses  =", ["%.4f" % x for x in ft["step_losses"]])
        log("  grad norms   =", ["%.3f" % x for x in ft["step_grad_norms"]])
        log("  clipped      = %d of %d steps" % (sum(ft["step_clipped"]), len(ft["step_clipped"])))
        log("  eval (first 64 rows, %d tokens) =" % ft["eval_target_tokens"],
            ["%d: %.4f" % (e["after_step"], e["loss"]) for e in ft["eval_losses"]])
        log("  float64 run: max |step loss diff| %.3g; eval %s" % (
            ft["float64_same_init"]["max_abs_step_loss_diff"],
            ["%.4f" % e["loss"] for e in ft["float64_same_init"]["eval_losses"]]))
        log("  first step loss: own %.8f transformers %.8f" % (ft["step_losses"][0], ft["first_step_loss_transformers"]))
        for n_ in snotes:
            log("NOTE:", n_)
    log("FAILED PARTS: %s" % failed if failed else "all parts done")
    log("=" * 72)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
