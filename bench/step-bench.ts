// Training-step benchmark of our engine: a model folder (random weights are fine), LoRA, AdamW,
// full steps on random token sequences of exactly B x T tokens, the same Trainer the app and the
// CLI run. Prints ms/step over a window early in the run and one late in it (steady state), then
// per-kernel GPU times from timestamp queries over a few more steps.
//   here:        node scripts/node-run.mjs --bundle-only bench/dist bench/step-bench.ts
//   GPU machine: bash .gpu/boot.sh node bench/dist/step-bench.mjs --model DIR --targets c_attn [--steps 500] [--json FILE] [--frozen f16]
import fs from 'node:fs';
import { parseArgs } from 'node:util';
import { createNodeGpu } from '../src/engine/gpu/node-gpu';
import { tuningArg } from './tuning-arg';
import { fmtBytes, type KernelTuning } from '../src/engine/gpu/gpu';
import { KernelProfiler } from '../src/engine/gpu/profiler';
import { nodeModelFiles } from '../src/io/model-files-node';
import { loadHfModel } from '../src/io/model-files';
import { Trainer, DEFAULT_TRAIN_CONFIG, type TrainConfig } from '../src/engine/train/trainer';
import { loraRun } from './lora-run';

const { values: a } = parseArgs({
  options: {
    model: { type: 'string' }, targets: { type: 'string' }, rank: { type: 'string' },
    batch: { type: 'string' }, seq: { type: 'string' }, steps: { type: 'string' },
    'profile-steps': { type: 'string' }, json: { type: 'string' }, matmul: { type: 'string' }, 'wide-min': { type: 'string' },
    // any KernelTuning values, e.g. --tuning splitKMaxSlices=8,flashAttention=true
    tuning: { type: 'string' },
    // Dawn's toggles for tensor cores (kernels/matmul-tc.ts): the frozen products in mixed precision
    'tensor-cores': { type: 'boolean' },
    // the frozen matrices in f16 (models/weights.ts FrozenStorage; GPT-2)
    frozen: { type: 'string' },
  },
});
if (!a.model) throw new Error('--model DIR is required');
const B = Number(a.batch ?? 8), T = Number(a.seq ?? 256), steps = Number(a.steps ?? 60), rank = Number(a.rank ?? 8);
const profileSteps = Number(a['profile-steps'] ?? 5);

const hf = await loadHfModel(nodeModelFiles(a.model));
const matmulMode = (a.matmul ?? 'auto') as KernelTuning['matmul'];
const gpu = await createNodeGpu({
  dawnFlags: ['disable-dawn-features=timestamp_quantization'],
  tensorCores: a['tensor-cores'] ?? false,
  tuning: {
    matmul: matmulMode, ...(a['wide-min'] ? { wideMatmulMinWorkgroups: Number(a['wide-min']) } : {}),
    ...tuningArg(a.tuning),
  },
});
console.log(`device: ${gpu.info.description || gpu.info.vendor}${gpu.hasTensorCores && gpu.tuning.tensorCores ? (gpu.tuning.tensorCoreF32 ? ' (tensor cores: frozen products with f32 accuracy, hi + lo halves)' : ' (tensor cores: frozen products in f16 x f16 -> f32)') : ''}`);
if (a['tensor-cores'] && !gpu.hasTensorCores) throw new Error('--tensor-cores: this device has no f16 subgroup matrices');
if (gpu.tuning.tensorCoreF32 && gpu.info.tensorCoreF32Refused) throw new Error(gpu.info.tensorCoreF32Refused);
// Random full-length sequences: every position is a real token with a loss.
if (a.frozen && a.frozen !== 'f16' && a.frozen !== 'f32') throw new Error(`--frozen f16 | f32 (got ${a.frozen})`);
const { loaded, stepUniforms, targets, method, examples } = loraRun(gpu, hf, { targets: a.targets?.split(','), rank, count: 64, T, frozen: a.frozen as 'f16' | 'f32' | undefined });
const totalSteps = steps + profileSteps;
const config: TrainConfig = { ...DEFAULT_TRAIN_CONFIG, batchSize: B, gradAccumSteps: 1, totalSteps, seqLen: T, lr: 1e-4, schedule: 'constant', evalEvery: 0 };
const trainer = new Trainer(gpu, loaded.model, method, examples, [], config, 0, stepUniforms);
console.log(`${a.model}: LoRA r=${rank} on ${targets.join(',')}, ${B} x ${T}, ${steps} timed steps, matmul tile ${matmulMode}, tuning ${JSON.stringify(gpu.tuning)}`);

// Step i's report arrives when its GPU work has finished; times between reports are the step times.
const done: number[] = [];
let lastLoss = NaN;
let stopAt = steps;
await trainer.run({
  shouldStop: () => trainer.step >= stopAt,
  onStep: (r) => {
    done[r.step] = performance.now();
    lastLoss = r.loss;
  },
});
const window = (from: number, to: number) => (done[to] - done[from]) / (to - from);
const early = Math.min(50, steps);
const windows: Record<string, number> = {};
if (steps >= 20) windows[`steps 10-${early}`] = window(10, early);
if (steps >= 100) windows[`steps ${steps - 50}-${steps}`] = window(steps - 50, steps);
const overall = window(Math.min(5, steps - 1), steps);
// every 50-step window from step 10 on: whether a difference between the two above is drift or noise
const every50: number[] = [];
for (let from = 10; from + 50 <= steps; from += 50) every50.push(window(from, from + 50));
for (const [k, ms] of Object.entries(windows)) console.log(`${k}: ${ms.toFixed(2)} ms/step, ${Math.round((B * T) / ms * 1000).toLocaleString('en-US')} tok/s`);
console.log(`step time: ${overall.toFixed(2)} ms/step (loss ${lastLoss.toFixed(4)}); gpu memory: ${fmtBytes(gpu.allocatedBytes)}`);

// Per-kernel times over a few more steps.
const profiler = new KernelProfiler(gpu);
gpu.profiler = profiler;
stopAt = steps + profileSteps;
const tProfile0 = performance.now();
let collected = Promise.resolve();
await trainer.run({
  shouldStop: () => trainer.step >= stopAt,
  onStep: () => {
    collected = collected.then(() => profiler.collect());
  },
});
await collected;
await profiler.collect();
gpu.profiler = null;
const table = profiler.table();
const sum = table.reduce((s, r) => s + r.totalMs, 0) / profileSteps;
console.log(`\nper-kernel GPU time, mean over ${profileSteps} steps (sum ${sum.toFixed(2)} ms/step in ${((performance.now() - tProfile0) / profileSteps).toFixed(1)} ms wall; ${profiler.dropped} dispatches unmeasured):`);
for (const r of table.slice(0, 40)) {
  console.log(`${(r.totalMs / profileSteps).toFixed(3).padStart(9)} ms ${((100 * r.totalMs) / profileSteps / sum).toFixed(1).padStart(5)}%  x${String(r.count / profileSteps).padEnd(4)} ${r.kernel}`);
}
if (a.json) {
  fs.writeFileSync(a.json, JSON.stringify({
    model: a.model, tuning: gpu.tuning, tensorCores: gpu.hasTensorCores && gpu.tuning.tensorCores, batch: B, seq: T, steps, rank, targets, msPerStep: overall, windows, every50,
    // every step's time (report to report), steps 2 .. steps: outliers against drift
    stepMs: done.slice(2, steps + 1).map((t, i) => +(t - done[i + 1]).toFixed(3)),
    tokensPerS: (B * T) / overall * 1000, gpuBytes: gpu.allocatedBytes, frozen: a.frozen ?? 'f32',
    kernels: table.map((r) => ({ kernel: r.kernel, msPerStep: r.totalMs / profileSteps, perStep: r.count / profileSteps })),
  }, null, 1));
}
process.exit(0);
