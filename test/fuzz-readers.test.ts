// Fuzzing the readers of untrusted files (issue #8): thousands of mutated safetensors files and
// tables. Each reader must either return a result or throw its own typed error (never a TypeError,
// RangeError, a hang or a crash), and a result must be usable (every tensor readable).
import { describe, expect, it } from 'vitest';
import { parseSafetensors, writeSafetensors, SafetensorsError } from '../src/io/safetensors';
import { parseTableBytes, DataError } from '../src/data/table';
import { rng } from './helpers/gpu';

type Mutator = (b: Uint8Array, r: () => number) => Uint8Array;
const pick = <T>(r: () => number, xs: readonly T[]): T => xs[Math.floor(r() * xs.length)];
const int = (r: () => number, n: number) => Math.floor(r() * n);

/** Byte-level mutations every format gets, plus text-level ones for text formats. */
const BYTE_MUTATORS: Mutator[] = [
  (b, r) => { const c = b.slice(); for (let i = 0, n = 1 + int(r, 8); i < n; i++) c[int(r, c.length)] = int(r, 256); return c; }, // flip bytes
  (b, r) => b.slice(0, int(r, b.length)), // truncate
  (b, r) => { const at = int(r, b.length); const ins = Uint8Array.from({ length: 1 + int(r, 16) }, () => int(r, 256)); return concat(b.slice(0, at), ins, b.slice(at)); }, // insert
  (b, r) => { const at = int(r, b.length); return concat(b.slice(0, at), b.slice(at + 1 + int(r, 32))); }, // delete
  (b, r) => { const at = int(r, b.length); const len = 1 + int(r, 64); return concat(b.slice(0, at + len), b.slice(at, at + len), b.slice(at + len)); }, // duplicate a span
  (b) => concat(b, b), // doubled file
  (_, r) => Uint8Array.from({ length: int(r, 300) }, () => int(r, 256)), // noise
];

function concat(...parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((s, p) => s + p.length, 0));
  let o = 0;
  for (const p of parts) { out.set(p, o); o += p.length; }
  return out;
}

function textMutator(edit: (s: string, r: () => number) => string): Mutator {
  return (b, r) => new TextEncoder().encode(edit(new TextDecoder().decode(b), r));
}

describe('fuzzing the safetensors reader', () => {
  const good = writeSafetensors([
    { name: 'a.weight', dtype: 'F32', shape: [3, 4], data: Float32Array.from({ length: 12 }, (_, i) => i / 7) },
    { name: 'b.bias', dtype: 'F32', shape: [5], data: new Float32Array(5).fill(0.5) },
    { name: 'ids', dtype: 'I64', shape: [2, 2], data: BigInt64Array.from([1n, 2n, 3n, 4n]) },
    { name: 'mask', dtype: 'I32', shape: [3], data: Int32Array.from([0, 1, 1]) },
  ], { format: 'pt' });
  // Edits of the JSON header: numbers, dtypes, shapes and offsets that lie, and the length prefix.
  const headerMutators: Mutator[] = [
    (b, r) => { const c = b.slice(); new DataView(c.buffer).setBigUint64(0, BigInt(pick(r, [0, 1, 7, c.length, c.length - 8, 2 ** 31, 2 ** 40, 99_999_999, 100_000_001])), true); return c; },
    textMutator((s, r) => s.replace(/\d+/g, (d) => (r() < 0.3 ? String(pick(r, [0, 1, Number(d) + 1, Number(d) * 2, 4294967297, -1, 1e300])) : d))),
    textMutator((s, r) => s.replace(/"(F32|I64|I32)"/g, (d) => (r() < 0.5 ? `"${pick(r, ['F16', 'BF16', 'F64', 'U8', 'BOOL', 'F8_E4M3', 'Q4', '', 'f32'])}"` : d))),
    textMutator((s, r) => s.replace(/"shape":\[[^\]]*\]/g, (d) => (r() < 0.5 ? `"shape":${pick(r, ['[]', '[0]', '[-1,4]', '[1.5]', '["3"]', 'null', '[3,4,5,6,7,8,9]', '[1e20,1e20]'])}` : d))),
    textMutator((s, r) => s.replace(/"data_offsets":\[[^\]]*\]/g, (d) => (r() < 0.5 ? `"data_offsets":${pick(r, ['[]', '[0]', '[8,0]', '[0,1e12]', 'null', '[0,48,96]', '"x"'])}` : d))),
    textMutator((s, r) => s.replace(/[{}[\]:,"]/g, (d) => (r() < 0.05 ? pick(r, ['', '{', '}', '[', ']', ',', '"', ':', '\\u0000']) : d))),
    textMutator((s) => s.replace('"__metadata__":{"format":"pt"}', '"__metadata__":{"format":{"nested":1}}')),
  ];

  it('3,000 mutated files: a readable file or a SafetensorsError, never anything else', () => {
    const r = rng(2024);
    const mutators = [...BYTE_MUTATORS, ...headerMutators];
    const outcomes = { parsed: 0, rejected: 0 };
    const start = performance.now();
    for (let i = 0; i < 3000; i++) {
      let bytes: Uint8Array = good;
      for (let k = 0, n = 1 + int(r, 2); k < n; k++) bytes = pick(r, mutators)(bytes, r);
      const t0 = performance.now();
      try {
        const f = parseSafetensors(bytes, 'fuzz.safetensors');
        for (const [name, e] of f.tensors) {
          if (['F32', 'F16', 'BF16', 'F64'].includes(e.dtype)) f.getF32(name);
          else if (['I32', 'I64', 'I16', 'U16', 'I8', 'U8', 'BOOL'].includes(e.dtype)) f.getI32(name);
          else f.getBytes(name);
        }
        outcomes.parsed++;
      } catch (e) {
        if (!(e instanceof SafetensorsError)) throw new Error(`mutation ${i}: ${(e as Error).name}: ${(e as Error).message}`);
        expect((e as Error).message.startsWith('fuzz.safetensors: ')).toBe(true);
        outcomes.rejected++;
      }
      expect(performance.now() - t0, `mutation ${i} took too long`).toBeLessThan(500);
    }
    // both outcomes occur (the mutations are neither all harmless nor all fatal)
    expect(outcomes.parsed).toBeGreaterThan(50);
    expect(outcomes.rejected).toBeGreaterThan(1000);
    expect(performance.now() - start).toBeLessThan(60_000);
  });
});

describe('fuzzing the table reader (CSV, TSV, JSONL)', () => {
  const csv = new TextEncoder().encode('prompt,completion\n"Hello, world","Hi ""there"""\nplain,text\n"multi\nline",x\n');
  const tsv = new TextEncoder().encode('text\tlabel\ngood movie\t1\nbad movie\t0\n');
  const jsonl = new TextEncoder().encode('{"text": "a", "label": 1}\n{"text": "b", "label": 0}\n');
  const tableMutators: Mutator[] = [
    textMutator((s, r) => s.replace(/[",\n\t{}:]/g, (d) => (r() < 0.1 ? pick(r, ['', '"', ',', ';', '\t', '\r\n', '\r', '\n\n', '\u0000', '\ufeff', '"""']) : d))),
    (b) => concat(Uint8Array.from([0xef, 0xbb, 0xbf]), b), // BOM
    (b) => concat(Uint8Array.from([0xff, 0xfe]), b), // UTF-16 BOM
    textMutator((s) => s.replace(/\n/g, '\r\n')), // CRLF
    textMutator((s, r) => s.repeat(1 + int(r, 50))), // long
    textMutator((s, r) => `${'x,'.repeat(int(r, 2000))}\n${s}`), // very wide header
  ];

  it('3,000 mutated tables: a Table or a DataError, never anything else', () => {
    const r = rng(7);
    const mutators = [...BYTE_MUTATORS, ...tableMutators];
    const outcomes = { parsed: 0, rejected: 0 };
    for (let i = 0; i < 3000; i++) {
      const [base, name] = pick(r, [[csv, 'data.csv'], [tsv, 'data.tsv'], [jsonl, 'data.jsonl']] as const);
      let bytes: Uint8Array = base;
      for (let k = 0, n = 1 + int(r, 2); k < n; k++) bytes = pick(r, mutators)(bytes, r);
      const t0 = performance.now();
      try {
        const t = parseTableBytes(bytes, name);
        // a table is consistent: every row has every column, as strings
        for (const row of t.rows) for (const c of t.columns) expect(typeof row[c]).toBe('string');
        expect(t.rowNumbers.length).toBe(t.rows.length);
        outcomes.parsed++;
      } catch (e) {
        if (!(e instanceof DataError)) throw new Error(`mutation ${i} (${name}): ${(e as Error).name}: ${(e as Error).message}`);
        expect((e as Error).message).toContain(name);
        outcomes.rejected++;
      }
      expect(performance.now() - t0, `mutation ${i} took too long`).toBeLessThan(1000);
    }
    expect(outcomes.parsed).toBeGreaterThan(300);
    expect(outcomes.rejected).toBeGreaterThan(50);
  });
});
