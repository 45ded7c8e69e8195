#!/usr/bin/env python3
"""PyTorch + PEFT goldens for IA3, prompt tuning and prefix tuning (with and without the projection)
on the committed tiny fixtures (tiny-gpt2, tiny-llama, tiny-qwen2).

Usage (on a machine with torch, transformers, peft, tokenizers, safetensors):

    python3 scripts/goldens/make_peft_methods_goldens.py --out DIR

Writes
    DIR/goldens/peft-methods.json      batch, per case: PEFT config, trainable names and shapes, losses,
                                       grad norms, export keys and shapes, the adapter_config.json PEFT saves,
                                       TEXT-init token ids; library versions; notes
    DIR/goldens/peft-methods.safetensors
                                       float32 tensors <case>/logits, <case>/init/<name>, <case>/grad/<name>,
                                       <case>/step5/<name>, <case>/export/<key>, base/<model>/logits (no adapter)
    DIR/goldens/peft-methods-checker-inputs.json
                                       the batch as check_peft_adapter.py --inputs takes it
    DIR/selftest/peft-<case>/          PEFT-saved adapters (float32 base, the case's initial values)
    DIR/selftest/config-<name>/        adapter_config.json of configurations that are only recorded

<name> is the engine's parameter name: PEFT's state-dict name for IA3 (base_model.model.<module>.ia3_l),
"prompt_embeddings" for prompt tuning and for prefix tuning without the projection (PEFT's
prompt_encoder.default.embedding.weight, saved as prompt_embeddings), and prompt_encoder.<...> with the
adapter name removed for the projection's tensors. References are computed by transformers + PEFT in
float64 (model.double()) on CPU, single thread, fixed seeds.
"""
import argparse
import contextlib
import json
import math
import os
import re
import shutil
import sys
import traceback

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
FIX = os.path.join(REPO, "test", "fixtures")
SEED = 2718
EOS = "<|endoftext|>"

# Same optimizer as the LoRA goldens.
OPT = {"lr": 1e-2, "betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": 0.01, "max_grad_norm": 1.0, "steps": 5}

# The batch: two prompt/completion rows (labels -100 on the prompt) and one text row whose labels are
# its ids (so labels[0] is a real token: with prompt tuning the last virtual position predicts it).
ROWS = [("pc", "The sun", " went down."), ("pc", "The cafe", " is open late."), ("text", "Sam baked a cake.", None)]

PROMPT_TEXT = "The cafe is open"

CASES = [
    {"name": "gpt2-ia3", "model": "tiny-gpt2", "method": "ia3", "ia3": {"target_modules": None, "feedforward_modules": None}},
    {"name": "gpt2-prompt-text", "model": "tiny-gpt2", "method": "prompt",
     "prompt": {"num_virtual_tokens": 7, "init": "TEXT", "text": PROMPT_TEXT}},
    {"name": "gpt2-prefix", "model": "tiny-gpt2", "method": "prefix", "prefix": {"num_virtual_tokens": 3, "projection": False}},
    {"name": "gpt2-prefix-proj", "model": "tiny-gpt2", "method": "prefix",
     "prefix": {"num_virtual_tokens": 3, "projection": True, "encoder_hidden_size": 24}},
    {"name": "llama-ia3", "model": "tiny-llama", "method": "ia3", "ia3": {"target_modules": None, "feedforward_modules": None}},
    {"name": "llama-ia3-all", "model": "tiny-llama", "method": "ia3",
     "ia3": {"target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
             "feedforward_modules": ["up_proj", "down_proj"]}},
    {"name": "llama-prompt", "model": "tiny-llama", "method": "prompt", "prompt": {"num_virtual_tokens": 4, "init": "RANDOM"}},
    {"name": "llama-prefix", "model": "tiny-llama", "method": "prefix", "prefix": {"num_virtual_tokens": 3, "projection": False}},
    {"name": "llama-prefix-proj", "model": "tiny-llama", "method": "prefix",
     "prefix": {"num_virtual_tokens": 2, "projection": True, "encoder_hidden_size": 20}},
    {"name": "qwen2-ia3", "model": "tiny-qwen2", "method": "ia3", "ia3": {"target_modules": None, "feedforward_modules": None}},
    {"name": "qwen2-prefix", "model": "tiny-qwen2", "method": "prefix", "prefix": {"num_virtual_tokens": 3, "projection": False}},
]


def log(*a):
    print(*a, flush=True)


def causal_lm_loss(logits, labels):
    """transformers' ForCausalLMLoss: shift by one, mean over targets != -100 (in logits' dtype)."""
    import torch.nn.functional as F

    return F.cross_entropy(logits[:, :-1, :].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1),
                           ignore_index=-100, reduction="mean")


def nice_below(x):
    v = 0.5 * x
    e = math.floor(math.log10(v))
    r = float("%.1g" % (round(v / 10 ** e) * 10 ** e))
    assert 0 < r < x
    return r


def load_model(mdir, dtype):
    import torch
    from transformers import AutoModelForCausalLM

    try:
        m = AutoModelForCausalLM.from_pretrained(mdir, attn_implementation="eager", dtype=torch.float32)
    except TypeError:
        m = AutoModelForCausalLM.from_pretrained(mdir, attn_implementation="eager", torch_dtype=torch.float32)
    return m.to(dtype)


def build_batch(encode, eos_id):
    seqs, labs, texts = [], [], []
    for kind, a, b in ROWS:
        if kind == "pc":
            pi, ci = encode(a), encode(b)
            seqs.append(pi + ci + [eos_id])
            labs.append([-100] * len(pi) + ci + [eos_id])
        else:
            ids = encode(a) + [eos_id]
            seqs.append(ids)
            labs.append(list(ids))
        texts.append({"kind": kind, "a": a, "b": b})
    T = max(len(s) for s in seqs)
    batch = {"input_ids": [], "attention_mask": [], "labels": []}
    for ids, lab in zip(seqs, labs):
        pad = T - len(ids)
        batch["input_ids"].append(ids + [eos_id] * pad)
        batch["attention_mask"].append([1] * len(ids) + [0] * pad)
        batch["labels"].append(lab + [-100] * pad)
    assert len({len(s) for s in seqs}) > 1, "rows must have different lengths (padding)"
    return batch, texts


def peft_config(case, mdir):
    from peft import IA3Config, PrefixTuningConfig, PromptTuningConfig

    m = case["method"]
    if m == "ia3":
        c = case["ia3"]
        kw = {}
        if c["target_modules"] is not None:
            kw["target_modules"] = list(c["target_modules"])
        if c["feedforward_modules"] is not None:
            kw["feedforward_modules"] = list(c["feedforward_modules"])
        return IA3Config(task_type="CAUSAL_LM", **kw)
    if m == "prompt":
        c = case["prompt"]
        kw = {"task_type": "CAUSAL_LM", "num_virtual_tokens": c["num_virtual_tokens"], "prompt_tuning_init": c["init"]}
        if c["init"] == "TEXT":
            kw["prompt_tuning_init_text"] = c["text"]
            kw["tokenizer_name_or_path"] = mdir
        return PromptTuningConfig(**kw)
    c = case["prefix"]
    kw = {"task_type": "CAUSAL_LM", "num_virtual_tokens": c["num_virtual_tokens"], "prefix_projection": c["projection"]}
    if c.get("encoder_hidden_size"):
        kw["encoder_hidden_size"] = c["encoder_hidden_size"]
    return PrefixTuningConfig(**kw)


def engine_name(peft_param_name, case):
    """PEFT's parameter name -> the engine's (see the module docstring)."""
    n = peft_param_name
    if case["method"] == "ia3":
        return re.sub(r"\.default$", "", n.replace(".default.", "."))
    if case["method"] == "prompt" or not case["prefix"]["projection"]:
        assert n == "prompt_encoder.default.embedding.weight", n
        return "prompt_embeddings"
    return n.replace("prompt_encoder.default.", "prompt_encoder.")


def init_values(case, names, params, g):
    """Seeded float32 values (exact in the file) for every trainable tensor, or None to keep PEFT's init."""
    import torch

    out = {}
    for n, p in zip(names, params):
        shape = tuple(p.shape)
        u = lambda lo, hi: torch.rand(shape, generator=g, dtype=torch.float32) * (hi - lo) + lo  # noqa: E731
        if case["method"] == "ia3":
            out[n] = u(0.5, 1.5)
        elif case["method"] == "prompt":
            out[n] = None if case["prompt"]["init"] == "TEXT" else u(-1.0, 1.0)
        elif n in ("prompt_embeddings", "prompt_encoder.embedding.weight"):
            out[n] = u(-1.0, 1.0)
        elif n.endswith(".bias"):
            out[n] = u(-0.1, 0.1)
        else:
            out[n] = u(-0.5, 0.5)
    return out


def run_case(case, ci, batch_t, notes):
    import torch
    from peft import get_peft_model, get_peft_model_state_dict

    name = case["name"]
    mdir = os.path.join(FIX, case["model"])
    base = load_model(mdir, torch.float64)
    config = peft_config(case, mdir)
    model = get_peft_model(base, config)
    model = model.double()
    pc = model.peft_config["default"]
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert trainable, "no trainable parameters"
    assert all(p.dtype == torch.float64 for _, p in trainable)
    peft_names = [n for n, _ in trainable]
    names = [engine_name(n, case) for n in peft_names]
    params = [p for _, p in trainable]

    g = torch.Generator().manual_seed(SEED + 100 * ci)
    chosen = init_values(case, names, params, g)
    init = {}
    with torch.no_grad():
        for n, p in zip(names, params):
            v = chosen[n]
            if v is None:
                v = p.detach().to(torch.float32).clone()  # PEFT's own init (TEXT): word-embedding rows
            init[n] = v.clone()
            p.copy_(v.to(torch.float64))

    ids, am, labels = batch_t
    B, T = ids.shape
    n_virtual = pc.num_virtual_tokens if case["method"] == "prompt" else 0
    labels_ext = torch.cat([torch.full((B, n_virtual), -100, dtype=torch.long), labels], dim=1) if n_virtual else labels

    model.train()
    model.zero_grad(set_to_none=True)
    out = model(input_ids=ids, attention_mask=am, labels=labels)
    logits = out.logits
    assert logits.dtype == torch.float64, logits.dtype
    assert logits.shape == (B, T + n_virtual, base.config.vocab_size), logits.shape
    loss = causal_lm_loss(logits, labels_ext)
    hf_loss = float(out.loss)
    if abs(hf_loss - float(loss)) > 1e-5 * max(1.0, abs(float(loss))):
        raise AssertionError("own loss %r != transformers loss %r" % (float(loss), hf_loss))
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in zip(names, params)}
    g0 = math.sqrt(sum(float((gr * gr).sum()) for gr in grads.values()))
    targets = int((labels_ext[:, 1:] != -100).sum())

    max_norm = OPT["max_grad_norm"]
    lowered = False
    if g0 <= max_norm:
        max_norm = nice_below(g0)
        lowered = True
        notes.append("%s: grad norm %.4g <= 1, max_grad_norm lowered to %g" % (name, g0, max_norm))

    with torch.no_grad():
        for n, p in zip(names, params):
            p.copy_(init[n].to(torch.float64))
    opt = torch.optim.AdamW(params, lr=OPT["lr"], betas=tuple(OPT["betas"]), eps=OPT["eps"], weight_decay=OPT["weight_decay"])
    step_losses, step_norms, clipped = [], [], []
    for _ in range(OPT["steps"]):
        opt.zero_grad(set_to_none=True)
        o = model(input_ids=ids, attention_mask=am)
        l = causal_lm_loss(o.logits, labels_ext)
        l.backward()
        tn = torch.nn.utils.clip_grad_norm_(params, max_norm=max_norm)
        opt.step()
        step_losses.append(float(l))
        step_norms.append(float(tn))
        clipped.append(bool(float(tn) > max_norm))
    assert abs(step_losses[0] - float(loss)) < 1e-12
    assert abs(step_norms[0] - g0) < 1e-9 * max(1.0, g0)
    step5 = {n: p.detach().clone() for n, p in zip(names, params)}
    with torch.no_grad():
        lg5 = model(input_ids=ids, attention_mask=am).logits
    export = {k: v.detach().clone() for k, v in get_peft_model_state_dict(model).items()}

    rec = {
        "name": name, "model": case["model"], "method": case["method"], "case": case,
        "peft_config": json.loads(json.dumps(pc.to_dict(), default=lambda v: sorted(v) if isinstance(v, set) else str(v))),
        "peft_param_names": peft_names,
        "param_names": names,
        "param_shapes": {n: list(init[n].shape) for n in names},
        "num_virtual_tokens": n_virtual,
        "optimizer": dict(OPT, max_grad_norm=max_norm, max_grad_norm_lowered=lowered),
        "loss": float(loss), "loss_transformers": hf_loss, "loss_targets": targets, "grad_norm": g0,
        "step_losses": step_losses, "step_grad_norms": step_norms, "step_clipped": clipped,
        "loss_after_steps": float(causal_lm_loss(lg5, labels_ext)),
        "export_keys": sorted(export), "export_shapes": {k: list(v.shape) for k, v in export.items()},
    }
    if case["method"] == "prompt" and case["prompt"]["init"] == "TEXT":
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(mdir)
        text_ids = tok(case["prompt"]["text"])["input_ids"]
        rec["init_text_ids"] = text_ids
        # PEFT's init rows must be the word embeddings of those ids, cut or repeated to n
        nv = pc.num_virtual_tokens
        want_ids = (text_ids * math.ceil(nv / len(text_ids)))[:nv]
        rec["init_ids"] = want_ids
        wte = base.get_input_embeddings().weight.detach().to(torch.float32)
        if not torch.equal(wte[torch.tensor(want_ids)], init["prompt_embeddings"]):
            notes.append("WARNING %s: PEFT's TEXT init is not the embedding rows of %s" % (name, want_ids))
    tensors = {"%s/logits" % name: logits.detach()}
    for n in names:
        tensors["%s/init/%s" % (name, n)] = init[n]
        tensors["%s/grad/%s" % (name, n)] = grads[n]
        tensors["%s/step5/%s" % (name, n)] = step5[n]
    for k, v in export.items():
        tensors["%s/export/%s" % (name, k)] = v
    return rec, tensors, init


def peft_save(out_dir, case, init, sub):
    """get_peft_model on the float32 base, the case's initial values, PEFT's save_pretrained; returns the config it wrote."""
    import torch
    from peft import get_peft_model

    mrel = os.path.relpath(os.path.join(FIX, case["model"]), out_dir)
    with contextlib.chdir(out_dir):
        base = load_model(mrel, torch.float32)
        model = get_peft_model(base, peft_config(case, mrel))
        with torch.no_grad():
            for n, p in model.named_parameters():
                if p.requires_grad:
                    p.copy_(init[engine_name(n, case)].to(p.dtype))
        model.peft_config["default"].base_model_name_or_path = case["model"]
        model.save_pretrained(sub)
    card = os.path.join(out_dir, sub, "README.md")
    if os.path.exists(card):
        os.remove(card)
    with open(os.path.join(out_dir, sub, "adapter_config.json")) as f:
        return json.load(f)


def config_only(out_dir, name, model_name, config):
    """Records the adapter_config.json PEFT writes for a configuration (no values)."""
    import torch
    from peft import get_peft_model

    mrel = os.path.relpath(os.path.join(FIX, model_name), out_dir)
    with contextlib.chdir(out_dir):
        model = get_peft_model(load_model(mrel, torch.float32), config)
        model.peft_config["default"].base_model_name_or_path = model_name
        model.save_pretrained(os.path.join("selftest", "config-" + name))
    with open(os.path.join(out_dir, "selftest", "config-" + name, "adapter_config.json")) as f:
        return json.load(f)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    import numpy as np
    import torch
    import safetensors
    import tokenizers
    import transformers
    import peft
    from peft import PromptTuningConfig
    from safetensors.torch import save_file
    from tokenizers import Tokenizer

    torch.set_num_threads(1)
    torch.manual_seed(SEED)
    np.random.seed(SEED)
    out = os.path.abspath(args.out)
    gdir, sdir = os.path.join(out, "goldens"), os.path.join(out, "selftest")
    for d in (gdir, sdir):
        if os.path.exists(d):
            shutil.rmtree(d)
        os.makedirs(d)
    notes, failures = [], []

    tok = Tokenizer.from_file(os.path.join(FIX, "tiny-gpt2", "tokenizer.json"))
    for m in ("tiny-llama", "tiny-qwen2"):
        with open(os.path.join(FIX, m, "tokenizer.json")) as f1, open(os.path.join(FIX, "tiny-gpt2", "tokenizer.json")) as f2:
            assert f1.read() == f2.read(), "%s has another tokenizer" % m
    eos_id = tok.token_to_id(EOS)
    batch, texts = build_batch(lambda s: list(tok.encode(s).ids), eos_id)
    ids = torch.tensor(batch["input_ids"], dtype=torch.long)
    am = torch.tensor(batch["attention_mask"], dtype=torch.long)
    labels = torch.tensor(batch["labels"], dtype=torch.long)

    tensors, cases_out = {}, []
    for model_name in sorted({c["model"] for c in CASES}):
        try:
            base = load_model(os.path.join(FIX, model_name), torch.float64)
            base.eval()
            with torch.no_grad():
                tensors["base/%s/logits" % model_name] = base(input_ids=ids, attention_mask=am).logits.detach()
        except Exception as e:  # noqa: BLE001
            failures.append({"case": "base " + model_name, "error": "%s: %s" % (type(e).__name__, e), "traceback": traceback.format_exc()})
    for ci, case in enumerate(CASES):
        try:
            rec, ts, init = run_case(case, ci, (ids, am, labels), notes)
            rec["adapter_config"] = peft_save(out, case, init, os.path.join("selftest", "peft-" + case["name"]))
            rec["batch"] = batch
            cases_out.append(rec)
            tensors.update(ts)
            log("case %s: loss %.10f grad_norm %.6f (%d targets) steps %s export %s" % (
                rec["name"], rec["loss"], rec["grad_norm"], rec["loss_targets"], ["%.6f" % x for x in rec["step_losses"]],
                {k: v for k, v in rec["export_shapes"].items()}))
        except Exception as e:  # noqa: BLE001 (record, go on with the other cases)
            failures.append({"case": case["name"], "error": "%s: %s" % (type(e).__name__, e), "traceback": traceback.format_exc()})
            log("CASE %s FAILED: %s: %s" % (case["name"], type(e).__name__, e))
            traceback.print_exc()

    configs = {}
    for name, model_name, make in [
        ("gpt2-prompt-random", "tiny-gpt2", lambda: PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=5)),
        ("gpt2-prompt-sample-vocab", "tiny-gpt2", lambda: PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=5, prompt_tuning_init="SAMPLE_VOCAB")),
    ]:
        try:
            configs[name] = config_only(out, name, model_name, make())
        except Exception as e:  # noqa: BLE001
            failures.append({"case": "config " + name, "error": "%s: %s" % (type(e).__name__, e), "traceback": traceback.format_exc()})

    doc = {
        "batch": batch, "batch_texts": texts, "prompt_text": PROMPT_TEXT, "eos_token_id": eos_id,
        "cases": cases_out, "configs": configs, "failures": failures,
        "conventions": {
            "dtype": "transformers + PEFT on the float32 fixtures upcast to float64 (model.double()), CPU, 1 thread; tensors stored as float32",
            "loss": "logits[:, :-1] vs labels[:, 1:] averaged over targets != -100; with prompt tuning the labels are PEFT's: "
                    "-100 on the num_virtual_tokens positions, then the batch's (so the last virtual position predicts labels[0])",
            "logits": "<case>/logits is the model output: [B, num_virtual_tokens + T, V] for prompt tuning, [B, T, V] otherwise",
            "ia3": "init values U(0.5, 1.5); PEFT's default target/feedforward modules per model_type unless the case lists them",
            "prompt": "TEXT case: PEFT's own init (word-embedding rows of the tokenized text, repeated to n); RANDOM case: U(-1, 1)",
            "prefix": "table / embedding U(-1, 1); projection weights U(-0.5, 0.5), biases U(-0.1, 0.1)",
            "clip": "torch.nn.utils.clip_grad_norm_ over all trainable tensors (max_norm 1, lowered when the first norm is below it)",
            "adamw": "torch.optim.AdamW lr 1e-2, betas (0.9, 0.999), eps 1e-8, weight decay 0.01 on every trainable tensor",
            "export": "<case>/export/<key>: get_peft_model_state_dict after the 5 steps (prefix projection: the prefix the MLP makes)",
            "names": "see this script's docstring",
        },
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__,
                     "tokenizers": tokenizers.__version__, "safetensors": safetensors.__version__, "python": sys.version.split()[0]},
        "notes": notes,
    }
    with open(os.path.join(gdir, "peft-methods.json"), "w") as f:
        json.dump(doc, f, indent=1, ensure_ascii=False)
        f.write("\n")
    save_file({k: v.detach().to(torch.float32).contiguous() for k, v in sorted(tensors.items())},
              os.path.join(gdir, "peft-methods.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(gdir, "peft-methods-checker-inputs.json"), "w") as f:
        json.dump({"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}, f)
        f.write("\n")
    log("versions:", json.dumps(doc["versions"]))
    for n in notes:
        log("NOTE:", n)
    for fl in failures:
        log("FAILED:", fl["case"], fl["error"])
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
