// The pieces around the non-LoRA methods: PEFT's TEXT-init id rule, prompt tuning's TEXT and
// vocabulary-sample inits from the model's embedding table, the virtual-row batch layout the
// program uploads, the importer's checks, and the method-specific refusals.
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { testGpu, rng } from './helpers/gpu';
import { nodeModelFiles } from '../src/io/model-files-node';
import { loadHfModel } from '../src/io/model-files';
import { loadCausalLM } from '../src/engine/models/registry';
import { VIRTUAL_TOKEN_ID, lossTargetCount } from '../src/engine/models/program';
import { StepUniforms } from '../src/engine/kernels/step-uniforms';
import { createPeftMethod, peftModelInfo, prefixDims } from '../src/engine/peft/factory';
import { PromptTuning, normalValues, textInitIds } from '../src/engine/peft/prompt-tuning';
import { PrefixTuning } from '../src/engine/peft/prefix-tuning';
import { Ia3 } from '../src/engine/peft/ia3';
import { AdapterError, importPeftAdapter } from '../src/engine/peft/import';
import { exportPeftAdapter } from '../src/engine/export/peft-export';
import { methodFromArgs } from '../src/cli/peft-args';
import { parseSafetensors } from '../src/io/safetensors';

const FIX = path.join(__dirname, 'fixtures');

describe('prompt tuning init', () => {
  it("TEXT ids are PEFT's: cut to n, or repeated ceil(n / len) times and cut", () => {
    expect(textInitIds([5, 6, 7, 8], 3)).toEqual([5, 6, 7]);
    expect(textInitIds([5, 6, 7], 3)).toEqual([5, 6, 7]);
    expect(textInitIds([5, 6], 5)).toEqual([5, 6, 5, 6, 5]);
    expect(() => textInitIds([], 2)).toThrow(/no tokens/);
  });

  it('RANDOM is standard normal (nn.Embedding)', () => {
    const v = normalValues(20000, rng(1));
    const mean = v.reduce((s, x) => s + x, 0) / v.length;
    const sd = Math.sqrt(v.reduce((s, x) => s + (x - mean) ** 2, 0) / v.length);
    expect(Math.abs(mean)).toBeLessThan(0.03);
    expect(Math.abs(sd - 1)).toBeLessThan(0.03);
  });

  it('TEXT and SAMPLE_VOCAB copy rows of the model\'s token embedding table', async () => {
    const gpu = await testGpu();
    const hf = await loadHfModel(nodeModelFiles(path.join(FIX, 'tiny-llama')));
    // split into 3 blocks: rows come from the right block
    const { model } = loadCausalLM(gpu, hf, { maxChunkBytes: 150 * 32 * 4 });
    const info = peftModelInfo(hf.config, model.linearModules());
    const table = hf.getF32('model.embed_tokens.weight');
    const C = info.hidden;
    const text = new PromptTuning(gpu, { numVirtualTokens: 5, init: 'text', initText: 'x' }, { hidden: C, layers: info.layers, heads: info.heads, vocab: info.vocab });
    expect(text.initialize(model, { random: rng(1), tokenize: () => [3, 200, 359] })).toEqual([3, 200, 359, 3, 200]);
    const got = await gpu.read(text.embeddings.value);
    [3, 200, 359, 3, 200].forEach((id, i) => expect(Array.from(got.subarray(i * C, (i + 1) * C))).toEqual(Array.from(table.subarray(id * C, (id + 1) * C))));
    const vocab = new PromptTuning(gpu, { numVirtualTokens: 4, init: 'vocab' }, { hidden: C, layers: info.layers, heads: info.heads, vocab: info.vocab });
    const ids = vocab.initialize(model, { random: rng(2) });
    expect(ids.length).toBe(4);
    expect(ids.every((id) => Number.isInteger(id) && id >= 0 && id < info.vocab)).toBe(true);
    const gv = await gpu.read(vocab.embeddings.value);
    ids.forEach((id, i) => expect(Array.from(gv.subarray(i * C, (i + 1) * C))).toEqual(Array.from(table.subarray(id * C, (id + 1) * C))));
    expect(() => new PromptTuning(gpu, { numVirtualTokens: 4, init: 'text' }, { hidden: C, layers: 2, heads: 4, vocab: 360 })).toThrow(/init text/);
    expect(() => new PromptTuning(gpu, { numVirtualTokens: 0, init: 'random' }, { hidden: C, layers: 2, heads: 4, vocab: 360 })).toThrow(/positive integer/);
  });
});

describe('program with virtual tokens', () => {
  it('uploads each row as n virtual positions then the tokens; the last virtual one predicts the first token', async () => {
    const gpu = await testGpu();
    const hf = await loadHfModel(nodeModelFiles(path.join(FIX, 'tiny-gpt2')));
    const { model } = loadCausalLM(gpu, hf);
    const info = peftModelInfo(hf.config, model.linearModules());
    const pt = createPeftMethod(gpu, { method: 'prompt', prompt: { numVirtualTokens: 2, init: 'random' } }, info, model, new StepUniforms(gpu), { random: rng(1) });
    const B = 2, T = 3;
    const batch = {
      B, T, inputIds: Uint32Array.from([10, 11, 12, 20, 21, 0]), targets: Int32Array.from([11, 12, -100, 21, -100, -100]),
      lengths: Uint32Array.from([3, 2]), validTargets: 3, firstTargets: Int32Array.from([10, -100]),
    };
    const program = model.buildProgram(pt, { B, T, training: false, captureLogits: true });
    expect(program.T).toBe(T);
    expect(program.virtualTokens).toBe(2);
    program.write(batch);
    const V = VIRTUAL_TOKEN_ID;
    expect(Array.from(await gpu.read(program.tokens, 'u32'))).toEqual([V, V, 10, 11, 12, V, V, 20, 21, 0]);
    expect(Array.from(await gpu.read(program.targets, 'i32'))).toEqual([-100, 10, 11, 12, -100, -100, -100, 21, -100, -100]);
    expect(Array.from(await gpu.read(program.lengths, 'u32'))).toEqual([5, 4]);
    expect(lossTargetCount(batch, 2)).toBe(4);
    expect(lossTargetCount(batch, 0)).toBe(3);
    expect(program.logits!.shape).toEqual([B * T, model.V]);
    expect(() => model.buildProgram(pt, { B: 1, T: 63, training: false })).toThrow(/plus 2 virtual tokens is longer/);
    program.destroy();
  });
});

describe('method checks', () => {
  it('prefix tuning refuses models whose head_dim is not hidden / heads (PEFT sizes the prefix from hidden)', async () => {
    const gpu = await testGpu();
    const hf = await loadHfModel(nodeModelFiles(path.join(FIX, 'tiny-qwen3')));
    const { model } = loadCausalLM(gpu, hf);
    const pre = new PrefixTuning(gpu, { numVirtualTokens: 2, projection: false }, prefixDims(peftModelInfo(hf.config, model.linearModules())), rng(1));
    expect(() => model.buildProgram(pre, { B: 1, T: 4, training: true })).toThrow(/head_dim/);
    expect(() => new PrefixTuning(gpu, { numVirtualTokens: 2, projection: false, encoderHiddenSize: 7 }, { layers: 2, kvHeads: 2, headDim: 8 }, rng(1))).toThrow(/projection/);
  });

  it('IA3 refuses feedforward modules that are not targets, and targets that match nothing', async () => {
    const gpu = await testGpu();
    const hf = await loadHfModel(nodeModelFiles(path.join(FIX, 'tiny-llama')));
    const { model } = loadCausalLM(gpu, hf);
    expect(() => new Ia3(gpu, { targetModules: ['k_proj'], feedforwardModules: ['down_proj'] }, model.linearModules())).toThrow(/must also be target/);
    expect(() => new Ia3(gpu, { targetModules: ['c_attn'], feedforwardModules: [] }, model.linearModules())).toThrow(/match no layer/);
  });

  it('the importer names what does not fit the model', async () => {
    const gpu = await testGpu();
    const gpt2 = await loadHfModel(nodeModelFiles(path.join(FIX, 'tiny-gpt2')));
    const llama = await loadHfModel(nodeModelFiles(path.join(FIX, 'tiny-llama')));
    const g = loadCausalLM(gpu, gpt2).model, l = loadCausalLM(gpu, llama).model;
    const gi = peftModelInfo(gpt2.config, g.linearModules()), li = peftModelInfo(llama.config, l.linearModules());
    const step = new StepUniforms(gpu);
    // a prefix trained on tiny-gpt2 (token_dim 32) onto tiny-llama (GQA: token_dim 16)
    const pre = createPeftMethod(gpu, { method: 'prefix', prefix: { numVirtualTokens: 2, projection: false } }, gi, g, step, { random: rng(1) });
    const files = await exportPeftAdapter(gpu, pre, 'tiny-gpt2');
    const asIn = { name: 'p', config: files['adapter_config.json'], weights: files['adapter_model.safetensors'] };
    expect(importPeftAdapter(gpu, asIn, gi, step).kind).toBe('prefix');
    expect(() => importPeftAdapter(gpu, asIn, li, step)).toThrow(AdapterError);
    expect(() => importPeftAdapter(gpu, asIn, li, step)).toThrow(/token_dim is 32, this model needs 16/);
    // an IA3 adapter of tiny-gpt2 onto tiny-llama: its targets match no layer
    const ia3 = createPeftMethod(gpu, { method: 'ia3', ia3: { targetModules: ['c_attn', 'mlp.c_proj'], feedforwardModules: ['mlp.c_proj'] } }, gi, g, step, { random: rng(1) });
    const f2 = await exportPeftAdapter(gpu, ia3, 'tiny-gpt2');
    const st = parseSafetensors(f2['adapter_model.safetensors']);
    expect(st.tensors.get('base_model.model.transformer.h.0.attn.c_attn.ia3_l')!.shape).toEqual([96, 1]);
    expect(st.tensors.get('base_model.model.transformer.h.1.mlp.c_proj.ia3_l')!.shape).toEqual([1, 128]);
    expect(() => importPeftAdapter(gpu, { name: 'i', config: f2['adapter_config.json'], weights: f2['adapter_model.safetensors'] }, li, step)).toThrow(/match no layer/);
    expect(() => importPeftAdapter(gpu, { name: 'x', config: JSON.stringify({ peft_type: 'BOFT' }), weights: f2['adapter_model.safetensors'] }, gi, step)).toThrow(/BOFT/);
  });

  it('CLI flags: each method takes only its own options', async () => {
    const hf = await loadHfModel(nodeModelFiles(path.join(FIX, 'tiny-llama')));
    const info = peftModelInfo(hf.config, []);
    expect(() => methodFromArgs({ method: 'prompt', rank: '4' }, info, ['q_proj'], 'm')).toThrow(/--rank is an option of --method lora or dora, not prompt/);
    expect(() => methodFromArgs({ method: 'prefix', 'encoder-hidden-size': '8' }, info, [], 'm')).toThrow(/--prefix-projection/);
    expect(() => methodFromArgs({ method: 'boft' }, info, [], 'm')).toThrow(/lora, dora, ia3, prompt, prefix, adapter/);
    expect(() => methodFromArgs({ method: 'prompt', 'prompt-init': 'text' }, info, [], 'm')).toThrow(/--prompt-init-text/);
    const text = methodFromArgs({ method: 'prompt', 'prompt-init-text': 'Hello', 'virtual-tokens': '6' }, info, [], 'm');
    expect(text.spec).toEqual({ method: 'prompt', prompt: { numVirtualTokens: 6, init: 'text', initText: 'Hello', tokenizerNameOrPath: 'm' } });
    // PEFT's IA3 defaults for llama, the feedforward ones cut to the given targets
    expect(methodFromArgs({ method: 'ia3' }, info, [], 'm').spec).toEqual({ method: 'ia3', ia3: { targetModules: ['k_proj', 'v_proj', 'down_proj'], feedforwardModules: ['down_proj'] } });
    expect(methodFromArgs({ method: 'ia3', targets: 'q_proj,v_proj' }, info, [], 'm').spec).toEqual({ method: 'ia3', ia3: { targetModules: ['q_proj', 'v_proj'], feedforwardModules: [] } });
    expect(methodFromArgs({ method: 'prefix', 'prefix-projection': true, 'encoder-hidden-size': '12' }, info, [], 'm').spec)
      .toEqual({ method: 'prefix', prefix: { numVirtualTokens: 20, projection: true, encoderHiddenSize: 12 } });
  });
});
