import code from '../../../shaders/reduce_sum.wgsl?raw';
import type { Gpu } from '../gpu/gpu';
import { bindDispatch, type Dispatch } from '../gpu/dispatch';
import type { Tensor } from '../gpu/tensor';

export interface ReduceSumArgs {
  x: Tensor;
  n: number;
  out: Tensor;
  /** Element of `out` to write. Default 0. */
  outIndex?: number;
  /** Add to out[outIndex] instead of overwriting it. Default false. */
  accumulate?: boolean;
}

/** out[outIndex] = (accumulate ? out[outIndex] : 0) + sum of x[0..n). One workgroup. */
export function reduceSum(gpu: Gpu, a: ReduceSumArgs): Dispatch {
  const what = `reduceSum(${a.x.label})`;
  const outIndex = a.outIndex ?? 0;
  if (!Number.isInteger(a.n) || a.n < 0) throw new Error(`${what}: n must be a non-negative integer (got ${a.n})`);
  if (!Number.isInteger(outIndex) || outIndex < 0) throw new Error(`${what}: outIndex must be a non-negative integer (got ${outIndex})`);
  if (a.x.dtype !== 'f32' || a.x.size < a.n) throw new Error(`${what}: x must be f32 with n=${a.n} elements (got ${a.x.dtype} ${a.x.size})`);
  if (a.out.dtype !== 'f32' || a.out.size <= outIndex) throw new Error(`${what}: out must be f32 with more than ${outIndex} elements (got ${a.out.dtype} ${a.out.size})`);
  if (a.out.buffer === a.x.buffer) throw new Error(`${what}: out must not alias x`);
  return bindDispatch(gpu, {
    label: what,
    code,
    params: [a.n, outIndex, a.accumulate ? 1 : 0],
    buffers: [a.x, a.out],
    workgroups: [1],
  });
}
