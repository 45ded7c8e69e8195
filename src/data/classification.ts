// Table rows -> token ids and class ids for sequence classification, and fixed-shape batches.
// Each text is tokenized with the tokenizer's special tokens ([CLS] ... [SEP]); a text longer than
// maxLength is cut in its middle part, so the special tokens stay (transformers' truncation=True).

import { DataError, type Table } from './table';
import type { TextTokenizer } from './tokenizer';
import { buildLabelMap, classCounts, labelId, type LabelMap } from './labels';
import type { SeqClsBatch } from '../engine/models/encoder';

export const IGNORE_LABEL = -100;

export interface ClassificationExample {
  inputIds: number[];
  /** Class id. */
  label: number;
  truncated: boolean;
  /** Row number in the table (spreadsheet numbering), for messages. */
  row: number;
}

export interface ClassificationMapping {
  text: string;
  label: string;
}

export interface ClassificationStats {
  count: number;
  truncated: number;
  skipped: { count: number; rows: { row: number; reason: string }[] };
  tokenLength: { min: number; mean: number; max: number };
  /** Examples per class id. */
  classCounts: number[];
}

/** The special tokens the tokenizer puts before and after a text (e.g. [CLS] and [SEP]). */
export function specialTokenFrame(tokenizer: TextTokenizer): { prefix: number[]; suffix: number[] } {
  for (const probe of ['a', 'the', 'x y', '1']) {
    const plain = tokenizer.encode(probe, { addSpecialTokens: false });
    const full = tokenizer.encode(probe, { addSpecialTokens: true });
    if (plain.length === 0) continue;
    for (let s = 0; s + plain.length <= full.length; s++) {
      if (plain.every((id, i) => full[s + i] === id)) return { prefix: full.slice(0, s), suffix: full.slice(s + plain.length) };
    }
  }
  return { prefix: [], suffix: [] };
}

export function validateClassificationMapping(table: Table, m: ClassificationMapping): void {
  const available = table.columns.map((c) => `"${c}"`).join(', ');
  for (const [role, col] of [['text', m.text], ['label', m.label]] as const) {
    if (!col) throw new DataError(`${table.fileName}: no column chosen for the ${role}. Available columns: ${available}.`);
    if (!table.columns.includes(col)) throw new DataError(`${table.fileName}: the ${role} column "${col}" does not exist. Available columns: ${available}.`);
  }
  if (m.text === m.label) throw new DataError(`${table.fileName}: the text and the label are the same column "${m.text}"; pick two different columns.`);
}

const MAX_SKIPPED_LISTED = 20;

export function buildClassificationExamples(
  table: Table,
  mapping: ClassificationMapping,
  tokenizer: TextTokenizer,
  opts: { maxLength: number; labelMap?: LabelMap },
): { examples: ClassificationExample[]; labelMap: LabelMap; stats: ClassificationStats } {
  validateClassificationMapping(table, mapping);
  const { prefix, suffix } = specialTokenFrame(tokenizer);
  const frame = prefix.length + suffix.length;
  if (!Number.isInteger(opts.maxLength) || opts.maxLength < frame + 1) {
    throw new RangeError(`maxLength must be an integer of at least ${frame + 1} (the special tokens and one more), got ${opts.maxLength}`);
  }
  const labelMap = opts.labelMap ?? buildLabelMap(table.rows.map((r) => r[mapping.label]));
  const examples: ClassificationExample[] = [];
  const skipped: { row: number; reason: string }[] = [];
  let skippedCount = 0;
  let truncated = 0;
  const lengths: number[] = [];
  table.rows.forEach((cells, i) => {
    const row = table.rowNumbers?.[i] ?? i + 2;
    const skip = (reason: string) => {
      skippedCount++;
      if (skipped.length < MAX_SKIPPED_LISTED) skipped.push({ row, reason });
    };
    const text = cells[mapping.text] ?? '';
    if (text.trim() === '') return skip(`"${mapping.text}" is empty`);
    const label = labelId(labelMap, cells[mapping.label]);
    if (label === null) return skip(`"${mapping.label}" is empty`);
    const body = tokenizer.encode(text, { addSpecialTokens: false });
    const full = frame + body.length;
    lengths.push(full);
    const cut = full > opts.maxLength;
    if (cut) truncated++;
    const kept = cut ? body.slice(0, opts.maxLength - frame) : body;
    examples.push({ inputIds: [...prefix, ...kept, ...suffix], label, truncated: cut, row });
  });
  const sum = lengths.reduce((a, b) => a + b, 0);
  return {
    examples,
    labelMap,
    stats: {
      count: examples.length,
      truncated,
      skipped: { count: skippedCount, rows: skipped },
      tokenLength: lengths.length ? { min: Math.min(...lengths), mean: sum / lengths.length, max: Math.max(...lengths) } : { min: 0, mean: 0, max: 0 },
      classCounts: classCounts(examples.map((e) => e.label), labelMap.names.length),
    },
  };
}

/** The T a run uses: the longest example, capped at maxLength. */
export function classificationSequenceLength(examples: readonly ClassificationExample[], maxLength: number): number {
  let longest = 1;
  for (const e of examples) longest = Math.max(longest, e.inputIds.length);
  return Math.min(maxLength, longest);
}

/**
 * A [B, T] batch of the examples, right-padded with padId; rows past the examples (B larger than
 * their number, for a last evaluation batch) are a lone pad token with label -100 (no loss).
 */
export function makeClassificationBatch(examples: readonly ClassificationExample[], T: number, padId: number, B = examples.length): SeqClsBatch {
  if (!Number.isInteger(T) || T < 1) throw new RangeError(`T must be a positive integer, got ${T}`);
  if (!Number.isInteger(B) || B < Math.max(1, examples.length)) throw new RangeError(`B must be at least the number of examples (${examples.length}), got ${B}`);
  const inputIds = new Uint32Array(B * T).fill(padId);
  const lengths = new Uint32Array(B).fill(1);
  const labels = new Int32Array(B).fill(IGNORE_LABEL);
  let validLabels = 0;
  examples.forEach((ex, b) => {
    if (ex.inputIds.length === 0) throw new RangeError(`example from row ${ex.row} has no tokens`);
    const len = Math.min(T, ex.inputIds.length);
    lengths[b] = len;
    for (let t = 0; t < len; t++) inputIds[b * T + t] = ex.inputIds[t];
    labels[b] = ex.label;
    validLabels++;
  });
  return { B, T, inputIds, lengths, labels, validLabels };
}
