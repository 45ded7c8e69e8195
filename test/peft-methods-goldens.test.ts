// IA3, prompt tuning and prefix tuning (with and without the projection) on tiny-gpt2, tiny-llama
// (GQA, llama3 RoPE) and tiny-qwen2 (q/k/v biases, one KV head) against PyTorch + PEFT
// (scripts/goldens/make_peft_methods_goldens.py, float64): per case the trainable tensors PEFT
// makes (names, shapes), logits, loss (including the last virtual position's with prompt tuning),
// gradients, 5 AdamW steps with clipping, the export (names, shapes, values: the folded prefix for
// the projection) and the adapter_config.json fields against the one PEFT saves; prompt tuning's
// TEXT init against PEFT's; and the PEFT-saved adapters imported back give PEFT's logits.
import fs from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { testGpu, expectClose, rng } from './helpers/gpu';
import { goldenBatch } from './helpers/lora-goldens';
import { nodeModelFiles } from '../src/io/model-files-node';
import { loadHfModel, type HfModel } from '../src/io/model-files';
import { parseSafetensors, type SafetensorsFile } from '../src/io/safetensors';
import { loadTokenizer } from '../src/data/tokenizer';
import { loadCausalLM } from '../src/engine/models/registry';
import { lossTargetCount, type BatchArrays } from '../src/engine/models/program';
import { StepUniforms } from '../src/engine/kernels/step-uniforms';
import { buildAdamW } from '../src/engine/train/optimizer';
import { exportPeftAdapter } from '../src/engine/export/peft-export';
import { createPeftMethod, defaultIa3Settings, peftModelInfo, type MethodSpec } from '../src/engine/peft/factory';
import { importPeftAdapter } from '../src/engine/peft/import';
import { PromptTuning, textInitIds } from '../src/engine/peft/prompt-tuning';
import { encodeOps, runOps, type Op } from '../src/engine/gpu/dispatch';
import type { Gpu } from '../src/engine/gpu/gpu';

const FIX = path.join(__dirname, 'fixtures');
const GOLD = path.join(FIX, 'goldens');

interface MethodCase {
  name: string;
  model: string;
  method: 'ia3' | 'prompt' | 'prefix';
  case: { prompt?: { num_virtual_tokens: number; init: string; text?: string }; prefix?: { num_virtual_tokens: number; projection: boolean; encoder_hidden_size?: number } };
  peft_config: Record<string, unknown>;
  param_names: string[];
  param_shapes: Record<string, number[]>;
  num_virtual_tokens: number;
  optimizer: { lr: number; betas: [number, number]; eps: number; weight_decay: number; max_grad_norm: number; steps: number };
  loss: number;
  loss_targets: number;
  step_losses: number[];
  step_grad_norms: number[];
  export_keys: string[];
  export_shapes: Record<string, number[]>;
  adapter_config: Record<string, unknown>;
  init_ids?: number[];
  batch: { input_ids: number[][]; attention_mask: number[][]; labels: number[][] };
}

/** The settings a case's PEFT config stands for. */
function specOf(c: MethodCase): MethodSpec {
  const pc = c.peft_config;
  if (c.method === 'ia3') return { method: 'ia3', ia3: { targetModules: pc.target_modules as string[], feedforwardModules: pc.feedforward_modules as string[] } };
  if (c.method === 'prompt') {
    const p = c.case.prompt!;
    const init = p.init === 'TEXT' ? 'text' : p.init === 'SAMPLE_VOCAB' ? 'vocab' : 'random';
    return { method: 'prompt', prompt: { numVirtualTokens: p.num_virtual_tokens, init, initText: init === 'text' ? p.text! : null, tokenizerNameOrPath: c.model } };
  }
  const p = c.case.prefix!;
  return { method: 'prefix', prefix: { numVirtualTokens: p.num_virtual_tokens, projection: p.projection, encoderHiddenSize: p.projection ? (pc.encoder_hidden_size as number) : null } };
}

/** The batch, with each row's first label when the method has virtual input positions (PEFT's shifted labels). */
function batchOf(c: MethodCase): BatchArrays {
  const b = goldenBatch(c.batch);
  return c.method === 'prompt' ? { ...b, firstTargets: Int32Array.from(c.batch.labels, (r) => r[0]) } : b;
}

/** PEFT's logits [B, n + T, V] without the n virtual positions. */
function realRows(logits: Float32Array, B: number, n: number, T: number, V: number): Float32Array {
  if (n === 0) return logits;
  const out = new Float32Array(B * T * V);
  for (let b = 0; b < B; b++) out.set(logits.subarray((b * (n + T) + n) * V, (b * (n + T) + n + T) * V), b * T * V);
  return out;
}

/** Every field our config writes has PEFT's value (paths and the set-ordered module lists aside). */
function expectConfigLikePeft(ours: Record<string, unknown>, peft: Record<string, unknown>, what: string): void {
  for (const [k, v] of Object.entries(ours)) {
    if (k === 'base_model_name_or_path' || k === 'tokenizer_name_or_path') {
      expect(typeof peft[k] === 'string' || peft[k] === null, `${what}: ${k}`).toBe(true);
      expect(v === null, `${what}: ${k} is null in one of them`).toBe(peft[k] === null);
      continue;
    }
    expect(k in peft, `${what}: PEFT's adapter_config.json has no field ${k}`).toBe(true);
    const norm = (x: unknown): unknown => (Array.isArray(x) ? [...x].sort() : x);
    expect(norm(v), `${what}: ${k}`).toEqual(norm(peft[k]));
  }
}

async function runCase(gpu: Gpu, hf: HfModel, c: MethodCase, tensors: SafetensorsFile): Promise<void> {
  const { model } = loadCausalLM(gpu, hf, { maxChunkBytes: 64 * 1024 });
  const info = peftModelInfo(hf.config, model.linearModules());
  const step = new StepUniforms(gpu);
  const tok = loadTokenizer(hf.tokenizerJson!, hf.tokenizerConfig);
  if (c.method === 'ia3' && (c.case as { ia3?: { target_modules: unknown } }).ia3?.target_modules === null) {
    // the case took PEFT's defaults for the model type: ours are the same
    const d = defaultIa3Settings(info);
    expect([...d.targetModules].sort()).toEqual([...(c.peft_config.target_modules as string[])].sort());
    expect([...d.feedforwardModules].sort()).toEqual([...(c.peft_config.feedforward_modules as string[])].sort());
  }
  const method = createPeftMethod(gpu, specOf(c), info, model, step, { random: rng(3), tokenize: (t) => tok.encode(t, { addSpecialTokens: true }) });
  expect(method.params.map((p) => p.name).sort()).toEqual([...c.param_names].sort());
  for (const p of method.params) expect(p.shape, p.name).toEqual(c.param_shapes[p.name]);

  if (c.method === 'prompt' && c.case.prompt!.init === 'TEXT') {
    // PEFT's TEXT init: the same token ids, and so exactly the same rows of the embedding table
    expect(textInitIds(tok.encode(c.case.prompt!.text!, { addSpecialTokens: true }), c.num_virtual_tokens)).toEqual(c.init_ids);
    expect(Array.from(await gpu.read(method.params[0].value))).toEqual(Array.from(tensors.getF32(`${c.name}/init/prompt_embeddings`)));
  }
  const init = (): void => {
    for (const p of method.params) gpu.write(p.value, tensors.getF32(`${c.name}/init/${p.name}`));
  };
  init();
  const batch = batchOf(c);
  const program = model.buildProgram(method, { B: batch.B, T: batch.T, training: true, captureLogits: true });
  program.write(batch);
  const valid = lossTargetCount(batch, program.virtualTokens);
  expect(valid, 'loss targets').toBe(c.loss_targets);
  gpu.write(program.gradScale, new Float32Array([1 / valid]));
  const zero: Op[] = [...method.params.map((p) => ({ kind: 'clear' as const, buffer: p.grad.buffer })), { kind: 'clear', buffer: program.lossSum.buffer }];
  runOps(gpu, [...zero, ...program.forward, ...program.backward]);

  const want = realRows(tensors.getF32(`${c.name}/logits`), batch.B, c.num_virtual_tokens, batch.T, model.V);
  expectClose(await gpu.read(program.logits!), want, 1e-4, 'logits', 1);
  const loss = (await gpu.read(program.lossSum))[0] / valid;
  expect(Math.abs(loss - c.loss) / c.loss, `loss ${loss} vs ${c.loss}`).toBeLessThan(1e-4);
  for (const p of method.params) expectClose(await gpu.read(p.grad), tensors.getF32(`${c.name}/grad/${p.name}`), 1e-3, `grad ${p.name}`);

  init();
  const o = c.optimizer;
  const opt = buildAdamW(gpu, method.params, step, o.max_grad_norm);
  for (let s = 1; s <= o.steps; s++) {
    step.write({ lr: o.lr, beta1: o.betas[0], beta2: o.betas[1], eps: o.eps, weightDecay: o.weight_decay, step: s, seed: s });
    const enc = gpu.device.createCommandEncoder();
    encodeOps(enc, [...opt.zeroGrads, { kind: 'clear', buffer: program.lossSum.buffer }, ...program.forward, ...program.backward, ...opt.update]);
    gpu.device.queue.submit([enc.finish()]);
    const stepLoss = (await gpu.read(program.lossSum))[0] / valid;
    const norm = (await gpu.read(opt.clip))[0];
    expect(Math.abs(stepLoss - c.step_losses[s - 1]) / c.step_losses[s - 1], `step ${s} loss ${stepLoss} vs ${c.step_losses[s - 1]}`).toBeLessThan(1e-4);
    expect(Math.abs(norm - c.step_grad_norms[s - 1]) / c.step_grad_norms[s - 1], `step ${s} grad norm ${norm} vs ${c.step_grad_norms[s - 1]}`).toBeLessThan(1e-3);
  }
  for (const p of method.params) expectClose(await gpu.read(p.value), tensors.getF32(`${c.name}/step5/${p.name}`), 1e-3, `step5 ${p.name}`, 1e-2);

  const files = await exportPeftAdapter(gpu, method, c.model);
  const exported = parseSafetensors(files['adapter_model.safetensors'], 'adapter_model.safetensors');
  expect([...exported.tensors.keys()].sort()).toEqual([...c.export_keys].sort());
  for (const k of c.export_keys) {
    expect(exported.tensors.get(k)!.shape, k).toEqual(c.export_shapes[k]);
    expectClose(exported.getF32(k), tensors.getF32(`${c.name}/export/${k}`), 1e-3, `exported ${k}`, 1e-2);
  }
  expectConfigLikePeft(JSON.parse(files['adapter_config.json']), c.adapter_config, c.name);
  program.destroy();
  method.destroy?.();
}

describe('IA3, prompt and prefix tuning match PyTorch + PEFT', async () => {
  const golden = JSON.parse(fs.readFileSync(path.join(GOLD, 'peft-methods.json'), 'utf8')) as {
    cases: MethodCase[]; configs: Record<string, Record<string, unknown>>; failures: { case: string; error: string }[];
  };
  const tensors = parseSafetensors(new Uint8Array(fs.readFileSync(path.join(GOLD, 'peft-methods.safetensors'))), 'peft-methods.safetensors');
  const models = new Map<string, HfModel>();
  for (const c of golden.cases) if (!models.has(c.model)) models.set(c.model, await loadHfModel(nodeModelFiles(path.join(FIX, c.model))));

  it('the generator ran every case', () => {
    expect(golden.failures).toEqual([]);
    expect(golden.cases.map((c) => c.name).sort()).toEqual([
      'gpt2-ia3', 'gpt2-prefix', 'gpt2-prefix-proj', 'gpt2-prompt-text',
      'llama-ia3', 'llama-ia3-all', 'llama-prefix', 'llama-prefix-proj', 'llama-prompt', 'qwen2-ia3', 'qwen2-prefix',
    ]);
  });

  for (const c of golden.cases) {
    it(`case ${c.name} (${c.model}): names, logits, loss, gradients, 5 AdamW steps, export, config`, async () => {
      await runCase(await testGpu(), models.get(c.model)!, c, tensors);
    });
  }

  it('prompt-tuning configs for the RANDOM and SAMPLE_VOCAB inits are written as PEFT writes them', async () => {
    const gpu = await testGpu();
    const hf = models.get('tiny-gpt2')!;
    const info = peftModelInfo(hf.config, []);
    const dims = { hidden: info.hidden, layers: info.layers, heads: info.heads, vocab: info.vocab };
    for (const [name, init] of [['gpt2-prompt-random', 'random'], ['gpt2-prompt-sample-vocab', 'vocab']] as const) {
      const pt = new PromptTuning(gpu, { numVirtualTokens: 5, init }, dims);
      expectConfigLikePeft(pt.adapterConfig('tiny-gpt2'), golden.configs[name], name);
      pt.destroy();
    }
  });

  for (const c of golden.cases) {
    const dir = path.join(GOLD, 'peft-methods-adapters', c.name);
    it(`the adapter PEFT saved for ${c.name} imports and gives PEFT's logits`, async () => {
      const gpu = await testGpu();
      const hf = models.get(c.model)!;
      const { model } = loadCausalLM(gpu, hf);
      const adapter = importPeftAdapter(gpu, {
        name: c.name, config: fs.readFileSync(path.join(dir, 'adapter_config.json'), 'utf8'), weights: new Uint8Array(fs.readFileSync(path.join(dir, 'adapter_model.safetensors'))),
      }, peftModelInfo(hf.config, model.linearModules()), new StepUniforms(gpu));
      expect(adapter.kind).toBe(c.method);
      const batch = batchOf(c);
      const program = model.buildProgram(adapter, { B: batch.B, T: batch.T, training: false, captureLogits: true });
      program.write(batch);
      runOps(gpu, program.forward);
      const want = realRows(tensors.getF32(`${c.name}/logits`), batch.B, c.num_virtual_tokens, batch.T, model.V);
      expectClose(await gpu.read(program.logits!), want, 1e-4, 'logits', 1);
      program.destroy();
      adapter.destroy?.();
    });
  }
});
