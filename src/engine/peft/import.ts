// Loading a PEFT adapter (adapter_config.json + adapter_model.safetensors) back onto a model:
// for inference, to continue training, or to check an export. Mismatches are named, not crashed on.

import type { Gpu } from '../gpu/gpu';
import type { StepUniforms } from '../kernels/step-uniforms';
import { parseSafetensors } from '../../io/safetensors';
import { Lora, LoraError, type LinearModuleInfo } from './lora';
import type { PeftMethod } from './method';
import { Ia3, type Ia3Settings } from './ia3';
import { PromptTuning, type PromptInit } from './prompt-tuning';
import { PrefixTuning } from './prefix-tuning';
import { defaultIa3Settings, prefixDims, promptDims, type PeftModelInfo } from './factory';

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

/**
 * Builds the adapter a PEFT adapter folder describes (LORA, IA3, PROMPT_TUNING, PREFIX_TUNING) for
 * a model, checking method, dimensions, tensor names and shapes. A prefix-tuning adapter saved
 * with prefix_projection holds the prefix its MLP made (as PEFT saves it): it loads as a plain
 * prefix, which is also how PEFT loads it for inference.
 */
export function importPeftAdapter(gpu: Gpu, files: AdapterFilesIn, info: PeftModelInfo, step: StepUniforms): PeftMethod {
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
  throw new AdapterError(`${files.name}: peft_type ${JSON.stringify(type)} is not supported here (LORA, IA3, PROMPT_TUNING, PREFIX_TUNING)`);
}
