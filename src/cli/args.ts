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
