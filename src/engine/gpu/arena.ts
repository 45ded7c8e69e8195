// Tensors of one kind (an adapter's parameters, their gradients, AdamW's moments) as views into
// shared buffers, so that the optimizer and the gradient norm take one dispatch per buffer instead
// of one per tensor (train/optimizer.ts). Each view starts on a 256-byte boundary (WebGPU's largest
// minStorageBufferOffsetAlignment) and its slot is a whole number of 64 elements, so a kernel
// binding it may read it as vec4s; the gaps stay zero. A buffer holds at most ARENA_MAX_BYTES
// (WebGPU's default storage binding limit) unless one tensor alone is larger. WebGPU tracks a
// buffer's usage as a whole: one dispatch must not bind two views of one buffer where either is
// written (LoRA's kernels read A and B from one buffer and write their gradients into another).

import type { Gpu } from './gpu';
import { Tensor, shapeSize } from './tensor';

/** Elements per alignment step: 256 bytes. */
export const ARENA_ALIGN = 64;
/** Largest buffer of several tensors: 128 MiB. */
export const ARENA_MAX_BYTES = 128 * 2 ** 20;

export interface ArenaLayout {
  /** Per buffer: its elements (slots summed) and the tensors in it as [index, offset]. */
  buffers: { elements: number; slots: { index: number; offset: number }[] }[];
}

/** Where tensors of these sizes (in this order) go. Pure: the memory plan (worker/memory.ts) uses it too. */
export function arenaLayout(sizes: readonly number[]): ArenaLayout {
  const buffers: ArenaLayout['buffers'] = [];
  let cur: ArenaLayout['buffers'][number] | null = null;
  sizes.forEach((n, index) => {
    const slot = Math.max(ARENA_ALIGN, Math.ceil(n / ARENA_ALIGN) * ARENA_ALIGN);
    if (!cur || (cur.elements + slot) * 4 > ARENA_MAX_BYTES) {
      cur = { elements: 0, slots: [] };
      buffers.push(cur);
    }
    cur.slots.push({ index, offset: cur.elements });
    cur.elements += slot;
  });
  return { buffers };
}

/** One shared buffer: `whole` covers all of it (gaps included, zero), `views` are its tensors. */
export interface Arena {
  whole: Tensor;
  views: { index: number; tensor: Tensor }[];
}

/** Zero-filled tensors of these shapes as views into arenaLayout's buffers; returns the buffers and the views in order. */
export function makeArenas(gpu: Gpu, label: string, tensors: readonly { shape: readonly number[]; label: string }[]): { arenas: Arena[]; views: Tensor[] } {
  const layout = arenaLayout(tensors.map((t) => shapeSize(t.shape)));
  const views: Tensor[] = new Array(tensors.length);
  const arenas = layout.buffers.map((b, i) => {
    const whole = gpu.tensor([b.elements], layout.buffers.length > 1 ? `${label}[${i}]` : label);
    const inArena = b.slots.map(({ index, offset }) => {
      const t = new Tensor(whole.buffer, tensors[index].shape, tensors[index].label, 'f32', offset, true);
      views[index] = t;
      return { index, tensor: t };
    });
    return { whole, views: inArena };
  });
  return { arenas, views };
}
