import code from '../../../shaders/adamw.wgsl?raw';
import type { Gpu } from '../gpu/gpu';
import { bindDispatch, type Dispatch } from '../gpu/dispatch';
import type { Tensor } from '../gpu/tensor';
import { grid1d } from './grid';
import type { StepUniforms } from './step-uniforms';

export interface AdamwArgs {
  param: Tensor;
  grad: Tensor;
  /** First moment, zero before step 1. */
  m: Tensor;
  /** Second moment, zero before step 1. */
  v: Tensor;
  n: number;
  /** lr, betas, eps, weight decay and bias corrections of the current step. */
  step: StepUniforms;
  /** The [2] output of clipCoefficient; grad is multiplied by clip[1]. */
  clip: Tensor;
}

/** One torch.optim.AdamW update of param, m and v over n elements. */
export function adamwUpdate(gpu: Gpu, a: AdamwArgs): Dispatch {
  const what = `adamwUpdate(${a.param.label})`;
  if (!Number.isInteger(a.n) || a.n < 0) throw new Error(`${what}: n must be a non-negative integer (got ${a.n})`);
  for (const [name, t] of Object.entries({ param: a.param, grad: a.grad, m: a.m, v: a.v })) {
    if (t.dtype !== 'f32') throw new Error(`${what}: ${name} must be f32 (got ${t.dtype})`);
    if (t.size < a.n) throw new Error(`${what}: ${name} has ${t.size} elements, need n=${a.n}`);
  }
  if (a.clip.dtype !== 'f32' || a.clip.size < 2) throw new Error(`${what}: clip must be the 2-element f32 output of clipCoefficient`);
  const written = [a.param.buffer, a.m.buffer, a.v.buffer];
  if (new Set(written).size !== 3 || written.some((b) => b === a.grad.buffer || b === a.clip.buffer)) {
    throw new Error(`${what}: param, m and v must be distinct buffers, none of them grad or clip`);
  }
  return bindDispatch(gpu, {
    label: what,
    code,
    params: [a.n],
    buffers: [a.step.buffer, a.clip, a.grad, a.param, a.m, a.v],
    workgroups: grid1d(a.n),
  });
}
