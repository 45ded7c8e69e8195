// Loading a PEFT adapter (adapter_config.json + adapter_model.safetensors) back onto a model:
// for inference, to continue training, or to check an export. Mismatches are named, not crashed on.

import type { Gpu } from '../gpu/gpu';
import type { StepUniforms } from '../kernels/step-uniforms';
import { parseSafetensors } from '../../io/safetensors';
import { Lora, LoraError, type LinearModuleInfo } from './lora';

export class AdapterError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'AdapterError';
  }
}

export interface AdapterFilesIn {
  config: string;
  weights: Uint8Array;
  /** For messages, e.g. the folder or zip name. */
  name: string;
}

/** Builds a LoRA from PEFT files, checking method, names and shapes against the model. */
export function importLoraAdapter(gpu: Gpu, files: AdapterFilesIn, linears: readonly LinearModuleInfo[], step: StepUniforms): Lora {
  let cfg: Record<string, unknown>;
  try {
    cfg = JSON.parse(files.config) as Record<string, unknown>;
  } catch (e) {
    throw new AdapterError(`${files.name}: adapter_config.json is not valid JSON (${(e as Error).message})`);
  }
  if (cfg.peft_type !== 'LORA') throw new AdapterError(`${files.name}: peft_type ${JSON.stringify(cfg.peft_type)} is not supported here (LORA)`);
  if (cfg.use_dora) throw new AdapterError(`${files.name}: DoRA adapters are not supported yet`);
  const r = Number(cfg.r), alpha = Number(cfg.lora_alpha);
  let targets = cfg.target_modules;
  if (typeof targets === 'string') throw new AdapterError(`${files.name}: regular-expression target_modules ("${targets}") are not supported; list the module names`);
  if (!Array.isArray(targets) || !targets.every((t) => typeof t === 'string')) throw new AdapterError(`${files.name}: adapter_config.json has no target_modules list`);
  targets = targets as string[];
  const weights = parseSafetensors(files.weights, `${files.name}/adapter_model.safetensors`);
  let lora: Lora;
  try {
    lora = new Lora(gpu, { r, alpha, dropout: 0, targetModules: targets as string[], useRslora: Boolean(cfg.use_rslora) }, linears, step, () => 0.5);
  } catch (e) {
    if (e instanceof LoraError) throw new AdapterError(`${files.name}: ${e.message}`);
    throw e;
  }
  // PEFT saves names without the adapter name; older files may carry ".default".
  const byName = new Map<string, string>();
  for (const n of weights.tensors.keys()) byName.set(n.replace('.default.weight', '.weight'), n);
  const missing = lora.params.filter((p) => !byName.has(p.name)).map((p) => p.name);
  if (missing.length) {
    throw new AdapterError(`${files.name}: ${missing.length} tensors this model needs are missing (first: ${missing[0]}); was it trained on another base model?`);
  }
  const expected = new Set(lora.params.map((p) => p.name));
  const extra = [...byName.keys()].filter((n) => !expected.has(n));
  if (extra.length) throw new AdapterError(`${files.name}: ${extra.length} tensors do not belong to this model (first: ${extra[0]}); was it trained on another base model?`);
  for (const p of lora.params) {
    const stored = byName.get(p.name)!;
    const info = weights.tensors.get(stored)!;
    if (info.shape.length !== p.shape.length || info.shape.some((d, i) => d !== p.shape[i])) {
      throw new AdapterError(`${files.name}: ${stored} has shape [${info.shape.join(', ')}], this model needs [${p.shape.join(', ')}]`);
    }
    gpu.write(p.value, weights.getF32(stored));
  }
  return lora;
}
