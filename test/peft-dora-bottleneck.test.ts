// DoRA and the bottleneck adapters (Houlsby, Pfeiffer) through the whole GPT-2 and Llama programs
// on the GPU against float64 CPU models (helpers/peft-reference.ts, helpers/llama-reference.ts):
// logits and loss, and entries of every trainable tensor's gradient against central finite
// differences of the float64 loss (DoRA's weight norm held fixed, as PEFT detaches it; DoRA's
// dropout path with the GPU's own mask). Then the export (names, shapes, config) and its import
// back giving the same logits.
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { testGpu, rng, expectClose } from './helpers/gpu';
import { randomGpt2Weights, weightSource } from './helpers/gpt2-reference';
import { gpt2MethodsReference, type MethodsRef } from './helpers/peft-reference';
import { llamaReference, type LlamaMethodsRef } from './helpers/llama-reference';
import { doraNorm, freezeDoraNorms, type AdapterAct, type BottleneckRef, type DoraRef } from './helpers/dora-bottleneck-reference';
import { Gpt2, type Gpt2Dims } from '../src/engine/models/gpt2';
import { Dora } from '../src/engine/peft/dora';
import { BottleneckAdapters, type BottleneckType } from '../src/engine/peft/bottleneck';
import type { PeftMethod } from '../src/engine/peft/method';
import type { LinearModuleInfo } from '../src/engine/peft/lora';
import { bottleneckDims, createPeftMethod, peftModelInfo } from '../src/engine/peft/factory';
import { importPeftAdapter } from '../src/engine/peft/import';
import { lossTargetCount, type BatchArrays, type CausalLM } from '../src/engine/models/program';
import { StepUniforms } from '../src/engine/kernels/step-uniforms';
import { runOps } from '../src/engine/gpu/dispatch';
import type { Gpu } from '../src/engine/gpu/gpu';
import { exportAdapter, exportPeftAdapter } from '../src/engine/export/peft-export';
import { parseSafetensors } from '../src/io/safetensors';
import { nodeModelFiles } from '../src/io/model-files-node';
import { loadHfModel } from '../src/io/model-files';
import { loadCausalLM } from '../src/engine/models/registry';
import type { LlamaConfig } from '../src/io/hf-config';

const gdims: Gpt2Dims = { n_embd: 16, n_layer: 2, n_head: 2, n_positions: 24, vocab_size: 37, layer_norm_epsilon: 1e-5 };

function makeBatch(B: number, T: number, lengths: number[], vocab: number, seed: number): BatchArrays {
  const r = rng(seed);
  const inputIds = new Uint32Array(B * T);
  const targets = new Int32Array(B * T).fill(-100);
  for (let b = 0; b < B; b++) {
    for (let t = 0; t < T; t++) inputIds[b * T + t] = t < lengths[b] ? Math.floor(r() * vocab) : 0;
    for (let t = 1; t < lengths[b] - 1; t++) targets[b * T + t] = inputIds[b * T + t + 1];
  }
  return { B, T, inputIds, targets, lengths: Uint32Array.from(lengths), validTargets: targets.filter((x) => x >= 0).length };
}

/** f32-exact float64 values written to every parameter: gen(name, i). */
function setAll(gpu: Gpu, method: PeftMethod, gen: (name: string) => (i: number) => number): Map<string, Float64Array> {
  const values = new Map<string, Float64Array>();
  for (const p of method.params) {
    const f = gen(p.name);
    const v = Float64Array.from(Float32Array.from({ length: p.value.size }, (_, i) => f(i)));
    gpu.write(p.value, Float32Array.from(v));
    values.set(p.name, v);
  }
  return values;
}

/** GPU logits, loss and gradients against the float64 reference and its finite differences. */
async function checkProgram(
  gpu: Gpu, model: CausalLM, method: PeftMethod, batch: BatchArrays, values: Map<string, Float64Array>,
  ref: () => { logits: Float64Array; loss: number }, fdEntries = 5,
  evalRef?: () => { logits: Float64Array },
): Promise<Float32Array> {
  const { B, T } = batch;
  const program = model.buildProgram(method, { B, T, training: true, captureLogits: true, headRowsPerChunk: 5 });
  program.write(batch);
  const valid = lossTargetCount(batch, 0);
  gpu.write(program.gradScale, new Float32Array([1 / valid]));
  runOps(gpu, [...method.params.map((p) => ({ kind: 'clear' as const, buffer: p.grad.buffer })), { kind: 'clear', buffer: program.lossSum.buffer }, ...program.forward, ...program.backward]);
  const want = ref();
  const logits = await gpu.read(program.logits!);
  expectClose(logits, want.logits, 1e-4, 'logits', 1e-2);
  const loss = (await gpu.read(program.lossSum))[0] / valid;
  expect(Math.abs(loss - want.loss) / want.loss, `loss ${loss} vs ${want.loss}`).toBeLessThan(1e-5);

  const h = 1e-5;
  for (const p of method.params) {
    const grad = await gpu.read(p.grad);
    const v = values.get(p.name)!;
    const n = v.length;
    const idx = [...new Set([0, n - 1, Math.floor(n / 3), Math.floor((2 * n) / 3), Math.floor(n / 2) + 1, Math.floor(n / 5)].slice(0, fdEntries))];
    const scale = Math.max(...Array.from(grad, Math.abs));
    expect(scale, `${p.name}: gradient is all zero`).toBeGreaterThan(0);
    for (const i of idx) {
      const old = v[i];
      v[i] = old + h;
      const lp = ref().loss;
      v[i] = old - h;
      const lm = ref().loss;
      v[i] = old;
      const fd = (lp - lm) / (2 * h);
      const err = Math.abs(grad[i] - fd) / Math.max(Math.abs(fd), 1e-2 * scale);
      if (!(err < 2e-3)) throw new Error(`${p.name}[${i}]: gpu ${grad[i]}, finite difference ${fd}`);
    }
  }
  // a forward-only program (shared activations, adapter dropout off) gives the same logits
  // (evalRef: the reference without dropout, when the training program has it)
  const evalProgram = model.buildProgram(method, { B, T, training: false, captureLogits: true });
  evalProgram.write(batch);
  runOps(gpu, evalProgram.forward);
  expectClose(await gpu.read(evalProgram.logits!), (evalRef ?? (() => want))().logits, 1e-4, 'logits (forward-only program)', 1e-2);
  evalProgram.destroy();
  program.destroy();
  return logits;
}

/** The DoRA reference of a method's current values, its norms frozen at them. */
function doraRef(dora: Dora, values: Map<string, Float64Array>, linears: LinearModuleInfo[], weightOf: (module: string) => Float64Array, dropout?: DoraRef['dropout']): DoraRef {
  const ref: DoraRef = { modules: new Map(), r: dora.settings.r, scale: dora.scale, dropout };
  for (const mod of dora.targetedModules) {
    const b = `base_model.model.${mod}`;
    ref.modules.set(mod, { A: values.get(`${b}.lora_A.weight`)!, B: values.get(`${b}.lora_B.weight`)!, m: values.get(`${b}.lora_magnitude_vector`)! });
  }
  ref.norms = freezeDoraNorms(ref, (module) => {
    const info = linears.find((l) => l.module === module)!;
    return { W: weightOf(module), layout: info.weightLayout, K: info.inFeatures, N: info.outFeatures };
  });
  return ref;
}

function bottleneckRef(method: BottleneckAdapters, values: Map<string, Float64Array>, type: BottleneckType, act: AdapterAct): BottleneckRef {
  const ref: BottleneckRef = { type, act, bn: method.size, adapters: new Map() };
  const { layersPath } = method.dims;
  for (let l = 0; l < method.dims.layers; l++) {
    for (const loc of method.locations()) {
      const p = `${layersPath}.${l}.${loc === 'attention' ? 'attention_adapters' : 'output_adapters'}.adapters.${method.settings.name}`;
      ref.adapters.set(`${l}.${loc}`, {
        Wd: values.get(`${p}.adapter_down.0.weight`)!, bd: values.get(`${p}.adapter_down.0.bias`)!,
        Wu: values.get(`${p}.adapter_up.weight`)!, bu: values.get(`${p}.adapter_up.bias`)!,
      });
    }
  }
  return ref;
}

/** The exported files imported back onto the model give the method's logits. */
async function roundTrip(gpu: Gpu, model: CausalLM & { linearModules(): LinearModuleInfo[] }, info: ReturnType<typeof peftModelInfo>, method: PeftMethod, batch: BatchArrays, logits: Float32Array): Promise<void> {
  const e = await exportAdapter(gpu, method, 'tiny');
  const adapter = importPeftAdapter(gpu, { name: 'rt', config: e.config, weights: e.weights }, info, new StepUniforms(gpu));
  expect(adapter.kind).toBe(method.kind);
  const program = model.buildProgram(adapter, { B: batch.B, T: batch.T, training: false, captureLogits: true });
  program.write(batch);
  runOps(gpu, program.forward);
  expectClose(await gpu.read(program.logits!), logits, 1e-5, 'logits of the imported adapter', 1e-2);
  program.destroy();
  adapter.destroy?.();
}

describe('GPT-2 + DoRA and bottleneck adapters against float64 and finite differences', () => {
  async function setup() {
    const gpu = await testGpu();
    const w = randomGpt2Weights(gdims, 1);
    const model = Gpt2.load(gpu, gdims, weightSource(w, gdims), 'random-gpt2', { maxChunkBytes: 10 * gdims.n_embd * 4 });
    return { gpu, w, model };
  }
  const B = 2, T = 7;

  for (const dropout of [0, 0.25]) {
    it(`DoRA (rsLoRA, every Conv1D layer${dropout ? `, dropout ${dropout} with the GPU's mask` : ''}): init, gradients of A, B and the magnitude`, async () => {
      const { gpu, w, model } = await setup();
      const step = new StepUniforms(gpu);
      step.write({ lr: 0, beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 0, step: 1, seed: 4321 });
      const linears = model.linearModules();
      const dora = new Dora(gpu, { r: 3, alpha: 5, dropout, targetModules: ['c_attn', 'attn.c_proj', 'mlp.c_fc', 'mlp.c_proj'], useRslora: true }, linears, step, rng(3));
      expect(dora.scale).toBeCloseTo(5 / Math.sqrt(3), 12);
      expect(dora.params.map((p) => [p.name, p.shape]).slice(0, 3)).toEqual([
        ['base_model.model.transformer.h.0.attn.c_attn.lora_A.weight', [3, 16]],
        ['base_model.model.transformer.h.0.attn.c_attn.lora_B.weight', [48, 3]],
        ['base_model.model.transformer.h.0.attn.c_attn.lora_magnitude_vector', [48]],
      ]);
      // PEFT's init: B = 0 and m = the norm of each output feature's weights (a column of Conv1D's [in, out])
      for (const mod of dora.targetedModules) {
        const info = linears.find((l) => l.module === mod)!;
        const m = await gpu.read(dora.params.find((p) => p.name === `base_model.model.${mod}.lora_magnitude_vector`)!.value);
        const zeroB = { A: new Float64Array(3 * info.inFeatures), B: new Float64Array(info.outFeatures * 3), m: new Float64Array(0) };
        expectClose(m, doraNorm(w.get(`${mod}.weight`)!, 'in_out', zeroB, 3, 0, info.inFeatures, info.outFeatures), 1e-6, `${mod} magnitude init`);
        expect(Array.from(await gpu.read(dora.params.find((p) => p.name === `base_model.model.${mod}.lora_B.weight`)!.value)).every((x) => x === 0)).toBe(true);
      }
      const r = rng(31);
      const values = setAll(gpu, dora, (name) => (name.endsWith('magnitude_vector') ? () => 0.5 + 2 * r() : () => (r() * 2 - 1) * 0.4));
      const salts = new Map(dora.targetedModules.map((m, i) => [m, 0x9e37 + i * 7919]));
      const ref: MethodsRef = { dora: doraRef(dora, values, linears, (m) => w.get(`${m}.weight`)!, dropout ? { p: dropout, seed: 4321, salts } : undefined) };
      const batch = makeBatch(B, T, [7, 4], gdims.vocab_size, 7);
      const noDropout: MethodsRef = { dora: { ...ref.dora!, dropout: undefined } };
      const logits = await checkProgram(
        gpu, model, dora, batch, values, () => gpt2MethodsReference(w, gdims, ref, batch.inputIds, batch.targets, batch.lengths, B, T), 5,
        () => gpt2MethodsReference(w, gdims, noDropout, batch.inputIds, batch.targets, batch.lengths, B, T),
      );
      if (dropout) return;
      // export as PEFT saves DoRA, and back
      const files = await exportPeftAdapter(gpu, dora, 'tiny');
      const st = parseSafetensors(files['adapter_model.safetensors']);
      expect(st.tensors.get('base_model.model.transformer.h.1.mlp.c_fc.lora_magnitude_vector')!.shape).toEqual([64]);
      expect(st.tensors.get('base_model.model.transformer.h.1.mlp.c_proj.lora_A.weight')!.shape).toEqual([3, 64]);
      expect(st.tensors.size).toBe(3 * 4 * gdims.n_layer);
      expect(JSON.parse(files['adapter_config.json'])).toMatchObject({ peft_type: 'LORA', use_dora: true, use_rslora: true, fan_in_fan_out: true, r: 3, lora_alpha: 5 });
      const info = peftModelInfo({ family: 'gpt2', model_type: 'gpt2', n_embd: 16, n_layer: 2, n_head: 2, vocab_size: 37, architectures: [] } as never, linears);
      await roundTrip(gpu, model, info, dora, batch, logits);
    });
  }

  for (const [type, act] of [['houlsby', 'swish'], ['pfeiffer', 'relu']] as const) {
    it(`bottleneck adapter ${type} (${act}): gradients of every layer's adapters, AdapterHub export, import`, async () => {
      const { gpu, w, model } = await setup();
      const info = peftModelInfo({ family: 'gpt2', model_type: 'gpt2', n_embd: 16, n_layer: 2, n_head: 2, vocab_size: 37, architectures: ['GPT2LMHeadModel'] } as never, model.linearModules());
      const method = createPeftMethod(gpu, { method: 'bottleneck', bottleneck: { type, reductionFactor: 4, nonLinearity: act, name: 'task' } }, info, model, new StepUniforms(gpu), { random: rng(5) }) as BottleneckAdapters;
      expect(method.size).toBe(4);
      expect(method.params.length).toBe(4 * gdims.n_layer * (type === 'houlsby' ? 2 : 1));
      expect(method.params[0]).toMatchObject({ name: `transformer.h.0.${type === 'houlsby' ? 'attention' : 'output'}_adapters.adapters.task.adapter_down.0.weight`, shape: [4, 16] });
      // AdapterHub's "bert" init: N(0, 0.02) weights, zero biases
      const init = await gpu.read(method.params[0].value);
      const sd = Math.sqrt(init.reduce((s, v) => s + v * v, 0) / init.length);
      expect(sd).toBeGreaterThan(0.01);
      expect(sd).toBeLessThan(0.03);
      expect(Array.from(await gpu.read(method.params[1].value)).every((v) => v === 0)).toBe(true);
      const r = rng(41);
      const values = setAll(gpu, method, (name) => (name.endsWith('bias') ? () => (r() * 2 - 1) * 0.2 : () => (r() * 2 - 1) * 0.5));
      const ref: MethodsRef = { bottleneck: bottleneckRef(method, values, type, act) };
      const batch = makeBatch(B, T, [7, 4], gdims.vocab_size, 8);
      const logits = await checkProgram(gpu, model, method, batch, values, () => gpt2MethodsReference(w, gdims, ref, batch.inputIds, batch.targets, batch.lengths, B, T));
      const e = await exportAdapter(gpu, method, 'tiny');
      expect(e.format).toBe('adapterhub');
      expect(e.weightsName).toBe('adapter.safetensors');
      const st = parseSafetensors(e.weights);
      expect(st.tensors.get('transformer.h.1.output_adapters.adapters.task.adapter_up.weight')!.shape).toEqual([16, 4]);
      expect(st.tensors.get('transformer.h.1.output_adapters.adapters.task.adapter_up.bias')!.shape).toEqual([16]);
      expect(st.tensors.has('transformer.h.0.attention_adapters.adapters.task.adapter_down.0.bias')).toBe(type === 'houlsby');
      // Python floats where AdapterHub type-checks (a JSON 1 would load as an int)
      expect(e.config).toContain('"scaling": 1.0,');
      expect(e.config).toContain('"dropout": 0.0,');
      const cfg = JSON.parse(e.config);
      expect(Object.keys(cfg)).toEqual(['config', 'hidden_size', 'model_class', 'model_name', 'model_type', 'name', 'version']);
      expect(cfg).toMatchObject({ hidden_size: 16, model_class: 'GPT2LMHeadModel', model_type: 'gpt2', name: 'task', model_name: 'tiny' });
      expect(cfg.config).toMatchObject({
        mh_adapter: type === 'houlsby', output_adapter: true, reduction_factor: 4, non_linearity: act, original_ln_before: type === 'pfeiffer',
        original_ln_after: true, residual_before_ln: true, init_weights: 'bert', scaling: 1, is_parallel: false,
      });
      await expect(exportPeftAdapter(gpu, method, 'tiny')).rejects.toThrow(/adapterhub/);
      await roundTrip(gpu, model, info, method, batch, logits);
    });
  }
});

describe('Llama (tiny-llama: GQA, llama3 RoPE) + DoRA and bottleneck adapters against float64 and finite differences', () => {
  async function setup() {
    const gpu = await testGpu();
    const hf = await loadHfModel(nodeModelFiles(path.join(__dirname, 'fixtures', 'tiny-llama')));
    const { model } = loadCausalLM(gpu, hf, { maxChunkBytes: 100 * 32 * 4 });
    const cache = new Map<string, Float64Array>();
    const weight = (n: string): Float64Array | null => {
      if (!hf.tensorNames.includes(n)) return null;
      if (!cache.has(n)) cache.set(n, Float64Array.from(hf.getF32(n)));
      return cache.get(n)!;
    };
    const info = peftModelInfo(hf.config, model.linearModules());
    return { gpu, hf, model, weight, info, config: hf.config as LlamaConfig };
  }
  const B = 2, T = 6;

  it('DoRA on every linear layer (all-linear): init, gradients of A, B and the magnitude, export and import', async () => {
    const { gpu, model, weight, info, config } = await setup();
    const step = new StepUniforms(gpu);
    const linears = model.linearModules();
    const dora = createPeftMethod(gpu, { method: 'dora', lora: { r: 2, alpha: 4, dropout: 0, targetModules: ['all-linear'], useRslora: false } }, info, model, step, { random: rng(3) }) as Dora;
    expect(dora.targetedModules.length).toBe(14);
    const q0 = 'model.layers.0.self_attn.q_proj';
    const m0 = await gpu.read(dora.params.find((p) => p.name === `base_model.model.${q0}.lora_magnitude_vector`)!.value);
    expectClose(m0, doraNorm(weight(`${q0}.weight`)!, 'out_in', { A: new Float64Array(64), B: new Float64Array(64), m: new Float64Array(0) }, 2, 0, 32, 32), 1e-6, 'q_proj magnitude init (row norms of [out, in])');
    const r = rng(51);
    const values = setAll(gpu, dora, (name) => (name.endsWith('magnitude_vector') ? () => 0.3 + r() : () => (r() * 2 - 1) * 0.3));
    const ref: LlamaMethodsRef = { dora: doraRef(dora, values, linears, (m) => weight(`${m}.weight`)!) };
    const batch = makeBatch(B, T, [6, 4], config.vocab_size, 9);
    const logits = await checkProgram(gpu, model, dora, batch, values, () => llamaReference(config, weight, ref, batch.inputIds, batch.targets, batch.lengths, B, T), 3);
    const files = await exportPeftAdapter(gpu, dora, 'tiny-llama');
    const cfg = JSON.parse(files['adapter_config.json']);
    expect(cfg).toMatchObject({ use_dora: true, fan_in_fan_out: false });
    expect(cfg.target_modules.length).toBe(14);
    expect(parseSafetensors(files['adapter_model.safetensors']).tensors.get('base_model.model.model.layers.1.mlp.down_proj.lora_magnitude_vector')!.shape).toEqual([32]);
    await roundTrip(gpu, model, info, dora, batch, logits);
  });

  for (const [type, act] of [['houlsby', 'gelu'], ['pfeiffer', 'tanh'], ['houlsby', 'relu']] as const) {
    it(`bottleneck adapter ${type} (${act}): gradients, names, import`, async () => {
      const { gpu, model, weight, info, config } = await setup();
      const method = createPeftMethod(gpu, { method: 'bottleneck', bottleneck: { type, reductionFactor: 5, nonLinearity: act, name: 'a1' } }, info, model, new StepUniforms(gpu), { random: rng(6) }) as BottleneckAdapters;
      expect(method.size).toBe(6); // floor(32 / 5)
      expect(bottleneckDims(info)).toMatchObject({ layersPath: 'model.layers', modelClass: 'LlamaForCausalLM', hidden: 32, layers: 2 });
      expect(method.params.map((p) => p.name)).toContain('model.layers.1.output_adapters.adapters.a1.adapter_down.0.weight');
      const r = rng(61);
      const values = setAll(gpu, method, (name) => (name.endsWith('bias') ? () => (r() * 2 - 1) * 0.2 : () => (r() * 2 - 1) * 0.5));
      const ref: LlamaMethodsRef = { bottleneck: bottleneckRef(method, values, type, act) };
      const batch = makeBatch(B, T, [6, 3], config.vocab_size, 10);
      const logits = await checkProgram(gpu, model, method, batch, values, () => llamaReference(config, weight, ref, batch.inputIds, batch.targets, batch.lengths, B, T), 4);
      const cfg = method.adapterConfig('tiny-llama');
      expect(cfg).toMatchObject({ model_type: 'llama', model_class: 'LlamaForCausalLM', hidden_size: 32, name: 'a1' });
      await roundTrip(gpu, model, info, method, batch, logits);
    });
  }
});
