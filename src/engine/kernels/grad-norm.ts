import code from '../../../shaders/grad_norm.wgsl?raw';
import type { Gpu } from '../gpu/gpu';
import { bindDispatch, f32, type Dispatch } from '../gpu/dispatch';
import type { Tensor } from '../gpu/tensor';
import { reductionShader } from './subgroups';

/** Elements per partial of sumOfSquares (CHUNK in shaders/grad_norm.wgsl). */
export const SUM_OF_SQUARES_CHUNK = 4096;

/** The partials sumOfSquares writes for a tensor of n elements: one per chunk, at least one. */
export function sumOfSquaresPartials(n: number): number {
  return Math.max(1, Math.ceil(n / SUM_OF_SQUARES_CHUNK));
}

/** The norm partials of gradients of these sizes (buildAdamW's partials buffer). */
export function gradNormPartials(gradSizes: readonly number[]): number {
  return gradSizes.reduce((s, n) => s + sumOfSquaresPartials(n), 0);
}

/**
 * out[outIndex + w] = sum of x[i]^2 over chunk w of i < n, for w < sumOfSquaresPartials(n) (the
 * partials of the global gradient norm; an empty tensor writes one 0).
 */
export function sumOfSquares(gpu: Gpu, a: { x: Tensor; n: number; out: Tensor; outIndex: number }): Dispatch {
  const what = `sumOfSquares(${a.x.label})`;
  if (!Number.isInteger(a.n) || a.n < 0) throw new Error(`${what}: n must be a non-negative integer (got ${a.n})`);
  if (!Number.isInteger(a.outIndex) || a.outIndex < 0) throw new Error(`${what}: outIndex must be a non-negative integer (got ${a.outIndex})`);
  if (a.x.dtype !== 'f32' || a.x.size < a.n) throw new Error(`${what}: x must be f32 with n=${a.n} elements (got ${a.x.dtype} ${a.x.size})`);
  const parts = sumOfSquaresPartials(a.n);
  if (a.out.dtype !== 'f32' || a.out.size < a.outIndex + parts) {
    throw new Error(`${what}: out must be f32 with at least outIndex + ${parts} partials = ${a.outIndex + parts} elements (got ${a.out.dtype} ${a.out.size})`);
  }
  if (a.out.buffer === a.x.buffer) throw new Error(`${what}: out must not alias x`);
  const shader = reductionShader(gpu, code);
  return bindDispatch(gpu, {
    label: what,
    code: shader.code,
    entryPoint: 'sum_of_squares',
    constants: shader.constants,
    params: [a.n, a.outIndex, f32(0)],
    buffers: [a.x, a.out],
    workgroups: [parts],
  });
}

/**
 * out[0] = sqrt(sum of partials[0..count)), the global gradient L2 norm;
 * out[1] = maxNorm > 0 ? min(1, maxNorm / (out[0] + 1e-6)) : 1, the gradient scale (torch's clip_grad_norm_).
 */
export function clipCoefficient(gpu: Gpu, a: { partials: Tensor; count: number; maxNorm: number; out: Tensor }): Dispatch {
  const what = `clipCoefficient(${a.out.label})`;
  if (!Number.isInteger(a.count) || a.count < 0) throw new Error(`${what}: count must be a non-negative integer (got ${a.count})`);
  if (!Number.isFinite(a.maxNorm)) throw new Error(`${what}: maxNorm must be finite (got ${a.maxNorm}); use 0 for no clipping`);
  if (a.partials.dtype !== 'f32' || a.partials.size < a.count) {
    throw new Error(`${what}: partials must be f32 with count=${a.count} elements (got ${a.partials.dtype} ${a.partials.size})`);
  }
  if (a.out.dtype !== 'f32' || a.out.size < 2) throw new Error(`${what}: out must be f32 with 2 elements (got ${a.out.dtype} ${a.out.size})`);
  if (a.out.buffer === a.partials.buffer) throw new Error(`${what}: out must not alias partials`);
  const shader = reductionShader(gpu, code);
  return bindDispatch(gpu, {
    label: what,
    code: shader.code,
    entryPoint: 'clip_coefficient',
    constants: shader.constants,
    params: [a.count, 0, f32(a.maxNorm)],
    buffers: [a.partials, a.out],
    workgroups: [1],
  });
}
