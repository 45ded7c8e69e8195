// A hub-like HTTP server for tests: serves `/<owner>/<name>/resolve/main/<file>` from memory on
// 127.0.0.1, with switches for what real servers and networks do to downloads: Range support,
// ETags, connections dropped part-way through a file, transient error statuses, slow bodies,
// tokens. Every request is logged so tests can count them.

import { createHash } from 'node:crypto';
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';

export interface FakeHubOptions {
  /** Repository id ("owner/name") → file path → contents, all at revision "main". */
  repos: Record<string, Record<string, Uint8Array | string>>;
  /** Answer `Range: bytes=N-` with 206 and send `Accept-Ranges: bytes`; default true. */
  ranges?: boolean;
  /** Send a strong ETag (the SHA-256 of the contents) and honour If-Range; default true. */
  etags?: boolean;
  /** Answer HEAD; false answers 405 like a server without HEAD. Default true. */
  head?: boolean;
  /** `${repo}/${file}` → cut the connection after `afterBytes` body bytes on the first `times` GETs. */
  drops?: Record<string, { afterBytes: number; times: number }>;
  /** `${repo}/${file}` → answer the first `times` GETs with `status` (e.g. 503). */
  failures?: Record<string, { status: number; times: number }>;
  /** Write bodies in pieces of `chunkBytes`, waiting `delayMs` after each. */
  throttle?: { chunkBytes: number; delayMs: number };
  /** Answer 401 unless the request carries `Authorization: Bearer <token>`. */
  token?: string;
}

export interface FakeHubRequest {
  method: string;
  /** The URL path, e.g. "/owner/name/resolve/main/config.json". */
  path: string;
  range: string | null;
  ifRange: string | null;
  authorization: string | null;
  status: number;
}

export interface FakeHub {
  /** The endpoint, e.g. "http://127.0.0.1:43121". */
  url: string;
  requests: FakeHubRequest[];
  /** Requests whose path ends with `pathSuffix` (and have `method`, when given). */
  count(pathSuffix: string, method?: string): number;
  /** Replaces (or adds) a file; its ETag changes with it. */
  setFile(repo: string, path: string, data: Uint8Array | string): void;
  close(): Promise<void>;
}

const encoder = new TextEncoder();

function etagOf(data: Uint8Array): string {
  return `"${createHash('sha256').update(data).digest('hex')}"`;
}

function waitForDrainOrClose(res: ServerResponse): Promise<void> {
  return new Promise((resolve) => {
    const done = () => {
      res.off('drain', done);
      res.off('close', done);
      resolve();
    };
    res.once('drain', done);
    res.once('close', done);
  });
}

function writeAndFlush(res: ServerResponse, chunk: Uint8Array): Promise<void> {
  return new Promise((resolve) => {
    const flushed = res.write(chunk, () => resolve());
    if (!flushed) waitForDrainOrClose(res).then(resolve);
  });
}

const delay = (ms: number) => new Promise((r) => setTimeout(r, ms));

export async function startFakeHub(options: FakeHubOptions): Promise<FakeHub> {
  const ranges = options.ranges ?? true;
  const etags = options.etags ?? true;
  const files = new Map<string, Uint8Array>();
  const setFile = (repo: string, path: string, data: Uint8Array | string) => {
    files.set(`${repo}/${path}`, typeof data === 'string' ? encoder.encode(data) : data);
  };
  for (const [repo, repoFiles] of Object.entries(options.repos)) {
    for (const [path, data] of Object.entries(repoFiles)) setFile(repo, path, data);
  }
  const repos = () => new Set([...files.keys()].map((k) => k.split('/').slice(0, 2).join('/')));
  const requests: FakeHubRequest[] = [];
  const getCounts = new Map<string, number>();

  const handle = async (req: IncomingMessage, res: ServerResponse) => {
    const path = decodeURIComponent(new URL(req.url ?? '/', 'http://x').pathname);
    const entry: FakeHubRequest = {
      method: req.method ?? 'GET',
      path,
      range: req.headers.range ?? null,
      ifRange: (req.headers['if-range'] as string | undefined) ?? null,
      authorization: req.headers.authorization ?? null,
      status: 0,
    };
    requests.push(entry);
    const answer = (status: number, headers: Record<string, string> = {}) => {
      entry.status = status;
      res.writeHead(status, headers);
      res.end();
    };

    if (options.token !== undefined && req.headers.authorization !== `Bearer ${options.token}`) {
      return answer(401, { 'x-error-code': 'RepoNotFound' });
    }
    if (req.method === 'HEAD' && options.head === false) return answer(405);
    const m = /^\/([^/]+\/[^/]+)\/resolve\/([^/]+)\/(.+)$/.exec(path);
    if (!m) return answer(404);
    const [, repo, revision, file] = m;
    if (!repos().has(repo)) return answer(404, { 'x-error-code': 'RepoNotFound' });
    if (revision !== 'main') return answer(404, { 'x-error-code': 'RevisionNotFound' });
    const key = `${repo}/${file}`;
    const data = files.get(key);
    if (!data) return answer(404, { 'x-error-code': 'EntryNotFound' });
    if (req.method !== 'GET' && req.method !== 'HEAD') return answer(405);

    const getNumber = req.method === 'GET' ? (getCounts.get(key) ?? 0) + 1 : 0;
    if (req.method === 'GET') getCounts.set(key, getNumber);
    const failure = options.failures?.[key];
    if (failure && getNumber > 0 && getNumber <= failure.times) return answer(failure.status);

    const etag = etagOf(data);
    const headers: Record<string, string> = { 'content-type': 'application/octet-stream' };
    if (etags) headers.etag = etag;
    if (ranges) headers['accept-ranges'] = 'bytes';

    let status = 200;
    let body = data;
    const rangeMatch = ranges && req.headers.range ? /^bytes=(\d+)-(\d*)$/.exec(req.headers.range) : null;
    const ifRange = req.headers['if-range'];
    if (rangeMatch && (ifRange === undefined || (etags && ifRange === etag))) {
      const start = Number(rangeMatch[1]);
      const end = rangeMatch[2] === '' ? data.length - 1 : Math.min(Number(rangeMatch[2]), data.length - 1);
      if (start >= data.length || start > end) return answer(416, { 'content-range': `bytes */${data.length}` });
      status = 206;
      body = data.subarray(start, end + 1);
      headers['content-range'] = `bytes ${start}-${end}/${data.length}`;
    }
    headers['content-length'] = String(body.length);
    entry.status = status;
    res.writeHead(status, headers);
    if (req.method === 'HEAD') {
      res.end();
      return;
    }

    const drop = options.drops?.[key];
    const cutAt = drop && getNumber <= drop.times ? Math.min(drop.afterBytes, body.length) : null;
    const limit = cutAt ?? body.length;
    const piece = options.throttle?.chunkBytes ?? 64 * 1024;
    for (let at = 0; at < limit && !res.destroyed; ) {
      const next = Math.min(limit, at + piece);
      await writeAndFlush(res, body.subarray(at, next));
      at = next;
      if (options.throttle && options.throttle.delayMs > 0) await delay(options.throttle.delayMs);
    }
    if (cutAt !== null) {
      // Like a network failure: the connection ends before the announced Content-Length.
      res.socket?.destroy();
      return;
    }
    res.end();
  };

  const server = createServer((req, res) => {
    handle(req, res).catch((e: unknown) => {
      if (!res.headersSent) res.writeHead(500);
      res.end(String(e));
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;

  return {
    url: `http://127.0.0.1:${port}`,
    requests,
    count: (pathSuffix, method) => requests.filter((r) => r.path.endsWith(pathSuffix) && (method === undefined || r.method === method)).length,
    setFile,
    close: () =>
      new Promise<void>((resolve, reject) => {
        server.closeAllConnections();
        server.close((e) => (e ? reject(e) : resolve()));
      }),
  };
}
