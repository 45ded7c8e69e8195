// GPT-2 with its frozen matrices kept in f16 (Gpt2.load's `frozen: 'f16'`: the linear layers'
// weights and wte / the tied LM head; weights.ts FrozenStorage). Against the same model loaded in
// f32 from weights already rounded to f16, only the loads differ: a LoRA run must give the same
// losses and adapter to the bit; the weights take about half the memory; prompt tuning's copy of
// vocabulary rows gives the f32 values an f16 table holds (test/causal-lm-f16-weights.test.ts: more
// methods and models, generation).
import { describe, expect, it } from 'vitest';
import { rng, testGpu } from './helpers/gpu';
import { randomGpt2Weights, weightSource } from './helpers/gpt2-reference';
import { Gpt2, type Gpt2Dims } from '../src/engine/models/gpt2';
import { Lora } from '../src/engine/peft/lora';
import { StepUniforms } from '../src/engine/kernels/step-uniforms';
import { Trainer, DEFAULT_TRAIN_CONFIG } from '../src/engine/train/trainer';
import type { WeightSource } from '../src/engine/models/weights';
import type { Example } from '../src/data/examples';
import { f16ToF32, f32ToF16 } from '../src/io/safetensors';

const dims: Gpt2Dims = { n_embd: 64, n_layer: 2, n_head: 4, n_positions: 32, vocab_size: 80, layer_norm_epsilon: 1e-5 };
const FROZEN = /(attn\.c_attn|attn\.c_proj|mlp\.c_fc|mlp\.c_proj)\.weight$|wte\.weight$/;

/** The random model's weights, its frozen matrices on f16's grid (what f16 storage keeps). */
function source(): WeightSource {
  const src = weightSource(randomGpt2Weights(dims, 21), dims);
  return { ...src, getF32: (n: string) => (FROZEN.test(n) ? f16ToF32(f32ToF16(src.getF32(n))) : src.getF32(n)) };
}

function examples(): Example[] {
  const r = rng(6);
  return Array.from({ length: 8 }, (_, i) => {
    const inputIds = Array.from({ length: 9 - (i % 3) }, () => Math.floor(r() * dims.vocab_size));
    return { inputIds, labels: inputIds.slice(), truncated: false, row: i + 2 };
  });
}

describe('GPT-2 with f16 frozen weights', () => {
  it('trains LoRA to the same losses and adapter, to the bit, as f32 weights of the same values, in about half the memory', { timeout: 600_000 }, async () => {
    const gpu = await testGpu();
    const runs: { losses: number[]; params: Float32Array[]; bytes: number }[] = [];
    for (const frozen of ['f32', 'f16'] as const) {
      const model = Gpt2.load(gpu, dims, source(), 'random-gpt2', { frozen });
      const step = new StepUniforms(gpu);
      const lora = new Lora(gpu, { r: 4, alpha: 8, dropout: 0.1, targetModules: ['c_attn', 'mlp.c_fc'], useRslora: false }, model.linearModules(), step, rng(2));
      const trainer = new Trainer(gpu, model, lora, examples(), [], {
        ...DEFAULT_TRAIN_CONFIG, batchSize: 2, gradAccumSteps: 1, totalSteps: 8, seqLen: 9, lr: 1e-2, warmupSteps: 1, schedule: 'linear', evalEvery: 0,
      }, 0, step);
      const losses: number[] = [];
      await trainer.run({ onStep: (r) => losses.push(r.loss) });
      const params: Float32Array[] = [];
      for (const p of lora.params) params.push(await gpu.read(p.value));
      runs.push({ losses, params, bytes: model.weightBytes() });
      trainer.destroy();
      model.destroy();
    }
    const [full, half] = runs;
    expect(full.losses[7]).toBeLessThan(full.losses[0]); // it trains
    expect(half.losses).toEqual(full.losses);
    half.params.forEach((p, i) => expect(p.every((v, j) => Object.is(v, full.params[i][j])), `parameter ${i}`).toBe(true));
    // 24 C^2 + V C of the 107,264 values are frozen matrices (the rest: norms, biases, wpe): 0.518 of the bytes
    expect(half.bytes / full.bytes).toBeGreaterThan(0.5);
    expect(half.bytes / full.bytes).toBeLessThan(0.56);
  });

  it('copies vocabulary rows out of an f16 table (split in row blocks) as the f32 values they hold', async () => {
    const gpu = await testGpu();
    const ids = [3, 79, 0, 41, 3];
    const rows: Float32Array[] = [];
    for (const frozen of ['f32', 'f16'] as const) {
      // row blocks of 7 rows: the ids fall in different blocks
      const model = Gpt2.load(gpu, dims, source(), 'random-gpt2', { frozen, maxChunkBytes: 7 * dims.n_embd * 4 });
      const dst = gpu.tensor([ids.length, dims.n_embd], 'virtual tokens');
      model.copyTokenEmbeddings(ids, dst);
      rows.push(await gpu.read(dst));
      gpu.destroyTensor(dst);
      model.destroy();
    }
    const wte = source().getF32('transformer.wte.weight');
    ids.forEach((id, i) => {
      const want = wte.subarray(id * dims.n_embd, (id + 1) * dims.n_embd);
      for (const got of rows) expect(Array.from(got.subarray(i * dims.n_embd, (i + 1) * dims.n_embd)), `row ${i} (token ${id})`).toEqual(Array.from(want));
    });
  });
});
