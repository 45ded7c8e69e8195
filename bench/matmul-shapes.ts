// Matmul throughput at the shapes of the benchmark models (GPT-2 124M, SmolLM2-135M at 8 x 256
// tokens), for every tiled kernel variant and the automatic choice, timed with timestamp queries.
//   here:        node scripts/node-run.mjs --bundle-only bench/dist bench/matmul-shapes.ts
//   GPU machine: bash .gpu/boot.sh node bench/dist/matmul-shapes.mjs [--json FILE] [--dawn-flags a,b] [--only WORDS] [--reps N] [--busy-ms MS] [--tuning k=v,...]
//   (--only: the shapes whose name contains WORDS; --tensor-cores: also the tensor-core products of
//   kernels/matmul-tc.ts in each tile, A as values and as gradients; --tc-only: only those;
//   --half-b: B stored in f16, as frozen weights can be: kernels/packed-f16.ts; --tc-f32: the
//   tensor-core products with f32 accuracy too (tuning.tensorCoreF32: hi + lo halves), rows 'tc-f32 ...')
import fs from 'node:fs';
import { parseArgs } from 'node:util';
import { createNodeGpu } from '../src/engine/gpu/node-gpu';
import { tuningArg } from './tuning-arg';
import { DEFAULT_KERNEL_TUNING, type KernelTuning } from '../src/engine/gpu/gpu';
import { matmul, matmulSplitK, matmulVariant, matmulWithScratch, productScratchElements, usesSkinnyMatmul, vec4Aligned, MATMUL_VARIANTS } from '../src/engine/kernels/matmul';
import type { Op } from '../src/engine/gpu/dispatch';
import { timeOpsBackToBack, timeOpsWarm } from './warm-timing';

const { values: a } = parseArgs({ options: { json: { type: 'string' }, 'dawn-flags': { type: 'string' }, reps: { type: 'string' }, 'busy-ms': { type: 'string' }, small: { type: 'boolean' }, 'split-k': { type: 'boolean' }, only: { type: 'string' }, 'tensor-cores': { type: 'boolean' }, 'tc-only': { type: 'boolean' }, 'half-b': { type: 'boolean' }, 'tc-f32': { type: 'boolean' }, tuning: { type: 'string' } } });
const extra = a['dawn-flags'] ? a['dawn-flags'].split(',').map((f) => `enable-dawn-features=${f}`) : [];
const tensorCores = Boolean(a['tensor-cores'] || a['tc-only'] || a['tc-f32']);
// --tuning k=v,...: KernelTuning values for the program's choice (e.g. streamKWorkgroups=264)
const tuning = tuningArg(a.tuning);
const gpu = await createNodeGpu({ dawnFlags: ['disable-dawn-features=timestamp_quantization', ...extra], tensorCores, tuning });
if (tensorCores && !gpu.hasTensorCores) throw new Error('--tensor-cores: this device has no f16 subgroup matrices');
const reps = Number(a.reps ?? 20);
const busyMs = Number(a['busy-ms'] ?? 150);

// [what, M, N, K, transA, transB]
type Shape = [string, number, number, number, boolean, boolean];
const SHAPES: Shape[] = a.small ? [['small', 130, 70, 40, false, true], ['skinny', 300, 8, 200, false, false]] : [
  ['square 4096', 4096, 4096, 4096, false, false],
  ['gpt2 c_attn fwd', 2048, 2304, 768, false, false],
  ['gpt2 c_fc fwd', 2048, 3072, 768, false, false],
  ['gpt2 mlp c_proj fwd', 2048, 768, 3072, false, false],
  ['gpt2 attn c_proj fwd', 2048, 768, 768, false, false],
  ['gpt2 c_attn dx', 2048, 768, 2304, false, true],
  ['gpt2 c_fc dx', 2048, 768, 3072, false, true],
  ['gpt2 mlp c_proj dx', 2048, 3072, 768, false, true],
  ['gpt2 lm_head fwd', 2048, 50257, 768, false, true],
  ['gpt2 lm_head dx', 2048, 768, 50257, false, false],
  ['smollm2 q/o fwd', 2048, 576, 576, false, true],
  ['smollm2 k/v fwd', 2048, 192, 576, false, true],
  ['smollm2 gate/up fwd', 2048, 1536, 576, false, true],
  ['smollm2 down fwd', 2048, 576, 1536, false, true],
  ['smollm2 gate/up dx', 2048, 576, 1536, false, false],
  ['smollm2 down dx', 2048, 1536, 576, false, false],
  // gate and up as one product ([W_gate; W_up] stacked): N = 2I forward, K = 2I for dx
  ['smollm2 gate+up fwd', 2048, 3072, 576, false, true],
  ['smollm2 gate+up dx', 2048, 576, 3072, false, false],
  // q, k and v as one product ([W_q; W_k; W_v] stacked): N = (H + 2 KV) D = 960 forward, K = 960 for dx
  ['smollm2 q+k+v fwd', 2048, 960, 576, false, true],
  ['smollm2 q+k+v dx', 2048, 576, 960, false, false],
  ['attn scores, one head', 256, 256, 64, false, true],
  ['lora u = x A^T (r=8)', 2048, 8, 768, false, true],
  ['lora du = dy B (r=8)', 2048, 8, 2304, false, false],
  ['lora dB = dy^T u', 2304, 8, 2048, true, false],
  ['lora dA = du^T x', 8, 768, 2048, true, false],
  ['lora B: z = u B^T (out 2304)', 2048, 2304, 8, false, true],
  ['smollm2 lora u (r=8)', 2048, 8, 576, false, true],
  ['smollm2 lora dB', 576, 8, 2048, true, false],
  ['smollm2 lora du', 2048, 8, 576, false, false],
  ['smollm2 lora dA', 8, 576, 2048, true, false],
];
if (a.only) SHAPES.splice(0, SHAPES.length, ...SHAPES.filter(([what]) => what.includes(a.only!)));
const timeOps = (once: Op[]) => timeOpsWarm(gpu, once, reps, busyMs);
// the same ops back to back in one pass (as PyTorch's side is timed, and as the step runs them);
// nothing where they hold a copy or clear
const b2b = async (once: Op[], M: number, N: number, K: number) => {
  if (once.some((o) => o.kind !== 'dispatch')) return {};
  const ms = await timeOpsBackToBack(gpu, once, reps, busyMs);
  return { backToBackMs: ms, backToBackTflops: (2 * M * N * K) / ms / 1e9 };
};
// operands of random values (as PyTorch's side has; zeros would draw less power on the tensor
// cores): uniform in [-s, s), activations' and weights' scales
function randomTensor(n: number, scale: number, label: string, f16 = false) {
  const x = new Float32Array(n);
  let s = 0x9e3779b9 ^ n;
  for (let i = 0; i < n; i++) x[i] = ((((s = (s * 1664525 + 1013904223) >>> 0) >>> 8) / 2 ** 24) * 2 - 1) * scale;
  return f16 ? gpu.tensorFromF16(x, [n], label) : gpu.tensorFrom(x, [n], label);
}

const variants: KernelTuning['matmul'][] = ['auto', ...(Object.keys(MATMUL_VARIANTS) as (keyof typeof MATMUL_VARIANTS)[])];
const rows: Record<string, unknown>[] = [];
for (const [what, M, N, K, transA, transB] of SHAPES) {
  const A = randomTensor(M * K, 1, 'A'), B = randomTensor(K * N, 0.05, 'B', a['half-b']), C = gpu.tensor([M * N], 'C');
  const skinny = usesSkinnyMatmul(gpu, M, N, K, 1, false);
  const line: string[] = [];
  // skinny products: the kernel's rows per workgroup (tuning.skinnyRows / skinnyRowsRowFast)
  // the tensor-core products (kernels/matmul-tc.ts) in each tile, A as values / gradients (with its row-scale pass)
  // A's rows padded to whole vec4s (as the engine pads the LM head's logits), the program's scratch
  // for K slices; K's last K % 4 terms then run in f32 (kernels/matmul.ts matmulWithScratch)
  if (tensorCores && !skinny && !transA) {
    const lda = K + ((4 - (K % 4)) % 4);
    const A4 = lda === K ? A : randomTensor(M * lda, 1, 'A (rows padded)');
    const scratch = gpu.tensor([Math.max(1, productScratchElements(gpu, M, N, K))], 'scratch');
    const tc = async (kernel: string, operand: 'values' | 'gradients') => {
      const ops = matmulWithScratch(gpu, { a: A4, b: B, c: C, M, N, K, lda, transA, transB, label: 'tc', tensorCores: operand }, scratch);
      const ms = await timeOps(ops);
      const onTc = ops.some((o) => o.kind === 'dispatch' && o.label.includes('[tensor cores'));
      const tflops = (2 * M * N * K) / ms / 1e9;
      rows.push({ what, M, N, K, transA, transB, kernel: `${kernel} ${operand}`, ms, tflops, ...(await b2b(ops, M, N, K)), ops: ops.map((o) => (o.kind === 'dispatch' ? o.label : o.kind)), onTensorCores: onTc });
      line.push(`${kernel} ${operand}${onTc ? '' : ' (f32)'} ${tflops.toFixed(1)}`);
    };
    for (const f32Accuracy of a['tc-f32'] ? [false, true] : [false]) {
      gpu.tuning.tensorCoreF32 = f32Accuracy;
      const name = f32Accuracy ? 'tc-f32' : 'tc';
      for (const tile of ['128x128', '64x64'] as const) {
        gpu.tuning.tensorCoreTile = tile;
        for (const operand of ['values', 'gradients'] as const) await tc(`${name} ${tile}`, operand);
      }
      // what a model's product gets: its tile by the rule (the forward's A as values, the backward's as gradients)
      gpu.tuning.tensorCoreTile = 'auto';
      for (const operand of ['values', 'gradients'] as const) await tc(`${name} auto`, operand);
    }
    gpu.tuning.tensorCoreF32 = DEFAULT_KERNEL_TUNING.tensorCoreF32;
    for (const t of [scratch, ...(A4 === A ? [] : [A4])]) gpu.destroyTensor(t);
  }
  for (const v of a['tc-only'] ? [] : skinny ? (['skinny16', 'skinny8', 'skinny4'] as const) : variants) {
    if (v.startsWith('skinny')) gpu.tuning.skinnyRows = gpu.tuning.skinnyRowsRowFast = Number(v.slice(6));
    else gpu.tuning.matmul = v as KernelTuning['matmul'];
    const aligned = gpu.tuning.vec4Matmul && vec4Aligned({ M, N, K, transA, transB, lda: transA ? M : K, ldb: transB ? K : N, offA: 0, offB: 0, batch: { outer: 1, inner: 1, strideA: [0, 0], strideB: [0, 0], strideC: [0, 0] } });
    const label = `${v === 'auto' ? `auto(${matmulVariant(gpu, M, N, K, 1, aligned ? { transB } : undefined)})` : v}${aligned ? ' vec4' : ''}`;
    const one = [matmul(gpu, { a: A, b: B, c: C, M, N, K, transA, transB, label })];
    const ms = await timeOps(one);
    const tflops = (2 * M * N * K) / ms / 1e9;
    rows.push({ what, M, N, K, transA, transB, kernel: label, ms, tflops, ...(await b2b(one, M, N, K)) });
    line.push(`${label} ${tflops.toFixed(1)}`);
  }
  gpu.tuning.matmul = 'auto';
  // what a model's product runs with its program's scratch (stream-K / split-K where they apply), both passes
  if (!skinny && !a['tc-only']) {
    const scratch = gpu.tensor([Math.max(1, productScratchElements(gpu, M, N, K))], 'scratch');
    const ops1 = matmulWithScratch(gpu, { a: A, b: B, c: C, M, N, K, transA, transB, label: 'scratch' }, scratch);
    const kind = ops1.some((o) => o.kind === 'dispatch' && o.label.includes('[streamK')) ? 'streamK' : ops1.length > 1 ? 'splitK' : 'plain';
    const ms = await timeOps(ops1);
    const tflops = (2 * M * N * K) / ms / 1e9;
    rows.push({ what, M, N, K, transA, transB, kernel: `with scratch (${kind})`, ms, tflops, ...(await b2b(ops1, M, N, K)) });
    line.push(`with scratch (${kind}) ${tflops.toFixed(1)}`);
    gpu.destroyTensor(scratch);
  }
  gpu.tuning.skinnyRows = DEFAULT_KERNEL_TUNING.skinnyRows;
  gpu.tuning.skinnyRowsRowFast = DEFAULT_KERNEL_TUNING.skinnyRowsRowFast;
  console.log(`${what.padEnd(22)} ${M}x${N}x${K}${transA ? ' tA' : ''}${transB ? ' tB' : ''}: ${line.join(' | ')} TFLOP/s`);
  for (const t of [A, B, C]) gpu.destroyTensor(t);
}

// --split-k: products with few output tiles and a long K, cut into S slices (kernels/matmul.ts
// matmulSplitK: a batched product into scratch, then the sum), against S = 1.
if (a['split-k']) {
  for (const [what, M, N, K, transA, transB] of SHAPES.filter(([, M, N, K]) => M * N <= 2048 * 768 && K >= 768 && Math.min(M, N) > 16)) {
    const A = gpu.tensor([M * K], 'A'), B = gpu.tensor([K * N], 'B'), C = gpu.tensor([M * N], 'C');
    const scratch = gpu.tensor([16 * M * N], 'scratch');
    const line: string[] = [];
    for (const S of [1, 2, 3, 4, 6, 8, 12, 16]) {
      if (K / S < 128) continue;
      const ms = await timeOps(matmulSplitK(gpu, { a: A, b: B, c: C, M, N, K, transA, transB, label: `S${S}` }, S, scratch));
      const tflops = (2 * M * N * K) / ms / 1e9;
      rows.push({ what, M, N, K, transA, transB, kernel: `splitK ${S}`, ms, tflops });
      line.push(`S=${S} ${tflops.toFixed(1)}`);
    }
    console.log(`split-K ${what.padEnd(22)} ${M}x${N}x${K}: ${line.join(' | ')} TFLOP/s`);
    for (const t of [A, B, C, scratch]) gpu.destroyTensor(t);
  }
}
gpu.checkErrors();
if (a.json) fs.writeFileSync(a.json, JSON.stringify({ device: gpu.info.description, flags: extra, halfB: Boolean(a['half-b']), rows }, null, 1));
process.exit(0);
