import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { expectClose, randArray, testGpu } from './helpers/gpu';
import { expectMatmulClose, matmulReference, vec4Code, vec4Constants, type MatmulCase } from './helpers/matmul-reference';
import { attentionSoftmaxBackward, attentionSoftmaxForward } from '../src/engine/kernels/attention-softmax';
import { attentionRowDelta } from '../src/engine/kernels/flash-attention';
import rowDeltaCode from '../shaders/flash_attention_backward.wgsl?raw';
import {
  matmul, matmulSplitK, matmulStreamK, matmulVariant, matmulWithScratch, matmulWorkgroups, productScratchElements, splitKFactor, splitKScratchElements,
  streamKPlan, streamKScratchElements, usesSkinnyMatmul, vec4Aligned, MATMUL_VARIANTS, STREAMK_FIXUP_KERNELS, VEC4_MATMUL_VARIANTS, type MatmulArgs, type MatmulBatch, type MatmulTriangle, type MatmulVariant,
} from '../src/engine/kernels/matmul';
import { runOps, type Op } from '../src/engine/gpu/dispatch';
import type { Tensor } from '../src/engine/gpu/tensor';
import { DEFAULT_KERNEL_TUNING } from '../src/engine/gpu/gpu';
import { Gpu } from '../src/engine/gpu/gpu';


type Case = MatmulCase;

/** Runs one case on the GPU with buffers of the given sizes (random contents) and compares. */
async function check(
  gpu: Gpu, k: Case, sizes: { a: number; b: number; c: number }, what: string, tol = 1e-5, seed = 1,
  opsOf: (args: MatmulArgs) => Op[] = (args) => [matmul(gpu, args)],
): Promise<void> {
  const a = randArray(sizes.a, seed);
  const b = randArray(sizes.b, seed + 1);
  const c0 = randArray(sizes.c, seed + 2);
  const ta = gpu.tensorFrom(a, [sizes.a], 'a');
  const tb = gpu.tensorFrom(b, [sizes.b], 'b');
  const tc = gpu.tensorFrom(c0, [sizes.c], 'c');
  const tbias = k.bias ? gpu.tensorFrom(k.bias, [k.bias.length], 'bias') : undefined;
  const args: MatmulArgs = { ...k, a: ta, b: tb, c: tc, bias: tbias, label: what };
  runOps(gpu, opsOf(args));
  const got = await gpu.read(tc);
  const { want, scale } = matmulReference(a, b, c0, k);
  expectMatmulClose(got, want, scale, tol, what);
  for (const t of [ta, tb, tc, tbias]) if (t) gpu.destroyTensor(t);
}

/** Dense sizes of A, B, C for an unbatched case. */
const dense = (M: number, N: number, K: number) => ({ a: M * K, b: K * N, c: M * N });

const SHAPES: [number, number, number][] = [
  [1, 1, 1],
  [3, 5, 7],
  [65, 63, 17],
  [130, 70, 4],
  [4, 96, 130],
  [64, 64, 16],
  [1, 200, 33],
  [77, 1, 40],
];
/** Grouped-query attention's scores: 4 query heads over 2 key heads, every (sequence, head) in one product (MatmulBatch.groupB). */
const GQA_SCORES: { k: Case; sizes: { a: number; b: number; c: number } } = (() => {
  const [B, T, H, KV, hd] = [2, 21, 4, 2, 8];
  return {
    k: {
      M: T, N: T, K: hd, transB: true, lda: H * hd, ldb: KV * hd, alpha: 0.5,
      batch: { outer: B, inner: H, groupB: H / KV, strideA: [T * H * hd, hd], strideB: [T * KV * hd, hd], strideC: [H * T * T, T * T] },
    },
    sizes: { a: B * T * H * hd, b: B * T * KV * hd, c: B * H * T * T },
  };
})();
const TRANSPOSES: [boolean, boolean][] = [
  [false, false],
  [true, false],
  [false, true],
  [true, true],
];

// Both kernels (64- and 128-tile) must give the same results on every case.
describe.each(['64x64', '128x128', '128x64', '64x128', 'db64x64'] as const)('matmul kernel, %s tile', (tile) => {
  // the scalar-load kernels (aligned cases would otherwise go to the vec4 ones, tested below)
  beforeEach(async () => {
    (await testGpu()).tuning.vec4Matmul = false;
  });
  afterEach(async () => {
    (await testGpu()).tuning.vec4Matmul = DEFAULT_KERNEL_TUNING.vec4Matmul;
  });
  it('matches the reference for all transpose combinations and odd shapes', async () => {
    const gpu = await testGpu();
    gpu.tuning.matmul = tile;
    for (const [transA, transB] of TRANSPOSES) {
      for (const [M, N, K] of SHAPES) {
        await check(gpu, { M, N, K, transA, transB }, dense(M, N, K), `tA=${transA} tB=${transB} ${M}x${N}x${K}`);
      }
    }
  });

  it('applies alpha, accumulate and bias, alone and together', async () => {
    const gpu = await testGpu();
    gpu.tuning.matmul = tile;
    const [M, N, K] = [70, 67, 19];
    const bias = randArray(N, 99, 3);
    const variants: Partial<Case>[] = [
      { alpha: 0.125 },
      { alpha: -2.5 },
      { accumulate: true },
      { bias },
      { alpha: 0.5, accumulate: true, bias },
      { alpha: 0, accumulate: true }, // C unchanged
    ];
    for (const [transA, transB] of TRANSPOSES) {
      for (const v of variants) {
        await check(gpu, { M, N, K, transA, transB, ...v }, dense(M, N, K), `tA=${transA} tB=${transB} ${JSON.stringify({ ...v, bias: !!v.bias })}`);
      }
    }
  });

  it('uses leading dimensions larger than dense and element offsets, leaving the gaps untouched', async () => {
    const gpu = await testGpu();
    gpu.tuning.matmul = tile;
    const [M, N, K] = [67, 45, 21];
    for (const [transA, transB] of TRANSPOSES) {
      const rowsA = transA ? K : M, colsA = transA ? M : K;
      const rowsB = transB ? N : K, colsB = transB ? K : N;
      const lda = colsA + 5, ldb = colsB + 3, ldc = N + 7;
      const offsetA = 11, offsetB = 6, offsetC = 13;
      const sizes = { a: offsetA + rowsA * lda, b: offsetB + rowsB * ldb, c: offsetC + M * ldc + 2 };
      await check(gpu, { M, N, K, transA, transB, lda, ldb, ldc, offsetA, offsetB, offsetC, accumulate: true, alpha: 0.75 }, sizes, `strided tA=${transA} tB=${transB}`);
    }
  });

  it('computes attention scores and attention-times-values straight out of a packed qkv buffer', async () => {
    const gpu = await testGpu();
    gpu.tuning.matmul = tile;
    await check(gpu, GQA_SCORES.k, GQA_SCORES.sizes, 'grouped-query scores');
    const [B, T, H, hd] = [2, 37, 3, 8];
    const C = H * hd;
    const qkvSize = B * T * 3 * C;
    // scores[b, h] = scale * Q_bh @ K_bh^T, Q/K read with row stride 3C from qkv [B, T, 3C].
    await check(
      gpu,
      {
        M: T, N: T, K: hd, transB: true, lda: 3 * C, ldb: 3 * C, offsetA: 0, offsetB: C, alpha: 1 / Math.sqrt(hd),
        batch: { outer: B, inner: H, strideA: [T * 3 * C, hd], strideB: [T * 3 * C, hd], strideC: [H * T * T, T * T] },
      },
      { a: qkvSize, b: qkvSize, c: B * H * T * T },
      'scores = Q K^T',
    );
    // out[b, :, h*hd:(h+1)*hd] = P_bh @ V_bh, written into [B, T, C] with row stride C.
    await check(
      gpu,
      {
        M: T, N: hd, K: T, ldb: 3 * C, ldc: C, offsetB: 2 * C,
        batch: { outer: B, inner: H, strideA: [H * T * T, T * T], strideB: [T * 3 * C, hd], strideC: [T * C, hd] },
      },
      { a: B * H * T * T, b: qkvSize, c: B * T * C },
      'out = P V',
    );
    // Backward: dP = dO @ V^T and dV = P^T @ dO (transA), the other two shapes attention needs.
    await check(
      gpu,
      {
        M: T, N: T, K: hd, transB: true, lda: C, ldb: 3 * C, offsetB: 2 * C,
        batch: { outer: B, inner: H, strideA: [T * C, hd], strideB: [T * 3 * C, hd], strideC: [H * T * T, T * T] },
      },
      { a: B * T * C, b: qkvSize, c: B * H * T * T },
      'dP = dO V^T',
    );
    await check(
      gpu,
      {
        M: T, N: hd, K: T, transA: true, ldb: C, ldc: 3 * C, offsetC: 2 * C,
        batch: { outer: B, inner: H, strideA: [H * T * T, T * T], strideB: [T * C, hd], strideC: [T * 3 * C, hd] },
      },
      { a: B * H * T * T, b: B * T * C, c: qkvSize },
      'dV = P^T dO',
    );
  });

  it('handles both batch stride levels with padding between matrices, and a broadcast operand', async () => {
    const gpu = await testGpu();
    gpu.tuning.matmul = tile;
    const [M, N, K] = [33, 70, 18];
    const [outer, inner] = [3, 4];
    for (const [transA, transB] of TRANSPOSES) {
      const mA = M * K + 3, mB = K * N + 5, mC = M * N + 9; // per-matrix spans with gaps
      const batch: MatmulBatch = {
        outer, inner,
        strideA: [inner * mA + 7, mA],
        strideB: [inner * mB + 2, mB],
        strideC: [inner * mC + 4, mC],
      };
      const sizes = { a: outer * batch.strideA[0], b: outer * batch.strideB[0], c: outer * batch.strideC[0] };
      await check(gpu, { M, N, K, transA, transB, batch }, sizes, `batched tA=${transA} tB=${transB}`);
    }
    // One weight matrix shared by every batch entry (stride 0), as a batched linear layer.
    await check(
      gpu,
      { M, N, K, transB: true, batch: { outer: 2, inner: 3, strideA: [3 * M * K, M * K], strideB: [0, 0], strideC: [3 * M * N, M * N] } },
      { a: 6 * M * K, b: N * K, c: 6 * M * N },
      'broadcast B',
    );
    // groupB: 6 inner entries over 2 B's (3 each, as grouped-query heads over their key/value head),
    // and 5 over 3 (the last group short)
    for (const [inner, groupB] of [[6, 3], [5, 2]]) {
      const groups = Math.ceil(inner / groupB);
      await check(
        gpu,
        { M, N, K, transB: true, batch: { outer: 2, inner, groupB, strideA: [inner * M * K, M * K], strideB: [groups * N * K + 3, N * K], strideC: [inner * M * N, M * N] } },
        { a: 2 * inner * M * K, b: 2 * (groups * N * K + 3), c: 2 * inner * M * N },
        `groupB ${inner}/${groupB}`,
      );
    }
  });

  it('is right on a larger problem that spans many workgroups', async () => {
    const gpu = await testGpu();
    gpu.tuning.matmul = tile;
    await check(gpu, { M: 256, N: 256, K: 256 }, dense(256, 256, 256), '256^3');
    await check(gpu, { M: 200, N: 300, K: 100, transA: true, transB: true }, dense(200, 300, 100), '200x300x100 tA tB');
  });

  it('folds grids that overflow a dimension, skipping the padding workgroups', async () => {
    const real = await testGpu();
    real.tuning.matmul = tile;
    // A real overflow needs > 65535 workgroups, minutes on a CPU driver: instead shrink the
    // per-dimension limit the wrapper folds against (the shader only sees the folded grid).
    const maxPerDim = 7;
    const gpu: Gpu = Object.create(real, {
      info: { value: { ...real.info, limits: { ...real.info.limits, maxComputeWorkgroupsPerDimension: maxPerDim } } },
    });
    const cases: [string, Case, { a: number; b: number; c: number }][] = [
      [
        'batch 50 > limit',
        { M: 70, N: 3, K: 5, transB: true, batch: { outer: 5, inner: 10, strideA: [10 * 70 * 5, 70 * 5], strideB: [10 * 3 * 5, 3 * 5], strideC: [10 * 70 * 3, 70 * 3] } },
        { a: 50 * 70 * 5, b: 50 * 3 * 5, c: 50 * 70 * 3 },
      ],
      ['10 column tiles > limit', { M: 1, N: 600, K: 9 }, dense(1, 600, 9)],
      [
        '8 row tiles x 3 column tiles x 3 batches',
        { M: 500, N: 130, K: 3, transA: true, batch: { outer: 3, inner: 1, strideA: [500 * 3, 0], strideB: [0, 0], strideC: [500 * 130, 0] } },
        { a: 3 * 500 * 3, b: 3 * 130, c: 3 * 500 * 130 },
      ],
    ];
    for (const [what, k, sizes] of cases) {
      await check(gpu, k, sizes, `folded: ${what}`);
    }
  });

  it('folds grids only when a dimension overflows, covering every tile', () => {
    expect(matmulWorkgroups(3, 4, 5, 65535)).toEqual([3, 4, 5]);
    for (const [tn, tm, z, max] of [[3, 4, 50, 16], [40, 1, 1, 16], [5, 5, 100, 16], [17, 17, 14, 16]]) {
      const [x, y, w] = matmulWorkgroups(tn, tm, z, max);
      expect(Math.max(x, y, w)).toBeLessThanOrEqual(max);
      expect(x * y * w).toBeGreaterThanOrEqual(tn * tm * z);
      // Padding stays below one xy-plane of the grid plus one row.
      expect(x * y * w - tn * tm * z).toBeLessThan(x * y + x);
    }
    expect(() => matmulWorkgroups(16, 16, 16 * 16 * 16 + 1, 16)).toThrow(/do not fit/);
  });

  it('rejects bad arguments with a clear message', async () => {
    const gpu = await testGpu();
    gpu.tuning.matmul = tile;
    const a = gpu.tensor([6, 4], 'a'), b = gpu.tensor([4, 5], 'b'), c = gpu.tensor([6, 5], 'c');
    const ok: MatmulArgs = { a, b, c, M: 6, N: 5, K: 4 };
    expect(() => matmul(gpu, ok)).not.toThrow();
    const bad: [Partial<MatmulArgs>, RegExp][] = [
      [{ M: 0 }, /positive integers/],
      [{ K: 2.5 }, /positive integers/],
      [{ N: -1 }, /positive integers/],
      [{ M: 7 }, /a \(a, 24 elements\) would be read\/written at index 27/],
      [{ offsetA: 1 }, /a \(a, 24 elements\)/],
      [{ offsetC: 1 }, /c \(c, 30 elements\)/],
      [{ ldb: 6 }, /b \(b, 20 elements\)/],
      [{ lda: 3 }, /lda = 3 must be an integer >= 4/],
      [{ ldc: 4 }, /ldc = 4 must be an integer >= N = 5/],
      [{ transA: true, lda: 4 }, /lda = 4 must be an integer >= 6/],
      [{ offsetB: -1 }, /offsetB/],
      [{ c: a }, /must not alias/],
      [{ b: c }, /must not alias/],
      [{ bias: gpu.tensor([4], 'short bias') }, /expected N = 5/],
      [{ bias: c }, /bias must not alias c/],
      [{ a: gpu.tensor([6, 4], 'ints', 'i32') }, /i32, expected f32/],
      [{ alpha: NaN }, /alpha must be finite/],
      [{ batch: { outer: 2, inner: 1, strideA: [0, 0], strideB: [0, 0], strideC: [30, 0] } }, /c \(c, 30 elements\) would be read\/written at index 59/],
      [{ batch: { outer: 1, inner: 0, strideA: [0, 0], strideB: [0, 0], strideC: [0, 0] } }, /batch outer\/inner/],
      [{ batch: { outer: 1, inner: 2, strideA: [0, -4], strideB: [0, 0], strideC: [0, 0] } }, /batch.strideA/],
      [{ batch: { outer: 1, inner: 2, groupB: 0, strideA: [0, 0], strideB: [0, 0], strideC: [0, 0] } }, /batch.groupB must be a positive integer/],
      // B's last group is inner entry 2 / 2 = 1: 20 elements past offset 0 do not hold it; with groupB 3 they do
      [{ batch: { outer: 1, inner: 3, groupB: 2, strideA: [0, 0], strideB: [0, 20], strideC: [0, 0] } }, /b \(b, 20 elements\) would be read\/written at index 39/],
    ];
    expect(() => matmul(gpu, { ...ok, batch: { outer: 1, inner: 3, groupB: 3, strideA: [0, 0], strideB: [0, 20], strideC: [0, 0] } })).not.toThrow();
    for (const [patch, re] of bad) {
      expect(() => matmul(gpu, { ...ok, ...patch }), JSON.stringify(patch)).toThrow(re);
    }
  });
});

// The vec4 kernels take operands whose contiguous dimension, offsets and strides are multiples of
// 4; the other dimensions (M of a k-contiguous A, N of a k-contiguous B, C's layout) stay free.
describe.each(['64x64', '128x128', '128x64', '64x128'] as const)('vec4 matmul kernel, %s tile', (tile) => {
  beforeEach(async () => {
    const gpu = await testGpu();
    gpu.tuning.matmul = tile;
    gpu.tuning.vec4Matmul = true;
  });
  afterEach(async () => {
    Object.assign((await testGpu()).tuning, DEFAULT_KERNEL_TUNING);
  });
  /** check(), after asserting the product goes to this tile's vec4 kernel. */
  async function checkVec4(gpu: Gpu, k: Case, sizes: { a: number; b: number; c: number }, what: string): Promise<void> {
    const t = gpu.tensor([4], 't');
    const op = matmul(gpu, { ...k, a: gpu.tensor([sizes.a], 'a'), b: gpu.tensor([sizes.b], 'b'), c: gpu.tensor([sizes.c], 'c'), bias: k.bias ? gpu.tensor([k.N], 'bias') : undefined });
    const want = gpu.pipeline(vec4Code(VEC4_MATMUL_VARIANTS[tile], k), what, 'main', vec4Constants(k, MATMUL_VARIANTS[tile].rows, MATMUL_VARIANTS[tile].cols));
    expect(op.kind === 'dispatch' && op.pipeline === want, `${what} runs the vec4 kernel`).toBe(true);
    gpu.destroyTensor(t);
    await check(gpu, k, sizes, what);
  }
  // M, N, K: whichever of them is an operand's contiguous dimension is a multiple of 4
  const ALIGNED: [number, number, number, boolean, boolean][] = [
    [4, 4, 4, false, false], [68, 60, 20, false, false], [67, 60, 20, false, false], [132, 72, 4, false, false],
    [20, 96, 132, false, false], [64, 64, 16, false, false], [200, 132, 36, false, false], [129, 260, 52, false, false],
    [68, 60, 20, true, false], [132, 72, 4, true, false], [8, 200, 36, true, false], [260, 132, 52, true, false],
    [68, 60, 20, false, true], [67, 61, 20, false, true], [20, 96, 132, false, true], [130, 70, 36, false, true],
    [68, 60, 20, true, true], [132, 71, 4, true, true], [200, 8, 36, true, true], [260, 129, 52, true, true],
  ];

  it('matches the reference for every transpose, on tile edges and K tails', async () => {
    const gpu = await testGpu();
    for (const [M, N, K, transA, transB] of ALIGNED) {
      await checkVec4(gpu, { M, N, K, transA, transB }, dense(M, N, K), `vec4 tA=${transA} tB=${transB} ${M}x${N}x${K}`);
    }
    await checkVec4(gpu, { M: 256, N: 256, K: 256 }, dense(256, 256, 256), 'vec4 256^3');
  });

  it('applies alpha, accumulate and bias with aligned leading dimensions and offsets, C at any layout (as vec4s where its rows are whole vec4s)', async () => {
    const gpu = await testGpu();
    const [M, N, K] = [72, 68, 28];
    const bias = randArray(N, 99, 3);
    // [ldc, offsetC]: C's rows not whole vec4s (the plain form), and whole vec4s (the C4 form where the tile has one)
    for (const [ldcPad, offsetC] of [[7, 13], [4, 8]]) {
      for (const [transA, transB] of TRANSPOSES) {
        const rowsA = transA ? K : M, colsA = transA ? M : K;
        const rowsB = transB ? N : K, colsB = transB ? K : N;
        const lda = colsA + 8, ldb = colsB + 4, ldc = N + ldcPad;
        const offsetA = 12, offsetB = 4;
        const sizes = { a: offsetA + rowsA * lda, b: offsetB + rowsB * ldb, c: offsetC + M * ldc + 2 };
        for (const v of [{ alpha: 0.75, accumulate: true }, { bias }, { alpha: -2, accumulate: true, bias }]) {
          await checkVec4(gpu, { M, N, K, transA, transB, lda, ldb, ldc, offsetA, offsetB, offsetC, ...v }, sizes, `vec4 strided ldc=${ldc} offC=${offsetC} tA=${transA} tB=${transB} ${Object.keys(v).join(',')}`);
        }
      }
    }
  });

  it('runs batched products with aligned batch strides, and attention straight out of packed qkv', async () => {
    const gpu = await testGpu();
    const [M, N, K] = [33, 72, 20];
    for (const [transA, transB] of TRANSPOSES) {
      if (transA) continue; // M = 33 is A's contiguous dimension then
      const mA = M * K + 4, mB = K * N + 8, mC = M * N + 9;
      const batch: MatmulBatch = { outer: 3, inner: 2, strideA: [2 * mA + 8, mA], strideB: [2 * mB + 4, mB], strideC: [2 * mC + 5, mC] };
      await checkVec4(gpu, { M, N, K, transA, transB, batch }, { a: 3 * batch.strideA[0], b: 3 * batch.strideB[0], c: 3 * batch.strideC[0] }, `vec4 batched tA=${transA} tB=${transB}`);
    }
    await checkVec4(gpu, GQA_SCORES.k, GQA_SCORES.sizes, 'vec4 grouped-query scores');
    const [B, T, H, hd] = [2, 37, 3, 8];
    const C = H * hd;
    const qkvSize = B * T * 3 * C;
    await checkVec4(
      gpu,
      {
        M: T, N: T, K: hd, transB: true, lda: 3 * C, ldb: 3 * C, offsetA: 0, offsetB: C, alpha: 1 / Math.sqrt(hd),
        batch: { outer: B, inner: H, strideA: [T * 3 * C, hd], strideB: [T * 3 * C, hd], strideC: [H * T * T, T * T] },
      },
      { a: qkvSize, b: qkvSize, c: B * H * T * T },
      'vec4 scores = Q K^T',
    );
    await checkVec4(
      gpu,
      {
        M: T, N: hd, K: 36, transA: false, ldb: 3 * C, ldc: C, offsetB: 2 * C, lda: 40,
        batch: { outer: B, inner: H, strideA: [H * T * 40, T * 40], strideB: [T * 3 * C, hd], strideC: [T * C, hd] },
      },
      { a: B * H * T * 40, b: qkvSize, c: B * T * C },
      'vec4 out = P V over 36 keys (P rows padded to 40)',
    );
  });

  it('is chosen only for aligned operands', () => {
    const none = { outer: 1, inner: 1, strideA: [0, 0] as [number, number], strideB: [0, 0] as [number, number], strideC: [0, 0] as [number, number] };
    const base = { M: 67, N: 68, K: 20, transA: false, transB: false, lda: 20, ldb: 68, offA: 0, offB: 0, batch: none };
    expect(vec4Aligned(base)).toBe(true);
    expect(vec4Aligned({ ...base, K: 21, lda: 21 })).toBe(false); // A's rows
    expect(vec4Aligned({ ...base, N: 67, ldb: 67 })).toBe(false); // B's rows
    expect(vec4Aligned({ ...base, transA: true, lda: 67 })).toBe(false); // A stored [K, M], M = 67
    expect(vec4Aligned({ ...base, transB: true, ldb: 20 })).toBe(true); // B stored [N, K]: N is free
    expect(vec4Aligned({ ...base, lda: 22 })).toBe(false);
    expect(vec4Aligned({ ...base, offB: 2 })).toBe(false);
    expect(vec4Aligned({ ...base, batch: { ...none, strideA: [0, 6] } })).toBe(false);
  });
});

// LoRA's gradients: one output dimension <= 16 (the rank) and a long K. These go to
// shaders/matmul_skinny.wgsl (transposed when M is the small one).
describe.each([16, 8, 4])('skinny matmul (one output dimension <= 16), %i rows per workgroup', (rowsPerGroup) => {
  beforeEach(async () => {
    const gpu = await testGpu();
    gpu.tuning.skinnyRows = rowsPerGroup;
    gpu.tuning.skinnyRowsRowFast = rowsPerGroup;
  });
  afterEach(async () => {
    const gpu = await testGpu();
    gpu.tuning.skinnyRows = DEFAULT_KERNEL_TUNING.skinnyRows;
    gpu.tuning.skinnyRowsRowFast = DEFAULT_KERNEL_TUNING.skinnyRowsRowFast;
  });

  const SKINNY: [number, number, number][] = [
    [300, 8, 200],
    [8, 300, 200],
    [129, 16, 100],
    [16, 70, 333],
    [1, 50, 100],
    [50, 1, 64],
    [33, 5, 777],
    [3, 3, 65],
  ];

  it('routes these shapes to the skinny kernel and matches the reference for every transpose', { timeout: 600_000 }, async () => {
    const gpu = await testGpu();
    gpu.tuning.matmul = 'auto';
    for (const [M, N, K] of SKINNY) {
      expect(usesSkinnyMatmul(gpu, M, N, K, 1, false), `${M}x${N}x${K}`).toBe(true);
      for (const [transA, transB] of TRANSPOSES) {
        await check(gpu, { M, N, K, transA, transB }, dense(M, N, K), `skinny tA=${transA} tB=${transB} ${M}x${N}x${K}`);
      }
    }
    expect(usesSkinnyMatmul(gpu, 300, 8, 200, 2, false)).toBe(false); // batched: tiled kernel
    expect(usesSkinnyMatmul(gpu, 300, 8, 200, 1, true)).toBe(false); // bias: tiled kernel
    expect(usesSkinnyMatmul(gpu, 300, 8, 20, 1, false)).toBe(false); // short K
  });

  it('applies alpha and accumulate, with leading dimensions and offsets, leaving the gaps untouched', async () => {
    const gpu = await testGpu();
    for (const [M, N, K] of [[97, 8, 150], [8, 97, 150]] as [number, number, number][]) {
      for (const [transA, transB] of TRANSPOSES) {
        const rowsA = transA ? K : M, colsA = transA ? M : K;
        const rowsB = transB ? N : K, colsB = transB ? K : N;
        const lda = colsA + 3, ldb = colsB + 5, ldc = N + 2;
        const offsetA = 7, offsetB = 4, offsetC = 9;
        const sizes = { a: offsetA + rowsA * lda, b: offsetB + rowsB * ldb, c: offsetC + M * ldc + 3 };
        for (const v of [{ alpha: 0.25 }, { accumulate: true, alpha: -1.5 }]) {
          await check(gpu, { M, N, K, transA, transB, lda, ldb, ldc, offsetA, offsetB, offsetC, ...v }, sizes, `skinny strided ${M}x${N}x${K} tA=${transA} tB=${transB} ${JSON.stringify(v)}`);
        }
      }
    }
  });

  it('folds a grid of more row blocks than one dimension allows', async () => {
    const real = await testGpu();
    const gpu: Gpu = Object.create(real, {
      info: { value: { ...real.info, limits: { ...real.info.limits, maxComputeWorkgroupsPerDimension: 5 } } },
    });
    await check(gpu, { M: 200, N: 4, K: 70, transA: true }, dense(200, 4, 70), 'skinny folded (13 blocks, 5 per grid row)');
  });
});

describe('split-K matmul (K cut into slices summed afterwards)', () => {
  it('matches the reference for every transpose, uneven slices, strides, offsets, alpha, accumulate and bias', async () => {
    const gpu = await testGpu();
    const bias = Float32Array.from({ length: 40 }, (_, i) => (i % 7) - 3);
    for (const [M, N, K, S] of [[33, 40, 1000, 2], [40, 17, 999, 3], [5, 31, 777, 5], [1, 1, 64, 4], [3, 9, 100, 7]] as [number, number, number, number][]) {
      for (const [transA, transB] of TRANSPOSES) {
        const rowsA = transA ? K : M, colsA = transA ? M : K;
        const rowsB = transB ? N : K, colsB = transB ? K : N;
        const lda = colsA + 3, ldb = colsB + 2, ldc = N + 4;
        const offsetA = 5, offsetB = 11, offsetC = 3;
        const sizes = { a: offsetA + rowsA * lda, b: offsetB + rowsB * ldb, c: offsetC + M * ldc + 2 };
        for (const v of [{}, { alpha: 0.5, accumulate: true }, { alpha: -2, bias: bias.subarray(0, N) }]) {
          const what = `splitK ${S} ${M}x${N}x${K} tA=${transA} tB=${transB} ${Object.keys(v).join(',')}`;
          // a scratch of exactly the size asked for: a slice written past it would be lost and show
          const scratch = gpu.tensor([splitKScratchElements(M, N, S)], 'splitK scratch');
          await check(gpu, { M, N, K, transA, transB, lda, ldb, ldc, offsetA, offsetB, offsetC, ...v }, sizes, what, 1e-5, 3, (args) => matmulSplitK(gpu, args, S, scratch));
          gpu.destroyTensor(scratch);
        }
      }
    }
  });

  it('cuts slices a multiple of 4 long, so rows padded to a multiple of 4 take the vec4 kernels though K is not (the LM head\'s backward)', async () => {
    const gpu = await testGpu();
    Object.assign(gpu.tuning, DEFAULT_KERNEL_TUNING);
    // dHidden [M, C] = dlogits [M, V] (rows ld = 4 * ceil(V / 4) apart) @ W [V, C], V = 999
    const [M, N, K, S, lda] = [40, 36, 999, 5, 1000];
    const scratch = gpu.tensor([splitKScratchElements(M, N, S)], 'splitK scratch');
    const t = (n: number, l: string) => gpu.tensor([n], l);
    const ops = matmulSplitK(gpu, { a: t(M * lda, 'a'), b: t(K * N, 'b'), c: t(M * N, 'c'), M, N, K, lda }, S, scratch);
    // the slices (196 long) as one batched vec4 product, the rest (19 terms) plain, the sum
    const first = ops[0];
    const vec4Codes = new Set(Object.values(VEC4_MATMUL_VARIANTS).flatMap((v) => [v.code, v.codeC4 ?? v.code]));
    expect(first.kind === 'dispatch' && first.label).toBe('matmul(c)[splitK 5]');
    expect(vec4Codes.size).toBeGreaterThan(0);
    const vec4Pipelines = [...vec4Codes].map((code) => gpu.pipeline(code, 'x', 'main', { K_FAST_A: 1, K_FAST_B: 0 }));
    expect(first.kind === 'dispatch' && vec4Pipelines.includes(first.pipeline)).toBe(true);
    expect(ops.length).toBe(3);
    await check(gpu, { M, N, K, lda }, { a: M * lda, b: K * N, c: M * N }, 'splitK over padded rows', 1e-5, 5, (args) => matmulSplitK(gpu, args, S, scratch));
    gpu.destroyTensor(scratch);
  });

  it('splits only long-K products with few output tiles, and refuses a missing or aliasing scratch', async () => {
    const gpu = await testGpu();
    Object.assign(gpu.tuning, DEFAULT_KERNEL_TUNING);
    expect(splitKFactor(gpu, 1335, 768, 50257)).toBe(16); // GPT-2's LM head backward: 66 tiles
    expect(splitKFactor(gpu, 2048, 768, 3072)).toBe(4); // GPT-2's c_fc dx: 96 tiles, 320 wanted
    expect(splitKFactor(gpu, 2048, 576, 1536)).toBe(4); // SmolLM2's down_proj
    expect(splitKFactor(gpu, 2048, 768, 768)).toBe(1); // K below splitKMinK
    expect(splitKFactor(gpu, 2048, 3072, 768)).toBe(1); // 384 tiles already
    expect(splitKFactor(gpu, 4096, 4096, 50257)).toBe(1); // 1024 tiles already (long K)
    expect(splitKFactor(gpu, 1, 64, 2048)).toBe(8); // slices at least splitKMinSlice (256) long
    const t = gpu.tensor([100], 't');
    const args: MatmulArgs = { a: t, b: t, c: gpu.tensor([16], 'c'), M: 4, N: 4, K: 6 };
    expect(() => matmulSplitK(gpu, args, 2, null)).toThrow(/needs a scratch of 32 elements/);
    expect(() => matmulSplitK(gpu, { ...args, c: t }, 2, t)).toThrow(/must not alias/);
    expect(matmulSplitK(gpu, args, 1, null).length).toBe(1);
  });
});

// ---- Stream-K (kernels/matmul.ts streamKPlan / matmulStreamK) ------------------------------------

describe('stream-K matmul (tiles x K iterations cut evenly over workgroups, split tiles fixed up)', () => {
  /** Tuning that cuts even tiny products, over `groups` workgroups. */
  const cutInto = (gpu: Gpu, groups: number) =>
    Object.assign(gpu.tuning, DEFAULT_KERNEL_TUNING, {
      streamKWorkgroups: groups, streamKHalfTileWorkgroups: groups, streamKMinK: 1, streamKHalfTileMinK: 1, streamKMinIters: 1, streamKMaxTiles: 1e9, streamKHalfTileMaxTiles: 1e9, streamKWholeTiles: false,
    });
  afterEach(async () => {
    Object.assign((await testGpu()).tuning, DEFAULT_KERNEL_TUNING);
  });

  it('matches the reference for every transpose, edge tiles, K tails, strides, offsets, alpha, accumulate and bias, over 1 to many workgroups', { timeout: 400_000 }, async () => {
    const gpu = await testGpu();
    const bias = Float32Array.from({ length: 320 }, (_, i) => (i % 7) - 3);
    // (M, N, K): one tile; edge tiles on both sides with a K tail (K % 16 = 4); whole tiles (unchecked loads); a thin one;
    // whole 128x64 tiles but not 128x128 ones (the 128x64 kernel), with and without a K tail
    for (const [M, N, K] of [[36, 20, 100], [132, 136, 52], [512, 256, 48], [4, 260, 16], [256, 192, 48], [128, 320, 100]] as [number, number, number][]) {
      for (const groups of [1, 3, 7, 40]) {
        cutInto(gpu, groups);
        const plan = streamKPlan(gpu, M, N, K)!;
        expect(plan.groups).toBeLessThanOrEqual(groups);
        expect(plan.tile).toBe(M % 128 === 0 && N % 128 !== 0 && N % 64 === 0 ? '128x64' : '128x128');
        for (const [transA, transB] of TRANSPOSES) {
          const rowsA = transA ? K : M, colsA = transA ? M : K;
          const rowsB = transB ? N : K, colsB = transB ? K : N;
          const lda = colsA + 4, ldb = colsB + 8, ldc = N + 3;
          const offsetA = 8, offsetB = 4, offsetC = 5;
          const sizes = { a: offsetA + rowsA * lda, b: offsetB + rowsB * ldb, c: offsetC + M * ldc + 2 };
          const v = [{}, { alpha: 0.5, accumulate: true }, { alpha: -2, bias: bias.subarray(0, N) }][(groups + Number(transA) + 2 * Number(transB)) % 3];
          const what = `streamK G=${plan.groups} ipw=${plan.itersPerGroup} ${M}x${N}x${K} tA=${transA} tB=${transB} ${Object.keys(v).join(',')}`;
          // a scratch of exactly the size asked for, filled with NaN: a piece read that was never written shows
          const scratch = gpu.tensorFrom(new Float32Array(streamKScratchElements(plan)).fill(NaN), [streamKScratchElements(plan)], 'streamK scratch');
          await check(gpu, { M, N, K, transA, transB, lda, ldb, ldc, offsetA, offsetB, offsetC, ...v }, sizes, what, 1e-5, 3, (args) => {
            const ops = matmulStreamK(gpu, args, plan, scratch);
            expect(ops.map((o) => o.kind === 'dispatch' && o.label)).toEqual([`${what}[streamK]`, ...(plan.splitsTiles ? [`${what}[streamK fixup]`] : [])]);
            return ops;
          });
          gpu.destroyTensor(scratch);
        }
      }
    }
  });

  it('cuts ranges that start and end inside tiles, and tiles shared by three or more workgroups', async () => {
    const gpu = await testGpu();
    // 2 x 2 tiles of K = 160 (10 K tiles each): 40 iterations over 7 workgroups of 6 (every range
    // but the first starts inside a tile), and over 13 of 4 (a tile split three ways)
    for (const [groups, ipw] of [[7, 6], [13, 4]]) {
      cutInto(gpu, groups);
      const plan = streamKPlan(gpu, 256, 256, 160)!;
      expect([plan.tile, plan.kTiles, plan.itersPerGroup, plan.splitsTiles]).toEqual(['128x128', 10, ipw, true]);
      const scratch = gpu.tensor([streamKScratchElements(plan)], 'streamK scratch');
      await check(gpu, { M: 256, N: 256, K: 160, alpha: 1.5, accumulate: true }, dense(256, 256, 160), `streamK ipw=${ipw}`, 1e-5, 9, (args) => matmulStreamK(gpu, args, plan, scratch));
      gpu.destroyTensor(scratch);
    }
    // over 3 workgroups: an even cut (14) would split tiles, 2 whole tiles each (20) is 43% longer
    // than it; with a slack of 50% the whole tiles win and no fix-up runs
    cutInto(gpu, 3);
    expect(streamKPlan(gpu, 256, 256, 160)).toMatchObject({ itersPerGroup: 14, splitsTiles: true });
    gpu.tuning.streamKWholeTileSlack = 0.5;
    const plan = streamKPlan(gpu, 256, 256, 160)!;
    expect(plan).toMatchObject({ groups: 2, itersPerGroup: 20, splitsTiles: false });
    const scratch = gpu.tensor([streamKScratchElements(plan)], 'streamK scratch');
    await check(gpu, { M: 256, N: 256, K: 160, bias: Float32Array.from({ length: 256 }, (_, i) => i / 256) }, dense(256, 256, 160), 'streamK whole tiles', 1e-5, 10, (args) => {
      const ops = matmulStreamK(gpu, args, plan, scratch);
      expect(ops.length).toBe(1);
      return ops;
    });
    gpu.destroyTensor(scratch);
  });

  it('fixes split tiles up with C as vec4s where N, ldc and offC are multiples of 4, as scalars otherwise or with streamKVec4Fixup off', async () => {
    const gpu = await testGpu();
    const [M, N, K] = [256, 256, 160];
    const bias = Float32Array.from({ length: N }, (_, i) => (i % 9) - 4);
    const fixup = (code: string) => gpu.pipeline(code, 'fixup', 'main', { TILE_M: 128, TILE_N: 128 });
    // [ldc, offsetC, vec4 fix-up tuning, the form expected]
    for (const [ldc, offsetC, vec4Fixup, form] of [[N, 0, true, 'vec4'], [N + 4, 8, true, 'vec4'], [N + 3, 8, true, 'scalar'], [N + 4, 6, true, 'scalar'], [N + 4, 8, false, 'scalar']] as const) {
      cutInto(gpu, 7);
      gpu.tuning.streamKVec4Fixup = vec4Fixup;
      const plan = streamKPlan(gpu, M, N, K)!;
      expect(plan.splitsTiles).toBe(true);
      const scratch = gpu.tensor([streamKScratchElements(plan)], 'streamK scratch');
      for (const v of [{ alpha: 1.5, accumulate: true }, { alpha: -0.5, bias }, { accumulate: true, bias }]) {
        const what = `fixup ldc=${ldc} offC=${offsetC} tuning=${vec4Fixup} ${Object.keys(v).join(',')}`;
        await check(gpu, { M, N, K, ldc, offsetC, ...v }, { a: M * K, b: K * N, c: offsetC + M * ldc }, what, 1e-5, 12, (args) => {
          const ops = matmulStreamK(gpu, args, plan, scratch);
          expect(ops[1].kind === 'dispatch' && ops[1].pipeline === fixup(STREAMK_FIXUP_KERNELS[form]), `${what}: the ${form} fix-up`).toBe(true);
          return ops;
        });
      }
      gpu.destroyTensor(scratch);
    }
  });

  it('takes a K that is not a multiple of 4 as stream-K over its first 4 * floor(K / 4) terms and the plain kernels for the rest (the LM head\'s backward)', async () => {
    const gpu = await testGpu();
    cutInto(gpu, 5);
    const [M, N, K] = [136, 132, 203];
    const bias = Float32Array.from({ length: N }, (_, i) => (i % 5) - 2);
    const scratch = gpu.tensor([productScratchElements(gpu, M, N, K)], 'scratch');
    for (const [transA, transB] of TRANSPOSES) {
      const rowsA = transA ? K : M, colsA = transA ? M : K;
      const rowsB = transB ? N : K, colsB = transB ? K : N;
      const lda = 4 * Math.ceil(colsA / 4) + 4, ldb = 4 * Math.ceil(colsB / 4), ldc = N + 1;
      const what = `streamK + rest tA=${transA} tB=${transB}`;
      await check(gpu, { M, N, K, transA, transB, lda, ldb, ldc, offsetA: 4, offsetB: 8, alpha: 0.75, accumulate: true, bias }, { a: 4 + rowsA * lda, b: 8 + rowsB * ldb, c: M * ldc }, what, 1e-5, 11, (args) => {
        const ops = matmulWithScratch(gpu, args, scratch);
        expect(ops.map((o) => o.kind === 'dispatch' && o.label)).toEqual([`${what}[streamK]`, `${what}[streamK fixup]`, `${what}[streamK rest]`]);
        return ops;
      });
    }
    gpu.destroyTensor(scratch);
  });

  it('plans only products with few tiles and a long enough K; matmulWithScratch takes stream-K only for vec4-aligned operands with the scratch for it', async () => {
    const gpu = await testGpu();
    Object.assign(gpu.tuning, DEFAULT_KERNEL_TUNING);
    // GPT-2 at 8 x 256: c_fc 384 tiles of 48 K tiles over 132 workgroups: 3 whole tiles each (144
    // iterations, 3% more than an even 140), on 128 workgroups, no fix-up, once streamKMaxTiles lets it
    // (by default 384 tiles are enough for the plain 128x64 kernel)
    expect(streamKPlan(gpu, 2048, 3072, 768)).toBeNull();
    gpu.tuning.streamKMaxTiles = 4096;
    expect(streamKPlan(gpu, 2048, 3072, 768)).toEqual({ tile: '128x128', tilesM: 16, tilesN: 24, kTiles: 48, groups: 128, itersPerGroup: 144, splitsTiles: false });
    gpu.tuning.streamKMaxTiles = DEFAULT_KERNEL_TUNING.streamKMaxTiles;
    expect(streamKPlan(gpu, 2048, 2304, 768)).toMatchObject({ itersPerGroup: 105, splitsTiles: true }); // c_attn: 288 tiles, whole would be 37% longer
    expect(streamKPlan(gpu, 2048, 768, 3072)).toMatchObject({ itersPerGroup: 140, splitsTiles: true }); // c_fc dx: 96 tiles of 192
    expect(streamKPlan(gpu, 384, 768, 50256)!.itersPerGroup).toBe(429); // the LM head's backward block: 18 tiles of 3141
    expect(streamKPlan(gpu, 384, 50257, 768)).toBeNull(); // its forward: edge tiles (streamKWholeTiles)
    expect(streamKPlan(gpu, 384, 50304, 768)).toBeNull(); // 1179 whole tiles: many full waves (streamKMaxTiles)
    // SmolLM2's down_proj: 4.5 128x128 tiles wide, 9 of 128x64: 144 tiles of 96 K tiles over 264 workgroups of 53 iterations
    expect(streamKPlan(gpu, 2048, 576, 1536)).toEqual({ tile: '128x64', tilesM: 16, tilesN: 9, kTiles: 96, groups: 261, itersPerGroup: 53, splitsTiles: true });
    // o_proj: K = 576 is enough for 128x64 tiles (streamKHalfTileMinK); q|k|v's 960 columns make 240 tiles, one wave of the plain kernel (streamKHalfTileMaxTiles)
    expect(streamKPlan(gpu, 2048, 576, 576)).toEqual({ tile: '128x64', tilesM: 16, tilesN: 9, kTiles: 36, groups: 260, itersPerGroup: 20, splitsTiles: true });
    expect(streamKPlan(gpu, 2048, 960, 576)).toBeNull();
    gpu.tuning.streamKHalfTiles = false;
    expect(streamKPlan(gpu, 2048, 576, 1536)).toBeNull(); // then 4.5 tiles wide (streamKWholeTiles)
    gpu.tuning.streamKHalfTiles = true;
    expect(streamKPlan(gpu, 2048, 768, 512)).toBeNull(); // K below streamKMinK
    gpu.tuning.streamKMinK = 256;
    expect(streamKPlan(gpu, 2048, 128, 256)!.itersPerGroup).toBe(8); // at least streamKMinIters each
    gpu.tuning.streamKMinK = DEFAULT_KERNEL_TUNING.streamKMinK;
    gpu.tuning.matmul = '64x64';
    expect(streamKPlan(gpu, 2048, 3072, 768)).toBeNull(); // a forced kernel
    gpu.tuning.matmul = 'auto';
    gpu.tuning.streamK = false;
    expect(streamKPlan(gpu, 2048, 3072, 768)).toBeNull();
    cutInto(gpu, 5);
    const [M, N, K] = [64, 64, 40];
    const plan = streamKPlan(gpu, M, N, K)!;
    expect(productScratchElements(gpu, M, N, K)).toBe(streamKScratchElements(plan));
    const t = (n: number, l: string) => gpu.tensor([n], l);
    const scratch = t(streamKScratchElements(plan), 'scratch');
    const labels = (ops: Op[]) => ops.map((o) => o.kind === 'dispatch' && o.label);
    const a = t(M * 44, 'a'), b = t(K * N, 'b'), c = t(M * N, 'c');
    expect(labels(matmulWithScratch(gpu, { a, b, c, M, N, K, label: 'p' }, scratch))).toEqual(['p[streamK]', 'p[streamK fixup]']);
    // A's rows 41 apart: not vec4-aligned, the plain kernel
    expect(labels(matmulWithScratch(gpu, { a, b, c, M, N, K, lda: 41, label: 'p' }, scratch))).toEqual(['p']);
    // a scratch too small, or none: the plain kernel
    expect(labels(matmulWithScratch(gpu, { a, b, c, M, N, K, label: 'p' }, t(100, 'small')))).toEqual(['p']);
    expect(labels(matmulWithScratch(gpu, { a, b, c, M, N, K, label: 'p' }, null))).toEqual(['p']);
    // refusals of matmulStreamK itself
    expect(() => matmulStreamK(gpu, { a, b, c, M, N, K }, plan, t(100, 'small'))).toThrow(/needs a scratch of/);
    expect(() => matmulStreamK(gpu, { a, b, c: scratch, M, N, K }, plan, scratch)).toThrow(/must not alias/);
    expect(() => matmulStreamK(gpu, { a: t(M * 80, 'a80'), b: t(80 * N, 'b80'), c, M, N, K: 80 }, plan, scratch)).toThrow(/another shape/);
    expect(() => matmulStreamK(gpu, { a, b, c, M, N, K, lda: 41 }, plan, scratch)).toThrow(/vec4-aligned/);
  });
});

// ---- Triangular products (causal attention: MatmulArgs.triangle) -------------------------------

/** The shaders' TRIANGLE override for each triangle (as kernels/matmul.ts binds it). */
const TRIANGLE_CODE: Record<MatmulTriangle, number> = { lowerA: 1, upperA: 2, lowerC: 3 };

/** Whether op(A)[m][k] lies where the triangle promises a zero. */
const promisedZero = (tri: MatmulTriangle, m: number, k: number): boolean => (tri === 'lowerA' ? k > m : tri === 'upperA' ? k < m : false);

/**
 * Whether a kernel with output tiles of `rows` rows never reads op(A)[m][k] under the triangle:
 * with m0 = floor(m / rows) * rows its tile's first row (a multiple of the K tile, 16), lowerA
 * walks only k < m0 + rows and upperA only k >= m0. Inside the diagonal block (m0 <= k < m0 + rows)
 * a tile does read the promised zeros (whole K tiles are staged), so those must be real zeros; only
 * the region whole row tiles away from the diagonal may hold garbage.
 */
const unread = (tri: MatmulTriangle, rows: number, m: number, k: number): boolean => {
  const m0 = Math.floor(m / rows) * rows;
  return tri === 'lowerA' ? k >= m0 + rows : k < m0;
};

/** Storage index of op(A)[m][k] in batch entry z. */
function indexA(k: Case, z: number, m: number, kk: number): number {
  const batch = k.batch ?? { outer: 1, inner: 1, strideA: [0, 0], strideB: [0, 0], strideC: [0, 0] };
  const lda = k.lda ?? (k.transA ? k.M : k.K);
  const off = (k.offsetA ?? 0) + Math.floor(z / batch.inner) * batch.strideA[0] + (z % batch.inner) * batch.strideA[1];
  return off + (k.transA ? kk * lda + m : m * lda + kk);
}

/** Storage index of C[m][n] in batch entry z. */
function indexC(k: Case, z: number, m: number, n: number): number {
  const batch = k.batch ?? { outer: 1, inner: 1, strideA: [0, 0], strideB: [0, 0], strideC: [0, 0] };
  return (k.offsetC ?? 0) + Math.floor(z / batch.inner) * batch.strideC[0] + (z % batch.inner) * batch.strideC[1] + m * (k.ldc ?? k.N) + n;
}

/** Whether C[m][n] lies in an output tile (rows x cols) wholly above the diagonal: one lowerC skips. */
const inTileAboveDiagonal = (rows: number, cols: number, m: number, n: number): boolean =>
  Math.floor(n / cols) * cols > Math.floor(m / rows) * rows + rows - 1;

/**
 * Runs a triangular product on this kernel (rows x cols tiles; asserting that `pipeline` is the one
 * bound) and compares the whole C buffer with the float64 reference:
 * - lowerA / upperA: A random except the promised region, which is 0 where the kernel reads it
 *   and NaN where it must not (unread()); the reference takes 0 throughout that region. Any NaN
 *   read would poison C. Returns how many NaNs were planted.
 * - lowerC: every tile not wholly above the diagonal must hold the full product (the diagonal's
 *   tiles are computed whole), every tile wholly above must keep C's previous contents exactly
 *   (also under accumulate and bias). Returns how many elements were left so.
 */
async function checkTriangle(
  gpu: Gpu, tri: MatmulTriangle, k: Case, sizes: { a: number; b: number; c: number }, what: string,
  tile: { rows: number; cols: number; pipeline: (k: Case) => GPUComputePipeline }, seed = 7,
): Promise<number> {
  const a = randArray(sizes.a, seed);
  const aRef = Float32Array.from(a);
  const b = randArray(sizes.b, seed + 1);
  const c0 = randArray(sizes.c, seed + 2, 100); // C's previous contents: the "not written" sentinel
  const batchCount = k.batch ? k.batch.outer * k.batch.inner : 1;
  let special = 0;
  if (tri !== 'lowerC') {
    for (let z = 0; z < batchCount; z++) {
      for (let m = 0; m < k.M; m++) {
        for (let kk = 0; kk < k.K; kk++) {
          if (!promisedZero(tri, m, kk)) continue;
          const i = indexA(k, z, m, kk);
          aRef[i] = 0;
          a[i] = unread(tri, tile.rows, m, kk) ? NaN : 0;
          if (Number.isNaN(a[i])) special++;
        }
      }
    }
  }
  const ta = gpu.tensorFrom(a, [sizes.a], 'a');
  const tb = gpu.tensorFrom(b, [sizes.b], 'b');
  const tc = gpu.tensorFrom(c0, [sizes.c], 'c');
  const tbias = k.bias ? gpu.tensorFrom(k.bias, [k.bias.length], 'bias') : undefined;
  const op = matmul(gpu, { ...k, a: ta, b: tb, c: tc, bias: tbias, label: what, triangle: tri });
  expect(op.kind === 'dispatch' && op.pipeline === tile.pipeline(k), `${what} runs the expected kernel`).toBe(true);
  runOps(gpu, [op]);
  const got = await gpu.read(tc);
  const { want, scale } = matmulReference(aRef, b, c0, k);
  if (tri === 'lowerC') {
    for (let z = 0; z < batchCount; z++) {
      for (let m = 0; m < k.M; m++) {
        for (let n = 0; n < k.N; n++) {
          if (!inTileAboveDiagonal(tile.rows, tile.cols, m, n)) continue;
          const ci = indexC(k, z, m, n);
          want[ci] = c0[ci];
          scale[ci] = 0; // bit-exact
          special++;
        }
      }
    }
  }
  expectMatmulClose(got, want, scale, 1e-5, what);
  for (const t of [ta, tb, tc, tbias]) if (t) gpu.destroyTensor(t);
  return special;
}

describe.each([
  ['64x64', false], ['128x128', false], ['128x64', false], ['64x128', false], ['db64x64', false],
  ['64x64', true], ['128x128', true], ['128x64', true], ['64x128', true],
] as [MatmulVariant, boolean][])('triangular matmul, %s tile, vec4 %s', (variant, vec4) => {
  beforeEach(async () => {
    const gpu = await testGpu();
    gpu.tuning.matmul = variant;
    gpu.tuning.vec4Matmul = vec4;
  });
  afterEach(async () => {
    Object.assign((await testGpu()).tuning, DEFAULT_KERNEL_TUNING);
  });
  const { rows, cols } = MATMUL_VARIANTS[variant];
  const tileOf = (gpu: Gpu, tri: MatmulTriangle) => ({
    rows, cols,
    pipeline: (k: Case) => vec4
      ? gpu.pipeline(vec4Code(VEC4_MATMUL_VARIANTS[variant], k), 'x', 'main', { ...vec4Constants(k, rows, cols), TRIANGLE: TRIANGLE_CODE[tri] })
      : gpu.pipeline(MATMUL_VARIANTS[variant].code, 'x', 'main', { TRIANGLE: TRIANGLE_CODE[tri] }),
  });
  // T not a multiple of any tile (and, scalar, of 4); vec4 needs the contiguous dimensions' multiples of 4
  const Todd = vec4 ? 68 : 70;
  const Nodd = vec4 ? 36 : 33;
  // attention out of packed rows: B sequences, H heads of D, prefix tuning's Pre score columns
  // before each row's T (the T part at offsetA / offsetC = Pre); T = 200: 3 64-tiles and 8 rows
  const [B, H, D, Pre, T] = [2, 2, 8, 4, 200];
  const C = H * D, Tk = Pre + T;
  const qkvSize = B * T * 3 * C, attSize = B * H * T * Tk + 3, ctxSize = B * T * C;
  const att = { strideA: [H * T * Tk, T * Tk] as [number, number] };

  for (const tri of ['lowerA', 'upperA'] as const) {
    it(`${tri}: skips the promised-zero half of op(A) (NaN there never read), any transpose, unaligned and aligned T`, async () => {
      const gpu = await testGpu();
      const tile = tileOf(gpu, tri);
      let planted = 0;
      for (const [transA, transB] of [[false, false], [true, false], [false, true]] as [boolean, boolean][]) {
        const k: Case = { M: Todd, N: Nodd, K: Todd, transA, transB };
        planted += await checkTriangle(gpu, tri, k, dense(Todd, Nodd, Todd), `${tri} tA=${transA} tB=${transB} ${Todd}x${Nodd}x${Todd}`, tile);
      }
      // K a whole number of tiles, alpha and bias
      const k: Case = { M: 256, N: 64, K: 256, transA: tri === 'upperA', alpha: -0.75, bias: randArray(64, 5) };
      planted += await checkTriangle(gpu, tri, k, dense(256, 64, 256), `${tri} 256x64x256`, tile);
      expect(planted).toBeGreaterThan(0);
    });
  }

  it('lowerA / upperA: attention\'s P V, dQ, dV and dK per (batch, head) out of packed rows, with accumulate', async () => {
    const gpu = await testGpu();
    let planted = 0;
    // ctx (+)= P V: P [T, Tk] rows from column Pre, V from qkv's third block
    planted += await checkTriangle(gpu, 'lowerA', {
      M: T, N: D, K: T, offsetA: Pre, lda: Tk, offsetB: 2 * C, ldb: 3 * C, ldc: C, accumulate: true,
      batch: { outer: B, inner: H, ...att, strideB: [T * 3 * C, D], strideC: [T * C, D] },
    }, { a: attSize, b: qkvSize, c: ctxSize }, 'ctx += P V', tileOf(gpu, 'lowerA'));
    // dQ = dS K
    planted += await checkTriangle(gpu, 'lowerA', {
      M: T, N: D, K: T, offsetA: Pre, lda: Tk, offsetB: C, ldb: 3 * C, ldc: 3 * C, alpha: 0.5,
      batch: { outer: B, inner: H, ...att, strideB: [T * 3 * C, D], strideC: [T * 3 * C, D] },
    }, { a: attSize, b: qkvSize, c: qkvSize }, 'dQ = dS K', tileOf(gpu, 'lowerA'));
    // dV = P^T dctx, into qkv's third block
    planted += await checkTriangle(gpu, 'upperA', {
      M: T, N: D, K: T, transA: true, offsetA: Pre, lda: Tk, ldb: C, offsetC: 2 * C, ldc: 3 * C,
      batch: { outer: B, inner: H, ...att, strideB: [T * C, D], strideC: [T * 3 * C, D] },
    }, { a: attSize, b: ctxSize, c: qkvSize }, 'dV = P^T dctx', tileOf(gpu, 'upperA'));
    // dK (+)= dS^T Q
    planted += await checkTriangle(gpu, 'upperA', {
      M: T, N: D, K: T, transA: true, offsetA: Pre, lda: Tk, ldb: 3 * C, offsetC: C, ldc: 3 * C, accumulate: true, alpha: 2,
      batch: { outer: B, inner: H, ...att, strideB: [T * 3 * C, D], strideC: [T * 3 * C, D] },
    }, { a: attSize, b: qkvSize, c: qkvSize }, 'dK += dS^T Q', tileOf(gpu, 'upperA'));
    expect(planted).toBeGreaterThan(0);
  });

  it('lowerC: writes every tile touching the lower triangle in full and no tile wholly above it', async () => {
    const gpu = await testGpu();
    const tile = tileOf(gpu, 'lowerC');
    let kept = 0;
    for (const [transA, transB] of [[false, true], [true, false], [false, false]] as [boolean, boolean][]) {
      const K = vec4 ? 20 : 19;
      kept += await checkTriangle(gpu, 'lowerC', { M: Todd, N: Todd, K, transA, transB }, dense(Todd, Todd, K), `lowerC tA=${transA} tB=${transB} ${Todd}x${Todd}x${K}`, tile);
    }
    kept += await checkTriangle(gpu, 'lowerC', { M: 256, N: 256, K: 16, transB: true, accumulate: true, bias: randArray(256, 6) }, dense(256, 256, 16), 'lowerC 256x256x16 accumulate bias', tile);
    // scores = Q K^T / sqrt(D) into the T part of [Tk]-wide rows; dP = dctx V^T
    kept += await checkTriangle(gpu, 'lowerC', {
      M: T, N: T, K: D, lda: 3 * C, offsetB: C, ldb: 3 * C, transB: true, offsetC: Pre, ldc: Tk, alpha: 1 / Math.sqrt(D),
      batch: { outer: B, inner: H, strideA: [T * 3 * C, D], strideB: [T * 3 * C, D], strideC: [H * T * Tk, T * Tk] },
    }, { a: qkvSize, b: qkvSize, c: attSize }, 'scores = Q K^T', tile);
    kept += await checkTriangle(gpu, 'lowerC', {
      M: T, N: T, K: D, lda: C, offsetB: 2 * C, ldb: 3 * C, transB: true, offsetC: Pre, ldc: Tk,
      batch: { outer: B, inner: H, strideA: [T * C, D], strideB: [T * 3 * C, D], strideC: [H * T * Tk, T * Tk] },
    }, { a: ctxSize, b: qkvSize, c: attSize }, 'dP = dctx V^T', tile);
    expect(kept).toBeGreaterThan(0);
  });

  it('softmaxGradOf: C = alpha * P * (A B - delta[z, m]), lowerC writing zeros over the tiles wholly above the diagonal', async () => {
    const gpu = await testGpu();
    const K = vec4 ? 20 : 19;
    const cases: { tri?: MatmulTriangle; k: Case; sizes: { a: number; b: number; c: number }; what: string }[] = [
      // attention's dP = dctx V^T out of packed rows into the T part of [Tk]-wide rows, every (batch, head)
      {
        tri: 'lowerC', what: 'dS = scale * P * (dctx V^T - delta)', sizes: { a: ctxSize, b: qkvSize, c: attSize },
        k: {
          M: T, N: T, K: D, lda: C, offsetB: 2 * C, ldb: 3 * C, transB: true, offsetC: Pre, ldc: Tk, alpha: 1 / Math.sqrt(D),
          batch: { outer: B, inner: H, strideA: [T * C, D], strideB: [T * 3 * C, D], strideC: [H * T * Tk, T * Tk] },
        },
      },
      { tri: 'lowerC', what: `lowerC ${Todd}x${Todd}x${K}`, sizes: dense(Todd, Todd, K), k: { M: Todd, N: Todd, K, transB: true, alpha: -0.5 } },
      { what: `no triangle ${Todd}x${Nodd}x${K}`, sizes: dense(Todd, Nodd, K), k: { M: Todd, N: Nodd, K, alpha: 2 } },
    ];
    let zeroed = 0;
    for (const { tri, k, sizes, what } of cases) {
      const batch = k.batch ?? { outer: 1, inner: 1, strideA: [0, 0], strideB: [0, 0], strideC: [0, 0] };
      const batchCount = batch.outer * batch.inner;
      const a = randArray(sizes.a, 31), b = randArray(sizes.b, 32), probs = randArray(sizes.c, 33), delta = randArray(batchCount * k.M, 34);
      const c0 = new Float32Array(sizes.c).fill(NaN);
      const ta = gpu.tensorFrom(a, [sizes.a], 'a'), tb = gpu.tensorFrom(b, [sizes.b], 'b'), tc = gpu.tensorFrom(c0, [sizes.c], 'c');
      const tp = gpu.tensorFrom(probs, [sizes.c], 'probs'), td = gpu.tensorFrom(delta, [delta.length], 'delta');
      const op = matmul(gpu, { ...k, bias: undefined, a: ta, b: tb, c: tc, triangle: tri, softmaxGradOf: { probs: tp, rowTerms: td }, label: what });
      const kernel = vec4 ? vec4Code(VEC4_MATMUL_VARIANTS[variant], k) : MATMUL_VARIANTS[variant].code;
      const constants = { ...(vec4 ? vec4Constants(k, rows, cols) : {}), ...(tri ? { TRIANGLE: TRIANGLE_CODE[tri] } : {}), SOFTMAX_GRAD: 1 };
      expect(op.kind === 'dispatch' && op.pipeline === gpu.pipeline(kernel, 'x', 'main', constants), `${what} runs the expected kernel`).toBe(true);
      runOps(gpu, [op]);
      const got = await gpu.read(tc);
      const product = matmulReference(a, b, new Float32Array(sizes.c), { ...k, alpha: 1 });
      const want = Float64Array.from(c0), scale = new Float64Array(sizes.c);
      for (let z = 0; z < batchCount; z++) {
        for (let m = 0; m < k.M; m++) {
          for (let n = 0; n < k.N; n++) {
            const i = indexC(k, z, m, n);
            if (tri === 'lowerC' && inTileAboveDiagonal(rows, cols, m, n)) {
              want[i] = 0;
              zeroed++;
            } else {
              const f = (k.alpha ?? 1) * probs[i];
              want[i] = f * (product.want[i] - delta[z * k.M + m]);
              scale[i] = Math.abs(f) * (product.scale[i] + Math.abs(delta[z * k.M + m]));
            }
          }
        }
      }
      // NaN outside C stays NaN; the zeros above the diagonal are exact
      for (let i = 0; i < sizes.c; i++) if (Number.isNaN(want[i])) expect(Number.isNaN(got[i]), `${what}: index ${i} outside C untouched`).toBe(true);
      const inside = (x: ArrayLike<number>) => Float64Array.from(x, (v, i) => (Number.isNaN(want[i]) ? 0 : v));
      expectMatmulClose(Float32Array.from(inside(got)), inside(want), scale, 1e-5, what);
      for (const t of [ta, tb, tc, tp, td]) gpu.destroyTensor(t);
    }
    expect(zeroed).toBeGreaterThan(0);
  });
});

describe('triangular matmul: routing and arguments', () => {
  afterEach(async () => {
    Object.assign((await testGpu()).tuning, DEFAULT_KERNEL_TUNING);
  });

  it('rejects a triangle on a non-square operand, and unknown triangles', async () => {
    const gpu = await testGpu();
    const a = gpu.tensor([6, 6], 'a'), b = gpu.tensor([6, 5], 'b'), c = gpu.tensor([6, 6], 'c');
    expect(() => matmul(gpu, { a, b, c, M: 6, N: 5, K: 6, triangle: 'lowerA' })).not.toThrow();
    expect(() => matmul(gpu, { a, b, c, M: 6, N: 5, K: 6, triangle: 'upperA' })).not.toThrow();
    expect(() => matmul(gpu, { a, b, c, M: 6, N: 6, K: 5, triangle: 'lowerC' })).not.toThrow();
    expect(() => matmul(gpu, { a, b, c, M: 6, N: 6, K: 5, triangle: 'lowerA' })).toThrow(/'lowerA' needs a square op\(A\) \(M == K\) \(got M = 6, N = 6, K = 5\)/);
    expect(() => matmul(gpu, { a, b, c, M: 5, N: 5, K: 6, triangle: 'upperA' })).toThrow(/'upperA' needs a square op\(A\)/);
    expect(() => matmul(gpu, { a, b, c, M: 6, N: 5, K: 6, triangle: 'lowerC' })).toThrow(/'lowerC' needs a square C \(M == N\)/);
    expect(() => matmul(gpu, { a, b, c, M: 6, N: 5, K: 6, triangle: 'upper' as MatmulTriangle })).toThrow(/triangle must be/);
  });

  it('keeps a triangular product off the skinny kernel and out of split-K, still right', async () => {
    const gpu = await testGpu();
    // an 8 x 8 output over K = 200 is the skinny kernel's shape
    expect(usesSkinnyMatmul(gpu, 8, 8, 200, 1, false)).toBe(true);
    const t = (n: number, l: string) => gpu.tensor([n], l);
    const op = matmul(gpu, { a: t(8 * 200, 'a'), b: t(200 * 8, 'b'), c: t(64, 'c'), M: 8, N: 8, K: 200, triangle: 'lowerC' });
    const code = MATMUL_VARIANTS['64x64'].code;
    const vec4Kernel = vec4Code(VEC4_MATMUL_VARIANTS['64x64'], { N: 8 });
    const tiled = [gpu.pipeline(code, 'x', 'main', { TRIANGLE: 3 }), gpu.pipeline(vec4Kernel, 'x', 'main', { K_FAST_A: 1, K_FAST_B: 0, TRIANGLE: 3 })];
    expect(op.kind === 'dispatch' && tiled.includes(op.pipeline)).toBe(true);
    await checkTriangle(gpu, 'lowerC', { M: 8, N: 8, K: 200 }, dense(8, 8, 200), 'lowerC on a skinny shape', { rows: 64, cols: 64, pipeline: () => tiled[1] });
    // split-K: one plain triangular product whatever S (its k runs with m)
    const [M, K, N] = [300, 300, 40];
    const scratch = gpu.tensor([splitKScratchElements(M, N, 4)], 'scratch');
    const ops = matmulSplitK(gpu, { a: t(M * K, 'a'), b: t(K * N, 'b'), c: t(M * N, 'c'), M, N, K, triangle: 'lowerA' }, 4, scratch);
    expect(ops.length).toBe(1);
    let planted = 0;
    await check(gpu, { M, N, K }, dense(M, N, K), 'split-K, no triangle', 1e-5, 3, (args) => matmulSplitK(gpu, args, 4, scratch));
    planted += await checkTriangle(gpu, 'lowerA', { M, N, K }, dense(M, N, K), 'split-K lowerA', {
      rows: 64, cols: 64, pipeline: () => (ops[0] as { pipeline: GPUComputePipeline }).pipeline,
    });
    expect(planted).toBeGreaterThan(0);
    gpu.destroyTensor(scratch);
  });

  it('never picks a tile edge of 128 over an output dimension of 64 or less', async () => {
    const gpu = await testGpu();
    Object.assign(gpu.tuning, DEFAULT_KERNEL_TUNING);
    // attention's P V / dQ / dV / dK in GPT-2: T = 1024 rows, N = D = 64, K = T, B * H = 96 products
    for (const vec4 of [undefined, { transB: false }, { transB: true }]) {
      const v = matmulVariant(gpu, 1024, 64, 1024, 96, vec4);
      expect(v, JSON.stringify(vec4)).toBe('128x64');
      expect(matmulVariant(gpu, 1024, 64, 1024, 4, vec4)).toBe('db64x64'); // 32 workgroups of 128x64: too few
      // enough for 128x128 by count (3200), but half of it empty
      expect(matmulVariant(gpu, 4096, 64, 1024, 100, vec4)).toBe('128x64');
      // and the transposed shape: 64 rows
      expect(matmulVariant(gpu, 64, 1024, 1024, 96, vec4)).toBe('64x128');
      expect(matmulVariant(gpu, 64, 64, 1024, 1000, vec4)).toBe('db64x64');
      expect(matmulVariant(gpu, 100, 64, 1024, 400, vec4)).toBe('128x64'); // 64 < M < 128: the 128-row tile is over half used
    }
    // wide outputs keep their choices
    expect(matmulVariant(gpu, 2048, 2304, 768, 1)).toBe('128x64');
    expect(matmulVariant(gpu, 2048, 2304, 768, 1, { transB: false })).toBe('128x64'); // vec4HalfTile 'tall'
    gpu.tuning.vec4HalfTile = 'byLayout';
    expect(matmulVariant(gpu, 2048, 2304, 768, 1, { transB: false })).toBe('64x128');
    expect(matmulVariant(gpu, 2048, 2304, 768, 1, { transB: true })).toBe('128x64');
    gpu.tuning.vec4HalfTile = DEFAULT_KERNEL_TUNING.vec4HalfTile;
    expect(matmulVariant(gpu, 4096, 4096, 4096, 1)).toBe('128x128');
  });
});

// The causal attention chain as models/gpt2.ts binds it (packed qkv rows, per (batch, head)), its
// score and dP buffers full of NaN beforehand (what stale tiles above the diagonal could hold):
// the triangular products and the causal softmax must never read them.
describe('softmaxGradOf: routing and arguments', () => {
  it('keeps the fused softmax backward off the skinny kernel, split-K and stream-K, and refuses what it cannot take', async () => {
    const gpu = await testGpu();
    // 300 x 8 x 200 would take the skinny kernel; with softmaxGradOf it is the one tiled product, whatever the scratch
    const [M, N, K] = [300, 8, 200];
    const a = gpu.tensorFrom(randArray(M * K, 41), [M, K], 'a'), b = gpu.tensorFrom(randArray(K * N, 42), [K, N], 'b');
    const c = gpu.tensor([M, N], 'c'), probs = gpu.tensorFrom(randArray(M * N, 43), [M, N], 'probs'), rowTerms = gpu.tensorFrom(randArray(M, 44), [M], 'delta');
    const scratch = gpu.tensor([1 << 20], 'scratch');
    expect(usesSkinnyMatmul(gpu, M, N, K, 1, false)).toBe(true);
    const args: MatmulArgs = { a, b, c, M, N, K, softmaxGradOf: { probs, rowTerms } };
    for (const ops of [matmulWithScratch(gpu, args, scratch), matmulSplitK(gpu, args, 4, scratch), [matmul(gpu, args)]]) {
      expect(ops).toHaveLength(1);
      expect(ops[0].kind === 'dispatch' && ops[0].label).toBe('matmul(c)');
    }
    runOps(gpu, [matmul(gpu, args)]);
    const got = await gpu.read(c);
    const [ha, hb, hp, hd] = await Promise.all([a, b, probs, rowTerms].map((t) => gpu.read(t)));
    const product = matmulReference(ha, hb, new Float32Array(M * N), { M, N, K });
    const want = product.want.map((v, i) => hp[i] * (v - hd[Math.floor(i / N)]));
    const scale = product.scale.map((v, i) => Math.abs(hp[i]) * (v + Math.abs(hd[Math.floor(i / N)])));
    expectMatmulClose(got, want, scale, 1e-5, 'skinny shape through the fused softmax backward');

    const refuse = (extra: Partial<MatmulArgs>, pattern: RegExp) => expect(() => matmul(gpu, { ...args, ...extra })).toThrow(pattern);
    refuse({ accumulate: true }, /softmaxGradOf takes no accumulate, bias or GELU/);
    refuse({ bias: gpu.tensor([N], 'bias') }, /softmaxGradOf takes no accumulate, bias or GELU/);
    refuse({ geluA: 'tanh' }, /softmaxGradOf takes no accumulate, bias or GELU/);
    refuse({ softmaxGradOf: { probs: c, rowTerms } }, /softmaxGradOf.probs must not alias c/);
    refuse({ softmaxGradOf: { probs, rowTerms: c } }, /softmaxGradOf.rowTerms must not alias c/);
    refuse({ softmaxGradOf: { probs: gpu.tensor([M * N - 1], 'short'), rowTerms } }, /softmaxGradOf.probs \(short, 2399 elements\) would be read at index 2399/);
    refuse({ softmaxGradOf: { probs, rowTerms: gpu.tensor([M - 1], 'few') } }, /softmaxGradOf.rowTerms \(few\) has 299 elements, need batch \* M = 300/);
    refuse({ softmaxGradOf: { probs: gpu.tensor([M * N], 'ints', 'u32'), rowTerms } }, /softmaxGradOf.probs \(ints\) is u32, expected f32/);
    const plan = streamKPlan(gpu, 256, 256, 4096)!;
    const sk = [gpu.tensor([256 * 4096], 'A'), gpu.tensor([4096 * 256], 'B'), gpu.tensor([256 * 256], 'C'), gpu.tensor([256 * 256], 'P'), gpu.tensor([256], 'd'), gpu.tensor([streamKScratchElements(plan)], 'parts')];
    const [A, Bm, Cm, P, d, parts] = sk;
    expect(() => matmulStreamK(gpu, { a: A, b: Bm, c: Cm, M: 256, N: 256, K: 4096 }, plan, parts)).not.toThrow();
    expect(() => matmulStreamK(gpu, { a: A, b: Bm, c: Cm, M: 256, N: 256, K: 4096, softmaxGradOf: { probs: P, rowTerms: d } }, plan, parts)).toThrow(/without a triangle or softmaxGradOf/);
    for (const t of [a, b, c, probs, rowTerms, scratch, ...sk]) gpu.destroyTensor(t);
  });

  it('attentionRowDelta: rowsum(dout * out) per (sequence, head, position) out of strided rows, both kernels, and its refusals', async () => {
    const gpu = await testGpu();
    // [D, out's offset, out's row stride]: unaligned (a thread per row), aligned (D / 4 threads per
    // row, vec4s; 3 lanes leave one thread of each workgroup idle), and many rows over several workgroups
    for (const [B, T, H, D, off, ld] of [[2, 5, 3, 8, 2, 26], [2, 5, 3, 8, 4, 28], [3, 7, 2, 12, 8, 24], [2, 150, 4, 64, 0, 256]]) {
      const out = randArray(off + B * T * ld, 51), dout = randArray(B * T * H * D, 52);
      const tOut = gpu.tensorFrom(out, [out.length], 'out'), tDout = gpu.tensorFrom(dout, [dout.length], 'dout');
      const tDelta = gpu.tensorFrom(new Float32Array(B * H * T + 1).fill(NaN), [B * H * T + 1], 'delta');
      const args = { B, T, H, D, out: tOut, offsetO: off, ldo: ld, dout: tDout, lddo: H * D, delta: tDelta };
      const op = attentionRowDelta(gpu, args);
      const vec4 = off % 4 === 0 && ld % 4 === 0;
      const pipeline = gpu.pipeline(rowDeltaCode, 'x', vec4 ? 'main_vec4' : 'main', vec4 ? { LANES: D / 4 } : undefined);
      expect(op.pipeline === pipeline, `D ${D} offset ${off} ld ${ld}: the ${vec4 ? 'vec4' : 'scalar'} kernel`).toBe(true);
      runOps(gpu, [op]);
      const got = await gpu.read(tDelta);
      const want = new Float64Array(B * H * T), scale = new Float64Array(B * H * T);
      for (let b = 0; b < B; b++) for (let h = 0; h < H; h++) for (let t = 0; t < T; t++) {
        let x = 0, size = 0;
        for (let d = 0; d < D; d++) {
          const term = out[off + (b * T + t) * ld + h * D + d] * dout[(b * T + t) * H * D + h * D + d];
          x += term;
          size += Math.abs(term);
        }
        want[(b * H + h) * T + t] = x;
        scale[(b * H + h) * T + t] = size;
      }
      expectMatmulClose(got.subarray(0, B * H * T), want, scale, 1e-6, `delta, D ${D} offset ${off} ld ${ld}`);
      expect(Number.isNaN(got[B * H * T])).toBe(true);
      if (D === 8 && off === 2) {
        expect(() => attentionRowDelta(gpu, { ...args, D: 6, ldo: 18, lddo: 18 })).toThrow(/D must be a multiple of 4 \(got 6\)/);
        expect(() => attentionRowDelta(gpu, { ...args, ldo: 20 })).toThrow(/row stride of out must be an integer >= 24/);
        expect(() => attentionRowDelta(gpu, { ...args, delta: tDout })).toThrow(/delta must not share a buffer with dout/);
        expect(() => attentionRowDelta(gpu, { ...args, T: 6 })).toThrow(/out \(out, \d+ elements\) would be accessed at index/);
      }
      for (const t of [tOut, tDout, tDelta]) gpu.destroyTensor(t);
    }
  });
});

describe('causal attention out of triangular products', () => {
  afterEach(async () => {
    Object.assign((await testGpu()).tuning, DEFAULT_KERNEL_TUNING);
  });

  it('matches a float64 attention forward and backward, never reading the stale half', { timeout: 600_000 }, async () => {
    const gpu = await testGpu();
    const [B, H, D, T] = [2, 2, 8, 150];
    const C = H * D, scale = 1 / Math.sqrt(D);
    const lengths = [T, 131];
    const qkv = randArray(B * T * 3 * C, 80), dctx = randArray(B * T * C, 81);
    // float64 reference
    const ctxRef = new Float64Array(B * T * C), dqkvRef = new Float64Array(B * T * 3 * C);
    for (let b = 0; b < B; b++) {
      for (let h = 0; h < H; h++) {
        const q = (i: number, d: number) => qkv[(b * T + i) * 3 * C + h * D + d];
        const k = (j: number, d: number) => qkv[(b * T + j) * 3 * C + C + h * D + d];
        const v = (j: number, d: number) => qkv[(b * T + j) * 3 * C + 2 * C + h * D + d];
        const g = (i: number, d: number) => dctx[(b * T + i) * C + h * D + d];
        for (let i = 0; i < T; i++) {
          const lim = Math.min(i + 1, lengths[b]);
          const s = Array.from({ length: lim }, (_, j) => { let x = 0; for (let d = 0; d < D; d++) x += q(i, d) * k(j, d); return scale * x; });
          const mx = Math.max(...s);
          const e = s.map((x) => Math.exp(x - mx));
          const sum = e.reduce((x, y) => x + y, 0);
          const p = e.map((x) => x / sum);
          const dp = p.map((_, j) => { let x = 0; for (let d = 0; d < D; d++) x += g(i, d) * v(j, d); return x; });
          const dot = p.reduce((acc, pj, j) => acc + pj * dp[j], 0);
          for (let j = 0; j < lim; j++) {
            const ds = scale * p[j] * (dp[j] - dot);
            for (let d = 0; d < D; d++) {
              ctxRef[(b * T + i) * C + h * D + d] += p[j] * v(j, d);
              dqkvRef[(b * T + j) * 3 * C + 2 * C + h * D + d] += p[j] * g(i, d); // dV
              dqkvRef[(b * T + i) * 3 * C + h * D + d] += ds * k(j, d); // dQ
              dqkvRef[(b * T + j) * 3 * C + C + h * D + d] += ds * q(i, d); // dK
            }
          }
        }
      }
    }
    for (const [variant, vec4] of [['auto', true], ['auto', false], ['128x64', true], ['64x128', false]] as const) {
      gpu.tuning.matmul = variant;
      gpu.tuning.vec4Matmul = vec4;
      const what = `causal attention, ${variant} vec4 ${vec4}`;
      const nan = new Float32Array(B * H * T * T).fill(NaN);
      const tQkv = gpu.tensorFrom(qkv, [B * T, 3 * C], 'qkv');
      const tDctx = gpu.tensorFrom(dctx, [B * T, C], 'dctx');
      const tAtt = gpu.tensorFrom(nan, [B * H, T, T], 'att');
      const tDP = gpu.tensorFrom(nan, [B * H, T, T], 'dP');
      const tCtx = gpu.tensorFrom(new Float32Array(B * T * C).fill(NaN), [B * T, C], 'ctx');
      const tDqkv = gpu.tensorFrom(new Float32Array(B * T * 3 * C).fill(NaN), [B * T, 3 * C], 'dqkv');
      const tLen = gpu.tensorFrom(Uint32Array.from(lengths), [B], 'lengths');
      const qkvBatch = { outer: B, inner: H };
      const attStride = { strideA: [H * T * T, T * T] as [number, number] };
      // dQ = dS K and dK = dS^T Q, from dS [B*H, T, T] into the q and k columns of `out`'s packed rows
      const dQdK = (dS: Tensor, out: Tensor): Op[] => [
        matmul(gpu, {
          triangle: 'lowerA', a: dS, lda: T, b: tQkv, offsetB: C, ldb: 3 * C, c: out, ldc: 3 * C, M: T, N: D, K: T,
          batch: { ...qkvBatch, ...attStride, strideB: [T * 3 * C, D], strideC: [T * 3 * C, D] },
        }),
        matmul(gpu, {
          triangle: 'upperA', a: dS, lda: T, transA: true, b: tQkv, ldb: 3 * C, c: out, offsetC: C, ldc: 3 * C, M: T, N: D, K: T,
          batch: { ...qkvBatch, ...attStride, strideB: [T * 3 * C, D], strideC: [T * 3 * C, D] },
        }),
      ];
      runOps(gpu, [
        matmul(gpu, {
          triangle: 'lowerC', a: tQkv, lda: 3 * C, b: tQkv, offsetB: C, ldb: 3 * C, transB: true, c: tAtt, ldc: T, M: T, N: T, K: D,
          batch: { ...qkvBatch, strideA: [T * 3 * C, D], strideB: [T * 3 * C, D], strideC: [H * T * T, T * T] },
        }),
        attentionSoftmaxForward(gpu, { scores: tAtt, probs: tAtt, lengths: tLen, B, H, T, scale, causal: true }),
        matmul(gpu, {
          triangle: 'lowerA', a: tAtt, lda: T, b: tQkv, offsetB: 2 * C, ldb: 3 * C, c: tCtx, ldc: C, M: T, N: D, K: T,
          batch: { ...qkvBatch, ...attStride, strideB: [T * 3 * C, D], strideC: [T * C, D] },
        }),
        matmul(gpu, {
          triangle: 'lowerC', a: tDctx, lda: C, b: tQkv, offsetB: 2 * C, ldb: 3 * C, transB: true, c: tDP, ldc: T, M: T, N: T, K: D,
          batch: { ...qkvBatch, strideA: [T * C, D], strideB: [T * 3 * C, D], strideC: [H * T * T, T * T] },
        }),
        matmul(gpu, {
          triangle: 'upperA', a: tAtt, lda: T, transA: true, b: tDctx, ldb: C, c: tDqkv, offsetC: 2 * C, ldc: 3 * C, M: T, N: D, K: T,
          batch: { ...qkvBatch, ...attStride, strideB: [T * C, D], strideC: [T * 3 * C, D] },
        }),
        attentionSoftmaxBackward(gpu, { dprobs: tDP, probs: tAtt, dscores: tDP, B, H, T, scale, causal: true }),
        ...dQdK(tDP, tDqkv),
      ]);
      expectClose(await gpu.read(tCtx), ctxRef, 1e-4, `${what}: ctx`);
      expectClose(await gpu.read(tDqkv), dqkvRef, 1e-4, `${what}: dq, dk, dv`);

      // the softmax backward fused into dP's product (softmaxGradOf, with delta = rowsum(dctx * ctx)),
      // dP on 64x64 tiles and dQ / dK on this case's: with 128-row tiles these read dS tiles wholly
      // above the diagonal inside their diagonal blocks, which the fused product must have zeroed
      const tDelta = gpu.tensorFrom(new Float32Array(B * H * T).fill(NaN), [B * H * T], 'delta');
      const tDS = gpu.tensorFrom(nan, [B * H, T, T], 'dS');
      const tDqk = gpu.tensorFrom(new Float32Array(B * T * 3 * C).fill(NaN), [B * T, 3 * C], 'dqk');
      gpu.tuning.matmul = '64x64';
      const dS = matmul(gpu, {
        triangle: 'lowerC', a: tDctx, lda: C, b: tQkv, offsetB: 2 * C, ldb: 3 * C, transB: true, c: tDS, ldc: T, M: T, N: T, K: D, alpha: scale,
        softmaxGradOf: { probs: tAtt, rowTerms: tDelta },
        batch: { ...qkvBatch, strideA: [T * C, D], strideB: [T * 3 * C, D], strideC: [H * T * T, T * T] },
      });
      gpu.tuning.matmul = variant;
      runOps(gpu, [
        attentionRowDelta(gpu, { B, T, H, D, out: tCtx, ldo: C, dout: tDctx, lddo: C, delta: tDelta }),
        dS,
        ...dQdK(tDS, tDqk),
      ]);
      const dqk = await gpu.read(tDqk), ref = Float64Array.from(dqkvRef);
      for (let r = 0; r < B * T; r++) for (let c = 2 * C; c < 3 * C; c++) ref[r * 3 * C + c] = dqk[r * 3 * C + c] = 0; // dV: not computed here
      expectClose(dqk, ref, 1e-4, `${what}: dq, dk through the fused softmax backward`);
      for (const t of [tQkv, tDctx, tAtt, tDP, tCtx, tDqkv, tLen, tDelta, tDS, tDqk]) gpu.destroyTensor(t);
    }
  });
});

describe('generated matmul shaders', () => {
  it('are what scripts/gen-matmul-wide.mjs makes (edit the generator, then run it)', async () => {
    const fs = await import('node:fs');
    const path = await import('node:path');
    const generator: string = path.join(__dirname, '..', 'scripts', 'gen-matmul-wide.mjs');
    const gen = await import(generator);
    const read = (name: string) => fs.readFileSync(path.join(__dirname, '..', 'shaders', `${name}.wgsl`), 'utf8');
    const made: [string, string][] = [
      ...gen.WIDE_VARIANTS.map((v: { name: string }) => [v.name, gen.wideMatmulWgsl(v)]),
      ...gen.VEC4_VARIANTS.map((v: { name: string }) => [v.name, gen.vec4MatmulWgsl(v)]),
      ...gen.VEC4_C4_VARIANTS.map((v: { name: string }) => [`${v.name}_c4`, gen.vec4MatmulWgsl({ ...v, c4: true })]),
      ...gen.STREAMK_VARIANTS.map((v: { name: string }) => [v.name, gen.vec4MatmulWgsl({ ...v, streamK: true })]),
    ];
    expect(made.length).toBe(12);
    for (const [name, code] of made) expect(read(name), name).toBe(code);
  });
});
