// A GPU tensor: one storage buffer holding a dense row-major array of 4-byte elements.

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
  ) {
    this.size = shapeSize(shape);
  }

  get bytes(): number {
    return this.size * 4;
  }
}
