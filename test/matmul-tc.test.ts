// The tensor-core products (kernels/matmul-tc.ts). Their row-scale pass and the routing run
// everywhere; the products themselves only where the device has tensor cores (shader-f16 and f16
// subgroup matrices; SwiftShader has neither, so CI skips them): the GPU machine runs the same
// cases through bench/tc-check.ts.
import { describe, expect, it } from 'vitest';
import { createNodeGpu } from '../src/engine/gpu/node-gpu';
import { DEFAULT_KERNEL_TUNING, type Gpu } from '../src/engine/gpu/gpu';
import { runOps } from '../src/engine/gpu/dispatch';
import { checkTensorCores, rowScales, tensorCoreSlices, tensorCoreSplitK, tensorCoreTile, type TcProduct } from '../src/engine/kernels/matmul-tc';
import { matmulWithScratch } from '../src/engine/kernels/matmul';
import { randArray, testGpu } from './helpers/gpu';
import { TENSOR_CORE_CASES, runTensorCoreCase } from './helpers/tensor-core-cases';

// a device with Dawn's toggles for tensor cores (node-gpu.ts TENSOR_CORE_DAWN_FEATURES)
const tcGpu = await createNodeGpu({ tensorCores: true });

describe('row scales for the tensor-core products (shaders/row_scale.wgsl)', () => {
  // K 40: the one-load loop only; K 1000 (250 vec4s): the eight-load loop, then the rest
  it.each([40, 1000])('bring each block of 16 rows\' largest magnitude into [2^13, 2^14), 1 for zero blocks, clamped exponents (K %i)', async (K) => {
    const gpu = await testGpu();
    const lda = K + 4, offA = 8;
    // one special row per block of 16 (the other rows 1/8 of it, one block all zero), in block order
    const blocks = [
      3, // [2, 4): e = 2, scale 2^12
      1e-6, // gradients
      0, // all zero: 1
      -65504, // f16's largest
      2 ** 13, // exactly a power of two: e = 14, scale 1
      2e-38, // exponent clamped at +100 (2e-38 is still a normal f32)
      3e37, // and at -100 (e = 125)
    ];
    const M = 16 * blocks.length - 5; // the last block short
    const a = new Float32Array(offA + M * lda).fill(1e9); // outside each row's K: never read
    for (let m = 0; m < M; m++) {
      const big = blocks[Math.floor(m / 16)];
      // the largest value early in the row in even blocks, among the last loads in odd ones
      const at = Math.floor(m / 16) % 2 === 0 ? 17 : K - 3;
      for (let k = 0; k < K; k++) a[offA + m * lda + k] = m % 16 === 5 && k === at ? big : (k % 3 === 0 ? big : -big) / 8;
    }
    const ta = gpu.tensorFrom(a, [a.length], 'a'), scale = gpu.tensor([M], 'scale');
    await runOps(gpu, [rowScales(gpu, { label: 'row scales', a: ta, scale, M, K, lda, offA })]);
    const got = Array.from(await gpu.read(scale));
    const want = Array.from({ length: M }, (_, m) => {
      const top = Math.abs(Math.fround(blocks[Math.floor(m / 16)]));
      if (top === 0) return 1;
      const e = Math.floor(Math.log2(top)) + 1; // top in [2^(e-1), 2^e)
      return Math.fround(2 ** Math.min(100, Math.max(-100, 14 - e)));
    });
    expect(got).toEqual(want);
    for (const [b, big] of blocks.entries()) {
      const top = Math.abs(big), s = got[16 * b];
      if (top > 1e-30 && top < 1e30) {
        expect(top * s).toBeGreaterThanOrEqual(2 ** 13);
        expect(top * s).toBeLessThan(2 ** 14);
      }
    }
    gpu.destroyTensor(ta);
    gpu.destroyTensor(scale);
  });

  it('refuse operands that are not whole vec4s', async () => {
    const gpu = await testGpu();
    const ta = gpu.tensor([64], 'a'), scale = gpu.tensor([4], 'scale');
    expect(() => rowScales(gpu, { label: 'x', a: ta, scale, M: 4, K: 6, lda: 8, offA: 0 })).toThrow(/multiples of 4/);
    expect(() => rowScales(gpu, { label: 'x', a: ta, scale, M: 8, K: 4, lda: 8, offA: 0 })).toThrow(/need 8/);
  });
});

describe('tensorCoreTile', () => {
  const fake = (has: boolean, tuning = {}) => ({ hasTensorCores: has, tuning: { ...DEFAULT_KERNEL_TUNING, ...tuning } }) as unknown as Gpu;
  const p = (q: Partial<TcProduct>): TcProduct => ({ M: 2048, N: 768, K: 768, transB: true, lda: 768, ldb: 768, offA: 0, offB: 0, ...q });
  it('takes 128x128 tiles for B stored [N, K] with N or K from tensorCoreWideMinDim, and for B stored [K, N] from tensorCoreWideMinTiles tiles', () => {
    expect(tensorCoreTile(fake(true), p({ N: 768, K: 3072, lda: 3072, ldb: 3072 }))).toBe('128x128'); // GPT-2's c_fc.dx
    expect(tensorCoreTile(fake(true), p({ N: 3072, K: 576, lda: 576, ldb: 576 }))).toBe('128x128'); // SmolLM2's gate|up
    expect(tensorCoreTile(fake(true), p({ N: 576, K: 1536, lda: 1536, ldb: 1536 }))).toBe('64x64'); // SmolLM2's down_proj
    expect(tensorCoreTile(fake(true), p({ N: 768 }))).toBe('64x64'); // GPT-2's attn.c_proj.dx (K 768)
    expect(tensorCoreTile(fake(true), p({ transB: false, N: 3072, ldb: 3072 }))).toBe('128x128'); // 384 tiles
    expect(tensorCoreTile(fake(true), p({ transB: false, N: 2304, ldb: 2304 }))).toBe('128x128'); // 288: GPT-2's c_attn
    expect(tensorCoreTile(fake(true), p({ transB: false, N: 1536, ldb: 1536 }))).toBe('64x64'); // 192
    expect(tensorCoreTile(fake(true, { tensorCoreWideMinTiles: 96 }), p({ transB: false, ldb: 768 }))).toBe('128x128');
    // with f32 accuracy, B stored [K, N] over K from tensorCoreWideMinDim (GPT-2's mlp.c_proj without its GELU)
    const longK = p({ transB: false, N: 768, ldb: 768, K: 3072, lda: 3072 });
    expect(tensorCoreTile(fake(true), longK)).toBe('64x64');
    expect(tensorCoreTile(fake(true, { tensorCoreF32: true }), longK)).toBe('128x128');
    expect(tensorCoreTile(fake(true, { tensorCoreF32: true }), p({ transB: false, N: 768, ldb: 768, K: 1536, lda: 1536 }))).toBe('64x64');
  });
  it('takes 128x128 tiles under a GELU prologue and for K long enough to cut in slices', () => {
    expect(tensorCoreTile(fake(true), p({ transB: false, ldb: 768, K: 3072, lda: 3072, geluA: true }))).toBe('128x128');
    expect(tensorCoreTile(fake(true), p({ transB: false, ldb: 768, K: 50256, lda: 50304 }))).toBe('128x128');
    expect(tensorCoreTile(fake(true), p({ transB: false, ldb: 768, K: 3072, lda: 3072 }))).toBe('64x64');
  });
  it('cuts long K into slices where the tiles are too few, not GPT-2\'s 768-wide dx products', () => {
    const lmHeadDx = p({ transB: false, ldb: 768, K: 50256, lda: 50304 }); // 96 tiles of 128x128
    expect(tensorCoreSplitK(fake(true), lmHeadDx, '128x128')).toBe(5); // ceil(400 / 96)
    expect(tensorCoreSlices(lmHeadDx, '128x128', 5)).toBe(5);
    expect(tensorCoreSplitK(fake(true), p({ K: 3072, lda: 3072, ldb: 3072 }), '128x128')).toBe(1); // c_fc.dx
    expect(tensorCoreSplitK(fake(true), p({ transB: false, K: 3072, lda: 3072, geluA: true }), '128x128')).toBe(5); // mlp.c_proj
    expect(tensorCoreSplitK(fake(true), p({ K: 50256, lda: 50304, N: 3072 }), '128x128')).toBe(2); // 384 tiles
    expect(tensorCoreSplitK(fake(true), p({ K: 50256, lda: 50304, N: 6144 }), '128x128')).toBe(1); // 768 tiles
    // slices of whole K tiles: 1000 in about 7 -> 160 each, 7 slices (the last 40)
    expect(tensorCoreSlices(p({ K: 1000 }), '128x128', 7)).toBe(7);
    expect(tensorCoreSlices(p({ K: 96 }), '128x128', 7)).toBe(3);
  });
  it('needs tensor cores, the tuning, and vec4-aligned operands', () => {
    expect(tensorCoreTile(fake(false), p({}))).toBeNull();
    expect(tensorCoreTile(fake(true, { tensorCores: false }), p({}))).toBeNull();
    expect(tensorCoreTile(fake(true), p({ K: 770, lda: 772, ldb: 772 }))).toBeNull();
    expect(tensorCoreTile(fake(true), p({ lda: 770 }))).toBeNull();
    expect(tensorCoreTile(fake(true), p({ offA: 2 }))).toBeNull();
    expect(tensorCoreTile(fake(true), p({ offB: 6 }))).toBeNull();
    expect(tensorCoreTile(fake(true), p({ transB: false, N: 770, ldb: 772 }))).toBeNull();
    expect(tensorCoreTile(fake(true), p({ transB: true, N: 770 }))).toBe('64x64'); // B [N, K]: N may be anything
    expect(tensorCoreTile(fake(true), p({ M: 8 }))).toBeNull();
  });
});

describe('products that ask for tensor cores', () => {
  it('run in f32 where the device has none, with the same results as without asking', async () => {
    const gpu = await testGpu();
    if (gpu.hasTensorCores) return; // covered below
    const M = 70, N = 36, K = 44;
    const a = gpu.tensorFrom(randArray(M * K, 1), [M * K], 'a'), b = gpu.tensorFrom(randArray(K * N, 2), [K * N], 'b');
    const c1 = gpu.tensor([M * N], 'c1'), c2 = gpu.tensor([M * N], 'c2');
    const asked = matmulWithScratch(gpu, { label: 'asked', a, b, c: c1, M, N, K, tensorCores: 'gradients' }, null);
    const plain = matmulWithScratch(gpu, { label: 'plain', a, b, c: c2, M, N, K }, null);
    expect(asked.map((o) => (o.kind === 'dispatch' ? o.label : o.kind))).toEqual(['asked']);
    await runOps(gpu, [...asked, ...plain]);
    expect(Array.from(await gpu.read(c1))).toEqual(Array.from(await gpu.read(c2)));
    for (const t of [a, b, c1, c2]) gpu.destroyTensor(t);
  });

  it('are refused, with the reason, where the kernels fail their check (forced on a device without f16)', async () => {
    const gpu = await createNodeGpu();
    if (gpu.hasF16) return; // this device could build them: the check below would pass
    const reason = await checkTensorCores(gpu, true);
    expect(reason).toMatch(/128x128 tiles, A as values: .*f16/);
    expect(gpu.hasTensorCores).toBe(false);
    expect(gpu.info.tensorCoresRefused).toMatch(/the tensor-core check failed .*every product runs in f32/);
    // and a product that asks for them then runs in f32
    const M = 64, N = 64, K = 32;
    const a = gpu.tensorFrom(randArray(M * K, 5), [M * K], 'a'), b = gpu.tensorFrom(randArray(K * N, 6), [K * N], 'b'), c = gpu.tensor([M * N], 'c');
    const ops = matmulWithScratch(gpu, { label: 'after', a, b, c, M, N, K, tensorCores: 'values' }, null);
    expect(ops.map((o) => (o.kind === 'dispatch' ? o.label : o.kind))).toEqual(['after']);
    for (const t of [a, b, c]) gpu.destroyTensor(t);
  });

  it.skipIf(!tcGpu.hasTensorCores)('pass their check where the device has them', async () => {
    expect(await checkTensorCores(tcGpu)).toBeNull();
    expect(tcGpu.hasTensorCores).toBe(true);
  });

  describe('on tensor cores (skipped without them)', () => {
    for (const c of TENSOR_CORE_CASES) {
      it.skipIf(!tcGpu.hasTensorCores)(c.name, async () => {
        const r = await runTensorCoreCase(tcGpu, c);
        expect(r.tookTensorCores, r.labels.join(', ')).toBe(true);
        expect(r.worstRatio).toBeLessThanOrEqual(1);
      }, 120_000);
      it.skipIf(!tcGpu.hasTensorCores)(`${c.name}, f32 accuracy (hi + lo halves)`, async () => {
        const r = await runTensorCoreCase(tcGpu, c, false, false, true);
        expect(r.tookTensorCores, r.labels.join(', ')).toBe(true);
        expect(r.worstRatio).toBeLessThanOrEqual(1);
      }, 120_000);
    }
  });
});

describe('generated tensor-core shaders', () => {
  it('are what scripts/gen-matmul-tc.mjs makes (edit the generator, then run it)', async () => {
    const fs = await import('node:fs');
    const path = await import('node:path');
    const gen = await import(path.join(__dirname, '..', 'scripts', 'gen-matmul-tc.mjs'));
    const plain = ['matmul_tc_128x128', 'matmul_tc_128x128_half_b', 'matmul_tc_64x64', 'matmul_tc_64x64_half_b'];
    expect(gen.TC_VARIANTS.map((v: { name: string }) => v.name)).toEqual([...plain, ...plain.map((n) => `${n}_split`)]);
    for (const v of gen.TC_VARIANTS) {
      expect(fs.readFileSync(path.join(__dirname, '..', 'shaders', `${v.name}.wgsl`), 'utf8'), v.name).toBe(gen.tcMatmulWgsl(v));
    }
  });
});
