// Table rows → token ids and labels for causal-LM fine-tuning. labels[t] is the token the model
// should produce at position t (the shift to "predict t+1" happens in ./batches.ts); -100 marks
// tokens that carry no loss, as in transformers.

import { fillTemplate, parseTemplate, validateMapping, type ColumnMapping } from './columns';
import type { Table } from './table';
import type { TextTokenizer } from './tokenizer';

export const IGNORE_INDEX = -100;

export interface Example {
  inputIds: number[];
  /** Same length as inputIds; IGNORE_INDEX where there is no loss. */
  labels: number[];
  truncated: boolean;
  /** Row number in the table (spreadsheet numbering), for messages. */
  row: number;
}

export interface SkippedRow {
  row: number;
  reason: string;
}

export interface ExampleStats {
  /** Examples built. */
  count: number;
  /** Examples cut to maxLength. */
  truncated: number;
  skipped: { count: number; /** The first MAX_SKIPPED_LISTED. */ rows: SkippedRow[] };
  /** Token lengths before truncation (so they say how long maxLength would need to be). */
  tokenLength: { min: number; mean: number; max: number; p95: number };
  /** Tokens that are a training target after the shift: labels[t] != -100 for t >= 1. */
  lossTokens: number;
}

export const MAX_SKIPPED_LISTED = 20;

export interface BuildOptions {
  maxLength: number;
  /** Called with the fraction of rows done every PROGRESS_ROWS rows, and with 1 at the end. */
  onProgress?: (fractionDone: number) => void;
}

/** Rows between progress reports (and, for buildCausalExamplesAsync, between yields to the event loop). */
export const PROGRESS_ROWS = 1000;

export function alpacaPrompt(instruction: string, input: string): string {
  return input
    ? 'Below is an instruction that describes a task, paired with an input that provides further context. ' +
        'Write a response that appropriately completes the request.\n\n' +
        `### Instruction:\n${instruction}\n\n### Input:\n${input}\n\n### Response:\n`
    : 'Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n' +
        `### Instruction:\n${instruction}\n\n### Response:\n`;
}

export function buildCausalExamples(
  table: Table,
  mapping: ColumnMapping,
  tokenizer: TextTokenizer,
  opts: BuildOptions,
): { examples: Example[]; stats: ExampleStats } {
  const steps = exampleBuilder(table, mapping, tokenizer, opts.maxLength);
  for (;;) {
    const next = steps.next();
    if (next.done) {
      opts.onProgress?.(1);
      return next.value;
    }
    opts.onProgress?.(next.value);
  }
}

/**
 * buildCausalExamples that gives the event loop a turn every PROGRESS_ROWS rows, so a worker
 * tokenizing a huge table still posts its progress and answers messages. Same result.
 */
export async function buildCausalExamplesAsync(
  table: Table,
  mapping: ColumnMapping,
  tokenizer: TextTokenizer,
  opts: BuildOptions,
): Promise<{ examples: Example[]; stats: ExampleStats }> {
  const steps = exampleBuilder(table, mapping, tokenizer, opts.maxLength);
  for (;;) {
    const next = steps.next();
    if (next.done) {
      opts.onProgress?.(1);
      return next.value;
    }
    opts.onProgress?.(next.value);
    await new Promise<void>((resolve) => setTimeout(resolve, 0));
  }
}

/** The work of buildCausalExamples, pausing (yielding the fraction of rows done) every PROGRESS_ROWS rows. */
function* exampleBuilder(
  table: Table,
  mapping: ColumnMapping,
  tokenizer: TextTokenizer,
  maxLength: number,
): Generator<number, { examples: Example[]; stats: ExampleStats }, void> {
  if (!Number.isInteger(maxLength) || maxLength < 2) throw new RangeError(`maxLength must be an integer of at least 2, got ${maxLength}`);
  validateMapping(table, mapping);
  const templateParts = mapping.kind === 'prompt-completion' ? parseTemplate(mapping.template) : [];
  const eos = tokenizer.eosId;

  const examples: Example[] = [];
  const fullLengths: number[] = [];
  const skipped: SkippedRow[] = [];
  let skippedCount = 0;
  let truncatedCount = 0;
  let lossTokens = 0;
  const skip = (row: number, reason: string) => {
    skippedCount++;
    if (skipped.length < MAX_SKIPPED_LISTED) skipped.push({ row, reason });
  };

  const addRow = (cells: Record<string, string>, i: number): void => {
    const row = table.rowNumbers?.[i] ?? i + 2;
    let ids: number[];
    let labels: number[];
    if (mapping.kind === 'text') {
      const text = cells[mapping.text] ?? '';
      if (text.trim() === '') return skip(row, `"${mapping.text}" is empty`);
      ids = [...tokenizer.encode(text, { addSpecialTokens: true }), eos];
      labels = ids.slice();
    } else {
      let promptIds: number[];
      let completion: string;
      if (mapping.kind === 'prompt-completion') {
        const prompt = fillTemplate(templateParts, cells);
        completion = cells[mapping.completion] ?? '';
        if ((cells[mapping.prompt] ?? '').trim() === '') return skip(row, `prompt "${mapping.prompt}" is empty`);
        if (completion.trim() === '') return skip(row, `completion "${mapping.completion}" is empty`);
        promptIds = tokenizer.encode(prompt, { addSpecialTokens: true });
      } else {
        const instruction = cells[mapping.instruction] ?? '';
        const input = mapping.input !== undefined ? (cells[mapping.input] ?? '') : '';
        completion = cells[mapping.output] ?? '';
        if (instruction.trim() === '') return skip(row, `instruction "${mapping.instruction}" is empty`);
        if (completion.trim() === '') return skip(row, `output "${mapping.output}" is empty`);
        if (tokenizer.chatTemplate) {
          const content = input.trim() !== '' ? `${instruction}\n\n${input}` : instruction;
          const prompt = tokenizer.applyChatTemplate([{ role: 'user', content }], { addGenerationPrompt: true });
          // The rendered template already carries its own special tokens (BOS included).
          promptIds = tokenizer.encode(prompt, { addSpecialTokens: false });
        } else {
          promptIds = tokenizer.encode(alpacaPrompt(instruction, input.trim() !== '' ? input : ''), { addSpecialTokens: true });
        }
      }
      const completionIds = [...tokenizer.encode(completion, { addSpecialTokens: false }), eos];
      ids = [...promptIds, ...completionIds];
      labels = [...promptIds.map(() => IGNORE_INDEX), ...completionIds];
    }

    fullLengths.push(ids.length);
    const truncated = ids.length > maxLength;
    if (truncated) {
      ids = ids.slice(0, maxLength);
      labels = labels.slice(0, maxLength);
    }
    // Position 0 is never a target (nothing precedes it), hence t >= 1.
    let targets = 0;
    for (let t = 1; t < labels.length; t++) if (labels[t] !== IGNORE_INDEX) targets++;
    if (targets === 0) {
      fullLengths.pop();
      return skip(row, `the prompt fills all ${maxLength} tokens of maxLength, leaving nothing to learn`);
    }
    if (truncated) truncatedCount++;
    lossTokens += targets;
    examples.push({ inputIds: ids, labels, truncated, row });
  };
  const rows = table.rows;
  for (let i = 0; i < rows.length; i++) {
    addRow(rows[i], i);
    if ((i + 1) % PROGRESS_ROWS === 0 && i + 1 < rows.length) yield (i + 1) / rows.length;
  }

  return {
    examples,
    stats: {
      count: examples.length,
      truncated: truncatedCount,
      skipped: { count: skippedCount, rows: skipped },
      tokenLength: lengthStats(fullLengths),
      lossTokens,
    },
  };
}

function lengthStats(lengths: number[]): ExampleStats['tokenLength'] {
  if (lengths.length === 0) return { min: 0, mean: 0, max: 0, p95: 0 };
  const sorted = [...lengths].sort((a, b) => a - b);
  const sum = sorted.reduce((a, b) => a + b, 0);
  // Nearest-rank percentile: the smallest length that at least 95% of examples do not exceed.
  const p95 = sorted[Math.min(sorted.length - 1, Math.ceil(0.95 * sorted.length) - 1)];
  return { min: sorted[0], mean: sum / sorted.length, max: sorted[sorted.length - 1], p95 };
}
