// Whether "Start training" can be pressed, and if not, what it waits for.
//
// A check of the settings (the worker's prepare) runs 250 ms after each change and takes a moment:
// Start stays pressable while it runs. The run checks everything prepare checks before it trains
// (and shares the examples being built), so a press then is never lost: a button that turned
// disabled for the check's few hundred milliseconds swallowed the click of a user who pressed
// Start right after typing a setting.

import type { PrepareState, RunPhase } from './store';

export interface StartGateInput {
  /** The run's phase: Start shows only when no run is active. */
  phase: RunPhase;
  gpuReady: boolean;
  dataReady: boolean;
  modelReady: boolean;
  hasMapping: boolean;
  settingErrorCount: number;
  prepareStatus: PrepareState['status'];
  adapterName: string;
}

export interface StartGate {
  /** No run is active (Start, not Pause / Stop, shows). */
  idle: boolean;
  canStart: boolean;
  /** What Start waits for, in words ("a base model (step 2)"), when it can show but not be pressed. */
  blockers: string[];
}

export function startGate(s: StartGateInput): StartGate {
  const idle = ['idle', 'done', 'failed'].includes(s.phase);
  const blockers: string[] = [];
  if (!s.gpuReady) blockers.push('a working WebGPU device');
  if (!s.dataReady) blockers.push('training data (step 1)');
  if (!s.modelReady) blockers.push('a base model (step 2)');
  if (s.settingErrorCount > 0) blockers.push('valid settings (the fields marked in red)');
  if (s.dataReady && s.modelReady && !s.hasMapping) blockers.push('a column mapping');
  // 'error': the check said what to fix (shown below Start); 'idle': nothing checked yet.
  const checked = s.prepareStatus === 'ready' || s.prepareStatus === 'running';
  return { idle, blockers, canStart: idle && blockers.length === 0 && checked && s.adapterName.trim() !== '' };
}
