// f32 products on tensor cores, where the device has them: WGSL's experimental subgroup matrices
// (chromium-experimental-subgroup-matrix) with f16 operands and f32 results, 16 x 16 x 16
// (gpu/gpu.ts Gpu.hasTensorCores). The operands stay f32 in memory; the kernels
// (shaders/matmul_tc_*.wgsl, scripts/gen-matmul-tc.mjs) round them to f16 as they stage each K
// tile and accumulate in f32: the precision of mixed-precision training (PyTorch's autocast), not
// of an f32 product. So only products that ask for it take this path (MatmulArgs.tensorCores: the
// frozen layers' products, whose B is a weight), and only where the operands suit the kernels:
// unbatched, A stored [M, K], vec4-aligned, no triangle or fused softmax backward. A gradient
// operand ('gradients') has its rows scaled by powers of two first, one per block of 16 rows
// (shaders/row_scale.wgsl), so that magnitudes far below f16's normal range keep their precision.

import geluTanhCode from '../../../shaders/gelu_tanh.wgsl?raw';
import code128x128Kernel from '../../../shaders/matmul_tc_128x128.wgsl?raw';
import code64x64Kernel from '../../../shaders/matmul_tc_64x64.wgsl?raw';
import code128x128HalfBKernel from '../../../shaders/matmul_tc_128x128_half_b.wgsl?raw';
import code64x64HalfBKernel from '../../../shaders/matmul_tc_64x64_half_b.wgsl?raw';
import code128x128SplitKernel from '../../../shaders/matmul_tc_128x128_split.wgsl?raw';
import code64x64SplitKernel from '../../../shaders/matmul_tc_64x64_split.wgsl?raw';
import code128x128HalfBSplitKernel from '../../../shaders/matmul_tc_128x128_half_b_split.wgsl?raw';
import code64x64HalfBSplitKernel from '../../../shaders/matmul_tc_64x64_half_b_split.wgsl?raw';
import rowScaleCode from '../../../shaders/row_scale.wgsl?raw';
import type { Gpu } from '../gpu/gpu';
import { bindDispatch, f32, runOps, type Dispatch, type Op } from '../gpu/dispatch';
import type { Tensor } from '../gpu/tensor';
import { withPackedF16 } from './packed-f16';

/** What A holds, for MatmulArgs.tensorCores: ordinary magnitudes, or gradients (rows rescaled before rounding). */
export type TensorCoreOperand = 'values' | 'gradients';

/** What the kernels enable, ahead of everything (WGSL wants directives before declarations). */
const TC_DIRECTIVES = 'enable f16;\nenable subgroups;\nenable chromium_experimental_subgroup_matrix;\n';
const tcCode = (kernel: string) => TC_DIRECTIVES + geluTanhCode + kernel;
/**
 * The tensor-core kernels: output tile, K tile, WGSL (directives and GELU's definitions in front),
 * the same kernel for B stored in f16 (codeHalfB: the halves staged as they are, by bitcast), and
 * both with f32 accuracy (split: each f32 operand staged as hi + lo halves, three products a
 * fragment, two where B is in f16; tuning.tensorCoreF32).
 */
export const TC_KERNELS = {
  '128x128': {
    rows: 128, cols: 128, kTile: 32, code: tcCode(code128x128Kernel), codeHalfB: tcCode(code128x128HalfBKernel),
    split: { code: tcCode(code128x128SplitKernel), codeHalfB: tcCode(code128x128HalfBSplitKernel) },
  },
  '64x64': {
    rows: 64, cols: 64, kTile: 32, code: tcCode(code64x64Kernel), codeHalfB: tcCode(code64x64HalfBKernel),
    split: { code: tcCode(code64x64SplitKernel), codeHalfB: tcCode(code64x64HalfBSplitKernel) },
  },
} as const;
export type TcTile = keyof typeof TC_KERNELS;

/** The product's shape and layout as the tensor-core path sees it (defaults applied). */
export interface TcProduct {
  M: number;
  N: number;
  K: number;
  transB: boolean;
  lda: number;
  ldb: number;
  offA: number;
  offB: number;
  /** op(A) = gelu(A), applied as A is staged (MatmulArgs.geluA). */
  geluA?: boolean;
}

/**
 * Whether products that ask for tensor cores may get them: the device has them, tuning.tensorCores
 * is on, and with tuning.tensorCoreF32 its kernels passed their check (else f32 kernels, f32
 * accuracy too).
 */
export function tensorCoresOn(gpu: Gpu): boolean {
  return gpu.hasTensorCores && gpu.tuning.tensorCores && !(gpu.tuning.tensorCoreF32 && gpu.info?.tensorCoreF32Refused);
}

/**
 * The tile a tensor-core product runs in, or null where it cannot: the device has no tensor
 * cores, tuning.tensorCores is off, or the operands are not vec4-aligned (offsets and row strides
 * multiples of 4; K a multiple of 4, and N too where B is stored [K, N]). 128x128 for B stored
 * [N, K] with N or K from tuning.tensorCoreWideMinDim (on the H100 its 64x64 tiles ran at 46
 * TFLOP/s where 128x128 ran at 59-70, GPT-2's dx shapes; but SmolLM2's 576- and 960-wide forward
 * products over K = 576 and 1536 ran faster in 64x64 tiles, whole ones: o_proj 1.89 -> 1.59 ms a
 * step, down_proj 3.55 -> 3.28, q|k|v 1.92 -> 1.67), for a GELU prologue (half the GELUs of 64x64
 * tiles), for K slices (tensorCoreSplitK) and from tuning.tensorCoreWideMinTiles tiles; else 64x64
 * (B stored [K, N]: 57-71 against 46-60 at GPT-2's forward shapes; bench/matmul-shapes.ts --tensor-cores);
 * with tuning.tensorCoreF32, B stored [K, N] with K from tensorCoreWideMinDim too.
 */
export function tensorCoreTile(gpu: Gpu, p: TcProduct): TcTile | null {
  if (!tensorCoresOn(gpu)) return null;
  const m4 = (...v: number[]) => v.every((x) => x % 4 === 0);
  if (!m4(p.K, p.lda, p.ldb, p.offA, p.offB) || (!p.transB && p.N % 4 !== 0)) return null;
  if (p.M < 16 || p.N < 16) return null;
  if (gpu.tuning.tensorCoreTile !== 'auto') return gpu.tuning.tensorCoreTile;
  const tiles128 = Math.ceil(p.M / 128) * Math.ceil(p.N / 128);
  const t = gpu.tuning;
  // with f32 accuracy (three products a K tile) B stored [K, N] over a long K too: GPT-2's
  // mlp.c_proj 66.7 against 54.1 TFLOP/s in 64x64, SmolLM2's gate|up dx 44.7 against 42.0
  const wideK = t.tensorCoreF32 && !p.transB && p.K >= t.tensorCoreWideMinDim;
  const wide = (p.transB && Math.max(p.N, p.K) >= t.tensorCoreWideMinDim) || wideK || p.geluA || splitMinK(gpu, p) <= p.K || tiles128 >= t.tensorCoreWideMinTiles;
  return wide ? '128x128' : '64x64';
}

const splitMinK = (gpu: Gpu, p: TcProduct) => (p.geluA ? gpu.tuning.tensorCoreSplitKGeluMinK : gpu.tuning.tensorCoreSplitKMinK);

/**
 * K slices for a tensor-core product whose tiles are too few to fill the GPU (1: none): where K >=
 * tuning.tensorCoreSplitKMinK (tensorCoreSplitKGeluMinK under a GELU prologue, whose work is per
 * tile) and the tile makes fewer than tuning.tensorCoreSplitKWorkgroups tiles, enough slices for
 * about that many workgroups, each at least tensorCoreSplitKMinSlice long.
 */
export function tensorCoreSplitK(gpu: Gpu, p: TcProduct, tile: TcTile): number {
  const t = gpu.tuning, kernel = TC_KERNELS[tile];
  const tiles = Math.ceil(p.M / kernel.rows) * Math.ceil(p.N / kernel.cols);
  if (p.K < splitMinK(gpu, p) || tiles >= t.tensorCoreSplitKWorkgroups) return 1;
  return Math.max(1, Math.min(Math.ceil(t.tensorCoreSplitKWorkgroups / tiles), Math.floor(p.K / t.tensorCoreSplitKMinSlice), 32));
}

export interface TcBinding {
  label: string;
  a: Tensor;
  b: Tensor;
  c: Tensor;
  bias: Tensor | null;
  pre: Tensor | null;
  offPre: number;
  ldPre: number;
  geluA: boolean;
  offC: number;
  ldc: number;
  alpha: number;
  accumulate: boolean;
  operand: TensorCoreOperand;
  /** The row scales already made (MatmulArgs.rowScales), or null: the row-scale pass where the product scales rows. */
  rowScale?: Tensor | null;
}

/**
 * scale[m] = the power of two that brings the largest |A[m'][k]| of m's block of 16 rows
 * (m' in [16 floor(m / 16), + 16)) into [2^13, 2^14) (1 for an all-zero block), for m < M,
 * A[m][k] = a[offA + m * lda + k] read as vec4s (shaders/row_scale.wgsl).
 */
export function rowScales(gpu: Gpu, p: { label: string; a: Tensor; scale: Tensor; M: number; K: number; lda: number; offA: number }): Dispatch {
  if (p.K % 4 !== 0 || p.lda % 4 !== 0 || p.offA % 4 !== 0) throw new Error(`${p.label}: row scales read vec4s (K, lda, offA multiples of 4)`);
  if (p.scale.size < p.M) throw new Error(`${p.label}: ${p.scale.label} holds ${p.scale.size} scales, need ${p.M}`);
  return bindDispatch(gpu, { label: p.label, code: rowScaleCode, params: [p.M, p.K, p.lda, p.offA], buffers: [p.a, p.scale], workgroups: foldGrid(gpu, Math.ceil(p.M / 16)) });
}

function foldGrid(gpu: Gpu, n: number): [number, number, number] {
  const maxDim = gpu.info.limits.maxComputeWorkgroupsPerDimension;
  return n <= maxDim ? [n, 1, 1] : [maxDim, Math.ceil(n / maxDim), 1];
}

/** The length of matmulTensorCore's K slices for about S of them (a whole number of K tiles), and how many that makes. */
function kSlices(p: TcProduct, tile: TcTile, S: number): { length: number; count: number } {
  const kTile = TC_KERNELS[tile].kTile;
  const length = S > 1 ? kTile * Math.ceil(p.K / S / kTile) : p.K;
  return { length, count: Math.ceil(p.K / length) };
}

/** How many K slices matmulTensorCore cuts K into for about S (slices of a whole number of K tiles). */
export function tensorCoreSlices(p: TcProduct, tile: TcTile, S: number): number {
  return kSlices(p, tile, S).count;
}

/**
 * The ops of one tensor-core product (checked by kernels/matmul.ts bindMatmul before it comes
 * here): under 'gradients' the row-scale pass into gpu.sharedScratch('tcRowScale') (none where the
 * binding brings its row scales), then the
 * product. With `split`, the product's slices of K (about S, each a multiple of the K tile but the
 * last: tensorCoreSlices) go to split.parts [slices, M, N] in the same dispatch, without the
 * epilogue (alpha, accumulate, bias, gelu'), which the caller's sum of the slices applies
 * (kernels/matmul.ts sumSlices).
 */
export function matmulTensorCore(gpu: Gpu, p: TcProduct, tile: TcTile, x: TcBinding, split?: { S: number; parts: Tensor }): Op[] {
  const kernel = TC_KERNELS[tile];
  const ops: Op[] = [];
  const scaleRows = x.operand === 'gradients' || (gpu.tuning.tensorCoreF32 && gpu.tuning.tensorCoreF32ScaleValues) || !!x.rowScale;
  let rowScale: Tensor | null = x.rowScale ?? null;
  if (x.rowScale && x.rowScale.size < p.M) throw new Error(`${x.label}: ${x.rowScale.label} holds ${x.rowScale.size} row scales, need ${p.M}`);
  if (scaleRows && !rowScale) {
    rowScale = gpu.sharedScratch('tcRowScale', p.M);
    ops.push(rowScales(gpu, { label: `${x.label}[row scales]`, a: x.a, scale: rowScale, M: p.M, K: p.K, lda: p.lda, offA: p.offA }));
  }
  const tilesM = Math.ceil(p.M / kernel.rows), tilesN = Math.ceil(p.N / kernel.cols);
  // slices of Ks (a multiple of the K tile), the last one the rest; all in one dispatch
  const { length: Ks, count: slices } = kSlices(p, tile, split?.S ?? 1);
  // a slice is written as it is (alpha 1, no bias, nothing added): the sum does the rest
  const e = split
    ? { c: split.parts, offC: 0, ldc: p.N, alpha: 1, accumulate: false, bias: null, pre: null, offPre: 0, ldPre: 0 }
    : { c: x.c, offC: x.offC, ldc: x.ldc, alpha: x.alpha, accumulate: x.accumulate, bias: x.bias, pre: x.pre, offPre: x.offPre, ldPre: x.ldPre };
  if (split && split.parts.size < slices * p.M * p.N) throw new Error(`${x.label}: ${slices} K slices need ${slices * p.M * p.N} elements of scratch`);
  const whole = p.M % kernel.rows === 0 && p.N % kernel.cols === 0 && Ks % kernel.kTile === 0 && p.K % kernel.kTile === 0;
  // nothing added but a bias (alpha, and the row blocks' scales, applied to each fragment as a whole):
  // the bias goes in first and the fragments straight out. Values' rows scaled (tensorCoreF32ScaleValues)
  // take the bias times the rows' scale, a power of two divided out with them (GPT-2's c_attn and
  // c_fc were 25-33 % slower through the epilogue); gradients' products, far smaller than a bias,
  // add it in the epilogue, after their sum: summed onto it they lose bits to every rounding of
  // the accumulators (2.6 times tc-check's bound)
  const plain = !e.accumulate && !e.pre && (!e.bias || (e.alpha === 1 && (!scaleRows || x.operand === 'values')));
  // C += A op(B) on whole tiles: C itself goes in first, the fragments straight out
  const addsToC = whole && e.accumulate && e.alpha === 1 && !scaleRows && !e.pre && !e.bias;
  const constants: Record<string, number> = {
    K_FAST_B: p.transB ? 1 : 0,
    ...(whole ? { CHECKED: 0 } : {}),
    ...(whole && (plain || addsToC) ? { DIRECT_STORE: 1 } : {}),
    ...(plain && e.bias ? { BIAS_INIT: 1 } : {}),
    ...(addsToC ? { ACC_INIT: 1 } : {}),
    ...(scaleRows ? { SCALE_ROWS: 1 } : {}),
    ...(x.geluA ? { GELU_A: 1 } : {}),
    ...(e.pre ? { GELU_GRAD: 1 } : {}),
  };
  const params = [
    p.M, p.N, p.K, tilesN, p.offA, p.offB, e.offC, p.lda, p.ldb, e.ldc, e.accumulate ? 1 : 0, e.bias ? 1 : 0, f32(e.alpha), e.offPre, e.ldPre,
    slices, Ks, p.M * p.N, tilesM * tilesN,
  ];
  const codes = gpu.tuning.tensorCoreF32 ? kernel.split : kernel;
  ops.push(bindDispatch(gpu, {
    label: `${x.label}[tensor cores${slices > 1 ? ` ${slices} slices` : ''}]`, code: x.b.dtype === 'f16' ? (gpu.tuning.tensorCoreHalfB ? codes.codeHalfB : withPackedF16(codes.code, 'b')) : codes.code, constants, params,
    buffers: [x.a, x.b, e.c, e.bias ?? x.a, e.pre ?? x.a, rowScale ?? x.a], workgroups: foldGrid(gpu, slices * tilesM * tilesN),
  }));
  return ops;
}

/**
 * Runs one small product of each kind (both tiles; A as values, and as gradients with their row
 * scales) on the tensor cores and compares it with the exact result (operands on a grid of f16
 * values, whose products and sums f32 holds exactly). Where a kernel fails to build or gives a wrong
 * value, on a driver these kernels were never tried on, it turns the tensor cores off
 * (Gpu.refuseTensorCores) so that every product runs in f32, and returns why; else null. Then the
 * same with f32 accuracy (tuning.tensorCoreF32's kernels, whose lo halves are 0 here): where only
 * those fail, GpuInfo.tensorCoreF32Refused says why and those products run in f32 kernels. Only
 * where the device has them, unless `force` (tests: a device without them must be refused).
 */
export async function checkTensorCores(gpu: Gpu, force = false): Promise<string | null> {
  if (!gpu.hasTensorCores && !force) return null;
  const saved = gpu.tuning.tensorCoreF32;
  gpu.tuning.tensorCoreF32 = false;
  let problem: string | null;
  try {
    problem = await checkTensorCoreKernels(gpu);
    if (problem) {
      gpu.refuseTensorCores(`the tensor-core check failed (${problem}); every product runs in f32`);
      return problem;
    }
    // then the f32-accuracy kernels (hi + lo halves): where only they fail, only they are refused
    gpu.tuning.tensorCoreF32 = true;
    const f32Problem = await checkTensorCoreKernels(gpu);
    if (f32Problem) gpu.info.tensorCoreF32Refused = `the check of the tensor cores with f32 accuracy failed (${f32Problem}); those products run in f32 kernels`;
  } finally {
    gpu.tuning.tensorCoreF32 = saved;
  }
  return null;
}

/** checkTensorCores's products in the kernels the tuning picks now: what went wrong, or null. */
async function checkTensorCoreKernels(gpu: Gpu): Promise<string | null> {
  const M = 128, N = 128, K = 64;
  // entries j / 8 for j in [-16, 16): exact in f16; every product and partial sum exact in f32
  const grid = (n: number, seed: number, scale: number) => Float32Array.from({ length: n }, (_, i) => ((((i * 2654435761 + seed) >>> 7) % 32) - 16) / 8 * scale);
  const A = grid(M * K, 1, 1), G = grid(M * K, 3, 2 ** -24), B = grid(K * N, 2, 1);
  const want = (a: Float32Array) => {
    const c = new Float64Array(M * N);
    for (let m = 0; m < M; m++) for (let k = 0; k < K; k++) for (let n = 0; n < N; n++) c[m * N + n] += a[m * K + k] * B[k * N + n];
    return c;
  };
  const tensors = [gpu.tensorFrom(A, [M * K], 'tensor-core check A'), gpu.tensorFrom(G, [M * K], 'tensor-core check gradients'), gpu.tensorFrom(B, [K * N], 'tensor-core check B'), gpu.tensor([M * N], 'tensor-core check C')];
  const [tA, tG, tB, tC] = tensors;
  let problem: string | null = null;
  try {
    for (const tile of Object.keys(TC_KERNELS) as TcTile[]) {
      for (const [operand, a, aHost] of [['values', tA, A], ['gradients', tG, G]] as const) {
        const what = `${tile} tiles, A as ${operand}`;
        gpu.device.pushErrorScope('validation');
        gpu.device.pushErrorScope('internal');
        const p = { M, N, K, transB: false, lda: K, ldb: N, offA: 0, offB: 0 };
        runOps(gpu, matmulTensorCore(gpu, p, tile, {
          label: `tensor-core check (${what})`, a, b: tB, c: tC, bias: null, pre: null, offPre: 0, ldPre: 0, geluA: false, offC: 0, ldc: N, alpha: 1, accumulate: false, operand,
        }));
        const internal = await gpu.device.popErrorScope();
        const invalid = await gpu.device.popErrorScope();
        const error = internal ?? invalid;
        if (error) {
          problem = `${what}: ${error.message.split('\n')[0]}`;
          break;
        }
        const got = await gpu.read(tC), exact = want(aHost);
        const bad = got.findIndex((v, i) => v !== exact[i]);
        if (bad >= 0) {
          problem = `${what}: C[${Math.floor(bad / N)}][${bad % N}] is ${got[bad]}, not ${exact[bad]}`;
          break;
        }
      }
      if (problem) break;
    }
  } catch (e) {
    problem = e instanceof Error ? e.message.split('\n')[0] : String(e);
  } finally {
    for (const t of tensors) gpu.destroyTensor(t);
  }
  return problem;
}
