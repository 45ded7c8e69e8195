// Runs one recorded PyTorch + PEFT LoRA case (scripts/goldens/make_*_goldens.py) through our
// engine: logits and loss, LoRA gradients, 5 AdamW steps with clipping, and the PEFT export.
import { expect } from 'vitest';
import type { Gpu } from '../../src/engine/gpu/gpu';
import { encodeOps, runOps, type Op } from '../../src/engine/gpu/dispatch';
import type { HfModel } from '../../src/io/model-files';
import type { SafetensorsFile } from '../../src/io/safetensors';
import { parseSafetensors } from '../../src/io/safetensors';
import { loadCausalLM } from '../../src/engine/models/registry';
import { Lora } from '../../src/engine/peft/lora';
import { StepUniforms } from '../../src/engine/kernels/step-uniforms';
import { buildAdamW } from '../../src/engine/train/optimizer';
import { exportPeftAdapter } from '../../src/engine/export/peft-export';
import { expectClose, rng } from './gpu';

export interface GoldenCase {
  name: string;
  model?: string;
  lora: { r: number; lora_alpha: number; target_modules: string[] | string; use_rslora: boolean };
  optimizer: { lr: number; betas: [number, number]; eps: number; weight_decay: number; max_grad_norm: number; steps: number };
  batch: { input_ids: number[][]; attention_mask: number[][]; labels: number[][] };
  loss: number;
  step_losses: number[];
  step_grad_norms: number[];
  param_names: string[];
}

/** The batch as the engine takes it: right-padded ids, next-token targets (transformers' shift), lengths. */
export function goldenBatch(b: GoldenCase['batch']) {
  const B = b.input_ids.length, T = b.input_ids[0].length;
  const inputIds = new Uint32Array(B * T), targets = new Int32Array(B * T).fill(-100), lengths = new Uint32Array(B);
  for (let i = 0; i < B; i++) {
    lengths[i] = b.attention_mask[i].reduce((s, x) => s + x, 0);
    for (let t = 0; t < T; t++) {
      inputIds[i * T + t] = b.input_ids[i][t];
      if (t + 1 < T) targets[i * T + t] = b.labels[i][t + 1];
    }
  }
  return { B, T, inputIds, targets, lengths, validTargets: targets.filter((x) => x >= 0).length };
}

export async function runLoraGoldenCase(gpu: Gpu, hf: HfModel, gc: GoldenCase, tensors: SafetensorsFile): Promise<void> {
  // small embedding blocks: the golden also covers the split-table path
  const { model } = loadCausalLM(gpu, hf, { maxChunkBytes: 64 * 1024 });
  const step = new StepUniforms(gpu);
  const targets = typeof gc.lora.target_modules === 'string' ? [gc.lora.target_modules] : gc.lora.target_modules;
  const lora = new Lora(gpu, { r: gc.lora.r, alpha: gc.lora.lora_alpha, dropout: 0, targetModules: targets, useRslora: gc.lora.use_rslora }, model.linearModules(), step, rng(1));
  expect(lora.params.map((p) => p.name).sort()).toEqual([...gc.param_names].sort());
  const init = (): void => {
    for (const p of lora.params) gpu.write(p.value, tensors.getF32(`${gc.name}/init/${p.name}`));
  };
  init();
  const batch = goldenBatch(gc.batch);
  const program = model.buildProgram(lora, { B: batch.B, T: batch.T, training: true, captureLogits: true });
  program.write(batch);
  gpu.write(program.gradScale, new Float32Array([1 / batch.validTargets]));
  const zero: Op[] = [...lora.params.map((p) => ({ kind: 'clear' as const, buffer: p.grad.buffer })), { kind: 'clear', buffer: program.lossSum.buffer }];
  runOps(gpu, [...zero, ...program.forward, ...program.backward]);

  // logits: every element within 1e-4 of the largest |logit| (f32 rounding of near-zero logits
  // makes an element-wise ratio meaningless there)
  expectClose(await gpu.read(program.logits!), tensors.getF32(`${gc.name}/logits`), 1e-4, 'logits', 1);
  const loss = (await gpu.read(program.lossSum))[0] / batch.validTargets;
  expect(Math.abs(loss - gc.loss) / gc.loss, `loss ${loss} vs ${gc.loss}`).toBeLessThan(1e-4);
  // gradients: 2e-3 (relative, floored at 1e-3 of the tensor's largest |gradient|). Summation order
  // alone moves them by that much at the floor: the fused LoRA kernels (shaders/lora.wgsl) sum
  // u = x A^T in another order than the skinny matmul did, and the worst element of the rslora
  // case went from 4.9e-4 to 1.33e-3 (an absolute change of 9e-7 on gradients up to ~0.7).
  for (const p of lora.params) expectClose(await gpu.read(p.grad), tensors.getF32(`${gc.name}/grad/${p.name}`), 2e-3, `grad ${p.name}`);

  // 5 AdamW steps on the same batch, from the same initial values
  init();
  const o = gc.optimizer;
  const opt = buildAdamW(gpu, lora.params, step, o.max_grad_norm);
  for (let s = 1; s <= o.steps; s++) {
    step.write({ lr: o.lr, beta1: o.betas[0], beta2: o.betas[1], eps: o.eps, weightDecay: o.weight_decay, step: s, seed: s });
    const enc = gpu.device.createCommandEncoder();
    encodeOps(enc, [...opt.zeroGrads, { kind: 'clear', buffer: program.lossSum.buffer }, ...program.forward, ...program.backward, ...opt.update]);
    gpu.device.queue.submit([enc.finish()]);
    const stepLoss = (await gpu.read(program.lossSum))[0] / batch.validTargets;
    const norm = (await gpu.read(opt.clip))[0];
    expect(Math.abs(stepLoss - gc.step_losses[s - 1]) / gc.step_losses[s - 1], `step ${s} loss`).toBeLessThan(1e-4);
    expect(Math.abs(norm - gc.step_grad_norms[s - 1]) / gc.step_grad_norms[s - 1], `step ${s} grad norm`).toBeLessThan(1e-3);
  }
  // weights: within 1e-3 of max(|w|, 1% of the tensor's largest |w|); Adam's normalized steps
  // magnify f32 rounding in weights that pass near zero
  for (const p of lora.params) expectClose(await gpu.read(p.value), tensors.getF32(`${gc.name}/step5/${p.name}`), 1e-3, `step5 ${p.name}`, 1e-2);

  // the export holds exactly these tensors under PEFT's names and shapes
  const files = await exportPeftAdapter(gpu, lora, hf.name);
  const exported = parseSafetensors(files['adapter_model.safetensors'], 'adapter_model.safetensors');
  expect([...exported.tensors.keys()].sort()).toEqual([...gc.param_names].sort());
  for (const p of lora.params) {
    expect(exported.tensors.get(p.name)!.shape).toEqual(p.shape);
    expectClose(exported.getF32(p.name), tensors.getF32(`${gc.name}/step5/${p.name}`), 1e-3, `exported ${p.name}`, 1e-2);
  }
  const cfg = JSON.parse(files['adapter_config.json']);
  expect(cfg).toMatchObject({ peft_type: 'LORA', task_type: 'CAUSAL_LM', r: gc.lora.r, lora_alpha: gc.lora.lora_alpha, fan_in_fan_out: hf.config.family === 'gpt2', use_rslora: gc.lora.use_rslora });
  program.destroy();
}
