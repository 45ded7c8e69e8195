import { existsSync, readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { DataError, decodeTableBytes, findInvalidUtf8, parseTableBytes, parseTableStream, parseTableText, type Table } from '../src/data/table';
import { seededRandom as rng } from '../src/data/batches';

const DATA = new URL('../../shared/data/', import.meta.url).pathname;
const haveShared = existsSync(DATA);
if (!haveShared) console.warn(`skipping tests on the shared datasets: ${DATA} not found (../shared is absent)`);

function dataError(fn: () => unknown): DataError {
  try {
    fn();
  } catch (e) {
    expect(e).toBeInstanceOf(DataError);
    return e as DataError;
  }
  throw new Error('expected a DataError');
}

async function asyncDataError(p: Promise<unknown>): Promise<DataError> {
  try {
    await p;
  } catch (e) {
    expect(e).toBeInstanceOf(DataError);
    return e as DataError;
  }
  throw new Error('expected a DataError');
}

/** Only the parts of a table that the two parsing paths must agree on. */
const essence = (t: Table) => ({ columns: t.columns, rows: t.rows, rowNumbers: t.rowNumbers, problems: t.problems, counts: t.problemCounts, format: t.format });

describe('parseTableText: CSV and TSV', () => {
  it('reads quoted fields with commas, quotes and newlines; strips a BOM; accepts CRLF', () => {
    const text = '\uFEFFprompt,completion\r\n"Hello, you","He said ""hi""\r\nthen left"\r\nplain,text\r\n';
    const t = parseTableText(text, 'chat.csv');
    expect(t.format).toBe('csv');
    expect(t.columns).toEqual(['prompt', 'completion']);
    expect(t.rows).toEqual([
      { prompt: 'Hello, you', completion: 'He said "hi"\r\nthen left' },
      { prompt: 'plain', completion: 'text' },
    ]);
    // The quoted newline does not add a spreadsheet row.
    expect(t.rowNumbers).toEqual([2, 3]);
    expect(t.problems).toEqual([]);
  });

  it('numbers rows like a spreadsheet, skipping blank lines but counting them, and records problems', () => {
    const text = ['a,b,c', '1,2,3', '', '4,5', '6,,8', '9,10,11,12', ' , , '].join('\n');
    const t = parseTableText(text, 'p.csv');
    expect(t.rows.map((r) => r.a)).toEqual(['1', '4', '6', '9']);
    expect(t.rowNumbers).toEqual([2, 4, 5, 6]);
    expect(t.rows[1]).toEqual({ a: '4', b: '5', c: '' });
    expect(t.rows[3]).toEqual({ a: '9', b: '10', c: '11' });
    const summary = t.problems.map((p) => [p.row, p.kind, p.column ?? null]);
    expect(summary).toEqual([
      [4, 'field-count', null],
      [4, 'empty-cell', 'c'],
      [5, 'empty-cell', 'b'],
      [6, 'field-count', null],
    ]);
    expect(t.problems[0].message).toMatch(/row 4: has 2 cells but the header has 3; the missing cell is treated as empty/);
    expect(t.problems[3].message).toMatch(/row 6: has 4 cells .* extra cell is ignored/);
    expect(t.problemCounts).toMatchObject({ 'field-count': 2, 'empty-cell': 2 });
  });

  it('reports an unterminated quote with its row', () => {
    const t = parseTableText('a,b\n1,2\n3,"oops\n5,6\n', 'q.csv');
    const quote = t.problems.find((p) => p.kind === 'bad-quotes')!;
    expect(quote.row).toBe(3);
    expect(quote.message).toMatch(/never closed/);
  });

  it('reads TSV by extension and sniffs the delimiter when the extension says nothing', () => {
    const tsv = parseTableText('text\tlabel\nit, is good\t1\n', 'sst.tsv');
    expect([tsv.format, tsv.delimiter]).toEqual(['tsv', '\t']);
    expect(tsv.rows).toEqual([{ text: 'it, is good', label: '1' }]);
    const semi = parseTableText('q;a\nwhy;because\nhow;so\n', 'export.dat');
    expect([semi.format, semi.delimiter, semi.columns]).toEqual(['delimited', ';', ['q', 'a']]);
    const pipes = parseTableText('q|a\nx|y\n', 'noext');
    expect(pipes.delimiter).toBe('|');
  });

  it('names the delimiter a one-column file seems to use', () => {
    const e1 = dataError(() => parseTableText('q;a\nwhy;because\nhow;so\n', 'euro.csv'));
    expect(e1.message).toMatch(/euro\.csv: found a single column "q;a"/);
    expect(e1.message).toMatch(/separated by semicolons, not commas/);
    const e2 = dataError(() => parseTableText('q\ta\nwhy\tbecause\n', 'tabs.csv'));
    expect(e2.message).toMatch(/separated by tabs.*rename it to \.tsv/);
    // One real column whose values happen to contain no other delimiter is fine.
    expect(parseTableText('text\nhello there\nagain\n', 'one.csv').columns).toEqual(['text']);
  });

  it('throws DataError for empty files, missing headers, header-only files and duplicate columns', () => {
    expect(dataError(() => parseTableText('', 'e.csv')).message).toBe('e.csv: is empty.');
    expect(dataError(() => parseTableText(' \n\r\n ', 'e.csv')).message).toMatch(/is empty/);
    expect(dataError(() => parseTableText('\n\na,b\n1,2', 'h.csv')).message).toMatch(/h\.csv: has no header: row 1 is blank/);
    expect(dataError(() => parseTableText(',,\n1,2,3\n', 'h.csv')).message).toMatch(/has no header/);
    expect(dataError(() => parseTableText('1,2\n3,4\n', 'n.csv')).message).toMatch(/row 1 \(1, 2\) looks like data/);
    expect(dataError(() => parseTableText('a,b\n', 'only.csv')).message).toMatch(/only\.csv: has a header \(a, b\) but no data rows/);
    const dup = dataError(() => parseTableText('text,label,text\n1,2,3\n', 'd.csv'));
    expect(dup.message).toMatch(/d\.csv: duplicate column names: "text" \(columns 1 and 3\)/);
  });

  it('names an unnamed column (a pandas index) instead of failing', () => {
    const t = parseTableText(',text\n0,hello\n1,bye\n', 'pandas.csv');
    expect(t.columns).toEqual(['column_1', 'text']);
    expect(t.problems[0]).toMatchObject({ row: 1, kind: 'empty-header' });
  });
});

describe('parseTableText: JSON Lines, JSON arrays and plain text', () => {
  it('reads JSON Lines, keeping bad lines as problems with their line numbers', () => {
    const text = ['{"prompt": "a", "completion": "b", "n": 3}', '', '{"prompt": "c"', '[1,2]', '{"prompt": "d", "completion": null, "extra": {"k": true}}'].join('\n');
    const t = parseTableText(text, 'train.jsonl');
    expect(t.format).toBe('jsonl');
    expect(t.columns).toEqual(['prompt', 'completion', 'n', 'extra']);
    expect(t.rows).toEqual([
      { prompt: 'a', completion: 'b', n: '3', extra: '' },
      { prompt: 'd', completion: '', n: '', extra: '{"k":true}' },
    ]);
    expect(t.rowNumbers).toEqual([1, 5]);
    const bad = t.problems.filter((p) => p.kind === 'bad-json');
    expect(bad.map((p) => p.row)).toEqual([3, 4]);
    expect(bad[0].message).toMatch(/line 3: is not valid JSON/);
    expect(bad[1].message).toMatch(/line 4: is an array, not an object/);
    expect(dataError(() => parseTableText('not json\n{oops', 'x.jsonl')).message).toMatch(/x\.jsonl: has no JSON objects to read \(line 1: is not valid JSON/);
  });

  it('reads a JSON array of objects (the alpaca_data.json shape)', () => {
    const t = parseTableText('[{"instruction": "Add", "input": "1 2", "output": "3"}, {"instruction": "Hi", "output": "Hello"}]', 'alpaca.json');
    expect(t.format).toBe('json');
    expect(t.rows).toEqual([
      { instruction: 'Add', input: '1 2', output: '3' },
      { instruction: 'Hi', input: '', output: 'Hello' },
    ]);
    // A .json file that does not start with "[" is read as JSON Lines.
    expect(dataError(() => parseTableText('{"a": 1', 'bad.json')).message).toMatch(/bad\.json: has no JSON objects to read \(line 1: is not valid JSON/);
    expect(dataError(() => parseTableText('[1, 2', 'bad.json')).message).toMatch(/is not valid JSON/);
  });

  it('splits plain text on <|endoftext|> lines, else blank lines, else lines', () => {
    const sep = parseTableText('Once upon a time.\nThe end.\n<|endoftext|>\nAnother story.\n<|endoftext|>\n', 'stories.txt');
    expect(sep.columns).toEqual(['text']);
    expect(sep.rows).toEqual([{ text: 'Once upon a time.\nThe end.' }, { text: 'Another story.' }]);
    expect(sep.rowNumbers).toEqual([1, 4]);
    const paragraphs = parseTableText('First para\nline two\n\nSecond para\n', 'p.txt');
    expect(paragraphs.rows.map((r) => r.text)).toEqual(['First para\nline two', 'Second para']);
    const lines = parseTableText('one\ntwo\nthree\n', 'l.txt');
    expect(lines.rows.map((r) => r.text)).toEqual(['one', 'two', 'three']);
    expect(lines.rowNumbers).toEqual([1, 2, 3]);
  });
});

describe('decodeTableBytes', () => {
  const enc = (s: string) => new TextEncoder().encode(s);

  it('decodes UTF-8 and strips the BOM', () => {
    expect(decodeTableBytes(new Uint8Array([0xef, 0xbb, 0xbf, ...enc('a,é\n')]), 'f.csv')).toBe('a,é\n');
  });

  it('names the offset and line of the first bad byte', () => {
    const latin1 = new Uint8Array([...enc('text\nok\ncaf'), 0xe9, ...enc('\n')]);
    const e = dataError(() => decodeTableBytes(latin1, 'latin1.csv'));
    expect(e.message).toMatch(/latin1\.csv: is not UTF-8 text: byte 0xe9 at offset 11 \(line 3\)/);
    const overlong = new Uint8Array([0x61, 0xc0, 0xaf]);
    expect(dataError(() => decodeTableBytes(overlong, 'o.csv')).message).toMatch(/0xc0 at offset 1/);
    const cut = new Uint8Array([...enc('ab'), 0xe2, 0x82]);
    expect(dataError(() => decodeTableBytes(cut, 'c.csv')).message).toMatch(/0xe2 at offset 2/);
  });

  it('recognizes spreadsheets, archives, UTF-16 and binary files', () => {
    expect(dataError(() => decodeTableBytes(new Uint8Array([0x50, 0x4b, 0x03, 0x04, 0, 0]), 'book.xlsx')).message).toMatch(/book\.xlsx: .*ZIP.*export the sheet as CSV/);
    expect(dataError(() => parseTableBytes(new Uint8Array([0xff, 0xfe, 0x61, 0]), 'u16.csv')).message).toMatch(/UTF-16/);
    expect(dataError(() => decodeTableBytes(new Uint8Array([0x61, 0x00, 0x62]), 'bin.csv')).message).toMatch(/NUL byte/);
  });

  it('findInvalidUtf8 agrees with a fatal TextDecoder on random bytes', () => {
    const random = rng(7);
    const decoder = new TextDecoder('utf-8', { fatal: true });
    const pieces = [[0x41], [0xc3, 0xa9], [0xe2, 0x82, 0xac], [0xf0, 0x9f, 0x98, 0x80], [0xed, 0xa0, 0x80], [0xf4, 0x90, 0x80, 0x80], [0x80], [0xc1, 0x81], [0xe0, 0x80, 0x80], [0xf0, 0x9f]];
    for (let trial = 0; trial < 3000; trial++) {
      const bytes: number[] = [];
      const n = 1 + Math.floor(random() * 6);
      for (let k = 0; k < n; k++) {
        if (random() < 0.3) bytes.push(Math.floor(random() * 256));
        else bytes.push(...pieces[Math.floor(random() * pieces.length)]);
      }
      const arr = Uint8Array.from(bytes);
      let valid = true;
      try {
        decoder.decode(arr);
      } catch {
        valid = false;
      }
      const at = findInvalidUtf8(arr);
      if ((at === -1) !== valid) throw new Error(`disagree on [${bytes.map((b) => b.toString(16))}]: ${at}`);
      if (at >= 0) {
        // Everything before the reported offset must be valid on its own.
        expect(() => decoder.decode(arr.subarray(0, at))).not.toThrow();
      }
    }
  });
});

describe('parseTableStream', () => {
  /** A CSV that stresses chunk boundaries: multi-byte characters, quoted newlines, CRLF, odd rows. */
  function bigCsv(rows: number): string {
    const random = rng(3);
    const words = ['héllo', 'naïve', '日本語', 'emoji 😀', 'plain', 'a "quote"', 'comma, inside', 'line\nbreak'];
    const lines = ['prompt,completion,id'];
    for (let i = 0; i < rows; i++) {
      const cell = () => {
        const w = words[Math.floor(random() * words.length)];
        return /[",\n]/.test(w) ? `"${w.replace(/"/g, '""')}"` : w;
      };
      if (i % 97 === 13) lines.push('');
      else if (i % 211 === 7) lines.push(`"bad"quote,x,${i}`);
      else if (i % 89 === 5) lines.push(`${cell()},`);
      else lines.push(`${cell()},${cell()},${i}`);
    }
    return lines.join(rows % 2 === 0 ? '\r\n' : '\n');
  }

  it('gives the same table as parseTableText across many small chunks, with monotonic progress', async () => {
    for (const rows of [500, 501]) {
      const text = bigCsv(rows);
      const bytes = new TextEncoder().encode(text);
      const fractions: number[] = [];
      const streamed = await parseTableStream(new Blob([bytes]), (f) => fractions.push(f), { fileName: 'big.csv', chunkBytes: 997 });
      const whole = parseTableText(text, 'big.csv');
      expect(essence(streamed)).toEqual(essence(whole));
      expect(whole.problemCounts['field-count']).toBeGreaterThan(0);
      expect(whole.problemCounts['bad-quotes']).toBeGreaterThan(0);
      expect(fractions.length).toBeGreaterThan(10);
      for (let i = 1; i < fractions.length; i++) expect(fractions[i]).toBeGreaterThanOrEqual(fractions[i - 1]);
      expect(fractions.at(-1)).toBe(1);
    }
  });

  it('streams JSON Lines and takes the name from a File', async () => {
    const lines = Array.from({ length: 300 }, (_, i) => (i === 150 ? '{broken' : JSON.stringify({ text: `ünïcode ${i}`, label: i % 2 })));
    const text = lines.join('\n') + '\n';
    const file = new File([text], 'train.jsonl');
    const streamed = await parseTableStream(file, undefined, { chunkBytes: 301 });
    expect(streamed.fileName).toBe('train.jsonl');
    expect(essence(streamed)).toEqual(essence(parseTableText(text, 'train.jsonl')));
    expect(streamed.rows.length).toBe(299);
  });

  it('reports bad UTF-8, wrong delimiters, binary files and header problems like the text path', async () => {
    const latin1 = new Uint8Array([...new TextEncoder().encode('a,b\n' + 'x,y\n'.repeat(100)), 0xe9, 0x0a]);
    const e1 = await asyncDataError(parseTableStream(new Blob([latin1]), undefined, { fileName: 'l.csv', chunkBytes: 64 }));
    expect(e1.message).toMatch(/l\.csv: is not UTF-8 text: byte 0xe9 at offset 404 \(line 102\)/);
    const e2 = await asyncDataError(parseTableStream(new Blob(['q;a\n' + 'x;y\n'.repeat(50)]), undefined, { fileName: 's.csv', chunkBytes: 16 }));
    expect(e2.message).toMatch(/separated by semicolons/);
    const e3 = await asyncDataError(parseTableStream(new Blob([new Uint8Array([0x50, 0x4b, 0x03, 0x04, 1, 2])]), undefined, { fileName: 'x.xlsx' }));
    expect(e3.message).toMatch(/ZIP/);
    const e4 = await asyncDataError(parseTableStream(new Blob(['a,a\n1,2\n']), undefined, { fileName: 'd.csv' }));
    expect(e4.message).toMatch(/duplicate column names/);
    const e5 = await asyncDataError(parseTableStream(new Blob([]), undefined, { fileName: 'e.csv' }));
    expect(e5.message).toBe('e.csv: is empty.');
    const e6 = await asyncDataError(parseTableStream(new Blob(['a,b\n']), undefined, { fileName: 'h.csv' }));
    expect(e6.message).toMatch(/no data rows/);
    const e7 = await asyncDataError(parseTableStream(new Blob([' \n\n \n']), undefined, { fileName: 'w.csv', chunkBytes: 2 }));
    expect(e7.message).toBe('w.csv: is empty.');
    const e8 = await asyncDataError(parseTableStream(new Blob(['\n\na,b\n1,2\n']), undefined, { fileName: 'b.csv', chunkBytes: 1 }));
    expect(e8.message).toMatch(/b\.csv: has no header: row 1 is blank/);
  });
});

describe.skipIf(!haveShared)('the shared datasets', () => {
  it('reads e2e_dev.csv, sst2_dev.csv and alpaca_en_demo.csv, streamed and whole alike', async () => {
    const expected: Record<string, { columns: string[]; rows: number }> = {
      'e2e_dev.csv': { columns: ['mr', 'ref'], rows: 4672 },
      'sst2_dev.csv': { columns: ['text', 'label'], rows: 872 },
      'alpaca_en_demo.csv': { columns: ['instruction', 'input', 'output'], rows: 999 },
    };
    for (const [name, want] of Object.entries(expected)) {
      const bytes = new Uint8Array(readFileSync(DATA + name));
      const whole = parseTableBytes(bytes, name);
      expect(whole.columns).toEqual(want.columns);
      expect(whole.rows.length).toBe(want.rows);
      expect(whole.problemCounts['field-count']).toBe(0);
      const streamed = await parseTableStream(new Blob([bytes]), undefined, { fileName: name, chunkBytes: 65536 });
      expect(essence(streamed)).toEqual(essence(whole));
    }
    const e2e = parseTableBytes(new Uint8Array(readFileSync(DATA + 'e2e_dev.csv')), 'e2e_dev.csv');
    expect(e2e.rows[0].mr).toBe('name[Alimentum], area[city centre], familyFriendly[no]');
    // alpaca's "input" is mostly empty: reported, not fatal.
    const alpaca = parseTableBytes(new Uint8Array(readFileSync(DATA + 'alpaca_en_demo.csv')), 'alpaca_en_demo.csv');
    expect(alpaca.problemCounts['empty-cell']).toBeGreaterThan(100);
  });

  it('reads the TinyStories text file as one story per row', () => {
    const t = parseTableBytes(new Uint8Array(readFileSync(DATA + 'tinystories_val100.txt')), 'tinystories_val100.txt');
    expect(t.columns).toEqual(['text']);
    expect(t.rows.length).toBeGreaterThanOrEqual(99);
    expect(t.rows.every((r) => !r.text.includes('<|endoftext|>'))).toBe(true);
  });
});
