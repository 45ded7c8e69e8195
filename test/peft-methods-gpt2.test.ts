// IA3, prompt tuning and prefix tuning (with and without the projection) through the whole GPT-2
// program on the GPU against a float64 CPU model (helpers/peft-reference.ts): logits and loss, and
// a few entries of every trainable tensor's gradient against central finite differences of the
// float64 loss. The embedding and logits are split into blocks (the over-the-binding-limit paths).
import { describe, expect, it } from 'vitest';
import { testGpu, rng, expectClose } from './helpers/gpu';
import { randomGpt2Weights, weightSource } from './helpers/gpt2-reference';
import { gpt2MethodsReference, type MethodsRef } from './helpers/peft-reference';
import { Gpt2, type Gpt2Dims } from '../src/engine/models/gpt2';
import { Ia3 } from '../src/engine/peft/ia3';
import { PromptTuning } from '../src/engine/peft/prompt-tuning';
import { PrefixTuning } from '../src/engine/peft/prefix-tuning';
import type { PeftMethod } from '../src/engine/peft/method';
import { lossTargetCount, type BatchArrays } from '../src/engine/models/program';
import { runOps } from '../src/engine/gpu/dispatch';
import type { Gpu } from '../src/engine/gpu/gpu';
import { exportPeftAdapter } from '../src/engine/export/peft-export';
import { parseSafetensors } from '../src/io/safetensors';

const dims: Gpt2Dims = { n_embd: 16, n_layer: 2, n_head: 2, n_positions: 24, vocab_size: 37, layer_norm_epsilon: 1e-5 };
const B = 2, T = 7;
const lengths = [7, 4];
const C = dims.n_embd, L = dims.n_layer;

function makeBatch(withFirst: boolean): BatchArrays {
  const r = rng(7);
  const inputIds = new Uint32Array(B * T);
  const targets = new Int32Array(B * T).fill(-100);
  for (let b = 0; b < B; b++) {
    for (let t = 0; t < T; t++) inputIds[b * T + t] = t < lengths[b] ? Math.floor(r() * dims.vocab_size) : 0;
    for (let t = 1; t < lengths[b] - 1; t++) targets[b * T + t] = inputIds[b * T + t + 1];
  }
  // row 0 has a label on its first token (text data), row 1 not (a prompt/completion row)
  const firstTargets = withFirst ? Int32Array.from([inputIds[0], -100]) : undefined;
  return { B, T, inputIds, targets, lengths: Uint32Array.from(lengths), validTargets: targets.filter((x) => x >= 0).length, firstTargets };
}

/** f32-exact float64 values, written to the parameter. */
function setParam(gpu: Gpu, values: Map<string, Float64Array>, method: PeftMethod, name: string, gen: (i: number) => number): Float64Array {
  const p = method.params.find((q) => q.name === name);
  if (!p) throw new Error(`no parameter ${name} (have ${method.params.map((q) => q.name).join(', ')})`);
  const v = Float64Array.from(Float32Array.from({ length: p.value.size }, (_, i) => gen(i)));
  gpu.write(p.value, Float32Array.from(v));
  values.set(name, v);
  return v;
}

async function checkAgainstReference(gpu: Gpu, model: Gpt2, w: ReturnType<typeof randomGpt2Weights>, method: PeftMethod, ref: MethodsRef, values: Map<string, Float64Array>, batch: BatchArrays): Promise<void> {
  const program = model.buildProgram(method, { B, T, training: true, captureLogits: true, headRowsPerChunk: 5 });
  program.write(batch);
  const valid = lossTargetCount(batch, program.virtualTokens);
  gpu.write(program.gradScale, new Float32Array([1 / valid]));
  runOps(gpu, [...method.params.map((p) => ({ kind: 'clear' as const, buffer: p.grad.buffer })), { kind: 'clear', buffer: program.lossSum.buffer }, ...program.forward, ...program.backward]);

  const refLoss = (): number => gpt2MethodsReference(w, dims, ref, batch.inputIds, batch.targets, batch.lengths, B, T, batch.firstTargets).loss;
  const want = gpt2MethodsReference(w, dims, ref, batch.inputIds, batch.targets, batch.lengths, B, T, batch.firstTargets);
  // (relative to 1% of the largest |logit|: f32 rounding of the near-zero ones is no signal)
  expectClose(await gpu.read(program.logits!), want.logits, 1e-4, 'logits', 1e-2);
  const loss = (await gpu.read(program.lossSum))[0] / valid;
  expect(Math.abs(loss - want.loss) / want.loss, `loss ${loss} vs ${want.loss}`).toBeLessThan(1e-5);

  // a forward-only program (shared activations) gives the same logits
  const evalProgram = model.buildProgram(method, { B, T, training: false, captureLogits: true });
  evalProgram.write(batch);
  runOps(gpu, evalProgram.forward);
  expectClose(await gpu.read(evalProgram.logits!), want.logits, 1e-4, 'logits (forward-only program)', 1e-2);
  evalProgram.destroy();

  const h = 1e-5;
  for (const p of method.params) {
    const grad = await gpu.read(p.grad);
    const v = values.get(p.name)!;
    const idx = [...new Set([0, v.length - 1, Math.floor(v.length / 3), Math.floor((2 * v.length) / 3), Math.floor(v.length / 2) + 1])];
    const scale = Math.max(...Array.from(grad, Math.abs));
    expect(scale, `${p.name}: gradient is all zero`).toBeGreaterThan(0);
    for (const i of idx) {
      const old = v[i];
      v[i] = old + h;
      const lp = refLoss();
      v[i] = old - h;
      const lm = refLoss();
      v[i] = old;
      const fd = (lp - lm) / (2 * h);
      const err = Math.abs(grad[i] - fd) / Math.max(Math.abs(fd), 1e-2 * scale);
      if (!(err < 2e-3)) throw new Error(`${p.name}[${i}]: gpu ${grad[i]}, finite difference ${fd}`);
    }
  }
  program.destroy();
}

async function setup() {
  const gpu = await testGpu();
  const w = randomGpt2Weights(dims, 1);
  // 10 rows per embedding block -> 4 blocks
  const model = Gpt2.load(gpu, dims, weightSource(w, dims), 'random-gpt2', { maxChunkBytes: 10 * C * 4 });
  return { gpu, w, model };
}

describe('GPT-2 + IA3, prompt and prefix tuning against float64 and finite differences', () => {
  it('IA3 with PEFT\'s GPT-2 defaults (c_attn output, mlp.c_proj input)', async () => {
    const { gpu, w, model } = await setup();
    const ia3 = new Ia3(gpu, { targetModules: ['c_attn', 'mlp.c_proj'], feedforwardModules: ['mlp.c_proj'] }, model.linearModules());
    expect(ia3.params.map((p) => [p.name, p.shape])).toEqual([
      ['base_model.model.transformer.h.0.attn.c_attn.ia3_l', [3 * C, 1]], ['base_model.model.transformer.h.0.mlp.c_proj.ia3_l', [1, 4 * C]],
      ['base_model.model.transformer.h.1.attn.c_attn.ia3_l', [3 * C, 1]], ['base_model.model.transformer.h.1.mlp.c_proj.ia3_l', [1, 4 * C]],
    ]);
    // PEFT's init: ones, so the model starts as the base model
    for (const p of ia3.params) expect(Array.from(await gpu.read(p.value)).every((x) => x === 1)).toBe(true);
    const values = new Map<string, Float64Array>();
    const r = rng(21);
    const ref: MethodsRef = { ia3: new Map() };
    for (const p of ia3.params) {
      const mod = p.name.slice('base_model.model.'.length, -'.ia3_l'.length);
      ref.ia3!.set(mod, { l: setParam(gpu, values, ia3, p.name, () => 0.5 + r()), feedforward: ia3.isFeedforward(mod) });
    }
    await checkAgainstReference(gpu, model, w, ia3, ref, values, makeBatch(false));
    const cfg = ia3.adapterConfig('tiny');
    expect(cfg).toMatchObject({ peft_type: 'IA3', target_modules: ['c_attn', 'mlp.c_proj'], feedforward_modules: ['mlp.c_proj'], fan_in_fan_out: true });
  });

  it('IA3 on every layer: output scaling of the residual-summed attn.c_proj / mlp.c_proj, input scaling of mlp.c_fc', async () => {
    const { gpu, w, model } = await setup();
    const ia3 = new Ia3(gpu, { targetModules: ['c_attn', 'attn.c_proj', 'mlp.c_fc', 'mlp.c_proj'], feedforwardModules: ['mlp.c_fc'] }, model.linearModules());
    expect(ia3.params.length).toBe(4 * L);
    const values = new Map<string, Float64Array>();
    const r = rng(22);
    const ref: MethodsRef = { ia3: new Map() };
    for (const p of ia3.params) {
      const mod = p.name.slice('base_model.model.'.length, -'.ia3_l'.length);
      ref.ia3!.set(mod, { l: setParam(gpu, values, ia3, p.name, () => 0.5 + r()), feedforward: ia3.isFeedforward(mod) });
    }
    expect(ia3.isFeedforward('transformer.h.0.mlp.c_fc')).toBe(true);
    expect(ia3.isFeedforward('transformer.h.0.attn.c_proj')).toBe(false);
    await checkAgainstReference(gpu, model, w, ia3, ref, values, makeBatch(false));
    expect(() => new Ia3(gpu, { targetModules: ['c_attn'], feedforwardModules: ['mlp.c_proj'] }, model.linearModules())).toThrow(/subset|also be target/);
  });

  it('prompt tuning: virtual rows at positions 0..n-1, loss of the last one on the first token, gradients', async () => {
    const { gpu, w, model } = await setup();
    const n = 3;
    const pt = new PromptTuning(gpu, { numVirtualTokens: n, init: 'random' }, { hidden: C, layers: L, heads: dims.n_head, vocab: dims.vocab_size });
    const values = new Map<string, Float64Array>();
    const r = rng(23);
    const E = setParam(gpu, values, pt, 'prompt_embeddings', () => (r() * 2 - 1) * 0.5);
    const batch = makeBatch(true);
    expect(lossTargetCount(batch, n)).toBe(batch.validTargets + 1);
    await checkAgainstReference(gpu, model, w, pt, { prompt: { n, E } }, values, batch);
    // without first targets the virtual positions carry no loss at all
    await checkAgainstReference(gpu, model, w, pt, { prompt: { n, E } }, values, makeBatch(false));
    const files = await exportPeftAdapter(gpu, pt, 'tiny');
    const st = parseSafetensors(files['adapter_model.safetensors']);
    expect([...st.tensors.keys()]).toEqual(['prompt_embeddings']);
    expect(st.tensors.get('prompt_embeddings')!.shape).toEqual([n, C]);
    expect(JSON.parse(files['adapter_config.json'])).toMatchObject({
      peft_type: 'PROMPT_TUNING', num_virtual_tokens: n, token_dim: C, num_attention_heads: dims.n_head, num_layers: L, num_transformer_submodules: 1, prompt_tuning_init: 'RANDOM',
    });
  });

  it('prefix tuning: per-layer key/value rows seen by every query, positions from n, gradients', async () => {
    const { gpu, w, model } = await setup();
    const n = 3;
    const pre = new PrefixTuning(gpu, { numVirtualTokens: n, projection: false }, { layers: L, kvHeads: dims.n_head, headDim: C / dims.n_head }, rng(5));
    const values = new Map<string, Float64Array>();
    const r = rng(24);
    const table = setParam(gpu, values, pre, 'prompt_embeddings', () => r() * 2 - 1);
    expect(pre.params[0].shape).toEqual([n, L * 2 * C]);
    await checkAgainstReference(gpu, model, w, pre, { prefix: { n, table } }, values, makeBatch(false));
    expect(pre.adapterConfig('tiny')).toMatchObject({ peft_type: 'PREFIX_TUNING', num_virtual_tokens: n, token_dim: C, num_attention_heads: dims.n_head, num_layers: L, prefix_projection: false, encoder_hidden_size: C });
  });

  it('prefix tuning with the projection (Embedding -> Linear -> Tanh -> Linear): gradients of every MLP tensor, export folds it', async () => {
    const { gpu, w, model } = await setup();
    const n = 2, enc = 12;
    const pre = new PrefixTuning(gpu, { numVirtualTokens: n, projection: true, encoderHiddenSize: enc }, { layers: L, kvHeads: dims.n_head, headDim: C / dims.n_head }, rng(6));
    expect(pre.params.map((p) => [p.name, p.shape])).toEqual([
      ['prompt_encoder.embedding.weight', [n, C]], ['prompt_encoder.transform.0.weight', [enc, C]], ['prompt_encoder.transform.0.bias', [enc]],
      ['prompt_encoder.transform.2.weight', [L * 2 * C, enc]], ['prompt_encoder.transform.2.bias', [L * 2 * C]],
    ]);
    const values = new Map<string, Float64Array>();
    const r = rng(25);
    const u = (s: number) => () => (r() * 2 - 1) * s;
    const projection = {
      E: setParam(gpu, values, pre, 'prompt_encoder.embedding.weight', u(1)),
      W1: setParam(gpu, values, pre, 'prompt_encoder.transform.0.weight', u(0.6)),
      b1: setParam(gpu, values, pre, 'prompt_encoder.transform.0.bias', u(0.2)),
      W2: setParam(gpu, values, pre, 'prompt_encoder.transform.2.weight', u(0.6)),
      b2: setParam(gpu, values, pre, 'prompt_encoder.transform.2.bias', u(0.2)),
      enc,
    };
    await checkAgainstReference(gpu, model, w, pre, { prefix: { n, projection } }, values, makeBatch(false));
    const files = await exportPeftAdapter(gpu, pre, 'tiny');
    const st = parseSafetensors(files['adapter_model.safetensors']);
    expect([...st.tensors.keys()]).toEqual(['prompt_embeddings']);
    const { prefixFromProjection } = await import('./helpers/peft-reference');
    expectClose(st.getF32('prompt_embeddings'), prefixFromProjection(projection, n, C, L * 2 * C), 1e-5, 'folded prefix', 1e-2);
    expect(JSON.parse(files['adapter_config.json'])).toMatchObject({ peft_type: 'PREFIX_TUNING', prefix_projection: true, encoder_hidden_size: enc, token_dim: C });
  });
});
