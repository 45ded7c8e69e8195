// What an architecture builds for a fixed batch shape: input tensors, the recorded forward
// (through the loss) and backward (down to the adapter gradients) ops, and the loss outputs.

import type { Gpu } from '../gpu/gpu';
import type { Op } from '../gpu/dispatch';
import type { Tensor } from '../gpu/tensor';
import { productScratchElements } from '../kernels/matmul';
import { tensorCoresOn } from '../kernels/matmul-tc';
import type { RowChunks } from './weights';

/** A padded batch ready for the GPU (src/data/batches.ts makes these). */
export interface BatchArrays {
  B: number;
  T: number;
  /** [B*T] token ids, right-padded */
  inputIds: Uint32Array;
  /** [B*T] next-token targets, -100 where no loss */
  targets: Int32Array;
  /** [B] real length of each row */
  lengths: Uint32Array;
  /** number of targets >= 0 */
  validTargets: number;
  /**
   * [B] the label of each row's first token (-100 for none). Only programs with virtual tokens
   * (prompt tuning) use it: as in PEFT, the last virtual position predicts the first real token.
   */
  firstTargets?: Int32Array;
}

export interface ProgramOptions {
  B: number;
  T: number;
  /** Build the backward ops and keep every layer's activations for them. */
  training: boolean;
  /** Also copy the logits of every position into `logits` (tests and small evaluations). */
  captureLogits?: boolean;
  /** Rows of logits made at once (default: as many as fit gpu.tuning.lmHeadChunkMiB and one binding). */
  headRowsPerChunk?: number;
  /**
   * The linear modules the program's method acts on (absent: those of the method buildProgram is
   * given, none without one). Elsewhere a layer's product is frozen: a training program keeps its
   * input only where a method reads it (one buffer serves every layer otherwise), and Llama runs
   * gate_proj and up_proj as one product where neither is acted on.
   */
  methodActsOn?: (module: string) => boolean;
  /**
   * With methodActsOn: whether that method takes column slices (PeftMethod.takesColumnSlices), so
   * that Llama may run q_proj, k_proj and v_proj as one product where it acts on them (default false).
   */
  methodTakesColumnSlices?: boolean;
}

/** Whether the program's method takes column slices, as buildProgram (given `peft`) and the memory plan (given the options alone) both decide it. */
export function methodTakesColumnSlices(peft: { readonly takesColumnSlices?: boolean } | null, opts: Pick<ProgramOptions, 'methodActsOn' | 'methodTakesColumnSlices'>): boolean {
  return opts.methodActsOn ? (opts.methodTakesColumnSlices ?? false) : Boolean(peft?.takesColumnSlices);
}

/** ProgramOptions.methodActsOn as buildProgram applies it for `peft` (null: no method). */
export function methodModules(peft: { targetsLinear(module: string): boolean } | null, opts: Pick<ProgramOptions, 'methodActsOn'>): (module: string) => boolean {
  return opts.methodActsOn ?? (peft ? (m) => peft.targetsLinear(m) : () => false);
}

export interface Program {
  readonly B: number;
  readonly T: number;
  readonly tokens: Tensor;
  readonly targets: Tensor;
  readonly lengths: Tensor;
  /** [1] multiplier on the loss gradient: 1 / (valid targets in the optimizer step) */
  readonly gradScale: Tensor;
  /** [B*S] per-position loss (0 where ignored); S = virtualTokens + T */
  readonly losses: Tensor;
  /** Virtual positions before each sequence's T tokens (prompt tuning), else 0. */
  readonly virtualTokens: number;
  /** [1] += sum of `losses` on every forward run; the trainer clears it */
  readonly lossSum: Tensor;
  /** [B*T, V] when captureLogits (the real tokens' positions only) */
  readonly logits: Tensor | null;
  readonly forward: Op[];
  readonly backward: Op[];
  /** Uploads a batch's arrays (checks shape and token range). */
  write(batch: BatchArrays): void;
  /** Frees the program's activation buffers (not the model's weights or the adapter). */
  destroy(): void;
}

export class ProgramError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ProgramError';
  }
}

/** The token id the virtual rows carry: outside every table, so the token embedding adds nothing there. */
export const VIRTUAL_TOKEN_ID = 0xffffffff;

/**
 * Validates and uploads a batch into a program's input tensors. With virtual tokens (prompt
 * tuning) each row becomes `virtualTokens` virtual positions and then the batch's T tokens: the
 * virtual positions carry VIRTUAL_TOKEN_ID and no loss, except the last one, which predicts the
 * row's first token (batch.firstTargets) as transformers' shifted loss does over PEFT's labels.
 */
export function writeBatch(gpu: Gpu, p: Pick<Program, 'B' | 'T' | 'tokens' | 'targets' | 'lengths'>, batch: BatchArrays, vocabSize: number, virtualTokens = 0): void {
  if (batch.B !== p.B || batch.T !== p.T) throw new ProgramError(`batch is ${batch.B}x${batch.T} but the program was built for ${p.B}x${p.T}`);
  for (let i = 0; i < batch.inputIds.length; i++) {
    if (batch.inputIds[i] >= vocabSize) throw new ProgramError(`token id ${batch.inputIds[i]} at position ${i} is outside the model's vocabulary (${vocabSize})`);
    const t = batch.targets[i];
    if (t >= vocabSize) throw new ProgramError(`target id ${t} at position ${i} is outside the model's vocabulary (${vocabSize})`);
  }
  const first = batch.firstTargets;
  if (first) {
    if (first.length !== batch.B) throw new ProgramError(`firstTargets has ${first.length} entries for ${batch.B} rows`);
    for (const t of first) if (t >= vocabSize) throw new ProgramError(`first-token target ${t} is outside the model's vocabulary (${vocabSize})`);
  }
  if (virtualTokens === 0) {
    gpu.write(p.tokens, batch.inputIds);
    gpu.write(p.targets, batch.targets);
    gpu.write(p.lengths, batch.lengths);
    return;
  }
  const { B, T } = batch;
  const S = virtualTokens + T;
  const tokens = new Uint32Array(B * S).fill(VIRTUAL_TOKEN_ID);
  const targets = new Int32Array(B * S).fill(-100);
  for (let b = 0; b < B; b++) {
    tokens.set(batch.inputIds.subarray(b * T, (b + 1) * T), b * S + virtualTokens);
    targets.set(batch.targets.subarray(b * T, (b + 1) * T), b * S + virtualTokens);
    if (first && batch.lengths[b] > 0) targets[b * S + virtualTokens - 1] = first[b];
  }
  gpu.write(p.tokens, tokens);
  gpu.write(p.targets, targets);
  gpu.write(p.lengths, Uint32Array.from(batch.lengths, (n) => n + virtualTokens));
}

/** Targets a program computes loss on for this batch (the gradient scale's denominator). */
export function lossTargetCount(batch: BatchArrays, virtualTokens: number): number {
  let n = batch.validTargets;
  if (virtualTokens > 0 && batch.firstTargets) {
    batch.firstTargets.forEach((t, b) => {
      if (t >= 0 && batch.lengths[b] > 0) n++;
    });
  }
  return n;
}

/** One buffer a program (or a model) allocates: what it is for, and how many 4-byte elements. */
export interface PlannedBuffer {
  label: string;
  elements: number;
}

/** Bytes Gpu.buffer really allocates for `elements` 4-byte values: rounded up to 16, at least 16. */
export function allocatedBytesFor(elements: number): number {
  return Math.max(16, Math.ceil((elements * 4) / 16) * 16);
}

/** Sum of what Gpu.buffer allocates for every planned buffer. */
export function plannedBytes(buffers: readonly PlannedBuffer[]): number {
  let sum = 0;
  for (const b of buffers) sum += allocatedBytesFor(b.elements);
  return sum;
}

/**
 * Rows of logits lmHeadAndLoss computes at once: as many as fit in `chunkBytes` (lmHeadChunkBytes),
 * or opts.headRowsPerChunk.
 */
export function lmHeadRows(M: number, V: number, opts: Pick<ProgramOptions, 'headRowsPerChunk'>, chunkBytes: number): number {
  if (opts.headRowsPerChunk !== undefined) return Math.max(1, Math.min(M, opts.headRowsPerChunk));
  const most = Math.max(1, Math.min(M, Math.floor(chunkBytes / (logitsRowStride(V, {}) * 4))));
  // whole 128-row matmul tiles per block where the block has room for them (a block of 410 rows
  // leaves its last tile row 80% empty)
  return most >= M || most < 128 ? most : 128 * Math.floor(most / 128);
}

/** Bytes of one block of logits rows: one binding's worth, at most gpu.tuning.lmHeadChunkMiB. */
export function lmHeadChunkBytes(gpu: Pick<Gpu, 'maxBindingBytes' | 'tuning'>): number {
  return Math.min(gpu.maxBindingBytes, gpu.tuning.lmHeadChunkMiB * 2 ** 20);
}

/**
 * Elements from one row of lmHeadAndLoss's logits block to the next: V rounded up to a multiple of
 * 4, so the LM head's backward (dHidden = dlogits W_head, K = V) reads the block as vec4s (the vec4
 * matmul kernels; GPT-2's 50,257 is not a multiple of 4), except when the logits are captured
 * (copied out row block by row block, which needs them dense).
 */
export function logitsRowStride(V: number, opts: Pick<ProgramOptions, 'captureLogits'>): number {
  return opts.captureLogits ? V : 4 * Math.ceil(V / 4);
}

/**
 * Elements of the split-K / stream-K scratch of the LM head's products in training (logits =
 * hidden W_head^T, and dHidden = dlogits W_head with K = the vocabulary rows of each weight chunk):
 * the largest over them (kernels/matmul.ts productScratchElements), 0 when none needs one.
 */
export function lmHeadSplitKElements(gpu: Gpu, M: number, headRows: number, head: Pick<RowChunks, 'cols' | 'chunks'>): number {
  let most = 0;
  for (let r0 = 0; r0 < M; r0 += headRows) {
    const n = Math.min(headRows, M - r0);
    for (const ch of head.chunks) most = Math.max(most, productScratchElements(gpu, n, head.cols, ch.rows), productScratchElements(gpu, n, ch.rows, head.cols));
  }
  return most;
}

/**
 * Elements of a causal LM program's split-K / stream-K scratch (kernels/matmul.ts
 * matmulWithScratch), one tensor shared by all its products since they run one after another: the
 * frozen linear layers' products at M rows (forward y = x W, and in training dx = dy W^T) and, in
 * training, the LM head's. 0 when nothing needs it.
 */
export function programSplitKElements(
  gpu: Gpu, M: number, linears: readonly { inFeatures: number; outFeatures: number }[], head: Pick<RowChunks, 'rows' | 'cols' | 'chunks'>,
  opts: Pick<ProgramOptions, 'headRowsPerChunk' | 'training'>,
): number {
  let most = 0;
  const product = (N: number, K: number) => {
    most = Math.max(most, productScratchElements(gpu, M, N, K));
  };
  for (const l of linears) {
    product(l.outFeatures, l.inFeatures);
    if (opts.training) product(l.inFeatures, l.outFeatures);
  }
  if (opts.training) most = Math.max(most, lmHeadSplitKElements(gpu, M, lmHeadRows(M, head.rows, opts, lmHeadChunkBytes(gpu)), head));
  return most;
}

/**
 * The buffers of lmHeadAndLoss (common.ts) for M rows: gradScale, losses, lossSum, one block of
 * logits rows, all the logits when captured, and the backward's row scales on tensor cores
 * (lmHeadTakesRowScales; its split-K scratch is the program's: programSplitKElements).
 */
export function headAndLossBuffers(
  gpu: Gpu, M: number, head: Pick<RowChunks, 'rows' | 'cols' | 'chunks'>, opts: Pick<ProgramOptions, 'captureLogits' | 'headRowsPerChunk' | 'training'>,
): PlannedBuffer[] {
  const V = head.rows;
  const headRows = lmHeadRows(M, V, opts, lmHeadChunkBytes(gpu));
  const out: PlannedBuffer[] = [
    { label: 'gradScale', elements: 1 },
    { label: 'losses', elements: M },
    { label: 'lossSum', elements: 1 },
    { label: 'logitsChunk', elements: headRows * logitsRowStride(V, opts) },
  ];
  if (opts.captureLogits) out.push({ label: 'logits', elements: M * V });
  if (lmHeadTakesRowScales(gpu, opts.training ?? false)) out.push({ label: 'logitGradMax', elements: headRows * 4 }, { label: 'logitGradRowScale', elements: headRows });
  return out;
}

/**
 * Whether lmHeadAndLoss's backward (training) runs on tensor cores with its row scales from the
 * cross-entropy: logitGradMax [rows, 4] and logitGradRowScale [rows] for a block of logits rows.
 */
export function lmHeadTakesRowScales(gpu: Gpu, training: boolean): boolean {
  return training && tensorCoresOn(gpu);
}

/** What the trainer needs from an architecture (GPT-2, the Llama family). */
export interface CausalLM {
  readonly V: number;
  buildProgram(peft: import('../peft/method').PeftMethod | null, opts: ProgramOptions): Program;
  /** Writes rows `ids` of the token embedding table into dst [ids.length, hidden] now, as f32 (prompt tuning's init). */
  copyTokenEmbeddings(ids: readonly number[], dst: Tensor): void;
}
