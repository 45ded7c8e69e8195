// Building any of the adapter methods for a loaded causal LM: the model facts PEFT's (and
// AdapterHub's) configs record (prompt-learning dimensions, IA3 defaults per model_type, the model
// class) and one entry point that makes LoRA, DoRA, IA3, prompt tuning, prefix tuning or bottleneck
// adapters from settings.

import type { Gpu } from '../gpu/gpu';
import type { HfConfig } from '../../io/hf-config';
import type { StepUniforms } from '../kernels/step-uniforms';
import type { CausalLM } from '../models/program';
import type { PeftMethod } from './method';
import { Lora, type LinearModuleInfo, type LoraSettings } from './lora';
import { IA3_DEFAULTS, IA3_ENGINE_DEFAULTS, Ia3, Ia3Error, type Ia3Settings } from './ia3';
import { PromptTuning, type PromptModelDims, type PromptTuningSettings } from './prompt-tuning';
import { PrefixTuning, type PrefixModelDims, type PrefixTuningSettings } from './prefix-tuning';
import { Dora } from './dora';
import { BottleneckAdapters, type BottleneckModelDims, type BottleneckSettings } from './bottleneck';

/** What PEFT reads from a causal LM's config.json for these methods. */
export interface PeftModelInfo {
  modelType: string;
  hidden: number;
  layers: number;
  heads: number;
  /** num_key_value_heads where config.json has it (PEFT sizes prefixes by it), else heads. */
  kvHeads: number;
  /** Whether config.json has num_key_value_heads (transformers' Llama-family configs always do). */
  hasKvHeads: boolean;
  vocab: number;
  linears: readonly LinearModuleInfo[];
  /** transformers' model class (config.json "architectures"[0], else the family's causal-LM class). */
  modelClass: string;
}

export class PeftSetupError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'PeftSetupError';
  }
}

/** transformers' causal-LM class per model_type, for configs without "architectures". */
const CAUSAL_LM_CLASS: Record<string, string> = {
  gpt2: 'GPT2LMHeadModel', llama: 'LlamaForCausalLM', mistral: 'MistralForCausalLM', qwen2: 'Qwen2ForCausalLM', qwen3: 'Qwen3ForCausalLM',
};

export function peftModelInfo(config: HfConfig, linears: readonly LinearModuleInfo[]): PeftModelInfo {
  const modelClass = config.architectures[0] ?? CAUSAL_LM_CLASS[config.model_type] ?? config.model_type;
  if (config.family === 'gpt2') {
    return { modelType: config.model_type, hidden: config.n_embd, layers: config.n_layer, heads: config.n_head, kvHeads: config.n_head, hasKvHeads: false, vocab: config.vocab_size, linears, modelClass };
  }
  if (config.family === 'llama') {
    return {
      modelType: config.model_type, hidden: config.hidden_size, layers: config.num_hidden_layers, heads: config.num_attention_heads,
      kvHeads: config.num_key_value_heads, hasKvHeads: true, vocab: config.vocab_size, linears, modelClass,
    };
  }
  throw new PeftSetupError(`model_type "${config.model_type}" is not a causal LM these adapter methods support`);
}

/** prompt tuning's PEFT dimensions: token_dim = hidden, the model's attention heads and layers. */
export function promptDims(info: PeftModelInfo): PromptModelDims {
  return { hidden: info.hidden, layers: info.layers, heads: info.heads, vocab: info.vocab };
}

/**
 * prefix tuning's PEFT dimensions (_prepare_prompt_learning_config): with num_key_value_heads in
 * the config, token_dim = hidden / heads * kv_heads and num_attention_heads = kv_heads; the head
 * width PEFT assumes is hidden / heads.
 */
export function prefixDims(info: PeftModelInfo): PrefixModelDims {
  if (info.hidden % info.heads !== 0) throw new PeftSetupError(`hidden size ${info.hidden} is not a multiple of ${info.heads} heads`);
  return { layers: info.layers, kvHeads: info.hasKvHeads ? info.kvHeads : info.heads, headDim: info.hidden / info.heads };
}

/** Where AdapterHub's bottleneck adapters live in this model, and what its config records. */
export function bottleneckDims(info: PeftModelInfo): BottleneckModelDims {
  return { modelType: info.modelType, modelClass: info.modelClass, hidden: info.hidden, layers: info.layers, layersPath: info.modelType === 'gpt2' ? 'transformer.h' : 'model.layers' };
}

/** PEFT's default IA3 targets for this model_type (DistilBERT, which PEFT has none for: the engine's, IA3_ENGINE_DEFAULTS). */
export function defaultIa3Settings(info: PeftModelInfo): Ia3Settings {
  const d = IA3_DEFAULTS[info.modelType] ?? IA3_ENGINE_DEFAULTS[info.modelType];
  if (!d) throw new Ia3Error(`PEFT has no default IA3 targets for model_type "${info.modelType}"; give the target and feedforward modules`);
  return { targetModules: [...d.targetModules], feedforwardModules: [...d.feedforwardModules] };
}

export type MethodSpec =
  | { method: 'lora'; lora: LoraSettings }
  | { method: 'dora'; lora: LoraSettings }
  | { method: 'bottleneck'; bottleneck: BottleneckSettings }
  | { method: 'ia3'; ia3: Ia3Settings }
  | { method: 'prompt'; prompt: PromptTuningSettings }
  | { method: 'prefix'; prefix: PrefixTuningSettings };

/**
 * Makes the method with its initial values: LoRA's and DoRA's A, prefix tuning's tensors and the
 * bottleneck adapters' weights from `random`, DoRA's magnitude from the model's weights, IA3's ones,
 * prompt tuning's RANDOM / TEXT / SAMPLE_VOCAB init (text through `tokenize`).
 */
export function createPeftMethod(
  gpu: Gpu, spec: MethodSpec, info: PeftModelInfo, model: Pick<CausalLM, 'copyTokenEmbeddings'>, step: StepUniforms,
  o: { random: () => number; tokenize?: (text: string) => number[] },
): PeftMethod {
  switch (spec.method) {
    case 'lora':
      return new Lora(gpu, spec.lora, info.linears, step, o.random);
    case 'dora':
      return new Dora(gpu, spec.lora, info.linears, step, o.random);
    case 'bottleneck':
      return new BottleneckAdapters(gpu, spec.bottleneck, bottleneckDims(info), o.random);
    case 'ia3':
      return new Ia3(gpu, spec.ia3, info.linears);
    case 'prompt': {
      const pt = new PromptTuning(gpu, spec.prompt, promptDims(info));
      pt.initialize(model, o);
      return pt;
    }
    case 'prefix':
      return new PrefixTuning(gpu, spec.prefix, prefixDims(info), o.random);
  }
}
