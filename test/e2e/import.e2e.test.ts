// Importing an adapter made by PEFT in Python into the app's library, then generating with it in
// the playground: the greedy tokens must be the ones transformers + PEFT generated for that adapter
// (test/fixtures/generation-goldens: a LoRA on the tiny GPT-2 saved by PEFT's save_pretrained, and
// the 40 tokens generate() gave after "Once upon a time", with the adapter and without). An adapter
// made for another model is refused with the reason; the library marks imported adapters; two
// stored adapters compare on the same prompt; the adapter the exported Python project trained with
// transformers + PEFT imports and generates as the engine does with it.

import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Browser, Page } from 'playwright-core';
import { browserMissingReason, buildApp, launchBrowser, ROOT, serve, watchConsole, type TestServer } from './helpers';
import { nodeModelFiles } from '../../src/io/model-files-node';
import { loadHfModel } from '../../src/io/model-files';
import { loadTokenizer } from '../../src/data/tokenizer';
import { createNodeGpu } from '../../src/engine/gpu/node-gpu';
import { loadCausalLM } from '../../src/engine/models/registry';
import { StepUniforms } from '../../src/engine/kernels/step-uniforms';
import { importPeftAdapter } from '../../src/engine/peft/import';
import { peftModelInfo } from '../../src/engine/peft/factory';
import { Generator } from '../../src/engine/infer/generator';

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

  it('imports what the exported Python project trained, and generates with it as the engine does', { timeout: 400_000 }, async () => {
    // test/fixtures/python-project-output: the project of scripts/gpu/python-project-check.sh, run
    // with transformers + PEFT on the GPU machine, continued our CLI's LoRA on the tiny GPT-2
    const out = path.join(ROOT, 'test', 'fixtures', 'python-project-output');
    const files = { config: fs.readFileSync(path.join(out, 'adapter_config.json'), 'utf8'), weights: new Uint8Array(fs.readFileSync(path.join(out, 'adapter_model.safetensors'))) };
    const before = await page.getByTestId('library-row').count();
    await page.getByTestId('import-adapter-input').setInputFiles([path.join(out, 'adapter_config.json'), path.join(out, 'adapter_model.safetensors')]);
    await expect.poll(() => page.getByTestId('library-row').count(), { timeout: 60_000 }).toBe(before + 1);
    expect(await page.getByTestId('import-adapter-status').textContent()).toMatch(/\(lora\) for tiny-gpt2\./);
    const newest = (await page.getByTestId('library-row').first().getAttribute('data-adapter-id'))!;
    await page.getByTestId('playground-adapter').selectOption(newest);
    const prompt = 'Once upon a time', maxNew = 24;
    await page.getByTestId('playground-prompt').fill(prompt);
    await page.getByTestId('playground-max-new').fill(String(maxNew));
    await page.getByTestId('playground-generate-button').click();
    const adapterOut = page.getByTestId('playground-output-adapter');
    await expect.poll(() => adapterOut.getAttribute('data-end').catch(() => ''), { timeout: 240_000 }).toMatch(/^(eos|max-tokens)$/);
    await expect.poll(() => page.getByTestId('playground-output-base').getAttribute('data-end').catch(() => ''), { timeout: 240_000 }).toMatch(/^(eos|max-tokens)$/);
    const got = (await page.getByTestId('playground-text-adapter').textContent()) ?? '';

    // the engine in Node, with the same files
    const gpu = await createNodeGpu();
    const hf = await loadHfModel(nodeModelFiles(MODEL_DIR));
    const tok = loadTokenizer(hf.tokenizerJson!, hf.tokenizerConfig, { chatTemplate: hf.chatTemplate, name: hf.name });
    const loaded = loadCausalLM(gpu, hf);
    const peft = importPeftAdapter(gpu, { ...files, name: 'python-project-output' }, peftModelInfo(hf.config, loaded.model.linearModules()), new StepUniforms(gpu));
    const ids = tok.encode(prompt, { addSpecialTokens: true });
    const gen = new Generator(gpu, loaded.model, peft, ids.length + maxNew);
    const want = tok.decode(await gen.generate(ids, { maxNewTokens: maxNew, stopIds: [tok.eosId] }), { skipSpecialTokens: true });
    gen.destroy();
    expect(got).toBe(want);
    expect(got).not.toBe((await page.getByTestId('playground-text-base').textContent()) ?? '');
  });
});
