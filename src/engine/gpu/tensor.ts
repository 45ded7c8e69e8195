// A GPU tensor: a dense row-major array of 4-byte elements in a storage buffer: the whole buffer,
// or (isView) elements [offset, offset + size) of a buffer shared with other tensors (gpu/arena.ts),
// which kernels bind as that byte range only. 'f16' tensors (frozen weights kept at half the memory)
// hold IEEE halves packed two to a 32-bit word, element 2i in the low half (what WGSL's
// unpack2x16float reads), padded to whole 8-byte pairs of words (kernels read 4 halves at once).

export type DType = 'f32' | 'i32' | 'u32' | 'f16';

/** Bytes that `size` elements of `dtype` take in a buffer. */
export function dtypeBytes(dtype: DType, size: number): number {
  return dtype === 'f16' ? Math.ceil(size / 4) * 8 : size * 4;
}

export function shapeSize(shape: readonly number[]): number {
  let n = 1;
  for (const d of shape) n *= d;
  return n;
}

export class Tensor {
  readonly size: number;
  constructor(
    readonly buffer: GPUBuffer,
    readonly shape: readonly number[],
    readonly label: string,
    readonly dtype: DType = 'f32',
    /** First element in `buffer` (a view's; 0 otherwise). */
    readonly offset = 0,
    /** A view into part of a shared buffer: bound, read and written as its own range only. */
    readonly isView = false,
  ) {
    this.size = shapeSize(shape);
  }

  get bytes(): number {
    return dtypeBytes(this.dtype, this.size);
  }

  get byteOffset(): number {
    return this.dtype === 'f16' ? this.offset * 2 : this.offset * 4;
  }
}
