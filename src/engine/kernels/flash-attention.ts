// Flash attention: causal (or full) self-attention with padding masks as fused kernels with an
// online softmax, forward and backward, never storing the [B, H, T, T] scores or probabilities.
// Same result as scores = scale * q.k^T, attentionSoftmaxForward (kernels/attention-softmax.ts),
// probs @ v. See shaders/flash_attention_forward.wgsl (forward, tiling, mask),
// shaders/flash_attention_backward.wgsl (the backward's dispatches) and its _dkdv, _reduce and _dq
// kernels. D and the tiling are baked into the shader text at bind time (bake below).
import forwardCode from '../../../shaders/flash_attention_forward.wgsl?raw';
import prepCode from '../../../shaders/flash_attention_backward.wgsl?raw';
import dqCode from '../../../shaders/flash_attention_backward_dq.wgsl?raw';
import dkdvCode from '../../../shaders/flash_attention_backward_dkdv.wgsl?raw';
import reduceCode from '../../../shaders/flash_attention_backward_reduce.wgsl?raw';
import type { Gpu } from '../gpu/gpu';
import { bindDispatch, f32, type Dispatch } from '../gpu/dispatch';
import type { Tensor } from '../gpu/tensor';
import { grid1d } from './grid';

/**
 * The attention: which tensors hold q, k and v and how. Element (b, t, h, d) of q (b < B, t < T,
 * h < H, d < D) is at offsetQ + (b*T + t)*ldq + h*D + d; k and v have kvHeads heads, and query head
 * h reads key/value head floor(h / (H / kvHeads)) at offsetK + (b*T + t)*ldk + g*D + d (v: offsetV,
 * ldv). q, k and v may be one buffer (GPT-2's packed qkv rows: ldq = ldk = ldv = 3C, offsets 0, C, 2C).
 * Key j is visible to query i iff j < lengths[b] (right padding) and, when causal, j <= i; a
 * query that sees no key (lengths[b] = 0) gets output 0 and gradient 0. Queries at t >= lengths[b]
 * are computed (over the visible keys) like the others.
 */
export interface FlashAttentionShape {
  /** Sequences. */
  B: number;
  /** Positions per sequence (rows b*T .. b*T + T - 1 of every tensor). */
  T: number;
  /** Query heads. */
  H: number;
  /** Key/value heads: H is a multiple of it (H for plain multi-head attention). */
  kvHeads: number;
  /** Head size: a multiple of 4 from 4 to MAX_HEAD_DIM (128), with flashAttentionSupported(gpu, D). */
  D: number;
  /** Multiplies q.k before the softmax (1/sqrt(D)). */
  scale: number;
  /** Also require key j <= query i. */
  causal: boolean;
  /** u32 [>= B]: valid (unpadded) length of each sequence (values past T act as T). */
  lengths: Tensor;
  /** f32 queries; head h of row b*T + t at offsetQ (default 0) + (b*T + t)*ldq + h*D, ldq >= H*D. */
  q: Tensor;
  offsetQ?: number;
  ldq: number;
  /** f32 keys, kvHeads heads of D per row: offsetK (default 0), ldk >= kvHeads*D. */
  k: Tensor;
  offsetK?: number;
  ldk: number;
  /** f32 values, laid out like k: offsetV (default 0), ldv >= kvHeads*D. */
  v: Tensor;
  offsetV?: number;
  ldv: number;
}

export interface FlashAttentionForwardArgs extends FlashAttentionShape {
  /** f32 output, laid out like q: head h of row b*T + t at offsetO (default 0) + (b*T + t)*ldo + h*D. Written. */
  out: Tensor;
  offsetO?: number;
  ldo: number;
  /**
   * f32 [>= B*H*T], written: lse[(b*H + h)*T + t] = ln(sum over visible j of exp(scale * q.k_j)),
   * the backward's input; FLASH_EMPTY_LSE for a query that sees no key.
   */
  lse: Tensor;
  /** Force the tiling (tests, benchmarks); default flashAttentionTiles(gpu, D).forward. */
  tiles?: FlashTile;
}

export interface FlashAttentionBackwardArgs extends FlashAttentionShape {
  /** The forward's output and lse (same layout as there). */
  out: Tensor;
  offsetO?: number;
  ldo: number;
  lse: Tensor;
  /** f32 gradient of the output, laid out like out: offsetDO (default 0), lddo >= H*D. */
  dout: Tensor;
  offsetDO?: number;
  lddo: number;
  /** f32 scratch [>= B*H*T]: rowsum(dout * out) per (b, h, t), written by the first dispatch. */
  delta: Tensor;
  /** f32 gradient of q, laid out like q (offsetDQ, lddq >= H*D). Written, not accumulated. */
  dq: Tensor;
  offsetDQ?: number;
  lddq: number;
  /**
   * f32 gradients of k and v, laid out like k and v (offsetDK / lddk, offsetDV / lddv >= kvHeads*D;
   * with grouped-query heads, the sum over the group's query heads). Written, not accumulated.
   * dq, dk and dv may share one buffer (GPT-2's dqkv rows) when their columns do not overlap
   * (same row stride, disjoint column ranges); dk and dv are then bound once.
   */
  dk: Tensor;
  offsetDK?: number;
  lddk: number;
  dv: Tensor;
  offsetDV?: number;
  lddv: number;
  /**
   * Optional f32 scratch of at least flashAttentionScratchElements(B, T, H, D) elements, its own
   * buffer. With grouped-query heads (kvHeads < H) the dK/dV kernel then runs one workgroup per
   * query head (H / kvHeads times as many, each walking one head instead of the group's) writing
   * per-head partial sums here, and a small kernel sums each group into dk and dv: SmolLM2's
   * 9 heads over 3 make 3x the workgroups and a third of the longest one's work. It also lets
   * separate dk and dv buffers do with 8 storage bindings (see flashAttentionSupported). Unused
   * when kvHeads == H, unless dk and dv are separate buffers on a device with only 8 bindings.
   */
  dkvScratch?: Tensor;
  /** Force the tilings (tests, benchmarks); default flashAttentionTiles(gpu, D). */
  tiles?: { dq?: FlashTile; dkdv?: FlashTile };
}

/**
 * A kernel's thread grid: TR row groups x TC column groups, each thread a 4 x 4 tile, so 4*TR rows
 * and 4*TC columns per block. Forward and dQ: rows are queries (4*TR per workgroup), columns keys
 * (4*TC per step); dK/dV: rows are keys, columns queries.
 */
export interface FlashTile {
  TR: number;
  TC: number;
}

export interface FlashAttentionTiles {
  forward: FlashTile;
  dq: FlashTile;
  dkdv: FlashTile;
}

/** lse written for a query that sees no key: exp(score - lse) is 0 for any finite score. */
export const FLASH_EMPTY_LSE = 1e30;
/** Largest head size taken. */
export const MAX_HEAD_DIM = 128;

const U32_LIMIT = 2 ** 32;
const BYTES_PER_VEC4 = 16;

// Workgroup memory of each kernel, in bytes (the shaders' var<workgroup> arrays: DS = D/4 + 1 and
// PS = TR + 1 are their padded row lengths in vec4s).
const padded = (D: number) => D / 4 + 1;
function forwardBytes(D: number, { TR, TC }: FlashTile): number {
  const DS = padded(D), BQ = 4 * TR, BK = 4 * TC;
  return BYTES_PER_VEC4 * (BQ * DS + Math.max(BK * DS, BK * (TR + 1)) + BK * (D / 4) + TC * (TR + 1));
}
function dqBytes(D: number, { TR, TC }: FlashTile): number {
  const DS = padded(D), BQ = 4 * TR, BK = 4 * TC;
  return BYTES_PER_VEC4 * (2 * BQ * DS + BK * DS + Math.max(BK * DS, BK * (TR + 1)));
}
function dkdvBytes(D: number, { TR, TC }: FlashTile): number {
  const DS = padded(D), BK = 4 * TR, BQ = 4 * TC;
  return BYTES_PER_VEC4 * (2 * BK * DS + 2 * BQ * DS + 2 * BQ * (TR + 1));
}

// Tilings by preference: the first whose workgroup memory and threads fit the device. The first
// of each fits D = 64 in 48 KiB (the H100's limit): forward 64 queries x 32 keys per step on 128
// threads (35.6 KiB), dQ 32 x 32 on 64 (34 KiB), dK/dV 32 keys x 32 queries on 64 (43 KiB). Under
// 32 KiB (SwiftShader, many integrated GPUs) D = 64 takes forward 32 x 32 (26 KiB), dQ 32 x 16 and
// dK/dV 32 x 16 on 32 threads (25.5 and 30 KiB).
const CANDIDATES: Record<keyof FlashAttentionTiles, FlashTile[]> = {
  forward: [{ TR: 16, TC: 8 }, { TR: 8, TC: 8 }, { TR: 4, TC: 8 }, { TR: 4, TC: 4 }, { TR: 2, TC: 4 }, { TR: 2, TC: 2 }],
  dq: [{ TR: 8, TC: 8 }, { TR: 8, TC: 4 }, { TR: 4, TC: 8 }, { TR: 4, TC: 4 }, { TR: 2, TC: 4 }, { TR: 2, TC: 2 }],
  dkdv: [{ TR: 8, TC: 8 }, { TR: 8, TC: 4 }, { TR: 4, TC: 8 }, { TR: 4, TC: 4 }, { TR: 2, TC: 4 }, { TR: 2, TC: 2 }],
};
const BYTES: Record<keyof FlashAttentionTiles, (D: number, t: FlashTile) => number> = { forward: forwardBytes, dq: dqBytes, dkdv: dkdvBytes };

const headDimOk = (D: number) => Number.isInteger(D) && D >= 4 && D <= MAX_HEAD_DIM && D % 4 === 0;

function tileFits(gpu: Gpu, kernel: keyof FlashAttentionTiles, D: number, t: FlashTile): boolean {
  const { maxComputeWorkgroupStorageSize, maxComputeInvocationsPerWorkgroup } = gpu.info.limits;
  const threads = t.TR * t.TC;
  const maxX = gpu.device.limits?.maxComputeWorkgroupSizeX ?? 256;
  return BYTES[kernel](D, t) <= maxComputeWorkgroupStorageSize && threads <= maxComputeInvocationsPerWorkgroup && threads <= maxX;
}

/** The tilings the kernels take for head size D on this device, or null when one does not fit. */
export function flashAttentionTiles(gpu: Gpu, D: number): FlashAttentionTiles | null {
  if (!headDimOk(D)) return null;
  const pick = (kernel: keyof FlashAttentionTiles) => CANDIDATES[kernel].find((t) => tileFits(gpu, kernel, D, t)) ?? null;
  const forward = pick('forward'), dq = pick('dq'), dkdv = pick('dkdv');
  return forward && dq && dkdv ? { forward, dq, dkdv } : null;
}

/**
 * Whether this device runs flash attention for head size D (a multiple of 4 up to MAX_HEAD_DIM):
 * every kernel has a tiling within its workgroup memory and threads, and the dK/dV kernel's storage
 * bindings fit: 9 when dk and dv are separate buffers (the default question), 8 when they are one
 * buffer or the backward gets a dkvScratch (separateDkDv false: GPT-2's dqkv). Otherwise use the
 * score / softmax / product kernels.
 */
export function flashAttentionSupported(gpu: Gpu, D: number, opts: { separateDkDv?: boolean } = {}): boolean {
  const bindings = opts.separateDkDv === false ? 8 : 9;
  return gpu.info.limits.maxStorageBuffersPerShaderStage >= bindings && flashAttentionTiles(gpu, D) !== null;
}

/**
 * The tuning's choice for a causal attention over B sequences of T tokens with H query heads:
 * tuning.flashAttention true or false, or 'auto': flash attention when one layer's T x T
 * probabilities (B H T T floats) would take more than tuning.flashAttentionMinScoresMiB or more
 * than one storage binding holds (it saves memory and makes long sequences possible at all; where
 * the T x T matrices fit, the separate kernels are faster on the H100, see
 * KernelTuning.flashAttention). The caller still checks flashAttentionSupported.
 */
export function useFlashAttention(gpu: Gpu, B: number, H: number, T: number): boolean {
  const choice = gpu.tuning.flashAttention;
  if (choice !== 'auto') return choice;
  const limit = Math.min(gpu.tuning.flashAttentionMinScoresMiB * 2 ** 20, gpu.info.limits.maxStorageBufferBindingSize);
  return B * H * T * T * 4 > limit;
}

/** Elements of FlashAttentionBackwardArgs.dkvScratch: per-query-head partial dK and dV. */
export function flashAttentionScratchElements(B: number, T: number, H: number, D: number): number {
  return 2 * B * T * H * D;
}

/** Replaces the baked `const NAME: u32 = ...u;` lines of a shader. */
function bake(code: string, consts: Record<string, number>): string {
  let out = code;
  for (const [name, value] of Object.entries(consts)) {
    const re = new RegExp(`^const ${name}: u32 = \\d+u;`, 'm');
    if (!re.test(out)) throw new Error(`flash attention: shader has no baked constant ${name}`);
    out = out.replace(re, `const ${name}: u32 = ${value}u;`);
  }
  return out;
}

/** The dK/dV shader writing dv through the dk binding (dk and dv in one buffer). */
function sharedDvCode(code: string): string {
  const lines = code.split('\n');
  const kept = lines.filter((l) => !l.endsWith('// SEPARATE_DV')).map((l) => (l.endsWith('// SHARED_DV') ? l.replace(/^\/\/ /, '') : l));
  if (kept.length !== lines.length - 2) throw new Error('flash attention: dK/dV shader lost its SEPARATE_DV lines');
  return kept.join('\n');
}

/** A 1-D count of workgroups folded over x and y (the shaders skip indices past the count). */
function foldGrid(gpu: Gpu, count: number, what: string): [number, number, number] {
  const max = gpu.info.limits.maxComputeWorkgroupsPerDimension;
  const x = Math.min(count, max);
  const y = Math.ceil(count / Math.max(x, 1));
  if (y > max) throw new Error(`${what}: ${count} workgroups do not fit in a ${max}^2 grid`);
  return [x, y, 1];
}

interface Operand {
  name: string;
  t: Tensor;
  off: number;
  ld: number;
  /** Elements used per row (heads * D). */
  width: number;
}

type Fail = (msg: string) => never;

/** Checks the shape's numbers and tensors; returns the operands q, k, v. */
function checkShape(a: FlashAttentionShape, fail: Fail): { q: Operand; k: Operand; v: Operand; rows: number } {
  for (const [name, x] of Object.entries({ B: a.B, T: a.T, H: a.H, kvHeads: a.kvHeads, D: a.D })) {
    if (!Number.isInteger(x) || x < 1) fail(`${name} must be a positive integer (got ${x})`);
  }
  if (a.D % 4 !== 0 || a.D > MAX_HEAD_DIM) fail(`D must be a multiple of 4 up to ${MAX_HEAD_DIM} (got ${a.D})`);
  if (a.H % a.kvHeads !== 0) fail(`${a.H} query heads are not a multiple of ${a.kvHeads} key/value heads`);
  if (!Number.isFinite(a.scale)) fail(`scale must be finite (got ${a.scale})`);
  if (typeof a.causal !== 'boolean') fail(`causal must be a boolean (got ${String(a.causal)})`);
  if (a.lengths.dtype !== 'u32') fail(`lengths must be u32 (got ${a.lengths.dtype})`);
  if (a.lengths.size < a.B) fail(`lengths has ${a.lengths.size} elements, need B = ${a.B}`);
  const rows = a.B * a.T;
  const q = operand(fail, rows, 'q', a.q, a.offsetQ, a.ldq, a.H * a.D);
  const k = operand(fail, rows, 'k', a.k, a.offsetK, a.ldk, a.kvHeads * a.D);
  const v = operand(fail, rows, 'v', a.v, a.offsetV, a.ldv, a.kvHeads * a.D);
  if (a.B * a.H * a.T >= U32_LIMIT) fail('B*H*T does not fit a u32');
  return { q, k, v, rows };
}

/** Checks a [rows, width] operand at offset `off` with row stride `ld` lies inside its f32 tensor. */
function operand(fail: Fail, rows: number, name: string, t: Tensor, offset: number | undefined, ld: number, width: number): Operand {
  const off = offset ?? 0;
  if (t.dtype !== 'f32') fail(`${name} (${t.label}) must be f32 (got ${t.dtype})`);
  if (!Number.isInteger(off) || off < 0) fail(`the offset of ${name} must be a non-negative integer (got ${off})`);
  if (!Number.isInteger(ld) || ld < width) fail(`the row stride of ${name} must be an integer >= ${width} (got ${ld})`);
  const last = off + (rows - 1) * ld + width - 1;
  if (last >= t.size) fail(`${name} (${t.label}, ${t.size} elements) would be accessed at index ${last}`);
  if (last >= U32_LIMIT) fail(`${name}'s indices do not fit a u32`);
  return { name, t, off, ld, width };
}

function checkRowStats(fail: Fail, name: string, t: Tensor, n: number): void {
  if (t.dtype !== 'f32') fail(`${name} (${t.label}) must be f32 (got ${t.dtype})`);
  if (t.size < n) fail(`${name} (${t.label}) has ${t.size} elements, need B*H*T = ${n}`);
}

/** A written tensor must not share its buffer with anything else the dispatch binds. */
function checkWritten(fail: Fail, written: { name: string; t: Tensor }, others: { name: string; t: Tensor }[]): void {
  for (const o of others) {
    if (o.t.buffer === written.t.buffer) fail(`${written.name} must not share a buffer with ${o.name} (a written binding cannot alias another)`);
  }
}

/** Two written operands in one buffer: same row stride, column ranges disjoint within a row. */
function checkDisjoint(fail: Fail, x: Operand, y: Operand): void {
  if (x.t.buffer !== y.t.buffer) return;
  const bad = () => fail(`${x.name} and ${y.name} share a buffer, so they need the same row stride and disjoint column ranges (${x.name}: offset ${x.off}, ld ${x.ld}; ${y.name}: offset ${y.off}, ld ${y.ld})`);
  if (x.ld !== y.ld) bad();
  const cx = x.off % x.ld, cy = y.off % y.ld;
  if (cx + x.width > x.ld || cy + y.width > y.ld) bad();
  if (cx < cy + y.width && cy < cx + x.width) bad();
}

function pickTile(gpu: Gpu, kernel: keyof FlashAttentionTiles, D: number, forced: FlashTile | undefined, fail: Fail): FlashTile {
  if (forced) {
    const ok = [forced.TR, forced.TC].every((x) => Number.isInteger(x) && x >= 1 && x <= 64);
    if (!ok) fail(`tiles.${kernel} must have integer TR and TC in 1..64 (got ${JSON.stringify(forced)})`);
    if (!tileFits(gpu, kernel, D, forced)) fail(`tiles.${kernel} ${JSON.stringify(forced)} does not fit this device (${BYTES[kernel](D, forced)} bytes of workgroup memory)`);
    return forced;
  }
  const t = flashAttentionTiles(gpu, D);
  if (!t) fail(`head size ${D} does not fit this device's workgroup memory (check flashAttentionSupported)`);
  return t![kernel];
}

/** Binds the forward: out (attention output) and lse. One dispatch. */
export function flashAttentionForward(gpu: Gpu, a: FlashAttentionForwardArgs): Dispatch[] {
  const what = `flashAttentionForward(${a.out.label})`;
  const fail: Fail = (msg) => {
    throw new Error(`${what}: ${msg}`);
  };
  const { q, k, v, rows } = checkShape(a, fail);
  const o = operand(fail, rows, 'out', a.out, a.offsetO, a.ldo, a.H * a.D);
  checkRowStats(fail, 'lse', a.lse, a.B * a.H * a.T);
  const reads = [{ name: 'lengths', t: a.lengths }, q, k, v];
  checkWritten(fail, o, [...reads, { name: 'lse', t: a.lse }]);
  checkWritten(fail, { name: 'lse', t: a.lse }, reads);
  const tile = pickTile(gpu, 'forward', a.D, a.tiles, fail);
  const BQ = 4 * tile.TR;
  const nQB = Math.ceil(a.T / BQ);
  const G = a.H / a.kvHeads;
  return [bindDispatch(gpu, {
    label: what,
    code: bake(forwardCode, { D: a.D, TR: tile.TR, TC: tile.TC }),
    params: [a.B, a.T, a.H, G, nQB, a.causal ? 1 : 0, f32(a.scale * Math.LOG2E), q.off, q.ld, k.off, k.ld, v.off, v.ld, o.off, o.ld],
    buffers: [a.lengths, a.q, a.k, a.v, a.out, a.lse],
    workgroups: foldGrid(gpu, a.B * a.H * nQB, what),
  })];
}

/**
 * The pre-pass (shaders/flash_attention_backward.wgsl): `main_vec4`, D / 4 threads per row reading
 * vec4s, where every offset and row stride is a multiple of 4 (D is); `main`, a thread per row, otherwise.
 */
function bindRowDelta(gpu: Gpu, label: string, a: { B: number; H: number; T: number; D: number; out: Tensor; dout: Tensor; delta: Tensor }, o: Operand, dO: Operand): Dispatch {
  const n = a.B * a.H * a.T;
  const params = [n, a.H, a.T, a.D, o.off, o.ld, dO.off, dO.ld];
  const buffers = [a.out, a.dout, a.delta];
  const lanes = a.D / 4;
  if ([o.off, o.ld, dO.off, dO.ld].every((v) => v % 4 === 0) && lanes <= 32) {
    return bindDispatch(gpu, { label, code: prepCode, entryPoint: 'main_vec4', constants: { LANES: lanes }, params, buffers, workgroups: grid1d(n, Math.floor(256 / lanes)) });
  }
  return bindDispatch(gpu, { label, code: prepCode, params, buffers, workgroups: grid1d(n) });
}

/** attentionRowDelta's operands: out and dout laid out as flash attention's (rows b*T + t, head h at columns h*D). */
export interface AttentionRowDeltaArgs {
  B: number;
  T: number;
  H: number;
  D: number;
  out: Tensor;
  offsetO?: number;
  ldo: number;
  dout: Tensor;
  offsetDO?: number;
  lddo: number;
  /** f32 [>= B*H*T], written: delta[(b*H + h)*T + t]. */
  delta: Tensor;
}

/**
 * delta[(b*H + h)*T + t] = sum_d dout[b, t, h, d] * out[b, t, h, d]: rowsum(P * dP) of the softmax
 * backward (P V = out, dP = dout V^T), from the attention's output instead of its T x T matrices.
 * Flash attention's backward pre-pass (shaders/flash_attention_backward.wgsl), which the T x T path
 * also runs for the softmax backward fused into dP's product (kernels/matmul.ts softmaxGradOf).
 */
export function attentionRowDelta(gpu: Gpu, a: AttentionRowDeltaArgs): Dispatch {
  const what = `attentionRowDelta(${a.delta.label})`;
  const fail: Fail = (msg) => {
    throw new Error(`${what}: ${msg}`);
  };
  for (const [name, x] of [['B', a.B], ['T', a.T], ['H', a.H], ['D', a.D]] as const) {
    if (!Number.isInteger(x) || x < 1) fail(`${name} must be a positive integer (got ${x})`);
  }
  if (a.D % 4 !== 0) fail(`D must be a multiple of 4 (got ${a.D})`);
  const n = a.B * a.H * a.T;
  if (n >= U32_LIMIT) fail('B*H*T does not fit a u32');
  const rows = a.B * a.T;
  const o = operand(fail, rows, 'out', a.out, a.offsetO, a.ldo, a.H * a.D);
  const dO = operand(fail, rows, 'dout', a.dout, a.offsetDO, a.lddo, a.H * a.D);
  checkRowStats(fail, 'delta', a.delta, n);
  checkWritten(fail, { name: 'delta', t: a.delta }, [o, dO]);
  return bindRowDelta(gpu, what, a, o, dO);
}

/**
 * Binds the backward: delta (pre-pass), then dk and dv (with a dkvScratch and grouped-query heads:
 * per-head partial sums and two group sums), then dq. Three (or five) dispatches, to run in this
 * order after the forward that wrote out and lse.
 */
export function flashAttentionBackward(gpu: Gpu, a: FlashAttentionBackwardArgs): Dispatch[] {
  const what = `flashAttentionBackward(${a.dq.label})`;
  const fail: Fail = (msg) => {
    throw new Error(`${what}: ${msg}`);
  };
  const { q, k, v, rows } = checkShape(a, fail);
  const n = a.B * a.H * a.T;
  const o = operand(fail, rows, 'out', a.out, a.offsetO, a.ldo, a.H * a.D);
  const dO = operand(fail, rows, 'dout', a.dout, a.offsetDO, a.lddo, a.H * a.D);
  const dQ = operand(fail, rows, 'dq', a.dq, a.offsetDQ, a.lddq, a.H * a.D);
  const dK = operand(fail, rows, 'dk', a.dk, a.offsetDK, a.lddk, a.kvHeads * a.D);
  const dV = operand(fail, rows, 'dv', a.dv, a.offsetDV, a.lddv, a.kvHeads * a.D);
  checkRowStats(fail, 'lse', a.lse, n);
  checkRowStats(fail, 'delta', a.delta, n);
  const lse = { name: 'lse', t: a.lse }, delta = { name: 'delta', t: a.delta }, lengths = { name: 'lengths', t: a.lengths };
  checkWritten(fail, delta, [o, dO, lse]);
  const reads = [lengths, lse, delta, q, k, v, dO];
  checkWritten(fail, dQ, reads);
  checkWritten(fail, dK, reads);
  checkWritten(fail, dV, reads);
  checkDisjoint(fail, dK, dV);
  checkDisjoint(fail, dQ, dK);
  checkDisjoint(fail, dQ, dV);
  const G = a.H / a.kvHeads;
  const maxBindings = gpu.info.limits.maxStorageBuffersPerShaderStage;
  const sharedDv = a.dk.buffer === a.dv.buffer;
  const scratch = a.dkvScratch;
  if (scratch) {
    const need = flashAttentionScratchElements(a.B, a.T, a.H, a.D);
    if (scratch.dtype !== 'f32') fail(`dkvScratch (${scratch.label}) must be f32 (got ${scratch.dtype})`);
    if (scratch.size < need) fail(`dkvScratch (${scratch.label}) has ${scratch.size} elements, need 2*B*T*H*D = ${need}`);
    if (need >= U32_LIMIT) fail('dkvScratch\'s indices do not fit a u32');
    checkWritten(fail, { name: 'dkvScratch', t: scratch }, [...reads, dK, dV, dQ]);
  }
  // per-query-head partial sums (dkvScratch) for grouped-query heads, or where separate dk and dv need more bindings than the device has
  const split = scratch !== undefined && (G > 1 || (!sharedDv && maxBindings < 9));
  const bindings = sharedDv || split ? 8 : 9;
  if (maxBindings < bindings) {
    fail(`the dK/dV kernel needs ${bindings} storage buffers per stage, this device allows ${maxBindings} (check flashAttentionSupported, or pass a dkvScratch)`);
  }
  const tq = pickTile(gpu, 'dq', a.D, a.tiles?.dq, fail);
  const tkv = pickTile(gpu, 'dkdv', a.D, a.tiles?.dkdv, fail);
  const scaleLog2 = f32(a.scale * Math.LOG2E);
  const causal = a.causal ? 1 : 0;

  const prep = bindRowDelta(gpu, `${what}[delta]`, a, o, dO);

  const nKB = Math.ceil(a.T / (4 * tkv.TR));
  const dkdvOps: Dispatch[] = [];
  if (split) {
    // one workgroup per (b, query head, key block) into the scratch's halves [B*T, H*D] (dk's, then dv's), then each group's sum
    const half = a.B * a.T * a.H * a.D, ldp = a.H * a.D;
    dkdvOps.push(bindDispatch(gpu, {
      label: `${what}[dk, dv per head]`,
      code: bake(sharedDvCode(dkdvCode), { D: a.D, TR: tkv.TR, TC: tkv.TC }),
      params: [a.B, a.T, a.H, G, a.H, 1, nKB, causal, scaleLog2, f32(a.scale), q.off, q.ld, k.off, k.ld, v.off, v.ld, dO.off, dO.ld, 0, ldp, half, ldp],
      buffers: [a.lengths, a.lse, a.delta, a.q, a.k, a.v, a.dout, scratch!],
      workgroups: foldGrid(gpu, a.B * a.H * nKB, what),
    }));
    for (const [name, x, offPart] of [['dk', dK, 0], ['dv', dV, half]] as const) {
      dkdvOps.push(groupedHeadSum(gpu, {
        label: `${what}[${name} group sum]`, part: scratch!, offPart, out: x.t, offOut: x.off, ldOut: x.ld, rows: a.B * a.T, H: a.H, kvHeads: a.kvHeads, D: a.D,
      }));
    }
  } else {
    dkdvOps.push(bindDispatch(gpu, {
      label: `${what}[dk, dv]`,
      code: bake(sharedDv ? sharedDvCode(dkdvCode) : dkdvCode, { D: a.D, TR: tkv.TR, TC: tkv.TC }),
      params: [a.B, a.T, a.H, G, a.kvHeads, G, nKB, causal, scaleLog2, f32(a.scale), q.off, q.ld, k.off, k.ld, v.off, v.ld, dO.off, dO.ld, dK.off, dK.ld, dV.off, dV.ld],
      buffers: sharedDv ? [a.lengths, a.lse, a.delta, a.q, a.k, a.v, a.dout, a.dk] : [a.lengths, a.lse, a.delta, a.q, a.k, a.v, a.dout, a.dk, a.dv],
      workgroups: foldGrid(gpu, a.B * a.kvHeads * nKB, what),
    }));
  }

  const nQB = Math.ceil(a.T / (4 * tq.TR));
  const dq = bindDispatch(gpu, {
    label: `${what}[dq]`,
    code: bake(dqCode, { D: a.D, TR: tq.TR, TC: tq.TC }),
    params: [a.B, a.T, a.H, G, nQB, causal, scaleLog2, f32(a.scale), q.off, q.ld, k.off, k.ld, v.off, v.ld, dO.off, dO.ld, dQ.off, dQ.ld],
    buffers: [a.lengths, a.lse, a.delta, a.q, a.k, a.v, a.dout, a.dq],
    workgroups: foldGrid(gpu, a.B * a.H * nQB, what),
  });
  return [prep, ...dkdvOps, dq];
}

/**
 * out[offOut + r*ldOut + g*D + d] = the sum over the G = H / kvHeads query heads h of group g of
 * part[offPart + r*H*D + h*D + d], for rows r < rows, g < kvHeads, d < D (written, not
 * accumulated; shaders/flash_attention_backward_reduce.wgsl): the grouped-query sum of dK or dV
 * made per query head (flash attention's split dK/dV kernel, the T x T path's batched products).
 */
export function groupedHeadSum(gpu: Gpu, a: {
  label: string; part: Tensor; offPart?: number; out: Tensor; offOut?: number; ldOut: number; rows: number; H: number; kvHeads: number; D: number;
}): Dispatch {
  const offPart = a.offPart ?? 0, offOut = a.offOut ?? 0;
  const G = a.H / a.kvHeads, W = a.kvHeads * a.D, n = a.rows * W;
  const fail = (msg: string): never => {
    throw new Error(`${a.label}: ${msg}`);
  };
  if (![a.rows, a.H, a.kvHeads, a.D].every((v) => Number.isInteger(v) && v > 0) || !Number.isInteger(G)) fail(`rows, H, kvHeads, D must be positive integers with kvHeads dividing H (got ${a.rows}, ${a.H}, ${a.kvHeads}, ${a.D})`);
  if (a.ldOut < W) fail(`ldOut = ${a.ldOut} must be at least kvHeads * D = ${W}`);
  if (offPart + a.rows * a.H * a.D > a.part.size) fail(`part (${a.part.label}) has ${a.part.size} elements, need ${offPart + a.rows * a.H * a.D}`);
  if (offOut + (a.rows - 1) * a.ldOut + W > a.out.size) fail(`out (${a.out.label}) has ${a.out.size} elements, need ${offOut + (a.rows - 1) * a.ldOut + W}`);
  if (a.part.buffer === a.out.buffer) fail('out must not alias part');
  return bindDispatch(gpu, { label: a.label, code: reduceCode, params: [n, W, a.D, G, offPart, offOut, a.ldOut], buffers: [a.part, a.out], workgroups: grid1d(n) });
}
