"""PyTorch + PEFT LoRA training-step baseline on the GPU machine: same shapes as our engine's
benchmark (random weights, batch x seq tokens, AdamW, full steps: forward, backward, optimizer).

  python3 bench/torch_lora_baseline.py --model DIR --batch 8 --seq 256 --targets c_attn --steps 30
Prints one JSON line per configuration (attention implementation x dtype)."""
import argparse, json, time
import torch
from transformers import AutoModelForCausalLM
from peft import LoraConfig, get_peft_model


def run(model_dir, attn, dtype, batch, seq, targets, steps, r):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(model_dir, attn_implementation=attn, dtype=torch.float32).cuda()
    model.config.use_cache = False
    cfg = LoraConfig(r=r, lora_alpha=2 * r, lora_dropout=0.05, target_modules=targets, task_type="CAUSAL_LM",
                     fan_in_fan_out=model.config.model_type == "gpt2")
    model = get_peft_model(model, cfg)
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    vocab = model.config.vocab_size
    ids = torch.randint(0, vocab, (batch, seq), device="cuda")
    torch.cuda.reset_peak_memory_stats()

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=dtype == "bf16"):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(5):
        step()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    torch.cuda.synchronize()
    ms = (time.perf_counter() - t0) * 1000 / steps
    return {"attn": attn, "dtype": dtype, "ms_per_step": round(ms, 2), "tokens_per_s": round(batch * seq / ms * 1000),
            "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 3)}


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--targets", default="c_attn")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--rank", type=int, default=8)
    a = ap.parse_args()
    for attn in ("eager", "sdpa"):
        for dtype in ("fp32", "bf16"):
            print(json.dumps(run(a.model, attn, dtype, a.batch, a.seq, a.targets.split(","), a.steps, a.rank)), flush=True)
