import code from '../../../shaders/column_sum.wgsl?raw';
import type { Gpu } from '../gpu/gpu';
import { bindDispatch, type Dispatch } from '../gpu/dispatch';
import type { Tensor } from '../gpu/tensor';
import { grid1d } from './grid';

export interface ColumnSumArgs {
  /** [rows, N], dense. */
  x: Tensor;
  /** [N]. */
  out: Tensor;
  rows: number;
  N: number;
  /** out += instead of out = (gradients accumulated over micro-batches). */
  accumulate: boolean;
}

/** out[n] (+)= sum over rows of x[r, n]: a bias gradient from the gradient of the layer's output. */
export function columnSum(gpu: Gpu, a: ColumnSumArgs): Dispatch {
  const what = `columnSum(${a.out.label})`;
  if (!Number.isInteger(a.rows) || a.rows < 0) throw new Error(`${what}: rows must be a non-negative integer (got ${a.rows})`);
  if (!Number.isInteger(a.N) || a.N < 1) throw new Error(`${what}: N must be a positive integer (got ${a.N})`);
  if (a.x.dtype !== 'f32' || a.x.size < a.rows * a.N) throw new Error(`${what}: x must be f32 with rows*N=${a.rows * a.N} elements (got ${a.x.dtype} ${a.x.size})`);
  if (a.out.dtype !== 'f32' || a.out.size < a.N) throw new Error(`${what}: out must be f32 with N=${a.N} elements (got ${a.out.dtype} ${a.out.size})`);
  if (a.out.buffer === a.x.buffer) throw new Error(`${what}: out must not alias x`);
  return bindDispatch(gpu, {
    label: what,
    code,
    params: [a.rows, a.N, a.accumulate ? 1 : 0],
    buffers: [a.x, a.out],
    workgroups: grid1d(a.N),
  });
}
