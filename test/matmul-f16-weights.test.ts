// B kept in f16 (frozen weights at half the memory): every matmul kernel reads it through
// kernels/packed-f16.ts. Each path must give, bit for bit, what it gives for an f32 B holding the same
// (f16-rounded) values, since only the loads differ; and the float64 product of those values.

import { afterEach, describe, expect, it } from 'vitest';
import { randArray, testGpu } from './helpers/gpu';
import { expectMatmulClose, matmulReference } from './helpers/matmul-reference';
import {
  matmul, matmulSplitK, matmulStreamK, splitKScratchElements, streamKPlan, streamKScratchElements, usesSkinnyMatmul, vec4Aligned, type MatmulArgs,
} from '../src/engine/kernels/matmul';
import { hasStagedB, withPackedF16, withStagedHalfB } from '../src/engine/kernels/packed-f16';
import fs from 'node:fs';
import path from 'node:path';
import { runOps, type Op } from '../src/engine/gpu/dispatch';
import { DEFAULT_KERNEL_TUNING, type Gpu } from '../src/engine/gpu/gpu';
import { f16ToF32, f32ToF16 } from '../src/io/safetensors';

type Case = Omit<MatmulArgs, 'a' | 'b' | 'c' | 'bias'> & { bias?: Float32Array };

/** Runs `k` with B in f16 and with B in f32 holding the same values: equal to the bit, and to float64 within `tol`. */
async function check(gpu: Gpu, k: Case, sizes: { a: number; b: number; c: number }, what: string, opsOf: (args: MatmulArgs) => Op[] = (args) => [matmul(gpu, args)], seed = 1): Promise<string[]> {
  const a = randArray(sizes.a, seed);
  const bExact = randArray(sizes.b, seed + 1, 3);
  const b = f16ToF32(f32ToF16(bExact)); // the values B in f16 holds
  const c0 = randArray(sizes.c, seed + 2);
  const ta = gpu.tensorFrom(a, [sizes.a], 'a');
  const tbHalf = gpu.tensorFromF16(bExact, [sizes.b], 'b (f16)');
  const tbFull = gpu.tensorFrom(b, [sizes.b], 'b (f32)');
  const tbias = k.bias ? gpu.tensorFrom(k.bias, [k.bias.length], 'bias') : undefined;
  const results: Float32Array[] = [];
  const labels: string[] = [];
  for (const tb of [tbHalf, tbFull]) {
    const tc = gpu.tensorFrom(c0, [sizes.c], 'c');
    const ops = opsOf({ ...k, a: ta, b: tb, c: tc, bias: tbias, label: what });
    labels.push(...ops.map((o) => (o.kind === 'dispatch' ? o.label : o.kind)));
    runOps(gpu, ops);
    results.push(await gpu.read(tc));
    gpu.destroyTensor(tc);
  }
  const [half, full] = results;
  const differs = half.findIndex((v, i) => !Object.is(v, full[i]));
  expect(differs, `${what}: C[${differs}] = ${half[differs]} from f16 B, ${full[differs]} from f32 B`).toBe(-1);
  const { want, scale } = matmulReference(a, b, c0, k);
  expectMatmulClose(half, want, scale, 1e-5, what);
  for (const t of [ta, tbHalf, tbFull, tbias]) if (t) gpu.destroyTensor(t);
  return labels;
}

const dense = (M: number, N: number, K: number, transB: boolean, offB = 0, padB = 0) => {
  const ldb = (transB ? K : N) + padB;
  return { sizes: { a: M * K, b: offB + (transB ? N : K) * ldb, c: M * N }, ldb, offsetB: offB };
};

describe('packed f16 loads (kernels/packed-f16.ts)', () => {
  it('rewrites the binding and each read, scalar and vec4, and refuses any other use', () => {
    const scalar = '@group(0) @binding(2) var<storage, read> b: array<f32>;\n// b[k] in a comment\nfn f(i: u32) -> f32 { return b[i + u32(sub[b[0]])] + x.b[1]; }';
    const out = withPackedF16(scalar, 'b');
    expect(out).toContain('var<storage, read> b: array<u32>;');
    expect(out).toContain('b_f16_at(i + u32(sub[b_f16_at(0)]))');
    expect(out).toContain('x.b[1]'); // a field named b is not the binding
    const vec4 = withPackedF16('@group(0) @binding(1) var<storage, read> w: array<vec4<f32>>;\nfn g(i: u32) -> vec4<f32> { return w[(i) >> 2u]; }', 'w');
    expect(vec4).toContain('var<storage, read> w: array<vec2<u32>>;');
    expect(vec4).toContain('return w_f16_at((i) >> 2u);');
    expect(() => withPackedF16('@group(0) @binding(1) var<storage, read> b: array<f32>;\nfn h() -> u32 { return arrayLength(&b); }', 'b')).toThrow(/b is used other than by index/);
    expect(() => withPackedF16('@group(0) @binding(1) var<storage, read_write> b: array<f32>;', 'b')).toThrow(/no read-only array<f32>/);
  });

  it('the vec4 and stream-K kernels carry B as loaded words to their staging, widened there', () => {
    const dir = path.join(__dirname, '..', 'shaders');
    const staged = fs.readdirSync(dir).filter((f) => /^matmul_(vec4|streamk)_\d+x\d+(_c4)?\.wgsl$/.test(f));
    expect(staged.length).toBe(8);
    for (const f of staged) {
      const code = fs.readFileSync(path.join(dir, f), 'utf8');
      expect(hasStagedB(code), f).toBe(true);
      const out = withStagedHalfB(code);
      expect(out, f).toContain('alias BStored = vec2<u32>;');
      expect(out, f).toContain('fn stageB(slot: vec2<u32>, stored: BStored) {\n  let v = widenB(stored);');
      expect(out.match(/unpack2x16float/g)?.length, f).toBe(2); // once, in widenB
      expect(withPackedF16(code, 'a'), f).toBeTruthy(); // A is still plain vec4s
    }
    const plain = fs.readFileSync(path.join(dir, 'matmul_wide_128x128.wgsl'), 'utf8');
    expect(hasStagedB(plain)).toBe(false);
    expect(() => withStagedHalfB(plain)).toThrow(/no BStored block/);
  });

  it('stores halves rounded to nearest, reads them back widened, and refuses values past f16', async () => {
    const gpu = await testGpu();
    const values = Float32Array.from([1, -2.5, 1 / 3, 65504, 6e-8, 0, -0, 1e-3, 3.14159]);
    const t = gpu.tensorFromF16(values, [values.length], 'halves');
    expect(t.dtype).toBe('f16');
    expect(t.bytes).toBe(24); // 9 halves in whole 8-byte groups of 4
    expect([...(await gpu.read(t))]).toEqual([...f16ToF32(f32ToF16(values))]);
    gpu.destroyTensor(t);
    expect(() => gpu.tensorFromF16(Float32Array.from([1, 2, 70000]), [3], 'too large')).toThrow(/too large: element 2 \(70000\) is past the range of f16/);
  });
});

describe('matmul with B in f16', () => {
  afterEach(async () => {
    Object.assign((await testGpu()).tuning, DEFAULT_KERNEL_TUNING);
  });

  it('scalar-load tiles (every variant): odd offsets and strides, both layouts of B, alpha, accumulate and bias', async () => {
    const gpu = await testGpu();
    gpu.tuning.vec4Matmul = false;
    const bias = Float32Array.from({ length: 70 }, (_, i) => (i % 5) - 2);
    for (const variant of ['64x64', '128x128', '128x64', '64x128', 'db64x64'] as const) {
      gpu.tuning.matmul = variant;
      for (const transB of [false, true]) {
        const [M, N, K] = [67, 70, 37];
        const { sizes, ldb, offsetB } = dense(M, N, K, transB, 3, 1);
        const labels = await check(gpu, { M, N, K, transB, ldb, offsetB, alpha: 0.75, accumulate: true, bias: bias.subarray(0, N) }, sizes, `${variant} tB=${transB}`);
        expect(labels).toHaveLength(2);
      }
    }
  });

  it('vec4 tiles, C as scalars and as vec4s, both layouts of B', async () => {
    const gpu = await testGpu();
    for (const variant of ['64x64', '128x128', '128x64', '64x128'] as const) {
      gpu.tuning.matmul = variant;
      for (const transB of [false, true]) {
        for (const N of [68, 72]) {
          const [M, K] = [72, 40];
          const { sizes, ldb, offsetB } = dense(M, N, K, transB, 4, 4);
          expect(vec4Aligned({ M, N, K, transA: false, transB, lda: K, ldb, offA: 0, offB: offsetB, batch: { outer: 1, inner: 1, strideA: [0, 0], strideB: [0, 0], strideC: [0, 0] } })).toBe(true);
          await check(gpu, { M, N, K, transB, ldb, offsetB }, sizes, `vec4 ${variant} N=${N} tB=${transB}`);
        }
      }
    }
  });

  it('the skinny kernel, with B as its B (few columns) and as its A (few rows: generation\'s one-row products)', async () => {
    const gpu = await testGpu();
    for (const [M, N] of [[40, 3], [1, 40], [2, 33]] as [number, number][]) {
      for (const transB of [false, true]) {
        const K = 300;
        expect(usesSkinnyMatmul(gpu, M, N, K, 1, false)).toBe(true);
        const { sizes, ldb, offsetB } = dense(M, N, K, transB, 1);
        await check(gpu, { M, N, K, transB, ldb, offsetB, accumulate: true, alpha: 2 }, sizes, `skinny ${M}x${N}x${K} tB=${transB}`);
      }
    }
  });

  it('split-K and stream-K', async () => {
    const gpu = await testGpu();
    for (const transB of [false, true]) {
      const [M, N, K] = [33, 40, 1000];
      const { sizes, ldb, offsetB } = dense(M, N, K, transB, 5);
      const scratch = gpu.tensor([splitKScratchElements(M, N, 3)], 'splitK scratch');
      await check(gpu, { M, N, K, transB, ldb, offsetB }, sizes, `splitK tB=${transB}`, (args) => matmulSplitK(gpu, args, 3, scratch));
      gpu.destroyTensor(scratch);
    }
    Object.assign(gpu.tuning, { streamKWorkgroups: 7, streamKHalfTileWorkgroups: 7, streamKMinK: 1, streamKHalfTileMinK: 1, streamKMinIters: 1, streamKMaxTiles: 1e9, streamKHalfTileMaxTiles: 1e9, streamKWholeTiles: false });
    for (const transB of [false, true]) {
      const [M, N, K] = [132, 136, 52];
      const plan = streamKPlan(gpu, M, N, K)!;
      const { sizes, ldb, offsetB } = dense(M, N, K, transB, 4);
      const scratch = gpu.tensor([streamKScratchElements(plan)], 'streamK scratch');
      const labels = await check(gpu, { M, N, K, transB, ldb, offsetB, bias: Float32Array.from({ length: N }, (_, i) => i / N) }, sizes, `streamK tB=${transB}`, (args) => matmulStreamK(gpu, args, plan, scratch));
      expect(labels[0]).toMatch(/\[streamK\]$/);
      gpu.destroyTensor(scratch);
    }
  });

  it('refuses f16 anywhere but B', async () => {
    const gpu = await testGpu();
    const half = gpu.tensorFromF16(new Float32Array(16), [16], 'half');
    const full = gpu.tensor([16], 'full');
    const c = gpu.tensor([16], 'c');
    expect(() => matmul(gpu, { a: half, b: full, c, M: 4, N: 4, K: 4 })).toThrow(/a \(half\) is f16, expected f32/);
    for (const t of [half, full, c]) gpu.destroyTensor(t);
  });
});
