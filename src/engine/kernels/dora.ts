// Wrappers of shaders/dora.wgsl: DoRA's weight norm of the merged weight (with the magnitude's
// ratio to it), column scaling with a shift and an optional bias (the layer's output rescaled per
// output feature), and column dot products divided per column (the magnitude's gradient).
import code from '../../../shaders/dora.wgsl?raw';
import type { Gpu } from '../gpu/gpu';
import { bindDispatch, f32, type Dispatch } from '../gpu/dispatch';
import type { Tensor } from '../gpu/tensor';
import { grid1d } from './grid';
import { withPackedF16 } from './packed-f16';

function count(what: string, name: string, v: number, min = 0): number {
  if (!Number.isInteger(v) || v < min) throw new Error(`${what}: ${name} must be an integer >= ${min} (got ${v})`);
  return v;
}

function f32Size(what: string, name: string, t: Tensor, n: number): void {
  if (t.dtype !== 'f32') throw new Error(`${what}: ${name} (${t.label}) must be f32 (got ${t.dtype})`);
  if (t.size < n) throw new Error(`${what}: ${name} (${t.label}) has ${t.size} elements, need ${n}`);
}

function distinct(what: string, outs: Tensor[], ins: Tensor[]): void {
  outs.forEach((o, i) => {
    for (const t of [...outs.filter((_, j) => j !== i), ...ins]) {
      if (o.buffer === t.buffer) throw new Error(`${what}: output ${o.label} must not alias ${t.label}`);
    }
  });
}

/**
 * PEFT's DoRA weight norm (get_weight_norm, on the merged weight): for every output feature o,
 * norm[o] = || W[o, :] + scale * (B A)[o, :] || over the K inputs, and gscale[o] = m[o] / norm[o].
 * W is [N, K] ('out_in', nn.Linear) or [K, N] ('in_out', GPT-2's Conv1D, whose columns are the
 * output features), f32 or f16; A is [r, K], B [N, r], m [N].
 */
export function doraWeightNorm(
  gpu: Gpu,
  a: { W: Tensor; layout: 'in_out' | 'out_in'; A: Tensor; B: Tensor; m: Tensor; scale: number; norm: Tensor; gscale: Tensor; N: number; K: number; r: number },
): Dispatch {
  const what = `doraWeightNorm(${a.norm.label})`;
  const N = count(what, 'N', a.N, 1), K = count(what, 'K', a.K, 1), r = count(what, 'r', a.r, 1);
  if (!Number.isFinite(a.scale)) throw new Error(`${what}: scale must be finite (got ${a.scale})`);
  // W may be kept in f16 (frozen weights at half the memory): read through packed-f16.ts, summed in f32
  if (a.W.dtype === 'f16') {
    if (a.W.size < N * K) throw new Error(`${what}: W (${a.W.label}) has ${a.W.size} elements, need ${N * K}`);
  } else f32Size(what, 'W', a.W, N * K);
  f32Size(what, 'A', a.A, r * K);
  f32Size(what, 'B', a.B, N * r);
  f32Size(what, 'm', a.m, N);
  f32Size(what, 'norm', a.norm, N);
  f32Size(what, 'gscale', a.gscale, N);
  distinct(what, [a.norm, a.gscale], [a.W, a.A, a.B, a.m]);
  const groups: [number, number, number] = N <= 65535 ? [N, 1, 1] : [65535, Math.ceil(N / 65535), 1];
  return bindDispatch(gpu, {
    label: what, code: a.W.dtype === 'f16' ? withPackedF16(code, 'in0') : code, entryPoint: 'weight_norm',
    params: [N, K, r, a.layout === 'in_out' ? 1 : 0, f32(a.scale)],
    buffers: [a.norm, a.W, a.A, a.B, a.m, a.gscale], workgroups: groups,
  });
}

/**
 * out[r, c] = (accumulate ? out[r, c] : 0) + x[r, c] * (s[c] + shift) (+ bias[c]) over [rows, N].
 * out must not alias x, s or bias.
 */
export function scaleShiftColumns(
  gpu: Gpu,
  a: { x: Tensor; s: Tensor; shift: number; bias?: Tensor | null; out: Tensor; rows: number; N: number; accumulate: boolean },
): Dispatch {
  const what = `scaleShiftColumns(${a.out.label})`;
  const rows = count(what, 'rows', a.rows), N = count(what, 'N', a.N, 1);
  if (!Number.isFinite(a.shift)) throw new Error(`${what}: shift must be finite (got ${a.shift})`);
  f32Size(what, 'x', a.x, rows * N);
  f32Size(what, 's', a.s, N);
  f32Size(what, 'out', a.out, rows * N);
  if (a.bias) f32Size(what, 'bias', a.bias, N);
  distinct(what, [a.out], [a.x, a.s, ...(a.bias ? [a.bias] : [])]);
  return bindDispatch(gpu, {
    label: what, code, entryPoint: a.bias ? 'scale_shift_bias' : 'scale_shift',
    params: [rows, N, a.accumulate ? 1 : 0, 0, f32(a.shift)],
    buffers: a.bias ? [a.out, a.x, a.s, a.bias] : [a.out, a.x, a.s], workgroups: grid1d(rows * N),
  });
}

/** out[c] = (accumulate ? out[c] : 0) + (sum over r < rows of a[r, c] * b[r, c]) / d[c]. */
export function columnDotDiv(gpu: Gpu, x: { a: Tensor; b: Tensor; d: Tensor; out: Tensor; rows: number; N: number; accumulate: boolean }): Dispatch {
  const what = `columnDotDiv(${x.out.label})`;
  const rows = count(what, 'rows', x.rows), N = count(what, 'N', x.N, 1);
  f32Size(what, 'a', x.a, rows * N);
  f32Size(what, 'b', x.b, rows * N);
  f32Size(what, 'd', x.d, N);
  f32Size(what, 'out', x.out, N);
  distinct(what, [x.out], [x.a, x.b, x.d]);
  return bindDispatch(gpu, {
    label: what, code, entryPoint: 'column_dot_div',
    params: [rows, N, x.accumulate ? 1 : 0, 0, f32(0)],
    buffers: [x.out, x.a, x.b, x.d], workgroups: grid1d(N),
  });
}
