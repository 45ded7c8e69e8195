// npm run verify:stories -- --shared ../shared [--steps 40]
// Replays PEFT's 40-step LoRA fine-tuning of stories260K on E2E (see stories-replay.ts) and prints
// our loss beside PEFT's for every step and evaluation. Exit 1 if a step differs by more than 1%.
import fs from 'node:fs';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { createNodeGpu } from '../engine/gpu/node-gpu';
import { nodeModelFiles } from '../io/model-files-node';
import { loadHfModel } from '../io/model-files';
import { parseSafetensors } from '../io/safetensors';
import { replayStoriesLora, type StoriesGolden } from './stories-replay';

const { values: a } = parseArgs({ options: { shared: { type: 'string', default: '../shared' }, steps: { type: 'string', default: '40' }, fixtures: { type: 'string', default: 'test/fixtures/goldens' } } });
const golden = JSON.parse(fs.readFileSync(path.join(a.fixtures!, 'stories260k.json'), 'utf8')) as StoriesGolden;
const init = parseSafetensors(new Uint8Array(fs.readFileSync(path.join(a.fixtures!, 'stories260k-lora.safetensors'))));
const hf = await loadHfModel(nodeModelFiles(path.join(a.shared!, 'models', 'stories260K-hf')));
const csv = fs.readFileSync(path.join(a.shared!, 'data', 'e2e_dev.csv'), 'utf8');
const gpu = await createNodeGpu();
console.log(`device: ${gpu.info.description || gpu.info.vendor}`);
let worst = 0;
const t0 = performance.now();
await replayStoriesLora(gpu, hf, csv, golden, init, {
  steps: Number(a.steps), evalEvery: 10,
  onStep: (s) => {
    worst = Math.max(worst, Math.abs(s.ours - s.peft) / s.peft);
    console.log(`step ${String(s.step).padStart(2)}  ours ${s.ours.toFixed(4)}  peft ${s.peft.toFixed(4)}  diff ${(s.ours - s.peft).toExponential(2)}`);
  },
  onEval: (e) => console.log(`eval after ${e.afterStep}: ours ${e.ours.toFixed(4)}  peft ${e.peft.toFixed(4)}`),
});
console.log(`worst step-loss difference ${(worst * 100).toFixed(4)}% over ${a.steps} steps in ${((performance.now() - t0) / 1000).toFixed(1)} s`);
process.exit(worst <= 0.01 ? 0 : 1);
