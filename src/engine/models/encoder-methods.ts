// Which adapter methods a DistilBERT / BERT classifier can carry, and building them: LoRA, DoRA and
// IA3 act on the encoder's linear layers, bottleneck adapters on its residual branches (AdapterHub's
// placement in post-LayerNorm blocks); the head trains in full beside any of them (PEFT's
// modules_to_save); prompt tuning puts its virtual tokens before every sequence (the head then reads
// the first virtual token, as in PEFT); prefix tuning puts key/value rows before every layer's keys
// (BERT only: DistilBERT's is refused, ENCODER_ARCH_METHOD_REFUSALS says why).

import type { Gpu } from '../gpu/gpu';
import type { StepUniforms } from '../kernels/step-uniforms';
import { Lora, type LinearModuleInfo } from '../peft/lora';
import { Dora } from '../peft/dora';
import { IA3_DEFAULTS, IA3_ENGINE_DEFAULTS, Ia3, type Ia3Settings } from '../peft/ia3';
import { BottleneckAdapters, type BottleneckModelDims } from '../peft/bottleneck';
import { prefixDims, promptDims, type MethodSpec, type PeftModelInfo } from '../peft/factory';
import { PromptTuning } from '../peft/prompt-tuning';
import { PrefixTuning } from '../peft/prefix-tuning';
import type { PeftKind } from '../peft/method';
import type { EncoderClassifier } from './encoder';

/** The methods a classifier's encoder can carry. */
export type SeqClsMethod = Lora | Dora | Ia3 | BottleneckAdapters | PromptTuning | PrefixTuning;

export class EncoderMethodError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'EncoderMethodError';
  }
}

/**
 * Methods no encoder classifier trains here, and why (none at present: every method runs on BERT).
 * Per architecture: ENCODER_ARCH_METHOD_REFUSALS; encoderMethodRefusal(arch, method) gives both.
 */
export const ENCODER_METHOD_REFUSALS: Partial<Record<PeftKind, string>> = {};

/**
 * Methods one encoder architecture does not train here, and why. Prefix tuning on DistilBERT: PEFT
 * 0.21 + transformers 5.17 cannot run it on DistilBertForSequenceClassification (PEFT passes the
 * prefix as past_key_values, which neither DistilBertForSequenceClassification nor DistilBertModel
 * takes: PEFT raises "Model does not support past key values which are required for prefix tuning";
 * without token_dim given it cannot even size the prefix from DistilBERT's config), so there is no
 * reference for what it would be (docs/runs/2026-11-22-encoder-prefix-goldens.txt). On BERT it runs
 * (BertModel takes past_key_values): src/engine/models/encoder.ts.
 */
export const ENCODER_ARCH_METHOD_REFUSALS: Record<'distilbert' | 'bert', Partial<Record<PeftKind, string>>> = {
  distilbert: {
    prefix: 'prefix tuning is not available for DistilBERT classifiers: PEFT cannot run it on DistilBertForSequenceClassification (DistilBERT\'s attention takes no past_key_values, which PEFT feeds the prefix through); use prompt tuning, or a BERT model',
  },
  bert: {},
};

/** Why `method` is not trained on this encoder architecture, or null when it is. */
export function encoderMethodRefusal(architecture: 'distilbert' | 'bert', method: PeftKind): string | null {
  return ENCODER_METHOD_REFUSALS[method] ?? ENCODER_ARCH_METHOD_REFUSALS[architecture][method] ?? null;
}

/** Why prefix tuning is refused on this classifier (DistilBERT), or null (BERT). */
export function encoderPrefixRefusal(model: EncoderClassifier): string | null {
  return encoderMethodRefusal(model.spec.architecture, 'prefix');
}

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
  const refusal = encoderMethodRefusal(model.spec.architecture, spec.method);
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
    case 'prefix':
      // PEFT's dimensions for BERT: token_dim = hidden_size, num_attention_heads, num_layers
      return new PrefixTuning(gpu, spec.prefix, prefixDims(encoderPeftInfo(model)), random);
    default:
      throw new EncoderMethodError(`${(spec as MethodSpec).method} is not available for text classification`);
  }
}
