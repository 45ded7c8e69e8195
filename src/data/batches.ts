// Examples → fixed-shape [B, T] batches. Every batch of a run has the same B and T so the GPU
// buffers and pipelines are made once. The next-token shift happens here: targets[b*T+t] is the
// label of token t+1, so the loss kernel compares position t's logits with targets[t] directly,
// exactly like transformers' causal-LM loss (logits[..., :-1] against labels[..., 1:]).

import { IGNORE_INDEX, type Example } from './examples';

export interface Batch {
  B: number;
  T: number;
  /** [B*T] token ids, right-padded with padId. */
  inputIds: Uint32Array;
  /** [B*T] next-token targets; IGNORE_INDEX (-100) past the example's end, at the last position and where labels say so. */
  targets: Int32Array;
  /** [B] real (unpadded) length of each row. */
  lengths: Uint32Array;
  /** Number of targets that are not IGNORE_INDEX: the loss is their mean. */
  validTargets: number;
}

/** mulberry32: small, fast, and the same sequence in every JavaScript engine. */
export function seededRandom(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function shuffleInPlace<T>(items: T[], random: () => number): T[] {
  for (let i = items.length - 1; i > 0; i--) {
    const j = Math.floor(random() * (i + 1));
    [items[i], items[j]] = [items[j], items[i]];
  }
  return items;
}

/** Mixes two integers into one 32-bit seed, so (seed, epoch) pairs give unrelated streams. */
function mixSeed(a: number, b: number): number {
  let h = Math.imul((a >>> 0) ^ 0x9e3779b9, 0x85ebca6b);
  h = Math.imul(h ^ (h >>> 13) ^ (b >>> 0), 0xc2b2ae35);
  h ^= Math.imul(b >>> 0, 0x27d4eb2f);
  return (h ^ (h >>> 16)) >>> 0;
}

/**
 * Deterministic split: the same examples, fraction and seed always give the same sets. Both keep
 * the examples' original order. At least one validation example when the fraction is above 0
 * (and at least one training example always).
 */
export function splitTrainValidation<E>(examples: E[], validationFraction: number, seed: number): { train: E[]; validation: E[] } {
  if (!(validationFraction >= 0 && validationFraction < 1)) {
    throw new RangeError(`validationFraction must be in [0, 1), got ${validationFraction}`);
  }
  const n = examples.length;
  let nVal = Math.round(n * validationFraction);
  if (validationFraction > 0 && nVal === 0 && n >= 2) nVal = 1;
  nVal = Math.min(nVal, n - 1);
  if (nVal <= 0) return { train: [...examples], validation: [] };
  const order = shuffleInPlace(Array.from({ length: n }, (_, i) => i), seededRandom(mixSeed(seed, 0x5eed)));
  const isVal = new Uint8Array(n);
  for (let k = 0; k < nVal; k++) isVal[order[k]] = 1;
  return { train: examples.filter((_, i) => !isVal[i]), validation: examples.filter((_, i) => isVal[i]) };
}

/** A permutation of 0..n-1 for this epoch; different epochs (and seeds) give different orders. */
export function epochOrder(n: number, epoch: number, seed: number): Uint32Array {
  const order = Array.from({ length: n }, (_, i) => i);
  shuffleInPlace(order, seededRandom(mixSeed(seed, epoch)));
  return Uint32Array.from(order);
}

/** The T a run uses: the longest example, capped at maxLength. */
export function sequenceLengthFor(examples: Example[], maxLength: number): number {
  let longest = 0;
  for (const e of examples) longest = Math.max(longest, e.inputIds.length);
  return Math.max(1, Math.min(maxLength, longest));
}

/** One batch of the given examples (B = examples.length); rows longer than T are cut to T. */
export function makeBatch(examples: Example[], T: number, padId: number): Batch {
  if (!Number.isInteger(T) || T < 1) throw new RangeError(`T must be a positive integer, got ${T}`);
  if (!Number.isInteger(padId) || padId < 0) throw new RangeError(`padId must be a token id, got ${padId}`);
  const B = examples.length;
  if (B === 0) throw new RangeError('makeBatch needs at least one example');
  const inputIds = new Uint32Array(B * T).fill(padId);
  const targets = new Int32Array(B * T).fill(IGNORE_INDEX);
  const lengths = new Uint32Array(B);
  let validTargets = 0;
  examples.forEach((ex, b) => {
    if (ex.labels.length !== ex.inputIds.length) {
      throw new RangeError(`example from row ${ex.row}: ${ex.inputIds.length} ids but ${ex.labels.length} labels`);
    }
    const len = Math.min(T, ex.inputIds.length);
    lengths[b] = len;
    for (let t = 0; t < len; t++) {
      inputIds[b * T + t] = ex.inputIds[t];
      // Position t predicts token t+1; the last real position has nothing to predict.
      if (t + 1 < len) {
        const y = ex.labels[t + 1];
        targets[b * T + t] = y;
        if (y !== IGNORE_INDEX) validTargets++;
      }
    }
  });
  return { B, T, inputIds, targets, lengths, validTargets };
}

export interface BatchIteratorOptions {
  batchSize: number;
  /** Sequence length of every batch; sequenceLengthFor(examples, maxLength) is the usual choice. */
  T: number;
  padId: number;
  seed: number;
}

/**
 * The training batches of a run, addressable by step so a resumed run sees the same data:
 * step s is batch (s mod stepsPerEpoch) of epoch floor(s / stepsPerEpoch), each epoch in its own
 * seeded order. The last batch of an epoch is filled up by wrapping around to the start of that
 * epoch's order (rather than padding with empty rows), so B is always batchSize and no row is
 * wasted compute; those few examples are seen twice in the epoch.
 */
export class BatchIterator {
  readonly stepsPerEpoch: number;
  private cachedEpoch = -1;
  private cachedOrder: Uint32Array = new Uint32Array(0);

  constructor(
    readonly examples: Example[],
    readonly options: BatchIteratorOptions,
  ) {
    if (examples.length === 0) throw new RangeError('BatchIterator needs at least one example');
    if (!Number.isInteger(options.batchSize) || options.batchSize < 1) {
      throw new RangeError(`batchSize must be a positive integer, got ${options.batchSize}`);
    }
    this.stepsPerEpoch = Math.ceil(examples.length / options.batchSize);
  }

  epochOf(step: number): number {
    return Math.floor(step / this.stepsPerEpoch);
  }

  /** Indices into `examples` of the rows of batch `step`. */
  indicesAt(step: number): number[] {
    if (!Number.isInteger(step) || step < 0) throw new RangeError(`step must be a non-negative integer, got ${step}`);
    const epoch = this.epochOf(step);
    if (epoch !== this.cachedEpoch) {
      this.cachedOrder = epochOrder(this.examples.length, epoch, this.options.seed);
      this.cachedEpoch = epoch;
    }
    const n = this.examples.length;
    const start = (step % this.stepsPerEpoch) * this.options.batchSize;
    return Array.from({ length: this.options.batchSize }, (_, k) => this.cachedOrder[(start + k) % n]);
  }

  batchAt(step: number): Batch {
    return makeBatch(
      this.indicesAt(step).map((i) => this.examples[i]),
      this.options.T,
      this.options.padId,
    );
  }
}
