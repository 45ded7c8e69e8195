// Moving frozen weights from a Hugging Face checkpoint onto the GPU.

import type { Gpu } from '../gpu/gpu';
import type { Tensor } from '../gpu/tensor';

/** What the engine needs from a loaded checkpoint (src/io/model-files.ts provides it). */
export interface WeightSource {
  tensorNames: string[];
  tensorInfo(name: string): { shape: number[]; dtype: string };
  getF32(name: string): Float32Array;
}

export class WeightError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'WeightError';
  }
}

/**
 * A [rows, cols] matrix stored as consecutive row blocks, each its own buffer under the GPU's
 * binding limit (GPT-2's 50257x768 embedding is 154 MB, over the default 128 MiB; Qwen2.5's is 545 MB).
 */
export interface RowChunks {
  rows: number;
  cols: number;
  chunks: { rowStart: number; rows: number; tensor: Tensor }[];
}

/** Finds a tensor by its name or by the name without a leading prefix (checkpoints differ: "transformer.h.0" vs "h.0"). */
export function resolveName(src: WeightSource, name: string, prefixes: readonly string[]): string | null {
  const names = new Set(src.tensorNames);
  if (names.has(name)) return name;
  for (const p of prefixes) {
    if (name.startsWith(p) && names.has(name.slice(p.length))) return name.slice(p.length);
    if (names.has(p + name)) return p + name;
  }
  return null;
}

/**
 * How the frozen matrices (the linear layers' weights and the vocabulary table) are kept on the GPU:
 * 'f32', or 'f16' at half the memory (gpu/tensor.ts; the kernels read halves through
 * kernels/packed-f16.ts and compute in f32). Norms, biases and position tables stay f32.
 */
export type FrozenStorage = 'f32' | 'f16';

export class WeightLoader {
  constructor(
    private readonly gpu: Gpu,
    private readonly src: WeightSource,
    private readonly prefixes: readonly string[],
    /** Where the weights came from, for messages. */
    private readonly where: string,
    /** The dtype frozen matrices are kept in (also for buffers a caller stacks them into). */
    readonly frozen: FrozenStorage = 'f32',
  ) {}

  has(name: string): boolean {
    return resolveName(this.src, name, this.prefixes) !== null;
  }

  private read(name: string, shape: readonly number[]): Float32Array {
    const found = resolveName(this.src, name, this.prefixes);
    if (!found) throw new WeightError(`${this.where}: tensor ${name} is missing from the checkpoint`);
    const info = this.src.tensorInfo(found);
    if (info.shape.length !== shape.length || info.shape.some((d, i) => d !== shape[i])) {
      throw new WeightError(`${this.where}: tensor ${found} has shape [${info.shape.join(', ')}] but config.json implies [${shape.join(', ')}]`);
    }
    return this.src.getF32(found);
  }

  /** Uploads one tensor, checking its shape. */
  load(name: string, shape: readonly number[]): Tensor {
    const data = this.read(name, shape);
    return this.gpu.tensorFrom(data, shape, name);
  }

  /** Uploads a frozen matrix (a linear layer's weight), checking its shape, as FrozenStorage says. */
  loadFrozen(name: string, shape: readonly number[]): Tensor {
    const data = this.read(name, shape);
    return this.frozen === 'f16' ? this.gpu.tensorFromF16(data, shape, name) : this.gpu.tensorFrom(data, shape, name);
  }

  /** Uploads one tensor into `dst` (a view of a larger buffer, say), checking its shape; an 'f16' `dst` gets it rounded to halves. */
  loadInto(name: string, shape: readonly number[], dst: Tensor): void {
    const data = this.read(name, shape);
    if (dst.dtype === 'f16') this.gpu.writeF16(dst, data);
    else this.gpu.write(dst, data);
  }

  /** Uploads tensors end to end as one [total] tensor, checking each one's shape. */
  loadStacked(parts: readonly (readonly [string, readonly number[]])[], label: string): Tensor {
    const datas = parts.map(([name, shape]) => this.read(name, shape));
    const all = new Float32Array(datas.reduce((n, d) => n + d.length, 0));
    let at = 0;
    for (const d of datas) {
      all.set(d, at);
      at += d.length;
    }
    return this.gpu.tensorFrom(all, [all.length], label);
  }

  /** Uploads a frozen [rows, cols] matrix (a vocabulary table) split into row blocks that each fit one binding, as FrozenStorage says. */
  loadRowChunks(name: string, rows: number, cols: number, maxChunkBytes = this.gpu.maxBindingBytes): RowChunks {
    const data = this.read(name, [rows, cols]);
    return uploadRowChunks(this.gpu, name, data, rows, cols, maxChunkBytes, this.frozen);
  }
}

export function uploadRowChunks(gpu: Gpu, name: string, data: Float32Array, rows: number, cols: number, maxChunkBytes: number, storage: FrozenStorage = 'f32'): RowChunks {
  // halves: 2 bytes each, a chunk padded to whole 8 bytes
  const rowsPerChunk = Math.max(1, Math.floor(storage === 'f16' ? (maxChunkBytes - 8) / (cols * 2) : maxChunkBytes / (cols * 4)));
  const chunks: RowChunks['chunks'] = [];
  for (let r0 = 0; r0 < rows; r0 += rowsPerChunk) {
    const n = Math.min(rowsPerChunk, rows - r0);
    const values = data.subarray(r0 * cols, (r0 + n) * cols), label = `${name}[${r0}:${r0 + n}]`;
    const tensor = storage === 'f16' ? gpu.tensorFromF16(values, [n, cols], label) : gpu.tensorFrom(values, [n, cols], label);
    chunks.push({ rowStart: r0, rows: n, tensor });
  }
  return { rows, cols, chunks };
}
