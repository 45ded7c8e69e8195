import { existsSync, readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { describeMapping, fillTemplate, guessColumns, parseTemplate, validateMapping, type ColumnMapping } from '../src/data/columns';
import { DataError, parseTableBytes, parseTableText } from '../src/data/table';

const DATA = new URL('../../shared/data/', import.meta.url).pathname;
const haveShared = existsSync(DATA);
if (!haveShared) console.warn(`skipping column guesses on the shared datasets: ${DATA} not found (../shared is absent)`);

const table = (csv: string, name = 't.csv') => parseTableText(csv, name);

function dataError(fn: () => unknown): DataError {
  try {
    fn();
  } catch (e) {
    expect(e).toBeInstanceOf(DataError);
    return e as DataError;
  }
  throw new Error('expected a DataError');
}

describe('guessColumns', () => {
  it('recognizes common prompt/completion names, case-insensitively', () => {
    const cases: [string, string, string][] = [
      ['prompt,completion', 'prompt', 'completion'],
      ['Question,Answer,id', 'Question', 'Answer'],
      ['id,input,output', 'input', 'output'],
      ['mr,ref', 'mr', 'ref'],
      ['meaning_representation,human_reference', 'meaning_representation', 'human_reference'],
      ['source,target', 'source', 'target'],
      ['article,highlights', 'article', 'highlights'],
      ['text,label', 'text', 'label'],
      ['completion,prompt', 'prompt', 'completion'],
    ];
    for (const [header, prompt, completion] of cases) {
      const cols = header.split(',');
      const row = cols.map((_, i) => `v${i}`).join(',');
      expect(guessColumns(table(`${header}\n${row}\n`))).toEqual({ kind: 'prompt-completion', prompt, completion, template: `{${prompt}}\n` });
    }
  });

  it('recognizes instruction datasets with and without an input column', () => {
    expect(guessColumns(table('instruction,input,output\ndo,x,y\n'))).toEqual({ kind: 'instruction', instruction: 'instruction', input: 'input', output: 'output' });
    expect(guessColumns(table('Instruction,Response\ndo,y\n'))).toEqual({ kind: 'instruction', instruction: 'Instruction', output: 'Response' });
  });

  it('recognizes a text column', () => {
    expect(guessColumns(table('id,text\n1,hello\n'))).toEqual({ kind: 'text', text: 'text' });
    expect(guessColumns(table('content,url\nhello,http://x\n'))).toEqual({ kind: 'text', text: 'content' });
  });

  it('falls back to the two longest-text columns, left one as prompt', () => {
    const t = table('id,long_b,short,long_a\n1,aaaaaaaaaaaa,x,bbbbbbbbbbbbbbbbbbb\n2,cccccccccccc,y,dddddddddddddddd\n');
    expect(guessColumns(t)).toEqual({ kind: 'prompt-completion', prompt: 'long_b', completion: 'long_a', template: '{long_b}\n' });
  });

  it('falls back to a single column as text', () => {
    expect(guessColumns(table('stuff\nsome words\n'))).toEqual({ kind: 'text', text: 'stuff' });
    expect(guessColumns(table('a,b\nsome words,\nmore,\n'))).toEqual({ kind: 'text', text: 'a' });
  });

  it.skipIf(!haveShared)('guesses the shared datasets', () => {
    const read = (name: string) => parseTableBytes(new Uint8Array(readFileSync(DATA + name)), name);
    expect(guessColumns(read('e2e_dev.csv'))).toEqual({ kind: 'prompt-completion', prompt: 'mr', completion: 'ref', template: '{mr}\n' });
    expect(guessColumns(read('sst2_dev.csv'))).toMatchObject({ kind: 'prompt-completion', prompt: 'text', completion: 'label' });
    expect(guessColumns(read('alpaca_en_demo.csv'))).toEqual({ kind: 'instruction', instruction: 'instruction', input: 'input', output: 'output' });
  });
});

describe('templates', () => {
  it('parses placeholders and escaped braces, and fills them from a row', () => {
    const parts = parseTemplate('Q: {question} {{not a column}} ({topic})\nA:');
    expect(parts).toEqual([{ literal: 'Q: ' }, { column: 'question' }, { literal: ' {not a column} (' }, { column: 'topic' }, { literal: ')\nA:' }]);
    expect(fillTemplate(parts, { question: 'Why?', topic: 'sky' })).toBe('Q: Why? {not a column} (sky)\nA:');
    expect(fillTemplate(parseTemplate('{my col}!'), { 'my col': 'x' })).toBe('x!');
  });

  it('rejects lone braces with their position', () => {
    expect(dataError(() => parseTemplate('Q: {question')).message).toMatch(/"\{" at character 4 is not closed/);
    expect(dataError(() => parseTemplate('a } b')).message).toMatch(/"\}" at character 3 has no "\{"/);
    expect(dataError(() => parseTemplate('{a{b}')).message).toMatch(/not closed/);
  });
});

describe('validateMapping and describeMapping', () => {
  const t = table('question,answer,topic\nq,a,t\n', 'qa.csv');

  it('accepts a mapping whose columns all exist', () => {
    expect(() => validateMapping(t, { kind: 'prompt-completion', prompt: 'question', completion: 'answer', template: '[{topic}] {question}\n' })).not.toThrow();
    expect(() => validateMapping(t, { kind: 'text', text: 'answer' })).not.toThrow();
    expect(() => validateMapping(t, { kind: 'instruction', instruction: 'question', input: 'topic', output: 'answer' })).not.toThrow();
  });

  it('names the missing column and lists the available ones', () => {
    const e = dataError(() => validateMapping(t, { kind: 'prompt-completion', prompt: 'prompt', completion: 'answer', template: '{prompt}\n' }));
    expect(e.message).toBe('qa.csv: the prompt column "prompt" does not exist. Available columns: "question", "answer", "topic".');
    expect(dataError(() => validateMapping(t, { kind: 'text', text: 'body' })).message).toMatch(/the text column "body" does not exist/);
    expect(dataError(() => validateMapping(t, { kind: 'instruction', instruction: 'question', input: 'ctx', output: 'answer' })).message).toMatch(/the input column "ctx"/);
    expect(dataError(() => validateMapping(t, { kind: 'instruction', instruction: 'question', output: '' })).message).toMatch(/no column chosen for the output/);
  });

  it('rejects templates that use unknown columns and identical prompt/completion columns', () => {
    const e = dataError(() => validateMapping(t, { kind: 'prompt-completion', prompt: 'question', completion: 'answer', template: '{question} {context}' }));
    expect(e.message).toMatch(/template uses \{context\}, which is not a column\. Available columns: "question", "answer", "topic"/);
    expect(dataError(() => validateMapping(t, { kind: 'prompt-completion', prompt: 'answer', completion: 'answer', template: '{answer}' })).message).toMatch(/same column "answer"/);
  });

  it('describes each kind in one line naming its columns', () => {
    const mappings: ColumnMapping[] = [
      { kind: 'prompt-completion', prompt: 'mr', completion: 'ref', template: '{mr}\n' },
      { kind: 'text', text: 'story' },
      { kind: 'instruction', instruction: 'instruction', input: 'input', output: 'output' },
    ];
    const lines = mappings.map(describeMapping);
    expect(lines[0]).toBe('Prompt "{mr}\\n" → completion "ref" (loss on the completion only)');
    expect(lines[1]).toBe('Plain text from "story" (loss on every token)');
    expect(lines[2]).toBe('Instruction "instruction" + input "input" → output "output" (loss on the output only)');
    for (const l of lines) expect(l).not.toContain('\n');
  });
});
