import code from '../../../shaders/cross_entropy.wgsl?raw';
import type { Gpu } from '../gpu/gpu';
import { bindDispatch, type Dispatch } from '../gpu/dispatch';
import type { Tensor } from '../gpu/tensor';
import { grid1d } from './grid';

export interface CrossEntropyArgs {
  /** [rows, V]; replaced in place by d(loss)/d(logits) * gradScale[0]. */
  logits: Tensor;
  /** i32, read at targets[rowOffset + r]; < 0 means ignored (loss 0, zero gradient row). */
  targets: Tensor;
  /** Per-row losses are written at losses[rowOffset + r]. */
  losses: Tensor;
  rowOffset?: number;
  /** 1-element f32 tensor (e.g. 1 / valid targets in the batch), written per step. */
  gradScale: Tensor;
  rows: number;
  V: number;
  /** Elements from one row of logits to the next (default V); the columns past V are not touched. */
  ld?: number;
}

/** Softmax cross-entropy per row: losses, and the logits gradient written over the logits. */
export function crossEntropy(gpu: Gpu, a: CrossEntropyArgs): Dispatch {
  const what = `crossEntropy(${a.logits.label})`;
  const rowOffset = a.rowOffset ?? 0;
  const ld = a.ld ?? a.V;
  for (const [k, v] of Object.entries({ rows: a.rows, V: a.V, rowOffset, ld })) {
    if (!Number.isInteger(v) || v < 0) throw new Error(`${what}: ${k} must be a non-negative integer (got ${v})`);
  }
  if (a.V < 1) throw new Error(`${what}: V must be >= 1`);
  if (ld < a.V) throw new Error(`${what}: ld = ${ld} must be >= V = ${a.V}`);
  const need = a.rows > 0 ? (a.rows - 1) * ld + a.V : 0;
  if (a.logits.dtype !== 'f32' || a.logits.size < need) {
    throw new Error(`${what}: logits must be f32 with ${a.rows === 0 || ld === a.V ? `rows*V=${need}` : `(rows-1)*ld+V=${need}`} elements (got ${a.logits.dtype} ${a.logits.size})`);
  }
  if (a.targets.dtype !== 'i32') throw new Error(`${what}: targets must be i32 (got ${a.targets.dtype})`);
  if (a.targets.size < rowOffset + a.rows) throw new Error(`${what}: targets has ${a.targets.size} elements, need rowOffset+rows=${rowOffset + a.rows}`);
  if (a.losses.dtype !== 'f32' || a.losses.size < rowOffset + a.rows) {
    throw new Error(`${what}: losses must be f32 with rowOffset+rows=${rowOffset + a.rows} elements (got ${a.losses.dtype} ${a.losses.size})`);
  }
  if (a.gradScale.dtype !== 'f32' || a.gradScale.size < 1) throw new Error(`${what}: gradScale must be a 1-element f32 tensor`);
  if (a.losses.buffer === a.logits.buffer) throw new Error(`${what}: losses must not alias logits`);
  return bindDispatch(gpu, {
    label: what,
    code,
    params: [a.rows, a.V, rowOffset, ld],
    buffers: [a.logits, a.targets, a.gradScale, a.losses],
    workgroups: grid1d(a.rows, 1),
  });
}
