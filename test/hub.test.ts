import { existsSync, readFileSync } from 'node:fs';
import { afterEach, describe, expect, it } from 'vitest';
import {
  deleteCachedHubModel,
  downloadHubModel,
  HubError,
  hubFileUrl,
  isHubModelCached,
  resolveHubFiles,
  validateRepoId,
  type HubOptions,
  type HubProgress,
} from '../src/io/hub';
import {
  appendPartialDownload,
  cacheStorageModelCache,
  clearPartialDownload,
  isPartialDownloadKey,
  memoryModelCache,
  partialDownloadKey,
  readPartialDownload,
  type ModelCache,
} from '../src/io/model-cache';
import { loadHfModel } from '../src/io/model-files';
import { parseSafetensors, writeSafetensors, type TensorToWrite } from '../src/io/safetensors';
import { startFakeHub, type FakeHub, type FakeHubOptions } from './helpers/fake-hub';

// ---------------------------------------------------------------------------------------------
// A tiny GPT-2 repository: test/fixtures/tiny-gpt2 when it is there, else one built here.

const FIXTURE = new URL('./fixtures/tiny-gpt2/', import.meta.url).pathname;
const FIXTURE_FILES = ['config.json', 'generation_config.json', 'model.safetensors', 'special_tokens_map.json', 'tokenizer.json', 'tokenizer_config.json'];
const enc = (s: string) => new TextEncoder().encode(s);

function generatedGpt2(): Record<string, Uint8Array> {
  // Large enough (about 190 kB of weights) for connections dropped at 50 000 and 100 000 bytes.
  const nEmbd = 64;
  const vocab = 360;
  const seq = (n: number, scale: number) => Float32Array.from({ length: n }, (_, i) => Math.sin(i * scale));
  const tensors: TensorToWrite[] = [
    { name: 'transformer.wte.weight', dtype: 'F32', shape: [vocab, nEmbd], data: seq(vocab * nEmbd, 0.1) },
    { name: 'transformer.wpe.weight', dtype: 'F32', shape: [64, nEmbd], data: seq(64 * nEmbd, 0.2) },
    { name: 'transformer.h.0.ln_1.weight', dtype: 'F32', shape: [nEmbd], data: seq(nEmbd, 0.3) },
    { name: 'transformer.h.0.mlp.c_fc.weight', dtype: 'F32', shape: [nEmbd, 4 * nEmbd], data: seq(4 * nEmbd * nEmbd, 0.4) },
    { name: 'transformer.ln_f.weight', dtype: 'F32', shape: [nEmbd], data: seq(nEmbd, 0.5) },
  ];
  const config = { model_type: 'gpt2', architectures: ['GPT2LMHeadModel'], n_embd: nEmbd, n_head: 4, n_layer: 1, n_positions: 64, vocab_size: vocab };
  const tokenizer = { version: '1.0', model: { type: 'BPE', vocab: { '<|endoftext|>': 0, a: 1 }, merges: [] } };
  return {
    'config.json': enc(JSON.stringify(config)),
    'model.safetensors': writeSafetensors(tensors),
    'tokenizer.json': enc(JSON.stringify(tokenizer)),
    'tokenizer_config.json': enc(JSON.stringify({ eos_token: '<|endoftext|>' })),
    'special_tokens_map.json': enc(JSON.stringify({ eos_token: '<|endoftext|>' })),
    'generation_config.json': enc(JSON.stringify({ eos_token_id: 0 })),
  };
}

function tinyGpt2(): Record<string, Uint8Array> {
  if (FIXTURE_FILES.every((f) => existsSync(FIXTURE + f))) {
    return Object.fromEntries(FIXTURE_FILES.map((f) => [f, new Uint8Array(readFileSync(FIXTURE + f))]));
  }
  return generatedGpt2();
}

const MODEL = tinyGpt2();
const WEIGHTS = MODEL['model.safetensors'];
const REPO = 'test-owner/tiny-gpt2';

/** The same model with its weights split into two shards and an index. */
function shardedGpt2(): Record<string, Uint8Array> {
  const st = parseSafetensors(WEIGHTS);
  const names = [...st.tensors.keys()];
  const half = Math.ceil(names.length / 2);
  const shardNames = ['model-00001-of-00002.safetensors', 'model-00002-of-00002.safetensors'];
  const groups = [names.slice(0, half), names.slice(half)];
  const weightMap: Record<string, string> = {};
  const out: Record<string, Uint8Array> = { ...MODEL };
  delete out['model.safetensors'];
  groups.forEach((group, i) => {
    out[shardNames[i]] = writeSafetensors(
      group.map((name) => ({ name, dtype: 'F32' as const, shape: st.tensors.get(name)!.shape, data: st.getF32(name) })),
    );
    for (const name of group) weightMap[name] = shardNames[i];
  });
  out['model.safetensors.index.json'] = enc(JSON.stringify({ metadata: { total_size: WEIGHTS.length }, weight_map: weightMap }));
  return out;
}

// ---------------------------------------------------------------------------------------------

const hubs: FakeHub[] = [];
afterEach(async () => {
  while (hubs.length > 0) await hubs.pop()!.close();
});

async function hub(options: Partial<FakeHubOptions> & { repos?: FakeHubOptions['repos'] } = {}): Promise<FakeHub> {
  const h = await startFakeHub({ repos: { [REPO]: MODEL }, ...options });
  hubs.push(h);
  return h;
}

function opts(h: FakeHub, extra: HubOptions = {}): HubOptions {
  return { endpoint: h.url, cache: memoryModelCache(), retryDelayMs: 0, onWarning: (m) => expect.fail(`unexpected warning: ${m}`), ...extra };
}

async function bytesOf(files: Awaited<ReturnType<typeof downloadHubModel>>, path: string): Promise<Uint8Array> {
  return files.read(path);
}

async function rejection(p: Promise<unknown>): Promise<Error> {
  try {
    await p;
  } catch (e) {
    return e as Error;
  }
  throw new Error('expected a rejection');
}

const sum = (files: Record<string, Uint8Array>) => Object.values(files).reduce((a, f) => a + f.length, 0);

function expectMonotonicToTotal(events: HubProgress[], total: number) {
  expect(events.length).toBeGreaterThan(0);
  for (let i = 1; i < events.length; i++) expect(events[i].loaded).toBeGreaterThanOrEqual(events[i - 1].loaded);
  for (const e of events) {
    if (e.fileTotal !== null) expect(e.fileLoaded).toBeLessThanOrEqual(e.fileTotal);
    if (e.total !== null) expect(e.loaded).toBeLessThanOrEqual(e.total);
  }
  const last = events[events.length - 1];
  expect(last.loaded).toBe(total);
  expect(last.total).toBe(total);
}

describe('validateRepoId', () => {
  it('accepts owner/name ids', () => {
    for (const id of ['HuggingFaceTB/SmolLM2-135M', 'openai-community/gpt2', 'a_b/c.d-e', 'Qwen/Qwen2.5-0.5B-Instruct']) {
      expect(() => validateRepoId(id)).not.toThrow();
    }
  });

  it('rejects malformed ids with a HubError that shows an example', () => {
    const cases: [string, RegExp][] = [
      ['gpt2', /owner is missing/],
      ['a/b/c', /more than one "\/"/],
      ['https://huggingface.co/openai-community/gpt2', /not the URL \(here probably "openai-community\/gpt2"\)/],
      ['owner/my model', /spaces/],
      ['-owner/name', /must not start or end/],
      ['owner/name.', /must not start or end/],
      ['owner/na--me', /"--"/],
      ['owner/name.git', /\.git/],
      ['', /empty/],
      [`owner/${'x'.repeat(100)}`, /longer than 96/],
    ];
    for (const [id, why] of cases) {
      let err: unknown;
      try {
        validateRepoId(id);
      } catch (e) {
        err = e;
      }
      expect(err, id).toBeInstanceOf(HubError);
      expect((err as Error).message, id).toMatch(why);
      expect((err as Error).message).toMatch(/e\.g\. "HuggingFaceTB\/SmolLM2-135M"/);
    }
  });

  it('makes downloadHubModel fail before any request', async () => {
    const h = await hub();
    const err = await rejection(downloadHubModel('not a repo', opts(h)));
    expect(err).toBeInstanceOf(HubError);
    expect(h.requests).toHaveLength(0);
  });
});

describe('downloadHubModel', () => {
  it('downloads a model that loadHfModel reads, with progress up to the total', async () => {
    const h = await hub();
    const events: HubProgress[] = [];
    const files = await downloadHubModel(REPO, opts(h, { onProgress: (p) => events.push(p) }));

    expect(files.name).toBe(REPO);
    expect(files.list()).toEqual(Object.keys(MODEL).sort());
    for (const [path, data] of Object.entries(MODEL)) expect(await bytesOf(files, path), path).toEqual(data);
    const model = await loadHfModel(files);
    expect(model.config.family).toBe('gpt2');
    expect(model.tensorNames).toEqual([...parseSafetensors(WEIGHTS).tensors.keys()]);
    expect(model.tokenizerJson).toEqual(JSON.parse(new TextDecoder().decode(MODEL['tokenizer.json'])));

    // HEAD gave every size up front, so the total is known from the first event.
    expect(events[0].total).toBe(sum(MODEL));
    expectMonotonicToTotal(events, sum(MODEL));
    expect(events.every((e) => !e.fromCache)).toBe(true);
    expect(new Set(events.map((e) => e.file))).toEqual(new Set(Object.keys(MODEL)));
    // chat_template.jinja is not in the repository: probed, answered 404, skipped.
    expect(h.requests.filter((r) => r.path.endsWith('/chat_template.jinja')).map((r) => [r.method, r.status])).toEqual([['HEAD', 404]]);
    expect(h.count('/model.safetensors', 'GET')).toBe(1);
  });

  it('serves the second download from the cache without a request, even offline', async () => {
    const h = await hub();
    const cache = memoryModelCache();
    await downloadHubModel(REPO, opts(h, { cache }));
    const before = h.requests.length;
    expect(await isHubModelCached(REPO, { endpoint: h.url, cache })).toBe(true);

    const events: HubProgress[] = [];
    const offline: typeof fetch = async () => {
      throw new TypeError('fetch failed (offline)');
    };
    const files = await downloadHubModel(REPO, opts(h, { cache, fetchImpl: offline, onProgress: (p) => events.push(p) }));
    expect(h.requests.length).toBe(before);
    expect(events.length).toBe(Object.keys(MODEL).length);
    expect(events.every((e) => e.fromCache)).toBe(true);
    expectMonotonicToTotal(events, sum(MODEL));
    expect(await bytesOf(files, 'model.safetensors')).toEqual(WEIGHTS);
    expect((await loadHfModel(files)).config.family).toBe('gpt2');
    expect(await resolveHubFiles(REPO, opts(h, { cache, fetchImpl: offline }))).toContain('model.safetensors');

    expect(await deleteCachedHubModel(REPO, { endpoint: h.url, cache })).toBeGreaterThan(Object.keys(MODEL).length);
    expect(await cache.keys()).toEqual([]);
    expect(await isHubModelCached(REPO, { endpoint: h.url, cache })).toBe(false);
  });

  it('downloads sharded weights through the index', async () => {
    const sharded = shardedGpt2();
    const h = await hub({ repos: { [REPO]: sharded } });
    expect(await resolveHubFiles(REPO, opts(h, { cache: null }))).toEqual([
      'config.json',
      'tokenizer.json',
      'tokenizer_config.json',
      'special_tokens_map.json',
      'generation_config.json',
      'model.safetensors.index.json',
      'model-00001-of-00002.safetensors',
      'model-00002-of-00002.safetensors',
    ]);
    h.requests.length = 0;

    const events: HubProgress[] = [];
    const files = await downloadHubModel(REPO, opts(h, { onProgress: (p) => events.push(p) }));
    expect(files.list()).toEqual(Object.keys(sharded).sort());
    for (const [path, data] of Object.entries(sharded)) expect(await bytesOf(files, path), path).toEqual(data);
    const model = await loadHfModel(files);
    const reference = parseSafetensors(WEIGHTS);
    for (const name of reference.tensors.keys()) expect(model.getF32(name), name).toEqual(reference.getF32(name));
    expectMonotonicToTotal(events, sum(sharded));
    // The index is read once, while planning, and not fetched again.
    expect(h.count('/model.safetensors.index.json', 'GET')).toBe(1);
    expect(h.count('/model.safetensors', 'HEAD')).toBe(1);
  });

  it('skips optional files the repository does not have', async () => {
    const bare = { 'config.json': MODEL['config.json'], 'tokenizer.json': MODEL['tokenizer.json'], 'model.safetensors': WEIGHTS };
    const h = await hub({ repos: { [REPO]: bare } });
    const files = await downloadHubModel(REPO, opts(h));
    expect(files.list()).toEqual(['config.json', 'model.safetensors', 'tokenizer.json']);
    for (const optional of ['tokenizer_config.json', 'special_tokens_map.json', 'generation_config.json', 'chat_template.jinja']) {
      expect(h.requests.filter((r) => r.path.endsWith(`/${optional}`)).map((r) => r.status), optional).toEqual([404]);
    }
    const model = await loadHfModel(files);
    expect(model.tokenizerConfig).toBeUndefined();
  });

  it('works with a server that does not answer HEAD: the total appears once every size is known', async () => {
    const h = await hub({ head: false });
    const events: HubProgress[] = [];
    // Without HEAD the optional files are found missing by their GET.
    const files = await downloadHubModel(REPO, opts(h, { onProgress: (p) => events.push(p) }));
    expect(files.list()).toEqual(Object.keys(MODEL).sort());
    expect(events[0].total).toBeNull();
    expectMonotonicToTotal(events, sum(MODEL));
    expect(h.requests.filter((r) => r.path.endsWith('/chat_template.jinja')).map((r) => `${r.method} ${r.status}`)).toEqual(['HEAD 405', 'GET 404']);

    const sharded = shardedGpt2();
    const h2 = await hub({ head: false, repos: { [REPO]: sharded } });
    const files2 = await downloadHubModel(REPO, opts(h2));
    expect(files2.list()).toEqual(Object.keys(sharded).sort());
    expect(h2.count('/model.safetensors.index.json', 'GET')).toBe(1);
    expect(h2.count('/model.safetensors', 'GET')).toBe(0);
  });

  it('resumes a dropped connection with a Range request when the server takes them', async () => {
    const h = await hub({ drops: { [`${REPO}/model.safetensors`]: { afterBytes: 50_000, times: 2 } } });
    const events: HubProgress[] = [];
    const files = await downloadHubModel(REPO, opts(h, { onProgress: (p) => events.push(p), checkpointBytes: 16_384 }));
    expect(await bytesOf(files, 'model.safetensors')).toEqual(WEIGHTS);

    const gets = h.requests.filter((r) => r.path.endsWith('/model.safetensors') && r.method === 'GET');
    expect(gets.map((r) => r.range)).toEqual([null, 'bytes=50000-', 'bytes=100000-']);
    expect(gets.map((r) => r.status)).toEqual([200, 206, 206]);
    const etag = `"${await sha256Hex(WEIGHTS)}"`;
    expect(gets[1].ifRange).toBe(etag);
    expect(gets[2].ifRange).toBe(etag);
    // Resuming never goes back.
    expectMonotonicToTotal(events, sum(MODEL));
  });

  it('restarts a dropped file from the start when the server ignores Range', async () => {
    const h = await hub({ ranges: false, drops: { [`${REPO}/model.safetensors`]: { afterBytes: 50_000, times: 1 } } });
    const cache = memoryModelCache();
    const fileEvents: number[] = [];
    const files = await downloadHubModel(REPO, opts(h, { cache, onProgress: (p) => p.file === 'model.safetensors' && fileEvents.push(p.fileLoaded) }));
    expect(await bytesOf(files, 'model.safetensors')).toEqual(WEIGHTS);

    const gets = h.requests.filter((r) => r.path.endsWith('/model.safetensors') && r.method === 'GET');
    expect(gets.map((r) => [r.range, r.status])).toEqual([
      [null, 200],
      [null, 200],
    ]);
    // Progress for the file went back to 0 once, after reaching the drop.
    const back = fileEvents.findIndex((n, i) => i > 0 && n < fileEvents[i - 1]);
    expect(fileEvents[back - 1]).toBe(50_000);
    expect(fileEvents[back]).toBe(0);
    expect(fileEvents[fileEvents.length - 1]).toBe(WEIGHTS.length);
    expect((await cache.keys()).filter(isPartialDownloadKey)).toEqual([]);
  });

  it('stops promptly on abort, keeps the bytes, and resumes from them on the next call', async () => {
    const h = await hub({ throttle: { chunkBytes: 4096, delayMs: 2 } });
    const cache = memoryModelCache();
    const controller = new AbortController();
    let abortedAt = 0;
    const err = await rejection(
      downloadHubModel(
        REPO,
        opts(h, {
          cache,
          signal: controller.signal,
          checkpointBytes: 8192,
          onProgress: (p) => {
            if (p.file === 'model.safetensors' && p.fileLoaded >= 40_000 && !controller.signal.aborted) {
              abortedAt = performance.now();
              controller.abort();
            }
          },
        }),
      ),
    );
    expect(err.name).toBe('AbortError');
    expect(performance.now() - abortedAt).toBeLessThan(1000);

    const url = hubFileUrl(REPO, 'model.safetensors', { endpoint: h.url });
    const partial = await readPartialDownload(cache, url);
    expect(partial).not.toBeNull();
    expect(partial!.received).toBeGreaterThanOrEqual(40_000);
    expect(partial!.received).toBeLessThan(WEIGHTS.length);
    expect(partial!.expectedSize).toBe(WEIGHTS.length);
    expect(new Uint8Array(await partial!.data.arrayBuffer())).toEqual(WEIGHTS.subarray(0, partial!.received));
    expect(await cache.get(url)).toBeNull();

    const files = await downloadHubModel(REPO, opts(h, { cache }));
    expect(await bytesOf(files, 'model.safetensors')).toEqual(WEIGHTS);
    const gets = h.requests.filter((r) => r.path.endsWith('/model.safetensors') && r.method === 'GET');
    expect(gets.map((r) => r.range)).toEqual([null, `bytes=${partial!.received}-`]);
    expect(gets[1].status).toBe(206);
    // Files finished before the abort were not downloaded again.
    expect(h.count('/config.json', 'GET')).toBe(1);
    expect((await cache.keys()).filter(isPartialDownloadKey)).toEqual([]);
  });

  it('rejects at once with an AbortError when the signal is already aborted', async () => {
    const h = await hub();
    const controller = new AbortController();
    controller.abort();
    const err = await rejection(downloadHubModel(REPO, opts(h, { signal: controller.signal })));
    expect(err.name).toBe('AbortError');
    expect(h.requests).toHaveLength(0);
  });

  it('starts over when the file changed on the server between abort and resume (If-Range)', async () => {
    const h = await hub({ throttle: { chunkBytes: 4096, delayMs: 1 } });
    const cache = memoryModelCache();
    const controller = new AbortController();
    const err = await rejection(
      downloadHubModel(
        REPO,
        opts(h, {
          cache,
          signal: controller.signal,
          checkpointBytes: 4096,
          onProgress: (p) => p.file === 'model.safetensors' && p.fileLoaded >= 30_000 && controller.abort(),
        }),
      ),
    );
    expect(err.name).toBe('AbortError');
    // A new version of the weights: same size, last byte (tensor data, not the header) differs.
    const changed = WEIGHTS.slice();
    changed[changed.length - 1] ^= 0xff;
    h.setFile(REPO, 'model.safetensors', changed);

    const files = await downloadHubModel(REPO, opts(h, { cache }));
    expect(await bytesOf(files, 'model.safetensors')).toEqual(changed);
    const gets = h.requests.filter((r) => r.path.endsWith('/model.safetensors') && r.method === 'GET');
    expect(gets).toHaveLength(2);
    expect(gets[1].range).toMatch(/^bytes=\d+-$/);
    expect(gets[1].ifRange).toBe(`"${await sha256Hex(WEIGHTS)}"`);
    expect(gets[1].status).toBe(200); // the ETag no longer matched: the whole new file
  });

  it('keeps the bytes when the retries run out and resumes on the next call', async () => {
    const h = await hub({ drops: { [`${REPO}/model.safetensors`]: { afterBytes: 60_000, times: 1 } } });
    const cache = memoryModelCache();
    const err = await rejection(downloadHubModel(REPO, opts(h, { cache, retries: 0 })));
    expect(err).toBeInstanceOf(HubError);
    const url = hubFileUrl(REPO, 'model.safetensors', { endpoint: h.url });
    expect(err.message).toContain(url);
    expect(err.message).toMatch(/broke off after 60000 of \d+ bytes/);
    expect((err as HubError).url).toBe(url);
    expect((await readPartialDownload(cache, url))?.received).toBe(60_000);

    const files = await downloadHubModel(REPO, opts(h, { cache, retries: 0 }));
    expect(await bytesOf(files, 'model.safetensors')).toEqual(WEIGHTS);
    expect(h.requests.filter((r) => r.path.endsWith('/model.safetensors') && r.method === 'GET').map((r) => r.range)).toEqual([null, 'bytes=60000-']);
  });

  it('retries transient server errors, and reports them when they persist', async () => {
    const flaky = await hub({ failures: { [`${REPO}/model.safetensors`]: { status: 503, times: 2 } } });
    const files = await downloadHubModel(REPO, opts(flaky));
    expect(await bytesOf(files, 'model.safetensors')).toEqual(WEIGHTS);
    expect(flaky.count('/model.safetensors', 'GET')).toBe(3);

    const down = await hub({ failures: { [`${REPO}/model.safetensors`]: { status: 503, times: 100 } } });
    const err = await rejection(downloadHubModel(REPO, opts(down, { retries: 2 })));
    expect(err).toBeInstanceOf(HubError);
    expect((err as HubError).status).toBe(503);
    expect(err.message).toContain(`${down.url}/${REPO}/resolve/main/model.safetensors answered HTTP 503`);
    expect(down.count('/model.safetensors', 'GET')).toBe(3);
  });

  it('names the URL when the repository does not exist', async () => {
    const h = await hub();
    const err = await rejection(downloadHubModel('nobody/missing-model', opts(h)));
    expect(err).toBeInstanceOf(HubError);
    const url = `${h.url}/nobody/missing-model/resolve/main/config.json`;
    expect((err as HubError).url).toBe(url);
    expect((err as HubError).status).toBe(404);
    expect(err.message).toContain(`${url} answered HTTP 404`);
    expect(err.message).toMatch(/no repository "nobody\/missing-model".*access token/);
  });

  it('names the revision when it does not exist', async () => {
    const h = await hub();
    const err = await rejection(downloadHubModel(REPO, opts(h, { revision: 'v9' })));
    expect(err).toBeInstanceOf(HubError);
    expect(err.message).toContain(`${h.url}/${REPO}/resolve/v9/config.json`);
    expect(err.message).toMatch(/no revision "v9"/);
  });

  it('reports missing weights and a missing tokenizer.json', async () => {
    const noWeights = await hub({ repos: { [REPO]: { 'config.json': MODEL['config.json'], 'tokenizer.json': MODEL['tokenizer.json'] } } });
    const err = await rejection(downloadHubModel(REPO, opts(noWeights)));
    expect(err).toBeInstanceOf(HubError);
    expect(err.message).toContain(`${noWeights.url}/${REPO}/resolve/main/model.safetensors`);
    expect(err.message).toContain(`${noWeights.url}/${REPO}/resolve/main/model.safetensors.index.json`);

    const noTokenizer = await hub({ repos: { [REPO]: { 'config.json': MODEL['config.json'], 'model.safetensors': WEIGHTS } } });
    const err2 = await rejection(downloadHubModel(REPO, opts(noTokenizer)));
    expect(err2).toBeInstanceOf(HubError);
    expect(err2.message).toContain(`${noTokenizer.url}/${REPO}/resolve/main/tokenizer.json answered 404`);
  });

  it('reports an index that names a missing shard', async () => {
    const sharded = shardedGpt2();
    delete sharded['model-00002-of-00002.safetensors'];
    const h = await hub({ repos: { [REPO]: sharded } });
    const err = await rejection(downloadHubModel(REPO, opts(h)));
    expect(err).toBeInstanceOf(HubError);
    expect(err.message).toContain(`names the shard model-00002-of-00002.safetensors, but ${h.url}/${REPO}/resolve/main/model-00002-of-00002.safetensors answered 404`);
  });

  it('sends the token to private repositories and explains a 401 without one', async () => {
    const h = await hub({ token: 'hf_secret' });
    const err = await rejection(downloadHubModel(REPO, opts(h)));
    expect(err).toBeInstanceOf(HubError);
    expect((err as HubError).status).toBe(401);
    expect(err.message).toMatch(/private or gated.*access token/);

    h.requests.length = 0;
    const files = await downloadHubModel(REPO, opts(h, { token: 'hf_secret' }));
    expect(await bytesOf(files, 'config.json')).toEqual(MODEL['config.json']);
    expect(h.requests.length).toBeGreaterThan(0);
    expect(h.requests.every((r) => r.authorization === 'Bearer hf_secret')).toBe(true);

    const wrong = await rejection(downloadHubModel(REPO, opts(h, { token: 'hf_wrong' })));
    expect(wrong.message).toMatch(/token was refused/);
  });

  it('turns network failures into a HubError with the URL and a hint', async () => {
    const h = await hub();
    const endpoint = h.url;
    await hubs.pop()!.close();
    const err = await rejection(downloadHubModel(REPO, { endpoint, cache: null, retries: 1, retryDelayMs: 0 }));
    expect(err).toBeInstanceOf(HubError);
    expect((err as HubError).url).toMatch(new RegExp(`^${endpoint}/${REPO}/resolve/main/`));
    expect(err.message).toMatch(/Could not download http:\/\/127\.0\.0\.1:\d+\/test-owner\/tiny-gpt2\/resolve\/main\/\S+ \(.*\): check the internet connection/);
  });

  it('refuses a body longer than its Content-Length, and retries one that ends short', async () => {
    const h = await hub();
    const weightsUrl = hubFileUrl(REPO, 'model.safetensors', { endpoint: h.url });
    const lying = (extra: number): typeof fetch =>
      async (input, init) => {
        const url = String(input);
        if (url !== weightsUrl || init?.method === 'HEAD') return fetch(input, init);
        const body = extra > 0 ? new Uint8Array([...WEIGHTS, ...new Uint8Array(extra)]) : WEIGHTS.slice(0, WEIGHTS.length + extra);
        return new Response(body as Uint8Array<ArrayBuffer>, { status: 200, headers: { 'content-length': String(WEIGHTS.length), 'accept-ranges': 'none' } });
      };
    const long = await rejection(downloadHubModel(REPO, opts(h, { fetchImpl: lying(5) })));
    expect(long).toBeInstanceOf(HubError);
    expect(long.message).toBe(`${weightsUrl}: received ${WEIGHTS.length + 5} bytes but the server announced ${WEIGHTS.length} (Content-Length): the download is corrupt; try again`);

    let calls = 0;
    const short: typeof fetch = async (input, init) => {
      if (String(input) === weightsUrl && init?.method !== 'HEAD') calls++;
      return lying(-100)(input, init);
    };
    const err = await rejection(downloadHubModel(REPO, opts(h, { fetchImpl: short, retries: 2 })));
    expect(err).toBeInstanceOf(HubError);
    expect(err.message).toMatch(new RegExp(`broke off after ${WEIGHTS.length - 100} of ${WEIGHTS.length} bytes`));
    expect(calls).toBe(3);
  });
});

describe('model cache', () => {
  it('keeps partial downloads in segments that read back as one prefix', async () => {
    const cache = memoryModelCache();
    const key = 'https://hub.example/o/n/resolve/main/model.safetensors';
    const v = { expectedSize: 10, etag: '"abc"', lastModified: null, acceptsRanges: true };
    expect(await readPartialDownload(cache, key)).toBeNull();
    await appendPartialDownload(cache, key, v, new Blob([new Uint8Array([1, 2, 3])]));
    await appendPartialDownload(cache, key, v, new Blob([new Uint8Array([4, 5])]));
    const p = await readPartialDownload(cache, key);
    expect(p).toMatchObject({ received: 5, expectedSize: 10, etag: '"abc"', acceptsRanges: true });
    expect([...new Uint8Array(await p!.data.arrayBuffer())]).toEqual([1, 2, 3, 4, 5]);
    expect((await cache.keys()).every(isPartialDownloadKey)).toBe(true);

    // A lost segment makes the whole record void, and it is cleaned up.
    await cache.delete(`${key}#partial-1`);
    expect(await readPartialDownload(cache, key)).toBeNull();
    expect(await cache.keys()).toEqual([]);

    await appendPartialDownload(cache, key, v, new Blob([new Uint8Array([9])]));
    await cache.put(key, new Blob(['complete']));
    await clearPartialDownload(cache, key);
    expect(await cache.keys()).toEqual([key]);
  });

  it('keeps "#partial" keys apart from their URL in Cache Storage, which ignores fragments', async () => {
    const storage = fakeCacheStorage();
    const cache = cacheStorageModelCache('test-cache', storage);
    const url = 'https://hub.example/o/n/resolve/main/model.safetensors';
    await cache.put(url, new Blob(['whole file']));
    await cache.put(partialDownloadKey(url), new Blob(['partial record']));
    await cache.put(`${url}?x=1#partial-0`, new Blob(['segment']));
    expect(await (await cache.get(url))!.text()).toBe('whole file');
    expect(await (await cache.get(partialDownloadKey(url)))!.text()).toBe('partial record');
    expect(await (await cache.get(`${url}?x=1#partial-0`))!.text()).toBe('segment');
    expect((await cache.keys()).sort()).toEqual([url, `${url}#partial`, `${url}?x=1#partial-0`].sort());
    await cache.delete(partialDownloadKey(url));
    expect(await cache.get(partialDownloadKey(url))).toBeNull();
    expect(await (await cache.get(url))!.text()).toBe('whole file');
    await expect(cache.put('not a url', new Blob([]))).rejects.toThrow(/key "not a url" is not a URL/);
  });

  it('runs a whole download and resume over Cache Storage', async () => {
    const h = await hub({ drops: { [`${REPO}/model.safetensors`]: { afterBytes: 70_000, times: 1 } } });
    // The fake hub is on http://127.0.0.1, which Cache Storage accepts.
    const cache: ModelCache = cacheStorageModelCache('test-cache', fakeCacheStorage());
    const err = await rejection(downloadHubModel(REPO, opts(h, { cache, retries: 0, checkpointBytes: 16_384 })));
    expect(err).toBeInstanceOf(HubError);
    const files = await downloadHubModel(REPO, opts(h, { cache }));
    expect(await bytesOf(files, 'model.safetensors')).toEqual(WEIGHTS);
    expect(h.requests.filter((r) => r.path.endsWith('/model.safetensors') && r.method === 'GET').map((r) => r.range)).toEqual([null, 'bytes=70000-']);
    const before = h.requests.length;
    await downloadHubModel(REPO, opts(h, { cache }));
    expect(h.requests.length).toBe(before);
  });
});

/** Cache Storage as the spec has it where it matters here: requests match with the fragment removed. */
function fakeCacheStorage(): CacheStorage {
  const caches = new Map<string, Map<string, Blob>>();
  const strip = (r: RequestInfo | URL) => {
    const url = new URL(r instanceof Request ? r.url : String(r));
    url.hash = '';
    return url.href;
  };
  const open = async (name: string): Promise<Cache> => {
    if (!caches.has(name)) caches.set(name, new Map());
    const entries = caches.get(name)!;
    const cache = {
      async match(r: RequestInfo | URL) {
        const blob = entries.get(strip(r));
        return blob ? new Response(blob) : undefined;
      },
      async put(r: RequestInfo | URL, response: Response) {
        entries.set(strip(r), await response.blob());
      },
      async delete(r: RequestInfo | URL) {
        return entries.delete(strip(r));
      },
      async keys() {
        return [...entries.keys()].map((u) => new Request(u));
      },
    };
    return cache as unknown as Cache;
  };
  return { open } as unknown as CacheStorage;
}

async function sha256Hex(data: Uint8Array): Promise<string> {
  const digest = await crypto.subtle.digest('SHA-256', data as Uint8Array<ArrayBuffer>);
  return [...new Uint8Array(digest)].map((b) => b.toString(16).padStart(2, '0')).join('');
}
