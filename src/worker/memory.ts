// GPU memory a LoRA training run will take, before any buffer is made: the frozen weights
// (measured when the model was uploaded), the training program's activations (every buffer
// gpt2.ts makes for a [B, T] batch), the evaluation program, and the adapter with its AdamW state.
// Mirrors the buffers of src/engine/models/gpt2.ts and src/engine/peft/lora.ts; the worker shows
// it next to the bytes actually allocated once training runs, so a drift is visible.

import type { LinearModuleInfo } from '../engine/peft/lora';
import type { MemoryEstimate } from './protocol';

export interface Gpt2Shape {
  C: number;
  L: number;
  H: number;
  /** MLP width */
  F: number;
  V: number;
}

export interface RunShape {
  B: number;
  T: number;
  rank: number;
  dropout: number;
  /** The linear layers LoRA adapts. */
  targeted: LinearModuleInfo[];
  hasValidation: boolean;
  /** Largest binding the GPU allows (the LM head's logits are made in blocks under it). */
  maxBindingBytes: number;
}

/** Gpu.buffer rounds every allocation up to 16 bytes (and at least 16). */
const bufferBytes = (floats: number) => Math.max(16, Math.ceil((floats * 4) / 16) * 16);

/** Buffers of one GPT-2 program (gpt2.ts buildProgram), in floats, one entry per buffer. */
function programBuffers(m: Gpt2Shape, B: number, T: number, training: boolean, maxBindingBytes: number): number[] {
  const { C, L, H, F, V } = m;
  const M = B * T;
  const out: number[] = [M, M, B, 1, M, 1]; // tokens, targets, lengths, gradScale, losses, lossSum
  const residuals = training ? L + 1 : 2;
  for (let i = 0; i < residuals; i++) out.push(M * C);
  const layers = training ? L : 1;
  for (let i = 0; i < layers; i++) {
    // ln1, mean1, rstd1, qkv, att, ctx, x2, ln2, mean2, rstd2, fc, g
    out.push(M * C, M, M, 3 * M * C, B * H * T * T, M * C, M * C, M * C, M, M, M * F, M * F);
  }
  out.push(M * C, M, M); // lnf, meanf, rstdf
  const headRows = Math.max(1, Math.min(M, Math.floor(Math.min(maxBindingBytes, 256 * 2 ** 20) / (V * 4))));
  out.push(headRows * V);
  // backward scratch: dres, dln, dqkv, dctx, dg, dP
  if (training) out.push(M * C, M * C, 3 * M * C, M * C, M * F, B * H * T * T);
  return out;
}

export function estimateGpt2Training(model: Gpt2Shape, run: RunShape, weightBytes: number): MemoryEstimate {
  const { B, T, rank, targeted } = run;
  const train = programBuffers(model, B, T, true, run.maxBindingBytes);
  const evaluation = run.hasValidation ? programBuffers(model, B, T, false, run.maxBindingBytes) : [];
  const evaluationBytes = evaluation.reduce((s, n) => s + bufferBytes(n), 0);
  const activations = train.reduce((s, n) => s + bufferBytes(n), 0) + evaluationBytes;

  // value, grad, m, v for A [r, in] and B [out, r]; scratch u, du [M, r] (+ dropout copies [M, maxIn]).
  let adapter = 0;
  for (const t of targeted) adapter += 4 * (bufferBytes(rank * t.inFeatures) + bufferBytes(t.outFeatures * rank));
  const M = B * T;
  adapter += 2 * bufferBytes(M * rank);
  const maxIn = targeted.reduce((s, t) => Math.max(s, t.inFeatures), 0);
  if (run.dropout > 0) adapter += 2 * bufferBytes(M * maxIn);
  // optimizer: per-tensor gradient-norm partials and the clip pair
  adapter += bufferBytes(Math.max(1, 2 * targeted.length)) + bufferBytes(2);

  const largestBuffer = Math.max(...train.map(bufferBytes), ...(run.dropout > 0 ? [bufferBytes(M * maxIn)] : []));
  return { weights: weightBytes, activations, evaluation: evaluationBytes, adapter, total: weightBytes + activations + adapter, largestBuffer };
}
