import dropoutCode from '../../../shaders/dropout.wgsl?raw';
import maskCode from '../../../shaders/dropout_mask.wgsl?raw';
import type { Gpu } from '../gpu/gpu';
import { bindDispatch, f32, type Dispatch } from '../gpu/dispatch';
import type { Tensor } from '../gpu/tensor';
import { grid1d } from './grid';
import type { StepUniforms } from './step-uniforms';

/** shaders/dropout.wgsl with the mask it shares (shaders/dropout_mask.wgsl) in front. */
const code = maskCode + dropoutCode;

/** Threshold on the 32-bit hash below which an element is dropped: round(p * 2^32). */
export function dropoutThreshold(p: number): number {
  return Math.min(0xffffffff, Math.round(p * 2 ** 32));
}

function bind(
  gpu: Gpu,
  what: string,
  a: { src: Tensor; dst: Tensor; n: number; p: number; step: StepUniforms; salt: number; accumulate: boolean },
): Dispatch {
  if (!Number.isInteger(a.n) || a.n < 0) throw new Error(`${what}: n must be a non-negative integer (got ${a.n})`);
  if (!(a.p >= 0 && a.p < 1)) throw new Error(`${what}: p must be in [0, 1) (got ${a.p})`);
  if (!Number.isInteger(a.salt) || a.salt < 0 || a.salt > 0xffffffff) throw new Error(`${what}: salt must be a u32 (got ${a.salt})`);
  for (const t of [a.src, a.dst]) {
    if (t.dtype !== 'f32') throw new Error(`${what}: ${t.label} must be f32 (got ${t.dtype})`);
    if (t.size < a.n) throw new Error(`${what}: ${t.label} has ${t.size} elements, need n=${a.n}`);
  }
  const inPlace = a.src.buffer === a.dst.buffer;
  if (inPlace && a.accumulate) throw new Error(`${what}: accumulate needs separate input and output tensors`);
  return bindDispatch(gpu, {
    label: what,
    code,
    entryPoint: inPlace ? 'main_inplace' : 'main',
    params: [a.n, a.salt, dropoutThreshold(a.p), f32(1 / (1 - a.p)), a.accumulate ? 1 : 0],
    buffers: inPlace ? [a.step.buffer, a.dst] : [a.step.buffer, a.dst, a.src],
    workgroups: grid1d(a.n),
  });
}

/**
 * out = x * keep / (1 - p), keep a hash of (step seed, salt, index): each dropout site needs its own
 * salt, and the seed in `step` must change every step. out may be the same tensor as x.
 */
export function dropoutForward(gpu: Gpu, a: { x: Tensor; out: Tensor; n: number; p: number; step: StepUniforms; salt: number }): Dispatch {
  return bind(gpu, `dropoutForward(${a.out.label})`, { src: a.x, dst: a.out, n: a.n, p: a.p, step: a.step, salt: a.salt, accumulate: false });
}

/** dx (+)= dout * keep / (1 - p) with the forward's mask (same step seed and salt). dx may be dout when not accumulating. */
export function dropoutBackward(
  gpu: Gpu,
  a: { dout: Tensor; dx: Tensor; n: number; p: number; step: StepUniforms; salt: number; accumulate: boolean },
): Dispatch {
  return bind(gpu, `dropoutBackward(${a.dx.label})`, { src: a.dout, dst: a.dx, n: a.n, p: a.p, step: a.step, salt: a.salt, accumulate: a.accumulate });
}
