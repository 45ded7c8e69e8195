// Training settings as the user sets them, their defaults, and the checks that reject a bad value
// with a reason. The page runs the checks as the user types; the worker runs them again on start.
// Each adapter method's own settings and checks live with its descriptor in ./methods.ts.

import type { ScheduleKind } from '../train/schedule';
import type { PromptInit } from '../engine/peft/prompt-tuning';
import type { BottleneckActivation, BottleneckType } from '../engine/peft/bottleneck';
import { ALL_LINEAR, METHOD_BY_ID, checkInt, methodsFor, notForClassifiers, type MethodId, type TaskKind } from './methods';

export type { MethodId, TaskKind } from './methods';
export { ALL_LINEAR };

/** TrainSettings.precision's values. */
export const PRECISIONS = ['mixed', 'f32-tensor-cores', 'f32'] as const;
export type Precision = (typeof PRECISIONS)[number];

export interface TrainSettings {
  /** The adapter method (a MethodDescriptor id). */
  method: MethodId;
  // LoRA
  rank: number;
  alpha: number;
  dropout: number;
  /** PEFT target_modules (suffixes of module paths), or ['all-linear'] (ALL_LINEAR) for every linear layer but the head. */
  targetModules: string[];
  useRslora: boolean;
  // IA3
  /** IA3's target_modules (the model's PEFT defaults when it is loaded). */
  ia3Targets: string[];
  /** IA3's feedforward_modules: targets whose input (not output) is scaled; a subset of ia3Targets. */
  ia3Feedforward: string[];
  // prompt tuning and prefix tuning
  /** num_virtual_tokens: learned positions before every sequence (prompt) or key/value rows in every layer (prefix). */
  virtualTokens: number;
  promptInit: PromptInit;
  /** The text whose token embeddings start the prompt (promptInit 'text'). */
  promptInitText: string;
  /** Prefix tuning through PEFT's MLP reparameterization (prefix_projection). */
  prefixProjection: boolean;
  /** Width of that MLP (encoder_hidden_size; PEFT's default token_dim, set when a model is loaded). */
  encoderHiddenSize: number;
  // bottleneck adapters (AdapterHub)
  /** Houlsby (after attention and MLP) or Pfeiffer (after the MLP). */
  bottleneckType: BottleneckType;
  /** bottleneck width = hidden / reduction factor. */
  reductionFactor: number;
  /** 'preset': the type's own (Houlsby swish, Pfeiffer relu). */
  bottleneckActivation: 'preset' | BottleneckActivation;
  /** The adapter's name inside AdapterHub's tensor names and config. */
  bottleneckName: string;
  // text classification
  /** Which evaluation is kept and saved (transformers' metric_for_best_model with load_best_model_at_end). */
  metricForBest: 'loss' | 'accuracy';
  // training
  learningRate: number;
  /** Train for `epochs` or for `steps`. */
  lengthUnit: 'epochs' | 'steps';
  epochs: number;
  steps: number;
  batchSize: number;
  gradAccum: number;
  maxLength: number;
  /** Fraction of the steps spent warming the learning rate up (transformers' warmup_ratio). */
  warmupRatio: number;
  schedule: ScheduleKind;
  weightDecay: number;
  /** Fraction of the examples held out for validation. */
  validationFraction: number;
  /** Evaluate every N steps (0: automatically, ten times over the run; always at the end). */
  evalEvery: number;
  /** Save a checkpoint every N steps (always at the end and when paused). */
  checkpointEvery: number;
  seed: number;
  /**
   * Where the GPU has tensor cores (GpuInfo.tensorCores): 'mixed' runs the frozen layers' products
   * there (f16 operands, f32 sums, as PyTorch's autocast; kernels/matmul-tc.ts); 'f32-tensor-cores'
   * runs them there with f32 accuracy (each operand as two halves, hi + lo, three products:
   * tuning.tensorCoreF32); 'f32' keeps every product in f32 kernels. Without tensor cores every
   * product is f32 either way.
   */
  precision: Precision;
  /**
   * How the base model's frozen matrices (linear layers' weights, the vocabulary table) are kept on
   * the GPU: 'f32', or 'f16' at about half the memory (rounded to halves once at upload; every sum
   * stays f32 and the adapter trains in f32). Changing it uploads the weights again.
   */
  frozenWeights: 'f32' | 'f16';
}

export type SettingName = keyof TrainSettings;

export const DEFAULT_SETTINGS: TrainSettings = {
  method: 'lora',
  rank: 8,
  alpha: 16,
  dropout: 0.05,
  targetModules: [],
  useRslora: false,
  ia3Targets: [],
  ia3Feedforward: [],
  virtualTokens: 20,
  promptInit: 'random',
  promptInitText: '',
  prefixProjection: false,
  encoderHiddenSize: 0,
  bottleneckType: 'houlsby',
  reductionFactor: 16,
  bottleneckActivation: 'preset',
  bottleneckName: 'adapter',
  metricForBest: 'loss',
  learningRate: 2e-4,
  lengthUnit: 'epochs',
  epochs: 3,
  steps: 100,
  batchSize: 8,
  gradAccum: 1,
  maxLength: 256,
  warmupRatio: 0.03,
  schedule: 'linear',
  weightDecay: 0,
  validationFraction: 0.1,
  evalEvery: 0,
  checkpointEvery: 50,
  seed: 42,
  precision: 'mixed',
  frozenWeights: 'f32',
};

/** Settings saved by an older version (a checkpoint or adapter from before a field existed), completed with today's defaults. */
export function withDefaults(s: Partial<TrainSettings>): TrainSettings {
  return { ...DEFAULT_SETTINGS, ...s };
}

/** What the loaded model allows. */
export interface SettingLimits {
  maxPositions: number;
  /** Target names the model has (LinearModuleGroup.target). */
  availableTargets: string[];
  /** Text generation (causal LM) or text classification (an encoder with a head). */
  task: TaskKind;
  /** Methods this model cannot train, with the reason (e.g. the engine's refusal of prefix tuning on Qwen3). */
  unavailable: Partial<Record<MethodId, string>>;
}

export type SettingErrors = Partial<Record<SettingName, string>>;

const isInt = (v: number) => Number.isInteger(v);

/** A method's name inside a sentence: "Prompt tuning" -> "prompt tuning" (LoRA, IA3 stay). */
function midSentence(name: string): string {
  return /^[A-Z][a-z]+\b/.test(name) ? `${name.charAt(0).toLowerCase()}${name.slice(1)}` : name;
}

/** "a, b or c" */
function listOr(items: readonly string[]): string {
  return items.length <= 1 ? (items[0] ?? '') : `${items.slice(0, -1).join(', ')} or ${items[items.length - 1]}`;
}

/** Every invalid value with the reason; empty when all are fine. */
export function validateSettings(s: TrainSettings, limits?: SettingLimits): SettingErrors {
  const e: SettingErrors = {};
  const method = METHOD_BY_ID[s.method];
  if (!method) {
    e.method = `Unknown method "${s.method}".`;
  } else {
    // Only the chosen method's own fields are checked: the others keep whatever they hold.
    Object.assign(e, method.validate(s, limits));
    if (limits && !method.tasks.includes(limits.task)) {
      e.method = limits.task === 'classification'
        ? `${notForClassifiers(method, limits.unavailable[s.method])} A classifier trains ${listOr(methodsFor('classification').map((d) => midSentence(d.name)))} on its encoder, plus its classification head.`
        : `${method.name} trains text classifiers (DistilBERT, BERT); this model generates text.`;
    } else if (limits?.unavailable[s.method]) {
      e.method = `${method.name} cannot train this model: ${limits.unavailable[s.method]}`;
    }
  }
  if (!Number.isFinite(s.learningRate) || s.learningRate <= 0) e.learningRate = 'Learning rate must be a positive number (e.g. 0.0002).';
  else if (s.learningRate > 1) e.learningRate = 'A learning rate above 1 diverges; adapters usually use 1e-4 to 1e-3 (prompt tuning up to 3e-2).';
  if (s.lengthUnit === 'epochs') {
    if (!Number.isFinite(s.epochs) || s.epochs <= 0) e.epochs = 'Epochs must be a positive number (fractions like 0.5 are fine).';
    else if (s.epochs > 1000) e.epochs = 'At most 1000 epochs.';
  } else {
    checkInt(e, 'steps', s.steps, 1, 10_000_000, 'Steps');
  }
  checkInt(e, 'batchSize', s.batchSize, 1, 1024, 'Batch size');
  checkInt(e, 'gradAccum', s.gradAccum, 1, 1024, 'Gradient accumulation');
  // Classification inputs carry [CLS] and [SEP]: at least one token more.
  const minLength = limits?.task === 'classification' ? 3 : 2;
  checkInt(e, 'maxLength', s.maxLength, minLength, limits?.maxPositions ?? 1_000_000, 'Max length');
  if (limits && isInt(s.maxLength) && s.maxLength > limits.maxPositions) {
    e.maxLength = `This model reads at most ${limits.maxPositions} tokens; Max length must be ${limits.maxPositions} or less.`;
  }
  // Prompt and prefix tuning's virtual tokens take positions of the model too.
  const extra = method && !e.virtualTokens ? method.extraPositions(s) : 0;
  if (limits && extra > 0 && !e.maxLength && isInt(s.maxLength) && s.maxLength + extra > limits.maxPositions) {
    e.maxLength = `With ${extra} virtual tokens this model has room for ${Math.max(0, limits.maxPositions - extra)} real tokens (it reads ${limits.maxPositions} positions); lower Max length or the virtual tokens.`;
  }
  if (!Number.isFinite(s.warmupRatio) || s.warmupRatio < 0 || s.warmupRatio > 1) e.warmupRatio = 'Warmup must be between 0 % and 100 % of the steps.';
  if (!Number.isFinite(s.weightDecay) || s.weightDecay < 0 || s.weightDecay > 1) e.weightDecay = 'Weight decay must be between 0 and 1.';
  if (!Number.isFinite(s.validationFraction) || s.validationFraction < 0 || s.validationFraction > 0.5) {
    e.validationFraction = 'Validation split must be between 0 % and 50 %.';
  } else if (limits?.task === 'classification' && s.validationFraction === 0) {
    e.validationFraction = 'Text classification needs a validation split: accuracy, macro-F1 and the best checkpoint are measured on it (10 % is usual).';
  }
  if (s.metricForBest !== 'loss' && s.metricForBest !== 'accuracy') e.metricForBest = 'Keep the best evaluation by its loss or its accuracy.';
  checkInt(e, 'evalEvery', s.evalEvery, 0, 10_000_000, 'Evaluate every');
  checkInt(e, 'checkpointEvery', s.checkpointEvery, 1, 10_000_000, 'Checkpoint every');
  checkInt(e, 'seed', s.seed, 0, 2 ** 31 - 1, 'Seed');
  if (!PRECISIONS.includes(s.precision)) e.precision = `Precision is ${PRECISIONS.map((p) => `"${p}"`).join(', ')} (got "${String(s.precision)}").`;
  if (s.frozenWeights !== 'f32' && s.frozenWeights !== 'f16') e.frozenWeights = `Frozen weights are kept in "f32" or "f16" (got "${String(s.frozenWeights)}").`;
  return e;
}

export function firstSettingError(errors: SettingErrors): [SettingName, string] | null {
  const entry = Object.entries(errors)[0];
  return entry ? [entry[0] as SettingName, entry[1] as string] : null;
}
