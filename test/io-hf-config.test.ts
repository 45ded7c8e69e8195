import { existsSync, readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { HfConfigError, parseHfConfig, type GPT2Config, type LlamaConfig } from '../src/io/hf-config';

const STORIES_CONFIG = new URL('../../shared/models/stories260K-hf/config.json', import.meta.url).pathname;
const haveShared = existsSync(STORIES_CONFIG);
if (!haveShared) console.warn(`skipping stories260K config test: ${STORIES_CONFIG} not found (../shared is absent)`);

function expectConfigError(json: unknown, ...patterns: RegExp[]) {
  let caught: unknown;
  try {
    parseHfConfig(json, 'my-model/config.json');
  } catch (e) {
    caught = e;
  }
  expect(caught).toBeInstanceOf(HfConfigError);
  expect((caught as Error).message).toContain('my-model/config.json');
  for (const p of patterns) expect((caught as Error).message).toMatch(p);
}

// The fields of the Hub's openai-community/gpt2 config.json that matter here.
const gpt2Json = {
  activation_function: 'gelu_new',
  architectures: ['GPT2LMHeadModel'],
  bos_token_id: 50256,
  eos_token_id: 50256,
  layer_norm_epsilon: 1e-5,
  model_type: 'gpt2',
  n_ctx: 1024,
  n_embd: 768,
  n_head: 12,
  n_inner: null,
  n_layer: 12,
  n_positions: 1024,
  vocab_size: 50257,
};

// Qwen2.5-0.5B-Instruct's config.json (abridged).
const qwen2Json = {
  architectures: ['Qwen2ForCausalLM'],
  bos_token_id: 151643,
  eos_token_id: 151645,
  hidden_act: 'silu',
  hidden_size: 896,
  intermediate_size: 4864,
  max_position_embeddings: 32768,
  max_window_layers: 21,
  model_type: 'qwen2',
  num_attention_heads: 14,
  num_hidden_layers: 24,
  num_key_value_heads: 2,
  rms_norm_eps: 1e-6,
  rope_theta: 1000000.0,
  sliding_window: 32768,
  tie_word_embeddings: true,
  torch_dtype: 'bfloat16',
  use_sliding_window: false,
  vocab_size: 151936,
};

describe('parseHfConfig', () => {
  it.skipIf(!haveShared)('reads the stories260K Llama config', () => {
    const c = parseHfConfig(JSON.parse(readFileSync(STORIES_CONFIG, 'utf8')), 'config.json') as LlamaConfig;
    expect(c).toMatchObject({
      family: 'llama',
      model_type: 'llama',
      hidden_size: 64,
      intermediate_size: 172,
      num_hidden_layers: 5,
      num_attention_heads: 8,
      num_key_value_heads: 4,
      head_dim: 8,
      vocab_size: 512,
      max_position_embeddings: 512,
      rms_norm_eps: 1e-5,
      rope_theta: 10000,
      rope_scaling: null,
      tie_word_embeddings: true,
      attention_bias: false,
      attention_output_bias: false,
      mlp_bias: false,
      qk_norm: false,
      dtype: 'float32',
      bos_token_id: 1,
      eos_token_ids: [2],
      pad_token_id: null,
      architectures: ['LlamaForCausalLM'],
    });
    expect(c.raw.transformers_version).toBe('4.40.0');
  });

  it('reads GPT-2 with its defaults (n_inner null = 4*n_embd, tied head)', () => {
    const c = parseHfConfig(gpt2Json) as GPT2Config;
    expect(c).toMatchObject({
      family: 'gpt2',
      n_embd: 768,
      n_layer: 12,
      n_head: 12,
      n_inner: 3072,
      n_positions: 1024,
      vocab_size: 50257,
      layer_norm_epsilon: 1e-5,
      activation_function: 'gelu_new',
      tie_word_embeddings: true,
      dtype: null,
      eos_token_ids: [50256],
    });
    const minimal = parseHfConfig({ model_type: 'gpt2', n_embd: 64, n_layer: 2, n_head: 4, vocab_size: 100, dtype: 'float16' }) as GPT2Config;
    expect(minimal).toMatchObject({ n_positions: 1024, layer_norm_epsilon: 1e-5, activation_function: 'gelu_new', n_inner: 256, dtype: 'float16' });
    expect((parseHfConfig({ ...gpt2Json, tie_word_embeddings: false }) as GPT2Config).tie_word_embeddings).toBe(false);
  });

  it('reads Qwen2: q/k/v bias but no o_proj bias, sliding window off, dtype from torch_dtype', () => {
    const c = parseHfConfig(qwen2Json) as LlamaConfig;
    expect(c).toMatchObject({
      family: 'llama',
      model_type: 'qwen2',
      head_dim: 64,
      num_key_value_heads: 2,
      rope_theta: 1e6,
      attention_bias: true,
      attention_output_bias: false,
      sliding_window: null,
      tie_word_embeddings: true,
      dtype: 'bfloat16',
      qk_norm: false,
    });
  });

  it('reads Qwen3 with an explicit head_dim that is not hidden/heads, and q/k norms', () => {
    const c = parseHfConfig({
      model_type: 'qwen3',
      hidden_size: 1024,
      intermediate_size: 3072,
      num_hidden_layers: 28,
      num_attention_heads: 16,
      num_key_value_heads: 8,
      head_dim: 128,
      vocab_size: 151936,
      attention_bias: false,
      dtype: 'bfloat16',
    }) as LlamaConfig;
    expect(c).toMatchObject({ head_dim: 128, qk_norm: true, attention_bias: false, max_position_embeddings: 32768, rms_norm_eps: 1e-6, tie_word_embeddings: false });
  });

  it('applies Llama defaults: kv heads = heads, head_dim = hidden/heads', () => {
    const c = parseHfConfig({ model_type: 'llama', hidden_size: 96, intermediate_size: 256, num_hidden_layers: 2, num_attention_heads: 6, vocab_size: 32 }) as LlamaConfig;
    expect(c).toMatchObject({ num_key_value_heads: 6, head_dim: 16, rope_theta: 10000, rms_norm_eps: 1e-6, max_position_embeddings: 2048, hidden_act: 'silu', dtype: null });
    const biased = parseHfConfig({ model_type: 'llama', hidden_size: 96, intermediate_size: 256, num_hidden_layers: 2, num_attention_heads: 6, vocab_size: 32, attention_bias: true }) as LlamaConfig;
    expect([biased.attention_bias, biased.attention_output_bias]).toEqual([true, true]);
  });

  it('normalizes Llama 3 rope_scaling and transformers 5 rope_parameters', () => {
    const base = { model_type: 'llama', hidden_size: 64, intermediate_size: 128, num_hidden_layers: 1, num_attention_heads: 4, vocab_size: 10 };
    const old = parseHfConfig({ ...base, rope_theta: 500000, rope_scaling: { type: 'llama3', factor: 32, low_freq_factor: 1, high_freq_factor: 4, original_max_position_embeddings: 8192 } }) as LlamaConfig;
    expect(old.rope_theta).toBe(500000);
    expect(old.rope_scaling).toEqual({ rope_type: 'llama3', factor: 32, low_freq_factor: 1, high_freq_factor: 4, original_max_position_embeddings: 8192 });
    const v5 = parseHfConfig({ ...base, rope_parameters: { rope_type: 'llama3', rope_theta: 500000, factor: 8 } }) as LlamaConfig;
    expect(v5.rope_theta).toBe(500000);
    expect(v5.rope_scaling).toEqual({ rope_type: 'llama3', factor: 8 });
    const plain = parseHfConfig({ ...base, rope_parameters: { rope_type: 'default', rope_theta: 1e6 } }) as LlamaConfig;
    expect([plain.rope_theta, plain.rope_scaling]).toEqual([1e6, null]);
  });

  it('reads eos_token_id lists and BERT/DistilBERT configs', () => {
    const c = parseHfConfig({ model_type: 'llama', hidden_size: 64, intermediate_size: 128, num_hidden_layers: 1, num_attention_heads: 4, vocab_size: 10, eos_token_id: [7, 9] });
    expect(c.eos_token_ids).toEqual([7, 9]);
    expect(parseHfConfig({ model_type: 'bert', hidden_size: 128, num_hidden_layers: 2, num_attention_heads: 2, intermediate_size: 512, vocab_size: 30522 })).toMatchObject({
      family: 'bert',
      type_vocab_size: 2,
      layer_norm_eps: 1e-12,
      max_position_embeddings: 512,
    });
    expect(parseHfConfig({ model_type: 'distilbert', dim: 768, n_layers: 6, n_heads: 12, hidden_dim: 3072, vocab_size: 30522 })).toMatchObject({
      family: 'distilbert',
      activation: 'gelu',
    });
  });

  it('rejects unknown architectures, listing the supported ones', () => {
    expectConfigError({ model_type: 'mamba' }, /"mamba" is not supported/, /gpt2, llama, mistral, qwen2, qwen3, bert, distilbert/);
    expectConfigError({ hidden_size: 3 }, /no "model_type"/, /supported: gpt2/);
    expectConfigError([1], /not a JSON object/);
  });

  it('rejects missing or inconsistent sizes, naming the field', () => {
    expectConfigError({ ...gpt2Json, n_embd: undefined }, /"n_embd"/);
    expectConfigError({ ...gpt2Json, n_layer: 0 }, /"n_layer" must be a positive integer/);
    expectConfigError({ ...gpt2Json, n_head: 7 }, /not divisible by n_head 7/);
    expectConfigError({ ...qwen2Json, num_key_value_heads: 3 }, /not a multiple of num_key_value_heads 3/);
    expectConfigError({ ...qwen2Json, hidden_size: 900 }, /not divisible by num_attention_heads/);
    expectConfigError({ ...qwen2Json, rms_norm_eps: 'small' }, /"rms_norm_eps"/);
    expectConfigError({ ...qwen2Json, tie_word_embeddings: 'yes' }, /"tie_word_embeddings" must be true or false/);
    expectConfigError({ ...qwen2Json, rope_scaling: { factor: 2 } }, /rope_type/);
  });

  it('rejects unknown dtypes and quantized checkpoints', () => {
    expectConfigError({ ...qwen2Json, torch_dtype: 'int4' }, /"torch_dtype" is "int4"/);
    expectConfigError({ ...qwen2Json, quantization_config: { quant_method: 'gptq' } }, /quantized/, /gptq/);
    expect(parseHfConfig({ ...qwen2Json, torch_dtype: undefined, dtype: 'torch.float16' }).dtype).toBe('float16');
  });
});
