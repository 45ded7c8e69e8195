// Prefix tuning as PEFT defines it (peft.tuners.prefix_tuning, PeftModel.get_prompt): n learned
// key/value rows in every layer, used as a KV cache that precedes the sequence. The prefix tensor
// is [n, num_layers * 2 * token_dim]; row t holds, layer after layer, that layer's key and then
// its value, each [num_attention_heads, token_dim / num_attention_heads] (PEFT views it as
// [n, L*2, heads, head_dim] and permutes to the cache's per-layer (key, value) pairs). For
// grouped-query models PEFT sizes it by the key/value heads: token_dim = hidden / heads * kv_heads,
// num_attention_heads = kv_heads. The attention masks nothing of the prefix; since transformers
// counts the prefix as cached tokens, the real tokens' positions start at n (GPT-2's wpe, Llama's
// RoPE, BERT's position embeddings through past_key_values_length). The prefix keys are used as
// stored (no RoPE). On BERT classifiers (task_type SEQ_CLS) the attention is bidirectional: every
// real token sees the prefix and the row's unpadded tokens (src/engine/models/encoder.ts).
//
// With prefix_projection the prefix is made during training by Embedding(n, token_dim) -> Linear
// (token_dim, encoder_hidden_size) -> Tanh -> Linear(encoder_hidden_size, L*2*token_dim), run at the
// start of every forward (forwardStart) and back-propagated at the end of every backward
// (backwardEnd). PEFT saves the prefix that MLP makes (get_prompt_embedding_to_save), and so does
// the export here: loaded for inference, either kind is a plain [n, L*2*token_dim] table.

import type { Gpu } from '../gpu/gpu';
import type { Op } from '../gpu/dispatch';
import { runOps } from '../gpu/dispatch';
import type { Tensor } from '../gpu/tensor';
import { matmul } from '../kernels/matmul';
import { sumRows, tanhBackward, tanhForward } from '../kernels/peft-ops';
import type { AttentionPrefix, ExportTensor, LinearSite, PeftMethod, TrainableParam } from './method';
import { normalValues } from './prompt-tuning';

export interface PrefixTuningSettings {
  numVirtualTokens: number;
  /** Train through PEFT's Embedding -> Linear -> Tanh -> Linear reparameterization. */
  projection: boolean;
  /** Width of that MLP's hidden layer (PEFT's default: token_dim). */
  encoderHiddenSize?: number | null;
}

/** The model's attention shape as PEFT's prompt-learning config records it for prefix tuning. */
export interface PrefixModelDims {
  layers: number;
  /** Key/value heads (num_key_value_heads, or num_attention_heads without GQA). */
  kvHeads: number;
  /** Per-head width the attention uses. */
  headDim: number;
}

export class PrefixTuningError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'PrefixTuningError';
  }
}

interface Projection {
  embedding: TrainableParam; // [n, token_dim]
  w1: TrainableParam; b1: TrainableParam; // [enc, token_dim], [enc]
  w2: TrainableParam; b2: TrainableParam; // [L*2*token_dim, enc], [L*2*token_dim]
  h1: Tensor; // [n, enc] before tanh
  act: Tensor; // [n, enc] after tanh
  dAct: Tensor; // [n, enc]
  prefix: Tensor; // [n, L*2*token_dim]
  dPrefix: Tensor;
}

export class PrefixTuning implements PeftMethod {
  readonly kind = 'prefix' as const;
  readonly params: TrainableParam[] = [];
  readonly prefixTokens: number;
  /** PEFT's token_dim: kv heads x head dim. */
  readonly tokenDim: number;
  readonly encoderHiddenSize: number;
  /** [n, L*2*token_dim] without projection: the trained tensor itself. */
  private readonly table: TrainableParam | null = null;
  private readonly proj: Projection | null = null;
  private readonly owned: Tensor[] = [];

  /** `random`: uniform [0, 1) source for the initial values (PEFT's: nn.Embedding N(0, 1), nn.Linear's kaiming-uniform). */
  constructor(
    private readonly gpu: Gpu,
    readonly settings: PrefixTuningSettings,
    readonly dims: PrefixModelDims,
    random: () => number,
  ) {
    const n = settings.numVirtualTokens;
    if (!Number.isInteger(n) || n < 1) throw new PrefixTuningError(`the number of virtual tokens must be a positive integer (got ${n})`);
    this.prefixTokens = n;
    this.tokenDim = dims.kvHeads * dims.headDim;
    const width = dims.layers * 2 * this.tokenDim;
    const enc = settings.encoderHiddenSize ?? this.tokenDim;
    if (!Number.isInteger(enc) || enc < 1) throw new PrefixTuningError(`encoder_hidden_size must be a positive integer (got ${enc})`);
    if (!settings.projection && settings.encoderHiddenSize != null && settings.encoderHiddenSize !== this.tokenDim) {
      throw new PrefixTuningError('an encoder hidden size is only used with the prefix projection');
    }
    this.encoderHiddenSize = enc;
    if (!settings.projection) {
      this.table = this.param('prompt_embeddings', [n, width], normalValues(n * width, random));
      return;
    }
    const uniform = (count: number, fanIn: number): Float32Array => {
      const b = 1 / Math.sqrt(fanIn);
      return Float32Array.from({ length: count }, () => (random() * 2 - 1) * b);
    };
    const td = this.tokenDim;
    const t = (shape: number[], label: string): Tensor => {
      const x = gpu.tensor(shape, label);
      this.owned.push(x);
      return x;
    };
    this.proj = {
      embedding: this.param('prompt_encoder.embedding.weight', [n, td], normalValues(n * td, random)),
      w1: this.param('prompt_encoder.transform.0.weight', [enc, td], uniform(enc * td, td)),
      b1: this.param('prompt_encoder.transform.0.bias', [enc], uniform(enc, td)),
      w2: this.param('prompt_encoder.transform.2.weight', [width, enc], uniform(width * enc, enc)),
      b2: this.param('prompt_encoder.transform.2.bias', [width], uniform(width, enc)),
      h1: t([n, enc], 'prefix.h1'), act: t([n, enc], 'prefix.act'), dAct: t([n, enc], 'prefix.dAct'),
      prefix: t([n, width], 'prefix.kv'), dPrefix: t([n, width], 'prefix.dkv'),
    };
  }

  private param(name: string, shape: number[], init: Float32Array): TrainableParam {
    const g = this.gpu;
    const value = g.tensor(shape, name);
    g.write(value, init);
    const p: TrainableParam = { name, shape, value, grad: g.tensor(shape, `${name}.grad`), m: g.tensor(shape, `${name}.m`), v: g.tensor(shape, `${name}.v`) };
    this.params.push(p);
    return p;
  }

  /** Width of one prefix row: num_layers * 2 * token_dim. */
  get width(): number {
    return this.dims.layers * 2 * this.tokenDim;
  }

  targetsLinear(): boolean {
    return false;
  }

  linearForward(site: LinearSite): Op[] {
    throw new PrefixTuningError(`prefix tuning has no linear layer (${site.module})`);
  }

  linearBackward(site: LinearSite): Op[] {
    throw new PrefixTuningError(`prefix tuning has no linear layer (${site.module})`);
  }

  attentionPrefix(layer: number): AttentionPrefix {
    if (!Number.isInteger(layer) || layer < 0 || layer >= this.dims.layers) throw new PrefixTuningError(`layer ${layer} is outside the prefix's ${this.dims.layers} layers`);
    const value = this.proj ? this.proj.prefix : this.table!.value;
    const grad = this.proj ? this.proj.dPrefix : this.table!.grad;
    return { tokens: this.prefixTokens, value, grad, ld: this.width, keyOffset: 2 * layer * this.tokenDim, valueOffset: (2 * layer + 1) * this.tokenDim };
  }

  /** The reparameterization's forward: prefix = tanh(E W1^T + b1) W2^T + b2. */
  forwardStart(): Op[] {
    const p = this.proj;
    if (!p) return [];
    const n = this.prefixTokens, td = this.tokenDim, enc = this.encoderHiddenSize, w = this.width;
    const g = this.gpu;
    return [
      matmul(g, { label: 'prefix.transform.0', a: p.embedding.value, b: p.w1.value, transB: true, bias: p.b1.value, c: p.h1, M: n, N: enc, K: td }),
      tanhForward(g, { x: p.h1, out: p.act, n: n * enc }),
      matmul(g, { label: 'prefix.transform.2', a: p.act, b: p.w2.value, transB: true, bias: p.b2.value, c: p.prefix, M: n, N: w, K: enc }),
    ];
  }

  /** The layers add into dPrefix: clear it first. */
  backwardStart(): Op[] {
    return this.proj ? [{ kind: 'clear', buffer: this.proj.dPrefix.buffer }] : [];
  }

  /** dPrefix back through the MLP into its parameters' gradients. */
  backwardEnd(): Op[] {
    const p = this.proj;
    if (!p) return [];
    const n = this.prefixTokens, td = this.tokenDim, enc = this.encoderHiddenSize, w = this.width;
    const g = this.gpu;
    return [
      matmul(g, { label: 'prefix.dW2', a: p.dPrefix, transA: true, b: p.act, c: p.w2.grad, M: w, N: enc, K: n, accumulate: true }),
      sumRows(g, { d: p.dPrefix, out: p.b2.grad, B: n, S: 1, n: 1, C: w, accumulate: true }),
      matmul(g, { label: 'prefix.dAct', a: p.dPrefix, b: p.w2.value, c: p.dAct, M: n, N: enc, K: w }),
      tanhBackward(g, { dout: p.dAct, y: p.act, dx: p.dAct, n: n * enc }),
      matmul(g, { label: 'prefix.dW1', a: p.dAct, transA: true, b: p.embedding.value, c: p.w1.grad, M: enc, N: td, K: n, accumulate: true }),
      sumRows(g, { d: p.dAct, out: p.b1.grad, B: n, S: 1, n: 1, C: enc, accumulate: true }),
      matmul(g, { label: 'prefix.dE', a: p.dAct, b: p.w1.value, c: p.embedding.grad, M: n, N: td, K: enc, accumulate: true }),
    ];
  }

  /** PEFT saves the prefix itself (made by the MLP when there is one) as prompt_embeddings. */
  async exportTensors(read: (t: Tensor) => Promise<Float32Array>): Promise<ExportTensor[]> {
    if (this.proj) runOps(this.gpu, this.forwardStart(), 'prefix export');
    const value = this.proj ? this.proj.prefix : this.table!.value;
    return [{ name: 'prompt_embeddings', shape: [this.prefixTokens, this.width], data: await read(value) }];
  }

  destroy(): void {
    for (const p of this.params) for (const t of [p.value, p.grad, p.m, p.v]) this.gpu.destroyTensor(t);
    this.params.length = 0;
    for (const t of this.owned) this.gpu.destroyTensor(t);
    this.owned.length = 0;
  }

  adapterConfig(baseModel: string): Record<string, unknown> {
    return {
      peft_type: 'PREFIX_TUNING',
      task_type: 'CAUSAL_LM',
      base_model_name_or_path: baseModel,
      revision: null,
      inference_mode: true,
      num_virtual_tokens: this.prefixTokens,
      token_dim: this.tokenDim,
      num_transformer_submodules: 1,
      num_attention_heads: this.dims.kvHeads,
      num_layers: this.dims.layers,
      encoder_hidden_size: this.encoderHiddenSize,
      prefix_projection: this.settings.projection,
    };
  }
}
