// Downloads a model repository from the Hugging Face hub (or a server with the same URL layout:
// `${endpoint}/${repo}/resolve/${revision}/${file}`) into a ModelFiles that loadHfModel reads.
//
// - Files come from the ModelCache when they are there; a repository downloaded once loads again
//   without a single request (the list of its files is cached too, as a manifest).
// - Otherwise each file is streamed, with progress. Bytes received are saved in the cache every
//   `checkpointBytes` and whenever the download stops (dropped connection, abort, error), so a
//   later attempt, even after the tab was closed, resumes with `Range: bytes=N-` where the server
//   takes Range requests (If-Range and the ETag guard against a file that changed meanwhile).
// - Everything a user can get wrong (repo id, revision, private or gated models, being offline)
//   becomes a HubError that names the URL and says what to check.

import {
  appendPartialDownload,
  clearPartialDownload,
  defaultModelCache,
  isPartialDownloadKey,
  readPartialDownload,
  type ModelCache,
  type PartialDownloadValidators,
} from './model-cache';
import { modelFilesFromMap, type ModelFiles } from './model-files';

export class HubError extends Error {
  /** The URL that failed, when one did. */
  readonly url: string | null;
  /** The HTTP status the server answered, when it answered. */
  readonly status: number | null;
  constructor(message: string, details: { url?: string; status?: number; cause?: unknown } = {}) {
    super(message, details.cause === undefined ? undefined : { cause: details.cause });
    this.name = 'HubError';
    this.url = details.url ?? null;
    this.status = details.status ?? null;
  }
}

export interface HubProgress {
  /** The file being downloaded, relative to the repository ("model-00001-of-00002.safetensors"). */
  file: string;
  fileLoaded: number;
  /** null while the file's size is unknown. */
  fileTotal: number | null;
  /** Bytes of all files so far. Goes back when a server without Range support restarts a file. */
  loaded: number;
  /** null while the size of some file is unknown. */
  total: number | null;
  /** The file came from the cache, not the network. */
  fromCache: boolean;
}

export interface HubOptions {
  /** Default 'https://huggingface.co'. */
  endpoint?: string;
  /** A branch, tag or commit; default 'main'. */
  revision?: string;
  /** Default: Cache Storage where there is one (pages, workers), else none; null for none. */
  cache?: ModelCache | null;
  onProgress?: (p: HubProgress) => void;
  signal?: AbortSignal;
  fetchImpl?: typeof fetch;
  /** Attempts after a failure (network error, dropped connection, 5xx, 429); default 3. */
  retries?: number;
  /** An access token for private and gated repositories, sent as `Authorization: Bearer`. */
  token?: string;
  /** Wait before the first retry, doubled for each further one; default 1000. */
  retryDelayMs?: number;
  /** Bytes received between two saves of a partial download to the cache; default 32 MiB. */
  checkpointBytes?: number;
  /** Problems that do not stop the download (the cache refusing a write); default console.warn. */
  onWarning?: (message: string) => void;
}

const DEFAULT_ENDPOINT = 'https://huggingface.co';
const DEFAULT_REVISION = 'main';
const DEFAULT_RETRIES = 3;
const DEFAULT_RETRY_DELAY_MS = 1000;
const MAX_RETRY_DELAY_MS = 30_000;
const DEFAULT_CHECKPOINT_BYTES = 32 * 1024 * 1024;

const CONFIG = 'config.json';
const TOKENIZER = 'tokenizer.json';
const SINGLE_WEIGHTS = 'model.safetensors';
const WEIGHTS_INDEX = 'model.safetensors.index.json';
/** Fetched when the repository has them; a 404 skips them. */
const OPTIONAL_FILES = ['tokenizer_config.json', 'special_tokens_map.json', 'generation_config.json', 'chat_template.jinja'];

const REPO_ID_EXAMPLE = 'HuggingFaceTB/SmolLM2-135M';
const REPO_PART = /^[A-Za-z0-9_](?:[A-Za-z0-9_.-]*[A-Za-z0-9_])?$/;
const MAX_REPO_ID_LENGTH = 96;

/** Throws a HubError unless `repo` is a hub repository id, "owner/name". */
export function validateRepoId(repo: string): void {
  const bad = (why: string): never => {
    throw new HubError(`"${repo}" is not a model repository id: ${why}. Expected "owner/name", e.g. "${REPO_ID_EXAMPLE}".`);
  };
  if (typeof repo !== 'string' || repo.length === 0) bad('it is empty');
  if (/^https?:\/\//i.test(repo)) {
    const path = repo.replace(/^https?:\/\/[^/]+\//i, '').split('/').slice(0, 2).join('/');
    bad(`give the id, not the URL${path.includes('/') ? ` (here probably "${path}")` : ''}`);
  }
  if (/\s/.test(repo)) bad('it contains spaces');
  const parts = repo.split('/');
  if (parts.length !== 2) bad(parts.length === 1 ? 'the owner is missing' : 'it has more than one "/"');
  if (repo.length > MAX_REPO_ID_LENGTH) bad(`it is longer than ${MAX_REPO_ID_LENGTH} characters`);
  for (const part of parts) {
    if (!REPO_PART.test(part)) {
      bad(`"${part}" may only hold letters, digits, "-", "_" and ".", and must not start or end with "-" or "."`);
    }
    if (part.includes('--') || part.includes('..')) bad(`"${part}" contains "--" or ".."`);
  }
  if (repo.endsWith('.git')) bad('it ends with ".git"');
}

interface Context {
  repo: string;
  revision: string;
  /** `${endpoint}/${repo}/resolve/${revision}/` */
  base: string;
  cache: ModelCache | null;
  fetchImpl: typeof fetch;
  retries: number;
  retryDelayMs: number;
  checkpointBytes: number;
  token: string | null;
  signal: AbortSignal | undefined;
  warn: (message: string) => void;
}

function contextOf(repo: string, opts: HubOptions): Context {
  validateRepoId(repo);
  const endpoint = (opts.endpoint ?? DEFAULT_ENDPOINT).replace(/\/+$/, '');
  if (endpoint.length === 0) throw new HubError(`The hub endpoint is empty; use e.g. "${DEFAULT_ENDPOINT}"`);
  const revision = opts.revision ?? DEFAULT_REVISION;
  if (revision.length === 0 || /\s/.test(revision)) {
    throw new HubError(`"${revision}" is not a revision: give a branch, tag or commit hash, e.g. "${DEFAULT_REVISION}"`);
  }
  const retries = opts.retries ?? DEFAULT_RETRIES;
  if (!Number.isInteger(retries) || retries < 0) throw new HubError(`retries must be a whole number ≥ 0, got ${retries}`);
  const checkpointBytes = opts.checkpointBytes ?? DEFAULT_CHECKPOINT_BYTES;
  if (!(checkpointBytes > 0)) throw new HubError(`checkpointBytes must be positive, got ${checkpointBytes}`);
  // Called as a plain function: a browser's fetch throws "Illegal invocation" when called as a
  // method of another object (opts.fetchImpl(...)).
  const fetchImpl = opts.fetchImpl ?? ((input: RequestInfo | URL, init?: RequestInit) => globalThis.fetch(input, init));
  return {
    repo,
    revision,
    base: `${endpoint}/${repo}/resolve/${encodeURIComponent(revision)}/`,
    cache: opts.cache === undefined ? defaultModelCache() : opts.cache,
    fetchImpl,
    retries,
    retryDelayMs: opts.retryDelayMs ?? DEFAULT_RETRY_DELAY_MS,
    checkpointBytes,
    token: opts.token ? opts.token : null,
    signal: opts.signal,
    warn: opts.onWarning ?? ((message) => console.warn(message)),
  };
}

/** The URL a file of a repository is downloaded from. */
export function hubFileUrl(repo: string, path: string, opts: Pick<HubOptions, 'endpoint' | 'revision'> = {}): string {
  return fileUrl(contextOf(repo, { ...opts, cache: null }), path);
}

function fileUrl(ctx: Context, path: string): string {
  return ctx.base + path.split('/').map(encodeURIComponent).join('/');
}

function manifestKey(ctx: Context): string {
  return `${ctx.base}#manifest`;
}

// ---------------------------------------------------------------------------------------------
// Errors and retries

function abortError(ctx: Context, what: string): DOMException {
  return new DOMException(`Downloading ${ctx.repo} was aborted (${what})`, 'AbortError');
}

function throwIfAborted(ctx: Context, what: string): void {
  if (ctx.signal?.aborted) throw abortError(ctx, what);
}

const RETRYABLE_STATUSES = new Set([408, 425, 429, 500, 502, 503, 504]);

function statusHint(ctx: Context, path: string, status: number, errorCode: string | null): string {
  switch (status) {
    case 401:
      return ctx.token
        ? 'the access token was refused: check that it is valid and may read this repository'
        : `the repository "${ctx.repo}" does not exist, or it is private or gated: check the repo id, or give an access token (the token option) for private and gated models`;
    case 403:
      return ctx.token
        ? `access to "${ctx.repo}" is refused: for a gated model, accept its terms on the model page with the account the token belongs to`
        : `access to "${ctx.repo}" is refused: it is private or gated and needs an access token (the token option) of an account that may read it`;
    case 404:
      if (errorCode === 'RepoNotFound') {
        return `there is no repository "${ctx.repo}": check the repo id (private repositories look missing without an access token)`;
      }
      if (errorCode === 'RevisionNotFound') return `"${ctx.repo}" has no revision "${ctx.revision}"`;
      return `"${ctx.repo}" has no file "${path}" at revision "${ctx.revision}" (or the repo id or revision is wrong; private repositories need an access token)`;
    case 429:
      return 'too many requests: the hub is rate-limiting this address; wait a while and try again';
    default:
      return status >= 500 ? 'the server failed; try again later' : 'unexpected answer';
  }
}

function httpError(ctx: Context, path: string, url: string, response: Response): HubError {
  const hint = statusHint(ctx, path, response.status, response.headers.get('x-error-code'));
  const statusText = response.statusText ? ` ${response.statusText}` : '';
  return new HubError(`${url} answered HTTP ${response.status}${statusText}: ${hint}`, { url, status: response.status });
}

function networkError(url: string, cause: unknown): HubError {
  const offline = (globalThis as { navigator?: { onLine?: boolean } }).navigator?.onLine === false;
  const why = cause instanceof Error ? cause.message : String(cause);
  const hint = offline
    ? 'this device is offline; connect to the internet (models downloaded before load from the cache)'
    : 'check the internet connection and the endpoint; the hub may also be down, or refusing cross-origin requests from this page';
  return new HubError(`Could not download ${url} (${why}): ${hint}`, { url, cause });
}

function retryDelay(ctx: Context, failures: number, response?: Response): number {
  const retryAfter = Number(response?.headers.get('retry-after'));
  if (Number.isFinite(retryAfter) && retryAfter > 0) return Math.min(retryAfter * 1000, MAX_RETRY_DELAY_MS);
  return Math.min(ctx.retryDelayMs * 2 ** Math.max(0, failures - 1), MAX_RETRY_DELAY_MS);
}

function sleep(ctx: Context, ms: number, what: string): Promise<void> {
  if (ms <= 0) return Promise.resolve();
  return new Promise((resolve, reject) => {
    const onAbort = () => {
      clearTimeout(timer);
      reject(abortError(ctx, what));
    };
    const timer = setTimeout(() => {
      ctx.signal?.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    ctx.signal?.addEventListener('abort', onAbort, { once: true });
  });
}

function discardBody(response: Response): void {
  response.body?.cancel().catch(() => undefined);
}

/**
 * One request, retried on network errors and retryable statuses. Returns the response when it
 * is OK or a final error status (the caller decides what a 404 means); throws a HubError when
 * the retries run out.
 */
async function requestWithRetries(ctx: Context, url: string, init: RequestInit): Promise<Response> {
  for (let failures = 0; ; ) {
    throwIfAborted(ctx, url);
    let response: Response;
    try {
      response = await ctx.fetchImpl(url, { ...init, headers: requestHeaders(ctx, init.headers), signal: ctx.signal, cache: 'no-store' });
    } catch (e) {
      if (ctx.signal?.aborted) throw abortError(ctx, url);
      if (++failures > ctx.retries) throw networkError(url, e);
      await sleep(ctx, retryDelay(ctx, failures), url);
      continue;
    }
    if (RETRYABLE_STATUSES.has(response.status) && failures < ctx.retries) {
      failures++;
      discardBody(response);
      await sleep(ctx, retryDelay(ctx, failures, response), url);
      continue;
    }
    return response;
  }
}

function requestHeaders(ctx: Context, extra?: HeadersInit): Headers {
  const headers = new Headers(extra);
  if (ctx.token) headers.set('authorization', `Bearer ${ctx.token}`);
  return headers;
}

/** The body's length in bytes, when the header says it and the body is not compressed. */
function identityLength(response: Response): number | null {
  const encoding = response.headers.get('content-encoding');
  if (encoding !== null && encoding.trim().toLowerCase() !== 'identity') return null;
  const header = response.headers.get('content-length');
  if (header === null || !/^\d+$/.test(header.trim())) return null;
  return Number(header);
}

function parseContentRange(header: string | null): { start: number; end: number; total: number | null } | null {
  const m = header ? /^\s*bytes\s+(\d+)-(\d+)\/(\d+|\*)\s*$/i.exec(header) : null;
  if (!m) return null;
  return { start: Number(m[1]), end: Number(m[2]), total: m[3] === '*' ? null : Number(m[3]) };
}

// ---------------------------------------------------------------------------------------------
// Which files to fetch

interface PlannedFile {
  path: string;
  /** From HEAD, or the download; null when unknown. */
  size: number | null;
}

interface DownloadPlan {
  files: PlannedFile[];
  /** Files already downloaded (and cached) while planning: the weights index. */
  fetched: Map<string, Blob>;
}

interface Manifest {
  version: 1;
  repo: string;
  revision: string;
  files: PlannedFile[];
}

async function readManifest(ctx: Context): Promise<PlannedFile[] | null> {
  if (!ctx.cache) return null;
  let blob: Blob | null;
  try {
    blob = await ctx.cache.get(manifestKey(ctx));
  } catch (e) {
    ctx.warn(`Could not read the cached file list of ${ctx.repo}: ${(e as Error).message}`);
    return null;
  }
  if (!blob) return null;
  try {
    const m = JSON.parse(await blob.text()) as Partial<Manifest>;
    const files = m.files;
    if (
      m.version !== 1 ||
      !Array.isArray(files) ||
      files.length === 0 ||
      !files.every((f) => typeof f?.path === 'string' && (f.size === null || (Number.isSafeInteger(f.size) && f.size >= 0)))
    ) {
      return null;
    }
    return files.map((f) => ({ path: f.path, size: f.size }));
  } catch {
    return null;
  }
}

async function writeManifest(ctx: Context, files: PlannedFile[]): Promise<void> {
  if (!ctx.cache) return;
  const manifest: Manifest = { version: 1, repo: ctx.repo, revision: ctx.revision, files };
  try {
    await ctx.cache.put(manifestKey(ctx), new Blob([JSON.stringify(manifest)], { type: 'application/json' }));
  } catch (e) {
    ctx.warn(`Could not cache the file list of ${ctx.repo}: ${(e as Error).message}`);
  }
}

type Probe = { exists: true; size: number | null; headUnsupported?: true } | { exists: false; response: Response };

/** HEAD: does the file exist, and how large is it. */
async function probe(ctx: Context, path: string): Promise<Probe> {
  const url = fileUrl(ctx, path);
  const response = await requestWithRetries(ctx, url, { method: 'HEAD' });
  discardBody(response);
  if (response.ok) return { exists: true, size: identityLength(response) };
  // A server that does not implement HEAD: find out with the GET.
  if (response.status === 405 || response.status === 501) return { exists: true, size: null, headUnsupported: true };
  return { exists: false, response };
}

async function planFromNetwork(ctx: Context): Promise<DownloadPlan> {
  const [config, tokenizer, weights, ...optional] = await Promise.all([CONFIG, TOKENIZER, SINGLE_WEIGHTS, ...OPTIONAL_FILES].map((p) => probe(ctx, p)));
  const missing = (path: string, p: Probe): never => {
    throw httpError(ctx, path, fileUrl(ctx, path), (p as { response: Response }).response);
  };
  if (!config.exists) missing(CONFIG, config);
  if (!tokenizer.exists) {
    if (tokenizer.response.status !== 404) missing(TOKENIZER, tokenizer);
    throw new HubError(
      `${ctx.repo} has no ${TOKENIZER} (${fileUrl(ctx, TOKENIZER)} answered 404): training needs a Hugging Face tokenizers file; pick a repository that has one`,
      { url: fileUrl(ctx, TOKENIZER), status: 404 },
    );
  }
  const files: PlannedFile[] = [
    { path: CONFIG, size: config.exists ? config.size : null },
    { path: TOKENIZER, size: tokenizer.size },
  ];
  OPTIONAL_FILES.forEach((path, i) => {
    const p = optional[i];
    if (p.exists) files.push({ path, size: p.size });
    else if (p.response.status !== 404) missing(path, p);
  });

  const fetched = new Map<string, Blob>();
  // Without HEAD, whether the weights are sharded shows from whether the index downloads.
  const index =
    weights.exists && !weights.headUnsupported
      ? null
      : ((await cachedFile(ctx, WEIGHTS_INDEX)) ?? (await downloadFile(ctx, WEIGHTS_INDEX, null, true, () => undefined)));
  if (weights.exists && (!weights.headUnsupported || !index)) {
    files.push({ path: SINGLE_WEIGHTS, size: weights.size });
  } else {
    if (!weights.exists && weights.response.status !== 404) missing(SINGLE_WEIGHTS, weights);
    if (!index) {
      throw new HubError(
        `${ctx.repo} has no safetensors weights: neither ${fileUrl(ctx, SINGLE_WEIGHTS)} nor ${fileUrl(ctx, WEIGHTS_INDEX)} exists (HTTP 404). Only safetensors weights can be loaded; pick a repository that has them.`,
        { url: fileUrl(ctx, SINGLE_WEIGHTS), status: 404 },
      );
    }
    fetched.set(WEIGHTS_INDEX, index);
    files.push({ path: WEIGHTS_INDEX, size: index.size });
    const shards = shardsOfIndex(ctx, new Uint8Array(await index.arrayBuffer()));
    const shardProbes = await Promise.all(shards.map((s) => probe(ctx, s)));
    shards.forEach((path, i) => {
      const p = shardProbes[i];
      if (!p.exists) {
        if (p.response.status === 404) {
          throw new HubError(`${fileUrl(ctx, WEIGHTS_INDEX)} names the shard ${path}, but ${fileUrl(ctx, path)} answered 404: the repository is incomplete`, {
            url: fileUrl(ctx, path),
            status: 404,
          });
        }
        missing(path, p);
      } else {
        files.push({ path, size: p.size });
      }
    });
  }
  return { files, fetched };
}

/** A complete file from the cache, or null (also when the cache cannot be read). */
async function cachedFile(ctx: Context, path: string): Promise<Blob | null> {
  if (!ctx.cache) return null;
  try {
    return await ctx.cache.get(fileUrl(ctx, path));
  } catch (e) {
    ctx.warn(`Could not read ${fileUrl(ctx, path)} from the cache; downloading it: ${(e as Error).message}`);
    return null;
  }
}

/** The shard files an index names, in order of first mention. */
function shardsOfIndex(ctx: Context, bytes: Uint8Array): string[] {
  const where = fileUrl(ctx, WEIGHTS_INDEX);
  let index: unknown;
  try {
    index = JSON.parse(new TextDecoder().decode(bytes));
  } catch (e) {
    throw new HubError(`${where} is not valid JSON (${(e as Error).message})`, { url: where });
  }
  const weightMap = (index as { weight_map?: unknown } | null)?.weight_map;
  if (typeof weightMap !== 'object' || weightMap === null || Array.isArray(weightMap)) {
    throw new HubError(`${where} has no "weight_map" object`, { url: where });
  }
  const shards: string[] = [];
  for (const [tensor, shard] of Object.entries(weightMap as Record<string, unknown>)) {
    if (typeof shard !== 'string' || shard.length === 0 || shard.startsWith('/') || shard.split('/').some((s) => s === '..' || s === '')) {
      throw new HubError(`${where}: weight_map entry "${tensor}" is ${JSON.stringify(shard)}, not a file of the repository`, { url: where });
    }
    if (!shards.includes(shard)) shards.push(shard);
  }
  if (shards.length === 0) throw new HubError(`${where}: "weight_map" is empty`, { url: where });
  return shards;
}

async function plan(ctx: Context): Promise<DownloadPlan> {
  const cached = await readManifest(ctx);
  if (cached) return { files: cached, fetched: new Map() };
  const planned = await planFromNetwork(ctx);
  await writeManifest(ctx, planned.files);
  return planned;
}

/**
 * The files downloadHubModel fetches, in order: config.json, tokenizer.json, those of
 * tokenizer_config.json, special_tokens_map.json, generation_config.json and chat_template.jinja
 * the repository has, then model.safetensors or model.safetensors.index.json and its shards.
 * A repository downloaded before answers from the cache without a request.
 */
export async function resolveHubFiles(repo: string, opts: HubOptions = {}): Promise<string[]> {
  const ctx = contextOf(repo, opts);
  return (await plan(ctx)).files.map((f) => f.path);
}

// ---------------------------------------------------------------------------------------------
// Downloading one file

/**
 * Streams one file, resuming or restarting it after a dropped connection, and stores it in the
 * cache. Returns null when `optional` and the server answers 404. `onBytes` gets the bytes
 * received so far and the file's size when known.
 */
async function downloadFile(
  ctx: Context,
  path: string,
  knownSize: number | null,
  optional: boolean,
  onBytes: (loaded: number, total: number | null) => void,
): Promise<Blob | null> {
  const url = fileUrl(ctx, path);
  const cache = ctx.cache;

  // Bytes from the start of the file: `saved` are Blobs (stored as partial-download segments
  // when the server takes Range requests), `pending` arrived since the last save.
  let validators: PartialDownloadValidators | null = null;
  let saved: Blob[] = [];
  let savedBytes = 0;
  let pending: Uint8Array[] = [];
  let pendingBytes = 0;
  let partialCacheUsable = cache !== null;
  const received = () => savedBytes + pendingBytes;

  const cacheTrouble = (e: unknown) => {
    partialCacheUsable = false;
    ctx.warn(`Could not save the partial download of ${url}; an interrupted download will start over: ${(e as Error).message}`);
    if (cache) clearPartialDownload(cache, url).catch(() => undefined);
  };
  const save = async () => {
    if (pendingBytes === 0) return;
    const blob = new Blob(pending as BlobPart[]);
    pending = [];
    pendingBytes = 0;
    saved.push(blob);
    savedBytes += blob.size;
    if (cache && partialCacheUsable && validators?.acceptsRanges) {
      try {
        await appendPartialDownload(cache, url, validators, blob);
      } catch (e) {
        cacheTrouble(e);
      }
    }
  };
  const restart = async () => {
    const hadSaved = savedBytes > 0;
    saved = [];
    savedBytes = 0;
    pending = [];
    pendingBytes = 0;
    validators = null;
    if (cache && partialCacheUsable && hadSaved) {
      try {
        await clearPartialDownload(cache, url);
      } catch (e) {
        cacheTrouble(e);
      }
    }
  };

  if (cache) {
    try {
      const partial = await readPartialDownload(cache, url);
      if (partial && partial.received > 0) {
        const { data, received: n, ...v } = partial;
        validators = v;
        saved = [data];
        savedBytes = n;
      }
    } catch (e) {
      ctx.warn(`Could not read the partial download of ${url}; starting it over: ${(e as Error).message}`);
    }
  }

  let failures = 0;
  /** The most bytes of the file held at any failure: getting past it resets the failure count. */
  let furthest = 0;
  /** Counts a failure; throws `error` when the retries are used up. */
  const failed = async (error: () => HubError, response?: Response) => {
    const progressed = received() > furthest;
    furthest = Math.max(furthest, received());
    failures = progressed ? 1 : failures + 1;
    if (failures > ctx.retries) throw error();
    await sleep(ctx, retryDelay(ctx, failures, response), url);
  };
  const sizeOf = () => validators?.expectedSize ?? knownSize;

  try {
    for (;;) {
      throwIfAborted(ctx, url);
      const resumeFrom = received();
      const resume = resumeFrom > 0 && validators !== null && validators.acceptsRanges;
      if (resumeFrom > 0 && !resume) await restart();
      const headers = new Headers();
      if (resume) {
        headers.set('range', `bytes=${resumeFrom}-`);
        // If-Range wants a strong validator: an ETag not marked W/, else the date.
        const etag = validators!.etag;
        if (etag && !etag.startsWith('W/')) headers.set('if-range', etag);
        else if (validators!.lastModified) headers.set('if-range', validators!.lastModified);
      }

      let response: Response;
      try {
        response = await ctx.fetchImpl(url, { headers: requestHeaders(ctx, headers), signal: ctx.signal, cache: 'no-store' });
      } catch (e) {
        if (ctx.signal?.aborted) throw abortError(ctx, url);
        await failed(() => networkError(url, e));
        continue;
      }

      if (response.status === 416 && resume) {
        // The stored bytes reach or pass the end of the file on the server.
        discardBody(response);
        const total = parseContentRange(response.headers.get('content-range'))?.total ?? null;
        if (total === resumeFrom && validators!.expectedSize === resumeFrom) break; // they are the whole file
        await restart();
        await failed(() => httpError(ctx, path, url, response));
        continue;
      }
      if (!response.ok) {
        discardBody(response);
        if (response.status === 404 && optional) {
          await restart();
          return null;
        }
        if (RETRYABLE_STATUSES.has(response.status)) {
          await failed(() => httpError(ctx, path, url, response), response);
          continue;
        }
        throw httpError(ctx, path, url, response);
      }

      const etag = response.headers.get('etag');
      const lastModified = response.headers.get('last-modified');
      const acceptsRanges = (response.headers.get('accept-ranges') ?? '').toLowerCase().includes('bytes');
      if (response.status === 206) {
        const range = parseContentRange(response.headers.get('content-range'));
        const bodyLength = identityLength(response);
        const v = validators;
        // The part must continue the stored bytes, of the same version of the file.
        const continues =
          v !== null &&
          (range !== null
            ? range.start === resumeFrom && (range.total === null || v.expectedSize === null || range.total === v.expectedSize)
            : // Content-Range hidden (a cross-origin response that does not expose it): the length must fit.
              bodyLength !== null && v.expectedSize !== null && resumeFrom + bodyLength === v.expectedSize) &&
          (etag === null || v.etag === null || etag === v.etag);
        if (!continues) {
          discardBody(response);
          await restart();
          await failed(() => new HubError(`${url}: the server answered a Range request with a part that does not continue the ${resumeFrom} bytes received`, { url, status: 206 }));
          continue;
        }
        validators = {
          expectedSize: range?.total ?? v!.expectedSize ?? (bodyLength !== null ? resumeFrom + bodyLength : null),
          etag: etag ?? v!.etag,
          lastModified: lastModified ?? v!.lastModified,
          acceptsRanges: true,
        };
      } else {
        // The whole file: a first request, a server that ignored the Range, or a file that
        // changed since the stored bytes (If-Range did not match).
        if (resumeFrom > 0) await restart();
        validators = { expectedSize: identityLength(response), etag, lastModified, acceptsRanges };
      }
      if (cache && partialCacheUsable && validators.acceptsRanges && savedBytes > 0) {
        // Record the validators of this answer before any new bytes arrive.
        try {
          await appendPartialDownload(cache, url, validators, new Blob([]));
        } catch (e) {
          cacheTrouble(e);
        }
      }

      onBytes(received(), sizeOf());
      let streamError: unknown = null;
      const reader = response.body?.getReader();
      if (reader) {
        for (;;) {
          let chunk: ReadableStreamReadResult<Uint8Array>;
          try {
            chunk = await reader.read();
          } catch (e) {
            streamError = e;
            break;
          }
          if (chunk.done) break;
          pending.push(chunk.value);
          pendingBytes += chunk.value.byteLength;
          onBytes(received(), sizeOf());
          throwIfAborted(ctx, url);
          if (pendingBytes >= ctx.checkpointBytes) await save();
        }
      }
      if (ctx.signal?.aborted) throw abortError(ctx, url);
      const size = validators.expectedSize;
      if (streamError !== null || (size !== null && received() < size)) {
        // A dropped connection: keep what arrived and try again from there.
        await save();
        const got = received();
        const why = streamError instanceof Error ? streamError.message : streamError !== null ? String(streamError) : 'the server closed the connection early';
        const next = validators.acceptsRanges && partialCacheUsable
          ? 'the bytes received are kept, and the next attempt resumes from them'
          : 'the server does not resume downloads, so the next attempt starts this file over';
        await failed(
          () =>
            new HubError(
              `Downloading ${url} broke off after ${got}${size !== null ? ` of ${size}` : ''} bytes (${why}; ${ctx.retries + 1} attempts in a row got no further): check the connection and try again; ${next}`,
              { url, cause: streamError ?? undefined },
            ),
        );
        continue;
      }
      if (size !== null && received() > size) {
        const got = received();
        await restart();
        throw new HubError(`${url}: received ${got} bytes but the server announced ${size} (Content-Length): the download is corrupt; try again`, { url, status: response.status });
      }
      break;
    }
  } catch (e) {
    // Whatever stopped the download, keep the bytes for the next attempt.
    await save();
    if (ctx.signal?.aborted && !(e instanceof DOMException && e.name === 'AbortError')) throw abortError(ctx, url);
    throw e;
  }

  await save();
  const blob = new Blob(saved);
  if (!cache) return blob;
  try {
    await cache.put(url, blob);
  } catch (e) {
    ctx.warn(`Could not cache ${url}; it will be downloaded again next time: ${(e as Error).message}`);
    return blob;
  }
  try {
    await clearPartialDownload(cache, url);
  } catch (e) {
    ctx.warn(`Could not delete the partial download of ${url}: ${(e as Error).message}`);
  }
  // The cached copy (on disk in a browser) in place of the one assembled in memory.
  try {
    const stored = await cache.get(url);
    if (stored && stored.size === blob.size) return stored;
  } catch {
    // the in-memory copy does as well
  }
  return blob;
}

// ---------------------------------------------------------------------------------------------
// Downloading a repository

/**
 * Downloads (or loads from the cache) what a model needs from a hub repository; see
 * resolveHubFiles for the files. Rejects with a DOMException named AbortError when `signal`
 * aborts, keeping the bytes received for the next call.
 */
export async function downloadHubModel(repo: string, opts: HubOptions = {}): Promise<ModelFiles> {
  const ctx = contextOf(repo, opts);
  const { files: planned, fetched } = await plan(ctx);
  const sizes = planned.map((f) => f.size);
  const done = planned.map(() => 0);
  const report = (i: number, fileLoaded: number, fileTotal: number | null, fromCache: boolean) => {
    if (fileTotal !== null) sizes[i] = fileTotal;
    if (!opts.onProgress) return;
    let loaded = fileLoaded;
    for (let j = 0; j < planned.length; j++) if (j !== i) loaded += done[j];
    const total = sizes.every((s) => s !== null) ? (sizes as number[]).reduce((a, b) => a + b, 0) : null;
    opts.onProgress({ file: planned[i].path, fileLoaded, fileTotal: sizes[i], loaded, total, fromCache });
  };

  const result = new Map<string, Blob>();
  const optional = new Set([...OPTIONAL_FILES]);
  let sizesChanged = false;
  for (let i = 0; i < planned.length; i++) {
    const { path } = planned[i];
    throwIfAborted(ctx, path);
    let blob: Blob | null = fetched.get(path) ?? null;
    let fromCache = false;
    if (!blob) {
      blob = await cachedFile(ctx, path);
      fromCache = blob !== null;
    }
    if (!blob) {
      blob = await downloadFile(ctx, path, planned[i].size, optional.has(path), (loaded, total) => report(i, loaded, total, false));
      if (!blob) {
        // An optional file that was there when the list was made and is gone now.
        sizes[i] = 0;
        continue;
      }
    }
    if (planned[i].size !== blob.size) sizesChanged = true;
    sizes[i] = blob.size;
    done[i] = blob.size;
    report(i, blob.size, blob.size, fromCache);
    result.set(path, blob);
  }
  if (sizesChanged || result.size !== planned.length) {
    await writeManifest(
      ctx,
      planned.filter((f) => result.has(f.path)).map((f) => ({ path: f.path, size: result.get(f.path)!.size })),
    );
  }
  const name = ctx.revision === DEFAULT_REVISION ? repo : `${repo}@${ctx.revision}`;
  return modelFilesFromMap(name, result);
}

/** Deletes every cached file (complete or partial) of a repository at a revision. */
export async function deleteCachedHubModel(repo: string, opts: Pick<HubOptions, 'endpoint' | 'revision' | 'cache'> = {}): Promise<number> {
  const ctx = contextOf(repo, opts);
  if (!ctx.cache) return 0;
  const keys = (await ctx.cache.keys()).filter((k) => k.startsWith(ctx.base));
  for (const k of keys) await ctx.cache.delete(k);
  return keys.length;
}

/** True when a repository's files are all in the cache, so it loads without a network. */
export async function isHubModelCached(repo: string, opts: Pick<HubOptions, 'endpoint' | 'revision' | 'cache'> = {}): Promise<boolean> {
  const ctx = contextOf(repo, opts);
  if (!ctx.cache) return false;
  const files = await readManifest(ctx);
  if (!files) return false;
  const keys = new Set((await ctx.cache.keys()).filter((k) => !isPartialDownloadKey(k)));
  return files.every((f) => keys.has(fileUrl(ctx, f.path)));
}
