// Validates a Hugging Face config.json and normalizes it into typed configs for the architectures
// the engine implements. Field names stay as in the Hugging Face files so they can be looked up
// in the transformers documentation; defaults are those of the transformers config classes.

export class HfConfigError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'HfConfigError';
  }
}

export const SUPPORTED_MODEL_TYPES = ['gpt2', 'llama', 'mistral', 'qwen2', 'qwen3', 'bert', 'distilbert'] as const;
export type ModelType = (typeof SUPPORTED_MODEL_TYPES)[number];
export type LlamaFamilyType = 'llama' | 'mistral' | 'qwen2' | 'qwen3';

/** Storage dtype the checkpoint was saved in (`torch_dtype`, renamed `dtype` in newer transformers). */
export type ConfigDType = 'float32' | 'float16' | 'bfloat16' | 'float64';

interface ConfigBase {
  /** Which engine implementation runs it. */
  family: 'gpt2' | 'llama' | 'bert' | 'distilbert';
  model_type: ModelType;
  architectures: string[];
  dtype: ConfigDType | null;
  vocab_size: number;
  bos_token_id: number | null;
  /** eos_token_id may be a list in config.json (Llama 3); always a list here, possibly empty. */
  eos_token_ids: number[];
  pad_token_id: number | null;
  /** The parsed config.json as it was. */
  raw: Record<string, unknown>;
}

export interface GPT2Config extends ConfigBase {
  family: 'gpt2';
  model_type: 'gpt2';
  n_embd: number;
  n_layer: number;
  n_head: number;
  /** MLP width; config.json's null means 4 * n_embd. */
  n_inner: number;
  n_positions: number;
  layer_norm_epsilon: number;
  activation_function: string;
  tie_word_embeddings: boolean;
}

export interface LlamaConfig extends ConfigBase {
  family: 'llama';
  model_type: LlamaFamilyType;
  hidden_size: number;
  intermediate_size: number;
  num_hidden_layers: number;
  num_attention_heads: number;
  num_key_value_heads: number;
  head_dim: number;
  rms_norm_eps: number;
  rope_theta: number;
  /** e.g. {rope_type: 'llama3', factor, ...}; `type` is renamed `rope_type`. null for plain RoPE. */
  rope_scaling: Record<string, unknown> | null;
  tie_word_embeddings: boolean;
  /** Bias on the q, k and v projections (always true for Qwen2). */
  attention_bias: boolean;
  /** Bias on o_proj (Llama's attention_bias covers it; Qwen2 has none there). */
  attention_output_bias: boolean;
  mlp_bias: boolean;
  /** Qwen3 RMS-normalizes q and k per head before RoPE. */
  qk_norm: boolean;
  max_position_embeddings: number;
  hidden_act: string;
  /** Window of sliding-window attention, null when attention is full. */
  sliding_window: number | null;
}

export interface BertConfig extends ConfigBase {
  family: 'bert';
  model_type: 'bert';
  hidden_size: number;
  num_hidden_layers: number;
  num_attention_heads: number;
  intermediate_size: number;
  max_position_embeddings: number;
  type_vocab_size: number;
  layer_norm_eps: number;
  hidden_act: string;
}

export interface DistilBertConfig extends ConfigBase {
  family: 'distilbert';
  model_type: 'distilbert';
  dim: number;
  n_layers: number;
  n_heads: number;
  hidden_dim: number;
  max_position_embeddings: number;
  activation: string;
  sinusoidal_pos_embds: boolean;
}

export type HfConfig = GPT2Config | LlamaConfig | BertConfig | DistilBertConfig;

const LLAMA_DEFAULTS: Record<LlamaFamilyType, { max_position_embeddings: number }> = {
  llama: { max_position_embeddings: 2048 },
  mistral: { max_position_embeddings: 4096 * 32 },
  qwen2: { max_position_embeddings: 32768 },
  qwen3: { max_position_embeddings: 32768 },
};

export function parseHfConfig(json: unknown, fileName = 'config.json'): HfConfig {
  const fail = (msg: string): never => {
    throw new HfConfigError(`${fileName}: ${msg}`);
  };
  if (typeof json !== 'object' || json === null || Array.isArray(json)) fail('is not a JSON object');
  const raw = json as Record<string, unknown>;

  const modelType = raw.model_type;
  if (typeof modelType !== 'string') {
    fail(`has no "model_type" (supported: ${SUPPORTED_MODEL_TYPES.join(', ')})`);
  }
  if (!(SUPPORTED_MODEL_TYPES as readonly string[]).includes(modelType as string)) {
    fail(`model_type "${modelType}" is not supported (supported: ${SUPPORTED_MODEL_TYPES.join(', ')})`);
  }
  if (raw.quantization_config !== undefined && raw.quantization_config !== null) {
    const method = (raw.quantization_config as { quant_method?: unknown }).quant_method;
    fail(`is a quantized checkpoint (${typeof method === 'string' ? method : 'quantization_config'}); load the unquantized float weights instead`);
  }

  // Field readers: `req` for what has no sensible default, `opt` with the transformers default.
  const posInt = (key: string, v: unknown): number => {
    if (!Number.isSafeInteger(v) || (v as number) <= 0) fail(`"${key}" must be a positive integer, got ${JSON.stringify(v)}`);
    return v as number;
  };
  const req = (key: string): number => {
    if (raw[key] === undefined || raw[key] === null) fail(`is missing "${key}" (required for model_type ${modelType})`);
    return posInt(key, raw[key]);
  };
  const optInt = (key: string, dflt: number): number => (raw[key] === undefined || raw[key] === null ? dflt : posInt(key, raw[key]));
  const optNum = (key: string, dflt: number): number => {
    const v = raw[key];
    if (v === undefined || v === null) return dflt;
    if (typeof v !== 'number' || !Number.isFinite(v) || v <= 0) fail(`"${key}" must be a positive number, got ${JSON.stringify(v)}`);
    return v as number;
  };
  const optBool = (key: string, dflt: boolean): boolean => {
    const v = raw[key];
    if (v === undefined || v === null) return dflt;
    if (typeof v !== 'boolean') fail(`"${key}" must be true or false, got ${JSON.stringify(v)}`);
    return v as boolean;
  };
  const optStr = (key: string, dflt: string): string => {
    const v = raw[key];
    if (v === undefined || v === null) return dflt;
    if (typeof v !== 'string') fail(`"${key}" must be a string, got ${JSON.stringify(v)}`);
    return v as string;
  };
  const tokenId = (key: string): number | null => {
    const v = raw[key];
    if (v === undefined || v === null) return null;
    if (!Number.isSafeInteger(v) || (v as number) < 0) fail(`"${key}" must be a token id, got ${JSON.stringify(v)}`);
    return v as number;
  };
  const eosIds = (): number[] => {
    const v = raw.eos_token_id;
    if (v === undefined || v === null) return [];
    const list = Array.isArray(v) ? v : [v];
    if (!list.every((x) => Number.isSafeInteger(x) && x >= 0)) fail(`"eos_token_id" must be a token id or a list of them, got ${JSON.stringify(v)}`);
    return list as number[];
  };

  const architectures = Array.isArray(raw.architectures) ? raw.architectures.filter((a): a is string => typeof a === 'string') : [];
  const base = {
    architectures,
    dtype: parseDType(raw, fail),
    bos_token_id: tokenId('bos_token_id'),
    eos_token_ids: eosIds(),
    pad_token_id: tokenId('pad_token_id'),
    raw,
  };

  switch (modelType as ModelType) {
    case 'gpt2': {
      const n_embd = req('n_embd');
      const n_head = req('n_head');
      if (n_embd % n_head !== 0) fail(`n_embd ${n_embd} is not divisible by n_head ${n_head}`);
      return {
        ...base,
        family: 'gpt2',
        model_type: 'gpt2',
        vocab_size: req('vocab_size'),
        n_embd,
        n_layer: req('n_layer'),
        n_head,
        n_inner: optInt('n_inner', 4 * n_embd),
        n_positions: optInt('n_positions', 1024),
        layer_norm_epsilon: optNum('layer_norm_epsilon', 1e-5),
        activation_function: optStr('activation_function', 'gelu_new'),
        tie_word_embeddings: optBool('tie_word_embeddings', true),
      };
    }
    case 'llama':
    case 'mistral':
    case 'qwen2':
    case 'qwen3': {
      const type = modelType as LlamaFamilyType;
      const hidden_size = req('hidden_size');
      const num_attention_heads = req('num_attention_heads');
      const num_key_value_heads = optInt('num_key_value_heads', num_attention_heads);
      if (num_attention_heads % num_key_value_heads !== 0) {
        fail(`num_attention_heads ${num_attention_heads} is not a multiple of num_key_value_heads ${num_key_value_heads}`);
      }
      if (raw.head_dim == null && hidden_size % num_attention_heads !== 0) {
        fail(`hidden_size ${hidden_size} is not divisible by num_attention_heads ${num_attention_heads} and there is no head_dim`);
      }
      const head_dim = optInt('head_dim', hidden_size / num_attention_heads);
      if (head_dim % 2 !== 0) fail(`head_dim ${head_dim} must be even for rotary embeddings`);
      const rope = parseRope(raw, fail);
      // Qwen2 always has q/k/v biases and no o_proj bias; its config has no attention_bias field.
      const qkvBias = type === 'qwen2' ? true : optBool('attention_bias', false);
      const oBias = type === 'qwen2' ? false : qkvBias;
      const useSliding = type === 'mistral' ? true : optBool('use_sliding_window', false);
      const window = raw.sliding_window;
      let sliding_window: number | null = null;
      if (useSliding && window !== undefined && window !== null) sliding_window = posInt('sliding_window', window);
      return {
        ...base,
        family: 'llama',
        model_type: type,
        vocab_size: req('vocab_size'),
        hidden_size,
        intermediate_size: req('intermediate_size'),
        num_hidden_layers: req('num_hidden_layers'),
        num_attention_heads,
        num_key_value_heads,
        head_dim,
        rms_norm_eps: optNum('rms_norm_eps', 1e-6),
        rope_theta: rope.theta,
        rope_scaling: rope.scaling,
        tie_word_embeddings: optBool('tie_word_embeddings', false),
        attention_bias: qkvBias,
        attention_output_bias: oBias,
        mlp_bias: optBool('mlp_bias', false),
        qk_norm: type === 'qwen3',
        max_position_embeddings: optInt('max_position_embeddings', LLAMA_DEFAULTS[type].max_position_embeddings),
        hidden_act: optStr('hidden_act', 'silu'),
        sliding_window,
      };
    }
    case 'bert': {
      const hidden_size = req('hidden_size');
      const num_attention_heads = req('num_attention_heads');
      if (hidden_size % num_attention_heads !== 0) fail(`hidden_size ${hidden_size} is not divisible by num_attention_heads ${num_attention_heads}`);
      return {
        ...base,
        family: 'bert',
        model_type: 'bert',
        vocab_size: req('vocab_size'),
        hidden_size,
        num_hidden_layers: req('num_hidden_layers'),
        num_attention_heads,
        intermediate_size: req('intermediate_size'),
        max_position_embeddings: optInt('max_position_embeddings', 512),
        type_vocab_size: optInt('type_vocab_size', 2),
        layer_norm_eps: optNum('layer_norm_eps', 1e-12),
        hidden_act: optStr('hidden_act', 'gelu'),
      };
    }
    case 'distilbert': {
      const dim = req('dim');
      const n_heads = req('n_heads');
      if (dim % n_heads !== 0) fail(`dim ${dim} is not divisible by n_heads ${n_heads}`);
      return {
        ...base,
        family: 'distilbert',
        model_type: 'distilbert',
        vocab_size: req('vocab_size'),
        dim,
        n_layers: req('n_layers'),
        n_heads,
        hidden_dim: req('hidden_dim'),
        max_position_embeddings: optInt('max_position_embeddings', 512),
        activation: optStr('activation', 'gelu'),
        sinusoidal_pos_embds: optBool('sinusoidal_pos_embds', false),
      };
    }
  }
  // Unreachable: model_type was checked against SUPPORTED_MODEL_TYPES above.
  return fail(`model_type "${modelType}" is not supported`);
}

function parseDType(raw: Record<string, unknown>, fail: (msg: string) => never): ConfigDType | null {
  const key = raw.dtype !== undefined && raw.dtype !== null ? 'dtype' : 'torch_dtype';
  const v = raw[key];
  if (v === undefined || v === null) return null;
  if (typeof v !== 'string') fail(`"${key}" must be a string, got ${JSON.stringify(v)}`);
  const name = (v as string).replace(/^torch\./, '');
  const known: ConfigDType[] = ['float32', 'float16', 'bfloat16', 'float64'];
  if (!(known as string[]).includes(name)) fail(`"${key}" is "${v}"; expected one of ${known.join(', ')}`);
  return name as ConfigDType;
}

/**
 * rope_theta and rope_scaling, from the classic fields or from transformers 5's `rope_parameters`
 * ({rope_type, rope_theta, ...}), whichever the file has.
 */
function parseRope(
  raw: Record<string, unknown>,
  fail: (msg: string) => never,
): { theta: number; scaling: Record<string, unknown> | null } {
  const params = raw.rope_parameters;
  if (params !== undefined && params !== null && (typeof params !== 'object' || Array.isArray(params))) {
    fail(`"rope_parameters" must be an object, got ${JSON.stringify(params)}`);
  }
  const p = (params ?? {}) as Record<string, unknown>;
  const thetaRaw = raw.rope_theta ?? p.rope_theta ?? 10000;
  if (typeof thetaRaw !== 'number' || !Number.isFinite(thetaRaw) || thetaRaw <= 0) {
    fail(`"rope_theta" must be a positive number, got ${JSON.stringify(thetaRaw)}`);
  }
  let scaling: Record<string, unknown> | null = null;
  const s = raw.rope_scaling;
  if (s !== undefined && s !== null) {
    if (typeof s !== 'object' || Array.isArray(s)) fail(`"rope_scaling" must be an object or null, got ${JSON.stringify(s)}`);
    scaling = { ...(s as Record<string, unknown>) };
  } else if (params && typeof p.rope_type === 'string' && p.rope_type !== 'default') {
    const { rope_theta: _theta, ...rest } = p;
    scaling = rest;
  }
  if (scaling) {
    // Older configs spell rope_type as `type`.
    if (scaling.rope_type === undefined && scaling.type !== undefined) {
      scaling.rope_type = scaling.type;
      delete scaling.type;
    }
    if (typeof scaling.rope_type !== 'string') fail(`"rope_scaling" has no rope_type: ${JSON.stringify(s ?? params)}`);
    if (scaling.rope_type === 'default') scaling = null;
  }
  return { theta: thetaRaw as number, scaling };
}
