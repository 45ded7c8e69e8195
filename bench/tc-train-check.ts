// Training on tensor cores against the f32 path (issue #7's "a correctness test against the plain
// path over ~30 steps"): the same model, LoRA, data and seeds trained STEPS steps twice, once with
// every product in f32 and once with the frozen layers' products on tensor cores (kernels/matmul-tc.ts),
// then compared step by step (loss, gradient norm) and at the end (the LoRA parameters' change from
// their start). Exits 1 when a difference passes its bound (printed with it). --f32-accuracy: the
// tensor-core run with f32 accuracy (tuning.tensorCoreF32: operands as hi + lo halves), against
// bounds 100 times tighter. --f32-noise: instead of the tensor cores, the f32 kernels again in other
// tiles (no stream-K nor split-K, 64x64 tiles): how far two f32 runs that sum in another order drift
// apart, the yardstick for --f32-accuracy's differences.
//   here:        node scripts/node-run.mjs --bundle-only bench/dist bench/tc-train-check.ts
//   GPU machine: bash .gpu/boot.sh node bench/dist/tc-train-check.mjs --model DIR --targets c_attn [--steps 30] [--f32-accuracy] [--json FILE]
import fs from 'node:fs';
import { parseArgs } from 'node:util';
import { createNodeGpu } from '../src/engine/gpu/node-gpu';
import { tuningArg } from './tuning-arg';
import { nodeModelFiles } from '../src/io/model-files-node';
import { loadHfModel } from '../src/io/model-files';
import { Trainer, DEFAULT_TRAIN_CONFIG, type TrainConfig } from '../src/engine/train/trainer';
import { loraRun } from './lora-run';

const { values: a } = parseArgs({ options: { model: { type: 'string' }, targets: { type: 'string' }, steps: { type: 'string' }, json: { type: 'string' }, 'f32-accuracy': { type: 'boolean' }, 'f32-noise': { type: 'boolean' }, tuning: { type: 'string' } } });
// --tuning k=v,...: KernelTuning values for the tensor-core run
const extraTuning = tuningArg(a.tuning);
const f32Noise = a['f32-noise'] ?? false;
const f32Accuracy = a['f32-accuracy'] ?? false;
if (!a.model) throw new Error('--model DIR is required');
const steps = Number(a.steps ?? 30), B = 8, T = 256, rank = 8;
const hf = await loadHfModel(nodeModelFiles(a.model));

interface Run { losses: number[]; gradNorms: number[]; start: Float32Array[]; end: Float32Array[]; tensorCores: boolean; ms: number }
async function train(tensorCores: boolean, otherOrder = false): Promise<Run> {
  const gpu = await createNodeGpu({ tensorCores, tuning: { tensorCoreF32: tensorCores && f32Accuracy, ...(tensorCores ? extraTuning : {}), ...(otherOrder ? { streamK: false, splitKMinK: 1e9, matmul: '64x64' as const } : {}) } });
  if (tensorCores && !gpu.hasTensorCores) throw new Error('this device has no f16 subgroup matrices');
  // a few sequences, seen again and again: the loss falls, so the comparison covers real learning
  const { loaded, stepUniforms, method, examples } = loraRun(gpu, hf, { targets: a.targets?.split(','), rank, count: 16, T });
  const config: TrainConfig = { ...DEFAULT_TRAIN_CONFIG, batchSize: B, gradAccumSteps: 1, totalSteps: steps, seqLen: T, lr: 1e-3, schedule: 'constant', evalEvery: 0 };
  const start = await Promise.all(method.params.map((p) => gpu.read(p.value)));
  const trainer = new Trainer(gpu, loaded.model, method, examples, [], config, 0, stepUniforms);
  const losses: number[] = [], gradNorms: number[] = [];
  const t0 = performance.now();
  await trainer.run({ shouldStop: () => trainer.step >= steps, onStep: (r) => { losses[r.step - 1] = r.loss; gradNorms[r.step - 1] = r.gradNorm; } });
  const ms = performance.now() - t0;
  const end = await Promise.all(method.params.map((p) => gpu.read(p.value)));
  return { losses, gradNorms, start, end, tensorCores: gpu.hasTensorCores && gpu.tuning.tensorCores, ms };
}

const f32 = await train(false);
const tc = f32Noise ? await train(false, true) : await train(true);
if (!f32Noise && (!tc.tensorCores || f32.tensorCores)) throw new Error('the runs did not differ in their products');
const rel = (x: number, y: number) => Math.abs(x - y) / Math.max(Math.abs(y), 1e-12);
const lossDiff = Math.max(...tc.losses.map((l, i) => rel(l, f32.losses[i])));
const gradNormDiff = Math.max(...tc.gradNorms.map((g, i) => rel(g, f32.gradNorms[i])));
// the parameters' change from their start: |change_tc - change_f32| / |change_f32| over all of them
let num = 0, den = 0;
f32.end.forEach((e, i) => {
  for (let j = 0; j < e.length; j++) {
    const d32 = e[j] - f32.start[i][j], dtc = tc.end[i][j] - tc.start[i][j];
    num += (dtc - d32) ** 2;
    den += d32 ** 2;
  }
});
const updateDiff = Math.sqrt(num / den);
const bounds = f32Accuracy ? { loss: 2e-5, gradNorm: 5e-4, update: 5e-4 } : { loss: 2e-3, gradNorm: 5e-2, update: 5e-2 };
const ok = lossDiff <= bounds.loss && gradNormDiff <= bounds.gradNorm && updateDiff <= bounds.update;
for (let i = 0; i < steps; i++) console.log(`step ${String(i + 1).padStart(3)}: loss f32 ${f32.losses[i].toFixed(5)} tc ${tc.losses[i].toFixed(5)}  grad norm f32 ${f32.gradNorms[i].toFixed(4)} tc ${tc.gradNorms[i].toFixed(4)}`);
console.log(`${a.model}: ${steps} steps, ${f32Noise ? 'f32 kernels summing in another order' : `tensor cores ${f32Accuracy ? 'with f32 accuracy (hi + lo halves)' : 'with f16 operands'}`}, loss ${f32.losses[0].toFixed(4)} -> ${f32.losses[steps - 1].toFixed(4)} (f32) / ${tc.losses[steps - 1].toFixed(4)} (tensor cores)`);
console.log(`largest relative difference: loss ${lossDiff.toExponential(2)} (bound ${bounds.loss}), gradient norm ${gradNormDiff.toExponential(2)} (bound ${bounds.gradNorm}); parameters' change ${updateDiff.toExponential(2)} (bound ${bounds.update}); ${(f32.ms / steps).toFixed(1)} vs ${(tc.ms / steps).toFixed(1)} ms a step (first steps, pipelines included)`);
console.log(ok ? 'PASS' : 'FAIL');
if (a.json) fs.writeFileSync(a.json, JSON.stringify({ model: a.model, steps, f32Accuracy, f32Noise, bounds, lossDiff, gradNormDiff, updateDiff, ok, f32: { losses: f32.losses, gradNorms: f32.gradNorms }, tc: { losses: tc.losses, gradNorms: tc.gradNorms } }, null, 1));
process.exit(ok ? 0 : 1);
