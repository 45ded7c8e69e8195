// Dropout, global gradient-norm clipping and AdamW (with the per-step uniform buffer) against
// float64 references of torch's formulas.
import { describe, expect, it } from 'vitest';
import { testGpu, randArray, rng, expectClose, f64 } from './helpers/gpu';
import type { Gpu } from '../src/engine/gpu/gpu';
import { runOps, type Dispatch, type Op } from '../src/engine/gpu/dispatch';
import { StepUniforms, type StepValues } from '../src/engine/kernels/step-uniforms';
import { dropoutForward, dropoutBackward, dropoutThreshold } from '../src/engine/kernels/dropout';
import { sumOfSquares, clipCoefficient, gradNormPartials, sumOfSquaresPartials } from '../src/engine/kernels/grad-norm';
import { chunkSumsOfSquares } from './helpers/norm-reference';
import { adamwUpdate } from '../src/engine/kernels/adamw';
import { run, bind, folded } from './helpers/kernel-check';

const stepValues = (over: Partial<StepValues> = {}): StepValues => ({
  lr: 1e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 0.01, step: 1, seed: 1234, ...over,
});

// ---------------------------------------------------------------- dropout

/** The shader's hash, in JS, to regenerate the keep mask independently. */
function pcg(v: number): number {
  const state = (Math.imul(v >>> 0, 747796405) + 2891336453) >>> 0;
  const word = Math.imul(((state >>> ((state >>> 28) + 4)) ^ state) >>> 0, 277803737) >>> 0;
  return ((word >>> 22) ^ word) >>> 0;
}
function keepMask(n: number, seed: number, salt: number, p: number): Uint8Array {
  const key = pcg((seed ^ pcg(salt)) >>> 0);
  const threshold = dropoutThreshold(p);
  const mask = new Uint8Array(n);
  for (let i = 0; i < n; i++) mask[i] = pcg((pcg(i) ^ key) >>> 0) >= threshold ? 1 : 0;
  return mask;
}

describe('dropout', () => {
  it('p = 0 is the exact identity, forward and backward', async () => {
    const gpu = await testGpu();
    const step = new StepUniforms(gpu);
    step.write(stepValues({ seed: 99 }));
    const n = 1000;
    const x = randArray(n, 90, 3);
    x[0] = 1e-40; // a denormal; still must come back bit-identical... unless the device flushes them
    const tx = gpu.tensorFrom(x, [n], 'x'), out = gpu.tensor([n], 'out'), dx = gpu.tensor([n], 'dx');
    await run(gpu, [
      await bind(gpu, () => dropoutForward(gpu, { x: tx, out, n, p: 0, step, salt: 5 })),
      await bind(gpu, () => dropoutBackward(gpu, { dout: tx, dx, n, p: 0, step, salt: 5, accumulate: false })),
    ]);
    const got = await gpu.read(out), gotDx = await gpu.read(dx);
    // GPUs may flush denormals to zero in arithmetic; everything else must be bit-exact.
    expect(got[0] === x[0] || got[0] === 0).toBe(true);
    expect(Array.from(got.subarray(1))).toEqual(Array.from(x.subarray(1)));
    expect(Array.from(gotDx.subarray(1))).toEqual(Array.from(x.subarray(1)));
  });

  it('drops a fraction p with the hashed mask, scales the rest, and backward reuses the mask', async () => {
    const gpu = await testGpu();
    const step = new StepUniforms(gpu);
    const n = 200_003, p = 0.1, salt = 7, seed = 4242;
    step.write(stepValues({ seed }));
    const x = randArray(n, 91, 2).map((v) => (v === 0 ? 0.5 : v));
    const dout = randArray(n, 92, 2).map((v) => (v === 0 ? 0.5 : v));
    const prior = randArray(n, 93);
    const tx = gpu.tensorFrom(x, [n], 'x'), out = gpu.tensor([n], 'out');
    const tdout = gpu.tensorFrom(dout, [n], 'dout'), dx = gpu.tensor([n], 'dx');
    const dxAcc = gpu.tensorFrom(prior, [n], 'dxAcc'), inPlace = gpu.tensorFrom(x, [n], 'xInPlace');
    await run(gpu, [
      await bind(gpu, () => dropoutForward(gpu, { x: tx, out, n, p, step, salt })),
      await bind(gpu, () => dropoutForward(gpu, { x: inPlace, out: inPlace, n, p, step, salt })),
      await bind(gpu, () => dropoutBackward(gpu, { dout: tdout, dx, n, p, step, salt, accumulate: false })),
      await bind(gpu, () => dropoutBackward(gpu, { dout: tdout, dx: dxAcc, n, p, step, salt, accumulate: true })),
    ]);
    const got = await gpu.read(out), gotInPlace = await gpu.read(inPlace);
    const gotDx = await gpu.read(dx), gotAcc = await gpu.read(dxAcc);
    const scale = Math.fround(1 / (1 - p));
    const mask = keepMask(n, seed, salt, p);
    let kept = 0, bothDropped = 0;
    for (let i = 0; i < n; i++) {
      kept += mask[i];
      if (i + 1 < n && !mask[i] && !mask[i + 1]) bothDropped++;
      const want = mask[i] ? Math.fround(x[i] * scale) : 0;
      const wantDx = mask[i] ? Math.fround(dout[i] * scale) : 0;
      if (got[i] !== want || gotInPlace[i] !== want || gotDx[i] !== wantDx) {
        throw new Error(`dropout element ${i}: got ${got[i]} / ${gotInPlace[i]} / ${gotDx[i]}, want ${want} / ${wantDx} (mask ${mask[i]})`);
      }
      if (Math.abs(gotAcc[i] - (prior[i] + wantDx)) > 1e-6 * (Math.abs(prior[i]) + Math.abs(wantDx))) {
        throw new Error(`dropout accumulate element ${i}: got ${gotAcc[i]}, want ${prior[i] + wantDx}`);
      }
    }
    // Bernoulli statistics: 5 standard deviations.
    expect(Math.abs(kept / n - (1 - p))).toBeLessThan(5 * Math.sqrt((p * (1 - p)) / n));
    expect(Math.abs(bothDropped / (n - 1) - p * p)).toBeLessThan(5 * Math.sqrt((p * p * (1 - p * p)) / n));
  });

  it('different seeds and salts give different masks; the seed is read from the step uniform', async () => {
    const gpu = await testGpu();
    const step = new StepUniforms(gpu);
    const n = 50_000, p = 0.5;
    const x = new Float32Array(n).fill(1);
    const tx = gpu.tensorFrom(x, [n], 'ones');
    const outA = gpu.tensor([n], 'a'), outB = gpu.tensor([n], 'b'), outC = gpu.tensor([n], 'c');
    const fa = await bind(gpu, () => dropoutForward(gpu, { x: tx, out: outA, n, p, step, salt: 1 }));
    const fb = await bind(gpu, () => dropoutForward(gpu, { x: tx, out: outB, n, p, step, salt: 1 }));
    const fc = await bind(gpu, () => dropoutForward(gpu, { x: tx, out: outC, n, p, step, salt: 2 }));
    step.write(stepValues({ seed: 1 }));
    await run(gpu, [fa, fc]);
    step.write(stepValues({ seed: 2 })); // same bound kernel, next step: new mask without rebinding
    await run(gpu, [fb]);
    const a = await gpu.read(outA), b = await gpu.read(outB), c = await gpu.read(outC);
    const differ = (u: Float32Array, v: Float32Array) => u.reduce((k, ui, i) => k + (ui !== v[i] ? 1 : 0), 0) / n;
    // Independent masks with p = 0.5 disagree on half of the elements.
    for (const [what, frac] of [['seeds', differ(a, b)], ['salts', differ(a, c)]] as const) {
      expect(Math.abs(frac - 0.5), `masks of different ${what}`).toBeLessThan(5 * Math.sqrt(0.25 / n));
    }
    expect(Array.from(a)).toEqual(Array.from(keepMask(n, 1, 1, p), (k) => k * 2));
    expect(Array.from(b)).toEqual(Array.from(keepMask(n, 2, 1, p), (k) => k * 2));
  });

  it('works on a folded grid', async () => {
    const gpu = await testGpu();
    const step = new StepUniforms(gpu);
    step.write(stepValues({ seed: 77 }));
    const n = 1300, p = 0.3;
    const x = randArray(n, 94);
    const tx = gpu.tensorFrom(x, [n], 'x'), out = gpu.tensor([n], 'out');
    await run(gpu, [folded(await bind(gpu, () => dropoutForward(gpu, { x: tx, out, n, p, step, salt: 3 })), 2, 3)]);
    const mask = keepMask(n, 77, 3, p);
    const scale = Math.fround(1 / (1 - p));
    expect(Array.from(await gpu.read(out))).toEqual(Array.from(x, (v, i) => (mask[i] ? Math.fround(v * scale) : 0)));
  });

  it('rejects bad arguments', async () => {
    const gpu = await testGpu();
    const step = new StepUniforms(gpu);
    const x = gpu.tensor([10], 'x'), y = gpu.tensor([10], 'y');
    expect(() => dropoutForward(gpu, { x, out: y, n: 10, p: 1, step, salt: 0 })).toThrow(/p must be in \[0, 1\)/);
    expect(() => dropoutForward(gpu, { x, out: y, n: 11, p: 0.1, step, salt: 0 })).toThrow(/need n=11/);
    expect(() => dropoutBackward(gpu, { dout: x, dx: x, n: 10, p: 0.1, step, salt: 0, accumulate: true })).toThrow(/accumulate/);
    expect(() => dropoutForward(gpu, { x, out: y, n: 10, p: 0.1, step, salt: -1 })).toThrow(/salt/);
  });
});

// ---------------------------------------------------------------- gradient norm

describe('grad norm', () => {
  it('sums squares per 4096-element chunk of each tensor and derives the clip coefficient like torch', async () => {
    const gpu = await testGpu();
    // empty, one element, under one chunk, exactly one chunk, one past it, many chunks with a short last one
    const sizes = [0, 1, 300, 4096, 4097, 70_000];
    const grads = sizes.map((n, k) => randArray(Math.max(n, 1), 100 + k, 0.05));
    const tensors = grads.map((g, k) => gpu.tensorFrom(g, [g.length], `g${k}`));
    const parts = sizes.map(sumOfSquaresPartials);
    expect(parts).toEqual([1, 1, 1, 1, 2, 18]);
    const count = gradNormPartials(sizes);
    const starts = parts.map((_, k) => parts.slice(0, k).reduce((a, b) => a + b, 0));
    // one more slot than needed, holding a sentinel that must stay
    const partials = gpu.tensorFrom(randArray(count + 1, 105, 9).map((v, i) => (i === count ? 12345 : v)), [count + 1], 'partials');
    const clips = [0, 1e9, 0.5].map((_, k) => gpu.tensor([2], `clip${k}`));
    await run(gpu, [
      ...tensors.map((x, k) => sumOfSquares(gpu, { x, n: sizes[k], out: partials, outIndex: starts[k] })),
      ...[0, 1e9, 0.5].map((maxNorm, k) => clipCoefficient(gpu, { partials, count, maxNorm, out: clips[k] })),
    ]);
    const want = chunkSumsOfSquares(grads, sizes);
    want.push(12345);
    expectClose(await gpu.read(partials), want, 1e-6, 'sum of squares per chunk');
    const norm = Math.sqrt(want.slice(0, count).reduce((a, b) => a + b, 0));
    expect(norm).toBeGreaterThan(0.5); // so that maxNorm = 0.5 clips
    expectClose(await gpu.read(clips[0]), [norm, 1], 1e-6, 'clip, maxNorm 0 (off)');
    expectClose(await gpu.read(clips[1]), [norm, 1], 1e-6, 'clip, maxNorm above the norm');
    expectClose(await gpu.read(clips[2]), [norm, 0.5 / (norm + 1e-6)], 1e-6, 'clip, maxNorm below the norm');
  });

  it('sums more partials than the workgroup size', async () => {
    const gpu = await testGpu();
    const count = 300;
    const parts = randArray(count, 106, 1).map(Math.abs);
    const partials = gpu.tensorFrom(parts, [count], 'partials'), out = gpu.tensor([2], 'clip');
    await run(gpu, [clipCoefficient(gpu, { partials, count, maxNorm: 1, out })]);
    const norm = Math.sqrt(f64(parts).reduce((a, b) => a + b, 0));
    expectClose(await gpu.read(out), [norm, 1 / (norm + 1e-6)], 1e-6, 'clip over 300 partials');
  });

  it('rejects bad arguments', async () => {
    const gpu = await testGpu();
    const x = gpu.tensor([10], 'x'), out = gpu.tensor([1], 'out');
    expect(() => sumOfSquares(gpu, { x, n: 10, out, outIndex: 1 })).toThrow(/out/);
    // 5000 elements make two partials: index 9 of a 10-element out leaves no room for the second
    const big = gpu.tensor([5000], 'big'), ten = gpu.tensor([10], 'ten');
    expect(() => sumOfSquares(gpu, { x: big, n: 5000, out: ten, outIndex: 9 })).toThrow(/2 partials/);
    expect(() => sumOfSquares(gpu, { x: big, n: 5000, out: ten, outIndex: 8 })).not.toThrow();
    expect(() => clipCoefficient(gpu, { partials: x, count: 10, maxNorm: 1, out })).toThrow(/2 elements/);
    expect(() => clipCoefficient(gpu, { partials: x, count: 11, maxNorm: 1, out: gpu.tensor([2], 'c') })).toThrow(/count=11/);
  });
});

// ---------------------------------------------------------------- adamw

describe('adamwUpdate', () => {
  /** torch.optim.AdamW's update, in f64. */
  function adamwRef(p: Float64Array, m: Float64Array, v: Float64Array, g: ArrayLike<number>, s: StepValues, clip: number): void {
    const bc1 = 1 - s.beta1 ** s.step, bc2 = 1 - s.beta2 ** s.step;
    for (let i = 0; i < p.length; i++) {
      const gi = g[i] * clip;
      p[i] *= 1 - s.lr * s.weightDecay;
      m[i] = s.beta1 * m[i] + (1 - s.beta1) * gi;
      v[i] = s.beta2 * v[i] + (1 - s.beta2) * gi * gi;
      const denom = Math.sqrt(v[i]) / Math.sqrt(bc2) + s.eps;
      p[i] -= (s.lr / bc1) * (m[i] / denom);
    }
  }
  // The GPU sees every hyperparameter rounded to f32; so does the reference.
  const asF32 = (s: StepValues): StepValues => ({ ...s, lr: Math.fround(s.lr), beta1: Math.fround(s.beta1), beta2: Math.fround(s.beta2), eps: Math.fround(s.eps), weightDecay: Math.fround(s.weightDecay) });

  async function check(n: number, fold?: [number, number]) {
    const gpu = await testGpu();
    const step = new StepUniforms(gpu);
    const p0 = randArray(n, 110, 0.1); // LoRA-like magnitudes (A is ~U(-0.1, 0.1) for rank 8..64)
    const tp = gpu.tensorFrom(p0, [n], 'param'), tm = gpu.tensor([n], 'm'), tv = gpu.tensor([n], 'v');
    const tg = gpu.tensor([n], 'grad'), tclip = gpu.tensor([2], 'clip');
    let d = await bind(gpu, () => adamwUpdate(gpu, { param: tp, grad: tg, m: tm, v: tv, n, step, clip: tclip }));
    if (fold) d = folded(d, fold[0], fold[1]);
    const p = f64(p0), m = new Float64Array(n), v = new Float64Array(n);
    const r = rng(111);
    for (let t = 1; t <= 5; t++) {
      // Gradients spanning magnitudes: some exactly 0, some ~1e-9 (so eps matters), most ~0.1.
      const g = randArray(n, 120 + t, 0.1).map((x, i) => (i % 7 === 0 ? 0 : i % 5 === 0 ? x * 1e-8 : x));
      const clip = t === 3 ? 1 : 0.5 + 0.5 * r();
      const s = stepValues({ lr: 0.02 / t, weightDecay: 0.1, step: t, eps: 1e-8, beta1: 0.9, beta2: 0.95 });
      gpu.write(tg, g);
      gpu.write(tclip, Float32Array.of(123, clip)); // element 0 (the norm) must not be used
      step.write(s); // per-step values in the uniform: the same bound dispatch runs every step
      await run(gpu, [d]);
      adamwRef(p, m, v, g, asF32(s), Math.fround(clip));
    }
    const [gp, gm, gv] = [await gpu.read(tp), await gpu.read(tm), await gpu.read(tv)];
    // m and v are short f32 recurrences: a few ulps per step. m averages gradients of both signs,
    // so it cancels and is compared against 1% of its largest magnitude; v's terms are all >= 0.
    expectClose(gm, m, 1e-5, `adamw m n=${n}`, 1e-2);
    expectClose(gv, v, 1e-5, `adamw v n=${n}`);
    // |p| <= 0.1 moves by up to ~0.046 in total (sum of lr): compare the movement p - p0, whose f32
    // error is about an ulp of p per step (<= 7.5e-9 each, ~4e-8 in all), against 1% of the largest
    // movement (~4.6e-4): ~1e-4 relative.
    const delta = f64(gp).map((x, i) => x - p0[i]);
    const wantDelta = p.map((x, i) => x - p0[i]);
    expectClose(delta, wantDelta, 3e-4, `adamw param update n=${n}`, 1e-2);
  }

  it('matches torch.optim.AdamW over 5 steps with clipping, weight decay and a changing lr', async () => {
    await check(1000);
    await check(1);
  });

  it('works on a folded grid', async () => {
    await check(1300, [2, 3]);
  });

  it('rejects bad arguments', async () => {
    const gpu = await testGpu();
    const step = new StepUniforms(gpu);
    const t = () => gpu.tensor([10], 't');
    const [param, grad, m, v] = [t(), t(), t(), t()];
    const clip = gpu.tensor([2], 'clip');
    expect(() => adamwUpdate(gpu, { param, grad, m, v, n: 11, step, clip })).toThrow(/need n=11/);
    expect(() => adamwUpdate(gpu, { param, grad, m: param, v, n: 10, step, clip })).toThrow(/distinct/);
    expect(() => adamwUpdate(gpu, { param, grad, m, v, n: 10, step, clip: gpu.tensor([1], 'c1') })).toThrow(/clip/);
    expect(() => step.write(stepValues({ step: 0 }))).toThrow(/step/);
    expect(() => step.write(stepValues({ seed: -1 }))).toThrow(/seed/);
    expect(() => step.write(stepValues({ beta2: 1 }))).toThrow(/betas/);
  });
});
