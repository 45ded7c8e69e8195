// Embedding, LayerNorm, GELU and attention softmax kernels against float64 references, and the
// references' backward formulas against central finite differences of their forward in f64.
import { describe, expect, it } from 'vitest';
import { lnBackwardRef, lnForwardRef } from './helpers/norm-reference';
import { testGpu, randArray, expectClose, f64 } from './helpers/gpu';
import type { Gpu } from '../src/engine/gpu/gpu';
import { runOps, type Dispatch, type Op } from '../src/engine/gpu/dispatch';
import { embeddingForward } from '../src/engine/kernels/embedding';
import { layerNormForward, layerNormBackward } from '../src/engine/kernels/layernorm';
import { geluForward, geluBackward } from '../src/engine/kernels/gelu';
import { attentionSoftmaxForward, attentionSoftmaxBackward } from '../src/engine/kernels/attention-softmax';
import { attentionPrefixSoftmaxForward, attentionPrefixSoftmaxBackward } from '../src/engine/kernels/attention-prefix-softmax';
import { run, bind, folded, numericGrad, dot } from './helpers/kernel-check';
import { geluTanh as geluRef, geluTanhGrad as geluGradRef } from './helpers/gelu';
import { f16ToF32, f32ToF16 } from '../src/io/safetensors';

// ---------------------------------------------------------------- embedding

describe('embeddingForward', () => {
  function reference(
    tokens: Uint32Array, chunks: { table: Float32Array; rowStart: number }[], positions: Float32Array | null,
    M: number, T: number, C: number, positionOffset: number, initial: Float32Array | null,
  ): Float64Array {
    const out = new Float64Array(M * C);
    for (let m = 0; m < M; m++) {
      for (let c = 0; c < C; c++) {
        let v = initial ? initial[m * C + c] : 0;
        for (const ch of chunks) {
          const rows = ch.table.length / C;
          const r = tokens[m] - ch.rowStart;
          if (r >= 0 && r < rows) v += ch.table[r * C + c];
        }
        if (positions) v += positions[((m % T) + positionOffset) * C + c];
        out[m * C + c] = v;
      }
    }
    return out;
  }

  it('sums token rows from a chunked vocabulary and position rows', async () => {
    const gpu = await testGpu();
    const C = 300; // not a multiple of 256, and M*C neither
    const T = 4, M = 12, V = 11, maxPos = 7, positionOffset = 2;
    // Token 11 lies in no chunk (adds nothing); tokens at both ends of both chunks.
    const tokens = Uint32Array.from([0, 4, 5, 10, 3, 11, 7, 5, 4, 9, 0, 2]);
    const vocab = randArray(V * C, 1);
    const chunk0 = vocab.slice(0, 5 * C), chunk1 = vocab.slice(5 * C);
    const pos = randArray(maxPos * C, 2);
    const tTok = gpu.tensorFrom(tokens, [M], 'tokens');
    const t0 = gpu.tensorFrom(chunk0, [5, C], 'wte0'), t1 = gpu.tensorFrom(chunk1, [6, C], 'wte1');
    const tPos = gpu.tensorFrom(pos, [maxPos, C], 'wpe');
    const out = gpu.tensorFrom(randArray(M * C, 3, 100), [M, C], 'out'); // garbage: must be overwritten
    const common = { tokens: tTok, M, T, C, out };
    const d0 = await bind(gpu, () => embeddingForward(gpu, { ...common, table: t0, rowStart: 0, positions: tPos, positionOffset, accumulate: false }));
    const d1 = await bind(gpu, () => embeddingForward(gpu, { ...common, table: t1, rowStart: 5, positions: null, accumulate: true }));
    await run(gpu, [d0, d1]);
    const want = reference(tokens, [{ table: chunk0, rowStart: 0 }, { table: chunk1, rowStart: 5 }], pos, M, T, C, positionOffset, null);
    expectClose(await gpu.read(out), want, 1e-6, 'embedding two chunks + positions', 1);

    // Only the first chunk, no positions: tokens of the second chunk give zero rows.
    const only0 = await bind(gpu, () => embeddingForward(gpu, { ...common, table: t0, rowStart: 0, positions: null, accumulate: false }));
    await run(gpu, [only0]);
    const got0 = await gpu.read(out);
    expectClose(got0, reference(tokens, [{ table: chunk0, rowStart: 0 }], null, M, T, C, 0, null), 1e-6, 'embedding chunk 0 only');
    expect(Array.from(got0.subarray(2 * C, 3 * C)).every((v) => v === 0)).toBe(true);

    // Accumulate onto existing values, dispatched on a folded grid: 16 groups of 256 >= M*C = 3600.
    const initial = randArray(M * C, 4);
    gpu.write(out, initial);
    const acc = await bind(gpu, () => embeddingForward(gpu, { ...common, table: t1, rowStart: 5, positions: tPos, accumulate: true }));
    await run(gpu, [folded(acc, 5, 3)]);
    const want2 = reference(tokens, [{ table: chunk1, rowStart: 5 }], pos, M, T, C, 0, initial);
    // A sum of three terms of magnitude ~1 in f32: error relative to the largest magnitude.
    expectClose(await gpu.read(out), want2, 1e-6, 'embedding accumulate, folded grid', 1);
  });

  it('reads a table stored in f16 (frozen weights at half the memory) as one in f32 holding the same values, to the bit', async () => {
    const gpu = await testGpu();
    const C = 37, T = 3, M = 9, V = 7; // odd C: rows start in the middle of a word of two halves
    const tokens = Uint32Array.from([0, 6, 3, 1, 5, 2, 4, 6, 0]);
    const exact = randArray(V * C, 5, 4);
    const halves = f16ToF32(f32ToF16(exact));
    const pos = randArray(5 * C, 6);
    const tTok = gpu.tensorFrom(tokens, [M], 'tokens'), tPos = gpu.tensorFrom(pos, [5, C], 'wpe');
    const tHalf = gpu.tensorFromF16(exact, [V, C], 'wte (f16)'), tFull = gpu.tensorFrom(halves, [V, C], 'wte (f32)');
    const outs: Float32Array[] = [];
    for (const table of [tHalf, tFull]) {
      const out = gpu.tensor([M, C], 'out');
      await run(gpu, [await bind(gpu, () => embeddingForward(gpu, { tokens: tTok, table, rowStart: 0, positions: tPos, positionOffset: 1, M, T, C, out, accumulate: false }))]);
      outs.push(await gpu.read(out));
    }
    expect(outs[0].every((v, i) => Object.is(v, outs[1][i]))).toBe(true);
    expectClose(outs[0], reference(tokens, [{ table: halves, rowStart: 0 }], pos, M, T, C, 1, null), 1e-6, 'embedding from an f16 table', 1);
    expect(() => embeddingForward(gpu, { tokens: tTok, table: tFull, rowStart: 0, positions: tHalf, M, T, C: 37, out: gpu.tensor([M, C], 'o'), accumulate: false })).toThrow(/positions must be f32 \(got f16\)/);
  });

  it('rejects inconsistent sizes', async () => {
    const gpu = await testGpu();
    const tokens = gpu.tensorFrom(new Uint32Array(4), [4], 'tok');
    const table = gpu.tensor([3, 8], 'table');
    const pos = gpu.tensor([2, 8], 'pos');
    const out = gpu.tensor([4, 8], 'out');
    const base = { tokens, table, rowStart: 0, positions: null, out, M: 4, T: 4, C: 8, accumulate: false };
    expect(() => embeddingForward(gpu, { ...base, M: 5 })).toThrow(/tokens/);
    expect(() => embeddingForward(gpu, { ...base, C: 5 })).toThrow(/table/);
    expect(() => embeddingForward(gpu, { ...base, positions: pos })).toThrow(/positions has 2 rows/);
    expect(() => embeddingForward(gpu, { ...base, tokens: gpu.tensor([4], 'ftok') })).toThrow(/u32/);
  });
});

// ---------------------------------------------------------------- layernorm

describe('layerNorm', () => {
  const eps = 1e-5;

  it('reference backward matches finite differences of the reference forward', () => {
    const rows = 3, C = 7;
    const x = f64(randArray(rows * C, 10)), w = f64(randArray(C, 11)), b = f64(randArray(C, 12));
    const dout = f64(randArray(rows * C, 13));
    const num = numericGrad((xx) => dot(lnForwardRef(xx, w, b, rows, C, eps).out, dout), x);
    expectClose(lnBackwardRef(dout, x, w, rows, C, eps), num, 1e-6, 'layernorm reference backward vs finite differences');
  });

  // Outputs are sums of f32 terms that can cancel (xhat*w + b; dx + prior), so errors are measured
  // against 1% of the largest magnitude rather than each element's own size.
  const floor = 1e-2;

  async function check(rows: number, C: number, seed: number, opts: { xScale?: number; xShift?: number; constantRow?: boolean; fold?: [number, number]; tol?: number } = {}) {
    const gpu = await testGpu();
    const x = randArray(rows * C, seed, opts.xScale ?? 1);
    if (opts.xShift) for (let i = 0; i < x.length; i++) x[i] += opts.xShift;
    if (opts.constantRow) x.fill(0.75, 0, C); // zero variance: rstd = 1/sqrt(eps)
    const w = randArray(C, seed + 1, 2), b = randArray(C, seed + 2);
    const dout = randArray(rows * C, seed + 3);
    const prior = randArray(rows * C, seed + 4);
    const tx = gpu.tensorFrom(x, [rows, C], 'x'), tw = gpu.tensorFrom(w, [C], 'w'), tb = gpu.tensorFrom(b, [C], 'b');
    const out = gpu.tensor([rows, C], 'out'), mean = gpu.tensor([rows], 'mean'), rstd = gpu.tensor([rows], 'rstd');
    const tdout = gpu.tensorFrom(dout, [rows, C], 'dout');
    const dx = gpu.tensorFrom(randArray(rows * C, seed + 5, 50), [rows, C], 'dx');
    const dxAcc = gpu.tensorFrom(prior, [rows, C], 'dxAcc');
    // the same forward carrying x on to copyTo (garbage before, 5 sentinels past rows x C)
    const copyInit = randArray(rows * C + 5, seed + 6, 50);
    const copy = gpu.tensorFrom(copyInit, [rows * C + 5], 'copy');
    const out2 = gpu.tensor([rows, C], 'out2'), mean2 = gpu.tensor([rows], 'mean2'), rstd2 = gpu.tensor([rows], 'rstd2');
    let fwd = await bind(gpu, () => layerNormForward(gpu, { x: tx, weight: tw, bias: tb, out, mean, rstd, rows, C, eps }));
    let fwdCopy = await bind(gpu, () => layerNormForward(gpu, { x: tx, weight: tw, bias: tb, out: out2, mean: mean2, rstd: rstd2, rows, C, eps, copyTo: copy }));
    let bwd = await bind(gpu, () => layerNormBackward(gpu, { dout: tdout, x: tx, weight: tw, mean, rstd, dx, rows, C, accumulate: false }));
    let bwdAcc = await bind(gpu, () => layerNormBackward(gpu, { dout: tdout, x: tx, weight: tw, mean, rstd, dx: dxAcc, rows, C, accumulate: true }));
    if (opts.fold) [fwd, fwdCopy, bwd, bwdAcc] = [fwd, fwdCopy, bwd, bwdAcc].map((d) => folded(d, opts.fold![0], opts.fold![1]));
    await run(gpu, [fwd, fwdCopy, bwd, bwdAcc]);
    expect(Array.from(await gpu.read(out2)), 'copyTo: out as without it').toEqual(Array.from(await gpu.read(out)));
    expect(Array.from(await gpu.read(mean2)), 'copyTo: mean as without it').toEqual(Array.from(await gpu.read(mean)));
    expect(Array.from(await gpu.read(rstd2)), 'copyTo: rstd as without it').toEqual(Array.from(await gpu.read(rstd)));
    expect(Array.from(await gpu.read(copy)), 'copyTo: x, then the untouched sentinels').toEqual([...x, ...copyInit.slice(rows * C)]);
    const ref = lnForwardRef(x, w, b, rows, C, eps);
    const tol = opts.tol ?? 1e-5;
    const what = `layernorm rows=${rows} C=${C}`;
    expectClose(await gpu.read(out), ref.out, tol, `${what} out`, floor);
    expectClose(await gpu.read(mean), ref.mean, tol, `${what} mean`, floor);
    expectClose(await gpu.read(rstd), ref.rstd, tol, `${what} rstd`);
    const wantDx = lnBackwardRef(dout, x, w, rows, C, eps);
    expectClose(await gpu.read(dx), wantDx, tol, `${what} dx`, floor);
    expectClose(await gpu.read(dxAcc), wantDx.map((v, i) => v + prior[i]), tol, `${what} dx accumulate`, floor);
  }

  it('matches the reference for C below, at and above the workgroup size', async () => {
    await check(3, 1, 20); // C = 1: output is the bias, dx is 0
    await check(5, 37, 21);
    await check(4, 256, 22);
    await check(3, 300, 23);
    await check(2, 768, 24, { constantRow: true });
    await check(3, 1030, 27); // past the 1024 columns a thread caches: the rest re-read
  });

  it('stays accurate when |mean| >> std (two-pass variance)', async () => {
    // x = 100 + U(-1, 1): the mean itself is an f32 near 100 (ulp 7.6e-6), so x - mean carries
    // ~1e-5 absolute error, ~3e-5 in out after rstd (1.7) and w (up to 2): ~5e-4 of 1% of the
    // largest output, as in torch's f32 kernel. A one-pass E[x^2] - mean^2 variance would be off by
    // ~1% here (E[x^2] ~ 1e4 has ulp ~1e-3 against a variance of 0.33) and fail by far.
    await check(3, 300, 25, { xShift: 100, tol: 1e-3 });
  });

  it('handles rows folded into the y dimension', async () => {
    await check(20, 50, 26, { fold: [7, 3] }); // 21 workgroups for 20 rows: the last returns
  });

  it('rejects bad arguments', async () => {
    const gpu = await testGpu();
    const x = gpu.tensor([2, 8], 'x'), w = gpu.tensor([8], 'w'), b = gpu.tensor([8], 'b');
    const out = gpu.tensor([2, 8], 'out'), mean = gpu.tensor([2], 'mean'), rstd = gpu.tensor([2], 'rstd');
    expect(() => layerNormForward(gpu, { x, weight: w, bias: b, out, mean, rstd, rows: 3, C: 8, eps })).toThrow(/x has 16 elements/);
    expect(() => layerNormForward(gpu, { x, weight: w, bias: b, out: x, mean, rstd, rows: 2, C: 8, eps })).toThrow(/distinct/);
    expect(() => layerNormForward(gpu, { x, weight: w, bias: b, out, mean, rstd, rows: 2, C: 8, eps, copyTo: out })).toThrow(/distinct/);
    expect(() => layerNormForward(gpu, { x, weight: w, bias: b, out, mean, rstd, rows: 2, C: 8, eps, copyTo: x })).toThrow(/distinct/);
    expect(() => layerNormForward(gpu, { x, weight: w, bias: b, out, mean, rstd, rows: 2, C: 8, eps, copyTo: gpu.tensor([15], 'short') })).toThrow(/copyTo has 15 elements/);
    expect(() => layerNormBackward(gpu, { dout: x, x, weight: w, mean, rstd, dx: x, rows: 2, C: 8, accumulate: false })).toThrow(/alias/);
  });
});

// ---------------------------------------------------------------- gelu

describe('gelu', () => {
  it('reference derivative matches finite differences', () => {
    const xs = f64(randArray(200, 30, 6));
    const num = numericGrad((v) => geluRef(v[0]), new Float64Array(1));
    expect(Math.abs(num[0] - geluGradRef(0))).toBeLessThan(1e-8);
    const want = xs.map((x) => (geluRef(x + 1e-6) - geluRef(x - 1e-6)) / 2e-6);
    expectClose(xs.map(geluGradRef), want, 1e-6, 'gelu reference derivative');
  });

  it('forward and backward match the reference, also in place and on a folded grid', async () => {
    const gpu = await testGpu();
    for (const n of [1, 255, 257, 1000]) {
      const x = randArray(n, 31 + n, 5);
      // Large magnitudes where tanh saturates (and could give inf/inf = NaN without the clamp).
      const extremes = [0, -0, 1e-4, -1e-4, 12, -12, 60, -60, 1e4, -1e4, 3e10, -3e10];
      for (let i = 0; i < Math.min(n, extremes.length); i++) x[i] = extremes[i];
      const dout = randArray(n, 32 + n);
      const tx = gpu.tensorFrom(x, [n], 'x'), out = gpu.tensor([n], 'out');
      const tdout = gpu.tensorFrom(dout, [n], 'dout'), dx = gpu.tensor([n], 'dx');
      const inPlace = gpu.tensorFrom(x, [n], 'xInPlace'), dInPlace = gpu.tensorFrom(dout, [n], 'doutInPlace');
      await run(gpu, [
        await bind(gpu, () => geluForward(gpu, { x: tx, out, n })),
        await bind(gpu, () => geluBackward(gpu, { dout: tdout, x: tx, dx, n })),
        await bind(gpu, () => geluForward(gpu, { x: inPlace, out: inPlace, n })),
        await bind(gpu, () => geluBackward(gpu, { dout: dInPlace, x: tx, dx: dInPlace, n })),
      ]);
      const want = f64(x).map(geluRef);
      const wantDx = f64(x).map((v, i) => dout[i] * geluGradRef(v));
      expectClose(await gpu.read(out), want, 1e-5, `gelu n=${n}`);
      expectClose(await gpu.read(inPlace), want, 1e-5, `gelu in place n=${n}`);
      expectClose(await gpu.read(dx), wantDx, 1e-5, `gelu backward n=${n}`);
      expectClose(await gpu.read(dInPlace), wantDx, 1e-5, `gelu backward in place n=${n}`);
    }
    // Folded grid: 2 x 3 groups of 256 cover n = 1300.
    const n = 1300;
    const x = randArray(n, 40, 4), dout = randArray(n, 41);
    const tx = gpu.tensorFrom(x, [n], 'x'), out = gpu.tensor([n], 'out'), tdout = gpu.tensorFrom(dout, [n], 'dout');
    await run(gpu, [
      folded(await bind(gpu, () => geluForward(gpu, { x: tx, out, n })), 2, 3),
      folded(await bind(gpu, () => geluBackward(gpu, { dout: tdout, x: tx, dx: tdout, n })), 2, 3),
    ]);
    expectClose(await gpu.read(out), f64(x).map(geluRef), 1e-5, 'gelu folded');
    expectClose(await gpu.read(tdout), f64(x).map((v, i) => dout[i] * geluGradRef(v)), 1e-5, 'gelu backward folded');
  });

  it('rejects dx aliasing x and short tensors', async () => {
    const gpu = await testGpu();
    const x = gpu.tensor([10], 'x'), d = gpu.tensor([10], 'd');
    expect(() => geluBackward(gpu, { dout: d, x, dx: x, n: 10 })).toThrow(/forward input/);
    expect(() => geluForward(gpu, { x, out: d, n: 11 })).toThrow(/need n=11/);
  });
});

// ---------------------------------------------------------------- attention softmax

function softmaxForwardRef(s: ArrayLike<number>, lengths: ArrayLike<number>, B: number, H: number, T: number, scale: number, causal: boolean): Float64Array {
  const p = new Float64Array(B * H * T * T);
  for (let b = 0; b < B; b++) {
    for (let h = 0; h < H; h++) {
      for (let i = 0; i < T; i++) {
        const base = ((b * H + h) * T + i) * T;
        const allowed = (j: number) => j < lengths[b] && (!causal || j <= i);
        let m = -Infinity;
        for (let j = 0; j < T; j++) if (allowed(j)) m = Math.max(m, scale * s[base + j]);
        let sum = 0;
        for (let j = 0; j < T; j++) if (allowed(j)) sum += Math.exp(scale * s[base + j] - m);
        for (let j = 0; j < T; j++) p[base + j] = allowed(j) ? Math.exp(scale * s[base + j] - m) / sum : 0;
      }
    }
  }
  return p;
}

function softmaxBackwardRef(dp: ArrayLike<number>, p: ArrayLike<number>, rows: number, T: number, scale: number): Float64Array {
  const ds = new Float64Array(rows * T);
  for (let r = 0; r < rows; r++) {
    let d = 0;
    for (let j = 0; j < T; j++) d += p[r * T + j] * dp[r * T + j];
    for (let j = 0; j < T; j++) ds[r * T + j] = scale * p[r * T + j] * (dp[r * T + j] - d);
  }
  return ds;
}

describe('attention softmax', () => {
  it('reference backward matches finite differences of the reference forward (causal + padding)', () => {
    const B = 2, H = 1, T = 5, scale = 0.7;
    const lengths = [5, 3];
    const s = f64(randArray(B * H * T * T, 50, 2)), dp = f64(randArray(B * H * T * T, 51));
    const p = softmaxForwardRef(s, lengths, B, H, T, scale, true);
    const num = numericGrad((ss) => dot(softmaxForwardRef(ss, lengths, B, H, T, scale, true), dp), s);
    expectClose(softmaxBackwardRef(dp, p, B * H * T, T, scale), num, 1e-6, 'softmax reference backward vs finite differences');
  });

  async function check(B: number, H: number, T: number, lengths: number[], causal: boolean, seed: number, fold?: [number, number]) {
    const gpu = await testGpu();
    const n = B * H * T * T, rows = B * H * T, scale = 1 / Math.sqrt(64);
    const s = randArray(n, seed, 20);
    const dp = randArray(n, seed + 1);
    const tS = gpu.tensorFrom(s, [B * H, T, T], 'scores');
    const tLen = gpu.tensorFrom(Uint32Array.from(lengths), [B], 'lengths');
    const tP = gpu.tensorFrom(randArray(n, seed + 2, 9), [B * H, T, T], 'probs'); // garbage to overwrite
    const tInPlace = gpu.tensorFrom(s, [B * H, T, T], 'scoresInPlace');
    const tDp = gpu.tensorFrom(dp, [B * H, T, T], 'dprobs');
    const tDs = gpu.tensor([B * H, T, T], 'dscores');
    const tDpInPlace = gpu.tensorFrom(dp, [B * H, T, T], 'dprobsInPlace');
    const dims = { B, H, T, scale };
    let ops = [
      await bind(gpu, () => attentionSoftmaxForward(gpu, { scores: tS, probs: tP, lengths: tLen, ...dims, causal })),
      await bind(gpu, () => attentionSoftmaxForward(gpu, { scores: tInPlace, probs: tInPlace, lengths: tLen, ...dims, causal })),
      await bind(gpu, () => attentionSoftmaxBackward(gpu, { dprobs: tDp, probs: tP, dscores: tDs, ...dims, causal })),
      await bind(gpu, () => attentionSoftmaxBackward(gpu, { dprobs: tDpInPlace, probs: tP, dscores: tDpInPlace, ...dims, causal })),
    ];
    if (fold) ops = ops.map((d) => folded(d, fold[0], fold[1]));
    await run(gpu, ops);
    const wantP = softmaxForwardRef(s, lengths, B, H, T, scale, causal);
    const what = `softmax B=${B} H=${H} T=${T} causal=${causal}`;
    const gotP = await gpu.read(tP);
    // exp and the row sum in f32: a few ulps per probability.
    expectClose(gotP, wantP, 2e-6, `${what} probs`);
    expectClose(await gpu.read(tInPlace), wantP, 2e-6, `${what} probs in place`);
    // Masked entries must be exactly zero (rows with no allowed key are all zero).
    for (let i = 0; i < n; i++) if (wantP[i] === 0 && gotP[i] !== 0) throw new Error(`${what}: masked entry ${i} is ${gotP[i]}`);
    // Backward from the GPU's own probs (as in training), in f64. dP - sum(P dP) cancels in f32
    // (terms ~1), so errors are measured against 1% of the largest |dscores|.
    const wantDs = softmaxBackwardRef(dp, gotP, rows, T, scale);
    expectClose(await gpu.read(tDs), wantDs, 1e-5, `${what} dscores`, 1e-2);
    expectClose(await gpu.read(tDpInPlace), wantDs, 1e-5, `${what} dscores in place`, 1e-2);
  }

  it('causal with right padding, a fully padded sequence and lengths past T', async () => {
    await check(3, 2, 37, [37, 20, 0], true, 60); // batch 2 has no valid key at all
    await check(2, 2, 9, [100, 1], true, 61); // lengths > T are clamped to T
  });

  it('non-causal with padding, rows longer than the workgroup', async () => {
    await check(2, 1, 300, [300, 131], false, 62);
    await check(1, 1, 260, [257], true, 63);
  });

  // The causal products (kernels/matmul.ts triangle 'lowerC') leave the score and dP tiles wholly
  // above the diagonal unwritten: whatever they held (NaN, Inf) must not reach P or dscores.
  it('causal: never reads scores or dP above the diagonal (NaN / Inf there), writes exact zeros there', async () => {
    const gpu = await testGpu();
    for (const P of [0, 3]) {
      const B = 2, H = 2, T = 45, Tk = P + T, rows = B * H * T, n = rows * Tk, scale = 0.3;
      const what = `causal softmax with stale entries, P=${P}`;
      const s = randArray(n, 70 + P, 5), dp = randArray(n, 71 + P);
      const sStale = Float32Array.from(s), dpStale = Float32Array.from(dp), dpRef = Float32Array.from(dp);
      const above = (r: number, c: number) => c >= P + (r % T) + 1; // real key j = c - P > query i
      let stale = 0;
      for (let r = 0; r < rows; r++) {
        for (let c = 0; c < Tk; c++) {
          if (!above(r, c)) continue;
          const k = r * Tk + c;
          sStale[k] = k % 2 ? NaN : Infinity;
          dpStale[k] = k % 3 ? NaN : -Infinity;
          dpRef[k] = 0;
          stale++;
        }
      }
      expect(stale).toBeGreaterThan(0);
      const tLen = gpu.tensorFrom(Uint32Array.from([45, 30]), [B], 'lengths');
      const tClean = gpu.tensorFrom(s, [B * H, T, Tk], 'scores clean');
      const tStale = gpu.tensorFrom(sStale, [B * H, T, Tk], 'scores stale');
      const tDp = gpu.tensorFrom(dpStale, [B * H, T, Tk], 'dP stale');
      const tDs = gpu.tensor([B * H, T, Tk], 'dscores');
      const tDpInPlace = gpu.tensorFrom(dpStale, [B * H, T, Tk], 'dP stale in place');
      const tDpPlain = gpu.tensorFrom(dpStale, [B * H, T, Tk], 'dP stale, non-causal backward');
      const dims = { B, H, T, scale };
      const fwd = (t: typeof tClean) => (P
        ? attentionPrefixSoftmaxForward(gpu, { scores: t, probs: t, lengths: tLen, ...dims, P, causal: true })
        : attentionSoftmaxForward(gpu, { scores: t, probs: t, lengths: tLen, ...dims, causal: true }));
      const bwd = (dprobs: typeof tClean, dscores: typeof tClean, causal: boolean) => (P
        ? attentionPrefixSoftmaxBackward(gpu, { dprobs, probs: tStale, dscores, ...dims, P, causal })
        : attentionSoftmaxBackward(gpu, { dprobs, probs: tStale, dscores, ...dims, causal }));
      await run(gpu, [await bind(gpu, () => fwd(tClean)), await bind(gpu, () => fwd(tStale))]);
      await run(gpu, [
        await bind(gpu, () => bwd(tDp, tDs, true)),
        await bind(gpu, () => bwd(tDpInPlace, tDpInPlace, true)),
        await bind(gpu, () => bwd(tDpPlain, tDpPlain, false)),
      ]);
      // the same probabilities as from clean scores, bit for bit, and exact zeros above the diagonal
      const probs = await gpu.read(tStale);
      const clean = await gpu.read(tClean);
      for (let k = 0; k < n; k++) {
        if (!Object.is(probs[k], clean[k])) throw new Error(`${what}: P[${k}] = ${probs[k]}, ${clean[k]} from clean scores`);
        if (above(Math.floor(k / Tk), k % Tk) && probs[k] !== 0) throw new Error(`${what}: masked P[${k}] = ${probs[k]}`);
      }
      // dscores as if dP were 0 there: finite everywhere, exactly 0 above the diagonal
      const want = softmaxBackwardRef(dpRef, probs, rows, Tk, scale);
      for (const [name, t] of [['dscores', tDs], ['dscores in place', tDpInPlace]] as const) {
        const got = await gpu.read(t);
        for (let k = 0; k < n; k++) {
          if (!Number.isFinite(got[k])) throw new Error(`${what}: ${name}[${k}] = ${got[k]}`);
          if (above(Math.floor(k / Tk), k % Tk) && got[k] !== 0) throw new Error(`${what}: ${name}[${k}] above the diagonal = ${got[k]}`);
        }
        expectClose(got, want, 1e-5, `${what} ${name}`, 1e-2);
      }
      // (the non-causal backward reads them all: 0 * NaN poisons whole rows, why causal must be passed)
      expect((await gpu.read(tDpPlain)).some((v) => Number.isNaN(v))).toBe(true);
      for (const t of [tLen, tClean, tStale, tDp, tDs, tDpInPlace, tDpPlain]) gpu.destroyTensor(t);
    }
  });

  it('handles rows folded into the y dimension', async () => {
    await check(2, 3, 5, [5, 3], true, 64, [7, 5]); // 35 workgroups for 30 rows
  });

  it('folds more than 65535 workgroups into the y dimension of the grid', async () => {
    // Running 66000 workgroups takes minutes on SwiftShader, so only the grid is checked here; the
    // shader's folded indexing is covered by the forced-fold test above.
    const gpu = await testGpu();
    const B = 2, H = 264000, T = 1; // 528,000 rows, 8 per workgroup: 66,000 workgroups
    const tS = gpu.tensor([B * H, T, T], 'scores');
    const tLen = gpu.tensorFrom(Uint32Array.from([1, 0]), [B], 'lengths');
    const d = await bind(gpu, () => attentionSoftmaxForward(gpu, { scores: tS, probs: tS, lengths: tLen, B, H, T, scale: 1, causal: true }));
    expect(d.workgroups).toEqual([65535, 2, 1]);
    const bwd = await bind(gpu, () => attentionSoftmaxBackward(gpu, { dprobs: tS, probs: gpu.tensor([B * H, T, T], 'p'), dscores: tS, B, H, T, scale: 1 }));
    expect(bwd.workgroups).toEqual([65535, 2, 1]);
  });

  it('rejects bad arguments', async () => {
    const gpu = await testGpu();
    const s = gpu.tensor([2, 4, 4], 's'), len = gpu.tensorFrom(new Uint32Array([4]), [1], 'len');
    expect(() => attentionSoftmaxForward(gpu, { scores: s, probs: s, lengths: len, B: 2, H: 1, T: 4, scale: 1, causal: true })).toThrow(/lengths/);
    expect(() => attentionSoftmaxForward(gpu, { scores: s, probs: s, lengths: len, B: 1, H: 1, T: 6, scale: 1, causal: true })).toThrow(/need B\*H\*T\*T/);
    expect(() => attentionSoftmaxBackward(gpu, { dprobs: s, probs: s, dscores: s, B: 1, H: 1, T: 4, scale: 1 })).toThrow(/probs/);
  });
});
