// Class labels for sequence classification: any column of strings or integers becomes class ids
// 0..K-1, with the id2label / label2id maps transformers keeps in a model's config.json.
//   integers only ("0", "1", " 2 ")  -> sorted numerically; 0..K-1 exactly keep their own ids
//   anything else                     -> sorted by code point (as Python sorts strings)
// or in an order the user gives. Counts per class show imbalance before training.

import { DataError } from './table';

export interface LabelMap {
  /** Class names by id: names[id]. */
  names: string[];
  /** transformers' config.json form: {"0": "negative", ...} */
  id2label: Record<string, string>;
  /** {"negative": 0, ...} */
  label2id: Record<string, number>;
  kind: 'integer' | 'string';
}

const INTEGER = /^[+-]?\d+$/;

/** The cell as a label: trimmed; integer literals in canonical form ("+01" -> "1"). Empty -> null. */
export function normalizeLabel(cell: string | undefined): string | null {
  const v = (cell ?? '').trim();
  if (v === '') return null;
  if (INTEGER.test(v)) {
    const n = Number(v);
    if (Number.isSafeInteger(n)) return String(n);
  }
  return v;
}

/**
 * The label map for a column's values (raw cells; empty ones are ignored). `order` fixes the ids
 * (it must name every value that occurs, once each).
 */
export function buildLabelMap(values: readonly (string | undefined)[], order?: readonly string[]): LabelMap {
  const seen = new Set<string>();
  for (const v of values) {
    const n = normalizeLabel(v);
    if (n !== null) seen.add(n);
  }
  let names: string[];
  const allIntegers = seen.size > 0 && [...seen].every((v) => INTEGER.test(v));
  if (order) {
    names = order.map((o) => normalizeLabel(o) ?? '');
    if (names.some((n) => n === '')) throw new DataError('the label order has an empty name');
    if (new Set(names).size !== names.length) throw new DataError(`the label order names a label twice: ${order.join(', ')}`);
    const unknown = [...seen].filter((v) => !names.includes(v));
    if (unknown.length) throw new DataError(`the data has labels the given order does not name: ${unknown.slice(0, 10).join(', ')}`);
  } else if (allIntegers) {
    names = [...seen].sort((a, b) => Number(a) - Number(b));
    // 0..K-1 already: ids are the values themselves (the sort above gives exactly that)
  } else {
    names = [...seen].sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
  }
  if (names.length < 2) {
    throw new DataError(`a classifier needs at least 2 different labels; the label column has ${names.length === 0 ? 'none' : `only "${names[0]}"`}`);
  }
  const id2label: Record<string, string> = {};
  const label2id: Record<string, number> = {};
  names.forEach((n, i) => {
    id2label[String(i)] = n;
    label2id[n] = i;
  });
  return { names, id2label, label2id, kind: allIntegers ? 'integer' : 'string' };
}

/** The id of a cell's label, or null for an empty cell; throws for a label the map lacks. */
export function labelId(map: LabelMap, cell: string | undefined): number | null {
  const n = normalizeLabel(cell);
  if (n === null) return null;
  const id = map.label2id[n];
  if (id === undefined) throw new DataError(`label "${n}" is not one of the model's labels (${map.names.join(', ')})`);
  return id;
}

/** Examples per class id. */
export function classCounts(labels: readonly number[], K: number): number[] {
  const counts = new Array<number>(K).fill(0);
  for (const y of labels) if (y >= 0 && y < K) counts[y]++;
  return counts;
}

/** "negative 428 (49.1%), positive 444 (50.9%)", plus a warning when the classes are unbalanced. */
export function describeClassCounts(map: LabelMap, counts: readonly number[]): { line: string; warning: string | null } {
  const total = counts.reduce((a, b) => a + b, 0);
  const line = map.names.map((n, i) => `${n} ${counts[i]} (${total ? ((100 * counts[i]) / total).toFixed(1) : '0.0'}%)`).join(', ');
  const present = counts.filter((c) => c > 0);
  const max = Math.max(...counts), min = Math.min(...counts);
  let warning: string | null = null;
  if (min === 0) {
    const empty = map.names.filter((_, i) => counts[i] === 0);
    warning = `no examples of ${empty.map((n) => `"${n}"`).join(', ')}`;
  } else if (present.length > 1 && max / min >= 3) {
    warning = `unbalanced classes (largest/smallest = ${(max / min).toFixed(1)}): accuracy can look good by always guessing "${map.names[counts.indexOf(max)]}" (${((100 * max) / total).toFixed(1)}%); watch macro-F1`;
  }
  return { line, warning };
}
