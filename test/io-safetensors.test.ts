import { existsSync, readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { parseSafetensors, SafetensorsError, writeSafetensors, f16ToF32, bf16ToF32 } from '../src/io/safetensors';

const STORIES = new URL('../../shared/models/stories260K-hf/model.safetensors', import.meta.url).pathname;
const haveShared = existsSync(STORIES);

/** A safetensors file from a header object (serialized as given) and raw data bytes. */
function rawFile(header: unknown, data: Uint8Array = new Uint8Array(0), headerText?: string): Uint8Array {
  const json = new TextEncoder().encode(headerText ?? JSON.stringify(header));
  const out = new Uint8Array(8 + json.length + data.length);
  new DataView(out.buffer).setBigUint64(0, BigInt(json.length), true);
  out.set(json, 8);
  out.set(data, 8 + json.length);
  return out;
}

const u16bytes = (bits: number[]) => new Uint8Array(Uint16Array.from(bits).buffer);

function expectError(fn: () => unknown, ...patterns: RegExp[]) {
  let caught: unknown;
  try {
    fn();
  } catch (e) {
    caught = e;
  }
  expect(caught).toBeInstanceOf(SafetensorsError);
  for (const p of patterns) expect((caught as Error).message).toMatch(p);
}

describe('writeSafetensors / parseSafetensors', () => {
  it('writes the exact bytes the Python library writes for a single tensor', () => {
    const bytes = writeSafetensors([{ name: 'a', dtype: 'F32', shape: [2], data: Float32Array.from([1, 2]) }]);
    const header = '{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}'; // 54 bytes, padded to 56
    expect(header.length).toBe(54);
    const want = new Uint8Array(8 + 56 + 8);
    want[0] = 56;
    want.set(new TextEncoder().encode(header + '  '), 8);
    want.set(new Uint8Array(Float32Array.from([1, 2]).buffer), 64);
    expect(Array.from(bytes)).toEqual(Array.from(want));
  });

  it('round-trips F32, I32 and I64 tensors with metadata, sorted by dtype then name, 8-aligned', () => {
    const f = Float32Array.from({ length: 6 }, (_, i) => i * 0.5 - 1);
    const g = Float32Array.from([3.25]);
    const ints = Int32Array.from([-7, 0, 2147483647]);
    const longs = BigInt64Array.from([-5n, 123456789n]);
    const bytes = writeSafetensors(
      [
        { name: 'z.weight', dtype: 'F32', shape: [2, 3], data: f },
        { name: 'b.ids', dtype: 'I32', shape: [3], data: ints },
        { name: 'a.weight', dtype: 'F32', shape: [], data: g },
        { name: 'c.long', dtype: 'I64', shape: [2, 1], data: longs },
      ],
      { format: 'pt', note: 'hello' },
    );
    const headerLen = Number(new DataView(bytes.buffer).getBigUint64(0, true));
    expect(headerLen % 8).toBe(0);
    const headerText = new TextDecoder().decode(bytes.subarray(8, 8 + headerLen));
    expect(headerText.trimEnd().length).toBeLessThanOrEqual(headerLen);
    expect(/^ *$/.test(headerText.slice(headerText.trimEnd().length))).toBe(true);

    const st = parseSafetensors(bytes, 'x.safetensors');
    expect(st.metadata).toEqual({ format: 'pt', note: 'hello' });
    // I64 first (widest), then F32 by name, then I32; contiguous offsets.
    const order = [...st.tensors.entries()].sort((a, b) => a[1].begin - b[1].begin).map(([n]) => n);
    expect(order).toEqual(['c.long', 'a.weight', 'z.weight', 'b.ids']);
    let offset = 0;
    for (const n of order) {
      const t = st.tensors.get(n)!;
      expect(t.begin).toBe(offset);
      offset = t.end;
    }
    expect(8 + headerLen + offset).toBe(bytes.length);

    expect(Array.from(st.getF32('z.weight'))).toEqual(Array.from(f));
    expect(st.tensors.get('z.weight')!.shape).toEqual([2, 3]);
    expect(Array.from(st.getF32('a.weight'))).toEqual([3.25]);
    expect(st.tensors.get('a.weight')!.shape).toEqual([]);
    expect(Array.from(st.getI32('b.ids'))).toEqual([-7, 0, 2147483647]);
    expect(Array.from(st.getI32('c.long'))).toEqual([-5, 123456789]);
    expect(st.getBytes('b.ids').length).toBe(12);
  });

  it('round-trips empty tensors and writes no metadata when none is given', () => {
    const bytes = writeSafetensors([
      { name: 'empty', dtype: 'F32', shape: [0, 4], data: new Float32Array(0) },
      { name: 'x', dtype: 'F32', shape: [1], data: Float32Array.from([9]) },
    ]);
    const st = parseSafetensors(bytes);
    expect(st.metadata).toEqual({});
    expect(st.getF32('empty').length).toBe(0);
    expect(Array.from(st.getF32('x'))).toEqual([9]);
    expect(new TextDecoder().decode(bytes.subarray(8, 40))).not.toContain('__metadata__');
  });

  it('reads tensors at offsets that are not 4-aligned in the buffer', () => {
    const bytes = writeSafetensors([{ name: 'w', dtype: 'F32', shape: [3], data: Float32Array.from([1.5, -2, 7]) }]);
    const shifted = new Uint8Array(bytes.length + 3);
    shifted.set(bytes, 3);
    const st = parseSafetensors(shifted.subarray(3));
    expect(Array.from(st.getF32('w'))).toEqual([1.5, -2, 7]);
  });

  it('rejects bad input to the writer', () => {
    expectError(() => writeSafetensors([{ name: 'a', dtype: 'F32', shape: [3], data: new Float32Array(2) }]), /"a"/, /3 elements but data has 2/);
    expectError(() => writeSafetensors([{ name: 'a', dtype: 'I32', shape: [2], data: new Float32Array(2) }]), /Int32Array/);
    expectError(
      () =>
        writeSafetensors([
          { name: 'a', dtype: 'F32', shape: [1], data: new Float32Array(1) },
          { name: 'a', dtype: 'F32', shape: [1], data: new Float32Array(1) },
        ]),
      /twice/,
    );
    expectError(() => writeSafetensors([{ name: '__metadata__', dtype: 'F32', shape: [1], data: new Float32Array(1) }]), /reserved/);
  });
});

describe('parseSafetensors validation', () => {
  const ok = { w: { dtype: 'F32', shape: [2], data_offsets: [0, 8] } };
  const data8 = new Uint8Array(8);

  it('accepts a well-formed hand-made file', () => {
    expect(parseSafetensors(rawFile(ok, data8), 'm.safetensors').tensors.get('w')).toEqual({ dtype: 'F32', shape: [2], begin: 0, end: 8 });
  });

  it('rejects files shorter than 8 bytes', () => {
    expectError(() => parseSafetensors(new Uint8Array(5), 'tiny.safetensors'), /tiny\.safetensors/, /5 bytes/);
  });

  it('rejects a header length of 100 MB or more', () => {
    const b = new Uint8Array(16);
    new DataView(b.buffer).setBigUint64(0, 100_000_000n, true);
    expectError(() => parseSafetensors(b, 'big.safetensors'), /big\.safetensors/, /100 MB/);
    new DataView(b.buffer).setBigUint64(0, 2n ** 63n, true);
    expectError(() => parseSafetensors(b), /100 MB/);
  });

  it('rejects a header that runs past the end of the file', () => {
    const b = rawFile(ok, data8).subarray(0, 30);
    expectError(() => parseSafetensors(b, 'cut.safetensors'), /cut\.safetensors/, /past the end/);
  });

  it('rejects a header that is not UTF-8, not JSON, or not an object', () => {
    const bad = new Uint8Array(8 + 4);
    bad[0] = 4;
    bad.set([0x7b, 0xff, 0xfe, 0x7d], 8);
    expectError(() => parseSafetensors(bad), /UTF-8/);
    expectError(() => parseSafetensors(rawFile(null, undefined, '{"w": ')), /not valid JSON/);
    expectError(() => parseSafetensors(rawFile([1, 2])), /not a JSON object/);
  });

  it('rejects __metadata__ that is not string to string', () => {
    expectError(() => parseSafetensors(rawFile({ __metadata__: { format: 1 }, ...ok }, data8)), /__metadata__/, /"format"/);
    expectError(() => parseSafetensors(rawFile({ __metadata__: ['x'], ...ok }, data8)), /__metadata__/);
  });

  it('rejects unknown dtypes, bad shapes and bad offsets, naming the tensor', () => {
    const one = (entry: unknown, data = data8) => () => parseSafetensors(rawFile({ 'layer.w': entry }, data), 'f.safetensors');
    expectError(one({ dtype: 'F48', shape: [2], data_offsets: [0, 8] }), /f\.safetensors/, /"layer\.w"/, /unknown dtype "F48"/);
    expectError(one({ dtype: 'F32', shape: [-1], data_offsets: [0, 8] }), /"layer\.w"/, /shape/);
    expectError(one({ dtype: 'F32', shape: [1.5], data_offsets: [0, 8] }), /shape/);
    expectError(one({ dtype: 'F32', shape: '2', data_offsets: [0, 8] }), /shape/);
    expectError(one({ dtype: 'F32', shape: [2], data_offsets: [0] }), /data_offsets/);
    expectError(one({ dtype: 'F32', shape: [2], data_offsets: [-8, 0] }), /data_offsets/);
    expectError(one({ dtype: 'F32', shape: [2], data_offsets: [8, 0] }), /end before/);
    expectError(one({ dtype: 'F32', shape: [3], data_offsets: [0, 8] }), /"layer\.w"/, /needs 12/);
    expectError(one({ dtype: 'F32', shape: [4], data_offsets: [0, 16] }), /"layer\.w"/, /past the 8-byte data section/);
    expectError(one('nope'), /not an object/);
  });

  it('rejects overlapping tensors', () => {
    const header = {
      a: { dtype: 'F32', shape: [2], data_offsets: [0, 8] },
      b: { dtype: 'F32', shape: [2], data_offsets: [4, 12] },
    };
    expectError(() => parseSafetensors(rawFile(header, new Uint8Array(12))), /"b"/, /overlaps tensor "a"/);
    // Empty tensors own no bytes, so one sitting inside another's range is fine.
    const withEmpty = { a: { dtype: 'F32', shape: [2], data_offsets: [0, 8] }, e: { dtype: 'F32', shape: [0], data_offsets: [4, 4] } };
    expect(parseSafetensors(rawFile(withEmpty, data8)).tensors.size).toBe(2);
  });

  it('refuses to convert between float and integer, out-of-range I64, and unknown names', () => {
    const header = {
      f: { dtype: 'F32', shape: [1], data_offsets: [0, 4] },
      i: { dtype: 'I32', shape: [1], data_offsets: [4, 8] },
      big: { dtype: 'I64', shape: [1], data_offsets: [8, 16] },
    };
    const data = new Uint8Array(16);
    new DataView(data.buffer).setBigInt64(8, 2n ** 40n, true);
    const st = parseSafetensors(rawFile(header, data), 'mix.safetensors');
    expectError(() => st.getF32('i'), /"i" is I32/);
    expectError(() => st.getI32('f'), /"f" is F32/);
    expectError(() => st.getI32('big'), /does not fit in int32/);
    expectError(() => st.getF32('missing'), /mix\.safetensors/, /no tensor named "missing"/);
  });
});

describe('half-precision conversion', () => {
  it('converts F16 bit patterns exactly, including subnormals, zeros, infinities and NaN', () => {
    const cases: [number, number][] = [
      [0x0000, 0],
      [0x3c00, 1],
      [0xc000, -2],
      [0x3555, 0.333251953125],
      [0x7bff, 65504],
      [0x0400, 2 ** -14], // smallest normal
      [0x0001, 2 ** -24], // smallest subnormal
      [0x03ff, 1023 * 2 ** -24], // largest subnormal
      [0x8001, -(2 ** -24)],
      [0x7c00, Infinity],
      [0xfc00, -Infinity],
    ];
    const got = f16ToF32(Uint16Array.from(cases.map((c) => c[0])));
    cases.forEach(([, want], i) => expect(got[i]).toBe(want));
    const special = f16ToF32(Uint16Array.from([0x8000, 0x7e00, 0x7c01, 0xfe00]));
    expect(Object.is(special[0], -0)).toBe(true);
    expect([1, 2, 3].every((i) => Number.isNaN(special[i]))).toBe(true);
  });

  it('maps the positive finite F16 patterns to strictly increasing values, negatives mirrored', () => {
    const pos = f16ToF32(Uint16Array.from({ length: 0x7c00 }, (_, i) => i));
    for (let i = 1; i < pos.length; i++) expect(pos[i] > pos[i - 1]).toBe(true);
    const neg = f16ToF32(Uint16Array.from({ length: 0x7c00 }, (_, i) => i | 0x8000));
    for (let i = 0; i < pos.length; i++) if (neg[i] !== -pos[i]) throw new Error(`0x${(i | 0x8000).toString(16)}`);
  });

  it('converts BF16 bit patterns exactly, including subnormals, infinities and NaN', () => {
    const got = bf16ToF32(Uint16Array.from([0x3f80, 0xc000, 0x4049, 0x0001, 0x8000, 0x7f80, 0xff80, 0x7fc0]));
    expect(got[0]).toBe(1);
    expect(got[1]).toBe(-2);
    expect(got[2]).toBe(3.140625);
    expect(got[3]).toBe(2 ** -133); // float32 subnormal
    expect(Object.is(got[4], -0)).toBe(true);
    expect(got[5]).toBe(Infinity);
    expect(got[6]).toBe(-Infinity);
    expect(Number.isNaN(got[7])).toBe(true);
  });

  it('getF32 converts F16, BF16 and F64 tensors from a file', () => {
    const f64 = new Uint8Array(Float64Array.from([1.5, -2.25, 1e300]).buffer);
    const data = new Uint8Array(4 + 4 + 24);
    data.set(u16bytes([0x3c00, 0x0001]), 0);
    data.set(u16bytes([0x3f80, 0x7fc0]), 4);
    data.set(f64, 8);
    const header = {
      h: { dtype: 'F16', shape: [2], data_offsets: [0, 4] },
      b: { dtype: 'BF16', shape: [2], data_offsets: [4, 8] },
      d: { dtype: 'F64', shape: [3], data_offsets: [8, 32] },
    };
    const st = parseSafetensors(rawFile(header, data));
    expect(Array.from(st.getF32('h'))).toEqual([1, 2 ** -24]);
    const b = st.getF32('b');
    expect(b[0]).toBe(1);
    expect(Number.isNaN(b[1])).toBe(true);
    expect(Array.from(st.getF32('d'))).toEqual([1.5, -2.25, Infinity]);
  });
});

describe.skipIf(!haveShared)('the real stories260K checkpoint', () => {
  it('parses every tensor and reads the same floats as a direct byte read', () => {
    const bytes = new Uint8Array(readFileSync(STORIES));
    const st = parseSafetensors(bytes);
    expect(st.tensors.size).toBe(48);
    const emb = st.tensors.get('model.embed_tokens.weight')!;
    expect(emb).toMatchObject({ dtype: 'F32', shape: [512, 64] });
    const values = st.getF32('model.embed_tokens.weight');
    expect(values.length).toBe(512 * 64);
    const headerLen = Number(new DataView(bytes.buffer, bytes.byteOffset).getBigUint64(0, true));
    const buf = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    for (const i of [0, 1, 4095, 512 * 64 - 1]) {
      expect(values[i]).toBe(buf.readFloatLE(8 + headerLen + emb.begin + 4 * i));
    }
    for (const name of st.tensors.keys()) expect(st.getF32(name).every(Number.isFinite)).toBe(true);
  });
});

if (!haveShared) console.warn(`skipping stories260K safetensors test: ${STORIES} not found (../shared is absent)`);
