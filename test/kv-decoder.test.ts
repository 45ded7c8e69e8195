// Generation through the KV cache against the full forward pass without a cache (the training
// program, B = 1, over the whole sequence): on tiny GPT-2 and tiny Llama (grouped-query heads,
// llama3 RoPE), without an adapter and with LoRA (dropout set: generation must run without it),
// DoRA, IA3, prompt tuning (virtual tokens in the prefill), prefix tuning (cache rows before the
// prompt; with its projection too) and bottleneck adapters, every adapter tensor set to random
// values so each one changes the output. At every step the cached logits must equal the full
// forward's logits at that position within 1e-4, and the greedy tokens its argmax. Qwen2 and Qwen3
// (biases, q/k norms, one key/value head) without an adapter and with LoRA. Long prompts prefilled in
// blocks of rows.
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { testGpu, rng } from './helpers/gpu';
import { nodeModelFiles } from '../src/io/model-files-node';
import { loadHfModel, type HfModel } from '../src/io/model-files';
import { loadCausalLM, type LoadedModel } from '../src/engine/models/registry';
import { StepUniforms } from '../src/engine/kernels/step-uniforms';
import { createPeftMethod, peftModelInfo, type MethodSpec } from '../src/engine/peft/factory';
import type { PeftMethod } from '../src/engine/peft/method';
import { runOps } from '../src/engine/gpu/dispatch';
import type { Gpu } from '../src/engine/gpu/gpu';
import { Generator } from '../src/engine/infer/generator';
import { argmax } from '../src/engine/infer/sampling';
import { KvDecoder } from '../src/engine/infer/kv-decoder';

const FIX = path.join(__dirname, 'fixtures');

async function load(name: string): Promise<{ hf: HfModel; loaded: LoadedModel }> {
  const gpu = await testGpu();
  const hf = await loadHfModel(nodeModelFiles(path.join(FIX, name)));
  return { hf, loaded: loadCausalLM(gpu, hf) };
}

function makeMethod(gpu: Gpu, hf: HfModel, loaded: LoadedModel, spec: MethodSpec, seed: number): PeftMethod {
  const step = new StepUniforms(gpu);
  // a training step's uniforms (dropout on if anything ignored `training: false`)
  step.write({ lr: 0, beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 0, step: 1, seed: 1234 });
  const m = createPeftMethod(gpu, spec, peftModelInfo(hf.config, loaded.model.linearModules()), loaded.model, step, { random: rng(seed) });
  const r = rng(seed + 1);
  for (const p of m.params) {
    // values around what training leaves (IA3's scales around 1, the rest small but not zero)
    const around = p.name.includes('ia3') || p.name.includes('magnitude') ? 1 : 0;
    gpu.write(p.value, Float32Array.from({ length: p.value.size }, () => around + (r() * 2 - 1) * 0.5));
  }
  return m;
}

/** Logits of every real position of `ids` from the no-cache forward program. */
async function fullForwardLogits(gpu: Gpu, loaded: LoadedModel, peft: PeftMethod | null, ids: number[]): Promise<Float32Array> {
  const T = ids.length;
  const program = loaded.model.buildProgram(peft, { B: 1, T, training: false, captureLogits: true });
  program.write({ B: 1, T, inputIds: Uint32Array.from(ids), targets: new Int32Array(T).fill(-100), lengths: Uint32Array.of(T), validTargets: 0 });
  runOps(gpu, program.forward);
  const out = await gpu.read(program.logits!);
  program.destroy();
  return out;
}

async function checkAgainstFullForward(loaded: LoadedModel, peft: PeftMethod | null, prompt: number[], maxNew: number, maxPrefillRows?: number): Promise<number[]> {
  const gpu = await testGpu();
  const V = loaded.model.V;
  const gen = new Generator(gpu, loaded.model, peft, prompt.length + maxNew, { maxPrefillRows });
  const stepLogits: Float32Array[] = [];
  const out = await gen.generate(prompt, { maxNewTokens: maxNew, onLogits: (l) => stepLogits.push(l) });
  expect(out.length).toBe(maxNew);
  const ids = [...prompt, ...out];
  const full = await fullForwardLogits(gpu, loaded, peft, ids.slice(0, -1));
  let worst = 0;
  stepLogits.forEach((l, s) => {
    const row = full.subarray((prompt.length - 1 + s) * V, (prompt.length + s) * V);
    for (let v = 0; v < V; v++) worst = Math.max(worst, Math.abs(l[v] - row[v]));
    expect(out[s], `token ${s}`).toBe(argmax(row));
  });
  expect(worst, 'largest logit difference against the full forward').toBeLessThan(1e-4);
  // the same decoder started again (a second prompt) gives the same tokens: nothing of the first run leaks
  const again = await gen.generate(prompt, { maxNewTokens: maxNew });
  expect(again).toEqual(out);
  gen.destroy();
  return out;
}

const specs: [string, MethodSpec][] = [
  ['LoRA (dropout 0.3)', { method: 'lora', lora: { r: 4, alpha: 8, dropout: 0.3, targetModules: ['all-linear'], useRslora: false } }],
  ['DoRA', { method: 'dora', lora: { r: 2, alpha: 4, dropout: 0, targetModules: ['all-linear'], useRslora: false } }],
  ['prompt tuning', { method: 'prompt', prompt: { numVirtualTokens: 4, init: 'random' } }],
  ['prefix tuning', { method: 'prefix', prefix: { numVirtualTokens: 3, projection: false } }],
  ['prefix tuning with the projection', { method: 'prefix', prefix: { numVirtualTokens: 2, projection: true, encoderHiddenSize: 16 } }],
  ['bottleneck (Houlsby)', { method: 'bottleneck', bottleneck: { type: 'houlsby', reductionFactor: 4, nonLinearity: 'swish', name: 'kvtest' } }],
];

for (const model of ['tiny-gpt2', 'tiny-llama']) {
  describe(`KV-cache generation on ${model} equals the full forward`, async () => {
    const { hf, loaded } = await load(model);
    const ia3: [string, MethodSpec] = ['IA3', { method: 'ia3', ia3: model === 'tiny-gpt2' ? { targetModules: ['c_attn', 'mlp.c_proj'], feedforwardModules: ['mlp.c_proj'] } : { targetModules: ['k_proj', 'v_proj', 'down_proj'], feedforwardModules: ['down_proj'] } }];
    const prompt = [5, 17, 42, 8, 99, 3];

    it('without an adapter', { timeout: 300_000 }, async () => {
      await checkAgainstFullForward(loaded, null, prompt, 20);
    });

    for (const [name, spec] of [...specs, ia3]) {
      it(`with ${name}`, { timeout: 300_000 }, async () => {
        const gpu = await testGpu();
        const peft = makeMethod(gpu, hf, loaded, spec, 77);
        const withAdapter = await checkAgainstFullForward(loaded, peft, prompt, 16);
        // the adapter matters: its logits differ from the base model's
        const base = new KvDecoder(gpu, loaded.model, null, prompt.length + 1);
        const adapted = new KvDecoder(gpu, loaded.model, peft, prompt.length + 1);
        const a = await base.prefill(prompt), b = await adapted.prefill(prompt);
        let diff = 0;
        for (let v = 0; v < a.length; v++) diff = Math.max(diff, Math.abs(a[v] - b[v]));
        expect(diff, 'the adapter changes the logits').toBeGreaterThan(1e-3);
        base.destroy();
        adapted.destroy();
        expect(withAdapter.length).toBe(16);
        peft.destroy?.();
      });
    }

    it('prefills a prompt in blocks of rows (virtual tokens in the first) as in one run', { timeout: 300_000 }, async () => {
      const gpu = await testGpu();
      const long = [5, 17, 42, 8, 99, 3, 61, 200, 14, 7, 33];
      for (const spec of [specs[0][1], specs[2][1], specs[3][1]]) {
        const peft = makeMethod(gpu, hf, loaded, spec, 41);
        // prompt tuning's 4 virtual tokens leave 1 prompt row in the first block of 5
        await checkAgainstFullForward(loaded, peft, long, 6, 5);
        peft.destroy?.();
      }
    });

    it('fills the model\'s positions exactly and refuses one more', { timeout: 300_000 }, async () => {
      const gpu = await testGpu();
      const peft = makeMethod(gpu, hf, loaded, specs[3][1], 5); // prefix tuning: 3 rows of the 64 positions
      expect(() => new KvDecoder(gpu, loaded.model, peft, 62)).toThrow(/more than the model's 64 positions/);
      await checkAgainstFullForward(loaded, peft, prompt, 61 - prompt.length);
      peft.destroy?.();
    });
  });
}

// Qwen2 (q/k/v biases, one key/value head for four query heads) and Qwen3 (per-head q/k RMSNorm,
// head_dim 16 with hidden 32): the same check without an adapter and with LoRA on every linear layer.
for (const model of ['tiny-qwen2', 'tiny-qwen3']) {
  describe(`KV-cache generation on ${model} equals the full forward`, async () => {
    const { hf, loaded } = await load(model);
    const prompt = [7, 70, 12, 250, 31];
    it('without an adapter and with LoRA', { timeout: 300_000 }, async () => {
      const gpu = await testGpu();
      await checkAgainstFullForward(loaded, null, prompt, 16);
      const peft = makeMethod(gpu, hf, loaded, specs[0][1], 91);
      await checkAgainstFullForward(loaded, peft, prompt, 16);
      peft.destroy?.();
    });
  });
}
