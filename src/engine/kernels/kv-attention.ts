// Attention of new query rows over a key/value cache (generation). See shaders/kv_attention.wgsl.
import code from '../../../shaders/kv_attention.wgsl?raw';
import type { Gpu } from '../gpu/gpu';
import { bindDispatch, f32, type Dispatch } from '../gpu/dispatch';
import type { Tensor } from '../gpu/tensor';
import { grid1d } from './grid';

export interface KvAttentionArgs {
  /** u32 [>= 1]: state[0] = cache rows filled before these queries (the first query's position). */
  state: Tensor;
  /** Query rows [rows, qStride]; head h's query is columns qOffset + h*D .. + D. */
  q: Tensor;
  qStride: number;
  qOffset: number;
  /** [capacity, kvHeads*D] each: row j holds position j's keys / values, head g at columns g*D. */
  kCache: Tensor;
  vCache: Tensor;
  /** Scratch [rows*H, capacity]. */
  scores: Tensor;
  /** [rows, outStride]; head h writes columns h*D .. + D. */
  out: Tensor;
  outStride: number;
  rows: number;
  /** Query heads. */
  H: number;
  /** Key/value heads (H is a multiple of it: query head h reads key/value head h / (H / kvHeads)). */
  kvHeads: number;
  D: number;
  capacity: number;
  scale: number;
}

/** Causal attention of query i (at position state[0] + i) over cache rows 0 .. state[0] + i. */
export function kvAttention(gpu: Gpu, a: KvAttentionArgs): Dispatch {
  const what = `kvAttention(${a.out.label})`;
  for (const [k, v] of Object.entries({ rows: a.rows, H: a.H, kvHeads: a.kvHeads, D: a.D, capacity: a.capacity, qStride: a.qStride, outStride: a.outStride })) {
    if (!Number.isInteger(v) || v < 1) throw new Error(`${what}: ${k} must be a positive integer (got ${v})`);
  }
  if (!Number.isInteger(a.qOffset) || a.qOffset < 0) throw new Error(`${what}: qOffset must be a non-negative integer (got ${a.qOffset})`);
  if (a.H % a.kvHeads !== 0) throw new Error(`${what}: ${a.H} query heads are not a multiple of ${a.kvHeads} key/value heads`);
  if (!Number.isFinite(a.scale)) throw new Error(`${what}: scale must be finite (got ${a.scale})`);
  if (a.qOffset + a.H * a.D > a.qStride) throw new Error(`${what}: query heads end at column ${a.qOffset + a.H * a.D}, past qStride ${a.qStride}`);
  if (a.H * a.D > a.outStride) throw new Error(`${what}: ${a.H} heads of ${a.D} do not fit outStride ${a.outStride}`);
  const kvStride = a.kvHeads * a.D;
  const need: [string, Tensor, number][] = [
    ['q', a.q, a.rows * a.qStride], ['kCache', a.kCache, a.capacity * kvStride], ['vCache', a.vCache, a.capacity * kvStride],
    ['scores', a.scores, a.rows * a.H * a.capacity], ['out', a.out, a.rows * a.outStride],
  ];
  for (const [name, t, n] of need) {
    if (t.dtype !== 'f32') throw new Error(`${what}: ${name} must be f32 (got ${t.dtype})`);
    if (t.size < n) throw new Error(`${what}: ${name} has ${t.size} elements, need ${n}`);
  }
  if (a.state.dtype !== 'u32' || a.state.size < 1) throw new Error(`${what}: state must be a u32 tensor with at least one element`);
  const written = new Set([a.out.buffer, a.scores.buffer]);
  if (written.size !== 2 || [a.q, a.kCache, a.vCache, a.state].some((t) => written.has(t.buffer))) throw new Error(`${what}: out and scores must be separate from each other and from the inputs`);
  return bindDispatch(gpu, {
    label: what,
    code,
    params: [a.rows, a.H, a.H / a.kvHeads, a.D, a.capacity, a.qStride, a.qOffset, kvStride, a.outStride, f32(a.scale)],
    buffers: [a.state, a.q, a.kCache, a.vCache, a.scores, a.out],
    workgroups: grid1d(a.rows * a.H, 1),
  });
}
