// The adapter of a sequence-classification run as PEFT (task_type SEQ_CLS) holds it: LoRA on the
// encoder plus the head layers PEFT's modules_to_save train in full, saved under PEFT's names
// (base_model.model.classifier.weight, ...), and loading such an adapter back onto the model.

import type { Gpu } from '../gpu/gpu';
import type { Op } from '../gpu/dispatch';
import type { StepUniforms } from '../kernels/step-uniforms';
import { parseSafetensors } from '../../io/safetensors';
import { Lora, LoraError } from '../peft/lora';
import type { LinearGrad, LinearSite, PeftMethod, TrainableParam } from '../peft/method';
import { SEQ_CLS_MODULES_TO_SAVE, type EncoderClassifier } from './encoder';

export class SeqClsAdapterError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'SeqClsAdapterError';
  }
}

/**
 * LoRA (or nothing: head-only training) on the encoder, and the trainable head. `params` is what
 * the optimizer updates and the export writes: the LoRA tensors, then the head's.
 */
export class SequenceClassificationAdapter implements PeftMethod {
  readonly kind = 'lora' as const;
  readonly params: TrainableParam[];

  constructor(
    readonly lora: Lora | null,
    readonly head: readonly TrainableParam[],
    readonly modulesToSave: readonly string[] = SEQ_CLS_MODULES_TO_SAVE,
  ) {
    this.params = [...(lora?.params ?? []), ...head];
  }

  targetsLinear(module: string): boolean {
    return this.lora?.targetsLinear(module) ?? false;
  }

  linearForward(site: LinearSite): Op[] {
    return this.lora!.linearForward(site);
  }

  linearBackward(site: LinearSite, grad: LinearGrad): Op[] {
    return this.lora!.linearBackward(site, grad);
  }

  /** PEFT's adapter_config.json for LoRA with task_type SEQ_CLS (head-only runs have none). */
  adapterConfig(baseModel: string): Record<string, unknown> {
    if (!this.lora) throw new SeqClsAdapterError('a head-only run has no PEFT adapter config (its head is saved as plain tensors)');
    return { ...this.lora.adapterConfig(baseModel), task_type: 'SEQ_CLS', modules_to_save: [...this.modulesToSave] };
  }
}

export interface SeqClsAdapterFiles {
  config: string;
  weights: Uint8Array;
  /** For messages. */
  name: string;
}

/**
 * Loads a SEQ_CLS LoRA adapter (ours or PEFT's) onto a classifier: the LoRA tensors into a new
 * Lora, the head tensors into the model's head parameters. Names and shapes are checked.
 */
export function importSeqClsAdapter(gpu: Gpu, files: SeqClsAdapterFiles, model: EncoderClassifier, step: StepUniforms): SequenceClassificationAdapter {
  let cfg: Record<string, unknown>;
  try {
    cfg = JSON.parse(files.config) as Record<string, unknown>;
  } catch (e) {
    throw new SeqClsAdapterError(`${files.name}: adapter_config.json is not valid JSON (${(e as Error).message})`);
  }
  if (cfg.peft_type !== 'LORA') throw new SeqClsAdapterError(`${files.name}: peft_type ${JSON.stringify(cfg.peft_type)} is not supported here (LORA)`);
  if (cfg.task_type !== 'SEQ_CLS') throw new SeqClsAdapterError(`${files.name}: task_type ${JSON.stringify(cfg.task_type)} is not SEQ_CLS`);
  if (cfg.use_dora) throw new SeqClsAdapterError(`${files.name}: DoRA adapters are not supported yet`);
  const targets = cfg.target_modules;
  if (!Array.isArray(targets) || !targets.every((t) => typeof t === 'string')) {
    throw new SeqClsAdapterError(`${files.name}: target_modules must be a list of module names`);
  }
  const saved = Array.isArray(cfg.modules_to_save) ? (cfg.modules_to_save as unknown[]).filter((x): x is string => typeof x === 'string') : [];
  const savedByPeft = [...new Set([...saved, ...SEQ_CLS_MODULES_TO_SAVE])];
  const expectedHead = model.headParams.map((p) => p.name);
  let lora: Lora;
  try {
    lora = new Lora(gpu, { r: Number(cfg.r), alpha: Number(cfg.lora_alpha), dropout: 0, targetModules: targets as string[], useRslora: Boolean(cfg.use_rslora) }, model.linearModules(), step, () => 0.5);
  } catch (e) {
    if (e instanceof LoraError) throw new SeqClsAdapterError(`${files.name}: ${e.message}`);
    throw e;
  }
  const adapter = new SequenceClassificationAdapter(lora, model.headParams, savedByPeft);
  const st = parseSafetensors(files.weights, `${files.name}/adapter_model.safetensors`);
  const byName = new Map<string, string>();
  for (const n of st.tensors.keys()) byName.set(n.replace('.default.weight', '.weight').replace('.default.bias', '.bias'), n);
  const missing = adapter.params.filter((p) => !byName.has(p.name)).map((p) => p.name);
  if (missing.length) throw new SeqClsAdapterError(`${files.name}: ${missing.length} tensors this model needs are missing (first: ${missing[0]})`);
  const wanted = new Set(adapter.params.map((p) => p.name));
  const extra = [...byName.keys()].filter((n) => !wanted.has(n));
  if (extra.length) throw new SeqClsAdapterError(`${files.name}: ${extra.length} tensors do not belong to this model (first: ${extra[0]}; the head here has ${expectedHead.join(', ')})`);
  for (const p of adapter.params) {
    const stored = byName.get(p.name)!;
    const info = st.tensors.get(stored)!;
    if (info.shape.length !== p.shape.length || info.shape.some((d, i) => d !== p.shape[i])) {
      throw new SeqClsAdapterError(`${files.name}: ${stored} has shape [${info.shape.join(', ')}], this model needs [${p.shape.join(', ')}] (another number of labels?)`);
    }
    gpu.write(p.value, st.getF32(stored));
  }
  return adapter;
}

/** The head's tensors under transformers' own names (classifier.weight, ...), for a head-only run. */
export function headStateDictName(peftName: string): string {
  return peftName.replace(/^base_model\.model\./, '');
}
