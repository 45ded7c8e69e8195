import code from '../../../shaders/layernorm.wgsl?raw';
import type { Gpu } from '../gpu/gpu';
import { bindDispatch, f32, type Dispatch } from '../gpu/dispatch';
import type { Tensor } from '../gpu/tensor';
import { grid1d } from './grid';
import { reductionShader } from './subgroups';

export interface LayerNormForwardArgs {
  x: Tensor; // [rows, C]
  weight: Tensor; // [C]
  bias: Tensor; // [C]
  out: Tensor; // [rows, C]
  mean: Tensor; // [rows], saved for backward
  rstd: Tensor; // [rows], 1 / sqrt(var + eps), saved for backward
  rows: number;
  C: number;
  eps: number;
  /**
   * Also copy x here ([rows, C]): the residual stream carried on to the buffer the next product
   * accumulates into, in the norm's pass instead of a copy of its own.
   */
  copyTo?: Tensor;
}

export interface LayerNormBackwardArgs {
  dout: Tensor; // [rows, C]
  x: Tensor; // [rows, C], the forward input
  weight: Tensor; // [C]
  mean: Tensor; // [rows] from forward
  rstd: Tensor; // [rows] from forward
  dx: Tensor; // [rows, C]
  rows: number;
  C: number;
  /** dx += instead of dx = (residual branches). */
  accumulate: boolean;
}

function checkDims(what: string, rows: number, C: number): void {
  if (!Number.isInteger(rows) || rows < 0) throw new Error(`${what}: rows must be a non-negative integer (got ${rows})`);
  if (!Number.isInteger(C) || C < 1) throw new Error(`${what}: C must be a positive integer (got ${C})`);
}

function checkSize(what: string, name: string, t: Tensor, n: number): void {
  if (t.dtype !== 'f32') throw new Error(`${what}: ${name} must be f32 (got ${t.dtype})`);
  if (t.size < n) throw new Error(`${what}: ${name} has ${t.size} elements, need ${n}`);
}

/**
 * Per-row LayerNorm (biased variance, like torch); one workgroup per row. The row sums use
 * subgroup operations where the device has them (kernels/subgroups.ts reductionVariant).
 */
export function layerNormForward(gpu: Gpu, a: LayerNormForwardArgs): Dispatch {
  const what = `layerNormForward(${a.out.label})`;
  checkDims(what, a.rows, a.C);
  if (!(a.eps > 0)) throw new Error(`${what}: eps must be > 0 (got ${a.eps})`);
  const n = a.rows * a.C;
  checkSize(what, 'x', a.x, n);
  checkSize(what, 'out', a.out, n);
  checkSize(what, 'weight', a.weight, a.C);
  checkSize(what, 'bias', a.bias, a.C);
  checkSize(what, 'mean', a.mean, a.rows);
  checkSize(what, 'rstd', a.rstd, a.rows);
  if (a.copyTo) checkSize(what, 'copyTo', a.copyTo, n);
  const outs = [a.out.buffer, a.mean.buffer, a.rstd.buffer, ...(a.copyTo ? [a.copyTo.buffer] : [])];
  if (new Set(outs).size !== outs.length || outs.some((b) => b === a.x.buffer || b === a.weight.buffer || b === a.bias.buffer)) {
    throw new Error(`${what}: out, mean, rstd${a.copyTo ? ' and copyTo' : ''} must be distinct buffers, none of them an input`);
  }
  const shader = reductionShader(gpu, code);
  return bindDispatch(gpu, {
    label: what,
    code: shader.code,
    entryPoint: a.copyTo ? 'forward_copy' : 'forward',
    constants: shader.constants,
    params: [a.rows, a.C, f32(a.eps), 0],
    buffers: [a.x, a.weight, a.bias, a.out, a.mean, a.rstd, ...(a.copyTo ? [a.copyTo] : [])],
    workgroups: grid1d(a.rows, 1),
  });
}

/** Gradient w.r.t. the LayerNorm input only (weight and bias are frozen). */
export function layerNormBackward(gpu: Gpu, a: LayerNormBackwardArgs): Dispatch {
  const what = `layerNormBackward(${a.dx.label})`;
  checkDims(what, a.rows, a.C);
  const n = a.rows * a.C;
  checkSize(what, 'dout', a.dout, n);
  checkSize(what, 'x', a.x, n);
  checkSize(what, 'dx', a.dx, n);
  checkSize(what, 'weight', a.weight, a.C);
  checkSize(what, 'mean', a.mean, a.rows);
  checkSize(what, 'rstd', a.rstd, a.rows);
  if ([a.dout, a.x, a.weight, a.mean, a.rstd].some((t) => t.buffer === a.dx.buffer)) {
    // WebGPU rejects one buffer bound both writable and read-only in a dispatch.
    throw new Error(`${what}: dx must not alias an input`);
  }
  const shader = reductionShader(gpu, code);
  return bindDispatch(gpu, {
    label: what,
    code: shader.code,
    entryPoint: 'backward',
    constants: shader.constants,
    params: [a.rows, a.C, f32(0), a.accumulate ? 1 : 0],
    buffers: [a.dout, a.x, a.weight, a.mean, a.rstd, a.dx],
    workgroups: grid1d(a.rows, 1),
  });
}
