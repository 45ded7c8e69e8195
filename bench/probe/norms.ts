// Probe: the row norms alone at the benchmark models' shapes (GPT-2's LayerNorm over 2048 x 768,
// SmolLM2's RMSNorm over 2048 x 576), forward, forward carrying the residual stream (copyTo) and
// backward (accumulating), each timed with timestamp queries around one compute pass of --reps
// back-to-back repetitions (best of 3). GB/s counts each pass's reads and writes once.
//   here:        node scripts/node-run.mjs --bundle-only bench/dist bench/probe/norms.ts
//                VK_ICD_FILENAMES=/usr/lib/chromium/vk_swiftshader_icd.json node bench/dist/norms.mjs --rows 16 --reps 2
//   GPU machine: bash .gpu/boot.sh node bench/dist/norms.mjs [--reps 50]
// @ts-nocheck -- a probe script, bundled like bench/matmul-shapes.ts
import { parseArgs } from 'node:util';
import { createNodeGpu } from '../../src/engine/gpu/node-gpu';
import { passTimer } from './pass-timer';
import { layerNormBackward, layerNormForward } from '../../src/engine/kernels/layernorm';
import { rmsNormBackward, rmsNormForward } from '../../src/engine/kernels/rmsnorm';

const { values: a } = parseArgs({ options: { rows: { type: 'string' }, reps: { type: 'string' } } });
const ROWS = Number(a.rows ?? 2048);
const REPS = Number(a.reps ?? 50);
const gpu = await createNodeGpu({ dawnFlags: ['disable-dawn-features=timestamp_quantization'] });
const device = gpu.device;
device.onuncapturederror = (e) => console.error('uncaptured', e.error?.message);
console.log(`${gpu.info.vendor} ${gpu.info.description} | rows ${ROWS} reps ${REPS} | subgroups ${gpu.hasSubgroups}`);
const timer = passTimer(device);
const time = (op) => timer([op], REPS);
const rand = (n: number, seed: number) => {
  let s = seed >>> 0;
  const x = new Float32Array(n);
  for (let i = 0; i < n; i++) x[i] = (s = (s * 1664525 + 1013904223) >>> 0) / 2 ** 32 - 0.5;
  return x;
};
const results = [];
const report = (what: string, us: number, tensors: number, C: number) => {
  const gbs = (tensors * ROWS * C * 4) / (us * 1e3);
  results.push({ what, us, gbs });
  console.log(`${what.padEnd(44)} ${us.toFixed(1).padStart(7)} us ${gbs.toFixed(0).padStart(6)} GB/s`);
};
{
  const C = 768;
  const t = (n: number, s: number, l: string) => gpu.tensorFrom(rand(n, s), [n], l);
  const x = t(ROWS * C, 1, 'x'), w = t(C, 2, 'w'), b = t(C, 3, 'b'), dout = t(ROWS * C, 4, 'dout');
  const out = gpu.tensor([ROWS * C], 'out'), copy = gpu.tensor([ROWS * C], 'copy'), dx = gpu.tensor([ROWS * C], 'dx');
  const mean = gpu.tensor([ROWS], 'mean'), rstd = gpu.tensor([ROWS], 'rstd');
  report('gpt2 layerNormForward', await time(layerNormForward(gpu, { x, weight: w, bias: b, out, mean, rstd, rows: ROWS, C, eps: 1e-5 })), 2, C);
  report('gpt2 layerNormForward copyTo', await time(layerNormForward(gpu, { x, weight: w, bias: b, out, mean, rstd, rows: ROWS, C, eps: 1e-5, copyTo: copy })), 3, C);
  report('gpt2 layerNormBackward accumulate', await time(layerNormBackward(gpu, { dout, x, weight: w, mean, rstd, dx, rows: ROWS, C, accumulate: true })), 4, C);
}
{
  const C = 576;
  const t = (n: number, s: number, l: string) => gpu.tensorFrom(rand(n, s), [n], l);
  const x = t(ROWS * C, 1, 'x'), w = t(C, 2, 'w'), dout = t(ROWS * C, 4, 'dout');
  const out = gpu.tensor([ROWS * C], 'out'), copy = gpu.tensor([ROWS * C], 'copy'), dx = gpu.tensor([ROWS * C], 'dx');
  const rstd = gpu.tensor([ROWS], 'rstd');
  report('smollm2 rmsNormForward', await time(rmsNormForward(gpu, { x, weight: w, out, rstd, rows: ROWS, C, eps: 1e-5 })), 2, C);
  report('smollm2 rmsNormForward copyTo', await time(rmsNormForward(gpu, { x, weight: w, out, rstd, rows: ROWS, C, eps: 1e-5, copyTo: copy })), 3, C);
  report('smollm2 rmsNormBackward accumulate', await time(rmsNormBackward(gpu, { dout, x, weight: w, rstd, dx, rows: ROWS, C, accumulate: true })), 4, C);
}
if (process.env.OUT) (await import('node:fs')).writeFileSync(`${process.env.OUT}/norms.json`, JSON.stringify(results, null, 1));
