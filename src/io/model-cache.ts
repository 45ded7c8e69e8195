// Where downloaded model files are kept between visits: the browser's Cache Storage (keys are the
// files' URLs) or, for tests and Node, a Map in memory. Besides complete files the cache holds the
// bytes of downloads that were cut off, so that the next attempt (after a dropped connection, an
// abort, or a closed tab) can ask the server for the rest instead of starting over.
//
// A partial download of `key` is stored as
//   `${key}#partial`      JSON: expected size, ETag, Last-Modified, whether the server takes Range
//                         requests, and the byte count of every stored segment, in order
//   `${key}#partial-<i>`  the i-th segment of bytes received
// Segments are appended as the download goes on, so saving progress never rewrites what was saved.

export class ModelCacheError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ModelCacheError';
  }
}

export interface ModelCache {
  get(key: string): Promise<Blob | null>;
  put(key: string, blob: Blob): Promise<void>;
  delete(key: string): Promise<void>;
  keys(): Promise<string[]>;
}

/** A cache that lives as long as the object: for tests, Node, or when storage is unavailable. */
export function memoryModelCache(): ModelCache {
  const entries = new Map<string, Blob>();
  return {
    async get(key) {
      return entries.get(key) ?? null;
    },
    async put(key, blob) {
      entries.set(key, blob);
    },
    async delete(key) {
      entries.delete(key);
    },
    async keys() {
      return [...entries.keys()];
    },
  };
}

// The Cache API matches requests with the URL fragment removed, so "x#partial" and "x" would be
// the same entry. Fragments are therefore moved into a query parameter of our own.
const FRAGMENT_PARAM = '__model_cache_fragment';
const FRAGMENT_PARAM_TAIL = new RegExp(`[?&]${FRAGMENT_PARAM}=([^&#]*)$`);

function cacheUrlOf(key: string, cacheName: string): string {
  const hashAt = key.indexOf('#');
  const base = hashAt < 0 ? key : key.slice(0, hashAt);
  let url: URL;
  try {
    url = new URL(base, (globalThis as { location?: { href: string } }).location?.href);
  } catch {
    throw new ModelCacheError(`Cache Storage "${cacheName}": key "${key}" is not a URL (Cache Storage keys are http or https URLs)`);
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') {
    throw new ModelCacheError(`Cache Storage "${cacheName}": key "${key}" is not an http or https URL`);
  }
  if (hashAt < 0) return url.href;
  const fragment = key.slice(hashAt + 1);
  return `${url.href}${url.search ? '&' : '?'}${FRAGMENT_PARAM}=${encodeURIComponent(fragment)}`;
}

function keyOfCacheUrl(url: string): string {
  const m = FRAGMENT_PARAM_TAIL.exec(url);
  if (!m) return url;
  return `${url.slice(0, m.index)}#${decodeURIComponent(m[1])}`;
}

/** Cache Storage as found on `globalThis.caches`: pages and workers in a secure context. */
export function cacheStorageAvailable(): boolean {
  return typeof (globalThis as { caches?: unknown }).caches === 'object' && (globalThis as { caches?: unknown }).caches !== null;
}

/**
 * The browser's Cache Storage. Keys are absolute http(s) URLs (relative ones are resolved against
 * the page); a "#fragment" is kept distinct from the URL without it.
 */
export function cacheStorageModelCache(name = 'model-files-v1', storage?: CacheStorage): ModelCache {
  const cacheStorage = storage ?? (cacheStorageAvailable() ? (globalThis as { caches: CacheStorage }).caches : undefined);
  if (!cacheStorage) {
    throw new ModelCacheError(
      `Cache Storage is not available here (it needs a page or worker served over https or from localhost); model files cannot be kept between visits`,
    );
  }
  let opened: Promise<Cache> | null = null;
  const open = () => {
    opened ??= cacheStorage.open(name).catch((e: unknown) => {
      opened = null;
      throw new ModelCacheError(`Cache Storage "${name}" could not be opened: ${(e as Error).message ?? String(e)}`);
    });
    return opened;
  };
  return {
    async get(key) {
      const response = await (await open()).match(cacheUrlOf(key, name));
      return response ? response.blob() : null;
    },
    async put(key, blob) {
      const url = cacheUrlOf(key, name);
      const cache = await open();
      try {
        await cache.put(url, new Response(blob, { headers: { 'content-type': blob.type || 'application/octet-stream' } }));
      } catch (e) {
        const err = e as Error;
        const quota = err?.name === 'QuotaExceededError' ? ' (the browser storage quota is used up: free space or delete cached models)' : '';
        throw new ModelCacheError(`Cache Storage "${name}": could not store ${blob.size} bytes for ${key}${quota}: ${err?.message ?? String(e)}`);
      }
    },
    async delete(key) {
      await (await open()).delete(cacheUrlOf(key, name));
    },
    async keys() {
      const requests = await (await open()).keys();
      return requests.map((r) => keyOfCacheUrl(r.url));
    },
  };
}

/** Cache Storage where there is one, else null (Node, insecure pages). */
export function defaultModelCache(): ModelCache | null {
  return cacheStorageAvailable() ? cacheStorageModelCache() : null;
}

// ---------------------------------------------------------------------------------------------
// Partial downloads

/** What a resumed request must match for the stored bytes to still belong to the file. */
export interface PartialDownloadValidators {
  /** The whole file's size, when the server said it. */
  expectedSize: number | null;
  etag: string | null;
  lastModified: string | null;
  /** The server answered with `Accept-Ranges: bytes` or a 206, so a Range request can resume. */
  acceptsRanges: boolean;
}

export interface PartialDownload extends PartialDownloadValidators {
  /** The bytes received so far, from the start of the file. */
  data: Blob;
  received: number;
}

interface PartialDownloadRecord extends PartialDownloadValidators {
  version: 1;
  segments: number[];
}

export function partialDownloadKey(key: string): string {
  return `${key}#partial`;
}

function segmentKey(key: string, index: number): string {
  return `${key}#partial-${index}`;
}

/** True for the cache entries that hold partial downloads (to leave them out of listings). */
export function isPartialDownloadKey(key: string): boolean {
  return /#partial(-\d+)?$/.test(key);
}

async function readRecord(cache: ModelCache, key: string): Promise<PartialDownloadRecord | null> {
  const blob = await cache.get(partialDownloadKey(key));
  if (!blob) return null;
  let value: unknown;
  try {
    value = JSON.parse(await blob.text());
  } catch {
    return null;
  }
  const r = value as Partial<PartialDownloadRecord> | null;
  const sizeOk = (v: unknown) => v === null || (Number.isSafeInteger(v) && (v as number) >= 0);
  const strOk = (v: unknown) => v === null || typeof v === 'string';
  if (
    !r ||
    r.version !== 1 ||
    !Array.isArray(r.segments) ||
    !r.segments.every((n) => Number.isSafeInteger(n) && n > 0) ||
    !sizeOk(r.expectedSize) ||
    !strOk(r.etag) ||
    !strOk(r.lastModified) ||
    typeof r.acceptsRanges !== 'boolean'
  ) {
    return null;
  }
  return r as PartialDownloadRecord;
}

/**
 * The bytes saved for an unfinished download of `key`, or null when there are none. Bookkeeping
 * that does not add up (a segment missing or of the wrong size, e.g. after the browser evicted
 * part of the cache) is deleted and counts as none.
 */
export async function readPartialDownload(cache: ModelCache, key: string): Promise<PartialDownload | null> {
  const record = await readRecord(cache, key);
  if (!record) {
    if (await cache.get(partialDownloadKey(key))) await clearPartialDownload(cache, key);
    return null;
  }
  const parts: Blob[] = [];
  for (let i = 0; i < record.segments.length; i++) {
    const blob = await cache.get(segmentKey(key, i));
    if (!blob || blob.size !== record.segments[i]) {
      await clearPartialDownload(cache, key);
      return null;
    }
    parts.push(blob);
  }
  const received = record.segments.reduce((a, b) => a + b, 0);
  if (record.expectedSize !== null && received > record.expectedSize) {
    await clearPartialDownload(cache, key);
    return null;
  }
  return {
    expectedSize: record.expectedSize,
    etag: record.etag,
    lastModified: record.lastModified,
    acceptsRanges: record.acceptsRanges,
    data: new Blob(parts),
    received,
  };
}

/**
 * Appends bytes that follow those already saved for `key` (the first call starts the record).
 * The segment is written before the record that counts it, so an interruption between the two
 * leaves the record consistent.
 */
export async function appendPartialDownload(cache: ModelCache, key: string, validators: PartialDownloadValidators, bytes: Blob): Promise<void> {
  const existing = await readRecord(cache, key);
  const segments = existing ? [...existing.segments] : [];
  if (bytes.size > 0) {
    await cache.put(segmentKey(key, segments.length), bytes);
    segments.push(bytes.size);
  }
  const record: PartialDownloadRecord = {
    version: 1,
    expectedSize: validators.expectedSize,
    etag: validators.etag,
    lastModified: validators.lastModified,
    acceptsRanges: validators.acceptsRanges,
    segments,
  };
  await cache.put(partialDownloadKey(key), new Blob([JSON.stringify(record)], { type: 'application/json' }));
}

/** Deletes every entry of the partial download of `key`, including segments no record counts. */
export async function clearPartialDownload(cache: ModelCache, key: string): Promise<void> {
  const prefix = `${key}#partial-`;
  const mine = (await cache.keys()).filter((k) => k.startsWith(prefix) && /^\d+$/.test(k.slice(prefix.length)));
  await cache.delete(partialDownloadKey(key));
  for (const k of mine) await cache.delete(k);
}
