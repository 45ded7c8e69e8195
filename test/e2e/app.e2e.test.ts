// The whole app in a real browser, as a user drives it: load the sample, pick a CSV, map its
// columns, load the tiny GPT-2 folder, set a short run, train (pausing once), watch the loss fall,
// find the adapter in the library after a reload, download the zip and check it is a PEFT adapter.

import { createHash } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { unzipSync, strFromU8 } from 'fflate';
import type { Browser, Page } from 'playwright-core';
import { parseSafetensors } from '../../src/io/safetensors';
import { browserMissingReason, buildApp, launchBrowser, numberIn, ROOT, screenshot, sectionScreenshot, serve, watchConsole, type TestServer, waitForTrainDone } from './helpers';

const skipReason = browserMissingReason();
const MODEL_DIR = path.join(ROOT, 'test', 'fixtures', 'tiny-gpt2');
const HUB_REPO = 'test-org/tiny-gpt2';
const WORDS = ['zero', 'one', 'two', 'three', 'four', 'five', 'six', 'seven', 'eight', 'nine', 'ten', 'eleven', 'twelve', 'thirteen', 'fourteen', 'fifteen', 'sixteen', 'seventeen', 'eighteen'];

/** Column names the guesser cannot know: it picks "sum" and the long "comment"; the user must pick "words". */
function arithmeticCsv(rows: number): string {
  const lines = ['sum,comment,words'];
  for (let i = 0; i < rows; i++) {
    const a = (i * 7 + 3) % 10;
    const b = (i * 3 + 1) % 10;
    lines.push(`${a} plus ${b},row ${i + 1} of a generated arithmetic table,${WORDS[a + b]}`);
  }
  return lines.join('\n') + '\n';
}

describe.skipIf(skipReason !== null)('the app, end to end in Chromium', () => {
  let browser: Browser;
  let server: TestServer;
  let page: Page;
  let consoleLines: string[];
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'finetune-e2e-'));
  const csvPath = path.join(tmp, 'arithmetic.csv');

  beforeAll(async () => {
    fs.writeFileSync(csvPath, arithmeticCsv(60));
    // The fixture is also served as a hub repository, slowly enough to watch the progress bars.
    server = await serve(buildApp(), { hub: { repo: HUB_REPO, dir: MODEL_DIR, chunkBytes: 4096, chunkDelayMs: 60 } });
    browser = await launchBrowser();
    const context = await browser.newContext({ viewport: { width: 1366, height: 900 }, acceptDownloads: true });
    page = await context.newPage();
    consoleLines = watchConsole(page);
  }, 120_000);

  afterAll(async () => {
    await browser?.close();
    await server?.close();
    if (consoleLines?.length) console.log(`browser console:\n${consoleLines.join('\n')}`);
  });

  it('trains an adapter from a CSV and a local model folder, keeps it, and downloads a PEFT zip', { timeout: 900_000 }, async () => {
    await page.goto(server.url);

    // (a) The device: SwiftShader here, which must be called a software renderer, not "your GPU".
    const gpuCard = page.getByTestId('gpu-card');
    await expect.poll(() => gpuCard.textContent(), { timeout: 60_000 }).toMatch(/swiftshader/i);
    await expect(page.getByTestId('gpu-fallback').textContent()).resolves.toMatch(/software renderer/);
    expect(await gpuCard.textContent()).not.toMatch(/your GPU/i);
    // no f16 subgroup matrices in SwiftShader: every product in f32, and no precision to choose
    expect(await page.getByTestId('gpu-tensor-cores').textContent()).toBe('no');
    await screenshot(page, '01-start');

    // The sample loads with one click.
    await page.getByTestId('try-sample').click();
    await expect.poll(() => page.getByTestId('data-summary').textContent(), { timeout: 30_000 }).toContain('200 rows');
    expect(await page.getByTestId('data-preview').textContent()).toContain('name:');

    // (b) Our own CSV through the file input, then map its columns.
    await page.getByTestId('data-file-input').setInputFiles(csvPath);
    await expect.poll(() => page.getByTestId('data-summary').textContent(), { timeout: 30_000 }).toContain('arithmetic.csv');
    expect(await page.getByTestId('data-summary').textContent()).toContain('60 rows');
    expect(await page.getByTestId('data-preview').textContent()).toContain('3 plus 1');
    expect(await page.getByTestId('map-completion').inputValue()).toBe('comment'); // the guess, which is wrong here
    await page.getByTestId('map-prompt').selectOption('sum');
    await page.getByTestId('map-completion').selectOption('words');
    await page.getByTestId('map-template').fill('Q: {sum}\nA: ');

    // (c) The base model from a folder on disk.
    await page.getByTestId('model-folder-input').setInputFiles(MODEL_DIR);
    await expect.poll(() => page.getByTestId('model-name').textContent().catch(() => ''), { timeout: 60_000 }).toBe('tiny-gpt2');
    const config = JSON.parse(fs.readFileSync(path.join(MODEL_DIR, 'config.json'), 'utf8'));
    // LoRA r=8 on c_attn ([n_embd] -> [3 n_embd]) in every layer: r (in + out) each.
    const expectedTrainable = config.n_layer * 8 * (config.n_embd + 3 * config.n_embd);
    expect(await numberIn(page, 'trainable-params')).toBe(expectedTrainable);

    // Token statistics now that the tokenizer is known; the template shows in the sample.
    await expect.poll(() => page.getByTestId('sample-example').textContent().catch(() => ''), { timeout: 30_000 }).toMatch(/Q: \d plus \d\s*A:/);
    expect(await page.getByTestId('examples-count').textContent()).toMatch(/54 train · 6 validation/);
    expect(await page.getByTestId('truncated-count').textContent()).toBe('none');
    await expect.poll(() => page.getByTestId('memory-estimate').textContent(), { timeout: 30_000 }).toMatch(/about [\d.]+ (KB|MB)/);

    // (d) Settings: a bad value is refused inline with a reason, and blocks Start.
    await page.getByTestId('setting-rank').fill('0');
    await expect(page.getByTestId('setting-rank-error').textContent()).resolves.toMatch(/Rank must be between 1 and 1024/);
    expect(await page.getByTestId('start').isDisabled()).toBe(true);
    await page.getByTestId('setting-learningRate').fill('fast');
    await expect(page.getByTestId('setting-learningRate-error').textContent()).resolves.toMatch(/must be a positive number/);
    await page.getByTestId('setting-rank').fill('8');
    await page.getByTestId('setting-learningRate').fill('0.01');
    await page.getByTestId('setting-lengthUnit').selectOption('steps');
    await page.getByTestId('setting-steps').fill('12');
    await page.getByTestId('setting-batchSize').fill('4');
    await page.getByTestId('setting-maxLength').fill('64');
    await page.getByTestId('adapter-name').fill('arithmetic in words');
    await expect.poll(() => page.getByTestId('plan-line').textContent().catch(() => ''), { timeout: 30_000 }).toMatch(/^12 steps of 4 examples/);
    await expect.poll(() => page.getByTestId('start').isEnabled(), { timeout: 10_000 }).toBe(true);
    await screenshot(page, '02-ready-to-train');

    // (e) Train; pause once mid-run (a checkpoint is saved, the step stops advancing), then resume.
    await page.getByTestId('start').click();
    await expect.poll(() => numberIn(page, 'step-counter').catch(() => 0), { timeout: 120_000 }).toBeGreaterThanOrEqual(3);
    await sectionScreenshot(page, 'section-train', '03-training');
    // The memory estimate made before training matches what the run allocated (within 5 %).
    const run = page.getByTestId('run');
    const actualBytes = Number(await run.getAttribute('data-gpu-bytes'));
    const estimatedBytes = Number(await run.getAttribute('data-estimate-bytes'));
    expect(estimatedBytes).toBeGreaterThan(0);
    expect(Math.abs(actualBytes - estimatedBytes) / estimatedBytes).toBeLessThan(0.05);
    await page.getByTestId('pause').click();
    await expect.poll(() => page.getByTestId('train-phase').textContent(), { timeout: 60_000 }).toBe('Paused');
    expect(await page.getByTestId('checkpoint-line').textContent()).toMatch(/Checkpoint saved at step \d+/);
    const pausedAt = await numberIn(page, 'step-counter');
    await page.waitForTimeout(1500);
    expect(await numberIn(page, 'step-counter')).toBe(pausedAt);
    await page.getByTestId('resume').click();
    await waitForTrainDone(page);

    // The loss fell: the numbers on screen, first step against the last.
    const firstLoss = await numberIn(page, 'loss-first');
    const lastLoss = await numberIn(page, 'loss-latest');
    expect(firstLoss).toBeGreaterThan(0);
    expect(lastLoss).toBeLessThan(firstLoss);
    expect(await page.getByTestId('step-counter').textContent()).toMatch(/Step 12 \/ 12/);
    expect(Number(await page.getByTestId('loss-chart').getAttribute('data-points'))).toBe(12);
    // Evaluation every ceil(12 / 10) = 2 steps by default: 6 validation points.
    expect(Number(await page.getByTestId('loss-chart').getAttribute('data-evals'))).toBe(6);
    expect(await numberIn(page, 'eval-loss')).toBeGreaterThan(0);
    await screenshot(page, '04-trained');

    // (f) The library has it; rename it; it survives a reload.
    const rows = page.getByTestId('library-row');
    await expect.poll(() => rows.count()).toBe(1);
    expect(await page.getByTestId('library-name').textContent()).toBe('arithmetic in words');
    expect(await numberIn(page, 'library-loss')).toBeCloseTo(lastLoss, 4);
    // The data file is recorded by its SHA-256.
    const sha = createHash('sha256').update(fs.readFileSync(csvPath)).digest('hex');
    expect(await page.getByTestId('library-data').getAttribute('title')).toBe(`arithmetic.csv: sha256:${sha}`);
    await page.getByTestId('library-rename').click();
    await page.getByTestId('rename-input').fill('arith-words v1');
    await page.getByTestId('rename-save').click();
    await expect.poll(() => page.getByTestId('library-name').textContent()).toBe('arith-words v1');

    // (g) The adapter merged into the loaded base model (merge_and_unload): a zipped model folder.
    const [mergedDownload] = await Promise.all([page.waitForEvent('download'), page.getByTestId('library-merge').click()]);
    const mergedName = mergedDownload.suggestedFilename();
    expect(mergedName).toMatch(/-arith-words-v1-merged\.zip$/);
    const mergedPath = path.join(tmp, 'merged.zip');
    await mergedDownload.saveAs(mergedPath);
    const mergedFiles = unzipSync(new Uint8Array(fs.readFileSync(mergedPath)));
    const folder = `${mergedName.replace(/\.zip$/, '')}/`;
    expect(Object.keys(mergedFiles)).toEqual(expect.arrayContaining(['config.json', 'model.safetensors', 'tokenizer.json', 'tokenizer_config.json'].map((f) => folder + f)));
    expect(Object.keys(mergedFiles).some((f) => f.includes('adapter'))).toBe(false);
    const mergedSt = parseSafetensors(mergedFiles[`${folder}model.safetensors`], 'merged model.safetensors');
    const baseSt = parseSafetensors(new Uint8Array(fs.readFileSync(path.join(MODEL_DIR, 'model.safetensors'))), 'base model.safetensors');
    expect([...mergedSt.tensors.keys()].sort()).toEqual([...baseSt.tensors.keys()].sort());
    expect(Array.from(mergedSt.getF32('transformer.ln_f.weight'))).toEqual(Array.from(baseSt.getF32('transformer.ln_f.weight')));
    expect(await page.getByTestId('library-row').textContent()).toMatch(/Merged 2 weights \(F32\)/);

    // (h) A Python project that continues the run with transformers + PEFT, with the data loaded now.
    const [pyDownload] = await Promise.all([page.waitForEvent('download'), page.getByTestId('library-python').click()]);
    expect(pyDownload.suggestedFilename()).toBe('arith-words-v1-python.zip');
    const pyPath = path.join(tmp, 'python.zip');
    await pyDownload.saveAs(pyPath);
    const pyFiles = unzipSync(new Uint8Array(fs.readFileSync(pyPath)));
    const p = 'arith-words-v1-python/';
    expect(Object.keys(pyFiles).sort()).toEqual(['README.md', 'adapter/adapter_config.json', 'adapter/adapter_model.safetensors', 'data/arithmetic.csv', 'requirements.txt', 'run_config.json', 'train.py'].map((f) => p + f));
    expect(Buffer.from(pyFiles[`${p}data/arithmetic.csv`]).equals(fs.readFileSync(csvPath))).toBe(true);
    const runConfig = JSON.parse(strFromU8(pyFiles[`${p}run_config.json`]));
    expect(runConfig.training.max_steps).toBe(12);
    expect(runConfig.mapping.kind).toBe('prompt-completion');
    expect(JSON.parse(strFromU8(pyFiles[`${p}adapter/adapter_config.json`])).peft_type).toBe('LORA');

    await page.reload();
    await expect.poll(() => page.getByTestId('library-name').textContent().catch(() => ''), { timeout: 30_000 }).toBe('arith-words v1');
    expect(await rows.count()).toBe(1);
    expect(await page.getByTestId('unfinished-runs').count()).toBe(0);
    await page.getByTestId('section-library').scrollIntoViewIfNeeded();
    await screenshot(page, '05-library-after-reload', false);

    // Download the zip and check it is what PEFT loads.
    const [download] = await Promise.all([page.waitForEvent('download'), page.getByTestId('library-download').click()]);
    expect(download.suggestedFilename()).toBe('arith-words-v1.zip');
    const zipPath = path.join(tmp, 'adapter.zip');
    await download.saveAs(zipPath);
    const files = unzipSync(new Uint8Array(fs.readFileSync(zipPath)));
    expect(Object.keys(files).sort()).toEqual(['README.md', 'adapter_config.json', 'adapter_model.safetensors', 'trainer_state.json']);

    const adapterConfig = JSON.parse(strFromU8(files['adapter_config.json']));
    expect(adapterConfig.peft_type).toBe('LORA');
    expect(adapterConfig.task_type).toBe('CAUSAL_LM');
    expect(adapterConfig.r).toBe(8);
    expect(adapterConfig.lora_alpha).toBe(16);
    expect(adapterConfig.target_modules).toEqual(['c_attn']);
    expect(adapterConfig.fan_in_fan_out).toBe(true);
    expect(adapterConfig.base_model_name_or_path).toBe('tiny-gpt2');

    const st = parseSafetensors(files['adapter_model.safetensors'], 'adapter_model.safetensors');
    const expected = new Map<string, number[]>();
    for (let l = 0; l < config.n_layer; l++) {
      expected.set(`base_model.model.transformer.h.${l}.attn.c_attn.lora_A.weight`, [8, config.n_embd]);
      expected.set(`base_model.model.transformer.h.${l}.attn.c_attn.lora_B.weight`, [3 * config.n_embd, 8]);
    }
    expect([...st.tensors.keys()].sort()).toEqual([...expected.keys()].sort());
    for (const [name, shape] of expected) {
      expect(st.tensors.get(name)!.shape).toEqual(shape);
      expect(st.tensors.get(name)!.dtype).toBe('F32');
    }
    // lora_B starts at zero: non-zero values mean the download holds the trained weights.
    const b0 = st.getF32('base_model.model.transformer.h.0.attn.c_attn.lora_B.weight');
    expect(Math.max(...Array.from(b0, Math.abs))).toBeGreaterThan(0);
    // The merged c_attn weight is the base one plus (alpha / r) (B A)^T (Conv1D stores [in, out]).
    const a0 = st.getF32('base_model.model.transformer.h.0.attn.c_attn.lora_A.weight');
    const w0 = baseSt.getF32('transformer.h.0.attn.c_attn.weight');
    const m0 = mergedSt.getF32('transformer.h.0.attn.c_attn.weight');
    const C = config.n_embd, N = 3 * config.n_embd;
    let worst = 0;
    for (let i = 0; i < C; i++) {
      for (let o = 0; o < N; o++) {
        let d = 0;
        for (let k = 0; k < 8; k++) d += b0[o * 8 + k] * a0[k * C + i];
        worst = Math.max(worst, Math.abs(m0[i * N + o] - (w0[i * N + o] + 2 * d)));
      }
    }
    expect(worst).toBeLessThan(1e-6);

    const state = JSON.parse(strFromU8(files['trainer_state.json']));
    expect(state.global_step).toBe(12);
    const losses = state.log_history.filter((e: { loss?: number }) => e.loss !== undefined);
    expect(losses.map((e: { step: number }) => e.step)).toEqual(Array.from({ length: 12 }, (_, i) => i + 1));
    expect(losses[0].loss).toBeCloseTo(firstLoss, 4);
    expect(losses[11].loss).toBeCloseTo(lastLoss, 4);
    const readme = strFromU8(files['README.md']);
    expect(readme).toContain('base_model: tiny-gpt2');
    expect(readme).toContain('arithmetic.csv');

    // Delete it again.
    await page.getByTestId('library-delete').click();
    await page.getByTestId('delete-confirm').click();
    await page.getByTestId('library-empty').waitFor();
    expect(consoleLines.filter((l) => l.startsWith('pageerror'))).toEqual([]);
  });

  // Each phase below has its own deadline (they add up to 6 minutes); the test's own only stops a
  // hang they miss. At 120 s it ran out beside other browser tests on a loaded machine (session 19).
  it('downloads a model from a hub mirror with per-file progress, can cancel, and loads it from the browser cache next time', { timeout: 420_000 }, async () => {
    await page.goto(server.url);
    await page.getByTestId('gpu-name').waitFor({ timeout: 60_000 });
    const weightGets = () => server.requests.filter((r) => r === `GET /hub/${HUB_REPO}/resolve/main/model.safetensors`).length;

    await page.getByTestId('hub-endpoint-details').locator('summary').click();
    await page.getByTestId('hub-endpoint').fill(`${server.url}hub`);
    await page.getByTestId('repo-id').fill('not a repo');
    await page.getByTestId('download-model').click();
    await expect.poll(() => page.getByTestId('model-error').textContent().catch(() => ''), { timeout: 30_000 }).toMatch(/is not a model repository id: it contains spaces/);

    // Cancel half-way: a clear message, not an error trace.
    await page.getByTestId('repo-id').fill(HUB_REPO);
    await page.getByTestId('download-model').click();
    await expect.poll(() => page.getByTestId('download-progress').textContent().catch(() => ''), { timeout: 30_000 }).toContain('model.safetensors');
    await page.getByTestId('cancel-download').click();
    await expect.poll(() => page.getByTestId('model-error').textContent().catch(() => ''), { timeout: 30_000 }).toMatch(/Download cancelled/);

    // Download for real; the per-file list shows while the weights stream in.
    await page.getByTestId('download-model').click();
    const weightsKb = (fs.statSync(path.join(MODEL_DIR, 'model.safetensors')).size / 1024).toFixed(1);
    await expect.poll(() => page.getByTestId('download-progress').textContent().catch(() => ''), { timeout: 30_000 }).toMatch(new RegExp(`model\\.safetensors[\\s\\S]*KB / ${weightsKb} KB`));
    await sectionScreenshot(page, 'section-model', '06-downloading');
    await expect.poll(() => page.getByTestId('model-name').textContent().catch(() => ''), { timeout: 60_000 }).toBe(HUB_REPO);
    expect(await page.getByTestId('peft-line').textContent()).toContain('trainable params: 2,048');
    const getsAfterDownload = weightGets();
    expect(getsAfterDownload).toBeGreaterThanOrEqual(1);

    // Next visit: the same repository loads from Cache Storage without a request for the weights.
    const requestsBefore = server.requests.length;
    await page.reload();
    await page.getByTestId('gpu-name').waitFor({ timeout: 60_000 });
    await page.getByTestId('hub-endpoint-details').locator('summary').click();
    await page.getByTestId('hub-endpoint').fill(`${server.url}hub`);
    await page.getByTestId('repo-id').fill(HUB_REPO);
    await page.getByTestId('download-model').click();
    await expect.poll(() => page.getByTestId('model-name').textContent().catch(() => ''), { timeout: 60_000 }).toBe(HUB_REPO);
    expect(weightGets()).toBe(getsAfterDownload);
    expect(server.requests.slice(requestsBefore).filter((r) => r.includes('/hub/'))).toEqual([]);
  });

  it('resumes a run from its checkpoint after the tab was reloaded', { timeout: 900_000 }, async () => {
    await page.goto(server.url);
    await page.getByTestId('gpu-name').waitFor({ timeout: 60_000 });
    const loadInputs = async () => {
      await page.getByTestId('data-file-input').setInputFiles(csvPath);
      await expect.poll(() => page.getByTestId('data-summary').textContent().catch(() => ''), { timeout: 30_000 }).toContain('arithmetic.csv');
      await page.getByTestId('map-completion').selectOption('words');
      await page.getByTestId('model-folder-input').setInputFiles(MODEL_DIR);
      await expect.poll(() => page.getByTestId('model-name').textContent().catch(() => ''), { timeout: 60_000 }).toBe('tiny-gpt2');
    };
    await loadInputs();
    await page.getByTestId('setting-learningRate').fill('0.01');
    await page.getByTestId('setting-lengthUnit').selectOption('steps');
    await page.getByTestId('setting-steps').fill('12');
    await page.getByTestId('setting-batchSize').fill('4');
    await page.getByTestId('more-settings').locator('summary').click();
    expect(await page.getByTestId('setting-precision').count()).toBe(0); // no tensor cores here
    await page.getByTestId('setting-checkpointEvery').fill('4');
    await page.getByTestId('adapter-name').fill('interrupted run');
    await expect.poll(() => page.getByTestId('start').isEnabled(), { timeout: 30_000 }).toBe(true);
    await page.getByTestId('start').click();

    // A checkpoint every 4 steps; pause once one is saved and "close the tab".
    await expect.poll(() => page.getByTestId('checkpoint-line').textContent().catch(() => ''), { timeout: 120_000 }).toMatch(/Checkpoint saved at step \d+/);
    await page.getByTestId('pause').click();
    await expect.poll(() => page.getByTestId('train-phase').textContent(), { timeout: 60_000 }).toBe('Paused');
    const savedStep = await numberIn(page, 'step-counter');
    expect(await page.getByTestId('checkpoint-line').textContent()).toContain(`step ${savedStep} `);
    await page.reload();

    const run = page.getByTestId('unfinished-run');
    await expect.poll(() => run.textContent().catch(() => ''), { timeout: 30_000 }).toContain(`step ${savedStep} of 12`);
    expect(await run.textContent()).toContain('To resume, load the model tiny-gpt2 and the data file arithmetic.csv');
    expect(await run.getByRole('button', { name: 'Resume' }).isDisabled()).toBe(true);

    await loadInputs();
    await expect.poll(() => run.getByRole('button', { name: 'Resume' }).isEnabled(), { timeout: 30_000 }).toBe(true);
    await sectionScreenshot(page, 'section-library', '07-unfinished-run');
    await run.getByRole('button', { name: 'Resume' }).click();
    await waitForTrainDone(page);

    // The chart and the saved log cover the whole run: the steps before the reload and after.
    expect(Number(await page.getByTestId('loss-chart').getAttribute('data-points'))).toBe(12);
    expect(await page.getByTestId('step-counter').textContent()).toMatch(/Step 12 \/ 12/);
    await expect.poll(() => page.getByTestId('library-name').textContent().catch(() => '')).toBe('interrupted run');
    expect(await page.getByTestId('unfinished-runs').count()).toBe(0);
    const [download] = await Promise.all([page.waitForEvent('download'), page.getByTestId('library-download').click()]);
    const zipPath = path.join(tmp, 'resumed.zip');
    await download.saveAs(zipPath);
    const state = JSON.parse(strFromU8(unzipSync(new Uint8Array(fs.readFileSync(zipPath)))['trainer_state.json']));
    const steps = state.log_history.filter((e: { loss?: number }) => e.loss !== undefined).map((e: { step: number }) => e.step);
    expect(steps).toEqual(Array.from({ length: 12 }, (_, i) => i + 1));
  });

  it('stops a run early and keeps what it learned', { timeout: 120_000 }, async () => {
    // Data and model are still loaded from the previous test.
    await page.getByTestId('setting-steps').fill('40');
    await page.getByTestId('adapter-name').fill('stopped early');
    await expect.poll(() => page.getByTestId('plan-line').textContent().catch(() => ''), { timeout: 30_000 }).toMatch(/^40 steps/);
    await page.getByTestId('start').click();
    await expect.poll(() => numberIn(page, 'step-counter').catch(() => 0), { timeout: 60_000 }).toBeGreaterThanOrEqual(2);
    await page.getByTestId('stop').click();
    const done = page.getByTestId('train-done');
    await done.waitFor({ timeout: 60_000 });
    const stoppedAt = await numberIn(page, 'step-counter');
    expect(stoppedAt).toBeLessThan(40);
    expect(await done.textContent()).toContain(`stopped at step ${stoppedAt} of 40`);
    const row = page.getByTestId('library-row').filter({ hasText: 'stopped early' });
    await expect.poll(() => row.textContent().catch(() => ''), { timeout: 30_000 }).toContain(`${stoppedAt} steps of 40 (stopped)`);
  });
});

if (skipReason) describe('the app, end to end in Chromium', () => it.skip(skipReason, () => undefined));
