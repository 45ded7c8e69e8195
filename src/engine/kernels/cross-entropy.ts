import code from '../../../shaders/cross_entropy.wgsl?raw';
import type { Gpu } from '../gpu/gpu';
import { bindDispatch, type Dispatch } from '../gpu/dispatch';
import type { Tensor } from '../gpu/tensor';
import { grid1d } from './grid';
import { reductionShader } from './subgroups';

/**
 * Threads per row for long rows (capped at the device's workgroup limit; short rows get fewer:
 * about one per 16 columns, at least 64). On the H100, in GPT-2's training step (the logits block
 * just written by the LM head, partly in L2; step-bench per-kernel times, twice each): 1024
 * threads 0.431 ms per step, 512 0.472, 256 0.510; the kernel it replaced 1.29. On fresh logits
 * (bench/probe/cross-entropy.ts, 2048 rows) fewer threads win instead: GPT-2 1024 1.085 ms, 256
 * 0.871; SmolLM2 0.988 / 0.740; the old kernel 1.60 / 1.46. The step is what runs: 1024, which
 * keeps one or two whole rows per SM in flight, so pass 2 re-reads from L2. (Measured with the
 * workgroup-memory merge, 11 barriers a row at 1024 threads; the subgroup variant has 3 at any
 * count, which may move the best count: not re-measured.)
 */
export const CROSS_ENTROPY_THREADS = 1024;

export interface CrossEntropyArgs {
  /** [rows, V]; replaced in place by d(loss)/d(logits) * gradScale[0]. */
  logits: Tensor;
  /** i32, read at targets[rowOffset + r]; < 0 means ignored (loss 0, zero gradient row). */
  targets: Tensor;
  /** Per-row losses are written at losses[rowOffset + r]. */
  losses: Tensor;
  rowOffset?: number;
  /** 1-element f32 tensor (e.g. 1 / valid targets in the batch), written per step. */
  gradScale: Tensor;
  rows: number;
  V: number;
  /** Elements from one row of logits to the next (default V); the columns past V are not touched. */
  ld?: number;
  /**
   * Threads per row: a power of two >= 8, at most the device's limit (default
   * crossEntropyThreads(V, limit)). For tests and benchmarks.
   */
  threads?: number;
  /** Workgroups (rows in flight), each looping over rows this far apart (default rows). For tests and benchmarks. */
  workgroups?: number;
  /**
   * f32 [rows, 4], or none: row r gets (max |gradient| over row r, 0, 0, 0), from which
   * kernels/matmul-tc.ts rowScales (K = lda = 4) makes the LM head backward's tensor-core row scales
   * without reading the gradient again (a 0 row for an ignored target).
   */
  gradMax?: Tensor;
}

/**
 * The kernel's text with or without its gradMax binding (the lines marked `// #gradMax`): without,
 * nothing is bound there (a spare buffer would be memory the program's estimate does not hold).
 */
export function crossEntropyCode(gradMax: boolean): string {
  return gradMax ? code : code.split('\n').filter((line) => !line.trimEnd().endsWith('// #gradMax')).join('\n');
}

/** Largest power of two <= n. */
const pow2Floor = (n: number): number => 2 ** Math.floor(Math.log2(n));

/** Default threads per row: one per 16 columns (4 vec4s), a power of two in [64, min(CROSS_ENTROPY_THREADS, limit)]. */
export function crossEntropyThreads(V: number, limit: number): number {
  const most = pow2Floor(Math.min(CROSS_ENTROPY_THREADS, limit));
  return Math.min(most, Math.max(64, 2 ** Math.ceil(Math.log2(Math.max(1, Math.ceil(V / 16))))));
}

/**
 * Softmax cross-entropy per row: losses, and the logits gradient written over the logits. The row's
 * (max, sum of exp) merge uses subgroup operations where the device has them (kernels/subgroups.ts).
 */
export function crossEntropy(gpu: Gpu, a: CrossEntropyArgs): Dispatch {
  const what = `crossEntropy(${a.logits.label})`;
  const rowOffset = a.rowOffset ?? 0;
  const ld = a.ld ?? a.V;
  for (const [k, v] of Object.entries({ rows: a.rows, V: a.V, rowOffset, ld })) {
    if (!Number.isInteger(v) || v < 0) throw new Error(`${what}: ${k} must be a non-negative integer (got ${v})`);
  }
  if (a.V < 1) throw new Error(`${what}: V must be >= 1`);
  if (ld < a.V) throw new Error(`${what}: ld = ${ld} must be >= V = ${a.V}`);
  const need = a.rows > 0 ? (a.rows - 1) * ld + a.V : 0;
  if (a.logits.dtype !== 'f32' || a.logits.size < need) {
    throw new Error(`${what}: logits must be f32 with ${a.rows === 0 || ld === a.V ? `rows*V=${need}` : `(rows-1)*ld+V=${need}`} elements (got ${a.logits.dtype} ${a.logits.size})`);
  }
  // The shader binds the logits as vec4s: the buffer's whole vec4s must cover every element.
  if (4 * Math.floor(a.logits.buffer.size / 16) < need) {
    throw new Error(`${what}: the logits buffer (${a.logits.buffer.size} bytes) must hold ${need} elements in whole 16-byte vec4s`);
  }
  if (a.targets.dtype !== 'i32') throw new Error(`${what}: targets must be i32 (got ${a.targets.dtype})`);
  if (a.targets.size < rowOffset + a.rows) throw new Error(`${what}: targets has ${a.targets.size} elements, need rowOffset+rows=${rowOffset + a.rows}`);
  if (a.losses.dtype !== 'f32' || a.losses.size < rowOffset + a.rows) {
    throw new Error(`${what}: losses must be f32 with rowOffset+rows=${rowOffset + a.rows} elements (got ${a.losses.dtype} ${a.losses.size})`);
  }
  if (a.gradScale.dtype !== 'f32' || a.gradScale.size < 1) throw new Error(`${what}: gradScale must be a 1-element f32 tensor`);
  if (a.losses.buffer === a.logits.buffer) throw new Error(`${what}: losses must not alias logits`);
  if (a.gradMax && (a.gradMax.dtype !== 'f32' || a.gradMax.size < 4 * a.rows)) {
    throw new Error(`${what}: gradMax must be f32 with 4*rows=${4 * a.rows} elements (got ${a.gradMax.dtype} ${a.gradMax.size})`);
  }
  if (a.gradMax && [a.logits, a.losses].some((t) => t.buffer === a.gradMax!.buffer)) throw new Error(`${what}: gradMax must not alias logits or losses`);
  const limit = Math.min(gpu.info.limits.maxComputeInvocationsPerWorkgroup, gpu.device.limits.maxComputeWorkgroupSizeX);
  const threads = a.threads ?? crossEntropyThreads(a.V, limit);
  if (!Number.isInteger(threads) || threads < 8 || threads > limit || pow2Floor(threads) !== threads) {
    throw new Error(`${what}: threads = ${threads} must be a power of two in [8, ${limit}]`);
  }
  const workgroups = a.workgroups ?? a.rows;
  if (!Number.isInteger(workgroups) || workgroups < 1) throw new Error(`${what}: workgroups must be a positive integer (got ${workgroups})`);
  const shader = reductionShader(gpu, crossEntropyCode(!!a.gradMax));
  return bindDispatch(gpu, {
    label: what,
    code: shader.code,
    constants: { WG: threads, ...(a.gradMax ? { GRAD_MAX: 1 } : {}), ...shader.constants },
    params: [a.rows, a.V, rowOffset, ld],
    buffers: a.gradMax ? [a.logits, a.targets, a.gradScale, a.losses, a.gradMax] : [a.logits, a.targets, a.gradScale, a.losses],
    workgroups: grid1d(Math.min(a.rows, workgroups), 1),
  });
}
