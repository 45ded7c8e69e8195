// --tuning k=v,...: KernelTuning values from the command line (booleans as true/false, numbers,
// other words as they are: flashAttention=auto), for the benches.
import type { KernelTuning } from '../src/engine/gpu/gpu';

export function tuningArg(arg: string | undefined): Partial<KernelTuning> {
  return Object.fromEntries((arg ? arg.split(',') : []).map((kv) => {
    const [k, v] = kv.split('=');
    return [k, v === 'true' || v === 'false' ? v === 'true' : Number.isFinite(Number(v)) ? Number(v) : v];
  }));
}
