#!/usr/bin/env python3
"""PyTorch goldens for DoRA (PEFT's LoraConfig(use_dora=True)) and bottleneck adapters (AdapterHub's
Houlsby / Pfeiffer layouts) on the committed tiny fixtures (tiny-gpt2, tiny-llama, tiny-qwen2).

Usage (on a machine with torch, transformers, peft, tokenizers, safetensors):

    python3 scripts/goldens/make_dora_bottleneck_goldens.py --out DIR

DoRA runs through PEFT itself. The bottleneck adapters run through a reference written here from the
`adapters` library's code (methods/modeling.py Adapter, methods/bottleneck.py, the GPT-2 and Llama
decoder layers calling attention_adapters(attn_output, residual, None) and output_adapters(mlp_output,
residual, None)), attached with forward hooks as `adapters` itself attaches them to hooked models:
    f(u) = adapter_up(act(adapter_down.0(u)))
    Houlsby  (DoubleSeqBnConfig): the attention output a becomes a + f_attn(a); the MLP output h becomes
             h + f_out(h); the layer adds its residuals as usual
    Pfeiffer (SeqBnConfig): the MLP output h becomes h + f(x2 + h), x2 the MLP block's residual input
             (the input of ln_2 / post_attention_layernorm), so the layer output is v + f(v), v = x2 + h
The modules sit at AdapterHub's names (<layers>.<i>.attention_adapters.adapters.<name>.adapter_down.0.weight
...). When the `adapters` library is importable the script also builds each case with it
(adapters.init, add_adapter with the preset config, the same values) and records whether its logits
equal the reference's, and the adapter_config.json and tensor names its save_adapter writes.

Writes
    DIR/goldens/dora-bottleneck.json           batch, per case: config, trainable names and shapes, loss, grad
                                               norms, step losses, export keys/shapes, adapter_config; versions;
                                               the adapters-library cross-check; notes
    DIR/goldens/dora-bottleneck.safetensors    float32 <case>/logits, <case>/init/<name>, <case>/grad/<name>,
                                               <case>/step5/<name>, <case>/export/<key>, <case>/peft_init/<name>
                                               (PEFT's own initial magnitude vector: the norm of W)
    DIR/selftest/peft-<dora case>/             the PEFT-saved DoRA adapters (float32 base, the case's initial values)

<name> is the engine's parameter name: PEFT's state-dict name for DoRA (base_model.model.<module>.lora_A.weight,
.lora_B.weight, .lora_magnitude_vector), AdapterHub's state-dict name for the bottleneck adapters. References
in float64 (model.double()) on CPU, single thread, fixed seeds; the optimizer and the batch are those of
make_peft_methods_goldens.py.
"""
import argparse
import contextlib
import importlib.util
import json
import math
import os
import shutil
import sys
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
_spec = importlib.util.spec_from_file_location("peft_methods_goldens", os.path.join(HERE, "make_peft_methods_goldens.py"))
base = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(base)

FIX, SEED, OPT, EOS = base.FIX, base.SEED + 17, base.OPT, base.EOS
ADAPTER_NAME = "task"

CASES = [
    {"name": "gpt2-dora", "model": "tiny-gpt2", "method": "dora",
     "lora": {"r": 4, "lora_alpha": 8, "target_modules": ["c_attn", "c_proj", "c_fc"], "use_rslora": False}},
    {"name": "llama-dora-rslora", "model": "tiny-llama", "method": "dora",
     "lora": {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
              "use_rslora": True}},
    {"name": "qwen2-dora", "model": "tiny-qwen2", "method": "dora",
     "lora": {"r": 2, "lora_alpha": 6, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"], "use_rslora": False}},
    {"name": "gpt2-houlsby", "model": "tiny-gpt2", "method": "bottleneck", "bn": {"type": "houlsby", "reduction_factor": 8, "non_linearity": "swish"}},
    {"name": "gpt2-pfeiffer", "model": "tiny-gpt2", "method": "bottleneck", "bn": {"type": "pfeiffer", "reduction_factor": 4, "non_linearity": "relu"}},
    {"name": "llama-houlsby", "model": "tiny-llama", "method": "bottleneck", "bn": {"type": "houlsby", "reduction_factor": 4, "non_linearity": "gelu"}},
    {"name": "llama-pfeiffer", "model": "tiny-llama", "method": "bottleneck", "bn": {"type": "pfeiffer", "reduction_factor": 8, "non_linearity": "tanh"}},
]

# adapters' BnConfig fields with the presets' values (configuration/adapter_config.py, in dataclass order)
BN_DEFAULTS = {
    "original_ln_before": False, "original_ln_after": True, "ln_before": False, "ln_after": False, "init_weights": "bert",
    "is_parallel": False, "scaling": 1.0, "use_gating": False, "residual_before_ln": True, "adapter_residual_before_ln": False,
    "inv_adapter": None, "inv_adapter_reduction_factor": None, "cross_adapter": False, "leave_out": [], "dropout": 0.0,
    "phm_layer": False, "phm_dim": 4, "factorized_phm_W": True, "shared_W_phm": False, "shared_phm_rule": True,
    "factorized_phm_rule": False, "phm_c_init": "normal", "phm_init_range": 0.0001, "learn_phm": True,
    "hypercomplex_nonlinearity": "glorot-uniform", "phm_rank": 1, "phm_bias": True, "stochastic_depth": 0.0,
}
PRESETS = {"houlsby": {"mh_adapter": True, "output_adapter": True, "original_ln_before": False},
           "pfeiffer": {"mh_adapter": False, "output_adapter": True, "original_ln_before": True}}


def log(*a):
    print(*a, flush=True)


def bn_config(case):
    c = case["bn"]
    d = dict(BN_DEFAULTS)
    d.update(PRESETS[c["type"]])
    d["reduction_factor"] = c["reduction_factor"]
    d["non_linearity"] = c["non_linearity"]
    return d


def layers_of(model):
    """(layers, path, attention output module, MLP module, MLP residual-input module) per decoder layer."""
    if hasattr(model, "transformer"):
        return [(l, "transformer.h.%d" % i, l.attn.c_proj, l.mlp, l.ln_2) for i, l in enumerate(model.transformer.h)]
    return [(l, "model.layers.%d" % i, l.self_attn.o_proj, l.mlp, l.post_attention_layernorm) for i, l in enumerate(model.model.layers)]


def attach_bottleneck(model, case, adapter_name=ADAPTER_NAME):
    """The reference adapters at AdapterHub's module names, applied with hooks; returns {name: param}."""
    import torch
    from torch import nn
    from transformers.activations import get_activation

    c = case["bn"]
    hidden = model.config.hidden_size
    bn = max(1, int(hidden // c["reduction_factor"]))
    preset = PRESETS[c["type"]]

    def make():
        m = nn.Module()
        m.adapter_down = nn.Sequential(nn.Linear(hidden, bn), get_activation(c["non_linearity"].lower()))
        m.adapter_up = nn.Linear(bn, hidden)
        return m.to(torch.float64)

    def f(m, u):
        return m.adapter_up(m.adapter_down(u))

    for layer, _, attn_out, mlp, ln2 in layers_of(model):
        if preset["mh_adapter"]:
            layer.attention_adapters = nn.Module()
            layer.attention_adapters.adapters = nn.ModuleDict({adapter_name: make()})
            ad = layer.attention_adapters.adapters[adapter_name]
            attn_out.register_forward_hook(lambda mod, args, out, ad=ad: out + f(ad, out))
        layer.output_adapters = nn.Module()
        layer.output_adapters.adapters = nn.ModuleDict({adapter_name: make()})
        ad = layer.output_adapters.adapters[adapter_name]
        if preset["original_ln_before"]:
            store = {}
            ln2.register_forward_pre_hook(lambda mod, args, store=store: store.__setitem__("x2", args[0]))
            mlp.register_forward_hook(lambda mod, args, out, ad=ad, store=store: out + f(ad, store["x2"] + out))
        else:
            mlp.register_forward_hook(lambda mod, args, out, ad=ad: out + f(ad, out))
    return {n: p for n, p in model.named_parameters() if ".adapters.%s." % adapter_name in n}


def dora_config(case):
    from peft import LoraConfig

    c = case["lora"]
    return LoraConfig(task_type="CAUSAL_LM", r=c["r"], lora_alpha=c["lora_alpha"], target_modules=list(c["target_modules"]),
                      lora_dropout=0.0, bias="none", use_dora=True, use_rslora=c["use_rslora"], fan_in_fan_out=case["model"] == "tiny-gpt2")


def dora_name(n):
    return n.replace(".lora_magnitude_vector.default.weight", ".lora_magnitude_vector").replace(".default.weight", ".weight")


def build(case, dtype):
    """(model, {engine name: trainable param}, peft config or None)."""
    import torch
    from peft import get_peft_model

    mdir = os.path.join(FIX, case["model"])
    model = base.load_model(mdir, dtype)
    if case["method"] == "dora":
        model = get_peft_model(model, dora_config(case))
        model = model.to(dtype)
        params = {dora_name(n): p for n, p in model.named_parameters() if p.requires_grad}
        return model, params, model.peft_config["default"]
    model.requires_grad_(False)
    params = attach_bottleneck(model, case)
    for p in params.values():
        p.data = p.data.to(dtype)
        p.requires_grad_(True)
    return model, params, None


def init_values(case, params, g):
    import torch

    out = {}
    for n, p in params.items():
        shape = tuple(p.shape)
        u = lambda lo, hi: torch.rand(shape, generator=g, dtype=torch.float32) * (hi - lo) + lo  # noqa: E731
        if n.endswith("lora_magnitude_vector"):
            # around PEFT's init (the norm of W), so m / ||W + s B A|| is not 1
            out[n] = (p.detach().to(torch.float32) * u(0.7, 1.3)).to(torch.float32)
        elif n.endswith(".bias"):
            out[n] = u(-0.1, 0.1)
        else:
            out[n] = u(-0.3, 0.3)
    return out


def run_case(case, ci, batch_t, notes):
    import torch
    from peft import get_peft_model_state_dict

    name = case["name"]
    model, params, pc = build(case, torch.float64)
    names = sorted(params)
    plist = [params[n] for n in names]
    assert plist and all(p.dtype == torch.float64 for p in plist)
    peft_init = {n: params[n].detach().to(torch.float32).clone() for n in names if n.endswith("lora_magnitude_vector")}
    g = torch.Generator().manual_seed(SEED + 100 * ci)
    init = init_values(case, params, g)
    with torch.no_grad():
        for n in names:
            params[n].copy_(init[n].to(torch.float64))

    ids, am, labels = batch_t
    model.train()
    model.zero_grad(set_to_none=True)
    out = model(input_ids=ids, attention_mask=am)
    logits = out.logits
    assert logits.dtype == torch.float64, logits.dtype
    loss = base.causal_lm_loss(logits, labels)
    loss.backward()
    grads = {n: params[n].grad.detach().clone() for n in names}
    g0 = math.sqrt(sum(float((gr * gr).sum()) for gr in grads.values()))
    targets = int((labels[:, 1:] != -100).sum())
    max_norm = OPT["max_grad_norm"]
    lowered = False
    if g0 <= max_norm:
        max_norm = base.nice_below(g0)
        lowered = True
        notes.append("%s: grad norm %.4g <= 1, max_grad_norm lowered to %g" % (name, g0, max_norm))

    with torch.no_grad():
        for n in names:
            params[n].copy_(init[n].to(torch.float64))
    opt = torch.optim.AdamW(plist, lr=OPT["lr"], betas=tuple(OPT["betas"]), eps=OPT["eps"], weight_decay=OPT["weight_decay"])
    step_losses, step_norms, clipped = [], [], []
    for _ in range(OPT["steps"]):
        opt.zero_grad(set_to_none=True)
        l = base.causal_lm_loss(model(input_ids=ids, attention_mask=am).logits, labels)
        l.backward()
        tn = torch.nn.utils.clip_grad_norm_(plist, max_norm=max_norm)
        opt.step()
        step_losses.append(float(l))
        step_norms.append(float(tn))
        clipped.append(bool(float(tn) > max_norm))
    assert abs(step_losses[0] - float(loss)) < 1e-12
    step5 = {n: params[n].detach().clone() for n in names}
    with torch.no_grad():
        lg5 = model(input_ids=ids, attention_mask=am).logits
    if case["method"] == "dora":
        export = {k: v.detach().clone() for k, v in get_peft_model_state_dict(model).items()}
    else:
        export = {n: params[n].detach().clone() for n in names}

    rec = {
        "name": name, "model": case["model"], "method": case["method"], "case": case,
        "param_names": names, "param_shapes": {n: list(init[n].shape) for n in names},
        "optimizer": dict(OPT, max_grad_norm=max_norm, max_grad_norm_lowered=lowered),
        "loss": float(loss), "loss_targets": targets, "grad_norm": g0,
        "step_losses": step_losses, "step_grad_norms": step_norms, "step_clipped": clipped,
        "loss_after_steps": float(base.causal_lm_loss(lg5, labels)),
        "export_keys": sorted(export), "export_shapes": {k: list(v.shape) for k, v in export.items()},
    }
    if pc is not None:
        rec["peft_config"] = json.loads(json.dumps(pc.to_dict(), default=lambda v: sorted(v) if isinstance(v, set) else str(v)))
        rec["scaling"] = {k: float(v) for k, v in next(m for m in model.modules() if hasattr(m, "scaling") and isinstance(m.scaling, dict)).scaling.items()}
    else:
        rec["bn_config"] = bn_config(case)
        rec["bottleneck_size"] = max(1, int(model.config.hidden_size // case["bn"]["reduction_factor"]))
    tensors = {"%s/logits" % name: logits.detach()}
    for n in names:
        tensors["%s/init/%s" % (name, n)] = init[n]
        tensors["%s/grad/%s" % (name, n)] = grads[n]
        tensors["%s/step5/%s" % (name, n)] = step5[n]
    for n, v in peft_init.items():
        tensors["%s/peft_init/%s" % (name, n)] = v
    for k, v in export.items():
        tensors["%s/export/%s" % (name, k)] = v
    return rec, tensors, init


def peft_save(out_dir, case, init, sub):
    """get_peft_model on the float32 base with the case's initial values, PEFT's save_pretrained; returns its config."""
    import torch
    from peft import get_peft_model

    mrel = os.path.relpath(os.path.join(FIX, case["model"]), out_dir)
    with contextlib.chdir(out_dir):
        model = get_peft_model(base.load_model(mrel, torch.float32), dora_config(case))
        with torch.no_grad():
            for n, p in model.named_parameters():
                if p.requires_grad:
                    p.copy_(init[dora_name(n)].to(p.dtype))
        model.peft_config["default"].base_model_name_or_path = case["model"]
        model.save_pretrained(sub)
    card = os.path.join(out_dir, sub, "README.md")
    if os.path.exists(card):
        os.remove(card)
    with open(os.path.join(out_dir, sub, "adapter_config.json")) as f:
        return json.load(f)


def adapters_crosscheck(case, init, logits_ref, batch_t, out_dir):
    """The case built with the `adapters` library itself (when importable): logits vs the reference, its saved files."""
    import torch
    import adapters
    from adapters import DoubleSeqBnConfig, SeqBnConfig

    c = case["bn"]
    model = base.load_model(os.path.join(FIX, case["model"]), torch.float64)
    adapters.init(model)
    cls = DoubleSeqBnConfig if c["type"] == "houlsby" else SeqBnConfig
    model.add_adapter(ADAPTER_NAME, config=cls(reduction_factor=c["reduction_factor"], non_linearity=c["non_linearity"]))
    model.set_active_adapters(ADAPTER_NAME)
    model = model.to(torch.float64)
    theirs = {n: p for n, p in model.named_parameters() if ".adapters.%s." % ADAPTER_NAME in n}
    res = {"version": getattr(adapters, "__version__", "?"), "param_names_equal": sorted(theirs) == sorted(init),
           "their_names": sorted(theirs)[:6]}
    with torch.no_grad():
        for n, p in theirs.items():
            if n in init:
                p.copy_(init[n].to(torch.float64))
    model.eval()
    ids, am, _ = batch_t
    with torch.no_grad():
        lg = model(input_ids=ids, attention_mask=am).logits
    res["max_abs_logit_diff"] = float((lg - logits_ref).abs().max())
    sub = os.path.join(out_dir, "selftest", "adapters-" + case["name"])
    model.save_adapter(sub, ADAPTER_NAME, use_safetensors=True)
    res["saved_files"] = sorted(os.listdir(sub))
    with open(os.path.join(sub, "adapter_config.json")) as f:
        res["saved_config"] = json.load(f)
    return res


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
    for d in (gdir, sdir):
        if os.path.exists(d):
            shutil.rmtree(d)
        os.makedirs(d)
    notes, failures = [], []
    try:
        import adapters  # noqa: F401
        have_adapters = True
    except Exception as e:  # noqa: BLE001
        have_adapters = False
        notes.append("the adapters library is not importable here (%s: %s): bottleneck goldens come from the reference only" % (type(e).__name__, e))

    tok = Tokenizer.from_file(os.path.join(FIX, "tiny-gpt2", "tokenizer.json"))
    eos_id = tok.token_to_id(EOS)
    batch, texts = base.build_batch(lambda s: list(tok.encode(s).ids), eos_id)
    batch_t = (torch.tensor(batch["input_ids"], dtype=torch.long), torch.tensor(batch["attention_mask"], dtype=torch.long),
               torch.tensor(batch["labels"], dtype=torch.long))

    tensors, cases_out, crosscheck = {}, [], {}
    for ci, case in enumerate(CASES):
        try:
            rec, ts, init = run_case(case, ci, batch_t, notes)
            if case["method"] == "dora":
                rec["adapter_config"] = peft_save(out, case, init, os.path.join("selftest", "peft-" + case["name"]))
            elif have_adapters:
                try:
                    crosscheck[case["name"]] = adapters_crosscheck(case, init, ts["%s/logits" % case["name"]], batch_t, out)
                except Exception as e:  # noqa: BLE001
                    crosscheck[case["name"]] = {"error": "%s: %s" % (type(e).__name__, e), "traceback": traceback.format_exc()}
            rec["batch"] = batch
            cases_out.append(rec)
            tensors.update(ts)
            log("case %s: loss %.10f grad_norm %.6f (%d targets) steps %s" % (
                rec["name"], rec["loss"], rec["grad_norm"], rec["loss_targets"], ["%.6f" % x for x in rec["step_losses"]]))
        except Exception as e:  # noqa: BLE001
            failures.append({"case": case["name"], "error": "%s: %s" % (type(e).__name__, e), "traceback": traceback.format_exc()})
            log("CASE %s FAILED: %s: %s" % (case["name"], type(e).__name__, e))
            traceback.print_exc()

    doc = {
        "batch": batch, "batch_texts": texts, "eos_token_id": eos_id, "adapter_name": ADAPTER_NAME,
        "cases": cases_out, "failures": failures, "adapters_library": {"importable": have_adapters, "crosscheck": crosscheck},
        "conventions": {
            "dtype": "float32 fixtures upcast to float64, CPU, 1 thread; tensors stored as float32",
            "dora": "PEFT LoraConfig(use_dora=True, lora_dropout=0); A, B U(-0.3, 0.3), magnitude = PEFT's init (||W||) x U(0.7, 1.3)",
            "bottleneck": "reference adapters (this script's docstring) at AdapterHub's names; weights U(-0.3, 0.3), biases U(-0.1, 0.1)",
            "optimizer": "as make_peft_methods_goldens.py (AdamW lr 1e-2, wd 0.01, clip 1.0, 5 steps)",
        },
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__,
                     "tokenizers": tokenizers.__version__, "safetensors": safetensors.__version__, "python": sys.version.split()[0]},
        "notes": notes,
    }
    with open(os.path.join(gdir, "dora-bottleneck.json"), "w") as f:
        json.dump(doc, f, indent=1, ensure_ascii=False, default=str)
        f.write("\n")
    save_file({k: v.detach().to(torch.float32).contiguous() for k, v in sorted(tensors.items())},
              os.path.join(gdir, "dora-bottleneck.safetensors"), metadata={"format": "pt"})
    log("versions:", json.dumps(doc["versions"]))
    log("adapters library:", json.dumps({k: {kk: vv for kk, vv in v.items() if kk in ("version", "param_names_equal", "max_abs_logit_diff", "saved_files", "error")}
                                         for k, v in crosscheck.items()}))
    for n in notes:
        log("NOTE:", n)
    for fl in failures:
        log("FAILED:", fl["case"], fl["error"])
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
