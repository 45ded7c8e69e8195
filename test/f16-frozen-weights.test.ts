// Causal LMs with their frozen matrices kept in f16 (loadCausalLM's `frozen: 'f16'`: the linear
// layers' weights, Llama's stacked q|k|v and gate|up included, the vocabulary table and an untied
// LM head; weights.ts FrozenStorage). Against the same checkpoint loaded in f32 from weights
// already rounded to f16, only the loads differ: training (LoRA and DoRA on every linear layer,
// prompt tuning started from vocabulary rows, IA3) must
// give the same losses and adapter to the bit, generation through the KV cache the same logits to
// the bit, and the weights take about half the memory. tiny-llama (untied head, grouped-query
// heads), tiny-qwen2 (tied head, q/k/v biases, one key/value head) and tiny-gpt2 (tied wte, Conv1D
// weights); then DistilBERT and BERT classifiers (the head stays f32: it trains).
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { rng, testGpu } from './helpers/gpu';
import { nodeModelFiles } from '../src/io/model-files-node';
import { loadHfModel, type HfModel } from '../src/io/model-files';
import { loadCausalLM, type LoadedModel } from '../src/engine/models/registry';
import type { FrozenStorage } from '../src/engine/models/weights';
import { StepUniforms } from '../src/engine/kernels/step-uniforms';
import { createPeftMethod, peftModelInfo, type MethodSpec } from '../src/engine/peft/factory';
import { Trainer, DEFAULT_TRAIN_CONFIG } from '../src/engine/train/trainer';
import { KvDecoder } from '../src/engine/infer/kv-decoder';
import type { Gpu } from '../src/engine/gpu/gpu';
import type { Example } from '../src/data/examples';
import { f16ToF32, f32ToF16 } from '../src/io/safetensors';
import { encoderConfigJson, encoderShapes, encoderWeightSource, randomEncoderWeights, type TinyEncoderDims } from './helpers/bert-reference';
import { parseHfConfig, type BertConfig, type DistilBertConfig } from '../src/io/hf-config';
import { distilBertSpec } from '../src/engine/models/distilbert';
import { bertSpec } from '../src/engine/models/bert';
import { EncoderClassifier } from '../src/engine/models/encoder';
import { createSeqClsAdapter } from '../src/engine/models/sequence-classification';
import { runOps, type Op } from '../src/engine/gpu/dispatch';

const FIX = path.join(__dirname, 'fixtures');
const FROZEN = /(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj|c_attn|c_proj|c_fc)\.weight$|(embed_tokens|wte)\.weight$|lm_head\.weight$/;

/** The checkpoint with its frozen matrices on f16's grid (what f16 storage keeps); the rest as stored. */
function rounded(hf: HfModel): HfModel {
  const out = Object.create(hf) as HfModel;
  out.getF32 = (n: string) => (FROZEN.test(n) ? f16ToF32(f32ToF16(hf.getF32(n))) : hf.getF32(n));
  return out;
}

function examples(V: number): Example[] {
  const r = rng(9);
  return Array.from({ length: 8 }, (_, i) => {
    const inputIds = Array.from({ length: 10 - (i % 3) }, () => Math.floor(r() * V));
    return { inputIds, labels: inputIds.slice(), truncated: false, row: i + 2 };
  });
}

async function train(gpu: Gpu, hf: HfModel, loaded: LoadedModel, spec: MethodSpec): Promise<{ losses: number[]; params: Float32Array[]; moved: number }> {
  const step = new StepUniforms(gpu);
  const method = createPeftMethod(gpu, spec, peftModelInfo(hf.config, loaded.model.linearModules()), loaded.model, step, { random: rng(4) });
  const trainer = new Trainer(gpu, loaded.model, method, examples(loaded.model.V), [], {
    ...DEFAULT_TRAIN_CONFIG, batchSize: 2, gradAccumSteps: 1, totalSteps: 6, seqLen: 10, lr: 1e-2, warmupSteps: 1, schedule: 'linear', evalEvery: 0,
  }, 0, step);
  const before: Float32Array[] = [];
  for (const p of method.params) before.push(await gpu.read(p.value));
  const losses: number[] = [];
  await trainer.run({ onStep: (r) => losses.push(r.loss) });
  const params: Float32Array[] = [];
  for (const p of method.params) params.push(await gpu.read(p.value));
  // the largest change of any adapter value: the run trained
  const moved = Math.max(...params.map((p, i) => p.reduce((m, v, j) => Math.max(m, Math.abs(v - before[i][j])), 0)));
  trainer.destroy();
  method.destroy?.();
  return { losses, params, moved };
}

const methods = (name: string): [string, MethodSpec][] => [
  ['LoRA on every linear layer (dropout 0.1)', { method: 'lora', lora: { r: 4, alpha: 8, dropout: 0.1, targetModules: ['all-linear'], useRslora: false } }],
  ['DoRA on every linear layer', { method: 'dora', lora: { r: 2, alpha: 4, dropout: 0, targetModules: ['all-linear'], useRslora: false } }],
  ['prompt tuning started from vocabulary rows', { method: 'prompt', prompt: { numVirtualTokens: 3, init: 'vocab' } }],
  ['IA3', {
    method: 'ia3',
    ia3: name === 'tiny-gpt2' ? { targetModules: ['c_attn', 'mlp.c_proj'], feedforwardModules: ['mlp.c_proj'] } : { targetModules: ['k_proj', 'v_proj', 'down_proj'], feedforwardModules: ['down_proj'] },
  }],
];

for (const name of ['tiny-llama', 'tiny-qwen2', 'tiny-gpt2']) {
  describe(`${name} with f16 frozen weights`, () => {
    async function load(frozen: FrozenStorage): Promise<{ hf: HfModel; loaded: LoadedModel }> {
      const gpu = await testGpu();
      const hf = rounded(await loadHfModel(nodeModelFiles(path.join(FIX, name))));
      return { hf, loaded: loadCausalLM(gpu, hf, { frozen }) };
    }

    it('keeps the frozen matrices in halves, stacked ones included, in about half the bytes', { timeout: 300_000 }, async () => {
      const full = await load('f32'), half = await load('f16');
      const frozen = half.loaded.model.linearModules();
      expect(frozen.length).toBeGreaterThan(0);
      for (const m of frozen) expect(m.weight?.dtype, m.module).toBe('f16');
      const ratio = half.loaded.model.weightBytes() / full.loaded.model.weightBytes();
      expect(ratio).toBeGreaterThan(0.5);
      expect(ratio).toBeLessThan(0.56);
      full.loaded.model.destroy();
      half.loaded.model.destroy();
    });

    for (const [what, spec] of methods(name)) {
      it(`trains ${what} to the same losses and adapter, to the bit, as f32 weights of the same values`, { timeout: 600_000 }, async () => {
        const gpu = await testGpu();
        const runs = [];
        for (const frozen of ['f32', 'f16'] as const) {
          const { hf, loaded } = await load(frozen);
          runs.push(await train(gpu, hf, loaded, spec));
          loaded.model.destroy();
        }
        const [full, half] = runs;
        expect(full.moved, 'the adapter moved').toBeGreaterThan(1e-3);
        expect(full.losses.every(Number.isFinite)).toBe(true);
        expect(half.losses).toEqual(full.losses);
        half.params.forEach((p, i) => expect(p.every((v, j) => Object.is(v, full.params[i][j])), `parameter ${i}`).toBe(true));
      });
    }

    it('generates through the KV cache with the same logits, to the bit', { timeout: 300_000 }, async () => {
      const gpu = await testGpu();
      const prompt = [5, 17, 42, 8, 99, 3];
      const logits: Float32Array[][] = [];
      for (const frozen of ['f32', 'f16'] as const) {
        const { loaded } = await load(frozen);
        const dec = new KvDecoder(gpu, loaded.model, null, prompt.length + 4);
        const got = [await dec.prefill(prompt)];
        for (const id of [7, 11, 13]) got.push(await dec.step(id));
        logits.push(got);
        dec.destroy();
        loaded.model.destroy();
      }
      logits[1].forEach((l, s) => expect(l.every((v, j) => Object.is(v, logits[0][s][j])), `step ${s}`).toBe(true));
    });
  });
}

// Text classifiers: the encoder's linear weights and word table in f16, the head (trained) in f32.
// Every tensor of the checkpoint is put on f16's grid for both loads, so only the storage differs.
const K = 3;
const ENCODERS: TinyEncoderDims[] = [
  { arch: 'distilbert', C: 16, L: 2, H: 2, F: 24, V: 50, P: 12, eps: 1e-12, activation: 'gelu' },
  { arch: 'bert', C: 16, L: 2, H: 4, F: 20, V: 45, P: 10, eps: 1e-12, activation: 'gelu' },
];

for (const d of ENCODERS) {
  describe(`${d.arch} classifier with f16 frozen weights`, () => {
    const targets = d.arch === 'distilbert' ? ['q_lin', 'v_lin', 'out_lin', 'lin1', 'lin2'] : ['query', 'value', 'intermediate.dense'];
    const specs: [string, MethodSpec][] = [
      ['LoRA', { method: 'lora', lora: { r: 2, alpha: 4, dropout: 0, targetModules: targets, useRslora: false } }],
      ['DoRA', { method: 'dora', lora: { r: 2, alpha: 4, dropout: 0, targetModules: targets, useRslora: false } }],
      ['prompt tuning started from vocabulary rows', { method: 'prompt', prompt: { numVirtualTokens: 2, init: 'vocab' } }],
    ];
    for (const [what, spec] of specs) {
      it(`${what} + head: the same logits, loss and gradients, to the bit, as f32 weights of the same values`, { timeout: 300_000 }, async () => {
        const gpu = await testGpu();
        const c = parseHfConfig(encoderConfigJson(d)) as DistilBertConfig | BertConfig;
        const encoderSpec = c.family === 'distilbert' ? distilBertSpec(c, 'tiny') : bertSpec(c as BertConfig, 'tiny');
        const src = encoderWeightSource(randomEncoderWeights(d, K, 31), encoderShapes(d, K));
        const onGrid = { ...src, getF32: (n: string) => f16ToF32(f32ToF16(src.getF32(n))) };
        const r = rng(5);
        const ids = Uint32Array.from({ length: 3 * 7 }, () => Math.floor(r() * d.V));
        const batch = { B: 3, T: 7, inputIds: ids, lengths: Uint32Array.of(7, 4, 5), labels: Int32Array.of(2, 0, 1), validLabels: 3 };
        const runs: { bytes: number; dtypes: string[]; out: Float32Array[] }[] = [];
        for (const frozen of ['f32', 'f16'] as const) {
          const model = EncoderClassifier.load(gpu, encoderSpec, onGrid, 'tiny', { numLabels: K, random: rng(9), maxChunkBytes: 256, frozen });
          const adapter = createSeqClsAdapter(gpu, spec, model, new StepUniforms(gpu), rng(4));
          const program = model.buildProgram(adapter, { B: 3, T: 7, training: true });
          program.write(batch);
          gpu.write(program.gradScale, new Float32Array([1 / 3]));
          const zero: Op[] = [...adapter.params.map((p) => ({ kind: 'clear' as const, buffer: p.grad.buffer })), { kind: 'clear', buffer: program.lossSum.buffer }];
          runOps(gpu, [...zero, ...program.forward, ...program.backward]);
          const out = [await gpu.read(program.logits), await gpu.read(program.lossSum)];
          for (const p of adapter.params) out.push(await gpu.read(p.value), await gpu.read(p.grad));
          runs.push({ bytes: model.weightBytes(), dtypes: model.linearModules().map((m) => m.weight!.dtype), out });
          program.destroy();
          adapter.destroy();
          model.destroy();
        }
        const [full, half] = runs;
        expect(new Set(half.dtypes)).toEqual(new Set(['f16']));
        expect(half.bytes).toBeLessThan(0.75 * full.bytes);
        expect(full.out[1][0]).toBeGreaterThan(0);
        half.out.forEach((t, i) => expect(t.every((v, j) => Object.is(v, full.out[i][j])), `output ${i}`).toBe(true));
      });
    }
  });
}
