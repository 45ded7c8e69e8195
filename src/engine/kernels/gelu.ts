import tanhKernels from '../../../shaders/gelu.wgsl?raw';
import geluTanhCode from '../../../shaders/gelu_tanh.wgsl?raw';
import erfCode from '../../../shaders/gelu_erf.wgsl?raw';
import type { Gpu } from '../gpu/gpu';
import { bindDispatch, type Dispatch } from '../gpu/dispatch';
import type { Tensor } from '../gpu/tensor';
import { grid1d } from './grid';

/** 'tanh': GPT-2's approximation (transformers "gelu_new"); 'erf': the exact GELU of BERT/DistilBERT ("gelu"). */
export type GeluForm = 'tanh' | 'erf';
// the tanh form's kernels with its definition (shaders/gelu_tanh.wgsl, shared with the fused matmuls) in front
const CODE: Record<GeluForm, string> = { tanh: geluTanhCode + tanhKernels, erf: erfCode };

function check(what: string, n: number, named: Record<string, Tensor>): void {
  if (!Number.isInteger(n) || n < 0) throw new Error(`${what}: n must be a non-negative integer (got ${n})`);
  for (const [name, t] of Object.entries(named)) {
    if (t.dtype !== 'f32') throw new Error(`${what}: ${name} must be f32 (got ${t.dtype})`);
    if (t.size < n) throw new Error(`${what}: ${name} has ${t.size} elements, need n=${n}`);
  }
}

/** out = gelu(x) in the given form (default tanh). out may be the same tensor as x. */
export function geluForward(gpu: Gpu, a: { x: Tensor; out: Tensor; n: number; form?: GeluForm }): Dispatch {
  const form = a.form ?? 'tanh';
  const what = `geluForward[${form}](${a.out.label})`;
  check(what, a.n, { x: a.x, out: a.out });
  const inPlace = a.out.buffer === a.x.buffer;
  return bindDispatch(gpu, {
    label: what,
    code: CODE[form],
    entryPoint: inPlace ? 'forward_inplace' : 'forward',
    params: [a.n],
    buffers: inPlace ? [a.out] : [a.out, a.x],
    workgroups: grid1d(a.n),
  });
}

/** dx = dout * gelu'(x) in the given form (default tanh). dx may be the same tensor as dout (not as x). */
export function geluBackward(gpu: Gpu, a: { dout: Tensor; x: Tensor; dx: Tensor; n: number; form?: GeluForm }): Dispatch {
  const form = a.form ?? 'tanh';
  const what = `geluBackward[${form}](${a.dx.label})`;
  check(what, a.n, { dout: a.dout, x: a.x, dx: a.dx });
  if (a.dx.buffer === a.x.buffer) throw new Error(`${what}: dx must not be the forward input x`);
  const inPlace = a.dx.buffer === a.dout.buffer;
  return bindDispatch(gpu, {
    label: what,
    code: CODE[form],
    entryPoint: inPlace ? 'backward_inplace' : 'backward',
    params: [a.n],
    buffers: inPlace ? [a.dx, a.x] : [a.dx, a.x, a.dout],
    workgroups: grid1d(a.n),
  });
}
