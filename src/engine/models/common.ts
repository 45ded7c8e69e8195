// Pieces every causal-LM architecture file shares: linear layers with their adapter hooks, the
// tied/untied LM head with the fused loss (made a block of rows at a time), and tensor ownership.

import type { Gpu } from '../gpu/gpu';
import { runOps, type Op } from '../gpu/dispatch';
import type { Tensor, DType } from '../gpu/tensor';
import { matmul, matmulWithScratch, type MatmulArgs } from '../kernels/matmul';
import { lmHeadChunkBytes, lmHeadRows, lmHeadTakesRowScales, logitsRowStride } from './program';
import { crossEntropy } from '../kernels/cross-entropy';
import { rowScales } from '../kernels/matmul-tc';
import { reduceSum } from '../kernels/reduce-sum';
import { embeddingForward } from '../kernels/embedding';
import type { BranchLocation, BranchSite, FrozenLinear, LinearSite, PeftMethod } from '../peft/method';
import type { RowChunks } from './weights';

/** Allocates a program's tensors and frees them together. */
export class TensorPool {
  private readonly owned: Tensor[] = [];
  constructor(private readonly gpu: Gpu) {}
  t(shape: number[], label: string, dtype: DType = 'f32'): Tensor {
    const x = this.gpu.tensor(shape, label, dtype);
    this.owned.push(x);
    return x;
  }
  destroy(): void {
    for (const x of this.owned) this.gpu.destroyTensor(x);
    this.owned.length = 0;
  }
}

/** The frozen product of a linear site, for the hooks of methods that change it (IA3, DoRA). */
function frozenLinear(gpu: Gpu, site: LinearSite, W: Tensor, bias: Tensor | null | undefined, accumulate: boolean): FrozenLinear {
  return {
    accumulate,
    biasKnown: bias !== undefined,
    weight: W,
    bias: bias ?? null,
    forward: (x, y, acc, withBias = true) => matmul(gpu, {
      label: site.module, a: x, b: W, transB: site.weightLayout === 'out_in', c: y, bias: withBias ? (bias ?? undefined) : undefined,
      M: site.rows, N: site.outFeatures, K: site.inFeatures, accumulate: acc,
    }),
    backward: (dy, dx, acc) => matmul(gpu, {
      label: `${site.module}.dx`, a: dy, b: W, transB: site.weightLayout === 'in_out', c: dx,
      M: site.rows, N: site.inFeatures, K: site.outFeatures, accumulate: acc,
    }),
  };
}

/** The frozen layer's own product: stream-K or split over K when it pays and the site has the scratch for it. */
export function frozenProduct(gpu: Gpu, site: LinearSite, args: MatmulArgs): Op[] {
  return matmulWithScratch(gpu, args, site.splitKScratch ?? null);
}

/**
 * y (+)= x W (+ b) and the adapter's part. W is [in, out] for 'in_out' (GPT-2's Conv1D) or
 * [out, in] for 'out_in' (nn.Linear). A method with replacesLinear makes the whole layer.
 */
export function linearForward(gpu: Gpu, site: LinearSite, W: Tensor, bias: Tensor | null, accumulate: boolean, peft: PeftMethod | null): Op[] {
  const base = frozenLinear(gpu, site, W, bias, accumulate);
  const targeted = peft?.targetsLinear(site.module) ?? false;
  if (targeted && peft!.replacesLinear) return peft!.linearForward(site, base);
  const ops: Op[] = frozenProduct(gpu, site, {
    label: site.module, a: site.x, b: W, transB: site.weightLayout === 'out_in', c: site.y, bias: bias ?? undefined,
    M: site.rows, N: site.outFeatures, K: site.inFeatures, accumulate, tensorCores: 'values',
  });
  if (targeted) ops.push(...peft!.linearForward(site, base));
  return ops;
}

/**
 * dx (+)= dy W^T (in x's terms) and the adapter's gradients and part of dx. `bias` is the layer's
 * bias (null: none): methods that scale the layer's output recompute it in backward, and refuse
 * callers that leave it out (undefined). dx null: nothing below needs it (the lowest trainable
 * layer's input projections), so only the adapter's gradients are made.
 */
export function linearBackward(gpu: Gpu, site: LinearSite, W: Tensor, dy: Tensor, dx: Tensor | null, accumulate: boolean, peft: PeftMethod | null, bias?: Tensor | null): Op[] {
  const base = frozenLinear(gpu, site, W, bias, accumulate);
  const targeted = peft?.targetsLinear(site.module) ?? false;
  if (targeted && peft!.replacesLinear) return peft!.linearBackward(site, { dy, dx }, base);
  const ops: Op[] = dx ? frozenProduct(gpu, site, {
    label: `${site.module}.dx`, a: dy, b: W, transB: site.weightLayout === 'in_out', c: dx,
    M: site.rows, N: site.inFeatures, K: site.outFeatures, accumulate, tensorCores: 'gradients',
  }) : [];
  if (targeted) ops.push(...peft!.linearBackward(site, { dy, dx }, base));
  return ops;
}

/**
 * The method's part of a linear site whose frozen product the architecture made itself, one product
 * for several layers that share their input (Llama's q_proj, k_proj and v_proj into packed rows:
 * site.y is then a column slice, LinearSite.yOffset / yStride): nothing where the method leaves the
 * site alone. Only for methods with takesColumnSlices and without replacesLinear.
 */
export function adapterForward(gpu: Gpu, site: LinearSite, W: Tensor, bias: Tensor | null, peft: PeftMethod | null): Op[] {
  const method = sharedProductMethod(site, peft);
  return method ? method.linearForward(site, frozenLinear(gpu, site, W, bias, false)) : [];
}

/** The method acting on a site of a shared frozen product (null: none acts on it); refuses one that cannot take column slices. */
function sharedProductMethod(site: LinearSite, peft: PeftMethod | null): PeftMethod | null {
  if (!peft?.targetsLinear(site.module)) return null;
  if (peft.replacesLinear || !peft.takesColumnSlices) throw new Error(`${site.module}: the ${peft.kind} method cannot act on a layer that shares its frozen product`);
  return peft;
}

/**
 * adapterForward's backward: the method's parameter gradients and its part of dx (dx null: not
 * needed), after the architecture made the shared frozen product's dx itself. dy is laid out as y.
 */
export function adapterBackward(gpu: Gpu, site: LinearSite, W: Tensor, dy: Tensor, dx: Tensor | null, peft: PeftMethod | null, bias: Tensor | null): Op[] {
  const method = sharedProductMethod(site, peft);
  return method ? method.linearBackward(site, { dy, dx }, frozenLinear(gpu, site, W, bias, true)) : [];
}

/**
 * The residual branch `location` of layer `layer` when the method puts an adapter there (then the
 * sub-block's output goes to site.branch and the method's branchForward writes `out`), else null.
 */
export function branchSite(peft: PeftMethod | null, layer: number, location: BranchLocation, rows: number, width: number, residual: Tensor, out: Tensor): BranchSite | null {
  if (!peft?.targetsBranch?.(layer, location)) return null;
  if (!peft.branchOutput || !peft.branchForward || !peft.branchBackward) throw new Error(`the ${peft.kind} method targets a residual branch but lacks the branch hooks`);
  return { layer, location, rows, width, branch: peft.branchOutput(layer, location, rows), residual, out };
}

/**
 * Token embedding from a (possibly split) table, plus learned positions on the first block (GPT-2)
 * from position `positionOffset` on (prefix tuning: the prefix counts as cached positions).
 */
export function embedTokens(gpu: Gpu, table: RowChunks, tokens: Tensor, out: Tensor, M: number, T: number, positions: Tensor | null, positionOffset = 0): Op[] {
  return table.chunks.map((ch, i) =>
    embeddingForward(gpu, { tokens, table: ch.tensor, rowStart: ch.rowStart, positions: i === 0 ? positions : null, positionOffset, out, M, T, C: table.cols, accumulate: i > 0 }),
  );
}

/**
 * Writes rows `ids` of a (possibly split) embedding table into dst [ids.length, C] now (queued on
 * the GPU): prompt tuning's TEXT and vocabulary-sample initializations. Gathered by the embedding
 * kernel, so a table kept in f16 gives its rows widened to f32 values.
 */
export function copyTableRows(gpu: Gpu, table: RowChunks, ids: readonly number[], dst: Tensor): void {
  const C = table.cols;
  if (dst.dtype !== 'f32') throw new Error(`copyTableRows: ${dst.label} is ${dst.dtype}, want f32`);
  if (dst.size < ids.length * C) throw new Error(`copyTableRows: ${dst.label} has ${dst.size} elements, need ${ids.length} x ${C}`);
  for (const id of ids) {
    if (!Number.isInteger(id) || id < 0 || id >= table.rows) throw new Error(`copyTableRows: token id ${id} is outside the vocabulary (${table.rows})`);
  }
  if (ids.length === 0) return;
  const tokens = gpu.tensorFrom(Uint32Array.from(ids), [ids.length], `${dst.label}.token_ids`);
  runOps(gpu, embedTokens(gpu, table, tokens, dst, ids.length, ids.length, null), `copyTableRows(${dst.label})`);
  gpu.destroyTensor(tokens); // after the submit: the queued work keeps the buffer until it ran
}

export interface HeadAndLoss {
  /** Forward through the loss; when training also d(loss)/d(hidden) into `dHidden`. */
  ops: Op[];
  losses: Tensor;
  lossSum: Tensor;
  gradScale: Tensor;
  logits: Tensor | null;
}

/**
 * logits = hidden W_head^T block by block of rows (so B*T*V floats never need one binding), the
 * cross-entropy and its gradient in place, then (training) dHidden = dlogits W_head.
 */
export function lmHeadAndLoss(
  gpu: Gpu, pool: TensorPool,
  a: {
    hidden: Tensor; head: RowChunks; targets: Tensor; M: number; dHidden: Tensor | null; captureLogits: boolean; headRowsPerChunk?: number;
    /** Rows are sequences of S, the first `skip` of each virtual (prompt tuning): capture only the others. */
    logitsRows?: { S: number; skip: number };
    /** The program's split-K scratch (programSplitKElements), or none: no split. */
    splitKScratch?: Tensor | null;
  },
): HeadAndLoss {
  const { M } = a;
  const S = a.logitsRows?.S ?? M, skip = a.logitsRows?.skip ?? 0;
  const V = a.head.rows, C = a.head.cols;
  const gradScale = pool.t([1], 'gradScale');
  const losses = pool.t([M], 'losses');
  const lossSum = pool.t([1], 'lossSum');
  const headRows = lmHeadRows(M, V, { headRowsPerChunk: a.headRowsPerChunk }, lmHeadChunkBytes(gpu));
  const ld = logitsRowStride(V, { captureLogits: a.captureLogits });
  const chunk = pool.t([headRows, ld], 'logitsChunk');
  const logits = a.captureLogits ? pool.t([(M / S) * (S - skip), V], 'logits') : null;
  // dHidden = dlogits W_head sums over the vocabulary (K = tens of thousands) into few outputs:
  // split-K or stream-K, into the program's scratch (programSplitKElements sized it)
  const splitKScratch = a.splitKScratch ?? null;
  // the backward's A (the logits' gradient) on tensor cores has its rows scaled: the cross-entropy
  // hands over each row's largest magnitude and a pass over those (not over the whole gradient,
  // ~400 µs a step for GPT-2's 412 MB of it) makes the scales
  const headScales = lmHeadTakesRowScales(gpu, a.dHidden !== null) ? { max: pool.t([headRows, 4], 'logitGradMax'), scale: pool.t([headRows], 'logitGradRowScale') } : null;
  const ops: Op[] = [];
  for (let r0 = 0; r0 < M; r0 += headRows) {
    const n = Math.min(headRows, M - r0);
    for (const ch of a.head.chunks) {
      ops.push(...matmulWithScratch(gpu, { label: 'lm_head', a: a.hidden, offsetA: r0 * C, b: ch.tensor, transB: true, c: chunk, offsetC: ch.rowStart, ldc: ld, M: n, N: ch.rows, K: C, tensorCores: 'values' }, splitKScratch));
    }
    if (logits) {
      // the captured rows of [r0, r0 + n), one copy per run of consecutive real rows (ld = V here)
      for (let r = r0; r < r0 + n;) {
        const b = Math.floor(r / S), t = r - b * S;
        if (t < skip) {
          r += skip - t;
          continue;
        }
        const end = Math.min(r0 + n, (b + 1) * S);
        ops.push({ kind: 'copy', src: chunk.buffer, srcOffset: (r - r0) * V * 4, dst: logits.buffer, dstOffset: (b * (S - skip) + t - skip) * V * 4, size: (end - r) * V * 4 });
        r = end;
      }
    }
    ops.push(crossEntropy(gpu, { logits: chunk, targets: a.targets, losses, rowOffset: r0, gradScale, rows: n, V, ld, gradMax: headScales?.max }));
    if (headScales) ops.push(rowScales(gpu, { label: 'lm_head.backward[row scales]', a: headScales.max, scale: headScales.scale, M: n, K: 4, lda: 4, offA: 0 }));
    if (a.dHidden) {
      a.head.chunks.forEach((ch, i) => {
        const args = { label: 'lm_head.backward', a: chunk, offsetA: ch.rowStart, lda: ld, b: ch.tensor, c: a.dHidden!, offsetC: r0 * C, M: n, N: C, K: ch.rows, accumulate: i > 0, tensorCores: 'gradients' as const, rowScales: headScales?.scale };
        ops.push(...matmulWithScratch(gpu, args, splitKScratch));
      });
    }
  }
  ops.push(reduceSum(gpu, { x: losses, n: M, out: lossSum, outIndex: 0, accumulate: true }));
  return { ops, losses, lossSum, gradScale, logits };
}
