// A Llama-family model in the app, end to end in Chromium: the model step suggests real small
// models and names the supported architectures; a GPT-2 folder is loaded and then replaced by the
// tiny Llama folder (the worker frees the first model's weights on the same device); LoRA targets
// come from the loaded model (q_proj and v_proj by default, "all linear layers" as a choice); a
// short run trains, allocates exactly the memory estimated beforehand, and downloads a PEFT zip;
// then the frozen weights in f16 (More settings): uploaded again, less memory, a run trains.

import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { unzipSync, strFromU8 } from 'fflate';
import type { Browser, Page } from 'playwright-core';
import { parseSafetensors } from '../../src/io/safetensors';
import { browserMissingReason, buildApp, launchBrowser, numberIn, ROOT, screenshot, sectionScreenshot, serve, sumsCsv, waitForTrainDone, watchConsole, type TestServer } from './helpers';

const skipReason = browserMissingReason();
const LLAMA_DIR = path.join(ROOT, 'test', 'fixtures', 'tiny-llama');
const GPT2_DIR = path.join(ROOT, 'test', 'fixtures', 'tiny-gpt2');
const PROJECTIONS = ['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj'];

describe.skipIf(skipReason !== null)('a Llama-family model in the app, in Chromium', () => {
  let browser: Browser;
  let server: TestServer;
  let page: Page;
  let consoleLines: string[];
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'finetune-llama-e2e-'));
  const csvPath = path.join(tmp, 'sums.csv');
  const config = JSON.parse(fs.readFileSync(path.join(LLAMA_DIR, 'config.json'), 'utf8'));

  beforeAll(async () => {
    fs.writeFileSync(csvPath, sumsCsv(30));
    server = await serve(buildApp());
    browser = await launchBrowser();
    const context = await browser.newContext({ viewport: { width: 1366, height: 900 }, acceptDownloads: true });
    page = await context.newPage();
    consoleLines = watchConsole(page);
  }, 120_000);

  afterAll(async () => {
    await browser?.close();
    await server?.close();
    fs.rmSync(tmp, { recursive: true, force: true });
    if (consoleLines?.length) console.log(`browser console:\n${consoleLines.join('\n')}`);
  });

  it('suggests small hub models, trains LoRA on a Llama folder and downloads a PEFT adapter', { timeout: 240_000 }, async () => {
    await page.goto(server.url);
    await page.getByTestId('gpu-name').waitFor({ timeout: 60_000 });

    // The model step: SmolLM2-135M by default, a short list of real models with their sizes.
    expect(await page.getByTestId('repo-id').inputValue()).toBe('HuggingFaceTB/SmolLM2-135M');
    const suggestions = page.getByTestId('model-suggestion');
    expect(await suggestions.evaluateAll((els) => els.map((e) => e.getAttribute('data-repo')))).toEqual([
      'HuggingFaceTB/SmolLM2-135M',
      'HuggingFaceTB/SmolLM2-360M',
      'Qwen/Qwen2.5-0.5B',
      'openai-community/gpt2',
      'TinyLlama/TinyLlama-1.1B-Chat-v1.0',
      'distilbert/distilbert-base-uncased',
      'google-bert/bert-base-uncased',
    ]);
    // The encoders are offered as text classifiers, apart from the text generators.
    expect(await page.getByTestId('suggestions-classification').textContent()).toMatch(/distilbert-base-uncased[\s\S]*DistilBERT · 67\.0 M parameters[\s\S]*bert-base-uncased[\s\S]*BERT · 109\.5 M parameters/);
    const qwen = suggestions.filter({ hasText: 'Qwen/Qwen2.5-0.5B' });
    expect(await qwen.textContent()).toMatch(/Qwen2 · 494\.0 M parameters · [\d.]+ MB download \(BF16\) · 1\.84 GB on the GPU/);
    await qwen.click();
    expect(await page.getByTestId('repo-id').inputValue()).toBe('Qwen/Qwen2.5-0.5B');
    expect(await qwen.getAttribute('aria-pressed')).toBe('true');
    const supported = (await page.getByTestId('supported-architectures').textContent()) ?? '';
    for (const name of ['GPT-2', 'Llama', 'SmolLM2', 'TinyLlama', 'Mistral', 'Qwen2', 'Qwen3', 'DistilBERT', 'BERT']) expect(supported).toContain(name);

    await page.getByTestId('data-file-input').setInputFiles(csvPath);
    await expect.poll(() => page.getByTestId('data-summary').textContent().catch(() => ''), { timeout: 30_000 }).toContain('30 rows');

    // First a GPT-2 folder, then the Llama one: the worker frees GPT-2's weights on the same device.
    await page.getByTestId('model-folder-input').setInputFiles(GPT2_DIR);
    await expect.poll(() => page.getByTestId('model-name').textContent().catch(() => ''), { timeout: 60_000 }).toBe('tiny-gpt2');
    expect(await page.getByTestId('target-c_attn').isChecked()).toBe(true);
    await page.getByTestId('model-folder-input').setInputFiles(LLAMA_DIR);
    await expect.poll(() => page.getByTestId('model-name').textContent().catch(() => ''), { timeout: 60_000 }).toBe('tiny-llama');
    expect(await page.getByTestId('model-summary').textContent()).toMatch(/Llama family · 2 layers · 32 wide · 4 heads/);

    // Target modules come from the model: its seven projections, q_proj and v_proj on as in PEFT.
    const C = config.hidden_size, D = config.head_dim, H = config.num_attention_heads, KV = config.num_key_value_heads, I = config.intermediate_size, L = config.num_hidden_layers;
    const checked = await Promise.all(PROJECTIONS.map((p) => page.getByTestId(`target-${p}`).isChecked()));
    expect(Object.fromEntries(PROJECTIONS.map((p, i) => [p, checked[i]]))).toEqual({
      q_proj: true, k_proj: false, v_proj: true, o_proj: false, gate_proj: false, up_proj: false, down_proj: false,
    });
    expect(await page.getByTestId('target-c_attn').count()).toBe(0);
    const r = 8;
    const qv = L * r * (C + H * D + C + KV * D);
    expect(await numberIn(page, 'trainable-params')).toBe(qv);
    await expect.poll(() => page.getByTestId('memory-estimate').getAttribute('data-bytes'), { timeout: 30_000 }).toMatch(/^\d+$/);
    const qvBytes = Number(await page.getByTestId('memory-estimate').getAttribute('data-bytes'));

    // "All linear layers": every projection, as PEFT's target_modules="all-linear".
    await page.getByTestId('target-all-linear').check();
    const all = L * r * ((C + H * D) + 2 * (C + KV * D) + (H * D + C) + 2 * (C + I) + (I + C));
    expect(await numberIn(page, 'trainable-params')).toBe(all);
    expect(await page.getByTestId('target-gate_proj').isChecked()).toBe(true);
    expect(await page.getByTestId('target-gate_proj').isDisabled()).toBe(true);
    // The worker estimates it too (more adapter memory), with no error.
    await expect.poll(async () => Number(await page.getByTestId('memory-estimate').getAttribute('data-bytes')), { timeout: 30_000 }).toBeGreaterThan(qvBytes);
    expect(await page.getByTestId('prepare-error').count()).toBe(0);
    await page.getByTestId('target-all-linear').uncheck();
    expect(await numberIn(page, 'trainable-params')).toBe(qv);
    expect(await page.getByTestId('target-q_proj').isChecked()).toBe(true);

    // A short run: 6 steps of 2 examples, 32 tokens at most.
    await page.getByTestId('setting-learningRate').fill('0.01');
    await page.getByTestId('setting-lengthUnit').selectOption('steps');
    await page.getByTestId('setting-steps').fill('6');
    await page.getByTestId('setting-batchSize').fill('2');
    await page.getByTestId('setting-maxLength').fill('32');
    await page.getByTestId('adapter-name').fill('llama sums');
    await expect.poll(() => page.getByTestId('plan-line').textContent().catch(() => ''), { timeout: 30_000 }).toMatch(/^6 steps of 2 examples/);
    expect(await page.getByTestId('memory-estimate').textContent()).toMatch(/about [\d.]+ (KB|MB).*weights [\d.]+ KB \+ training activations/);
    await screenshot(page, '20-llama-ready');
    await expect.poll(() => page.getByTestId('start').isEnabled(), { timeout: 10_000 }).toBe(true);
    await page.getByTestId('start').click();
    const done = page.getByTestId('train-done');
    await done.waitFor({ timeout: 150_000 });
    expect(await page.getByTestId('step-counter').textContent()).toMatch(/Step 6 \/ 6/);
    const firstLoss = await numberIn(page, 'loss-first');
    const lastLoss = await numberIn(page, 'loss-latest');
    expect(firstLoss).toBeGreaterThan(0);
    expect(Number.isFinite(lastLoss)).toBe(true);
    // What the run allocated is exactly what was estimated before it (weights, both programs, the
    // adapter with AdamW state): nothing of the GPT-2 model loaded before is left on the device.
    const run = page.getByTestId('run');
    expect(Number(await run.getAttribute('data-gpu-bytes'))).toBe(Number(await run.getAttribute('data-estimate-bytes')));
    await screenshot(page, '21-llama-trained');

    const [download] = await Promise.all([page.waitForEvent('download'), page.getByTestId('download-latest').click()]);
    expect(download.suggestedFilename()).toBe('llama-sums.zip');
    const zipPath = path.join(tmp, 'llama.zip');
    await download.saveAs(zipPath);
    const files = unzipSync(new Uint8Array(fs.readFileSync(zipPath)));
    expect(Object.keys(files).sort()).toEqual(['README.md', 'adapter_config.json', 'adapter_model.safetensors', 'trainer_state.json']);

    const adapterConfig = JSON.parse(strFromU8(files['adapter_config.json']));
    expect(adapterConfig.peft_type).toBe('LORA');
    expect(adapterConfig.task_type).toBe('CAUSAL_LM');
    expect(adapterConfig.fan_in_fan_out).toBe(false);
    expect([...adapterConfig.target_modules].sort()).toEqual(['q_proj', 'v_proj']);
    expect(adapterConfig.r).toBe(r);
    expect(adapterConfig.base_model_name_or_path).toBe('tiny-llama');

    const st = parseSafetensors(files['adapter_model.safetensors'], 'adapter_model.safetensors');
    const expected = new Map<string, number[]>();
    for (let l = 0; l < L; l++) {
      const p = `base_model.model.model.layers.${l}.self_attn`;
      expected.set(`${p}.q_proj.lora_A.weight`, [r, C]);
      expected.set(`${p}.q_proj.lora_B.weight`, [H * D, r]);
      expected.set(`${p}.v_proj.lora_A.weight`, [r, C]);
      expected.set(`${p}.v_proj.lora_B.weight`, [KV * D, r]);
    }
    expect([...st.tensors.keys()].sort()).toEqual([...expected.keys()].sort());
    for (const [name, shape] of expected) {
      expect(st.tensors.get(name)!.shape).toEqual(shape);
      expect(st.tensors.get(name)!.dtype).toBe('F32');
    }
    // lora_B starts at zero: non-zero values mean the zip holds the trained weights.
    const b0 = st.getF32('base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight');
    expect(Math.max(...Array.from(b0, Math.abs))).toBeGreaterThan(0);
    const state = JSON.parse(strFromU8(files['trainer_state.json']));
    expect(state.global_step).toBe(6);
    expect(strFromU8(files['README.md'])).toContain('base_model: tiny-llama');
    expect(consoleLines.filter((l) => l.startsWith('pageerror'))).toEqual([]);
  });

  it('keeps the frozen weights in f16 on request: uploaded again, in less memory, and trains', { timeout: 400_000 }, async () => {
    // the page as the test before left it: tiny-llama, the sums, a 6-step run's settings
    const weightText = () => page.getByTestId('model-weight-bytes').textContent().then((t) => t ?? '');
    expect(await weightText()).toMatch(/\(f32\)/);
    await expect.poll(() => page.getByTestId('memory-estimate').getAttribute('data-bytes'), { timeout: 30_000 }).toMatch(/^\d+$/);
    const f32Bytes = Number(await page.getByTestId('memory-estimate').getAttribute('data-bytes'));
    const more = page.getByTestId('more-settings');
    if ((await more.getAttribute('open')) === null) await more.locator('summary').click();
    await page.getByTestId('setting-frozenWeights').selectOption('f16');
    // the worker uploads the weights again in f16 and the page shows it
    await expect.poll(weightText, { timeout: 60_000 }).toMatch(/frozen matrices in f16/);
    expect(await page.getByTestId('model-params').textContent()).toMatch(/kept in F16 on the GPU with F32 sums/);
    // the suggestions count 2 bytes a parameter now
    expect(await page.getByTestId('model-suggestion').filter({ hasText: 'Qwen/Qwen2.5-0.5B' }).textContent()).toMatch(/942\.\d MB on the GPU in f16/);
    await sectionScreenshot(page, 'section-model', '22-llama-f16-weights-model');
    await sectionScreenshot(page, 'section-settings', '23-llama-f16-weights-settings');
    await expect.poll(async () => Number(await page.getByTestId('memory-estimate').getAttribute('data-bytes')), { timeout: 30_000 }).toBeLessThan(f32Bytes);
    await page.getByTestId('adapter-name').fill('llama sums f16');
    await expect.poll(() => page.getByTestId('start').isEnabled(), { timeout: 30_000 }).toBe(true);
    await page.getByTestId('start').click();
    await waitForTrainDone(page);
    expect(await page.getByTestId('step-counter').textContent()).toMatch(/Step 6 \/ 6/);
    expect(Number.isFinite(await numberIn(page, 'loss-latest'))).toBe(true);
    // what it allocated is what was estimated with the weights in halves
    const run = page.getByTestId('run');
    expect(Number(await run.getAttribute('data-gpu-bytes'))).toBe(Number(await run.getAttribute('data-estimate-bytes')));
    expect(Number(await run.getAttribute('data-gpu-bytes'))).toBeLessThan(f32Bytes);
    expect(consoleLines.filter((l) => l.startsWith('pageerror'))).toEqual([]);
  });

  it('shows how far tokenizing a large table has got', { timeout: 120_000 }, async () => {
    // The model is still loaded; 40,000 rows take the worker a few seconds to count.
    const rows = 40_000;
    const bigPath = path.join(tmp, 'many-sums.csv');
    fs.writeFileSync(bigPath, sumsCsv(rows));
    await page.getByTestId('data-file-input').setInputFiles(bigPath);
    const seen: number[] = [];
    const deadline = Date.now() + 90_000;
    while (Date.now() < deadline) {
      const v = await page.getByTestId('examples-progress').getAttribute('aria-valuenow', { timeout: 50 }).catch(() => null);
      if (v !== null) seen.push(Number(v));
      if (seen.length > 0 && (await page.getByTestId('examples-progress').count()) === 0) break;
      await page.waitForTimeout(50);
    }
    expect(seen.length).toBeGreaterThan(1);
    expect(seen.some((v) => v > 0 && v < 100)).toBe(true);
    expect(seen).toEqual([...seen].sort((a, b) => a - b)); // it only moves forward
    await expect.poll(() => page.getByTestId('examples-count').textContent().catch(() => ''), { timeout: 30_000 }).toBe('36,000 train · 4,000 validation');
  });
});

if (skipReason) describe('a Llama-family model in the app, in Chromium', () => it.skip(skipReason, () => undefined));
