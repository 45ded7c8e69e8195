// The adapter as Hugging Face PEFT saves it: adapter_config.json + adapter_model.safetensors with
// PEFT's state-dict names (no adapter name inside, e.g. ...c_attn.lora_A.weight). Bottleneck
// adapters, which PEFT does not have, are saved as the AdapterHub `adapters` library saves them:
// adapter_config.json + adapter.safetensors (its safetensors weights name) with its state-dict names.

import type { Gpu } from '../gpu/gpu';
import type { PeftMethod } from '../peft/method';
import { writeSafetensors } from '../../io/safetensors';

export interface AdapterFiles {
  'adapter_config.json': string;
  'adapter_model.safetensors': Uint8Array;
}

/** An exported adapter folder: the config, and the weights under the file name its format uses. */
export interface ExportedAdapter {
  format: 'peft' | 'adapterhub';
  config: string;
  /** adapter_model.safetensors (PEFT) or adapter.safetensors (AdapterHub) */
  weightsName: string;
  weights: Uint8Array;
}

/**
 * JSON as Python's json.dump(indent=2) writes it for this object, with the whole-number values of
 * `floatKeys` written as floats (1 -> 1.0), which a Python reader may type-check.
 */
export function configJson(config: Record<string, unknown>, floatKeys: readonly string[] = []): string {
  let text = JSON.stringify(config, null, 2);
  for (const k of floatKeys) {
    text = text.replace(new RegExp(`^(\\s*"${k}": )(-?\\d+)(,?)$`, 'gm'), '$1$2.0$3');
  }
  return text + '\n';
}

/** The weights file of each format. */
export const WEIGHTS_FILE = { peft: 'adapter_model.safetensors', adapterhub: 'adapter.safetensors' } as const;

/**
 * Reads the trained parameters back and packs them as the method's format wants: every parameter
 * under its name, or what the method says is saved (prefix tuning's projection saves the prefix it makes).
 */
export async function exportAdapter(gpu: Gpu, peft: PeftMethod, baseModel: string): Promise<ExportedAdapter> {
  const tensors = [];
  if (peft.exportTensors) {
    for (const t of await peft.exportTensors((x) => gpu.read(x))) tensors.push({ ...t, dtype: 'F32' as const });
  } else {
    for (const p of peft.params) {
      tensors.push({ name: p.name, dtype: 'F32' as const, shape: p.shape, data: await gpu.read(p.value) });
    }
  }
  const format = peft.exportFormat ?? 'peft';
  return {
    format,
    config: configJson(peft.adapterConfig(baseModel), peft.configFloatKeys),
    weightsName: WEIGHTS_FILE[format],
    weights: writeSafetensors(tensors, { format: 'pt' }),
  };
}

/** PEFT's two files (methods PEFT has: everything but the bottleneck adapters). */
export async function exportPeftAdapter(gpu: Gpu, peft: PeftMethod, baseModel: string): Promise<AdapterFiles> {
  if ((peft.exportFormat ?? 'peft') !== 'peft') throw new Error(`a ${peft.kind} adapter is saved in the ${peft.exportFormat} format, not PEFT's: use exportAdapter`);
  const e = await exportAdapter(gpu, peft, baseModel);
  return { 'adapter_config.json': e.config, 'adapter_model.safetensors': e.weights };
}
