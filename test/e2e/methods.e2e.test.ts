// Every adapter method in the app, end to end in Chromium: the method picker (one card per method
// with its one-line explanation and live trainable-parameter count), each method's own settings
// with inline checks, one short run per method on the tiny GPT-2 (LoRA, DoRA, IA3, prompt tuning,
// prefix tuning, bottleneck adapters) with the memory estimate matching the run to the byte, each
// zip downloaded and checked (peft_type or AdapterHub's config, tensor names and shapes, trained
// values), the library naming the method; and prefix tuning refused on Qwen3 with the engine's reason.

import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { unzipSync, strFromU8, type Unzipped } from 'fflate';
import type { Browser, Page } from 'playwright-core';
import { parseSafetensors } from '../../src/io/safetensors';
import { browserMissingReason, buildApp, launchBrowser, numberIn, ROOT, sectionScreenshot, serve, sumsCsv, watchConsole, type TestServer, waitForSaved } from './helpers';

const skipReason = browserMissingReason();
const GPT2_DIR = path.join(ROOT, 'test', 'fixtures', 'tiny-gpt2');
const QWEN3_DIR = path.join(ROOT, 'test', 'fixtures', 'tiny-qwen3');

describe.skipIf(skipReason !== null)('every adapter method in the app, in Chromium', () => {
  let browser: Browser;
  let server: TestServer;
  let page: Page;
  let consoleLines: string[];
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'finetune-methods-e2e-'));
  const csvPath = path.join(tmp, 'sums.csv');
  const config = JSON.parse(fs.readFileSync(path.join(GPT2_DIR, 'config.json'), 'utf8'));
  const C = config.n_embd, L = config.n_layer, H = config.n_head, F = config.n_inner ?? 4 * config.n_embd;

  beforeAll(async () => {
    fs.writeFileSync(csvPath, sumsCsv(24));
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

  /** Starts the run, waits for its adapter, checks the memory estimate and downloads the zip. */
  async function trainAndDownload(name: string): Promise<Unzipped> {
    await page.getByTestId('adapter-name').fill(name);
    await expect.poll(() => page.getByTestId('plan-line').textContent().catch(() => ''), { timeout: 30_000 }).toMatch(/^3 steps of 2 examples/);
    await expect.poll(() => page.getByTestId('start').isEnabled(), { timeout: 30_000 }).toBe(true);
    await page.getByTestId('start').click();
    await waitForSaved(page, name);
    expect(await page.getByTestId('step-counter').textContent()).toMatch(/Step 3 \/ 3/);
    expect(Number.isFinite(await numberIn(page, 'loss-latest'))).toBe(true);
    // What the run allocated is what was estimated before it, to the byte (method tensors and the
    // widened programs of prompt and prefix tuning included).
    const run = page.getByTestId('run');
    // (polled: under load the page can show the run's bytes before the estimate's attribute is set)
    await expect
      .poll(async () => Number(await run.getAttribute('data-gpu-bytes')) - Number(await run.getAttribute('data-estimate-bytes')), { message: `${name}: GPU bytes - estimate`, timeout: 10_000 })
      .toBe(0);
    expect(Number(await run.getAttribute('data-gpu-bytes'))).toBeGreaterThan(0);
    const [download] = await Promise.all([page.waitForEvent('download'), page.getByTestId('download-latest').click()]);
    const zipPath = path.join(tmp, `${name}.zip`);
    await download.saveAs(zipPath);
    const files = unzipSync(new Uint8Array(fs.readFileSync(zipPath)));
    // PEFT's weights file, or AdapterHub's for the bottleneck adapters
    const weights = name === 'm-bottleneck' ? 'adapter.safetensors' : 'adapter_model.safetensors';
    expect(Object.keys(files).sort()).toEqual(['README.md', 'adapter_config.json', weights, 'trainer_state.json'].sort());
    expect(JSON.parse(strFromU8(files['trainer_state.json'])).global_step).toBe(3);
    return files;
  }

  const tensorsOf = (files: Unzipped) => {
    const name = files['adapter.safetensors'] ? 'adapter.safetensors' : 'adapter_model.safetensors';
    return parseSafetensors(files[name], name);
  };
  const configOf = (files: Unzipped) => JSON.parse(strFromU8(files['adapter_config.json']));
  const shapes = (files: Unzipped) => Object.fromEntries([...tensorsOf(files).tensors].map(([n, t]) => [n, t.shape]));

  it('trains LoRA, DoRA, IA3, prompt tuning, prefix tuning and bottleneck adapters on GPT-2, each downloaded in its own format', { timeout: 500_000 }, async () => {
    await page.goto(server.url);
    await page.getByTestId('gpu-name').waitFor({ timeout: 60_000 });
    await page.getByTestId('data-file-input').setInputFiles(csvPath);
    await expect.poll(() => page.getByTestId('data-summary').textContent().catch(() => ''), { timeout: 30_000 }).toContain('24 rows');
    await page.getByTestId('model-folder-input').setInputFiles(GPT2_DIR);
    await expect.poll(() => page.getByTestId('model-name').textContent().catch(() => ''), { timeout: 60_000 }).toBe('tiny-gpt2');

    // The picker: one card per method with its explanation and its count on this model.
    const cards = page.getByTestId('method-picker').locator('.method');
    expect(await cards.evaluateAll((els) => els.map((e) => e.getAttribute('data-testid')))).toEqual(['method-lora', 'method-dora', 'method-ia3', 'method-prompt', 'method-prefix', 'method-bottleneck']);
    expect(await page.getByTestId('method-dora').textContent()).toMatch(/DoRA.*magnitude/);
    expect(await page.getByTestId('method-bottleneck').textContent()).toMatch(/Bottleneck adapters.*AdapterHub/);
    expect(await numberIn(page, 'method-dora-count')).toBe(L * 8 * (C + 3 * C) + L * 3 * C); // + a magnitude per output feature
    expect(await numberIn(page, 'method-bottleneck-count')).toBe(L * 2 * (2 * (C / 16) * C + C / 16 + C)); // Houlsby, reduction 16
    expect(await page.getByTestId('method-ia3').textContent()).toMatch(/IA3.*scaling vector/);
    expect(await page.getByTestId('method-prompt').textContent()).toMatch(/Prompt tuning.*virtual tokens/);
    expect(await page.getByTestId('method-prefix').textContent()).toMatch(/Prefix tuning.*key\/value vectors/);
    expect(await numberIn(page, 'method-lora-count')).toBe(L * 8 * (C + 3 * C));
    expect(await numberIn(page, 'method-ia3-count')).toBe(L * (3 * C + F)); // PEFT's defaults: c_attn (output), mlp.c_proj (input)
    expect(await numberIn(page, 'method-prompt-count')).toBe(20 * C);
    expect(await numberIn(page, 'method-prefix-count')).toBe(20 * L * 2 * C);

    await page.getByTestId('setting-learningRate').fill('0.01');
    await page.getByTestId('setting-lengthUnit').selectOption('steps');
    await page.getByTestId('setting-steps').fill('3');
    await page.getByTestId('setting-batchSize').fill('2');
    await page.getByTestId('setting-maxLength').fill('24');

    // LoRA r=4 on c_attn
    await page.getByTestId('setting-rank').fill('4');
    expect(await numberIn(page, 'trainable-params')).toBe(L * 4 * (C + 3 * C));
    expect(await numberIn(page, 'method-lora-count')).toBe(L * 4 * (C + 3 * C));
    const lora = await trainAndDownload('m-lora');
    expect(configOf(lora)).toMatchObject({ peft_type: 'LORA', task_type: 'CAUSAL_LM', r: 4, target_modules: ['c_attn'], base_model_name_or_path: 'tiny-gpt2' });
    const loraShapes: Record<string, number[]> = {};
    for (let l = 0; l < L; l++) {
      loraShapes[`base_model.model.transformer.h.${l}.attn.c_attn.lora_A.weight`] = [4, C];
      loraShapes[`base_model.model.transformer.h.${l}.attn.c_attn.lora_B.weight`] = [3 * C, 4];
    }
    expect(shapes(lora)).toEqual(loraShapes);

    // IA3 with PEFT's defaults for gpt2, shown checked; the feedforward mark only on a chosen layer.
    await page.getByTestId('method-ia3').click();
    await expect.poll(() => page.getByTestId('method-settings-title').textContent()).toBe('IA3 settings');
    expect(await page.getByTestId('ia3Targets-c_attn').isChecked()).toBe(true);
    expect(await page.getByTestId('ia3Targets-mlp.c_proj').isChecked()).toBe(true);
    expect(await page.getByTestId('ia3Targets-c_fc').isChecked()).toBe(false);
    expect(await page.getByTestId('ia3Feedforward-mlp.c_proj').isChecked()).toBe(true);
    expect(await page.getByTestId('ia3Feedforward-c_attn').isChecked()).toBe(false);
    expect(await page.getByTestId('ia3Feedforward-c_fc').count()).toBe(0);
    expect(await page.getByTestId('ia3Targets-modules').textContent()).toContain('PEFT’s defaults for this model: c_attn, mlp.c_proj, feedforward mlp.c_proj.');
    expect(await numberIn(page, 'trainable-params')).toBe(L * (3 * C + F));
    // No layer at all is refused inline, and blocks Start.
    await page.getByTestId('ia3Targets-c_attn').uncheck();
    await page.getByTestId('ia3Targets-mlp.c_proj').uncheck();
    expect(await page.getByTestId('setting-ia3Targets-error').textContent()).toMatch(/Pick at least one layer type for IA3/);
    expect(await page.getByTestId('start').isDisabled()).toBe(true);
    await page.getByTestId('ia3Targets-c_attn').check();
    await page.getByTestId('ia3Targets-mlp.c_proj').check();
    await page.getByTestId('ia3Feedforward-mlp.c_proj').check();
    expect(await numberIn(page, 'trainable-params')).toBe(L * (3 * C + F));
    await sectionScreenshot(page, 'section-settings', '40-methods-ia3');
    const ia3 = await trainAndDownload('m-ia3');
    expect(configOf(ia3)).toMatchObject({ peft_type: 'IA3', task_type: 'CAUSAL_LM', target_modules: ['c_attn', 'mlp.c_proj'], feedforward_modules: ['mlp.c_proj'], fan_in_fan_out: true });
    const ia3Shapes: Record<string, number[]> = {};
    for (let l = 0; l < L; l++) {
      ia3Shapes[`base_model.model.transformer.h.${l}.attn.c_attn.ia3_l`] = [3 * C, 1];
      ia3Shapes[`base_model.model.transformer.h.${l}.mlp.c_proj.ia3_l`] = [1, F];
    }
    expect(shapes(ia3)).toEqual(ia3Shapes);
    // IA3 starts at ones: other values are trained ones.
    expect(Array.from(tensorsOf(ia3).getF32('base_model.model.transformer.h.0.attn.c_attn.ia3_l')).some((v) => v !== 1)).toBe(true);
    expect(strFromU8(ia3['README.md'])).toContain('# IA3 adapter for tiny-gpt2');

    // Prompt tuning from a text: an empty text is refused inline.
    await page.getByTestId('method-prompt').click();
    await page.getByTestId('setting-virtualTokens').fill('4');
    await page.getByTestId('setting-promptInit').selectOption('text');
    expect(await page.getByTestId('setting-promptInitText-error').textContent()).toMatch(/Write the text the virtual tokens start from/);
    expect(await page.getByTestId('start').isDisabled()).toBe(true);
    await page.getByTestId('setting-promptInitText').fill('Answer:');
    expect(await numberIn(page, 'trainable-params')).toBe(4 * C);
    // The virtual tokens take positions: max length must leave room for them.
    await page.getByTestId('setting-maxLength').fill(String(config.n_positions));
    expect(await page.getByTestId('setting-maxLength-error').textContent()).toMatch(new RegExp(`With 4 virtual tokens this model has room for ${config.n_positions - 4} real tokens`));
    await page.getByTestId('setting-maxLength').fill('24');
    const prompt = await trainAndDownload('m-prompt');
    expect(configOf(prompt)).toMatchObject({
      peft_type: 'PROMPT_TUNING', task_type: 'CAUSAL_LM', num_virtual_tokens: 4, token_dim: C, num_transformer_submodules: 1,
      num_attention_heads: H, num_layers: L, prompt_tuning_init: 'TEXT', prompt_tuning_init_text: 'Answer:', tokenizer_name_or_path: 'tiny-gpt2',
    });
    expect(shapes(prompt)).toEqual({ prompt_embeddings: [4, C] });

    // Prefix tuning through the projection MLP (its width defaults to token_dim).
    await page.getByTestId('method-prefix').click();
    await page.getByTestId('setting-virtualTokens').fill('3');
    expect(await numberIn(page, 'trainable-params')).toBe(3 * L * 2 * C);
    await page.getByTestId('setting-prefixProjection').check();
    expect(await page.getByTestId('setting-encoderHiddenSize').inputValue()).toBe(String(C));
    expect(await page.getByTestId('method-fields').textContent()).toContain(`PEFT’s default: token_dim = ${C}.`);
    await page.getByTestId('setting-encoderHiddenSize').fill('16');
    const width = L * 2 * C;
    expect(await numberIn(page, 'trainable-params')).toBe(3 * C + 16 * C + 16 + width * 16 + width);
    await sectionScreenshot(page, 'section-settings', '41-methods-prefix');
    const prefix = await trainAndDownload('m-prefix');
    expect(configOf(prefix)).toMatchObject({
      peft_type: 'PREFIX_TUNING', task_type: 'CAUSAL_LM', num_virtual_tokens: 3, token_dim: C, num_attention_heads: H, num_layers: L,
      encoder_hidden_size: 16, prefix_projection: true,
    });
    // PEFT saves the prefix the MLP makes, not the MLP.
    expect(shapes(prefix)).toEqual({ prompt_embeddings: [3, width] });
    expect(strFromU8(prefix['README.md'])).toContain('# prefix-tuning adapter for tiny-gpt2');

    // DoRA: LoRA's settings (shared with it) plus a magnitude per output feature.
    await page.getByTestId('method-dora').click();
    expect(await page.getByTestId('setting-rank').inputValue()).toBe('4');
    expect(await page.getByTestId('target-c_attn').isChecked()).toBe(true);
    expect(await numberIn(page, 'trainable-params')).toBe(L * 4 * (C + 3 * C) + L * 3 * C);
    const dora = await trainAndDownload('m-dora');
    expect(configOf(dora)).toMatchObject({ peft_type: 'LORA', task_type: 'CAUSAL_LM', use_dora: true, r: 4, target_modules: ['c_attn'] });
    const doraShapes: Record<string, number[]> = {};
    for (let l = 0; l < L; l++) {
      doraShapes[`base_model.model.transformer.h.${l}.attn.c_attn.lora_A.weight`] = [4, C];
      doraShapes[`base_model.model.transformer.h.${l}.attn.c_attn.lora_B.weight`] = [3 * C, 4];
      doraShapes[`base_model.model.transformer.h.${l}.attn.c_attn.lora_magnitude_vector`] = [3 * C];
    }
    expect(shapes(dora)).toEqual(doraShapes);

    // Bottleneck adapters: Pfeiffer's preset changes the count; Houlsby with a reduction of 8 trains.
    await page.getByTestId('method-bottleneck').click();
    await page.getByTestId('setting-bottleneckType').selectOption('pfeiffer');
    expect(await numberIn(page, 'trainable-params')).toBe(L * (2 * (C / 16) * C + C / 16 + C));
    await page.getByTestId('setting-bottleneckType').selectOption('houlsby');
    await page.getByTestId('setting-reductionFactor').fill('8');
    const bn = C / 8;
    expect(await page.getByTestId('method-fields').textContent()).toContain(`Bottleneck ${bn} = ${C} / 8.`);
    await page.getByTestId('setting-bottleneckName').fill('bad name');
    expect(await page.getByTestId('setting-bottleneckName-error').textContent()).toMatch(/letters, digits, _ and -/);
    await page.getByTestId('setting-bottleneckName').fill('sums');
    expect(await numberIn(page, 'trainable-params')).toBe(L * 2 * (2 * bn * C + bn + C));
    const bottleneck = await trainAndDownload('m-bottleneck');
    expect(configOf(bottleneck)).toMatchObject({
      name: 'sums', model_type: 'gpt2', model_class: 'GPT2LMHeadModel', hidden_size: C,
      config: { mh_adapter: true, output_adapter: true, reduction_factor: 8, non_linearity: 'swish', original_ln_before: false },
    });
    expect(strFromU8(bottleneck['adapter_config.json'])).toContain('"scaling": 1.0');
    const bnShapes: Record<string, number[]> = {};
    for (let l = 0; l < L; l++) {
      for (const where of ['attention_adapters', 'output_adapters']) {
        const p = `transformer.h.${l}.${where}.adapters.sums`;
        bnShapes[`${p}.adapter_down.0.weight`] = [bn, C];
        bnShapes[`${p}.adapter_down.0.bias`] = [bn];
        bnShapes[`${p}.adapter_up.weight`] = [C, bn];
        bnShapes[`${p}.adapter_up.bias`] = [C];
      }
    }
    expect(shapes(bottleneck)).toEqual(bnShapes);
    // The up projection's bias starts at zero: non-zero values are trained ones.
    expect(Math.max(...Array.from(tensorsOf(bottleneck).getF32('transformer.h.0.output_adapters.adapters.sums.adapter_up.bias'), Math.abs))).toBeGreaterThan(0);
    expect(strFromU8(bottleneck['README.md'])).toMatch(/library_name: adapter-transformers[\s\S]*load_adapter/);
    expect(await page.getByTestId('saved-method').textContent()).toMatch(/AdapterHub’s format \(adapter_config.json \+ adapter.safetensors\)/);

    // The library names each method with its settings.
    const methodOf = async (name: string) => page.getByTestId('library-row').filter({ hasText: name }).getByTestId('library-method').textContent();
    await expect.poll(() => page.getByTestId('library-row').count(), { timeout: 30_000 }).toBe(6);
    expect(await methodOf('m-lora')).toBe('LoRAr=4 · c_attn');
    expect(await methodOf('m-ia3')).toBe('IA3c_attn, mlp.c_proj (input: mlp.c_proj)');
    expect(await methodOf('m-prompt')).toBe('Prompt tuning4 virtual tokens · text init');
    expect(await methodOf('m-prefix')).toBe('Prefix tuning3 virtual tokens · projection 16');
    expect(await methodOf('m-dora')).toBe('DoRAr=4 · c_attn · magnitude');
    expect(await methodOf('m-bottleneck')).toBe('Bottleneck adaptersHoulsby · reduction 8 · swish');
    await sectionScreenshot(page, 'section-library', '42-methods-library');
    expect(consoleLines.filter((l) => l.startsWith('pageerror'))).toEqual([]);
  });

  it('refuses prefix tuning on Qwen3 with the engine\'s reason, inline', { timeout: 120_000 }, async () => {
    // The data is still loaded; the model is replaced.
    await page.getByTestId('model-folder-input').setInputFiles(QWEN3_DIR);
    await expect.poll(() => page.getByTestId('model-name').textContent().catch(() => ''), { timeout: 60_000 }).toBe('tiny-qwen3');
    const reason = page.getByTestId('method-prefix-reason');
    expect(await reason.textContent()).toMatch(/Not for this model: prefix tuning as PEFT defines it needs head_dim = hidden_size \/ num_attention_heads .*this model has head_dim 16, hidden_size 32, 4 heads/);
    // The previous choice (prefix) is kept and refused: Start waits.
    await page.getByTestId('method-prefix').click();
    expect(await page.getByTestId('setting-method-error').textContent()).toMatch(/^Prefix tuning cannot train this model: prefix tuning as PEFT defines it needs head_dim/);
    expect(await page.getByTestId('start').isDisabled()).toBe(true);
    await sectionScreenshot(page, 'section-settings', '43-qwen3-prefix-refused');
    // The other methods are fine on it; IA3 starts from PEFT's qwen3 defaults.
    for (const m of ['lora', 'dora', 'ia3', 'prompt', 'bottleneck']) expect(await page.getByTestId(`method-${m}-reason`).count()).toBe(0);
    await page.getByTestId('method-ia3').click();
    expect(await page.getByTestId('setting-method-error').count()).toBe(0);
    for (const [t, on] of [['q_proj', true], ['v_proj', true], ['down_proj', true], ['k_proj', false]] as const) expect(await page.getByTestId(`ia3Targets-${t}`).isChecked()).toBe(on);
    expect(await page.getByTestId('ia3Feedforward-down_proj').isChecked()).toBe(true);
    await expect.poll(() => page.getByTestId('start').isEnabled(), { timeout: 30_000 }).toBe(true);
  });
});

if (skipReason) describe('every adapter method in the app, in Chromium', () => it.skip(skipReason, () => undefined));
