// Which adapter methods a DistilBERT / BERT classifier can carry, and building them: LoRA, DoRA and
// IA3 act on the encoder's linear layers, bottleneck adapters on its residual branches (AdapterHub's
// placement in post-LayerNorm blocks); the head trains in full beside any of them (PEFT's
// modules_to_save); prompt tuning puts its virtual tokens before every sequence (the head then reads
// the first virtual token, as in PEFT). Prefix tuning is refused for classifiers (ENCODER_METHOD_REFUSALS).

import type { Gpu } from '../gpu/gpu';
import type { StepUniforms } from '../kernels/step-uniforms';
import { Lora, type LinearModuleInfo } from '../peft/lora';
import { Dora } from '../peft/dora';
import { IA3_DEFAULTS, IA3_ENGINE_DEFAULTS, Ia3, type Ia3Settings } from '../peft/ia3';
import { BottleneckAdapters, type BottleneckModelDims } from '../peft/bottleneck';
import { promptDims, type MethodSpec, type PeftModelInfo } from '../peft/factory';
import { PromptTuning } from '../peft/prompt-tuning';
import type { PeftKind } from '../peft/method';
import type { EncoderClassifier } from './encoder';

/** The methods a classifier's encoder can carry. */
export type SeqClsMethod = Lora | Dora | Ia3 | BottleneckAdapters | PromptTuning;

export class EncoderMethodError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'EncoderMethodError';
  }
}

/**
 * Methods a classifier does not train here, and why: prefix tuning needs the encoder's attention to
 * take prefix keys/values, which the encoder program does not have (PEFT 0.21 + transformers 5.17 run
 * it on BertForSequenceClassification; on DistilBERT PEFT cannot size it without token_dim).
 */
export const ENCODER_METHOD_REFUSALS: Partial<Record<PeftKind, string>> = {
  prefix: 'prefix tuning is not available for text classification: the encoder program has no prefix keys/values in its attention',
};

/**
 * IA3's targets for the encoders. BERT: PEFT's defaults (TRANSFORMERS_MODELS_TO_IA3_*_MAPPING:
 * key, value, output.dense; output.dense scaled on its input, and "output.dense" matches both
 * attention.output.dense and the FFN's output.dense). DistilBERT: PEFT has no default (it asks for
 * target_modules); the engine uses BERT's equivalent layers, k_lin, v_lin and ffn.lin2 (input-scaled),
 * written into adapter_config.json so PEFT loads them.
 */
export const ENCODER_IA3_DEFAULTS: Record<'distilbert' | 'bert', Ia3Settings & { fromPeft: boolean }> = {
  bert: { ...IA3_DEFAULTS.bert, fromPeft: true },
  distilbert: { ...IA3_ENGINE_DEFAULTS.distilbert, fromPeft: false },
};

/** IA3's default targets for this encoder (fresh arrays). */
export function encoderIa3Defaults(model: EncoderClassifier): Ia3Settings {
  const d = ENCODER_IA3_DEFAULTS[model.spec.architecture];
  return { targetModules: [...d.targetModules], feedforwardModules: [...d.feedforwardModules] };
}

/** PEFT's (and AdapterHub's) view of the encoder: the *ForSequenceClassification model. */
export function encoderPeftInfo(model: EncoderClassifier): PeftModelInfo {
  const linears: readonly LinearModuleInfo[] = model.linearModules();
  return {
    modelType: model.spec.architecture, hidden: model.C, layers: model.L, heads: model.H, kvHeads: model.H, hasKvHeads: false,
    vocab: model.V, linears, modelClass: model.spec.className,
  };
}

/**
 * Where AdapterHub's BottleneckLayers sit in the encoder (adapters/models/*): DistilBERT's
 * TransformerBlock holds attention_adapters and output_adapters; BERT's BertSelfOutput
 * (attention.output) holds attention_adapters and BertOutput (output) output_adapters. Names are
 * the *ForSequenceClassification state dict's (AdapterHub saves model.state_dict() keys).
 */
export function encoderBottleneckDims(model: EncoderClassifier): BottleneckModelDims {
  const bert = model.spec.architecture === 'bert';
  const layersPath = bert ? 'bert.encoder.layer' : 'distilbert.transformer.layer';
  return {
    modelType: model.spec.architecture, modelClass: model.spec.className, hidden: model.C, layers: model.L, layersPath,
    adapterModule: bert ? (l, location) => `${layersPath}.${l}.${location === 'attention' ? 'attention.output' : 'output'}` : undefined,
  };
}

/** Makes the method on the encoder, with its initial values as createPeftMethod makes them. */
export function createEncoderMethod(
  gpu: Gpu, spec: MethodSpec, model: EncoderClassifier, step: StepUniforms, random: () => number,
  /** the tokenizer with special tokens (prompt tuning's TEXT init) */
  tokenize?: (text: string) => number[],
): SeqClsMethod {
  const refusal = ENCODER_METHOD_REFUSALS[spec.method];
  if (refusal) throw new EncoderMethodError(refusal);
  const linears = model.linearModules();
  const noAllLinear = (targets: readonly string[], what: string): void => {
    if (targets.includes('all-linear')) throw new EncoderMethodError(`${what} target modules: all-linear is not available for classifiers (PEFT would also wrap the head); list the modules`);
  };
  switch (spec.method) {
    case 'lora':
      noAllLinear(spec.lora.targetModules, 'LoRA');
      return new Lora(gpu, spec.lora, linears, step, random);
    case 'dora':
      noAllLinear(spec.lora.targetModules, 'DoRA');
      return new Dora(gpu, spec.lora, linears, step, random);
    case 'ia3':
      return new Ia3(gpu, spec.ia3, linears);
    case 'bottleneck':
      return new BottleneckAdapters(gpu, spec.bottleneck, encoderBottleneckDims(model), random);
    case 'prompt': {
      const pt = new PromptTuning(gpu, spec.prompt, promptDims(encoderPeftInfo(model)));
      pt.initialize(model, { random, tokenize });
      return pt;
    }
    default:
      throw new EncoderMethodError(`${spec.method} is not available for text classification`);
  }
}
