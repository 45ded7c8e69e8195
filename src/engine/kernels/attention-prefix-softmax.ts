// Attention softmax over [B*H, T, P+T] score rows: P prefix keys every query sees (prefix
// tuning's learned key/value rows), then the sequence's own T keys under the causal and padding
// masks. See shaders/attention_prefix_softmax.wgsl.
import code from '../../../shaders/attention_prefix_softmax.wgsl?raw';
import type { Gpu } from '../gpu/gpu';
import { bindDispatch, f32, type Dispatch } from '../gpu/dispatch';
import type { Tensor } from '../gpu/tensor';
import { grid1d } from './grid';
import { reductionShader } from './subgroups';

/** Score rows per workgroup of shaders/attention_prefix_softmax.wgsl (ROWS_PER_WG there). */
export const SOFTMAX_ROWS_PER_WORKGROUP = 8;

export interface AttentionPrefixSoftmaxForwardArgs {
  /** [B*H, T, P+T] raw scores (row i = query; columns: P prefix keys, then the T real keys). */
  scores: Tensor;
  /** [B*H, T, P+T]; may be the same tensor as scores. */
  probs: Tensor;
  /** u32 [B]: valid (unpadded) length of each sequence; real key j is valid iff j < lengths[b]. */
  lengths: Tensor;
  B: number;
  H: number;
  T: number;
  /** Prefix keys before the real ones (always visible). */
  P: number;
  scale: number;
  /** Also require real key j <= query i. */
  causal: boolean;
}

export interface AttentionPrefixSoftmaxBackwardArgs {
  dprobs: Tensor;
  probs: Tensor;
  /** may be the same tensor as dprobs */
  dscores: Tensor;
  B: number;
  H: number;
  T: number;
  P: number;
  scale: number;
  /**
   * The forward's causal mask: real key j > query i is then not read (neither P nor dP) and
   * its dscores is written 0, so dP may hold anything there (NaN included: the causal
   * products do not write dP's tiles above the diagonal). Prefix columns are always read. Default false.
   */
  causal?: boolean;
}

function checkDims(what: string, B: number, H: number, T: number, P: number, scale: number): number {
  for (const [k, v] of Object.entries({ B, H, T, P })) {
    if (!Number.isInteger(v) || v < 0) throw new Error(`${what}: ${k} must be a non-negative integer (got ${v})`);
  }
  if (!Number.isFinite(scale)) throw new Error(`${what}: scale must be finite (got ${scale})`);
  return B * H * T * (P + T);
}

function checkF32(what: string, name: string, t: Tensor, n: number): void {
  if (t.dtype !== 'f32') throw new Error(`${what}: ${name} must be f32 (got ${t.dtype})`);
  if (t.size < n) throw new Error(`${what}: ${name} has ${t.size} elements, need B*H*T*(P+T)=${n}`);
}

/** Scaled softmax with every prefix key visible and the real keys masked (padding, causal). */
export function attentionPrefixSoftmaxForward(gpu: Gpu, a: AttentionPrefixSoftmaxForwardArgs): Dispatch {
  const what = `attentionPrefixSoftmaxForward(${a.probs.label})`;
  const n = checkDims(what, a.B, a.H, a.T, a.P, a.scale);
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
    params: [a.B, a.H, a.T, a.P, f32(a.scale), a.causal ? 1 : 0],
    buffers: inPlace ? [a.probs, a.lengths] : [a.probs, a.lengths, a.scores],
    workgroups: grid1d(a.B * a.H * a.T, SOFTMAX_ROWS_PER_WORKGROUP),
  });
}

/** dscores = scale * P * (dP - rowsum(P * dP)) over rows of P+T columns (0 above the diagonal when causal). */
export function attentionPrefixSoftmaxBackward(gpu: Gpu, a: AttentionPrefixSoftmaxBackwardArgs): Dispatch {
  const what = `attentionPrefixSoftmaxBackward(${a.dscores.label})`;
  const n = checkDims(what, a.B, a.H, a.T, a.P, a.scale);
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
    params: [a.B, a.H, a.T, a.P, f32(a.scale), a.causal ? 1 : 0],
    buffers: inPlace ? [a.dscores, a.probs] : [a.dscores, a.probs, a.dprobs],
    workgroups: grid1d(a.B * a.H * a.T, SOFTMAX_ROWS_PER_WORKGROUP),
  });
}
