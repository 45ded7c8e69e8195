import code from '../../../shaders/embedding.wgsl?raw';
import type { Gpu } from '../gpu/gpu';
import { bindDispatch, type Dispatch } from '../gpu/dispatch';
import type { Tensor } from '../gpu/tensor';
import { grid1d } from './grid';
import { withPackedF16 } from './packed-f16';

export interface EmbeddingForwardArgs {
  /** u32 token ids [M]. */
  tokens: Tensor;
  /** Rows [rowStart, rowStart + rows) of the vocabulary table, [rows, C]: f32, or f16 (a frozen table at half the memory). */
  table: Tensor;
  rowStart: number;
  /** Learned position table [maxPos, C], or null for none. */
  positions: Tensor | null;
  /** Added to the position of every token (m % T), e.g. for a continued sequence. Default 0. */
  positionOffset?: number;
  /** [M, C]. */
  out: Tensor;
  M: number;
  T: number;
  C: number;
  /** Add to `out` instead of overwriting it (second and later table chunks). */
  accumulate: boolean;
}

/**
 * out[m,:] = (accumulate ? out[m,:] : 0) + (token in this chunk ? table[tok[m]-rowStart,:] : 0)
 *          + (positions ? positions[(m % T) + positionOffset,:] : 0)
 */
export function embeddingForward(gpu: Gpu, a: EmbeddingForwardArgs): Dispatch {
  const { M, T, C, rowStart } = a;
  const positionOffset = a.positionOffset ?? 0;
  const what = `embeddingForward(${a.out.label})`;
  for (const [k, v] of Object.entries({ M, T, C, rowStart, positionOffset })) {
    if (!Number.isInteger(v) || v < 0) throw new Error(`${what}: ${k} must be a non-negative integer (got ${v})`);
  }
  if (T < 1 || C < 1) throw new Error(`${what}: T and C must be >= 1 (got T=${T}, C=${C})`);
  if (a.tokens.dtype !== 'u32') throw new Error(`${what}: tokens must be u32 (got ${a.tokens.dtype})`);
  if (a.tokens.size < M) throw new Error(`${what}: tokens has ${a.tokens.size} elements, need M=${M}`);
  if (a.table.dtype !== 'f32' && a.table.dtype !== 'f16') throw new Error(`${what}: table must be f32 or f16 (got ${a.table.dtype})`);
  if (a.positions && a.positions.dtype !== 'f32') throw new Error(`${what}: positions must be f32 (got ${a.positions.dtype})`);
  if (a.table.size % C !== 0) throw new Error(`${what}: table size ${a.table.size} is not a multiple of C=${C}`);
  const rows = a.table.size / C;
  if (a.out.size < M * C) throw new Error(`${what}: out has ${a.out.size} elements, need M*C=${M * C}`);
  if (a.positions) {
    const maxPos = a.positions.size / C;
    if (a.positions.size % C !== 0) throw new Error(`${what}: positions size ${a.positions.size} is not a multiple of C=${C}`);
    // Largest position read is min(M, T) - 1 + positionOffset.
    const needed = Math.min(M, T) + positionOffset;
    if (M > 0 && needed > maxPos) throw new Error(`${what}: positions has ${maxPos} rows, need ${needed} (T=${T}, offset ${positionOffset})`);
  }
  if (a.out.buffer === a.table.buffer || a.out.buffer === a.positions?.buffer || a.out.buffer === a.tokens.buffer) {
    throw new Error(`${what}: out must not alias an input`);
  }
  return bindDispatch(gpu, {
    label: what,
    code: a.table.dtype === 'f16' ? withPackedF16(code, 'table') : code,
    params: [M, C, T, rowStart, rows, positionOffset, a.accumulate ? 1 : 0, a.positions ? 1 : 0],
    buffers: [a.tokens, a.table, a.positions ?? a.table, a.out],
    workgroups: grid1d(M * C),
  });
}
