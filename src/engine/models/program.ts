// What an architecture builds for a fixed batch shape: input tensors, the recorded forward
// (through the loss) and backward (down to the adapter gradients) ops, and the loss outputs.

import type { Gpu } from '../gpu/gpu';
import type { Op } from '../gpu/dispatch';
import type { Tensor } from '../gpu/tensor';

/** A padded batch ready for the GPU (src/data/batches.ts makes these). */
export interface BatchArrays {
  B: number;
  T: number;
  /** [B*T] token ids, right-padded */
  inputIds: Uint32Array;
  /** [B*T] next-token targets, -100 where no loss */
  targets: Int32Array;
  /** [B] real length of each row */
  lengths: Uint32Array;
  /** number of targets >= 0 */
  validTargets: number;
}

export interface ProgramOptions {
  B: number;
  T: number;
  /** Build the backward ops and keep every layer's activations for them. */
  training: boolean;
  /** Also copy the logits of every position into `logits` (tests and small evaluations). */
  captureLogits?: boolean;
  /** Rows of logits made at once (default: as many as fit 256 MiB and one binding). */
  headRowsPerChunk?: number;
}

export interface Program {
  readonly B: number;
  readonly T: number;
  readonly tokens: Tensor;
  readonly targets: Tensor;
  readonly lengths: Tensor;
  /** [1] multiplier on the loss gradient: 1 / (valid targets in the optimizer step) */
  readonly gradScale: Tensor;
  /** [B*T] per-position loss (0 where ignored) */
  readonly losses: Tensor;
  /** [1] += sum of `losses` on every forward run; the trainer clears it */
  readonly lossSum: Tensor;
  /** [B*T, V] when captureLogits */
  readonly logits: Tensor | null;
  readonly forward: Op[];
  readonly backward: Op[];
  /** Uploads a batch's arrays (checks shape and token range). */
  write(batch: BatchArrays): void;
  /** Frees the program's activation buffers (not the model's weights or the adapter). */
  destroy(): void;
}

export class ProgramError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ProgramError';
  }
}

/** Validates and uploads a batch into a program's input tensors. */
export function writeBatch(gpu: Gpu, p: Pick<Program, 'B' | 'T' | 'tokens' | 'targets' | 'lengths'>, batch: BatchArrays, vocabSize: number): void {
  if (batch.B !== p.B || batch.T !== p.T) throw new ProgramError(`batch is ${batch.B}x${batch.T} but the program was built for ${p.B}x${p.T}`);
  for (let i = 0; i < batch.inputIds.length; i++) {
    if (batch.inputIds[i] >= vocabSize) throw new ProgramError(`token id ${batch.inputIds[i]} at position ${i} is outside the model's vocabulary (${vocabSize})`);
    const t = batch.targets[i];
    if (t >= vocabSize) throw new ProgramError(`target id ${t} at position ${i} is outside the model's vocabulary (${vocabSize})`);
  }
  gpu.write(p.tokens, batch.inputIds);
  gpu.write(p.targets, batch.targets);
  gpu.write(p.lengths, batch.lengths);
}

/** What the trainer needs from an architecture (GPT-2 now; Llama next). */
export interface CausalLM {
  readonly V: number;
  buildProgram(peft: import('../peft/method').PeftMethod | null, opts: ProgramOptions): Program;
}
