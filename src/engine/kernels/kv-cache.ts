// The position-dependent steps of generation with a KV cache, reading the position from a state
// buffer so a recorded decode program replays for every new token. See shaders/kv_cache.wgsl.
import code from '../../../shaders/kv_cache.wgsl?raw';
import type { Gpu } from '../gpu/gpu';
import { bindDispatch, type Dispatch } from '../gpu/dispatch';
import type { Tensor } from '../gpu/tensor';
import { grid1d } from './grid';

function positiveInts(what: string, values: Record<string, number>): void {
  for (const [k, v] of Object.entries(values)) {
    if (!Number.isInteger(v) || v < 1) throw new Error(`${what}: ${k} must be a positive integer (got ${v})`);
  }
}

function checkState(what: string, state: Tensor): void {
  if (state.dtype !== 'u32' || state.size < 1) throw new Error(`${what}: state must be a u32 tensor with at least one element`);
}

function checkF32(what: string, name: string, t: Tensor, n: number): void {
  if (t.dtype !== 'f32') throw new Error(`${what}: ${name} must be f32 (got ${t.dtype})`);
  if (t.size < n) throw new Error(`${what}: ${name} has ${t.size} elements, need ${n}`);
}

export interface KvAppendArgs {
  /** u32: state[0] = the cache row of source row 0. */
  state: Tensor;
  /** [rows, srcStride]; the copied columns are srcOffset .. srcOffset + width. */
  src: Tensor;
  srcStride: number;
  srcOffset: number;
  /** [capacity, width]. */
  cache: Tensor;
  rows: number;
  width: number;
  capacity: number;
}

/** cache[state[0] + i] = src[i, srcOffset .. + width] (rows past the capacity are dropped). */
export function kvAppend(gpu: Gpu, a: KvAppendArgs): Dispatch {
  const what = `kvAppend(${a.cache.label})`;
  positiveInts(what, { rows: a.rows, width: a.width, capacity: a.capacity, srcStride: a.srcStride });
  if (!Number.isInteger(a.srcOffset) || a.srcOffset < 0 || a.srcOffset + a.width > a.srcStride) {
    throw new Error(`${what}: columns ${a.srcOffset} .. ${a.srcOffset + a.width} do not fit srcStride ${a.srcStride}`);
  }
  checkState(what, a.state);
  checkF32(what, 'src', a.src, a.rows * a.srcStride);
  checkF32(what, 'cache', a.cache, a.capacity * a.width);
  if (a.cache.buffer === a.src.buffer) throw new Error(`${what}: the cache must not alias the source`);
  return bindDispatch(gpu, {
    label: what, code, entryPoint: 'append',
    params: [a.rows, a.width, a.srcStride, a.srcOffset, a.capacity, 0, 0],
    buffers: [a.state, a.src, a.cache],
    workgroups: grid1d(a.rows * a.width),
  });
}

export interface KvRopeArgs {
  /** u32: state[0] = the position of row 0. */
  state: Tensor;
  /** [rows, rowStride], rotated in place. */
  x: Tensor;
  rows: number;
  rowStride: number;
  /** Column where the first rotated head starts. */
  colOffset: number;
  heads: number;
  headDim: number;
  /** Rotated columns of each head (partial rotary); even, at most headDim. */
  rotaryDim: number;
  /** [positions, rotaryDim / 2] tables (src/engine/models/rope-tables.ts). */
  cos: Tensor;
  sin: Tensor;
  /** Positions the tables hold. */
  positions: number;
}

/** Rotary embeddings in place at positions state[0] + i (ropeForward with a position read on the GPU). */
export function kvRope(gpu: Gpu, a: KvRopeArgs): Dispatch {
  const what = `kvRope(${a.x.label})`;
  positiveInts(what, { rows: a.rows, rowStride: a.rowStride, heads: a.heads, headDim: a.headDim, rotaryDim: a.rotaryDim, positions: a.positions });
  if (a.rotaryDim % 2 !== 0 || a.rotaryDim > a.headDim) throw new Error(`${what}: rotaryDim ${a.rotaryDim} must be even and at most headDim ${a.headDim}`);
  if (!Number.isInteger(a.colOffset) || a.colOffset < 0 || a.colOffset + a.heads * a.headDim > a.rowStride) {
    throw new Error(`${what}: heads end at column ${a.colOffset + a.heads * a.headDim}, past rowStride ${a.rowStride}`);
  }
  const half = a.rotaryDim / 2;
  checkState(what, a.state);
  checkF32(what, 'x', a.x, a.rows * a.rowStride);
  checkF32(what, 'cos', a.cos, a.positions * half);
  checkF32(what, 'sin', a.sin, a.positions * half);
  if (a.cos.buffer === a.x.buffer || a.sin.buffer === a.x.buffer) throw new Error(`${what}: x must not alias the cos/sin tables`);
  return bindDispatch(gpu, {
    label: what, code, entryPoint: 'rope',
    params: [a.rows, a.heads * half, a.rowStride, a.colOffset, a.positions, a.headDim, half],
    buffers: [a.state, a.x, a.cos, a.sin],
    workgroups: grid1d(a.rows * a.heads * half),
  });
}

export interface KvAddPositionsArgs {
  /** u32: state[0] = the position of row 0. */
  state: Tensor;
  /** [rows, C], added to in place. */
  x: Tensor;
  /** [positions, C] learned position embeddings. */
  table: Tensor;
  rows: number;
  C: number;
  positions: number;
}

/** x[i] += table[state[0] + i] (GPT-2's position embedding of a continued sequence). */
export function kvAddPositions(gpu: Gpu, a: KvAddPositionsArgs): Dispatch {
  const what = `kvAddPositions(${a.x.label})`;
  positiveInts(what, { rows: a.rows, C: a.C, positions: a.positions });
  checkState(what, a.state);
  checkF32(what, 'x', a.x, a.rows * a.C);
  checkF32(what, 'table', a.table, a.positions * a.C);
  if (a.table.buffer === a.x.buffer) throw new Error(`${what}: x must not alias the table`);
  return bindDispatch(gpu, {
    label: what, code, entryPoint: 'add_positions',
    params: [a.rows, a.C, 0, 0, a.positions, 0, 0],
    buffers: [a.state, a.x, a.table],
    workgroups: grid1d(a.rows * a.C),
  });
}
