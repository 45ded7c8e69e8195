// Choosing the next token from a row of logits: greedy, or sampling with temperature, top-k, top-p.

export interface SamplingOptions {
  /** 0 (or absent) means greedy. */
  temperature?: number;
  topK?: number;
  topP?: number;
  /** uniform [0, 1) source */
  random?: () => number;
}

export function argmax(logits: ArrayLike<number>): number {
  let best = 0;
  for (let i = 1; i < logits.length; i++) if (logits[i] > logits[best]) best = i;
  return best;
}

export function sampleToken(logits: Float32Array, o: SamplingOptions): number {
  const temp = o.temperature ?? 0;
  if (!(temp > 0)) return argmax(logits);
  const random = o.random ?? Math.random;
  let ids = Array.from(logits.keys());
  ids.sort((a, b) => logits[b] - logits[a]);
  if (o.topK && o.topK > 0) ids = ids.slice(0, o.topK);
  const max = logits[ids[0]];
  let probs = ids.map((i) => Math.exp((logits[i] - max) / temp));
  let sum = probs.reduce((s, p) => s + p, 0);
  probs = probs.map((p) => p / sum);
  if (o.topP !== undefined && o.topP > 0 && o.topP < 1) {
    // smallest prefix whose probability reaches top_p (always at least one token), as transformers
    let acc = 0;
    let keep = 0;
    while (keep < probs.length && acc < o.topP) acc += probs[keep++];
    ids = ids.slice(0, Math.max(1, keep));
    probs = probs.slice(0, ids.length);
    sum = probs.reduce((s, p) => s + p, 0);
    probs = probs.map((p) => p / sum);
  }
  let u = random();
  for (let k = 0; k < ids.length; k++) {
    u -= probs[k];
    if (u < 0) return ids[k];
  }
  return ids[ids.length - 1];
}
