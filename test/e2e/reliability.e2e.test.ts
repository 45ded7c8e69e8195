// Faults a long run meets, in a real browser, and what is left after each (docs/reliability.md):
// - the GPU device lost mid-run (device.destroy() through the ?test-hooks page): the run stops,
//   its last checkpoint is kept, and it resumes on a new device without a page reload;
// - the tab reloaded mid-run (no pause first): the run resumes from its last checkpoint;
// - NaN in the loss (the adapter poisoned after a checkpoint): the run stops at that step with a
//   hint to lower the learning rate, and the checkpoint before it is kept, finite;
// - a checkpoint write cut off before its transaction committed: the previous checkpoint stays whole;
// - a checkpoint write refused for want of space (QuotaExceededError): the page says how much it
//   needed, the run waits paused, and goes on once there is room. (A real small quota through CDP's
//   Storage.overrideQuotaForOrigin was tried first: Chromium 156 does not apply it to IndexedDB
//   writes reliably, so the storage layer raises the browser's error itself, through a test hook.)
// - the Content-Security-Policy: neither the page nor the worker can reach an unlisted origin.
// Every resumed run must end on the loss curve of an uninterrupted run with the same settings.

import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Browser, BrowserContext, Page } from 'playwright-core';
import { browserMissingReason, buildApp, launchBrowser, numberIn, ROOT, sectionScreenshot, serve, watchConsole, type TestServer, waitForTrainDone } from './helpers';

const skipReason = browserMissingReason();
const MODEL_DIR = path.join(ROOT, 'test', 'fixtures', 'tiny-gpt2');
const WORDS = ['zero', 'one', 'two', 'three', 'four', 'five', 'six', 'seven', 'eight', 'nine', 'ten', 'eleven', 'twelve', 'thirteen', 'fourteen', 'fifteen', 'sixteen', 'seventeen', 'eighteen'];
const STEPS = 12;
const CHECKPOINT_EVERY = 3;
/**
 * How close a resumed run's per-step losses must be to the uninterrupted run's. Data order and
 * dropout masks follow from the seed and the step, and the checkpoint holds the adapter with its
 * AdamW moments, so a resumed run repeats the same arithmetic: on the same (software) GPU the
 * losses come out equal; the bound leaves room for a driver that sums in another order.
 */
const LOSS_TOLERANCE = 1e-4;

function arithmeticCsv(rows: number): string {
  const lines = ['sum,comment,words'];
  for (let i = 0; i < rows; i++) {
    const a = (i * 7 + 3) % 10;
    const b = (i * 3 + 1) % 10;
    lines.push(`${a} plus ${b},row ${i + 1} of a generated arithmetic table,${WORDS[a + b]}`);
  }
  return lines.join('\n') + '\n';
}

/** Reads a store of the app's database from the page (the database must exist already). */
async function readStore<T>(page: Page, store: string): Promise<T[]> {
  return page.evaluate(
    (store) =>
      new Promise<T[]>((resolve, reject) => {
        const open = indexedDB.open('finetune-in-browser');
        // Never create the database here: the app's own open would then find no stores.
        open.onupgradeneeded = () => open.transaction?.abort();
        open.onerror = () => reject(new Error(`cannot open the database: ${open.error?.message}`));
        open.onsuccess = () => {
          const db = open.result;
          const req = db.transaction(store, 'readonly').objectStore(store).getAll();
          req.onsuccess = () => {
            db.close();
            resolve(req.result as T[]);
          };
          req.onerror = () => reject(req.error);
        };
      }),
    store,
  );
}

interface StoredLog {
  logHistory: { step: number; loss?: number }[];
}

/** The per-step training losses of the finished adapter called `name`, by step. */
async function adapterLosses(page: Page, name: string): Promise<number[]> {
  const adapters = await readStore<StoredLog & { name: string }>(page, 'adapters');
  const a = adapters.find((x) => x.name === name);
  if (!a) throw new Error(`no adapter "${name}" in the library (have: ${adapters.map((x) => x.name).join(', ')})`);
  const losses = a.logHistory.filter((e) => e.loss !== undefined);
  expect(losses.map((e) => e.step)).toEqual(Array.from({ length: STEPS }, (_, i) => i + 1));
  return losses.map((e) => e.loss!);
}

/** The stored checkpoint of the run named `name`: its step, a digest of every tensor's bytes, and whether every value is finite. */
async function storedCheckpoint(page: Page, name: string): Promise<{ runId: string; step: number; digest: string; finite: boolean }> {
  const metas = await readStore<{ runId: string; adapterName: string; step: number }>(page, 'checkpoints');
  const meta = metas.find((m) => m.adapterName === name);
  if (!meta) throw new Error(`no checkpoint of "${name}"`);
  const { digest, finite } = await page.evaluate(
    (runId) =>
      new Promise<{ digest: string; finite: boolean }>((resolve, reject) => {
        const open = indexedDB.open('finetune-in-browser');
        open.onerror = () => reject(open.error);
        open.onsuccess = () => {
          const db = open.result;
          const req = db.transaction('checkpointTensors', 'readonly').objectStore('checkpointTensors').get(runId);
          req.onerror = () => reject(req.error);
          req.onsuccess = async () => {
            db.close();
            const rec = req.result as { params: { name: string; value: Float32Array; m: Float32Array; v: Float32Array }[] } | undefined;
            if (!rec) return resolve({ digest: 'none', finite: false });
            const finite = rec.params.every((p) => [p.value, p.m, p.v].every((a) => a.every(Number.isFinite)));
            const parts = rec.params.flatMap((p) => [new TextEncoder().encode(p.name), new Uint8Array(p.value.buffer), new Uint8Array(p.m.buffer), new Uint8Array(p.v.buffer)]);
            const all = new Uint8Array(parts.reduce((s, p) => s + p.byteLength, 0));
            let at = 0;
            for (const p of parts) {
              all.set(p, at);
              at += p.byteLength;
            }
            const hash = new Uint8Array(await crypto.subtle.digest('SHA-256', all));
            resolve({ digest: [...hash].map((b) => b.toString(16).padStart(2, '0')).join(''), finite });
          };
        };
      }),
    meta.runId,
  );
  return { runId: meta.runId, step: meta.step, digest, finite };
}

function maxDifference(a: number[], b: number[]): number {
  expect(a.length).toBe(b.length);
  return Math.max(...a.map((x, i) => Math.abs(x - b[i])));
}

describe.skipIf(skipReason !== null)('reliability, in Chromium', () => {
  let browser: Browser;
  let context: BrowserContext;
  let server: TestServer;
  let page: Page;
  let consoleLines: string[];
  /** The uninterrupted run's per-step losses, the curve every resumed run must end on. */
  let baseline: number[] = [];
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'finetune-reliability-'));
  const csvPath = path.join(tmp, 'arithmetic.csv');

  const hook = (h: unknown) => page.evaluate((h) => (window as unknown as { finetuneTestHooks: (h: unknown) => Promise<{ outcome: string; blockedUri?: string | null }> }).finetuneTestHooks(h), h);

  async function loadInputs(): Promise<void> {
    await page.getByTestId('data-file-input').setInputFiles(csvPath);
    await expect.poll(() => page.getByTestId('data-summary').textContent().catch(() => ''), { timeout: 30_000 }).toContain('arithmetic.csv');
    await page.getByTestId('map-completion').selectOption('words');
    await page.getByTestId('model-folder-input').setInputFiles(MODEL_DIR);
    await expect.poll(() => page.getByTestId('model-name').textContent().catch(() => ''), { timeout: 60_000 }).toBe('tiny-gpt2');
  }

  /** The settings every run here trains with (the baseline's), under a name of its own. */
  async function setRun(name: string): Promise<void> {
    await page.getByTestId('setting-learningRate').fill('0.01');
    await page.getByTestId('setting-lengthUnit').selectOption('steps');
    await page.getByTestId('setting-steps').fill(String(STEPS));
    await page.getByTestId('setting-batchSize').fill('4');
    const more = page.getByTestId('more-settings');
    if ((await more.getAttribute('open')) === null) await more.locator('summary').click();
    await page.getByTestId('setting-checkpointEvery').fill(String(CHECKPOINT_EVERY));
    await page.getByTestId('adapter-name').fill(name);
    await expect.poll(() => page.getByTestId('plan-line').textContent().catch(() => ''), { timeout: 30_000 }).toMatch(new RegExp(`^${STEPS} steps of 4 examples`));
    await expect.poll(() => page.getByTestId('start').isEnabled(), { timeout: 30_000 }).toBe(true);
  }

  async function openApp(): Promise<void> {
    await page.goto(`${server.url}?test-hooks`);
    await page.getByTestId('gpu-name').waitFor({ timeout: 60_000 });
  }

  beforeAll(async () => {
    fs.writeFileSync(csvPath, arithmeticCsv(60));
    server = await serve(buildApp());
    browser = await launchBrowser();
    context = await browser.newContext({ viewport: { width: 1366, height: 900 } });
    page = await context.newPage();
    consoleLines = watchConsole(page);
    // A reload mid-run meets the app's "leave the page?" question: answer it as a user who leaves.
    page.on('dialog', (d) => void (d.type() === 'beforeunload' ? d.accept() : d.dismiss()));
  }, 120_000);

  afterAll(async () => {
    await browser?.close();
    await server?.close();
    fs.rmSync(tmp, { recursive: true, force: true });
    if (consoleLines?.length) console.log(`browser console:\n${consoleLines.join('\n')}`);
  });

  it('enforces the Content-Security-Policy: neither the page nor the training worker reaches an unlisted origin', { timeout: 120_000 }, async () => {
    // Anything that did leave for example.com would be answered here (there is no internet).
    const reached: string[] = [];
    await context.route('https://example.com/**', (route) => {
      reached.push(route.request().url());
      return route.fulfill({ status: 200, body: 'reached', headers: { 'access-control-allow-origin': '*' } });
    });
    await openApp();

    const policy = await page.locator('meta[http-equiv="Content-Security-Policy"]').getAttribute('content');
    expect(policy).toMatch(/connect-src 'self' https:\/\/huggingface\.co /);
    expect(policy).toContain("default-src 'self'");
    expect(policy).toContain("object-src 'none'");
    expect(policy).not.toContain('unsafe-inline');

    // The page's own fetch.
    const fromPage = await page.evaluate(async () => {
      let blocked: string | null = null;
      document.addEventListener('securitypolicyviolation', (e) => (blocked = e.blockedURI));
      let outcome: string;
      try {
        outcome = `ok ${(await fetch('https://example.com/from-page')).status}`;
      } catch (e) {
        outcome = `failed: ${(e as Error).message}`;
      }
      await new Promise((r) => setTimeout(r, 50));
      return { outcome, blocked };
    });
    expect(fromPage.outcome).toMatch(/^failed/);
    expect(fromPage.blocked).toBe('https://example.com/from-page');

    // The training worker's (where model downloads run): it starts from a blob: URL and so holds the page's policy.
    const fromWorker = await hook({ name: 'workerFetch', url: 'https://example.com/from-worker' });
    expect(fromWorker.outcome).toMatch(/^failed/);
    expect(fromWorker.blockedUri).toBe('https://example.com/from-worker');
    // An allowed origin (this one) goes through from the worker: the block above is the policy, not a broken fetch.
    expect((await hook({ name: 'workerFetch', url: `${server.url}favicon.svg` })).outcome).toBe('ok 200');

    // A hub mirror outside the list is refused with a reason before any request.
    await page.getByTestId('hub-endpoint-details').locator('summary').click();
    await page.getByTestId('hub-endpoint').fill('https://example.com');
    await page.getByTestId('repo-id').fill('test-org/tiny-gpt2');
    await page.getByTestId('download-model').click();
    await expect.poll(() => page.getByTestId('model-error').textContent().catch(() => ''), { timeout: 30_000 }).toMatch(/Content-Security-Policy blocks https:\/\/example\.com/);
    await sectionScreenshot(page, 'section-model', '50-csp-blocked-mirror');

    expect(reached).toEqual([]);
    await context.unroute('https://example.com/**');
    // The violations were the two tried on purpose; the app itself broke none.
    const violations = consoleLines.filter((l) => /Content Security Policy/i.test(l));
    expect(violations.every((l) => l.includes('https://example.com/from-'))).toBe(true);
  });

  it('trains the uninterrupted run the others must match', { timeout: 900_000 }, async () => {
    await openApp();
    await loadInputs();
    await setRun('baseline');
    await page.getByTestId('start').click();
    await waitForTrainDone(page);
    baseline = await adapterLosses(page, 'baseline');
    expect(baseline.every((l) => Number.isFinite(l) && l > 0)).toBe(true);
    expect(baseline[STEPS - 1]).toBeLessThan(baseline[0]);
  });

  it('a GPU device lost mid-run keeps the last checkpoint and resumes on a new device without a reload', { timeout: 900_000 }, async () => {
    expect(baseline.length).toBe(STEPS);
    // Same page, same inputs: a marker shows the page was never reloaded.
    await page.evaluate(() => ((window as unknown as { notReloaded: boolean }).notReloaded = true));
    await setRun('device lost');
    // Lost after step 7: the checkpoint at step 6 is the last one saved.
    await hook({ name: 'loseDevice', atStep: 7 });
    await page.getByTestId('start').click();

    const error = page.getByTestId('train-error');
    await expect.poll(() => error.textContent().catch(() => ''), { timeout: 200_000 }).toMatch(/GPU device was lost/);
    expect(await error.textContent()).toMatch(/Training stopped after step 7; the checkpoint at step 6 is kept: resume from it on a new GPU device/);
    expect(await page.getByTestId('train-phase').textContent()).toBe('Stopped by an error');
    const kept = await storedCheckpoint(page, 'device lost');
    expect(kept.step).toBe(6);
    await sectionScreenshot(page, 'section-train', '51-device-lost');

    // The worker is setting up the new device meanwhile; on a loaded CI machine frames can stall.
    await page.getByTestId('resume-after-error').click({ timeout: 120_000 });
    await waitForTrainDone(page);
    expect(await page.evaluate(() => (window as unknown as { notReloaded?: boolean }).notReloaded)).toBe(true);
    expect(await page.getByTestId('step-counter').textContent()).toMatch(/Step 12 \/ 12/);
    expect(Number(await page.getByTestId('loss-chart').getAttribute('data-points'))).toBe(STEPS);

    const resumed = await adapterLosses(page, 'device lost');
    const diff = maxDifference(resumed, baseline);
    console.log(`device loss at step 7, resumed from step 6: max |loss - uninterrupted| over ${STEPS} steps = ${diff.toExponential(2)}`);
    expect(diff).toBeLessThanOrEqual(LOSS_TOLERANCE);
  });

  it('a reload mid-run (no pause) resumes from the last checkpoint onto the same loss curve', { timeout: 900_000 }, async () => {
    await setRun('reloaded');
    await page.getByTestId('start').click();
    // Past the second checkpoint and still training: then the tab goes away.
    await expect.poll(() => page.getByTestId('checkpoint-line').textContent().catch(() => ''), { timeout: 200_000 }).toMatch(/Checkpoint saved at step (6|9) /);
    const before = await numberIn(page, 'step-counter');
    expect(before).toBeLessThan(STEPS);
    await page.reload();
    await page.getByTestId('gpu-name').waitFor({ timeout: 60_000 });
    const kept = await storedCheckpoint(page, 'reloaded');
    expect(kept.step % CHECKPOINT_EVERY).toBe(0);

    // The app offers it on return; it resumes once the model and data are back.
    const run = page.getByTestId('unfinished-run').filter({ hasText: 'reloaded' });
    await expect.poll(() => run.textContent().catch(() => ''), { timeout: 30_000 }).toContain(`step ${kept.step} of ${STEPS}`);
    await loadInputs();
    await expect.poll(() => run.getByRole('button', { name: 'Resume' }).isEnabled(), { timeout: 30_000 }).toBe(true);
    await run.getByRole('button', { name: 'Resume' }).click();
    await waitForTrainDone(page);

    const resumed = await adapterLosses(page, 'reloaded');
    const diff = maxDifference(resumed, baseline);
    console.log(`reload at step ${before}, resumed from step ${kept.step}: max |loss - uninterrupted| = ${diff.toExponential(2)}`);
    expect(diff).toBeLessThanOrEqual(LOSS_TOLERANCE);
  });

  it('NaN in the loss stops the run at that step, keeps the last good checkpoint and suggests a lower learning rate', { timeout: 300_000 }, async () => {
    await setRun('diverged');
    // After step 6 and its checkpoint, NaN in the adapter: step 7's loss is NaN.
    await hook({ name: 'poisonAdapter', atStep: 6 });
    await page.getByTestId('start').click();
    const error = page.getByTestId('train-error');
    await expect.poll(() => error.textContent().catch(() => ''), { timeout: 200_000 }).toMatch(/step 7: the loss became NaN/);
    const text = (await error.textContent()) ?? '';
    expect(text).toMatch(/^Learning rate:/); // the error points at the setting to change
    expect(text).toMatch(/try a lower learning rate\. The checkpoint at step 6 is kept in the library\./);
    expect(await page.getByTestId('resume-after-error').count()).toBe(0); // resuming would diverge again
    const kept = await storedCheckpoint(page, 'diverged');
    expect(kept.step).toBe(6);
    expect(kept.finite).toBe(true);
    expect((await readStore<{ name: string }>(page, 'adapters')).some((a) => a.name === 'diverged')).toBe(false);
    // the library keeps the checkpoint but does not offer to resume it: the same steps would diverge again
    const row = page.getByTestId('unfinished-run').filter({ hasText: 'diverged' });
    await expect.poll(() => row.getByTestId('unfinished-diverged').textContent().catch(() => ''), { timeout: 30_000 }).toMatch(/Stopped at step 7: the loss stopped being finite/);
    expect(await row.getByTestId('unfinished-resume').isDisabled()).toBe(true);
    await sectionScreenshot(page, 'section-train', '54-nan-loss');
  });

  it('a checkpoint write cut off before it commits leaves the previous checkpoint whole', { timeout: 900_000 }, async () => {
    await setRun('torn write');
    await hook({ name: 'failCheckpointWrite', atStep: 6, fault: 'abort' });
    await page.getByTestId('start').click();
    await expect.poll(() => page.getByTestId('checkpoint-line').textContent().catch(() => ''), { timeout: 200_000 }).toMatch(/Checkpoint saved at step 3 /);
    const first = await storedCheckpoint(page, 'torn write');
    expect(first.step).toBe(3);

    // Step 6's write is cut off after its meta and tensors were both put: the run waits, paused.
    const saveError = page.getByTestId('save-error');
    await expect.poll(() => saveError.textContent().catch(() => ''), { timeout: 200_000 }).toMatch(/cut off before it committed/);
    expect(await page.getByTestId('train-phase').textContent()).toBe('Paused');
    expect(await numberIn(page, 'step-counter')).toBe(6);
    const after = await storedCheckpoint(page, 'torn write');
    expect(after).toEqual(first); // step 3's meta and step 3's tensors, byte for byte
    await sectionScreenshot(page, 'section-train', '52-checkpoint-write-cut-off');

    // Resume writes step 6 for real (so the sameness above was not a write that never happens).
    await page.getByTestId('resume').click();
    await expect.poll(() => page.getByTestId('checkpoint-line').textContent().catch(() => ''), { timeout: 60_000 }).toMatch(/Checkpoint saved at step (6|9|12) /);
    const rewritten = await storedCheckpoint(page, 'torn write');
    expect(rewritten.step).toBeGreaterThanOrEqual(6);
    expect(rewritten.digest).not.toBe(first.digest);
    await waitForTrainDone(page);
    const diff = maxDifference(await adapterLosses(page, 'torn write'), baseline);
    expect(diff).toBeLessThanOrEqual(LOSS_TOLERANCE);
  });

  it('a checkpoint refused for want of storage is reported with the size needed, and the run goes on once there is room', { timeout: 900_000 }, async () => {
    await setRun('quota');
    await hook({ name: 'failCheckpointWrite', atStep: 3, fault: 'quota' });
    await page.getByTestId('start').click();
    const saveError = page.getByTestId('save-error');
    await expect.poll(() => saveError.textContent().catch(() => ''), { timeout: 200_000 }).toMatch(/Not enough browser storage to save the checkpoint at step 3/);
    const text = (await saveError.textContent()) ?? '';
    // The size of what it tried to write: adapter values and AdamW moments (3 × 4 bytes a parameter) and the run's log.
    const trainable = 2 * 8 * (32 + 96); // tiny-gpt2: 2 layers of LoRA r=8 on c_attn (32 → 96)
    const needed = /it needs about ([\d.]+) KB/.exec(text);
    expect(needed, text).not.toBeNull();
    expect(Number(needed![1]) * 1024).toBeGreaterThan(3 * 4 * trainable);
    expect(Number(needed![1]) * 1024).toBeLessThan(3 * 4 * trainable + 64 * 1024);
    expect(text).toMatch(/This site uses [\d.]+ (KB|MB|GB) of the [\d.]+ (KB|MB|GB) the browser allows it/);
    expect(text).toMatch(/press Resume to save again/);
    expect(await page.getByTestId('train-phase').textContent()).toBe('Paused');
    expect(await numberIn(page, 'step-counter')).toBe(3);
    // Nothing of this run was written: no half a checkpoint.
    expect((await readStore<{ adapterName: string }>(page, 'checkpoints')).some((c) => c.adapterName === 'quota')).toBe(false);
    await sectionScreenshot(page, 'section-train', '53-quota-exceeded');
    console.log(`quota error shown: ${text}`);

    // Room again (as after deleting old adapters): Resume saves and trains on.
    await page.getByTestId('resume').click();
    await waitForTrainDone(page);
    const diff = maxDifference(await adapterLosses(page, 'quota'), baseline);
    expect(diff).toBeLessThanOrEqual(LOSS_TOLERANCE);
    expect(consoleLines.filter((l) => l.startsWith('pageerror'))).toEqual([]);
  });
});

if (skipReason) describe('reliability, in Chromium', () => it.skip(skipReason, () => undefined));
