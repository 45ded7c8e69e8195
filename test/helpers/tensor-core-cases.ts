// The tensor-core products' checks (kernels/matmul-tc.ts), shared by test/matmul-tc.test.ts (which
// runs them where the device has tensor cores and skips elsewhere: SwiftShader has neither
// shader-f16 nor subgroup matrices) and bench/tc-check.ts (the same checks on the GPU machine).
// Each case runs matmulWithScratch with tensorCores set and checks that it took the tensor cores,
// then compares C with the float64 product of the f32 operands against the bound of rounding both
// operands to f16 (relative 2^-11 each) and summing in f32:
//   |C - C_exact| <= (2^-10 * sum_k |alpha A[m][k] B[k][n]|
//                    + 2^-22 (|alpha sum_k A[m][k] B[k][n]| + |C0| + |bias|)) * |gelu'| + 2^-20 |C_exact / gelu'|
//   (the last two: the epilogue's f32 sums, and gelu' as WGSL's f32 tanh gives it)
// and, for comparison, measures the f32 kernels' error (tensor cores off) against the same bound.
// With f32 accuracy (tuning.tensorCoreF32: each operand staged as hi + lo halves) the first term's
// 2^-10 is 2^-19, 512 times tighter (hi + lo holds 22 of f32's 24 significant bits; the missing
// lo·lo is 2^-22 of a product; the rest is the f32 sums, which the f32 kernels do too).
import type { Gpu } from '../../src/engine/gpu/gpu';
import { encodeOps, runOps, type Op } from '../../src/engine/gpu/dispatch';
import { rowScales, type TcTile } from '../../src/engine/kernels/matmul-tc';
import { matmulWithScratch, type MatmulArgs } from '../../src/engine/kernels/matmul';
import { geluTanh, geluTanhGrad } from './gelu';
import { f16ToF32, f32ToF16 } from '../../src/io/safetensors';

export interface TensorCoreCase {
  name: string;
  M: number;
  N: number;
  K: number;
  transB: boolean;
  operand: 'values' | 'gradients';
  alpha?: number;
  accumulate?: boolean;
  bias?: boolean;
  geluA?: boolean;
  geluGrad?: boolean;
  /** Magnitude of A's entries (gradients: far below f16's normal range). */
  aScale?: number;
  /** Magnitude of B's entries (0.5 unless said: GPT-2's weights are about 0.02, whose lo halves are f16 subnormals). */
  bScale?: number;
  /** Row m of A further times 10^-(m % rowSpread): rows of one 16-row block far apart in magnitude. */
  rowSpread?: number;
  /** The kernel's tile (by tuning.tensorCoreWideMinTiles for this case). */
  tile: TcTile;
  /** K cut in slices into a scratch, then summed (tuning.tensorCoreSplitK* lowered for the case). */
  split?: boolean;
  /** A's row scales made beforehand and handed over (MatmulArgs.rowScales): the product runs no row-scale pass. */
  givenRowScales?: boolean;
  /** Row stride of A and C beyond K and N (padding), and element offsets. */
  padA?: number;
  padC?: number;
  offA?: number;
  offC?: number;
}

const CASES: Omit<TensorCoreCase, 'tile'>[] = [
  { name: 'whole 128 tiles, B [N, K]', M: 256, N: 256, K: 96, transB: true, operand: 'values' },
  { name: 'whole 128 tiles, B [K, N]', M: 256, N: 256, K: 96, transB: false, operand: 'values' },
  { name: 'edges everywhere, B [N, K]', M: 150, N: 90, K: 52, transB: true, operand: 'values' },
  { name: 'edges everywhere, B [K, N]', M: 150, N: 92, K: 52, transB: false, operand: 'values' },
  { name: 'alpha, accumulate, bias', M: 128, N: 192, K: 64, transB: false, operand: 'values', alpha: 0.5, accumulate: true, bias: true },
  { name: 'C in the accumulators (accumulate, whole tiles)', M: 128, N: 128, K: 64, transB: true, operand: 'values', accumulate: true },
  { name: 'bias in the accumulators, whole tiles', M: 128, N: 128, K: 64, transB: true, operand: 'values', bias: true },
  { name: 'bias in the accumulators, edges', M: 100, N: 72, K: 36, transB: false, operand: 'values', bias: true, geluA: true },
  // (with f32 accuracy, 'bias in the accumulators' has its values' rows scaled: the bias goes in times the scales)
  { name: 'bias with gradients\' row scales (added in the epilogue)', M: 128, N: 128, K: 64, transB: false, operand: 'gradients', aScale: 1e-6, bias: true },
  { name: 'row scales handed over (the LM head\'s backward)', M: 150, N: 64, K: 96, transB: false, operand: 'gradients', aScale: 1e-6, givenRowScales: true },
  { name: 'GELU prologue', M: 128, N: 128, K: 96, transB: false, operand: 'values', geluA: true },
  { name: 'gelu\' epilogue, gradients', M: 128, N: 128, K: 64, transB: true, operand: 'gradients', geluGrad: true, aScale: 1e-6 },
  { name: 'gradients of 1e-7', M: 192, N: 128, K: 160, transB: true, operand: 'gradients', aScale: 1e-7 },
  { name: 'gradients, strides and offsets', M: 100, N: 60, K: 40, transB: false, operand: 'gradients', aScale: 1e-5, padA: 4, padC: 8, offA: 8, offC: 4 },
  { name: 'gradients times alpha, straight from the fragments', M: 256, N: 128, K: 96, transB: false, operand: 'gradients', aScale: 1e-6, alpha: -0.375 },
  { name: 'gradient rows 10^4 apart in one block', M: 128, N: 64, K: 128, transB: true, operand: 'gradients', aScale: 1e-3, rowSpread: 5 },
  { name: 'K not a multiple of 4 (the rest in f32)', M: 128, N: 64, K: 70, transB: false, operand: 'gradients', aScale: 1e-4, padA: 2 },
  { name: 'K slices, then their sum with the epilogue', M: 128, N: 96, K: 1000, transB: false, operand: 'gradients', aScale: 1e-6, split: true, alpha: 0.25, accumulate: true, bias: true },
  { name: 'K slices under gelu\'', M: 64, N: 64, K: 520, transB: true, operand: 'gradients', aScale: 1e-3, split: true, geluGrad: true },
  { name: 'weights of 0.02, K = 768', M: 256, N: 256, K: 768, transB: false, operand: 'values', bScale: 0.02 },
  { name: 'gradients of 1e-6 through weights of 0.02', M: 256, N: 128, K: 768, transB: true, operand: 'gradients', aScale: 1e-6, bScale: 0.02 },
  { name: 'GPT-2 c_fc.dx shape', M: 2048, N: 768, K: 3072, transB: true, operand: 'gradients', aScale: 1e-5 },
  { name: 'K = 50,256 in slices (GPT-2 LM head\'s dx)', M: 256, N: 768, K: 50256, transB: false, operand: 'gradients', aScale: 1e-6, split: true },
];
/** Every case in both kernels' tiles (tuning.tensorCoreTile). */
export const TENSOR_CORE_CASES: TensorCoreCase[] = CASES.flatMap((c) => (['128x128', '64x64'] as const).map((tile) => ({ ...c, name: `${c.name} (${tile})`, tile })));

function rand(n: number, seed: number, scale = 1): Float32Array {
  let s = seed >>> 0;
  const x = new Float32Array(n);
  for (let i = 0; i < n; i++) x[i] = ((((s = (s * 1664525 + 1013904223) >>> 0) >>> 8) / 2 ** 24 - 0.5) * 2 * scale);
  return x;
}

export interface TensorCoreResult {
  name: string;
  tookTensorCores: boolean;
  labels: string[];
  worstRatio: number;
  /** The f32 kernels' (tensor cores off) worst |error| / the same bound, when asked for. */
  f32KernelWorstRatio?: number;
  /** With halfB: whether B stored in f16 gave C bit for bit as B in f32 holding the same values. */
  halfBIdentical?: boolean;
  ok: boolean;
}

/**
 * Runs one case on `gpu`; worstRatio is the largest |error| / bound over C (ok: <= 1 and on tensor
 * cores). With `compareF32Kernel`, also the same product with the tensor cores off.
 */
export async function runTensorCoreCase(gpu: Gpu, c: TensorCoreCase, compareF32Kernel = false, halfB = false, f32Accuracy = false): Promise<TensorCoreResult> {
  const { M, N, K, transB } = c;
  const lda = K + (c.padA ?? 0), ldc = N + (c.padC ?? 0), offA = c.offA ?? 0, offC = c.offC ?? 0;
  const ldb = transB ? K : N;
  const A = rand(offA + M * lda, 11, c.aScale ?? 1);
  // with halfB, B's values are f16's, so B stored in f16 must give the same bits
  const bValues = rand((transB ? N : K) * ldb, 12, c.bScale ?? 0.5);
  const B = halfB ? f16ToF32(f32ToF16(bValues)) : bValues;
  if (c.rowSpread) for (let m = 0; m < M; m++) for (let k = 0; k < K; k++) A[offA + m * lda + k] *= 10 ** -(m % c.rowSpread);
  const C0 = rand(offC + M * ldc, 13), bias = rand(N, 14), pre = rand(M * N, 15, 2);
  const alpha = c.alpha ?? 1;
  const tA = gpu.tensorFrom(A, [A.length], 'A'), tB = gpu.tensorFrom(B, [B.length], 'B'), tC = gpu.tensorFrom(C0, [C0.length], 'C');
  const tBias = c.bias ? gpu.tensorFrom(bias, [N], 'bias') : undefined;
  const tPre = c.geluGrad ? gpu.tensorFrom(pre, [M * N], 'pre') : undefined;
  const args: MatmulArgs = {
    label: c.name, a: tA, b: tB, c: tC, M, N, K, transB, lda, ldc, offsetA: offA, offsetC: offC, alpha,
    accumulate: c.accumulate, bias: tBias, geluA: c.geluA ? 'tanh' : undefined, geluGradOf: tPre ? { pre: tPre } : undefined, tensorCores: c.operand,
  };
  const saved = { ...gpu.tuning };
  const tScales = c.givenRowScales ? gpu.tensor([M], 'row scales') : null;
  if (tScales) await runOps(gpu, [rowScales(gpu, { label: 'row scales beforehand', a: tA, scale: tScales, M, K, lda, offA })]);
  if (tScales) args.rowScales = tScales;
  const scratch = c.split ? gpu.tensor([32 * M * N], 'scratch') : null;
  const run = async (tensorCores: boolean, b = tB) => {
    gpu.tuning = { ...saved, tensorCores, tensorCoreTile: c.tile, tensorCoreF32: f32Accuracy };
    if (c.split) Object.assign(gpu.tuning, { tensorCoreSplitKMinK: 256, tensorCoreSplitKMinSlice: 128, tensorCoreSplitKWorkgroups: 264 });
    const ops: Op[] = matmulWithScratch(gpu, { ...args, b }, scratch);
    gpu.tuning = saved;
    gpu.write(tC, C0);
    const enc = gpu.device.createCommandEncoder();
    encodeOps(enc, ops);
    gpu.device.queue.submit([enc.finish()]);
    return { ops, out: await gpu.read(tC) };
  };
  const f32Out = compareF32Kernel ? (await run(false)).out : null;
  const { ops, out } = await run(true);
  let halfBIdentical: boolean | undefined;
  if (halfB) {
    const tB16 = gpu.tensorFromF16(B, [B.length], 'B (f16)');
    const half = (await run(true, tB16)).out;
    halfBIdentical = half.every((v, i) => Object.is(v, out[i]));
    gpu.destroyTensor(tB16);
  }
  const labels = ops.map((o) => (o.kind === 'dispatch' ? o.label : o.kind));
  const tookTensorCores = labels.some((l) => /\[tensor cores( \d+ slices)?\]$/.test(l));
  let worstRatio = 0, f32KernelWorstRatio = 0;
  // large cases: every rowStep-th row (and the last) against the float64 product
  const rowStep = M * N * K > 1e8 ? 37 : 1;
  for (let m = 0; m < M; m = m + rowStep < M || m === M - 1 ? m + rowStep : M - 1) {
    for (let n = 0; n < N; n++) {
      let sum = 0, abs = 0;
      for (let k = 0; k < K; k++) {
        const av = c.geluA ? geluTanh(A[offA + m * lda + k]) : A[offA + m * lda + k];
        const p = av * B[transB ? n * ldb + k : k * ldb + n];
        sum += p;
        abs += Math.abs(p);
      }
      let x = alpha * sum, bound = (f32Accuracy ? 2 ** -19 : 2 ** -10) * Math.abs(alpha) * abs, added = Math.abs(x);
      if (c.accumulate) {
        x += C0[offC + m * ldc + n];
        added += Math.abs(C0[offC + m * ldc + n]);
      }
      if (c.bias) {
        x += bias[n];
        added += Math.abs(bias[n]);
      }
      bound += 2 ** -22 * added;
      if (c.geluGrad) {
        const g = geluTanhGrad(pre[m * N + n]);
        bound = bound * Math.abs(g) + 2 ** -20 * Math.abs(x);
        x *= g;
      }
      bound += 1e-30;
      worstRatio = Math.max(worstRatio, Math.abs(out[offC + m * ldc + n] - x) / bound);
      if (f32Out) f32KernelWorstRatio = Math.max(f32KernelWorstRatio, Math.abs(f32Out[offC + m * ldc + n] - x) / bound);
    }
  }
  // C's padding and what lies before offC are untouched
  for (let m = 0; m < M; m++) for (let n = N; n < ldc; n++) if (out[offC + m * ldc + n] !== C0[offC + m * ldc + n]) worstRatio = Infinity;
  for (let i = 0; i < offC; i++) if (out[i] !== C0[i]) worstRatio = Infinity;
  for (const t of [tA, tB, tC, tBias, tPre, scratch, tScales]) if (t) gpu.destroyTensor(t);
  // a split case must have been cut (and summed); handed-over row scales leave no pass of its own
  const split = (!c.split || labels.some((l) => l.endsWith('[tensor cores sum]'))) && !(c.givenRowScales && labels.some((l) => l.endsWith('[row scales]')));
  return {
    name: c.name, tookTensorCores: tookTensorCores && split, labels, worstRatio, ...(f32Out ? { f32KernelWorstRatio } : {}), ...(halfB ? { halfBIdentical } : {}),
    ok: tookTensorCores && split && worstRatio <= 1 && halfBIdentical !== false,
  };
}
