// Classification metrics on a validation split, as scikit-learn computes them (what transformers'
// examples report through `evaluate`): accuracy, macro-F1 over the classes that occur in the true
// or the predicted labels (a class never predicted has F1 0), and the confusion matrix.

export interface ClassificationMetrics {
  /** Labelled examples evaluated. */
  count: number;
  /** Mean cross-entropy. */
  loss: number;
  accuracy: number;
  /** Macro-averaged F1 (sklearn f1_score(average="macro"), zero_division=0). */
  f1: number;
  /** Per class id: F1, precision and recall (0 where undefined); support = true examples. */
  perClass: { f1: number; precision: number; recall: number; support: number }[];
  /** confusion[true][predicted] counts. */
  confusion: number[][];
}

/** Index of the largest logit (the first on ties, like torch.argmax). */
export function argmax(logits: ArrayLike<number>, offset: number, K: number): number {
  let best = 0;
  for (let k = 1; k < K; k++) if (logits[offset + k] > logits[offset + best]) best = k;
  return best;
}

export function classificationMetrics(truth: readonly number[], predicted: readonly number[], K: number, lossSum: number): ClassificationMetrics {
  if (truth.length !== predicted.length) throw new Error(`classificationMetrics: ${truth.length} labels but ${predicted.length} predictions`);
  const confusion = Array.from({ length: K }, () => new Array<number>(K).fill(0));
  let correct = 0;
  truth.forEach((y, i) => {
    const p = predicted[i];
    if (!(y >= 0 && y < K && p >= 0 && p < K)) throw new Error(`classificationMetrics: class ids must be in 0..${K - 1} (got ${y}, ${p})`);
    confusion[y][p]++;
    if (y === p) correct++;
  });
  const perClass = confusion.map((row, k) => {
    const tp = row[k];
    const support = row.reduce((a, b) => a + b, 0);
    const predictedK = confusion.reduce((s, r) => s + r[k], 0);
    const precision = predictedK ? tp / predictedK : 0;
    const recall = support ? tp / support : 0;
    const denom = support + predictedK; // 2TP + FP + FN
    return { f1: denom ? (2 * tp) / denom : 0, precision, recall, support };
  });
  const present = perClass.filter((c, k) => c.support > 0 || confusion.some((r) => r[k] > 0));
  const n = truth.length;
  return {
    count: n,
    loss: n ? lossSum / n : NaN,
    accuracy: n ? correct / n : NaN,
    f1: present.length ? present.reduce((s, c) => s + c.f1, 0) / present.length : NaN,
    perClass,
    confusion,
  };
}

/** The confusion matrix as aligned text rows (true label down, predicted across). */
export function formatConfusion(confusion: readonly (readonly number[])[], names: readonly string[]): string[] {
  const corner = 'true \\ pred';
  const first = Math.max(corner.length, ...names.map((s) => s.length));
  const w = Math.max(...names.map((s) => s.length), ...confusion.flat().map((v) => String(v).length));
  const head = `${corner.padEnd(first)}  ${names.map((s) => s.padStart(w)).join('  ')}`;
  return [head, ...confusion.map((row, i) => `${names[i].padEnd(first)}  ${row.map((v) => String(v).padStart(w)).join('  ')}`)];
}
