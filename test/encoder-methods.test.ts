// IA3, DoRA, prompt tuning, prefix tuning (BERT; with and without PEFT's projection) and bottleneck
// adapters (Houlsby, Pfeiffer) on the DistilBERT and BERT classifiers against the float64 CPU
// reference (test/helpers/bert-reference.ts): logits and loss, every gradient of the method and of
// the trained head against central finite differences, the evaluation program, and the export (PEFT
// SEQ_CLS files; AdapterHub's adapter + static head files) loaded back onto a fresh model with the
// same logits; prompt tuning (virtual tokens before [CLS]); prefix tuning (key/value rows before every
// layer's keys, the real tokens' positions shifted by the prefix). Prefix tuning on DistilBERT is
// refused (PEFT cannot run it there).
import { describe, expect, it } from 'vitest';
import { expectClose, f64, rng, testGpu } from './helpers/gpu';
import {
  doraNorm, encoderNames, encoderReference, encoderShapes, encoderWeightSource, randomEncoderWeights,
  type RefMethods, type TinyEncoderDims, type Weights,
} from './helpers/bert-reference';
import { runOps, type Op } from '../src/engine/gpu/dispatch';
import { EncoderClassifier } from '../src/engine/models/encoder';
import { distilBertSpec } from '../src/engine/models/distilbert';
import { bertSpec } from '../src/engine/models/bert';
import { parseHfConfig, type BertConfig, type DistilBertConfig } from '../src/io/hf-config';
import { encoderConfigJson } from './helpers/bert-reference';
import { StepUniforms } from '../src/engine/kernels/step-uniforms';
import { createSeqClsAdapter, exportSeqClsAdapter, importSeqClsAdapter, type SequenceClassificationAdapter } from '../src/engine/models/sequence-classification';
import { ENCODER_IA3_DEFAULTS, EncoderMethodError, encoderMethodRefusal } from '../src/engine/models/encoder-methods';
import type { MethodSpec } from '../src/engine/peft/factory';
import { parseSafetensors } from '../src/io/safetensors';

const K = 3;
const BATCH = { B: 3, T: 7, lengths: [7, 4, 5], labels: [2, 0, 1] };
const DISTIL: TinyEncoderDims = { arch: 'distilbert', C: 16, L: 2, H: 2, F: 24, V: 50, P: 12, eps: 1e-12, activation: 'gelu' };
const BERT: TinyEncoderDims = { arch: 'bert', C: 16, L: 2, H: 4, F: 20, V: 45, P: 10, eps: 1e-12, activation: 'gelu' };

function specOf(d: TinyEncoderDims) {
  const c = parseHfConfig(encoderConfigJson(d)) as DistilBertConfig | BertConfig;
  return c.family === 'distilbert' ? distilBertSpec(c, 'tiny') : bertSpec(c as BertConfig, 'tiny');
}

function fdGrad(loss: () => number, arr: Float64Array, idx: number[], h = 1e-5): number[] {
  return idx.map((i) => {
    const v = arr[i];
    arr[i] = v + h;
    const up = loss();
    arr[i] = v - h;
    const down = loss();
    arr[i] = v;
    return (up - down) / (2 * h);
  });
}

/** Random values for the method's tensors (written to the GPU) and the same values as the reference's arrays, by parameter name. */
function randomize(gpu: Awaited<ReturnType<typeof testGpu>>, adapter: SequenceClassificationAdapter, seed: number): Map<string, Float64Array> {
  const r = rng(seed);
  const arrays = new Map<string, Float64Array>();
  for (const p of adapter.method!.params) {
    const n = p.value.size;
    let v: Float32Array;
    // prefix rows about as large as the layers' own keys and values, so that they matter
    if (adapter.kind === 'prefix' && /^(prompt_embeddings|prompt_encoder\.embedding\.weight)$/.test(p.name)) v = Float32Array.from({ length: n }, () => r() * 2 - 1);
    else if (p.name.endsWith('.ia3_l')) v = Float32Array.from({ length: n }, () => 1 + (r() * 2 - 1) * 0.3);
    else if (p.name.endsWith('.lora_magnitude_vector')) v = Float32Array.from({ length: n }, () => 0.5 + r());
    else v = Float32Array.from({ length: n }, () => (r() * 2 - 1) * 0.3);
    gpu.write(p.value, v);
    arrays.set(p.name, f64(v));
  }
  return arrays;
}

/** The reference's description of the method, sharing `arrays` (so finite differences move both). */
function refMethods(spec: MethodSpec, arrays: Map<string, Float64Array>, w: Weights, d: TinyEncoderDims): RefMethods {
  if (spec.method === 'prompt') return { prompt: { p: arrays.get('prompt_embeddings')!, n: spec.prompt.numVirtualTokens } };
  if (spec.method === 'prefix') {
    const n = spec.prefix.numVirtualTokens;
    if (!spec.prefix.projection) return { prefix: { n, kv: arrays.get('prompt_embeddings')! } };
    const a = (k: string) => arrays.get(`prompt_encoder.${k}`)!;
    return { prefix: { n, proj: { E: a('embedding.weight'), W1: a('transform.0.weight'), b1: a('transform.0.bias'), W2: a('transform.2.weight'), b2: a('transform.2.bias'), enc: spec.prefix.encoderHiddenSize ?? d.C } } };
  }
  const strip = (n: string, suffix: RegExp) => n.replace(/^base_model\.model\./, '').replace(suffix, '');
  if (spec.method === 'ia3') {
    const ia3 = new Map<string, { l: Float64Array; feedforward: boolean }>();
    for (const [name, l] of arrays) {
      const mod = strip(name, /\.ia3_l$/);
      ia3.set(mod, { l, feedforward: spec.ia3.feedforwardModules.some((f) => mod.endsWith(f)) });
    }
    return { ia3 };
  }
  if (spec.method === 'dora') {
    const modules = new Map<string, { A: Float64Array; B: Float64Array; m: Float64Array }>();
    for (const [name, arr] of arrays) {
      const mod = strip(name, /\.(lora_A\.weight|lora_B\.weight|lora_magnitude_vector)$/);
      const e = modules.get(mod) ?? { A: new Float64Array(), B: new Float64Array(), m: new Float64Array() };
      if (name.endsWith('lora_A.weight')) e.A = arr;
      else if (name.endsWith('lora_B.weight')) e.B = arr;
      else e.m = arr;
      modules.set(mod, e);
    }
    const { r, alpha } = spec.lora;
    const scale = alpha / r;
    // PEFT detaches the weight norm: pin it at the point the gradients are taken
    const norms = new Map<string, Float64Array>();
    for (const [mod, e] of modules) {
      const W = w.get(`${mod}.weight`)!;
      const N = e.m.length, Kin = W.length / N;
      norms.set(mod, doraNorm(W, e.A, e.B, N, Kin, r, scale));
    }
    return { dora: { modules, r, scale, norms } };
  }
  if (spec.method === 'bottleneck') {
    const modules = new Map<string, { down: Float64Array; downB: Float64Array; up: Float64Array; upB: Float64Array }>();
    let size = 0;
    for (const [name, arr] of arrays) {
      const m = /layer\.(\d+)\..*(attention|output)_adapters\.adapters\.[\w-]+\.(adapter_down\.0|adapter_up)\.(weight|bias)$/.exec(name);
      if (!m) throw new Error(`unexpected bottleneck tensor ${name}`);
      const key = `${m[1]}.${m[2]}`;
      const e = modules.get(key) ?? { down: new Float64Array(), downB: new Float64Array(), up: new Float64Array(), upB: new Float64Array() };
      if (m[3] === 'adapter_up') {
        if (m[4] === 'weight') e.up = arr;
        else e.upB = arr;
      } else if (m[4] === 'weight') {
        e.down = arr;
      } else {
        e.downB = arr;
        size = arr.length;
      }
      modules.set(key, e);
    }
    expect(size).toBe(Math.floor(d.C / spec.bottleneck.reductionFactor));
    return { bottleneck: { type: spec.bottleneck.type, act: spec.bottleneck.nonLinearity, size, modules } };
  }
  throw new Error(`no reference for ${spec.method}`);
}

const CASES: { name: string; spec: (d: TinyEncoderDims) => MethodSpec; names: (d: TinyEncoderDims) => RegExp; only?: TinyEncoderDims['arch'] }[] = [
  {
    name: 'IA3 (default targets)',
    spec: (d) => ({ method: 'ia3', ia3: { targetModules: [...ENCODER_IA3_DEFAULTS[d.arch].targetModules], feedforwardModules: [...ENCODER_IA3_DEFAULTS[d.arch].feedforwardModules] } }),
    // BERT's "output.dense" is both attention.output.dense and the FFN's output.dense
    names: (d) => (d.arch === 'bert' ? /\.(self\.key|self\.value|attention\.output\.dense|\d\.output\.dense)\.ia3_l$/ : /\.(k_lin|v_lin|lin2)\.ia3_l$/),
  },
  {
    name: 'DoRA',
    spec: (d) => ({ method: 'dora', lora: { r: 2, alpha: 6, dropout: 0, useRslora: false, targetModules: d.arch === 'bert' ? ['query', 'value', 'attention.output.dense', 'intermediate.dense'] : ['q_lin', 'v_lin', 'ffn.lin2'] } }),
    names: () => /\.(lora_A\.weight|lora_B\.weight|lora_magnitude_vector)$/,
  },
  {
    name: 'prompt tuning (3 virtual tokens)',
    spec: () => ({ method: 'prompt', prompt: { numVirtualTokens: 3, init: 'random' } }),
    names: () => /^prompt_embeddings$/,
  },
  {
    name: 'prefix tuning (3 rows, no projection)',
    spec: () => ({ method: 'prefix', prefix: { numVirtualTokens: 3, projection: false } }),
    names: () => /^prompt_embeddings$/,
    only: 'bert',
  },
  {
    name: 'prefix tuning (2 rows, projection MLP of width 12)',
    spec: () => ({ method: 'prefix', prefix: { numVirtualTokens: 2, projection: true, encoderHiddenSize: 12 } }),
    names: () => /^prompt_encoder\.(embedding\.weight|transform\.[02]\.(weight|bias))$/,
    only: 'bert',
  },
  {
    name: 'bottleneck Houlsby (swish)',
    spec: () => ({ method: 'bottleneck', bottleneck: { type: 'houlsby', reductionFactor: 4, nonLinearity: 'swish', name: 'cls' } }),
    names: (d) => (d.arch === 'bert' ? /^bert\.encoder\.layer\.\d\.(attention\.output\.attention|output\.output)_adapters\.adapters\.cls\./ : /^distilbert\.transformer\.layer\.\d\.(attention|output)_adapters\.adapters\.cls\./),
  },
  {
    name: 'bottleneck Pfeiffer (relu)',
    spec: () => ({ method: 'bottleneck', bottleneck: { type: 'pfeiffer', reductionFactor: 4, nonLinearity: 'relu', name: 'cls' } }),
    names: (d) => (d.arch === 'bert' ? /^bert\.encoder\.layer\.\d\.output\.output_adapters\.adapters\.cls\./ : /^distilbert\.transformer\.layer\.\d\.output_adapters\.adapters\.cls\./),
  },
];

for (const d of [DISTIL, BERT]) {
  describe(`${d.arch} classifier with other methods`, () => {
    for (const c of CASES.filter((x) => !x.only || x.only === d.arch)) {
      it(`${c.name} + head: logits, loss, every gradient (finite differences), export and import`, async () => {
        const gpu = await testGpu();
        const w = randomEncoderWeights(d, K, 31);
        const model = EncoderClassifier.load(gpu, specOf(d), encoderWeightSource(w, encoderShapes(d, K)), 'tiny', { numLabels: K, random: rng(9), maxChunkBytes: 256 });
        const spec = c.spec(d);
        const adapter = createSeqClsAdapter(gpu, spec, model, new StepUniforms(gpu), rng(4));
        const methodNames = adapter.method!.params.map((p) => p.name);
        expect(methodNames.length).toBeGreaterThan(0);
        for (const n of methodNames) expect(n, n).toMatch(c.names(d));
        const arrays = randomize(gpu, adapter, 17);
        const methods = refMethods(spec, arrays, w, d);

        const ids = Uint32Array.from({ length: BATCH.B * BATCH.T }, ((r) => () => Math.floor(r() * d.V))(rng(5)));
        const batch = { B: BATCH.B, T: BATCH.T, inputIds: ids, lengths: Uint32Array.from(BATCH.lengths), labels: Int32Array.from(BATCH.labels), validLabels: 3 };
        const program = model.buildProgram(adapter, { B: BATCH.B, T: BATCH.T, training: true });
        program.write(batch);
        gpu.write(program.gradScale, new Float32Array([1 / 3]));
        const zero: Op[] = [...adapter.params.map((p) => ({ kind: 'clear' as const, buffer: p.grad.buffer })), { kind: 'clear', buffer: program.lossSum.buffer }];
        runOps(gpu, [...zero, ...program.forward, ...program.backward]);
        const refBatch = { B: BATCH.B, T: BATCH.T, ids, lengths: BATCH.lengths, labels: BATCH.labels };
        const ref = encoderReference(w, d, K, null, refBatch, methods);
        expectClose(await gpu.read(program.logits), ref.logits, 1e-4, 'logits', 1);
        const loss = (await gpu.read(program.lossSum))[0] / 3;
        expect(Math.abs(loss - ref.loss) / ref.loss).toBeLessThan(1e-5);

        const lossOf = () => encoderReference(w, d, K, null, refBatch, methods).loss;
        const r = rng(6);
        for (const p of adapter.params) {
          const got = await gpu.read(p.grad);
          const arr = arrays.get(p.name) ?? w.get(p.name.replace('base_model.model.', ''))!;
          expect(arr, p.name).toBeDefined();
          const idx = Array.from({ length: Math.min(10, p.value.size) }, () => Math.floor(r() * p.value.size));
          const want = fdGrad(lossOf, arr, idx);
          const scaleMax = Math.max(...Array.from(got, Math.abs), 1e-12);
          expect(scaleMax, `${p.name}: some gradient`).toBeGreaterThan(1e-7);
          idx.forEach((i, j) => {
            expect(Math.abs(got[i] - want[j]), `${p.name}[${i}]: got ${got[i]}, want ${want[j]}`).toBeLessThan(2e-3 * scaleMax + 1e-6);
          });
        }

        // the forward-only program gives the same logits
        const ev = model.buildProgram(adapter, { B: BATCH.B, T: BATCH.T, training: false });
        ev.write(batch);
        runOps(gpu, ev.forward);
        const evLogits = await gpu.read(ev.logits);
        expectClose(evLogits, ref.logits, 1e-4, 'eval logits', 1);

        // export and import onto a fresh model (its own random head): the same logits
        const files = await exportSeqClsAdapter(gpu, adapter, 'tiny', model);
        const cfg = JSON.parse(files.get('adapter_config.json') as string);
        const headNames = model.headParams.map((p) => p.name);
        if (spec.method === 'bottleneck') {
          expect([...files.keys()].sort()).toEqual(['adapter.safetensors', 'adapter_config.json', 'head_config.json', 'model_head.safetensors']);
          expect(cfg).toMatchObject({ model_type: d.arch, model_class: model.spec.className, name: 'cls', hidden_size: d.C });
          const st = parseSafetensors(files.get('adapter.safetensors') as Uint8Array);
          expect([...st.tensors.keys()].sort()).toEqual([...methodNames].sort());
          const head = parseSafetensors(files.get('model_head.safetensors') as Uint8Array);
          expect([...head.tensors.keys()].sort()).toEqual(headNames.map((n) => n.replace('base_model.model.', '')).sort());
          expect(JSON.parse(files.get('head_config.json') as string)).toMatchObject({ model_class: model.spec.className, num_labels: K });
        } else {
          expect([...files.keys()].sort()).toEqual(['adapter_config.json', 'adapter_model.safetensors']);
          const peftType = { ia3: 'IA3', dora: 'LORA', prompt: 'PROMPT_TUNING', prefix: 'PREFIX_TUNING' }[spec.method as 'ia3' | 'dora' | 'prompt' | 'prefix'];
          expect(cfg).toMatchObject({ task_type: 'SEQ_CLS', modules_to_save: ['classifier', 'score'], peft_type: peftType });
          if (spec.method === 'dora') expect(cfg.use_dora).toBe(true);
          if (spec.method === 'prompt') expect(cfg).toMatchObject({ num_virtual_tokens: 3, token_dim: d.C, num_layers: d.L, num_attention_heads: d.H });
          if (spec.method === 'prefix') {
            const p = spec.prefix;
            expect(cfg).toMatchObject({
              num_virtual_tokens: p.numVirtualTokens, token_dim: d.C, num_layers: d.L, num_attention_heads: d.H, num_transformer_submodules: 1,
              prefix_projection: p.projection, encoder_hidden_size: p.encoderHiddenSize ?? d.C, inference_mode: true,
            });
          }
          const st = parseSafetensors(files.get('adapter_model.safetensors') as Uint8Array);
          // prompt learning's PeftModel holds the transformers model as base_model: base_model.classifier.*
          const promptLearning = spec.method === 'prompt' || spec.method === 'prefix';
          const savedHead = headNames.map((n) => (promptLearning ? n.replace('base_model.model.', 'base_model.') : n));
          // prefix tuning saves the prefix itself (with the projection: the prefix the MLP makes)
          const savedMethod = spec.method === 'prefix' ? ['prompt_embeddings'] : methodNames;
          expect([...st.tensors.keys()].sort()).toEqual([...savedMethod, ...savedHead].sort());
          if (spec.method === 'prefix') expect(st.tensors.get('prompt_embeddings')!.shape).toEqual([spec.prefix.numVirtualTokens, d.L * 2 * d.C]);
        }
        const fresh = EncoderClassifier.load(gpu, specOf(d), encoderWeightSource(w, encoderShapes(d, K)), 'tiny', { numLabels: K, random: rng(77) });
        const imported = importSeqClsAdapter(gpu, {
          name: 'x', config: files.get('adapter_config.json') as string,
          weights: (files.get('adapter_model.safetensors') ?? files.get('adapter.safetensors')) as Uint8Array,
          head: files.get('model_head.safetensors') as Uint8Array | undefined,
        }, fresh, new StepUniforms(gpu));
        expect(imported.kind).toBe(adapter.kind);
        const p2 = fresh.buildProgram(imported, { B: BATCH.B, T: BATCH.T, training: false });
        p2.write(batch);
        runOps(gpu, p2.forward);
        expectClose(await gpu.read(p2.logits), evLogits, 1e-6, 'imported logits', 1);
        for (const x of [program, ev, p2]) x.destroy();
        adapter.destroy();
        imported.destroy();
        model.destroy();
        fresh.destroy();
      });
    }

    it(d.arch === 'bert' ? 'all-linear is refused with the reason; prefix rows take positions' : 'prefix tuning and all-linear are refused with the reason', async () => {
      const gpu = await testGpu();
      const w = randomEncoderWeights(d, K, 3);
      const model = EncoderClassifier.load(gpu, specOf(d), encoderWeightSource(w, encoderShapes(d, K)), 'tiny', { numLabels: K, random: rng(9) });
      const prefix = (n: number) => createSeqClsAdapter(gpu, { method: 'prefix', prefix: { numVirtualTokens: n, projection: false } }, model, new StepUniforms(gpu), rng(1));
      if (d.arch === 'distilbert') {
        expect(encoderMethodRefusal('distilbert', 'prefix')).toMatch(/past_key_values/);
        expect(() => prefix(4)).toThrow(EncoderMethodError);
        expect(() => prefix(4)).toThrow(/prefix tuning is not available for DistilBERT classifiers: PEFT cannot run it/);
        // nor is a PEFT prefix-tuning adapter loaded onto it
        const cfg = { peft_type: 'PREFIX_TUNING', task_type: 'SEQ_CLS', num_virtual_tokens: 2, token_dim: d.C, num_layers: d.L, num_attention_heads: d.H, modules_to_save: ['classifier'] };
        expect(() => importSeqClsAdapter(gpu, { name: 'p', config: JSON.stringify(cfg), weights: new Uint8Array() }, model, new StepUniforms(gpu))).toThrow(/p: prefix tuning is not available for DistilBERT classifiers/);
      } else {
        expect(encoderMethodRefusal('bert', 'prefix')).toBeNull();
        // the prefix counts as cached tokens: the real tokens' positions start after it
        const tooLong = prefix(d.P);
        expect(() => model.buildProgram(tooLong, { B: 1, T: 1, training: false })).toThrow(/plus \d+ virtual tokens is longer than the model's max_position_embeddings/);
        tooLong.destroy();
        const fits = prefix(d.P - 2);
        model.buildProgram(fits, { B: 1, T: 2, training: true }).destroy();
        fits.destroy();
      }
      // prompt tuning's virtual tokens count against max_position_embeddings
      const tooMany = createSeqClsAdapter(gpu, { method: 'prompt', prompt: { numVirtualTokens: d.P, init: 'random' } }, model, new StepUniforms(gpu), rng(1));
      expect(() => model.buildProgram(tooMany, { B: 1, T: 1, training: false })).toThrow(/plus \d+ virtual tokens is longer than the model's max_position_embeddings/);
      expect(() => createSeqClsAdapter(gpu, { method: 'dora', lora: { r: 2, alpha: 4, dropout: 0, useRslora: false, targetModules: ['all-linear'] } }, model, new StepUniforms(gpu), rng(1))).toThrow(/all-linear/);
      expect(encoderNames(d).classifier).toBe('classifier');
      model.destroy();
    });
  });
}
