// Probe: the softmax cross-entropy over the vocabulary (kernels/cross-entropy.ts), old kernel
// (bench/probe/cross_entropy_old.wgsl: scalar loads, 256 threads per row, kept verbatim) against
// the new one (vec4 loads, 4 in flight per thread) in several thread counts and grids, at GPT-2's
// 2048 x 50257 (ld 50260, the LM-head block's row stride), GPT-2 with dense rows (ld = V, when the
// logits are captured) and SmolLM2's 2048 x 49152 (ld = V). Timed with timestamp queries around
// one pass of --reps dispatches (best of 3 trials, each from fresh logits); each variant's losses
// and gradients are compared with the old kernel's (max abs difference), the padding columns
// [V, ld) must be untouched, and the first rows' losses are checked against a float64 reference.
//   here:        node scripts/node-run.mjs --bundle-only bench/dist bench/probe/cross-entropy.ts
//                VK_ICD_FILENAMES=/usr/lib/chromium/vk_swiftshader_icd.json node bench/dist/cross-entropy.mjs --rows 8 --sms 1
//   GPU machine: bash .gpu/boot.sh node bench/dist/cross-entropy.mjs [--reps 20] [--sms 132] [--only TEXT] [--no-check]
//                [--dawn-flags disable_robustness] (OUT set: results appended to $OUT/cross-entropy.jsonl)
// --sms: the GPU's SM count, for the variants that keep a few workgroups per SM looping over rows.
// GB/s counts 12 bytes per logit (read twice, written once); above the DRAM bandwidth means the
// second read hit L2.
// @ts-nocheck -- a probe script, bundled like bench/matmul-shapes.ts
import { parseArgs } from 'node:util';
import { createNodeGpu } from '../../src/engine/gpu/node-gpu';
import { packParams } from '../../src/engine/gpu/dispatch';
import { crossEntropy, crossEntropyThreads } from '../../src/engine/kernels/cross-entropy';
import { grid1d } from '../../src/engine/kernels/grid';
import oldCode from './cross_entropy_old.wgsl?raw';

const { values: a } = parseArgs({
  options: {
    rows: { type: 'string' }, reps: { type: 'string' }, sms: { type: 'string' }, only: { type: 'string' },
    'no-check': { type: 'boolean' }, 'dawn-flags': { type: 'string' },
  },
});
const ROWS = Number(a.rows ?? 2048);
const REPS = Number(a.reps ?? 20);
const SMS = Number(a.sms ?? 132); // H100 SXM: 132 SMs (PCIe: 114)
const check = !a['no-check'];
const extra = a['dawn-flags'] ? a['dawn-flags'].split(',').map((f) => `enable-dawn-features=${f}`) : [];
const gpu = await createNodeGpu({ dawnFlags: ['disable-dawn-features=timestamp_quantization', ...extra] });
const device = gpu.device;
device.onuncapturederror = (e) => console.error('uncaptured', e.error?.message);
const limit = Math.min(gpu.info.limits.maxComputeInvocationsPerWorkgroup, device.limits.maxComputeWorkgroupSizeX);
console.log(`${gpu.info.vendor} ${gpu.info.architecture} ${gpu.info.description} | max threads ${limit} | rows ${ROWS} reps ${REPS} sms ${SMS}`);

const SHAPES: [string, number, number][] = [
  ['gpt2', 50257, 50260],
  ['gpt2 dense', 50257, 50257],
  ['smollm2', 49152, 49152],
];
// threads per row (undefined: the engine's choice), workgroups (rows in flight; undefined: one per row)
const VARIANTS: { name: string; old?: boolean; threads?: number; workgroups?: number }[] = [
  { name: 'old', old: true },
  { name: 'new default' },
  ...[1024, 512, 256].map((t) => ({ name: `new t${t}`, threads: t })),
  { name: 'new t1024 wg=1*sms', threads: 1024, workgroups: SMS },
  { name: 'new t1024 wg=2*sms', threads: 1024, workgroups: 2 * SMS },
  { name: 'new t512 wg=2*sms', threads: 512, workgroups: 2 * SMS },
  { name: 'new t512 wg=4*sms', threads: 512, workgroups: 4 * SMS },
  { name: 'new t256 wg=4*sms', threads: 256, workgroups: 4 * SMS },
  { name: 'new t256 wg=8*sms', threads: 256, workgroups: 8 * SMS },
].filter((v) => v.old || !(v.threads > limit)).filter((v) => v.old || !a.only || v.name.includes(a.only));

const S = GPUBufferUsage.STORAGE, CS = GPUBufferUsage.COPY_SRC, CD = GPUBufferUsage.COPY_DST;

function lcg(seed: number) {
  let s = seed >>> 0;
  return () => ((s = (s * 1664525 + 1013904223) >>> 0) / 2 ** 32);
}

async function readBuffer(buf: GPUBuffer, bytes: number): Promise<ArrayBuffer> {
  const staging = device.createBuffer({ size: bytes, usage: GPUBufferUsage.MAP_READ | CD });
  const enc = device.createCommandEncoder();
  enc.copyBufferToBuffer(buf, 0, staging, 0, bytes);
  device.queue.submit([enc.finish()]);
  await staging.mapAsync(GPUMapMode.READ);
  const out = staging.getMappedRange().slice(0);
  staging.unmap();
  staging.destroy();
  return out;
}

const results = [];
for (const [shape, V, ld] of SHAPES) {
  const rows = ROWS;
  const n = rows * ld;
  const bytes = n * 4;
  // logits in [-8, 8), padding columns a sentinel; targets uniform with every 17th row ignored
  const r = lcg(7);
  const host = new Float32Array(n);
  for (let i = 0; i < n; i++) host[i] = (i % ld) < V ? (r() * 2 - 1) * 8 : 1234.5;
  const tg = new Int32Array(rows);
  for (let i = 0; i < rows; i++) tg[i] = i % 17 === 5 ? -100 : Math.floor(r() * V);
  const valid = tg.filter((t) => t >= 0).length;
  const pristine = gpu.buffer(bytes, 'pristine', S | CS | CD);
  device.queue.writeBuffer(pristine, 0, host);
  const work = gpu.tensor([n], 'logits');
  const targets = gpu.tensorFrom(tg, [rows], 'targets');
  const gradScale = gpu.tensorFrom(Float32Array.of(1 / valid), [1], 'gradScale');
  const losses = gpu.tensor([rows], 'losses');
  const oldPipeline = device.createComputePipeline({ layout: 'auto', compute: { module: device.createShaderModule({ code: oldCode }), entryPoint: 'main' } });
  const ub = device.createBuffer({ size: 16, usage: GPUBufferUsage.UNIFORM | CD });
  device.queue.writeBuffer(ub, 0, packParams([rows, V, 0, ld]));
  const oldBind = device.createBindGroup({
    layout: oldPipeline.getBindGroupLayout(0),
    entries: [ub, work.buffer, targets.buffer, gradScale.buffer, losses.buffer].map((buffer, binding) => ({ binding, resource: { buffer } })),
  });
  const qs = device.createQuerySet({ type: 'timestamp', count: 2 });
  const qb = device.createBuffer({ size: 16, usage: GPUBufferUsage.QUERY_RESOLVE | CS });
  const qr = device.createBuffer({ size: 16, usage: GPUBufferUsage.MAP_READ | CD });
  let refLoss: Float32Array | null = null, refGrad: Float32Array | null = null;
  console.log(`${shape} ${rows} x ${V} ld=${ld}: ${(12 * rows * V / 1e9).toFixed(3)} GB moved per call (read twice, written once)`);

  for (const v of VARIANTS) {
    let pipeline: GPUComputePipeline, bindGroup: GPUBindGroup, wg: [number, number, number];
    if (v.old) {
      [pipeline, bindGroup, wg] = [oldPipeline, oldBind, grid1d(rows, 1)];
    } else {
      const d = crossEntropy(gpu, { logits: work, targets, losses, gradScale, rows, V, ld, threads: v.threads, workgroups: v.workgroups });
      [pipeline, bindGroup, wg] = [d.pipeline, d.bindGroup, d.workgroups];
    }
    const encodeRun = (enc: GPUCommandEncoder, reps: number, timed: boolean) => {
      const pass = enc.beginComputePass(timed ? { timestampWrites: { querySet: qs, beginningOfPassWriteIndex: 0, endOfPassWriteIndex: 1 } } : undefined);
      pass.setPipeline(pipeline);
      pass.setBindGroup(0, bindGroup);
      for (let k = 0; k < reps; k++) pass.dispatchWorkgroups(...wg);
      pass.end();
    };
    const fresh = (enc: GPUCommandEncoder) => enc.copyBufferToBuffer(pristine, 0, work.buffer, 0, bytes);

    // correctness: one call on fresh logits
    device.pushErrorScope('validation');
    let enc = device.createCommandEncoder();
    fresh(enc);
    encodeRun(enc, 1, false);
    device.queue.submit([enc.finish()]);
    const err = await device.popErrorScope();
    if (err) {
      console.log(`  ${v.name}: ERROR ${err.message.slice(0, 400)}`);
      continue;
    }
    let note = '';
    if (check) {
      const gotLoss = new Float32Array(await readBuffer(losses.buffer, rows * 4));
      const gotAll = new Float32Array(await readBuffer(work.buffer, bytes));
      if (v.old) {
        refLoss = gotLoss;
        refGrad = gotAll;
        // float64 reference for the first rows' losses
        let worst = 0;
        for (let row = 0; row < Math.min(rows, 3); row++) {
          const x = host.subarray(row * ld, row * ld + V);
          let m = -Infinity;
          for (let c = 0; c < V; c++) m = Math.max(m, x[c]);
          let s = 0;
          for (let c = 0; c < V; c++) s += Math.exp(x[c] - m);
          const want = tg[row] < 0 ? 0 : m + Math.log(s) - x[tg[row]];
          worst = Math.max(worst, Math.abs(gotLoss[row] - want));
        }
        note = `loss vs f64 ${worst.toExponential(1)}`;
      } else {
        let dl = 0, dg = 0, pad = 0, nan = 0;
        for (let i = 0; i < rows; i++) dl = Math.max(dl, Math.abs(gotLoss[i] - refLoss[i]));
        for (let i = 0; i < n; i++) {
          if (i % ld >= V) {
            if (gotAll[i] !== host[i]) pad++;
            continue;
          }
          const d = Math.abs(gotAll[i] - refGrad[i]);
          if (d > dg) dg = d;
          else if (!(d <= dg)) nan++;
        }
        note = `vs old: loss ${dl.toExponential(1)} grad ${dg.toExponential(1)}${pad ? ` PADDING CHANGED x${pad}` : ''}${nan || !(dl <= 1e-3) ? ` BAD (NaN ${nan})` : ''}`;
      }
    }

    // timing: warm-up, then best of 3 passes of REPS dispatches, each on fresh logits
    enc = device.createCommandEncoder();
    fresh(enc);
    encodeRun(enc, 2, false);
    device.queue.submit([enc.finish()]);
    let best = Infinity, sum = 0;
    for (let trial = 0; trial < 3; trial++) {
      enc = device.createCommandEncoder();
      fresh(enc);
      encodeRun(enc, REPS, true);
      enc.resolveQuerySet(qs, 0, 2, qb, 0);
      enc.copyBufferToBuffer(qb, 0, qr, 0, 16);
      device.queue.submit([enc.finish()]);
      await qr.mapAsync(GPUMapMode.READ);
      const t = new BigUint64Array(qr.getMappedRange().slice(0));
      qr.unmap();
      const ms = Number(t[1] - t[0]) / 1e6 / REPS;
      best = Math.min(best, ms);
      sum += ms;
    }
    const gbs = (12 * rows * V) / best / 1e6;
    const threads = v.old ? 256 : v.threads ?? crossEntropyThreads(V, limit);
    results.push({ shape, rows, V, ld, variant: v.name, threads, workgroups: v.old ? rows : Math.min(rows, v.workgroups ?? rows), ms: best, meanMs: sum / 3, gbs, note });
    const name = v.threads === undefined && !v.old ? `${v.name} (t${threads})` : v.name;
    console.log(`  ${name.padEnd(22)} ${best.toFixed(4)} ms (mean ${(sum / 3).toFixed(4)})  ${gbs.toPrecision(4).padStart(6)} GB/s  ${note}`);
  }
  for (const t of [work, targets, gradScale, losses]) gpu.destroyTensor(t);
  pristine.destroy();
}
if (process.env.OUT) (await import('node:fs')).appendFileSync(`${process.env.OUT}/cross-entropy.jsonl`, results.map((x) => JSON.stringify(x) + '\n').join(''));
process.exit(0);
