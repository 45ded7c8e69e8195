// Fuzzing adapter import (issue #8): adapter files of every method, exported by the engine for a
// tiny GPT-2 and then mutated (config fields, JSON syntax, tensor names, shapes and bytes), are
// imported again. Each import must give a working adapter or an AdapterError / SafetensorsError
// naming the file, never another exception.
import { describe, expect, it } from 'vitest';
import { testGpu, rng } from './helpers/gpu';
import { randomGpt2Weights, weightSource } from './helpers/gpt2-reference';
import { Gpt2, type Gpt2Dims } from '../src/engine/models/gpt2';
import { createPeftMethod, peftModelInfo, type MethodSpec } from '../src/engine/peft/factory';
import { importPeftAdapter, AdapterError } from '../src/engine/peft/import';
import { exportAdapter } from '../src/engine/export/peft-export';
import { StepUniforms } from '../src/engine/kernels/step-uniforms';
import { SafetensorsError, parseSafetensors, writeSafetensors } from '../src/io/safetensors';
import type { HfConfig } from '../src/io/hf-config';

const dims: Gpt2Dims = { n_embd: 16, n_layer: 2, n_head: 2, n_positions: 24, vocab_size: 37, layer_norm_epsilon: 1e-5 };
const pick = <T>(r: () => number, xs: readonly T[]): T => xs[Math.floor(r() * xs.length)];
const int = (r: () => number, n: number) => Math.floor(r() * n);

const SPECS: MethodSpec[] = [
  { method: 'lora', lora: { r: 4, alpha: 8, dropout: 0, targetModules: ['c_attn', 'mlp.c_proj'], useRslora: false } },
  { method: 'dora', lora: { r: 2, alpha: 4, dropout: 0, targetModules: ['c_attn'], useRslora: true } },
  { method: 'ia3', ia3: { targetModules: ['c_attn', 'mlp.c_proj'], feedforwardModules: ['mlp.c_proj'] } },
  { method: 'prompt', prompt: { numVirtualTokens: 3, init: 'random' } },
  { method: 'prefix', prefix: { numVirtualTokens: 3, projection: false } },
  { method: 'bottleneck', bottleneck: { type: 'houlsby', reductionFactor: 4, nonLinearity: 'swish', name: 'fuzz' } },
];

// Replacement values for config fields: wrong types, out of range, other methods, junk.
const VALUES: unknown[] = [null, 0, -1, 1.5, 1e9, 'x', '', [], {}, ['c_attn'], ['nope'], 'LORA', 'IA3', 'PROMPT_TUNING', 'PREFIX_TUNING', 'ADALORA', 'SEQ_CLS', true, NaN];

function mutateConfig(config: string, r: () => number): string {
  const cfg = JSON.parse(config) as Record<string, unknown>;
  const keys = Object.keys(cfg);
  switch (int(r, 5)) {
    case 0: cfg[pick(r, keys)] = pick(r, VALUES); break; // one field wrong
    case 1: delete cfg[pick(r, keys)]; break; // one field missing
    case 2: { for (const k of keys) if (r() < 0.3) cfg[k] = pick(r, VALUES); break; } // several
    case 3: return config.slice(0, int(r, config.length)); // truncated JSON
    default: return pick(r, ['[]', 'null', '"LORA"', '{"peft_type": "LORA"}', '{}', '{"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["c_attn"]}']);
  }
  return JSON.stringify(cfg);
}

function mutateWeights(weights: Uint8Array, r: () => number): Uint8Array {
  const f = parseSafetensors(weights, 'w');
  const tensors = [...f.tensors].map(([name, e]) => ({ name, dtype: 'F32' as const, shape: e.shape.slice(), data: f.getF32(name) }));
  const t = pick(r, tensors);
  switch (int(r, 6)) {
    case 0: t.name = t.name.replace(/\d+/, '7'); break; // a layer the model lacks
    case 1: t.name = `${t.name}.extra`; break;
    case 2: tensors.splice(tensors.indexOf(t), 1); break; // missing tensor
    case 3: { // wrong shape with matching data
      const n = t.shape.reduce((a, b) => a * b, 1) + 1;
      t.shape = [n];
      t.data = new Float32Array(n);
      break;
    }
    case 4: t.data = t.data.map(() => pick(r, [NaN, Infinity, 1e38, -0])); break; // values: import must still work
    default: { const c = weights.slice(); for (let i = 0; i < 4; i++) c[int(r, c.length)] = int(r, 256); return c; } // raw bytes
  }
  return writeSafetensors(tensors);
}

describe('fuzzing adapter import', () => {
  it('3,000 mutated adapters of six methods: an adapter or an AdapterError / SafetensorsError', { timeout: 600_000 }, async () => {
    const gpu = await testGpu();
    const model = Gpt2.load(gpu, dims, weightSource(randomGpt2Weights(dims, 3), dims), 'random-gpt2');
    const config = { family: 'gpt2', model_type: 'gpt2', n_embd: dims.n_embd, n_layer: dims.n_layer, n_head: dims.n_head, vocab_size: dims.vocab_size, architectures: ['GPT2LMHeadModel'] } as unknown as HfConfig;
    const info = peftModelInfo(config, model.linearModules());
    const step = new StepUniforms(gpu);
    const r = rng(99);
    const originals = [];
    for (const spec of SPECS) {
      const m = createPeftMethod(gpu, spec, info, model, step, { random: r, tokenize: () => [1, 2] });
      originals.push(await exportAdapter(gpu, m, 'tiny-gpt2'));
      m.destroy?.();
    }
    // the unmutated files import
    for (const e of originals) importPeftAdapter(gpu, { name: 'ok', config: e.config, weights: e.weights }, info, step).destroy?.();
    const outcomes = { imported: 0, adapterError: 0, safetensorsError: 0 };
    for (let i = 0; i < 3000; i++) {
      const e = pick(r, originals);
      let cfg = e.config, weights: Uint8Array = e.weights;
      const what = int(r, 3);
      if (what !== 1) cfg = mutateConfig(cfg, r);
      if (what !== 0) weights = mutateWeights(weights, r);
      try {
        const adapter = importPeftAdapter(gpu, { name: 'fuzz-adapter', config: cfg, weights }, info, step);
        expect(adapter.params.length).toBeGreaterThan(0);
        adapter.destroy?.();
        outcomes.imported++;
      } catch (err) {
        if (err instanceof AdapterError) outcomes.adapterError++;
        else if (err instanceof SafetensorsError) outcomes.safetensorsError++;
        else throw new Error(`mutation ${i}: ${(err as Error).name}: ${(err as Error).message}\nconfig: ${cfg.slice(0, 400)}`);
        expect((err as Error).message).toContain('fuzz-adapter');
      }
    }
    gpu.checkErrors(); // no GPU validation errors from any half-built adapter
    expect(outcomes.imported).toBeGreaterThan(75);
    expect(outcomes.adapterError).toBeGreaterThan(750);
  });
});
