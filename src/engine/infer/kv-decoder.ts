// Generation with a KV cache: the prompt goes through a prefill program once (filling every
// layer's key/value cache and giving the logits after its last token), then each new token costs
// one T = 1 decode program over the cache. Both programs are recorded once; the position they run
// at is the cache's state buffer, written before every run (see ./kv-program.ts).
//
// Positions: cache rows 0..P-1 are prefix tuning's key/value rows, then prompt tuning's virtual
// tokens, then the prompt and the generated tokens, as the training program lays them out.
//
// A long prompt is prefilled in blocks of rows (the first block with the adapter's prefill work),
// so that the attention's score scratch (rows x heads x cache rows) stays within one binding.

import type { Gpu } from '../gpu/gpu';
import { runOps } from '../gpu/dispatch';
import type { PeftMethod } from '../peft/method';
import { ProgramError } from '../models/program';
import { createKvCache, destroyKvCache, type DecodeProgram, type KvCache, type KvDecodable } from './kv-program';

/** Bytes of attention scores one prefill block may take (and never more than a binding). */
const PREFILL_SCORE_BYTES = 64 * 2 ** 20;

export interface KvDecoderOptions {
  /** Most rows (virtual tokens included) one prefill run takes (default: what PREFILL_SCORE_BYTES of scores allow). */
  maxPrefillRows?: number;
}

export class KvDecoder {
  /** Cache rows before the real tokens: prefix tuning's rows and prompt tuning's virtual tokens. */
  readonly offset: number;
  private readonly cache: KvCache;
  private readonly decode: DecodeProgram;
  /** Cache rows filled so far (the position of the next token). */
  private pos = 0;
  private readonly stateData = new Uint32Array(4);
  private readonly prefillRows: number;

  /**
   * maxTokens: the most real tokens (prompt + generated) one sequence may reach; the cache holds
   * them plus the adapter's prefix and virtual tokens.
   */
  constructor(private readonly gpu: Gpu, private readonly model: KvDecodable, private readonly peft: PeftMethod | null, readonly maxTokens: number, opts: KvDecoderOptions = {}) {
    const P = peft?.prefixTokens ?? 0, nv = peft?.virtualTokens ?? 0;
    this.offset = P + nv;
    const shape = model.kvCacheShape();
    if (!Number.isInteger(maxTokens) || maxTokens < 1) throw new ProgramError(`generation needs room for at least one token (got ${maxTokens})`);
    if (this.offset + maxTokens > shape.maxPositions) {
      throw new ProgramError(`${maxTokens} tokens${this.offset ? ` plus the adapter's ${this.offset} virtual tokens` : ''} is more than the model's ${shape.maxPositions} positions`);
    }
    const capacity = this.offset + maxTokens;
    const scoreRows = Math.floor(Math.min(PREFILL_SCORE_BYTES, gpu.maxBindingBytes) / (shape.heads * capacity * 4));
    this.prefillRows = Math.max(1 + nv, Math.min(opts.maxPrefillRows ?? Infinity, scoreRows));
    this.cache = createKvCache(gpu, shape, capacity);
    try {
      this.decode = model.buildDecodeProgram(peft, { T: 1, cache: this.cache, prefill: false });
    } catch (e) {
      destroyKvCache(gpu, this.cache);
      throw e;
    }
  }

  /** Real tokens in the cache now (prompt + generated). */
  get length(): number {
    return Math.max(0, this.pos - this.offset);
  }

  /** Starts a sequence: runs the prompt through the prefill; resolves with the logits [V] after its last token. */
  async prefill(promptIds: readonly number[]): Promise<Float32Array> {
    const n = promptIds.length;
    if (n < 1 || n > this.maxTokens) throw new ProgramError(`the prompt must have 1..${this.maxTokens} tokens, got ${n}`);
    // prefix tuning's rows take cache rows 0..P-1; the prefill's first row (a virtual token or the prompt's first) comes next
    let pos = this.peft?.prefixTokens ?? 0;
    this.pos = 0;
    let logits: Float32Array | null = null;
    for (let start = 0; start < n;) {
      const first = start === 0;
      const nv = first ? (this.peft?.virtualTokens ?? 0) : 0;
      const rows = Math.min(n - start, this.prefillRows - nv);
      const program = this.model.buildDecodeProgram(this.peft, { T: rows, cache: this.cache, prefill: first });
      try {
        program.write(promptIds.slice(start, start + rows));
        this.writeState(pos);
        runOps(this.gpu, program.forward, 'prefill');
        pos += nv + rows;
        start += rows;
        if (start === n) logits = await this.readLogits(program);
      } finally {
        program.destroy();
      }
    }
    this.pos = pos;
    return logits!;
  }

  /** Appends one token (the one just chosen); resolves with the logits [V] after it. */
  async step(id: number): Promise<Float32Array> {
    if (this.pos === 0) throw new ProgramError('prefill a prompt before decoding');
    if (this.length >= this.maxTokens) throw new ProgramError(`the KV cache is full (${this.maxTokens} tokens)`);
    this.decode.write([id]);
    this.writeState(this.pos);
    runOps(this.gpu, this.decode.forward, 'decode');
    this.pos++;
    return this.readLogits(this.decode);
  }

  destroy(): void {
    this.decode.destroy();
    destroyKvCache(this.gpu, this.cache);
  }

  private writeState(pos: number): void {
    this.stateData[0] = pos;
    this.gpu.write(this.cache.state, this.stateData);
  }

  private async readLogits(program: DecodeProgram): Promise<Float32Array> {
    return new Float32Array(await this.gpu.readBytes(program.logits.buffer, this.model.V * 4));
  }
}
