// The adapter of a sequence-classification run as PEFT (task_type SEQ_CLS) holds it: a method on
// the encoder (LoRA, DoRA, IA3, prompt tuning, prefix tuning on BERT; or AdapterHub bottleneck adapters) plus the head layers PEFT's
// modules_to_save train in full, saved under PEFT's names (base_model.model.classifier.weight, ...),
// and loading such an adapter back onto the model. Bottleneck adapters, which PEFT lacks, are saved
// as AdapterHub saves them for a model with a static transformers head (save_adapter(...,
// with_head=True)): the adapter files plus head_config.json and model_head.safetensors with the
// head's own names (classifier.weight, ...).

import type { Gpu } from '../gpu/gpu';
import type { Op } from '../gpu/dispatch';
import type { Tensor } from '../gpu/tensor';
import type { StepUniforms } from '../kernels/step-uniforms';
import { parseSafetensors, writeSafetensors } from '../../io/safetensors';
import { configJson, exportAdapter } from '../export/peft-export';
import { Lora, LoraError } from '../peft/lora';
import { Dora } from '../peft/dora';
import { Ia3, Ia3Error } from '../peft/ia3';
import { BottleneckAdapters, ADAPTERHUB_VERSION } from '../peft/bottleneck';
import { PromptTuning } from '../peft/prompt-tuning';
import { PrefixTuning, PrefixTuningError } from '../peft/prefix-tuning';
import { prefixDims, promptDims } from '../peft/factory';
import { AdapterError, importPeftAdapter, isAdapterHubConfig } from '../peft/import';
import type {
  AttentionPrefix, BranchLocation, BranchSite, ExportTensor, FrozenLinear, LinearGrad, LinearSite, PeftKind, PeftMethod, TrainableParam,
} from '../peft/method';
import type { MethodSpec } from '../peft/factory';
import { SEQ_CLS_MODULES_TO_SAVE, type EncoderClassifier } from './encoder';
import { createEncoderMethod, encoderBottleneckDims, encoderPeftInfo, encoderPrefixRefusal, type SeqClsMethod } from './encoder-methods';

export class SeqClsAdapterError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'SeqClsAdapterError';
  }
}

export type { SeqClsMethod };

/** AdapterHub's file names for a static head saved with the adapter (adapters/utils.py). */
export const ADAPTERHUB_HEAD_CONFIG = 'head_config.json';
export const ADAPTERHUB_HEAD_WEIGHTS = 'model_head.safetensors';

/**
 * A method on the encoder (or nothing: head-only training) and the trainable head. `params` is
 * what the optimizer updates and the export writes: the method's tensors, then the head's. Every
 * hook is the wrapped method's.
 */
export class SequenceClassificationAdapter implements PeftMethod {
  readonly kind: PeftKind;
  readonly params: TrainableParam[];
  readonly replacesLinear: boolean;
  readonly exportFormat: 'peft' | 'adapterhub';
  readonly configFloatKeys: readonly string[];
  /** Prompt tuning's virtual tokens (0 for the other methods). */
  readonly virtualTokens: number;
  /** Prefix tuning's key/value rows in every layer's attention (0 for the other methods). */
  readonly prefixTokens: number;

  constructor(
    readonly method: PeftMethod | null,
    readonly head: readonly TrainableParam[],
    readonly modulesToSave: readonly string[] = SEQ_CLS_MODULES_TO_SAVE,
  ) {
    this.kind = method?.kind ?? 'lora';
    this.params = [...(method?.params ?? []), ...head];
    this.replacesLinear = method?.replacesLinear ?? false;
    this.exportFormat = method?.exportFormat ?? 'peft';
    this.configFloatKeys = method?.configFloatKeys ?? [];
    this.virtualTokens = method?.virtualTokens ?? 0;
    this.prefixTokens = method?.prefixTokens ?? 0;
  }

  attentionPrefix(layer: number): AttentionPrefix {
    return this.inner().attentionPrefix!(layer);
  }

  forwardStart(): Op[] {
    return this.method?.forwardStart?.() ?? [];
  }

  backwardStart(): Op[] {
    return this.method?.backwardStart?.() ?? [];
  }

  backwardEnd(): Op[] {
    return this.method?.backwardEnd?.() ?? [];
  }

  embeddingForward(x0: Tensor, B: number, S: number): Op[] {
    return this.inner().embeddingForward!(x0, B, S);
  }

  embeddingBackward(dx0: Tensor, B: number, S: number): Op[] {
    return this.inner().embeddingBackward!(dx0, B, S);
  }

  /**
   * The head's names in PEFT's file: base_model.model.<module>.* for tuner methods, base_model.<module>.*
   * for prompt learning, prompt and prefix tuning alike (whose PeftModel holds the transformers model itself as base_model).
   */
  headSavedName(name: string): string {
    const k = this.method?.kind;
    return k === 'prompt' || k === 'prefix' ? name.replace(/^base_model\.model\./, 'base_model.') : name;
  }

  targetsLinear(module: string): boolean {
    return this.method?.targetsLinear(module) ?? false;
  }

  linearForward(site: LinearSite, base: FrozenLinear): Op[] {
    return this.inner().linearForward(site, base);
  }

  linearBackward(site: LinearSite, grad: LinearGrad, base: FrozenLinear): Op[] {
    return this.inner().linearBackward(site, grad, base);
  }

  targetsBranch(layer: number, location: BranchLocation): boolean {
    return this.method?.targetsBranch?.(layer, location) ?? false;
  }

  branchOutput(layer: number, location: BranchLocation, rows: number): Tensor {
    return this.inner().branchOutput!(layer, location, rows);
  }

  branchForward(site: BranchSite): Op[] {
    return this.inner().branchForward!(site);
  }

  branchBackward(site: BranchSite, dOut: Tensor): { ops: Op[]; dBranch: Tensor } {
    return this.inner().branchBackward!(site, dOut);
  }

  /** The tensors of the weights file: PEFT's (method + head), or AdapterHub's adapter file (no head). */
  async exportTensors(read: (t: Tensor) => Promise<Float32Array>): Promise<ExportTensor[]> {
    const out: ExportTensor[] = [];
    const own = this.exportFormat === 'adapterhub' ? (this.method?.params ?? []) : this.params;
    if (this.method?.exportTensors && this.exportFormat !== 'adapterhub') out.push(...await this.method.exportTensors(read));
    else for (const p of own.filter((q) => !this.head.includes(q))) out.push({ name: p.name, shape: p.shape, data: await read(p.value) });
    if (this.exportFormat === 'peft') for (const p of this.head) out.push({ name: this.headSavedName(p.name), shape: p.shape, data: await read(p.value) });
    return out;
  }

  /** AdapterHub's static-head files (head_config.json, model_head.safetensors' tensors) for a bottleneck run. */
  async headFiles(read: (t: Tensor) => Promise<Float32Array>, baseModel: string, modelClass: string, numLabels: number): Promise<{ config: Record<string, unknown>; tensors: ExportTensor[] }> {
    const tensors: ExportTensor[] = [];
    for (const p of this.head) tensors.push({ name: headStateDictName(p.name), shape: p.shape, data: await read(p.value) });
    const bn = this.method instanceof BottleneckAdapters ? this.method : null;
    // PredictionHeadLoader.save for a static head: build_full_config(None, model.config, name=None, ...) + num_labels
    const config = {
      config: null,
      hidden_size: bn?.dims.hidden ?? null,
      label2id: Object.fromEntries(Array.from({ length: numLabels }, (_, i) => [`LABEL_${i}`, i])),
      model_class: modelClass,
      model_name: baseModel,
      model_type: bn?.dims.modelType ?? null,
      name: null,
      num_labels: numLabels,
      version: ADAPTERHUB_VERSION,
    };
    return { config, tensors };
  }

  /** PEFT's adapter_config.json with task_type SEQ_CLS (AdapterHub's as it is for bottleneck adapters; head-only runs have none). */
  adapterConfig(baseModel: string): Record<string, unknown> {
    if (!this.method) throw new SeqClsAdapterError('a head-only run has no PEFT adapter config (its head is saved as plain tensors)');
    const inner = this.method.adapterConfig(baseModel);
    if (this.exportFormat === 'adapterhub') return inner;
    return { ...inner, task_type: 'SEQ_CLS', modules_to_save: [...this.modulesToSave] };
  }

  destroy(): void {
    this.method?.destroy?.();
  }

  private inner(): PeftMethod {
    if (!this.method) throw new SeqClsAdapterError('a head-only adapter has no hooks on the encoder');
    return this.method;
  }
}

export interface SeqClsAdapterFiles {
  config: string;
  /** adapter_model.safetensors (PEFT) or adapter.safetensors (AdapterHub) */
  weights: Uint8Array;
  /** AdapterHub's model_head.safetensors (bottleneck adapters: the head is saved beside the adapter). */
  head?: Uint8Array;
  /** For messages. */
  name: string;
}

/**
 * Makes the method (or none: head-only) on the encoder and the trainable head around it, with the
 * initial values createPeftMethod gives (prefix tuning only on BERT: encoderPrefixRefusal).
 */
export function createSeqClsAdapter(
  gpu: Gpu, spec: MethodSpec | null, model: EncoderClassifier, step: StepUniforms, random: () => number,
  /** the tokenizer with special tokens (prompt tuning's TEXT init) */
  tokenize?: (text: string) => number[],
): SequenceClassificationAdapter {
  return new SequenceClassificationAdapter(spec ? createEncoderMethod(gpu, spec, model, step, random, tokenize) : null, model.headParams);
}

/**
 * The adapter folder's files: PEFT's two (adapter_config.json, adapter_model.safetensors with the
 * head under modules_to_save names), or for bottleneck adapters AdapterHub's four (adapter_config.json,
 * adapter.safetensors, head_config.json, model_head.safetensors), as save_adapter(..., with_head=True)
 * writes them for a static-head model.
 */
export async function exportSeqClsAdapter(gpu: Gpu, adapter: SequenceClassificationAdapter, baseModel: string, model: EncoderClassifier): Promise<Map<string, string | Uint8Array>> {
  if (!adapter.method) throw new SeqClsAdapterError('a head-only run has no adapter files (its head is saved as plain tensors)');
  const e = await exportAdapter(gpu, adapter, baseModel);
  const files = new Map<string, string | Uint8Array>([['adapter_config.json', e.config], [e.weightsName, e.weights]]);
  if (e.format === 'adapterhub') {
    const head = await adapter.headFiles((t) => gpu.read(t), baseModel, model.spec.className, model.K);
    files.set(ADAPTERHUB_HEAD_CONFIG, configJson(head.config));
    files.set(ADAPTERHUB_HEAD_WEIGHTS, writeSafetensors(head.tensors.map((t) => ({ ...t, dtype: 'F32' as const })), { format: 'pt' }));
  }
  return files;
}

/** PEFT saves names without the adapter name; older files may carry ".default". */
function canonicalName(n: string): string {
  return n
    .replace('.default.weight', '.weight')
    .replace('.default.bias', '.bias')
    .replace(/\.lora_magnitude_vector\.default(\.weight)?$/, '.lora_magnitude_vector')
    .replace(/\.ia3_l\.default$/, '.ia3_l');
}

/** Fills `params` from one safetensors file, checking that its names and shapes are exactly theirs. */
function fillParams(gpu: Gpu, bytes: Uint8Array, file: string, params: readonly TrainableParam[], expectedHead: readonly string[]): void {
  const st = parseSafetensors(bytes, file);
  const byName = new Map<string, string>();
  for (const n of st.tensors.keys()) byName.set(canonicalName(n), n);
  const missing = params.filter((p) => !byName.has(p.name)).map((p) => p.name);
  if (missing.length) throw new SeqClsAdapterError(`${file}: ${missing.length} tensors this model needs are missing (first: ${missing[0]})`);
  const wanted = new Set(params.map((p) => p.name));
  const extra = [...byName.keys()].filter((n) => !wanted.has(n));
  if (extra.length) throw new SeqClsAdapterError(`${file}: ${extra.length} tensors do not belong to this model (first: ${extra[0]}; the head here has ${expectedHead.join(', ')})`);
  for (const p of params) {
    const stored = byName.get(p.name)!;
    const info = st.tensors.get(stored)!;
    if (info.shape.length !== p.shape.length || info.shape.some((d, i) => d !== p.shape[i])) {
      throw new SeqClsAdapterError(`${file}: ${stored} has shape [${info.shape.join(', ')}], this model needs [${p.shape.join(', ')}] (another number of labels?)`);
    }
    gpu.write(p.value, st.getF32(stored));
  }
}

/** A whole number >= 1 from the config, checked before it sizes any buffer. */
function configInt(cfg: Record<string, unknown>, key: string, max: number, name: string): number {
  const v = Number(cfg[key]);
  if (!Number.isInteger(v) || v < 1 || v > max) throw new SeqClsAdapterError(`${name}: adapter_config.json has ${key} = ${JSON.stringify(cfg[key])}; expected a whole number from 1 to ${max}`);
  return v;
}

function moduleList(cfg: Record<string, unknown>, key: string, name: string): string[] | null {
  const v = cfg[key];
  if (v === undefined || v === null) return null;
  if (typeof v === 'string') throw new SeqClsAdapterError(`${name}: regular-expression ${key} ("${v}") are not supported; list the module names`);
  if (!Array.isArray(v) || !v.every((t) => typeof t === 'string')) throw new SeqClsAdapterError(`${name}: ${key} must be a list of module names`);
  return v as string[];
}

/**
 * Loads a SEQ_CLS adapter (ours or PEFT's: LoRA, DoRA, IA3, prompt tuning, prefix tuning on BERT; or an AdapterHub bottleneck adapter
 * with its static head) onto a classifier: the method's tensors into a new method, the head tensors
 * into the model's head parameters. Names and shapes are checked.
 */
export function importSeqClsAdapter(gpu: Gpu, files: SeqClsAdapterFiles, model: EncoderClassifier, step: StepUniforms): SequenceClassificationAdapter {
  let cfg: Record<string, unknown>;
  try {
    cfg = JSON.parse(files.config) as Record<string, unknown>;
    if (!cfg || typeof cfg !== 'object' || Array.isArray(cfg)) throw new Error('not a JSON object');
  } catch (e) {
    throw new SeqClsAdapterError(`${files.name}: adapter_config.json is not valid JSON (${(e as Error).message})`);
  }
  const expectedHead = model.headParams.map((p) => p.name);
  const wrap = <T>(make: () => T): T => {
    try {
      return make();
    } catch (e) {
      if (e instanceof LoraError || e instanceof Ia3Error || e instanceof AdapterError || e instanceof PrefixTuningError || (e as Error)?.name === 'BottleneckError') {
        throw new SeqClsAdapterError(`${files.name}: ${(e as Error).message}`);
      }
      throw e;
    }
  };
  if (isAdapterHubConfig(cfg)) {
    // the adapter from its own file; the head from model_head.safetensors under transformers' names
    const method = wrap(() => importPeftAdapter(gpu, { config: files.config, weights: files.weights, name: files.name }, encoderPeftInfo(model), step, encoderBottleneckDims(model)));
    if (!files.head) throw new SeqClsAdapterError(`${files.name}: the bottleneck adapter has no ${ADAPTERHUB_HEAD_WEIGHTS} (the trained classification head)`);
    const headByModel = model.headParams.map((p) => ({ ...p, name: headStateDictName(p.name) }));
    fillParams(gpu, files.head, `${files.name}/${ADAPTERHUB_HEAD_WEIGHTS}`, headByModel, headByModel.map((p) => p.name));
    return new SequenceClassificationAdapter(method, model.headParams);
  }
  if (cfg.task_type !== 'SEQ_CLS') throw new SeqClsAdapterError(`${files.name}: task_type ${JSON.stringify(cfg.task_type)} is not SEQ_CLS`);
  const saved = (moduleList(cfg, 'modules_to_save', files.name) ?? []);
  const savedByPeft = [...new Set([...saved, ...SEQ_CLS_MODULES_TO_SAVE])];
  const linears = model.linearModules();
  const widest = Math.max(model.C, model.F);
  let method: SeqClsMethod;
  if (cfg.peft_type === 'LORA') {
    const targets = moduleList(cfg, 'target_modules', files.name);
    if (!targets) throw new SeqClsAdapterError(`${files.name}: target_modules must be a list of module names`);
    const r = configInt(cfg, 'r', widest, files.name);
    const alpha = Number(cfg.lora_alpha);
    if (!Number.isFinite(alpha)) throw new SeqClsAdapterError(`${files.name}: lora_alpha = ${JSON.stringify(cfg.lora_alpha)} is not a number`);
    const settings = { r, alpha, dropout: 0, targetModules: targets, useRslora: cfg.use_rslora === true };
    method = wrap(() => (cfg.use_dora === true ? new Dora(gpu, settings, linears, step, () => 0.5) : new Lora(gpu, settings, linears, step, () => 0.5)));
  } else if (cfg.peft_type === 'IA3') {
    const targets = moduleList(cfg, 'target_modules', files.name);
    const feedforward = moduleList(cfg, 'feedforward_modules', files.name);
    if (!targets || !feedforward) throw new SeqClsAdapterError(`${files.name}: an IA3 classifier adapter must list target_modules and feedforward_modules`);
    method = wrap(() => new Ia3(gpu, { targetModules: targets, feedforwardModules: feedforward }, linears));
  } else if (cfg.peft_type === 'PROMPT_TUNING') {
    const n = configInt(cfg, 'num_virtual_tokens', model.spec.dims.maxPositions - 1, files.name);
    for (const [key, want] of [['token_dim', model.C], ['num_layers', model.L], ['num_attention_heads', model.H]] as const) {
      if (cfg[key] !== undefined && cfg[key] !== null && cfg[key] !== want) throw new SeqClsAdapterError(`${files.name}: ${key} is ${JSON.stringify(cfg[key])}, this model needs ${want}; was it trained on another base model?`);
    }
    // the init only matters for training from scratch; the values come from the file
    method = wrap(() => new PromptTuning(gpu, { numVirtualTokens: n, init: 'random' }, promptDims(encoderPeftInfo(model))));
  } else if (cfg.peft_type === 'PREFIX_TUNING') {
    const refusal = encoderPrefixRefusal(model);
    if (refusal) throw new SeqClsAdapterError(`${files.name}: ${refusal}`);
    const n = configInt(cfg, 'num_virtual_tokens', model.spec.dims.maxPositions - 1, files.name);
    const dims = prefixDims(encoderPeftInfo(model));
    for (const [key, want] of [['token_dim', model.C], ['num_layers', model.L], ['num_attention_heads', model.H], ['num_transformer_submodules', 1]] as const) {
      if (cfg[key] !== undefined && cfg[key] !== null && cfg[key] !== want) throw new SeqClsAdapterError(`${files.name}: ${key} is ${JSON.stringify(cfg[key])}, this model needs ${want}; was it trained on another base model?`);
    }
    // PEFT saves the prefix itself (with prefix_projection, the prefix its MLP made) and loads it
    // for inference as a plain [n, num_layers * 2 * token_dim] table: so does this
    method = wrap(() => new PrefixTuning(gpu, { numVirtualTokens: n, projection: false }, dims, () => 0.5));
  } else {
    throw new SeqClsAdapterError(`${files.name}: peft_type ${JSON.stringify(cfg.peft_type)} is not supported for classifiers here (LORA with or without DoRA, IA3, PROMPT_TUNING, PREFIX_TUNING on BERT; or an AdapterHub bottleneck adapter)`);
  }
  const adapter = new SequenceClassificationAdapter(method, model.headParams, savedByPeft);
  try {
    const asSaved = adapter.params.map((p) => ({ ...p, name: adapter.headSavedName(p.name) }));
    fillParams(gpu, files.weights, `${files.name}/adapter_model.safetensors`, asSaved, model.headParams.map((p) => adapter.headSavedName(p.name)));
  } catch (e) {
    method.destroy();
    throw e;
  }
  return adapter;
}

/** The head's tensors under transformers' own names (classifier.weight, ...), for a head-only run. */
export function headStateDictName(peftName: string): string {
  return peftName.replace(/^base_model\.model\./, '');
}
