// The playground in a real browser: train a few steps of LoRA on the tiny GPT-2, then generate
// greedily from a prompt with the adapter on and off. The text must stream in token by token, show
// its speed, and equal what the engine gives in Node for the downloaded adapter (the same KV-cache
// generator, through Dawn here). A second, sampled generation is stopped with the Stop button.
// Then a classifier: a few steps on the tiny BERT, and the playground's label probabilities for a
// typed text equal the engine's for the downloaded adapter.

import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { unzipSync, strFromU8 } from 'fflate';
import type { Browser, Page } from 'playwright-core';
import { browserMissingReason, buildApp, launchBrowser, ROOT, sectionScreenshot, serve, watchConsole, type TestServer, waitForTrainDone } from './helpers';
import { createNodeGpu } from '../../src/engine/gpu/node-gpu';
import { nodeModelFiles } from '../../src/io/model-files-node';
import { loadHfModel } from '../../src/io/model-files';
import { loadTokenizer } from '../../src/data/tokenizer';
import { loadCausalLM } from '../../src/engine/models/registry';
import { StepUniforms } from '../../src/engine/kernels/step-uniforms';
import { importPeftAdapter } from '../../src/engine/peft/import';
import { peftModelInfo } from '../../src/engine/peft/factory';
import { Generator } from '../../src/engine/infer/generator';
import { loadSequenceClassifier } from '../../src/engine/models/registry';
import { classifierProbabilities } from '../../src/worker/playground';
import { seededRandom } from '../../src/data/batches';

const skipReason = browserMissingReason();
const MODEL_DIR = path.join(ROOT, 'test', 'fixtures', 'tiny-gpt2');
const PROMPT = 'Q: 3 plus';
const MAX_NEW = 16;
const BERT_DIR = path.join(ROOT, 'test', 'fixtures', 'tiny-bert');
const TICKET = 'my refund and the card, invoice again';

/** Support tickets in three classes, each with its own words. */
function ticketsCsv(): string {
  const words: Record<string, string[]> = {
    billing: ['invoice', 'charge', 'refund', 'payment', 'card', 'price'],
    shipping: ['parcel', 'delivery', 'courier', 'address', 'late', 'box'],
    technical: ['crash', 'error', 'login', 'update', 'screen', 'bug'],
  };
  const rows: string[] = ['message,department'];
  for (let i = 0; i < 16; i++) {
    for (const [label, w] of Object.entries(words)) rows.push(`"my ${w[i % 6]} and the ${w[(i + 2) % 6]}, ${w[(i + 4) % 6]} again",${label}`);
  }
  return rows.join('\n') + '\n';
}

function arithmeticCsv(rows: number): string {
  const words = ['zero', 'one', 'two', 'three', 'four', 'five', 'six', 'seven', 'eight', 'nine', 'ten', 'eleven', 'twelve', 'thirteen', 'fourteen', 'fifteen', 'sixteen', 'seventeen', 'eighteen'];
  const lines = ['question,answer'];
  for (let i = 0; i < rows; i++) {
    const a = (i * 7 + 3) % 10, b = (i * 3 + 1) % 10;
    lines.push(`${a} plus ${b},${words[a + b]}`);
  }
  return lines.join('\n') + '\n';
}

/** What the engine generates in Node for this adapter (null: the base model), decoded as the page decodes it. */
async function engineText(adapterFiles: { config: string; weights: Uint8Array } | null): Promise<string> {
  const gpu = await createNodeGpu();
  const hf = await loadHfModel(nodeModelFiles(MODEL_DIR));
  const tok = loadTokenizer(hf.tokenizerJson!, hf.tokenizerConfig, { chatTemplate: hf.chatTemplate, name: hf.name });
  const loaded = loadCausalLM(gpu, hf);
  const peft = adapterFiles ? importPeftAdapter(gpu, { ...adapterFiles, name: 'download' }, peftModelInfo(hf.config, loaded.model.linearModules()), new StepUniforms(gpu)) : null;
  const prompt = tok.encode(PROMPT, { addSpecialTokens: true });
  const gen = new Generator(gpu, loaded.model, peft, prompt.length + MAX_NEW);
  const ids = await gen.generate(prompt, { maxNewTokens: MAX_NEW, stopIds: [tok.eosId] });
  gen.destroy();
  return tok.decode(ids, { skipSpecialTokens: true });
}

describe.skipIf(skipReason !== null)('the playground, end to end in Chromium', () => {
  let browser: Browser;
  let server: TestServer;
  let page: Page;
  let consoleLines: string[];
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'finetune-e2e-playground-'));
  const csvPath = path.join(tmp, 'sums.csv');

  beforeAll(async () => {
    fs.writeFileSync(csvPath, arithmeticCsv(40));
    server = await serve(buildApp());
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

  it('trains, then generates greedily with the adapter on and off, as the engine does', { timeout: 900_000 }, async () => {
    await page.goto(server.url);
    await expect.poll(() => page.getByTestId('gpu-card').textContent(), { timeout: 60_000 }).toMatch(/swiftshader/i);
    // Before a model is loaded the playground says so.
    expect(await page.getByTestId('section-playground').textContent()).toMatch(/No model is loaded/);

    await page.getByTestId('data-file-input').setInputFiles(csvPath);
    await expect.poll(() => page.getByTestId('data-summary').textContent(), { timeout: 30_000 }).toContain('40 rows');
    await page.getByTestId('map-prompt').selectOption('question');
    await page.getByTestId('map-completion').selectOption('answer');
    await page.getByTestId('map-template').fill('Q: {question}\nA: ');
    await page.getByTestId('model-folder-input').setInputFiles(MODEL_DIR);
    await expect.poll(() => page.getByTestId('model-name').textContent().catch(() => ''), { timeout: 60_000 }).toBe('tiny-gpt2');
    // no adapter for this model yet
    await expect.poll(() => page.getByTestId('playground-empty').count(), { timeout: 10_000 }).toBe(1);

    await page.getByTestId('setting-learningRate').fill('0.01');
    await page.getByTestId('setting-lengthUnit').selectOption('steps');
    await page.getByTestId('setting-steps').fill('6');
    await page.getByTestId('setting-batchSize').fill('4');
    await page.getByTestId('setting-maxLength').fill('32');
    await page.getByTestId('adapter-name').fill('sums');
    await expect.poll(() => page.getByTestId('start').isEnabled(), { timeout: 30_000 }).toBe(true);
    await page.getByTestId('start').click();
    await waitForTrainDone(page);

    // The just-trained adapter is offered; greedy, with the base model beside it.
    const adapterSelect = page.getByTestId('playground-adapter');
    await expect.poll(() => adapterSelect.locator('option').count(), { timeout: 30_000 }).toBe(1);
    expect(await adapterSelect.locator('option').first().textContent()).toMatch(/^sums · LoRA/);
    // tiny-gpt2's tokenizer has no chat template: the option is not offered
    expect(await page.getByTestId('playground-chat-template').count()).toBe(0);
    await page.getByTestId('playground-prompt').fill(PROMPT);
    await page.getByTestId('playground-max-new').fill(String(MAX_NEW));
    expect(await page.getByTestId('playground-mode-greedy').isChecked()).toBe(true);
    expect(await page.getByTestId('playground-compare').isChecked()).toBe(true);

    // Record every text the adapter's output shows while it streams.
    await page.evaluate(() => {
      const seen: string[] = [];
      (window as unknown as { __streamed: string[] }).__streamed = seen;
      new MutationObserver(() => {
        const t = document.querySelector('[data-testid="playground-text-adapter"]')?.textContent ?? '';
        if (seen[seen.length - 1] !== t) seen.push(t);
      }).observe(document.querySelector('[data-testid="section-playground"]')!, { subtree: true, childList: true, characterData: true });
    });
    await page.getByTestId('playground-generate-button').click();
    const adapterOut = page.getByTestId('playground-output-adapter');
    const baseOut = page.getByTestId('playground-output-base');
    await expect.poll(() => adapterOut.getAttribute('data-end').catch(() => ''), { timeout: 120_000 }).toMatch(/^(eos|max-tokens)$/);
    await expect.poll(() => baseOut.getAttribute('data-end').catch(() => ''), { timeout: 120_000 }).toMatch(/^(eos|max-tokens)$/);
    const adapterText = (await page.getByTestId('playground-text-adapter').textContent()) ?? '';
    const baseText = (await page.getByTestId('playground-text-base').textContent()) ?? '';
    // streamed: the output grew through several texts, each a prefix of the next
    const streamed = (await page.evaluate(() => (window as unknown as { __streamed: string[] }).__streamed)).filter((t) => t !== '');
    expect(streamed.length, `streamed texts: ${JSON.stringify(streamed)}`).toBeGreaterThan(2);
    for (let i = 1; i < streamed.length; i++) expect(streamed[i].startsWith(streamed[i - 1])).toBe(true);
    expect(streamed[streamed.length - 1]).toBe(adapterText);
    // the speed is shown
    expect(await page.getByTestId('playground-speed-adapter').textContent()).toMatch(/\d+ tokens · [\d.]+ tokens\/s/);
    await sectionScreenshot(page, 'section-playground', 'playground-01-greedy');

    // The same text as the engine gives for the downloaded adapter, and for the base model.
    const [download] = await Promise.all([page.waitForEvent('download'), page.getByTestId('library-download').click()]);
    const zipPath = path.join(tmp, 'adapter.zip');
    await download.saveAs(zipPath);
    const files = unzipSync(new Uint8Array(fs.readFileSync(zipPath)));
    const wantAdapter = await engineText({ config: strFromU8(files['adapter_config.json']), weights: files['adapter_model.safetensors'] });
    const wantBase = await engineText(null);
    expect(adapterText).toBe(wantAdapter);
    expect(baseText).toBe(wantBase);
    // training changed what the model writes after this prompt
    expect(adapterText).not.toBe(baseText);

    // Sampling, long, stopped with the Stop button: it ends as 'stopped' with fewer tokens.
    await page.getByTestId('playground-mode-sample').check();
    await page.getByTestId('playground-temperature').fill('1.2');
    await page.getByTestId('playground-seed').fill('7');
    await page.getByTestId('playground-max-new').fill('47');
    await page.getByTestId('playground-compare').uncheck();
    await page.getByTestId('playground-generate-button').click();
    await expect.poll(async () => ((await page.getByTestId('playground-text-adapter').textContent()) ?? '').length, { timeout: 60_000 }).toBeGreaterThan(0);
    await page.getByTestId('playground-stop').click();
    await expect.poll(() => adapterOut.getAttribute('data-end'), { timeout: 60_000 }).toMatch(/^(stopped|eos)$/);
    if ((await adapterOut.getAttribute('data-end')) === 'stopped') {
      const n = Number((await page.getByTestId('playground-speed-adapter').textContent())!.match(/^(\d+) tokens/)![1]);
      expect(n).toBeLessThan(47);
    }
    expect(await page.getByTestId('playground-output-base').count()).toBe(0);
    await sectionScreenshot(page, 'section-playground', 'playground-02-stopped');
  });

  it('gives a trained classifier\'s label probabilities for typed text, as the engine does', { timeout: 900_000 }, async () => {
    const ticketsPath = path.join(tmp, 'tickets.csv');
    fs.writeFileSync(ticketsPath, ticketsCsv());
    await page.getByTestId('data-file-input').setInputFiles(ticketsPath);
    await expect.poll(() => page.getByTestId('data-summary').textContent(), { timeout: 30_000 }).toContain('48 rows');
    await page.getByTestId('model-folder-input').setInputFiles(BERT_DIR);
    await expect.poll(() => page.getByTestId('model-name').textContent().catch(() => ''), { timeout: 60_000 }).toBe('tiny-bert');
    await page.getByTestId('map-text-column').selectOption('message');
    await page.getByTestId('map-label-column').selectOption('department');
    await page.getByTestId('setting-learningRate').fill('0.01');
    await page.getByTestId('setting-lengthUnit').selectOption('steps');
    await page.getByTestId('setting-steps').fill('4');
    await page.getByTestId('setting-batchSize').fill('8');
    await page.getByTestId('setting-maxLength').fill('32');
    await page.getByTestId('adapter-name').fill('tickets');
    await expect.poll(() => page.getByTestId('start').isEnabled(), { timeout: 30_000 }).toBe(true);
    await page.getByTestId('start').click();
    await waitForTrainDone(page);

    // the playground now offers the classifier (the GPT-2 adapter belongs to another model)
    const adapterSelect = page.getByTestId('playground-adapter');
    await expect.poll(() => adapterSelect.locator('option').count(), { timeout: 30_000 }).toBe(1);
    expect(await adapterSelect.locator('option').first().textContent()).toMatch(/^tickets/);
    await page.getByTestId('playground-classify-text').fill(TICKET);
    await page.getByTestId('playground-classify-button').click();
    const rows = page.getByTestId('playground-prob-row');
    await expect.poll(() => rows.count(), { timeout: 60_000 }).toBe(3);
    const labels: string[] = [];
    const shown: number[] = [];
    for (let k = 0; k < 3; k++) {
      labels.push((await rows.nth(k).getAttribute('data-label'))!);
      shown.push(Number(await rows.nth(k).getAttribute('data-probability')));
    }
    expect([...labels].sort()).toEqual(['billing', 'shipping', 'technical']);
    expect(shown.reduce((a, b) => a + b, 0)).toBeCloseTo(1, 5);
    await sectionScreenshot(page, 'section-playground', 'playground-03-classifier');

    // the engine in Node, from the downloaded zip: the same probabilities
    const row = page.getByTestId('library-row').filter({ hasText: 'tickets' });
    const [download] = await Promise.all([page.waitForEvent('download'), row.getByTestId('library-download').click()]);
    const zipPath = path.join(tmp, 'classifier.zip');
    await download.saveAs(zipPath);
    const files = unzipSync(new Uint8Array(fs.readFileSync(zipPath)));
    const gpu = await createNodeGpu();
    const hf = await loadHfModel(nodeModelFiles(BERT_DIR));
    const tok = loadTokenizer(hf.tokenizerJson!, hf.tokenizerConfig, { name: hf.name });
    const loaded = loadSequenceClassifier(gpu, hf, { numLabels: 3, random: seededRandom(0) });
    const want = await classifierProbabilities(gpu, loaded.model, { config: strFromU8(files['adapter_config.json']), weights: files['adapter_model.safetensors'], name: 'download' }, tok, loaded.maxPositions, TICKET);
    want.probabilities.forEach((p, k) => expect(Math.abs(shown[k] - p), `label ${labels[k]}`).toBeLessThan(1e-4));
    // the trained head tells the labels apart (not a uniform guess)
    expect(Math.max(...shown) - Math.min(...shown)).toBeGreaterThan(0.05);
  });
});
