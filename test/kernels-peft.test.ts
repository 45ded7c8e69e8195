// Kernels of the non-LoRA adapter methods against float64 references: the attention softmax with
// always-visible prefix keys (and its backward against finite differences of the reference),
// IA3's column scaling and column dot products, prompt tuning's virtual rows, and tanh.
import { describe, expect, it } from 'vitest';
import { testGpu, randArray, expectClose } from './helpers/gpu';
import type { Gpu } from '../src/engine/gpu/gpu';
import { runOps, type Op } from '../src/engine/gpu/dispatch';
import { attentionPrefixSoftmaxBackward, attentionPrefixSoftmaxForward } from '../src/engine/kernels/attention-prefix-softmax';
import { attentionSoftmaxForward } from '../src/engine/kernels/attention-softmax';
import { addRows, columnDot, scaleColumns, sumRows, tanhBackward, tanhForward } from '../src/engine/kernels/peft-ops';
import { run } from './helpers/kernel-check';

/** float64 softmax rows with P visible prefix columns, then real columns masked by length and causality. */
function prefixSoftmaxRef(s: ArrayLike<number>, lengths: number[], B: number, H: number, T: number, P: number, scale: number, causal: boolean): Float64Array {
  const n = P + T;
  const out = new Float64Array(B * H * T * n);
  for (let b = 0; b < B; b++) {
    for (let h = 0; h < H; h++) {
      for (let i = 0; i < T; i++) {
        const base = ((b * H + h) * T + i) * n;
        const ok = (c: number): boolean => c < P || (c - P < lengths[b] && (!causal || c - P <= i));
        let mx = -Infinity;
        for (let c = 0; c < n; c++) if (ok(c)) mx = Math.max(mx, scale * s[base + c]);
        let sum = 0;
        for (let c = 0; c < n; c++) if (ok(c)) sum += Math.exp(scale * s[base + c] - mx);
        for (let c = 0; c < n; c++) out[base + c] = ok(c) ? Math.exp(scale * s[base + c] - mx) / sum : 0;
      }
    }
  }
  return out;
}

describe('attentionPrefixSoftmax', () => {
  it('forward matches float64 (prefix keys always visible, padding and causal masks on the real keys)', async () => {
    const gpu = await testGpu();
    const B = 2, H = 3, T = 5, P = 3, scale = 0.7;
    const lengths = [5, 2];
    const n = B * H * T * (P + T);
    const s = randArray(n, 1, 3);
    const scores = gpu.tensorFrom(s, [n], 'scores');
    const probs = gpu.tensor([n], 'probs');
    const len = gpu.tensorFrom(Uint32Array.from(lengths), [B], 'lengths');
    for (const causal of [true, false]) {
      await run(gpu, [attentionPrefixSoftmaxForward(gpu, { scores, probs, lengths: len, B, H, T, P, scale, causal })]);
      expectClose(await gpu.read(probs), prefixSoftmaxRef(s, lengths, B, H, T, P, scale, causal), 1e-5, `probs causal=${causal}`);
    }
    // in place
    const inPlace = gpu.tensorFrom(s, [n], 'inplace');
    await run(gpu, [attentionPrefixSoftmaxForward(gpu, { scores: inPlace, probs: inPlace, lengths: len, B, H, T, P, scale, causal: true })]);
    expectClose(await gpu.read(inPlace), prefixSoftmaxRef(s, lengths, B, H, T, P, scale, true), 1e-5, 'in place');
  });

  it('with P = 0 equals the plain attention softmax', async () => {
    const gpu = await testGpu();
    const B = 2, H = 2, T = 6, n = B * H * T * T;
    const s = randArray(n, 2, 2);
    const len = gpu.tensorFrom(Uint32Array.from([6, 3]), [B], 'lengths');
    const a = gpu.tensorFrom(s, [n], 'a'), pa = gpu.tensor([n], 'pa'), pb = gpu.tensor([n], 'pb');
    await run(gpu, [
      attentionPrefixSoftmaxForward(gpu, { scores: a, probs: pa, lengths: len, B, H, T, P: 0, scale: 0.5, causal: true }),
      attentionSoftmaxForward(gpu, { scores: a, probs: pb, lengths: len, B, H, T, scale: 0.5, causal: true }),
    ]);
    expect(Array.from(await gpu.read(pa))).toEqual(Array.from(await gpu.read(pb)));
  });

  it('backward is the gradient of the forward (finite differences of sum(w * softmax) in float64)', async () => {
    const gpu = await testGpu();
    const B = 2, H = 1, T = 4, P = 2, scale = 0.9;
    const lengths = [4, 3];
    const n = B * H * T * (P + T);
    const s = Float64Array.from(randArray(n, 3, 2));
    const w = Float64Array.from(randArray(n, 4, 1));
    const f = (x: Float64Array): number => prefixSoftmaxRef(x, lengths, B, H, T, P, scale, true).reduce((acc, p, i) => acc + p * w[i], 0);
    const fd = new Float64Array(n);
    for (let i = 0; i < n; i++) {
      const xp = Float64Array.from(s), xm = Float64Array.from(s);
      xp[i] += 1e-6;
      xm[i] -= 1e-6;
      fd[i] = (f(xp) - f(xm)) / 2e-6;
    }
    const probs = gpu.tensorFrom(Float32Array.from(prefixSoftmaxRef(s, lengths, B, H, T, P, scale, true)), [n], 'probs');
    const dprobs = gpu.tensorFrom(Float32Array.from(w), [n], 'dprobs');
    const dscores = gpu.tensor([n], 'dscores');
    await run(gpu, [attentionPrefixSoftmaxBackward(gpu, { dprobs, probs, dscores, B, H, T, P, scale })]);
    expectClose(await gpu.read(dscores), fd, 1e-4, 'dscores');
    await run(gpu, [attentionPrefixSoftmaxBackward(gpu, { dprobs, probs, dscores: dprobs, B, H, T, P, scale })]);
    expectClose(await gpu.read(dprobs), fd, 1e-4, 'dscores in place');
  });
});

describe('peft ops', () => {
  it('scaleColumns (out of place, accumulate, in place) and columnDot', async () => {
    const gpu = await testGpu();
    const rows = 7, N = 300; // N past one workgroup
    const x = randArray(rows * N, 5), s = randArray(N, 6), y0 = randArray(rows * N, 7);
    const xt = gpu.tensorFrom(x, [rows, N], 'x'), st = gpu.tensorFrom(s, [N], 's'), out = gpu.tensorFrom(y0, [rows, N], 'out');
    const want = (acc: boolean) => Float64Array.from({ length: rows * N }, (_, i) => (acc ? y0[i] : 0) + x[i] * s[i % N]);
    await run(gpu, [scaleColumns(gpu, { x: xt, s: st, out, rows, N, accumulate: true })]);
    // (f32 sums of values that cancel: errors are relative to 1% of the largest value)
    expectClose(await gpu.read(out), want(true), 1e-5, 'accumulate', 1e-2);
    await run(gpu, [scaleColumns(gpu, { x: xt, s: st, out, rows, N, accumulate: false })]);
    expectClose(await gpu.read(out), want(false), 1e-6, 'overwrite');
    await run(gpu, [scaleColumns(gpu, { x: xt, s: st, out: xt, rows, N, accumulate: false })]);
    expectClose(await gpu.read(xt), want(false), 1e-6, 'in place');
    expect(() => scaleColumns(gpu, { x: xt, s: st, out: xt, rows, N, accumulate: true })).toThrow(/in place/);

    const a = randArray(rows * N, 8), b = randArray(rows * N, 9), d0 = randArray(N, 10);
    const at = gpu.tensorFrom(a, [rows, N], 'a'), bt = gpu.tensorFrom(b, [rows, N], 'b'), dt = gpu.tensorFrom(d0, [N], 'd');
    const dots = Float64Array.from({ length: N }, (_, c) => {
      let acc = 0;
      for (let r = 0; r < rows; r++) acc += a[r * N + c] * b[r * N + c];
      return acc;
    });
    await run(gpu, [columnDot(gpu, { a: at, b: bt, out: dt, rows, N, accumulate: true })]);
    expectClose(await gpu.read(dt), dots.map((v, c) => v + d0[c]), 1e-5, 'columnDot accumulate');
    await run(gpu, [columnDot(gpu, { a: at, b: bt, out: dt, rows, N, accumulate: false })]);
    expectClose(await gpu.read(dt), dots, 1e-5, 'columnDot');
  });

  it('addRows and sumRows touch exactly the first n rows of every sequence', async () => {
    const gpu = await testGpu();
    const B = 3, S = 5, n = 2, C = 70;
    const x0 = randArray(B * S * C, 11), p = randArray(n * C, 12), g0 = randArray(n * C, 13);
    const xt = gpu.tensorFrom(x0, [B * S, C], 'x'), pt = gpu.tensorFrom(p, [n, C], 'p');
    await run(gpu, [addRows(gpu, { x: xt, p: pt, B, S, n, C })]);
    const want = Float64Array.from(x0);
    for (let b = 0; b < B; b++) for (let i = 0; i < n; i++) for (let c = 0; c < C; c++) want[(b * S + i) * C + c] += p[i * C + c];
    expectClose(await gpu.read(xt), want, 1e-6, 'addRows');

    const gt = gpu.tensorFrom(g0, [n, C], 'g');
    const sums = new Float64Array(n * C);
    for (let b = 0; b < B; b++) for (let k = 0; k < n * C; k++) sums[k] += x0[b * S * C + k];
    const src = gpu.tensorFrom(x0, [B * S, C], 'src');
    await run(gpu, [sumRows(gpu, { d: src, out: gt, B, S, n, C, accumulate: true })]);
    expectClose(await gpu.read(gt), sums.map((v, k) => v + g0[k]), 1e-5, 'sumRows accumulate');
    await run(gpu, [sumRows(gpu, { d: src, out: gt, B, S, n, C, accumulate: false })]);
    expectClose(await gpu.read(gt), sums, 1e-5, 'sumRows');
    // n = S = 1: the column sum of B*S rows
    const colsum = new Float64Array(C);
    for (let r = 0; r < B * S; r++) for (let c = 0; c < C; c++) colsum[c] += x0[r * C + c];
    const cs = gpu.tensor([C], 'colsum');
    await run(gpu, [sumRows(gpu, { d: src, out: cs, B: B * S, S: 1, n: 1, C, accumulate: false })]);
    expectClose(await gpu.read(cs), colsum, 1e-5, 'column sum');
  });

  it('tanh forward (large arguments too) and backward', async () => {
    const gpu = await testGpu();
    const n = 600;
    const x = randArray(n, 14, 4);
    x[0] = 60; x[1] = -60; x[2] = 0;
    const xt = gpu.tensorFrom(x, [n], 'x'), y = gpu.tensor([n], 'y');
    await run(gpu, [tanhForward(gpu, { x: xt, out: y, n })]);
    const yv = await gpu.read(y);
    expectClose(yv, Float64Array.from(x, Math.tanh), 1e-6, 'tanh');
    const dout = randArray(n, 15);
    const dt = gpu.tensorFrom(dout, [n], 'dout'), dx = gpu.tensor([n], 'dx');
    await run(gpu, [tanhBackward(gpu, { dout: dt, y, dx, n })]);
    // 1 - y^2 cancels in f32 where |y| is near 1: compare against the f64 formula on the f32 y,
    // relative to 1% of the largest gradient
    const want = Float64Array.from(dout, (d, i) => d * (1 - yv[i] * yv[i]));
    expectClose(await gpu.read(dx), want, 1e-5, 'tanh backward', 1e-2);
    await run(gpu, [tanhBackward(gpu, { dout: dt, y, dx: dt, n })]);
    expectClose(await gpu.read(dt), want, 1e-5, 'tanh backward in place', 1e-2);
  });
});
