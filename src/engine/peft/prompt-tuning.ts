// Prompt tuning as PEFT defines it (peft.tuners.prompt_tuning, PeftModelForCausalLM.forward): n
// learned embeddings ("virtual tokens") go before every sequence's token embeddings, so the model
// runs n + T positions: the virtual tokens take positions 0..n-1 (GPT-2 adds wpe[0..n-1] to them,
// Llama rotates by those positions) and the real tokens n..n+T-1. The attention mask is ones over
// the virtual positions, so every real token sees all of them. PEFT puts label -100 on them; after
// transformers' shift the last virtual position still predicts the first real token (its label),
// which the program reproduces with BatchArrays.firstTargets.
//
// Saved as PEFT saves it: `prompt_embeddings` [n, hidden], config PROMPT_TUNING with
// num_virtual_tokens, token_dim, num_transformer_submodules 1, num_attention_heads, num_layers.
// Initializations (PromptTuningInit): RANDOM = nn.Embedding's N(0, 1); TEXT = the embeddings of the
// tokenized text (special tokens included, as tokenizer(text) gives them), cut to n or repeated
// to fill n; SAMPLE_VOCAB = the embeddings of n token ids drawn uniformly from the vocabulary.

import type { Gpu } from '../gpu/gpu';
import type { Op } from '../gpu/dispatch';
import type { Tensor } from '../gpu/tensor';
import { addRows, sumRows } from '../kernels/peft-ops';
import type { CausalLM } from '../models/program';
import type { LinearSite, PeftMethod, TrainableParam } from './method';

export type PromptInit = 'random' | 'text' | 'vocab';

export interface PromptTuningSettings {
  numVirtualTokens: number;
  init: PromptInit;
  /** The text for init 'text'. */
  initText?: string | null;
  /** Saved as tokenizer_name_or_path with init 'text' (PEFT loads that tokenizer for the init). */
  tokenizerNameOrPath?: string | null;
}

/** The model dimensions PEFT's prompt-learning config records. */
export interface PromptModelDims {
  hidden: number;
  layers: number;
  heads: number;
  vocab: number;
}

export class PromptTuningError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'PromptTuningError';
  }
}

const PEFT_INIT: Record<PromptInit, string> = { random: 'RANDOM', text: 'TEXT', vocab: 'SAMPLE_VOCAB' };

/** Standard normal values from a uniform [0, 1) source (Box-Muller). */
export function normalValues(n: number, random: () => number): Float32Array {
  const out = new Float32Array(n);
  for (let i = 0; i < n; i += 2) {
    const u1 = 1 - random(); // (0, 1]
    const u2 = random();
    const r = Math.sqrt(-2 * Math.log(u1));
    out[i] = r * Math.cos(2 * Math.PI * u2);
    if (i + 1 < n) out[i + 1] = r * Math.sin(2 * Math.PI * u2);
  }
  return out;
}

/** PEFT's TEXT init ids: the text's ids cut to n, or repeated (ceil(n / len) times) and cut. */
export function textInitIds(textIds: readonly number[], n: number): number[] {
  if (textIds.length === 0) throw new PromptTuningError('the prompt-tuning init text gives no tokens');
  if (textIds.length >= n) return textIds.slice(0, n);
  const reps = Math.ceil(n / textIds.length);
  const ids: number[] = [];
  for (let r = 0; r < reps; r++) ids.push(...textIds);
  return ids.slice(0, n);
}

export class PromptTuning implements PeftMethod {
  readonly kind = 'prompt' as const;
  readonly params: TrainableParam[] = [];
  readonly virtualTokens: number;
  readonly embeddings: TrainableParam;

  constructor(
    private readonly gpu: Gpu,
    readonly settings: PromptTuningSettings,
    readonly dims: PromptModelDims,
  ) {
    const n = settings.numVirtualTokens;
    if (!Number.isInteger(n) || n < 1) throw new PromptTuningError(`the number of virtual tokens must be a positive integer (got ${n})`);
    if (settings.init === 'text' && !settings.initText) throw new PromptTuningError('prompt-tuning init "text" needs the init text');
    if (settings.init !== 'text' && settings.initText) throw new PromptTuningError(`an init text is only used with init "text" (the init is "${settings.init}")`);
    this.virtualTokens = n;
    const shape = [n, dims.hidden];
    const g = gpu;
    const value = g.tensor(shape, 'prompt_embeddings');
    this.embeddings = { name: 'prompt_embeddings', shape, value, grad: g.tensor(shape, 'prompt_embeddings.grad'), m: g.tensor(shape, 'prompt_embeddings.m'), v: g.tensor(shape, 'prompt_embeddings.v') };
    this.params.push(this.embeddings);
  }

  /**
   * Writes the initial embeddings: RANDOM from `random` (N(0, 1)), TEXT from the rows of the
   * tokenized init text (`tokenize` gives the ids with special tokens, as PEFT's tokenizer(text)),
   * SAMPLE_VOCAB from `random` token ids. Returns the token ids used (none for RANDOM).
   */
  initialize(model: Pick<CausalLM, 'copyTokenEmbeddings'>, o: { random: () => number; tokenize?: (text: string) => number[] }): number[] {
    const n = this.virtualTokens;
    const s = this.settings;
    if (s.init === 'random') {
      this.gpu.write(this.embeddings.value, normalValues(n * this.dims.hidden, o.random));
      return [];
    }
    let ids: number[];
    if (s.init === 'text') {
      if (!o.tokenize) throw new PromptTuningError('prompt-tuning init "text" needs the tokenizer');
      ids = textInitIds(o.tokenize(s.initText!), n);
    } else {
      ids = Array.from({ length: n }, () => Math.min(this.dims.vocab - 1, Math.floor(o.random() * this.dims.vocab)));
    }
    model.copyTokenEmbeddings(ids, this.embeddings.value);
    return ids;
  }

  targetsLinear(): boolean {
    return false;
  }

  linearForward(site: LinearSite): Op[] {
    throw new PromptTuningError(`prompt tuning has no linear layer (${site.module})`);
  }

  linearBackward(site: LinearSite): Op[] {
    throw new PromptTuningError(`prompt tuning has no linear layer (${site.module})`);
  }

  embeddingForward(x0: Tensor, B: number, S: number): Op[] {
    return [addRows(this.gpu, { x: x0, p: this.embeddings.value, B, S, n: this.virtualTokens, C: this.dims.hidden })];
  }

  embeddingBackward(dx0: Tensor, B: number, S: number): Op[] {
    return [sumRows(this.gpu, { d: dx0, out: this.embeddings.grad, B, S, n: this.virtualTokens, C: this.dims.hidden, accumulate: true })];
  }

  destroy(): void {
    for (const p of this.params) for (const t of [p.value, p.grad, p.m, p.v]) this.gpu.destroyTensor(t);
    this.params.length = 0;
  }

  adapterConfig(baseModel: string): Record<string, unknown> {
    const s = this.settings;
    return {
      peft_type: 'PROMPT_TUNING',
      task_type: 'CAUSAL_LM',
      base_model_name_or_path: baseModel,
      revision: null,
      inference_mode: true,
      num_virtual_tokens: this.virtualTokens,
      token_dim: this.dims.hidden,
      num_transformer_submodules: 1,
      num_attention_heads: this.dims.heads,
      num_layers: this.dims.layers,
      prompt_tuning_init: PEFT_INIT[s.init],
      prompt_tuning_init_text: s.init === 'text' ? s.initText! : null,
      tokenizer_name_or_path: s.init === 'text' ? (s.tokenizerNameOrPath ?? baseModel) : null,
      tokenizer_kwargs: null,
    };
  }
}
