// Helpers shared by the kernel tests: validation-checked running and binding, forced grid folding,
// finite differences.
import type { Gpu } from '../../src/engine/gpu/gpu';
import { runOps, type Dispatch, type Op } from '../../src/engine/gpu/dispatch';

/** Runs ops and fails on any WebGPU validation error (they are otherwise only logged). */
export async function run(gpu: Gpu, ops: Op[]): Promise<void> {
  gpu.device.pushErrorScope('validation');
  runOps(gpu, ops);
  const err = await gpu.device.popErrorScope();
  if (err) throw new Error(`WebGPU validation error: ${err.message}`);
}

/** Binds inside a validation scope too (pipeline creation errors show up there). */
export async function bind<T extends Dispatch | Op[]>(gpu: Gpu, make: () => T): Promise<T> {
  gpu.device.pushErrorScope('validation');
  const d = make();
  const err = await gpu.device.popErrorScope();
  if (err) throw new Error(`WebGPU validation error: ${err.message}`);
  return d;
}

/** The same bound kernel, dispatched on a folded 2-D grid (what the wrappers do past 65535 groups). */
export const folded = (d: Dispatch, x: number, y: number): Dispatch => ({ ...d, workgroups: [x, y, 1] });

/** Central finite differences of a scalar f64 function at x. */
export function numericGrad(f: (x: Float64Array) => number, x: Float64Array, h = 1e-6): Float64Array {
  const g = new Float64Array(x.length);
  for (let i = 0; i < x.length; i++) {
    const xp = Float64Array.from(x);
    const xm = Float64Array.from(x);
    xp[i] += h;
    xm[i] -= h;
    g[i] = (f(xp) - f(xm)) / (2 * h);
  }
  return g;
}

export const dot = (a: ArrayLike<number>, b: ArrayLike<number>): number => {
  let s = 0;
  for (let i = 0; i < a.length; i++) s += a[i] * b[i];
  return s;
};
