// DoRA (PEFT's LoraConfig(use_dora=True)) and the bottleneck adapters (AdapterHub's Houlsby and
// Pfeiffer layouts) on tiny-gpt2, tiny-llama and tiny-qwen2 against PyTorch
// (scripts/goldens/make_dora_bottleneck_goldens.py, float64): the trainable tensors (names,
// shapes), DoRA's initial magnitude against PEFT's own init, logits, loss, gradients, 5 AdamW steps
// with clipping, the export (names, shapes, values) and adapter_config.json (PEFT's for DoRA; the
// BnConfig fields for the bottleneck adapters), with the tolerances of the IA3 / prompt / prefix
// goldens; and the DoRA adapters PEFT saved, imported back, give PEFT's logits.
import fs from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { testGpu, expectClose, rng } from './helpers/gpu';
import { goldenBatch } from './helpers/lora-goldens';
import { nodeModelFiles } from '../src/io/model-files-node';
import { loadHfModel, type HfModel } from '../src/io/model-files';
import { parseSafetensors, type SafetensorsFile } from '../src/io/safetensors';
import { loadCausalLM } from '../src/engine/models/registry';
import { lossTargetCount } from '../src/engine/models/program';
import { StepUniforms } from '../src/engine/kernels/step-uniforms';
import { buildAdamW } from '../src/engine/train/optimizer';
import { exportAdapter } from '../src/engine/export/peft-export';
import { createPeftMethod, peftModelInfo, type MethodSpec } from '../src/engine/peft/factory';
import { importPeftAdapter } from '../src/engine/peft/import';
import type { BottleneckActivation, BottleneckAdapters, BottleneckType } from '../src/engine/peft/bottleneck';
import { encodeOps, runOps, type Op } from '../src/engine/gpu/dispatch';
import type { Gpu } from '../src/engine/gpu/gpu';

const FIX = path.join(__dirname, 'fixtures');
const GOLD = path.join(FIX, 'goldens');

interface GoldenCase {
  name: string;
  model: string;
  method: 'dora' | 'bottleneck';
  case: {
    lora?: { r: number; lora_alpha: number; target_modules: string[]; use_rslora: boolean };
    bn?: { type: BottleneckType; reduction_factor: number; non_linearity: BottleneckActivation };
  };
  param_names: string[];
  param_shapes: Record<string, number[]>;
  optimizer: { lr: number; betas: [number, number]; eps: number; weight_decay: number; max_grad_norm: number; steps: number };
  loss: number;
  loss_targets: number;
  step_losses: number[];
  step_grad_norms: number[];
  export_keys: string[];
  export_shapes: Record<string, number[]>;
  adapter_config?: Record<string, unknown>;
  bn_config?: Record<string, unknown>;
  bottleneck_size?: number;
  batch: { input_ids: number[][]; attention_mask: number[][]; labels: number[][] };
}

interface Golden {
  cases: GoldenCase[];
  failures: { case: string; error: string }[];
  adapter_name: string;
  adapters_library: { importable: boolean; crosscheck: Record<string, { max_abs_logit_diff?: number; param_names_equal?: boolean; saved_config?: Record<string, unknown>; error?: string }> };
}

function specOf(c: GoldenCase, adapterName: string): MethodSpec {
  if (c.method === 'dora') {
    const l = c.case.lora!;
    return { method: 'dora', lora: { r: l.r, alpha: l.lora_alpha, dropout: 0, targetModules: l.target_modules, useRslora: l.use_rslora } };
  }
  const b = c.case.bn!;
  return { method: 'bottleneck', bottleneck: { type: b.type, reductionFactor: b.reduction_factor, nonLinearity: b.non_linearity, name: adapterName } };
}

/** Every field our config writes has PEFT's value (paths and the set-ordered module lists aside). */
function expectConfigLikePeft(ours: Record<string, unknown>, peft: Record<string, unknown>, what: string): void {
  for (const [k, v] of Object.entries(ours)) {
    if (k === 'base_model_name_or_path') continue;
    expect(k in peft, `${what}: PEFT's adapter_config.json has no field ${k}`).toBe(true);
    const norm = (x: unknown): unknown => (Array.isArray(x) ? [...x].sort() : x);
    expect(norm(v), `${what}: ${k}`).toEqual(norm(peft[k]));
  }
}

async function runCase(gpu: Gpu, hf: HfModel, c: GoldenCase, golden: Golden, tensors: SafetensorsFile): Promise<void> {
  const { model } = loadCausalLM(gpu, hf, { maxChunkBytes: 64 * 1024 });
  const info = peftModelInfo(hf.config, model.linearModules());
  const step = new StepUniforms(gpu);
  const method = createPeftMethod(gpu, specOf(c, golden.adapter_name), info, model, step, { random: rng(3) });
  expect(method.params.map((p) => p.name).sort()).toEqual([...c.param_names].sort());
  for (const p of method.params) expect(p.shape, p.name).toEqual(c.param_shapes[p.name]);
  if (c.method === 'dora') {
    // the magnitude starts as PEFT's: the norm of each output feature's weights
    for (const p of method.params.filter((q) => q.name.endsWith('lora_magnitude_vector'))) {
      expectClose(await gpu.read(p.value), tensors.getF32(`${c.name}/peft_init/${p.name}`), 1e-5, `initial ${p.name}`);
    }
  } else {
    expect((method as BottleneckAdapters).size).toBe(c.bottleneck_size);
  }
  const init = (): void => {
    for (const p of method.params) gpu.write(p.value, tensors.getF32(`${c.name}/init/${p.name}`));
  };
  init();
  const batch = goldenBatch(c.batch);
  const program = model.buildProgram(method, { B: batch.B, T: batch.T, training: true, captureLogits: true });
  program.write(batch);
  const valid = lossTargetCount(batch, 0);
  expect(valid, 'loss targets').toBe(c.loss_targets);
  gpu.write(program.gradScale, new Float32Array([1 / valid]));
  const zero: Op[] = [...method.params.map((p) => ({ kind: 'clear' as const, buffer: p.grad.buffer })), { kind: 'clear', buffer: program.lossSum.buffer }];
  runOps(gpu, [...zero, ...program.forward, ...program.backward]);
  expectClose(await gpu.read(program.logits!), tensors.getF32(`${c.name}/logits`), 1e-4, 'logits', 1);
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

  const e = await exportAdapter(gpu, method, c.model);
  expect(e.format).toBe(c.method === 'dora' ? 'peft' : 'adapterhub');
  const exported = parseSafetensors(e.weights, e.weightsName);
  expect([...exported.tensors.keys()].sort()).toEqual([...c.export_keys].sort());
  for (const k of c.export_keys) {
    expect(exported.tensors.get(k)!.shape, k).toEqual(c.export_shapes[k]);
    expectClose(exported.getF32(k), tensors.getF32(`${c.name}/export/${k}`), 1e-3, `exported ${k}`, 1e-2);
  }
  const cfg = JSON.parse(e.config) as Record<string, unknown>;
  if (c.method === 'dora') {
    expectConfigLikePeft(cfg, c.adapter_config!, c.name);
  } else {
    expect(cfg.config).toEqual(c.bn_config);
    const saved = golden.adapters_library.crosscheck[c.name]?.saved_config;
    if (saved) {
      // what the adapters library itself wrote for this case (when it was installed on the GPU machine)
      expect(Object.keys(cfg).sort()).toEqual(Object.keys(saved).sort());
      expect(cfg.config).toEqual(saved.config);
      expect(cfg.model_type).toBe(saved.model_type);
      expect(cfg.hidden_size).toBe(saved.hidden_size);
    }
  }
  program.destroy();
  method.destroy?.();
}

describe('DoRA and bottleneck adapters match PyTorch (+ PEFT for DoRA)', async () => {
  const golden = JSON.parse(fs.readFileSync(path.join(GOLD, 'dora-bottleneck.json'), 'utf8')) as Golden;
  const tensors = parseSafetensors(new Uint8Array(fs.readFileSync(path.join(GOLD, 'dora-bottleneck.safetensors'))), 'dora-bottleneck.safetensors');
  const models = new Map<string, HfModel>();
  for (const c of golden.cases) if (!models.has(c.model)) models.set(c.model, await loadHfModel(nodeModelFiles(path.join(FIX, c.model))));

  it('the generator ran every case; the adapters library, where it ran, agrees with the reference', () => {
    expect(golden.failures).toEqual([]);
    expect(golden.cases.map((c) => c.name).sort()).toEqual([
      'gpt2-dora', 'gpt2-houlsby', 'gpt2-pfeiffer', 'llama-dora-rslora', 'llama-houlsby', 'llama-pfeiffer', 'qwen2-dora',
    ]);
    for (const [name, r] of Object.entries(golden.adapters_library.crosscheck)) {
      expect(r.error, name).toBeUndefined();
      expect(r.param_names_equal, name).toBe(true);
      expect(r.max_abs_logit_diff!, name).toBeLessThan(1e-9);
    }
  });

  for (const c of golden.cases) {
    it(`case ${c.name} (${c.model}): names, init, logits, loss, gradients, 5 AdamW steps, export, config`, async () => {
      await runCase(await testGpu(), models.get(c.model)!, c, golden, tensors);
    }, 300_000);
  }

  for (const c of golden.cases.filter((x) => x.method === 'dora')) {
    const dir = path.join(GOLD, 'dora-bottleneck-adapters', c.name);
    it(`the DoRA adapter PEFT saved for ${c.name} imports and gives PEFT's logits`, async () => {
      const gpu = await testGpu();
      const hf = models.get(c.model)!;
      const { model } = loadCausalLM(gpu, hf);
      const adapter = importPeftAdapter(gpu, {
        name: c.name, config: fs.readFileSync(path.join(dir, 'adapter_config.json'), 'utf8'), weights: new Uint8Array(fs.readFileSync(path.join(dir, 'adapter_model.safetensors'))),
      }, peftModelInfo(hf.config, model.linearModules()), new StepUniforms(gpu));
      expect(adapter.kind).toBe('dora');
      const batch = goldenBatch(c.batch);
      const program = model.buildProgram(adapter, { B: batch.B, T: batch.T, training: false, captureLogits: true });
      program.write(batch);
      runOps(gpu, program.forward);
      expectClose(await gpu.read(program.logits!), tensors.getF32(`${c.name}/logits`), 1e-4, 'logits', 1);
      program.destroy();
      adapter.destroy?.();
    });
  }
});
