// The GPU memory the app promises before training equals what the engine then allocates, to the
// byte (gpu.allocatedBytes counts every Gpu.buffer with its 16-byte rounding): each architecture's
// estimateProgramBytes against buildProgram, weightBytes against loading, the worker's whole-run
// estimate against a real Lora + Trainer (training program, evaluation program, AdamW state), and
// destroy() giving it all back. Also the worker's tokenizing with progress (buildCausalExamplesAsync).

import fs from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { testGpu, rng } from './helpers/gpu';
import { nodeModelFiles } from '../src/io/model-files-node';
import { loadHfModel, type HfModel } from '../src/io/model-files';
import { loadCausalLM, type CausalLMModel } from '../src/engine/models/registry';
import { allocatedBytesFor, type ProgramOptions } from '../src/engine/models/program';
import { Lora, moduleMatches } from '../src/engine/peft/lora';
import { StepUniforms } from '../src/engine/kernels/step-uniforms';
import { DEFAULT_TRAIN_CONFIG, Trainer } from '../src/engine/train/trainer';
import type { Gpu } from '../src/engine/gpu/gpu';
import type { Example } from '../src/data/examples';
import { buildCausalExamples, buildCausalExamplesAsync, PROGRESS_ROWS } from '../src/data/examples';
import { parseTableText } from '../src/data/table';
import { loadTokenizer } from '../src/data/tokenizer';
import { adapterBuffers, estimateTraining, SOFTWARE_RENDERER_WARN_BYTES } from '../src/worker/memory';

const FIX = path.join(__dirname, 'fixtures');
const NAMES = ['tiny-gpt2', 'tiny-llama', 'tiny-qwen2', 'tiny-qwen3'] as const;

/** Records the size of every buffer Gpu.buffer makes while `fn` runs. */
function recordBuffers<T>(gpu: Gpu, fn: () => T): { result: T; sizes: number[] } {
  const sizes: number[] = [];
  const original = gpu.buffer;
  gpu.buffer = function (this: Gpu, bytes: number, label: string, usage?: GPUBufferUsageFlags) {
    const b = original.call(this, bytes, label, usage);
    sizes.push(b.size);
    return b;
  } as Gpu['buffer'];
  try {
    return { result: fn(), sizes };
  } finally {
    gpu.buffer = original;
  }
}

const sorted = (a: number[]) => [...a].sort((x, y) => x - y);

/** Examples of random tokens, the second half of each a target. */
function randomExamples(n: number, V: number, maxLen: number, seed: number): Example[] {
  const r = rng(seed);
  return Array.from({ length: n }, (_, i) => {
    const len = 4 + Math.floor(r() * (maxLen - 4));
    const inputIds = Array.from({ length: len }, () => Math.floor(r() * V));
    const labels = inputIds.map((t, j) => (j >= len / 2 ? t : -100));
    return { inputIds, labels, truncated: false, row: i + 2 };
  });
}

describe('memory estimates equal what the engine allocates', async () => {
  const gpu = await testGpu();
  const models = new Map<string, HfModel>();
  for (const name of NAMES) models.set(name, await loadHfModel(nodeModelFiles(path.join(FIX, name))));

  for (const name of NAMES) {
    const hf = () => models.get(name)!;

    it(`${name}: weightBytes() is what loading allocated, and destroy() frees all of it`, () => {
      const before = gpu.allocatedBytes;
      const { model } = loadCausalLM(gpu, hf());
      const loaded = gpu.allocatedBytes - before;
      expect(loaded).toBeGreaterThan(0);
      expect(model.weightBytes()).toBe(loaded);
      model.destroy();
      expect(gpu.allocatedBytes).toBe(before);
      expect(model.weightBytes()).toBe(0);
      model.destroy(); // twice is harmless
      expect(gpu.allocatedBytes).toBe(before);
    });

    it(`${name}: estimateProgramBytes() equals what buildProgram allocates (training and evaluation, logits captured or not, head in blocks)`, () => {
      const { model } = loadCausalLM(gpu, hf());
      const cases: ProgramOptions[] = [
        { B: 2, T: 16, training: true },
        { B: 2, T: 16, training: false },
        { B: 3, T: 7, training: true, captureLogits: true },
        { B: 3, T: 7, training: false, captureLogits: true },
        // odd sizes (not multiples of 4 floats) and the logits made 5 rows at a time
        { B: 1, T: 5, training: true, headRowsPerChunk: 5 },
        { B: 4, T: 9, training: false, captureLogits: true, headRowsPerChunk: 7 },
      ];
      for (const opts of cases) {
        const before = gpu.allocatedBytes;
        const { result: program, sizes } = recordBuffers(gpu, () => model.buildProgram(null, opts));
        const what = `${name} ${JSON.stringify(opts)}`;
        expect(gpu.allocatedBytes - before, what).toBe(model.estimateProgramBytes(opts));
        // buffer for buffer, not only the sum
        expect(sorted(sizes), what).toEqual(sorted(model.programBuffers(opts).map((b) => allocatedBytesFor(b.elements))));
        program.destroy();
        expect(gpu.allocatedBytes, what).toBe(before);
      }
      // The estimate grows with the batch as the program does (it is not a constant).
      expect(model.estimateProgramBytes({ B: 4, T: 16, training: true })).toBeGreaterThan(model.estimateProgramBytes({ B: 2, T: 16, training: true }));
      model.destroy();
    });
  }

  const runs: { name: (typeof NAMES)[number]; rank: number; dropout: number; targets: string[]; validation: boolean }[] = [
    { name: 'tiny-gpt2', rank: 4, dropout: 0, targets: ['c_attn'], validation: true },
    { name: 'tiny-gpt2', rank: 8, dropout: 0.1, targets: ['c_attn', 'mlp.c_proj'], validation: false },
    { name: 'tiny-llama', rank: 8, dropout: 0.05, targets: ['q_proj', 'v_proj'], validation: true },
    { name: 'tiny-qwen2', rank: 2, dropout: 0, targets: ['all-linear'], validation: true },
    { name: 'tiny-qwen3', rank: 4, dropout: 0.1, targets: ['all-linear'], validation: true },
  ];
  for (const c of runs) {
    it(`${c.name}, LoRA r=${c.rank} on ${c.targets.join('+')}${c.dropout ? ` with dropout` : ''}: the worker's estimate equals a real run's allocations`, async () => {
      const before = gpu.allocatedBytes;
      const { model } = loadCausalLM(gpu, models.get(c.name)!);
      const B = 2, T = 16;
      const linears = model.linearModules();
      const targeted = c.targets.includes('all-linear') ? linears : linears.filter((l) => moduleMatches(l.module, c.targets));
      const estimate = estimateTraining(
        model as CausalLMModel,
        { B, T, rank: c.rank, dropout: c.dropout, targeted, hasValidation: c.validation },
        { maxBufferSize: gpu.info.limits.maxBufferSize, maxStorageBufferBindingSize: gpu.info.limits.maxStorageBufferBindingSize, isFallbackAdapter: true },
      );
      expect(estimate.weights).toBe(gpu.allocatedBytes - before);
      expect(estimate.total).toBe(estimate.weights + estimate.activations + estimate.adapter);
      expect(estimate.evaluation > 0).toBe(c.validation);
      expect(estimate.warning).toBeNull(); // a few MB, even on a software renderer

      const step = new StepUniforms(gpu);
      const lora = new Lora(gpu, { r: c.rank, alpha: 2 * c.rank, dropout: c.dropout, targetModules: c.targets, useRslora: false }, linears, step, rng(3));
      expect(lora.targetedModules.length).toBe(targeted.length);
      const V = model.V;
      const train = randomExamples(6, V, T, 1);
      const validation = c.validation ? randomExamples(3, V, T, 2) : [];
      const config = { ...DEFAULT_TRAIN_CONFIG, batchSize: B, totalSteps: 2, seqLen: T, evalEvery: 0 };
      const trainer = new Trainer(gpu, model, lora, train, validation, config, 0, step);
      await gpu.sync();
      // Before the first evaluation the evaluation program does not exist yet.
      expect(gpu.allocatedBytes - before).toBe(estimate.total - estimate.evaluation);
      await trainer.run();
      expect(gpu.allocatedBytes - before).toBe(estimate.total - estimate.evaluation);
      // The first evaluation builds the evaluation program: the peak.
      if (c.validation) expect(Number.isFinite(await trainer.evaluate())).toBe(true);
      expect(gpu.allocatedBytes - before).toBe(estimate.total);

      // Freeing: programs, then the adapter (its parameters, moments and scratch), then the weights.
      trainer.destroy();
      expect(gpu.allocatedBytes - before).toBe(estimate.weights + estimate.adapter);
      lora.destroy();
      // What is left of the adapter is the optimizer's two small buffers (the trainer keeps them).
      const optimizer = adapterBuffers({ B, T, rank: c.rank, dropout: c.dropout, targeted, hasValidation: c.validation })
        .filter((b) => b.label.startsWith('gradNorm.'))
        .reduce((s, b) => s + allocatedBytesFor(b.elements), 0);
      expect(gpu.allocatedBytes - before).toBe(estimate.weights + optimizer);
      lora.destroy(); // twice is harmless
      model.destroy();
      expect(gpu.allocatedBytes - before).toBe(optimizer);
    });
  }

  it('names the largest buffer, and warns above 2 GiB only on a software renderer', () => {
    const { model } = loadCausalLM(gpu, models.get('tiny-llama')!);
    const targeted = model.linearModules().filter((l) => moduleMatches(l.module, ['q_proj']));
    const limits = { maxBufferSize: 2 ** 28, maxStorageBufferBindingSize: 2 ** 27 };
    const small = estimateTraining(model, { B: 2, T: 16, rank: 4, dropout: 0, targeted, hasValidation: false }, { ...limits, isFallbackAdapter: true });
    expect(small.bufferLimit).toBe(2 ** 27);
    expect(small.largestBuffer).toBeLessThan(small.bufferLimit);
    // 4096 rows of 64 tokens: the attention scores and the logits block are the big ones.
    const big = { B: 4096, T: 64, rank: 4, dropout: 0, targeted, hasValidation: true };
    const onCpu = estimateTraining(model, big, { ...limits, isFallbackAdapter: true });
    const onGpu = estimateTraining(model, big, { ...limits, isFallbackAdapter: false });
    expect(onCpu.total).toBeGreaterThan(SOFTWARE_RENDERER_WARN_BYTES);
    expect(onCpu.warning).toMatch(/GB on a software renderer/);
    expect(onGpu.warning).toBeNull();
    expect(onCpu.largestBufferLabel).toBe('l0.att');
    const heads = models.get('tiny-llama')!.config.raw.num_attention_heads as number;
    expect(onCpu.largestBuffer).toBe(4096 * heads * 64 * 64 * 4);
    expect(onCpu.largestBuffer).toBeGreaterThan(onCpu.bufferLimit);
    model.destroy();
  });
});

describe('tokenizing with progress (the worker prepares examples with buildCausalExamplesAsync)', () => {
  const dir = path.join(FIX, 'tiny-gpt2');
  const tokenizer = loadTokenizer(JSON.parse(fs.readFileSync(path.join(dir, 'tokenizer.json'), 'utf8')), JSON.parse(fs.readFileSync(path.join(dir, 'tokenizer_config.json'), 'utf8')));
  const rows = 2 * PROGRESS_ROWS + 500;
  const csv = ['prompt,completion', ...Array.from({ length: rows }, (_, i) => `what is ${i} plus one,${i + 1}`)].join('\n') + '\n';
  const table = parseTableText(csv, 'sums.csv');
  const mapping = { kind: 'prompt-completion' as const, prompt: 'prompt', completion: 'completion', template: '{prompt}: ' };

  it('reports the fraction of rows done every PROGRESS_ROWS rows and 1 at the end; the result is the same with or without', async () => {
    const plain = buildCausalExamples(table, mapping, tokenizer, { maxLength: 32 });
    const syncReports: number[] = [];
    const withProgress = buildCausalExamples(table, mapping, tokenizer, { maxLength: 32, onProgress: (f) => syncReports.push(f) });
    expect(syncReports).toEqual([PROGRESS_ROWS / rows, (2 * PROGRESS_ROWS) / rows, 1]);
    expect(withProgress).toEqual(plain);

    const asyncReports: number[] = [];
    // Between chunks the event loop gets a turn: a timer set now fires before the build ends.
    let timerFiredAt: number | null = null;
    setTimeout(() => (timerFiredAt = asyncReports.length), 0);
    const built = await buildCausalExamplesAsync(table, mapping, tokenizer, { maxLength: 32, onProgress: (f) => asyncReports.push(f) });
    expect(asyncReports).toEqual(syncReports);
    expect(built).toEqual(plain);
    expect(plain.examples.length).toBe(rows);
    expect(timerFiredAt).not.toBeNull();
    expect(timerFiredAt!).toBeLessThan(asyncReports.length);
  });

  it('a progress callback that throws stops the build (how the worker drops a superseded one)', async () => {
    let calls = 0;
    const stop = new Error('superseded');
    await expect(
      buildCausalExamplesAsync(table, mapping, tokenizer, {
        maxLength: 32,
        onProgress: () => {
          calls++;
          throw stop;
        },
      }),
    ).rejects.toBe(stop);
    expect(calls).toBe(1);
  });
});
