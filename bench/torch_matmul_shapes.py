# cuBLAS (through PyTorch) at the matmul shapes of bench/matmul-shapes.ts: the reference for the
# engine's kernels at the benchmark models' layer shapes. f32 with TF32 off (what the engine
# computes: full f32 products), and for comparison TF32 and bf16 (tensor cores, which WGSL cannot
# reach on this machine's Dawn). Timed with CUDA events over `reps` back-to-back products after a
# warm-up.
#   GPU machine: python3 bench/torch_matmul_shapes.py [--json FILE] [--reps N]
import argparse
import json

import torch

# [what, M, N, K, transA, transB], as bench/matmul-shapes.ts SHAPES (its layer-sized rows)
SHAPES = [
    ('square 4096', 4096, 4096, 4096, False, False),
    ('gpt2 c_attn fwd', 2048, 2304, 768, False, False),
    ('gpt2 c_fc fwd', 2048, 3072, 768, False, False),
    ('gpt2 mlp c_proj fwd', 2048, 768, 3072, False, False),
    ('gpt2 attn c_proj fwd', 2048, 768, 768, False, False),
    ('gpt2 c_attn dx', 2048, 768, 2304, False, True),
    ('gpt2 c_fc dx', 2048, 768, 3072, False, True),
    ('gpt2 mlp c_proj dx', 2048, 3072, 768, False, True),
    ('gpt2 lm_head fwd', 2048, 50257, 768, False, True),
    ('gpt2 lm_head dx', 2048, 768, 50257, False, False),
    ('smollm2 q/o fwd', 2048, 576, 576, False, True),
    ('smollm2 k/v fwd', 2048, 192, 576, False, True),
    ('smollm2 gate/up fwd', 2048, 1536, 576, False, True),
    ('smollm2 down fwd', 2048, 576, 1536, False, True),
    ('smollm2 gate/up dx', 2048, 576, 1536, False, False),
    ('smollm2 down dx', 2048, 1536, 576, False, False),
    ('smollm2 gate+up fwd', 2048, 3072, 576, False, True),
    ('smollm2 gate+up dx', 2048, 576, 3072, False, False),
    ('smollm2 q+k+v fwd', 2048, 960, 576, False, True),
    ('smollm2 q+k+v dx', 2048, 576, 960, False, False),
]


def operands(M, N, K, transA, transB, dtype):
    a = torch.randn(K, M, device='cuda', dtype=dtype).t() if transA else torch.randn(M, K, device='cuda', dtype=dtype)
    b = torch.randn(N, K, device='cuda', dtype=dtype).t() if transB else torch.randn(K, N, device='cuda', dtype=dtype)
    return a, b


def time_ms(a, b, reps):
    out = torch.empty(a.shape[0], b.shape[1], device='cuda', dtype=a.dtype)
    for _ in range(3):
        torch.matmul(a, b, out=out)
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        torch.matmul(a, b, out=out)
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / reps


def main():
    p = argparse.ArgumentParser()
    p.add_argument('--json')
    p.add_argument('--reps', type=int, default=50)
    args = p.parse_args()
    torch.manual_seed(0)
    rows = []
    print(f'{"shape":<24} {"M":>5} {"N":>6} {"K":>6}   f32 TFLOP/s  tf32  bf16')
    for what, M, N, K, transA, transB in SHAPES:
        flop = 2 * M * N * K
        line = {}
        for mode in ('f32', 'tf32', 'bf16'):
            torch.backends.cuda.matmul.allow_tf32 = mode == 'tf32'
            a, b = operands(M, N, K, transA, transB, torch.bfloat16 if mode == 'bf16' else torch.float32)
            ms = time_ms(a, b, args.reps)
            line[mode] = flop / ms / 1e9
            rows.append({'what': what, 'M': M, 'N': N, 'K': K, 'transA': transA, 'transB': transB, 'mode': mode, 'ms': ms, 'tflops': line[mode]})
            del a, b
        print(f'{what:<24} {M:>5} {N:>6} {K:>6}   {line["f32"]:11.1f} {line["tf32"]:5.1f} {line["bf16"]:5.1f}')
    if args.json:
        with open(args.json, 'w') as f:
            json.dump({'device': torch.cuda.get_device_name(), 'torch': torch.__version__, 'rows': rows}, f, indent=1)


if __name__ == '__main__':
    main()
