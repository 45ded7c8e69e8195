// The KV-cache generation kernels (shaders/kv_attention.wgsl, shaders/kv_cache.wgsl) against
// float64 references: attention of new rows over a cache (grouped-query heads, the position read
// from the state buffer, a cache longer than one workgroup's stride, folded grids), appending key
// and value rows, rotary embeddings and learned positions at the state's position.
import { describe, expect, it } from 'vitest';
import { testGpu, randArray, expectClose } from './helpers/gpu';
import type { Gpu } from '../src/engine/gpu/gpu';
import type { Tensor } from '../src/engine/gpu/tensor';
import { kvAttention } from '../src/engine/kernels/kv-attention';
import { kvAddPositions, kvAppend, kvRope } from '../src/engine/kernels/kv-cache';
import { run, bind, folded } from './helpers/kernel-check';

function state(gpu: Gpu, pos: number): Tensor {
  return gpu.tensorFrom(Uint32Array.of(pos, 0, 0, 0), [4], 'state');
}

interface AttnCase { rows: number; H: number; kvHeads: number; D: number; capacity: number; pos: number; qStride: number; qOffset: number; outStride: number }

function attentionRef(c: AttnCase, q: Float32Array, k: Float32Array, v: Float32Array, scale: number): Float64Array {
  const W = c.kvHeads * c.D, G = c.H / c.kvHeads;
  const out = new Float64Array(c.rows * c.outStride);
  for (let i = 0; i < c.rows; i++) {
    const n = Math.min(c.pos + i + 1, c.capacity);
    for (let h = 0; h < c.H; h++) {
      const g = Math.floor(h / G);
      const s = new Float64Array(n);
      for (let j = 0; j < n; j++) {
        let d0 = 0;
        for (let d = 0; d < c.D; d++) d0 += q[i * c.qStride + c.qOffset + h * c.D + d] * k[j * W + g * c.D + d];
        s[j] = scale * d0;
      }
      const m = Math.max(...s);
      let sum = 0;
      for (let j = 0; j < n; j++) sum += (s[j] = Math.exp(s[j] - m));
      for (let d = 0; d < c.D; d++) {
        let acc = 0;
        for (let j = 0; j < n; j++) acc += s[j] * v[j * W + g * c.D + d];
        out[i * c.outStride + h * c.D + d] = acc / sum;
      }
    }
  }
  return out;
}

describe('kvAttention', () => {
  const cases: [string, AttnCase, [number, number]?][] = [
    ['one decode row, GQA 4:2', { rows: 1, H: 4, kvHeads: 2, D: 8, capacity: 20, pos: 13, qStride: 32, qOffset: 0, outStride: 32 }],
    ['prefill rows from a packed qkv (GPT-2), pos 0', { rows: 6, H: 3, kvHeads: 3, D: 5, capacity: 9, pos: 0, qStride: 45, qOffset: 0, outStride: 15 }],
    ['rows continuing after a prefix, cache longer than 64 keys', { rows: 3, H: 2, kvHeads: 1, D: 16, capacity: 200, pos: 150, qStride: 40, qOffset: 4, outStride: 36 }],
    ['the last row clipped at the capacity', { rows: 4, H: 2, kvHeads: 2, D: 4, capacity: 10, pos: 8, qStride: 8, qOffset: 0, outStride: 8 }],
    ['folded grid', { rows: 3, H: 4, kvHeads: 1, D: 6, capacity: 12, pos: 5, qStride: 24, qOffset: 0, outStride: 24 }, [5, 3]],
  ];
  for (const [name, c, fold] of cases) {
    it(name, async () => {
      const gpu = await testGpu();
      const W = c.kvHeads * c.D;
      const qv = randArray(c.rows * c.qStride, 11, 2), kv = randArray(c.capacity * W, 12, 2), vv = randArray(c.capacity * W, 13);
      const q = gpu.tensorFrom(qv, [c.rows * c.qStride], 'q');
      const k = gpu.tensorFrom(kv, [c.capacity * W], 'k'), v = gpu.tensorFrom(vv, [c.capacity * W], 'v');
      const scores = gpu.tensor([c.rows * c.H * c.capacity], 'scores');
      const outInit = randArray(c.rows * c.outStride, 14);
      const out = gpu.tensorFrom(outInit, [c.rows * c.outStride], 'out');
      const scale = 1 / Math.sqrt(c.D);
      const d = await bind(gpu, () => kvAttention(gpu, { state: state(gpu, c.pos), q, qStride: c.qStride, qOffset: c.qOffset, kCache: k, vCache: v, scores, out, outStride: c.outStride, rows: c.rows, H: c.H, kvHeads: c.kvHeads, D: c.D, capacity: c.capacity, scale }));
      await run(gpu, [fold ? folded(d, fold[0], fold[1]) : d]);
      const want = attentionRef(c, qv, kv, vv, scale);
      // columns of out no head writes keep their values
      for (let i = 0; i < c.rows; i++) for (let col = c.H * c.D; col < c.outStride; col++) want[i * c.outStride + col] = outInit[i * c.outStride + col];
      expectClose(await gpu.read(out), want, 1e-4, name);
    });
  }

  it('refuses heads that do not divide and a cache that is too small', async () => {
    const gpu = await testGpu();
    const t = (n: number): Tensor => gpu.tensor([n], 't');
    const base = { state: state(gpu, 0), q: t(24), qStride: 24, qOffset: 0, kCache: t(48), vCache: t(48), scores: t(48), out: t(24), outStride: 24, rows: 1, H: 4, kvHeads: 3, D: 6, capacity: 2, scale: 1 };
    expect(() => kvAttention(gpu, base)).toThrow(/multiple/);
    expect(() => kvAttention(gpu, { ...base, kvHeads: 2, capacity: 5 })).toThrow(/kCache has 48 elements, need 60/);
  });
});

describe('kvAppend', () => {
  it('copies rows of a strided source into the cache from the state position, dropping rows past the capacity', async () => {
    const gpu = await testGpu();
    const rows = 4, srcStride = 12, srcOffset = 4, width = 5, capacity = 9, pos = 6;
    const srcV = randArray(rows * srcStride, 21);
    const cacheInit = randArray(capacity * width, 22);
    const cache = gpu.tensorFrom(cacheInit, [capacity * width], 'cache');
    const d = await bind(gpu, () => kvAppend(gpu, { state: state(gpu, pos), src: gpu.tensorFrom(srcV, [rows * srcStride], 'src'), srcStride, srcOffset, cache, rows, width, capacity }));
    await run(gpu, [d]);
    const want = Float64Array.from(cacheInit);
    for (let i = 0; i < rows && pos + i < capacity; i++) for (let c = 0; c < width; c++) want[(pos + i) * width + c] = srcV[i * srcStride + srcOffset + c];
    expect(Array.from(await gpu.read(cache))).toEqual(Array.from(Float32Array.from(want)));
  });
});

describe('kvRope', () => {
  it('rotates pairs of each head at positions state + row (partial rotary, an offset column)', async () => {
    const gpu = await testGpu();
    const rows = 3, rowStride = 30, colOffset = 2, heads = 3, headDim = 8, rotaryDim = 6, positions = 12, pos = 7;
    const half = rotaryDim / 2;
    const angles = Float64Array.from({ length: positions * half }, (_, i) => Math.floor(i / half) * 0.37 * (1 + (i % half)));
    const cosV = Float32Array.from(angles, Math.cos), sinV = Float32Array.from(angles, Math.sin);
    const xv = randArray(rows * rowStride, 31, 2);
    const x = gpu.tensorFrom(xv, [rows * rowStride], 'x');
    const d = await bind(gpu, () => kvRope(gpu, { state: state(gpu, pos), x, rows, rowStride, colOffset, heads, headDim, rotaryDim, cos: gpu.tensorFrom(cosV, [cosV.length], 'cos'), sin: gpu.tensorFrom(sinV, [sinV.length], 'sin'), positions }));
    await run(gpu, [d]);
    const want = Float64Array.from(xv);
    for (let m = 0; m < rows; m++) {
      const p = Math.min(pos + m, positions - 1);
      for (let h = 0; h < heads; h++) {
        for (let i = 0; i < half; i++) {
          const ia = m * rowStride + colOffset + h * headDim + i, ib = ia + half;
          const c = cosV[p * half + i], s = sinV[p * half + i];
          want[ia] = xv[ia] * c - xv[ib] * s;
          want[ib] = xv[ib] * c + xv[ia] * s;
        }
      }
    }
    expectClose(await gpu.read(x), want, 1e-6, 'kvRope');
  });
});

describe('kvAddPositions', () => {
  it('adds the position table rows from the state position on', async () => {
    const gpu = await testGpu();
    const rows = 3, C = 7, positions = 10, pos = 4;
    const xv = randArray(rows * C, 41), tv = randArray(positions * C, 42);
    const x = gpu.tensorFrom(xv, [rows * C], 'x');
    const d = await bind(gpu, () => kvAddPositions(gpu, { state: state(gpu, pos), x, table: gpu.tensorFrom(tv, [positions * C], 'table'), rows, C, positions }));
    await run(gpu, [d]);
    const want = Float64Array.from(xv, (v, i) => v + tv[(pos + Math.floor(i / C)) * C + (i % C)]);
    expectClose(await gpu.read(x), want, 1e-6, 'kvAddPositions');
  });
});
