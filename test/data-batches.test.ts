import { describe, expect, it } from 'vitest';
import { BatchIterator, epochOrder, makeBatch, sequenceLengthFor, splitTrainValidation } from '../src/data/batches';
import { IGNORE_INDEX, type Example } from '../src/data/examples';

const X = IGNORE_INDEX;
const ex = (inputIds: number[], labels: number[] = inputIds, row = 2): Example => ({ inputIds, labels, truncated: false, row });

/** Examples with distinct first tokens (= their index), so a batch's rows tell which examples it holds. */
const numbered = (n: number, len = 3) => Array.from({ length: n }, (_, i) => ex(Array.from({ length: len }, (_, t) => (t === 0 ? i : 500 + t))));

describe('makeBatch', () => {
  it('right-pads, shifts labels into next-token targets and counts valid targets', () => {
    const a = ex([1, 10, 11, 12, 2], [X, X, 11, 12, 2]);
    const b = ex([1, 20, 2], [1, 20, 2]);
    const batch = makeBatch([a, b], 6, 0);
    expect([batch.B, batch.T]).toEqual([2, 6]);
    expect(Array.from(batch.inputIds)).toEqual([1, 10, 11, 12, 2, 0, 1, 20, 2, 0, 0, 0]);
    expect(Array.from(batch.targets)).toEqual([X, 11, 12, 2, X, X, 20, 2, X, X, X, X]);
    expect(Array.from(batch.lengths)).toEqual([5, 3]);
    expect(batch.validTargets).toBe(5);
  });

  it('matches the transformers convention: logits[t] is scored against labels[t+1] over the real tokens', () => {
    const examples = [ex([5, 6, 7, 8, 9], [X, 6, X, 8, 9]), ex([4, 3], [4, 3]), ex([7], [7])];
    const T = 5;
    const batch = makeBatch(examples, T, 99);
    examples.forEach((e, b) => {
      // transformers: shift_labels = labels[1:], compared with logits[:-1], ignoring -100
      const shifted = e.labels.slice(1);
      for (let t = 0; t < T; t++) {
        const want = t < shifted.length ? shifted[t] : X;
        expect(batch.targets[b * T + t]).toBe(want);
      }
    });
    expect(batch.validTargets).toBe(3 + 1 + 0);
  });

  it('cuts rows longer than T, the last kept position getting no target', () => {
    const batch = makeBatch([ex([1, 2, 3, 4, 5])], 3, 0);
    expect(Array.from(batch.inputIds)).toEqual([1, 2, 3]);
    expect(Array.from(batch.targets)).toEqual([2, 3, X]);
    expect(batch.lengths[0]).toBe(3);
  });

  it('rejects bad arguments', () => {
    expect(() => makeBatch([], 4, 0)).toThrow(RangeError);
    expect(() => makeBatch([ex([1])], 0, 0)).toThrow(RangeError);
    expect(() => makeBatch([ex([1])], 2, -1)).toThrow(RangeError);
    expect(() => makeBatch([ex([1, 2], [1], 7)], 4, 0)).toThrow(/row 7/);
  });
});

describe('sequenceLengthFor', () => {
  it('is the longest example capped at maxLength', () => {
    const examples = [ex([1, 2, 3]), ex([1, 2, 3, 4, 5, 6, 7]), ex([1])];
    expect(sequenceLengthFor(examples, 512)).toBe(7);
    expect(sequenceLengthFor(examples, 4)).toBe(4);
  });
});

describe('splitTrainValidation', () => {
  const items = Array.from({ length: 100 }, (_, i) => i);

  it('is deterministic, disjoint, complete and keeps the original order', () => {
    const a = splitTrainValidation(items, 0.1, 42);
    const b = splitTrainValidation(items, 0.1, 42);
    expect(a).toEqual(b);
    expect(a.validation.length).toBe(10);
    expect(a.train.length).toBe(90);
    expect([...a.train, ...a.validation].sort((x, y) => x - y)).toEqual(items);
    expect(a.validation).toEqual([...a.validation].sort((x, y) => x - y));
    // Not simply the first or last rows.
    expect(a.validation).not.toEqual(items.slice(0, 10));
    expect(a.validation).not.toEqual(items.slice(90));
    expect(splitTrainValidation(items, 0.1, 43).validation).not.toEqual(a.validation);
  });

  it('handles a zero fraction, tiny sets and bad fractions', () => {
    expect(splitTrainValidation(items, 0, 1)).toEqual({ train: items, validation: [] });
    expect(splitTrainValidation([1, 2, 3], 0.01, 1).validation.length).toBe(1);
    expect(splitTrainValidation([1], 0.5, 1)).toEqual({ train: [1], validation: [] });
    expect(splitTrainValidation([1, 2], 0.9, 1).train.length).toBe(1);
    expect(() => splitTrainValidation(items, 1, 1)).toThrow(RangeError);
    expect(() => splitTrainValidation(items, -0.1, 1)).toThrow(RangeError);
  });
});

describe('epochOrder', () => {
  it('is a seeded permutation that changes with the epoch and the seed', () => {
    const o = epochOrder(50, 0, 7);
    expect(Array.from(o).sort((a, b) => a - b)).toEqual(Array.from({ length: 50 }, (_, i) => i));
    expect(Array.from(epochOrder(50, 0, 7))).toEqual(Array.from(o));
    expect(Array.from(epochOrder(50, 1, 7))).not.toEqual(Array.from(o));
    expect(Array.from(epochOrder(50, 0, 8))).not.toEqual(Array.from(o));
    expect(Array.from(o)).not.toEqual(Array.from({ length: 50 }, (_, i) => i));
  });
});

describe('BatchIterator', () => {
  it('covers every example once per epoch, filling the last batch from the epoch start', () => {
    const examples = numbered(10);
    const it = new BatchIterator(examples, { batchSize: 4, T: 3, padId: 0, seed: 1 });
    expect(it.stepsPerEpoch).toBe(3);
    const order = Array.from(epochOrder(10, 0, 1));
    const seen: number[] = [];
    for (let step = 0; step < 3; step++) {
      const batch = it.batchAt(step);
      expect(batch.B).toBe(4);
      const rows = Array.from({ length: 4 }, (_, b) => batch.inputIds[b * 3]);
      expect(rows).toEqual(it.indicesAt(step));
      seen.push(...rows);
    }
    expect(seen.slice(0, 10)).toEqual(order);
    expect(seen.slice(10)).toEqual(order.slice(0, 2)); // wrap-around
    expect(it.epochOf(3)).toBe(1);
    expect(it.indicesAt(3)).toEqual(Array.from(epochOrder(10, 1, 1)).slice(0, 4));
  });

  it('gives the same batch for a step regardless of history (resuming a run)', () => {
    const examples = numbered(7);
    const a = new BatchIterator(examples, { batchSize: 3, T: 3, padId: 0, seed: 9 });
    const b = new BatchIterator(examples, { batchSize: 3, T: 3, padId: 0, seed: 9 });
    const seq = Array.from({ length: 12 }, (_, s) => a.indicesAt(s));
    expect(b.indicesAt(11)).toEqual(seq[11]);
    expect(b.indicesAt(2)).toEqual(seq[2]);
    expect(b.batchAt(5)).toEqual(a.batchAt(5));
  });

  it('repeats examples to fill B when there are fewer examples than the batch size', () => {
    const it = new BatchIterator(numbered(2), { batchSize: 5, T: 3, padId: 0, seed: 3 });
    expect(it.stepsPerEpoch).toBe(1);
    const idx = it.indicesAt(0);
    const order = Array.from(epochOrder(2, 0, 3));
    expect(idx).toEqual([order[0], order[1], order[0], order[1], order[0]]);
  });

  it('rejects an empty example list and bad batch sizes', () => {
    expect(() => new BatchIterator([], { batchSize: 2, T: 3, padId: 0, seed: 1 })).toThrow(RangeError);
    expect(() => new BatchIterator(numbered(3), { batchSize: 0, T: 3, padId: 0, seed: 1 })).toThrow(RangeError);
    expect(() => new BatchIterator(numbered(3), { batchSize: 2, T: 3, padId: 0, seed: 1 }).indicesAt(-1)).toThrow(RangeError);
  });
});
