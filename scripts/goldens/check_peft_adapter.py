#!/usr/bin/env python3
"""Check that a PEFT adapter directory (LoRA, IA3, prompt or prefix tuning, ...) loads cleanly in PEFT and
reproduces reference logits.

    python3 scripts/goldens/check_peft_adapter.py --base DIR --adapter DIR \
        --inputs FILE.json --expect FILE.safetensors [--expect-key logits] [--tol 1e-4] \
        [--compute-dtype float64|float32] [--report OUT.json] [--save-logits OUT.safetensors]

* loads the base model (float32 weights, eager attention) with AutoModelForCausalLM and the adapter
  with PeftModel.from_pretrained, capturing every Python warning and every record (INFO and up) of
  the `transformers` and `peft` loggers;
* FAILS if
  - adapter_config.json is missing, is not valid JSON, or PEFT cannot parse it (PeftConfig.from_pretrained);
  - any captured warning, or any captured log record of level WARNING or higher, mentions missing or
    unexpected keys / weights not used / weights newly initialized;
  - the adapter file's tensor names differ from the names PEFT expects for this config
    (get_peft_model_state_dict of the loaded model): missing or unexpected keys;
  - the logits for the batch in --inputs ({"input_ids": [[...]], "attention_mask": [[...]]}) differ
    from tensor --expect-key of --expect: max over elements of |out - ref| / max(|ref|, 1e-3 * max|ref|)
    must be <= --tol; with a prompt-tuning adapter PEFT's logits have num_virtual_tokens more positions
    (the virtual ones, first): when the reference has exactly that many fewer, only the real positions
    are compared (report: virtual_positions_dropped);
* prints a JSON report and exits 0 (pass) or 1 (fail).

The forward runs in float64 by default (the float32 weights are upcast exactly), so the check measures
the adapter, not float32 rounding; --compute-dtype float32 runs it in float32. --save-logits writes
PEFT's logits (all positions, float32, tensor "logits").
"""
import argparse
import json
import logging
import os
import re
import sys
import traceback
import warnings

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

KEY_PATTERNS = [
    re.compile(r"\b(missing|unexpected)\b", re.I),
    re.compile(r"were not used when initializ", re.I),
    re.compile(r"newly initiali[sz]ed", re.I),
    re.compile(r"not initiali[sz]ed from", re.I),
]
KEY_WORD = re.compile(r"\bkeys?\b|\bkeyword|weights?\b|tensors?\b|parameters?\b|state.?dict", re.I)


def mentions_keys(msg):
    if KEY_PATTERNS[0].search(msg) and KEY_WORD.search(msg):
        return True
    return any(p.search(msg) for p in KEY_PATTERNS[1:])


class ListHandler(logging.Handler):
    def __init__(self):
        super().__init__(level=logging.DEBUG)
        self.records = []
        self.phase = None

    def emit(self, record):
        try:
            msg = record.getMessage()
        except Exception:  # noqa: BLE001
            msg = str(record.msg)
        self.records.append({"phase": self.phase, "logger": record.name, "level": record.levelname,
                             "levelno": record.levelno, "message": msg})


class Capture:
    """Capture Python warnings and transformers/peft log records during a phase."""

    def __init__(self, handler, phase, sink):
        self.handler, self.phase, self.sink = handler, phase, sink

    def __enter__(self):
        self.handler.phase = self.phase
        self.cw = warnings.catch_warnings(record=True)
        self.list = self.cw.__enter__()
        warnings.simplefilter("always")
        return self

    def __exit__(self, *exc):
        for w in self.list:
            self.sink.append({"phase": self.phase, "category": w.category.__name__,
                              "message": str(w.message), "where": "%s:%s" % (os.path.basename(w.filename), w.lineno)})
        self.cw.__exit__(*exc)
        self.handler.phase = None
        return False


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", required=True, help="base model directory (config.json + model.safetensors)")
    ap.add_argument("--adapter", required=True, help="PEFT adapter directory (adapter_config.json + adapter_model.safetensors)")
    ap.add_argument("--inputs", required=True, help='JSON file {"input_ids": [[...]], "attention_mask": [[...]]}')
    ap.add_argument("--expect", required=True, help="safetensors file with the reference logits")
    ap.add_argument("--expect-key", default="logits", help="tensor name in --expect (default: logits)")
    ap.add_argument("--tol", type=float, default=1e-4)
    ap.add_argument("--floor", type=float, default=1e-3,
                    help="per-element denominator floor as a fraction of max|ref| (1 = normwise: max|out-ref| / max|ref|)")
    ap.add_argument("--compute-dtype", choices=["float64", "float32"], default="float64")
    ap.add_argument("--report", help="also write the JSON report here")
    ap.add_argument("--save-logits", help="also write PEFT's logits (float32, tensor 'logits') here")
    args = ap.parse_args()

    report = {"ok": False, "base": args.base, "adapter": args.adapter, "tol": args.tol,
              "compute_dtype": args.compute_dtype, "failures": [], "python_warnings": [], "log_records": [],
              "key_mentions": []}
    fail = report["failures"].append

    try:
        # import first: transformers sets its logger level on import, which would undo ours
        import transformers  # noqa: F401
        import peft  # noqa: F401
    except Exception as e:  # noqa: BLE001
        fail("cannot import transformers/peft: %s: %s" % (type(e).__name__, e))
        print(json.dumps(report, indent=2))
        sys.exit(1)

    handler = ListHandler()
    watched = []
    for name in ("transformers", "peft"):
        lg = logging.getLogger(name)
        watched.append((lg, lg.level))
        lg.addHandler(handler)
        lg.setLevel(logging.INFO)

    try:
        run(args, report, fail, handler)
    except Exception as e:  # noqa: BLE001
        fail("exception: %s: %s" % (type(e).__name__, e))
        report["traceback"] = traceback.format_exc()
    finally:
        for lg, lvl in watched:
            lg.removeHandler(handler)
            lg.setLevel(lvl)

    # key mentions in warnings / log records
    report["log_records"] = handler.records
    for w in report["python_warnings"]:
        if mentions_keys(w["message"]):
            report["key_mentions"].append(dict(w, source="python warning"))
            fail("%s warning mentions keys: %s" % (w["phase"], w["message"][:500]))
    for r in handler.records:
        if mentions_keys(r["message"]):
            report["key_mentions"].append(dict(r, source="log record"))
            if r["levelno"] >= logging.WARNING:
                fail("%s log record (%s, %s) mentions keys: %s" % (r["phase"], r["logger"], r["level"], r["message"][:500]))
    for r in report["log_records"]:
        r.pop("levelno", None)

    report["ok"] = not report["failures"]
    text = json.dumps(report, indent=2, ensure_ascii=False, default=str)
    print(text)
    if args.report:
        with open(args.report, "w") as f:
            f.write(text + "\n")
    sys.exit(0 if report["ok"] else 1)


def run(args, report, fail, handler):
    import torch
    import transformers
    import peft
    from peft import PeftConfig, PeftModel, get_peft_model_state_dict
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM

    report["versions"] = {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__}
    torch.set_num_threads(1)

    # ---- adapter config
    cfg_path = os.path.join(args.adapter, "adapter_config.json")
    try:
        with open(cfg_path) as f:
            raw_cfg = json.load(f)
        if not isinstance(raw_cfg, dict):
            raise ValueError("adapter_config.json is not a JSON object")
        report["adapter_config"] = raw_cfg
    except Exception as e:  # noqa: BLE001
        fail("adapter config unreadable: %s: %s" % (type(e).__name__, e))
        return
    with Capture(handler, "config_parse", report["python_warnings"]):
        try:
            pcfg = PeftConfig.from_pretrained(args.adapter)
            report["parsed_config"] = {"class": type(pcfg).__name__, "peft_type": str(getattr(pcfg, "peft_type", None)),
                                       "r": getattr(pcfg, "r", None), "lora_alpha": getattr(pcfg, "lora_alpha", None),
                                       "target_modules": sorted(pcfg.target_modules) if isinstance(getattr(pcfg, "target_modules", None), (set, list)) else getattr(pcfg, "target_modules", None),
                                       "use_rslora": getattr(pcfg, "use_rslora", None),
                                       "fan_in_fan_out": getattr(pcfg, "fan_in_fan_out", None),
                                       "num_virtual_tokens": getattr(pcfg, "num_virtual_tokens", None),
                                       "feedforward_modules": sorted(pcfg.feedforward_modules) if isinstance(getattr(pcfg, "feedforward_modules", None), (set, list)) else getattr(pcfg, "feedforward_modules", None)}
        except Exception as e:  # noqa: BLE001
            fail("PEFT cannot parse adapter config: %s: %s" % (type(e).__name__, e))
            return

    # ---- adapter tensors in the file
    st_path = os.path.join(args.adapter, "adapter_model.safetensors")
    if not os.path.exists(st_path):
        fail("adapter_model.safetensors not found in %s" % args.adapter)
        return
    with safe_open(st_path, framework="pt") as f:
        file_keys = sorted(f.keys())
        file_dtypes = sorted({str(f.get_tensor(k).dtype) for k in file_keys})
    report["adapter_file"] = {"tensors": len(file_keys), "dtypes": file_dtypes}

    # ---- load base + adapter
    with Capture(handler, "base_load", report["python_warnings"]):
        try:
            base = AutoModelForCausalLM.from_pretrained(args.base, dtype=torch.float32, attn_implementation="eager")
        except TypeError:
            base = AutoModelForCausalLM.from_pretrained(args.base, torch_dtype=torch.float32, attn_implementation="eager")
    with Capture(handler, "adapter_load", report["python_warnings"]):
        model = PeftModel.from_pretrained(base, args.adapter)
    model.eval()

    # ---- explicit key check
    expected = sorted(get_peft_model_state_dict(model).keys())
    missing = sorted(set(expected) - set(file_keys))
    unexpected = sorted(set(file_keys) - set(expected))
    report["key_check"] = {"expected": len(expected), "in_file": len(file_keys),
                           "missing": missing, "unexpected": unexpected}
    if missing:
        fail("adapter file lacks %d expected keys, e.g. %s" % (len(missing), missing[:3]))
    if unexpected:
        fail("adapter file has %d unexpected keys, e.g. %s" % (len(unexpected), unexpected[:3]))

    # ---- logits
    with open(args.inputs) as f:
        inp = json.load(f)
    ids = torch.tensor(inp["input_ids"], dtype=torch.long)
    am = torch.tensor(inp.get("attention_mask", [[1] * len(r) for r in inp["input_ids"]]), dtype=torch.long)
    with safe_open(args.expect, framework="pt") as f:
        if args.expect_key not in f.keys():
            fail("tensor %r not in %s (has %s)" % (args.expect_key, args.expect, sorted(f.keys())[:10]))
            return
        ref = f.get_tensor(args.expect_key).to(torch.float64)
    dt = torch.float64 if args.compute_dtype == "float64" else torch.float32
    model = model.to(dt)
    with Capture(handler, "forward", report["python_warnings"]):
        with torch.no_grad():
            out = model(input_ids=ids, attention_mask=am).logits.to(torch.float64)
    report["logits_shape"] = list(out.shape)
    if args.save_logits:
        from safetensors.torch import save_file

        save_file({"logits": out.to(torch.float32).contiguous()}, args.save_logits, metadata={"format": "pt"})
    n_virtual = getattr(pcfg, "num_virtual_tokens", None) if str(getattr(pcfg, "peft_type", "")).endswith("PROMPT_TUNING") else None
    if n_virtual and out.dim() == 3 and ref.dim() == 3 and out.shape[1] == ref.shape[1] + n_virtual:
        out = out[:, n_virtual:]
        report["virtual_positions_dropped"] = n_virtual
    if list(out.shape) != list(ref.shape):
        fail("logits shape %s != expected %s" % (list(out.shape), list(ref.shape)))
        return
    if not torch.isfinite(out).all():
        fail("non-finite logits")
    scale = ref.abs().max().item()
    denom = torch.clamp(ref.abs(), min=args.floor * scale)
    report["floor"] = args.floor
    err = ((out - ref).abs() / denom)
    idx = int(err.argmax())
    report["max_rel_error"] = err.max().item()
    report["max_abs_error"] = (out - ref).abs().max().item()
    report["max_abs_ref"] = scale
    where, rem = [], idx
    for d in reversed(ref.shape):
        where.append(rem % d)
        rem //= d
    report["worst_element"] = {"index": where[::-1], "out": out.reshape(-1)[idx].item(),
                               "ref": ref.reshape(-1)[idx].item()}
    if not report["max_rel_error"] <= args.tol:
        fail("logits differ: max relative error %.3e > tol %.1e" % (report["max_rel_error"], args.tol))


if __name__ == "__main__":
    main()
