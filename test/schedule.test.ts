import { describe, expect, it } from 'vitest';
import { learningRateAt, lrMultiplier, warmupStepsFromRatio, type ScheduleOptions } from '../src/train/schedule';

const lr = (step: number, o: Partial<ScheduleOptions> & Pick<ScheduleOptions, 'kind'>) =>
  learningRateAt(step, { peakLr: 2e-4, warmupSteps: 10, totalSteps: 110, ...o });

describe('learningRateAt (transformers schedules)', () => {
  it('warms up linearly from 0 at step 0 for every kind', () => {
    for (const kind of ['constant', 'linear', 'cosine'] as const) {
      expect(lr(0, { kind })).toBe(0);
      expect(lr(1, { kind })).toBeCloseTo(2e-5, 15);
      expect(lr(5, { kind })).toBeCloseTo(1e-4, 15);
      expect(lr(9, { kind })).toBeCloseTo(1.8e-4, 15);
      expect(lr(10, { kind })).toBeCloseTo(2e-4, 15);
    }
  });

  it('constant: stays at the peak after warmup, also past totalSteps', () => {
    expect(lr(50, { kind: 'constant' })).toBe(2e-4);
    expect(lr(500, { kind: 'constant' })).toBe(2e-4);
  });

  it('linear: (total - step) / (total - warmup) after warmup, clamped at 0', () => {
    // step 60: (110 - 60) / 100 = 0.5; step 85: 25 / 100 = 0.25; step 109: 1 / 100
    expect(lr(60, { kind: 'linear' })).toBeCloseTo(1e-4, 15);
    expect(lr(85, { kind: 'linear' })).toBeCloseTo(5e-5, 15);
    expect(lr(109, { kind: 'linear' })).toBeCloseTo(2e-6, 15);
    expect(lr(110, { kind: 'linear' })).toBe(0);
    expect(lr(200, { kind: 'linear' })).toBe(0);
  });

  it('cosine: half a cosine period from the peak to 0, rising again past totalSteps like transformers', () => {
    // progress 0.25 → 0.5 * (1 + cos(π/4)) = 0.8535533905932737
    expect(lrMultiplier(35, { kind: 'cosine', warmupSteps: 10, totalSteps: 110 })).toBeCloseTo(0.8535533905932737, 14);
    // progress 0.5 → 0.5; progress 0.75 → 0.5 * (1 - cos(π/4)) = 0.14644660940672627
    expect(lrMultiplier(60, { kind: 'cosine', warmupSteps: 10, totalSteps: 110 })).toBeCloseTo(0.5, 14);
    expect(lrMultiplier(85, { kind: 'cosine', warmupSteps: 10, totalSteps: 110 })).toBeCloseTo(0.14644660940672627, 14);
    expect(lrMultiplier(110, { kind: 'cosine', warmupSteps: 10, totalSteps: 110 })).toBeCloseTo(0, 14);
    // progress 1.2 → 0.5 * (1 + cos(1.2π)) = 0.09549150281252633 (transformers does not clamp here)
    expect(lrMultiplier(130, { kind: 'cosine', warmupSteps: 10, totalSteps: 110 })).toBeCloseTo(0.09549150281252633, 14);
    expect(lr(35, { kind: 'cosine' })).toBeCloseTo(2e-4 * 0.8535533905932737, 18);
  });

  it('without warmup starts at the peak', () => {
    for (const kind of ['constant', 'linear', 'cosine'] as const) expect(lr(0, { kind, warmupSteps: 0, totalSteps: 100 })).toBe(2e-4);
    // linear, no warmup, step 25 of 100: 75 / 100
    expect(lr(25, { kind: 'linear', warmupSteps: 0, totalSteps: 100 })).toBeCloseTo(1.5e-4, 15);
  });

  it('uses max(1, …) denominators like transformers when warmup equals the total or is 1', () => {
    expect(lrMultiplier(0, { kind: 'linear', warmupSteps: 1, totalSteps: 5 })).toBe(0);
    expect(lrMultiplier(1, { kind: 'linear', warmupSteps: 1, totalSteps: 5 })).toBe(1);
    expect(lrMultiplier(5, { kind: 'linear', warmupSteps: 5, totalSteps: 5 })).toBe(0);
    expect(lrMultiplier(5, { kind: 'cosine', warmupSteps: 5, totalSteps: 5 })).toBe(1);
  });

  it('rejects invalid arguments', () => {
    expect(() => lr(-1, { kind: 'linear' })).toThrow(RangeError);
    expect(() => lr(1.5, { kind: 'linear' })).toThrow(RangeError);
    expect(() => lr(1, { kind: 'linear', warmupSteps: -2 })).toThrow(RangeError);
    expect(() => lr(1, { kind: 'linear', peakLr: Number.NaN })).toThrow(RangeError);
    expect(() => lr(20, { kind: 'exponential' as 'linear' })).toThrow(/unknown schedule kind "exponential"/);
  });
});

describe('warmupStepsFromRatio', () => {
  it('is ceil(total * ratio), like TrainingArguments.get_warmup_steps', () => {
    expect(warmupStepsFromRatio(0.1, 1000)).toBe(100);
    expect(warmupStepsFromRatio(0.05, 37)).toBe(2); // 1.85 → 2
    expect(warmupStepsFromRatio(0, 37)).toBe(0);
    expect(() => warmupStepsFromRatio(1.5, 10)).toThrow(RangeError);
  });
});
