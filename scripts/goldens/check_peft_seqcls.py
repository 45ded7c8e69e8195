#!/usr/bin/env python3
"""Check that a sequence-classification adapter (task_type SEQ_CLS: LoRA, DoRA, IA3 or prompt tuning) loads cleanly in PEFT on
AutoModelForSequenceClassification and reproduces reference logits: check_peft_adapter.py for
classifiers.

    python3 scripts/goldens/check_peft_seqcls.py --base DIR --adapter DIR --inputs FILE.json \
        --expect FILE.safetensors [--expect-key logits] [--num-labels K] [--tol 1e-4] [--floor 1e-3] \
        [--compute-dtype float64|float32] [--report OUT.json]

* loads the base model with AutoModelForSequenceClassification.from_pretrained(base, num_labels=K,
  attn_implementation="eager", float32), K from --num-labels or from the adapter's classifier weight;
  the head is new there (a base checkpoint has none): with output_loading_info, the only keys allowed
  missing are those of head modules the adapter's modules_to_save covers, and none may be unexpected
  or mismatched. Warnings of that load about those head keys are expected and not failures;
* loads the adapter with PeftModel.from_pretrained, capturing warnings and transformers/peft log
  records (as check_peft_adapter.py): any mention of missing/unexpected keys there FAILS;
* FAILS if the adapter file's tensor names differ from get_peft_model_state_dict of the loaded model,
  if a head module's trained copy (ModulesToSaveWrapper) does not hold the file's values, or if the
  logits [B, K] for --inputs differ from --expect-key of --expect: max |out - ref| / max(|ref|,
  floor * max|ref|) must be <= --tol;
* prints a JSON report and exits 0 (pass) or 1 (fail).
"""
import argparse
import json
import logging
import os
import sys
import traceback

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from check_peft_adapter import Capture, ListHandler, mentions_keys  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", required=True)
    ap.add_argument("--adapter", required=True)
    ap.add_argument("--inputs", required=True)
    ap.add_argument("--expect", required=True)
    ap.add_argument("--expect-key", default="logits")
    ap.add_argument("--num-labels", type=int)
    ap.add_argument("--tol", type=float, default=1e-4)
    ap.add_argument("--floor", type=float, default=1e-3)
    ap.add_argument("--compute-dtype", choices=["float64", "float32"], default="float64")
    ap.add_argument("--seed", type=int, default=0, help="torch seed before the base load (its new head is random)")
    ap.add_argument("--report")
    args = ap.parse_args()

    report = {"ok": False, "task": "SEQ_CLS", "base": args.base, "adapter": args.adapter, "tol": args.tol,
              "compute_dtype": args.compute_dtype, "failures": [], "python_warnings": [], "log_records": [],
              "key_mentions": [], "expected_key_mentions": []}
    fail = report["failures"].append
    try:
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
    tolerated = {"phase": None}
    try:
        run(args, report, fail, handler, tolerated)
    except Exception as e:  # noqa: BLE001
        fail("exception: %s: %s" % (type(e).__name__, e))
        report["traceback"] = traceback.format_exc()
    finally:
        for lg, lvl in watched:
            lg.removeHandler(handler)
            lg.setLevel(lvl)

    report["log_records"] = handler.records
    for w in report["python_warnings"]:
        if mentions_keys(w["message"]):
            if w["phase"] == tolerated["phase"]:
                report["expected_key_mentions"].append(dict(w, source="python warning"))
                continue
            report["key_mentions"].append(dict(w, source="python warning"))
            fail("%s warning mentions keys: %s" % (w["phase"], w["message"][:500]))
    for r in handler.records:
        if mentions_keys(r["message"]):
            if r["phase"] == tolerated["phase"]:
                report["expected_key_mentions"].append(dict(r, source="log record"))
                continue
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


def run(args, report, fail, handler, tolerated):
    import torch
    import transformers
    import peft
    from peft import PeftConfig, PeftModel, get_peft_model_state_dict
    from safetensors import safe_open
    from transformers import AutoModelForSequenceClassification

    report["versions"] = {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__}
    torch.set_num_threads(1)
    try:
        with open(os.path.join(args.adapter, "adapter_config.json")) as f:
            raw_cfg = json.load(f)
        if not isinstance(raw_cfg, dict):
            raise ValueError("adapter_config.json is not a JSON object")
        report["adapter_config"] = raw_cfg
    except Exception as e:  # noqa: BLE001
        fail("adapter config unreadable: %s: %s" % (type(e).__name__, e))
        return
    with Capture(handler, "config_parse", report["python_warnings"]):
        pcfg = PeftConfig.from_pretrained(args.adapter)
    if str(getattr(pcfg, "task_type", "")) not in ("SEQ_CLS", "TaskType.SEQ_CLS"):
        fail("task_type is %r, not SEQ_CLS" % getattr(pcfg, "task_type", None))
    mts = list(getattr(pcfg, "modules_to_save", None) or [])
    tm = getattr(pcfg, "target_modules", None)  # prompt learning configs have none
    report["parsed_config"] = {"class": type(pcfg).__name__, "task_type": str(pcfg.task_type), "r": getattr(pcfg, "r", None),
                               "target_modules": sorted(tm) if isinstance(tm, (set, list)) else tm, "modules_to_save": mts}

    afile = os.path.join(args.adapter, "adapter_model.safetensors")
    with safe_open(afile, framework="pt") as f:
        file_keys = sorted(f.keys())
        file_tensors = {k: f.get_tensor(k) for k in file_keys}
    report["adapter_file"] = {"tensors": len(file_keys), "keys": file_keys}
    K = args.num_labels
    if K is None:
        heads = [k for k in file_keys if k.endswith("classifier.weight") and not k.endswith("pre_classifier.weight")]
        heads += [k for k in file_keys if k.endswith(".score.weight")]
        if not heads:
            fail("no classifier weight in the adapter file to take num_labels from; give --num-labels")
            return
        K = int(file_tensors[heads[0]].shape[0])
    report["num_labels"] = K

    # ---- base (its head is new: only head keys may be missing)
    torch.manual_seed(args.seed)
    base, info = None, None
    with Capture(handler, "base_load", report["python_warnings"]):
        kw = dict(num_labels=K, attn_implementation="eager")
        errors = []
        for extra in (dict(dtype=torch.float32, output_loading_info=True), dict(torch_dtype=torch.float32, output_loading_info=True),
                      dict(dtype=torch.float32)):
            try:
                got = AutoModelForSequenceClassification.from_pretrained(args.base, **kw, **extra)
            except TypeError as e:
                errors.append("%s: %s" % (sorted(extra), e))
                continue
            base, info = (got if "output_loading_info" in extra else (got, None))
            break
    if base is None:
        fail("base model would not load: %s" % errors)
        return
    if info is None:
        report["base_loading_info_unavailable"] = errors
        info = {}
    info = {k: sorted(v) if isinstance(v, (list, set, tuple)) else v for k, v in (info or {}).items()}
    report["base_loading_info"] = {k: [str(x) for x in v] if isinstance(v, list) else str(v) for k, v in info.items()}
    missing = [str(k) for k in info.get("missing_keys", [])]
    unexpected = [str(k) for k in info.get("unexpected_keys", [])]
    mismatched = [str(k) for k in info.get("mismatched_keys", [])]
    head_missing = [k for k in missing if any(k.rsplit(".", 1)[0].endswith(m) for m in mts)]
    other_missing = [k for k in missing if k not in head_missing]
    if other_missing:
        fail("base load: keys missing outside the saved head modules: %s" % other_missing[:5])
    if unexpected or mismatched:
        fail("base load: unexpected %s / mismatched %s keys" % (unexpected[:5], mismatched[:5]))
    if report.get("base_loading_info_unavailable") is None and not other_missing and not unexpected and not mismatched:
        tolerated["phase"] = "base_load"  # its "newly initialized" messages are about the head the adapter brings
    report["base_head_keys_new"] = head_missing

    with Capture(handler, "adapter_load", report["python_warnings"]):
        model = PeftModel.from_pretrained(base, args.adapter)
    model.eval()
    report["peft_model_class"] = type(model).__name__

    expected = sorted(get_peft_model_state_dict(model).keys())
    km, ku = sorted(set(expected) - set(file_keys)), sorted(set(file_keys) - set(expected))
    report["key_check"] = {"expected": len(expected), "in_file": len(file_keys), "missing": km, "unexpected": ku}
    if km:
        fail("adapter file lacks %d expected keys, e.g. %s" % (len(km), km[:3]))
    if ku:
        fail("adapter file has %d unexpected keys, e.g. %s" % (len(ku), ku[:3]))

    # the trained head copies hold the file's values
    sd = model.state_dict()
    head_checks = {}
    for k in file_keys:
        if ".lora_" in k or k.endswith(".ia3_l") or k == "prompt_embeddings":  # the method's tensors, not a head copy
            continue
        mod, leaf = k.rsplit(".", 1)
        live = "%s.modules_to_save.default.%s" % (mod, leaf)
        if live not in sd:
            fail("no trained copy %s for file tensor %s" % (live, k))
            continue
        same = bool(torch.equal(sd[live].to(torch.float32), file_tensors[k].to(torch.float32)))
        head_checks[k] = same
        if not same:
            fail("%s does not hold the adapter file's values" % live)
    report["head_values_loaded"] = head_checks

    with open(args.inputs) as f:
        inp = json.load(f)
    ids = torch.tensor(inp["input_ids"], dtype=torch.long)
    am = torch.tensor(inp.get("attention_mask", [[1] * len(r) for r in inp["input_ids"]]), dtype=torch.long)
    with safe_open(args.expect, framework="pt") as f:
        if args.expect_key not in f.keys():
            fail("tensor %r not in %s" % (args.expect_key, args.expect))
            return
        ref = f.get_tensor(args.expect_key).to(torch.float64)
    dt = torch.float64 if args.compute_dtype == "float64" else torch.float32
    model = model.to(dt)
    with Capture(handler, "forward", report["python_warnings"]):
        with torch.no_grad():
            out = model(input_ids=ids, attention_mask=am).logits.to(torch.float64)
    report["logits_shape"] = list(out.shape)
    if list(out.shape) != list(ref.shape):
        fail("logits shape %s != expected %s" % (list(out.shape), list(ref.shape)))
        return
    scale = ref.abs().max().item()
    err = (out - ref).abs() / torch.clamp(ref.abs(), min=args.floor * scale)
    report["floor"] = args.floor
    report["max_rel_error"] = err.max().item()
    report["max_abs_error"] = (out - ref).abs().max().item()
    report["max_abs_ref"] = scale
    report["predictions_agree"] = bool(torch.equal(out.argmax(-1), ref.argmax(-1)))
    if not report["max_rel_error"] <= args.tol:
        fail("logits differ: max relative error %.3e > tol %.1e" % (report["max_rel_error"], args.tol))


if __name__ == "__main__":
    main()
