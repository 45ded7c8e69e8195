// Text classification from a table, before any tokenizer is involved: which columns are probably
// the text and the label, and the label set with the number of usable rows per class (what the app
// shows as the class balance while the user picks the columns).

import type { Table } from './table';
import type { TextTokenizer } from './tokenizer';
import { buildClassificationExamples, validateClassificationMapping, type ClassificationExample, type ClassificationMapping, type ClassificationStats } from './classification';
import { buildLabelMap, describeClassCounts, normalizeLabel, type LabelMap } from './labels';
import { PROGRESS_ROWS } from './examples';

const LABEL_NAMES = ['label', 'labels', 'class', 'category', 'sentiment', 'target', 'y', 'intent', 'topic', 'rating', 'stars'];
const TEXT_NAMES = ['text', 'sentence', 'review', 'content', 'document', 'body', 'comment', 'utterance', 'tweet', 'message', 'question', 'title'];

/** More classes than this and the column is not a label column (or the task is not classification). */
export const MAX_CLASSES = 200;

/**
 * The text and label columns a table most likely has: by name (label, class, sentiment, ... and
 * text, sentence, review, ...), else the label is the column with the fewest distinct short values
 * and the text the one with the longest cells. Null when the table has fewer than two columns.
 */
export function guessClassificationColumns(table: Table): ClassificationMapping | null {
  if (table.columns.length < 2) return null;
  const byName = (names: string[], not?: string) => {
    for (const n of names) {
      const hit = table.columns.find((c) => c.toLowerCase() === n && c !== not);
      if (hit) return hit;
    }
    return undefined;
  };
  const sample = table.rows.slice(0, 2000);
  const stats = table.columns.map((c, i) => {
    const values = new Set<string>();
    let chars = 0;
    for (const r of sample) {
      const v = (r[c] ?? '').trim();
      chars += v.length;
      if (v) values.add(v);
    }
    return { c, i, distinct: values.size, meanLength: chars / Math.max(1, sample.length) };
  });
  const label =
    byName(LABEL_NAMES) ??
    [...stats].filter((s) => s.distinct >= 2 && s.meanLength <= 40).sort((a, b) => a.distinct - b.distinct || a.i - b.i)[0]?.c ??
    table.columns[table.columns.length - 1];
  const text = byName(TEXT_NAMES, label) ?? [...stats].filter((s) => s.c !== label).sort((a, b) => b.meanLength - a.meanLength || a.i - b.i)[0].c;
  return { text, label };
}

export interface LabelSummary {
  labels: LabelMap;
  /** Usable rows (non-empty text and label) per class id. */
  counts: number[];
  total: number;
  /** Rows left out: empty text or empty label. */
  emptyText: number;
  emptyLabel: number;
  /** e.g. "negative 428 (49.1%), positive 444 (50.9%)" */
  line: string;
  /** Set when one class is missing or the largest is 3 times the smallest or more. */
  warning: string | null;
}

/**
 * The label set of the label column and the class balance of the rows that make examples. Throws
 * when the columns do not exist or are the same, when there are fewer than 2 labels, and when the
 * column does not look like labels (over MAX_CLASSES values, or most values on a single row).
 */
export function summarizeLabels(table: Table, mapping: ClassificationMapping): LabelSummary {
  validateClassificationMapping(table, mapping);
  const labels = buildLabelMap(table.rows.map((r) => r[mapping.label]));
  if (labels.names.length > MAX_CLASSES) {
    throw new RangeError(
      `the label column "${mapping.label}" has ${labels.names.length} different values (at most ${MAX_CLASSES} classes here): is it a text column? A label column holds a few classes, e.g. 0/1 or positive/negative.`,
    );
  }
  const counts = new Array<number>(labels.names.length).fill(0);
  let emptyText = 0;
  let emptyLabel = 0;
  for (const r of table.rows) {
    // The same rows buildClassificationExamples skips.
    if ((r[mapping.text] ?? '').trim() === '') {
      emptyText++;
      continue;
    }
    const n = normalizeLabel(r[mapping.label]);
    if (n === null) {
      emptyLabel++;
      continue;
    }
    counts[labels.label2id[n]]++;
  }
  const total = counts.reduce((a, b) => a + b, 0);
  const singles = counts.filter((n) => n <= 1).length;
  // An id or free-text column read as labels: most "classes" have a single row, nothing to learn per class.
  if (labels.names.length > 20 && singles > labels.names.length / 2) {
    throw new RangeError(
      `the label column "${mapping.label}" has ${labels.names.length} different values for ${total} rows, most of them on a single row: is it an id or a text column? A label column holds a few classes, each on many rows.`,
    );
  }
  const { line, warning } = describeClassCounts(labels, counts);
  return { labels, counts, total, emptyText, emptyLabel, line, warning };
}

/**
 * buildClassificationExamples over the table in blocks of PROGRESS_ROWS rows, reporting the
 * fraction done and giving the event loop a turn between blocks (the worker stays responsive to
 * pause and stop while a large table is tokenized); the result is the same as one call's.
 */
export async function buildClassificationExamplesAsync(
  table: Table,
  mapping: ClassificationMapping,
  tokenizer: TextTokenizer,
  opts: { maxLength: number; labelMap: LabelMap; onProgress?: (fraction: number) => void },
): Promise<{ examples: ClassificationExample[]; labelMap: LabelMap; stats: ClassificationStats }> {
  const K = opts.labelMap.names.length;
  const examples: ClassificationExample[] = [];
  const stats: ClassificationStats = { count: 0, truncated: 0, skipped: { count: 0, rows: [] }, tokenLength: { min: 0, mean: 0, max: 0 }, classCounts: new Array<number>(K).fill(0) };
  let lengthSum = 0;
  let lengths = 0;
  const n = table.rows.length;
  for (let start = 0; start < n || start === 0; start += PROGRESS_ROWS) {
    const end = Math.min(n, start + PROGRESS_ROWS);
    const block: Table = { ...table, rows: table.rows.slice(start, end), rowNumbers: table.rowNumbers.slice(start, end) };
    const part = buildClassificationExamples(block, mapping, tokenizer, { maxLength: opts.maxLength, labelMap: opts.labelMap });
    examples.push(...part.examples);
    const p = part.stats;
    stats.count += p.count;
    stats.truncated += p.truncated;
    stats.skipped.count += p.skipped.count;
    stats.skipped.rows.push(...p.skipped.rows.slice(0, Math.max(0, 20 - stats.skipped.rows.length)));
    // Every example's length counted once: p.count of them in this block.
    if (p.count > 0) {
      stats.tokenLength.min = lengths === 0 ? p.tokenLength.min : Math.min(stats.tokenLength.min, p.tokenLength.min);
      stats.tokenLength.max = Math.max(stats.tokenLength.max, p.tokenLength.max);
      lengthSum += p.tokenLength.mean * p.count;
      lengths += p.count;
    }
    p.classCounts.forEach((c, k) => (stats.classCounts[k] += c));
    if (end >= n) break;
    opts.onProgress?.(end / n);
    await new Promise((resolve) => setTimeout(resolve, 0));
  }
  stats.tokenLength.mean = lengths ? lengthSum / lengths : 0;
  opts.onProgress?.(1);
  return { examples, labelMap: opts.labelMap, stats };
}
