// Training settings as the user sets them, their defaults, and the checks that reject a bad value
// with a reason. The page runs the checks as the user types; the worker runs them again on start.

import type { ScheduleKind } from '../train/schedule';

export type MethodName = 'lora' | 'prefix-tuning' | 'prompt-tuning' | 'ia3' | 'bottleneck';

export interface TrainSettings {
  method: 'lora';
  rank: number;
  alpha: number;
  dropout: number;
  /** PEFT target_modules (suffixes of module paths), or ['all-linear'] (ALL_LINEAR) for every linear layer but the head. */
  targetModules: string[];
  useRslora: boolean;
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
}

export type SettingName = keyof TrainSettings;

/** PEFT's shorthand for every linear layer except the output head. */
export const ALL_LINEAR = 'all-linear';

export const DEFAULT_SETTINGS: TrainSettings = {
  method: 'lora',
  rank: 8,
  alpha: 16,
  dropout: 0.05,
  targetModules: [],
  useRslora: false,
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
};

/** What the loaded model allows. */
export interface SettingLimits {
  maxPositions: number;
  /** Target names the model has (LinearModuleGroup.target). */
  availableTargets: string[];
}

export type SettingErrors = Partial<Record<SettingName, string>>;

const isInt = (v: number) => Number.isInteger(v);

/** Every invalid value with the reason; empty when all are fine. */
export function validateSettings(s: TrainSettings, limits?: SettingLimits): SettingErrors {
  const e: SettingErrors = {};
  const intIn = (k: SettingName, v: number, min: number, max: number, what: string) => {
    if (!Number.isFinite(v)) e[k] = `${what} must be a number.`;
    else if (!isInt(v)) e[k] = `${what} must be a whole number.`;
    else if (v < min || v > max) e[k] = `${what} must be between ${min} and ${max}.`;
  };
  intIn('rank', s.rank, 1, 1024, 'Rank');
  if (!Number.isFinite(s.alpha) || s.alpha <= 0) e.alpha = 'Alpha must be a positive number (commonly 2 × rank).';
  else if (s.alpha > 10000) e.alpha = 'Alpha above 10000 would blow the update up; commonly 2 × rank.';
  if (!Number.isFinite(s.dropout) || s.dropout < 0 || s.dropout >= 1) e.dropout = 'Dropout must be at least 0 and below 1 (e.g. 0.05).';
  // Which layers exist is only known once a model is loaded.
  if (limits && s.targetModules.length === 0) e.targetModules = 'Pick at least one layer type for LoRA to adapt.';
  else if (limits) {
    const unknown = s.targetModules.filter((t) => t !== ALL_LINEAR && !limits.availableTargets.includes(t));
    if (unknown.length) e.targetModules = `This model has no ${unknown.join(', ')} layers.`;
  }
  if (!Number.isFinite(s.learningRate) || s.learningRate <= 0) e.learningRate = 'Learning rate must be a positive number (e.g. 0.0002).';
  else if (s.learningRate > 1) e.learningRate = 'A learning rate above 1 diverges; LoRA usually uses 1e-4 to 1e-3.';
  if (s.lengthUnit === 'epochs') {
    if (!Number.isFinite(s.epochs) || s.epochs <= 0) e.epochs = 'Epochs must be a positive number (fractions like 0.5 are fine).';
    else if (s.epochs > 1000) e.epochs = 'At most 1000 epochs.';
  } else {
    intIn('steps', s.steps, 1, 10_000_000, 'Steps');
  }
  intIn('batchSize', s.batchSize, 1, 1024, 'Batch size');
  intIn('gradAccum', s.gradAccum, 1, 1024, 'Gradient accumulation');
  intIn('maxLength', s.maxLength, 2, limits?.maxPositions ?? 1_000_000, 'Max length');
  if (limits && isInt(s.maxLength) && s.maxLength > limits.maxPositions) {
    e.maxLength = `This model reads at most ${limits.maxPositions} tokens; Max length must be ${limits.maxPositions} or less.`;
  }
  if (!Number.isFinite(s.warmupRatio) || s.warmupRatio < 0 || s.warmupRatio > 1) e.warmupRatio = 'Warmup must be between 0 % and 100 % of the steps.';
  if (!Number.isFinite(s.weightDecay) || s.weightDecay < 0 || s.weightDecay > 1) e.weightDecay = 'Weight decay must be between 0 and 1.';
  if (!Number.isFinite(s.validationFraction) || s.validationFraction < 0 || s.validationFraction > 0.5) {
    e.validationFraction = 'Validation split must be between 0 % and 50 %.';
  }
  intIn('evalEvery', s.evalEvery, 0, 10_000_000, 'Evaluate every');
  intIn('checkpointEvery', s.checkpointEvery, 1, 10_000_000, 'Checkpoint every');
  intIn('seed', s.seed, 0, 2 ** 31 - 1, 'Seed');
  return e;
}

export function firstSettingError(errors: SettingErrors): [SettingName, string] | null {
  const entry = Object.entries(errors)[0];
  return entry ? [entry[0] as SettingName, entry[1] as string] : null;
}
