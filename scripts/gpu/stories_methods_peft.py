#!/usr/bin/env python3
"""stories260K on E2E with transformers + PEFT, set up as our CLI trains (issue #6's acceptance run).

    python3 scripts/gpu/stories_methods_peft.py train --model DIR --data e2e_dev.csv --out peft.json
        [--methods ia3,prefix,prompt,lora,dora] [--steps 60] [--batch-size 8] [--lr 3e-2]
        [--max-length 256] [--validation 0.1] [--seed 42] [--virtual-tokens 10] [--ours-examples JSON]
        [--init peft|ours] [--lora-dropout 0.05] [--device auto|cuda|cpu]
    python3 scripts/gpu/stories_methods_peft.py table --run peft.json DIR [--run peft-seed2.json DIR2 ...] [--json OUT]
    python3 scripts/gpu/stories_methods_peft.py evaluate --model DIR --data e2e_dev.csv --seed S --adapter A [--adapter B]
        [--train-mode [--repeats 3]]

`train` mirrors src/cli/train.ts with its defaults (src/engine/train/trainer.ts DEFAULT_TRAIN_CONFIG):
  - examples as src/data/examples.ts builds them for `--prompt-column mr --completion-column ref`
    (template "{mr}\\n"): ids = tok(mr + "\\n") (BOS first) + tok(ref, no special tokens) + [eos],
    labels -100 on the prompt part, cut to --max-length, rows with no target left are skipped;
  - the same validation split (splitTrainValidation: mulberry32 + mixSeed, ported) and the same batch
    order (epochOrder(n_train, epoch, seed)): step s takes train[order[s * B + k]], k < B;
  - AdamW (betas 0.9 / 0.999, eps 1e-8, weight decay 0), linear decay from lr to 0 over the steps with
    no warmup (transformers' get_linear_schedule_with_warmup, which src/train/schedule.ts copies),
    gradient clipping at 1.0, loss = mean cross-entropy over the batch's target tokens;
  - LoRA / DoRA: r 8, alpha 16, dropout 0.05 on q_proj,v_proj (our CLI's LoRA defaults, flags given);
    IA3: PEFT's defaults for llama; prompt tuning: RANDOM init (nn.Embedding, N(0, 1)); prefix tuning:
    no projection. The adapters' own random values come from torch (seed --seed), ours from our seed:
    the same distributions, not the same numbers. With --init ours the PyTorch side starts from our
    CLI's exact initial values for --seed instead (our mulberry32 stream and draw order, ported).
  - evaluation: mean cross-entropy per target token over the validation examples (model.eval()),
    before training and after the last step (our CLI evaluates after the last step).
With --ours-examples (written by `stories-methods.sh prepare` from our own code) the examples, split
and order built here are compared with ours, and ours are used if they differ (reported).

`table` reads that JSON and our CLI's runs (DIR/<method>/trainer_state.json and DIR/<method>.txt, the
console log) and prints the comparison, per seed and (with several) averaged over the seeds.
`evaluate` gives PEFT's loss of saved adapters (ours load as they are) on a seed's held-out examples.
"""
import argparse
import csv
import json
import math
import os
import sys
import time

METHODS = ["ia3", "prefix", "prompt", "lora", "dora"]
_M32 = 0xFFFFFFFF


def log(*a):
    print(*a, flush=True)


# --------------------------------------------------------------------------------------------
# src/data/batches.ts, ported exactly (as in scripts/goldens/make_llama_goldens.py)
# --------------------------------------------------------------------------------------------
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


def shuffled(n, rnd):
    order = list(range(n))
    for i in range(n - 1, 0, -1):
        j = int(rnd() * (i + 1))
        order[i], order[j] = order[j], order[i]
    return order


def epoch_order(n, epoch, seed):
    return shuffled(n, seeded_random(mix_seed(seed, epoch)))


def split_train_validation(n, fraction, seed):
    """Indices of the train and validation examples, both in file order (splitTrainValidation)."""
    n_val = int(math.floor(n * fraction + 0.5))  # Math.round
    if fraction > 0 and n_val == 0 and n >= 2:
        n_val = 1
    n_val = min(n_val, n - 1)
    if n_val <= 0:
        return list(range(n)), []
    order = shuffled(n, seeded_random(mix_seed(seed, 0x5EED)))
    is_val = set(order[:n_val])
    return [i for i in range(n) if i not in is_val], [i for i in range(n) if i in is_val]


# --------------------------------------------------------------------------------------------
# src/data/examples.ts for prompt "{mr}\n" -> completion "ref"
# --------------------------------------------------------------------------------------------
def build_examples(model_dir, data_path, max_length):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    eos = tok.eos_token_id
    with open(data_path, newline="", encoding="utf-8-sig") as f:
        rows = list(csv.DictReader(f))
    examples, skipped, truncated = [], 0, 0
    for i, r in enumerate(rows):
        mr, ref = r.get("mr") or "", r.get("ref") or ""
        if mr.strip() == "" or ref.strip() == "":
            skipped += 1
            continue
        p_ids = tok(mr + "\n").input_ids
        c_ids = tok(ref, add_special_tokens=False).input_ids + [eos]
        ids = p_ids + c_ids
        labels = [-100] * len(p_ids) + c_ids
        if len(ids) > max_length:
            ids, labels = ids[:max_length], labels[:max_length]
            truncated += 1
        if not any(x != -100 for x in labels[1:]):
            skipped += 1
            continue
        examples.append({"row": i + 2, "ids": ids, "labels": labels})
    return tok, examples, {"rows": len(rows), "skipped": skipped, "truncated": truncated}


def compare_with_ours(examples, train, val, order, ours_path):
    """Our CLI's examples, split and order (from stories-methods.sh prepare); returns (report, theirs)."""
    with open(ours_path) as f:
        d = json.load(f)
    ours = [{"row": row, "ids": ids, "labels": [-100] * p + ids[p:]} for row, p, ids in d["examples"]]
    rep = {"ours_examples": len(ours), "peft_examples": len(examples)}
    if len(ours) == len(examples):
        rep["examples_differing"] = sum(1 for a, b in zip(ours, examples) if a != b)
    else:
        rep["examples_differing"] = "count differs"
    rep["split_same"] = d["train"] == train and d["validation"] == val
    rep["order_same"] = d["order0"] == order
    rep["same"] = rep["examples_differing"] == 0 and rep["split_same"] and rep["order_same"]
    return rep, (ours, d["train"], d["validation"], d["order0"])


# --------------------------------------------------------------------------------------------
# --init ours: our CLI's initial adapter values for --seed (src/engine/peft/lora.ts loraAInit, dora.ts,
# prompt-tuning.ts normalValues, prefix-tuning.ts), from the same mulberry32 stream in the same order
# --------------------------------------------------------------------------------------------
LLAMA_LINEARS = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]


def normal_values(n, rnd):
    out = [0.0] * n
    for i in range(0, n, 2):
        u1 = 1 - rnd()
        u2 = rnd()
        r = math.sqrt(-2 * math.log(u1))
        out[i] = r * math.cos(2 * math.pi * u2)
        if i + 1 < n:
            out[i + 1] = r * math.sin(2 * math.pi * u2)
    return out


def ours_init(method, model, a):
    """{PEFT parameter name: float32 tensor} with our CLI's initial values (LoRA / DoRA: lora_A; prompt, prefix)."""
    import torch

    rnd = seeded_random(a.seed)
    named = dict(model.named_parameters())
    out = {}
    if method in ("lora", "dora"):
        targets = a.lora_targets.split(",")
        cfg = model.get_base_model().config
        for l in range(cfg.num_hidden_layers):
            for lin in LLAMA_LINEARS:
                if lin.split(".")[-1] not in targets:
                    continue
                name = "base_model.model.model.layers.%d.%s.lora_A.default.weight" % (l, lin)
                shape = tuple(named[name].shape)  # [r, in]
                bound = 1 / math.sqrt(shape[1])
                vals = [(rnd() * 2 - 1) * bound for _ in range(shape[0] * shape[1])]
                out[name] = torch.tensor(vals, dtype=torch.float64).to(torch.float32).reshape(shape)
    elif method in ("prompt", "prefix"):
        name = "prompt_encoder.default.embedding.weight"
        shape = tuple(named[name].shape)  # [n, width]
        out[name] = torch.tensor(normal_values(shape[0] * shape[1], rnd), dtype=torch.float64).to(torch.float32).reshape(shape)
    return out


# --------------------------------------------------------------------------------------------
# training
# --------------------------------------------------------------------------------------------
def load_model(mdir):
    import torch
    from transformers import AutoModelForCausalLM

    try:
        return AutoModelForCausalLM.from_pretrained(mdir, attn_implementation="eager", dtype=torch.float32)
    except TypeError:
        return AutoModelForCausalLM.from_pretrained(mdir, attn_implementation="eager", torch_dtype=torch.float32)


def peft_config(method, a):
    from peft import IA3Config, LoraConfig, PrefixTuningConfig, PromptTuningConfig

    if method in ("lora", "dora"):
        return LoraConfig(task_type="CAUSAL_LM", r=a.rank, lora_alpha=a.alpha, lora_dropout=a.lora_dropout,
                          target_modules=a.lora_targets.split(","), use_dora=method == "dora")
    if method == "ia3":
        return IA3Config(task_type="CAUSAL_LM")  # PEFT's defaults for llama
    if method == "prompt":
        return PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=a.virtual_tokens, prompt_tuning_init="RANDOM")
    if method == "prefix":
        return PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=a.virtual_tokens, prefix_projection=False)
    raise ValueError(method)


def make_batch(exs, pad_id, device):
    import torch

    T = max(len(e["ids"]) for e in exs)
    ids = torch.full((len(exs), T), pad_id, dtype=torch.long)
    am = torch.zeros((len(exs), T), dtype=torch.long)
    lab = torch.full((len(exs), T), -100, dtype=torch.long)
    for b, e in enumerate(exs):
        L = len(e["ids"])
        ids[b, :L] = torch.tensor(e["ids"])
        am[b, :L] = 1
        lab[b, :L] = torch.tensor(e["labels"])
    return ids.to(device), am.to(device), lab.to(device)


def shifted_ce_sum(logits, labels):
    import torch.nn.functional as F

    tl = labels[:, 1:]
    s = F.cross_entropy(logits[:, :-1].detach().reshape(-1, logits.shape[-1]).float(), tl.reshape(-1), ignore_index=-100, reduction="sum")
    return float(s), int((tl != -100).sum())


def run_method(method, a, examples, train, val, order, pad_id, device):
    import torch
    from peft import get_peft_model
    from transformers import get_linear_schedule_with_warmup

    torch.manual_seed(a.seed)
    base = load_model(a.model)
    model = get_peft_model(base, peft_config(method, a)).to(device)
    pc = model.peft_config["default"]
    if a.init == "ours":
        with torch.no_grad():
            for name, v in ours_init(method, model, a).items():
                dict(model.named_parameters())[name].copy_(v.to(device))
    params = [p for _, p in model.named_parameters() if p.requires_grad]
    trainable = sum(p.numel() for p in params)
    total = sum(p.numel() for p in model.parameters())
    n_virtual = pc.num_virtual_tokens if method == "prompt" else 0
    info = {"trainable_params": trainable, "all_params": total, "peft_type": str(pc.peft_type), "init": a.init}
    for k in ("target_modules", "feedforward_modules"):
        v = getattr(pc, k, None)
        if v is not None:
            info[k] = sorted(v) if not isinstance(v, str) else v
    if method in ("prefix", "prompt"):
        info["num_virtual_tokens"] = pc.num_virtual_tokens
        info["token_dim"] = pc.token_dim
    log("== PEFT %s: %s" % (method, json.dumps(info)))
    opt = torch.optim.AdamW(params, lr=a.lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=a.weight_decay)
    sched = get_linear_schedule_with_warmup(opt, num_warmup_steps=a.warmup, num_training_steps=a.steps)

    def evaluate():
        model.eval()
        tot, cnt = 0.0, 0
        with torch.no_grad():
            for s in range(0, len(val), a.batch_size):
                ids, am, lab = make_batch([examples[i] for i in val[s:s + a.batch_size]], pad_id, device)
                lg = model(input_ids=ids, attention_mask=am).logits
                if n_virtual:  # PEFT returns the virtual positions first; they carry no target here
                    lab = torch.cat([torch.full((lab.shape[0], n_virtual), -100, dtype=torch.long, device=device), lab], dim=1)
                s_, c_ = shifted_ce_sum(lg, lab)
                tot += s_
                cnt += c_
        model.train()
        return tot / max(1, cnt)

    t0 = time.time()
    eval_before = evaluate() if val else None
    losses, norms, lrs = [], [], []
    B = a.batch_size
    n = len(train)
    model.train()
    for s in range(a.steps):
        idx = []
        for k in range(B):
            i = s * B + k
            o = order if i // n == 0 else epoch_order(n, i // n, a.seed)
            idx.append(train[o[i % n]])
        ids, am, lab = make_batch([examples[i] for i in idx], pad_id, device)
        opt.zero_grad(set_to_none=True)
        out = model(input_ids=ids, attention_mask=am, labels=lab)
        loss = out.loss
        if s == 0:  # transformers' loss is the mean over the target tokens, as ours
            lab_ext = lab if not n_virtual else torch.cat([torch.full((B, n_virtual), -100, dtype=torch.long, device=device), lab], dim=1)
            s_, c_ = shifted_ce_sum(out.logits, lab_ext)
            assert abs(s_ / c_ - loss.item()) < 1e-4 * max(1.0, loss.item()), (s_ / c_, loss.item())
        loss.backward()
        tn = torch.nn.utils.clip_grad_norm_(params, max_norm=a.max_grad_norm)
        lrs.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
        losses.append(loss.item())
        norms.append(float(tn))
        if (s + 1) % 10 == 0 or s == 0:
            log("PEFT %s step %d/%d | loss %.4f | lr %.2e | grad norm %.3f" % (method, s + 1, a.steps, losses[-1], lrs[-1], norms[-1]))
    eval_after = evaluate() if val else None
    log("PEFT %s: eval loss %.4f before, %.4f after; %.1f s" % (method, eval_before or float("nan"), eval_after or float("nan"), time.time() - t0))
    return dict(info, losses=losses, grad_norms=norms, lrs=lrs, eval_before=eval_before, eval_after=eval_after,
                eval_examples=len(val), seconds=time.time() - t0)


def cmd_train(a):
    import peft
    import tokenizers
    import torch
    import transformers

    torch.set_num_threads(max(1, min(8, len(os.sched_getaffinity(0)))))
    if a.device == "auto":
        a.device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.backends.cuda.matmul.allow_tf32 = False  # plain float32 (the default; said here)
    torch.backends.cudnn.allow_tf32 = False
    versions = {"python": sys.version.split()[0], "torch": torch.__version__, "transformers": transformers.__version__,
                "peft": peft.__version__, "tokenizers": tokenizers.__version__}
    log("versions: %s" % json.dumps(versions))
    tok, examples, stats = build_examples(a.model, a.data, a.max_length)
    train, val = split_train_validation(len(examples), a.validation, a.seed)
    order = epoch_order(len(train), 0, a.seed)
    log("examples: %d (%s); %d train, %d validation" % (len(examples), json.dumps(stats), len(train), len(val)))
    check = None
    if a.ours_examples:
        check, theirs = compare_with_ours(examples, train, val, order, a.ours_examples)
        log("same examples, split and order as our CLI: %s" % json.dumps(check))
        if not check["same"]:
            log("WARNING: they differ; training on OUR CLI's examples, split and order")
            examples, train, val, order = theirs
    pad_id = tok.eos_token_id  # any id: padded positions are masked and carry no target
    device = a.device
    settings = {k: getattr(a, k) for k in ("init", "steps", "batch_size", "lr", "warmup", "weight_decay", "max_grad_norm", "max_length",
                                            "validation", "seed", "virtual_tokens", "rank", "alpha", "lora_dropout", "lora_targets", "device")}
    settings.update(schedule="linear", betas=[0.9, 0.999], eps=1e-8)
    res = {"versions": versions, "settings": settings, "examples": stats, "n_train": len(train), "n_validation": len(val),
           "ours_examples_check": check, "methods": {}}
    for m in a.methods.split(","):
        res["methods"][m] = run_method(m, a, examples, train, val, order, pad_id, device)
        with open(a.out, "w") as f:
            json.dump(res, f, indent=1)
    log("wrote %s" % a.out)


# --------------------------------------------------------------------------------------------
# the table
# --------------------------------------------------------------------------------------------
def mean(xs):
    return sum(xs) / len(xs) if xs else float("nan")


def ours_run(d, m):
    path = os.path.join(d, m, "trainer_state.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        st = json.load(f)
    steps = sorted((e["step"], e["loss"]) for e in st["log_history"] if "loss" in e)
    evals = [e["eval_loss"] for e in st["log_history"] if "eval_loss" in e]
    r = {"losses": [l for _, l in steps], "eval_after": evals[-1] if evals else None}
    txt = os.path.join(d, m + ".txt")
    if os.path.exists(txt):
        for line in open(txt):
            if line.startswith("trainable params:"):
                r["trainable_params"] = int(line.split(":")[1].split("||")[0].strip().replace(",", ""))
            if line.startswith("examples:"):
                r["examples_line"] = line.strip()
                r["validation_examples"] = int(line.split(",")[1].split("validation")[0].strip())
            if line.startswith("done in "):
                r["done"] = line.strip()
    return r


def table_rows(peft_path, ours_dir):
    with open(peft_path) as f:
        peft = json.load(f)
    rows = []
    for m, p in peft["methods"].items():
        o = ours_run(ours_dir, m) or {}
        row = {"method": m, "seed": peft["settings"]["seed"], "peft_first5": mean(p["losses"][:5]), "peft_last5": mean(p["losses"][-5:]),
               "peft_eval_before": p["eval_before"], "peft_eval_after": p["eval_after"], "peft_eval_examples": p["eval_examples"],
               "peft_trainable": p["trainable_params"], "peft_steps": len(p["losses"]), "peft_step1": p["losses"][0]}
        if o.get("losses"):
            row.update(ours_step1=o["losses"][0], ours_first5=mean(o["losses"][:5]), ours_last5=mean(o["losses"][-5:]), ours_eval_after=o["eval_after"],
                       ours_trainable=o.get("trainable_params"), ours_steps=len(o["losses"]), ours_eval_examples=o.get("validation_examples"))
            if len(o["losses"]) == len(p["losses"]):
                row["max_step_rel_diff"] = max(abs(x - y) / y for x, y in zip(o["losses"], p["losses"]))
        rows.append(row)
    return peft, rows


def fmt(x, f="%.4f"):
    return f % x if x is not None else "n/a"


def print_table(rows):
    head = ("| method | trainable (PEFT / ours) | step-1 loss (PEFT / ours) | PEFT first-5 → last-5 | PEFT eval | ours first-5 → last-5 "
            "| ours eval | ours − PEFT (eval) | max step-loss diff |")
    log(head)
    log("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        ours = "%.3f → %.3f" % (r["ours_first5"], r["ours_last5"]) if "ours_first5" in r else "(no run)"
        d = r["ours_eval_after"] - r["peft_eval_after"] if r.get("ours_eval_after") is not None and r["peft_eval_after"] is not None else None
        log("| %s | %s / %s | %.4f / %s | %.3f → %.3f | %s | %s | %s | %s | %s |" % (
            r["method"], r["peft_trainable"], r.get("ours_trainable", "?"), r["peft_step1"], fmt(r.get("ours_step1")), r["peft_first5"], r["peft_last5"], fmt(r["peft_eval_after"]),
            ours, fmt(r.get("ours_eval_after")), fmt(d, "%+.4f"), fmt(r.get("max_step_rel_diff"), "%.1e")))
        if r.get("ours_eval_examples") not in (None, r["peft_eval_examples"]):
            log("NOTE %s: ours evaluated %s examples, PEFT %s" % (r["method"], r.get("ours_eval_examples"), r["peft_eval_examples"]))
        if r.get("ours_steps") not in (None, r["peft_steps"]):
            log("NOTE %s: ours logged %s steps, PEFT %s" % (r["method"], r.get("ours_steps"), r["peft_steps"]))


def cmd_table(a):
    all_rows = []
    for peft_path, ours_dir in a.run:
        peft, rows = table_rows(peft_path, ours_dir)
        all_rows += rows
        log("seed %s (split, batch order and init): %d steps, %d train / %d validation examples; PEFT eval before training: %s" % (
            peft["settings"]["seed"], peft["settings"]["steps"], peft["n_train"], peft["n_validation"],
            ", ".join("%s %.4f" % (m, p["eval_before"]) for m, p in peft["methods"].items() if p["eval_before"] is not None)))
        print_table(rows)
        log("")
    if len(a.run) > 1:
        log("mean over the %d seeds (eval: loss per target token on each seed's held-out examples, the same for PEFT and ours):" % len(a.run))
        log("| method | PEFT last-5 | PEFT eval | ours last-5 | ours eval | ours − PEFT (eval) | seeds where ours ≤ PEFT (eval) |")
        log("| --- | --- | --- | --- | --- | --- | --- |")
        for m in dict.fromkeys(r["method"] for r in all_rows):
            rs = [r for r in all_rows if r["method"] == m]
            both = [r for r in rs if r.get("ours_eval_after") is not None and r["peft_eval_after"] is not None]
            pe, oe = mean([r["peft_eval_after"] for r in both]), mean([r["ours_eval_after"] for r in both])
            log("| %s | %.3f | %.4f | %.3f | %.4f | %+.4f | %d of %d |" % (
                m, mean([r["peft_last5"] for r in rs]), pe, mean([r["ours_last5"] for r in rs if "ours_last5" in r]), oe, oe - pe,
                sum(1 for r in both if r["ours_eval_after"] <= r["peft_eval_after"]), len(both)))
    log("(step-1 loss: the first batch before any update, the same batch on both sides: equal where both start from the "
        "same values (IA3, LoRA and DoRA, whose B starts at 0, always; every method with --init ours); first-5 / last-5: mean training loss of steps 1-5 / of the last 5 steps; eval: "
        "mean loss per target token on the held-out examples after the last step; max step-loss diff: the largest "
        "|ours - PEFT| / PEFT over the steps)")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"rows": all_rows}, f, indent=1)


def cmd_evaluate(a):
    """Loss of saved adapters (ours or PEFT's) on the seed's held-out examples, with PEFT: model.eval()
    (no dropout, as PEFT evaluates) and, with --train-mode too, model.train() (LoRA dropout on, mean of
    --repeats passes)."""
    import torch
    from peft import PeftModel

    torch.manual_seed(0)
    tok, examples, _ = build_examples(a.model, a.data, a.max_length)
    _, val = split_train_validation(len(examples), a.validation, a.seed)
    out = {}
    for d in a.adapter:
        model = PeftModel.from_pretrained(load_model(a.model), d)
        res = {}
        for mode in (["eval", "train"] if a.train_mode else ["eval"]):
            model.train(mode == "train")
            vals = []
            for _ in range(a.repeats if mode == "train" else 1):
                tot, cnt = 0.0, 0
                with torch.no_grad():
                    for s in range(0, len(val), 8):
                        ids, am, lab = make_batch([examples[i] for i in val[s:s + 8]], tok.eos_token_id, "cpu")
                        s_, c_ = shifted_ce_sum(model(input_ids=ids, attention_mask=am).logits, lab)
                        tot += s_
                        cnt += c_
                vals.append(tot / cnt)
            res[mode] = mean(vals)
        out[d] = res
        log("%s: %s (%d held-out examples, seed %d)" % (d, ", ".join("%s mode %.4f" % kv for kv in res.items()), len(val), a.seed))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train")
    t.add_argument("--model", required=True)
    t.add_argument("--data", required=True)
    t.add_argument("--out", required=True)
    t.add_argument("--methods", default=",".join(METHODS))
    t.add_argument("--steps", type=int, default=60)
    t.add_argument("--batch-size", type=int, default=8)
    t.add_argument("--lr", type=float, default=3e-2)
    t.add_argument("--warmup", type=int, default=0)
    t.add_argument("--weight-decay", type=float, default=0.0)
    t.add_argument("--max-grad-norm", type=float, default=1.0)
    t.add_argument("--max-length", type=int, default=256)
    t.add_argument("--validation", type=float, default=0.1)
    t.add_argument("--seed", type=int, default=42)
    t.add_argument("--virtual-tokens", type=int, default=10)
    t.add_argument("--rank", type=int, default=8)
    t.add_argument("--alpha", type=float, default=16)
    t.add_argument("--lora-dropout", type=float, default=0.05)
    t.add_argument("--lora-targets", default="q_proj,v_proj")
    t.add_argument("--device", default="auto", help="auto (cuda when there is one), cuda or cpu")
    t.add_argument("--ours-examples", default=None)
    t.add_argument("--init", choices=["peft", "ours"], default="peft",
                   help="the adapter's initial values: PEFT's own (torch, seeded with --seed) or our CLI's for --seed (ported)")
    tb = sub.add_parser("table")
    tb.add_argument("--run", nargs=2, action="append", required=True, metavar=("PEFT_JSON", "OURS_DIR"),
                    help="a seed's PEFT JSON and our runs' folder; repeat for more seeds")
    tb.add_argument("--json", default=None)
    ev = sub.add_parser("evaluate")
    ev.add_argument("--model", required=True)
    ev.add_argument("--data", required=True)
    ev.add_argument("--adapter", action="append", required=True)
    ev.add_argument("--seed", type=int, default=42)
    ev.add_argument("--validation", type=float, default=0.1)
    ev.add_argument("--max-length", type=int, default=256)
    ev.add_argument("--train-mode", action="store_true")
    ev.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    {"train": cmd_train, "table": cmd_table, "evaluate": cmd_evaluate}[a.cmd](a)


if __name__ == "__main__":
    main()
