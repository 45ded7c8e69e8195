// Folding a LoRA or DoRA adapter into the base model's weights, as PEFT's merge_and_unload() does,
// and writing the result as a Hugging Face model folder (config, tokenizer files, safetensors,
// sharded with an index when large). Plain CPU arithmetic on the files' tensors, so it runs in the
// worker and in Node alike and needs no GPU.
//
//   LoRA:  W' = W + s * B A                       (s = alpha / r, or alpha / sqrt(r) with rsLoRA)
//   DoRA:  W' = (m / ||W + s B A||_row) * (W + s B A)   per output feature (PEFT's dora merge)
// W is [out, in] for nn.Linear and [in, out] for GPT-2's Conv1D (fan_in_fan_out): then the delta is
// transposed. Tensors the adapter saves whole (modules_to_save: a classifier head) replace the
// model's. Other PEFT methods (IA3, prompt / prefix tuning, AdapterHub bottleneck adapters) are
// refused with the reason.

import type { HfModel, ModelFiles } from '../../io/model-files';
import { parseSafetensors, writeSafetensors, f32ToBf16, f32ToF16, type TensorToWrite } from '../../io/safetensors';

export class MergeError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'MergeError';
  }
}

export type MergedDType = 'F32' | 'BF16' | 'F16';

export interface MergeOptions {
  /** dtype of the written weights; default: that of the base model's largest tensor (F32 if it is not a float). */
  dtype?: MergedDType;
  /** Largest shard in bytes before the weights are split over several files (default 2 GiB). */
  maxShardBytes?: number;
}

export interface AdapterFiles {
  /** Shown in messages. */
  name: string;
  /** adapter_config.json text. */
  config: string;
  /** adapter_model.safetensors bytes. */
  weights: Uint8Array;
}

export interface MergedModel {
  /** The folder: relative path -> bytes. */
  files: Map<string, Uint8Array>;
  /** Model tensors changed by a low-rank update (names as in the base model's files). */
  merged: string[];
  /** Model tensors replaced whole by the adapter's (modules_to_save). */
  replaced: string[];
  dtype: MergedDType;
}

export const DEFAULT_MAX_SHARD_BYTES = 2 * 2 ** 30;

/** Files of a model folder that are not weights and go along unchanged (tokenizer, generation config...). */
const WEIGHT_FILE = /(^|\/)(model(-\d+-of-\d+)?\.safetensors|model\.safetensors\.index\.json|pytorch_model.*\.bin(\.index\.json)?)$/;

interface LowRank {
  module: string;
  A?: { shape: number[]; data: Float32Array };
  B?: { shape: number[]; data: Float32Array };
  m?: Float32Array;
}

const PREFIX = 'base_model.model.';

/** The base tensor an adapter module names, tolerant of checkpoints that drop a leading "transformer." / "model.". */
function findTensor(model: HfModel, name: string): string | null {
  if (model.hasTensor(name)) return name;
  const dot = name.indexOf('.');
  if (dot > 0 && model.hasTensor(name.slice(dot + 1))) return name.slice(dot + 1);
  for (const p of ['transformer.', 'model.']) if (model.hasTensor(p + name)) return p + name;
  return null;
}

function defaultDType(model: HfModel): MergedDType {
  let best: { size: number; dtype: string } = { size: -1, dtype: 'F32' };
  for (const n of model.tensorNames) {
    const info = model.tensorInfo(n);
    const size = info.shape.reduce((a, b) => a * b, 1);
    if (size > best.size) best = { size, dtype: info.dtype };
  }
  return best.dtype === 'BF16' || best.dtype === 'F16' ? best.dtype : 'F32';
}

/** Reads and checks the adapter: its kind, scale and the low-rank pairs by module. */
function readAdapter(adapter: AdapterFiles): { scale: number; fanInFanOut: boolean; modules: Map<string, LowRank>; whole: Map<string, { shape: number[]; data: Float32Array }> } {
  let cfg: Record<string, unknown>;
  try {
    cfg = JSON.parse(adapter.config) as Record<string, unknown>;
  } catch (e) {
    throw new MergeError(`${adapter.name}: adapter_config.json is not valid JSON (${(e as Error).message})`);
  }
  if (cfg.peft_type !== 'LORA') {
    const kind = typeof cfg.peft_type === 'string' ? cfg.peft_type : 'an unknown method';
    throw new MergeError(`${adapter.name}: merging is for LoRA and DoRA adapters; this one is ${kind}, which adds to the model rather than changing its weights`);
  }
  const r = Number(cfg.r), alpha = Number(cfg.lora_alpha);
  if (!(Number.isInteger(r) && r > 0)) throw new MergeError(`${adapter.name}: adapter_config.json has r = ${JSON.stringify(cfg.r)}, not a positive integer`);
  if (!Number.isFinite(alpha)) throw new MergeError(`${adapter.name}: adapter_config.json has lora_alpha = ${JSON.stringify(cfg.lora_alpha)}, not a number`);
  if (cfg.rank_pattern && Object.keys(cfg.rank_pattern as object).length > 0) throw new MergeError(`${adapter.name}: per-module ranks (rank_pattern) are not supported`);
  if (cfg.alpha_pattern && Object.keys(cfg.alpha_pattern as object).length > 0) throw new MergeError(`${adapter.name}: per-module alphas (alpha_pattern) are not supported`);
  const scale = cfg.use_rslora ? alpha / Math.sqrt(r) : alpha / r;
  const st = parseSafetensors(adapter.weights, `${adapter.name}/adapter_model.safetensors`);
  const modules = new Map<string, LowRank>();
  const whole = new Map<string, { shape: number[]; data: Float32Array }>();
  for (const [key, entry] of st.tensors) {
    if (!key.startsWith(PREFIX)) throw new MergeError(`${adapter.name}: tensor ${key} does not start with ${PREFIX}`);
    const name = key.slice(PREFIX.length);
    const t = { shape: entry.shape, data: st.getF32(key) };
    const lora = /^(.*)\.lora_(A|B)\.weight$/.exec(name);
    const mag = /^(.*)\.lora_magnitude_vector$/.exec(name);
    if (lora || mag) {
      const module = (lora ?? mag)![1];
      if (!modules.has(module)) modules.set(module, { module });
      const m = modules.get(module)!;
      if (mag) m.m = t.data;
      else if (lora![2] === 'A') m.A = t;
      else m.B = t;
    } else if (/\.lora_(embedding_)?[AB]\b/.test(name)) {
      throw new MergeError(`${adapter.name}: ${key}: LoRA on embeddings is not supported`);
    } else {
      whole.set(name, t);
    }
  }
  for (const m of modules.values()) {
    if (!m.A || !m.B) throw new MergeError(`${adapter.name}: ${m.module} has lora_${m.A ? 'B' : 'A'} missing`);
    if (m.A.shape.length !== 2 || m.B.shape.length !== 2 || m.A.shape[0] !== r || m.B.shape[1] !== r) {
      throw new MergeError(`${adapter.name}: ${m.module}: lora_A [${m.A.shape}] and lora_B [${m.B.shape}] do not have rank r = ${r}`);
    }
  }
  return { scale, fanInFanOut: Boolean(cfg.fan_in_fan_out), modules, whole };
}

/** W (+)= the module's update, in place; W is [out, in] (Linear) or [in, out] (Conv1D, transposed). */
function mergeModule(W: Float32Array, shape: number[], lr: LowRank, scale: number, transposed: boolean, where: string): void {
  const A = lr.A!, B = lr.B!;
  const r = A.shape[0], inF = A.shape[1], outF = B.shape[0];
  const want = transposed ? [inF, outF] : [outF, inF];
  if (shape.length !== 2 || shape[0] !== want[0] || shape[1] !== want[1]) {
    throw new MergeError(`${where}: the model's weight is [${shape}] but the adapter's lora_A [${A.shape}] and lora_B [${B.shape}] make [${want}]`);
  }
  // merged rows in float64: delta[o][i] = s * sum_k B[o][k] A[k][i]
  const merged = new Float64Array(outF * inF);
  for (let o = 0; o < outF; o++) {
    for (let i = 0; i < inF; i++) {
      let d = 0;
      for (let k = 0; k < r; k++) d += B.data[o * r + k] * A.data[k * inF + i];
      merged[o * inF + i] = (transposed ? W[i * outF + o] : W[o * inF + i]) + scale * d;
    }
  }
  if (lr.m) {
    if (lr.m.length !== outF) throw new MergeError(`${where}: lora_magnitude_vector has ${lr.m.length} entries, the layer ${outF} outputs`);
    for (let o = 0; o < outF; o++) {
      let ss = 0;
      for (let i = 0; i < inF; i++) ss += merged[o * inF + i] ** 2;
      const factor = lr.m[o] / Math.sqrt(ss);
      for (let i = 0; i < inF; i++) merged[o * inF + i] *= factor;
    }
  }
  for (let o = 0; o < outF; o++) {
    for (let i = 0; i < inF; i++) {
      if (transposed) W[i * outF + o] = merged[o * inF + i];
      else W[o * inF + i] = merged[o * inF + i];
    }
  }
}

function encode(name: string, shape: number[], data: Float32Array, dtype: MergedDType): TensorToWrite {
  if (dtype === 'F32') return { name, dtype, shape, data };
  return { name, dtype, shape, data: dtype === 'BF16' ? f32ToBf16(data) : f32ToF16(data) };
}

const TORCH_DTYPE: Record<MergedDType, string> = { F32: 'float32', BF16: 'bfloat16', F16: 'float16' };

/**
 * The base model with the adapter merged in, as a folder of files. `files` gives the non-weight
 * files to carry over; `model` the weights (loadHfModel of the same files).
 */
export async function mergeAdapter(files: ModelFiles, model: HfModel, adapter: AdapterFiles, opts: MergeOptions = {}): Promise<MergedModel> {
  const { scale, fanInFanOut, modules, whole } = readAdapter(adapter);
  const dtype = opts.dtype ?? defaultDType(model);
  const maxShard = opts.maxShardBytes ?? DEFAULT_MAX_SHARD_BYTES;
  if (!(maxShard > 0)) throw new MergeError(`the largest shard must be a positive number of bytes (got ${maxShard})`);

  const updates = new Map<string, LowRank>();
  for (const lr of modules.values()) {
    const name = findTensor(model, `${lr.module}.weight`);
    if (!name) throw new MergeError(`${adapter.name}: the adapter changes ${lr.module}, which ${model.name} does not have (an adapter for another model?)`);
    updates.set(name, lr);
  }
  const replacements = new Map<string, { shape: number[]; data: Float32Array }>();
  for (const [n, t] of whole) {
    const name = findTensor(model, n);
    if (!name) throw new MergeError(`${adapter.name}: the adapter saves ${n} whole, which ${model.name} does not have`);
    const info = model.tensorInfo(name);
    if (info.shape.join() !== t.shape.join()) throw new MergeError(`${adapter.name}: ${n} is [${t.shape}] in the adapter but [${info.shape}] in ${model.name}`);
    replacements.set(name, t);
  }

  // every tensor in the base model's order, merged where the adapter says, packed into shards
  const bytesPer = dtype === 'F32' ? 4 : 2;
  const shards: TensorToWrite[][] = [[]];
  let shardBytes = 0;
  let total = 0;
  for (const name of model.tensorNames) {
    const info = model.tensorInfo(name);
    let data: Float32Array;
    const lr = updates.get(name);
    const rep = replacements.get(name);
    if (rep) {
      data = Float32Array.from(rep.data);
    } else {
      data = model.getF32(name);
      if (lr) mergeModule(data, info.shape, lr, scale, fanInFanOut, `${model.name}: ${name}`);
    }
    const size = data.length * bytesPer;
    if (shardBytes > 0 && shardBytes + size > maxShard) {
      shards.push([]);
      shardBytes = 0;
    }
    shards[shards.length - 1].push(encode(name, info.shape, data, dtype));
    shardBytes += size;
    total += size;
  }

  const out = new Map<string, Uint8Array>();
  const meta = { format: 'pt' };
  if (shards.length === 1) {
    out.set('model.safetensors', writeSafetensors(shards[0], meta));
  } else {
    const n = shards.length;
    const weightMap: Record<string, string> = {};
    shards.forEach((tensors, i) => {
      const file = `model-${String(i + 1).padStart(5, '0')}-of-${String(n).padStart(5, '0')}.safetensors`;
      out.set(file, writeSafetensors(tensors, meta));
      for (const t of tensors) weightMap[t.name] = file;
    });
    out.set('model.safetensors.index.json', new TextEncoder().encode(JSON.stringify({ metadata: { total_size: total }, weight_map: weightMap }, null, 2)));
  }
  // the other files as they were; config.json with the dtype written
  for (const path of files.list()) {
    if (WEIGHT_FILE.test(path) || path === 'config.json') continue;
    out.set(path, await files.read(path));
  }
  const config = JSON.parse(new TextDecoder().decode(await files.read('config.json'))) as Record<string, unknown>;
  if ('torch_dtype' in config) config.torch_dtype = TORCH_DTYPE[dtype];
  if ('dtype' in config || !('torch_dtype' in config)) config.dtype = TORCH_DTYPE[dtype];
  out.set('config.json', new TextEncoder().encode(JSON.stringify(config, null, 2) + '\n'));
  return { files: out, merged: [...updates.keys()], replaced: [...replacements.keys()], dtype };
}
