// Llama-family kernels (RMSNorm, RoPE, SwiGLU) against float64 references, the references'
// backward formulas against central finite differences of their forward, and the RoPE tables
// against float64 re-implementations of transformers' ROPE_INIT_FUNCTIONS.
import { describe, expect, it } from 'vitest';
import { testGpu, randArray, expectClose, f64 } from './helpers/gpu';
import type { Gpu } from '../src/engine/gpu/gpu';
import { runOps, type Dispatch, type Op } from '../src/engine/gpu/dispatch';
import { rmsNormForward, rmsNormBackward } from '../src/engine/kernels/rmsnorm';
import { ropeForward, ropeBackward, type RopeArgs } from '../src/engine/kernels/rope';
import { swigluForward, swigluBackward } from '../src/engine/kernels/swiglu';
import { ropeTables, ropeInvFreq, RopeConfigError } from '../src/engine/models/rope-tables';
import { run, bind, folded, numericGrad, dot } from './helpers/kernel-check';

const fr = Math.fround;

// ---------------------------------------------------------------- rmsnorm

function rmsForwardRef(x: ArrayLike<number>, w: ArrayLike<number>, rows: number, C: number, eps: number) {
  const out = new Float64Array(rows * C), rstd = new Float64Array(rows);
  for (let r = 0; r < rows; r++) {
    let q = 0;
    for (let c = 0; c < C; c++) q += x[r * C + c] ** 2;
    const rs = 1 / Math.sqrt(q / C + eps);
    rstd[r] = rs;
    for (let c = 0; c < C; c++) out[r * C + c] = w[c] * (x[r * C + c] * rs);
  }
  return { out, rstd };
}

function rmsBackwardRef(dout: ArrayLike<number>, x: ArrayLike<number>, w: ArrayLike<number>, rows: number, C: number, eps: number): Float64Array {
  const { rstd } = rmsForwardRef(x, w, rows, C, eps);
  const dx = new Float64Array(rows * C);
  for (let r = 0; r < rows; r++) {
    let m = 0;
    for (let c = 0; c < C; c++) m += dout[r * C + c] * w[c] * x[r * C + c] * rstd[r];
    m /= C;
    for (let c = 0; c < C; c++) {
      dx[r * C + c] = rstd[r] * (dout[r * C + c] * w[c] - x[r * C + c] * rstd[r] * m);
    }
  }
  return dx;
}

describe('rmsNorm', () => {
  it('reference backward matches finite differences of the reference forward', () => {
    // (Not C = 1: there dx = w g eps / (x^2 + eps)^1.5 is ~1e-7 and finite differences can't resolve it.)
    for (const [rows, C, eps] of [[3, 7, 1e-5], [2, 2, 1e-6], [1, 16, 1e-6]] as const) {
      const x = f64(randArray(rows * C, 100 + C, 2)), w = f64(randArray(C, 101, 2));
      const dout = f64(randArray(rows * C, 102));
      const num = numericGrad((xx) => dot(rmsForwardRef(xx, w, rows, C, eps).out, dout), x);
      expectClose(rmsBackwardRef(dout, x, w, rows, C, eps), num, 1e-6, `rmsnorm reference backward C=${C}`);
    }
  });

  async function check(rows: number, C: number, eps: number, seed: number, opts: { xScale?: number; zeroRow?: boolean; fold?: [number, number] } = {}) {
    const gpu = await testGpu();
    const x = randArray(rows * C, seed, opts.xScale ?? 1);
    if (opts.zeroRow) x.fill(0, C, 2 * C); // rstd = 1/sqrt(eps), out = 0, dx = dout * w / sqrt(eps)
    const w = randArray(C, seed + 1, 2);
    const dout = randArray(rows * C, seed + 2);
    const prior = randArray(rows * C, seed + 3);
    const tx = gpu.tensorFrom(x, [rows, C], 'x'), tw = gpu.tensorFrom(w, [C], 'w');
    const out = gpu.tensorFrom(randArray(rows * C, seed + 4, 50), [rows, C], 'out'); // garbage to overwrite
    const rstd = gpu.tensor([rows], 'rstd');
    const tdout = gpu.tensorFrom(dout, [rows, C], 'dout');
    const dx = gpu.tensorFrom(randArray(rows * C, seed + 5, 50), [rows, C], 'dx');
    const dxAcc = gpu.tensorFrom(prior, [rows, C], 'dxAcc');
    // the same forward carrying x on to copyTo (garbage before, 5 sentinels past rows x C)
    const copyInit = randArray(rows * C + 5, seed + 6, 50);
    const copy = gpu.tensorFrom(copyInit, [rows * C + 5], 'copy');
    const out2 = gpu.tensor([rows, C], 'out2'), rstd2 = gpu.tensor([rows], 'rstd2');
    let ops = [
      await bind(gpu, () => rmsNormForward(gpu, { x: tx, weight: tw, out, rstd, rows, C, eps })),
      await bind(gpu, () => rmsNormForward(gpu, { x: tx, weight: tw, out: out2, rstd: rstd2, rows, C, eps, copyTo: copy })),
      await bind(gpu, () => rmsNormBackward(gpu, { dout: tdout, x: tx, weight: tw, rstd, dx, rows, C, accumulate: false })),
      await bind(gpu, () => rmsNormBackward(gpu, { dout: tdout, x: tx, weight: tw, rstd, dx: dxAcc, rows, C, accumulate: true })),
    ];
    if (opts.fold) ops = ops.map((d) => folded(d, opts.fold![0], opts.fold![1]));
    await run(gpu, ops);
    expect(Array.from(await gpu.read(out2)), 'copyTo: out as without it').toEqual(Array.from(await gpu.read(out)));
    expect(Array.from(await gpu.read(rstd2)), 'copyTo: rstd as without it').toEqual(Array.from(await gpu.read(rstd)));
    expect(Array.from(await gpu.read(copy)), 'copyTo: x, then the untouched sentinels').toEqual([...x, ...copyInit.slice(rows * C)]);
    const ref = rmsForwardRef(x, w, rows, C, eps);
    const what = `rmsnorm rows=${rows} C=${C} eps=${eps}`;
    // A product of f32 terms and one rstd per row: a few ulps per element, no cancellation.
    expectClose(await gpu.read(out), ref.out, 1e-5, `${what} out`);
    expectClose(await gpu.read(rstd), ref.rstd, 1e-5, `${what} rstd`);
    // g - xhat * mean(g xhat) cancels (completely for C = 1, where dx ~ eps): errors are measured
    // against the largest uncancelled term rstd * |dout * w|, or 1% of the largest |dx| if larger.
    const wantDx = rmsBackwardRef(dout, x, w, rows, C, eps);
    let scale = 0;
    for (let i = 0; i < rows * C; i++) scale = Math.max(scale, ref.rstd[Math.floor(i / C)] * Math.abs(dout[i] * w[i % C]));
    const floorOf = (want: ArrayLike<number>) => {
      let m = 0;
      for (let i = 0; i < want.length; i++) m = Math.max(m, Math.abs(want[i]));
      return Math.max(1e-2, scale / m);
    };
    expectClose(await gpu.read(dx), wantDx, 1e-5, `${what} dx`, floorOf(wantDx));
    const wantAcc = wantDx.map((v, i) => v + prior[i]);
    expectClose(await gpu.read(dxAcc), wantAcc, 1e-5, `${what} dx accumulate`, floorOf(wantAcc));
  }

  it('matches the reference for the Llama-family widths, both eps values', async () => {
    await check(3, 1, 1e-5, 200); // C = 1: out = w * x / sqrt(x^2 + eps)
    await check(5, 37, 1e-6, 201); // 64-thread workgroups, fewer columns than threads
    await check(4, 64, 1e-5, 202); // one head (Qwen3 q_norm/k_norm), exactly one column per thread
    await check(3, 128, 1e-6, 203); // head_dim 128: two columns per thread of 64
    await check(2, 576, 1e-5, 204); // SmolLM2-135M hidden size: 256 threads, 2.25 columns each
    await check(2, 896, 1e-6, 205, { zeroRow: true }); // Qwen2.5-0.5B hidden size; an all-zero row
  });

  it('stays accurate for large and small activations', async () => {
    await check(3, 300, 1e-6, 206, { xScale: 300 }); // outlier-sized activations
    await check(3, 300, 1e-5, 207, { xScale: 1e-3 }); // mean(x^2) ~ 3e-7, same order as eps
  });

  it('handles rows folded into the y dimension', async () => {
    await check(20, 50, 1e-6, 208, { fold: [7, 3] }); // 21 workgroups for 20 rows: the last returns
    await check(10, 576, 1e-5, 209, { fold: [4, 3] });
  });

  it('rejects bad arguments', async () => {
    const gpu = await testGpu();
    const x = gpu.tensor([2, 8], 'x'), w = gpu.tensor([8], 'w'), out = gpu.tensor([2, 8], 'out'), rstd = gpu.tensor([2], 'rstd');
    const ok = { x, weight: w, out, rstd, rows: 2, C: 8, eps: 1e-6 };
    expect(() => rmsNormForward(gpu, { ...ok, rows: 3 })).toThrow(/x has 16 elements, need 24/);
    expect(() => rmsNormForward(gpu, { ...ok, C: 9, rows: 1 })).toThrow(/weight has 8 elements/);
    expect(() => rmsNormForward(gpu, { ...ok, out: x })).toThrow(/distinct/);
    expect(() => rmsNormForward(gpu, { ...ok, copyTo: rstd })).toThrow(/copyTo has 2 elements, need 16/);
    expect(() => rmsNormForward(gpu, { ...ok, copyTo: out })).toThrow(/distinct/);
    expect(() => rmsNormForward(gpu, { ...ok, copyTo: x })).toThrow(/distinct/);
    expect(() => rmsNormForward(gpu, { ...ok, eps: 0 })).toThrow(/eps/);
    expect(() => rmsNormForward(gpu, { ...ok, rstd: gpu.tensor([1], 'short') })).toThrow(/rstd has 1 elements/);
    const bwd = { dout: out, x, weight: w, rstd, dx: gpu.tensor([2, 8], 'dx'), rows: 2, C: 8, accumulate: false };
    expect(() => rmsNormBackward(gpu, { ...bwd, dx: out })).toThrow(/alias/);
    expect(() => rmsNormBackward(gpu, { ...bwd, dx: x })).toThrow(/alias/);
    expect(() => rmsNormBackward(gpu, { ...bwd, x: gpu.tensor([2, 8], 'i', 'i32') })).toThrow(/f32/);
  });
});

// ---------------------------------------------------------------- rope kernel

interface RopeLayout {
  rows: number;
  T: number;
  rowStride: number;
  colOffset: number;
  heads: number;
  headDim: number;
  rotaryDim: number;
  positionOffset: number;
}

/** Rotates in f64 by +angle (sign 1) or -angle (sign -1), from f32 tables [positions, rotaryDim/2]. */
function ropeRef(x: ArrayLike<number>, cos: ArrayLike<number>, sin: ArrayLike<number>, l: RopeLayout, sign: 1 | -1): Float64Array {
  const out = Float64Array.from(x);
  const half = l.rotaryDim / 2;
  for (let m = 0; m < l.rows; m++) {
    const pos = (m % l.T) + l.positionOffset;
    for (let h = 0; h < l.heads; h++) {
      for (let i = 0; i < half; i++) {
        const ia = m * l.rowStride + l.colOffset + h * l.headDim + i, ib = ia + half;
        const c = cos[pos * half + i], s = sign * sin[pos * half + i];
        out[ia] = x[ia] * c - x[ib] * s;
        out[ib] = x[ib] * c + x[ia] * s;
      }
    }
  }
  return out;
}

describe('rope kernel', () => {
  it('reference backward (inverse rotation) is the adjoint of the reference forward', () => {
    const l: RopeLayout = { rows: 6, T: 3, rowStride: 20, colOffset: 2, heads: 2, headDim: 8, rotaryDim: 4, positionOffset: 1 };
    const t = ropeTables({ headDim: 8, ropeTheta: 10000, ropeScaling: null, maxPositions: 4, partialRotaryFactor: 0.5 });
    const x = f64(randArray(l.rows * l.rowStride, 300)), g = f64(randArray(l.rows * l.rowStride, 301));
    const num = numericGrad((xx) => dot(ropeRef(xx, t.cos, t.sin, l, 1), g), x);
    expectClose(ropeRef(g, t.cos, t.sin, l, -1), num, 1e-6, 'rope reference backward vs finite differences');
  });

  async function check(l: RopeLayout, seed: number, fold?: [number, number]) {
    const gpu = await testGpu();
    const maxPositions = l.T + l.positionOffset;
    const tables = ropeTables({ headDim: l.headDim, ropeTheta: 10000, ropeScaling: null, maxPositions, partialRotaryFactor: l.rotaryDim / l.headDim });
    expect(tables.rotaryDim).toBe(l.rotaryDim);
    const n = l.rows * l.rowStride;
    const x = randArray(n, seed, 3), g = randArray(n, seed + 1);
    const tx = gpu.tensorFrom(x, [l.rows, l.rowStride], 'x');
    const tg = gpu.tensorFrom(g, [l.rows, l.rowStride], 'g');
    const tRound = gpu.tensorFrom(x, [l.rows, l.rowStride], 'roundTrip');
    const cos = gpu.tensorFrom(tables.cos, [maxPositions, l.rotaryDim / 2], 'cos');
    const sin = gpu.tensorFrom(tables.sin, [maxPositions, l.rotaryDim / 2], 'sin');
    const args = (t: typeof tx): RopeArgs => ({ x: t, cos, sin, ...l });
    let ops = [
      await bind(gpu, () => ropeForward(gpu, args(tx))),
      await bind(gpu, () => ropeBackward(gpu, args(tg))),
      await bind(gpu, () => ropeForward(gpu, args(tRound))),
      await bind(gpu, () => ropeBackward(gpu, args(tRound))),
    ];
    if (fold) ops = ops.map((d) => folded(d, fold[0], fold[1]));
    await run(gpu, ops);
    const what = `rope rows=${l.rows} T=${l.T} D=${l.headDim} rot=${l.rotaryDim} off=${l.positionOffset}`;
    const gotX = await gpu.read(tx);
    // a*c - b*s cancels when the result is small: errors against 1% of the largest magnitude
    // (1e-5 of it is ~1e-7 of the inputs' size, about an ulp).
    expectClose(gotX, ropeRef(x, tables.cos, tables.sin, l, 1), 1e-5, `${what} forward`, 1e-2);
    expectClose(await gpu.read(tg), ropeRef(g, tables.cos, tables.sin, l, -1), 1e-5, `${what} backward`, 1e-2);
    expectClose(await gpu.read(tRound), x, 1e-5, `${what} forward then backward`, 1e-2);
    // Columns outside the rotated pairs are bit-for-bit untouched.
    const rotated = new Set<number>();
    for (let m = 0; m < l.rows; m++) {
      for (let h = 0; h < l.heads; h++) {
        for (let i = 0; i < l.rotaryDim; i++) rotated.add(m * l.rowStride + l.colOffset + h * l.headDim + i);
      }
    }
    for (let i = 0; i < n; i++) if (!rotated.has(i) && gotX[i] !== x[i]) throw new Error(`${what}: element ${i} changed`);
    return gotX;
  }

  it('head_dim 8 and 64, T not a multiple of anything, a position offset', async () => {
    await check({ rows: 21, T: 7, rowStride: 16, colOffset: 0, heads: 2, headDim: 8, rotaryDim: 8, positionOffset: 0 }, 310);
    await check({ rows: 10, T: 5, rowStride: 192, colOffset: 0, heads: 3, headDim: 64, rotaryDim: 64, positionOffset: 0 }, 311);
    await check({ rows: 26, T: 13, rowStride: 128, colOffset: 0, heads: 2, headDim: 64, rotaryDim: 64, positionOffset: 1000 }, 312);
  });

  it('rotates Q and K inside a packed [rows, (H + 2KV) * D] qkv buffer and leaves V alone', async () => {
    const gpu = await testGpu();
    const H = 4, KV = 2, D = 8, T = 11, B = 3, rows = B * T, stride = (H + 2 * KV) * D, positionOffset = 3;
    const maxPositions = T + positionOffset;
    const tables = ropeTables({ headDim: D, ropeTheta: 500000, ropeScaling: null, maxPositions });
    const qkv = randArray(rows * stride, 320, 2);
    const t = gpu.tensorFrom(qkv, [rows, stride], 'qkv');
    const cos = gpu.tensorFrom(tables.cos, [maxPositions, D / 2], 'cos'), sin = gpu.tensorFrom(tables.sin, [maxPositions, D / 2], 'sin');
    const common = { x: t, cos, sin, rows, T, rowStride: stride, headDim: D, positionOffset };
    const q: RopeArgs = { ...common, colOffset: 0, heads: H };
    const k: RopeArgs = { ...common, colOffset: H * D, heads: KV };
    await run(gpu, [await bind(gpu, () => ropeForward(gpu, q)), await bind(gpu, () => ropeForward(gpu, k))]);
    const got = await gpu.read(t);
    const lq: RopeLayout = { rows, T, rowStride: stride, colOffset: 0, heads: H, headDim: D, rotaryDim: D, positionOffset };
    const want = ropeRef(ropeRef(qkv, tables.cos, tables.sin, lq, 1), tables.cos, tables.sin, { ...lq, colOffset: H * D, heads: KV }, 1);
    expectClose(got, want, 1e-5, 'packed qkv rope', 1e-2);
    for (let m = 0; m < rows; m++) {
      for (let c = (H + KV) * D; c < stride; c++) if (got[m * stride + c] !== qkv[m * stride + c]) throw new Error(`V changed at row ${m} col ${c}`);
    }
    // Row 0 is at position 3 (not 0, where the rotation is the identity), so Q moved.
    expect(Array.from(got.subarray(0, D)).some((v, i) => v !== qkv[i])).toBe(true);
    // Backward of both returns the input.
    await run(gpu, [await bind(gpu, () => ropeBackward(gpu, k)), await bind(gpu, () => ropeBackward(gpu, q))]);
    expectClose(await gpu.read(t), qkv, 1e-5, 'packed qkv rope forward then backward', 1e-2);
  });

  it('partial rotary and a folded grid', async () => {
    // rotaryDim 4 of headDim 8 (columns 4..7 of each head pass through), K heads from column 8.
    await check({ rows: 9, T: 3, rowStride: 30, colOffset: 8, heads: 2, headDim: 8, rotaryDim: 4, positionOffset: 2 }, 330);
    // 2 x 2 groups of 256 threads for 20 * 4 * 6 = 480 pairs.
    await check({ rows: 20, T: 4, rowStride: 60, colOffset: 12, heads: 4, headDim: 12, rotaryDim: 12, positionOffset: 0 }, 331, [2, 2]);
  });

  it('rejects bad arguments', async () => {
    const gpu = await testGpu();
    const x = gpu.tensor([6, 16], 'x'), cos = gpu.tensor([4, 4], 'cos'), sin = gpu.tensor([4, 4], 'sin');
    const ok: RopeArgs = { x, cos, sin, rows: 6, T: 3, rowStride: 16, colOffset: 0, heads: 2, headDim: 8 };
    expect(() => ropeForward(gpu, ok)).not.toThrow();
    expect(() => ropeForward(gpu, { ...ok, colOffset: 1 })).toThrow(/past rowStride/);
    expect(() => ropeForward(gpu, { ...ok, rows: 7 })).toThrow(/multiple of T/);
    expect(() => ropeForward(gpu, { ...ok, positionOffset: 2 })).toThrow(/cos has 16 elements, need 5 positions/);
    expect(() => ropeForward(gpu, { ...ok, rotaryDim: 6 })).not.toThrow(); // 3 pairs: fewer columns of the tables per row
    expect(() => ropeForward(gpu, { ...ok, rotaryDim: 5 })).toThrow(/even/);
    expect(() => ropeForward(gpu, { ...ok, headDim: 10, rowStride: 16, heads: 1, rotaryDim: 12 })).toThrow(/at most headDim/);
    expect(() => ropeBackward(gpu, { ...ok, rows: 8, T: 4 })).toThrow(/x has 96 elements, need/);
    expect(() => ropeBackward(gpu, { ...ok, x: cos, rowStride: 8, rows: 2, T: 1, heads: 1 })).toThrow(/alias/);
  });
});

// ---------------------------------------------------------------- rope tables

// float64 re-implementations of transformers' ROPE_INIT_FUNCTIONS (modeling_rope_utils.py,
// transformers 5), with no float32 rounding at all.
function defaultRef(base: number, dim: number): Float64Array {
  return Float64Array.from({ length: dim / 2 }, (_, i) => 1 / base ** ((2 * i) / dim));
}
function llama3Ref(base: number, dim: number, factor: number, low: number, high: number, old: number): Float64Array {
  const lowWl = old / low, highWl = old / high;
  return defaultRef(base, dim).map((f) => {
    const wl = (2 * Math.PI) / f;
    if (wl < highWl) return f;
    if (wl > lowWl) return f / factor;
    const smooth = (old / wl - low) / (high - low);
    return ((1 - smooth) * f) / factor + smooth * f;
  });
}
function yarnRef(base: number, dim: number, factor: number, orig: number, betaFast: number, betaSlow: number, truncate: boolean): Float64Array {
  const corr = (rot: number) => (dim * Math.log(orig / (rot * 2 * Math.PI))) / (2 * Math.log(base));
  let low = corr(betaFast), high = corr(betaSlow);
  if (truncate) [low, high] = [Math.floor(low), Math.ceil(high)];
  low = Math.max(low, 0);
  high = Math.min(high, dim - 1);
  if (low === high) high += 0.001;
  return Float64Array.from({ length: dim / 2 }, (_, i) => {
    const pf = base ** ((2 * i) / dim);
    const ef = 1 - Math.min(1, Math.max(0, (i - low) / (high - low)));
    return (1 / (factor * pf)) * (1 - ef) + (1 / pf) * ef;
  });
}
function dynamicRef(base: number, dim: number, factor: number, seqLen: number, mpe: number): Float64Array {
  const b = seqLen > mpe ? base * ((factor * seqLen) / mpe - (factor - 1)) ** (dim / (dim - 2)) : base;
  return defaultRef(b, dim);
}

// PyTorch 2.11.0+cu130 + transformers 5.17.0 (CPU, float32): LlamaRotaryEmbedding(config)(x, position_ids),
// inv_freq and cos/sin[position, i] for i < rotaryDim/2 (the second half repeats the first).
// Each golden case: [inv_freq indices, their values, {position: [cos at indices], [sin at indices]}].
const TORCH_GOLDENS: Record<string, { idx: number[]; inv: number[]; att: number; pos: Record<number, [number[], number[]]> }> = {
  default: {
    idx: [0, 5, 15, 19, 31],
    inv: [1.0, 0.23713736236095428, 0.01333521492779255, 0.0042169648222625256, 0.0001333521504420787],
    att: 1.0,
    pos: {
      1000: [[0.5623790621757507, -0.05286107584834099, 0.7187148928642273, -0.4754049479961395, 0.991121768951416], [0.8268795609474182, -0.9986018538475037, 0.6953048706054688, -0.879767119884491, 0.13295726478099823]],
      2047: [[0.24971525371074677, -0.04408674314618111, -0.5593888759613037, -0.7019596099853516, 0.962973952293396], [-0.968319296836853, 0.9990277290344238, 0.8289053440093994, 0.7122167944908142, 0.2695944309234619]],
      4095: [[-0.06597599387168884, -0.9475278258323669, -0.3617713749408722, -0.01028864923864603, 0.8545684218406677], [-0.9978212118148804, -0.3196733295917511, -0.9322668313980103, -0.9999470710754395, 0.519338846206665]],
    },
  },
  smollm: {
    idx: [0, 5, 15, 19, 31],
    inv: [1.0, 0.16548170149326324, 0.004531583748757839, 0.00107460783328861, 1.4330126759887207e-05],
    att: 1.0,
    pos: {
      1000: [[0.5623790621757507, -0.5210583209991455, -0.1798216998577118, 0.476077139377594, 0.999897301197052], [0.8268795609474182, 0.8535211086273193, -0.9836992025375366, 0.8794035315513611, 0.014329635538160801]],
      2047: [[0.24971525371074677, 0.8520125150680542, -0.9889754056930542, -0.5882765650749207, 0.9995697736740112], [-0.968319296836853, -0.5235214233398438, 0.14807972311973572, 0.8086597919464111, 0.029329564422369003]],
      4095: [[-0.06597599387168884, 0.5926671028137207, 0.9574623107910156, -0.3068390488624573, 0.9982787370681763], [-0.9978212118148804, -0.805447518825531, -0.28855830430984497, -0.9517614245414734, 0.05864819511771202]],
    },
  },
  llama32: {
    idx: [0, 5, 15, 19, 31],
    inv: [1.0, 0.12868738174438477, 0.0012905480107292533, 1.291476746700937e-05, 9.418306490260875e-08],
    att: 1.0,
    pos: {
      1000: [[0.5623790621757507, -0.9930554032325745, 0.276594340801239, 0.9999166131019592, 1.0], [0.8268795609474182, 0.11764776706695557, 0.9609867930412292, 0.012914408929646015, 9.418306581210345e-05]],
      2047: [[0.24971525371074677, 0.891243040561676, -0.8776588439941406, 0.9996505975723267, 1.0], [-0.968319296836853, -0.4535260498523712, 0.4792858958244324, 0.026433449238538742, 0.00019279273692518473]],
      4095: [[-0.06597599387168884, 0.6875314116477966, 0.5416555404663086, 0.9986018538475037, 0.9999999403953552], [-0.9978212118148804, -0.726154625415802, -0.8406005501747131, 0.05286132171750069, 0.00038567965384572744]],
    },
  },
  linear: {
    idx: [0, 5, 15, 19, 31],
    inv: [0.3333333432674408, 0.07904578745365143, 0.0044450717978179455, 0.0014056549407541752, 4.4450716814026237e-05],
    att: 1.0,
    pos: {
      1000: [[0.9478031992912292, -0.8747059106826782, -0.2641449570655823, 0.16439183056354523, 0.9990122318267822], [0.31885600090026855, -0.48465409874916077, -0.9644830226898193, 0.9863951206207275, 0.044436078518629074]],
      2047: [[-0.8209245204925537, 0.014709987677633762, -0.9474218487739563, -0.965297281742096, 0.9958631992340088], [-0.5710367560386658, -0.9998918175697327, 0.3199872076511383, 0.26115357875823975, 0.0908651128411293]],
      4095: [[0.022006208077073097, -0.9941238164901733, 0.7979042530059814, 0.8643054962158203, 0.9834790229797363], [0.9997578263282776, -0.10824903100728989, -0.6027842164039612, -0.5029671788215637, 0.18102216720581055]],
    },
  },
  dynamic: {
    idx: [0, 5, 15, 19, 31],
    inv: [1.0, 0.2132817655801773, 0.00970199704170227, 0.0028185395058244467, 6.91055684001185e-05],
    att: 1.0,
    pos: {
      1000: [[0.5623790621757507, 0.9405563473701477, -0.9618203043937683, -0.9482706189155579, 0.9976131319999695], [0.8268795609474182, -0.3396376669406891, -0.27368173003196716, 0.31746312975883484, 0.06905057281255722]],
      2047: [[0.24971525371074677, -0.9956217408180237, 0.5314953923225403, 0.8709642291069031, 0.9900113344192505], [-0.968319296836853, 0.0934736356139183, 0.8470611572265625, -0.49134641885757446, 0.14098778367042542]],
      2999: [[-0.3427213430404663, 0.3125858008861542, -0.6807906627655029, -0.5636666417121887, 0.9786009788513184], [0.9394370913505554, -0.9498895406723022, -0.7324780225753784, 0.8260023593902588, 0.2057671844959259]],
    },
  },
  yarn: {
    idx: [0, 20, 37, 45, 63],
    inv: [1.0, 0.01333521492779255, 0.00012993148993700743, 1.5107409126358107e-05, 3.102344408034696e-07],
    att: 1.138629436111989,
    pos: {
      1000: [[0.6403413414955139, 0.8183499574661255, 1.1290316581726074, 1.1384994983673096, 1.1386293172836304], [0.9415094256401062, 0.7916945815086365, 0.14752791821956635, 0.01720108650624752, 0.00035324206692166626]],
      2047: [[0.28433313965797424, -0.6369366645812988, 1.09859299659729, 1.1380850076675415, 1.1386291980743408], [-1.102556824684143, 0.9438160061836243, 0.29928308725357056, 0.035206351429224014, 0.0007230864139273763]],
      4095: [[-0.07512220740318298, -0.41192352771759033, 0.9812242388725281, 1.136451244354248, 1.138628602027893], [-1.1361485719680786, -1.0615065097808838, 0.5776469707489014, 0.07039620727300644, 0.0014465257991105318]],
    },
  },
};

/** Configurations of the goldens: rope_theta, head_dim, max_position_embeddings, rope_scaling, positions. */
const GOLDEN_CONFIGS: Record<string, [number, number, number, Record<string, unknown> | null, number]> = {
  default: [10000, 64, 4096, null, 4096],
  smollm: [100000, 64, 8192, null, 4096], // SmolLM2
  llama32: [500000, 64, 131072, { rope_type: 'llama3', factor: 32, low_freq_factor: 1, high_freq_factor: 4, original_max_position_embeddings: 8192 }, 4096],
  linear: [10000, 64, 4096, { rope_type: 'linear', factor: 3 }, 4096],
  dynamic: [10000, 64, 2048, { rope_type: 'dynamic', factor: 2 }, 3000], // positions 0..2999 > 2048: rescaled base
  yarn: [1e6, 128, 131072, { rope_type: 'yarn', factor: 4, original_max_position_embeddings: 32768 }, 4096],
};

/** Distance in float32 ulps (both values float32). */
function ulps(a: number, b: number): number {
  const f = new Float32Array([a, b]);
  const i = new Int32Array(f.buffer);
  const key = (v: number) => (v < 0 ? -(v & 0x7fffffff) : v);
  return Math.abs(key(i[0]) - key(i[1]));
}

describe('rope tables', () => {
  it('default: hand-computed float32 inverse frequencies and the table layout', () => {
    const t = ropeTables({ headDim: 8, ropeTheta: 10000, ropeScaling: null, maxPositions: 3 });
    // 10000^(-i/4) for i = 0..3, rounded to float32.
    expect(Array.from(t.invFreq)).toEqual([1, fr(0.1), fr(0.01), fr(0.001)]);
    expect(t.rotaryDim).toBe(8);
    expect(t.attentionScaling).toBe(1);
    expect(t.cos.length).toBe(3 * 4);
    // Position 0: cos 1, sin 0. Position 2, pair 1: angle fp32(2 * fp32(0.1)).
    expect(Array.from(t.cos.subarray(0, 4))).toEqual([1, 1, 1, 1]);
    expect(Array.from(t.sin.subarray(0, 4))).toEqual([0, 0, 0, 0]);
    expect(t.cos[2 * 4 + 1]).toBe(fr(Math.cos(fr(2 * fr(0.1)))));
    expect(t.sin[2 * 4 + 0]).toBe(fr(Math.sin(2)));
    // Qwen2.5 / SmolLM-sized configurations against the float64 formula.
    for (const [theta, D] of [[10000, 64], [100000, 64], [1000000, 128], [500000, 64]] as const) {
      const got = ropeInvFreq({ headDim: D, ropeTheta: theta, ropeScaling: null, maxPositions: 1 }).invFreq;
      expectClose(got, defaultRef(theta, D), 3e-7, `default inv_freq theta=${theta} D=${D}`, 0);
    }
  });

  it('equal PyTorch + transformers to the last bit of pow/cos/sin, far positions included', () => {
    let exactInv = 0, exactTab = 0, nTab = 0;
    for (const [name, [theta, D, mpe, scaling, P]] of Object.entries(GOLDEN_CONFIGS)) {
      const t = ropeTables({ headDim: D, ropeTheta: theta, ropeScaling: scaling, maxPositions: P, maxPositionEmbeddings: mpe });
      const g = TORCH_GOLDENS[name];
      const half = D / 2;
      expect(t.attentionScaling, name).toBe(g.att);
      g.idx.forEach((i, k) => {
        const d = ulps(t.invFreq[i], g.inv[k]);
        // One known difference: torch's SLEEF powf gives 1e6^(74/128) = 2942.72705078125, one ulp
        // below the correctly rounded 2942.727294921875 (exact 2942.72717...), so yarn's inv_freq[37] differs by an ulp.
        expect(d, `${name} inv_freq[${i}]`).toBeLessThanOrEqual(name === 'yarn' && i === 37 ? 1 : 0);
        if (d === 0) exactInv++;
      });
      for (const [p, [cosG, sinG]] of Object.entries(g.pos)) {
        g.idx.forEach((i, k) => {
          // cos/sin of the same float32 angle: torch's float32 cos/sin are faithful, not always correctly rounded.
          for (const [tab, want] of [[t.cos, cosG[k]], [t.sin, sinG[k]]] as const) {
            const d = ulps(tab[Number(p) * half + i], want);
            expect(d, `${name} position ${p} i=${i}: ${tab[Number(p) * half + i]} vs ${want}`).toBeLessThanOrEqual(1);
            nTab++;
            if (d === 0) exactTab++;
          }
        });
      }
    }
    expect(exactInv).toBe(29); // of 30
    expect(exactTab).toBeGreaterThan(0.8 * nTab);
  });

  it('angles are float32 products, as in PyTorch: far positions differ from the exact angle', () => {
    const maxPositions = 4096;
    const t = ropeTables({ headDim: 64, ropeTheta: 10000, ropeScaling: null, maxPositions });
    let maxExactDiff = 0;
    for (const p of [1000, 2047, 3001, 4095]) {
      for (let i = 0; i < 32; i++) {
        const angle = fr(p * t.invFreq[i]);
        expect(t.cos[p * 32 + i]).toBe(fr(Math.cos(angle)));
        expect(t.sin[p * 32 + i]).toBe(fr(Math.sin(angle)));
        maxExactDiff = Math.max(maxExactDiff, Math.abs(t.cos[p * 32 + i] - Math.cos(p * t.invFreq[i])));
      }
    }
    // The float32 angle p * inv_freq is off by up to half an ulp of ~4000 (1.2e-4 rad): the
    // tables would be visibly different from PyTorch's if the angle were formed in float64.
    expect(maxExactDiff).toBeGreaterThan(1e-5);
    expect(maxExactDiff).toBeLessThan(2.5e-4);
  });

  it('linear: default frequencies divided by factor', () => {
    const base = ropeInvFreq({ headDim: 64, ropeTheta: 10000, ropeScaling: null, maxPositions: 1 }).invFreq;
    const lin = ropeInvFreq({ headDim: 64, ropeTheta: 10000, ropeScaling: { rope_type: 'linear', factor: 4 }, maxPositions: 1 }).invFreq;
    expect(Array.from(lin)).toEqual(Array.from(base, (v) => v / 4)); // exact: a power of two
    const lin3 = ropeInvFreq({ headDim: 64, ropeTheta: 10000, ropeScaling: { rope_type: 'linear', factor: 3 }, maxPositions: 1 }).invFreq;
    expect(Array.from(lin3)).toEqual(Array.from(base, (v) => fr(v / 3)));
    expectClose(lin3, defaultRef(10000, 64).map((v) => v / 3), 4e-7, 'linear inv_freq', 0);
  });

  it('llama3: Llama 3.2 parameters, each frequency band', () => {
    const scaling = { rope_type: 'llama3', factor: 32, low_freq_factor: 1, high_freq_factor: 4, original_max_position_embeddings: 8192 };
    const opts = { headDim: 64, ropeTheta: 500000, ropeScaling: scaling, maxPositions: 1 };
    const got = ropeInvFreq(opts).invFreq;
    const plain = ropeInvFreq({ ...opts, ropeScaling: null }).invFreq;
    const want = llama3Ref(500000, 64, 32, 1, 4, 8192);
    expectClose(got, want, 1e-6, 'llama3 inv_freq', 0);
    const bands = [0, 0, 0];
    for (let i = 0; i < 32; i++) {
      const wl = (2 * Math.PI) / plain[i];
      if (wl < 2048) {
        expect(got[i]).toBe(plain[i]); // high frequency: unchanged
        bands[0]++;
      } else if (wl > 8192) {
        expect(got[i]).toBe(plain[i] / 32); // low frequency: divided by factor (exact, power of two)
        bands[2]++;
      } else {
        expect(got[i]).toBeLessThan(plain[i]);
        expect(got[i]).toBeGreaterThan(plain[i] / 32);
        bands[1]++;
      }
    }
    expect(bands.every((b) => b > 0)).toBe(true); // all three regimes exercised
    // Llama 3.1 8B: theta 500000, head_dim 128, factor 8.
    const s31 = { ...scaling, factor: 8 };
    expectClose(ropeInvFreq({ ...opts, headDim: 128, ropeScaling: s31 }).invFreq, llama3Ref(500000, 128, 8, 1, 4, 8192), 1e-6, 'llama3.1 inv_freq', 0);
    // original_max_position_embeddings from config.max_position_embeddings when missing (transformers 5).
    const { original_max_position_embeddings: _omit, ...noOrig } = scaling;
    expect(Array.from(ropeInvFreq({ ...opts, ropeScaling: noOrig, maxPositionEmbeddings: 8192 }).invFreq)).toEqual(Array.from(got));
    expect(() => ropeInvFreq({ ...opts, ropeScaling: noOrig })).toThrow(/maxPositionEmbeddings/);
    expect(() => ropeInvFreq({ ...opts, ropeScaling: { ...scaling, low_freq_factor: undefined } })).toThrow(/low_freq_factor/);
  });

  it('dynamic NTK: default up to max_position_embeddings, a rescaled base beyond', () => {
    const scaling = { rope_type: 'dynamic', factor: 2 };
    const plain = ropeInvFreq({ headDim: 64, ropeTheta: 10000, ropeScaling: null, maxPositions: 1 }).invFreq;
    const within = ropeInvFreq({ headDim: 64, ropeTheta: 10000, ropeScaling: scaling, maxPositions: 2048, maxPositionEmbeddings: 2048 });
    expect(Array.from(within.invFreq)).toEqual(Array.from(plain));
    const beyond = ropeInvFreq({ headDim: 64, ropeTheta: 10000, ropeScaling: scaling, maxPositions: 3000, maxPositionEmbeddings: 2048 }).invFreq;
    const want = dynamicRef(10000, 64, 2, 3000, 2048);
    // The rescaled base is formed in float32 steps: a few ulps on the base, up to ~1e-6 relative.
    expectClose(beyond, want, 2e-6, 'dynamic inv_freq beyond max', 0);
    expect(beyond[0]).toBe(1);
    expect(beyond[31]).toBeLessThan(plain[31] * 0.9); // base grew: low frequencies slower
    expect(() => ropeInvFreq({ headDim: 64, ropeTheta: 10000, ropeScaling: scaling, maxPositions: 10 })).toThrow(/maxPositionEmbeddings/);
  });

  it('yarn: ramp between interpolation and extrapolation, attention factor in cos and sin', () => {
    // Qwen2.5-style: theta 1e6, head_dim 128, factor 4 over 32768.
    const scaling = { rope_type: 'yarn', factor: 4, original_max_position_embeddings: 32768 };
    const t = ropeTables({ headDim: 128, ropeTheta: 1e6, ropeScaling: scaling, maxPositions: 40, maxPositionEmbeddings: 131072 });
    const want = yarnRef(1e6, 128, 4, 32768, 32, 1, true);
    expectClose(t.invFreq, want, 1e-6, 'yarn inv_freq', 0);
    const plain = ropeInvFreq({ headDim: 128, ropeTheta: 1e6, ropeScaling: null, maxPositions: 1 }).invFreq;
    expect(t.invFreq[0]).toBe(plain[0]); // fastest: pure extrapolation
    const pf63 = fr(Math.pow(1e6, fr(126 / 128)));
    expect(t.invFreq[63]).toBe(fr(1 / fr(4 * pf63))); // slowest: pure interpolation
    const mscale = 0.1 * Math.log(4) + 1;
    expect(t.attentionScaling).toBeCloseTo(mscale, 15);
    for (const p of [0, 7, 39]) {
      for (const i of [0, 20, 63]) {
        const angle = fr(p * t.invFreq[i]);
        expect(t.cos[p * 64 + i]).toBe(fr(fr(Math.cos(angle)) * fr(mscale)));
        expect(t.sin[p * 64 + i]).toBe(fr(fr(Math.sin(angle)) * fr(mscale)));
      }
    }
    // Not truncated, other betas; explicit attention_factor; DeepSeek-style mscale / mscale_all_dim.
    const s2 = { rope_type: 'yarn', factor: 8, original_max_position_embeddings: 4096, beta_fast: 16, beta_slow: 2, truncate: false, attention_factor: 0.9 };
    const t2 = ropeInvFreq({ headDim: 64, ropeTheta: 10000, ropeScaling: s2, maxPositions: 1 });
    expectClose(t2.invFreq, yarnRef(10000, 64, 8, 4096, 16, 2, false), 1e-6, 'yarn inv_freq, no truncation', 0);
    expect(t2.attentionScaling).toBe(0.9);
    const s3 = { rope_type: 'yarn', factor: 40, original_max_position_embeddings: 4096, mscale: 0.707, mscale_all_dim: 0.707 };
    expect(ropeInvFreq({ headDim: 64, ropeTheta: 10000, ropeScaling: s3, maxPositions: 1 }).attentionScaling).toBe(1);
    const s4 = { ...s3, mscale: 1, mscale_all_dim: 0.5 };
    const m = (k: number) => 0.1 * k * Math.log(40) + 1;
    expect(ropeInvFreq({ headDim: 64, ropeTheta: 10000, ropeScaling: s4, maxPositions: 1 }).attentionScaling).toBeCloseTo(m(1) / m(0.5), 15);
    // No original_max_position_embeddings: config.max_position_embeddings stands in (transformers 5).
    const s5 = { rope_type: 'yarn', factor: 4 };
    const t5 = ropeInvFreq({ headDim: 128, ropeTheta: 1e6, ropeScaling: s5, maxPositions: 1, maxPositionEmbeddings: 32768 });
    expect(Array.from(t5.invFreq)).toEqual(Array.from(t.invFreq));
    expect(() => ropeInvFreq({ headDim: 128, ropeTheta: 1e6, ropeScaling: s5, maxPositions: 1 })).toThrow(/maxPositionEmbeddings/);
  });

  it('partial rotary factor: fewer rotated columns, frequencies over the rotary dim', () => {
    const t = ropeTables({ headDim: 80, ropeTheta: 10000, ropeScaling: null, maxPositions: 5, partialRotaryFactor: 0.4 });
    expect(t.rotaryDim).toBe(32);
    expect(t.cos.length).toBe(5 * 16);
    expectClose(t.invFreq, defaultRef(10000, 32), 3e-7, 'partial inv_freq', 0);
    // From rope_scaling too (transformers 5 keeps partial_rotary_factor in rope_parameters).
    const t2 = ropeInvFreq({ headDim: 80, ropeTheta: 10000, ropeScaling: { rope_type: 'linear', factor: 2, partial_rotary_factor: 0.4 }, maxPositions: 1 });
    expect(t2.rotaryDim).toBe(32);
    expect(() => ropeTables({ headDim: 10, ropeTheta: 10000, ropeScaling: null, maxPositions: 5, partialRotaryFactor: 0.5 })).toThrow(/even/);
  });

  it('rejects unsupported and malformed configurations', () => {
    const o = { headDim: 64, ropeTheta: 10000, maxPositions: 8 };
    expect(() => ropeTables({ ...o, ropeScaling: { rope_type: 'longrope', short_factor: [], long_factor: [] } })).toThrow(RopeConfigError);
    expect(() => ropeTables({ ...o, ropeScaling: { rope_type: 'longrope' } })).toThrow(/not supported/);
    expect(() => ropeTables({ ...o, ropeScaling: { rope_type: 'linear' } })).toThrow(/needs "factor"/);
    expect(() => ropeTables({ ...o, ropeScaling: { rope_type: 'linear', factor: '2' } })).toThrow(/must be a number/);
    expect(() => ropeTables({ ...o, ropeScaling: null, maxPositions: 0 })).toThrow(/maxPositions/);
    expect(() => ropeTables({ ...o, ropeScaling: null, headDim: 7 })).toThrow(/even/);
    // Old-style `type` key still works.
    expect(Array.from(ropeInvFreq({ ...o, ropeScaling: { type: 'linear', factor: 2 } }).invFreq)).toEqual(
      Array.from(ropeInvFreq({ ...o, ropeScaling: { rope_type: 'linear', factor: 2 } }).invFreq),
    );
  });
});

// ---------------------------------------------------------------- swiglu

const silu = (g: number): number => g / (1 + Math.exp(-g));
function siluGrad(g: number): number {
  const s = 1 / (1 + Math.exp(-g));
  return s * (1 + g * (1 - s));
}

/** Gathers a strided [rows, F] view into a dense array. */
function gather(a: ArrayLike<number>, rows: number, F: number, stride: number, offset: number): Float64Array {
  const out = new Float64Array(rows * F);
  for (let r = 0; r < rows; r++) for (let f = 0; f < F; f++) out[r * F + f] = a[r * stride + offset + f];
  return out;
}

describe('swiglu', () => {
  it('reference derivatives match finite differences', () => {
    const gs = f64(randArray(200, 400, 8));
    expectClose(gs.map(siluGrad), gs.map((g) => (silu(g + 1e-6) - silu(g - 1e-6)) / 2e-6), 1e-6, 'silu derivative');
    // d(silu(g) * u)/du = silu(g), d/dg = u * silu'(g): checked on the product as a function of (g, u).
    const gu = f64(randArray(20, 401, 4));
    const dout = f64(randArray(10, 402));
    const num = numericGrad((v) => {
      let s = 0;
      for (let i = 0; i < 10; i++) s += dout[i] * silu(v[i]) * v[10 + i];
      return s;
    }, gu);
    const ana = new Float64Array(20);
    for (let i = 0; i < 10; i++) {
      ana[i] = dout[i] * gu[10 + i] * siluGrad(gu[i]);
      ana[10 + i] = dout[i] * silu(gu[i]);
    }
    expectClose(ana, num, 1e-6, 'swiglu reference backward vs finite differences');
  });

  it('separate gate/up tensors: forward and the three backward placements', async () => {
    const gpu = await testGpu();
    for (const [rows, F] of [[1, 1], [3, 85], [5, 300]] as const) {
      const n = rows * F;
      const g = randArray(n, 410 + n, 6), u = randArray(n, 411 + n, 2), d = randArray(n, 412 + n);
      const tg = gpu.tensorFrom(g, [rows, F], 'gate'), tu = gpu.tensorFrom(u, [rows, F], 'up'), td = gpu.tensorFrom(d, [rows, F], 'dout');
      const out = gpu.tensorFrom(randArray(n, 1, 9), [rows, F], 'out');
      const dg = gpu.tensorFrom(randArray(n, 2, 9), [rows, F], 'dgate'), du = gpu.tensorFrom(randArray(n, 3, 9), [rows, F], 'dup');
      const dPacked = gpu.tensor([rows, 2 * F], 'dPacked');
      await run(gpu, [
        await bind(gpu, () => swigluForward(gpu, { gate: tg, up: tu, out, rows, F })),
        await bind(gpu, () => swigluBackward(gpu, { dout: td, gate: tg, up: tu, dgate: dg, dup: du, rows, F })),
        // Separate inputs, gradients packed into one [rows, 2F] tensor (up first, then gate).
        await bind(gpu, () =>
          swigluBackward(gpu, { dout: td, gate: tg, up: tu, dgate: dPacked, dup: dPacked, rows, F, dgateStride: 2 * F, dgateOffset: F, dupStride: 2 * F, dupOffset: 0 }),
        ),
      ]);
      const what = `swiglu separate rows=${rows} F=${F}`;
      const wantOut = f64(g).map((v, i) => silu(v) * u[i]);
      const wantDg = f64(g).map((v, i) => d[i] * u[i] * siluGrad(v));
      const wantDu = f64(g).map((v, i) => d[i] * silu(v));
      expectClose(await gpu.read(out), wantOut, 1e-5, `${what} out`);
      expectClose(await gpu.read(dg), wantDg, 1e-5, `${what} dgate`);
      expectClose(await gpu.read(du), wantDu, 1e-5, `${what} dup`);
      const packed = await gpu.read(dPacked);
      expectClose(gather(packed, rows, F, 2 * F, F), wantDg, 1e-5, `${what} dgate into packed`);
      expectClose(gather(packed, rows, F, 2 * F, 0), wantDu, 1e-5, `${what} dup into packed`);
    }
  });

  it('packed [rows, 2F] gate_up: forward, packed gradients, in place, folded grid', async () => {
    const gpu = await testGpu();
    const rows = 7, F = 190, n = rows * F;
    const gu = randArray(rows * 2 * F, 420, 6);
    const d = randArray(n, 421);
    const layout = { gateStride: 2 * F, upStride: 2 * F, gateOffset: 0, upOffset: F };
    const tgu = gpu.tensorFrom(gu, [rows, 2 * F], 'gate_up'), td = gpu.tensorFrom(d, [rows, F], 'dout');
    const inPlace = gpu.tensorFrom(gu, [rows, 2 * F], 'gate_up_inplace');
    const out = gpu.tensor([rows, F], 'out'), dgu = gpu.tensor([rows, 2 * F], 'dgate_up');
    const dg = gpu.tensor([rows, F], 'dgate'), du = gpu.tensor([rows, F], 'dup');
    // 2 x 3 groups of 256 cover n = 1330.
    await run(gpu, [
      folded(await bind(gpu, () => swigluForward(gpu, { gate: tgu, up: tgu, out, rows, F, ...layout })), 2, 3),
      folded(await bind(gpu, () => swigluBackward(gpu, { dout: td, gate: tgu, up: tgu, dgate: dgu, dup: dgu, rows, F, ...layout })), 2, 3),
      await bind(gpu, () => swigluBackward(gpu, { dout: td, gate: tgu, up: tgu, dgate: dg, dup: du, rows, F, ...layout, dgateStride: F, dgateOffset: 0, dupStride: F, dupOffset: 0 })),
      await bind(gpu, () => swigluBackward(gpu, { dout: td, gate: inPlace, up: inPlace, dgate: inPlace, dup: inPlace, rows, F, ...layout })),
    ]);
    const g = gather(gu, rows, F, 2 * F, 0), u = gather(gu, rows, F, 2 * F, F);
    const wantOut = g.map((v, i) => silu(v) * u[i]);
    const wantDg = g.map((v, i) => d[i] * u[i] * siluGrad(v));
    const wantDu = g.map((v, i) => d[i] * silu(v));
    expectClose(await gpu.read(out), wantOut, 1e-5, 'swiglu packed out');
    for (const [name, t] of [['packed', dgu], ['in place', inPlace]] as const) {
      const got = await gpu.read(t);
      expectClose(gather(got, rows, F, 2 * F, 0), wantDg, 1e-5, `swiglu ${name} dgate`);
      expectClose(gather(got, rows, F, 2 * F, F), wantDu, 1e-5, `swiglu ${name} dup`);
    }
    expectClose(await gpu.read(dg), wantDg, 1e-5, 'swiglu packed in, separate dgate');
    expectClose(await gpu.read(du), wantDu, 1e-5, 'swiglu packed in, separate dup');
  });

  it('extreme gate values give no NaN or Inf and the right limits', async () => {
    const gpu = await testGpu();
    const gates = [80, -80, 88, -88, 100, -100, 1e4, -1e4, 3e38, -3e38, 0, -0, 1e-30, -1e-30, 20, -20, 1.5, -1.5];
    const n = gates.length, rows = 2, F = n / 2;
    const g = Float32Array.from(gates), u = randArray(n, 430, 3), d = randArray(n, 431);
    const tg = gpu.tensorFrom(g, [rows, F], 'gate'), tu = gpu.tensorFrom(u, [rows, F], 'up'), td = gpu.tensorFrom(d, [rows, F], 'dout');
    const out = gpu.tensor([rows, F], 'out'), dg = gpu.tensor([rows, F], 'dgate'), du = gpu.tensor([rows, F], 'dup');
    await run(gpu, [
      await bind(gpu, () => swigluForward(gpu, { gate: tg, up: tu, out, rows, F })),
      await bind(gpu, () => swigluBackward(gpu, { dout: td, gate: tg, up: tu, dgate: dg, dup: du, rows, F })),
    ]);
    const got = { out: await gpu.read(out), dgate: await gpu.read(dg), dup: await gpu.read(du) };
    // f64 references; silu(g) for g = +-3e38 is g or -0 (exp overflows harmlessly in f64 too).
    const want = {
      out: Array.from(g, (v, i) => silu(v) * u[i]),
      dgate: Array.from(g, (v, i) => d[i] * u[i] * siluGrad(v)),
      dup: Array.from(g, (v, i) => d[i] * silu(v)),
    };
    for (const k of ['out', 'dgate', 'dup'] as const) {
      for (let i = 0; i < n; i++) {
        const a = got[k][i], b = fr(want[k][i]); // the product of finite f32 values may overflow f32 only for 3e38 * |u| > 1
        if (!Number.isFinite(a) && !(Math.abs(want[k][i]) > 3.4e38)) throw new Error(`${k}[${i}] (gate ${gates[i]}) is ${a}`);
        // WGSL's exp is accurate to 3 + 2|x| ulp: ~1e-5 relative at |x| = 80. Below 1e-30: zero.
        if (Number.isFinite(b) && !(Math.abs(a - b) <= 1e-4 * Math.abs(b) + 1e-30)) {
          throw new Error(`${k}[${i}] (gate ${gates[i]}): got ${a}, want ${b}`);
        }
      }
    }
    // Limits: silu(-1e4) = -0 (no NaN), silu(1e4) = 1e4; silu'(+-large) = 1 and 0.
    expect(got.out[7] === 0).toBe(true); // +-0
    expect(got.dup[6]).toBe(fr(d[6] * 1e4));
    expect(got.dgate[6]).toBe(fr(d[6] * u[6]));
    expect(got.dgate[7] === 0).toBe(true);
  });

  it('rejects bad layouts and aliasing', async () => {
    const gpu = await testGpu();
    const rows = 2, F = 4;
    const gu = gpu.tensor([rows, 2 * F], 'gu'), out = gpu.tensor([rows, F], 'out'), d = gpu.tensor([rows, F], 'd');
    const g = gpu.tensor([rows, F], 'g'), u = gpu.tensor([rows, F], 'u'), dg = gpu.tensor([rows, F], 'dg'), du = gpu.tensor([rows, F], 'du');
    const packed = { gateStride: 2 * F, upStride: 2 * F, gateOffset: 0, upOffset: F };
    expect(() => swigluForward(gpu, { gate: gu, up: gu, out, rows, F, ...packed })).not.toThrow();
    expect(() => swigluForward(gpu, { gate: gu, up: gu, out, rows, F, ...packed, upOffset: F + 1 })).toThrow(/overrun upStride/);
    expect(() => swigluForward(gpu, { gate: g, up: u, out: g, rows, F })).toThrow(/alias/);
    expect(() => swigluForward(gpu, { gate: g, up: u, out, rows: 3, F })).toThrow(/gate has 8 elements, need 12/);
    const bwd = { dout: d, gate: g, up: u, dgate: dg, dup: du, rows, F };
    expect(() => swigluBackward(gpu, bwd)).not.toThrow();
    expect(() => swigluBackward(gpu, { ...bwd, dgate: d })).toThrow(/dout/);
    expect(() => swigluBackward(gpu, { ...bwd, dup: dg })).toThrow(/overlap/);
    expect(() => swigluBackward(gpu, { ...bwd, dgate: g })).toThrow(/alias gate\/up only/);
    expect(() => swigluBackward(gpu, { ...bwd, gate: gu, up: gu, dgate: gu, dup: gu, ...packed, dupOffset: 0, dgateOffset: F })).toThrow(/overlap|alias gate\/up only/);
    expect(() => swigluBackward(gpu, { ...bwd, gate: gu, up: gu, dgate: gu, dup: gu, ...packed })).not.toThrow();
  });
});
