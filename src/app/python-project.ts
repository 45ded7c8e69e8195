// The library's "Python project" download: the run's data mapping and hyperparameters, the adapter
// trained so far and (when the same data file is loaded) the data, as a folder that continues the
// training with transformers + PEFT on a GPU server (src/engine/export/python-project.ts).

import { zipSync } from 'fflate';
import { pythonProject, PythonProjectError, type ProjectMapping } from '../engine/export/python-project';
import { warmupStepsFromRatio } from '../train/schedule';
import { DEFAULT_TRAIN_CONFIG } from '../engine/train/trainer';
import { getAdapterFiles, taskOf, weightsFileOf, type AdapterMeta } from '../worker/storage';
import { withDefaults } from '../worker/settings';
import { slug } from './format';

/** Why an adapter cannot become a Python project, or null. */
export function pythonProjectRefusal(meta: AdapterMeta): string | null {
  if (meta.imported) return 'An imported adapter has no run (data mapping, settings) to continue.';
  if (taskOf(meta) === 'classification') return 'The Python project is for text-generation runs.';
  if (meta.method === 'bottleneck') return 'PEFT has no bottleneck adapters, so the run cannot continue in PEFT.';
  return null;
}

/** The zip, with `data` (the file the run used) when the page still has it. */
export async function pythonProjectZip(meta: AdapterMeta, data: File | null): Promise<{ fileName: string; bytes: Uint8Array; withData: boolean }> {
  const refusal = pythonProjectRefusal(meta);
  if (refusal) throw new PythonProjectError(refusal);
  const files = await getAdapterFiles(meta.id);
  if (!files) throw new PythonProjectError(`The files of “${meta.name}” are missing from browser storage (it may have been cleared).`);
  const s = withDefaults(meta.settings);
  const totalSteps = meta.metrics.totalSteps;
  const dataBytes = data ? new Uint8Array(await data.arrayBuffer()) : undefined;
  const project = pythonProject({
    name: meta.name,
    baseModel: meta.baseModel.name,
    adapter: { config: files['adapter_config.json'], weights: weightsFileOf(files).bytes },
    data: { fileName: meta.data.fileName, bytes: dataBytes },
    mapping: meta.mapping as ProjectMapping,
    hyper: {
      learningRate: s.learningRate,
      steps: totalSteps,
      batchSize: s.batchSize,
      gradAccum: s.gradAccum,
      maxLength: s.maxLength,
      warmupSteps: warmupStepsFromRatio(s.warmupRatio, totalSteps),
      schedule: s.schedule,
      weightDecay: s.weightDecay,
      maxGradNorm: DEFAULT_TRAIN_CONFIG.maxGradNorm,
      validationFraction: s.validationFraction,
      evalEvery: s.evalEvery,
      seed: s.seed,
    },
  });
  const folder = `${slug(meta.name)}-python`;
  const entries: Record<string, [Uint8Array, { level: 0 | 6 }]> = {};
  for (const [path, content] of project) {
    const bytes = typeof content === 'string' ? new TextEncoder().encode(content) : content;
    entries[`${folder}/${path}`] = [bytes, { level: path.endsWith('.safetensors') ? 0 : 6 }];
  }
  return { fileName: `${folder}.zip`, bytes: zipSync(entries), withData: Boolean(dataBytes) };
}
