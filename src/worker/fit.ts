// What fits a GPU's buffer limit: when a run's largest buffer is over it, the refusal names the
// largest batch size at the run's length and the longest length at its batch size that do fit,
// so the user gets numbers to type in rather than "lower something".

import type { MemoryEstimate } from './protocol';

/** The largest n in 1..upTo with fits(n), or 0 when not even 1 fits. fits must be true up to some n and false after it. */
export function largestFitting(upTo: number, fits: (n: number) => boolean): number {
  let lo = 0;
  let hi = Math.max(0, Math.floor(upTo));
  while (lo < hi) {
    const mid = Math.ceil((lo + hi) / 2);
    if (fits(mid)) lo = mid;
    else hi = mid - 1;
  }
  return lo;
}

export interface BufferLimitRefusal {
  message: string;
  /** The largest batch size that fits at the run's sequence length (0: none). */
  largestBatch: number;
  /** The longest sequence length that fits at the run's batch size (0: none). */
  longestLength: number;
}

function fmtMiB(n: number): string {
  return `${(n / 2 ** 20).toFixed(1)} MiB`;
}

/**
 * null when a batch of `batchSize` × `seqLen` tokens fits the GPU's buffer limit; otherwise what
 * to tell the user. `estimateAt` is the worker's memory estimate for other shapes of the same run.
 */
export function bufferLimitRefusal(batchSize: number, seqLen: number, estimateAt: (B: number, T: number) => MemoryEstimate): BufferLimitRefusal | null {
  const now = estimateAt(batchSize, seqLen);
  if (now.largestBuffer <= now.bufferLimit) return null;
  const fits = (e: MemoryEstimate) => e.largestBuffer <= e.bufferLimit;
  const largestBatch = largestFitting(batchSize - 1, (B) => fits(estimateAt(B, seqLen)));
  const longestLength = largestFitting(seqLen - 1, (T) => fits(estimateAt(batchSize, T)));
  const batchPart = largestBatch > 0 ? `At ${seqLen} tokens the largest batch size that fits is ${largestBatch}` : `Not even a batch of 1 fits at ${seqLen} tokens`;
  const lengthPart = longestLength > 0 ? `; at batch size ${batchSize} the longest max length that fits is ${longestLength} tokens.` : '.';
  return {
    message: `A batch of ${batchSize} × ${seqLen} tokens needs a ${fmtMiB(now.largestBuffer)} buffer (${now.largestBufferLabel}), more than this GPU allows in one buffer (${fmtMiB(now.bufferLimit)}). ${batchPart}${lengthPart}`,
    largestBatch,
    longestLength,
  };
}
