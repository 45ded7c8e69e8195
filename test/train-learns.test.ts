// The trainer end to end on a tiny random GPT-2: LoRA memorizes a handful of sequences, so the
// loss must fall a lot; reports arrive for every step in order, and evaluation runs.
import { describe, expect, it } from 'vitest';
import { testGpu, rng } from './helpers/gpu';
import { randomGpt2Weights, weightSource } from './helpers/gpt2-reference';
import { Gpt2, type Gpt2Dims } from '../src/engine/models/gpt2';
import { Lora } from '../src/engine/peft/lora';
import { StepUniforms } from '../src/engine/kernels/step-uniforms';
import { Trainer, DEFAULT_TRAIN_CONFIG, type StepReport } from '../src/engine/train/trainer';
import type { Example } from '../src/data/examples';

const dims: Gpt2Dims = { n_embd: 32, n_layer: 2, n_head: 4, n_positions: 32, vocab_size: 50, layer_norm_epsilon: 1e-5 };

function memorizable(n: number, len: number, seed: number): Example[] {
  const r = rng(seed);
  return Array.from({ length: n }, (_, i) => {
    const inputIds = Array.from({ length: len - (i % 3) }, () => 1 + Math.floor(r() * (dims.vocab_size - 1)));
    // loss on everything after the first 2 tokens ("prompt")
    const labels = inputIds.map((t, j) => (j < 2 ? -100 : t));
    return { inputIds, labels, truncated: false, row: i + 2 };
  });
}

describe('training', () => {
  it('LoRA memorizes a small set: the loss falls by more than half', { timeout: 600_000 }, async () => {
    const gpu = await testGpu();
    const model = Gpt2.load(gpu, dims, weightSource(randomGpt2Weights(dims, 5), dims), 'random-gpt2');
    const step = new StepUniforms(gpu);
    const lora = new Lora(gpu, { r: 8, alpha: 16, dropout: 0.05, targetModules: ['c_attn', 'mlp.c_fc'], useRslora: false }, model.linearModules(), step, rng(1));
    const train = memorizable(8, 12, 3);
    const validation = memorizable(2, 12, 4);
    const trainer = new Trainer(gpu, model, lora, train, validation, {
      ...DEFAULT_TRAIN_CONFIG, batchSize: 4, gradAccumSteps: 2, totalSteps: 24, seqLen: 12, lr: 3e-2, warmupSteps: 3, schedule: 'cosine', evalEvery: 12,
    }, 0, step);
    const reports: StepReport[] = [];
    const evals: number[] = [];
    await trainer.run({ onStep: (r) => reports.push(r), onEval: (r) => evals.push(r.evalLoss) });
    expect(reports.map((r) => r.step)).toEqual(Array.from({ length: 24 }, (_, i) => i + 1));
    const first = reports[0].loss, last = reports.at(-1)!.loss;
    expect(first).toBeGreaterThan(2);
    expect(last).toBeLessThan(first * 0.5);
    for (const r of reports) {
      expect(Number.isFinite(r.gradNorm) && r.gradNorm > 0).toBe(true);
      expect(r.tokens).toBeGreaterThan(0);
    }
    // warmup then cosine decay; like transformers' schedulers the first step's factor is 0/warmup
    expect(reports[0].lr).toBe(0);
    expect(reports[1].lr).toBeCloseTo(3e-2 / 3, 8);
    expect(reports[3].lr).toBeCloseTo(3e-2, 8);
    expect(reports.at(-1)!.lr).toBeLessThan(1e-3);
    expect(evals.length).toBe(2);
    expect(evals.every(Number.isFinite)).toBe(true);
    trainer.destroy();
  });

  it('stops with the GPU\'s own message when the device refuses a step, not with stale numbers', { timeout: 600_000 }, async () => {
    const gpu = await testGpu();
    const model = Gpt2.load(gpu, dims, weightSource(randomGpt2Weights(dims, 5), dims), 'random-gpt2');
    const step = new StepUniforms(gpu);
    const lora = new Lora(gpu, { r: 4, alpha: 8, dropout: 0, targetModules: ['c_attn'], useRslora: false }, model.linearModules(), step, rng(1));
    const trainer = new Trainer(gpu, model, lora, memorizable(8, 12, 3), [], {
      ...DEFAULT_TRAIN_CONFIG, batchSize: 4, gradAccumSteps: 1, totalSteps: 6, seqLen: 12, evalEvery: 0,
    }, 0, step);
    const reports: StepReport[] = [];
    await trainer.run({ onStep: (r) => reports.push(r), shouldStop: () => trainer.step >= 2 });
    expect(reports.length).toBe(2);
    // a buffer the recorded step uses, destroyed under it: every later submit is a validation error
    lora.params[0].grad.buffer.destroy();
    await expect(trainer.run({ onStep: (r) => reports.push(r) })).rejects.toThrow(/GPU error in step 3: .*destroyed/i);
    expect(reports.length).toBe(2);
    expect(() => gpu.checkErrors()).not.toThrow(); // reported once, then cleared
  });
});
