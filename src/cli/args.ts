import fs from 'node:fs';
import path from 'node:path';
import type { AdapterFilesIn } from '../engine/peft/import';

// Small helpers for the command-line entry points: argument checks that fail with one clear line.

export class CliError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'CliError';
  }
}

export function number(text: string, flag: string, min = -Infinity, max = Infinity): number {
  const v = Number(text);
  if (text.trim() === '' || !Number.isFinite(v)) throw new CliError(`${flag} ${text}: not a number`);
  if (v < min || v > max) throw new CliError(`${flag} ${text}: must be ${max === Infinity ? `at least ${min}` : `between ${min} and ${max}`}`);
  return v;
}

export function integer(text: string, flag: string, min = -Infinity, max = Infinity): number {
  const v = number(text, flag, min, max);
  if (!Number.isInteger(v)) throw new CliError(`${flag} ${text}: must be a whole number`);
  return v;
}

export function formatDuration(ms: number): string {
  if (!Number.isFinite(ms)) return '?';
  const s = Math.round(ms / 1000);
  if (s < 60) return `${s}s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m}m${String(s % 60).padStart(2, '0')}s`;
  return `${Math.floor(m / 60)}h${String(m % 60).padStart(2, '0')}m`;
}

/**
 * The two files of an adapter folder, as importPeftAdapter takes them: adapter_config.json and
 * PEFT's adapter_model.safetensors, or AdapterHub's adapter.safetensors (bottleneck adapters).
 */
export function readAdapterDir(dir: string): AdapterFilesIn {
  const has = (f: string): boolean => fs.existsSync(path.join(dir, f));
  const read = (f: string): Buffer => {
    if (!has(f)) throw new CliError(`${dir}: no ${f} (an adapter folder holds adapter_config.json and adapter_model.safetensors, or AdapterHub's adapter.safetensors)`);
    return fs.readFileSync(path.join(dir, f));
  };
  const config = read('adapter_config.json').toString('utf8');
  if (!has('adapter_model.safetensors') && !has('adapter.safetensors') && has('pytorch_adapter.bin')) {
    throw new CliError(`${dir}: pytorch_adapter.bin is a pickle; save the AdapterHub adapter with safetensors (model.save_adapter(..., use_safetensors=True)) to load it here`);
  }
  const weights = has('adapter_model.safetensors') || !has('adapter.safetensors') ? 'adapter_model.safetensors' : 'adapter.safetensors';
  return { name: path.basename(dir), config, weights: new Uint8Array(read(weights)) };
}

/** The steady-state step time from the elapsed-ms of each step's report (the first step compiles every pipeline). */
export function stepTimeLine(reportElapsedMs: readonly number[]): string | null {
  const n = reportElapsedMs.length;
  if (n < 3) return null;
  const steady = (reportElapsedMs[n - 1] - reportElapsedMs[0]) / (n - 1);
  return `step time: ${steady.toFixed(1)} ms/step over steps 2-${n} (first step ${reportElapsedMs[0].toFixed(0)} ms, with pipeline compilation)`;
}
