// Text generation with the same WGSL layers used for training, through a KV cache
// (./kv-decoder.ts): the prompt is prefilled once, then every new token costs one single-row
// decode run over the cache. Greedy, or sampling with temperature, top-k and top-p (./sampling.ts);
// stops at a stop id (the tokenizer's EOS), at maxNewTokens, when the cache is full, or when the
// caller's shouldStop says so.

import type { Gpu } from '../gpu/gpu';
import type { PeftMethod } from '../peft/method';
import type { CausalLM } from '../models/program';
import { sampleToken, type SamplingOptions } from './sampling';
import { KvDecoder, type KvDecoderOptions } from './kv-decoder';
import type { KvDecodable } from './kv-program';

export interface GenerateOptions extends SamplingOptions {
  maxNewTokens: number;
  /** Stop when one of these is generated (not included in the output). */
  stopIds?: number[];
  /** Called with each new token as soon as it is chosen (awaited: a slow consumer slows generation). */
  onToken?: (id: number) => void | Promise<void>;
  /** Checked before every step; true ends the generation with the tokens so far. */
  shouldStop?: () => boolean;
  /** Called with the logits each token was chosen from (tests compare them). */
  onLogits?: (logits: Float32Array) => void;
}

export interface GenerateResult {
  ids: number[];
  /** Why it ended. */
  reason: 'eos' | 'max-tokens' | 'length' | 'stopped';
}

export class Generator {
  private readonly decoder: KvDecoder;

  /** maxLength: the most real tokens (prompt + generated) a sequence may reach. */
  constructor(gpu: Gpu, model: CausalLM & KvDecodable, peft: PeftMethod | null, readonly maxLength: number, opts: KvDecoderOptions = {}) {
    this.decoder = new KvDecoder(gpu, model, peft, maxLength, opts);
  }

  /** Logits [V] after the given ids (their last position); starts a new sequence. */
  nextLogits(ids: readonly number[]): Promise<Float32Array> {
    return this.decoder.prefill(ids);
  }

  /** New token ids after the prompt ids. */
  async generate(promptIds: readonly number[], o: GenerateOptions): Promise<number[]> {
    return (await this.run(promptIds, o)).ids;
  }

  /** New token ids after the prompt ids, and why generation ended. */
  async run(promptIds: readonly number[], o: GenerateOptions): Promise<GenerateResult> {
    const out: number[] = [];
    const stop = new Set(o.stopIds ?? []);
    if (o.maxNewTokens < 1 || promptIds.length >= this.maxLength) return { ids: out, reason: o.maxNewTokens < 1 ? 'max-tokens' : 'length' };
    if (o.shouldStop?.()) return { ids: out, reason: 'stopped' };
    let logits = await this.decoder.prefill(promptIds);
    for (;;) {
      o.onLogits?.(logits);
      const next = sampleToken(logits, o);
      if (stop.has(next)) return { ids: out, reason: 'eos' };
      out.push(next);
      await o.onToken?.(next);
      if (out.length >= o.maxNewTokens) return { ids: out, reason: 'max-tokens' };
      if (promptIds.length + out.length >= this.maxLength) return { ids: out, reason: 'length' };
      if (o.shouldStop?.()) return { ids: out, reason: 'stopped' };
      logits = await this.decoder.step(next);
    }
  }

  destroy(): void {
    this.decoder.destroy();
  }
}
