// Loading a PEFT adapter (adapter_config.json + adapter_model.safetensors) back onto a model:
// for inference, to continue training, or to check an export; and the AdapterHub bottleneck
// adapters this engine exports (adapter_config.json + adapter.safetensors). Mismatches are named,
// not crashed on.

import type { Gpu } from '../gpu/gpu';
import type { StepUniforms } from '../kernels/step-uniforms';
import { parseSafetensors } from '../../io/safetensors';
import { Lora, LoraError, type LinearModuleInfo } from './lora';
import type { PeftMethod } from './method';
import { Ia3, type Ia3Settings } from './ia3';
import { PromptTuning, type PromptInit } from './prompt-tuning';
import { PrefixTuning } from './prefix-tuning';
import { bottleneckDims, defaultIa3Settings, prefixDims, promptDims, type PeftModelInfo } from './factory';
import { Dora } from './dora';
import { BOTTLENECK_ACTIVATIONS, BOTTLENECK_PRESETS, BottleneckAdapters, type BottleneckActivation, type BottleneckModelDims, type BottleneckType } from './bottleneck';

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

/**
 * Builds a LoRA (or, with use_dora, a DoRA) from PEFT files, checking method, names and shapes
 * against the model. DoRA needs the model's weights in `linears` (its magnitude is loaded, but the
 * layer reads the frozen weight).
 */
export function importLoraAdapter(gpu: Gpu, files: AdapterFilesIn, linears: readonly LinearModuleInfo[], step: StepUniforms): Lora | Dora {
  let cfg: Record<string, unknown>;
  try {
    cfg = JSON.parse(files.config) as Record<string, unknown>;
  } catch (e) {
    throw new AdapterError(`${files.name}: adapter_config.json is not valid JSON (${(e as Error).message})`);
  }
  if (cfg.peft_type !== 'LORA') throw new AdapterError(`${files.name}: peft_type ${JSON.stringify(cfg.peft_type)} is not supported here (LORA)`);
  const r = Number(cfg.r), alpha = Number(cfg.lora_alpha);
  // checked before anything is allocated: a lying rank would size the GPU buffers
  const widest = Math.max(1, ...linears.map((l) => Math.max(l.inFeatures, l.outFeatures)));
  if (!Number.isInteger(r) || r < 1 || r > widest) throw new AdapterError(`${files.name}: adapter_config.json has r = ${JSON.stringify(cfg.r)}; expected a whole number from 1 to ${widest} (this model's widest layer)`);
  if (!Number.isFinite(alpha)) throw new AdapterError(`${files.name}: adapter_config.json has lora_alpha = ${JSON.stringify(cfg.lora_alpha)}; expected a number`);
  for (const flag of ['use_rslora', 'use_dora'] as const) {
    if (cfg[flag] !== undefined && cfg[flag] !== null && typeof cfg[flag] !== 'boolean') throw new AdapterError(`${files.name}: adapter_config.json has ${flag} = ${JSON.stringify(cfg[flag])}; expected true or false`);
  }
  let targets = cfg.target_modules;
  if (typeof targets === 'string') throw new AdapterError(`${files.name}: regular-expression target_modules ("${targets}") are not supported; list the module names`);
  if (!Array.isArray(targets) || !targets.every((t) => typeof t === 'string')) throw new AdapterError(`${files.name}: adapter_config.json has no target_modules list`);
  targets = targets as string[];
  const weights = parseSafetensors(files.weights, `${files.name}/adapter_model.safetensors`);
  let lora: Lora | Dora;
  try {
    const settings = { r, alpha, dropout: 0, targetModules: targets as string[], useRslora: Boolean(cfg.use_rslora) };
    lora = cfg.use_dora ? new Dora(gpu, settings, linears, step, () => 0.5) : new Lora(gpu, settings, linears, step, () => 0.5);
  } catch (e) {
    if (e instanceof LoraError) throw new AdapterError(`${files.name}: ${e.message}`);
    throw e;
  }
  // PEFT saves names without the adapter name; older files may carry ".default".
  const byName = new Map<string, string>();
  for (const n of weights.tensors.keys()) byName.set(n.replace('.default.weight', '.weight').replace(/\.lora_magnitude_vector\.default(\.weight)?$/, '.lora_magnitude_vector'), n);
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

/** Fills a method's tensors from the adapter file, checking that the names and shapes are exactly the method's. */
function loadTensors(gpu: Gpu, files: AdapterFilesIn, expected: { name: string; shape: number[]; target: import('../gpu/tensor').Tensor }[]): void {
  const weights = parseSafetensors(files.weights, `${files.name}/adapter_model.safetensors`);
  const byName = new Map<string, string>();
  for (const n of weights.tensors.keys()) byName.set(n.replace('.default.weight', '.weight').replace(/\.ia3_l\.default$/, '.ia3_l'), n);
  const missing = expected.filter((p) => !byName.has(p.name)).map((p) => p.name);
  if (missing.length) throw new AdapterError(`${files.name}: ${missing.length} tensors this model needs are missing (first: ${missing[0]}); was it trained on another base model?`);
  const want = new Set(expected.map((p) => p.name));
  const extra = [...byName.keys()].filter((n) => !want.has(n));
  if (extra.length) throw new AdapterError(`${files.name}: ${extra.length} tensors do not belong to this model (first: ${extra[0]}); was it trained on another base model?`);
  for (const p of expected) {
    const stored = byName.get(p.name)!;
    const info = weights.tensors.get(stored)!;
    if (info.shape.length !== p.shape.length || info.shape.some((d, i) => d !== p.shape[i])) {
      throw new AdapterError(`${files.name}: ${stored} has shape [${info.shape.join(', ')}], this model needs [${p.shape.join(', ')}]`);
    }
    gpu.write(p.target, weights.getF32(stored));
  }
}

function parseConfig(files: AdapterFilesIn): Record<string, unknown> {
  try {
    const cfg = JSON.parse(files.config) as unknown;
    if (!cfg || typeof cfg !== 'object' || Array.isArray(cfg)) throw new Error('not a JSON object');
    return cfg as Record<string, unknown>;
  } catch (e) {
    throw new AdapterError(`${files.name}: adapter_config.json is not valid JSON (${(e as Error).message})`);
  }
}

function stringList(files: AdapterFilesIn, cfg: Record<string, unknown>, key: string): string[] | null {
  const v = cfg[key];
  if (v === null || v === undefined) return null;
  if (typeof v === 'string') throw new AdapterError(`${files.name}: regular-expression ${key} ("${v}") are not supported; list the module names`);
  if (!Array.isArray(v) || !v.every((t) => typeof t === 'string')) throw new AdapterError(`${files.name}: ${key} in adapter_config.json is not a list of module names`);
  return v as string[];
}

function positiveInt(files: AdapterFilesIn, cfg: Record<string, unknown>, key: string): number {
  const v = cfg[key];
  if (typeof v !== 'number' || !Number.isInteger(v) || v < 1) throw new AdapterError(`${files.name}: adapter_config.json has no valid ${key} (got ${JSON.stringify(v)})`);
  return v;
}

/** Whether an adapter_config.json is AdapterHub's (the `adapters` library's build_full_config) rather than PEFT's. */
export function isAdapterHubConfig(cfg: Record<string, unknown>): boolean {
  return cfg.peft_type === undefined && typeof cfg.config === 'object' && cfg.config !== null && typeof cfg.version === 'string' && cfg.version.startsWith('adapters.');
}

/**
 * A bottleneck adapter saved in AdapterHub's layout (the Houlsby and Pfeiffer presets this engine
 * trains), checked against the model: model type, hidden size, every config field the engine
 * does not implement, tensor names and shapes.
 */
function importBottleneck(gpu: Gpu, files: AdapterFilesIn, cfg: Record<string, unknown>, info: PeftModelInfo, dims: BottleneckModelDims): BottleneckAdapters {
  const c = cfg.config as Record<string, unknown>;
  if (c.architecture !== undefined && c.architecture !== null && c.architecture !== 'bottleneck') {
    throw new AdapterError(`${files.name}: AdapterHub architecture ${JSON.stringify(c.architecture)} is not supported here (bottleneck adapters)`);
  }
  if (cfg.model_type !== undefined && cfg.model_type !== info.modelType) throw new AdapterError(`${files.name}: the adapter is for model_type ${JSON.stringify(cfg.model_type)}, this model is "${info.modelType}"`);
  if (cfg.hidden_size !== undefined && cfg.hidden_size !== info.hidden) throw new AdapterError(`${files.name}: hidden_size is ${JSON.stringify(cfg.hidden_size)}, this model has ${info.hidden}; was it trained on another base model?`);
  let type: BottleneckType | null = null;
  for (const [t, p] of Object.entries(BOTTLENECK_PRESETS) as [BottleneckType, (typeof BOTTLENECK_PRESETS)[BottleneckType]][]) {
    if (c.mh_adapter === p.mhAdapter && c.output_adapter === true && c.original_ln_before === p.originalLnBefore) type = t;
  }
  if (!type) throw new AdapterError(`${files.name}: mh_adapter ${c.mh_adapter}, output_adapter ${c.output_adapter}, original_ln_before ${c.original_ln_before} is neither the Houlsby nor the Pfeiffer layout`);
  const fixed: [string, unknown][] = [
    ['original_ln_after', true], ['ln_before', false], ['ln_after', false], ['is_parallel', false], ['scaling', 1], ['use_gating', false],
    ['residual_before_ln', true], ['adapter_residual_before_ln', false], ['phm_layer', false], ['cross_adapter', false],
  ];
  for (const [k, want] of fixed) {
    if (c[k] !== undefined && c[k] !== want) throw new AdapterError(`${files.name}: config ${k} = ${JSON.stringify(c[k])} is not supported here (${JSON.stringify(want)})`);
  }
  if (c.inv_adapter) throw new AdapterError(`${files.name}: invertible adapters (inv_adapter ${JSON.stringify(c.inv_adapter)}) are not supported here`);
  if (Array.isArray(c.leave_out) && c.leave_out.length) throw new AdapterError(`${files.name}: leave_out ${JSON.stringify(c.leave_out)} is not supported here (adapters in every layer)`);
  const rf = c.reduction_factor;
  if (typeof rf !== 'number') throw new AdapterError(`${files.name}: reduction_factor ${JSON.stringify(rf)} is not supported here (one number for every layer)`);
  const act = String(c.non_linearity ?? '').toLowerCase();
  if (!(BOTTLENECK_ACTIVATIONS as readonly string[]).includes(act)) throw new AdapterError(`${files.name}: non_linearity ${JSON.stringify(c.non_linearity)} is not supported here (${BOTTLENECK_ACTIVATIONS.join(', ')})`);
  const name = typeof cfg.name === 'string' ? cfg.name : '';
  let adapter: BottleneckAdapters;
  try {
    adapter = new BottleneckAdapters(gpu, { type, reductionFactor: rf, nonLinearity: act as BottleneckActivation, name }, dims, () => 0.5);
  } catch (e) {
    throw new AdapterError(`${files.name}: ${(e as Error).message}`);
  }
  loadTensors(gpu, files, adapter.params.map((p) => ({ name: p.name, shape: p.shape, target: p.value })));
  return adapter;
}

/**
 * Builds the adapter a PEFT adapter folder describes (LORA with or without DoRA, IA3,
 * PROMPT_TUNING, PREFIX_TUNING; or an AdapterHub bottleneck adapter) for a model, checking method, dimensions, tensor names and shapes. A prefix-tuning adapter saved
 * with prefix_projection holds the prefix its MLP made (as PEFT saves it): it loads as a plain
 * prefix, which is also how PEFT loads it for inference.
 */
export function importPeftAdapter(
  gpu: Gpu, files: AdapterFilesIn, info: PeftModelInfo, step: StepUniforms,
  /** where the model holds AdapterHub's adapter layers (default: bottleneckDims(info), the causal LMs') */
  bottleneck: BottleneckModelDims = bottleneckDims(info),
): PeftMethod {
  const cfg = parseConfig(files);
  const type = cfg.peft_type;
  const wrap = <T>(make: () => T): T => {
    try {
      return make();
    } catch (e) {
      if (e instanceof AdapterError || !(e instanceof Error) || e.name === 'TypeError') throw e;
      throw new AdapterError(`${files.name}: ${e.message}`);
    }
  };
  if (type === undefined && isAdapterHubConfig(cfg)) return importBottleneck(gpu, files, cfg, info, bottleneck);
  if (type === 'LORA') return importLoraAdapter(gpu, files, info.linears, step);
  if (cfg.task_type !== undefined && cfg.task_type !== null && cfg.task_type !== 'CAUSAL_LM') {
    throw new AdapterError(`${files.name}: task_type ${JSON.stringify(cfg.task_type)} is not a causal-LM adapter (CAUSAL_LM)`);
  }
  if (type === 'IA3') {
    const d = (): Ia3Settings => defaultIa3Settings(info);
    const targetModules = stringList(files, cfg, 'target_modules') ?? wrap(d).targetModules;
    const feedforwardModules = stringList(files, cfg, 'feedforward_modules') ?? wrap(d).feedforwardModules;
    const ia3 = wrap(() => new Ia3(gpu, { targetModules, feedforwardModules }, info.linears));
    loadTensors(gpu, files, ia3.params.map((p) => ({ name: p.name, shape: p.shape, target: p.value })));
    return ia3;
  }
  if (type === 'PROMPT_TUNING' || type === 'PREFIX_TUNING') {
    const n = positiveInt(files, cfg, 'num_virtual_tokens');
    const sub = cfg.num_transformer_submodules ?? 1;
    if (sub !== 1) throw new AdapterError(`${files.name}: num_transformer_submodules ${JSON.stringify(sub)} is for encoder-decoder models (causal LMs have 1)`);
    const check = (key: string, want: number): void => {
      const v = cfg[key];
      if (v !== undefined && v !== null && v !== want) throw new AdapterError(`${files.name}: ${key} is ${JSON.stringify(v)}, this model needs ${want}; was it trained on another base model?`);
    };
    check('num_layers', info.layers);
    if (type === 'PROMPT_TUNING') {
      check('token_dim', info.hidden);
      const inits: Record<string, PromptInit> = { RANDOM: 'random', TEXT: 'text', SAMPLE_VOCAB: 'vocab' };
      const init = inits[String(cfg.prompt_tuning_init ?? 'RANDOM')];
      if (!init) throw new AdapterError(`${files.name}: prompt_tuning_init ${JSON.stringify(cfg.prompt_tuning_init)} is not one of ${Object.keys(inits).join(', ')}`);
      const initText = init === 'text' ? String(cfg.prompt_tuning_init_text ?? '') : null;
      const pt = wrap(() => new PromptTuning(gpu, {
        numVirtualTokens: n, init, initText, tokenizerNameOrPath: typeof cfg.tokenizer_name_or_path === 'string' ? cfg.tokenizer_name_or_path : null,
      }, promptDims(info)));
      loadTensors(gpu, files, [{ name: 'prompt_embeddings', shape: [n, info.hidden], target: pt.embeddings.value }]);
      return pt;
    }
    const dims = wrap(() => prefixDims(info));
    check('token_dim', dims.kvHeads * dims.headDim);
    check('num_attention_heads', dims.kvHeads);
    const pre = wrap(() => new PrefixTuning(gpu, { numVirtualTokens: n, projection: false }, dims, () => 0.5));
    loadTensors(gpu, files, [{ name: 'prompt_embeddings', shape: [n, pre.width], target: pre.params[0].value }]);
    return pre;
  }
  throw new AdapterError(`${files.name}: peft_type ${JSON.stringify(type)} is not supported here (LORA (with DoRA), IA3, PROMPT_TUNING, PREFIX_TUNING; or an AdapterHub bottleneck adapter)`);
}
