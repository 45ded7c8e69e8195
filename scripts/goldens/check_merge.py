#!/usr/bin/env python3
"""Check our merged model (npm run merge) against PEFT's merge_and_unload on the same adapter.

    python3 scripts/goldens/check_merge.py --base DIR --adapter DIR --merged DIR [--tol 1e-5]

* PEFT: AutoModelForCausalLM(base, float32) + PeftModel.from_pretrained(adapter), merge_and_unload();
* ours: AutoModelForCausalLM.from_pretrained(merged) must load with no missing / unexpected keys;
* compares every tensor of the two state dicts (max |ours - peft| / max(|peft|)) and the logits of
  a fixed batch, prints a JSON report, exits 0 (pass) or 1 (fail).
"""
import argparse
import json
import sys

import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", required=True)
    ap.add_argument("--adapter", required=True)
    ap.add_argument("--merged", required=True)
    ap.add_argument("--tol", type=float, default=1e-5)
    a = ap.parse_args()
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(a.base, dtype=torch.float32, attn_implementation="eager")
    peft_merged = PeftModel.from_pretrained(base, a.adapter).merge_and_unload()
    ours, info = AutoModelForCausalLM.from_pretrained(a.merged, dtype=torch.float32, attn_implementation="eager", output_loading_info=True)
    problems = {k: v for k, v in info.items() if v}
    want = peft_merged.state_dict()
    got = ours.state_dict()
    worst = {"tensor": None, "rel": 0.0}
    changed = 0
    base_sd = AutoModelForCausalLM.from_pretrained(a.base, dtype=torch.float32).state_dict()
    for name, w in want.items():
        if name not in got:
            problems.setdefault("missing_in_ours", []).append(name)
            continue
        g = got[name].to(torch.float64)
        w64 = w.to(torch.float64)
        rel = float((g - w64).abs().max() / max(float(w64.abs().max()), 1e-12))
        if rel > worst["rel"]:
            worst = {"tensor": name, "rel": rel}
        if not torch.equal(base_sd[name], w):
            changed += 1
    ids = torch.tensor([[1, 5, 9, 2, 7, 3, 8, 4], [4, 4, 8, 1, 0, 6, 2, 9]])
    with torch.no_grad():
        lw = peft_merged(input_ids=ids).logits.to(torch.float64)
        lg = ours(input_ids=ids).logits.to(torch.float64)
    logits_rel = float((lg - lw).abs().max() / lw.abs().max())
    ok = not problems and worst["rel"] <= a.tol and logits_rel <= a.tol * 10 and changed > 0
    print(json.dumps({"ok": ok, "tensors": len(want), "changed_by_merge": changed, "worst_tensor": worst, "logits_rel": logits_rel, "problems": problems}))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
