// Importing an adapter made by PEFT in Python into the app's library, then generating with it in
// the playground: the greedy tokens must be the ones transformers + PEFT generated for that adapter
// (test/fixtures/generation-goldens: a LoRA on the tiny GPT-2 saved by PEFT's save_pretrained, and
// the 40 tokens generate() gave after "Once upon a time", with the adapter and without). An adapter
// made for another model is refused with the reason; the library marks imported adapters; two
// stored adapters compare on the same prompt.

import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Browser, Page } from 'playwright-core';
import { browserMissingReason, buildApp, launchBrowser, ROOT, serve, watchConsole, type TestServer } from './helpers';
import { nodeModelFiles } from '../../src/io/model-files-node';
import { loadHfModel } from '../../src/io/model-files';
import { loadTokenizer } from '../../src/data/tokenizer';

const skipReason = browserMissingReason();
const MODEL_DIR = path.join(ROOT, 'test', 'fixtures', 'tiny-gpt2');
const GOLDENS = path.join(ROOT, 'test', 'fixtures', 'generation-goldens');

interface GoldenCase {
  model: string;
  adapter: string;
  prompt: string;
  max_new_tokens: number;
  adapter_on: { generated_ids: number[] };
  adapter_off: { generated_ids: number[] };
}

describe.skipIf(skipReason !== null)('importing a PEFT adapter into the library, end to end in Chromium', () => {
  let browser: Browser;
  let server: TestServer;
  let page: Page;
  let consoleLines: string[];

  beforeAll(async () => {
    server = await serve(buildApp());
    browser = await launchBrowser();
    page = await (await browser.newContext({ viewport: { width: 1366, height: 900 } })).newPage();
    consoleLines = watchConsole(page);
  }, 120_000);

  afterAll(async () => {
    await browser?.close();
    await server?.close();
  });

  it('imports the adapter PEFT saved and generates what transformers + PEFT generated', { timeout: 400_000 }, async () => {
    const golden = (JSON.parse(fs.readFileSync(path.join(GOLDENS, 'generation.json'), 'utf8')).cases as GoldenCase[]).find((c) => c.model === 'tiny-gpt2')!;
    const hf = await loadHfModel(nodeModelFiles(MODEL_DIR));
    const tok = loadTokenizer(hf.tokenizerJson!, hf.tokenizerConfig, { chatTemplate: hf.chatTemplate, name: hf.name });

    await page.goto(server.url);
    await expect.poll(() => page.getByTestId('gpu-card').textContent(), { timeout: 60_000 }).toMatch(/swiftshader/i);
    // without a model there is nothing to check an adapter against
    expect(await page.getByTestId('import-adapter-input').isDisabled()).toBe(true);
    await page.getByTestId('model-folder-input').setInputFiles(MODEL_DIR);
    await expect.poll(() => page.getByTestId('model-name').textContent().catch(() => ''), { timeout: 60_000 }).toBe('tiny-gpt2');

    // An adapter for another model (the tiny Llama's) is refused, naming why; nothing is stored.
    const llama = path.join(GOLDENS, 'tiny-llama-lora');
    await page.getByTestId('import-adapter-input').setInputFiles([path.join(llama, 'adapter_config.json'), path.join(llama, 'adapter_model.safetensors')]);
    await expect.poll(() => page.getByTestId('import-adapter-status').textContent().catch(() => ''), { timeout: 60_000 }).toMatch(/^Error: .* does not fit tiny-gpt2: /);
    expect(await page.getByTestId('library-empty').count()).toBe(1);
    // A folder's files without the weights: named.
    await page.getByTestId('import-adapter-input').setInputFiles([path.join(llama, 'adapter_config.json')]);
    await expect.poll(() => page.getByTestId('import-adapter-status').textContent().catch(() => ''), { timeout: 30_000 }).toMatch(/no adapter_model\.safetensors/);

    // PEFT's save_pretrained output for this model.
    const dir = path.join(GOLDENS, golden.adapter);
    await page.getByTestId('import-adapter-input').setInputFiles([path.join(dir, 'adapter_config.json'), path.join(dir, 'adapter_model.safetensors')]);
    await expect.poll(() => page.getByTestId('import-adapter-status').textContent().catch(() => ''), { timeout: 60_000 }).toMatch(/^Imported “.*” \(lora\) for tiny-gpt2\./);
    await expect.poll(() => page.getByTestId('library-row').count()).toBe(1);
    expect(await page.getByTestId('library-data').textContent()).toMatch(/^imported from /);
    expect(await page.getByTestId('library-python').isDisabled()).toBe(true);

    // Generate greedily in the playground with it, the base model beside it.
    const select = page.getByTestId('playground-adapter');
    await expect.poll(() => select.locator('option').count(), { timeout: 30_000 }).toBe(1);
    await page.getByTestId('playground-prompt').fill(golden.prompt);
    await page.getByTestId('playground-max-new').fill(String(golden.max_new_tokens));
    expect(await page.getByTestId('playground-mode-greedy').isChecked()).toBe(true);
    await page.getByTestId('playground-generate-button').click();
    const adapterOut = page.getByTestId('playground-output-adapter');
    const baseOut = page.getByTestId('playground-output-base');
    await expect.poll(() => adapterOut.getAttribute('data-end').catch(() => ''), { timeout: 240_000 }).toMatch(/^(eos|max-tokens)$/);
    await expect.poll(() => baseOut.getAttribute('data-end').catch(() => ''), { timeout: 240_000 }).toMatch(/^(eos|max-tokens)$/);
    const adapterText = (await page.getByTestId('playground-text-adapter').textContent()) ?? '';
    const baseText = (await page.getByTestId('playground-text-base').textContent()) ?? '';
    expect(adapterText).toBe(tok.decode(golden.adapter_on.generated_ids, { skipSpecialTokens: true }));
    expect(baseText).toBe(tok.decode(golden.adapter_off.generated_ids, { skipSpecialTokens: true }));
    expect(adapterText).not.toBe(baseText);

    // Compare adapters: import the same files again, pick both, run them on the same prompt.
    await page.getByTestId('import-adapter-input').setInputFiles([path.join(dir, 'adapter_config.json'), path.join(dir, 'adapter_model.safetensors')]);
    await expect.poll(() => page.getByTestId('library-row').count(), { timeout: 60_000 }).toBe(2);
    await expect.poll(() => page.getByTestId('compare-pick').count(), { timeout: 30_000 }).toBe(2);
    expect(await page.getByTestId('compare-button').isDisabled()).toBe(true); // none picked yet
    await page.getByTestId('compare-pick').nth(0).check();
    await page.getByTestId('compare-pick').nth(1).check();
    await page.getByTestId('compare-button').click();
    const statuses = () => page.getByTestId('compare-row').evaluateAll((rows) => rows.map((r) => r.getAttribute('data-status')).join(','));
    await expect.poll(statuses, { timeout: 240_000 }).toBe('done,done');
    expect(await page.getByTestId('compare-output').allTextContents()).toEqual([adapterText, adapterText]);
    expect(consoleLines.filter((l) => l.startsWith('pageerror'))).toEqual([]);
  });
});
