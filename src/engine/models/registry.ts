// Picks the architecture file for a checkpoint's config.json.

import type { Gpu } from '../gpu/gpu';
import type { HfModel } from '../../io/model-files';
import type { LinearModuleInfo } from '../peft/lora';
import { Gpt2 } from './gpt2';
import { Llama } from './llama';
import { loadDistilBert } from './distilbert';
import { loadBert } from './bert';
import type { FrozenStorage } from './weights';
import type { EncoderClassifier } from './encoder';
import { ProgramError, type CausalLM, type PlannedBuffer, type ProgramOptions } from './program';
import type { KvDecodable } from '../infer/kv-program';

export interface CausalLMModel extends CausalLM, KvDecodable {
  linearModules(): LinearModuleInfo[];
  parameterCount(): number;
  /**
   * The buffers buildProgram(peft, opts) allocates (the adapter's scratch not included), for a
   * method with prefixTokens key/value rows (prefix tuning; they widen the attention's scores and
   * keep it off flash attention).
   */
  programBuffers(opts: ProgramOptions, prefixTokens?: number): PlannedBuffer[];
  /** Exact GPU bytes buildProgram(peft, opts) allocates (16-byte rounding of Gpu.buffer included). */
  estimateProgramBytes(opts: ProgramOptions, prefixTokens?: number): number;
  /** GPU bytes the frozen weights (and any tables kept with them) take now. */
  weightBytes(): number;
  /** Frees the weights; programs built from the model must be destroyed first. */
  destroy(): void;
}

export interface LoadedModel {
  architecture: 'gpt2' | 'llama';
  model: CausalLMModel;
  /** PEFT's default LoRA targets for this architecture. */
  defaultLoraTargets: string[];
  /** Longest sequence the model takes. */
  maxPositions: number;
}

/** `frozen`: how the frozen matrices (linear layers' weights, vocabulary table, LM head) are kept (weights.ts FrozenStorage). */
export function loadCausalLM(gpu: Gpu, hf: HfModel, opts: { maxChunkBytes?: number; frozen?: FrozenStorage } = {}): LoadedModel {
  const c = hf.config;
  const src = { tensorNames: hf.tensorNames, tensorInfo: (n: string) => hf.tensorInfo(n), getF32: (n: string) => hf.getF32(n) };
  if (c.family === 'gpt2') {
    const model = Gpt2.load(gpu, c, src, hf.name, opts);
    return { architecture: 'gpt2', model, defaultLoraTargets: ['c_attn'], maxPositions: c.n_positions };
  }
  if (c.family === 'llama') {
    const model = Llama.load(gpu, c, src, hf.name, opts);
    return { architecture: 'llama', model, defaultLoraTargets: ['q_proj', 'v_proj'], maxPositions: c.max_position_embeddings };
  }
  throw new ProgramError(`${hf.name}: model_type "${c.model_type}" can not be trained yet (supported: gpt2, llama, mistral, qwen2, qwen3)`);
}

// ---- Sequence classification (BERT-family encoders) ----

export interface LoadedSequenceClassifier {
  architecture: 'distilbert' | 'bert';
  model: EncoderClassifier;
  /** The LoRA targets PEFT's docs use for this architecture (attention query and value). */
  defaultLoraTargets: string[];
  /** Longest sequence the model takes. */
  maxPositions: number;
}

/**
 * A *ForSequenceClassification model for a checkpoint's config.json: the encoder's weights and a
 * head of `numLabels` classes (from the checkpoint when it has one of that size, else initialized
 * from `random` as transformers initializes it).
 */
export function loadSequenceClassifier(
  gpu: Gpu, hf: HfModel, opts: { numLabels: number; random: () => number; maxChunkBytes?: number; frozen?: FrozenStorage },
): LoadedSequenceClassifier {
  const c = hf.config;
  const src = { tensorNames: hf.tensorNames, tensorInfo: (n: string) => hf.tensorInfo(n), getF32: (n: string) => hf.getF32(n) };
  if (c.family === 'distilbert') {
    const model = loadDistilBert(gpu, c, src, hf.name, opts);
    return { architecture: 'distilbert', model, defaultLoraTargets: ['q_lin', 'v_lin'], maxPositions: c.max_position_embeddings };
  }
  if (c.family === 'bert') {
    const model = loadBert(gpu, c, src, hf.name, opts);
    return { architecture: 'bert', model, defaultLoraTargets: ['query', 'value'], maxPositions: c.max_position_embeddings };
  }
  throw new ProgramError(`${hf.name}: model_type "${c.model_type}" has no sequence-classification support (supported: distilbert, bert)`);
}

/** Whether a config is one of the encoders loadSequenceClassifier takes. */
export function isSequenceClassifierFamily(hf: HfModel): boolean {
  return hf.config.family === 'distilbert' || hf.config.family === 'bert';
}
