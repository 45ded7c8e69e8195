// The speed paths against the plain one over a whole training run: the 128-row/column matmul tiles,
// the vec4 kernels, the skinny kernel (LoRA's rank-sized products), LoRA's chunked weight gradients
// (kernels/lora.ts loraWeightGrad, dropout mask in place) and split-K (frozen products with a long K) must
// train the same adapter as the plain 64x64 kernel (dA and dB through it, over dropout(x)) does; flash attention and the subgroup reductions
// the same as the T x T attention and the workgroup-memory reductions (GPT-2, and a Llama with
// grouped-query heads). Shapes here are tiny, so the choices are forced through gpu.tuning.
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { testGpu, rng, maxRelError } from './helpers/gpu';
import { randomGpt2Weights, weightSource } from './helpers/gpt2-reference';
import { Gpt2, type Gpt2Dims } from '../src/engine/models/gpt2';
import { Lora } from '../src/engine/peft/lora';
import { StepUniforms } from '../src/engine/kernels/step-uniforms';
import { Trainer, DEFAULT_TRAIN_CONFIG } from '../src/engine/train/trainer';
import { DEFAULT_KERNEL_TUNING, type KernelTuning } from '../src/engine/gpu/gpu';
import type { Example } from '../src/data/examples';
import { nodeModelFiles } from '../src/io/model-files-node';
import { loadHfModel } from '../src/io/model-files';
import { loadCausalLM, type CausalLMModel } from '../src/engine/models/registry';
import type { Gpu } from '../src/engine/gpu/gpu';

const dims: Gpt2Dims = { n_embd: 64, n_layer: 1, n_head: 4, n_positions: 32, vocab_size: 80, layer_norm_epsilon: 1e-5 };

function examples(n: number, len: number, seed: number, vocab = dims.vocab_size): Example[] {
  const r = rng(seed);
  return Array.from({ length: n }, (_, i) => {
    const inputIds = Array.from({ length: len - (i % 4) }, () => Math.floor(r() * vocab));
    return { inputIds, labels: inputIds.slice(), truncated: false, row: i + 2 };
  });
}

interface RunModel {
  load(gpu: Gpu): CausalLMModel;
  targets: string[];
  vocab: number;
  /** Longest example (the examples are 8 of lengths len .. len-3, right-padded in batches of 2). */
  len: number;
}

const GPT2: RunModel = {
  load: (gpu) => Gpt2.load(gpu, dims, weightSource(randomGpt2Weights(dims, 11), dims), 'random-gpt2'),
  targets: ['c_attn', 'mlp.c_proj'], vocab: dims.vocab_size, len: 8,
};

async function train(tuning: Partial<KernelTuning>, run: RunModel = GPT2): Promise<{ losses: number[]; params: Float32Array[] }> {
  const gpu = await testGpu();
  gpu.tuning = { ...DEFAULT_KERNEL_TUNING, ...tuning };
  try {
    const model = run.load(gpu);
    const step = new StepUniforms(gpu);
    const lora = new Lora(gpu, { r: 8, alpha: 16, dropout: 0.1, targetModules: run.targets, useRslora: false }, model.linearModules(), step, rng(2));
    const trainer = new Trainer(gpu, model, lora, examples(8, run.len, 5, run.vocab), [], {
      ...DEFAULT_TRAIN_CONFIG, batchSize: 2, gradAccumSteps: 1, totalSteps: 30, seqLen: run.len, lr: 1e-2, warmupSteps: 2, schedule: 'linear', evalEvery: 0,
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
  it('128x64 / 128x128 tiles, vec4 kernels (C as vec4s too), the skinny kernel, split-K and stream-K vs scalar 64x64 tiles only, 30 AdamW steps', { timeout: 900_000 }, async () => {
    const plain = await train({ matmul: '64x64', vec4Matmul: false, skinnyMatmul: false, splitKMaxSlices: 1, loraGradWorkgroups: 0 });
    expect(plain.losses[29]).toBeLessThan(plain.losses[0] - 0.5); // it trains
    for (const fast of [
      // LoRA's dA and dB through the skinny kernel too
      { matmul: '128x64', vec4Matmul: false, skinnyMatmul: true, skinnyMatmulMinK: 1, loraGradWorkgroups: 0 },
      // the vec4 kernels wherever the operands are aligned (every linear layer and the LM head here)
      // (and LoRA's dA and dB as chunked sums, the default)
      { matmul: '128x128', vec4Matmul: true, skinnyMatmul: true, skinnyMatmulMinK: 16 },
      // the 128x64 vec4 kernel's C4 form (C read and written as vec4s) wherever C's rows are whole vec4s
      { matmul: '128x64', vec4Matmul: true, vec4C: true, skinnyMatmul: false },
      // split-K on every frozen linear product (K = 64 or 256) and the LM head's backward (K = 80), vec4 slices
      { matmul: 'db64x64', vec4Matmul: true, skinnyMatmul: false, splitKMinK: 64, splitKMinSlice: 20, splitKMaxSlices: 3 },
      // stream-K on every frozen linear product and the LM head's forward and backward, over 7 workgroups
      { matmul: 'auto', vec4Matmul: true, skinnyMatmul: true, streamKMinK: 16, streamKWholeTiles: false, streamKWorkgroups: 7, streamKMinIters: 1 },
    ] as const) {
      const got = await train(fast);
      // (on a miss, both runs' losses from the first step that differs: a one-step miss that rejoins
      // the plain run is a reporting or transient fault, a miss that stays is a kernel's)
      const first = got.losses.findIndex((l, i) => !(Math.abs(l - plain.losses[i]) < 1e-4 * Math.abs(plain.losses[i])));
      const around = (xs: number[]) => xs.slice(Math.max(0, first - 2)).map((x) => x.toFixed(5)).join(' ');
      expect(first, `${JSON.stringify(fast)}: step ${first + 1} differs; losses from step ${Math.max(1, first - 1)}: fast ${around(got.losses)} / plain ${around(plain.losses)}`).toBe(-1);
      got.params.forEach((p, i) => {
        const { err } = maxRelError(p, plain.params[i], 1e-2);
        expect(err, `${fast.matmul} parameter ${i}`).toBeLessThan(1e-3);
      });
    }
  });
});

describe('flash attention and subgroup reductions train the same adapter as the plain path', async () => {
  const hf = await loadHfModel(nodeModelFiles(path.join(__dirname, 'fixtures', 'tiny-llama')));
  // 4 query heads over 2 key/value heads; 37 tokens: more than one 32-row tile, not a multiple of one
  const LLAMA: RunModel = { load: (gpu) => loadCausalLM(gpu, hf).model, targets: ['q_proj', 'v_proj', 'down_proj'], vocab: 360, len: 37 };
  for (const [name, run] of [['GPT-2', GPT2], ['Llama (grouped-query heads)', LLAMA]] as const) {
    it(`${name}: flash attention + subgroups vs the T x T attention + workgroup reductions, 30 AdamW steps`, { timeout: 900_000 }, async () => {
      const plain = await train({ flashAttention: false, subgroups: false }, run);
      expect(plain.losses[29]).toBeLessThan(plain.losses[0] - 0.5); // it trains
      for (const fast of [{ flashAttention: true, subgroups: false }, { flashAttention: true, subgroups: true }]) {
        const what = JSON.stringify(fast);
        const got = await train(fast, run);
        for (let i = 0; i < 30; i++) expect(Math.abs(got.losses[i] - plain.losses[i]), `${what} step ${i + 1}`).toBeLessThan(1e-4 * Math.abs(plain.losses[i]));
        got.params.forEach((p, i) => {
          const { err } = maxRelError(p, plain.params[i], 1e-2);
          expect(err, `${what} parameter ${i}`).toBeLessThan(1e-3);
        });
      }
    });
  }
});
