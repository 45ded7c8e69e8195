// Wrappers of shaders/peft_ops.wgsl: column scaling and column dot products (IA3), adding and
// summing the virtual rows of every sequence (prompt tuning; a sum over rows is a bias gradient),
// and tanh (prefix tuning's reparameterization).
import code from '../../../shaders/peft_ops.wgsl?raw';
import type { Gpu } from '../gpu/gpu';
import { bindDispatch, type Dispatch } from '../gpu/dispatch';
import type { Tensor } from '../gpu/tensor';
import { grid1d } from './grid';

function count(what: string, name: string, v: number, min = 0): number {
  if (!Number.isInteger(v) || v < min) throw new Error(`${what}: ${name} must be an integer >= ${min} (got ${v})`);
  return v;
}

function f32Size(what: string, name: string, t: Tensor, n: number): void {
  if (t.dtype !== 'f32') throw new Error(`${what}: ${name} (${t.label}) must be f32 (got ${t.dtype})`);
  if (t.size < n) throw new Error(`${what}: ${name} (${t.label}) has ${t.size} elements, need ${n}`);
}

/**
 * out[r, c] = (accumulate ? out[r, c] : 0) + x[r, c] * s[c] over [rows, N]; out may be x (then
 * not accumulating: an in-place scale).
 */
export function scaleColumns(gpu: Gpu, a: { x: Tensor; s: Tensor; out: Tensor; rows: number; N: number; accumulate: boolean }): Dispatch {
  const what = `scaleColumns(${a.out.label})`;
  const rows = count(what, 'rows', a.rows), N = count(what, 'N', a.N, 1);
  f32Size(what, 'x', a.x, rows * N);
  f32Size(what, 'out', a.out, rows * N);
  f32Size(what, 's', a.s, N);
  if (a.s.buffer === a.out.buffer) throw new Error(`${what}: out must not alias s`);
  if (a.out.buffer === a.x.buffer) {
    if (a.accumulate) throw new Error(`${what}: in place (out = x) cannot accumulate`);
    return bindDispatch(gpu, { label: what, code, entryPoint: 'scale_columns_inplace', params: [rows, N, 0, 0, 0], buffers: [a.out, a.s], workgroups: grid1d(rows * N) });
  }
  return bindDispatch(gpu, {
    label: what, code, entryPoint: 'scale_columns', params: [rows, N, a.accumulate ? 1 : 0, 0, 0], buffers: [a.out, a.x, a.s], workgroups: grid1d(rows * N),
  });
}

/** out[c] = (accumulate ? out[c] : 0) + sum over r < rows of a[r, c] * b[r, c] ([rows, N] each). */
export function columnDot(gpu: Gpu, x: { a: Tensor; b: Tensor; out: Tensor; rows: number; N: number; accumulate: boolean }): Dispatch {
  const what = `columnDot(${x.out.label})`;
  const rows = count(what, 'rows', x.rows), N = count(what, 'N', x.N, 1);
  f32Size(what, 'a', x.a, rows * N);
  f32Size(what, 'b', x.b, rows * N);
  f32Size(what, 'out', x.out, N);
  if (x.out.buffer === x.a.buffer || x.out.buffer === x.b.buffer) throw new Error(`${what}: out must not alias a or b`);
  return bindDispatch(gpu, {
    label: what, code, entryPoint: 'column_dot', params: [rows, N, x.accumulate ? 1 : 0, 0, 0], buffers: [x.out, x.a, x.b], workgroups: grid1d(N),
  });
}

/** x[b*S + i, :] += p[i, :] for every sequence b < B and row i < n (x is [B*S, C], p is [n, C]). */
export function addRows(gpu: Gpu, a: { x: Tensor; p: Tensor; B: number; S: number; n: number; C: number }): Dispatch {
  const what = `addRows(${a.x.label})`;
  const B = count(what, 'B', a.B), S = count(what, 'S', a.S, 1), n = count(what, 'n', a.n), C = count(what, 'C', a.C, 1);
  if (n > S) throw new Error(`${what}: n = ${n} rows do not fit in sequences of S = ${S}`);
  f32Size(what, 'x', a.x, B * S * C);
  f32Size(what, 'p', a.p, n * C);
  if (a.x.buffer === a.p.buffer) throw new Error(`${what}: x must not alias p`);
  return bindDispatch(gpu, { label: what, code, entryPoint: 'rows_add', params: [B, S, n, C, 0], buffers: [a.x, a.p], workgroups: grid1d(B * n * C) });
}

/**
 * out[i, :] = (accumulate ? out[i, :] : 0) + sum over b < B of d[b*S + i, :] for i < n (d is
 * [B*S, C]). With n = S = 1 it is the sum of B rows: a bias gradient.
 */
export function sumRows(gpu: Gpu, a: { d: Tensor; out: Tensor; B: number; S: number; n: number; C: number; accumulate: boolean }): Dispatch {
  const what = `sumRows(${a.out.label})`;
  const B = count(what, 'B', a.B), S = count(what, 'S', a.S, 1), n = count(what, 'n', a.n, 1), C = count(what, 'C', a.C, 1);
  if (n > S) throw new Error(`${what}: n = ${n} rows do not fit in sequences of S = ${S}`);
  f32Size(what, 'd', a.d, B * S * C);
  f32Size(what, 'out', a.out, n * C);
  if (a.out.buffer === a.d.buffer) throw new Error(`${what}: out must not alias d`);
  return bindDispatch(gpu, {
    label: what, code, entryPoint: 'rows_sum', params: [B, S, n, C, a.accumulate ? 1 : 0], buffers: [a.out, a.d], workgroups: grid1d(n * C),
  });
}

/** out = tanh(x) over n elements (separate tensors). */
export function tanhForward(gpu: Gpu, a: { x: Tensor; out: Tensor; n: number }): Dispatch {
  const what = `tanhForward(${a.out.label})`;
  const n = count(what, 'n', a.n);
  f32Size(what, 'x', a.x, n);
  f32Size(what, 'out', a.out, n);
  if (a.out.buffer === a.x.buffer) throw new Error(`${what}: out must not alias x (backward needs both)`);
  return bindDispatch(gpu, { label: what, code, entryPoint: 'tanh_forward', params: [n, 0, 0, 0, 0], buffers: [a.out, a.x], workgroups: grid1d(n) });
}

/** dx = dout * (1 - y^2) with y = tanh(x) from the forward; dx may be dout, never y. */
export function tanhBackward(gpu: Gpu, a: { dout: Tensor; y: Tensor; dx: Tensor; n: number }): Dispatch {
  const what = `tanhBackward(${a.dx.label})`;
  const n = count(what, 'n', a.n);
  for (const [k, t] of [['dout', a.dout], ['y', a.y], ['dx', a.dx]] as const) f32Size(what, k, t, n);
  if (a.dx.buffer === a.y.buffer) throw new Error(`${what}: dx must not be y`);
  if (a.dx.buffer === a.dout.buffer) {
    return bindDispatch(gpu, { label: what, code, entryPoint: 'tanh_backward_inplace', params: [n, 0, 0, 0, 0], buffers: [a.dx, a.y], workgroups: grid1d(n) });
  }
  return bindDispatch(gpu, { label: what, code, entryPoint: 'tanh_backward', params: [n, 0, 0, 0, 0], buffers: [a.dx, a.y, a.dout], workgroups: grid1d(n) });
}
