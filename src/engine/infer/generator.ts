// Text generation with the same WGSL forward pass used for training: the prompt and the tokens
// so far go through a B=1 program each step and the logits of the last real position are read
// back. Causal attention makes the padding after it irrelevant. No KV cache yet: each step costs a
// full forward over the sequence, fine for short generations.

import type { Gpu } from '../gpu/gpu';
import { runOps } from '../gpu/dispatch';
import type { PeftMethod } from '../peft/method';
import type { CausalLM, Program } from '../models/program';
import { sampleToken, type SamplingOptions } from './sampling';

export interface GenerateOptions extends SamplingOptions {
  maxNewTokens: number;
  /** Stop when one of these is generated (not included in the output). */
  stopIds?: number[];
  onToken?: (id: number) => void;
}

export class Generator {
  private readonly program: Program;
  private readonly ids: Uint32Array;

  constructor(private readonly gpu: Gpu, private readonly model: CausalLM, peft: PeftMethod | null, readonly maxLength: number) {
    this.program = model.buildProgram(peft, { B: 1, T: maxLength, training: false, captureLogits: true });
    this.ids = new Uint32Array(maxLength);
  }

  /** Logits [V] after the given ids (their last position). */
  async nextLogits(ids: readonly number[]): Promise<Float32Array> {
    const n = ids.length;
    if (n === 0 || n > this.maxLength) throw new Error(`generation needs 1..${this.maxLength} tokens, got ${n}`);
    this.ids.fill(0);
    this.ids.set(ids);
    this.program.write({ B: 1, T: this.maxLength, inputIds: this.ids, targets: new Int32Array(this.maxLength).fill(-100), lengths: Uint32Array.of(n), validTargets: 0 });
    runOps(this.gpu, this.program.forward, 'generate');
    const V = this.model.V;
    return new Float32Array(await this.gpu.readBytes(this.program.logits!.buffer, V * 4, (n - 1) * V * 4));
  }

  /** New token ids after the prompt ids. */
  async generate(promptIds: readonly number[], o: GenerateOptions): Promise<number[]> {
    const ids = [...promptIds];
    const out: number[] = [];
    const stop = new Set(o.stopIds ?? []);
    while (out.length < o.maxNewTokens && ids.length < this.maxLength) {
      const next = sampleToken(await this.nextLogits(ids), o);
      if (stop.has(next)) break;
      ids.push(next);
      out.push(next);
      o.onToken?.(next);
    }
    return out;
  }

  destroy(): void {
    this.program.destroy();
  }
}
