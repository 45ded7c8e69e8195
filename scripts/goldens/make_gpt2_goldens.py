#!/usr/bin/env python3
"""Build the tiny GPT-2 test model, its tokenizer and the PyTorch + PEFT LoRA goldens.

Usage (on a machine with torch, transformers, peft, tokenizers, safetensors):

    python3 scripts/goldens/make_gpt2_goldens.py --out DIR

Writes
    DIR/tiny-gpt2/                 config.json, model.safetensors (float32), tokenizer.json,
                                   tokenizer_config.json, special_tokens_map.json
    DIR/goldens/gpt2-lora.json     batch, losses, grad norms, names (see README.md)
    DIR/goldens/gpt2-lora.safetensors
                                   float32 tensors <case>/logits, <case>/init/<name>,
                                   <case>/grad/<name>, <case>/step5/<name>, <case>/step5_logits,
                                   base/logits
    DIR/selftest/                  a PEFT-saved adapter (case all-targets, initial LoRA values, float32),
                                   inputs.json and all-targets-logits.safetensors for check_peft_adapter.py

Everything is deterministic (fixed seeds, single CPU thread, float64 math for the references).
"""
import argparse
import contextlib
import json
import math
import os
import shutil
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# --------------------------------------------------------------------------------------------
# Training text for the tokenizer (plain English, written for this fixture).
# --------------------------------------------------------------------------------------------
CORPUS = """\
The Green Fork is a small cafe near the river. It serves fresh soup, warm bread and green tea.
The Blue Door is a quiet restaurant with six tables. The chef cooks pasta, fish and rice.
Mama Rosa's is a family place. The pizza is cheap, the staff is kind and the room is loud.
The Red Lantern serves noodles and dumplings. It is open late and the prices are fair.
Sunny Side is a breakfast diner. It has eggs, pancakes, coffee and orange juice.
The Olive Tree is a Greek restaurant in the city centre. It serves salads, lamb and honey cake.
The Corner Bakery sells bread, cakes and cookies. The coffee is strong and the seats are soft.
Golden Bowl is a cheap noodle bar near the station. The soup is hot and the service is fast.
The Old Mill is an expensive restaurant by the water. It serves steak, wine and chocolate cake.
Little Spice is an Indian restaurant. The curry is rich, the rice is soft and the bread is warm.
The Harbour Grill serves fish and chips. It is family friendly and has a view of the boats.
Cafe Luna is open from 8 am to 10 pm. It has 12 tables, free water and quiet music.
The Garden Room is a vegetarian cafe. It serves beans, salads, soups and fruit.
Taco Town is a fast food place. The tacos cost 3 dollars and the drinks are cold.
The Silver Spoon is a fine dining restaurant. The menu changes every week.
name[The Green Fork], food[Italian], price[cheap], area[city centre], family friendly[yes]
name[The Blue Door], food[French], price[high], area[riverside], family friendly[no]
name[Sunny Side], food[English], price[moderate], area[city centre], rating[5 out of 5]
name[Golden Bowl], food[Chinese], price[cheap], area[riverside], near[the station]
Once upon a time there was a little cat. The cat liked to sit in the sun.
One day the cat saw a bird in the garden. The bird sang a happy song.
The cat wanted to play with the bird, but the bird flew up into the tree.
Tom had a red ball. He threw the ball to his dog, and the dog ran after it.
The dog found the ball under a big green bush. Tom was happy and gave the dog a hug.
Lily went to the park with her mom. They saw ducks on the pond and fed them bread.
It started to rain, so Lily and her mom ran home. They drank warm milk and read a book.
A little boy named Sam wanted to bake a cake. He got eggs, milk, sugar and flour.
Sam mixed everything in a bowl. His sister helped him put the cake in the oven.
After one hour the cake was ready. It smelled sweet and they ate it with their friends.
The sun went down and the stars came out. The owl said good night to the moon.
There was a small boat on the lake. A girl named Mia rowed it to the other side.
On the other side she found a shiny stone. She put it in her pocket and went home.
Ben and Anna built a tower of blocks. It was very tall, and then it fell down.
They laughed and built it again. This time the tower was even taller.
"Can I have some water?" asked the old man. "Yes, of course," said the girl.
We're open today! It's 5 o'clock, and the kitchen closes at 9:30.
Order 42 is ready: 2 soups, 1 salad and 3 cups of tea. The total is 18.50 dollars.
Questions? Call us on 555-0199 or write to the cafe. Thank you, and see you soon!
"""

# (prompt, completion) candidates for the batch; the first three whose token counts fit are used.
PAIR_CANDIDATES = [
    ("name[Blue Door] food[French]", " The Blue Door serves French food."),
    ("Cafe: Sunny Side.", " It has eggs and coffee."),
    ("The cat", " sat in the sun."),
    ("Story:", " Tom threw the red ball to his dog."),
    ("name[Golden Bowl]", " Golden Bowl is a cheap noodle bar."),
    ("Q: Is it open?", " Yes, from 8 am to 10 pm."),
    ("Lily", " fed the ducks."),
    ("The Old Mill", " is expensive."),
    ("Tom had", " a red ball."),
    ("The Red Lantern", " serves noodles late."),
    ("Golden Bowl", " is a cheap noodle bar."),
    ("A:", " ok"),
]

TOKENIZER_CHECK_STRINGS = [
    "The Green Fork serves fresh pasta.",
    "  Two  spaces,\ttab and\nnew line!\n",
    "Order #42 costs $13.50 (tax incl.) on 2024-05-17.",
    "Hello\n\nworld... it's 9am; we're OPEN!!",
    "Caf\u00e9 na\u00efve \U0001F600 \u2014 end<|endoftext|>",
    "name[The Blue Door], price[high]",
]

EOS = "<|endoftext|>"
VOCAB_TARGET = 360
SEED = 1234

CASES = [
    {
        "name": "all-targets",
        "lora": {"r": 4, "lora_alpha": 8,
                 "target_modules": ["c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"],
                 "use_rslora": False},
    },
    {
        "name": "rslora",
        "lora": {"r": 8, "lora_alpha": 16, "target_modules": ["c_attn"], "use_rslora": True},
    },
]
OPT = {"lr": 1e-2, "betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": 0.01, "max_grad_norm": 1.0, "steps": 5}


def log(*a):
    print(*a, flush=True)


# --------------------------------------------------------------------------------------------
# Tokenizer
# --------------------------------------------------------------------------------------------
def train_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_TARGET,
        min_frequency=2,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    lines = [l for l in CORPUS.split("\n") if l.strip()]
    tok.train_from_iterator(lines, trainer=trainer)
    return tok


def save_tokenizer(raw, tdir):
    """Save `raw` as a transformers GPT2TokenizerFast into tdir; return (hf_tokenizer, notes)."""
    import transformers

    notes = []
    kw = dict(bos_token=EOS, eos_token=EOS, unk_token=EOS, add_prefix_space=False, model_max_length=64)
    hf = None
    cls = getattr(transformers, "GPT2TokenizerFast", None)
    if cls is not None:
        try:
            hf = cls(tokenizer_object=raw, **kw)
            for s in TOKENIZER_CHECK_STRINGS:
                if hf(s, add_special_tokens=True)["input_ids"] != raw.encode(s).ids:
                    raise ValueError("GPT2TokenizerFast(tokenizer_object=...) does not reproduce the trained tokenizer on %r" % s)
            if len(hf) != raw.get_vocab_size():
                raise ValueError("GPT2TokenizerFast size %d != %d" % (len(hf), raw.get_vocab_size()))
        except Exception as e:  # noqa: BLE001
            notes.append("GPT2TokenizerFast(tokenizer_object=...) unusable (%s); using PreTrainedTokenizerFast" % e)
            hf = None
    if hf is None:
        hf = transformers.PreTrainedTokenizerFast(tokenizer_object=raw, **kw)
    hf.save_pretrained(tdir)
    for legacy in ("vocab.json", "merges.txt"):
        p = os.path.join(tdir, legacy)
        if os.path.exists(p):
            os.remove(p)
    # tokenizer_config.json: make the class GPT2TokenizerFast (transformers.js strips "Fast").
    cfg_path = os.path.join(tdir, "tokenizer_config.json")
    with open(cfg_path) as f:
        tcfg = json.load(f)
    if tcfg.get("tokenizer_class") not in ("GPT2TokenizerFast", "GPT2Tokenizer"):
        notes.append("tokenizer_class %r rewritten to GPT2TokenizerFast" % tcfg.get("tokenizer_class"))
        tcfg["tokenizer_class"] = "GPT2TokenizerFast"
    for k in ("bos_token", "eos_token", "unk_token"):
        tcfg.setdefault(k, EOS)
    tcfg.setdefault("add_prefix_space", False)
    with open(cfg_path, "w") as f:
        json.dump(tcfg, f, indent=2, ensure_ascii=False)
        f.write("\n")
    stm = os.path.join(tdir, "special_tokens_map.json")
    if not os.path.exists(stm):
        with open(stm, "w") as f:
            json.dump({"bos_token": EOS, "eos_token": EOS, "unk_token": EOS}, f, indent=2)
            f.write("\n")
        notes.append("special_tokens_map.json written by this script (save_pretrained did not)")
    return hf, notes


# --------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------
def build_model(vocab_size, eos_id, mdir):
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(
        vocab_size=vocab_size, n_positions=64, n_embd=32, n_layer=2, n_head=4,
        activation_function="gelu_new", layer_norm_epsilon=1e-5,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, summary_first_dropout=0.0,
        initializer_range=0.1, tie_word_embeddings=True,
        bos_token_id=eos_id, eos_token_id=eos_id,
    )
    torch.manual_seed(SEED)
    model = GPT2LMHeadModel(cfg).float()
    g = torch.Generator().manual_seed(SEED + 1)
    with torch.no_grad():
        ln_weights = set()
        for mname, m in model.named_modules():
            if isinstance(m, torch.nn.LayerNorm):
                ln_weights.add(id(m.weight))
                m.weight.copy_(1.0 + (torch.rand(m.weight.shape, generator=g) * 0.4 - 0.2))
        for pname, p in model.named_parameters():
            if pname.endswith(".bias"):
                p.copy_(torch.rand(p.shape, generator=g) * 0.2 - 0.1)
    assert model.lm_head.weight.data_ptr() == model.transformer.wte.weight.data_ptr(), "embeddings not tied"
    try:
        model.save_pretrained(mdir, safe_serialization=True)
    except TypeError:
        model.save_pretrained(mdir)
    assert os.path.exists(os.path.join(mdir, "model.safetensors")), "model.safetensors not written"
    with open(os.path.join(mdir, "config.json")) as f:
        cj = json.load(f)
    assert cj.get("model_type") == "gpt2", cj.get("model_type")
    return cfg


def load_model(mdir, dtype):
    import torch
    from transformers import GPT2LMHeadModel

    try:
        m = GPT2LMHeadModel.from_pretrained(mdir, attn_implementation="eager", dtype=torch.float32)
    except TypeError:
        m = GPT2LMHeadModel.from_pretrained(mdir, attn_implementation="eager", torch_dtype=torch.float32)
    m = m.to(dtype)
    return m


# --------------------------------------------------------------------------------------------
# Batch
# --------------------------------------------------------------------------------------------
def build_batch(encode, eos_id):
    """encode(text) -> list of ids. Returns batch dict, texts, notes, truncated."""
    fits = {}  # total length -> first candidate with that length
    for p, c in PAIR_CANDIDATES:
        pi, ci = encode(p), encode(c)
        n = len(pi) + len(ci) + 1
        if 8 <= n <= 20 and len(pi) >= 1 and len(ci) >= 2 and n not in fits:
            fits[n] = (p, c, pi, ci)
    chosen, lens = [], set()
    if len(fits) >= 3 and max(fits) >= 10:
        a = max(fits)                       # longest: sets T
        rest = [n for n in fits if n != a]
        c = min(rest)                       # shortest
        mids = [n for n in rest if n != c]
        b = min(mids, key=lambda n: (abs(n - (a + c) / 2), n))
        # row 0 middle, row 1 longest, row 2 shortest (padding in the first and last rows)
        chosen = [fits[b], fits[a], fits[c]]
        lens = {a, b, c}
    notes = []
    truncated = False
    if len(chosen) < 3:
        # Fallback: truncate completions to fixed lengths (recorded in the JSON).
        notes.append("no 3 candidates of distinct lengths in [8,20]: completions truncated")
        truncated = True
        chosen = []
        targets = [19, 15, 12]
        for (p, c) in PAIR_CANDIDATES:
            if len(chosen) == 3:
                break
            pi, ci = encode(p), encode(c)
            L = targets[len(chosen)]
            k = L - len(pi) - 1
            if len(pi) >= 2 and k >= 2 and len(ci) >= k:
                chosen.append((p, c, pi, ci[:k]))
        assert len(chosen) == 3, "cannot build batch"
    seqs, labs = [], []
    for p, c, pi, ci in chosen:
        ids = pi + ci + [eos_id]
        seqs.append(ids)
        labs.append([-100] * len(pi) + ci + [eos_id])
    T = max(len(s) for s in seqs)
    assert 10 <= T <= 20, T
    batch = {"input_ids": [], "attention_mask": [], "labels": []}
    for ids, lab in zip(seqs, labs):
        pad = T - len(ids)
        batch["input_ids"].append(ids + [eos_id] * pad)
        batch["attention_mask"].append([1] * len(ids) + [0] * pad)
        batch["labels"].append(lab + [-100] * pad)
    texts = [{"prompt": p, "completion": c, "prompt_tokens": len(pi), "completion_tokens": len(ci)}
             for p, c, pi, ci in chosen]
    return batch, texts, notes, truncated


def causal_lm_loss(logits, labels):
    """Same as transformers' ForCausalLMLoss (shift by one, mean over targets != -100), in logits' dtype."""
    import torch.nn.functional as F

    sl = logits[:, :-1, :].reshape(-1, logits.shape[-1])
    tl = labels[:, 1:].reshape(-1)
    return F.cross_entropy(sl, tl, ignore_index=-100, reduction="mean")


def peft_name(param_name):
    # base_model.model.transformer.h.0.attn.c_attn.lora_A.default.weight -> ...lora_A.weight
    return param_name.replace(".default.", ".")


def nice_below(x):
    """A round number about half of x (1 significant digit), strictly below x."""
    v = 0.5 * x
    e = math.floor(math.log10(v))
    r = round(v / 10 ** e) * 10 ** e
    r = float("%.1g" % r)
    assert 0 < r < x
    return r


# --------------------------------------------------------------------------------------------
# Cases
# --------------------------------------------------------------------------------------------
def run_case(case, mdir, batch_t, case_idx, warnings_out):
    import torch
    from peft import LoraConfig, get_peft_model, get_peft_model_state_dict

    name = case["name"]
    lc = case["lora"]
    base = load_model(mdir, torch.float64)
    config = LoraConfig(task_type="CAUSAL_LM", fan_in_fan_out=True, lora_dropout=0.0, bias="none",
                        r=lc["r"], lora_alpha=lc["lora_alpha"], target_modules=list(lc["target_modules"]),
                        use_rslora=lc["use_rslora"])
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

    # shapes: lora_A [r, in], lora_B [out, r]
    for n, p in zip(pnames, params):
        if ".lora_A." in n:
            assert p.shape[0] == lc["r"], (n, p.shape)
        else:
            assert p.shape[1] == lc["r"], (n, p.shape)

    # overwrite LoRA weights with seeded U(-0.3, 0.3) (generated in float32 so they are exact in the file)
    g = torch.Generator().manual_seed(SEED + 100 + case_idx)
    init = {}
    with torch.no_grad():
        for n, p in zip(pnames, params):
            v = torch.rand(p.shape, generator=g, dtype=torch.float32) * 0.6 - 0.3
            init[n] = v.clone()
            p.copy_(v.to(torch.float64))

    scaling = lc["lora_alpha"] / (math.sqrt(lc["r"]) if lc["use_rslora"] else lc["r"])
    # check PEFT's scaling
    for mn, m in model.named_modules():
        if hasattr(m, "scaling") and isinstance(getattr(m, "scaling"), dict) and "default" in m.scaling:
            assert abs(m.scaling["default"] - scaling) < 1e-12, (mn, m.scaling, scaling)

    ids, am, labels = batch_t
    model.train()
    # ---- forward / backward at the initial values
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

    # explicit position ids must not change anything (the JS engine uses positions 0..T-1)
    with torch.no_grad():
        pos = torch.arange(ids.shape[1]).unsqueeze(0).expand_as(ids)
        lg2 = model(input_ids=ids, attention_mask=am, position_ids=pos).logits
        assert torch.allclose(lg2, logits, rtol=0, atol=1e-12), "position_ids default differs from arange"

    max_norm = OPT["max_grad_norm"]
    lowered = False
    if g0 <= max_norm:
        max_norm = nice_below(g0)
        lowered = True
        warnings_out.append("%s: grad norm %.4g <= 1, max_grad_norm lowered to %g" % (name, g0, max_norm))

    # ---- 5 AdamW steps from the same initial values
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
        "lora": {"r": lc["r"], "lora_alpha": lc["lora_alpha"], "target_modules": list(lc["target_modules"]),
                 "use_rslora": lc["use_rslora"], "lora_dropout": 0.0, "fan_in_fan_out": True, "bias": "none",
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
        "param_names": pnames,
        "param_shapes": {n: list(init[n].shape) for n in pnames},
    }
    tensors = {"%s/logits" % name: logits.detach(), "%s/step5_logits" % name: step5_logits}
    for n in pnames:
        tensors["%s/init/%s" % (name, n)] = init[n]
        tensors["%s/grad/%s" % (name, n)] = grads[n]
        tensors["%s/step5/%s" % (name, n)] = step5[n]
    return rec, tensors, config, init


def save_peft_adapter(out_dir, mdir_rel, case, init, sub):
    """Save the case's adapter with PEFT itself (float32 base, initial LoRA values)."""
    import torch
    from peft import LoraConfig, get_peft_model

    lc = case["lora"]
    with contextlib.chdir(out_dir):
        base = load_model(mdir_rel, torch.float32)
        config = LoraConfig(task_type="CAUSAL_LM", fan_in_fan_out=True, lora_dropout=0.0, bias="none",
                            r=lc["r"], lora_alpha=lc["lora_alpha"], target_modules=list(lc["target_modules"]),
                            use_rslora=lc["use_rslora"])
        model = get_peft_model(base, config)
        with torch.no_grad():
            for n, p in model.named_parameters():
                if "lora_" in n:
                    p.copy_(init[peft_name(n)].to(p.dtype))
        model.peft_config["default"].base_model_name_or_path = mdir_rel
        model.save_pretrained(sub)
    card = os.path.join(out_dir, sub, "README.md")
    if os.path.exists(card):
        os.remove(card)


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
    from safetensors.torch import save_file
    from tokenizers import Tokenizer

    torch.set_num_threads(1)
    torch.manual_seed(SEED)
    np.random.seed(SEED)

    out = os.path.abspath(args.out)
    mdir = os.path.join(out, "tiny-gpt2")
    gdir = os.path.join(out, "goldens")
    sdir = os.path.join(out, "selftest")
    for d in (mdir, gdir, sdir):
        if os.path.exists(d):
            shutil.rmtree(d)
        os.makedirs(d)
    notes = []

    # ---- tokenizer
    raw = train_tokenizer()
    raw2 = train_tokenizer()
    assert raw.to_str() == raw2.to_str(), "tokenizer training is not deterministic"
    hf_tok, tnotes = save_tokenizer(raw, mdir)
    notes += tnotes
    notes.append("tokenizer object class: %s" % type(hf_tok).__name__)
    saved = Tokenizer.from_file(os.path.join(mdir, "tokenizer.json"))
    eos_id = saved.token_to_id(EOS)
    V = saved.get_vocab_size()
    assert eos_id is not None
    assert hf_tok.eos_token_id == eos_id, (hf_tok.eos_token_id, eos_id)

    # reload through AutoTokenizer (what users of the fixture do) and compare
    try:
        auto_tok = transformers.AutoTokenizer.from_pretrained(mdir)
        notes.append("AutoTokenizer reload class: %s" % type(auto_tok).__name__)
    except Exception as e:  # noqa: BLE001
        auto_tok = None
        notes.append("WARNING AutoTokenizer.from_pretrained(tiny-gpt2) failed: %s: %s" % (type(e).__name__, e))
    all_texts = TOKENIZER_CHECK_STRINGS + [s for pc in PAIR_CANDIDATES for s in pc]
    for s in all_texts:
        ref = saved.encode(s).ids
        checks = [("raw trained", raw.encode(s).ids), ("GPT2TokenizerFast", hf_tok(s)["input_ids"])]
        if auto_tok is not None:
            checks.append(("AutoTokenizer reload", auto_tok(s)["input_ids"]))
        for what, ids in checks:
            if ids != ref:
                msg = "tokenizer mismatch (%s) on %r: %s vs tokenizer.json %s" % (what, s, ids, ref)
                if what == "raw trained":
                    raise AssertionError(msg)
                notes.append("WARNING " + msg)
    if auto_tok is not None and len(auto_tok) != V:
        notes.append("WARNING AutoTokenizer reload has %d tokens, tokenizer.json %d" % (len(auto_tok), V))
    tokenizer_checks = []
    for s in TOKENIZER_CHECK_STRINGS:
        enc = saved.encode(s)
        tokenizer_checks.append({"text": s, "ids": enc.ids, "tokens": enc.tokens,
                                 "decoded": saved.decode(enc.ids, skip_special_tokens=False)})

    def encode(text):
        # ids as given by tokenizer.json (checked above to equal tok(text).input_ids)
        return list(saved.encode(text).ids)

    # ---- model
    build_model(V, eos_id, mdir)
    model_files = sorted(os.listdir(mdir))

    # ---- batch
    batch, texts, bnotes, truncated = build_batch(encode, eos_id)
    notes += bnotes
    ids = torch.tensor(batch["input_ids"], dtype=torch.long)
    am = torch.tensor(batch["attention_mask"], dtype=torch.long)
    labels = torch.tensor(batch["labels"], dtype=torch.long)
    B, T = ids.shape

    tensors = {}
    # base model logits (no adapter), float64
    base = load_model(mdir, torch.float64)
    base.eval()
    with torch.no_grad():
        base_logits = base(input_ids=ids, attention_mask=am).logits
    tensors["base/logits"] = base_logits
    base_loss = float(causal_lm_loss(base_logits, labels))
    del base

    cases_out = []
    init_by_case = {}
    for ci, case in enumerate(CASES):
        rec, ts, _, init = run_case(case, mdir, (ids, am, labels), ci, notes)
        rec["batch"] = batch
        cases_out.append(rec)
        tensors.update(ts)
        init_by_case[case["name"]] = init
    assert any(any(c["step_clipped"]) for c in cases_out)

    doc = {
        "model": "tiny-gpt2",
        "vocab_size": V,
        "eos_token_id": eos_id,
        "tokenizer_checks": tokenizer_checks,
        "batch_texts": texts,
        "batch_completion_truncated": truncated,
        "base_loss": base_loss,
        "cases": cases_out,
        "conventions": {
            "dtype": "references computed in float64 on CPU from the float32 weights in tiny-gpt2/model.safetensors; tensors stored as float32",
            "attention": "eager; causal mask plus key mask from attention_mask (padded query rows attend to the real keys before them)",
            "position_ids": "0..T-1 for every row (right padding)",
            "loss": "logits[:, :-1] vs labels[:, 1:], cross-entropy averaged over targets != -100",
            "lora": "y = base(x) + scaling * (x @ A^T) @ B^T, A = lora_A.weight [r, in], B = lora_B.weight [out, r]; scaling = alpha/r, or alpha/sqrt(r) with use_rslora",
            "clip": "torch.nn.utils.clip_grad_norm_: total = sqrt(sum of squared grads of all LoRA params); coef = min(1, max_norm / (total + 1e-6)); grads *= coef",
            "adamw": "torch.optim.AdamW: p *= 1 - lr*wd; m,v updated; p -= lr * (m/(1-b1^t)) / (sqrt(v/(1-b2^t)) + eps)",
            "steps": "step_losses[i] and step_grad_norms[i] are measured before update i+1; step5 = params after 5 updates; step5_logits with those params",
        },
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__,
                     "tokenizers": tokenizers.__version__, "safetensors": safetensors.__version__,
                     "python": sys.version.split()[0]},
        "notes": notes,
    }
    with open(os.path.join(gdir, "gpt2-lora.json"), "w") as f:
        json.dump(doc, f, indent=1, ensure_ascii=False)
        f.write("\n")
    save_file({k: v.detach().to(torch.float32).contiguous() for k, v in sorted(tensors.items())},
              os.path.join(gdir, "gpt2-lora.safetensors"), metadata={"format": "pt"})

    # ---- self-test material for check_peft_adapter.py
    save_peft_adapter(out, "tiny-gpt2", CASES[0], init_by_case[CASES[0]["name"]], os.path.join("selftest", "peft-all-targets"))
    with open(os.path.join(sdir, "inputs.json"), "w") as f:
        json.dump({"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}, f)
        f.write("\n")
    save_file({"logits": tensors["%s/logits" % CASES[0]["name"]].to(torch.float32).contiguous()},
              os.path.join(sdir, "all-targets-logits.safetensors"), metadata={"format": "pt"})

    # ---- summary
    log("=" * 72)
    log("versions:", json.dumps(doc["versions"]))
    log("tokenizer: vocab_size=%d eos_id=%d files=%s" % (V, eos_id, sorted(os.listdir(mdir))))
    log("model files:", model_files)
    for tc in tokenizer_checks:
        log("  tok %r -> %d ids %s" % (tc["text"], len(tc["ids"]), tc["ids"]))
    log("batch: B=%d T=%d lengths=%s truncated=%s" % (B, T, [sum(r) for r in batch["attention_mask"]], truncated))
    for t in texts:
        log("  %r + %r  (%d + %d tokens + eos)" % (t["prompt"], t["completion"], t["prompt_tokens"], t["completion_tokens"]))
    log("logits shape: [%d, %d, %d]   base loss (no adapter): %.10f" % (B, T, V, base_loss))
    for c in cases_out:
        log("case %s: scaling=%g loss=%.12f (transformers %.8f) grad_norm=%.8f" % (
            c["name"], c["lora"]["scaling"], c["loss"], c["loss_transformers"], c["grad_norm"]))
        log("  max_grad_norm=%g lowered=%s" % (c["optimizer"]["max_grad_norm"], c["optimizer"]["max_grad_norm_lowered"]))
        log("  step_losses     =", ["%.10f" % x for x in c["step_losses"]])
        log("  step_grad_norms =", ["%.10f" % x for x in c["step_grad_norms"]])
        log("  step_clipped    =", c["step_clipped"])
        log("  loss after 5 steps = %.10f" % c["loss_after_steps"])
        log("  %d LoRA tensors, e.g. %s %s" % (len(c["param_names"]), c["param_names"][0],
                                                c["param_shapes"][c["param_names"][0]]))
    log("tensors in gpt2-lora.safetensors:", len(tensors))
    for n in notes:
        log("NOTE:", n)
    log("=" * 72)


if __name__ == "__main__":
    main()
