// A GPU tensor: a dense row-major array of 4-byte elements in a storage buffer: the whole buffer,
// or (isView) elements [offset, offset + size) of a buffer shared with other tensors (gpu/arena.ts),
// which kernels bind as that byte range only.

export type DType = 'f32' | 'i32' | 'u32';

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
    return this.size * 4;
  }

  get byteOffset(): number {
    return this.offset * 4;
  }
}
