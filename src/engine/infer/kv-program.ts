// What an architecture builds for generation with a KV cache (its buildDecodeProgram), and the
// pieces GPT-2 and the Llama family share there. The driver is ./kv-decoder.ts.
//
// The cache holds one row per position for every layer's keys and one for its values. A decode
// program runs T new rows at positions state[0] .. state[0] + T - 1 (state is a small u32 buffer
// the driver writes before each run, so one recorded program serves every position): each layer
// appends the rows' keys and values to the cache and attends over cache rows 0 .. its own
// position. Rows before the sequence's tokens are simply cache rows: prefix tuning's key/value
// rows take rows 0 .. P-1 (written by the prefill), so real tokens start at position P, as in
// training. The prefill is the first run over a prompt (prompt tuning's virtual tokens before it);
// decoding then runs T = 1 per new token.

import type { Gpu } from '../gpu/gpu';
import type { Op } from '../gpu/dispatch';
import type { Tensor } from '../gpu/tensor';
import { matmul } from '../kernels/matmul';
import type { AttentionPrefix, PeftMethod } from '../peft/method';
import type { RowChunks } from '../models/weights';
import { ProgramError, VIRTUAL_TOKEN_ID } from '../models/program';

/** One model's per-layer key/value caches. */
export interface KvCache {
  /** u32 [4]: state[0] = cache rows filled before the next run (the position of its first row). */
  readonly state: Tensor;
  /** Per layer [capacity, width]. */
  readonly k: Tensor[];
  readonly v: Tensor[];
  readonly capacity: number;
  /** Key/value heads x head size. */
  readonly width: number;
}

/** The cache geometry an architecture needs. */
export interface KvCacheShape {
  layers: number;
  /** Elements of one position's keys (= of its values): key/value heads x head size. */
  width: number;
  /** Positions the model takes (its position table or max_position_embeddings). */
  maxPositions: number;
  /** Query heads (the attention's score scratch is rows x heads x cache rows). */
  heads: number;
}

export interface DecodeProgramOptions {
  /** Real tokens per run (the prompt's length for a prefill, 1 for decoding). */
  T: number;
  cache: KvCache;
  /**
   * The first run over a prompt: also the adapter's forwardStart ops, prefix tuning's rows into
   * cache rows 0 .. P-1, and prompt tuning's virtual tokens before the T tokens.
   */
  prefill: boolean;
}

export interface DecodeProgram {
  /** Real tokens per run. */
  readonly T: number;
  /** Virtual positions before them (prompt tuning's, in a prefill), else 0. */
  readonly virtualTokens: number;
  /** [V]: the logits after the run's last row. */
  readonly logits: Tensor;
  readonly forward: Op[];
  /** Uploads the run's T token ids (checks the count and the vocabulary). */
  write(ids: readonly number[]): void;
  destroy(): void;
}

/** What an architecture offers for KV-cache generation (Gpt2 and Llama implement it). */
export interface KvDecodable {
  readonly V: number;
  kvCacheShape(): KvCacheShape;
  buildDecodeProgram(peft: PeftMethod | null, opts: DecodeProgramOptions): DecodeProgram;
}

export function createKvCache(gpu: Gpu, shape: KvCacheShape, capacity: number): KvCache {
  if (!Number.isInteger(capacity) || capacity < 1) throw new ProgramError(`a KV cache needs at least one row (got ${capacity})`);
  if (capacity > shape.maxPositions) throw new ProgramError(`${capacity} positions is more than the model takes (${shape.maxPositions})`);
  const state = gpu.tensor([4], 'kv.state', 'u32');
  const k = Array.from({ length: shape.layers }, (_, l) => gpu.tensor([capacity, shape.width], `kv.k${l}`));
  const v = Array.from({ length: shape.layers }, (_, l) => gpu.tensor([capacity, shape.width], `kv.v${l}`));
  return { state, k, v, capacity, width: shape.width };
}

export function destroyKvCache(gpu: Gpu, cache: KvCache): void {
  for (const t of [cache.state, ...cache.k, ...cache.v]) gpu.destroyTensor(t);
}

/** Checks a cache against the architecture before a program binds it. */
export function checkKvCache(cache: KvCache, shape: KvCacheShape, rows: number): void {
  if (cache.k.length !== shape.layers || cache.v.length !== shape.layers) throw new ProgramError(`the KV cache has ${cache.k.length} layers, the model ${shape.layers}`);
  if (cache.width !== shape.width) throw new ProgramError(`the KV cache rows hold ${cache.width} values, the model's keys ${shape.width}`);
  if (cache.capacity > shape.maxPositions) throw new ProgramError(`the KV cache has ${cache.capacity} rows, more than the model's ${shape.maxPositions} positions`);
  if (!Number.isInteger(rows) || rows < 1 || rows > cache.capacity) throw new ProgramError(`a decode run of ${rows} rows does not fit a KV cache of ${cache.capacity}`);
}

/**
 * Copies of prefix tuning's key and value rows of layer `layer` into cache rows 0 .. P-1 (the
 * prefix's [P, ld] tensor holds each layer's keys at keyOffset and values at valueOffset).
 */
export function prefixIntoCache(pre: AttentionPrefix, cache: KvCache, layer: number): Op[] {
  const W = cache.width;
  if (pre.tokens > cache.capacity) throw new ProgramError(`${pre.tokens} prefix rows do not fit a KV cache of ${cache.capacity}`);
  const ops: Op[] = [];
  for (let p = 0; p < pre.tokens; p++) {
    ops.push({ kind: 'copy', src: pre.value.buffer, srcOffset: (p * pre.ld + pre.keyOffset) * 4, dst: cache.k[layer].buffer, dstOffset: p * W * 4, size: W * 4 });
    ops.push({ kind: 'copy', src: pre.value.buffer, srcOffset: (p * pre.ld + pre.valueOffset) * 4, dst: cache.v[layer].buffer, dstOffset: p * W * 4, size: W * 4 });
  }
  return ops;
}

/** logits [V] = hidden[row] W_head^T, the head split in row blocks as the model stores it. */
export function lastRowLogits(gpu: Gpu, hidden: Tensor, row: number, head: RowChunks, logits: Tensor): Op[] {
  const C = head.cols;
  return head.chunks.map((ch) => matmul(gpu, { label: 'lm_head', a: hidden, offsetA: row * C, b: ch.tensor, transB: true, c: logits, offsetC: ch.rowStart, M: 1, N: ch.rows, K: C }));
}

/** Writes a run's token ids, after `virtualTokens` virtual rows (which carry VIRTUAL_TOKEN_ID). */
export function writeDecodeTokens(gpu: Gpu, tokens: Tensor, ids: readonly number[], T: number, virtualTokens: number, vocabSize: number): void {
  if (ids.length !== T) throw new ProgramError(`the decode program runs ${T} tokens, got ${ids.length}`);
  const out = new Uint32Array(virtualTokens + T).fill(VIRTUAL_TOKEN_ID);
  ids.forEach((id, i) => {
    if (!Number.isInteger(id) || id < 0 || id >= vocabSize) throw new ProgramError(`token id ${id} at position ${i} is outside the model's vocabulary (${vocabSize})`);
    out[virtualTokens + i] = id;
  });
  gpu.write(tokens, out);
}
