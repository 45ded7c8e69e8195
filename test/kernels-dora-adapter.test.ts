// Kernels of DoRA and the bottleneck adapters against float64 references: DoRA's weight norm of
// the merged weight in both weight layouts (and a folded grid), column scaling with a shift and
// a bias, column dot products divided per column; SiLU forward and backward (the backward also
// against finite differences of the float64 forward).
import { describe, expect, it } from 'vitest';
import { testGpu, randArray, expectClose } from './helpers/gpu';
import { doraWeightNorm, scaleShiftColumns, columnDotDiv } from '../src/engine/kernels/dora';
import { siluBackward, siluForward } from '../src/engine/kernels/silu';
import { bind, folded, run } from './helpers/kernel-check';

/** norm[o] = ||W[o,:] + s (B A)[o,:]||, W given as [N, K] (out_in) or [K, N] (in_out). */
function weightNormRef(W: ArrayLike<number>, layout: 'in_out' | 'out_in', A: ArrayLike<number>, B: ArrayLike<number>, s: number, N: number, K: number, r: number): Float64Array {
  const out = new Float64Array(N);
  for (let o = 0; o < N; o++) {
    let sum = 0;
    for (let k = 0; k < K; k++) {
      let ba = 0;
      for (let j = 0; j < r; j++) ba += B[o * r + j] * A[j * K + k];
      const w = (layout === 'out_in' ? W[o * K + k] : W[k * N + o]) + s * ba;
      sum += w * w;
    }
    out[o] = Math.sqrt(sum);
  }
  return out;
}

describe('doraWeightNorm', () => {
  it('is the per-output-feature norm of W + scale * B A in both layouts; gscale = m / norm', async () => {
    const gpu = await testGpu();
    const N = 70, K = 131, r = 3, scale = 1.7;
    const Wd = randArray(N * K, 1, 0.5), Ad = randArray(r * K, 2, 0.4), Bd = randArray(N * r, 3, 0.4), md = randArray(N, 4, 2);
    const W = gpu.tensorFrom(Wd, [N * K], 'W'), A = gpu.tensorFrom(Ad, [r, K], 'A'), B = gpu.tensorFrom(Bd, [N, r], 'B'), m = gpu.tensorFrom(md, [N], 'm');
    const norm = gpu.tensor([N], 'norm'), gscale = gpu.tensor([N], 'gscale');
    for (const layout of ['out_in', 'in_out'] as const) {
      const d = await bind(gpu, () => doraWeightNorm(gpu, { W, layout, A, B, m, scale, norm, gscale, N, K, r }));
      await run(gpu, [d]);
      const want = weightNormRef(Wd, layout, Ad, Bd, scale, N, K, r);
      expectClose(await gpu.read(norm), want, 2e-6, `norm ${layout}`);
      expectClose(await gpu.read(gscale), Float64Array.from(md, (v, i) => v / want[i]), 2e-6, `gscale ${layout}`);
      // the same dispatch folded over a 2-D grid (what happens past 65535 rows)
      await run(gpu, [{ kind: 'clear', buffer: norm.buffer }, folded(d, 9, 8)]);
      expectClose(await gpu.read(norm), want, 2e-6, `norm ${layout} (folded grid)`);
    }
    // B = 0 (PEFT's init): the norm of W alone
    const zero = gpu.tensor([N, r], 'B0');
    await run(gpu, [doraWeightNorm(gpu, { W, layout: 'in_out', A, B: zero, m, scale, norm, gscale, N, K, r })]);
    expectClose(await gpu.read(norm), weightNormRef(Wd, 'in_out', Ad, new Float32Array(N * r), 0, N, K, r), 2e-6, 'norm of W');
    expect(() => doraWeightNorm(gpu, { W, layout: 'in_out', A, B, m, scale, norm, gscale: norm, N, K, r })).toThrow(/alias/);
  });
});

describe('scaleShiftColumns / columnDotDiv', () => {
  it('out (+)= x * (s + shift) (+ bias), and sum over rows of a * b / d', async () => {
    const gpu = await testGpu();
    const rows = 37, N = 23;
    const xd = randArray(rows * N, 5), sd = randArray(N, 6, 2), bd = randArray(N, 7), od = randArray(rows * N, 8);
    const x = gpu.tensorFrom(xd, [rows, N], 'x'), s = gpu.tensorFrom(sd, [N], 's'), bias = gpu.tensorFrom(bd, [N], 'bias');
    const out = gpu.tensorFrom(od, [rows, N], 'out');
    await run(gpu, [scaleShiftColumns(gpu, { x, s, shift: -1, out, rows, N, accumulate: true })]);
    expectClose(await gpu.read(out), Float64Array.from(od, (v, i) => v + xd[i] * (sd[i % N] - 1)), 1e-5, 'shift, accumulate', 1e-2);
    await run(gpu, [scaleShiftColumns(gpu, { x, s, shift: 0, bias, out, rows, N, accumulate: false })]);
    expectClose(await gpu.read(out), Float64Array.from(xd, (v, i) => v * sd[i % N] + bd[i % N]), 1e-5, 'bias', 1e-2);
    expect(() => scaleShiftColumns(gpu, { x, s, shift: 0, out: x, rows, N, accumulate: false })).toThrow(/alias/);

    const ad = randArray(rows * N, 9), dd = Float32Array.from(randArray(N, 10), (v) => 0.5 + Math.abs(v));
    const a = gpu.tensorFrom(ad, [rows, N], 'a'), d = gpu.tensorFrom(dd, [N], 'd');
    const dot = gpu.tensorFrom(Float32Array.from({ length: N }, (_, i) => i), [N], 'dot');
    const want = new Float64Array(N);
    for (let c = 0; c < N; c++) {
      for (let r = 0; r < rows; r++) want[c] += ad[r * N + c] * xd[r * N + c];
      want[c] = want[c] / dd[c] + c;
    }
    await run(gpu, [columnDotDiv(gpu, { a, b: x, d, out: dot, rows, N, accumulate: true })]);
    expectClose(await gpu.read(dot), want, 1e-5, 'column dot / d (accumulated)');
  });
});

describe('SiLU', () => {
  const silu = (v: number): number => v / (1 + Math.exp(-v));
  it('forward and backward match float64 (in place too, extreme arguments finite)', async () => {
    const gpu = await testGpu();
    const n = 1000;
    const xd = randArray(n, 11, 8);
    xd[0] = -200; xd[1] = 200; xd[2] = 0; xd[3] = -90;
    const dd = randArray(n, 12);
    const x = gpu.tensorFrom(xd, [n], 'x'), y = gpu.tensor([n], 'y'), dy = gpu.tensorFrom(dd, [n], 'dy'), dx = gpu.tensor([n], 'dx');
    await run(gpu, [siluForward(gpu, { x, out: y, n }), siluBackward(gpu, { dout: dy, x, dx, n })]);
    const gotY = await gpu.read(y), gotDx = await gpu.read(dx);
    expect(gotY.every(Number.isFinite) && gotDx.every(Number.isFinite)).toBe(true);
    expectClose(gotY, Float64Array.from(xd, silu), 1e-6, 'silu');
    const grad = (v: number): number => {
      const s = 1 / (1 + Math.exp(-v));
      return s * (1 + v * (1 - s));
    };
    expectClose(gotDx, Float64Array.from(xd, (v, i) => dd[i] * grad(v)), 1e-5, 'silu backward', 1e-2);
    // the analytic gradient is the derivative of the forward (central differences, away from huge |x|)
    for (let i = 4; i < 40; i++) {
      const h = 1e-5;
      const fd = (silu(xd[i] + h) - silu(xd[i] - h)) / (2 * h);
      expect(Math.abs(grad(xd[i]) - fd)).toBeLessThan(1e-7);
    }
    const ip = gpu.tensorFrom(xd, [n], 'ip'), dip = gpu.tensorFrom(dd, [n], 'dip');
    await run(gpu, [siluBackward(gpu, { dout: dip, x: ip, dx: dip, n }), siluForward(gpu, { x: ip, out: ip, n })]);
    expect(Array.from(await gpu.read(ip))).toEqual(Array.from(gotY));
    expect(Array.from(await gpu.read(dip))).toEqual(Array.from(gotDx));
  });
});
