// Wrapper of shaders/silu.wgsl: SiLU (transformers' "swish"), forward and backward.
import code from '../../../shaders/silu.wgsl?raw';
import type { Gpu } from '../gpu/gpu';
import { bindDispatch, type Dispatch } from '../gpu/dispatch';
import type { Tensor } from '../gpu/tensor';
import { grid1d } from './grid';

function check(what: string, n: number, named: Record<string, Tensor>): void {
  if (!Number.isInteger(n) || n < 0) throw new Error(`${what}: n must be a non-negative integer (got ${n})`);
  for (const [name, t] of Object.entries(named)) {
    if (t.dtype !== 'f32') throw new Error(`${what}: ${name} must be f32 (got ${t.dtype})`);
    if (t.size < n) throw new Error(`${what}: ${name} has ${t.size} elements, need n=${n}`);
  }
}

/** out = x * sigmoid(x) over n elements. out may be the same tensor as x. */
export function siluForward(gpu: Gpu, a: { x: Tensor; out: Tensor; n: number }): Dispatch {
  const what = `siluForward(${a.out.label})`;
  check(what, a.n, { x: a.x, out: a.out });
  const inPlace = a.out.buffer === a.x.buffer;
  return bindDispatch(gpu, {
    label: what, code, entryPoint: inPlace ? 'forward_inplace' : 'forward', params: [a.n],
    buffers: inPlace ? [a.out] : [a.out, a.x], workgroups: grid1d(a.n),
  });
}

/** dx = dout * silu'(x), from the forward INPUT x. dx may be the same tensor as dout (not as x). */
export function siluBackward(gpu: Gpu, a: { dout: Tensor; x: Tensor; dx: Tensor; n: number }): Dispatch {
  const what = `siluBackward(${a.dx.label})`;
  check(what, a.n, { dout: a.dout, x: a.x, dx: a.dx });
  if (a.dx.buffer === a.x.buffer) throw new Error(`${what}: dx must not be the forward input x`);
  const inPlace = a.dx.buffer === a.dout.buffer;
  return bindDispatch(gpu, {
    label: what, code, entryPoint: inPlace ? 'backward_inplace' : 'backward', params: [a.n],
    buffers: inPlace ? [a.dx, a.x] : [a.dx, a.x, a.dout], workgroups: grid1d(a.n),
  });
}
