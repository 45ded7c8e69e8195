#!/usr/bin/env python3
"""Check a bottleneck adapter exported in AdapterHub's layout (adapter_config.json + adapter.safetensors)
against reference logits.

    python3 scripts/goldens/check_adapterhub_adapter.py --base DIR --adapter DIR --inputs FILE.json \
        --expect FILE.safetensors [--expect-key logits] [--tol 1e-4] [--compute-dtype float64|float32] [--report OUT.json]

With the `adapters` library importable: adapters.init(model), model.load_adapter(DIR, use_safetensors=True,
set_active=True, loading_info=...) and FAIL on any missing or unexpected key. Without it: the reference
adapters of make_dora_bottleneck_goldens.py (AdapterHub's module names, attached with hooks) built from
adapter_config.json's "config", every tensor of the file loaded by name (FAIL on names that differ).
Either way: FAIL unless adapter_config.json has AdapterHub's top-level keys and a layout this checker knows
(Houlsby: mh_adapter + output_adapter, original_ln_before False; Pfeiffer: output_adapter only,
original_ln_before True), and unless the logits for --inputs are within --tol of --expect (max over elements
of |out - ref| / max(|ref|, 1e-3 max|ref|)). Prints a JSON report; exits 0 (pass) or 1 (fail).
"""
import argparse
import importlib.util
import json
import os
import sys
import traceback

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
HERE = os.path.dirname(os.path.abspath(__file__))
TOP_KEYS = ["config", "hidden_size", "model_class", "model_name", "model_type", "name", "version"]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", required=True)
    ap.add_argument("--adapter", required=True)
    ap.add_argument("--inputs", required=True)
    ap.add_argument("--expect", required=True)
    ap.add_argument("--expect-key", default="logits")
    ap.add_argument("--tol", type=float, default=1e-4)
    ap.add_argument("--compute-dtype", choices=["float64", "float32"], default="float64")
    ap.add_argument("--report")
    args = ap.parse_args()
    report = {"ok": False, "adapter": args.adapter, "tol": args.tol, "compute_dtype": args.compute_dtype, "failures": []}
    try:
        run(args, report, report["failures"].append)
    except Exception as e:  # noqa: BLE001
        report["failures"].append("exception: %s: %s" % (type(e).__name__, e))
        report["traceback"] = traceback.format_exc()
    report["ok"] = not report["failures"]
    text = json.dumps(report, indent=2, default=str)
    print(text)
    if args.report:
        with open(args.report, "w") as f:
            f.write(text + "\n")
    sys.exit(0 if report["ok"] else 1)


def run(args, report, fail):
    import torch
    from safetensors import safe_open
    from safetensors.torch import load_file

    spec = importlib.util.spec_from_file_location("dbg", os.path.join(HERE, "make_dora_bottleneck_goldens.py"))
    g = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(g)
    torch.set_num_threads(1)
    with open(os.path.join(args.adapter, "adapter_config.json")) as f:
        cfg = json.load(f)
    report["top_keys"] = sorted(cfg)
    if sorted(cfg) != TOP_KEYS:
        fail("adapter_config.json keys %s != AdapterHub's %s" % (sorted(cfg), TOP_KEYS))
    c = cfg["config"]
    kind = None
    for t, p in g.PRESETS.items():
        if all(c.get(k) == v for k, v in p.items()):
            kind = t
    report["layout"] = kind
    if kind is None:
        fail("config is neither the Houlsby nor the Pfeiffer layout: %s" % {k: c.get(k) for k in g.PRESETS["houlsby"]})
        return
    for k, v in g.BN_DEFAULTS.items():
        if k in g.PRESETS[kind]:
            continue
        if k not in c:
            fail("config lacks %s" % k)
        elif c[k] != v or type(c[k]) is not type(v):
            fail("config %s = %r (%s), expected %r (%s)" % (k, c[k], type(c[k]).__name__, v, type(v).__name__))
    dt = torch.float64 if args.compute_dtype == "float64" else torch.float32
    model = g.base.load_model(args.base, torch.float32)
    st_path = os.path.join(args.adapter, "adapter.safetensors")
    with safe_open(st_path, framework="pt") as f:
        keys = sorted(f.keys())
    report["tensors"] = len(keys)
    try:
        import adapters
        have = True
    except Exception:  # noqa: BLE001
        have = False
    report["via"] = "adapters %s" % adapters.__version__ if have else "reference (adapters not importable)"
    if have:
        adapters.init(model)
        info = {}
        name = model.load_adapter(args.adapter, use_safetensors=True, set_active=True, loading_info=info)
        report["loading_info"] = info
        report["loaded_name"] = name
        if info.get("missing_keys") or info.get("unexpected_keys"):
            fail("load_adapter: missing %s, unexpected %s" % (info.get("missing_keys"), info.get("unexpected_keys")))
    else:
        params = g.attach_bottleneck(model, {"bn": {"type": kind, "reduction_factor": c["reduction_factor"], "non_linearity": c["non_linearity"]}}, cfg["name"])
        missing, unexpected = sorted(set(params) - set(keys)), sorted(set(keys) - set(params))
        report["key_check"] = {"expected": len(params), "missing": missing[:5], "unexpected": unexpected[:5]}
        if missing or unexpected:
            fail("tensor names differ from AdapterHub's: missing %s, unexpected %s" % (missing[:3], unexpected[:3]))
        sd = load_file(st_path)
        with torch.no_grad():
            for n, p in params.items():
                if n in sd:
                    if tuple(sd[n].shape) != tuple(p.shape):
                        fail("%s has shape %s, expected %s" % (n, list(sd[n].shape), list(p.shape)))
                    else:
                        p.copy_(sd[n].to(p.dtype))
    model = model.to(dt)
    model.eval()
    with open(args.inputs) as f:
        inp = json.load(f)
    ids = torch.tensor(inp["input_ids"], dtype=torch.long)
    am = torch.tensor(inp["attention_mask"], dtype=torch.long)
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=am).logits.to(torch.float64)
    with safe_open(args.expect, framework="pt") as f:
        ref = f.get_tensor(args.expect_key).to(torch.float64)
    if list(out.shape) != list(ref.shape):
        fail("logits shape %s != %s" % (list(out.shape), list(ref.shape)))
        return
    scale = ref.abs().max().item()
    err = (out - ref).abs() / torch.clamp(ref.abs(), min=1e-3 * scale)
    report["max_rel_error"] = err.max().item()
    report["max_abs_error"] = (out - ref).abs().max().item()
    if not report["max_rel_error"] <= args.tol:
        fail("logits differ: max relative error %.3e > tol %.1e" % (report["max_rel_error"], args.tol))


if __name__ == "__main__":
    main()
