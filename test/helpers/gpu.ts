// Shared test utilities: one Gpu per test file, seeded random data, float64 comparisons.
import { createNodeGpu } from '../../src/engine/gpu/node-gpu';
import type { Gpu } from '../../src/engine/gpu/gpu';
import { seededRandom } from '../../src/data/batches';

let gpuPromise: Promise<Gpu> | null = null;
export function testGpu(): Promise<Gpu> {
  gpuPromise ??= createNodeGpu();
  return gpuPromise;
}

/** Deterministic PRNG (mulberry32, the one the data pipeline uses). */
export const rng = seededRandom;

/** n values uniform in [-scale, scale). */
export function randArray(n: number, seed: number, scale = 1): Float32Array {
  const r = rng(seed);
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) out[i] = (r() * 2 - 1) * scale;
  return out;
}

/** Float64 copy of a float32 array (references compute in f64 from the same f32 inputs). */
export const f64 = (a: ArrayLike<number>): Float64Array => Float64Array.from(a);

/**
 * Largest error of `got` against `want`, each element's error relative to max(|want_i|, floor)
 * where floor defaults to 1e-3 of the reference's largest magnitude (so tiny values don't explode
 * the ratio). Returns the worst error and where.
 */
export function maxRelError(got: ArrayLike<number>, want: ArrayLike<number>, floorFrac = 1e-3): { err: number; at: number } {
  if (got.length !== want.length) throw new Error(`length ${got.length} vs ${want.length}`);
  let maxAbs = 0;
  for (let i = 0; i < want.length; i++) maxAbs = Math.max(maxAbs, Math.abs(want[i]));
  const floor = Math.max(maxAbs * floorFrac, 1e-30);
  let err = 0;
  let at = -1;
  for (let i = 0; i < want.length; i++) {
    const e = Math.abs(got[i] - want[i]) / Math.max(Math.abs(want[i]), floor);
    if (!(e <= err)) {
      err = e;
      at = i;
      if (Number.isNaN(e)) return { err: Infinity, at: i };
    }
  }
  return { err, at };
}

/** Throws with a readable message when the relative error exceeds tol. */
export function expectClose(got: ArrayLike<number>, want: ArrayLike<number>, tol: number, what = 'values', floorFrac = 1e-3): void {
  const { err, at } = maxRelError(got, want, floorFrac);
  if (!(err <= tol)) {
    throw new Error(`${what}: relative error ${err.toExponential(3)} > ${tol} at index ${at} (got ${got[at]}, want ${want[at]})`);
  }
}
