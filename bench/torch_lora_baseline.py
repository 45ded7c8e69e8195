"""PyTorch + PEFT LoRA training-step baseline on the GPU machine: same shapes as our engine's
benchmark (random weights, batch x seq tokens, AdamW, full steps: forward, backward, optimizer).

  python3 bench/torch_lora_baseline.py --model DIR --batch 8 --seq 256 --targets c_attn --steps 30
Prints one JSON line per configuration (attention implementation x dtype). With --kernel-time, each
line also says how much of a step the GPU spent in kernels (torch.profiler over 5 more steps): a
step much longer than its kernels is bound by the host launching them, not by the GPU."""
import argparse, json, time
import torch
from transformers import AutoModelForCausalLM
from peft import LoraConfig, get_peft_model


def kernel_ms_per_step(step, n=5):
    """GPU time in kernels (and copies) per step, summed from a torch.profiler trace of n steps."""
    from torch.profiler import profile, ProfilerActivity
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(n):
            step()
        torch.cuda.synchronize()
    total_us = sum(getattr(e, "self_device_time_total", None) or getattr(e, "self_cuda_time_total", 0) for e in prof.key_averages())
    return total_us / n / 1000


def run(model_dir, attn, dtype, batch, seq, targets, steps, r, kernel_time=False):
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
    row = {"attn": attn, "dtype": dtype, "ms_per_step": round(ms, 2), "tokens_per_s": round(batch * seq / ms * 1000),
           "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 3)}
    if kernel_time:
        row["kernel_ms_per_step"] = round(kernel_ms_per_step(step), 2)
    return row


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--targets", default="c_attn")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--kernel-time", action="store_true", help="also profile 5 steps for the GPU's time in kernels")
    a = ap.parse_args()
    for attn in ("eager", "sdpa"):
        for dtype in ("fp32", "bf16"):
            print(json.dumps(run(a.model, attn, dtype, a.batch, a.seq, a.targets.split(","), a.steps, a.rank, a.kernel_time)), flush=True)
