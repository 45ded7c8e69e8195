import code from '../../../shaders/relu_tanh.wgsl?raw';
import type { Gpu } from '../gpu/gpu';
import { bindDispatch, type Dispatch } from '../gpu/dispatch';
import type { Tensor } from '../gpu/tensor';
import { grid1d } from './grid';

export type HeadActivation = 'relu' | 'tanh';

function check(what: string, n: number, named: Record<string, Tensor>): void {
  if (!Number.isInteger(n) || n < 0) throw new Error(`${what}: n must be a non-negative integer (got ${n})`);
  for (const [name, t] of Object.entries(named)) {
    if (t.dtype !== 'f32') throw new Error(`${what}: ${name} must be f32 (got ${t.dtype})`);
    if (t.size < n) throw new Error(`${what}: ${name} has ${t.size} elements, need n=${n}`);
  }
}

/** out = relu(x) or tanh(x) over n elements. out may be the same tensor as x. */
export function activationForward(gpu: Gpu, kind: HeadActivation, a: { x: Tensor; out: Tensor; n: number }): Dispatch {
  const what = `${kind}Forward(${a.out.label})`;
  check(what, a.n, { x: a.x, out: a.out });
  const inPlace = a.out.buffer === a.x.buffer;
  return bindDispatch(gpu, {
    label: what,
    code,
    entryPoint: `${kind}_forward${inPlace ? '_inplace' : ''}`,
    params: [a.n],
    buffers: inPlace ? [a.out] : [a.out, a.x],
    workgroups: grid1d(a.n),
  });
}

/**
 * dx = dout * act'(x), computed from the forward OUTPUT y (relu: y > 0; tanh: 1 - y^2).
 * dx may be the same tensor as dout, never y.
 */
export function activationBackward(gpu: Gpu, kind: HeadActivation, a: { dout: Tensor; y: Tensor; dx: Tensor; n: number }): Dispatch {
  const what = `${kind}Backward(${a.dx.label})`;
  check(what, a.n, { dout: a.dout, y: a.y, dx: a.dx });
  if (a.dx.buffer === a.y.buffer) throw new Error(`${what}: dx must not be the forward output y`);
  const inPlace = a.dx.buffer === a.dout.buffer;
  return bindDispatch(gpu, {
    label: what,
    code,
    entryPoint: `${kind}_backward${inPlace ? '_inplace' : ''}`,
    params: [a.n],
    buffers: inPlace ? [a.dx, a.y] : [a.dx, a.y, a.dout],
    workgroups: grid1d(a.n),
  });
}
