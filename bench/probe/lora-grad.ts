// Probe: LoRA's backward pieces at the benchmark models' shapes, each timed alone (timestamp queries
// around one compute pass of --reps back-to-back repetitions, best of 3): dB and dA through the
// skinny matmul (with the dropout(x) pass dA needs there) against kernels/lora.ts loraWeightGrad
// (its chunk pass and its sum, apart and together) under several tuning.loraGradWorkgroups; the
// forward's u and y and the backward's du (loraProject, loraExpand) and dx for scale.
//   here:        node scripts/node-run.mjs --bundle-only bench/dist bench/probe/lora-grad.ts
//                VK_ICD_FILENAMES=/usr/lib/chromium/vk_swiftshader_icd.json node bench/dist/lora-grad.mjs --rows 64 --reps 2
//   GPU machine: bash .gpu/boot.sh node bench/dist/lora-grad.mjs [--reps 50] [--workgroups 132,264,528]
// @ts-nocheck -- a probe script, bundled like bench/matmul-shapes.ts
import { parseArgs } from 'node:util';
import { createNodeGpu } from '../../src/engine/gpu/node-gpu';
import { passTimer } from './pass-timer';
import { encodeOps } from '../../src/engine/gpu/dispatch';
import { matmul } from '../../src/engine/kernels/matmul';
import { dropoutForward } from '../../src/engine/kernels/dropout';
import { loraExpand, loraProject, loraWeightGrad, loraWeightGradScratch } from '../../src/engine/kernels/lora';
import { StepUniforms } from '../../src/engine/kernels/step-uniforms';

const { values: a } = parseArgs({ options: { rows: { type: 'string' }, reps: { type: 'string' }, workgroups: { type: 'string' } } });
const ROWS = Number(a.rows ?? 2048);
const REPS = Number(a.reps ?? 50);
const WORKGROUPS = (a.workgroups ?? '132,264,528').split(',').map(Number);
const gpu = await createNodeGpu({ dawnFlags: ['disable-dawn-features=timestamp_quantization'] });
const device = gpu.device;
device.onuncapturederror = (e) => console.error('uncaptured', e.error?.message);
console.log(`${gpu.info.vendor} ${gpu.info.architecture} ${gpu.info.description} | rows ${ROWS} reps ${REPS}`);

const step = new StepUniforms(gpu);
step.write({ lr: 1e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 0, step: 1, seed: 1234 });
const rand = (n: number, seed: number) => {
  let s = seed >>> 0;
  const x = new Float32Array(n);
  for (let i = 0; i < n; i++) x[i] = (s = (s * 1664525 + 1013904223) >>> 0) / 2 ** 32 - 0.5;
  return x;
};

const timer = passTimer(device);
/** Best of 3 of REPS repetitions of the ops in one pass, in microseconds per repetition. */
const time = (ops) => timer(ops, REPS);

const SHAPES = [
  { name: 'gpt2 c_attn', K: 768, N: 2304 },
  { name: 'smollm2 q_proj', K: 576, N: 576 },
  { name: 'smollm2 v_proj', K: 576, N: 192 },
];
const r = 8, p = 0.05, salt = 0x9e37, scale = 2;
const results = [];
for (const { name, K, N } of SHAPES) {
  const t = (data, shape, label) => gpu.tensorFrom(data, shape, label);
  const x = t(rand(ROWS * K, 1), [ROWS, K], 'x'), dy = t(rand(ROWS * N, 2), [ROWS, N], 'dy');
  const u = t(rand(ROWS * r, 3), [ROWS, r], 'u'), du = t(rand(ROWS * r, 4), [ROWS, r], 'du');
  const A = t(rand(r * K, 5), [r, K], 'A'), B = t(rand(N * r, 6), [N, r], 'B');
  const dA = gpu.tensor([r, K], 'dA'), dB = gpu.tensor([N, r], 'dB'), dx = gpu.tensor([ROWS, K], 'dx');
  const xd = gpu.tensor([ROWS, K], 'xd'), duOut = gpu.tensor([ROWS, r], 'duOut');
  const row = (what, us) => {
    results.push({ shape: name, what, us });
    console.log(`${name.padEnd(16)} ${what.padEnd(44)} ${us.toFixed(1).padStart(7)} us`);
  };
  row('dB skinny matmul', await time([matmul(gpu, { a: dy, b: u, c: dB, M: N, N: r, K: ROWS, transA: true, alpha: scale, accumulate: true })]));
  row('dA dropout(x) + skinny matmul', await time([
    dropoutForward(gpu, { x, out: xd, n: ROWS * K, p, step, salt }),
    matmul(gpu, { a: du, b: xd, c: dA, M: r, N: K, K: ROWS, transA: true, accumulate: true }),
  ]));
  for (const wg of WORKGROUPS) {
    gpu.tuning.loraGradWorkgroups = wg;
    const parts = gpu.tensor([Math.max(loraWeightGradScratch(wg, ROWS, N, r), loraWeightGradScratch(wg, ROWS, K, r))], 'parts');
    const gB = loraWeightGrad(gpu, { big: dy, small: u, w: dB, wLayout: 'cols_r', parts, rows: ROWS, cols: N, r, alpha: scale, accumulate: true, step });
    const gA = loraWeightGrad(gpu, { big: x, small: du, w: dA, wLayout: 'r_cols', parts, rows: ROWS, cols: K, r, alpha: 1, accumulate: true, step, dropout: { p, salt } });
    const [bc, bs, bb] = [await time([gB[0]]), await time([gB[1]]), await time(gB)];
    const [ac, as, ab] = [await time([gA[0]]), await time([gA[1]]), await time(gA)];
    console.log(`${name.padEnd(16)} grad ${wg} wg: dB ${bc.toFixed(1)} + ${bs.toFixed(1)} = ${bb.toFixed(1)} us (${gB[0].workgroups.join('x')}); dA ${ac.toFixed(1)} + ${as.toFixed(1)} = ${ab.toFixed(1)} us (${gA[0].workgroups.join('x')})`);
    results.push({ shape: name, what: `grad ${wg}`, dB: [bc, bs, bb], dA: [ac, as, ab] });
    gpu.destroyTensor(parts);
  }
  const y = gpu.tensor([ROWS, N], 'y');
  row('u = dropout(x) A^T loraProject (mask)', await time([loraProject(gpu, { x, w: A, wLayout: 'r_cols', out: duOut, rows: ROWS, cols: K, r, alpha: 1, step, dropout: { p, salt } })]));
  row('y += scale u B^T loraExpand', await time([loraExpand(gpu, { u, w: B, wLayout: 'cols_r', out: y, rows: ROWS, cols: N, r, alpha: scale, accumulate: true, step })]));
  gpu.destroyTensor(y);
  row('du loraProject', await time([loraProject(gpu, { x: dy, w: B, wLayout: 'cols_r', out: duOut, rows: ROWS, cols: N, r, alpha: scale, step })]));
  row('dx loraExpand (mask)', await time([loraExpand(gpu, { u: du, w: A, wLayout: 'r_cols', out: dx, rows: ROWS, cols: K, r, alpha: 1, accumulate: true, step, dropout: { p, salt } })]));
  row('x -> dropout(x) alone', await time([dropoutForward(gpu, { x, out: xd, n: ROWS * K, p, step, salt })]));
  for (const tt of [x, dy, u, du, A, B, dA, dB, dx, xd, duOut]) gpu.destroyTensor(tt);
}
if (process.env.OUT) (await import('node:fs')).writeFileSync(`${process.env.OUT}/lora-grad.json`, JSON.stringify(results, null, 1));
