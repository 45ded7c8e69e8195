// Probe: flash attention (kernels/flash-attention.ts) against the T x T path it replaces (score
// product, masked softmax, P V, and their backward: matmul + attention-softmax kernels, as
// models/gpt2.ts builds them) at the benchmark's shapes on the real GPU, where the kernels run the
// device's own tiles (the unit tests run these tiles only at small head sizes):
//   GPT-2 124M   B 8, T 256, 12 heads, D 64, packed qkv rows (ld 3C)
//   SmolLM2-135M B 8, T 256, 9 query heads over 3 key/value heads, D 64, separate q, k, v
//                (with and without the per-head dK/dV scratch)
// One sequence is padded (length T - 37). For grouped-query heads the T x T path gets k and v
// repeated to every query head and its dk, dv summed over each group on the host. Prints the
// largest difference relative to the largest magnitude of each output, and wall time per forward
// and per backward (mean over --reps passes, after a warm-up).
//   here:        node scripts/node-run.mjs --bundle-only bench/dist bench/probe/flash-attention.ts
//                VK_ICD_FILENAMES=/usr/lib/chromium/vk_swiftshader_icd.json node bench/dist/flash-attention.mjs --B 1 --T 40 --reps 1
//   GPU machine: bash .gpu/boot.sh node bench/dist/flash-attention.mjs [--reps 50] [--sweep]
// --sweep: also times every candidate tiling of each kernel that fits (GPT-2's shape), each
// checked against the default tiling's result.
// @ts-nocheck -- a probe script, bundled like bench/matmul-shapes.ts
import { parseArgs } from 'node:util';
import { createNodeGpu } from '../../src/engine/gpu/node-gpu';
import { runOps } from '../../src/engine/gpu/dispatch';
import { matmul } from '../../src/engine/kernels/matmul';
import { attentionSoftmaxBackward, attentionSoftmaxForward } from '../../src/engine/kernels/attention-softmax';
import { flashAttentionBackward, flashAttentionForward, flashAttentionScratchElements, flashAttentionTiles } from '../../src/engine/kernels/flash-attention';

const { values: a } = parseArgs({ options: { B: { type: 'string' }, T: { type: 'string' }, reps: { type: 'string' }, sweep: { type: 'boolean' } } });
const B = Number(a.B ?? 8), T = Number(a.T ?? 256), REPS = Number(a.reps ?? 50);
const gpu = await createNodeGpu({});
console.log(`${gpu.info.vendor} ${gpu.info.architecture} ${gpu.info.description} | B ${B} T ${T} reps ${REPS}`);

let seed = 7;
const rand = () => ((seed = (seed * 1664525 + 1013904223) >>> 0) / 2 ** 32) * 2 - 1;
const upload = (data: Float32Array, label: string) => {
  const t = gpu.tensor([data.length], label);
  gpu.write(t, data);
  return t;
};
const zeros = (n: number, label: string) => upload(new Float32Array(n), label);

async function time(ops, reps: number): Promise<number> {
  runOps(gpu, ops);
  await gpu.device.queue.onSubmittedWorkDone();
  const t0 = performance.now();
  for (let i = 0; i < reps; i++) runOps(gpu, ops);
  await gpu.device.queue.onSubmittedWorkDone();
  return (performance.now() - t0) / reps;
}

function relErr(got: Float32Array, want: Float32Array): number {
  let big = 1e-30, err = 0;
  for (let i = 0; i < want.length; i++) big = Math.max(big, Math.abs(want[i]));
  for (let i = 0; i < want.length; i++) err = Math.max(err, Math.abs(got[i] - want[i]));
  return err / big;
}

async function probe(name: string, H: number, KV: number, D: number, packed: boolean, scratch: boolean, sweep = false) {
  const G = H / KV, M = B * T, scale = 1 / Math.sqrt(D);
  const lengths = gpu.tensor([B], 'lengths', 'u32');
  gpu.write(lengths, new Uint32Array(Array.from({ length: B }, (_, b) => (b === 1 ? T - 37 : T))));
  const q = new Float32Array(M * H * D).map(rand), k = new Float32Array(M * KV * D).map(rand), v = new Float32Array(M * KV * D).map(rand);
  const dout = new Float32Array(M * H * D).map(rand);
  // flash: GPT-2's packed rows [q | k | v] or separate tensors
  const ops = [];
  let shape, dq, dk, dv, grads;
  if (packed) {
    const qkv = new Float32Array(M * 3 * H * D);
    for (let m = 0; m < M; m++) {
      qkv.set(q.subarray(m * H * D, (m + 1) * H * D), m * 3 * H * D);
      qkv.set(k.subarray(m * H * D, (m + 1) * H * D), m * 3 * H * D + H * D);
      qkv.set(v.subarray(m * H * D, (m + 1) * H * D), m * 3 * H * D + 2 * H * D);
    }
    const t = upload(qkv, 'qkv'), C = H * D;
    shape = { B, T, H, kvHeads: KV, D, scale, causal: true, lengths, q: t, offsetQ: 0, ldq: 3 * C, k: t, offsetK: C, ldk: 3 * C, v: t, offsetV: 2 * C, ldv: 3 * C };
    const dqkv = zeros(M * 3 * C, 'dqkv');
    grads = { dq: dqkv, offsetDQ: 0, lddq: 3 * C, dk: dqkv, offsetDK: C, lddk: 3 * C, dv: dqkv, offsetDV: 2 * C, lddv: 3 * C };
    dq = async () => { const x = await gpu.read(dqkv); const o = [new Float32Array(M * C), new Float32Array(M * C), new Float32Array(M * C)]; for (let m = 0; m < M; m++) for (let j = 0; j < 3; j++) o[j].set(x.subarray(m * 3 * C + j * C, m * 3 * C + (j + 1) * C), m * C); return o; };
  } else {
    shape = { B, T, H, kvHeads: KV, D, scale, causal: true, lengths, q: upload(q, 'q'), ldq: H * D, k: upload(k, 'k'), ldk: KV * D, v: upload(v, 'v'), ldv: KV * D };
    const tq = zeros(M * H * D, 'dq'), tk = zeros(M * KV * D, 'dk'), tv = zeros(M * KV * D, 'dv');
    grads = { dq: tq, lddq: H * D, dk: tk, lddk: KV * D, dv: tv, lddv: KV * D, ...(scratch ? { dkvScratch: zeros(flashAttentionScratchElements(B, T, H, D), 'scratch') } : {}) };
    dq = async () => [await gpu.read(tq), await gpu.read(tk), await gpu.read(tv)];
  }
  const out = zeros(M * H * D, 'o'), lse = zeros(B * H * T, 'lse'), delta = zeros(B * H * T, 'delta'), tdout = upload(dout, 'dout');
  const fwd = flashAttentionForward(gpu, { ...shape, out, ldo: H * D, lse });
  const bwd = flashAttentionBackward(gpu, { ...shape, out, ldo: H * D, lse, dout: tdout, lddo: H * D, delta, ...grads });
  runOps(gpu, [...fwd, ...bwd]);
  const flashO = await gpu.read(out);
  const [fq, fk, fv] = await dq();

  // the T x T path over H heads (k, v repeated to each query head of a group)
  const rep = (x: Float32Array) => {
    const y = new Float32Array(M * H * D);
    for (let m = 0; m < M; m++) for (let h = 0; h < H; h++) y.set(x.subarray(m * KV * D + Math.floor(h / G) * D, m * KV * D + Math.floor(h / G) * D + D), m * H * D + h * D);
    return y;
  };
  const C = H * D;
  const tq = upload(q, 'q2'), tk = upload(rep(k), 'k2'), tv = upload(rep(v), 'v2'), ctx = zeros(M * C, 'ctx');
  const att = zeros(B * H * T * T, 'att'), dP = zeros(B * H * T * T, 'dP');
  const rq = zeros(M * C, 'rdq'), rk = zeros(M * C, 'rdk'), rv = zeros(M * C, 'rdv');
  const batch = { outer: B, inner: H };
  const rf = [
    matmul(gpu, { label: 'scores', triangle: 'lowerC', a: tq, lda: C, b: tk, ldb: C, transB: true, c: att, ldc: T, M: T, N: T, K: D, batch: { ...batch, strideA: [T * C, D], strideB: [T * C, D], strideC: [H * T * T, T * T] } }),
    attentionSoftmaxForward(gpu, { scores: att, probs: att, lengths, B, H, T, scale, causal: true }),
    matmul(gpu, { label: 'pv', triangle: 'lowerA', a: att, lda: T, b: tv, ldb: C, c: ctx, ldc: C, M: T, N: D, K: T, batch: { ...batch, strideA: [H * T * T, T * T], strideB: [T * C, D], strideC: [T * C, D] } }),
  ];
  const rb = [
    matmul(gpu, { label: 'dP', triangle: 'lowerC', a: tdout, lda: C, b: tv, ldb: C, transB: true, c: dP, ldc: T, M: T, N: T, K: D, batch: { ...batch, strideA: [T * C, D], strideB: [T * C, D], strideC: [H * T * T, T * T] } }),
    matmul(gpu, { label: 'dV', triangle: 'upperA', a: att, lda: T, transA: true, b: tdout, ldb: C, c: rv, ldc: C, M: T, N: D, K: T, batch: { ...batch, strideA: [H * T * T, T * T], strideB: [T * C, D], strideC: [T * C, D] } }),
    attentionSoftmaxBackward(gpu, { dprobs: dP, probs: att, dscores: dP, B, H, T, scale, causal: true }),
    matmul(gpu, { label: 'dQ', triangle: 'lowerA', a: dP, lda: T, b: tk, ldb: C, c: rq, ldc: C, M: T, N: D, K: T, batch: { ...batch, strideA: [H * T * T, T * T], strideB: [T * C, D], strideC: [T * C, D] } }),
    matmul(gpu, { label: 'dK', triangle: 'upperA', a: dP, lda: T, transA: true, b: tq, ldb: C, c: rk, ldc: C, M: T, N: D, K: T, batch: { ...batch, strideA: [H * T * T, T * T], strideB: [T * C, D], strideC: [T * C, D] } }),
  ];
  runOps(gpu, [...rf, ...rb]);
  const refO = await gpu.read(ctx), refQ = await gpu.read(rq);
  const sumGroups = (x: Float32Array) => {
    const y = new Float32Array(M * KV * D);
    for (let m = 0; m < M; m++) for (let h = 0; h < H; h++) for (let d = 0; d < D; d++) y[m * KV * D + Math.floor(h / G) * D + d] += x[m * C + h * D + d];
    return y;
  };
  const refK = sumGroups(await gpu.read(rk)), refV = sumGroups(await gpu.read(rv));
  const errs = { o: relErr(flashO, refO), dq: relErr(fq, refQ), dk: relErr(fk, refK), dv: relErr(fv, refV) };
  const tFlash = [await time(fwd, REPS), await time(bwd, REPS)], tPlain = [await time(rf, REPS), await time(rb, REPS)];
  console.log(`${name}: max |diff| / max |T x T|: ${Object.entries(errs).map(([k, e]) => `${k} ${e.toExponential(2)}`).join(', ')}`);
  console.log(`  flash ${tFlash[0].toFixed(3)} + ${tFlash[1].toFixed(3)} ms (fwd + bwd) | T x T ${tPlain[0].toFixed(3)} + ${tPlain[1].toFixed(3)} ms | per layer`);
  if (sweep) {
    const fits = (t) => t.TR * t.TC <= gpu.info.limits.maxComputeInvocationsPerWorkgroup;
    console.log(`  default tiles ${JSON.stringify(flashAttentionTiles(gpu, D))}`);
    for (const TR of [2, 4, 8, 16]) for (const TC of [2, 4, 8, 16]) {
      const tile = { TR, TC };
      if (!fits(tile)) continue;
      for (const kernel of ['forward', 'dq', 'dkdv']) {
        let ops;
        try {
          ops = kernel === 'forward' ? flashAttentionForward(gpu, { ...shape, out, ldo: H * D, lse, tiles: tile })
            : flashAttentionBackward(gpu, { ...shape, out, ldo: H * D, lse, dout: tdout, lddo: H * D, delta, ...grads, tiles: { [kernel]: tile } });
        } catch { continue; } // does not fit this device's workgroup memory
        runOps(gpu, kernel === 'forward' ? [...ops, ...bwd] : [...fwd, ...ops]);
        const o2 = await gpu.read(out);
        const [q2, k2, v2] = await dq();
        const e = Math.max(relErr(o2, refO), relErr(q2, refQ), relErr(k2, refK), relErr(v2, refV));
        console.log(`  ${kernel.padEnd(7)} TR ${TR} TC ${TC}: ${(await time(ops, REPS)).toFixed(3)} ms${kernel === 'forward' ? '' : ' (whole backward)'}, worst diff ${e.toExponential(2)}`);
      }
    }
  }
  gpu.checkErrors();
  return errs;
}

let worst = 0;
for (const e of [
  await probe('gpt2-124M (packed qkv)', 12, 12, 64, true, false, a.sweep),
  await probe('smollm2-135M (3 groups of 3, per-head scratch)', 9, 3, 64, false, true),
  await probe('smollm2-135M (3 groups of 3, no scratch)', 9, 3, 64, false, false),
]) worst = Math.max(worst, ...Object.values(e));
console.log(worst < 1e-4 ? `OK: worst ${worst.toExponential(2)}` : `FAIL: worst ${worst.toExponential(2)} >= 1e-4`);
process.exit(worst < 1e-4 ? 0 : 1);
