#!/usr/bin/env python3
"""Build the tiny DistilBERT and BERT test models, their WordPiece tokenizers and the PyTorch + PEFT
sequence-classification goldens (task_type SEQ_CLS: LoRA on the encoder, the head in modules_to_save).

Usage (on a machine with torch, transformers, peft, tokenizers, safetensors):

    python3 scripts/goldens/make_bert_goldens.py --out DIR

Writes
    DIR/tiny-distilbert/, DIR/tiny-bert/   config.json, model.safetensors (float32, the base model:
                                           DistilBertModel / BertModel with pooler, no head),
                                           tokenizer.json, tokenizer_config.json, special_tokens_map.json
    DIR/goldens/bert-seqcls.json           batches, losses, grad norms, names, PEFT's adapter configs
    DIR/goldens/bert-seqcls.safetensors    float32 tensors <case>/logits, <case>/init/<name>,
                                           <case>/grad/<name>, <case>/step5/<name>, <case>/step5_logits
    DIR/goldens/bert-checker-inputs-<model>.json   the batch (input_ids + attention_mask) for the checker
    DIR/selftest/peft-<case>/              the case's adapter saved by PEFT itself (float32, initial values)

Conventions as make_gpt2_goldens.py: float64 references on CPU from the float32 weights, eager
attention, fixed seeds, one thread; LoRA and head values overwritten with seeded U(-0.3, 0.3) drawn in
float32 so the stored initial values are exact. Every dropout probability is 0. Assumptions about PEFT
(which head modules it trains and the names it saves) are recorded, not asserted, so that one run
tells what PEFT does.
"""
import argparse
import contextlib
import json
import math
import os
import shutil
import sys
import traceback

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# --------------------------------------------------------------------------------------------
# Training text for the tokenizers (plain English movie-review sentences written for this fixture).
# --------------------------------------------------------------------------------------------
CORPUS = """\
it is a charming and often moving film about a family that learns to laugh again.
the story is thin , the jokes are flat and the ending drags on for far too long .
a warm , funny and clever comedy with a great cast and a sharp script .
the acting is wooden and the plot makes no sense at all .
one of the best films of the year : bold , beautiful and full of heart .
a dull , tired movie that never finds its own voice .
the music is lovely and the camera work is simply stunning .
i was bored from the first scene to the last .
a smart thriller that keeps you guessing until the very end .
the characters are thin and the dialogue is painful to hear .
it is not a great film , but it is a good one , and that is enough .
the director has made a quiet , honest and deeply human movie .
a mess of a movie with too many ideas and not enough story .
the kids will love it and the parents will not be bored either .
an ugly , loud and empty film that wastes a fine cast .
a sweet little story told with care and a light touch .
the second half is much better than the first , but it is still slow .
funny , sad and true : this is a film to see twice .
the special effects are cheap and the monsters are not scary .
she gives the performance of her life in a role made for her .
the film looks good , but there is nothing under the surface .
a gentle , wise and often very funny look at growing old .
this is the kind of movie that makes you want to leave early .
he plays the villain with real menace and a dark sense of humour .
a tender love story , well written and well played .
the script is lazy and the jokes fall flat every time .
a rich and rewarding drama about friendship and loss .
it tries hard to be clever and ends up being merely confusing .
the old house , the storm and the long night make a fine ghost story .
a bright , happy film for a rainy sunday afternoon .
i give it 9 / 10 , and i saw it twice in 2024 !
"""

# Reviews for the goldens' batches: (text, label index). Labels: 0 negative, 1 positive, 2 neutral.
REVIEWS = [
    ("a warm and funny film with a great cast .", 1),
    ("the plot is flat and the ending drags .", 0),
    ("it is a film about a family .", 2),
    ("bored from the first scene to the last , i wanted to leave early .", 0),
    ("a smart , moving and beautiful story !", 1),
    ("the music is lovely .", 1),
]

TOKENIZER_CHECK_STRINGS = [
    "It's a CHARMING film, and often moving!",
    "  two  spaces,\ttab and\nnew line\n",
    "Scores: 9/10 (really) -- on 2024-05-17.",
    "Caf\u00e9 na\u00efve \u00c9cole \U0001F600 end",
    "unbelievably overlong",
    "[CLS] stays special [SEP] and [MASK]",
]

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
SEED = 4321

MODELS = {
    "tiny-distilbert": {"arch": "distilbert", "vocab_target": 320,
                        "kw": dict(dim=32, n_layers=2, n_heads=4, hidden_dim=64, max_position_embeddings=64,
                                   activation="gelu", dropout=0.0, attention_dropout=0.0, seq_classif_dropout=0.0,
                                   qa_dropout=0.0, sinusoidal_pos_embds=False, initializer_range=0.1)},
    "tiny-bert": {"arch": "bert", "vocab_target": 420,
                  "kw": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                             max_position_embeddings=64, type_vocab_size=2, hidden_act="gelu", layer_norm_eps=1e-12,
                             hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, classifier_dropout=None,
                             initializer_range=0.1, position_embedding_type="absolute")},
}

CASES = [
    {"name": "distilbert-lora", "model": "tiny-distilbert", "num_labels": 3, "rows": [0, 1, 2, 3],
     "lora": {"r": 4, "lora_alpha": 8, "target_modules": ["q_lin", "v_lin"], "use_rslora": False}},
    {"name": "bert-lora", "model": "tiny-bert", "num_labels": 2, "rows": [4, 1, 5, 3],
     "lora": {"r": 4, "lora_alpha": 8, "target_modules": ["query", "value"], "use_rslora": False}},
    {"name": "distilbert-head-only", "model": "tiny-distilbert", "num_labels": 3, "rows": [0, 1, 2, 3], "lora": None},
    {"name": "bert-head-only", "model": "tiny-bert", "num_labels": 2, "rows": [4, 1, 5, 3], "lora": None},
]
OPT = {"lr": 1e-2, "betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": 0.01, "max_grad_norm": 1.0, "steps": 5}


def log(*a):
    print(*a, flush=True)


# --------------------------------------------------------------------------------------------
# Tokenizers
# --------------------------------------------------------------------------------------------
def train_tokenizer(vocab_size):
    """A BERT WordPiece tokenizer (tokenizers library: BertNormalizer, BertPreTokenizer, WordPiece,
    [CLS] $A [SEP]) whose vocabulary is learned from CORPUS by counting, deterministically.

    The library's WordPieceTrainer is not deterministic across processes (the ids of the "##" symbols
    follow a Rust HashMap's iteration order, and merges of equal count are ordered by those ids; seen
    on the device run), so the vocabulary is chosen here: the special tokens, every character of the
    corpus alone and as "##c", then whole words by count, then the most frequent 2-4 character word
    prefixes and "##" suffixes by count (ties in code-point order), up to vocab_size entries.
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    norm = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=True)
    pre = pre_tokenizers.BertPreTokenizer()
    counts = {}
    for line in CORPUS.split("\n"):
        if not line.strip():
            continue
        for w, _ in pre.pre_tokenize_str(norm.normalize_str(line)):
            counts[w] = counts.get(w, 0) + 1
    chars = sorted({c for w in counts for c in w})
    vocab = list(SPECIALS) + chars + ["##" + c for c in chars]
    seen = set(vocab)
    words = sorted((w for w in counts if len(w) > 1), key=lambda w: (-counts[w], w))
    pieces = {}
    for w, n in counts.items():
        for L in range(2, min(len(w), 5)):
            for pc in (w[:L], "##" + w[-L:]):
                pieces[pc] = pieces.get(pc, 0) + n
    budget_words = (vocab_size - len(vocab)) * 2 // 3
    for w in words[:budget_words]:
        if w not in seen:
            vocab.append(w)
            seen.add(w)
    for pc in sorted(pieces, key=lambda q: (-pieces[q], q)):
        if len(vocab) >= vocab_size:
            break
        if pc not in seen:
            vocab.append(pc)
            seen.add(pc)
    tok = Tokenizer(models.WordPiece(vocab={t: i for i, t in enumerate(vocab)}, unk_token="[UNK]", max_input_chars_per_word=100))
    tok.normalizer = norm
    tok.pre_tokenizer = pre
    tok.add_special_tokens(SPECIALS)
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)])
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=True)
    return tok


def save_tokenizer(raw, tdir):
    """Save through transformers (BertTokenizer(Fast) when it reproduces the trained tokenizer)."""
    import transformers

    notes = []
    kw = dict(unk_token="[UNK]", sep_token="[SEP]", pad_token="[PAD]", cls_token="[CLS]", mask_token="[MASK]",
              model_max_length=64)
    hf = None
    for cname in ("BertTokenizerFast", "BertTokenizer"):
        cls = getattr(transformers, cname, None)
        if cls is None:
            continue
        try:
            cand = cls(tokenizer_object=raw, do_lower_case=True, **kw)
            for s in TOKENIZER_CHECK_STRINGS:
                if cand(s, add_special_tokens=True)["input_ids"] != raw.encode(s).ids:
                    raise ValueError("does not reproduce the trained tokenizer on %r" % s)
            hf = cand
            notes.append("saved with transformers.%s" % cname)
            break
        except Exception as e:  # noqa: BLE001
            notes.append("%s(tokenizer_object=...) unusable: %s: %s" % (cname, type(e).__name__, e))
    if hf is None:
        hf = transformers.PreTrainedTokenizerFast(tokenizer_object=raw, **kw)
        notes.append("saved with PreTrainedTokenizerFast")
    hf.save_pretrained(tdir)
    for legacy in ("vocab.txt",):
        p = os.path.join(tdir, legacy)
        if os.path.exists(p):
            os.remove(p)
    cfg_path = os.path.join(tdir, "tokenizer_config.json")
    with open(cfg_path) as f:
        tcfg = json.load(f)
    for k, v in kw.items():
        tcfg.setdefault(k, v)
    tcfg.setdefault("do_lower_case", True)
    with open(cfg_path, "w") as f:
        json.dump(tcfg, f, indent=2, ensure_ascii=False)
        f.write("\n")
    stm = os.path.join(tdir, "special_tokens_map.json")
    if not os.path.exists(stm):
        with open(stm, "w") as f:
            json.dump({k: v for k, v in kw.items() if k.endswith("_token")}, f, indent=2)
            f.write("\n")
    return hf, notes


# --------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------
def classes(arch):
    import transformers
    if arch == "distilbert":
        return transformers.DistilBertConfig, transformers.DistilBertModel, transformers.DistilBertForSequenceClassification
    return transformers.BertConfig, transformers.BertModel, transformers.BertForSequenceClassification


def build_model(name, vocab_size, pad_id, mdir, seed):
    import torch

    spec = MODELS[name]
    cfg_cls, base_cls, _ = classes(spec["arch"])
    cfg = cfg_cls(vocab_size=vocab_size, pad_token_id=pad_id, **spec["kw"])
    torch.manual_seed(seed)
    model = base_cls(cfg).float()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for mname, m in model.named_modules():
            if isinstance(m, torch.nn.LayerNorm):
                m.weight.copy_(1.0 + (torch.rand(m.weight.shape, generator=g) * 0.4 - 0.2))
        for pname, p in model.named_parameters():
            if pname.endswith(".bias"):
                p.copy_(torch.rand(p.shape, generator=g) * 0.2 - 0.1)
    try:
        model.save_pretrained(mdir, safe_serialization=True)
    except TypeError:
        model.save_pretrained(mdir)
    assert os.path.exists(os.path.join(mdir, "model.safetensors")), "model.safetensors not written"
    with open(os.path.join(mdir, "config.json")) as f:
        cj = json.load(f)
    return cj


def load_cls(mdir, arch, num_labels, dtype, seed):
    """The *ForSequenceClassification model (eager attention) from the base checkpoint: the head is new."""
    import torch

    _, _, cls = classes(arch)
    torch.manual_seed(seed)
    try:
        m = cls.from_pretrained(mdir, num_labels=num_labels, attn_implementation="eager", dtype=torch.float32)
    except TypeError:
        m = cls.from_pretrained(mdir, num_labels=num_labels, attn_implementation="eager", torch_dtype=torch.float32)
    return m.to(dtype)


def head_modules(arch):
    return ["pre_classifier", "classifier"] if arch == "distilbert" else ["classifier"]


# --------------------------------------------------------------------------------------------
# Own float64 forward (a cross-check of transformers' semantics; recorded, not asserted)
# --------------------------------------------------------------------------------------------
def own_forward(sd, arch, cfg, ids, am):
    """sd: the task model's effective float64 weights by transformers names (LoRA merged, head as used)."""
    import torch

    B, T = ids.shape
    if arch == "distilbert":
        C, H, eps, L = cfg["dim"], cfg["n_heads"], 1e-12, cfg["n_layers"]
        pre = "distilbert."
        emb = sd[pre + "embeddings.word_embeddings.weight"][ids] + sd[pre + "embeddings.position_embeddings.weight"][:T][None]
        eln = pre + "embeddings.LayerNorm"
    else:
        C, H, eps, L = cfg["hidden_size"], cfg["num_attention_heads"], cfg["layer_norm_eps"], cfg["num_hidden_layers"]
        pre = "bert."
        emb = (sd[pre + "embeddings.word_embeddings.weight"][ids] + sd[pre + "embeddings.position_embeddings.weight"][:T][None]
               + sd[pre + "embeddings.token_type_embeddings.weight"][0][None, None])
        eln = pre + "embeddings.LayerNorm"
    D = C // H

    def ln(x, p):
        return torch.nn.functional.layer_norm(x, (C,), sd[p + ".weight"], sd[p + ".bias"], eps)

    def lin(x, p):
        return x @ sd[p + ".weight"].T + sd[p + ".bias"]

    x = ln(emb, eln)
    keymask = (am[:, None, None, :] == 1)
    for l in range(L):
        if arch == "distilbert":
            p = pre + "transformer.layer.%d." % l
            n = dict(q=p + "attention.q_lin", k=p + "attention.k_lin", v=p + "attention.v_lin", o=p + "attention.out_lin",
                     ln1=p + "sa_layer_norm", f1=p + "ffn.lin1", f2=p + "ffn.lin2", ln2=p + "output_layer_norm")
        else:
            p = pre + "encoder.layer.%d." % l
            n = dict(q=p + "attention.self.query", k=p + "attention.self.key", v=p + "attention.self.value",
                     o=p + "attention.output.dense", ln1=p + "attention.output.LayerNorm", f1=p + "intermediate.dense",
                     f2=p + "output.dense", ln2=p + "output.LayerNorm")
        q = lin(x, n["q"]).view(B, T, H, D).transpose(1, 2)
        k = lin(x, n["k"]).view(B, T, H, D).transpose(1, 2)
        v = lin(x, n["v"]).view(B, T, H, D).transpose(1, 2)
        s = (q @ k.transpose(-1, -2)) / math.sqrt(D)
        s = s.masked_fill(~keymask, float("-inf"))
        ctx = (torch.softmax(s, dim=-1) @ v).transpose(1, 2).reshape(B, T, C)
        h1 = ln(x + lin(ctx, n["o"]), n["ln1"])
        f = torch.nn.functional.gelu(lin(h1, n["f1"]))
        x = ln(h1 + lin(f, n["f2"]), n["ln2"])
    cls = x[:, 0]
    if arch == "distilbert":
        z = torch.relu(lin(cls, "pre_classifier"))
    else:
        z = torch.tanh(lin(cls, "bert.pooler.dense"))
    return lin(z, "classifier")


def effective_state_dict(model, arch, lora_scaling):
    """transformers-named float64 weights as the (PEFT-wrapped or plain) model uses them."""
    import torch

    out = {}
    sd = {k: v.detach().to(torch.float64) for k, v in model.state_dict().items()}
    for k, v in sd.items():
        name = k
        if name.startswith("base_model.model."):
            name = name[len("base_model.model."):]
        if ".lora_" in name or ".original_module." in name:
            continue
        name = name.replace(".modules_to_save.default.", ".").replace(".base_layer.", ".")
        out[name] = v.clone()
    if lora_scaling is not None:
        for k, v in sd.items():
            if ".lora_A.default.weight" in k:
                mod = k[len("base_model.model."):].replace(".lora_A.default.weight", "")
                Bm = sd[k.replace("lora_A", "lora_B")]
                out[mod + ".weight"] = out[mod + ".weight"] + lora_scaling * (Bm @ v)
    return out


# --------------------------------------------------------------------------------------------
# Cases
# --------------------------------------------------------------------------------------------
def saved_name(param_name):
    """Trainable parameter name -> the name PEFT's state dict (and so the adapter file) uses."""
    return param_name.replace(".modules_to_save.default.", ".").replace(".default.", ".")


def make_batch(encode, rows, pad_id):
    seqs = [encode(REVIEWS[i][0]) for i in rows]
    T = max(len(s) for s in seqs)
    batch = {"input_ids": [], "attention_mask": [], "labels": [], "texts": [REVIEWS[i][0] for i in rows]}
    for s, i in zip(seqs, rows):
        pad = T - len(s)
        batch["input_ids"].append(s + [pad_id] * pad)
        batch["attention_mask"].append([1] * len(s) + [0] * pad)
        batch["labels"].append(REVIEWS[i][1])
    return batch


def run_case(case, ci, mdir, arch, cfg_json, batch, notes):
    import torch
    import torch.nn.functional as F

    name, K = case["name"], case["num_labels"]
    labels_raw = batch["labels"]
    labels = torch.tensor([y % K for y in labels_raw], dtype=torch.long)
    ids = torch.tensor(batch["input_ids"], dtype=torch.long)
    am = torch.tensor(batch["attention_mask"], dtype=torch.long)
    model = load_cls(mdir, arch, K, torch.float64, SEED + 50 + ci)
    lc = case["lora"]
    peft_cfg = None
    scaling = None
    rec = {"name": name, "model": case["model"], "num_labels": K}
    if lc is not None:
        from peft import get_peft_model, get_peft_model_state_dict
        peft_cfg = seqcls_lora_config(lc)
        model = get_peft_model(model, peft_cfg)
        model = model.double()
        scaling = lc["lora_alpha"] / (math.sqrt(lc["r"]) if lc["use_rslora"] else lc["r"])
        sd_keys = sorted(get_peft_model_state_dict(model).keys())
        rec["peft_state_dict_keys"] = sd_keys
        rec["peft_modules_to_save"] = sorted(model.peft_config["default"].modules_to_save or [])
        rec["lora"] = dict(lc, lora_dropout=0.0, bias="none", scaling=scaling)
    else:
        heads = head_modules(arch)
        for n, p in model.named_parameters():
            p.requires_grad_(any(n == "%s.weight" % h or n == "%s.bias" % h for h in heads))
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    rec["trainable_parameters"] = [n for n, _ in named]
    if lc is not None:
        pnames = [saved_name(n) for n, _ in named]
        if sorted(pnames) != rec["peft_state_dict_keys"]:
            notes.append("%s: trainable names (mapped) %s differ from PEFT's state dict keys %s" % (name, pnames, rec["peft_state_dict_keys"]))
    else:
        pnames = ["base_model.model." + n for n, _ in named]
    params = [p for _, p in named]
    assert all(p.dtype == torch.float64 for p in model.parameters())
    rec["param_names"] = pnames
    rec["param_shapes"] = {n: list(p.shape) for n, p in zip(pnames, params)}

    g = torch.Generator().manual_seed(SEED + 100 + ci)
    init = {}
    with torch.no_grad():
        for n, p in zip(pnames, params):
            v = torch.rand(p.shape, generator=g, dtype=torch.float32) * 0.6 - 0.3
            init[n] = v.clone()
            p.copy_(v.to(torch.float64))
    if lc is not None:
        for mn, m in model.named_modules():
            if hasattr(m, "scaling") and isinstance(getattr(m, "scaling"), dict) and "default" in m.scaling:
                assert abs(m.scaling["default"] - scaling) < 1e-12, (mn, m.scaling, scaling)

    model.train()
    model.zero_grad(set_to_none=True)
    out = model(input_ids=ids, attention_mask=am, labels=labels)
    logits = out.logits
    assert logits.dtype == torch.float64 and list(logits.shape) == [ids.shape[0], K], (logits.dtype, logits.shape)
    loss = F.cross_entropy(logits, labels)
    rec["loss_transformers"] = float(out.loss)
    if abs(float(out.loss) - float(loss)) > 1e-9 * max(1.0, abs(float(loss))):
        notes.append("%s: own loss %r != transformers loss %r" % (name, float(loss), float(out.loss)))
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in zip(pnames, params)}
    g0 = math.sqrt(sum(float((gr * gr).sum()) for gr in grads.values()))

    with torch.no_grad():
        try:
            own = own_forward(effective_state_dict(model, arch, scaling), arch, cfg_json, ids, am)
            rec["own_float64_forward_rel_err"] = float((own - logits).abs().max() / logits.abs().max())
        except Exception as e:  # noqa: BLE001
            rec["own_float64_forward_rel_err"] = None
            notes.append("%s: own forward failed: %s: %s" % (name, type(e).__name__, e))
        pos = torch.arange(ids.shape[1]).unsqueeze(0).expand_as(ids)
        lg2 = model(input_ids=ids, attention_mask=am, position_ids=pos).logits if arch == "bert" else logits
        rec["explicit_position_ids_max_diff"] = float((lg2 - logits).abs().max())
        if arch == "bert":
            lg3 = model(input_ids=ids, attention_mask=am, token_type_ids=torch.zeros_like(ids)).logits
            rec["explicit_token_type_ids_max_diff"] = float((lg3 - logits).abs().max())

    max_norm = OPT["max_grad_norm"]
    if g0 <= max_norm:
        max_norm = float("%.1g" % (0.5 * g0))
        notes.append("%s: grad norm %.4g <= 1, max_grad_norm lowered to %g" % (name, g0, max_norm))
    with torch.no_grad():
        for n, p in zip(pnames, params):
            p.copy_(init[n].to(torch.float64))
    opt = torch.optim.AdamW(params, lr=OPT["lr"], betas=tuple(OPT["betas"]), eps=OPT["eps"], weight_decay=OPT["weight_decay"])
    step_losses, step_norms, clipped = [], [], []
    for _ in range(OPT["steps"]):
        opt.zero_grad(set_to_none=True)
        o = model(input_ids=ids, attention_mask=am)
        l = F.cross_entropy(o.logits, labels)
        l.backward()
        tn = torch.nn.utils.clip_grad_norm_(params, max_norm=max_norm)
        opt.step()
        step_losses.append(float(l))
        step_norms.append(float(tn))
        clipped.append(bool(float(tn) > max_norm))
    step5 = {n: p.detach().clone() for n, p in zip(pnames, params)}
    with torch.no_grad():
        step5_logits = model(input_ids=ids, attention_mask=am).logits.detach().clone()

    rec.update({
        "labels": [int(y) for y in labels],
        "optimizer": dict(OPT, max_grad_norm=max_norm, max_grad_norm_lowered=max_norm != OPT["max_grad_norm"]),
        "loss": float(loss), "grad_norm": g0, "step_losses": step_losses, "step_grad_norms": step_norms,
        "step_clipped": clipped, "loss_after_steps": float(F.cross_entropy(step5_logits, labels)),
    })
    tensors = {"%s/logits" % name: logits.detach(), "%s/step5_logits" % name: step5_logits}
    for n in pnames:
        tensors["%s/init/%s" % (name, n)] = init[n]
        tensors["%s/grad/%s" % (name, n)] = grads[n]
        tensors["%s/step5/%s" % (name, n)] = step5[n]
    return rec, tensors, peft_cfg, init


def seqcls_lora_config(lc):
    from peft import LoraConfig
    return LoraConfig(task_type="SEQ_CLS", r=lc["r"], lora_alpha=lc["lora_alpha"], target_modules=list(lc["target_modules"]),
                      lora_dropout=0.0, bias="none", use_rslora=lc["use_rslora"])


def peft_save(out_dir, mdir_rel, arch, K, lc, init, sub, seed):
    """get_peft_model on the float32 model (a fresh config: PEFT extends modules_to_save in place),
    the case's initial values, PEFT's own save_pretrained."""
    import torch
    from peft import get_peft_model

    config = seqcls_lora_config(lc)

    with contextlib.chdir(out_dir):
        base = load_cls(mdir_rel, arch, K, torch.float32, seed)
        model = get_peft_model(base, config)
        with torch.no_grad():
            for n, p in model.named_parameters():
                if p.requires_grad:
                    p.copy_(init[saved_name(n)].to(p.dtype))
        model.peft_config["default"].base_model_name_or_path = mdir_rel
        model.save_pretrained(sub)
    card = os.path.join(out_dir, sub, "README.md")
    if os.path.exists(card):
        os.remove(card)
    with open(os.path.join(out_dir, sub, "adapter_config.json")) as f:
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
    from safetensors.torch import save_file
    from tokenizers import Tokenizer

    torch.set_num_threads(1)
    torch.manual_seed(SEED)
    np.random.seed(SEED)
    out = os.path.abspath(args.out)
    gdir, sdir = os.path.join(out, "goldens"), os.path.join(out, "selftest")
    for d in [os.path.join(out, m) for m in MODELS] + [gdir, sdir]:
        if os.path.exists(d):
            shutil.rmtree(d)
        os.makedirs(d)
    notes = []
    doc = {"models": {}, "cases": [], "tokenizer_checks": {}}
    tensors = {}

    encoders, cfgs = {}, {}
    for mi, (mname, spec) in enumerate(MODELS.items()):
        mdir = os.path.join(out, mname)
        raw = train_tokenizer(spec["vocab_target"])
        assert raw.to_str() == train_tokenizer(spec["vocab_target"]).to_str(), "tokenizer training is not deterministic"
        hf_tok, tnotes = save_tokenizer(raw, mdir)
        notes += ["%s: %s" % (mname, n) for n in tnotes]
        saved = Tokenizer.from_file(os.path.join(mdir, "tokenizer.json"))
        V = saved.get_vocab_size()
        pad_id = saved.token_to_id("[PAD]")
        try:
            auto_tok = transformers.AutoTokenizer.from_pretrained(mdir)
            notes.append("%s: AutoTokenizer reload class %s" % (mname, type(auto_tok).__name__))
        except Exception as e:  # noqa: BLE001
            auto_tok = None
            notes.append("%s: WARNING AutoTokenizer.from_pretrained failed: %s: %s" % (mname, type(e).__name__, e))
        checks = []
        for s in TOKENIZER_CHECK_STRINGS + [r[0] for r in REVIEWS]:
            ref = saved.encode(s).ids
            for what, got in [("raw trained", raw.encode(s).ids), ("saved object", hf_tok(s)["input_ids"])] + (
                    [("AutoTokenizer", auto_tok(s)["input_ids"])] if auto_tok is not None else []):
                if got != ref:
                    notes.append("%s: WARNING tokenizer mismatch (%s) on %r: %s vs tokenizer.json %s" % (mname, what, s, got, ref))
            if s in TOKENIZER_CHECK_STRINGS:
                enc = saved.encode(s)
                checks.append({"text": s, "ids": enc.ids, "tokens": enc.tokens})
        doc["tokenizer_checks"][mname] = checks
        cj = build_model(mname, V, pad_id, mdir, SEED + 10 * mi)
        cfgs[mname] = cj
        encoders[mname] = (lambda t: (lambda text: list(t.encode(text).ids)))(saved)
        doc["models"][mname] = {"arch": spec["arch"], "vocab_size": V, "pad_token_id": pad_id,
                                "cls_token_id": saved.token_to_id("[CLS]"), "sep_token_id": saved.token_to_id("[SEP]"),
                                "config": cj, "files": sorted(os.listdir(mdir))}

    for ci, case in enumerate(CASES):
        mname = case["model"]
        arch = MODELS[mname]["arch"]
        pad_id = doc["models"][mname]["pad_token_id"]
        batch = make_batch(encoders[mname], case["rows"], pad_id)
        try:
            rec, ts, pcfg, init = run_case(case, ci, os.path.join(out, mname), arch, cfgs[mname], batch, notes)
        except Exception as e:  # noqa: BLE001
            notes.append("CASE %s FAILED: %s: %s" % (case["name"], type(e).__name__, e))
            log(traceback.format_exc())
            continue
        rec["batch"] = {k: batch[k] for k in ("input_ids", "attention_mask", "texts")}
        if pcfg is not None:
            sub = os.path.join("selftest", "peft-%s" % case["name"])
            try:
                rec["adapter_config"] = peft_save(out, mname, arch, case["num_labels"], case["lora"], init, sub, SEED + 70 + ci)
                from safetensors import safe_open
                with safe_open(os.path.join(out, sub, "adapter_model.safetensors"), framework="pt") as f:
                    rec["peft_saved_keys"] = sorted(f.keys())
            except Exception as e:  # noqa: BLE001
                notes.append("%s: PEFT save failed: %s: %s" % (case["name"], type(e).__name__, e))
                log(traceback.format_exc())
            with open(os.path.join(gdir, "bert-checker-inputs-%s.json" % mname), "w") as f:
                json.dump({"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}, f)
                f.write("\n")
        doc["cases"].append(rec)
        tensors.update(ts)

    doc["conventions"] = {
        "dtype": "references computed in float64 on CPU from the float32 weights of the fixtures; tensors stored as float32",
        "model": "*ForSequenceClassification.from_pretrained(base folder, num_labels=K, attn_implementation='eager'): the head is "
                 "new there and then overwritten with the case's initial values; every dropout probability is 0",
        "attention": "bidirectional; key mask from attention_mask (right padding); token_type_ids all 0 (default)",
        "loss": "cross-entropy of logits [B, K] against labels, mean over the batch",
        "lora": "y = base(x) + scaling * (x @ A^T) @ B^T; task_type SEQ_CLS; PEFT's modules_to_save trains the head in full",
        "head_only": "no PEFT: requires_grad only on the head modules PEFT would save; names given as base_model.model.<module>",
        "clip": "torch.nn.utils.clip_grad_norm_ over all trainable tensors, max_norm 1",
        "adamw": "torch.optim.AdamW over all trainable tensors (LoRA and head), weight decay on all",
        "steps": "step_losses[i], step_grad_norms[i] before update i+1; step5 = params after 5 updates",
    }
    doc["versions"] = {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__,
                       "tokenizers": tokenizers.__version__, "safetensors": safetensors.__version__, "python": sys.version.split()[0]}
    doc["notes"] = notes
    with open(os.path.join(gdir, "bert-seqcls.json"), "w") as f:
        json.dump(doc, f, indent=1, ensure_ascii=False)
        f.write("\n")
    save_file({k: v.detach().to(torch.float32).contiguous() for k, v in sorted(tensors.items())},
              os.path.join(gdir, "bert-seqcls.safetensors"), metadata={"format": "pt"})

    log("=" * 72)
    log("versions:", json.dumps(doc["versions"]))
    for mname, m in doc["models"].items():
        log("%s: vocab %d pad %d cls %d sep %d files %s" % (mname, m["vocab_size"], m["pad_token_id"], m["cls_token_id"], m["sep_token_id"], m["files"]))
    for c in doc["cases"]:
        log("case %s: K=%d loss=%.10f (transformers %.10f) grad_norm=%.6f own_fwd_err=%s" % (
            c["name"], c["num_labels"], c["loss"], c["loss_transformers"], c["grad_norm"], c.get("own_float64_forward_rel_err")))
        log("  trainable:", c["trainable_parameters"])
        log("  saved names:", c.get("peft_state_dict_keys"), "file keys:", c.get("peft_saved_keys"))
        log("  modules_to_save:", c.get("peft_modules_to_save"), "adapter_config task/mts:",
            (c.get("adapter_config") or {}).get("task_type"), (c.get("adapter_config") or {}).get("modules_to_save"))
        log("  step_losses:", ["%.8f" % x for x in c["step_losses"]], "norms:", ["%.6f" % x for x in c["step_grad_norms"]])
    for n in notes:
        log("NOTE:", n)
    log("tensors:", len(tensors))
    log("=" * 72)
    if len(doc["cases"]) != len(CASES):
        sys.exit(1)


if __name__ == "__main__":
    main()
