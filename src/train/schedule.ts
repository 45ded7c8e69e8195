// Learning-rate schedules, identical to transformers' get_constant_schedule_with_warmup,
// get_linear_schedule_with_warmup and get_cosine_schedule_with_warmup (num_cycles = 0.5).
// In transformers the optimizer step number s (0-based) runs with peak_lr * lr_lambda(s): the
// scheduler starts at lr_lambda(0) and is advanced after each optimizer.step(). So with warmup
// the very first step has learning rate 0, as there.

export type ScheduleKind = 'constant' | 'linear' | 'cosine';

export interface ScheduleOptions {
  peakLr: number;
  warmupSteps: number;
  /** Total optimizer steps of the run (num_training_steps). */
  totalSteps: number;
  kind: ScheduleKind;
}

/** transformers' lr_lambda: the multiplier of the peak learning rate at optimizer step `step`. */
export function lrMultiplier(step: number, { warmupSteps, totalSteps, kind }: Omit<ScheduleOptions, 'peakLr'>): number {
  if (!Number.isInteger(step) || step < 0) throw new RangeError(`step must be a non-negative integer, got ${step}`);
  if (!Number.isInteger(warmupSteps) || warmupSteps < 0) throw new RangeError(`warmupSteps must be a non-negative integer, got ${warmupSteps}`);
  if (!Number.isInteger(totalSteps) || totalSteps < 0) throw new RangeError(`totalSteps must be a non-negative integer, got ${totalSteps}`);
  if (step < warmupSteps) return step / Math.max(1, warmupSteps);
  switch (kind) {
    case 'constant':
      return 1;
    case 'linear':
      return Math.max(0, (totalSteps - step) / Math.max(1, totalSteps - warmupSteps));
    case 'cosine': {
      const progress = (step - warmupSteps) / Math.max(1, totalSteps - warmupSteps);
      const numCycles = 0.5;
      return Math.max(0, 0.5 * (1 + Math.cos(Math.PI * numCycles * 2 * progress)));
    }
    default:
      throw new RangeError(`unknown schedule kind "${kind as string}" (expected constant, linear or cosine)`);
  }
}

export function learningRateAt(step: number, options: ScheduleOptions): number {
  if (!(Number.isFinite(options.peakLr) && options.peakLr >= 0)) throw new RangeError(`peakLr must be a non-negative number, got ${options.peakLr}`);
  return options.peakLr * lrMultiplier(step, options);
}

/** transformers' TrainingArguments.get_warmup_steps for a warmup_ratio: ceil(totalSteps * ratio). */
export function warmupStepsFromRatio(ratio: number, totalSteps: number): number {
  if (!(ratio >= 0 && ratio <= 1)) throw new RangeError(`warmup ratio must be in [0, 1], got ${ratio}`);
  return Math.ceil(totalSteps * ratio);
}
