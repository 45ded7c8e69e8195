// The speed paths against the plain one over a whole training run: the 128-row/column matmul tiles,
// the vec4 kernels, the skinny kernel (LoRA's rank-sized products) and split-K (frozen products with a long K) must
// train the same adapter as the plain 64x64 kernel does. Shapes here are tiny, so the choices are
// forced through gpu.tuning.
import { describe, expect, it } from 'vitest';
import { testGpu, rng, maxRelError } from './helpers/gpu';
import { randomGpt2Weights, weightSource } from './helpers/gpt2-reference';
import { Gpt2, type Gpt2Dims } from '../src/engine/models/gpt2';
import { Lora } from '../src/engine/peft/lora';
import { StepUniforms } from '../src/engine/kernels/step-uniforms';
import { Trainer, DEFAULT_TRAIN_CONFIG } from '../src/engine/train/trainer';
import { DEFAULT_KERNEL_TUNING, type KernelTuning } from '../src/engine/gpu/gpu';
import type { Example } from '../src/data/examples';

const dims: Gpt2Dims = { n_embd: 64, n_layer: 1, n_head: 4, n_positions: 32, vocab_size: 80, layer_norm_epsilon: 1e-5 };

function examples(n: number, len: number, seed: number): Example[] {
  const r = rng(seed);
  return Array.from({ length: n }, (_, i) => {
    const inputIds = Array.from({ length: len - (i % 4) }, () => Math.floor(r() * dims.vocab_size));
    return { inputIds, labels: inputIds.slice(), truncated: false, row: i + 2 };
  });
}

async function train(tuning: Partial<KernelTuning>): Promise<{ losses: number[]; params: Float32Array[] }> {
  const gpu = await testGpu();
  gpu.tuning = { ...DEFAULT_KERNEL_TUNING, ...tuning };
  try {
    const model = Gpt2.load(gpu, dims, weightSource(randomGpt2Weights(dims, 11), dims), 'random-gpt2');
    const step = new StepUniforms(gpu);
    const lora = new Lora(gpu, { r: 8, alpha: 16, dropout: 0.1, targetModules: ['c_attn', 'mlp.c_proj'], useRslora: false }, model.linearModules(), step, rng(2));
    const trainer = new Trainer(gpu, model, lora, examples(8, 8, 5), [], {
      ...DEFAULT_TRAIN_CONFIG, batchSize: 2, gradAccumSteps: 1, totalSteps: 30, seqLen: 8, lr: 1e-2, warmupSteps: 2, schedule: 'linear', evalEvery: 0,
    }, 0, step);
    const losses: number[] = [];
    await trainer.run({ onStep: (r) => losses.push(r.loss) });
    const params = [];
    for (const p of lora.params) params.push(await gpu.read(p.value));
    trainer.destroy();
    return { losses, params };
  } finally {
    gpu.tuning = { ...DEFAULT_KERNEL_TUNING };
  }
}

describe('fast kernel paths train the same adapter as the plain path', () => {
  it('128x64 / 128x128 tiles, vec4 kernels, the skinny kernel and split-K vs scalar 64x64 tiles only, 30 AdamW steps', { timeout: 900_000 }, async () => {
    const plain = await train({ matmul: '64x64', vec4Matmul: false, skinnyMatmul: false, splitKMaxSlices: 1 });
    expect(plain.losses[29]).toBeLessThan(plain.losses[0] - 0.5); // it trains
    for (const fast of [
      { matmul: '128x64', vec4Matmul: false, skinnyMatmul: true, skinnyMatmulMinK: 1 },
      // the vec4 kernels wherever the operands are aligned (every linear layer and the LM head here)
      { matmul: '128x128', vec4Matmul: true, skinnyMatmul: true, skinnyMatmulMinK: 16 },
      // split-K on every frozen linear product (K = 64 or 256) and the LM head's backward (K = 80), vec4 slices
      { matmul: 'db64x64', vec4Matmul: true, skinnyMatmul: false, splitKMinK: 64, splitKMinSlice: 20, splitKMaxSlices: 3 },
    ] as const) {
      const got = await train(fast);
      for (let i = 0; i < 30; i++) expect(Math.abs(got.losses[i] - plain.losses[i]), `${fast.matmul} step ${i + 1}`).toBeLessThan(1e-4 * Math.abs(plain.losses[i]));
      got.params.forEach((p, i) => {
        const { err } = maxRelError(p, plain.params[i], 1e-2);
        expect(err, `${fast.matmul} parameter ${i}`).toBeLessThan(1e-3);
      });
    }
  });
});
