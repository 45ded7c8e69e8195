import code from '../../../shaders/rope.wgsl?raw';
import type { Gpu } from '../gpu/gpu';
import { bindDispatch, type Dispatch } from '../gpu/dispatch';
import type { Tensor } from '../gpu/tensor';
import { grid1d } from './grid';

export interface RopeArgs {
  /** [rows, rowStride], rotated in place (the gradient, for ropeBackward). */
  x: Tensor;
  /** [positions, rotaryDim / 2] tables from ropeTables() (attention scaling already in them). */
  cos: Tensor;
  sin: Tensor;
  /** B * T. Row m is at position (m % T) + positionOffset. */
  rows: number;
  T: number;
  /** Elements per row of x. */
  rowStride: number;
  /** Column where the first rotated head starts. */
  colOffset: number;
  /** Consecutive heads of headDim columns to rotate. */
  heads: number;
  headDim: number;
  /** Rotated columns of each head (partial rotary); defaults to headDim. Even. */
  rotaryDim?: number;
  positionOffset?: number;
}

function bind(gpu: Gpu, a: RopeArgs, entryPoint: 'forward' | 'backward'): Dispatch {
  const what = `rope${entryPoint === 'forward' ? 'Forward' : 'Backward'}(${a.x.label})`;
  const int = (name: string, v: number, min: number): number => {
    if (!Number.isInteger(v) || v < min) throw new Error(`${what}: ${name} must be an integer >= ${min} (got ${v})`);
    return v;
  };
  const rows = int('rows', a.rows, 0);
  const T = int('T', a.T, 1);
  const rowStride = int('rowStride', a.rowStride, 1);
  const colOffset = int('colOffset', a.colOffset, 0);
  const heads = int('heads', a.heads, 1);
  const headDim = int('headDim', a.headDim, 2);
  const rotaryDim = int('rotaryDim', a.rotaryDim ?? headDim, 2);
  const positionOffset = int('positionOffset', a.positionOffset ?? 0, 0);
  if (rotaryDim % 2 !== 0 || rotaryDim > headDim) throw new Error(`${what}: rotaryDim ${rotaryDim} must be even and at most headDim ${headDim}`);
  if (rows % T !== 0) throw new Error(`${what}: rows ${rows} is not a multiple of T ${T}`);
  if (colOffset + heads * headDim > rowStride) {
    throw new Error(`${what}: heads end at column ${colOffset + heads * headDim}, past rowStride ${rowStride}`);
  }
  for (const [name, t] of [['x', a.x], ['cos', a.cos], ['sin', a.sin]] as const) {
    if (t.dtype !== 'f32') throw new Error(`${what}: ${name} must be f32 (got ${t.dtype})`);
  }
  if (a.x.size < rows * rowStride) throw new Error(`${what}: x has ${a.x.size} elements, need rows*rowStride = ${rows * rowStride}`);
  const half = rotaryDim / 2;
  const positions = Math.min(rows, T) + positionOffset; // highest position used + 1
  for (const [name, t] of [['cos', a.cos], ['sin', a.sin]] as const) {
    if (t.size < positions * half) {
      throw new Error(`${what}: ${name} has ${t.size} elements, need ${positions} positions x ${half} (rotaryDim / 2)`);
    }
  }
  if (a.cos.buffer === a.x.buffer || a.sin.buffer === a.x.buffer) throw new Error(`${what}: x must not alias the cos/sin tables`);
  return bindDispatch(gpu, {
    label: what,
    code,
    entryPoint,
    params: [rows, T, rowStride, colOffset, heads, headDim, half, positionOffset],
    buffers: [a.x, a.cos, a.sin],
    workgroups: grid1d(rows * heads * half),
  });
}

/**
 * Rotary embeddings in place, Llama's rotate_half convention: for i < rotaryDim/2 the pair
 * (x_i, x_{i+rotaryDim/2}) of each head becomes (x_i cos - x_j sin, x_j cos + x_i sin) with cos/sin
 * at (position, i). Columns outside the `heads` blocks (e.g. V in a packed qkv row) are untouched.
 */
export function ropeForward(gpu: Gpu, a: RopeArgs): Dispatch {
  return bind(gpu, a, 'forward');
}

/** The backward of ropeForward: the inverse (transposed) rotation, in place on the gradient. */
export function ropeBackward(gpu: Gpu, a: RopeArgs): Dispatch {
  return bind(gpu, a, 'backward');
}
