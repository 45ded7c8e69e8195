// Merging LoRA / DoRA adapters into the base weights (src/engine/export/merge.ts, PEFT's
// merge_and_unload): the merged model alone must give the logits of the base model with the
// adapter (GPT-2's Conv1D layers, Llama's Linear ones, DoRA's magnitude), shards and 16-bit
// outputs must load back, and adapters that cannot be merged are refused with the reason.
// PEFT's own merge_and_unload on the same files: scripts/goldens/check_merge.py (GPU machine).
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { expectClose, rng, testGpu } from './helpers/gpu';
import { nodeModelFiles } from '../src/io/model-files-node';
import { loadHfModel, modelFilesFromMap } from '../src/io/model-files';
import { bf16ToF32, f16ToF32, f32ToBf16, f32ToF16, parseSafetensors } from '../src/io/safetensors';
import { loadCausalLM } from '../src/engine/models/registry';
import { createPeftMethod, peftModelInfo } from '../src/engine/peft/factory';
import { StepUniforms } from '../src/engine/kernels/step-uniforms';
import { exportPeftAdapter } from '../src/engine/export/peft-export';
import { mergeAdapter, MergeError } from '../src/engine/export/merge';
import { runOps } from '../src/engine/gpu/dispatch';
import type { PeftMethod } from '../src/engine/peft/method';
import type { Gpu } from '../src/engine/gpu/gpu';
import type { CausalLMModel } from '../src/engine/models/registry';

const fixture = (name: string) => path.join(__dirname, 'fixtures', name);

async function logitsOf(gpu: Gpu, model: CausalLMModel, method: PeftMethod | null, ids: number[][]): Promise<Float32Array> {
  const B = ids.length, T = ids[0].length;
  const program = model.buildProgram(method, { B, T, training: false, captureLogits: true });
  program.write({ B, T, inputIds: Uint32Array.from(ids.flat()), targets: new Int32Array(B * T).fill(-100), lengths: new Uint32Array(B).fill(T), validTargets: 0 });
  runOps(gpu, program.forward);
  const out = await gpu.read(program.logits!);
  program.destroy();
  return out;
}

/** Base model + a trained-looking adapter (random nonzero values) and its PEFT files. */
async function adapterOn(name: string, spec: Parameters<typeof createPeftMethod>[1]) {
  const gpu = await testGpu();
  const files = nodeModelFiles(fixture(name));
  const hf = await loadHfModel(files);
  const { model } = loadCausalLM(gpu, hf);
  const method = createPeftMethod(gpu, spec, peftModelInfo(hf.config, model.linearModules()), model, new StepUniforms(gpu), { random: rng(3), tokenize: () => [] });
  const r = rng(11);
  for (const p of method.params) {
    gpu.write(p.value, Float32Array.from({ length: p.value.size }, () => (p.name.endsWith('magnitude_vector') ? 0.5 + r() : (r() * 2 - 1) * 0.3)));
  }
  const exported = await exportPeftAdapter(gpu, method, name);
  const adapter = { name: `${name}-adapter`, config: exported['adapter_config.json'] as string, weights: exported['adapter_model.safetensors'] as Uint8Array };
  return { gpu, files, hf, model, method, adapter };
}

const IDS = [[1, 5, 9, 2, 7, 3], [4, 4, 8, 1, 0, 6]];

describe('merging an adapter into the base weights', () => {
  for (const [name, spec, label] of [
    ['tiny-gpt2', { method: 'lora', lora: { r: 4, alpha: 8, dropout: 0.1, targetModules: ['c_attn', 'mlp.c_proj'], useRslora: false } }, 'LoRA on Conv1D layers (fan_in_fan_out)'],
    ['tiny-llama', { method: 'dora', lora: { r: 2, alpha: 5, dropout: 0, targetModules: ['all-linear'], useRslora: true } }, 'DoRA with rsLoRA on every Linear layer'],
    ['tiny-qwen2', { method: 'lora', lora: { r: 3, alpha: 3, dropout: 0, targetModules: ['q_proj', 'v_proj', 'down_proj'], useRslora: false } }, 'LoRA on layers with biases'],
  ] as const) {
    it(`${name}, ${label}: the merged model alone gives the adapted logits`, async () => {
      const { gpu, files, model, method, adapter } = await adapterOn(name, spec as never);
      const want = await logitsOf(gpu, model, method, IDS);
      const base = await logitsOf(gpu, model, null, IDS);
      const merged = await mergeAdapter(files, await loadHfModel(files), adapter, { dtype: 'F32' });
      expect(merged.merged.length).toBeGreaterThan(0);
      expect([...merged.files.keys()]).toEqual(expect.arrayContaining(['config.json', 'model.safetensors', 'tokenizer.json', 'tokenizer_config.json']));
      const mergedHf = await loadHfModel(modelFilesFromMap('merged', merged.files));
      expect(mergedHf.tensorNames).toEqual((await loadHfModel(files)).tensorNames);
      const { model: mergedModel } = loadCausalLM(gpu, mergedHf);
      const got = await logitsOf(gpu, mergedModel, null, IDS);
      expectClose(got, Float64Array.from(want), 1e-4, `${name} merged logits`, 1e-2);
      // the adapter matters: the base model's logits are far from these
      const far = Math.max(...Array.from(base, (v, i) => Math.abs(v - want[i])));
      expect(far).toBeGreaterThan(1e-2);
      mergedModel.destroy();
      model.destroy();
    });
  }

  it('writes shards with an index and 16-bit weights that load back', async () => {
    const { files, adapter } = await adapterOn('tiny-llama', { method: 'lora', lora: { r: 2, alpha: 4, dropout: 0, targetModules: ['q_proj', 'v_proj'], useRslora: false } });
    const hf = await loadHfModel(files);
    const f32 = await mergeAdapter(files, hf, adapter, { dtype: 'F32' });
    for (const dtype of ['BF16', 'F16'] as const) {
      const m = await mergeAdapter(files, hf, adapter, { dtype, maxShardBytes: 20_000 });
      const shards = [...m.files.keys()].filter((f) => /^model-\d{5}-of-\d{5}\.safetensors$/.test(f));
      expect(shards.length, dtype).toBeGreaterThan(2);
      const index = JSON.parse(new TextDecoder().decode(m.files.get('model.safetensors.index.json')!));
      expect(Object.keys(index.weight_map).sort()).toEqual([...hf.tensorNames].sort());
      expect(JSON.parse(new TextDecoder().decode(m.files.get('config.json')!)).dtype).toBe(dtype === 'BF16' ? 'bfloat16' : 'float16');
      const back = await loadHfModel(modelFilesFromMap('sharded', m.files));
      const want = parseSafetensors(f32.files.get('model.safetensors')!);
      for (const n of ['model.layers.0.self_attn.q_proj.weight', 'model.embed_tokens.weight']) {
        const exact = want.getF32(n);
        const rounded = dtype === 'BF16' ? bf16ToF32(f32ToBf16(exact)) : f16ToF32(f32ToF16(exact));
        expect(back.tensorInfo(n).dtype).toBe(dtype);
        expect(Array.from(back.getF32(n))).toEqual(Array.from(rounded));
      }
    }
  });

  it('refuses adapters it cannot merge, naming why', async () => {
    const { files, hf, adapter } = await adapterOn('tiny-gpt2', { method: 'ia3', ia3: { targetModules: ['c_attn', 'mlp.c_proj'], feedforwardModules: ['mlp.c_proj'] } });
    await expect(mergeAdapter(files, hf, adapter)).rejects.toThrow(/merging is for LoRA and DoRA adapters; this one is IA3/);
    // a LoRA adapter made for another model
    const llama = await adapterOn('tiny-llama', { method: 'lora', lora: { r: 2, alpha: 4, dropout: 0, targetModules: ['q_proj'], useRslora: false } });
    await expect(mergeAdapter(files, hf, llama.adapter)).rejects.toThrow(/changes model\.layers\.0\.self_attn\.q_proj, which tiny-gpt2 does not have/);
    await expect(mergeAdapter(files, hf, { ...llama.adapter, config: '{"peft_type": "LORA", "r": 0}' })).rejects.toThrow(MergeError);
  });
});

describe('16-bit encodings', () => {
  it('round to nearest even and keep zeros, infinities, NaN and subnormals', () => {
    const x = Float32Array.from([0, -0, 1, -2.5, 65504, 65520, 1e-8, 6.1e-5, 5.96e-8, 3.0e-8, Infinity, -Infinity, NaN, 1 + 2 ** -8, 1 + 3 * 2 ** -11, 3.4e38]);
    const h = f16ToF32(f32ToF16(x));
    expect(Array.from(h.slice(0, 6))).toEqual([0, -0, 1, -2.5, 65504, Infinity]); // 65520 rounds up past the largest half
    expect(h[6]).toBe(0); // below half the smallest subnormal
    expect(h[7]).toBeCloseTo(6.1e-5, 7);
    expect(h[8]).toBe(2 ** -24); // the smallest subnormal
    expect(h[9]).toBe(2 ** -24); // just above half the smallest subnormal: rounds up to it
    expect([h[10], h[11]]).toEqual([Infinity, -Infinity]);
    expect(Number.isNaN(h[12])).toBe(true);
    expect(h[13]).toBe(1 + 2 ** -8); // exact in 10 mantissa bits
    expect(h[14]).toBe(1 + 2 ** -9); // 1.5 ulps above 1: a tie, to the even 2 ulps
    expect(h[15]).toBe(Infinity);
    const b = bf16ToF32(f32ToBf16(Float32Array.from([1, 1 + 2 ** -8, 1 + 3 * 2 ** -8, -3.5, NaN, Infinity])));
    expect(Array.from(b.slice(0, 4))).toEqual([1, 1, 1 + 4 * 2 ** -8, -3.5]); // ties to even
    expect(Number.isNaN(b[4])).toBe(true);
    expect(b[5]).toBe(Infinity);
  });
});
