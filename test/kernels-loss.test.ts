// Cross-entropy (loss and in-place logits gradient) and the loss-sum reduction against float64
// references; the reference gradient against finite differences of the reference loss.
import { describe, expect, it } from 'vitest';
import { testGpu, randArray, rng, expectClose, f64 } from './helpers/gpu';
import type { Gpu } from '../src/engine/gpu/gpu';
import { runOps, type Dispatch, type Op } from '../src/engine/gpu/dispatch';
import { crossEntropy, crossEntropyThreads } from '../src/engine/kernels/cross-entropy';
import { reduceSum } from '../src/engine/kernels/reduce-sum';
import { folded } from './helpers/kernel-check';

/** Binds and runs ops, failing on any WebGPU validation error (they are otherwise only logged). */
async function run(gpu: Gpu, make: () => Op[]): Promise<void> {
  gpu.device.pushErrorScope('validation');
  runOps(gpu, make());
  const err = await gpu.device.popErrorScope();
  if (err) throw new Error(`WebGPU validation error: ${err.message}`);
}

// ---------------------------------------------------------------- cross-entropy

/** Loss of one row and its gradient (unscaled), in f64. target < 0: ignored. */
function ceRowRef(logits: ArrayLike<number>, target: number): { loss: number; grad: Float64Array } {
  const V = logits.length;
  const grad = new Float64Array(V);
  if (target < 0) return { loss: 0, grad };
  let m = -Infinity;
  for (let c = 0; c < V; c++) m = Math.max(m, logits[c]);
  let s = 0;
  for (let c = 0; c < V; c++) s += Math.exp(logits[c] - m);
  for (let c = 0; c < V; c++) grad[c] = Math.exp(logits[c] - m) / s - (c === target ? 1 : 0);
  return { loss: m + Math.log(s) - logits[target], grad };
}

describe('crossEntropy', () => {
  it('reference gradient matches finite differences of the reference loss', () => {
    const V = 9;
    const x = f64(randArray(V, 70, 3));
    const { grad } = ceRowRef(x, 4);
    const num = new Float64Array(V);
    for (let c = 0; c < V; c++) {
      const xp = Float64Array.from(x), xm = Float64Array.from(x);
      xp[c] += 1e-6;
      xm[c] -= 1e-6;
      num[c] = (ceRowRef(xp, 4).loss - ceRowRef(xm, 4).loss) / 2e-6;
    }
    expectClose(grad, num, 1e-6, 'cross-entropy reference gradient vs finite differences');
  });

  interface CheckOpts {
    scale?: number;
    rowOffset?: number;
    extremes?: boolean;
    fold?: [number, number];
    /** Row stride (default V); the padding [V, ld) of every row is NaN and must stay untouched (bit for bit). */
    ld?: number;
    threads?: number;
    workgroups?: number;
    /** Logits set to NaN: [row, column] (the row's loss must be NaN). */
    nans?: [number, number][];
  }

  async function check(rows: number, V: number, targets: number[], seed: number, opts: CheckOpts = {}) {
    const gpu = await testGpu();
    const ld = opts.ld ?? V;
    const dense = randArray(rows * V, seed, opts.scale ?? 4);
    if (opts.extremes) {
      // Rows with logits at +-80: exp(80) ~ 5.5e34 and exp(160) overflow without max subtraction.
      const r = rng(seed + 1);
      for (let i = 0; i < dense.length; i++) dense[i] = r() < 0.5 ? 80 - r() : -80 + r();
      for (let row = 0; row < rows; row++) if (targets[row] >= 0) dense[row * V + targets[row]] = row % 2 ? 80 : -80;
    }
    for (const [r, c] of opts.nans ?? []) dense[r * V + c] = NaN;
    // rows ld apart, exactly (rows-1)*ld+V elements; NaN padding (a kernel reading it gets NaN losses)
    const logits = new Float32Array((rows - 1) * ld + V).fill(NaN);
    for (let r = 0; r < rows; r++) logits.set(dense.subarray(r * V, (r + 1) * V), r * ld);
    const gradScale = 0.37;
    const rowOffset = opts.rowOffset ?? 0;
    const tLogits = gpu.tensorFrom(logits, [logits.length], 'logits');
    // Targets are read at targets[rowOffset + r] (the batch's targets; logits are one block of rows).
    // The entries before the block are valid ids that must not be used.
    const allTargets = Int32Array.from([...Array.from({ length: rowOffset }, (_, i) => (i * 7) % V), ...targets]);
    const tTargets = gpu.tensorFrom(allTargets, [allTargets.length], 'targets');
    const lossesInit = randArray(rowOffset + rows + 2, seed + 2, 9);
    const tLosses = gpu.tensorFrom(lossesInit, [lossesInit.length], 'losses');
    const tScale = gpu.tensorFrom(Float32Array.of(gradScale), [1], 'gradScale');
    await run(gpu, () => {
      const d = crossEntropy(gpu, { logits: tLogits, targets: tTargets, losses: tLosses, rowOffset, gradScale: tScale, rows, V, ld, threads: opts.threads, workgroups: opts.workgroups });
      return [opts.fold ? folded(d, opts.fold[0], opts.fold[1]) : d];
    });
    const gotLoss = await gpu.read(tLosses);
    const gotAll = await gpu.read(tLogits);
    const what = `cross-entropy rows=${rows} V=${V} ld=${ld}${opts.threads ? ` threads=${opts.threads}` : ''}${opts.workgroups ? ` workgroups=${opts.workgroups}` : ''}`;
    const gotBits = new Uint32Array(gotAll.buffer), inBits = new Uint32Array(logits.buffer);
    for (let r = 0; r < rows; r++) {
      for (let c = V; c < Math.min(ld, logits.length - r * ld); c++) {
        if (gotBits[r * ld + c] !== inBits[r * ld + c]) throw new Error(`${what}: padding of row ${r} column ${c} was overwritten (${gotAll[r * ld + c]})`);
      }
    }
    const gotGrad = new Float32Array(rows * V);
    for (let r = 0; r < rows; r++) gotGrad.set(gotAll.subarray(r * ld, r * ld + V), r * V);
    const nanRows = new Set((opts.nans ?? []).map(([r]) => r));
    const wantLoss = f64(lossesInit);
    const wantGrad = new Float64Array(rows * V);
    for (let r = 0; r < rows; r++) {
      if (nanRows.has(r) && targets[r] >= 0) {
        // A NaN logit gives a NaN loss and gradient row (an ignored row stays loss 0, zero gradient).
        if (!Number.isNaN(gotLoss[rowOffset + r])) throw new Error(`${what}: row ${r} with a NaN logit has loss ${gotLoss[rowOffset + r]}`);
        if (!gotGrad.subarray(r * V, (r + 1) * V).every(Number.isNaN)) throw new Error(`${what}: row ${r} with a NaN logit has a non-NaN gradient`);
        wantLoss[rowOffset + r] = gotLoss[rowOffset + r] = 0;
        gotGrad.fill(0, r * V, (r + 1) * V);
        continue;
      }
      const ref = ceRowRef(dense.subarray(r * V, (r + 1) * V), targets[r]);
      wantLoss[rowOffset + r] = ref.loss;
      for (let c = 0; c < V; c++) wantGrad[r * V + c] = ref.grad[c] * gradScale;
    }
    // The loss is (max - x_t) + log(sum): each term carries an absolute f32 error of a few ulps of
    // its own size (up to ~160 at +-80 logits), so small losses are compared against 10% of the
    // largest. Elements of losses outside [rowOffset, rowOffset + rows) must stay untouched.
    expectClose(gotLoss, wantLoss, 2e-6, `${what} losses`, 0.1);
    // softmax - onehot: each probability has a few ulps of error from exp and 1/sum.
    expectClose(gotGrad, wantGrad, 1e-5, `${what} grad`);
    for (let r = 0; r < rows; r++) {
      if (targets[r] >= 0) continue;
      expect(gotLoss[rowOffset + r]).toBe(0);
      expect(gotGrad.subarray(r * V, (r + 1) * V).every((g) => g === 0), `${what}: ignored row ${r}`).toBe(true);
    }
  }

  it('reads and writes rows ld apart, leaving the padding between them untouched', async () => {
    const gpu = await testGpu();
    const [rows, V, ld] = [4, 301, 304];
    const targets = [5, -100, 300, 0];
    const padded = randArray(rows * ld, 81, 4);
    const tLogits = gpu.tensorFrom(padded, [rows * ld], 'logits');
    const tTargets = gpu.tensorFrom(Int32Array.from(targets), [rows], 'targets');
    const tLosses = gpu.tensorFrom(new Float32Array(rows), [rows], 'losses');
    const tScale = gpu.tensorFrom(Float32Array.of(0.5), [1], 'gradScale');
    await run(gpu, () => [crossEntropy(gpu, { logits: tLogits, targets: tTargets, losses: tLosses, gradScale: tScale, rows, V, ld })]);
    const gotLoss = await gpu.read(tLosses);
    const gotGrad = await gpu.read(tLogits);
    for (let r = 0; r < rows; r++) {
      const ref = ceRowRef(padded.subarray(r * ld, r * ld + V), targets[r]);
      expect(Math.abs(gotLoss[r] - ref.loss), `row ${r} loss`).toBeLessThan(2e-5 * Math.max(1, ref.loss));
      for (let c = 0; c < V; c++) expect(Math.abs(gotGrad[r * ld + c] - 0.5 * ref.grad[c]), `row ${r} column ${c}`).toBeLessThan(1e-6);
      for (let c = V; c < ld; c++) expect(gotGrad[r * ld + c], `row ${r} padding ${c}`).toBe(padded[r * ld + c]);
    }
    expect(() => crossEntropy(gpu, { logits: tLogits, targets: tTargets, losses: tLosses, gradScale: tScale, rows, V, ld: 300 })).toThrow(/ld = 300 must be >= V = 301/);
    expect(() => crossEntropy(gpu, { logits: tLogits, targets: tTargets, losses: tLosses, gradScale: tScale, rows, V, ld: 310 })).toThrow(/\(rows-1\)\*ld\+V=1231/);
  });

  it('matches the reference with ignored rows and V not a multiple of 256', async () => {
    // Targets in the first and last column and in columns owned by different threads.
    await check(6, 1000, [3, -100, 999, 0, -1, 517], 71, { rowOffset: 3 });
    await check(3, 7, [6, 0, -100], 72); // V smaller than the workgroup
  });

  it('is stable for logits at +-80', async () => {
    await check(4, 300, [5, 299, -100, 0], 73, { extremes: true });
  });

  it('handles GPT-2 vocabulary rows (V = 50257)', async () => {
    await check(2, 50257, [50256, 12345], 74, { scale: 10 });
  });

  it('handles rows folded into the y dimension', async () => {
    await check(5, 260, [1, 259, -100, 7, 100], 75, { fold: [2, 3] }); // 6 workgroups for 5 rows
  });

  it('handles every V % 4 with rows 16-byte aligned (ld % 4 == 0): whole vec4s and 1-3 columns after them', async () => {
    // targets in the last columns (the ones past the whole vec4s), in each lane of a vec4, and ignored rows
    await check(4, 300, [299, 1, -100, 298], 90, { ld: 300 });
    await check(4, 301, [300, 299, 2, -100], 91, { ld: 304 });
    await check(4, 302, [301, 300, 3, -100], 92, { ld: 304 });
    await check(4, 303, [302, 301, 300, 0], 93, { ld: 308, threads: 16 });
  });

  it('handles rows that are not 16-byte aligned (ld % 4 != 0): 1-3 columns before the whole vec4s', async () => {
    // ld = 301: rows start 0, 1, 2, 3 elements past a vec4 boundary (0, 3, 2, 1 columns before the first whole one)
    await check(5, 301, [300, 2, 1, 0, 150], 94, { ld: 301 });
    await check(5, 298, [0, 1, -100, 3, 297], 95, { ld: 299, threads: 32 });
    await check(4, 301, [5, 296, 297, 298], 96, { ld: 302, extremes: true });
  });

  it('handles V < 4 and rows shorter than a vec4', async () => {
    await check(3, 1, [0, -100, 0], 97, { ld: 4 });
    await check(5, 1, [0, 0, -100, 0, 0], 98);
    await check(6, 2, [1, 0, -100, 1, 0, 1], 99);
    await check(6, 3, [2, 0, 1, -100, 2, 1], 100);
    await check(4, 3, [2, 0, 1, 2], 101, { ld: 4 });
    await check(4, 3, [0, 2, 1, 1], 102, { ld: 5, threads: 8 });
  });

  it('keeps 4 vec4 loads in flight and handles the remainder, with few threads', async () => {
    // 8 threads: 32 vec4s per unrolled step; 75 (or 74 + the edges) whole vec4s per row
    await check(3, 300, [0, 299, 123], 103, { threads: 8 });
    await check(3, 301, [300, 4, 150], 104, { threads: 8, ld: 301 });
    await check(2, 4096 + 13, [4100, 7], 105, { threads: 64, ld: 4112 });
  });

  it('loops over rows when there are fewer workgroups than rows', async () => {
    await check(7, 301, [3, -100, 300, 0, -1, 17, 299], 106, { workgroups: 3, threads: 32, rowOffset: 2 });
    await check(5, 260, [1, 259, -100, 7, 100], 107, { fold: [1, 2] });
  });

  it('propagates a NaN logit into the loss', async () => {
    // NaN in a whole vec4, before and after them, on the target, and in an ignored row
    await check(6, 301, [5, 7, 9, -100, 300, 11], 108, { ld: 301, nans: [[0, 100], [1, 1], [2, 300], [3, 50], [4, 300], [5, 0]] });
    await check(2, 50257, [10, 50256], 109, { nans: [[0, 40000], [1, 50255]] });
  });

  it('gives a NaN loss for a target past the vocabulary', async () => {
    const gpu = await testGpu();
    const V = 10;
    const tLogits = gpu.tensorFrom(randArray(V, 76), [1, V], 'logits');
    const tLosses = gpu.tensor([1], 'losses');
    await run(gpu, () => [crossEntropy(gpu, {
      logits: tLogits, targets: gpu.tensorFrom(Int32Array.of(V), [1], 't'), losses: tLosses,
      gradScale: gpu.tensorFrom(Float32Array.of(1), [1], 's'), rows: 1, V,
    })]);
    expect(Number.isNaN((await gpu.read(tLosses))[0])).toBe(true);
  });

  it('rejects bad arguments', async () => {
    const gpu = await testGpu();
    const logits = gpu.tensor([2, 10], 'logits'), losses = gpu.tensor([2], 'losses'), s = gpu.tensor([1], 's');
    const targets = gpu.tensorFrom(Int32Array.of(1, 2), [2], 't');
    const base = { logits, targets, losses, gradScale: s, rows: 2, V: 10 };
    expect(() => crossEntropy(gpu, { ...base, targets: gpu.tensorFrom(Uint32Array.of(1, 2), [2], 'u') })).toThrow(/i32/);
    expect(() => crossEntropy(gpu, { ...base, rowOffset: 1 })).toThrow(/targets has 2 elements/);
    expect(() => crossEntropy(gpu, { ...base, targets: gpu.tensorFrom(Int32Array.of(1, 2, 3), [3], 't3'), rowOffset: 1 })).toThrow(/losses/);
    expect(() => crossEntropy(gpu, { ...base, V: 11 })).toThrow(/logits/);
    for (const threads of [4, 12, 2 * gpu.info.limits.maxComputeInvocationsPerWorkgroup]) {
      expect(() => crossEntropy(gpu, { ...base, threads })).toThrow(/threads = \d+ must be a power of two/);
    }
    expect(() => crossEntropy(gpu, { ...base, workgroups: 0 })).toThrow(/workgroups/);
    // default threads per row: ~1 per 16 columns, a power of two in [64, min(1024, the device's limit)]
    expect([crossEntropyThreads(50257, 1024), crossEntropyThreads(50257, 256), crossEntropyThreads(1000, 1024), crossEntropyThreads(2, 1024), crossEntropyThreads(4097, 1024)]).toEqual([1024, 256, 64, 64, 512]);
  });
});

// ---------------------------------------------------------------- reduce-sum

describe('reduceSum', () => {
  it('sums with and without accumulation, for n around and far above the workgroup size', async () => {
    const gpu = await testGpu();
    for (const n of [0, 1, 255, 257, 100_003]) {
      const x = randArray(Math.max(n, 1), 80 + n, 5);
      const tx = gpu.tensorFrom(x, [x.length], 'x');
      const prior = Float32Array.of(1.5, -2.25, 7, 0.125);
      const out = gpu.tensorFrom(prior, [4], 'out');
      await run(gpu, () => [
        reduceSum(gpu, { x: tx, n, out }), // outIndex 0, overwrite
        reduceSum(gpu, { x: tx, n, out, outIndex: 2, accumulate: true }),
      ]);
      let s = 0;
      let sAbs = 0;
      for (let i = 0; i < n; i++) {
        s += x[i];
        sAbs += Math.abs(x[i]);
      }
      const got = await gpu.read(out);
      // Error bound of a compensated f32 sum: a few ulps of sum |x|.
      const tol = 4 * 2 ** -24 * sAbs + 1e-7;
      expect(Math.abs(got[0] - s)).toBeLessThanOrEqual(tol);
      expect(Math.abs(got[2] - (7 + s))).toBeLessThanOrEqual(tol + 1e-6);
      expect([got[1], got[3]]).toEqual([prior[1], prior[3]]);
    }
  });

  it('sums a million per-token losses accurately', async () => {
    const gpu = await testGpu();
    const n = 1_000_000;
    const x = randArray(n, 81, 5).map((v) => v + 5); // losses in [0, 10)
    const tx = gpu.tensorFrom(x, [n], 'x'), out = gpu.tensor([1], 'out');
    await run(gpu, () => [reduceSum(gpu, { x: tx, n, out })]);
    let s = 0;
    for (let i = 0; i < n; i++) s += x[i];
    // Each thread adds ~3900 values: its partial reaches ~2e4 (ulp 2e-3), which Kahan compensates.
    expectClose(await gpu.read(out), [s], 1e-6, 'reduceSum 1e6');
  });

  it('rejects bad arguments', async () => {
    const gpu = await testGpu();
    const x = gpu.tensor([10], 'x'), out = gpu.tensor([2], 'out');
    expect(() => reduceSum(gpu, { x, n: 11, out })).toThrow(/x must be f32 with n=11/);
    expect(() => reduceSum(gpu, { x, n: 10, out, outIndex: 2 })).toThrow(/out/);
    expect(() => reduceSum(gpu, { x, n: 10, out: x })).toThrow(/alias/);
  });
});
