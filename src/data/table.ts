// Reading the user's training data into a table of strings: CSV, TSV, JSON Lines, a JSON array of
// objects, or plain text. What cannot be read at all throws DataError; what is merely odd (a row
// with too few cells, an empty cell, a broken JSON line) is kept as a TableProblem with its row
// number so the UI can show it.

import Papa from 'papaparse';

export class DataError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'DataError';
  }
}

export type TableProblemKind = 'field-count' | 'empty-cell' | 'bad-json' | 'bad-quotes' | 'empty-header';

export interface TableProblem {
  /** 1-based as in a spreadsheet: the header is row 1 (for JSON Lines and text: the line number). */
  row: number;
  kind: TableProblemKind;
  column?: string;
  message: string;
}

export type TableFormat = 'csv' | 'tsv' | 'delimited' | 'jsonl' | 'json' | 'text';

export interface Table {
  fileName: string;
  format: TableFormat;
  /** The field separator of delimited formats. */
  delimiter?: string;
  columns: string[];
  rows: Record<string, string>[];
  /** rowNumbers[i] is rows[i]'s row number (blank lines are dropped but still counted). */
  rowNumbers: number[];
  /** The first MAX_STORED_PROBLEMS problems; problemCounts has the totals. */
  problems: TableProblem[];
  problemCounts: Record<TableProblemKind, number>;
}

export const MAX_STORED_PROBLEMS = 1000;

const DELIMITER_NAMES: Record<string, string> = { ',': 'commas', '\t': 'tabs', ';': 'semicolons', '|': 'pipes (|)' };
const CANDIDATE_DELIMITERS = [',', '\t', ';', '|'];

// ---------------------------------------------------------------------------------------------
// Bytes → text

/** Offset of the first byte that is not part of a well-formed UTF-8 sequence, or -1. */
export function findInvalidUtf8(bytes: Uint8Array): number {
  let i = 0;
  const n = bytes.length;
  while (i < n) {
    const b = bytes[i];
    if (b < 0x80) {
      i++;
      continue;
    }
    let len: number;
    let min: number; // smallest code point for this length (rejects overlong forms)
    if (b >= 0xc2 && b <= 0xdf) [len, min] = [2, 0x80];
    else if (b >= 0xe0 && b <= 0xef) [len, min] = [3, 0x800];
    else if (b >= 0xf0 && b <= 0xf4) [len, min] = [4, 0x10000];
    else return i;
    if (i + len > n) return i;
    let cp = b & (0xff >> (len + 1));
    for (let k = 1; k < len; k++) {
      const c = bytes[i + k];
      if ((c & 0xc0) !== 0x80) return i;
      cp = (cp << 6) | (c & 0x3f);
    }
    if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return i;
    i += len;
  }
  return -1;
}

/** Recognizes files people drop by mistake, from their first bytes. */
function describeBinary(bytes: Uint8Array): string | null {
  const starts = (...sig: number[]) => sig.every((v, i) => bytes[i] === v);
  if (starts(0x50, 0x4b, 0x03, 0x04)) return 'a ZIP archive (an .xlsx workbook is one): export the sheet as CSV';
  if (starts(0xd0, 0xcf, 0x11, 0xe0)) return 'an old Excel/Office file: export the sheet as CSV';
  if (starts(0x50, 0x41, 0x52, 0x31)) return 'a Parquet file: convert it to CSV or JSON Lines';
  if (starts(0x1f, 0x8b)) return 'gzip-compressed: decompress it first';
  if (starts(0xff, 0xfe) || starts(0xfe, 0xff)) return 'UTF-16 text: save it as UTF-8';
  return null;
}

/** Strict UTF-8 decoding that says where the first bad byte is. Strips a UTF-8 BOM. */
export function decodeTableBytes(bytes: Uint8Array, fileName: string): string {
  const binary = describeBinary(bytes);
  if (binary) throw new DataError(`${fileName}: is not a text table; it looks like ${binary}.`);
  let text: string;
  try {
    text = new TextDecoder('utf-8', { fatal: true }).decode(bytes);
  } catch {
    const at = findInvalidUtf8(bytes);
    const line = lineOfOffset(bytes, at);
    throw new DataError(
      `${fileName}: is not UTF-8 text: byte 0x${bytes[at].toString(16).padStart(2, '0')} at offset ${at} (line ${line}) is invalid. ` +
        'Save the file as UTF-8 (CSV UTF-8 in Excel).',
    );
  }
  const nul = text.indexOf('\0');
  if (nul >= 0) throw new DataError(`${fileName}: contains a NUL byte (character ${nul}); it looks like a binary file, not a text table.`);
  return text;
}

function lineOfOffset(bytes: Uint8Array, offset: number): number {
  let line = 1;
  for (let i = 0; i < offset; i++) if (bytes[i] === 0x0a) line++;
  return line;
}

// ---------------------------------------------------------------------------------------------
// Format detection

type Format = { kind: 'jsonl' } | { kind: 'json' } | { kind: 'text' } | { kind: 'delimited'; delimiter: string; byExtension: boolean };

function extensionOf(fileName: string): string {
  const m = /\.([^./\\]+)$/.exec(fileName);
  return m ? m[1].toLowerCase() : '';
}

function detectFormat(fileName: string, sample: string): Format {
  const ext = extensionOf(fileName);
  const first = sample.trimStart()[0];
  if (ext === 'jsonl' || ext === 'ndjson') return { kind: 'jsonl' };
  if (ext === 'json') return first === '[' ? { kind: 'json' } : { kind: 'jsonl' };
  if (ext === 'csv') return { kind: 'delimited', delimiter: ',', byExtension: true };
  if (ext === 'tsv' || ext === 'tab') return { kind: 'delimited', delimiter: '\t', byExtension: true };
  if (ext === 'txt' || ext === 'text' || ext === 'md') return { kind: 'text' };
  if (first === '{') return { kind: 'jsonl' };
  if (first === '[') return { kind: 'json' };
  return { kind: 'delimited', delimiter: sniffDelimiter(sample), byExtension: false };
}

/**
 * The candidate that splits the first rows into the most fields, the same number in every row
 * (quotes respected). Falls back to comma.
 */
function sniffDelimiter(sample: string): string {
  let best = ',';
  let bestFields = 1;
  for (const d of CANDIDATE_DELIMITERS) {
    const rows = Papa.parse<string[]>(sample, { delimiter: d, preview: 20, skipEmptyLines: true }).data;
    // The sample may cut the last row short: ignore it when there are others.
    const check = rows.length > 2 ? rows.slice(0, -1) : rows;
    const fields = check[0]?.length ?? 0;
    if (fields > bestFields && check.every((r) => r.length === fields)) {
      best = d;
      bestFields = fields;
    }
  }
  return best;
}

// ---------------------------------------------------------------------------------------------
// Building a table from records

class TableBuilder {
  readonly rows: Record<string, string>[] = [];
  readonly rowNumbers: number[] = [];
  readonly problems: TableProblem[] = [];
  readonly problemCounts: Record<TableProblemKind, number> = {
    'field-count': 0,
    'empty-cell': 0,
    'bad-json': 0,
    'bad-quotes': 0,
    'empty-header': 0,
  };

  constructor(readonly fileName: string) {}

  problem(p: TableProblem) {
    this.problemCounts[p.kind]++;
    if (this.problems.length < MAX_STORED_PROBLEMS) this.problems.push(p);
  }

  /** Adds a row, recording its empty cells. */
  add(row: Record<string, string>, rowNumber: number, columns: string[]) {
    for (const c of columns) {
      if (row[c].trim() === '') this.problem({ row: rowNumber, kind: 'empty-cell', column: c, message: `row ${rowNumber}: "${c}" is empty` });
    }
    this.rows.push(row);
    this.rowNumbers.push(rowNumber);
  }

  finish(format: TableFormat, columns: string[], delimiter?: string): Table {
    if (this.rows.length === 0) throw new DataError(`${this.fileName}: has a header (${columns.join(', ')}) but no data rows.`);
    this.problems.sort((a, b) => a.row - b.row);
    return {
      fileName: this.fileName,
      format,
      ...(delimiter !== undefined ? { delimiter } : {}),
      columns,
      rows: this.rows,
      rowNumbers: this.rowNumbers,
      problems: this.problems,
      problemCounts: this.problemCounts,
    };
  }
}

/** Header checks shared by the text and the streaming paths. */
function readHeader(fileName: string, cells: string[], builder: TableBuilder): string[] {
  const names = cells.map((c) => c.trim());
  if (names.every((n) => n === '')) throw new DataError(`${fileName}: has no header: row 1 must hold the column names.`);
  if (names.length >= 2 && names.every((n) => /^[-+]?\d+(\.\d+)?$/.test(n))) {
    throw new DataError(`${fileName}: row 1 (${names.join(', ')}) looks like data, not column names; add a header row with column names.`);
  }
  const columns = names.map((n, i) => {
    if (n !== '') return n;
    const generated = `column_${i + 1}`;
    builder.problem({ row: 1, kind: 'empty-header', column: generated, message: `row 1: column ${i + 1} has no name; calling it "${generated}"` });
    return generated;
  });
  const firstAt = new Map<string, number>();
  const duplicates: string[] = [];
  columns.forEach((c, i) => {
    if (firstAt.has(c)) duplicates.push(`"${c}" (columns ${firstAt.get(c)! + 1} and ${i + 1})`);
    else firstAt.set(c, i);
  });
  if (duplicates.length > 0) throw new DataError(`${fileName}: duplicate column names: ${duplicates.join(', ')}. Rename them so each is unique.`);
  return columns;
}

/**
 * Turns parsed records (header first) into rows. `firstIndex` is the record index of records[0]
 * so the streaming path can call this chunk by chunk.
 */
function addDelimitedRecords(builder: TableBuilder, columns: string[], records: string[][], firstIndex: number) {
  for (let i = 0; i < records.length; i++) {
    const cells = records[i];
    const rowNumber = firstIndex + i + 1;
    if (cells.every((c) => c.trim() === '')) continue; // blank line, or a row of empty separators
    if (cells.length !== columns.length) {
      const what =
        cells.length < columns.length
          ? `the missing ${cells.length === columns.length - 1 ? 'cell is' : 'cells are'} treated as empty`
          : `the extra ${cells.length === columns.length + 1 ? 'cell is' : 'cells are'} ignored (an unquoted separator inside a value?)`;
      builder.problem({
        row: rowNumber,
        kind: 'field-count',
        message: `row ${rowNumber}: has ${cells.length} ${cells.length === 1 ? 'cell' : 'cells'} but the header has ${columns.length}; ${what}`,
      });
    }
    const row: Record<string, string> = {};
    columns.forEach((c, k) => (row[c] = cells[k] ?? ''));
    builder.add(row, rowNumber, columns);
  }
}

function recordQuoteErrors(builder: TableBuilder, errors: Papa.ParseError[], indexOffset: number) {
  for (const e of errors) {
    if (e.type !== 'Quotes' || e.row === undefined) continue;
    const rowNumber = indexOffset + e.row + 1;
    const message =
      e.code === 'MissingQuotes'
        ? `row ${rowNumber}: a quoted value is never closed; everything after it up to the end of the file was read into it`
        : `row ${rowNumber}: a quote inside a value is not escaped (write "" for a literal quote)`;
    builder.problem({ row: rowNumber, kind: 'bad-quotes', message });
  }
}

/** One column while the header contains another candidate delimiter in most rows: wrong separator. */
function checkSingleColumn(fileName: string, delimiter: string, header: string, samples: string[]) {
  for (const d of CANDIDATE_DELIMITERS) {
    if (d === delimiter || !header.includes(d)) continue;
    const look = samples.slice(0, 20);
    const hits = look.filter((s) => s.includes(d)).length;
    if (look.length === 0 || hits >= 0.8 * look.length) {
      const fix = d === '\t' ? 'rename it to .tsv' : `save it again with ${DELIMITER_NAMES[delimiter]} as the separator`;
      throw new DataError(
        `${fileName}: found a single column "${header.slice(0, 60)}" but the file looks separated by ${DELIMITER_NAMES[d]}, not ${DELIMITER_NAMES[delimiter]}; ${fix}.`,
      );
    }
  }
}

const formatOfDelimiter = (d: string, byExtension: boolean): TableFormat => (!byExtension ? 'delimited' : d === '\t' ? 'tsv' : 'csv');

function parseDelimited(text: string, fileName: string, delimiter: string, byExtension: boolean): Table {
  const result = Papa.parse<string[]>(text, { delimiter, skipEmptyLines: false });
  const records = result.data;
  const builder = new TableBuilder(fileName);
  const headerIndex = records.findIndex((r) => r.some((c) => c.trim() !== ''));
  if (headerIndex < 0) throw new DataError(`${fileName}: is empty.`);
  if (headerIndex > 0) throw new DataError(`${fileName}: has no header: row 1 is blank; the column names must be on row 1.`);
  const columns = readHeader(fileName, records[0], builder);
  if (columns.length === 1) {
    checkSingleColumn(fileName, delimiter, records[0].join(delimiter), records.slice(1).map((r) => r.join(delimiter)).filter((s) => s.trim() !== ''));
  }
  recordQuoteErrors(builder, result.errors, 0);
  addDelimitedRecords(builder, columns, records.slice(1), 1);
  return builder.finish(formatOfDelimiter(delimiter, byExtension), columns, delimiter);
}

// ---------------------------------------------------------------------------------------------
// JSON formats and plain text

function cellText(v: unknown): string {
  if (v === null || v === undefined) return '';
  if (typeof v === 'string') return v;
  if (typeof v === 'number' || typeof v === 'boolean') return String(v);
  return JSON.stringify(v);
}

/** Collects JSON objects (with the row number each came from) into a table; columns in order of first appearance. */
class JsonRows {
  readonly objects: { obj: Record<string, unknown>; row: number }[] = [];
  readonly columns: string[] = [];
  private readonly known = new Set<string>();

  constructor(readonly builder: TableBuilder) {}

  add(value: unknown, row: number, what: string) {
    if (typeof value !== 'object' || value === null || Array.isArray(value)) {
      this.builder.problem({ row, kind: 'bad-json', message: `${what} ${row}: is ${Array.isArray(value) ? 'an array' : JSON.stringify(value)?.slice(0, 40)}, not an object; skipped` });
      return;
    }
    const obj = value as Record<string, unknown>;
    for (const k of Object.keys(obj)) {
      if (!this.known.has(k)) {
        this.known.add(k);
        this.columns.push(k);
      }
    }
    this.objects.push({ obj, row });
  }

  finish(format: TableFormat): Table {
    const { builder, columns } = this;
    if (this.objects.length === 0) {
      const first = builder.problems[0];
      throw new DataError(`${builder.fileName}: has no JSON objects to read${first ? ` (${first.message})` : ''}.`);
    }
    if (columns.length === 0) throw new DataError(`${builder.fileName}: the JSON objects have no fields.`);
    for (const { obj, row } of this.objects) {
      const r: Record<string, string> = {};
      for (const c of columns) r[c] = cellText(obj[c]);
      builder.add(r, row, columns);
    }
    return builder.finish(format, columns);
  }
}

function addJsonLines(rows: JsonRows, lines: string[], firstLine: number) {
  lines.forEach((line, i) => {
    const lineNumber = firstLine + i;
    if (line.trim() === '') return;
    let value: unknown;
    try {
      value = JSON.parse(line);
    } catch (e) {
      rows.builder.problem({ row: lineNumber, kind: 'bad-json', message: `line ${lineNumber}: is not valid JSON (${(e as Error).message}); skipped` });
      return;
    }
    rows.add(value, lineNumber, 'line');
  });
}

function parseJsonArray(text: string, fileName: string): Table {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (e) {
    throw new DataError(`${fileName}: is not valid JSON (${(e as Error).message}).`);
  }
  if (!Array.isArray(value)) throw new DataError(`${fileName}: should hold a JSON array of objects (or use JSON Lines: one object per line).`);
  const rows = new JsonRows(new TableBuilder(fileName));
  value.forEach((v, i) => rows.add(v, i + 1, 'item'));
  return rows.finish('json');
}

/**
 * Plain text becomes one "text" column: documents separated by <|endoftext|> lines when there are
 * any, else by blank lines, else one per line. Row numbers are the line each document starts on.
 */
function parsePlainText(text: string, fileName: string): Table {
  const lines = text.split(/\r?\n/);
  const bySeparator = lines.some((l) => l.trim() === '<|endoftext|>');
  const byBlank = !bySeparator && lines.some((l, i) => l.trim() === '' && i > 0 && i < lines.length - 1 && lines[i - 1].trim() !== '');
  const builder = new TableBuilder(fileName);
  let doc: string[] = [];
  let start = 0;
  const flush = () => {
    const body = doc.join('\n').trim();
    if (body !== '') builder.add({ text: body }, start, ['text']);
    doc = [];
  };
  lines.forEach((line, i) => {
    const isBreak = bySeparator ? line.trim() === '<|endoftext|>' : byBlank ? line.trim() === '' : true;
    if (bySeparator || byBlank) {
      if (isBreak) return flush();
      if (doc.length === 0) start = i + 1;
      doc.push(line);
    } else {
      start = i + 1;
      doc = [line];
      flush();
    }
  });
  flush();
  return builder.finish('text', ['text']);
}

// ---------------------------------------------------------------------------------------------
// Entry points

export function parseTableText(text: string, fileName: string): Table {
  if (text.charCodeAt(0) === 0xfeff) text = text.slice(1);
  if (text.trim() === '') throw new DataError(`${fileName}: is empty.`);
  const format = detectFormat(fileName, text.slice(0, 65536));
  switch (format.kind) {
    case 'jsonl': {
      const rows = new JsonRows(new TableBuilder(fileName));
      addJsonLines(rows, text.split(/\r?\n/), 1);
      return rows.finish('jsonl');
    }
    case 'json':
      return parseJsonArray(text, fileName);
    case 'text':
      return parsePlainText(text, fileName);
    case 'delimited':
      return parseDelimited(text, fileName, format.delimiter, format.byExtension);
  }
}

/** decodeTableBytes + parseTableText. */
export function parseTableBytes(bytes: Uint8Array, fileName: string): Table {
  return parseTableText(decodeTableBytes(bytes, fileName), fileName);
}

export interface TableStreamOptions {
  /** Defaults to the File's name. */
  fileName?: string;
  /** Bytes read per chunk (default 4 MiB). */
  chunkBytes?: number;
}

/**
 * Parses a large file without holding its text in memory: the Blob is read in chunks, decoded as
 * strict UTF-8 and handed to Papa's chunked parser (through the Node-style stream interface Papa
 * accepts, which we implement over Blob.slice, so the same code runs in a page, a worker and Node).
 * JSON arrays and plain text are read whole.
 */
export async function parseTableStream(
  file: Blob,
  onProgress?: (fractionDone: number) => void,
  options: TableStreamOptions = {},
): Promise<Table> {
  const name = options.fileName ?? (file as File).name ?? 'data';
  const chunkBytes = options.chunkBytes ?? 4 << 20;
  const size = file.size;
  if (size === 0) throw new DataError(`${name}: is empty.`);
  const head = new Uint8Array(await file.slice(0, 65536).arrayBuffer());
  const binary = describeBinary(head);
  if (binary) throw new DataError(`${name}: is not a text table; it looks like ${binary}.`);

  // Decodes the file chunk by chunk; on a bad byte, re-reads the file to report its exact offset.
  const decoder = new TextDecoder('utf-8', { fatal: true });
  let charsSeen = 0;
  const decodeChunk = async (bytes: Uint8Array, last: boolean): Promise<string> => {
    let text: string;
    try {
      text = decoder.decode(bytes, { stream: !last });
    } catch {
      decodeTableBytes(new Uint8Array(await file.arrayBuffer()), name);
      throw new DataError(`${name}: is not UTF-8 text.`);
    }
    const nul = text.indexOf('\0');
    if (nul >= 0) throw new DataError(`${name}: contains a NUL byte (character ${charsSeen + nul}); it looks like a binary file, not a text table.`);
    charsSeen += text.length;
    return text;
  };

  const sampleText = new TextDecoder('utf-8').decode(head).replace(/^\uFEFF/, '');
  const format = detectFormat(name, sampleText);
  if (format.kind === 'json' || format.kind === 'text') {
    const text = await decodeChunk(new Uint8Array(await file.arrayBuffer()), true);
    onProgress?.(1);
    return parseTableText(text, name);
  }

  // Chunks of text in file order, with progress reported as bytes are read.
  async function* textChunks(): AsyncGenerator<string> {
    for (let offset = 0; offset < size; offset += chunkBytes) {
      const end = Math.min(size, offset + chunkBytes);
      const text = await decodeChunk(new Uint8Array(await file.slice(offset, end).arrayBuffer()), end === size);
      yield text;
      onProgress?.(end / size);
    }
  }

  if (format.kind === 'jsonl') {
    const rows = new JsonRows(new TableBuilder(name));
    let carry = '';
    let nextLine = 1;
    for await (const text of textChunks()) {
      const lines = (carry + text).split('\n');
      carry = lines.pop()!;
      addJsonLines(rows, lines.map((l) => l.replace(/\r$/, '')), nextLine);
      nextLine += lines.length;
    }
    addJsonLines(rows, [carry.replace(/\r$/, '')], nextLine);
    onProgress?.(1);
    return rows.finish('jsonl');
  }

  const { delimiter, byExtension } = format;
  const builder = new TableBuilder(name);
  let columns: string[] | null = null;
  let headerCells: string[] = [];
  const singleColumnSamples: string[] = [];
  let recordIndex = 0; // index of the next record Papa hands us; the header is record 0

  await new Promise<void>((resolve, reject) => {
    const stream = new ChunkStream(textChunks());
    const fail = (e: unknown) => {
      stream.stop();
      reject(e);
    };
    // Typed as File only to satisfy Papa's overloads; Papa recognizes the stream by duck typing.
    Papa.parse<string[]>(stream as unknown as File, {
      delimiter,
      skipEmptyLines: false,
      chunk(results, parser) {
        try {
          let records = results.data;
          const base = recordIndex;
          recordIndex += records.length;
          recordQuoteErrors(builder, results.errors, base);
          if (columns === null) {
            const first = records.findIndex((r) => r.some((c) => c.trim() !== ''));
            if (first < 0) return; // only blank lines so far: empty file, or a header further down
            if (base + first > 0) throw new DataError(`${name}: has no header: row 1 is blank; the column names must be on row 1.`);
            headerCells = records[0];
            columns = readHeader(name, headerCells, builder);
            records = records.slice(1);
            addDelimitedRecords(builder, columns, records, base + 1);
          } else {
            addDelimitedRecords(builder, columns, records, base);
          }
          if (columns.length === 1 && singleColumnSamples.length < 20) {
            for (const r of records) if (r.join('').trim() !== '' && singleColumnSamples.length < 20) singleColumnSamples.push(r.join(delimiter));
          }
        } catch (e) {
          fail(e); // before abort(): aborting calls complete, which would resolve first
          parser.abort();
        }
      },
      complete: () => resolve(),
      error: (e: Error) => fail(e),
    });
  });

  if (columns === null) throw new DataError(`${name}: is empty.`);
  if ((columns as string[]).length === 1) checkSingleColumn(name, delimiter, headerCells.join(delimiter), singleColumnSamples);
  onProgress?.(1);
  return builder.finish(formatOfDelimiter(delimiter, byExtension), columns, delimiter);
}

/**
 * The minimal Node-style readable stream Papa's ReadableStreamStreamer consumes (readable, read,
 * on/removeListener for data/end/error, pause/resume), fed from an async iterator of text chunks.
 */
class ChunkStream {
  readonly readable = true;
  private listeners: Record<string, ((arg?: unknown) => void)[]> = { data: [], end: [], error: [] };
  private paused = false;
  private stopped = false;
  private resumeWaiter: (() => void) | null = null;

  constructor(private readonly source: AsyncIterator<string>) {
    // Papa attaches its listeners synchronously inside Papa.parse; start pumping after that.
    queueMicrotask(() => void this.pump());
  }

  read(): null {
    return null;
  }

  on(event: string, fn: (arg?: unknown) => void): this {
    (this.listeners[event] ??= []).push(fn);
    return this;
  }

  removeListener(event: string, fn: (arg?: unknown) => void): this {
    this.listeners[event] = (this.listeners[event] ?? []).filter((f) => f !== fn);
    return this;
  }

  pause() {
    this.paused = true;
  }

  resume() {
    this.paused = false;
    this.resumeWaiter?.();
    this.resumeWaiter = null;
  }

  stop() {
    this.stopped = true;
  }

  private emit(event: string, arg?: unknown) {
    for (const fn of [...(this.listeners[event] ?? [])]) fn(arg);
  }

  private async pump() {
    try {
      for (;;) {
        if (this.paused) await new Promise<void>((r) => (this.resumeWaiter = r));
        if (this.stopped) return;
        const next = await this.source.next();
        if (this.stopped) return;
        if (next.done) break;
        this.emit('data', next.value);
      }
      this.emit('end');
    } catch (e) {
      this.emit('error', e);
    }
  }
}
