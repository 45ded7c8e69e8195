// The P = 0 case of the prefix kernel (no always-visible prefix keys): one shader for both.
import code from '../../../shaders/attention_prefix_softmax.wgsl?raw';
import type { Gpu } from '../gpu/gpu';
import { bindDispatch, f32, type Dispatch } from '../gpu/dispatch';
import type { Tensor } from '../gpu/tensor';
import { grid1d } from './grid';
import { reductionShader } from './subgroups';
import { SOFTMAX_ROWS_PER_WORKGROUP } from './attention-prefix-softmax';

export interface AttentionSoftmaxForwardArgs {
  /** [B*H, T, T] raw scores q.k (row i = query, column j = key). */
  scores: Tensor;
  /** [B*H, T, T]; may be the same tensor as scores. */
  probs: Tensor;
  /** u32 [B]: valid (unpadded) length of each sequence; key j is valid iff j < lengths[b]. */
  lengths: Tensor;
  B: number;
  H: number;
  T: number;
  /** Multiplies the scores before the softmax (1/sqrt(head dim)). */
  scale: number;
  /** Also require key j <= query i. */
  causal: boolean;
}

export interface AttentionSoftmaxBackwardArgs {
  dprobs: Tensor; // [B*H, T, T]
  probs: Tensor; // [B*H, T, T] from forward
  dscores: Tensor; // [B*H, T, T]; may be the same tensor as dprobs
  B: number;
  H: number;
  T: number;
  scale: number;
  /**
   * The forward's causal mask: key j > query i is then not read (neither P nor dP) and
   * its dscores is written 0, so dP may hold anything there (NaN included: the causal
   * products do not write dP's tiles above the diagonal). Default false.
   */
  causal?: boolean;
}

function checkDims(what: string, B: number, H: number, T: number, scale: number): number {
  for (const [k, v] of Object.entries({ B, H, T })) {
    if (!Number.isInteger(v) || v < 0) throw new Error(`${what}: ${k} must be a non-negative integer (got ${v})`);
  }
  if (!Number.isFinite(scale)) throw new Error(`${what}: scale must be finite (got ${scale})`);
  return B * H * T * T;
}

function checkF32(what: string, name: string, t: Tensor, n: number): void {
  if (t.dtype !== 'f32') throw new Error(`${what}: ${name} must be f32 (got ${t.dtype})`);
  if (t.size < n) throw new Error(`${what}: ${name} has ${t.size} elements, need B*H*T*T=${n}`);
}

/** Scaled, masked (padding and optionally causal) softmax over each score row. */
export function attentionSoftmaxForward(gpu: Gpu, a: AttentionSoftmaxForwardArgs): Dispatch {
  const what = `attentionSoftmaxForward(${a.probs.label})`;
  const n = checkDims(what, a.B, a.H, a.T, a.scale);
  checkF32(what, 'scores', a.scores, n);
  checkF32(what, 'probs', a.probs, n);
  if (a.lengths.dtype !== 'u32') throw new Error(`${what}: lengths must be u32 (got ${a.lengths.dtype})`);
  if (a.lengths.size < a.B) throw new Error(`${what}: lengths has ${a.lengths.size} elements, need B=${a.B}`);
  if (a.lengths.buffer === a.probs.buffer) throw new Error(`${what}: probs must not alias lengths`);
  const inPlace = a.probs.buffer === a.scores.buffer;
  const shader = reductionShader(gpu, code);
  return bindDispatch(gpu, {
    label: what,
    code: shader.code,
    entryPoint: inPlace ? 'forward_inplace' : 'forward',
    constants: shader.constants,
    params: [a.B, a.H, a.T, 0, f32(a.scale), a.causal ? 1 : 0],
    buffers: inPlace ? [a.probs, a.lengths] : [a.probs, a.lengths, a.scores],
    workgroups: grid1d(a.B * a.H * a.T, SOFTMAX_ROWS_PER_WORKGROUP),
  });
}

/** dscores = scale * P * (dP - rowsum(P * dP)) (0 above the diagonal when causal). */
export function attentionSoftmaxBackward(gpu: Gpu, a: AttentionSoftmaxBackwardArgs): Dispatch {
  const what = `attentionSoftmaxBackward(${a.dscores.label})`;
  const n = checkDims(what, a.B, a.H, a.T, a.scale);
  checkF32(what, 'dprobs', a.dprobs, n);
  checkF32(what, 'probs', a.probs, n);
  checkF32(what, 'dscores', a.dscores, n);
  if (a.dscores.buffer === a.probs.buffer) throw new Error(`${what}: dscores must not be the probs tensor`);
  const inPlace = a.dscores.buffer === a.dprobs.buffer;
  const shader = reductionShader(gpu, code);
  return bindDispatch(gpu, {
    label: what,
    code: shader.code,
    entryPoint: inPlace ? 'backward_inplace' : 'backward',
    constants: shader.constants,
    params: [a.B, a.H, a.T, 0, f32(a.scale), a.causal ? 1 : 0],
    buffers: inPlace ? [a.dscores, a.probs] : [a.dscores, a.probs, a.dprobs],
    workgroups: grid1d(a.B * a.H * a.T, SOFTMAX_ROWS_PER_WORKGROUP),
  });
}
