// Which columns of the user's table feed the model, and how: the guess we start the UI with, a
// one-line description, and the check that every column the mapping names exists.

import { DataError, type Table } from './table';

export type ColumnMapping =
  | { kind: 'prompt-completion'; prompt: string; completion: string; /** `{column}` placeholders; `{{` and `}}` are literal braces. */ template: string }
  | { kind: 'text'; text: string }
  | { kind: 'instruction'; instruction: string; input?: string; output: string };

/** The default prompt template: the prompt column's value and a newline. */
export function defaultTemplate(promptColumn: string): string {
  return `{${promptColumn}}\n`;
}

// Known (prompt, completion) names, most specific first; compared case-insensitively.
const PAIRS: [string[], string[]][] = [
  [['prompt'], ['completion', 'response', 'answer', 'output', 'chosen']],
  [['question', 'query'], ['answer', 'response', 'output']],
  [['input', 'inputs'], ['output', 'outputs', 'target', 'targets', 'response']],
  [['mr', 'meaning_representation'], ['ref', 'human_reference', 'reference']],
  [['source', 'src'], ['target', 'tgt']],
  [['article', 'document', 'dialogue', 'context', 'text'], ['summary', 'highlights', 'response']],
  [['text', 'sentence', 'review'], ['label', 'labels', 'sentiment']],
];
const INSTRUCTION_NAMES = ['instruction', 'instructions'];
const INSTRUCTION_INPUT_NAMES = ['input', 'context'];
const INSTRUCTION_OUTPUT_NAMES = ['output', 'response', 'answer', 'completion'];
const TEXT_NAMES = ['text', 'content', 'story', 'body', 'document', 'sentence', 'passage'];

export function guessColumns(table: Table): ColumnMapping {
  const find = (names: string[]): string | undefined => {
    for (const n of names) {
      const hit = table.columns.find((c) => c.toLowerCase() === n);
      if (hit) return hit;
    }
    return undefined;
  };

  const instruction = find(INSTRUCTION_NAMES);
  const output = find(INSTRUCTION_OUTPUT_NAMES);
  if (instruction && output) {
    const input = find(INSTRUCTION_INPUT_NAMES);
    return input ? { kind: 'instruction', instruction, input, output } : { kind: 'instruction', instruction, output };
  }
  for (const [prompts, completions] of PAIRS) {
    const prompt = find(prompts);
    const completion = find(completions);
    if (prompt && completion && prompt !== completion) {
      return { kind: 'prompt-completion', prompt, completion, template: defaultTemplate(prompt) };
    }
  }
  const text = find(TEXT_NAMES);
  if (text) return { kind: 'text', text };

  // Nothing recognizable: the columns with the most text, left one as prompt, right one as completion.
  const sample = table.rows.slice(0, 500);
  const meanLength = (c: string) => sample.reduce((s, r) => s + (r[c]?.length ?? 0), 0) / Math.max(1, sample.length);
  const byLength = table.columns
    .map((c, i) => ({ c, i, len: meanLength(c) }))
    .filter((x) => x.len > 0)
    .sort((a, b) => b.len - a.len);
  if (byLength.length >= 2) {
    const [a, b] = [byLength[0], byLength[1]].sort((x, y) => x.i - y.i);
    return { kind: 'prompt-completion', prompt: a.c, completion: b.c, template: defaultTemplate(a.c) };
  }
  return { kind: 'text', text: byLength[0]?.c ?? table.columns[0] };
}

export function describeMapping(mapping: ColumnMapping): string {
  switch (mapping.kind) {
    case 'prompt-completion':
      return `Prompt ${JSON.stringify(mapping.template)} → completion "${mapping.completion}" (loss on the completion only)`;
    case 'text':
      return `Plain text from "${mapping.text}" (loss on every token)`;
    case 'instruction':
      return `Instruction "${mapping.instruction}"${mapping.input ? ` + input "${mapping.input}"` : ''} → output "${mapping.output}" (loss on the output only)`;
  }
}

export type TemplatePart = { literal: string } | { column: string };

/**
 * Splits a template into literal text and `{column}` references. `{{` / `}}` stand for literal
 * braces; a lone brace is an error.
 */
export function parseTemplate(template: string): TemplatePart[] {
  const parts: TemplatePart[] = [];
  let literal = '';
  for (let i = 0; i < template.length; i++) {
    const ch = template[i];
    if ((ch === '{' || ch === '}') && template[i + 1] === ch) {
      literal += ch;
      i++;
    } else if (ch === '{') {
      const close = template.indexOf('}', i + 1);
      const open = template.indexOf('{', i + 1);
      if (close < 0 || (open >= 0 && open < close)) {
        throw new DataError(`Prompt template: the "{" at character ${i + 1} is not closed (write "{{" for a literal brace).`);
      }
      if (literal) parts.push({ literal });
      literal = '';
      parts.push({ column: template.slice(i + 1, close) });
      i = close;
    } else if (ch === '}') {
      throw new DataError(`Prompt template: the "}" at character ${i + 1} has no "{" (write "}}" for a literal brace).`);
    } else {
      literal += ch;
    }
  }
  if (literal) parts.push({ literal });
  return parts;
}

/** Fills a template's `{column}` placeholders from a row. */
export function fillTemplate(parts: TemplatePart[], row: Record<string, string>): string {
  return parts.map((p) => ('literal' in p ? p.literal : (row[p.column] ?? ''))).join('');
}

/** Throws DataError when the mapping names a column the table does not have. */
export function validateMapping(table: Table, mapping: ColumnMapping): void {
  const available = table.columns.map((c) => `"${c}"`).join(', ');
  const need = (role: string, column: string | undefined) => {
    if (column === undefined || column === '') throw new DataError(`${table.fileName}: no column chosen for the ${role}. Available columns: ${available}.`);
    if (!table.columns.includes(column)) {
      throw new DataError(`${table.fileName}: the ${role} column "${column}" does not exist. Available columns: ${available}.`);
    }
  };
  switch (mapping.kind) {
    case 'prompt-completion': {
      need('prompt', mapping.prompt);
      need('completion', mapping.completion);
      if (mapping.prompt === mapping.completion) {
        throw new DataError(`${table.fileName}: the prompt and the completion are the same column "${mapping.prompt}"; pick two different columns.`);
      }
      for (const part of parseTemplate(mapping.template)) {
        if ('column' in part && !table.columns.includes(part.column)) {
          throw new DataError(`${table.fileName}: the prompt template uses {${part.column}}, which is not a column. Available columns: ${available}.`);
        }
      }
      return;
    }
    case 'text':
      need('text', mapping.text);
      return;
    case 'instruction':
      need('instruction', mapping.instruction);
      need('output', mapping.output);
      if (mapping.input !== undefined) need('input', mapping.input);
      if (mapping.instruction === mapping.output) {
        throw new DataError(`${table.fileName}: the instruction and the output are the same column "${mapping.output}"; pick two different columns.`);
      }
      return;
  }
}
