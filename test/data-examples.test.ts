import { existsSync, readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { alpacaPrompt, buildCausalExamples, IGNORE_INDEX } from '../src/data/examples';
import { guessColumns } from '../src/data/columns';
import { DataError, parseTableBytes, parseTableText } from '../src/data/table';
import { loadTokenizer, type ChatMessage, type TextTokenizer } from '../src/data/tokenizer';

const SHARED = new URL('../../shared/', import.meta.url).pathname;
const haveShared = existsSync(SHARED);
if (!haveShared) console.warn(`skipping examples on the real tokenizer and datasets: ${SHARED} not found (../shared is absent)`);

const BOS = 1;
const EOS = 2;

/** One token per character (id = code point + 10), BOS when asked: expected ids are easy to write down. */
function charTokenizer(chatTemplate?: (messages: ChatMessage[], addGenerationPrompt: boolean) => string): TextTokenizer {
  return {
    eosId: EOS,
    bosId: BOS,
    padId: 0,
    vocabSize: 200,
    chatTemplate: chatTemplate ? '(test template)' : undefined,
    encode: (text, o = {}) => [...((o.addSpecialTokens ?? true) ? [BOS] : []), ...Array.from(text, (c) => c.codePointAt(0)! + 10)],
    decode: (ids) => String.fromCodePoint(...Array.from(ids).filter((i) => i >= 10).map((i) => i - 10)),
    applyChatTemplate: (messages, o = {}) => {
      if (!chatTemplate) throw new Error('no template');
      return chatTemplate(messages, o.addGenerationPrompt ?? false);
    },
  };
}
const ids = (s: string) => Array.from(s, (c) => c.codePointAt(0)! + 10);
const ignored = (n: number) => new Array<number>(n).fill(IGNORE_INDEX);

describe('buildCausalExamples with a character tokenizer', () => {
  it('prompt-completion: template-filled prompt with BOS, completion + EOS, loss on the completion only', () => {
    const t = parseTableText('q,a,topic\nhi,yo,x\n', 'qa.csv');
    const { examples, stats } = buildCausalExamples(t, { kind: 'prompt-completion', prompt: 'q', completion: 'a', template: '[{topic}]{q}:' }, charTokenizer(), { maxLength: 64 });
    const prompt = [BOS, ...ids('[x]hi:')];
    const completion = [...ids('yo'), EOS];
    expect(examples).toEqual([{ inputIds: [...prompt, ...completion], labels: [...ignored(prompt.length), ...completion], truncated: false, row: 2 }]);
    expect(stats).toEqual({
      count: 1,
      truncated: 0,
      skipped: { count: 0, rows: [] },
      tokenLength: { min: 10, mean: 10, max: 10, p95: 10 },
      lossTokens: 3,
    });
  });

  it('text: every token is a label, including BOS (which is never a target after the shift)', () => {
    const t = parseTableText('text\nabc\n', 't.csv');
    const { examples, stats } = buildCausalExamples(t, { kind: 'text', text: 'text' }, charTokenizer(), { maxLength: 64 });
    const want = [BOS, ...ids('abc'), EOS];
    expect(examples[0]).toEqual({ inputIds: want, labels: want, truncated: false, row: 2 });
    expect(stats.lossTokens).toBe(4);
  });

  it('instruction without a chat template uses the Alpaca prompt', () => {
    const t = parseTableText('instruction,input,output\nAdd,1 2,3\nGreet,,Hello\n', 'a.csv');
    const { examples } = buildCausalExamples(t, { kind: 'instruction', instruction: 'instruction', input: 'input', output: 'output' }, charTokenizer(), { maxLength: 512 });
    const p1 = [BOS, ...ids(alpacaPrompt('Add', '1 2'))];
    expect(examples[0].inputIds).toEqual([...p1, ...ids('3'), EOS]);
    expect(examples[0].labels).toEqual([...ignored(p1.length), ...ids('3'), EOS]);
    expect(alpacaPrompt('Add', '1 2')).toContain('### Input:\n1 2\n\n### Response:\n');
    const p2 = [BOS, ...ids(alpacaPrompt('Greet', ''))];
    expect(alpacaPrompt('Greet', '')).not.toContain('### Input');
    expect(examples[1].inputIds).toEqual([...p2, ...ids('Hello'), EOS]);
  });

  it('instruction with a chat template: user message = instruction + blank line + input, generation prompt, no extra BOS', () => {
    const seen: { messages: ChatMessage[]; gen: boolean }[] = [];
    const tok = charTokenizer((messages, gen) => {
      seen.push({ messages, gen });
      return `<u>${messages[0].content}<a>`;
    });
    const t = parseTableText('instruction,input,output\nAdd,1 2,3\nGreet,,Hi\n', 'a.csv');
    const { examples } = buildCausalExamples(t, { kind: 'instruction', instruction: 'instruction', input: 'input', output: 'output' }, tok, { maxLength: 512 });
    expect(seen).toEqual([
      { messages: [{ role: 'user', content: 'Add\n\n1 2' }], gen: true },
      { messages: [{ role: 'user', content: 'Greet' }], gen: true },
    ]);
    const prompt = ids('<u>Add\n\n1 2<a>');
    expect(examples[0].inputIds).toEqual([...prompt, ...ids('3'), EOS]);
    expect(examples[0].labels).toEqual([...ignored(prompt.length), ...ids('3'), EOS]);
  });

  it('truncates to maxLength keeping the start, and counts it', () => {
    const t = parseTableText('p,c\nab,cdefgh\n', 't.csv');
    const { examples, stats } = buildCausalExamples(t, { kind: 'prompt-completion', prompt: 'p', completion: 'c', template: '{p}' }, charTokenizer(), { maxLength: 5 });
    expect(examples[0]).toEqual({ inputIds: [BOS, ...ids('abcd')], labels: [...ignored(3), ...ids('cd')], truncated: true, row: 2 });
    expect(stats.truncated).toBe(1);
    expect(stats.tokenLength.max).toBe(10); // before truncation: BOS + 2 + 6 + EOS
    expect(stats.lossTokens).toBe(2);
  });

  it('skips empty rows and rows whose prompt fills maxLength, with spreadsheet row numbers', () => {
    const t = parseTableText('p,c\nab,x\n,y\n\nlong prompt here,z\ncd,\nef,gh\n', 't.csv');
    const { examples, stats } = buildCausalExamples(t, { kind: 'prompt-completion', prompt: 'p', completion: 'c', template: '{p}' }, charTokenizer(), { maxLength: 8 });
    expect(examples.map((e) => e.row)).toEqual([2, 7]);
    expect(stats.skipped.count).toBe(3);
    expect(stats.skipped.rows).toEqual([
      { row: 3, reason: 'prompt "p" is empty' },
      { row: 5, reason: 'the prompt fills all 8 tokens of maxLength, leaving nothing to learn' },
      { row: 6, reason: 'completion "c" is empty' },
    ]);
  });

  it('lists only the first 20 skipped rows but counts all', () => {
    // A second column keeps rows with an empty text from being dropped as blank lines.
    const csv = 'text,id\n' + Array.from({ length: 30 }, (_, i) => `${i % 2 ? 'ok' : ' '},${i}`).join('\n') + '\n';
    const { stats } = buildCausalExamples(parseTableText(csv, 't.csv'), { kind: 'text', text: 'text' }, charTokenizer(), { maxLength: 16 });
    expect(stats.count).toBe(15);
    expect(stats.skipped.count).toBe(15);
    expect(stats.skipped.rows.length).toBe(15);
    expect(stats.skipped.rows[0]).toEqual({ row: 2, reason: '"text" is empty' });
    const many = 'text,id\n' + Array.from({ length: 50 }, (_, i) => `,${i}`).join('\n') + '\nok,50\n';
    const s2 = buildCausalExamples(parseTableText(many, 't.csv'), { kind: 'text', text: 'text' }, charTokenizer(), { maxLength: 16 }).stats;
    expect([s2.count, s2.skipped.count, s2.skipped.rows.length, s2.skipped.rows[0].row, s2.skipped.rows[19].row]).toEqual([1, 50, 20, 2, 21]);
  });

  it('computes length statistics (nearest-rank p95)', () => {
    // Text lengths 1..20 chars → token lengths 3..22 (BOS + text + EOS).
    const csv = 'text\n' + Array.from({ length: 20 }, (_, i) => 'x'.repeat(i + 1)).join('\n') + '\n';
    const { stats } = buildCausalExamples(parseTableText(csv, 't.csv'), { kind: 'text', text: 'text' }, charTokenizer(), { maxLength: 100 });
    expect(stats.tokenLength).toEqual({ min: 3, mean: 12.5, max: 22, p95: 21 });
    expect(stats.lossTokens).toBe((3 + 22) * 10 - 20);
  });

  it('validates the mapping and the options', () => {
    const t = parseTableText('a,b\n1,2\n', 'ab.csv');
    expect(() => buildCausalExamples(t, { kind: 'text', text: 'zzz' }, charTokenizer(), { maxLength: 8 })).toThrow(DataError);
    expect(() => buildCausalExamples(t, { kind: 'text', text: 'a' }, charTokenizer(), { maxLength: 1 })).toThrow(RangeError);
  });
});

describe.skipIf(!haveShared)('buildCausalExamples on real data with the stories260K tokenizer', () => {
  const model = SHARED + 'models/stories260K-hf/';
  const tokenizer = () =>
    loadTokenizer(JSON.parse(readFileSync(model + 'tokenizer.json', 'utf8')), JSON.parse(readFileSync(model + 'tokenizer_config.json', 'utf8')));
  const read = (name: string) => parseTableBytes(new Uint8Array(readFileSync(SHARED + 'data/' + name)), name);

  it('builds E2E examples whose prompt part is masked and whose completion decodes back to the reference', () => {
    const tok = tokenizer();
    const table = read('e2e_dev.csv');
    const mapping = guessColumns(table);
    const { examples, stats } = buildCausalExamples(table, mapping, tok, { maxLength: 128 });
    expect(stats.count + stats.skipped.count).toBe(4672);
    expect(stats.skipped.count).toBe(0);
    const ex = examples[0];
    expect(ex.inputIds[0]).toBe(1);
    expect(ex.inputIds.at(-1)).toBe(2);
    expect(ex.labels.at(-1)).toBe(2);
    const promptLen = ex.labels.findIndex((l) => l !== IGNORE_INDEX);
    expect(ex.inputIds.slice(0, promptLen)).toEqual(tok.encode(`${table.rows[0].mr}\n`, { addSpecialTokens: true }));
    expect(tok.decode(ex.labels.slice(promptLen), { skipSpecialTokens: true })).toBe(table.rows[0].ref);
    expect(stats.tokenLength.min).toBeGreaterThan(10);
    expect(stats.tokenLength.p95).toBeLessThanOrEqual(stats.tokenLength.max);
    expect(stats.lossTokens).toBe(examples.reduce((s, e) => s + e.labels.slice(1).filter((l) => l !== IGNORE_INDEX).length, 0));
  });

  it('builds Alpaca examples (no chat template: Alpaca prompt) and truncates long ones', () => {
    const table = read('alpaca_en_demo.csv');
    const { examples, stats } = buildCausalExamples(table, guessColumns(table), tokenizer(), { maxLength: 256 });
    expect(stats.count).toBeGreaterThan(900);
    expect(stats.truncated).toBeGreaterThan(0);
    expect(examples.every((e) => e.inputIds.length <= 256 && e.labels.length === e.inputIds.length)).toBe(true);
    expect(examples.filter((e) => e.truncated).length).toBe(stats.truncated);
  });
});
