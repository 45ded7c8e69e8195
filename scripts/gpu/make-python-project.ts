// For scripts/gpu/python-project-check.sh: the Python project the app exports (src/engine/export/
// python-project.ts) for an adapter folder our CLI trained, with a text-column mapping.
//   node bench/dist/make-python-project.mjs ADAPTER_DIR DATA_FILE TEXT_COLUMN BASE_MODEL OUT_DIR
import fs from 'node:fs';
import path from 'node:path';
import { pythonProject } from '../../src/engine/export/python-project';

const [adapterDir, dataFile, textColumn, baseModel, outDir] = process.argv.slice(2);
const files = pythonProject({
  name: 'cli run',
  baseModel,
  adapter: { config: fs.readFileSync(path.join(adapterDir, 'adapter_config.json'), 'utf8'), weights: new Uint8Array(fs.readFileSync(path.join(adapterDir, 'adapter_model.safetensors'))) },
  data: { fileName: path.basename(dataFile), bytes: new Uint8Array(fs.readFileSync(dataFile)) },
  mapping: { kind: 'text', text: textColumn },
  hyper: { learningRate: 1e-2, steps: 6, batchSize: 2, gradAccum: 1, maxLength: 32, warmupSteps: 1, schedule: 'linear', weightDecay: 0, maxGradNorm: 1, validationFraction: 0.25, evalEvery: 3, seed: 7 },
});
for (const [p, data] of files) {
  fs.mkdirSync(path.dirname(path.join(outDir, p)), { recursive: true });
  fs.writeFileSync(path.join(outDir, p), data);
}
console.log(`wrote ${outDir}: ${[...files.keys()].join(', ')}`);
