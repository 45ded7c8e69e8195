// The row reductions' subgroup variants (kernels/subgroups.ts) against their workgroup-memory
// variant and float64 references, on the same inputs: LayerNorm and RMSNorm forward/backward,
// attention softmax forward/backward (with and without prefix columns), cross-entropy, the
// gradient-norm partial sums. Each case runs three ways where the adapter has subgroups:
//   'subgroups'          gpu.tuning.subgroups on: the subgroup shader, its subgroup path;
//   'subgroups-fallback' the subgroup shader with its in-shader workgroup-memory path forced (what
//                        a workgroup whose subgroups are not laid out as the kernels need takes);
//   'workgroup'          tuning.subgroups off: the plain shader;
// and only the last where it has none (the others are skipped, with a message).
import { describe, expect, it } from 'vitest';
import { chunkSumsOfSquares, lnBackwardRef, lnForwardRef } from './helpers/norm-reference';
import lnCode from '../shaders/layernorm.wgsl?raw';
import rmsCode from '../shaders/rmsnorm.wgsl?raw';
import softmaxCode from '../shaders/attention_prefix_softmax.wgsl?raw';
import ceCode from '../shaders/cross_entropy.wgsl?raw';
import gradNormCode from '../shaders/grad_norm.wgsl?raw';
import preludeCode from '../shaders/subgroup_reduce.wgsl?raw';
import { testGpu, randArray, expectClose, f64 } from './helpers/gpu';
import { bind, run } from './helpers/kernel-check';
import { bindDispatch, type Dispatch } from '../src/engine/gpu/dispatch';
import { reductionShader, reductionVariant, specializeShader, subgroupTesting } from '../src/engine/kernels/subgroups';
import { layerNormForward, layerNormBackward } from '../src/engine/kernels/layernorm';
import { rmsNormForward, rmsNormBackward } from '../src/engine/kernels/rmsnorm';
import { attentionSoftmaxForward, attentionSoftmaxBackward } from '../src/engine/kernels/attention-softmax';
import { attentionPrefixSoftmaxForward, attentionPrefixSoftmaxBackward } from '../src/engine/kernels/attention-prefix-softmax';
import { crossEntropy, crossEntropyCode, crossEntropyThreads } from '../src/engine/kernels/cross-entropy';
import { sumOfSquares, sumOfSquaresPartials, clipCoefficient } from '../src/engine/kernels/grad-norm';

const gpu = await testGpu();
const HAS_SUBGROUPS = gpu.hasSubgroups;
const SKIP_WHY = 'this adapter has no "subgroups" feature: only the workgroup-memory variant is checked';
if (!HAS_SUBGROUPS) console.warn(`kernels-subgroups: ${SKIP_WHY}`);

type Variant = 'subgroups' | 'subgroups-fallback' | 'workgroup';
const VARIANTS: Variant[] = HAS_SUBGROUPS ? ['subgroups', 'subgroups-fallback', 'workgroup'] : ['workgroup'];

/** Runs f (a kernel wrapper's bind) with the tuning / test switch of one variant, then restores them. */
function inVariant<T>(v: Variant, f: () => T): T {
  const saved = { tuning: gpu.tuning.subgroups, force: subgroupTesting.forceFallback };
  gpu.tuning.subgroups = v !== 'workgroup';
  subgroupTesting.forceFallback = v === 'subgroups-fallback';
  try {
    return f();
  } finally {
    gpu.tuning.subgroups = saved.tuning;
    subgroupTesting.forceFallback = saved.force;
  }
}

/**
 * Binds with one variant and checks that the dispatch got that variant's pipeline: the pipeline
 * cache returns the same object for the same code, entry point and constants (`constants` are the
 * wrapper's own, before the variant's).
 */
async function bindVariant(v: Variant, raw: string, entry: string, constants: Record<string, number> | null, make: () => Dispatch): Promise<Dispatch> {
  const d = await bind(gpu, () => inVariant(v, make));
  const shader = inVariant(v, () => reductionShader(gpu, raw));
  expect(shader.variant).toBe(v === 'workgroup' ? 'workgroup' : 'subgroups');
  if (v === 'workgroup') expect(withoutComments(shader.code)).not.toMatch(/subgroup/i);
  else expect(withoutComments(shader.code)).toMatch(/^enable subgroups;(.|\n)*subgroup(Add|ShuffleXor)\(/m);
  expect(d.pipeline).toBe(gpu.pipeline(shader.code, 'check', entry, { ...(constants ?? {}), ...shader.constants }));
  return d;
}

const withoutComments = (code: string): string => code.replace(/\/\/.*$/gm, '');

const variantIts = (name: string, body: (v: Variant) => Promise<void>): void => {
  for (const v of ['subgroups', 'subgroups-fallback', 'workgroup'] as Variant[]) {
    it.skipIf(!VARIANTS.includes(v))(`${name} [${v}]`, () => body(v));
  }
};

// ---------------------------------------------------------------- the variants themselves

describe('subgroup variants', () => {
  it('the directives keep exactly one side of each block', () => {
    const src = 'a\n// #if subgroups\nb\n// #else\nc\n// #endif\nd';
    expect(specializeShader(src, true)).toBe('a\nb\nd');
    expect(specializeShader(src, false)).toBe('a\nc\nd');
    expect(() => specializeShader('// #if subgroups\nx', true)).toThrow(/endif/);
    expect(() => specializeShader('// #else\n', true)).toThrow(/unexpected/);
    for (const code of [lnCode, rmsCode, softmaxCode, ceCode, gradNormCode]) {
      expect(withoutComments(specializeShader(code, false))).not.toMatch(/subgroup|sgSize|enable/i);
      expect(specializeShader(code, true)).toMatch(/subgroupBlock\(lid, sgSize, sgId, WG\)/);
    }
  });

  it('picks subgroups only with the feature and tuning.subgroups', () => {
    expect(inVariant('workgroup', () => reductionVariant(gpu))).toBe('workgroup');
    expect(inVariant('subgroups', () => reductionVariant(gpu))).toBe(HAS_SUBGROUPS ? 'subgroups' : 'workgroup');
  });

  // The layout check of shaders/subgroup_reduce.wgsl, run on its own: the subgroup size and layout
  // this adapter gives, and that a wrong layout (a shifted lane or block) is caught.
  it.skipIf(!HAS_SUBGROUPS)('subgroupBlock: the usual layout is found, others are rejected', async () => {
    const sizes = new Set<number>();
    for (const WG of [8, 64, 256]) {
      const code = `${preludeCode}
@group(0) @binding(0) var<storage, read_write> out: array<u32>;
override MODE: u32 = 0u;
@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32,
        @builtin(subgroup_size) sgSize: u32, @builtin(subgroup_invocation_id) sgId: u32) {
  var id = sgId;
  var l = lid;
  if (MODE == 1u) { id = (sgId + 1u) % sgSize; }        // lanes out of order
  if (MODE == 2u) { l = (lid + 1u) % ${WG}u; }          // subgroups straddling two blocks
  let b = subgroupBlock(l, sgSize, id, ${WG}u);
  let i = (wid.x * ${WG}u + lid) * 3u;
  out[i] = b;
  out[i + 1u] = sgSize;
  out[i + 2u] = select(0u, 1u, lid % min(sgSize, ${WG}u) == sgId);
}`;
      for (const [mode, force] of [[0, 0], [1, 0], [2, 0], [0, 1]]) {
        const t = gpu.tensor([3 * WG * 3], 'probe', 'u32');
        const d = await bind(gpu, () => bindDispatch(gpu, { label: 'probe', code, constants: { MODE: mode, SG_FORCE_FALLBACK: force }, buffers: [t], workgroups: [3] }));
        await run(gpu, [d]);
        const r = await gpu.read(t, 'u32');
        const sg = r[1];
        sizes.add(sg);
        const block = Math.min(sg, WG);
        for (let i = 0; i < 3 * WG; i++) {
          expect(r[3 * i + 1], 'subgroup size uniform over the dispatch').toBe(sg);
          const want = mode === 0 && !force ? block : 0;
          if (mode === 0 && !force) expect(r[3 * i + 2], 'lid % B == subgroup_invocation_id').toBe(1);
          expect(r[3 * i], `WG=${WG} mode=${mode} force=${force} invocation ${i}`).toBe(want);
        }
      }
    }
    console.log(`kernels-subgroups: subgroup size(s) on ${gpu.info.description || gpu.info.vendor}: ${[...sizes].join(', ')}; the usual layout in every workgroup`);
  });
  // The forced fallback must be the plain tree exactly, and the subgroup path another summation
  // order: over 64 rows of 1030 columns some means differ in their last bits (evidence that the
  // subgroup path ran, beyond the pipeline checks of every case below).
  it.skipIf(!HAS_SUBGROUPS)('the in-shader fallback is the plain tree bit for bit; the subgroup path sums in another order', async () => {
    const rows = 64, C = 1030;
    const x = gpu.tensorFrom(randArray(rows * C, 90, 3), [rows, C], 'x'), w = gpu.tensorFrom(randArray(C, 91), [C], 'w'), b = gpu.tensorFrom(randArray(C, 92), [C], 'b');
    const means: Record<Variant, Float32Array> = {} as Record<Variant, Float32Array>;
    for (const v of VARIANTS) {
      const out = gpu.tensor([rows, C], 'out'), mean = gpu.tensor([rows], 'mean'), rstd = gpu.tensor([rows], 'rstd');
      await run(gpu, [await bindVariant(v, lnCode, 'forward', null, () => layerNormForward(gpu, { x, weight: w, bias: b, out, mean, rstd, rows, C, eps: 1e-5 }))]);
      means[v] = await gpu.read(mean);
    }
    const differing = (a: Float32Array, b: Float32Array): number => a.reduce((n, v, i) => n + (v === b[i] ? 0 : 1), 0);
    expect(differing(means['subgroups-fallback'], means.workgroup)).toBe(0);
    expect(differing(means.subgroups, means.workgroup)).toBeGreaterThan(0);
  });
});

// ---------------------------------------------------------------- layernorm

describe('layerNorm, subgroups vs workgroup memory', () => {
  const eps = 1e-5;
  // dx = rstd * (g - mean(g) - xhat * mean(g * xhat)) nearly cancels for very short rows (C = 3:
  // |dx| ~ 4e-3 from terms ~1, so f32 rounding of the terms is ~1e-4 of it, in every variant alike).
  async function check(v: Variant, rows: number, C: number, seed: number, fold?: [number, number]) {
    const tol = C <= 4 ? 1e-3 : 1e-5;
    const x = randArray(rows * C, seed, 1.5);
    for (let i = 0; i < x.length; i++) x[i] += 0.3;
    const w = randArray(C, seed + 1, 2), b = randArray(C, seed + 2);
    const dout = randArray(rows * C, seed + 3), prior = randArray(rows * C, seed + 4);
    const tx = gpu.tensorFrom(x, [rows, C], 'x'), tw = gpu.tensorFrom(w, [C], 'w'), tb = gpu.tensorFrom(b, [C], 'b');
    const out = gpu.tensorFrom(randArray(rows * C, 9, 50), [rows, C], 'out'), mean = gpu.tensor([rows], 'mean'), rstd = gpu.tensor([rows], 'rstd');
    const tdout = gpu.tensorFrom(dout, [rows, C], 'dout');
    const dx = gpu.tensorFrom(randArray(rows * C, seed + 5, 50), [rows, C], 'dx'), dxAcc = gpu.tensorFrom(prior, [rows, C], 'dxAcc');
    let ops = [
      await bindVariant(v, lnCode, 'forward', null, () => layerNormForward(gpu, { x: tx, weight: tw, bias: tb, out, mean, rstd, rows, C, eps })),
      await bindVariant(v, lnCode, 'backward', null, () => layerNormBackward(gpu, { dout: tdout, x: tx, weight: tw, mean, rstd, dx, rows, C, accumulate: false })),
      await bindVariant(v, lnCode, 'backward', null, () => layerNormBackward(gpu, { dout: tdout, x: tx, weight: tw, mean, rstd, dx: dxAcc, rows, C, accumulate: true })),
    ];
    if (fold) ops = ops.map((d) => ({ ...d, workgroups: [fold[0], fold[1], 1] as [number, number, number] }));
    await run(gpu, ops);
    const ref = { ...lnForwardRef(x, w, b, rows, C, eps), dx: lnBackwardRef(dout, x, w, rows, C, eps) };
    const what = `layernorm [${v}] rows=${rows} C=${C}`;
    expectClose(await gpu.read(out), ref.out, 1e-5, `${what} out`, 1e-2);
    expectClose(await gpu.read(mean), ref.mean, 1e-5, `${what} mean`, 1e-2);
    expectClose(await gpu.read(rstd), ref.rstd, 1e-5, `${what} rstd`);
    expectClose(await gpu.read(dx), ref.dx, tol, `${what} dx`, 1e-2);
    expectClose(await gpu.read(dxAcc), ref.dx.map((d, i) => d + prior[i]), tol, `${what} dx accumulate`, 1e-2);
  }

  variantIts('C = 1 and 3 (below the subgroup size), 37, 255, 256, 1030; one row and many; a folded grid', async (v) => {
    await check(v, 1, 1, 200);
    await check(v, 2, 3, 201);
    await check(v, 3, 37, 202);
    await check(v, 2, 255, 203);
    await check(v, 1, 256, 204);
    await check(v, 2, 1030, 205);
    await check(v, 70, 50, 206);
    await check(v, 20, 33, 207, [7, 3]); // 21 workgroups for 20 rows: the last returns before the layout check
  });
});

// ---------------------------------------------------------------- rmsnorm

describe('rmsNorm, subgroups vs workgroup memory', () => {
  async function check(v: Variant, rows: number, C: number, seed: number) {
    const eps = 1e-6;
    const x = randArray(rows * C, seed, 2), w = randArray(C, seed + 1, 1.5);
    const dout = randArray(rows * C, seed + 2), prior = randArray(rows * C, seed + 3);
    const tx = gpu.tensorFrom(x, [rows, C], 'x'), tw = gpu.tensorFrom(w, [C], 'w');
    const out = gpu.tensor([rows, C], 'out'), rstd = gpu.tensor([rows], 'rstd'), tdout = gpu.tensorFrom(dout, [rows, C], 'dout');
    const dx = gpu.tensor([rows, C], 'dx'), dxAcc = gpu.tensorFrom(prior, [rows, C], 'dxAcc');
    const WG = { WG: C <= 128 ? 64 : 256 };
    await run(gpu, [
      await bindVariant(v, rmsCode, 'forward', WG, () => rmsNormForward(gpu, { x: tx, weight: tw, out, rstd, rows, C, eps })),
      await bindVariant(v, rmsCode, 'backward', WG, () => rmsNormBackward(gpu, { dout: tdout, x: tx, weight: tw, rstd, dx, rows, C, accumulate: false })),
      await bindVariant(v, rmsCode, 'backward', WG, () => rmsNormBackward(gpu, { dout: tdout, x: tx, weight: tw, rstd, dx: dxAcc, rows, C, accumulate: true })),
    ]);
    const wantOut = new Float64Array(rows * C), wantR = new Float64Array(rows), wantDx = new Float64Array(rows * C);
    for (let r = 0; r < rows; r++) {
      let q = 0;
      for (let c = 0; c < C; c++) q += x[r * C + c] ** 2;
      const rs = 1 / Math.sqrt(q / C + eps);
      wantR[r] = rs;
      let m = 0;
      for (let c = 0; c < C; c++) {
        wantOut[r * C + c] = w[c] * x[r * C + c] * rs;
        m += dout[r * C + c] * w[c] * x[r * C + c] * rs;
      }
      m /= C;
      for (let c = 0; c < C; c++) wantDx[r * C + c] = rs * (dout[r * C + c] * w[c] - x[r * C + c] * rs * m);
    }
    const what = `rmsnorm [${v}] rows=${rows} C=${C}`;
    expectClose(await gpu.read(out), wantOut, 1e-5, `${what} out`);
    expectClose(await gpu.read(rstd), wantR, 1e-5, `${what} rstd`);
    expectClose(await gpu.read(dx), wantDx, 1e-5, `${what} dx`, 1e-2);
    expectClose(await gpu.read(dxAcc), wantDx.map((d, i) => d + prior[i]), 1e-5, `${what} dx accumulate`, 1e-2);
  }

  variantIts('C = 2, 3, 100 (64 threads), 129, 300, 1030 (256 threads); one row and many', async (v) => {
    await check(v, 1, 2, 300);
    await check(v, 3, 3, 301);
    await check(v, 40, 100, 302);
    await check(v, 2, 129, 303);
    await check(v, 1, 300, 304);
    await check(v, 3, 1030, 305);
  });
});

// ---------------------------------------------------------------- attention softmax

/** f64 softmax rows of P + T columns: P always visible, real key j iff j < lengths[b] (and j <= i when causal). */
function softmaxRef(s: ArrayLike<number>, lengths: number[], B: number, H: number, T: number, P: number, scale: number, causal: boolean): Float64Array {
  const L = P + T;
  const p = new Float64Array(B * H * T * L);
  for (let z = 0; z < B * H; z++) {
    for (let i = 0; i < T; i++) {
      const row = (z * T + i) * L;
      const limit = P + Math.min(Math.min(lengths[Math.floor(z / H)], T), causal ? i + 1 : T);
      let m = -Infinity;
      for (let c = 0; c < limit; c++) m = Math.max(m, scale * s[row + c]);
      let sum = 0;
      for (let c = 0; c < limit; c++) sum += Math.exp(scale * s[row + c] - m);
      for (let c = 0; c < limit; c++) p[row + c] = Math.exp(scale * s[row + c] - m) / sum;
    }
  }
  return p;
}

/** dscores = scale * P * (dP - sum P dP) over the columns the backward reads (c < P + i + 1 when causal). */
function softmaxBackRef(dp: ArrayLike<number>, p: ArrayLike<number>, B: number, H: number, T: number, P: number, scale: number, causal: boolean): Float64Array {
  const L = P + T;
  const ds = new Float64Array(B * H * T * L);
  for (let z = 0; z < B * H; z++) {
    for (let i = 0; i < T; i++) {
      const row = (z * T + i) * L;
      const limit = causal ? P + i + 1 : L;
      let d = 0;
      for (let c = 0; c < limit; c++) d += p[row + c] * dp[row + c];
      for (let c = 0; c < limit; c++) ds[row + c] = scale * p[row + c] * (dp[row + c] - d);
    }
  }
  return ds;
}

describe('attention softmax, subgroups vs workgroup memory', () => {
  async function check(v: Variant, B: number, H: number, T: number, P: number, lengths: number[], causal: boolean, seed: number) {
    const L = P + T, n = B * H * T * L, scale = 0.125;
    const s = randArray(n, seed, 20), dp = randArray(n, seed + 1);
    const tS = gpu.tensorFrom(s, [n], 'scores'), tIn = gpu.tensorFrom(s, [n], 'scoresInPlace');
    const tLen = gpu.tensorFrom(Uint32Array.from(lengths), [B], 'lengths');
    const tP = gpu.tensorFrom(randArray(n, seed + 2, 9), [n], 'probs');
    const tDp = gpu.tensorFrom(dp, [n], 'dprobs'), tDs = gpu.tensor([n], 'dscores'), tDpIn = gpu.tensorFrom(dp, [n], 'dprobsInPlace');
    const dims = { B, H, T, scale };
    const fwd = (scores: typeof tS, probs: typeof tS) =>
      P === 0 ? attentionSoftmaxForward(gpu, { scores, probs, lengths: tLen, ...dims, causal }) : attentionPrefixSoftmaxForward(gpu, { scores, probs, lengths: tLen, ...dims, P, causal });
    const bwd = (dprobs: typeof tS, dscores: typeof tS) =>
      P === 0 ? attentionSoftmaxBackward(gpu, { dprobs, probs: tP, dscores, ...dims, causal }) : attentionPrefixSoftmaxBackward(gpu, { dprobs, probs: tP, dscores, ...dims, P, causal });
    await run(gpu, [
      await bindVariant(v, softmaxCode, 'forward', null, () => fwd(tS, tP)),
      await bindVariant(v, softmaxCode, 'forward_inplace', null, () => fwd(tIn, tIn)),
      await bindVariant(v, softmaxCode, 'backward', null, () => bwd(tDp, tDs)),
      await bindVariant(v, softmaxCode, 'backward_inplace', null, () => bwd(tDpIn, tDpIn)),
    ]);
    const what = `softmax [${v}] B=${B} H=${H} T=${T} P=${P} causal=${causal}`;
    const wantP = softmaxRef(s, lengths, B, H, T, P, scale, causal);
    const gotP = await gpu.read(tP);
    expectClose(gotP, wantP, 2e-6, `${what} probs`);
    expectClose(await gpu.read(tIn), wantP, 2e-6, `${what} probs in place`);
    for (let i = 0; i < n; i++) if (wantP[i] === 0 && gotP[i] !== 0) throw new Error(`${what}: masked entry ${i} is ${gotP[i]}`);
    const wantDs = softmaxBackRef(dp, gotP, B, H, T, P, scale, causal);
    expectClose(await gpu.read(tDs), wantDs, 1e-5, `${what} dscores`, 1e-2);
    expectClose(await gpu.read(tDpIn), wantDs, 1e-5, `${what} dscores in place`, 1e-2);
  }

  variantIts('causal and padded rows, all-masked rows, rows of 1..3 columns, rows longer than the lanes', async (v) => {
    await check(v, 3, 2, 37, 0, [37, 20, 0], true, 400); // the last sequence: every row all masked
    await check(v, 2, 1, 45, 0, [45, 13], false, 401);
    await check(v, 1, 3, 1, 0, [1], true, 402); // one column per row
    await check(v, 2, 1, 3, 0, [3, 2], true, 403); // fewer columns than the subgroup has lanes
    await check(v, 1, 1, 70, 0, [64], false, 404); // rows past 2 x 32 lanes
  });

  variantIts('with prefix columns (P = 5, 40): causal, padded, a fully padded sequence', async (v) => {
    await check(v, 2, 2, 11, 5, [11, 0], true, 410);
    await check(v, 1, 2, 9, 40, [6], false, 411);
  });
});

// ---------------------------------------------------------------- cross-entropy

describe('crossEntropy, subgroups vs workgroup memory', () => {
  const limit = Math.min(gpu.info.limits.maxComputeInvocationsPerWorkgroup, gpu.device.limits.maxComputeWorkgroupSizeX);

  interface Opts { ld?: number; threads?: number; workgroups?: number; nanRow?: number; gradMax?: boolean }
  async function check(v: Variant, rows: number, V: number, targets: number[], seed: number, opts: Opts = {}) {
    const ld = opts.ld ?? V;
    const dense = randArray(rows * V, seed, 6);
    if (opts.nanRow !== undefined) dense[opts.nanRow * V + (V >> 1)] = NaN;
    const logits = new Float32Array(Math.ceil(((rows - 1) * ld + V) / 4) * 4).fill(7);
    for (let r = 0; r < rows; r++) logits.set(dense.subarray(r * V, (r + 1) * V), r * ld);
    const gradScale = 0.5;
    const tLogits = gpu.tensorFrom(logits, [logits.length], 'logits');
    const tTargets = gpu.tensorFrom(Int32Array.from(targets), [rows], 'targets');
    const tLosses = gpu.tensor([rows], 'losses');
    const tScale = gpu.tensorFrom(Float32Array.of(gradScale), [1], 'gradScale');
    const threads = opts.threads ?? crossEntropyThreads(V, limit);
    const tGradMax = opts.gradMax ? gpu.tensorFrom(new Float32Array(4 * rows).fill(-1), [4 * rows], 'gradMax') : undefined;
    await run(gpu, [
      await bindVariant(v, crossEntropyCode(!!opts.gradMax), 'main', { WG: threads, ...(opts.gradMax ? { GRAD_MAX: 1 } : {}) }, () =>
        crossEntropy(gpu, { logits: tLogits, targets: tTargets, losses: tLosses, gradScale: tScale, rows, V, ld, threads: opts.threads, workgroups: opts.workgroups, gradMax: tGradMax })),
    ]);
    const what = `cross-entropy [${v}] rows=${rows} V=${V} ld=${ld} threads=${threads} workgroups=${opts.workgroups ?? rows}${opts.gradMax ? ' gradMax' : ''}`;
    const gotLoss = await gpu.read(tLosses), gotAll = await gpu.read(tLogits);
    if (tGradMax) {
      // each row's largest |gradient| as written (exactly), then three zeros; 0 for an ignored row
      const gotMax = await gpu.read(tGradMax);
      for (let r = 0; r < rows; r++) {
        expect(Array.from(gotMax.subarray(4 * r + 1, 4 * r + 4)), `${what}: gradMax row ${r} padding`).toEqual([0, 0, 0]);
        if (r === opts.nanRow && targets[r] >= 0) continue; // NaN: max() may keep or drop it
        let want = 0;
        for (let c = 0; c < V; c++) want = Math.max(want, Math.abs(gotAll[r * ld + c]));
        expect(gotMax[4 * r], `${what}: gradMax row ${r}`).toBe(want);
      }
    }
    const wantLoss = new Float64Array(rows), wantGrad = new Float64Array(rows * V), gotGrad = new Float32Array(rows * V);
    for (let r = 0; r < rows; r++) {
      gotGrad.set(gotAll.subarray(r * ld, r * ld + V), r * V);
      for (let c = r * ld + V; c < Math.min((r + 1) * ld, logits.length); c++) if (gotAll[c] !== 7) throw new Error(`${what}: padding ${c} written`);
      if (r === opts.nanRow && targets[r] >= 0) {
        expect(gotLoss[r], `${what}: NaN row loss`).toBeNaN();
        expect(gotGrad.subarray(r * V, (r + 1) * V).every(Number.isNaN), `${what}: NaN row gradient`).toBe(true);
        gotLoss[r] = 0;
        gotGrad.fill(0, r * V, (r + 1) * V);
        continue;
      }
      const t = targets[r];
      if (t < 0) continue; // ignored: loss 0, zero gradient
      let m = -Infinity, s = 0;
      for (let c = 0; c < V; c++) m = Math.max(m, dense[r * V + c]);
      for (let c = 0; c < V; c++) s += Math.exp(dense[r * V + c] - m);
      wantLoss[r] = m + Math.log(s) - dense[r * V + t];
      for (let c = 0; c < V; c++) wantGrad[r * V + c] = (Math.exp(dense[r * V + c] - m) / s - (c === t ? 1 : 0)) * gradScale;
    }
    expectClose(gotLoss, wantLoss, 2e-6, `${what} losses`, 0.1);
    expectClose(gotGrad, wantGrad, 1e-5, `${what} grad`);
    for (let r = 0; r < rows; r++) {
      if (targets[r] >= 0) continue;
      expect(gotLoss[r]).toBe(0);
      expect(gotGrad.subarray(r * V, (r + 1) * V).every((g) => g === 0), `${what}: ignored row ${r}`).toBe(true);
    }
  }

  variantIts('V = 1, 3, 37, 1001 (not multiples of 4), rows not 16-byte aligned, ignored targets, a NaN row', async (v) => {
    await check(v, 2, 1, [0, -100], 500);
    await check(v, 3, 3, [2, 0, 1], 501);
    await check(v, 4, 37, [5, -100, 36, 0], 502, { ld: 39, gradMax: true }); // rows 39 apart: 1-3 columns before the whole vec4s
    await check(v, 3, 1001, [1000, 17, -1], 503, { nanRow: 1, gradMax: true });
  });

  variantIts('8 to 256 threads per row; fewer workgroups than rows (consecutive rows in one workgroup)', async (v) => {
    await check(v, 5, 200, [3, 199, -100, 0, 50], 510, { threads: 8 });
    await check(v, 3, 150, [149, 0, 75], 511, { threads: Math.min(256, limit) });
    await check(v, 9, 90, [1, 2, 3, -100, 5, 6, 7, 8, 89], 512, { threads: 32, workgroups: 2, gradMax: true });
    await check(v, 7, 41, [40, 0, -100, 20, 10, 30, 1], 513, { threads: 8, workgroups: 3, gradMax: true });
    await check(v, 4, 3000, [2999, 0, 1500, 7], 514, { threads: 64, workgroups: 2, gradMax: true }); // 4 loads in flight and the rest
  });
});

// ---------------------------------------------------------------- gradient norm

describe('grad norm, subgroups vs workgroup memory', () => {
  variantIts('sums of squares per chunk (empty, short, a chunk and one past it) and the clip coefficient over 300 partials', async (v) => {
    const sizes = [0, 3, 4096, 4097, 9000];
    const grads = sizes.map((n, k) => randArray(Math.max(n, 1), 600 + k, 0.1));
    const parts = sizes.map(sumOfSquaresPartials);
    const count = parts.reduce((a, b) => a + b, 0);
    const tensors = grads.map((g, k) => gpu.tensorFrom(g, [g.length], `g${k}`));
    const partials = gpu.tensor([count], 'partials');
    const ops: Dispatch[] = [];
    let at = 0;
    for (let k = 0; k < sizes.length; k++) {
      ops.push(await bindVariant(v, gradNormCode, 'sum_of_squares', null, () => sumOfSquares(gpu, { x: tensors[k], n: sizes[k], out: partials, outIndex: at })));
      at += parts[k];
    }
    await run(gpu, ops);
    const want = chunkSumsOfSquares(grads, sizes);
    expectClose(await gpu.read(partials), want, 1e-6, `sum of squares [${v}]`);

    const many = randArray(300, 610, 1).map(Math.abs);
    const tMany = gpu.tensorFrom(many, [300], 'many'), clip = gpu.tensor([2], 'clip');
    await run(gpu, [await bindVariant(v, gradNormCode, 'clip_coefficient', null, () => clipCoefficient(gpu, { partials: tMany, count: 300, maxNorm: 1, out: clip }))]);
    const norm = Math.sqrt(f64(many).reduce((a, b) => a + b, 0));
    expectClose(await gpu.read(clip), [norm, 1 / (norm + 1e-6)], 1e-6, `clip coefficient [${v}]`);
  });
});
