// The worker's half of "Download merged model": a saved LoRA / DoRA adapter folded into the loaded
// base model's weights (src/engine/export/merge.ts, as PEFT's merge_and_unload), zipped as a model
// folder transformers loads with from_pretrained. Runs on the CPU: the GPU keeps training if it is.

import { zipSync } from 'fflate';
import type { HfModel, ModelFiles } from '../io/model-files';
import { mergeAdapter, MergeError } from '../engine/export/merge';
import { getAdapterFiles, weightsFileOf, taskOf, type AdapterMeta } from './storage';

export interface MergedZip {
  fileName: string;
  bytes: Uint8Array;
  /** Weights changed by the merge. */
  merged: number;
  dtype: string;
}

/** Why an adapter cannot be merged (shown before asking), or null when it can. */
export function mergeRefusal(meta: Pick<AdapterMeta, 'method' | 'task'>): string | null {
  if (taskOf(meta as AdapterMeta) === 'classification') return 'Merging is for text-generation models; a classifier adapter carries its own head.';
  if (meta.method !== 'lora' && meta.method !== 'dora') return `Only LoRA and DoRA change the model's weights; a ${meta.method} adapter adds to the model and cannot be folded into it.`;
  return null;
}

function fileSlug(name: string): string {
  const s = name.normalize('NFKD').replace(/[^\w.-]+/g, '-').replace(/-+/g, '-').replace(/^[-.]+|[-.]+$/g, '');
  return s.slice(0, 80) || 'model';
}

/**
 * The merged model as a zip. `loaded` is the base model the worker holds; the adapter must have
 * been trained on a model of the same shape (its modules are checked tensor by tensor too).
 */
export async function mergedModelZip(meta: AdapterMeta, loaded: { files: ModelFiles; hf: HfModel; name: string }): Promise<MergedZip> {
  const refusal = mergeRefusal(meta);
  if (refusal) throw new MergeError(refusal);
  const cfg = loaded.hf.config as { model_type?: string; vocab_size?: number };
  const base = meta.baseModel;
  if ((cfg.model_type && cfg.model_type !== base.modelType) || (cfg.vocab_size !== undefined && cfg.vocab_size !== base.vocabSize)) {
    throw new MergeError(`“${meta.name}” was trained on ${base.name} (${base.modelType}); the loaded model is ${loaded.name} (${cfg.model_type ?? 'unknown type'}). Load ${base.name} first.`);
  }
  const files = await getAdapterFiles(meta.id);
  if (!files) throw new MergeError(`The files of “${meta.name}” are missing from browser storage (it may have been cleared).`);
  const merged = await mergeAdapter(loaded.files, loaded.hf, { name: meta.name, config: files['adapter_config.json'], weights: weightsFileOf(files).bytes });
  const folder = `${fileSlug(base.name.split('/').pop() ?? 'model')}-${fileSlug(meta.name)}-merged`;
  const entries: Record<string, [Uint8Array, { level: 0 | 6 }]> = {};
  // weights are dense floats: storing them uncompressed saves minutes for little size
  for (const [path, bytes] of merged.files) entries[`${folder}/${path}`] = [bytes, { level: path.endsWith('.safetensors') ? 0 : 6 }];
  return { fileName: `${folder}.zip`, bytes: zipSync(entries), merged: merged.merged.length, dtype: merged.dtype };
}
