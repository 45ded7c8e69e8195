// Flash attention (kernels/flash-attention.ts: shaders/flash_attention_*.wgsl) against a float64
// reference written as plain loops (scores, masked softmax, products; the backward through P, dP
// and dS, itself checked against central finite differences of the reference forward): head sizes
// 4 to 64, T not a multiple of any tile, padded and empty sequences, causal and full masks,
// grouped-query heads, GPT-2's packed qkv / dqkv rows with offsets, separate tensors with wide row
// strides, forced tilings (so the large tilings the H100 takes also run here at small D), and the
// argument checks. Tolerances are relative to the largest magnitude of each reference output
// (1e-3 at least): 1e-5 for o and lse, 1e-4 for dq, dk and dv.
import { describe, expect, it } from 'vitest';
import { testGpu, randArray, maxRelError } from './helpers/gpu';
import { run } from './helpers/kernel-check';
import type { Gpu } from '../src/engine/gpu/gpu';
import type { Dispatch } from '../src/engine/gpu/dispatch';
import type { Tensor } from '../src/engine/gpu/tensor';
import {
  flashAttentionBackward, flashAttentionForward, flashAttentionScratchElements, flashAttentionSupported, flashAttentionTiles, FLASH_EMPTY_LSE, groupedHeadSum,
  type FlashAttentionShape, type FlashTile,
} from '../src/engine/kernels/flash-attention';

const FWD_TOL = 1e-5;
const BWD_TOL = 1e-4;
const ABS_FLOOR = 1e-3;
const GARBAGE = 12345.5; // what output buffers hold before the kernels run: must stay outside the written ranges

// ---------------------------------------------------------------- reference

interface Dims { B: number; T: number; H: number; kvHeads: number; D: number; causal: boolean; lengths: number[]; scale: number }
/** Reads element (b, t, head, d) of a host operand. */
type At = (b: number, t: number, head: number, d: number) => number;

interface Grads { o: Float64Array; lse: Float64Array; dq: Float64Array; dk: Float64Array; dv: Float64Array }

/**
 * o, lse [B, H, T] and the gradients of sum(o * dO) as dense float64 [B, T, heads, D] arrays.
 * `headOf` maps a query head to its key/value head (the real rule, or a mutation of it); `visible`
 * decides the mask (likewise).
 */
function reference(
  c: Dims, q: At, k: At, v: At, dO: At,
  headOf = (h: number) => Math.floor(h / (c.H / c.kvHeads)),
  visible = (i: number, j: number, len: number) => j < len && (!c.causal || j <= i),
): Grads {
  const { B, T, H, kvHeads, D, scale } = c;
  const o = new Float64Array(B * T * H * D), dq = new Float64Array(B * T * H * D);
  const dk = new Float64Array(B * T * kvHeads * D), dv = new Float64Array(B * T * kvHeads * D);
  const lse = new Float64Array(B * H * T);
  const qi = (b: number, t: number, h: number, d: number) => ((b * T + t) * H + h) * D + d;
  const ki = (b: number, t: number, g: number, d: number) => ((b * T + t) * kvHeads + g) * D + d;
  for (let b = 0; b < B; b++) {
    const len = Math.min(c.lengths[b], T);
    for (let h = 0; h < H; h++) {
      const g = headOf(h);
      for (let i = 0; i < T; i++) {
        const keys: number[] = [];
        for (let j = 0; j < T; j++) if (visible(i, j, len)) keys.push(j);
        if (keys.length === 0) {
          lse[(b * H + h) * T + i] = FLASH_EMPTY_LSE;
          continue;
        }
        const s = keys.map((j) => {
          let x = 0;
          for (let d = 0; d < D; d++) x += q(b, i, h, d) * k(b, j, g, d);
          return scale * x;
        });
        const m = Math.max(...s);
        const sum = s.reduce((acc, x) => acc + Math.exp(x - m), 0);
        const L = m + Math.log(sum);
        lse[(b * H + h) * T + i] = L;
        const P = s.map((x) => Math.exp(x - L));
        for (let d = 0; d < D; d++) {
          let x = 0;
          keys.forEach((j, n) => (x += P[n] * v(b, j, g, d)));
          o[qi(b, i, h, d)] = x;
        }
        // backward: dP = dO v^T, delta = sum P dP, dS = P (dP - delta)
        const dP = keys.map((j) => {
          let x = 0;
          for (let d = 0; d < D; d++) x += dO(b, i, h, d) * v(b, j, g, d);
          return x;
        });
        const delta = P.reduce((acc, p, n) => acc + p * dP[n], 0);
        keys.forEach((j, n) => {
          const dS = P[n] * (dP[n] - delta);
          for (let d = 0; d < D; d++) {
            dq[qi(b, i, h, d)] += scale * dS * k(b, j, g, d);
            dk[ki(b, j, g, d)] += scale * dS * q(b, i, h, d);
            dv[ki(b, j, g, d)] += P[n] * dO(b, i, h, d);
          }
        });
      }
    }
  }
  return { o, lse, dq, dk, dv };
}

const dense = (a: Float64Array, T: number, heads: number, D: number): At => (b, t, h, d) => a[((b * T + t) * heads + h) * D + d];

// ---------------------------------------------------------------- GPU cases

interface Case extends Dims {
  /** 'packed': q, k, v in one buffer's rows (GPT-2's qkv), and dq, dk, dv in another (dqkv); 'separate': each its own tensor. */
  layout: 'packed' | 'separate';
  /** Extra elements per row (row strides wider than the heads) and a leading offset, on every operand. */
  pad: number;
  offset: number;
  seed: number;
  /** q and k magnitudes (larger: more peaked softmax). */
  qkScale?: number;
  tiles?: { forward?: FlashTile; dq?: FlashTile; dkdv?: FlashTile };
  /** Pass a dkvScratch (per-query-head dK/dV partial sums with grouped-query heads). */
  scratch?: boolean;
  /** Bind as on a device with 8 storage buffers per stage. */
  eightBindings?: boolean;
}

/** The same device, reporting 8 storage buffers per shader stage. */
const withEightBindings = (gpu: Gpu): Gpu =>
  Object.assign(Object.create(gpu) as Gpu, { info: { ...gpu.info, limits: { ...gpu.info.limits, maxStorageBuffersPerShaderStage: 8 } } });

interface Placed { t: Tensor; host: Float32Array; off: number; ld: number; heads: number }

/** A host operand [B*T rows, heads*D] at `off` with row stride `ld` inside `host` (one tensor). */
const reader = (p: Placed, D: number, T: number): At => (b, t, h, d) => p.host[p.off + (b * T + t) * p.ld + h * D + d];

function layoutOf(c: Case) {
  const { H, kvHeads, D, pad, offset } = c;
  const rows = c.B * c.T;
  if (c.layout === 'packed') {
    const ld = (H + 2 * kvHeads) * D + pad;
    const size = offset + rows * ld;
    return { size, q: { off: offset, ld }, k: { off: offset + H * D, ld }, v: { off: offset + (H + kvHeads) * D, ld } };
  }
  return { size: 0, q: { off: offset, ld: H * D + pad }, k: { off: offset, ld: kvHeads * D + pad }, v: { off: offset, ld: kvHeads * D + pad + 4 } };
}

async function runCase(gpu: Gpu, c: Case) {
  const bindGpu = c.eightBindings ? withEightBindings(gpu) : gpu;
  const { B, T, H, kvHeads, D } = c;
  const rows = B * T;
  const L = layoutOf(c);
  const qk = c.qkScale ?? 1;
  const place = (name: string, data: Float32Array, off: number, ld: number, heads: number): Placed =>
    ({ t: gpu.tensorFrom(data, [data.length], name), host: data, off, ld, heads });
  const fill = (n: number, seed: number, scale: number) => randArray(n, seed, scale);
  let q: Placed, k: Placed, v: Placed;
  if (c.layout === 'packed') {
    const data = fill(L.size, c.seed, qk);
    // v's columns at unit scale (q and k share the qkScale)
    const vr = fill(L.size, c.seed + 1, 1);
    for (let r = 0; r < rows; r++) for (let x = 0; x < kvHeads * D; x++) data[L.v.off + r * L.v.ld + x] = vr[L.v.off + r * L.v.ld + x];
    const t = gpu.tensorFrom(data, [data.length], 'qkv');
    q = { t, host: data, ...L.q, heads: H };
    k = { t, host: data, ...L.k, heads: kvHeads };
    v = { t, host: data, ...L.v, heads: kvHeads };
  } else {
    q = place('q', fill(L.q.off + rows * L.q.ld, c.seed, qk), L.q.off, L.q.ld, H);
    k = place('k', fill(L.k.off + rows * L.k.ld, c.seed + 2, qk), L.k.off, L.k.ld, kvHeads);
    v = place('v', fill(L.v.off + rows * L.v.ld, c.seed + 3, 1), L.v.off, L.v.ld, kvHeads);
  }
  const ldo = H * D + c.pad, offO = c.offset;
  const outSize = offO + rows * ldo;
  const out = gpu.tensorFrom(new Float32Array(outSize).fill(GARBAGE), [outSize], 'out');
  const lse = gpu.tensorFrom(new Float32Array(B * H * T).fill(GARBAGE), [B * H * T], 'lse');
  const doHost = fill(offO + rows * ldo, c.seed + 4, 1);
  const dout = gpu.tensorFrom(doHost, [doHost.length], 'dout');
  const delta = gpu.tensor([B * H * T], 'delta');
  const lengths = gpu.tensorFrom(Uint32Array.from(c.lengths), [B], 'lengths');

  // gradients: packed into one dqkv buffer like q, k, v, or separate tensors with their own strides
  let dq: Placed, dk: Placed, dv: Placed;
  if (c.layout === 'packed') {
    const data = new Float32Array(L.size).fill(GARBAGE);
    const t = gpu.tensorFrom(data, [data.length], 'dqkv');
    dq = { t, host: data, ...L.q, heads: H };
    dk = { t, host: data, ...L.k, heads: kvHeads };
    dv = { t, host: data, ...L.v, heads: kvHeads };
  } else {
    const mk = (name: string, off: number, ld: number, heads: number): Placed => {
      const data = new Float32Array(off + rows * ld).fill(GARBAGE);
      return { t: gpu.tensorFrom(data, [data.length], name), host: data, off, ld, heads };
    };
    dq = mk('dq', c.offset + 1, H * D + c.pad + 3, H);
    dk = mk('dk', c.offset + 2, kvHeads * D + c.pad, kvHeads);
    dv = mk('dv', c.offset, kvHeads * D + c.pad + 1, kvHeads);
  }

  const shape: FlashAttentionShape = {
    B, T, H, kvHeads, D, scale: c.scale, causal: c.causal, lengths,
    q: q.t, offsetQ: q.off, ldq: q.ld, k: k.t, offsetK: k.off, ldk: k.ld, v: v.t, offsetV: v.off, ldv: v.ld,
  };
  const dkvScratch = c.scratch ? gpu.tensor([flashAttentionScratchElements(B, T, H, D)], 'dkvScratch') : undefined;
  const ops: Dispatch[] = [];
  gpu.device.pushErrorScope('validation');
  ops.push(...flashAttentionForward(bindGpu, { ...shape, out, offsetO: offO, ldo, lse, tiles: c.tiles?.forward }));
  const backward = flashAttentionBackward(bindGpu, {
    ...shape, out, offsetO: offO, ldo, lse, dout, offsetDO: offO, lddo: ldo, delta,
    dq: dq.t, offsetDQ: dq.off, lddq: dq.ld, dk: dk.t, offsetDK: dk.off, lddk: dk.ld, dv: dv.t, offsetDV: dv.off, lddv: dv.ld,
    dkvScratch, tiles: { dq: c.tiles?.dq, dkdv: c.tiles?.dkdv },
  });
  // the per-head path: pre-pass, per-head dK/dV, the two group sums, dQ
  const split = c.scratch && (kvHeads < H || (c.eightBindings && c.layout === 'separate'));
  expect(backward.map((d) => d.label.replace(/.*\[/, '['))).toEqual(
    split ? ['[delta]', '[dk, dv per head]', '[dk group sum]', '[dv group sum]', '[dq]'] : ['[delta]', '[dk, dv]', '[dq]'],
  );
  ops.push(...backward);
  const err = await gpu.device.popErrorScope();
  if (err) throw new Error(`WebGPU validation error: ${err.message}`);
  await run(gpu, ops);

  const got = {
    out: await gpu.read(out), lse: await gpu.read(lse),
    dq: await gpu.read(dq.t), dk: await gpu.read(dk.t), dv: await gpu.read(dv.t),
  };
  const inputs = { q: reader(q, D, T), k: reader(k, D, T), v: reader(v, D, T), dO: reader({ t: dout, host: doHost, off: offO, ld: ldo, heads: H }, D, T) };
  return { got, inputs, placed: { out: { off: offO, ld: ldo, heads: H }, dq, dk, dv } };
}

/** Gathers a [B*T, heads*D] operand out of a read-back buffer, and checks everything else in it is still GARBAGE. */
function gather(buf: Float32Array, p: { off: number; ld: number; heads: number }, rows: number, D: number, what: string, owned?: Set<number>): Float64Array {
  const w = p.heads * D;
  const outArr = new Float64Array(rows * w);
  const mine = owned ?? new Set<number>();
  for (let r = 0; r < rows; r++) {
    for (let x = 0; x < w; x++) {
      const at = p.off + r * p.ld + x;
      outArr[r * w + x] = buf[at];
      mine.add(at);
    }
  }
  if (!owned) expectUntouched(buf, mine, what);
  return outArr;
}

function expectUntouched(buf: Float32Array, written: Set<number>, what: string): void {
  for (let i = 0; i < buf.length; i++) {
    if (!written.has(i) && buf[i] !== GARBAGE) throw new Error(`${what}: element ${i} outside the written ranges changed to ${buf[i]}`);
  }
}

/**
 * Error relative to the largest |want| (or to ABS_FLOOR when every reference value is smaller:
 * the gradients of a one-token sequence are 0 up to rounding).
 */
function expectNear(got: ArrayLike<number>, want: ArrayLike<number>, tol: number, what: string): void {
  if (got.length !== want.length) throw new Error(`${what}: length ${got.length} vs ${want.length}`);
  let scale = ABS_FLOOR;
  for (let i = 0; i < want.length; i++) scale = Math.max(scale, Math.abs(want[i]));
  let err = 0, at = 0;
  for (let i = 0; i < want.length; i++) {
    const e = Math.abs(got[i] - want[i]) / scale;
    if (!(e <= err)) {
      err = Number.isNaN(e) ? Infinity : e;
      at = i;
    }
  }
  if (!(err <= tol)) throw new Error(`${what}: error ${err.toExponential(3)} (relative to the largest |value|) > ${tol} at ${at} (got ${got[at]}, want ${want[at]})`);
}

async function check(c: Case) {
  const gpu = await testGpu();
  const { got, inputs, placed } = await runCase(gpu, c);
  const want = reference(c, inputs.q, inputs.k, inputs.v, inputs.dO);
  const rows = c.B * c.T;
  const tag = `B=${c.B} T=${c.T} H=${c.H}/${c.kvHeads} D=${c.D} ${c.causal ? 'causal' : 'full'} ${c.layout} lengths=[${c.lengths}]`;
  expectNear(gather(got.out, placed.out, rows, c.D, `${tag} out`), want.o, FWD_TOL, `${tag} out`);
  expectNear(got.lse, want.lse, FWD_TOL, `${tag} lse`);
  if (c.layout === 'packed') {
    // one buffer: each gradient's columns, and nothing else, written
    const owned = new Set<number>();
    const dq = gather(got.dq, placed.dq, rows, c.D, '', owned);
    const dk = gather(got.dk, placed.dk, rows, c.D, '', owned);
    const dv = gather(got.dv, placed.dv, rows, c.D, '', owned);
    expectUntouched(got.dq, owned, `${tag} dqkv`);
    expectNear(dq, want.dq, BWD_TOL, `${tag} dq`);
    expectNear(dk, want.dk, BWD_TOL, `${tag} dk`);
    expectNear(dv, want.dv, BWD_TOL, `${tag} dv`);
  } else {
    expectNear(gather(got.dq, placed.dq, rows, c.D, `${tag} dq`), want.dq, BWD_TOL, `${tag} dq`);
    expectNear(gather(got.dk, placed.dk, rows, c.D, `${tag} dk`), want.dk, BWD_TOL, `${tag} dk`);
    expectNear(gather(got.dv, placed.dv, rows, c.D, `${tag} dv`), want.dv, BWD_TOL, `${tag} dv`);
  }
  return { got, want, inputs, placed };
}

const base = (over: Partial<Case> & Pick<Case, 'T' | 'D' | 'lengths'>): Case => ({
  B: over.lengths.length, H: 2, kvHeads: 2, causal: true, scale: 1 / Math.sqrt(over.D), layout: 'separate', pad: 0, offset: 0, seed: 1, ...over,
});

// ---------------------------------------------------------------- tests

describe('flash attention reference', () => {
  it('backward matches finite differences of the forward', () => {
    // loss = sum(o * dO) over a tiny causal, padded, grouped-query case
    const c: Dims = { B: 2, T: 4, H: 2, kvHeads: 1, D: 4, causal: true, lengths: [3, 4], scale: 0.7 };
    const nq = c.B * c.T * c.H * c.D, nk = c.B * c.T * c.kvHeads * c.D;
    const q0 = Float64Array.from(randArray(nq, 11, 1)), k0 = Float64Array.from(randArray(nk, 12, 1));
    const v0 = Float64Array.from(randArray(nk, 13, 1)), dO = Float64Array.from(randArray(nq, 14, 1));
    const loss = (q: Float64Array, k: Float64Array, v: Float64Array) => {
      const r = reference(c, dense(q, c.T, c.H, c.D), dense(k, c.T, 1, c.D), dense(v, c.T, 1, c.D), dense(dO, c.T, c.H, c.D));
      return r.o.reduce((s, x, i) => s + x * dO[i], 0);
    };
    const g = reference(c, dense(q0, c.T, c.H, c.D), dense(k0, c.T, 1, c.D), dense(v0, c.T, 1, c.D), dense(dO, c.T, c.H, c.D));
    const numeric = (which: 0 | 1 | 2) => {
      const x = [q0, k0, v0][which];
      return x.map((_, i) => {
        const h = 1e-6;
        const plus = [q0, k0, v0].map((a) => Float64Array.from(a)), minus = [q0, k0, v0].map((a) => Float64Array.from(a));
        plus[which][i] += h;
        minus[which][i] -= h;
        return (loss(plus[0], plus[1], plus[2]) - loss(minus[0], minus[1], minus[2])) / (2 * h);
      });
    };
    for (const [which, got] of [[0, g.dq], [1, g.dk], [2, g.dv]] as const) {
      const num = numeric(which);
      expect(maxRelError(got, num, 1).err).toBeLessThan(1e-7);
    }
  });
});

describe('flash attention forward and backward', () => {
  // (SwiftShader spends seconds compiling each baked variant, D x tiling x dk/dv in one buffer or
  // not, and milliseconds running it: the cases share few variants.)
  it('GPT-2 layout: packed qkv / dqkv rows, causal, padded batch, D = 16 and 64', async () => {
    await check(base({ T: 37, D: 16, H: 3, kvHeads: 3, lengths: [37, 34], layout: 'packed', seed: 10 }));
    await check(base({ T: 70, D: 64, H: 2, kvHeads: 2, lengths: [67, 70], layout: 'packed', seed: 11 }));
  });

  it('Llama layout: separate tensors, wide and unaligned row strides, grouped-query heads', async () => {
    await check(base({ T: 37, D: 8, H: 4, kvHeads: 2, lengths: [37, 34], pad: 3, offset: 5, seed: 20 }));
    await check(base({ T: 70, D: 16, H: 4, kvHeads: 1, lengths: [65, 70], pad: 4, offset: 2, seed: 21, scratch: true }));
    await check(base({ T: 70, D: 64, H: 3, kvHeads: 1, lengths: [70, 67], pad: 5, offset: 1, seed: 22 }));
  });

  it('empty and one-token sequences; lengths past T', async () => {
    const r = await check(base({ T: 37, D: 8, H: 2, kvHeads: 1, lengths: [0, 1, 100], seed: 30, layout: 'packed' }));
    // the empty sequence: zero output, the documented lse
    expect(Array.from(gather(r.got.out, r.placed.out, 3 * 37, 8, '').slice(0, 37 * 2 * 8)).every((x) => x === 0)).toBe(true);
    expect(Array.from(r.got.lse.slice(0, 2 * 37)).every((x) => x === Math.fround(FLASH_EMPTY_LSE))).toBe(true);
    await check(base({ T: 5, D: 4, H: 2, kvHeads: 2, lengths: [1, 0], seed: 31 }));
  });

  it('full (non-causal) attention with padding', async () => {
    await check(base({ T: 37, D: 16, H: 4, kvHeads: 2, lengths: [37, 34], causal: false, seed: 40, layout: 'packed', pad: 4, offset: 3 }));
    await check(base({ T: 70, D: 8, H: 2, kvHeads: 2, lengths: [61, 70], causal: false, seed: 41, pad: 1 }));
    await check(base({ T: 5, D: 4, H: 3, kvHeads: 3, lengths: [5, 2], causal: false, seed: 42 }));
    await check(base({ T: 70, D: 64, H: 2, kvHeads: 1, lengths: [70, 33], causal: false, seed: 43 }));
  });

  it('grouped-query heads through the per-head scratch (and separate dk, dv with 8 bindings)', async () => {
    // SmolLM2's 9 heads over 3 (here 3 over 1) at D = 64, separate tensors; GPT-2-style packed rows with 4 heads over 2
    await check(base({ T: 70, D: 64, H: 3, kvHeads: 1, lengths: [70, 41], pad: 5, offset: 1, seed: 80, scratch: true }));
    await check(base({ T: 37, D: 8, H: 4, kvHeads: 2, lengths: [37, 0, 20], seed: 81, scratch: true, layout: 'packed', causal: false }));
    // kvHeads == H: the scratch is not needed (and not used) ... unless dk and dv need a ninth binding
    await check(base({ T: 37, D: 8, H: 2, kvHeads: 2, lengths: [37, 34], seed: 82, scratch: true }));
    await check(base({ T: 37, D: 8, H: 2, kvHeads: 2, lengths: [37, 34], seed: 83, scratch: true, eightBindings: true }));
  });

  it('D = 128 (the largest head size taken)', async () => {
    await check(base({ T: 37, D: 128, H: 2, kvHeads: 1, lengths: [37, 20], pad: 4, seed: 55 }));
  });

  it('peaked softmax (large scores) stays accurate', async () => {
    await check(base({ T: 70, D: 16, H: 2, kvHeads: 1, lengths: [70, 50], qkScale: 4, seed: 50 }));
  });

  it('small tilings: several query and key blocks, partial d-quads', async () => {
    // (the default tilings at D <= 16 here are the ones the H100 takes at D = 64)
    const tilings: { forward: FlashTile; dq: FlashTile; dkdv: FlashTile }[] = [
      { forward: { TR: 4, TC: 8 }, dq: { TR: 4, TC: 8 }, dkdv: { TR: 4, TC: 8 } },
      { forward: { TR: 2, TC: 2 }, dq: { TR: 2, TC: 2 }, dkdv: { TR: 2, TC: 2 } },
    ];
    let seed = 60;
    for (const tiles of tilings) {
      await check(base({ T: 70, D: 8, H: 4, kvHeads: 2, lengths: [70, 45], tiles, seed: seed++ }));
      await check(base({ T: 37, D: 8, H: 2, kvHeads: 1, lengths: [30, 37], causal: false, tiles, seed: seed++ }));
    }
  });

  it('the causal mask and the grouped-query head mapping are what the test data can tell apart', async () => {
    // The same run against references with the mask or the head mapping mutated: the kernels'
    // results must be far from those (so the checks above would catch either bug).
    const c = base({ T: 37, D: 8, H: 4, kvHeads: 2, lengths: [37, 30], seed: 70 });
    const gpu = await testGpu();
    const { got, inputs, placed } = await runCase(gpu, c);
    const o = gather(got.out, placed.out, c.B * c.T, c.D, 'out');
    const dk = gather(got.dk, placed.dk, c.B * c.T, c.D, 'dk');
    const right = reference(c, inputs.q, inputs.k, inputs.v, inputs.dO);
    const noCausal = reference(c, inputs.q, inputs.k, inputs.v, inputs.dO, undefined, (_i, j, len) => j < len);
    const wrongHeads = reference(c, inputs.q, inputs.k, inputs.v, inputs.dO, (h) => h % c.kvHeads);
    const noPadding = reference(c, inputs.q, inputs.k, inputs.v, inputs.dO, undefined, (i, j) => j <= i);
    expect(maxRelError(o, right.o, 1).err).toBeLessThan(FWD_TOL);
    expect(maxRelError(dk, right.dk, 1).err).toBeLessThan(BWD_TOL);
    for (const [name, wrong] of [['non-causal', noCausal], ['h % kvHeads', wrongHeads], ['no padding mask', noPadding]] as const) {
      expect(maxRelError(o, wrong.o, 1).err, name).toBeGreaterThan(1e-2);
      expect(maxRelError(dk, wrong.dk, 1).err, name).toBeGreaterThan(1e-2);
    }
  });
});

describe('flash attention support and arguments', () => {
  it('picks tilings within the device limits', async () => {
    const gpu = await testGpu();
    for (const D of [4, 8, 16, 64, 128]) {
      expect(flashAttentionSupported(gpu, D), `D=${D}`).toBe(true);
      expect(flashAttentionTiles(gpu, D)).not.toBeNull();
    }
    for (const D of [0, 2, 6, 130.5, 132, 256]) expect(flashAttentionSupported(gpu, D), `D=${D}`).toBe(false);
    // a device with 48 KiB and 1024 threads (the H100) takes the large tilings at D = 64
    const h100 = { ...gpu, info: { ...gpu.info, limits: { ...gpu.info.limits, maxComputeWorkgroupStorageSize: 49152, maxComputeInvocationsPerWorkgroup: 1024 } }, device: { limits: { maxComputeWorkgroupSizeX: 1024 } } } as unknown as Gpu;
    expect(flashAttentionTiles(h100, 64)).toEqual({ forward: { TR: 16, TC: 8 }, dq: { TR: 8, TC: 8 }, dkdv: { TR: 8, TC: 8 } });
    const eightBindings = { ...gpu, info: { ...gpu.info, limits: { ...gpu.info.limits, maxStorageBuffersPerShaderStage: 8 } }, device: gpu.device } as unknown as Gpu;
    expect(flashAttentionSupported(eightBindings, 64)).toBe(false);
    expect(flashAttentionSupported(eightBindings, 64, { separateDkDv: false })).toBe(true);
  });

  it('rejects bad arguments', async () => {
    const gpu = await testGpu();
    const B = 2, T = 5, H = 4, kvHeads = 2, D = 8;
    const rows = B * T;
    const f = (n: number, name: string) => gpu.tensor([n], name);
    const q = f(rows * H * D, 'q'), k = f(rows * kvHeads * D, 'k'), v = f(rows * kvHeads * D, 'v');
    const lengths = gpu.tensorFrom(Uint32Array.of(5, 3), [2], 'lengths');
    const shape: FlashAttentionShape = { B, T, H, kvHeads, D, scale: 0.3, causal: true, lengths, q, ldq: H * D, k, ldk: kvHeads * D, v, ldv: kvHeads * D };
    const out = f(rows * H * D, 'out'), lse = f(B * H * T, 'lse');
    const fwd = { ...shape, out, ldo: H * D, lse };
    expect(() => flashAttentionForward(gpu, fwd)).not.toThrow();
    expect(() => flashAttentionForward(gpu, { ...fwd, D: 6, ldq: 24, ldk: 12, ldv: 12, ldo: 24 })).toThrow(/multiple of 4/);
    expect(() => flashAttentionForward(gpu, { ...fwd, kvHeads: 3 })).toThrow(/not a multiple of 3 key\/value heads/);
    expect(() => flashAttentionForward(gpu, { ...fwd, T: 0 })).toThrow(/T must be a positive integer/);
    expect(() => flashAttentionForward(gpu, { ...fwd, scale: NaN })).toThrow(/scale must be finite/);
    expect(() => flashAttentionForward(gpu, { ...fwd, ldq: H * D - 1 })).toThrow(/row stride of q must be an integer >= 32/);
    expect(() => flashAttentionForward(gpu, { ...fwd, offsetK: 1 })).toThrow(/k \(k, 160 elements\) would be accessed at index 160/);
    expect(() => flashAttentionForward(gpu, { ...fwd, lse: f(B * H * T - 1, 'short') })).toThrow(/lse \(short\) has 39 elements, need B\*H\*T = 40/);
    expect(() => flashAttentionForward(gpu, { ...fwd, lengths: gpu.tensor([2], 'l', 'i32') })).toThrow(/lengths must be u32/);
    expect(() => flashAttentionForward(gpu, { ...fwd, lengths: gpu.tensor([1], 'l', 'u32') })).toThrow(/lengths has 1 elements, need B = 2/);
    expect(() => flashAttentionForward(gpu, { ...fwd, q: gpu.tensor([rows * H * D], 'qi', 'i32') })).toThrow(/q \(qi\) must be f32/);
    expect(() => flashAttentionForward(gpu, { ...fwd, out: q })).toThrow(/out must not share a buffer with q/);
    expect(() => flashAttentionForward(gpu, { ...fwd, lse: out })).toThrow(/out must not share a buffer with lse/);
    expect(() => flashAttentionForward(gpu, { ...fwd, tiles: { TR: 64, TC: 64 } })).toThrow(/does not fit this device/);

    const dqkv = f(rows * (H + 2 * kvHeads) * D, 'dqkv');
    const ld = (H + 2 * kvHeads) * D;
    const bwd = {
      ...shape, out, ldo: H * D, lse, dout: f(rows * H * D, 'dout'), lddo: H * D, delta: f(B * H * T, 'delta'),
      dq: dqkv, offsetDQ: 0, lddq: ld, dk: dqkv, offsetDK: H * D, lddk: ld, dv: dqkv, offsetDV: (H + kvHeads) * D, lddv: ld,
    };
    expect(() => flashAttentionBackward(gpu, bwd)).not.toThrow();
    expect(flashAttentionBackward(gpu, bwd)).toHaveLength(3);
    expect(() => flashAttentionBackward(gpu, { ...bwd, offsetDV: H * D + 4 })).toThrow(/dk and dv share a buffer/);
    expect(() => flashAttentionBackward(gpu, { ...bwd, offsetDK: 4 })).toThrow(/dq and dk share a buffer/);
    expect(() => flashAttentionBackward(gpu, { ...bwd, lddv: ld + 4 })).toThrow(/dv \(dqkv, 640 elements\) would be accessed|same row stride/);
    expect(() => flashAttentionBackward(gpu, { ...bwd, delta: lse })).toThrow(/delta must not share a buffer with lse/);
    expect(() => flashAttentionBackward(gpu, { ...bwd, dq: q, offsetDQ: 0, lddq: H * D })).toThrow(/dq must not share a buffer with q/);
    expect(() => flashAttentionBackward(gpu, { ...bwd, delta: f(3, 'tiny') })).toThrow(/delta \(tiny\) has 3 elements/);
    expect(() => flashAttentionBackward(gpu, { ...bwd, dout: f(3, 'tiny') })).toThrow(/dout \(tiny, 3 elements\)/);
    const scratch = f(2 * rows * H * D, 'scratch');
    expect(flashAttentionBackward(gpu, { ...bwd, dkvScratch: scratch })).toHaveLength(5);
    expect(() => flashAttentionBackward(gpu, { ...bwd, dkvScratch: f(2 * rows * H * D - 1, 'small') })).toThrow(/dkvScratch \(small\) has 639 elements, need 2\*B\*T\*H\*D = 640/);
    expect(() => flashAttentionBackward(gpu, { ...bwd, dkvScratch: dqkv })).toThrow(/dkvScratch must not share a buffer with dk/);
    const separate = { ...bwd, dk: f(rows * kvHeads * D, 'dk'), offsetDK: 0, lddk: kvHeads * D, dv: f(rows * kvHeads * D, 'dv'), offsetDV: 0, lddv: kvHeads * D };
    expect(() => flashAttentionBackward(withEightBindings(gpu), separate)).toThrow(/needs 9 storage buffers per stage, this device allows 8/);
    expect(() => flashAttentionBackward(withEightBindings(gpu), { ...separate, dkvScratch: scratch })).not.toThrow();
  });
});

describe('groupedHeadSum (per-query-head dK / dV summed over each key/value head\'s group)', () => {
  it('sums each group\'s heads into a strided, offset output and leaves the rest; refuses what does not fit', async () => {
    const gpu = await testGpu();
    const [rows, H, KV, D] = [7, 6, 2, 5];
    const G = H / KV, W = KV * D, ldOut = W + 3, offPart = 4, offOut = 2;
    const part = randArray(offPart + rows * H * D, 41), out0 = randArray(offOut + rows * ldOut + 1, 42);
    const tPart = gpu.tensorFrom(part, [part.length], 'part'), tOut = gpu.tensorFrom(out0, [out0.length], 'out');
    await run(gpu, [groupedHeadSum(gpu, { label: 'sum', part: tPart, offPart, out: tOut, offOut, ldOut, rows, H, kvHeads: KV, D })]);
    const want = Float64Array.from(out0);
    for (let r = 0; r < rows; r++) {
      for (let g = 0; g < KV; g++) {
        for (let d = 0; d < D; d++) {
          let s = 0;
          for (let j = 0; j < G; j++) s += part[offPart + r * H * D + (g * G + j) * D + d];
          want[offOut + r * ldOut + g * D + d] = s;
        }
      }
    }
    const got = await gpu.read(tOut);
    for (let i = 0; i < want.length; i++) expect(Math.abs(got[i] - want[i]), `element ${i}`).toBeLessThan(1e-6 * (1 + Math.abs(want[i])));
    const ok = { label: 'sum', part: tPart, offPart, out: tOut, offOut, ldOut, rows, H, kvHeads: KV, D };
    expect(() => groupedHeadSum(gpu, { ...ok, kvHeads: 4 })).toThrow(/kvHeads dividing H/);
    expect(() => groupedHeadSum(gpu, { ...ok, ldOut: W - 1 })).toThrow(/ldOut = 9 must be at least kvHeads \* D = 10/);
    expect(() => groupedHeadSum(gpu, { ...ok, rows: 8 })).toThrow(/part \(part\) has 214 elements, need 244/);
    expect(() => groupedHeadSum(gpu, { ...ok, offOut: 7 })).toThrow(/out \(out\) has 94 elements, need 95/);
    expect(() => groupedHeadSum(gpu, { ...ok, out: tPart })).toThrow(/must not alias/);
  });
});
