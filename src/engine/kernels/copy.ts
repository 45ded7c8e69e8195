import code from '../../../shaders/copy.wgsl?raw';
import type { Gpu } from '../gpu/gpu';
import { bindDispatch, type Op } from '../gpu/dispatch';
import type { Tensor } from '../gpu/tensor';
import { grid1d } from './grid';

/**
 * dst = src over their first `elements` 4-byte elements (default: their common length), from the
 * start of both (of a view's range, for views: gpu/arena.ts). A compute dispatch (shaders/copy.wgsl) where that length is whole vec4s and
 * tuning.copyKernel is on, so the copy stays inside the compute pass around it; otherwise a
 * copyBufferToBuffer (which ends the pass).
 */
export function copyOp(gpu: Gpu, src: Tensor, dst: Tensor, elements?: number): Op {
  const what = `copy(${src.label} -> ${dst.label})`;
  const bytes = elements === undefined ? Math.min(src.bytes, dst.bytes) : elements * 4;
  if (!Number.isInteger(elements ?? 0) || bytes < 0 || bytes > src.bytes || bytes > dst.bytes) {
    throw new Error(`${what}: ${elements} elements do not fit (${src.bytes} and ${dst.bytes} bytes)`);
  }
  // (views of one shared buffer too: WebGPU takes a buffer written in a dispatch or a copy as a whole)
  if (src.buffer === dst.buffer) throw new Error(`${what}: source and destination are one buffer`);
  if (!gpu.tuning.copyKernel || bytes % 16 !== 0 || bytes === 0) {
    return { kind: 'copy', src: src.buffer, srcOffset: src.byteOffset, dst: dst.buffer, dstOffset: dst.byteOffset, size: bytes };
  }
  const n = bytes / 16;
  return bindDispatch(gpu, { label: `copy(${dst.label})`, code, params: [n], buffers: [src, dst], workgroups: grid1d(n) });
}
