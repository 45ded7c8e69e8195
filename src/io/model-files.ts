// Loading a Hugging Face model folder from wherever its files are: a folder on disk (Node, see
// ./model-files-node.ts), File objects from a drag-and-dropped folder, or Blobs from Cache
// Storage. Only the ModelFiles interface differs; loadHfModel is the same everywhere.

import { parseHfConfig, type HfConfig } from './hf-config';
import { parseSafetensors, SafetensorsError, type SafetensorsDType, type SafetensorsFile } from './safetensors';

export class ModelFileError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ModelFileError';
  }
}

/** A model folder's files, by paths relative to the folder ("config.json", "sub/dir/x.bin"). */
export interface ModelFiles {
  /** Shown in messages: the folder name, or whatever the user will recognize. */
  name: string;
  list(): string[];
  has(path: string): boolean;
  read(path: string): Promise<Uint8Array>;
}

/** Forward slashes, no leading "./" or "/". */
export function normalizeModelPath(path: string): string {
  return path.replace(/\\/g, '/').replace(/^(\.\/|\/)+/, '');
}

export function modelFilesFromMap(name: string, files: Map<string, Uint8Array | Blob>): ModelFiles {
  const byPath = new Map<string, Uint8Array | Blob>();
  for (const [path, data] of files) byPath.set(normalizeModelPath(path), data);
  return {
    name,
    list: () => [...byPath.keys()].sort(),
    has: (path) => byPath.has(normalizeModelPath(path)),
    async read(path) {
      const data = byPath.get(normalizeModelPath(path));
      if (data === undefined) throw new ModelFileError(`${name}: there is no file "${path}"`);
      return data instanceof Uint8Array ? data : new Uint8Array(await data.arrayBuffer());
    },
  };
}

/**
 * Files from a folder the user dropped or picked (<input webkitdirectory>): their
 * webkitRelativePath starts with the folder's own name, which is dropped so that "my-model/config.json"
 * becomes "config.json". Files without a relative path are taken by name.
 */
export function modelFilesFromFileList(files: ArrayLike<File>, name?: string): ModelFiles {
  const list = Array.from(files);
  const paths = list.map((f) => normalizeModelPath((f as File & { webkitRelativePath?: string }).webkitRelativePath || f.name));
  // Strip the longest folder prefix all files share, so config.json ends up at the root.
  let prefix = commonFolder(paths);
  const map = new Map<string, Blob>();
  paths.forEach((p, i) => map.set(p.slice(prefix.length), list[i]));
  if (prefix.endsWith('/')) prefix = prefix.slice(0, -1);
  return modelFilesFromMap(name ?? (prefix.split('/').pop() || 'dropped files'), map);
}

function commonFolder(paths: string[]): string {
  if (paths.length === 0) return '';
  const split = paths.map((p) => p.split('/').slice(0, -1));
  const first = split[0];
  let n = 0;
  while (n < first.length && split.every((s) => s[n] === first[n])) n++;
  return n === 0 ? '' : first.slice(0, n).join('/') + '/';
}

export interface TensorInfo {
  shape: number[];
  dtype: SafetensorsDType;
}

export interface HfModel {
  name: string;
  config: HfConfig;
  /** Every weight tensor, in the order of the index (sharded) or of the file. */
  tensorNames: string[];
  hasTensor(name: string): boolean;
  tensorInfo(name: string): TensorInfo;
  /** A float32 copy of the tensor, converted from F16/BF16/F64 as needed. */
  getF32(name: string): Float32Array;
  tokenizerJson?: object;
  tokenizerConfig?: object;
  generationConfig?: object;
  /** A chat template from chat_template.jinja (newer repositories keep it out of tokenizer_config.json). */
  chatTemplate?: string;
}

const SINGLE_WEIGHTS = 'model.safetensors';
const WEIGHTS_INDEX = 'model.safetensors.index.json';

export async function loadHfModel(files: ModelFiles): Promise<HfModel> {
  const name = files.name;
  if (!files.has('config.json')) {
    throw new ModelFileError(`${name}: config.json is missing; a Hugging Face model folder has config.json next to the weights. ${foundFiles(files)}`);
  }
  const config = parseHfConfig(await readJson(files, 'config.json'), `${name}/config.json`);

  // tensor name -> the parsed file that holds it
  const owners = new Map<string, SafetensorsFile>();
  const order: string[] = [];
  if (files.has(SINGLE_WEIGHTS)) {
    const st = await readSafetensors(files, SINGLE_WEIGHTS);
    for (const t of st.tensors.keys()) {
      owners.set(t, st);
      order.push(t);
    }
  } else if (files.has(WEIGHTS_INDEX)) {
    const index = await readJson(files, WEIGHTS_INDEX);
    const weightMap = (index as { weight_map?: unknown }).weight_map;
    if (typeof weightMap !== 'object' || weightMap === null || Array.isArray(weightMap)) {
      throw new ModelFileError(`${name}/${WEIGHTS_INDEX}: has no "weight_map" object`);
    }
    const entries = Object.entries(weightMap as Record<string, unknown>);
    if (entries.length === 0) throw new ModelFileError(`${name}/${WEIGHTS_INDEX}: "weight_map" is empty`);
    const byShard = new Map<string, string[]>();
    for (const [tensor, shard] of entries) {
      if (typeof shard !== 'string') {
        throw new ModelFileError(`${name}/${WEIGHTS_INDEX}: weight_map entry "${tensor}" is ${JSON.stringify(shard)}, not a file name`);
      }
      if (!byShard.has(shard)) byShard.set(shard, []);
      byShard.get(shard)!.push(tensor);
    }
    const missing = [...byShard.keys()].filter((s) => !files.has(s));
    if (missing.length > 0) {
      throw new ModelFileError(
        `${name}: ${WEIGHTS_INDEX} lists ${missing.length === 1 ? 'a shard' : 'shards'} that ${missing.length === 1 ? 'is' : 'are'} not in the folder: ${missing.join(', ')}`,
      );
    }
    for (const [shard, tensors] of byShard) {
      const st = await readSafetensors(files, shard);
      for (const t of tensors) {
        if (!st.tensors.has(t)) {
          throw new ModelFileError(`${name}: ${WEIGHTS_INDEX} says tensor "${t}" is in ${shard}, but ${shard} has no such tensor`);
        }
        owners.set(t, st);
      }
    }
    for (const [t] of entries) order.push(t);
  } else {
    const other = files.list().filter((p) => /\.(bin|pt|pth|ckpt|gguf|h5|msgpack|onnx)$/i.test(p));
    const hint =
      other.length > 0
        ? ` It has ${other.slice(0, 5).join(', ')}: only safetensors weights are read; convert them with the safetensors library or pick a repository that has model.safetensors.`
        : '';
    throw new ModelFileError(`${name}: no weights found: expected ${SINGLE_WEIGHTS} or ${WEIGHTS_INDEX}.${hint} ${foundFiles(files)}`);
  }

  const entryOf = (tensor: string) => {
    const st = owners.get(tensor);
    if (!st) {
      throw new ModelFileError(`${name}: no tensor named "${tensor}" (the model has ${order.length} tensors, e.g. ${order.slice(0, 3).join(', ')})`);
    }
    return { st, entry: st.tensors.get(tensor)! };
  };

  const optionalJson = async (path: string): Promise<object | undefined> => (files.has(path) ? readJson(files, path) : undefined);
  const tokenizerJson = await optionalJson('tokenizer.json');
  const tokenizerConfig = await optionalJson('tokenizer_config.json');
  const generationConfig = await optionalJson('generation_config.json');
  const chatTemplate = files.has('chat_template.jinja') ? new TextDecoder().decode(await files.read('chat_template.jinja')) : undefined;

  return {
    name,
    config,
    tensorNames: order,
    hasTensor: (tensor) => owners.has(tensor),
    tensorInfo(tensor) {
      const { entry } = entryOf(tensor);
      return { shape: [...entry.shape], dtype: entry.dtype };
    },
    getF32: (tensor) => entryOf(tensor).st.getF32(tensor),
    tokenizerJson,
    tokenizerConfig,
    generationConfig,
    chatTemplate,
  };
}

function foundFiles(files: ModelFiles): string {
  const list = files.list();
  if (list.length === 0) return 'The folder is empty.';
  const shown = list.slice(0, 12).join(', ');
  return `Files found: ${shown}${list.length > 12 ? `, … (${list.length} in all)` : ''}.`;
}

async function readJson(files: ModelFiles, path: string): Promise<object> {
  const bytes = await files.read(path);
  let text: string;
  try {
    text = new TextDecoder('utf-8', { fatal: true }).decode(bytes);
  } catch {
    throw new ModelFileError(`${files.name}/${path}: is not UTF-8 text`);
  }
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (e) {
    throw new ModelFileError(`${files.name}/${path}: is not valid JSON (${(e as Error).message})`);
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value)) {
    throw new ModelFileError(`${files.name}/${path}: should hold a JSON object`);
  }
  return value;
}

async function readSafetensors(files: ModelFiles, path: string): Promise<SafetensorsFile> {
  const bytes = await files.read(path);
  try {
    return parseSafetensors(bytes, `${files.name}/${path}`);
  } catch (e) {
    if (e instanceof SafetensorsError) throw e;
    throw new ModelFileError(`${files.name}/${path}: could not be read (${(e as Error).message})`);
  }
}
