// Wrappers of shaders/lora.wgsl: LoRA's rank-r products in one pass over their large operand,
// with the dropout mask fused in. loraProject: u = alpha * mask(x) W (forward u = dropout(x) A^T,
// backward du = scale * dy B). loraExpand: out (+)= alpha * mask(u W^T) (forward y += scale * u
// B^T, backward dx += dropout'(du A)). loraWeightGrad: G (+)= alpha * mask(big)^T small over
// chunks of rows, then their sum (dA += du^T dropout(x), dB += scale * dy^T u). Ranks up to
// LORA_MAX_RANK; peft/lora.ts uses the tiled matmul above that.
import loraCode from '../../../shaders/lora.wgsl?raw';
import maskCode from '../../../shaders/dropout_mask.wgsl?raw';
import type { Gpu } from '../gpu/gpu';
import { bindDispatch, f32, type Dispatch, type Op } from '../gpu/dispatch';
import type { Tensor } from '../gpu/tensor';
import { dropoutThreshold } from './dropout';
import { sumSlices } from './matmul';
import type { StepUniforms } from './step-uniforms';

const code = maskCode + loraCode;

/** Largest rank shaders/lora.wgsl takes (MAX_R there). */
export const LORA_MAX_RANK = 16;
/** Rows per workgroup of `up` (UP_ROWS) and `down` (DOWN_ROWS) there. */
const UP_ROWS = 16;
const DOWN_ROWS = 2;
/** Columns per workgroup of `grad` (GRAD_COLS) and its row slices (GRAD_SLICES). */
const GRAD_COLS = 128;
const GRAD_SLICES = 8;

/**
 * The rank-r factor W(c, j), c < cols, j < r: stored [r, cols] (LoRA's A, when cols are its input
 * features) or [cols, r] (LoRA's B, when cols are its output features).
 */
export type RankFactorLayout = 'r_cols' | 'cols_r';

interface RankProduct {
  /** The large operand's rows, and its columns (K of x for loraProject, N of out for loraExpand). */
  rows: number;
  cols: number;
  r: number;
  w: Tensor;
  wLayout: RankFactorLayout;
  alpha: number;
  step: StepUniforms;
  /**
   * The large operand's element (row, c) is kept with probability 1 - p and scaled by 1 / (1 - p),
   * by the mask shaders/dropout.wgsl makes with this salt over a dense [rows, cols] tensor. Absent or p = 0: none.
   */
  dropout?: { p: number; salt: number };
}

export interface LoraProjectArgs extends RankProduct {
  /** [rows, cols] from element offsetX (default 0) with rows ldx apart (default cols). */
  x: Tensor;
  ldx?: number;
  offsetX?: number;
  /** [rows, r], dense; overwritten. */
  out: Tensor;
}

export interface LoraExpandArgs extends RankProduct {
  /** [rows, r], dense. */
  u: Tensor;
  /** [rows, cols] from element offsetOut (default 0) with rows ldo apart (default cols). */
  out: Tensor;
  ldo?: number;
  offsetOut?: number;
  accumulate: boolean;
}

/** Checks the shared arguments (`out` names which operand is written); returns the uniform's values after rows, cols, ld. */
function check(what: string, a: RankProduct, ld: number, offset: number, big: Tensor, small: Tensor, out: 'big' | 'small' | 'w'): { sW: [number, number]; threshold: number; dropScale: number; salt: number } {
  const { rows, cols, r } = a;
  for (const [k, v] of Object.entries({ rows, cols, r, ld })) {
    if (!Number.isInteger(v) || v < 1) throw new Error(`${what}: ${k} must be a positive integer (got ${v})`);
  }
  if (!Number.isInteger(offset) || offset < 0) throw new Error(`${what}: the offset must be a non-negative integer (got ${offset})`);
  if (r > LORA_MAX_RANK) throw new Error(`${what}: rank ${r} is above ${LORA_MAX_RANK}`);
  if (ld < cols) throw new Error(`${what}: the row stride ${ld} must be at least cols = ${cols}`);
  if (!Number.isFinite(a.alpha)) throw new Error(`${what}: alpha must be finite (got ${a.alpha})`);
  const need = (name: string, t: Tensor, n: number) => {
    if (t.dtype !== 'f32') throw new Error(`${what}: ${name} (${t.label}) must be f32 (got ${t.dtype})`);
    if (t.size < n) throw new Error(`${what}: ${name} (${t.label}) has ${t.size} elements, need ${n}`);
  };
  need('the [rows, cols] operand', big, offset + (rows - 1) * ld + cols);
  need('the [rows, r] operand', small, rows * r);
  need('w', a.w, cols * r);
  const operands = { big, small, w: a.w };
  const written = operands[out];
  if (Object.entries(operands).some(([role, t]) => role !== out && t.buffer === written.buffer)) throw new Error(`${what}: the output must not alias an input`);
  const p = a.dropout?.p ?? 0;
  if (!(p >= 0 && p < 1)) throw new Error(`${what}: dropout p must be in [0, 1) (got ${p})`);
  const salt = a.dropout?.salt ?? 0;
  if (!Number.isInteger(salt) || salt < 0 || salt > 0xffffffff) throw new Error(`${what}: salt must be a u32 (got ${salt})`);
  if (p > 0 && rows * cols > 0xffffffff) throw new Error(`${what}: ${rows} x ${cols} elements overflow the mask's u32 index`);
  const sW: [number, number] = a.wLayout === 'cols_r' ? [r, 1] : [1, cols];
  return { sW, threshold: dropoutThreshold(p), dropScale: 1 / (1 - p), salt };
}

/** out[rows, r] = alpha * mask(x) W: one pass over x [rows, cols]. */
export function loraProject(gpu: Gpu, a: LoraProjectArgs): Dispatch {
  const what = `loraProject(${a.out.label})`;
  const ld = a.ldx ?? a.cols;
  const off = a.offsetX ?? 0;
  const c = check(what, a, ld, off, a.x, a.out, 'small');
  const blocks = Math.ceil(a.rows / DOWN_ROWS);
  const max = gpu.info.limits.maxComputeWorkgroupsPerDimension;
  const x = Math.min(blocks, max);
  return bindDispatch(gpu, {
    label: what,
    code,
    entryPoint: 'down',
    constants: { R: a.r },
    params: [a.rows, a.cols, ld, c.sW[0], c.sW[1], 0, f32(a.alpha), c.salt, c.threshold, f32(c.dropScale), 0, off],
    buffers: [a.step.buffer, a.out, a.x, a.w],
    workgroups: [x, Math.ceil(blocks / x)],
  });
}

/** out[rows, cols] (+)= alpha * mask(u W^T): one pass over out, K = r. */
export function loraExpand(gpu: Gpu, a: LoraExpandArgs): Dispatch {
  const what = `loraExpand(${a.out.label})`;
  const ld = a.ldo ?? a.cols;
  const off = a.offsetOut ?? 0;
  const c = check(what, a, ld, off, a.out, a.u, 'big');
  return bindDispatch(gpu, {
    label: what,
    code,
    entryPoint: 'up',
    constants: { R: a.r },
    params: [a.rows, a.cols, ld, c.sW[0], c.sW[1], a.accumulate ? 1 : 0, f32(a.alpha), c.salt, c.threshold, f32(c.dropScale), 0, off],
    buffers: [a.step.buffer, a.out, a.u, a.w],
    workgroups: [Math.ceil(a.cols / 256), Math.ceil(a.rows / UP_ROWS)],
  });
}

export interface LoraWeightGradArgs extends RankProduct {
  /** [rows, cols] from element offsetBig (default 0) with rows ld apart (default cols): dy for dB, x for dA (with the forward's dropout). */
  big: Tensor;
  ld?: number;
  offsetBig?: number;
  /** [rows, r], dense: u for dB, du for dA. */
  small: Tensor;
  /** The chunks' partial sums, at least loraWeightGradScratch(tuning.loraGradWorkgroups, rows, cols, r) elements; aliases nothing else. */
  parts: Tensor;
  /** w (the gradient, stored as wLayout says) += its product (else =). */
  accumulate: boolean;
}

/** Rows per chunk of loraWeightGrad (a multiple of 4 x GRAD_SLICES) and the chunk count, for about `workgroups` (tuning.loraGradWorkgroups) workgroups. */
export function loraWeightGradChunks(workgroups: number, rows: number, cols: number): { chunkRows: number; chunks: number } {
  const blocks = Math.ceil(cols / GRAD_COLS);
  const wanted = Math.max(1, Math.ceil(workgroups / blocks));
  // a multiple of the rows a workgroup takes at a time (four per row slice)
  const step = 4 * GRAD_SLICES;
  const chunkRows = Math.max(step, Math.ceil(Math.ceil(rows / wanted) / step) * step);
  return { chunkRows, chunks: Math.ceil(rows / chunkRows) };
}

/** Elements of loraWeightGrad's `parts` for this shape under tuning.loraGradWorkgroups = workgroups. */
export function loraWeightGradScratch(workgroups: number, rows: number, cols: number, r: number): number {
  return loraWeightGradChunks(workgroups, rows, cols).chunks * cols * r;
}

/**
 * W(c, j) (+)= alpha * sum_row mask(big[row, c]) small[row, j], W stored in `w` as wLayout says:
 * LoRA's dA (big = x with the forward's dropout mask, small = du, 'r_cols') and dB (big = dy,
 * small = u, alpha = scale, 'cols_r'). Two dispatches: `grad` sums chunks of rows into `parts`,
 * then the split-K sum adds the chunks. Needs tuning.loraGradWorkgroups > 0.
 */
export function loraWeightGrad(gpu: Gpu, a: LoraWeightGradArgs): Op[] {
  const what = `loraWeightGrad(${a.w.label})`;
  const ld = a.ld ?? a.cols;
  const off = a.offsetBig ?? 0;
  if (!(gpu.tuning.loraGradWorkgroups > 0)) throw new Error(`${what}: tuning.loraGradWorkgroups is ${gpu.tuning.loraGradWorkgroups}; the chunked kernel is off`);
  const c = check(what, a, ld, off, a.big, a.small, 'w');
  const { rows, cols, r } = a;
  const { chunkRows, chunks } = loraWeightGradChunks(gpu.tuning.loraGradWorkgroups, rows, cols);
  if (a.parts.size < chunks * cols * r) throw new Error(`${what}: parts (${a.parts.label}) has ${a.parts.size} elements, need ${chunks * cols * r}`);
  if ([a.big, a.small, a.w].some((t) => t.buffer === a.parts.buffer)) throw new Error(`${what}: parts must not alias an operand`);
  if (chunks > gpu.info.limits.maxComputeWorkgroupsPerDimension) throw new Error(`${what}: ${chunks} row chunks are over the grid limit`);
  const [sW0, sW1] = c.sW;
  return [
    bindDispatch(gpu, {
      label: `${what}[chunks]`,
      code,
      entryPoint: 'grad',
      // one vec4 load per row and thread where every row starts on a 16-byte boundary and holds whole vec4s
      constants: { R: r, ALIGNED: ld % 4 === 0 && cols % 4 === 0 && off % 4 === 0 ? 1 : 0 },
      params: [rows, cols, ld, sW0, sW1, 0, f32(1), c.salt, c.threshold, f32(c.dropScale), chunkRows, off],
      buffers: [a.step.buffer, a.parts, a.big, a.small],
      workgroups: [Math.ceil(cols / GRAD_COLS), chunks],
    }),
    // the chunks are [chunks, cols * r] in w's own layout: an M x N = (cols, r) or (r, cols) sum
    a.wLayout === 'cols_r'
      ? sumSlices(gpu, { label: `${what}[sum]`, parts: a.parts, S: chunks, M: cols, N: r, c: a.w, offC: 0, ldc: r, alpha: a.alpha, accumulate: a.accumulate })
      : sumSlices(gpu, { label: `${what}[sum]`, parts: a.parts, S: chunks, M: r, N: cols, c: a.w, offC: 0, ldc: cols, alpha: a.alpha, accumulate: a.accumulate }),
  ];
}
