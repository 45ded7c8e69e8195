// The Llama family (Llama with GQA, llama3 RoPE scaling and an untied head; Qwen2 with q/k/v
// biases and one KV head; Qwen3 with per-head q/k RMSNorm and head_dim != hidden/heads) + LoRA
// against PyTorch + PEFT (scripts/goldens/make_llama_goldens.py): base logits, then per case
// logits, loss, gradients, 5 AdamW steps and the export (see helpers/lora-goldens.ts).
import fs from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { testGpu, expectClose, rng } from './helpers/gpu';
import { runLoraGoldenCase, goldenBatch, type GoldenCase } from './helpers/lora-goldens';
import { nodeModelFiles } from '../src/io/model-files-node';
import { loadHfModel, type HfModel } from '../src/io/model-files';
import { parseSafetensors } from '../src/io/safetensors';
import { loadCausalLM } from '../src/engine/models/registry';
import { Lora } from '../src/engine/peft/lora';
import { StepUniforms } from '../src/engine/kernels/step-uniforms';
import { runOps } from '../src/engine/gpu/dispatch';

const FIX = path.join(__dirname, 'fixtures');

describe('Llama-family models + LoRA match PyTorch + PEFT', async () => {
  const golden = JSON.parse(fs.readFileSync(path.join(FIX, 'goldens', 'llama-lora.json'), 'utf8')) as {
    cases: GoldenCase[]; all_linear_by_model: Record<string, { target_modules: string[] }>;
  };
  const tensors = parseSafetensors(new Uint8Array(fs.readFileSync(path.join(FIX, 'goldens', 'llama-lora.safetensors'))), 'llama-lora.safetensors');
  const models = new Map<string, HfModel>();
  for (const name of ['tiny-llama', 'tiny-qwen2', 'tiny-qwen3']) models.set(name, await loadHfModel(nodeModelFiles(path.join(FIX, name))));

  for (const [name, hf] of models) {
    it(`${name}: base model logits`, async () => {
      const gpu = await testGpu();
      const { model } = loadCausalLM(gpu, hf);
      const batch = goldenBatch(golden.cases.find((c) => c.model === name)!.batch);
      const program = model.buildProgram(null, { B: batch.B, T: batch.T, training: false, captureLogits: true });
      program.write(batch);
      runOps(gpu, program.forward);
      expectClose(await gpu.read(program.logits!), tensors.getF32(`base/${name}/logits`), 1e-4, 'logits', 1);
      program.destroy();
    });
  }

  it('all-linear targets the layers PEFT wraps and is saved as PEFT saves it', async () => {
    const gpu = await testGpu();
    const { model } = loadCausalLM(gpu, models.get('tiny-llama')!);
    const lora = new Lora(gpu, { r: 2, alpha: 4, dropout: 0, targetModules: ['all-linear'], useRslora: false }, model.linearModules(), new StepUniforms(gpu), rng(1));
    const want = [...golden.all_linear_by_model['tiny-llama'].target_modules].sort();
    expect([...lora.targetedModules].sort()).toEqual(want);
    expect(lora.adapterConfig('x').target_modules).toEqual(want);
  });

  for (const gc of golden.cases) {
    it(`case ${gc.name} (${gc.model}): logits, loss, gradients, 5 AdamW steps, export`, async () => {
      await runLoraGoldenCase(await testGpu(), models.get(gc.model!)!, gc, tensors);
    });
  }

  // q_proj, k_proj and v_proj run as one product into packed rows where LoRA targets them (its sites
  // are column slices: tuning.fuseQkv, models/llama.ts fusesQkv), which the cases above take on
  // tiny-llama and tiny-qwen2 (stacked biases); Qwen3's q/k norms keep them apart.
  it('the cases above run q_proj, k_proj and v_proj as one product except on Qwen3; tiny-llama and tiny-qwen2 match the goldens with three products too', { timeout: 400_000 }, async () => {
    const gpu = await testGpu();
    const labels = (name: string, targets: string[]): string[] => {
      const { model } = loadCausalLM(gpu, models.get(name)!);
      const lora = new Lora(gpu, { r: 2, alpha: 4, dropout: 0.1, targetModules: targets, useRslora: false }, model.linearModules(), new StepUniforms(gpu), rng(1));
      const program = model.buildProgram(lora, { B: 2, T: 5, training: true });
      const out = [...program.forward, ...program.backward].map((op) => ('label' in op ? op.label : ''));
      program.destroy();
      lora.destroy();
      model.destroy();
      return out;
    };
    for (const [name, fused] of [['tiny-llama', true], ['tiny-qwen2', true], ['tiny-qwen3', false]] as const) {
      const got = labels(name, ['q_proj', 'v_proj']);
      expect(got.includes('model.layers.1.self_attn.qkv_proj'), name).toBe(fused);
      expect(got.includes('model.layers.1.self_attn.qkv_proj.dx'), name).toBe(fused);
      expect(got.some((l) => l.startsWith('model.layers.1.self_attn.k_proj')), name).toBe(!fused);
    }
    const saved = gpu.tuning.fuseQkv;
    gpu.tuning.fuseQkv = false;
    try {
      expect(labels('tiny-llama', ['q_proj', 'v_proj']).includes('model.layers.1.self_attn.qkv_proj')).toBe(false);
      for (const gc of golden.cases.filter((c) => c.model === 'tiny-llama' || c.model === 'tiny-qwen2')) {
        await runLoraGoldenCase(gpu, models.get(gc.model!)!, gc, tensors);
      }
    } finally {
      gpu.tuning.fuseQkv = saved;
    }
  });
});
