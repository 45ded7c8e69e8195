// Shared by the browser end-to-end tests: build the app, serve it on 127.0.0.1 (a secure
// context, as WebGPU needs), and launch the system Chromium with WebGPU on SwiftShader.

import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import type { AddressInfo } from 'node:net';
import { chromium, type Browser, type Page } from 'playwright-core';

export const CHROMIUM = '/usr/bin/chromium';
export const ROOT = path.resolve(__dirname, '../..');
export const SCREENSHOTS = path.join(ROOT, 'test-results', 'screenshots');

/** Only skip where there is no browser and we are not in CI (CI must run these). */
export function browserMissingReason(): string | null {
  if (fs.existsSync(CHROMIUM)) return null;
  if (process.env.CI) throw new Error(`${CHROMIUM} is missing, and CI is set: install chromium (apt-get install chromium) to run the e2e tests.`);
  return `${CHROMIUM} not found: skipping the browser tests (install chromium to run them).`;
}

/** Builds the app into a fresh folder of its own (test files run in parallel). */
export function buildApp(): string {
  const outDir = fs.mkdtempSync(path.join(os.tmpdir(), 'finetune-e2e-dist-'));
  const vite = path.join(ROOT, 'node_modules', 'vite', 'bin', 'vite.js');
  const r = spawnSync(process.execPath, [vite, 'build', '--outDir', outDir, '--emptyOutDir', '--logLevel', 'warn'], { cwd: ROOT, encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`vite build failed:\n${r.stdout}\n${r.stderr}`);
  return outDir;
}

const TYPES: Record<string, string> = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.mjs': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.json': 'application/json',
  '.wasm': 'application/wasm',
  '.csv': 'text/csv; charset=utf-8',
  '.md': 'text/markdown; charset=utf-8',
  '.svg': 'image/svg+xml',
};

/** A model folder served the way the Hugging Face hub serves a repository. */
export interface HubRoute {
  /** owner/name */
  repo: string;
  dir: string;
  /** Send bodies in chunks of this many bytes, waiting chunkDelayMs between them (to watch progress). */
  chunkBytes?: number;
  chunkDelayMs?: number;
}

export interface TestServer {
  url: string;
  /** "METHOD /path" of every request, in order. */
  requests: string[];
  close: () => Promise<void>;
}

/**
 * A static server for the built app on 127.0.0.1 and a free port. With `hub`, it also answers
 * /hub/<repo>/resolve/main/<file> from a folder (HEAD and GET), so the page can download a model
 * from `${url}hub` as from a mirror of the hub, on the same origin.
 */
export async function serve(dir: string, opts: { hub?: HubRoute } = {}): Promise<TestServer> {
  const requests: string[] = [];
  const server = http.createServer((req, res) => {
    const urlPath = decodeURIComponent(new URL(req.url ?? '/', 'http://x').pathname);
    requests.push(`${req.method} ${urlPath}`);
    const hubPrefix = opts.hub ? `/hub/${opts.hub.repo}/resolve/main/` : null;
    if (hubPrefix && urlPath.startsWith('/hub/')) {
      const file = urlPath.startsWith(hubPrefix) ? path.join(opts.hub!.dir, urlPath.slice(hubPrefix.length)) : null;
      if (!file || !file.startsWith(opts.hub!.dir) || !fs.existsSync(file) || !fs.statSync(file).isFile()) {
        res.writeHead(404, { 'x-error-code': urlPath.startsWith(hubPrefix) ? 'EntryNotFound' : 'RepoNotFound' }).end('not found');
        return;
      }
      const bytes = fs.readFileSync(file);
      res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': bytes.length });
      if (req.method === 'HEAD') {
        res.end();
        return;
      }
      const chunk = opts.hub!.chunkBytes ?? bytes.length;
      const delay = opts.hub!.chunkDelayMs ?? 0;
      let at = 0;
      const pump = () => {
        if (res.destroyed) return;
        const end = Math.min(bytes.length, at + chunk);
        res.write(bytes.subarray(at, end));
        at = end;
        if (at < bytes.length) setTimeout(pump, delay);
        else res.end();
      };
      pump();
      return;
    }
    let file = path.join(dir, urlPath);
    if (!file.startsWith(dir)) {
      res.writeHead(403).end();
      return;
    }
    if (urlPath.endsWith('/')) file = path.join(file, 'index.html');
    fs.stat(file, (err, st) => {
      if (err || !st.isFile()) {
        res.writeHead(404, { 'content-type': 'text/plain' }).end('not found');
        return;
      }
      res.writeHead(200, { 'content-type': TYPES[path.extname(file)] ?? 'application/octet-stream', 'content-length': st.size });
      if (req.method === 'HEAD') res.end();
      else fs.createReadStream(file).pipe(res);
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}/`,
    requests,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}

export const CHROMIUM_ARGS = [
  '--enable-unsafe-webgpu',
  '--enable-features=Vulkan',
  '--use-vulkan=swiftshader',
  '--use-webgpu-adapter=swiftshader',
  '--no-sandbox',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--no-first-run',
];

export function launchBrowser(extraArgs: string[] = []): Promise<Browser> {
  return chromium.launch({ executablePath: CHROMIUM, headless: true, args: [...CHROMIUM_ARGS, ...extraArgs] });
}

/** Collects page errors and console errors so a test can show them when it fails. */
export function watchConsole(page: Page): string[] {
  const lines: string[] = [];
  page.on('pageerror', (e) => lines.push(`pageerror: ${e.message}`));
  page.on('console', (m) => {
    if (m.type() === 'error' || m.type() === 'warning') lines.push(`${m.type()}: ${m.text()}`);
  });
  return lines;
}

export async function screenshot(page: Page, name: string, fullPage = true): Promise<void> {
  fs.mkdirSync(SCREENSHOTS, { recursive: true });
  await page.screenshot({ path: path.join(SCREENSHOTS, `${name}.png`), fullPage, timeout: 90_000 });
}

/**
 * A screenshot of one section of the page (its data-testid), for test-results/screenshots.
 * Cut from a full-page shot rather than taken with locator.screenshot(), which first waits for
 * the element to hold still over two animation frames: on a loaded 2-core CI machine, where
 * SwiftShader's WebGPU work shares Chromium's GPU process with the compositor, frames can stall
 * for longer than that wait allows (a CI run failed there). The section can still move while the
 * worker works in the background (after a lost device the model section shows the weights
 * uploading again, above the Train section), so the shot is retaken until the section's box is
 * the same before and after it, for up to a minute; after that the last shot stays. A screenshot
 * is a record for people, never an assertion.
 */
export async function sectionScreenshot(page: Page, testId: string, name: string): Promise<void> {
  fs.mkdirSync(SCREENSHOTS, { recursive: true });
  const section = page.getByTestId(testId);
  const box = () =>
    section.evaluate((el) => {
      const r = el.getBoundingClientRect();
      return { x: r.left + window.scrollX, y: r.top + window.scrollY, width: r.width, height: r.height };
    });
  const deadline = Date.now() + 60_000;
  for (;;) {
    const before = await box();
    await page.screenshot({ path: path.join(SCREENSHOTS, `${name}.png`), fullPage: true, clip: before, timeout: 90_000 });
    const after = await box();
    if (JSON.stringify(after) === JSON.stringify(before) || Date.now() > deadline) return;
    await page.waitForTimeout(500);
  }
}

/** The number shown in an element (e.g. "2.3456"). */
export async function numberIn(page: Page, testId: string): Promise<number> {
  const text = (await page.getByTestId(testId).textContent()) ?? '';
  const m = /-?\d+(\.\d+)?(e[-+]?\d+)?/i.exec(text.replace(/,/g, ''));
  if (!m) throw new Error(`no number in [data-testid=${testId}]: "${text}"`);
  return Number(m[0]);
}

/** A prompt,completion CSV of small sums in words ("3 plus 1" -> "four"), `rows` rows: data the tiny models learn from. */
export function sumsCsv(rows: number): string {
  const words = ['zero', 'one', 'two', 'three', 'four', 'five', 'six', 'seven', 'eight', 'nine', 'ten'];
  const lines = ['prompt,completion'];
  for (let i = 0; i < rows; i++) {
    const a = (i * 7 + 3) % 6;
    const b = (i * 3 + 1) % 5;
    lines.push(`${a} plus ${b},${words[a + b]}`);
  }
  return lines.join('\n') + '\n';
}

/**
 * Waits for the training section's "done" box. A run on SwiftShader beside another test file
 * can take several times as long as alone, so there is no fixed deadline: it fails only when the
 * run shows no progress (the phase, the step counter and the checkpoint line all unchanged) for
 * `stallMs`, or at once when the run stops with an error, saying which and where it stood.
 */
/** Waits for at least `atLeast` rows in the evaluation table; a run that stops with an error says why. */
export async function waitForEvalRows(page: Page, atLeast: number, timeoutMs = 60_000): Promise<number> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const rows = await page.getByTestId('eval-row').count();
    if (rows >= atLeast) return rows;
    const text = (id: string) => page.getByTestId(id).first().textContent({ timeout: 5_000 }).catch(() => '');
    if (await page.getByTestId('train-error').isVisible().catch(() => false)) throw new Error(`the run stopped with an error before ${atLeast} evaluations showed: ${await text('train-error')}`);
    if (Date.now() > end) throw new Error(`${rows} evaluation rows after ${timeoutMs / 1000} s, not ${atLeast} (phase "${await text('train-phase')}")`);
    await page.waitForTimeout(250);
  }
}

export async function waitForTrainDone(page: Page, opts: { stallMs?: number } = {}): Promise<void> {
  const stallMs = opts.stallMs ?? 150_000;
  const text = (id: string) => page.getByTestId(id).first().textContent({ timeout: 5_000 }).catch(() => '');
  let last = '';
  let changedAt = Date.now();
  for (;;) {
    if (await page.getByTestId('train-done').isVisible().catch(() => false)) return;
    const error = await page.getByTestId('train-error').isVisible().catch(() => false);
    const state = `phase "${await text('train-phase')}", "${await text('step-counter')}", "${await text('checkpoint-line')}"`;
    if (error) throw new Error(`the run stopped with an error (${state}): ${await text('train-error')}`);
    if (state !== last) {
      last = state;
      changedAt = Date.now();
    } else if (Date.now() - changedAt > stallMs) {
      throw new Error(`no progress in ${Math.round(stallMs / 1000)} s: ${state}`);
    }
    await page.waitForTimeout(1_000);
  }
}

/**
 * Waits until the run that was just started saved adapter `name`; fails at once with the run's error,
 * or after `timeoutMs` with the phase and what the page shows instead (a press of Start that never
 * started a run shows as the previous run's "Done").
 */
export async function waitForSaved(page: Page, name: string, timeoutMs = 150_000): Promise<void> {
  const end = Date.now() + timeoutMs;
  const text = (id: string) => page.getByTestId(id).first().textContent({ timeout: 5_000 }).catch(() => '');
  for (;;) {
    const done = (await page.getByTestId('train-done').isVisible().catch(() => false)) ? ((await text('train-done')) ?? '') : '';
    if (done.includes(`Saved ${name} to the library`)) return;
    if (await page.getByTestId('train-error').isVisible().catch(() => false)) throw new Error(`${name}: the run stopped with an error: ${await text('train-error')}`);
    if (Date.now() > end) {
      throw new Error(`${name}: not saved after ${timeoutMs / 1000} s (phase "${await text('train-phase')}", "${await text('step-counter')}", done box "${done.slice(0, 80)}")`);
    }
    await page.waitForTimeout(250);
  }
}
