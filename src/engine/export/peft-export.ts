// The adapter as Hugging Face PEFT saves it: adapter_config.json + adapter_model.safetensors with
// PEFT's state-dict names (no adapter name inside, e.g. ...c_attn.lora_A.weight).

import type { Gpu } from '../gpu/gpu';
import type { PeftMethod } from '../peft/method';
import { writeSafetensors } from '../../io/safetensors';

export interface AdapterFiles {
  'adapter_config.json': string;
  'adapter_model.safetensors': Uint8Array;
}

/**
 * Reads the trained parameters back and packs them as PEFT's two files: every parameter under its
 * PEFT name, or what the method says PEFT saves (prefix tuning's projection saves the prefix it makes).
 */
export async function exportPeftAdapter(gpu: Gpu, peft: PeftMethod, baseModel: string): Promise<AdapterFiles> {
  const tensors = [];
  if (peft.exportTensors) {
    for (const t of await peft.exportTensors((x) => gpu.read(x))) tensors.push({ ...t, dtype: 'F32' as const });
  } else {
    for (const p of peft.params) {
      tensors.push({ name: p.name, dtype: 'F32' as const, shape: p.shape, data: await gpu.read(p.value) });
    }
  }
  const config = peft.adapterConfig(baseModel);
  return {
    'adapter_config.json': JSON.stringify(config, null, 2) + '\n',
    'adapter_model.safetensors': writeSafetensors(tensors, { format: 'pt' }),
  };
}
