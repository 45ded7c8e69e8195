// Packs a stored adapter as the folder PEFT loads (adapter_config.json, adapter_model.safetensors;
// AdapterHub's adapter.safetensors for bottleneck adapters, with head_config.json and
// model_head.safetensors for a bottleneck classifier's head) plus its model card and
// trainer_state.json, zipped, and hands it to the browser as a download.

import { strToU8, zipSync } from 'fflate';
import { getAdapterFiles, headFilesOf, weightsFileOf, type AdapterMeta } from '../worker/storage';
import { slug } from './format';

export async function adapterZip(meta: AdapterMeta): Promise<{ fileName: string; bytes: Uint8Array }> {
  const files = await getAdapterFiles(meta.id);
  if (!files) throw new Error(`The files of “${meta.name}” are missing from browser storage (it may have been cleared).`);
  const weights = weightsFileOf(files);
  const head = headFilesOf(files);
  const bytes = zipSync(
    {
      'adapter_config.json': strToU8(files['adapter_config.json']),
      // Already dense float data: compressing buys little and costs time.
      [weights.name]: [weights.bytes, { level: 0 }],
      ...(head ? { 'head_config.json': strToU8(head.config), 'model_head.safetensors': [head.weights, { level: 0 }] } : {}),
      'README.md': strToU8(files['README.md']),
      'trainer_state.json': strToU8(files['trainer_state.json']),
    },
    { level: 6 },
  );
  return { fileName: `${slug(meta.name)}.zip`, bytes };
}

export function saveBytes(fileName: string, bytes: Uint8Array, type = 'application/zip'): void {
  const url = URL.createObjectURL(new Blob([bytes as BlobPart], { type }));
  const a = document.createElement('a');
  a.href = url;
  a.download = fileName;
  document.body.appendChild(a);
  a.click();
  a.remove();
  // Give the browser time to start reading the blob before it is revoked.
  setTimeout(() => URL.revokeObjectURL(url), 60_000);
}
