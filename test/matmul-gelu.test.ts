// GPT-2's GELU fused into its MLP products (kernels/matmul.ts MatmulArgs.geluA / geluGradOf):
// the prologue (op(A) = gelu(stored A), mlp.c_proj's forward reading the pre-activations) and the
// epilogue (C times gelu'(pre), mlp.c_proj.dx writing d(pre-activation)) against float64 references
// in every tiled kernel, scalar and vec4, aligned and not, with alpha / accumulate / bias, strides,
// split-K; the skinny kernel's shapes falling back to the tiled ones; refusals; GELU defined once
// (shaders/gelu_tanh.wgsl). Then GPT-2 programs with the fusion on some or all layers
// against a float64 reference and finite differences, in several kernel choices.
import fs from 'node:fs';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { randArray, rng, testGpu } from './helpers/gpu';
import { expectMatmulClose, matmulReference, vec4Code, vec4Constants, type MatmulCase } from './helpers/matmul-reference';
import {
  matmul, matmulSplitK, matmulStreamK, splitKScratchElements, streamKPlan, streamKScratchElements, usesSkinnyMatmul, vec4Aligned,
  MATMUL_VARIANTS, STREAMK_FIXUP_KERNELS, STREAMK_KERNELS, VEC4_MATMUL_VARIANTS, type MatmulArgs, type MatmulBatch, type MatmulVariant,
} from '../src/engine/kernels/matmul';
import { geluBackward, geluForward } from '../src/engine/kernels/gelu';
import { runOps, type Op } from '../src/engine/gpu/dispatch';
import { DEFAULT_KERNEL_TUNING, Gpu, type KernelTuning } from '../src/engine/gpu/gpu';
import { gpt2Reference, loraFiniteDifferences, randomGpt2Weights, setRandomLoraValues, weightSource, type LoraRef } from './helpers/gpt2-reference';
import { Gpt2, type Gpt2Dims } from '../src/engine/models/gpt2';
import { Lora } from '../src/engine/peft/lora';
import { StepUniforms } from '../src/engine/kernels/step-uniforms';
import { geluTanh as geluRef, geluTanhGrad as geluGradRef } from './helpers/gelu';

interface Case extends MatmulCase {
  geluA?: boolean;
  /** the epilogue's pre-activations at offset + m * ld + n of a buffer of `size` elements */
  pre?: { ld?: number; offset?: number; size: number };
}

/**
 * Float64 reference of the whole C buffer after the op (from its previous contents c0) and each
 * element's error scale: the sum of the magnitudes of its terms, times |gelu'| plus a floor under
 * the epilogue (gelu' crosses zero near x = -0.75, where its own f32 error dominates).
 */
function reference(a: Float32Array, b: Float32Array, c0: Float32Array, pre: Float32Array | null, k: Case): { want: Float64Array; scale: Float64Array } {
  const p = pre && k.pre ? { pre, ld: k.pre.ld ?? k.N, offset: k.pre.offset ?? 0 } : null;
  return matmulReference(a, b, c0, k, {
    opA: k.geluA ? geluRef : undefined,
    epilogue: p ? (m, n) => {
      const g = geluGradRef(p.pre[p.offset + m * p.ld + n]);
      return { factor: g, scaleFactor: Math.abs(g) + 0.05 };
    } : undefined,
  });
}

/**
 * Pre-activations over GELU's interesting range, with a few far out (past the clamp of u at 40,
 * and where gelu' has its minimum near -0.75).
 */
function preActivations(n: number, seed: number): Float32Array {
  const x = randArray(n, seed, 4);
  const special = [0, -0.75, 12, -12, 60, -60, 1e-3, -3.5];
  for (let i = 0; i < n; i += 37) x[i] = special[(i / 37) % special.length];
  return x;
}

/** Runs one case (random buffers of the given sizes) and compares; returns the ops it ran. */
async function check(
  gpu: Gpu, k: Case, sizes: { a: number; b: number; c: number }, what: string, tol = 2e-5, seed = 1,
  opsOf: (args: MatmulArgs) => Op[] = (args) => [matmul(gpu, args)],
): Promise<Op[]> {
  const a = k.geluA ? preActivations(sizes.a, seed) : randArray(sizes.a, seed);
  const b = randArray(sizes.b, seed + 1);
  const c0 = randArray(sizes.c, seed + 2);
  const pre = k.pre ? preActivations(k.pre.size, seed + 3) : null;
  const ta = gpu.tensorFrom(a, [sizes.a], 'a');
  const tb = gpu.tensorFrom(b, [sizes.b], 'b');
  const tc = gpu.tensorFrom(c0, [sizes.c], 'c');
  const tbias = k.bias ? gpu.tensorFrom(k.bias, [k.bias.length], 'bias') : undefined;
  const tpre = pre ? gpu.tensorFrom(pre, [pre.length], 'pre') : undefined;
  const { geluA, pre: preCase, ...plain } = k;
  const args: MatmulArgs = {
    ...plain, a: ta, b: tb, c: tc, bias: tbias, label: what,
    geluA: geluA ? 'tanh' : undefined,
    geluGradOf: tpre ? { pre: tpre, ld: preCase!.ld, offset: preCase!.offset } : undefined,
  };
  const ops = opsOf(args);
  runOps(gpu, ops);
  const got = await gpu.read(tc);
  const { want, scale } = reference(a, b, c0, pre, k);
  expectMatmulClose(got, want, scale, tol, what);
  for (const t of [ta, tb, tc, tbias, tpre]) if (t) gpu.destroyTensor(t);
  return ops;
}

const TRANSPOSES: [boolean, boolean][] = [[false, false], [true, false], [false, true], [true, true]];
const VARIANTS: MatmulVariant[] = ['64x64', '128x128', '128x64', '64x128', 'db64x64'];

/** The pipeline a fused product should run: the variant's vec4 or scalar kernel with its overrides. */
function expectedPipeline(gpu: Gpu, tile: MatmulVariant, vec4: boolean, k: Case, fused: Record<string, number>): GPUComputePipeline {
  if (vec4) return gpu.pipeline(vec4Code(VEC4_MATMUL_VARIANTS[tile], k), 'want', 'main', { ...vec4Constants(k, MATMUL_VARIANTS[tile].rows, MATMUL_VARIANTS[tile].cols), ...fused });
  return gpu.pipeline(MATMUL_VARIANTS[tile].code, 'want', 'main', fused);
}

describe.each(VARIANTS.flatMap((tile) => [[tile, false], [tile, true]] as const))('fused GELU in the %s kernel, vec4 %s', (tile, vec4) => {
  afterEach(async () => {
    Object.assign((await testGpu()).tuning, DEFAULT_KERNEL_TUNING);
  });
  async function setup(): Promise<Gpu> {
    const gpu = await testGpu();
    Object.assign(gpu.tuning, DEFAULT_KERNEL_TUNING, { matmul: tile, vec4Matmul: vec4 });
    return gpu;
  }
  /** check(), after asserting the product runs this describe's kernel (vec4 when the operands are aligned). */
  async function checkHere(gpu: Gpu, k: Case, sizes: { a: number; b: number; c: number }, what: string): Promise<void> {
    const ops = await check(gpu, k, sizes, what);
    const aligned = vec4 && vec4Aligned({
      M: k.M, N: k.N, K: k.K, transA: k.transA ?? false, transB: k.transB ?? false,
      lda: k.lda ?? (k.transA ? k.M : k.K), ldb: k.ldb ?? (k.transB ? k.K : k.N), offA: k.offsetA ?? 0, offB: k.offsetB ?? 0,
      batch: k.batch ?? { outer: 1, inner: 1, strideA: [0, 0], strideB: [0, 0], strideC: [0, 0] },
    });
    const fused = { ...(k.geluA ? { GELU_A: 1 } : {}), ...(k.pre ? { GELU_GRAD: 1 } : {}) };
    const op = ops[0];
    expect(ops.length).toBe(1);
    expect(op.kind === 'dispatch' && op.pipeline === expectedPipeline(gpu, tile, aligned, k, fused), `${what}: runs the ${aligned ? 'vec4' : 'scalar'} ${tile} kernel with ${JSON.stringify(fused)}`).toBe(true);
  }

  // mlp.c_proj's forward: out [M, C] (+)= gelu(fc [M, F]) W [F, C] + b. Aligned (vec4 when on) and not.
  it('prologue: mlp.c_proj forward shapes (A [M, F], B [F, C]), with bias and accumulate, every transpose', async () => {
    const gpu = await setup();
    for (const [M, N, K] of [[67, 36, 52], [130, 72, 36], [67, 37, 53], [5, 9, 19]] as [number, number, number][]) {
      const bias = randArray(N, 9, 2);
      for (const v of [{ bias, accumulate: true }, {}, { alpha: -0.5, bias }]) {
        await checkHere(gpu, { M, N, K, geluA: true, ...v }, { a: M * K, b: K * N, c: M * N }, `gelu(A) B ${M}x${N}x${K} ${Object.keys(v).join(',')}`);
      }
    }
    const [M, N, K] = [68, 44, 28];
    for (const [transA, transB] of TRANSPOSES) {
      await checkHere(gpu, { M, N, K, transA, transB, geluA: true, accumulate: true }, { a: M * K, b: K * N, c: M * N }, `gelu(A) B tA=${transA} tB=${transB}`);
    }
  });

  it('prologue: leading dimensions, offsets and batches', async () => {
    const gpu = await setup();
    const [M, N, K] = [66, 40, 24];
    for (const [transA, transB] of TRANSPOSES) {
      const rowsA = transA ? K : M, colsA = transA ? M : K, rowsB = transB ? N : K, colsB = transB ? K : N;
      const lda = colsA + 8, ldb = colsB + 4, ldc = N + 3, offsetA = 4, offsetB = 8, offsetC = 5;
      const sizes = { a: offsetA + rowsA * lda, b: offsetB + rowsB * ldb, c: offsetC + M * ldc + 2 };
      await checkHere(gpu, { M, N, K, transA, transB, lda, ldb, ldc, offsetA, offsetB, offsetC, alpha: 0.75, accumulate: true, geluA: true }, sizes, `gelu(A) B strided tA=${transA} tB=${transB}`);
    }
    const mA = M * K + 4, mB = K * N + 8, mC = M * N + 3;
    const batch: MatmulBatch = { outer: 2, inner: 2, strideA: [2 * mA, mA], strideB: [0, mB], strideC: [2 * mC, mC] };
    await checkHere(gpu, { M, N, K, batch, geluA: true }, { a: 4 * mA, b: 2 * mB, c: 4 * mC }, 'gelu(A) B batched, B broadcast over the outer index');
  });

  // mlp.c_proj.dx: dfc [M, F] = (dy [M, C] W^T, W stored [F, C]) * gelu'(fc [M, F])
  it('epilogue: mlp.c_proj.dx shapes (dy [M, C], W [F, C] read transposed), alpha / accumulate / bias, every transpose', async () => {
    const gpu = await setup();
    // (256, 128, 32): whole tiles of every kernel, the vec4 kernels' unchecked loads and batched gelu' epilogue
    for (const [M, N, K] of [[67, 72, 36], [130, 136, 20], [67, 71, 35], [3, 5, 7], [256, 128, 32]] as [number, number, number][]) {
      const bias = randArray(N, 5, 1);
      for (const v of [{}, { alpha: 0.25 }, { accumulate: true }, { bias }, { alpha: -1.5, accumulate: true, bias }]) {
        await checkHere(gpu, { M, N, K, transB: true, pre: { size: M * N }, ...v }, { a: M * K, b: N * K, c: M * N }, `(dy W^T) * gelu'(pre) ${M}x${N}x${K} ${Object.keys(v).join(',')}`);
      }
    }
    const [M, N, K] = [68, 44, 28];
    for (const [transA, transB] of TRANSPOSES) {
      await checkHere(gpu, { M, N, K, transA, transB, pre: { size: M * N }, accumulate: true }, { a: M * K, b: K * N, c: M * N }, `A B * gelu'(pre) tA=${transA} tB=${transB}`);
    }
  });

  it('epilogue: pre and C with their own row strides and offsets (the gaps untouched); prologue and epilogue together', async () => {
    const gpu = await setup();
    const [M, N, K] = [70, 68, 40];
    const ldc = N + 5, offsetC = 7;
    const pre = { ld: N + 9, offset: 11, size: 11 + M * (N + 9) + 3 };
    for (const transB of [false, true]) {
      await checkHere(gpu, { M, N, K, transB, ldc, offsetC, pre, alpha: 0.5, accumulate: true }, { a: M * K, b: K * N, c: offsetC + M * ldc + 4 }, `strided pre tB=${transB}`);
    }
    // the same on whole tiles (the vec4 kernels' batched gelu' epilogue)
    const whole = { M: 128, N: 128, K: 48 }, wpre = { ld: 128 + 9, offset: 11, size: 11 + 128 * (128 + 9) + 3 };
    await checkHere(gpu, { ...whole, transB: true, ldc: 128 + 5, offsetC, pre: wpre, alpha: 0.5, accumulate: true, bias: randArray(128, 8) }, { a: 128 * 48, b: 48 * 128, c: offsetC + 128 * (128 + 5) + 4 }, 'strided pre, whole tiles');
    await checkHere(gpu, { M, N, K, geluA: true, pre: { size: M * N }, bias: randArray(N, 3) }, { a: M * K, b: K * N, c: M * N }, 'gelu(A) B * gelu\'(pre)');
  });
});

describe('fused GELU: routing, split-K, refusals', () => {
  afterEach(async () => {
    Object.assign((await testGpu()).tuning, DEFAULT_KERNEL_TUNING);
  });

  it('shapes the skinny kernel would take go to a tiled kernel instead, still right', async () => {
    const gpu = await testGpu();
    // (scalar 64x64 forced for the tiled choice; the skinny kernel stays on)
    Object.assign(gpu.tuning, DEFAULT_KERNEL_TUNING, { matmul: '64x64', vec4Matmul: false });
    for (const [M, N, K] of [[5, 40, 100], [300, 8, 200], [1, 64, 128]] as [number, number, number][]) {
      expect(usesSkinnyMatmul(gpu, M, N, K, 1, false), `${M}x${N}x${K}`).toBe(true);
      for (const k of [{ M, N, K, geluA: true }, { M, N, K, transB: true, pre: { size: M * N } }, { M, N, K, geluA: true, pre: { size: M * N }, accumulate: true }] as Case[]) {
        const ops = await check(gpu, k, { a: M * K, b: K * N, c: M * N }, `not skinny ${M}x${N}x${K} ${k.geluA ? 'gelu(A)' : ''}${k.pre ? ' gelu\'' : ''}`);
        const fused = { ...(k.geluA ? { GELU_A: 1 } : {}), ...(k.pre ? { GELU_GRAD: 1 } : {}) };
        expect(ops[0].kind === 'dispatch' && ops[0].pipeline === gpu.pipeline(MATMUL_VARIANTS['64x64'].code, 'x', 'main', fused), 'the tiled kernel with the GELU overrides').toBe(true);
      }
    }
  });

  it('split-K: the prologue in every slice, the epilogue once on the sum (with alpha, accumulate, bias, strides)', async () => {
    const gpu = await testGpu();
    for (const vec4 of [false, true]) {
      Object.assign(gpu.tuning, DEFAULT_KERNEL_TUNING, { vec4Matmul: vec4 });
      for (const [M, N, K, S] of [[33, 40, 1000, 3], [40, 36, 996, 4], [5, 31, 777, 5]] as [number, number, number, number][]) {
        const scratch = gpu.tensor([splitKScratchElements(M, N, S)], 'splitK scratch');
        const bias = randArray(N, 4);
        const split = (args: MatmulArgs) => matmulSplitK(gpu, args, S, scratch);
        // c_proj's forward: gelu(fc) W + b accumulated into the residual
        await check(gpu, { M, N, K, geluA: true, bias, accumulate: true }, { a: M * K, b: K * N, c: M * N }, `splitK ${S} gelu(A) B ${M}x${N}x${K} vec4 ${vec4}`, 2e-5, 3, split);
        await check(gpu, { M, N, K, geluA: true, alpha: 0.5 }, { a: M * K, b: K * N, c: M * N }, `splitK ${S} alpha gelu(A) B ${M}x${N}x${K} vec4 ${vec4}`, 2e-5, 4, split);
        // the epilogue: a per-slice gelu' would be wrong with alpha, accumulate or bias (and with the rest slice)
        const ldc = N + 3, pre = { ld: N + 2, offset: 5, size: 5 + M * (N + 2) };
        for (const v of [{ accumulate: true }, { alpha: -2, bias }, { alpha: 1 }]) {
          await check(gpu, { M, N, K, transB: true, ldc, pre, ...v }, { a: M * K, b: K * N, c: M * ldc }, `splitK ${S} A B^T * gelu'(pre) ${M}x${N}x${K} ${Object.keys(v).join(',')} vec4 ${vec4}`, 2e-5, 5, split);
        }
        await check(gpu, { M, N, K, geluA: true, pre: { size: M * N }, bias }, { a: M * K, b: K * N, c: M * N }, `splitK ${S} both ${M}x${N}x${K} vec4 ${vec4}`, 2e-5, 6, split);
        gpu.destroyTensor(scratch);
      }
    }
  });

  it('stream-K: the prologue in every piece, the epilogue once per tile (whole or fixed up), with alpha, accumulate, bias, strides', { timeout: 400_000 }, async () => {
    const gpu = await testGpu();
    // over 7 workgroups, so tiles are whole in some and split in others; 36 and 136 wide: edge tiles;
    // 256 x 128 over K = 400: whole tiles (unchecked loads, the batched gelu' epilogue); 256 x 192:
    // whole 128x64 tiles (the 128x64 kernel)
    Object.assign(gpu.tuning, DEFAULT_KERNEL_TUNING, {
      streamKWorkgroups: 7, streamKHalfTileWorkgroups: 7, streamKMinK: 1, streamKHalfTileMinK: 1, streamKMinIters: 1, streamKWholeTiles: false,
    });
    for (const [M, N, K] of [[40, 36, 996], [256, 136, 400], [256, 128, 400], [256, 192, 400]] as [number, number, number][]) {
      const plan = streamKPlan(gpu, M, N, K)!;
      expect(plan.tile).toBe(N === 192 ? '128x64' : '128x128');
      const scratch = gpu.tensor([streamKScratchElements(plan)], 'streamK scratch');
      const bias = randArray(N, 4);
      const streamK = (args: MatmulArgs) => matmulStreamK(gpu, args, plan, scratch);
      await check(gpu, { M, N, K, geluA: true, bias, accumulate: true }, { a: M * K, b: K * N, c: M * N }, `streamK gelu(A) B ${M}x${N}x${K}`, 2e-5, 3, streamK);
      const ldc = N + 3, pre = { ld: N + 2, offset: 5, size: 5 + M * (N + 2) };
      for (const v of [{ accumulate: true }, { alpha: -2, bias }]) {
        await check(gpu, { M, N, K, transB: true, ldc, pre, ...v }, { a: M * K, b: K * N, c: M * ldc }, `streamK A B^T * gelu'(pre) ${M}x${N}x${K} ${Object.keys(v).join(',')}`, 2e-5, 5, streamK);
      }
      await check(gpu, { M, N, K, geluA: true, pre: { size: M * N }, bias }, { a: M * K, b: K * N, c: M * N }, `streamK both ${M}x${N}x${K}`, 2e-5, 6, streamK);
      // C and pre in rows of whole vec4s, with their own strides and offsets: the vec4 fix-up (shaders/matmul_streamk_fixup_vec4.wgsl)
      const pre4 = { ld: N + 4, offset: 8, size: 8 + M * (N + 4) };
      await check(gpu, { M, N, K, transB: true, ldc: N + 8, offsetC: 4, pre: pre4, alpha: 0.5, accumulate: true, bias }, { a: M * K, b: K * N, c: 4 + M * (N + 8) }, `streamK vec4 fix-up * gelu'(pre) ${M}x${N}x${K}`, 2e-5, 7, (args) => {
        const ops = streamK(args);
        const vec4Fixup = gpu.pipeline(STREAMK_FIXUP_KERNELS.vec4, 'fixup', 'main', { TILE_M: 128, TILE_N: plan.tile === '128x64' ? 64 : 128, GELU_GRAD: 1 });
        if (plan.splitsTiles) expect(ops[1].kind === 'dispatch' && ops[1].pipeline === vec4Fixup, 'the vec4 fix-up with GELU_GRAD').toBe(true);
        return ops;
      });
      gpu.destroyTensor(scratch);
    }
  });

  it('refuses a batched or aliasing epilogue, a short pre, a bad ld and unknown forms', async () => {
    const gpu = await testGpu();
    const t = (n: number, l: string) => gpu.tensor([n], l);
    const a = t(64, 'a'), b = t(64, 'b'), c = t(64, 'c'), pre = t(64, 'pre'), scratch = t(256, 'scratch');
    const base: MatmulArgs = { a, b, c, M: 8, N: 8, K: 8 };
    expect(() => matmul(gpu, { ...base, geluGradOf: { pre: c } })).toThrow(/must not alias c/);
    expect(() => matmul(gpu, { ...base, geluGradOf: { pre, ld: 7 } })).toThrow(/geluGradOf.ld = 7/);
    expect(() => matmul(gpu, { ...base, geluGradOf: { pre, offset: 1 } })).toThrow(/would be read at index 64/);
    expect(() => matmul(gpu, { ...base, geluGradOf: { pre: t(63, 'short') } })).toThrow(/would be read at index 63/);
    expect(() => matmul(gpu, { ...base, geluGradOf: { pre, offset: -1 } })).toThrow(/offset = -1/);
    const batch: MatmulBatch = { outer: 1, inner: 2, strideA: [0, 0], strideB: [0, 0], strideC: [0, 0] };
    expect(() => matmul(gpu, { ...base, M: 2, N: 2, K: 2, batch, geluGradOf: { pre } })).toThrow(/unbatched/);
    expect(() => matmul(gpu, { ...base, geluA: 'erf' as 'tanh' })).toThrow(/geluA must be 'tanh'/);
    expect(() => matmulSplitK(gpu, { ...base, geluGradOf: { pre: scratch } }, 2, scratch)).toThrow(/must not alias/);
    expect(() => matmulSplitK(gpu, { ...base, geluGradOf: { pre, ld: 3 } }, 2, scratch)).toThrow(/geluGradOf.ld = 3/);
    // without the options the pipelines are the plain ones (no GELU overrides in their keys)
    Object.assign(gpu.tuning, DEFAULT_KERNEL_TUNING, { matmul: '64x64', vec4Matmul: false, skinnyMatmul: false });
    const plain = matmul(gpu, base);
    expect(plain.pipeline).toBe(gpu.pipeline(MATMUL_VARIANTS['64x64'].code, 'x', 'main', undefined));
    expect(matmul(gpu, { ...base, geluA: 'tanh' }).pipeline).not.toBe(plain.pipeline);
    for (const x of [a, b, c, pre, scratch]) gpu.destroyTensor(x);
  });

  /** Largest difference relative to the largest magnitude. */
  const relDiff = (x: Float32Array, y: Float32Array) => {
    let d = 0, m = 0;
    for (let i = 0; i < x.length; i++) {
      d = Math.max(d, Math.abs(x[i] - y[i]));
      m = Math.max(m, Math.abs(y[i]));
    }
    return d / m;
  };
  it('matches the separate GELU kernels (gelu then matmul; matmul then gelu backward) to float32 rounding', async () => {
    const gpu = await testGpu();
    for (const [tile, vec4] of [['64x64', false], ['128x64', true], ['db64x64', true]] as const) {
      Object.assign(gpu.tuning, DEFAULT_KERNEL_TUNING, { matmul: tile, vec4Matmul: vec4 });
      const [M, N, K] = [96, 64, 128];
      const fc = gpu.tensorFrom(preActivations(M * K, 1), [M * K], 'fc');
      const g = gpu.tensor([M * K], 'g');
      const w = gpu.tensorFrom(randArray(K * N, 2), [K * N], 'w');
      const fused = gpu.tensor([M * N], 'fused'), split = gpu.tensor([M * N], 'split');
      runOps(gpu, [
        matmul(gpu, { a: fc, b: w, c: fused, M, N, K, geluA: 'tanh' }),
        geluForward(gpu, { x: fc, out: g, n: M * K }),
        matmul(gpu, { a: g, b: w, c: split, M, N, K }),
      ]);
      // (the same summation order: only the GELU values could differ, by an operation's rounding where a
      // compiler contracts differently; on SwiftShader they are bit-identical)
      const [x, y] = [await gpu.read(fused), await gpu.read(split)];
      expect(relDiff(x, y), `${tile} vec4 ${vec4} prologue`).toBeLessThan(1e-6);
      // the epilogue: dfc = (dy W^T) * gelu'(fc), W [K, N] read transposed -> dfc [M, K]
      const dy = gpu.tensorFrom(randArray(M * N, 3), [M * N], 'dy');
      const dfcFused = gpu.tensor([M * K], 'dfc fused'), dfc = gpu.tensor([M * K], 'dfc');
      runOps(gpu, [
        matmul(gpu, { a: dy, b: w, transB: true, c: dfcFused, M, N: K, K: N, geluGradOf: { pre: fc } }),
        matmul(gpu, { a: dy, b: w, transB: true, c: dfc, M, N: K, K: N }),
        geluBackward(gpu, { dout: dfc, x: fc, dx: dfc, n: M * K }),
      ]);
      const [p, q] = [await gpu.read(dfcFused), await gpu.read(dfc)];
      expect(relDiff(p, q), `${tile} vec4 ${vec4} epilogue`).toBeLessThan(1e-6);
      for (const t of [fc, g, w, fused, split, dy, dfcFused, dfc]) gpu.destroyTensor(t);
    }
  });
});

describe('the fused GELU is shaders/gelu.wgsl\'s', () => {
  const read = (name: string) => fs.readFileSync(path.join(__dirname, '..', 'shaders', name), 'utf8');
  const geluTanh = read('gelu_tanh.wgsl');
  // the tanh form is defined once (shaders/gelu_tanh.wgsl): no shader file defines it again, and the
  // wrappers put it in front of the separate GELU kernels and of every matmul kernel the router picks
  const ownDefinition = /\bfn (geluU|geluTanh|geluTanhGrad|uOf|gelu|geluGrad)\(|\bconst (GELU_)?(SQRT_2_OVER_PI|K|U_MAX):/;
  it.each(['gelu.wgsl', 'matmul.wgsl', ...Object.keys(MATMUL_VARIANTS).filter((v) => v !== '64x64').map((v) => (v === 'db64x64' ? 'matmul_db_64x64.wgsl' : `matmul_wide_${v}.wgsl`)),
    ...['128x128', '128x64', '64x128', '64x64', '128x64_c4', '64x64_c4'].map((v) => `matmul_vec4_${v}.wgsl`), 'matmul_streamk_128x128.wgsl', 'matmul_splitk_reduce.wgsl', 'matmul_streamk_fixup.wgsl', 'matmul_streamk_fixup_vec4.wgsl'])('%s', (file) => {
    const src = read(file);
    expect(src, `${file} defines GELU itself`).not.toMatch(ownDefinition);
    expect(src.includes('geluTanh'), `${file} uses the shared GELU`).toBe(true);
    const codes = [...Object.values(MATMUL_VARIANTS), ...Object.values(STREAMK_KERNELS)].map((v) => v.code).concat(Object.values(VEC4_MATMUL_VARIANTS).flatMap((v) => [v.code, v.codeC4 ?? v.code]));
    if (!['gelu.wgsl', 'matmul_splitk_reduce.wgsl', 'matmul_streamk_fixup.wgsl', 'matmul_streamk_fixup_vec4.wgsl'].includes(file)) expect(codes).toContain(geluTanh + src);
  });
});

describe('GPT-2 with the GELU fused into mlp.c_proj where the method leaves it alone', () => {
  const dims: Gpt2Dims = { n_embd: 16, n_layer: 2, n_head: 2, n_positions: 16, vocab_size: 37, layer_norm_epsilon: 1e-5 };
  const B = 2, T = 7, lengths = [7, 5];
  function inputs() {
    const r = rng(7);
    const tokens = new Uint32Array(B * T);
    const targets = new Int32Array(B * T).fill(-100);
    for (let b = 0; b < B; b++) {
      for (let t = 0; t < T; t++) tokens[b * T + t] = t < lengths[b] ? Math.floor(r() * dims.vocab_size) : 0;
      for (let t = 1; t < lengths[b] - 1; t++) targets[b * T + t] = tokens[b * T + t + 1];
    }
    return { tokens, targets, validTargets: targets.filter((x) => x >= 0).length };
  }
  afterEach(async () => {
    Object.assign((await testGpu()).tuning, DEFAULT_KERNEL_TUNING);
  });

  // fused in both layers; only in layer 1 (layer 0's c_proj has LoRA: it writes and re-reads the shared g);
  // only in layer 0 (the last layer's g is the one the shared buffer holds)
  const CASES: { targets: string[]; fused: [boolean, boolean] }[] = [
    { targets: ['c_attn', 'mlp.c_fc'], fused: [true, true] },
    { targets: ['c_attn', 'h.0.mlp.c_proj'], fused: [false, true] },
    { targets: ['mlp.c_fc', 'h.1.mlp.c_proj'], fused: [true, false] },
  ];
  const TUNINGS: [string, Partial<KernelTuning>][] = [
    ['default kernels', {}],
    ['scalar 64x64', { matmul: '64x64', vec4Matmul: false }],
    ['vec4 128x64', { matmul: '128x64', vec4Matmul: true }],
    // c_proj's forward (K = 64) in 3 slices with gelu(A) in each, its dx (K = 16) in 2 with gelu' on the sum
    ['split-K', { matmul: 'db64x64', splitKMinK: 16, splitKMinSlice: 8, splitKMaxSlices: 3 }],
    // every product that can (the MLP's with gelu(A) and gelu', the LM head's) cut over 5 workgroups
    ['stream-K', { streamKMinK: 16, streamKWholeTiles: false, streamKWorkgroups: 5, streamKMinIters: 1 }],
    // the forward through the GELU kernel into g, only the backward's gelu' fused
    ['no prologue', { geluPrologue: false }],
  ];
  for (const c of CASES) {
    it(`LoRA on ${c.targets.join(' + ')}: logits, loss and finite-difference gradients in every kernel choice`, { timeout: 600_000 }, async () => {
      const gpu = await testGpu();
      const w = randomGpt2Weights(dims, 3);
      const model = Gpt2.load(gpu, dims, weightSource(w, dims), 'random-gpt2');
      const step = new StepUniforms(gpu);
      step.write({ lr: 0, beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 0, step: 1, seed: 1 });
      const lora = new Lora(gpu, { r: 2, alpha: 4, dropout: 0, targetModules: c.targets, useRslora: false }, model.linearModules(), step, rng(3));
      const ref: LoraRef = { modules: new Map(), r: 2, scale: 2 };
      const values = setRandomLoraValues(gpu, lora, ref, 11);
      const { tokens, targets, validTargets } = inputs();
      const want = gpt2Reference(w, dims, ref, tokens, targets, lengths, B, T);
      // finite differences of the float64 loss at a few entries of every LoRA tensor
      const fds = loraFiniteDifferences(values, () => gpt2Reference(w, dims, ref, tokens, targets, lengths, B, T).loss);
      for (const [name, tuning] of TUNINGS) {
        Object.assign(gpu.tuning, DEFAULT_KERNEL_TUNING, tuning);
        const program = model.buildProgram(lora, { B, T, training: true, captureLogits: true });
        // the separate GELU kernels only in the layers that keep them (forward, and forward again + backward)
        const geluOps = (ops: Op[], kind: 'Forward' | 'Backward') => ops.filter((o) => o.kind === 'dispatch' && o.label.startsWith(`gelu${kind}[tanh]`)).length;
        const kept = c.fused.filter((f) => !f).length;
        expect(geluOps(program.forward, 'Forward'), `${name}: GELU kernels in forward`).toBe(tuning.geluPrologue === false ? dims.n_layer : kept);
        expect(geluOps(program.backward, 'Forward') + geluOps(program.backward, 'Backward'), `${name}: GELU kernels in backward`).toBe(2 * kept);
        program.write({ B, T, inputIds: tokens, targets, lengths: Uint32Array.from(lengths), validTargets });
        gpu.write(program.gradScale, new Float32Array([1 / validTargets]));
        runOps(gpu, [...lora.params.map((p) => ({ kind: 'clear' as const, buffer: p.grad.buffer })), { kind: 'clear', buffer: program.lossSum.buffer }, ...program.forward, ...program.backward]);
        const logits = await gpu.read(program.logits!);
        let worst = 0, scale = 0;
        for (let i = 0; i < logits.length; i++) {
          worst = Math.max(worst, Math.abs(logits[i] - want.logits[i]));
          scale = Math.max(scale, Math.abs(want.logits[i]));
        }
        expect(worst / scale, `${name}: logits`).toBeLessThan(1e-5);
        const loss = (await gpu.read(program.lossSum))[0] / validTargets;
        expect(Math.abs(loss - want.loss) / want.loss, `${name}: loss`).toBeLessThan(1e-5);
        for (const p of lora.params) {
          const grad = await gpu.read(p.grad);
          const { idx, fd } = fds.get(p.name)!;
          const gmax = Math.max(...Array.from(grad, Math.abs));
          idx.forEach((i, k) => {
            const err = Math.abs(grad[i] - fd[k]) / Math.max(Math.abs(fd[k]), 1e-2 * gmax);
            if (!(err < 2e-3)) throw new Error(`${name}: ${p.name}[${i}]: gpu ${grad[i]}, finite difference ${fd[k]}`);
          });
        }
        program.destroy();
      }
      lora.destroy();
      model.destroy();
    });
  }

  it('an evaluation program without a method: fused, the base model\'s logits', async () => {
    const gpu = await testGpu();
    const w = randomGpt2Weights(dims, 4);
    const model = Gpt2.load(gpu, dims, weightSource(w, dims), 'random-gpt2');
    const { tokens, targets, validTargets } = inputs();
    const want = gpt2Reference(w, dims, null, tokens, targets, lengths, B, T);
    for (const [name, tuning] of TUNINGS) {
      Object.assign(gpu.tuning, DEFAULT_KERNEL_TUNING, tuning);
      const program = model.buildProgram(null, { B, T, training: false, captureLogits: true });
      expect(program.forward.some((o) => o.kind === 'dispatch' && o.label.startsWith('gelu')), name).toBe(tuning.geluPrologue === false);
      program.write({ B, T, inputIds: tokens, targets, lengths: Uint32Array.from(lengths), validTargets });
      runOps(gpu, program.forward);
      const logits = await gpu.read(program.logits!);
      let worst = 0, scale = 0;
      for (let i = 0; i < logits.length; i++) {
        worst = Math.max(worst, Math.abs(logits[i] - want.logits[i]));
        scale = Math.max(scale, Math.abs(want.logits[i]));
      }
      expect(worst / scale, `${name}: logits`).toBeLessThan(1e-5);
      program.destroy();
    }
    model.destroy();
  });
});
