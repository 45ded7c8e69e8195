// TrainSettings.precision: the three ways the frozen layers' products can run (src/worker/settings.ts).
import { describe, expect, it } from 'vitest';
import { DEFAULT_SETTINGS, PRECISIONS, validateSettings, type SettingLimits, type TrainSettings } from '../src/worker/settings';

const limits: SettingLimits = { maxPositions: 1024, availableTargets: ['c_attn', 'c_proj', 'c_fc'], task: 'classification', unavailable: {} };
const base: TrainSettings = { ...DEFAULT_SETTINGS, targetModules: ['c_attn'] };

describe('precision setting', () => {
  it('takes mixed, f32 on tensor cores and f32 (mixed by default)', () => {
    expect(DEFAULT_SETTINGS.precision).toBe('mixed');
    expect([...PRECISIONS]).toEqual(['mixed', 'f32-tensor-cores', 'f32']);
    for (const precision of PRECISIONS) expect(validateSettings({ ...base, precision }, limits), precision).toEqual({});
  });
  it('names the values it takes when given another', () => {
    const e = validateSettings({ ...base, precision: 'f16' as TrainSettings['precision'] }, limits);
    expect(e.precision).toBe('Precision is "mixed", "f32-tensor-cores", "f32" (got "f16").');
  });
});
