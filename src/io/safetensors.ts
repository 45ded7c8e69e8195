// A strict reader and a writer for the safetensors format
// (https://github.com/huggingface/safetensors): 8-byte little-endian header length, a UTF-8 JSON
// header, then one data section that the header's data_offsets index into. Everything a user can
// get wrong (a truncated download, a file that is not safetensors) becomes a SafetensorsError that
// names the file and, where there is one, the tensor.

export class SafetensorsError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'SafetensorsError';
  }
}

/** Bytes per element of every dtype the reference implementation knows. */
const DTYPE_SIZES = {
  BOOL: 1,
  U8: 1,
  I8: 1,
  F8_E5M2: 1,
  F8_E4M3: 1,
  I16: 2,
  U16: 2,
  F16: 2,
  BF16: 2,
  I32: 4,
  U32: 4,
  F32: 4,
  F64: 8,
  I64: 8,
  U64: 8,
} as const;

export type SafetensorsDType = keyof typeof DTYPE_SIZES;

export function dtypeSize(dtype: SafetensorsDType): number {
  return DTYPE_SIZES[dtype];
}

export function isSafetensorsDType(s: unknown): s is SafetensorsDType {
  return typeof s === 'string' && Object.prototype.hasOwnProperty.call(DTYPE_SIZES, s);
}

export interface TensorEntry {
  dtype: SafetensorsDType;
  shape: number[];
  /** Byte offsets into the data section (after the header), end exclusive. */
  begin: number;
  end: number;
}

export interface SafetensorsFile {
  fileName: string;
  metadata: Record<string, string>;
  tensors: Map<string, TensorEntry>;
  /** A float32 copy of a floating-point tensor (F32, F16, BF16 or F64). */
  getF32(name: string): Float32Array;
  /** An int32 copy of an integer tensor (I32, I64 within int32 range, I16, U16, I8, U8, BOOL). */
  getI32(name: string): Int32Array;
  /** The tensor's raw little-endian bytes (a view into the file, not a copy). */
  getBytes(name: string): Uint8Array;
}

/** The Python library refuses headers above 100 MB; a larger value means a corrupt or foreign file. */
export const MAX_HEADER_BYTES = 100_000_000;

export function parseSafetensors(bytes: Uint8Array, fileName = 'model.safetensors'): SafetensorsFile {
  const fail = (msg: string): never => {
    throw new SafetensorsError(`${fileName}: ${msg}`);
  };
  if (bytes.length < 8) fail(`file is ${bytes.length} bytes, too short to be safetensors (needs at least an 8-byte header length)`);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const headerLen64 = view.getBigUint64(0, true);
  if (headerLen64 >= BigInt(MAX_HEADER_BYTES)) {
    fail(`header length ${headerLen64} is not below the 100 MB limit: not a safetensors file, or a corrupt one`);
  }
  const headerLen = Number(headerLen64);
  if (8 + headerLen > bytes.length) {
    fail(`header length ${headerLen} runs past the end of the ${bytes.length}-byte file (truncated download?)`);
  }
  let headerText = '';
  try {
    headerText = new TextDecoder('utf-8', { fatal: true }).decode(bytes.subarray(8, 8 + headerLen));
  } catch {
    fail('header is not valid UTF-8: not a safetensors file, or a corrupt one');
  }
  let header: unknown;
  try {
    header = JSON.parse(headerText);
  } catch (e) {
    fail(`header is not valid JSON (${(e as Error).message})`);
  }
  if (typeof header !== 'object' || header === null || Array.isArray(header)) fail('header is not a JSON object');

  const dataStart = 8 + headerLen;
  const dataLength = bytes.length - dataStart;
  const metadata: Record<string, string> = {};
  const tensors = new Map<string, TensorEntry>();

  for (const [name, raw] of Object.entries(header as Record<string, unknown>)) {
    if (name === '__metadata__') {
      if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) fail('__metadata__ must be an object of strings');
      for (const [k, v] of Object.entries(raw as Record<string, unknown>)) {
        if (typeof v !== 'string') fail(`__metadata__ entry "${k}" is ${JSON.stringify(v)}, not a string`);
        metadata[k] = v as string;
      }
      continue;
    }
    const where = `tensor "${name}"`;
    if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) fail(`${where}: entry is not an object`);
    const { dtype, shape, data_offsets } = raw as { dtype?: unknown; shape?: unknown; data_offsets?: unknown };
    if (!isSafetensorsDType(dtype)) {
      fail(`${where}: unknown dtype ${JSON.stringify(dtype)} (known: ${Object.keys(DTYPE_SIZES).join(', ')})`);
    }
    if (!Array.isArray(shape) || !shape.every((d) => Number.isSafeInteger(d) && d >= 0)) {
      fail(`${where}: shape ${JSON.stringify(shape)} is not a list of non-negative integers`);
    }
    if (
      !Array.isArray(data_offsets) ||
      data_offsets.length !== 2 ||
      !data_offsets.every((o) => Number.isSafeInteger(o) && o >= 0)
    ) {
      fail(`${where}: data_offsets ${JSON.stringify(data_offsets)} is not a pair of non-negative integers`);
    }
    const [begin, end] = data_offsets as [number, number];
    if (end < begin) fail(`${where}: data_offsets [${begin}, ${end}] end before they begin`);
    const numel = (shape as number[]).reduce((a, b) => a * b, 1);
    const want = numel * DTYPE_SIZES[dtype as SafetensorsDType];
    if (end - begin !== want) {
      fail(`${where}: data_offsets [${begin}, ${end}] hold ${end - begin} bytes but ${dtype} ${JSON.stringify(shape)} needs ${want}`);
    }
    if (end > dataLength) {
      fail(`${where}: data_offsets [${begin}, ${end}] run past the ${dataLength}-byte data section (truncated download?)`);
    }
    tensors.set(name, { dtype: dtype as SafetensorsDType, shape: [...(shape as number[])], begin, end });
  }

  // Overlapping byte ranges would let one tensor silently alias another. Empty tensors own no bytes.
  const byStart = [...tensors.entries()].filter(([, t]) => t.end > t.begin).sort((a, b) => a[1].begin - b[1].begin);
  for (let i = 1; i < byStart.length; i++) {
    const [prevName, prev] = byStart[i - 1];
    const [name, cur] = byStart[i];
    if (cur.begin < prev.end) {
      fail(`tensor "${name}" (bytes ${cur.begin}-${cur.end}) overlaps tensor "${prevName}" (bytes ${prev.begin}-${prev.end})`);
    }
  }

  const entry = (name: string): TensorEntry => {
    const t = tensors.get(name);
    if (!t) throw new SafetensorsError(`${fileName}: no tensor named "${name}" (the file has ${tensors.size} tensors)`);
    return t;
  };
  const rawBytes = (t: TensorEntry): Uint8Array => bytes.subarray(dataStart + t.begin, dataStart + t.end);

  return {
    fileName,
    metadata,
    tensors,
    getBytes: (name) => rawBytes(entry(name)),
    getF32(name) {
      const t = entry(name);
      const src = rawBytes(t);
      switch (t.dtype) {
        case 'F32':
          return new Float32Array(copyAligned(src).buffer);
        case 'F16':
          return f16ToF32(new Uint16Array(copyAligned(src).buffer));
        case 'BF16':
          return bf16ToF32(new Uint16Array(copyAligned(src).buffer));
        case 'F64':
          return Float32Array.from(new Float64Array(copyAligned(src).buffer));
        default:
          throw new SafetensorsError(`${fileName}: tensor "${name}" is ${t.dtype}, not a floating-point type (F32, F16, BF16, F64)`);
      }
    },
    getI32(name) {
      const t = entry(name);
      const src = copyAligned(rawBytes(t));
      switch (t.dtype) {
        case 'I32':
          return new Int32Array(src.buffer);
        case 'I16':
          return Int32Array.from(new Int16Array(src.buffer));
        case 'U16':
          return Int32Array.from(new Uint16Array(src.buffer));
        case 'I8':
          return Int32Array.from(new Int8Array(src.buffer));
        case 'U8':
        case 'BOOL':
          return Int32Array.from(src);
        case 'I64': {
          const big = new BigInt64Array(src.buffer);
          const out = new Int32Array(big.length);
          for (let i = 0; i < big.length; i++) {
            const v = big[i];
            if (v < -2147483648n || v > 2147483647n) {
              throw new SafetensorsError(`${fileName}: tensor "${name}" element ${i} = ${v} does not fit in int32`);
            }
            out[i] = Number(v);
          }
          return out;
        }
        default:
          throw new SafetensorsError(`${fileName}: tensor "${name}" is ${t.dtype}, not an integer type`);
      }
    },
  };
}

/** A fresh copy whose buffer starts at offset 0, so typed-array views of any width are aligned. */
function copyAligned(src: Uint8Array): Uint8Array {
  const out = new Uint8Array(src.length);
  out.set(src);
  return out;
}

let f16Table: Float32Array | null = null;

/** IEEE half → float32 for all 65536 bit patterns: subnormals, ±0, ±inf and NaN included. */
function buildF16Table(): Float32Array {
  const table = new Float32Array(65536);
  for (let h = 0; h < 65536; h++) {
    const sign = h & 0x8000 ? -1 : 1;
    const exp = (h >> 10) & 0x1f;
    const mant = h & 0x3ff;
    let v: number;
    if (exp === 0) v = mant * 2 ** -24; // subnormal (or zero): mant/1024 * 2^-14
    else if (exp === 31) v = mant === 0 ? Infinity : NaN;
    else v = (1 + mant / 1024) * 2 ** (exp - 15);
    table[h] = sign * v;
  }
  return table;
}

export function f16ToF32(bits: Uint16Array): Float32Array {
  f16Table ??= buildF16Table();
  const table = f16Table;
  const out = new Float32Array(bits.length);
  for (let i = 0; i < bits.length; i++) out[i] = table[bits[i]];
  return out;
}

/** bfloat16 is the top half of a float32, so widening is a 16-bit shift of the bit pattern. */
export function bf16ToF32(bits: Uint16Array): Float32Array {
  const out = new Uint32Array(bits.length);
  for (let i = 0; i < bits.length; i++) out[i] = bits[i] << 16;
  return new Float32Array(out.buffer);
}

export interface TensorToWrite {
  name: string;
  dtype: 'F32' | 'I32' | 'I64' | 'BF16' | 'F16';
  shape: number[];
  /** F16 and BF16: the 16-bit patterns (f32ToBf16 / f32ToF16). */
  data: Float32Array | Int32Array | BigInt64Array | Uint16Array;
}

/** float32 to bfloat16 bit patterns, rounding to nearest even (NaN stays NaN), as torch does. */
export function f32ToBf16(values: Float32Array): Uint16Array {
  const bits = new Uint32Array(values.buffer, values.byteOffset, values.length);
  const out = new Uint16Array(values.length);
  for (let i = 0; i < bits.length; i++) {
    const u = bits[i];
    if ((u & 0x7f800000) === 0x7f800000 && (u & 0x7fffff) !== 0) out[i] = (u >>> 16) | 0x40;
    else out[i] = (u + 0x7fff + ((u >>> 16) & 1)) >>> 16;
  }
  return out;
}

/** float32 to IEEE half bit patterns, rounding to nearest even; overflow to infinity, subnormals kept. */
export function f32ToF16(values: Float32Array): Uint16Array {
  const bits = new Uint32Array(values.buffer, values.byteOffset, values.length);
  const out = new Uint16Array(values.length);
  for (let i = 0; i < bits.length; i++) {
    const u = bits[i];
    const sign = (u >>> 16) & 0x8000;
    const exp = (u >>> 23) & 0xff;
    const mant = u & 0x7fffff;
    if (exp === 0xff) {
      out[i] = sign | 0x7c00 | (mant ? 0x200 : 0);
      continue;
    }
    const e = exp - 127 + 15;
    if (e >= 31) {
      out[i] = sign | 0x7c00;
    } else if (e <= 0) {
      // subnormal half (or zero): shift the full significand, round to nearest even
      if (e < -10) {
        out[i] = sign;
        continue;
      }
      const m = mant | 0x800000;
      const shift = 14 - e;
      const half = 1 << (shift - 1);
      const rest = m & ((1 << shift) - 1);
      let h = m >>> shift;
      if (rest > half || (rest === half && (h & 1))) h++;
      out[i] = sign | h;
    } else {
      let h = (e << 10) | (mant >>> 13);
      const rest = mant & 0x1fff;
      if (rest > 0x1000 || (rest === 0x1000 && (h & 1))) h++; // may carry into the exponent: still right
      out[i] = sign | h;
    }
  }
  return out;
}

// The Python library writes tensors sorted by dtype (wider alignment first, in the order of its
// Dtype enum, descending) and then by name; that keeps every tensor naturally aligned without
// padding between tensors (which its reader would reject as a gap).
const WRITE_ORDER: Record<TensorToWrite['dtype'], number> = { I64: 0, F32: 1, I32: 2, BF16: 3, F16: 4 };

/**
 * Serializes tensors to safetensors bytes. The JSON header is padded with spaces to a multiple of
 * 8 bytes so the data section starts 8-aligned, as the Python library does.
 */
export function writeSafetensors(tensors: TensorToWrite[], metadata?: Record<string, string>): Uint8Array<ArrayBuffer> {
  const seen = new Set<string>();
  for (const t of tensors) {
    const where = `writeSafetensors: tensor "${t.name}"`;
    if (t.name === '__metadata__') throw new SafetensorsError(`${where}: the name is reserved`);
    if (seen.has(t.name)) throw new SafetensorsError(`${where} appears twice`);
    seen.add(t.name);
    if (!(t.dtype in WRITE_ORDER)) throw new SafetensorsError(`${where}: cannot write dtype ${t.dtype}`);
    const wantArray = t.dtype === 'F32' ? Float32Array : t.dtype === 'I32' ? Int32Array : t.dtype === 'I64' ? BigInt64Array : Uint16Array;
    if (!(t.data instanceof wantArray)) throw new SafetensorsError(`${where}: ${t.dtype} data must be a ${wantArray.name}`);
    if (!t.shape.every((d) => Number.isSafeInteger(d) && d >= 0)) {
      throw new SafetensorsError(`${where}: shape ${JSON.stringify(t.shape)} is not a list of non-negative integers`);
    }
    const numel = t.shape.reduce((a, b) => a * b, 1);
    if (numel !== t.data.length) {
      throw new SafetensorsError(`${where}: shape ${JSON.stringify(t.shape)} has ${numel} elements but data has ${t.data.length}`);
    }
  }
  const ordered = [...tensors].sort(
    (a, b) => WRITE_ORDER[a.dtype] - WRITE_ORDER[b.dtype] || (a.name < b.name ? -1 : a.name > b.name ? 1 : 0),
  );

  const header: Record<string, unknown> = {};
  if (metadata && Object.keys(metadata).length > 0) {
    for (const [k, v] of Object.entries(metadata)) {
      if (typeof v !== 'string') throw new SafetensorsError(`writeSafetensors: metadata "${k}" must be a string`);
    }
    header.__metadata__ = metadata;
  }
  let offset = 0;
  for (const t of ordered) {
    const size = t.data.byteLength;
    header[t.name] = { dtype: t.dtype, shape: t.shape, data_offsets: [offset, offset + size] };
    offset += size;
  }
  const json = new TextEncoder().encode(JSON.stringify(header));
  const padded = Math.ceil(json.length / 8) * 8;
  const out = new Uint8Array(8 + padded + offset);
  new DataView(out.buffer).setBigUint64(0, BigInt(padded), true);
  out.set(json, 8);
  out.fill(0x20, 8 + json.length, 8 + padded);
  let pos = 8 + padded;
  for (const t of ordered) {
    out.set(new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength), pos);
    pos += t.data.byteLength;
  }
  return out;
}
