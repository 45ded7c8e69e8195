// General (batched, strided, transposable) f32 matrix multiply: every linear layer forward and
// backward, LoRA, attention scores and attention-times-values, the LM head. See
// shaders/matmul.wgsl for the tiling.

import geluTanhCode from '../../../shaders/gelu_tanh.wgsl?raw';
import matmulCode from '../../../shaders/matmul.wgsl?raw';
import code128x128Kernel from '../../../shaders/matmul_wide_128x128.wgsl?raw';
import code128x64Kernel from '../../../shaders/matmul_wide_128x64.wgsl?raw';
import code64x128Kernel from '../../../shaders/matmul_wide_64x128.wgsl?raw';
import codeDb64x64Kernel from '../../../shaders/matmul_db_64x64.wgsl?raw';
import codeVec128x128Kernel from '../../../shaders/matmul_vec4_128x128.wgsl?raw';
import codeVec128x64Kernel from '../../../shaders/matmul_vec4_128x64.wgsl?raw';
import codeVec64x128Kernel from '../../../shaders/matmul_vec4_64x128.wgsl?raw';
import codeVec64x64Kernel from '../../../shaders/matmul_vec4_64x64.wgsl?raw';
import codeVec128x64C4Kernel from '../../../shaders/matmul_vec4_128x64_c4.wgsl?raw';
import codeVec64x64C4Kernel from '../../../shaders/matmul_vec4_64x64_c4.wgsl?raw';
import codeSkinny from '../../../shaders/matmul_skinny.wgsl?raw';
import codeStreamK128x128Kernel from '../../../shaders/matmul_streamk_128x128.wgsl?raw';
import codeStreamK128x64Kernel from '../../../shaders/matmul_streamk_128x64.wgsl?raw';
import codeStreamKFixupKernel from '../../../shaders/matmul_streamk_fixup.wgsl?raw';
import codeStreamKFixupVec4Kernel from '../../../shaders/matmul_streamk_fixup_vec4.wgsl?raw';
import codeStreamKFixupCommon from '../../../shaders/matmul_streamk_fixup_common.wgsl?raw';
import codeSplitKReduceKernel from '../../../shaders/matmul_splitk_reduce.wgsl?raw';
import type { Gpu } from '../gpu/gpu';
import { matmulTensorCore, tensorCoreSlices, tensorCoreSplitK, tensorCoreTile, type TensorCoreOperand } from './matmul-tc';
import { bindDispatch, f32, type Dispatch, type Op } from '../gpu/dispatch';
import { grid1d } from './grid';
import { hasStagedB, withPackedF16, withStagedHalfB } from './packed-f16';
import type { Tensor } from '../gpu/tensor';

// Every matmul shader fuses GPT-2's GELU on request (geluA / geluGradOf): the tanh form's one
// definition (shaders/gelu_tanh.wgsl, also the separate GELU kernels') goes in front of each.
const withGelu = (kernel: string): string => geluTanhCode + kernel;
const code64 = withGelu(matmulCode);
const code128x128 = withGelu(code128x128Kernel);
const code128x64 = withGelu(code128x64Kernel);
const code64x128 = withGelu(code64x128Kernel);
const codeDb64x64 = withGelu(codeDb64x64Kernel);
const codeVec128x128 = withGelu(codeVec128x128Kernel);
const codeVec128x64 = withGelu(codeVec128x64Kernel);
const codeVec64x128 = withGelu(codeVec64x128Kernel);
const codeVec64x64 = withGelu(codeVec64x64Kernel);
const codeSplitKReduce = withGelu(codeSplitKReduceKernel);
// the fix-up's two forms share shaders/matmul_streamk_fixup_common.wgsl (Params, overrides, which vec4 a thread sums)
const codeStreamKFixup = withGelu(codeStreamKFixupCommon + codeStreamKFixupKernel);
const codeStreamKFixupVec4 = withGelu(codeStreamKFixupCommon + codeStreamKFixupVec4Kernel);
/** The stream-K fix-up's two forms: C as scalars, and as vec4s (rows of whole vec4s; tuning.streamKVec4Fixup). */
export const STREAMK_FIXUP_KERNELS = { scalar: codeStreamKFixup, vec4: codeStreamKFixupVec4 } as const;

export interface MatmulBatch {
  outer: number;
  inner: number;
  strideA: [number, number];
  strideB: [number, number];
  strideC: [number, number];
  /**
   * B's inner index is floor(inner index / groupB) (default 1: the inner index itself), so groupB
   * consecutive inner entries share one B: grouped-query attention's query heads over their key /
   * value head, every head of a layer in one dispatch.
   */
  groupB?: number;
}

export interface MatmulArgs {
  label?: string;
  a: Tensor;
  b: Tensor;
  c: Tensor;
  M: number;
  N: number;
  K: number;
  /** A is stored [K, M] (read transposed) instead of [M, K]. */
  transA?: boolean;
  /** B is stored [N, K] (read transposed) instead of [K, N]. */
  transB?: boolean;
  /** Row strides in elements (leading dimensions) of the stored matrices; default dense. */
  lda?: number;
  ldb?: number;
  ldc?: number;
  /** Element offsets of the first matrix in each buffer; default 0. */
  offsetA?: number;
  offsetB?: number;
  offsetC?: number;
  /** Batched: matrix z in [0, outer*inner) uses offset + (z / inner)*stride[0] + (z % inner)*stride[1] (elements). */
  batch?: MatmulBatch;
  /** C = alpha * op(A) @ op(B) (+ C when accumulate) (+ bias[n] when bias given). Default alpha 1. */
  alpha?: number;
  accumulate?: boolean;
  bias?: Tensor; // length N
  /**
   * A triangular product (causal attention's), per batch entry, in the product's own (m, k, n)
   * coordinates (offsets and strides as above). Work is cut per output tile (rows [m0, m0 + TM),
   * columns [n0, n0 + TN) of the chosen kernel, TM and TN 64 or 128, K walked in tiles of 16):
   * - 'lowerA' (M == K): the caller promises op(A)[m][k] == 0 for k > m. A tile walks K only over
   *   k < min(K, m0 + TM): it never reads A or B at k >= m0 + TM, but does read (and needs to be
   *   0, not garbage) op(A)[m][k] for m < k < m0 + TM inside its diagonal block.
   * - 'upperA' (M == K): the promise is op(A)[m][k] == 0 for k < m. A tile walks K from
   *   floor(m0 / 16) * 16 (= m0): never reads k < m0, does read m0 <= k < m inside its diagonal block.
   * - 'lowerC' (M == N): only C[m][n] with n <= m is wanted. A tile wholly above the diagonal
   *   (n0 > m0 + TM - 1) returns without writing (its C keeps whatever it held: accumulate and bias
   *   are not applied there either; under softmaxGradOf it writes zeros there instead); every other
   *   tile computes and writes its whole tile, so C above the diagonal inside those tiles holds the
   *   full product's values.
   * With lowerA / upperA (and the promise kept) all of C is the plain product's. Never takes the
   * skinny kernel; matmulSplitK does not split a triangular product.
   */
  triangle?: MatmulTriangle;
  /**
   * op(A) is GELU's tanh form (shaders/gelu_tanh.wgsl, GPT-2's "gelu_new") of stored A, elementwise,
   * applied as A is staged into workgroup memory: GPT-2's mlp.c_proj reads its pre-activations
   * straight, with no GELU kernel nor activation buffer. The tiled kernels only (a shape that would
   * take the skinny kernel takes them instead); split-K applies it per slice.
   */
  geluA?: 'tanh';
  /**
   * The finished value times GELU's derivative (tanh form, shaders/gelu_tanh.wgsl) at
   * pre[offset + m * ld + n] (ld default N, offset 0): C[m][n] = (alpha * op(A) op(B)[m][n] (+ C)
   * (+ bias[n])) * gelu'(pre[m][n]), so GPT-2's mlp.c_proj.dx writes d(pre-activation) straight.
   * Unbatched products only; pre must not alias C. The tiled kernels only (as geluA); split-K
   * applies it once, on the sum (shaders/matmul_splitk_reduce.wgsl).
   */
  geluGradOf?: MatmulGeluGrad;
  /**
   * Attention's softmax backward fused into the product of dP = dO V^T:
   * C[m][n] = alpha * probs[m][n] * ((op(A) op(B))[m][n] - rowTerms[z * M + m]) for batch entry z,
   * so with rowTerms = rowsum(dO * O) per (batch entry, query row) (flash-attention.ts
   * attentionRowDelta) and alpha the softmax's scale, C is dS = scale * P * (dP - rowsum(P * dP))
   * straight, with no dP pass. probs is read at C's own indices (the same offset, row stride and
   * batch strides as c); it must not alias c. Under triangle 'lowerC' the tiles wholly above the
   * diagonal are written 0 (the caller's probs are 0 there, causal) rather than left as they were,
   * so the lowerA / upperA products that read dS next find zeros inside their diagonal blocks
   * whatever their tiles. No accumulate, bias or GELU with it; the tiled kernels only (never the
   * skinny kernel, split-K or stream-K: matmulWithScratch and matmulSplitK run it as one matmul).
   */
  softmaxGradOf?: MatmulSoftmaxGrad;
  /**
   * The product may run on tensor cores (kernels/matmul-tc.ts: f16 operands rounded from f32 as
   * they are staged, f32 accumulation) where the device has them and tuning.tensorCores is on, if
   * it suits those kernels (unbatched, A stored [M, K], vec4-aligned, no triangle or softmaxGradOf);
   * through matmulWithScratch only. What A holds: 'values' of ordinary magnitude (activations) are
   * rounded as they are; 'gradients' have each row scaled by a power of two first (a row-scale pass),
   * so magnitudes far below f16's normal range keep their precision. B is rounded as it is (a
   * weight). Unset: always f32.
   */
  tensorCores?: TensorCoreOperand;
  /**
   * With tensorCores: A's row scales already made (kernels/matmul-tc.ts rowScales' output, [M], for
   * these rows of A or any superset of their columns), so the product runs no row-scale pass of its
   * own. The LM head's backward takes them from the cross-entropy, which has the gradient's row
   * maxima at hand (kernels/cross-entropy.ts gradMax).
   */
  rowScales?: Tensor;
}

/** MatmulArgs.softmaxGradOf: the forward's probabilities and the row terms. */
export interface MatmulSoftmaxGrad {
  probs: Tensor;
  rowTerms: Tensor;
}

/** MatmulArgs.geluGradOf: where the pre-activations lie. */
export interface MatmulGeluGrad {
  pre: Tensor;
  ld?: number;
  offset?: number;
}

export type MatmulTriangle = 'lowerA' | 'upperA' | 'lowerC';
/** The shaders' TRIANGLE override for each (0, the default, is the plain product). */
const TRIANGLE_CODE: Record<MatmulTriangle, number> = { lowerA: 1, upperA: 2, lowerC: 3 };

/** Output tile edge of one workgroup of shaders/matmul.wgsl (must match TILE there). */
export const MATMUL_TILE = 64;

/** The tiled kernels: output tile rows x columns per workgroup (all 256 threads), and their WGSL. */
export const MATMUL_VARIANTS = {
  '64x64': { rows: 64, cols: 64, code: code64 },
  '128x128': { rows: 128, cols: 128, code: code128x128 },
  '128x64': { rows: 128, cols: 64, code: code128x64 },
  '64x128': { rows: 64, cols: 128, code: code64x128 },
  // 64x64 with double-buffered staging (one barrier per K tile)
  'db64x64': { rows: 64, cols: 64, code: codeDb64x64 },
} as const;
export type MatmulVariant = keyof typeof MATMUL_VARIANTS;

/**
 * The same tilings for vec4-aligned operands (vec4Aligned): vec4 loads, the inner loop unrolled,
 * padded staging (scripts/gen-matmul-wide.mjs VEC4_VARIANTS); with their workgroup memory in bytes.
 * The double-buffered 64x64 maps to the plain one.
 */
export const VEC4_MATMUL_VARIANTS: Record<MatmulVariant, { code: string; codeC4: string | null; sharedBytes: number }> = {
  '128x128': vec4Variant(codeVec128x128, null, 128, 128),
  '128x64': vec4Variant(codeVec128x64, codeVec128x64C4Kernel, 128, 64),
  '64x128': vec4Variant(codeVec64x128, null, 64, 128),
  '64x64': vec4Variant(codeVec64x64, codeVec64x64C4Kernel, 64, 64),
  'db64x64': vec4Variant(codeVec64x64, codeVec64x64C4Kernel, 64, 64),
};

/**
 * Its workgroup memory: K tiles of 16 rows of rows/4 + 1 and cols/4 + 1 vec4s (one of padding
 * each). codeC4: the same kernel with C bound as vec4s (scripts/gen-matmul-wide.mjs STORE_ROW_C4,
 * VEC4_C4_VARIANTS: the tilings with 4 outputs a row per thread), for a C whose rows are whole
 * vec4s (cInVec4s); null for the others, where it was slower.
 */
function vec4Variant(code: string, c4Kernel: string | null, rows: number, cols: number): { code: string; codeC4: string | null; sharedBytes: number } {
  return { code, codeC4: c4Kernel === null ? null : withGelu(c4Kernel), sharedBytes: 16 * (rows / 4 + 1 + cols / 4 + 1) * 16 };
}

/**
 * Whether a vec4 kernel with a C4 form takes C as vec4s (tuning.vec4C): N, ldc,
 * offC and C's batch strides multiples of 4, so each thread's 4 consecutive outputs are one vec4
 * of C, wholly inside C's columns or wholly past them.
 */
export function cInVec4s(gpu: Gpu, N: number, ldc: number, offC: number, strideC: readonly number[]): boolean {
  return gpu.tuning.vec4C && multiplesOf4(N, ldc, offC, ...strideC);
}

/** Whether every value is a multiple of 4 elements (a vec4 boundary). */
const multiplesOf4 = (...v: number[]): boolean => v.every((x) => x % 4 === 0);

/**
 * Whether the vec4 kernels can read A and B: each operand's contiguous dimension (k for A [M, K] and
 * B [N, K]; m for A stored [K, M]; n for B [K, N]) and every offset, row stride and batch stride
 * a multiple of 4 elements, so every vec4 read lies inside one row.
 */
export function vec4Aligned(p: {
  M: number; N: number; K: number; transA: boolean; transB: boolean; lda: number; ldb: number;
  offA: number; offB: number; batch: MatmulBatch;
}): boolean {
  return multiplesOf4(p.transA ? p.M : p.K, p.transB ? p.K : p.N, p.lda, p.ldb, p.offA, p.offB, ...p.batch.strideA, ...p.batch.strideB);
}

/**
 * The tiled kernel for an M x N output, `batch` times. Larger tiles do more arithmetic per staged
 * element but make fewer workgroups, and a GPU whose last wave of workgroups is short idles. On
 * the H100 (bench/matmul-shapes.ts) 128x128 wins from ~1000 workgroups (LM head, 4096^2), the
 * 128x64 / 64x128 halves from ~300 (GPT-2's c_attn and c_fc: +10-25%), and 64x64 below that (outputs
 * 768 or 576 wide at 2048 rows, and attention's products over 64-wide heads), double-buffered
 * when K is long enough for it to pay (+2-5%). A tile edge of 128 is never taken for an output
 * dimension of 64 or less (half its rows or columns would only be padding): attention's P V, dV,
 * dQ and dK (N = D = 64, K = T, B stored [K, N]) went to vec4 64x128 and now go to 128x64 (or
 * double-buffered 64x64 below its threshold: GPT-2's 8 x 256 takes that); with the causal triangles
 * GPT-2's attention products went 4.20 -> 3.17 ms per step on the H100. gpu.tuning.matmul forces one.
 */
export function matmulVariant(gpu: Gpu, M: number, N: number, K: number, batch: number, vec4?: { transB: boolean }): MatmulVariant {
  const forced = gpu.tuning.matmul;
  if (forced !== 'auto') return forced;
  // with a short K (attention's head width) the larger tiles' longer start does not pay
  if (K < 256) return '64x64';
  const count = (v: MatmulVariant) => Math.ceil(M / MATMUL_VARIANTS[v].rows) * Math.ceil(N / MATMUL_VARIANTS[v].cols) * batch;
  // a 128 edge over an output dimension <= 64: the tile's other half is all padding
  const fits = (v: MatmulVariant) => (MATMUL_VARIANTS[v].rows <= 64 || M > 64) && (MATMUL_VARIANTS[v].cols <= 64 || N > 64);
  if (fits('128x128') && count('128x128') >= gpu.tuning.wideMatmulMinWorkgroups) return '128x128';
  // 128x64 (M >= 128) for scalar and vec4 kernels alike: scalar, at every measured shape; vec4 with
  // today's kernels too where B is stored [K, N] (bench/matmul-shapes.ts on the H100: GPT-2's c_attn
  // forward 34.0 against 30.2 TFLOP/s for 64x128, c_fc 38.4 against 34.2, SmolLM2's down_proj dx
  // 36.3 against 31.5), though 64x128 won there in session 4 (tuning.vec4HalfTile 'byLayout')
  const preferred: MatmulVariant = M < 128 || (vec4 && !vec4.transB && gpu.tuning.vec4HalfTile === 'byLayout') ? '64x128' : '128x64';
  const other: MatmulVariant = preferred === '64x128' ? '128x64' : '64x128';
  const half = fits(preferred) ? preferred : fits(other) ? other : null;
  return half && count(half) >= gpu.tuning.halfWideMatmulMinWorkgroups ? half : 'db64x64';
}

/** Largest small dimension shaders/matmul_skinny.wgsl takes (MAX_S there). */
export const SKINNY_MAX = 16;

/** Whether M x N x K goes to the skinny kernel: one output dimension <= 16 with a long K, unbatched, no bias. */
export function usesSkinnyMatmul(gpu: Gpu, M: number, N: number, K: number, batchCount: number, hasBias: boolean): boolean {
  if (!gpu.tuning.skinnyMatmul || batchCount !== 1 || hasBias) return false;
  return Math.min(M, N) <= SKINNY_MAX && K >= gpu.tuning.skinnyMatmulMinK;
}

const U32_LIMIT = 2 ** 32;
const maxDimOf = (gpu: Gpu) => gpu.info.limits.maxComputeWorkgroupsPerDimension;

/**
 * Workgroup grid for `tilesN x tilesM x batch` tiles: exactly that when each fits in one
 * dimension, otherwise the flat tile count folded over x, y, z (the shader skips the padding).
 */
export function matmulWorkgroups(tilesN: number, tilesM: number, batch: number, maxPerDim: number): [number, number, number] {
  if (tilesN <= maxPerDim && tilesM <= maxPerDim && batch <= maxPerDim) return [tilesN, tilesM, batch];
  const total = tilesN * tilesM * batch;
  const x = Math.min(total, maxPerDim);
  const rest = Math.ceil(total / x);
  const y = Math.min(rest, maxPerDim);
  const z = Math.ceil(rest / y);
  if (z > maxPerDim) throw new Error(`matmul: ${total} workgroups do not fit in a ${maxPerDim}^3 grid`);
  return [x, y, z];
}

/** A 1-D count of workgroups folded over x, y, z (the shader skips block indices past the count). */
function foldGrid(count: number, maxPerDim: number): [number, number, number] {
  const x = Math.min(count, maxPerDim);
  const y = Math.min(Math.ceil(count / x), maxPerDim);
  const z = Math.ceil(count / (x * y));
  if (z > maxPerDim) throw new Error(`${count} workgroups do not fit in a ${maxPerDim}^3 grid`);
  return [x, y, z];
}

/**
 * The vec4 kernels' CHECKED override: off (no load checked) when the output is whole tiles and K
 * whole K tiles of 16, so no load can leave the matrix; only then, so other shapes keep their
 * pipelines. Its checks slowed the K loop by a quarter even where never taken (scripts/gen-matmul-wide.mjs).
 */
function uncheckedLoads(M: number, N: number, K: number, rows: number, cols: number): Record<string, number> {
  return M % rows === 0 && N % cols === 0 && K % 16 === 0 ? { CHECKED: 0 } : {};
}

/**
 * Checks MatmulArgs.geluA / geluGradOf for an M x N product: the overrides their kernels take
 * (none without them, so the plain products keep their pipelines) and the epilogue's uniforms.
 */
function geluOptions(args: MatmulArgs, M: number, N: number, batchCount: number, fail: (msg: string) => never): { constants: Record<string, number>; pre: Tensor | null; offPre: number; ldPre: number } {
  const constants: Record<string, number> = {};
  if (args.geluA !== undefined) {
    if (args.geluA !== 'tanh') fail(`geluA must be 'tanh' (got ${String(args.geluA)})`);
    constants.GELU_A = 1;
  }
  const g = args.geluGradOf;
  if (!g) return { constants, pre: null, offPre: 0, ldPre: 0 };
  const { pre } = g;
  const ldPre = g.ld ?? N, offPre = g.offset ?? 0;
  if (pre.dtype !== 'f32') fail(`geluGradOf.pre (${pre.label}) is ${pre.dtype}, expected f32`);
  if (pre.buffer === args.c.buffer) fail('geluGradOf.pre must not alias c');
  if (batchCount !== 1) fail('geluGradOf takes unbatched products');
  if (!Number.isInteger(ldPre) || ldPre < N || ldPre >= U32_LIMIT) fail(`geluGradOf.ld = ${ldPre} must be an integer >= N = ${N}`);
  if (!Number.isInteger(offPre) || offPre < 0 || offPre >= U32_LIMIT) fail(`geluGradOf.offset = ${offPre} must be a non-negative integer`);
  const last = offPre + (M - 1) * ldPre + (N - 1);
  if (last >= pre.size) fail(`geluGradOf.pre (${pre.label}, ${pre.size} elements) would be read at index ${last}`);
  constants.GELU_GRAD = 1;
  return { constants, pre, offPre, ldPre };
}

/**
 * Checks MatmulArgs.softmaxGradOf: the override (none without it) and the tensors to bind in the
 * bias and pre slots. `lastC` is the largest index of C (and so of probs) the product touches.
 */
function softmaxGradOptions(args: MatmulArgs, M: number, batchCount: number, lastC: number, fail: (msg: string) => never): { constants: Record<string, number>; probs: Tensor; rowTerms: Tensor } | null {
  const g = args.softmaxGradOf;
  if (!g) return null;
  const { probs, rowTerms } = g;
  if (args.accumulate || args.bias || args.geluA !== undefined || args.geluGradOf) fail('softmaxGradOf takes no accumulate, bias or GELU');
  for (const [name, t] of [['probs', probs], ['rowTerms', rowTerms]] as const) {
    if (t.dtype !== 'f32') fail(`softmaxGradOf.${name} (${t.label}) is ${t.dtype}, expected f32`);
    if (t.buffer === args.c.buffer) fail(`softmaxGradOf.${name} must not alias c`);
  }
  if (lastC >= probs.size) fail(`softmaxGradOf.probs (${probs.label}, ${probs.size} elements) would be read at index ${lastC}`);
  if (batchCount * M > rowTerms.size) fail(`softmaxGradOf.rowTerms (${rowTerms.label}) has ${rowTerms.size} elements, need batch * M = ${batchCount * M}`);
  return { constants: { SOFTMAX_GRAD: 1 }, probs, rowTerms };
}

/** Binds C = alpha * op(A) @ op(B) (+ C) (+ bias) (* gelu'(pre)). Throws if any index would leave its buffer. */
export function matmul(gpu: Gpu, args: MatmulArgs): Dispatch {
  return bindMatmul(gpu, args, null)[0] as Dispatch;
}

/**
 * matmul's checks and bindings; with `streamK`, the stream-K pair (matmulStreamK) instead of one
 * dispatch; with `tensorCores`, the tensor-core ops (kernels/matmul-tc.ts) where args.tensorCores
 * asks for them and the product suits them (else null), cut in K slices into `tcScratch` where
 * tensorCoreSplitK says so and it holds them.
 */
function bindMatmul(gpu: Gpu, args: MatmulArgs, streamK: { plan: StreamKPlan; scratch: Tensor } | null): Op[];
function bindMatmul(gpu: Gpu, args: MatmulArgs, streamK: null, tensorCores: true, tcScratch: Tensor | null): Op[] | null;
function bindMatmul(gpu: Gpu, args: MatmulArgs, streamK: { plan: StreamKPlan; scratch: Tensor } | null, tensorCores = false, tcScratch: Tensor | null = null): Op[] | null {
  const { a, b, c, M, N, K, bias } = args;
  const label = args.label ?? `matmul(${c.label})`;
  const fail = (msg: string): never => {
    throw new Error(`${label}: ${msg}`);
  };
  const isCount = (v: number) => Number.isInteger(v) && v > 0;
  const isIndex = (v: number) => Number.isInteger(v) && v >= 0 && v < U32_LIMIT;

  if (!isCount(M) || !isCount(N) || !isCount(K)) fail(`M, N, K must be positive integers (got ${M}, ${N}, ${K})`);
  for (const [name, t] of [['a', a], ['b', b], ['c', c], ['bias', bias]] as const) {
    // B may be a frozen weight kept in f16 (every kernel below reads it through kernels/packed-f16.ts)
    if (t && t.dtype !== 'f32' && !(t === b && t.dtype === 'f16')) fail(`${name} (${t.label}) is ${t.dtype}, expected f32${t === b ? ' or f16' : ''}`);
  }
  const halfB = b.dtype === 'f16';
  /** A kernel's WGSL, reading `b` (or the binding B is bound to) from halves where B is f16. */
  const forB = (code: string, binding = 'b') => {
    if (!halfB) return code;
    // the vec4 and stream-K kernels keep B's words in their prefetch registers, the others widen as they load
    return binding === 'b' && hasStagedB(code) ? withStagedHalfB(code) : withPackedF16(code, binding);
  };
  if (c.buffer === a.buffer || c.buffer === b.buffer) fail('c must not alias a or b');
  if (bias) {
    if (bias.buffer === c.buffer) fail('bias must not alias c');
    if (bias.size !== N) fail(`bias (${bias.label}) has ${bias.size} elements, expected N = ${N}`);
  }
  const alpha = args.alpha ?? 1;
  if (!Number.isFinite(alpha)) fail(`alpha must be finite (got ${alpha})`);
  const triangle = args.triangle;
  if (triangle !== undefined) {
    if (!(triangle in TRIANGLE_CODE)) fail(`triangle must be 'lowerA', 'upperA' or 'lowerC' (got ${String(triangle)})`);
    if (triangle === 'lowerC' ? M !== N : M !== K) {
      fail(`triangle '${triangle}' needs a square ${triangle === 'lowerC' ? 'C (M == N)' : 'op(A) (M == K)'} (got M = ${M}, N = ${N}, K = ${K})`);
    }
  }

  const transA = args.transA ?? false;
  const transB = args.transB ?? false;
  // Stored shapes: A is [M, K] or [K, M]; B is [K, N] or [N, K]; C is [M, N].
  const rowsA = transA ? K : M, colsA = transA ? M : K;
  const rowsB = transB ? N : K, colsB = transB ? K : N;
  const lda = args.lda ?? colsA, ldb = args.ldb ?? colsB, ldc = args.ldc ?? N;
  const offA = args.offsetA ?? 0, offB = args.offsetB ?? 0, offC = args.offsetC ?? 0;
  if (!isIndex(lda) || lda < colsA) fail(`lda = ${lda} must be an integer >= ${colsA} (row length of stored A)`);
  if (!isIndex(ldb) || ldb < colsB) fail(`ldb = ${ldb} must be an integer >= ${colsB} (row length of stored B)`);
  if (!isIndex(ldc) || ldc < N) fail(`ldc = ${ldc} must be an integer >= N = ${N}`);
  for (const [name, v] of [['offsetA', offA], ['offsetB', offB], ['offsetC', offC]] as const) {
    if (!isIndex(v)) fail(`${name} = ${v} must be a non-negative integer`);
  }

  const batch: MatmulBatch = args.batch ?? { outer: 1, inner: 1, strideA: [0, 0], strideB: [0, 0], strideC: [0, 0] };
  if (!isCount(batch.outer) || !isCount(batch.inner)) fail(`batch outer/inner must be positive integers (got ${batch.outer}, ${batch.inner})`);
  for (const [name, s] of [['strideA', batch.strideA], ['strideB', batch.strideB], ['strideC', batch.strideC]] as const) {
    if (s.length !== 2 || !isIndex(s[0]) || !isIndex(s[1])) fail(`batch.${name} = [${s}] must be two non-negative integers`);
  }
  const groupB = batch.groupB ?? 1;
  if (!isCount(groupB) || groupB >= U32_LIMIT) fail(`batch.groupB must be a positive integer (got ${groupB})`);
  const batchCount = batch.outer * batch.inner;

  // Largest element index each operand touches, over all batch entries (the last inner index of B: its group's).
  const lastIndex = (off: number, s: [number, number], rows: number, cols: number, ld: number, lastInner = batch.inner - 1) =>
    off + (batch.outer - 1) * s[0] + lastInner * s[1] + (rows - 1) * ld + (cols - 1);
  const check = (name: string, t: Tensor, last: number) => {
    if (last >= t.size) fail(`${name} (${t.label}, ${t.size} elements) would be read/written at index ${last}`);
  };
  check('a', a, lastIndex(offA, batch.strideA, rowsA, colsA, lda));
  check('b', b, lastIndex(offB, batch.strideB, rowsB, colsB, ldb, Math.floor((batch.inner - 1) / groupB)));
  check('c', c, lastIndex(offC, batch.strideC, M, N, ldc));
  const gelu = geluOptions(args, M, N, batchCount, fail);
  const softmaxGrad = softmaxGradOptions(args, M, batchCount, lastIndex(offC, batch.strideC, M, N, ldc), fail);
  const fused = Object.keys(gelu.constants).length > 0 || softmaxGrad !== null;

  // Element steps of A(m, k), B(k, n) and C(m, n) along each index.
  const sAm = transA ? 1 : lda, sAk = transA ? lda : 1;
  const sBn = transB ? ldb : 1, sBk = transB ? 1 : ldb;

  if (tensorCores) {
    if (!args.tensorCores || batchCount !== 1 || triangle || softmaxGrad || transA) return null;
    const product = { M, N, K, transB, lda, ldb, offA, offB, geluA: args.geluA === 'tanh' };
    const tile = tensorCoreTile(gpu, product);
    if (!tile) return null;
    const binding = {
      label, a, b, c, bias: bias ?? null, pre: gelu.pre, offPre: gelu.offPre, ldPre: gelu.ldPre, geluA: args.geluA === 'tanh',
      offC, ldc, alpha, accumulate: args.accumulate ?? false, operand: args.tensorCores, rowScale: args.rowScales ?? null,
    };
    // too few tiles for the GPU and a long K: slices of K into the scratch, then their sum with the epilogue
    const S = tcScratch ? tensorCoreSplitK(gpu, product, tile) : 1;
    const slices = tensorCoreSlices(product, tile, S);
    const parts = tcScratch;
    if (slices > 1 && parts && parts.size >= slices * M * N && ![a, b, c, bias, gelu.pre].some((t) => t?.buffer === parts.buffer)) {
      return [
        ...matmulTensorCore(gpu, product, tile, binding, { S, parts }),
        sumSlices(gpu, {
          label: `${label}[tensor cores sum]`, parts, S: slices, M, N, c, offC, ldc, alpha, accumulate: args.accumulate ?? false,
          bias, geluGradPre: gelu.pre ? { pre: gelu.pre, offPre: gelu.offPre, ldPre: gelu.ldPre } : undefined,
        }),
      ];
    }
    return matmulTensorCore(gpu, product, tile, binding);
  }

  // (the skinny kernel has no triangles nor fused GELU or softmax: those take the tiled kernels, whatever the shape)
  if (!triangle && !fused && usesSkinnyMatmul(gpu, M, N, K, batchCount, Boolean(bias))) {
    // C[rows, S] = A'[rows, K] B'[K, S]: as given when N is small, transposed (C^T = B^T A^T) when M is.
    const smallN = N <= SKINNY_MAX;
    const rows = smallN ? M : N;
    const S = smallN ? N : M;
    const p = smallN
      ? { bufA: a, bufB: b, offA, offB, sArow: sAm, sAk, sBk, sBs: sBn, sCrow: ldc, sCs: 1 }
      : { bufA: b, bufB: a, offA: offB, offB: offA, sArow: sBn, sAk: sBk, sBk: sAk, sBs: sAm, sCrow: 1, sCs: ldc };
    const rowFast = p.sArow === 1;
    // rows per workgroup (ROWS there): A' contiguous along k reads whole k-runs per row, so fewer
    // rows (more workgroups) cost nothing; contiguous along rows, neighbouring threads need neighbouring rows
    const ROWS = rowFast ? gpu.tuning.skinnyRowsRowFast : gpu.tuning.skinnyRows;
    if (![4, 8, 16].includes(ROWS)) fail(`skinny rows per workgroup must be 4, 8 or 16 (got ${ROWS})`);
    const blocks = Math.ceil(rows / ROWS);
    const params = [rows, K, p.offA, p.offB, offC, p.sArow, p.sAk, p.sBk, p.sBs, p.sCrow, p.sCs, rowFast ? 1 : 0, args.accumulate ? 1 : 0, f32(alpha)];
    return [bindDispatch(gpu, { label, code: forB(codeSkinny, smallN ? 'b' : 'a'), constants: { S, ROWS }, params, buffers: [p.bufA, p.bufB, c], workgroups: foldGrid(blocks, maxDimOf(gpu)) })];
  }

  const aligned = gpu.tuning.vec4Matmul && vec4Aligned({ M, N, K, transA, transB, lda, ldb, offA, offB, batch });
  // The Params of the tiled kernels (shaders/matmul.wgsl; the generated ones, stream-K's with its
  // cut appended) for a grid of tilesN x tilesM output tiles.
  const tiledParams = (tilesN: number, tilesM: number) => [
    M, N, K, tilesN, tilesM, batchCount, batch.inner,
    offA, offB, offC,
    sAm, sAk, // A(m, k) steps along m, k
    sBn, sBk, // B(k, n) steps along n, k
    ldc,
    batch.strideA[0], batch.strideA[1],
    batch.strideB[0], batch.strideB[1],
    batch.strideC[0], batch.strideC[1],
    transA ? 0 : 1, // A contiguous along k
    transB ? 1 : 0, // B contiguous along k
    args.accumulate ? 1 : 0,
    bias ? 1 : 0,
    f32(alpha),
    gelu.offPre, gelu.ldPre,
    groupB,
  ];
  if (streamK) {
    const { plan, scratch } = streamK;
    if (batchCount !== 1 || triangle || !aligned || softmaxGrad) fail('stream-K takes unbatched, vec4-aligned products without a triangle or softmaxGradOf');
    const kernel = STREAMK_KERNELS[plan.tile];
    if (plan.tilesM !== Math.ceil(M / kernel.rows) || plan.tilesN !== Math.ceil(N / kernel.cols) || plan.kTiles !== Math.ceil(K / kernel.kTile)) fail('the stream-K plan is for another shape');
    if (scratch.size < streamKScratchElements(plan)) fail(`stream-K over ${plan.groups} workgroups needs a scratch of ${streamKScratchElements(plan)} elements`);
    if ([a, b, c, bias, gelu.pre].some((t) => t?.buffer === scratch.buffer)) fail('the stream-K scratch must not alias an operand');
    const params = [...tiledParams(plan.tilesN, plan.tilesM), plan.groups, plan.itersPerGroup, plan.kTiles];
    const constants = { K_FAST_A: transA ? 0 : 1, K_FAST_B: transB ? 1 : 0, ...uncheckedLoads(M, N, K, kernel.rows, kernel.cols), ...gelu.constants };
    const maxDim = maxDimOf(gpu);
    const product = bindDispatch(gpu, { label: `${label}[streamK]`, code: forB(kernel.code), constants, params, buffers: [a, b, c, bias ?? a, gelu.pre ?? a, scratch], workgroups: foldGrid(plan.groups, maxDim) });
    if (!plan.splitsTiles) return [product];
    // C's rows whole vec4s (and pre's, under GELU_GRAD): the fix-up's vec4 form
    const fixupVec4 = gpu.tuning.streamKVec4Fixup && multiplesOf4(N, ldc, offC) && (!gelu.pre || multiplesOf4(gelu.ldPre, gelu.offPre));
    return [
      product,
      bindDispatch(gpu, {
        label: `${label}[streamK fixup]`, code: fixupVec4 ? codeStreamKFixupVec4 : codeStreamKFixup, constants: { TILE_M: kernel.rows, TILE_N: kernel.cols, ...(gelu.pre ? { GELU_GRAD: 1 } : {}) },
        params: [M, N, plan.tilesN, plan.tilesM * plan.tilesN, plan.kTiles, plan.itersPerGroup, offC, ldc, args.accumulate ? 1 : 0, bias ? 1 : 0, f32(alpha), gelu.offPre, gelu.ldPre],
        buffers: [scratch, bias ?? scratch, c, gelu.pre ?? scratch], workgroups: foldGrid(plan.tilesM * plan.tilesN * ((kernel.rows * kernel.cols) / 1024), maxDim),
      }),
    ];
  }
  const variant = matmulVariant(gpu, M, N, K, batchCount, aligned ? { transB } : undefined);
  const { rows, cols } = MATMUL_VARIANTS[variant];
  const vec4 = VEC4_MATMUL_VARIANTS[variant];
  const useVec4 = aligned && vec4.sharedBytes <= gpu.info.limits.maxComputeWorkgroupStorageSize;
  const tilesN = Math.ceil(N / cols);
  const tilesM = Math.ceil(M / rows);
  const maxDim = maxDimOf(gpu);
  const workgroups = matmulWorkgroups(tilesN, tilesM, batchCount, maxDim);
  if (workgroups[0] * workgroups[1] * workgroups[2] >= U32_LIMIT) fail('too many workgroups for a u32 index');

  const params = tiledParams(tilesN, tilesM);
  // TRIANGLE, GELU_A, GELU_GRAD and SOFTMAX_GRAD only when set: the plain products keep their pipelines (and the pipeline cache's keys)
  const tri: Record<string, number> = { ...(triangle ? { TRIANGLE: TRIANGLE_CODE[triangle] } : {}), ...gelu.constants, ...softmaxGrad?.constants };
  // Without a bias (or pre-activations), `a` fills its binding (read-only twice is allowed; the shader never reads it).
  // softmaxGradOf's row terms take the bias slot and its probabilities the pre slot.
  const buffers = softmaxGrad ? [a, b, c, softmaxGrad.rowTerms, softmaxGrad.probs] : [a, b, c, bias ?? a, gelu.pre ?? a];
  if (useVec4) {
    const constants = { K_FAST_A: transA ? 0 : 1, K_FAST_B: transB ? 1 : 0, ...uncheckedLoads(M, N, K, rows, cols), ...tri };
    const code = vec4.codeC4 !== null && cInVec4s(gpu, N, ldc, offC, batch.strideC) ? vec4.codeC4 : vec4.code;
    return [bindDispatch(gpu, { label, code: forB(code), constants, params, buffers, workgroups })];
  }
  const constants = triangle || fused ? tri : undefined;
  return [bindDispatch(gpu, { label, code: forB(MATMUL_VARIANTS[variant].code), constants, params, buffers, workgroups })];
}

// ---- Stream-K -----------------------------------------------------------------------------------
// A 2048-row product makes 96-384 output tiles of 128x128, a few per SM of a large GPU (the H100
// has 132): whole tiles per workgroup leave SMs idle at the end, or need smaller tiles (less work
// per staged element) or split-K (a batched product into slices, then their sum). Stream-K gives
// each of one workgroup per SM an equal share of all the tiles' K iterations
// (shaders/matmul_streamk_128x128.wgsl, 128x128 tiles whatever the shape); the tiles split between
// workgroups are summed by a second pass (shaders/matmul_streamk_fixup.wgsl) from a scratch of two
// tiles per workgroup. GPT-2's step on the H100: 36.1-36.7 ms without it, 33.1-33.4 with it
// (bench/sweep-tuning.sh; gpu.ts KernelTuning.streamK).

/**
 * The stream-K kernels (scripts/gen-matmul-wide.mjs STREAMK_VARIANTS): output tile, K tile, WGSL
 * and workgroup memory in bytes (K tiles of tile/4 + 1 vec4s per operand). 128x64 serves outputs
 * that are whole 128x64 tiles but not whole 128x128 ones (SmolLM2's 576 columns; streamKPlan).
 * 256x128 tiles were slower (ibid.).
 */
export const STREAMK_KERNELS = {
  '128x128': { rows: 128, cols: 128, kTile: 16, code: withGelu(codeStreamK128x128Kernel), sharedBytes: 16 * (33 + 33) * 16 },
  '128x64': { rows: 128, cols: 64, kTile: 16, code: withGelu(codeStreamK128x64Kernel), sharedBytes: 16 * (33 + 17) * 16 },
} as const;
export type StreamKTile = keyof typeof STREAMK_KERNELS;

/** How a stream-K product is cut: `groups` workgroups, `itersPerGroup` K-tile iterations each. */
export interface StreamKPlan {
  tile: StreamKTile;
  tilesM: number;
  tilesN: number;
  /** K tiles per output tile. */
  kTiles: number;
  groups: number;
  itersPerGroup: number;
  /** Whether some tile is split between workgroups (itersPerGroup not whole tiles): the fix-up pass runs. */
  splitsTiles: boolean;
}

/**
 * The stream-K cut of an unbatched M x N x K product, or null where the plain or split-K kernels
 * take it: stream-K off or a kernel forced (tuning.matmul), K below tuning.streamKMinK, edge tiles
 * under tuning.streamKWholeTiles, or at least tuning.streamKMaxTiles tiles (enough waves that the
 * last one's idling costs little). An output of whole 128x64 tiles but not whole 128x128 ones is cut
 * in 128x64 tiles under the streamKHalfTile* limits and workgroup count (tuning.streamKHalfTiles).
 * Whether the operands are vec4-aligned is the caller's to check (matmulWithScratch).
 */
export function streamKPlan(gpu: Gpu, M: number, N: number, K: number): StreamKPlan | null {
  const t = gpu.tuning;
  if (!t.streamK || !t.vec4Matmul || t.matmul !== 'auto') return null;
  // 128x64 tiles where they cover the output exactly and 128x128 ones do not, with their own limits
  const whole = (v: StreamKTile) => M % STREAMK_KERNELS[v].rows === 0 && N % STREAMK_KERNELS[v].cols === 0;
  const half = t.streamKHalfTiles && !whole('128x128') && whole('128x64');
  const tile: StreamKTile = half ? '128x64' : '128x128', kernel = STREAMK_KERNELS[tile];
  const limits = half
    ? { minK: t.streamKHalfTileMinK, maxTiles: t.streamKHalfTileMaxTiles, workgroups: t.streamKHalfTileWorkgroups }
    : { minK: t.streamKMinK, maxTiles: t.streamKMaxTiles, workgroups: t.streamKWorkgroups };
  if (K < limits.minK) return null;
  if (kernel.sharedBytes > gpu.info.limits.maxComputeWorkgroupStorageSize) return null;
  if (t.streamKWholeTiles && (M % kernel.rows !== 0 || N % kernel.cols !== 0)) return null;
  const tilesM = Math.ceil(M / kernel.rows), tilesN = Math.ceil(N / kernel.cols);
  if (tilesM * tilesN >= limits.maxTiles) return null;
  const kTiles = Math.ceil(K / kernel.kTile);
  const tiles = tilesM * tilesN, total = tiles * kTiles, G = Math.max(1, limits.workgroups);
  let itersPerGroup = Math.max(Math.ceil(total / G), Math.min(kTiles, t.streamKMinIters));
  // whole tiles per workgroup when that makes the busiest workgroup at most streamKWholeTileSlack
  // longer: no tile is split, so no pieces and no fix-up pass
  const wholeTiles = Math.ceil(tiles / G) * kTiles;
  if (wholeTiles <= itersPerGroup * (1 + t.streamKWholeTileSlack)) itersPerGroup = Math.max(itersPerGroup, wholeTiles);
  const groups = Math.ceil(total / itersPerGroup);
  if (groups * 2 * kernel.rows * kernel.cols >= U32_LIMIT / 4) return null;
  return { tile, tilesM, tilesN, kTiles, groups, itersPerGroup, splitsTiles: itersPerGroup % kTiles !== 0 };
}

/** Elements of the scratch a stream-K product needs: two output tiles per workgroup. */
export function streamKScratchElements(plan: StreamKPlan): number {
  const kernel = STREAMK_KERNELS[plan.tile];
  return 2 * plan.groups * kernel.rows * kernel.cols;
}

/**
 * C = alpha * op(A) @ op(B) (+ C) (+ bias) (* gelu'(pre)) by stream-K as `plan` cuts it (two
 * dispatches: the product, then the fix-up of split tiles), `scratch` holding at least
 * streamKScratchElements(plan) elements and aliasing nothing else. Unbatched, vec4-aligned
 * (vec4Aligned), no triangle.
 */
export function matmulStreamK(gpu: Gpu, args: MatmulArgs, plan: StreamKPlan, scratch: Tensor): Op[] {
  return bindMatmul(gpu, args, { plan, scratch });
}

/** args over the first K4 terms of its sum (explicit row strides, so the layout stays the one of K). */
function kPrefix(args: MatmulArgs, K4: number): MatmulArgs & { lda: number; ldb: number } {
  const transA = args.transA ?? false, transB = args.transB ?? false;
  const lda = args.lda ?? (transA ? args.M : args.K), ldb = args.ldb ?? (transB ? args.K : args.N);
  return { ...args, K: K4, lda, ldb };
}

/** The plain product of args' terms from K4 on, added into C (no bias: the first part has it). */
function kRest(gpu: Gpu, args: MatmulArgs, K4: number, what: string): Dispatch {
  const transA = args.transA ?? false, transB = args.transB ?? false;
  const { lda, ldb } = kPrefix(args, K4);
  const label = args.label ?? `matmul(${args.c.label})`;
  return matmul(gpu, {
    ...args, label: `${label}[${what}]`, K: args.K - K4, lda, ldb, bias: undefined, accumulate: true, tensorCores: undefined,
    offsetA: (args.offsetA ?? 0) + K4 * (transA ? lda : 1), offsetB: (args.offsetB ?? 0) + K4 * (transB ? 1 : ldb),
  });
}

/** Whether args' operands are vec4-aligned as laid out (vec4Aligned with matmul's defaults), over their first K terms. */
function argsVec4Aligned(args: MatmulArgs, K = args.K): boolean {
  const transA = args.transA ?? false, transB = args.transB ?? false;
  const lda = args.lda ?? (transA ? args.M : args.K), ldb = args.ldb ?? (transB ? args.K : args.N);
  const batch = args.batch ?? { outer: 1, inner: 1, strideA: [0, 0], strideB: [0, 0], strideC: [0, 0] };
  return vec4Aligned({ M: args.M, N: args.N, K, transA, transB, lda, ldb, offA: args.offsetA ?? 0, offB: args.offsetB ?? 0, batch });
}

/**
 * Elements of scratch a product through matmulWithScratch may need: its split-K slices, its
 * stream-K tiles or its tensor-core K slices, whichever is largest (which one runs depends on the
 * operands' alignment and the device).
 */
export function productScratchElements(gpu: Gpu, M: number, N: number, K: number): number {
  const plan = streamKPlan(gpu, M, N, K - (K % 4));
  // the tensor-core products' K slices, in whichever tile the layout picks
  const K4 = K - (K % 4);
  const tcSlices = Math.max(1, ...[true, false].flatMap((transB) => [true, false].map((geluA) => {
    const p = { M, N, K: K4, transB, lda: K4, ldb: transB ? K4 : N - (N % 4), offA: 0, offB: 0, geluA };
    const tile = K4 > 0 ? tensorCoreTile(gpu, p) : null;
    return tile ? tensorCoreSlices(p, tile, tensorCoreSplitK(gpu, p, tile)) : 1;
  })));
  return Math.max(splitKScratchElements(M, N, splitKFactor(gpu, M, N, K)), plan ? streamKScratchElements(plan) : 0, tcSlices > 1 ? tcSlices * M * N : 0);
}

/**
 * A product with a scratch tensor at hand (a program's; null: none): stream-K where streamKPlan
 * cuts it, the operands are vec4-aligned and the scratch holds the plan's tiles, else split-K where
 * splitKFactor splits it and the scratch holds the slices, else the plain kernels (also for
 * batched and triangular products). A K that is not a multiple of 4 in operands aligned otherwise
 * (the LM head's backward over GPT-2's 50,257 padded logits) takes stream-K over its first
 * 4 * floor(K / 4) terms and the plain kernels for the rest, added in (not under geluGradOf, whose
 * factor applies to the whole sum). A scratch of productScratchElements(M, N, K) always suffices.
 * Before all of these, a product that asks for tensor cores (MatmulArgs.tensorCores) runs there
 * where it can (kernels/matmul-tc.ts; the first 4 * floor(K / 4) terms likewise; its K slices,
 * where tensorCoreSplitK cuts it, in the scratch).
 */
export function matmulWithScratch(gpu: Gpu, args: MatmulArgs, scratch: Tensor | null): Op[] {
  const { M, N, K } = args;
  const rest = K % 4, K4 = K - rest;
  if (args.tensorCores && K4 > 0 && (rest === 0 || !args.geluGradOf)) {
    const onTensorCores = bindMatmul(gpu, rest === 0 ? args : { ...kPrefix(args, K4), label: args.label ?? `matmul(${args.c.label})` }, null, true, scratch);
    if (onTensorCores) return rest === 0 ? onTensorCores : [...onTensorCores, kRest(gpu, args, K4, 'K rest')];
  }
  if (!scratch || args.batch || args.triangle || args.softmaxGradOf) return [matmul(gpu, args)];
  const plan = K4 > 0 ? streamKPlan(gpu, M, N, K4) : null;
  if (plan && scratch.size >= streamKScratchElements(plan) && argsVec4Aligned(args, K4) && (rest === 0 || !args.geluGradOf)) {
    if (rest === 0) return matmulStreamK(gpu, args, plan, scratch);
    const label = args.label ?? `matmul(${args.c.label})`;
    return [...matmulStreamK(gpu, { ...kPrefix(args, K4), label }, plan, scratch), kRest(gpu, args, K4, 'streamK rest')];
  }
  const S = splitKFactor(gpu, M, N, K);
  return matmulSplitK(gpu, args, scratch.size >= splitKScratchElements(M, N, S) ? S : 1, scratch);
}

// ---- Split-K ------------------------------------------------------------------------------------
// A product with a small output and a very long K (the LM head's backward: 768 outputs per row
// summed over 50,257 vocabulary entries) makes too few output tiles to fill the GPU: each
// workgroup walks all of K while most of the machine idles. Split-K cuts K into S slices, computes
// the S partial products at once (a batched product into a scratch tensor [S, M, N]), then sums
// them (shaders/matmul_splitk_reduce.wgsl).

/**
 * The number of K-slices for an unbatched M x N x K product (1: no split). Splits only when K is
 * long (tuning.splitKMinK) and the 128x128 tiling makes fewer tiles than the target
 * (splitKWorkgroups; splitKLongWorkgroups from splitKLongK), into enough slices for about the
 * target, at most splitKMaxSlices, each at least splitKMinSlice long. On the H100
 * (bench/matmul-shapes.ts --split-k): GPT-2's 2048 x 768 outputs over K = 2304-3072 +15-20% with
 * 2-4 slices, SmolLM2's 2048 x 576 over 1536 +25% with 4, the LM head's backward (K = 50,257)
 * +30% with 12-16; short K (768) gains nothing.
 */
export function splitKFactor(gpu: Gpu, M: number, N: number, K: number): number {
  const t = gpu.tuning;
  if (t.splitKMaxSlices <= 1 || K < t.splitKMinK) return 1;
  const tiles = Math.ceil(M / 128) * Math.ceil(N / 128);
  const target = K >= t.splitKLongK ? t.splitKLongWorkgroups : t.splitKWorkgroups;
  if (tiles >= target) return 1;
  const S = Math.min(t.splitKMaxSlices, Math.ceil(target / tiles), Math.floor(K / t.splitKMinSlice));
  return Math.max(1, S);
}

/** Elements of the scratch matmulSplitK needs for S slices of an M x N output. */
export function splitKScratchElements(M: number, N: number, S: number): number {
  return S > 1 ? S * M * N : 0;
}

/**
 * C = alpha * op(A) @ op(B) (+ C) (+ bias) as S K-slices (see splitKFactor) into `scratch` (at
 * least splitKScratchElements(M, N, S) elements, not aliasing anything else), then their sum.
 * S = 1 is the plain product. Unbatched products only. A triangular product (args.triangle: its
 * k runs with m) is never split: it is the one plain matmul, whatever S. geluA applies in every
 * slice; geluGradOf once, on the sum (the reduce kernel).
 */
export function matmulSplitK(gpu: Gpu, args: MatmulArgs, S: number, scratch: Tensor | null): Op[] {
  if (S <= 1 || args.triangle || args.softmaxGradOf) return [matmul(gpu, args)];
  const { M, N, K } = args;
  const label = args.label ?? `matmul(${args.c.label})`;
  if (args.batch) throw new Error(`${label}: split-K takes unbatched products`);
  if (!scratch || scratch.size < S * M * N) throw new Error(`${label}: split-K over ${S} slices needs a scratch of ${S * M * N} elements`);
  if ([args.a, args.b, args.c, args.bias].some((t) => t?.buffer === scratch.buffer)) throw new Error(`${label}: the split-K scratch must not alias an operand`);
  const transA = args.transA ?? false, transB = args.transB ?? false;
  const lda = args.lda ?? (transA ? M : K), ldb = args.ldb ?? (transB ? K : N);
  // element steps along k of stored A and B
  const sAk = transA ? lda : 1, sBk = transB ? 1 : ldb;
  // S equal slices of Ks (K / S rounded down to a multiple of 4) as one batched product, and the rest (fewer than 4S terms)
  // as one more, short product (a separate longer last slice would run alone: 1-2 ms on the LM head)
  if (K < S) throw new Error(`${label}: cannot split K = ${K} into ${S} slices`);
  // slices a multiple of 4 long, so vec4-aligned operands stay aligned in every slice (and an
  // operand whose K is not a multiple of 4 but whose rows are, like the LM head's padded logits,
  // becomes aligned: the rest, fewer than 4S terms, goes to the plain kernels)
  const Ks = K >= 4 * S ? 4 * Math.floor(K / (4 * S)) : Math.floor(K / S);
  const full = S;
  const rest = K - full * Ks;
  const offA = args.offsetA ?? 0, offB = args.offsetB ?? 0;
  const fail = (msg: string): never => {
    throw new Error(`${label}: ${msg}`);
  };
  const gelu = geluOptions(args, M, N, 1, fail);
  if (gelu.pre?.buffer === scratch.buffer) fail('the split-K scratch must not alias geluGradOf.pre');
  // the slices get the prologue (op(A) is gelu(A) in each); the epilogue waits for the sum
  const part = { a: args.a, b: args.b, transA, transB, lda, ldb, c: scratch, M, N, ldc: N, geluA: args.geluA };
  const ops: Op[] = [
    matmul(gpu, {
      ...part, label: `${label}[splitK ${S}]`, K: Ks, offsetA: offA, offsetB: offB,
      batch: { outer: 1, inner: full, strideA: [0, Ks * sAk], strideB: [0, Ks * sBk], strideC: [0, M * N] },
    }),
  ];
  if (rest > 0) {
    // added into the first slice's partial
    ops.push(matmul(gpu, { ...part, label: `${label}[splitK rest]`, K: rest, offsetA: offA + full * Ks * sAk, offsetB: offB + full * Ks * sBk, accumulate: true }));
  }
  const alpha = args.alpha ?? 1;
  const ldc = args.ldc ?? N, offC = args.offsetC ?? 0;
  ops.push(sumSlices(gpu, {
    label: `${label}[splitK sum]`, parts: scratch, S, M, N, c: args.c, offC, ldc, alpha, accumulate: args.accumulate ?? false,
    bias: args.bias, geluGradPre: gelu.pre ? { pre: gelu.pre, offPre: gelu.offPre, ldPre: gelu.ldPre } : undefined,
  }));
  return ops;
}

export interface SumSlicesArgs {
  label: string;
  /** [S, M, N], dense; must not alias c, bias or pre. */
  parts: Tensor;
  S: number;
  M: number;
  N: number;
  c: Tensor;
  offC: number;
  ldc: number;
  alpha: number;
  accumulate: boolean;
  bias?: Tensor;
  /** times gelu'(pre[offPre + m * ldPre + n]) after the bias (GELU's tanh form) */
  geluGradPre?: { pre: Tensor; offPre: number; ldPre: number };
}

/**
 * C[offC + m * ldc + n] = alpha * sum_s parts[s, m, n] (+ C) (+ bias[n]) (* gelu'(pre)): split-K's
 * second half, also LoRA's weight gradients' (kernels/lora.ts loraWeightGrad) sum over row chunks.
 */
export function sumSlices(gpu: Gpu, a: SumSlicesArgs): Dispatch {
  const { M, N, S } = a;
  if (a.parts.size < S * M * N) throw new Error(`${a.label}: the slices (${a.parts.label}) have ${a.parts.size} elements, need ${S * M * N}`);
  if (a.offC + (M - 1) * a.ldc + N - 1 >= a.c.size) throw new Error(`${a.label}: c (${a.c.label}) is too small`);
  if ([a.c, a.bias, a.geluGradPre?.pre].some((t) => t?.buffer === a.parts.buffer)) throw new Error(`${a.label}: the slices must not alias c, bias or pre`);
  const g = a.geluGradPre;
  return bindDispatch(gpu, {
    label: a.label, code: codeSplitKReduce,
    constants: g ? { GELU_GRAD: 1 } : undefined,
    params: [M, N, S, a.offC, a.ldc, a.accumulate ? 1 : 0, a.bias ? 1 : 0, f32(a.alpha), g?.offPre ?? 0, g?.ldPre ?? 0],
    buffers: [a.parts, a.bias ?? a.parts, a.c, g?.pre ?? a.parts], workgroups: grid1d(M * N),
  });
}
