// Replays the PyTorch + PEFT LoRA fine-tuning of the real pretrained stories260K on the E2E data
// recorded by scripts/goldens/make_llama_goldens.py (same examples, same batches in the same order,
// same initial LoRA values, AdamW lr 3e-3, clipping at 1.0) and returns our per-step losses and
// evaluation losses beside PEFT's. Used by test/stories260k.test.ts (a few steps, on the CPU) and
// by `npm run verify:stories` (all 40 steps, on a GPU).

import type { Gpu } from '../engine/gpu/gpu';
import { encodeOps } from '../engine/gpu/dispatch';
import type { HfModel } from '../io/model-files';
import type { SafetensorsFile } from '../io/safetensors';
import { loadTokenizer } from '../data/tokenizer';
import { parseTableText } from '../data/table';
import { buildCausalExamples, type Example } from '../data/examples';
import { makeBatch } from '../data/batches';
import { loadCausalLM } from '../engine/models/registry';
import { Lora } from '../engine/peft/lora';
import { StepUniforms } from '../engine/kernels/step-uniforms';
import { buildAdamW } from '../engine/train/optimizer';
import type { CausalLM } from '../engine/models/program';
import type { PeftMethod } from '../engine/peft/method';

export interface StoriesGolden {
  lora_finetune: {
    settings: { r: number; lora_alpha: number; lr: number; betas: [number, number]; eps: number; weight_decay: number; max_grad_norm: number; max_length: number; target_modules: string[] };
    step_indices: number[][];
    step_losses: number[];
    eval_indices: number[];
    eval_losses: { after_step: number; loss: number }[];
    param_names: string[];
  };
}

export interface ReplayStep { step: number; ours: number; peft: number; }
export interface ReplayEval { afterStep: number; ours: number; peft: number; }

/** Mean loss per target token over `examples`, batch by batch (forward only). */
async function meanLoss(gpu: Gpu, model: CausalLM, peft: PeftMethod, examples: Example[], B: number, padId: number): Promise<number> {
  let sum = 0;
  let valid = 0;
  for (let i = 0; i < examples.length; i += B) {
    const rows = examples.slice(i, i + B);
    const T = Math.max(...rows.map((e) => e.inputIds.length));
    const program = model.buildProgram(peft, { B: rows.length, T, training: false });
    const batch = makeBatch(rows, T, padId);
    program.write(batch);
    const enc = gpu.device.createCommandEncoder();
    enc.clearBuffer(program.lossSum.buffer);
    encodeOps(enc, program.forward);
    gpu.device.queue.submit([enc.finish()]);
    sum += (await gpu.read(program.lossSum))[0];
    valid += batch.validTargets;
    program.destroy();
  }
  return sum / valid;
}

export async function replayStoriesLora(
  gpu: Gpu, hf: HfModel, csvText: string, golden: StoriesGolden, initTensors: SafetensorsFile,
  opts: { steps: number; evalEvery?: number; onStep?: (s: ReplayStep) => void; onEval?: (e: ReplayEval) => void },
): Promise<{ steps: ReplayStep[]; evals: ReplayEval[] }> {
  const g = golden.lora_finetune;
  const s = g.settings;
  const tok = loadTokenizer(hf.tokenizerJson!, hf.tokenizerConfig);
  const table = parseTableText(csvText, 'e2e_dev.csv');
  const { examples } = buildCausalExamples(table, { kind: 'prompt-completion', prompt: 'mr', completion: 'ref', template: '{mr}\n' }, tok, { maxLength: s.max_length });
  const { model } = loadCausalLM(gpu, hf);
  const step = new StepUniforms(gpu);
  const lora = new Lora(gpu, { r: s.r, alpha: s.lora_alpha, dropout: 0, targetModules: s.target_modules, useRslora: false }, model.linearModules(), step, () => 0.5);
  for (const p of lora.params) gpu.write(p.value, initTensors.getF32(`init/${p.name}`));
  const opt = buildAdamW(gpu, lora.params, step, s.max_grad_norm);
  const evalSet = g.eval_indices.map((i) => examples[i]);
  const steps: ReplayStep[] = [];
  const evals: ReplayEval[] = [];
  const evalEvery = opts.evalEvery ?? 0;
  const doEval = async (afterStep: number): Promise<void> => {
    const want = g.eval_losses.find((e) => e.after_step === afterStep);
    if (!want) return;
    const e = { afterStep, ours: await meanLoss(gpu, model, lora, evalSet, 8, tok.padId), peft: want.loss };
    evals.push(e);
    opts.onEval?.(e);
  };
  if (evalEvery > 0) await doEval(0);
  for (let k = 0; k < opts.steps; k++) {
    const rows = g.step_indices[k].map((i) => examples[i]);
    // each step at its own longest row: the loss is the same as at a fixed length, and cheaper
    const T = Math.max(...rows.map((e) => e.inputIds.length));
    const program = model.buildProgram(lora, { B: rows.length, T, training: true });
    const batch = makeBatch(rows, T, tok.padId);
    program.write(batch);
    gpu.write(program.gradScale, new Float32Array([1 / batch.validTargets]));
    step.write({ lr: s.lr, beta1: s.betas[0], beta2: s.betas[1], eps: s.eps, weightDecay: s.weight_decay, step: k + 1, seed: k });
    const enc = gpu.device.createCommandEncoder();
    encodeOps(enc, [...opt.zeroGrads, { kind: 'clear', buffer: program.lossSum.buffer }, ...program.forward, ...program.backward, ...opt.update]);
    gpu.device.queue.submit([enc.finish()]);
    const r = { step: k + 1, ours: (await gpu.read(program.lossSum))[0] / batch.validTargets, peft: g.step_losses[k] };
    steps.push(r);
    opts.onStep?.(r);
    program.destroy();
    if (evalEvery > 0 && (k + 1) % evalEvery === 0) await doEval(k + 1);
  }
  return { steps, evals };
}
