// When "Start training" can be pressed (src/app/start-gate.ts).
import { describe, expect, it } from 'vitest';
import { startGate, type StartGateInput } from '../src/app/start-gate';

const ready: StartGateInput = {
  phase: 'idle',
  gpuReady: true,
  dataReady: true,
  modelReady: true,
  hasMapping: true,
  settingErrorCount: 0,
  prepareStatus: 'ready',
  adapterName: 'reviews',
};

describe('startGate', () => {
  it('lets Start be pressed while the settings are being checked again (a press right after typing a setting is not lost)', () => {
    expect(startGate(ready).canStart).toBe(true);
    expect(startGate({ ...ready, prepareStatus: 'running' })).toEqual({ idle: true, blockers: [], canStart: true });
  });

  it('waits while the check failed, nothing was checked yet, or the name is empty', () => {
    expect(startGate({ ...ready, prepareStatus: 'error' }).canStart).toBe(false);
    expect(startGate({ ...ready, prepareStatus: 'idle' }).canStart).toBe(false);
    expect(startGate({ ...ready, adapterName: '  ' }).canStart).toBe(false);
  });

  it('names what it waits for', () => {
    const g = startGate({ ...ready, gpuReady: false, modelReady: false, settingErrorCount: 2 });
    expect(g.canStart).toBe(false);
    expect(g.blockers).toEqual(['a working WebGPU device', 'a base model (step 2)', 'valid settings (the fields marked in red)']);
    expect(startGate({ ...ready, hasMapping: false }).blockers).toEqual(['a column mapping']);
    // no mapping is asked for before both the data and the model are there
    expect(startGate({ ...ready, dataReady: false, hasMapping: false }).blockers).toEqual(['training data (step 1)']);
  });

  it('shows no Start while a run is active; after one ended or failed it does', () => {
    for (const phase of ['starting', 'training', 'pausing', 'paused', 'stopping', 'saving'] as const) {
      expect(startGate({ ...ready, phase }), phase).toMatchObject({ idle: false, canStart: false });
    }
    for (const phase of ['done', 'failed'] as const) expect(startGate({ ...ready, phase }), phase).toMatchObject({ idle: true, canStart: true });
  });
});
