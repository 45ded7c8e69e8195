// Every method the app trains text classifiers with besides LoRA, end to end in Chromium on the tiny
// DistilBERT: the picker offers DoRA, IA3, prompt tuning and bottleneck adapters for a classifier
// (each with its explanation and its count; prefix tuning says why not), each method's own settings
// (IA3 from the encoder's defaults, prompt tuning's virtual tokens taking positions), one short run
// per method with the memory estimate equal to the run's allocations, each zip downloaded and checked
// (PEFT's SEQ_CLS config and tensors with the head under modules_to_save names, or AdapterHub's
// adapter files with its static head files), and the bottleneck classifier's label probabilities in
// the playground (and the prompt-tuned one's) equal to what the engine computes in Node from the
// downloaded zips; a Pfeiffer bottleneck run paused, reloaded and resumed from its checkpoint; and
// prefix tuning (through its projection) on the tiny BERT, its zip checked and its label
// probabilities in the playground equal to the engine's in Node.

import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { unzipSync, strFromU8, type Unzipped } from 'fflate';
import type { Browser, Page } from 'playwright-core';
import { parseSafetensors } from '../../src/io/safetensors';
import { browserMissingReason, buildApp, launchBrowser, numberIn, ROOT, sectionScreenshot, serve, watchConsole, type TestServer, waitForSaved } from './helpers';
import { createNodeGpu } from '../../src/engine/gpu/node-gpu';
import { nodeModelFiles } from '../../src/io/model-files-node';
import { loadHfModel } from '../../src/io/model-files';
import { loadTokenizer } from '../../src/data/tokenizer';
import { loadSequenceClassifier } from '../../src/engine/models/registry';
import { classifierProbabilities } from '../../src/worker/playground';
import { seededRandom } from '../../src/data/batches';

const skipReason = browserMissingReason();
const DISTILBERT_DIR = path.join(ROOT, 'test', 'fixtures', 'tiny-distilbert');
const BERT_DIR = path.join(ROOT, 'test', 'fixtures', 'tiny-bert');
const REVIEW = 'a great and lovely film';

/** Short film reviews in two classes, each with its own words. */
function reviewsCsv(rows: number): string {
  const good = ['great', 'lovely', 'fine', 'superb', 'nice', 'moving'];
  const bad = ['awful', 'dull', 'poor', 'boring', 'weak', 'messy'];
  const lines = ['review,sentiment'];
  for (let i = 0; i < rows; i++) {
    const w = i % 2 ? good : bad;
    lines.push(`"a ${w[i % 6]} and ${w[(i + 3) % 6]} film",${i % 2 ? 'pos' : 'neg'}`);
  }
  return lines.join('\n') + '\n';
}

describe.skipIf(skipReason !== null)('every classifier method in the app, in Chromium', () => {
  let browser: Browser;
  let server: TestServer;
  let page: Page;
  let consoleLines: string[];
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'finetune-cls-methods-e2e-'));
  const csvPath = path.join(tmp, 'reviews.csv');
  const c = JSON.parse(fs.readFileSync(path.join(DISTILBERT_DIR, 'config.json'), 'utf8'));
  const C: number = c.dim, L: number = c.n_layers, F: number = c.hidden_dim, P: number = c.max_position_embeddings;
  // the head, trained in full beside every method: pre_classifier and classifier for 2 labels
  const HEAD = C * C + C + 2 * (C + 1);
  const headShapes = (prefix: string): Record<string, number[]> => ({
    [`${prefix}pre_classifier.weight`]: [C, C],
    [`${prefix}pre_classifier.bias`]: [C],
    [`${prefix}classifier.weight`]: [2, C],
    [`${prefix}classifier.bias`]: [2],
  });

  beforeAll(async () => {
    fs.writeFileSync(csvPath, reviewsCsv(40));
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
  async function trainAndDownload(name: string, files: string[]): Promise<Unzipped> {
    await page.getByTestId('adapter-name').fill(name);
    await expect.poll(() => page.getByTestId('plan-line').textContent().catch(() => ''), { timeout: 30_000 }).toMatch(/^2 steps of 4 examples × \d+ tokens .* 2 classes/);
    await expect.poll(() => page.getByTestId('start').isEnabled(), { timeout: 30_000 }).toBe(true);
    const t0 = Date.now();
    await page.getByTestId('start').click();
    await waitForSaved(page, name);
    console.log(`${name}: trained and saved in ${((Date.now() - t0) / 1000).toFixed(1)} s`);
    expect(await page.getByTestId('step-counter').textContent()).toMatch(/Step 2 \/ 2/);
    expect(Number.isFinite(await numberIn(page, 'loss-latest'))).toBe(true);
    // What the run allocated is what was estimated before it, to the byte (the method's tensors and
    // scratch, the head, and prompt tuning's wider programs).
    const run = page.getByTestId('run');
    await expect
      .poll(async () => Number(await run.getAttribute('data-gpu-bytes')) - Number(await run.getAttribute('data-estimate-bytes')), { message: `${name}: GPU bytes - estimate`, timeout: 10_000 })
      .toBe(0);
    expect(Number(await run.getAttribute('data-gpu-bytes'))).toBeGreaterThan(0);
    expect(await page.getByTestId('saved-metrics').textContent()).toMatch(/accuracy .* over 2 classes/);
    const [download] = await Promise.all([page.waitForEvent('download'), page.getByTestId('download-latest').click()]);
    const zipPath = path.join(tmp, `${name}.zip`);
    await download.saveAs(zipPath);
    const unzipped = unzipSync(new Uint8Array(fs.readFileSync(zipPath)));
    expect(Object.keys(unzipped).sort()).toEqual([...files, 'README.md', 'trainer_state.json'].sort());
    const state = JSON.parse(strFromU8(unzipped['trainer_state.json']));
    expect(state.global_step).toBe(2);
    expect(state.log_history.filter((e: { eval_accuracy?: number }) => e.eval_accuracy !== undefined).map((e: { step: number }) => e.step)).toEqual([1, 2]);
    expect(strFromU8(unzipped['README.md'])).toMatch(/id2label:\n {2}0: "neg"\n {2}1: "pos"/);
    return unzipped;
  }

  /** Opens the app with the reviews file and the model folder, the text and label columns mapped. */
  async function openReviews(modelDir: string, modelName: string): Promise<void> {
    await page.goto(server.url);
    await page.getByTestId('gpu-name').waitFor({ timeout: 60_000 });
    await page.getByTestId('data-file-input').setInputFiles(csvPath);
    await expect.poll(() => page.getByTestId('data-summary').textContent().catch(() => ''), { timeout: 30_000 }).toContain('40 rows');
    await page.getByTestId('model-folder-input').setInputFiles(modelDir);
    await expect.poll(() => page.getByTestId('model-name').textContent().catch(() => ''), { timeout: 60_000 }).toBe(modelName);
    await page.getByTestId('map-text-column').selectOption('review');
    await page.getByTestId('map-label-column').selectOption('sentiment');
    await expect.poll(() => page.getByTestId('class-count').textContent().catch(() => ''), { timeout: 30_000 }).toBe('2 classes');
  }

  /** Two steps of 4 rows at lr 0.01, no warmup, an evaluation after every step. */
  async function shortRunSettings(): Promise<void> {
    await page.getByTestId('setting-learningRate').fill('0.01');
    await page.getByTestId('setting-lengthUnit').selectOption('steps');
    await page.getByTestId('setting-steps').fill('2');
    await page.getByTestId('setting-batchSize').fill('4');
    await page.getByTestId('setting-maxLength').fill('16');
    // no warmup: the first step moves the weights (the best evaluation's weights, maybe step 1's, are the ones saved)
    await page.getByTestId('setting-warmupRatio').fill('0');
    await page.getByTestId('more-settings').locator('summary').click();
    // an evaluation after step 1: step 2's report then counts the evaluation program's buffers too
    await page.getByTestId('setting-evalEvery').fill('1');
  }

  /** The model in Node, to compute what the app should show. */
  async function nodeClassifier(dir: string) {
    const gpu = await createNodeGpu();
    const hf = await loadHfModel(nodeModelFiles(dir));
    const tok = loadTokenizer(hf.tokenizerJson!, hf.tokenizerConfig, { name: hf.name });
    const loaded = loadSequenceClassifier(gpu, hf, { numLabels: 2, random: seededRandom(0) });
    return { gpu, tok, loaded };
  }

  /** The playground's label probabilities of adapter `name` on REVIEW equal the engine's in Node from its downloaded files, within 1e-4. */
  async function expectPlaygroundMatchesEngine(engine: Awaited<ReturnType<typeof nodeClassifier>>, name: string, files: { config: string; weights: Uint8Array; head?: Uint8Array }): Promise<void> {
    const labels = ['neg', 'pos']; // the ids' order: names sorted
    const select = page.getByTestId('playground-adapter');
    await expect.poll(() => select.locator('option').evaluateAll((els, n) => els.some((o) => o.textContent!.startsWith(`${n} `)), name), { timeout: 30_000 }).toBe(true);
    const value = await select.locator('option').evaluateAll((els, n) => (els as HTMLOptionElement[]).find((o) => o.textContent!.startsWith(`${n} `))!.value, name);
    await select.selectOption(value);
    await page.getByTestId('playground-classify-text').fill(REVIEW);
    await page.getByTestId('playground-classify-button').click();
    const rows = page.getByTestId('playground-prob-row');
    await expect.poll(() => rows.count(), { timeout: 60_000 }).toBe(2);
    // (the table is this adapter's once its probabilities changed from the previous one's)
    const read = async () => {
      const m = new Map<string, number>();
      for (let k = 0; k < 2; k++) m.set((await rows.nth(k).getAttribute('data-label'))!, Number(await rows.nth(k).getAttribute('data-probability')));
      return m;
    };
    const want = await classifierProbabilities(engine.gpu, engine.loaded.model, { ...files, name }, engine.tok, engine.loaded.maxPositions, REVIEW);
    await expect.poll(async () => Math.abs((await read()).get('neg')! - want.probabilities[0]), { message: `${name}: app vs engine`, timeout: 30_000 }).toBeLessThan(1e-4);
    const shown = await read();
    expect([...shown.keys()].sort()).toEqual(labels);
    console.log(`${name} on "${REVIEW}": app ${labels.map((l) => shown.get(l)!.toFixed(6)).join(' / ')}, engine in Node ${want.probabilities.map((p) => p.toFixed(6)).join(' / ')}`);
    want.probabilities.forEach((p, k) => expect(Math.abs(shown.get(labels[k])! - p), `${name}: label ${labels[k]}`).toBeLessThan(1e-4));
  }

  const PEFT_FILES = ['adapter_config.json', 'adapter_model.safetensors'];
  const configOf = (files: Unzipped) => JSON.parse(strFromU8(files['adapter_config.json']));
  const tensorsOf = (files: Unzipped, name = files['adapter.safetensors'] ? 'adapter.safetensors' : 'adapter_model.safetensors') => parseSafetensors(files[name], name);
  const shapes = (files: Unzipped, name?: string) => Object.fromEntries([...tensorsOf(files, name).tensors].map(([n, t]) => [n, t.shape]));
  const layer = (l: number) => `base_model.model.distilbert.transformer.layer.${l}`;

  it('trains DoRA, IA3, prompt tuning and bottleneck adapters on DistilBERT, each downloaded in its own format', { timeout: 600_000 }, async () => {
    await openReviews(DISTILBERT_DIR, 'tiny-distilbert');

    // The picker: every method but prefix tuning (refused on DistilBERT), each with its explanation and its count (+ the head).
    const cards = page.getByTestId('method-picker').locator('.method');
    expect(await cards.evaluateAll((els) => els.map((e) => e.getAttribute('data-testid')))).toEqual(['method-lora', 'method-dora', 'method-ia3', 'method-prompt', 'method-prefix', 'method-bottleneck']);
    for (const m of ['lora', 'dora', 'ia3', 'prompt', 'bottleneck']) {
      expect(await page.getByTestId(`method-${m}-reason`).count(), m).toBe(0);
      expect(await page.getByTestId(`method-${m}-count`).textContent(), m).toMatch(/trainable \+ the head$/);
    }
    // DistilBERT's prefix tuning: the engine's reason (PEFT cannot run it on DistilBERT)
    expect(await page.getByTestId('method-prefix-reason').textContent()).toMatch(/^Not for this model: prefix tuning is not available for DistilBERT classifiers: PEFT cannot run it/);
    const lora = L * 2 * 8 * 2 * C; // q_lin and v_lin, r = 8
    expect(await numberIn(page, 'method-lora-count')).toBe(lora);
    expect(await numberIn(page, 'method-dora-count')).toBe(lora + L * 2 * C); // + a magnitude per output feature
    expect(await numberIn(page, 'method-ia3-count')).toBe(L * (2 * C + F)); // k_lin, v_lin (outputs), lin2 (input)
    expect(await numberIn(page, 'method-prompt-count')).toBe(20 * C);
    const bn16 = C / 16;
    expect(await numberIn(page, 'method-bottleneck-count')).toBe(L * 2 * (2 * bn16 * C + bn16 + C)); // Houlsby, reduction 16
    expect(await page.getByTestId('method-dora').textContent()).toMatch(/DoRA.*magnitude/);
    expect(await page.getByTestId('method-ia3').textContent()).toMatch(/IA3.*scaling vector/);
    expect(await page.getByTestId('method-prompt').textContent()).toMatch(/Prompt tuning.*virtual tokens/);
    expect(await page.getByTestId('method-bottleneck').textContent()).toMatch(/Bottleneck adapters.*AdapterHub/);

    await shortRunSettings();

    // DoRA r=4 on the default targets; "All linear layers" is not offered (PEFT would wrap the head).
    await page.getByTestId('method-dora').click();
    await expect.poll(() => page.getByTestId('method-settings-title').textContent()).toMatch(/^DoRA settings/);
    expect(await page.getByTestId('target-all-linear').count()).toBe(0);
    expect(await page.getByTestId('target-q_lin').isChecked()).toBe(true);
    expect(await page.getByTestId('target-v_lin').isChecked()).toBe(true);
    await page.getByTestId('setting-rank').fill('4');
    await page.getByTestId('setting-dropout').fill('0');
    expect(await numberIn(page, 'trainable-params')).toBe(L * 2 * 4 * 2 * C + L * 2 * C + HEAD);
    const dora = await trainAndDownload('c-dora', PEFT_FILES);
    expect(configOf(dora)).toMatchObject({ peft_type: 'LORA', use_dora: true, task_type: 'SEQ_CLS', r: 4, modules_to_save: ['classifier', 'score'], base_model_name_or_path: 'tiny-distilbert' });
    expect([...configOf(dora).target_modules].sort()).toEqual(['q_lin', 'v_lin']);
    const doraShapes: Record<string, number[]> = headShapes('base_model.model.');
    for (let l = 0; l < L; l++) {
      for (const m of ['q_lin', 'v_lin']) {
        doraShapes[`${layer(l)}.attention.${m}.lora_A.weight`] = [4, C];
        doraShapes[`${layer(l)}.attention.${m}.lora_B.weight`] = [C, 4];
        doraShapes[`${layer(l)}.attention.${m}.lora_magnitude_vector`] = [C];
      }
    }
    expect(shapes(dora)).toEqual(doraShapes);
    // lora_B starts at zero: non-zero values are trained ones
    expect(Math.max(...Array.from(tensorsOf(dora).getF32(`${layer(0)}.attention.q_lin.lora_B.weight`), Math.abs))).toBeGreaterThan(0);
    expect(strFromU8(dora['README.md'])).toMatch(/# DoRA DistilBertForSequenceClassification for tiny-distilbert[\s\S]*PeftModel\.from_pretrained/);
    expect(await page.getByTestId('saved-method').textContent()).toMatch(/DoRA adapter \(PEFT LORA with use_dora, task_type SEQ_CLS with the head in modules_to_save\)/);

    // IA3 from the encoder's defaults (PEFT has none for DistilBERT: BERT's equivalent layers).
    await page.getByTestId('method-ia3').click();
    await expect.poll(() => page.getByTestId('method-settings-title').textContent()).toMatch(/^IA3 settings/);
    for (const [t, on] of [['k_lin', true], ['v_lin', true], ['lin2', true], ['q_lin', false], ['out_lin', false], ['lin1', false]] as const) {
      expect(await page.getByTestId(`ia3Targets-${t}`).isChecked(), t).toBe(on);
    }
    expect(await page.getByTestId('ia3Feedforward-lin2').isChecked()).toBe(true);
    expect(await page.getByTestId('ia3Feedforward-k_lin').isChecked()).toBe(false);
    expect(await page.getByTestId('ia3Targets-modules').textContent()).toContain('PEFT has no IA3 defaults for this model type; the app starts from the equivalent layers of BERT’s: k_lin, v_lin, lin2, feedforward lin2');
    expect(await numberIn(page, 'trainable-params')).toBe(L * (2 * C + F) + HEAD);
    await sectionScreenshot(page, 'section-settings', '50-classifier-ia3');
    const ia3 = await trainAndDownload('c-ia3', PEFT_FILES);
    expect(configOf(ia3)).toMatchObject({ peft_type: 'IA3', task_type: 'SEQ_CLS', modules_to_save: ['classifier', 'score'], feedforward_modules: ['lin2'] });
    expect([...configOf(ia3).target_modules].sort()).toEqual(['k_lin', 'lin2', 'v_lin']);
    const ia3Shapes: Record<string, number[]> = headShapes('base_model.model.');
    for (let l = 0; l < L; l++) {
      ia3Shapes[`${layer(l)}.attention.k_lin.ia3_l`] = [C, 1];
      ia3Shapes[`${layer(l)}.attention.v_lin.ia3_l`] = [C, 1];
      ia3Shapes[`${layer(l)}.ffn.lin2.ia3_l`] = [1, F];
    }
    expect(shapes(ia3)).toEqual(ia3Shapes);
    // IA3 starts at ones: other values are trained ones
    expect(Array.from(tensorsOf(ia3).getF32(`${layer(1)}.attention.v_lin.ia3_l`)).some((v) => v !== 1)).toBe(true);

    // Prompt tuning from a text; its virtual tokens take positions of the encoder too.
    await page.getByTestId('method-prompt').click();
    await page.getByTestId('setting-virtualTokens').fill('4');
    await page.getByTestId('setting-promptInit').selectOption('text');
    expect(await page.getByTestId('setting-promptInitText-error').textContent()).toMatch(/Write the text the virtual tokens start from/);
    expect(await page.getByTestId('start').isDisabled()).toBe(true);
    await page.getByTestId('setting-promptInitText').fill('a film review:');
    expect(await numberIn(page, 'trainable-params')).toBe(4 * C + HEAD);
    await page.getByTestId('setting-maxLength').fill(String(P));
    expect(await page.getByTestId('setting-maxLength-error').textContent()).toMatch(new RegExp(`With 4 virtual tokens this model has room for ${P - 4} real tokens`));
    await page.getByTestId('setting-maxLength').fill('16');
    const prompt = await trainAndDownload('c-prompt', PEFT_FILES);
    expect(configOf(prompt)).toMatchObject({
      peft_type: 'PROMPT_TUNING', task_type: 'SEQ_CLS', modules_to_save: ['classifier', 'score'], num_virtual_tokens: 4, token_dim: C, num_layers: L,
      prompt_tuning_init: 'TEXT', prompt_tuning_init_text: 'a film review:', tokenizer_name_or_path: 'tiny-distilbert',
    });
    // prompt learning: the head under base_model.<module> (PeftModel holds the transformers model as base_model)
    expect(shapes(prompt)).toEqual({ prompt_embeddings: [4, C], ...headShapes('base_model.') });

    // Bottleneck adapters: Pfeiffer changes the count; Houlsby with a reduction of 8 trains.
    await page.getByTestId('method-bottleneck').click();
    await page.getByTestId('setting-bottleneckType').selectOption('pfeiffer');
    expect(await numberIn(page, 'trainable-params')).toBe(L * (2 * bn16 * C + bn16 + C) + HEAD);
    await page.getByTestId('setting-bottleneckType').selectOption('houlsby');
    await page.getByTestId('setting-reductionFactor').fill('8');
    await page.getByTestId('setting-bottleneckName').fill('reviews');
    const bn = C / 8;
    expect(await page.getByTestId('method-fields').textContent()).toContain(`Bottleneck ${bn} = ${C} / 8.`);
    expect(await numberIn(page, 'trainable-params')).toBe(L * 2 * (2 * bn * C + bn + C) + HEAD);
    const bottleneck = await trainAndDownload('c-bottleneck', ['adapter_config.json', 'adapter.safetensors', 'head_config.json', 'model_head.safetensors']);
    expect(configOf(bottleneck)).toMatchObject({
      name: 'reviews', model_type: 'distilbert', model_class: 'DistilBertForSequenceClassification', hidden_size: C,
      config: { mh_adapter: true, output_adapter: true, reduction_factor: 8, non_linearity: 'swish', original_ln_before: false },
    });
    const bnShapes: Record<string, number[]> = {};
    for (let l = 0; l < L; l++) {
      for (const where of ['attention_adapters', 'output_adapters']) {
        const p = `distilbert.transformer.layer.${l}.${where}.adapters.reviews`;
        bnShapes[`${p}.adapter_down.0.weight`] = [bn, C];
        bnShapes[`${p}.adapter_down.0.bias`] = [bn];
        bnShapes[`${p}.adapter_up.weight`] = [C, bn];
        bnShapes[`${p}.adapter_up.bias`] = [C];
      }
    }
    expect(shapes(bottleneck, 'adapter.safetensors')).toEqual(bnShapes);
    // AdapterHub's static head: transformers' own names, and its config for 2 labels
    expect(shapes(bottleneck, 'model_head.safetensors')).toEqual(headShapes(''));
    expect(JSON.parse(strFromU8(bottleneck['head_config.json']))).toMatchObject({ config: null, model_class: 'DistilBertForSequenceClassification', num_labels: 2, model_type: 'distilbert' });
    expect(Math.max(...Array.from(tensorsOf(bottleneck, 'adapter.safetensors').getF32('distilbert.transformer.layer.0.output_adapters.adapters.reviews.adapter_up.bias'), Math.abs))).toBeGreaterThan(0);
    expect(strFromU8(bottleneck['README.md'])).toMatch(/library_name: adapter-transformers[\s\S]*adapters\.init\(model\)[\s\S]*load_adapter/);
    expect(await page.getByTestId('saved-method').textContent()).toMatch(/AdapterHub’s format \(adapter_config.json \+ adapter.safetensors; the head in head_config.json \+ model_head.safetensors/);

    // The library names each method, for a classifier.
    const methodOf = async (name: string) => page.getByTestId('library-row').filter({ hasText: name }).getByTestId('library-method').textContent();
    await expect.poll(() => page.getByTestId('library-row').count(), { timeout: 30_000 }).toBe(4);
    expect(await methodOf('c-dora')).toBe('DoRAr=4 · q_lin, v_lin · magnitude · + head');
    expect(await methodOf('c-ia3')).toBe('IA3k_lin, v_lin, lin2 (input: lin2) · + head');
    expect(await methodOf('c-prompt')).toBe('Prompt tuning4 virtual tokens · text init · + head');
    expect(await methodOf('c-bottleneck')).toBe('Bottleneck adaptersHoulsby · reduction 8 · swish · + head');
    await sectionScreenshot(page, 'section-library', '51-classifier-methods-library');

    // The playground's label probabilities for the bottleneck classifier (AdapterHub's head files)
    // and the prompt-tuned one (virtual tokens before the text) equal the engine's in Node from the
    // downloaded zips.
    const engine = await nodeClassifier(DISTILBERT_DIR);
    const select = page.getByTestId('playground-adapter');
    await expect.poll(() => select.locator('option').count(), { timeout: 30_000 }).toBe(4);
    await expectPlaygroundMatchesEngine(engine, 'c-bottleneck', { config: strFromU8(bottleneck['adapter_config.json']), weights: bottleneck['adapter.safetensors'], head: bottleneck['model_head.safetensors'] });
    await expectPlaygroundMatchesEngine(engine, 'c-prompt', { config: strFromU8(prompt['adapter_config.json']), weights: prompt['adapter_model.safetensors'] });
    engine.loaded.model.destroy();
    await sectionScreenshot(page, 'section-playground', '52-classifier-bottleneck-playground');
    expect(consoleLines.filter((l) => l.startsWith('pageerror'))).toEqual([]);
  });

  it('Pfeiffer bottleneck adapters: a run paused, reloaded and resumed from its checkpoint ends with AdapterHub\'s files', { timeout: 300_000 }, async () => {
    const loadInputs = async () => {
      await page.getByTestId('data-file-input').setInputFiles(csvPath);
      await expect.poll(() => page.getByTestId('data-summary').textContent().catch(() => ''), { timeout: 30_000 }).toContain('40 rows');
      await page.getByTestId('model-folder-input').setInputFiles(DISTILBERT_DIR);
      await expect.poll(() => page.getByTestId('model-name').textContent().catch(() => ''), { timeout: 60_000 }).toBe('tiny-distilbert');
    };
    await page.goto(server.url);
    await page.getByTestId('gpu-name').waitFor({ timeout: 60_000 });
    await loadInputs();
    await page.getByTestId('map-text-column').selectOption('review');
    await page.getByTestId('map-label-column').selectOption('sentiment');
    await page.getByTestId('method-bottleneck').click();
    await page.getByTestId('setting-bottleneckType').selectOption('pfeiffer');
    await page.getByTestId('setting-reductionFactor').fill('4');
    await page.getByTestId('setting-bottleneckName').fill('resumed');
    const bn = C / 4;
    expect(await numberIn(page, 'trainable-params')).toBe(L * (2 * bn * C + bn + C) + HEAD);
    await page.getByTestId('setting-learningRate').fill('0.01');
    await page.getByTestId('setting-lengthUnit').selectOption('steps');
    await page.getByTestId('setting-steps').fill('12');
    await page.getByTestId('setting-batchSize').fill('4');
    await page.getByTestId('setting-maxLength').fill('16');
    await page.getByTestId('more-settings').locator('summary').click();
    await page.getByTestId('setting-evalEvery').fill('2');
    await page.getByTestId('setting-checkpointEvery').fill('2');
    await page.getByTestId('adapter-name').fill('c-resumed');
    await expect.poll(() => page.getByTestId('start').isEnabled(), { timeout: 30_000 }).toBe(true);
    await page.getByTestId('start').click();

    // Pause once a checkpoint past an evaluation exists, then "close the tab".
    await expect.poll(() => numberIn(page, 'checkpoint-line').catch(() => 0), { timeout: 120_000 }).toBeGreaterThanOrEqual(2);
    await page.getByTestId('pause').click();
    await expect.poll(() => page.getByTestId('train-phase').textContent(), { timeout: 60_000 }).toBe('Paused');
    const pausedAt = await numberIn(page, 'step-counter');
    expect(pausedAt).toBeLessThan(12);
    await page.reload();

    const unfinished = page.getByTestId('unfinished-run');
    await expect.poll(() => unfinished.textContent().catch(() => ''), { timeout: 30_000 }).toContain(`step ${pausedAt} of 12`);
    await loadInputs();
    await expect.poll(() => unfinished.getByRole('button', { name: 'Resume' }).isEnabled(), { timeout: 30_000 }).toBe(true);
    await unfinished.getByRole('button', { name: 'Resume' }).click();
    await waitForSaved(page, 'c-resumed');
    expect(Number(await page.getByTestId('loss-chart').getAttribute('data-points'))).toBe(12);
    expect(await page.getByTestId('eval-row').evaluateAll((els) => els.map((e) => Number(e.getAttribute('data-step'))))).toEqual([2, 4, 6, 8, 10, 12]);

    const [download] = await Promise.all([page.waitForEvent('download'), page.getByTestId('download-latest').click()]);
    const zipPath = path.join(tmp, 'c-resumed.zip');
    await download.saveAs(zipPath);
    const files = unzipSync(new Uint8Array(fs.readFileSync(zipPath)));
    expect(Object.keys(files).sort()).toEqual(['README.md', 'adapter.safetensors', 'adapter_config.json', 'head_config.json', 'model_head.safetensors', 'trainer_state.json']);
    const state = JSON.parse(strFromU8(files['trainer_state.json']));
    expect(state.log_history.filter((e: { loss?: number }) => e.loss !== undefined).map((e: { step: number }) => e.step)).toEqual([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]);
    expect(configOf(files)).toMatchObject({ name: 'resumed', config: { mh_adapter: false, output_adapter: true, reduction_factor: 4, non_linearity: 'relu', original_ln_before: true } });
    const bnShapes: Record<string, number[]> = {};
    for (let l = 0; l < L; l++) {
      const p = `distilbert.transformer.layer.${l}.output_adapters.adapters.resumed`;
      Object.assign(bnShapes, { [`${p}.adapter_down.0.weight`]: [bn, C], [`${p}.adapter_down.0.bias`]: [bn], [`${p}.adapter_up.weight`]: [C, bn], [`${p}.adapter_up.bias`]: [C] });
    }
    expect(shapes(files, 'adapter.safetensors')).toEqual(bnShapes);
    expect(shapes(files, 'model_head.safetensors')).toEqual(headShapes(''));
    expect(await page.getByTestId('unfinished-runs').count()).toBe(0);
    expect(consoleLines.filter((l) => l.startsWith('pageerror'))).toEqual([]);
  });

  it('prefix tuning through a projection on BERT: PEFT PREFIX_TUNING zip with the head, the playground equal to the engine', { timeout: 300_000 }, async () => {
    const b = JSON.parse(fs.readFileSync(path.join(BERT_DIR, 'config.json'), 'utf8'));
    const BC: number = b.hidden_size, BL: number = b.num_hidden_layers, BH: number = b.num_attention_heads;
    await openReviews(BERT_DIR, 'tiny-bert');
    // offered on BERT (DistilBERT refuses it, above), with its count and no reason
    expect(await page.getByTestId('method-prefix-reason').count()).toBe(0);
    expect(await page.getByTestId('method-prefix-count').textContent()).toMatch(/trainable \+ the head$/);
    await page.getByTestId('method-prefix').click();
    await expect.poll(() => page.getByTestId('method-settings-title').textContent()).toMatch(/^Prefix tuning settings/);
    await page.getByTestId('setting-virtualTokens').fill('3');
    await page.getByTestId('setting-prefixProjection').check();
    await page.getByTestId('setting-encoderHiddenSize').fill('16');
    const width = BL * 2 * BC;
    const head = 2 * BC + 2; // classifier for 2 labels (the pooler stays frozen)
    expect(await numberIn(page, 'trainable-params')).toBe(3 * BC + 16 * BC + 16 + width * 16 + width + head);
    await shortRunSettings();
    await sectionScreenshot(page, 'section-settings', '54-classifier-prefix-bert');
    const prefix = await trainAndDownload('c-prefix', PEFT_FILES);
    expect(configOf(prefix)).toMatchObject({
      peft_type: 'PREFIX_TUNING', task_type: 'SEQ_CLS', num_virtual_tokens: 3, token_dim: BC, num_attention_heads: BH, num_layers: BL,
      encoder_hidden_size: 16, prefix_projection: true, modules_to_save: ['classifier', 'score'], base_model_name_or_path: 'tiny-bert',
    });
    // PEFT saves the prefix the MLP makes (not the MLP), and the head under base_model.<module>
    expect(shapes(prefix)).toEqual({ prompt_embeddings: [3, width], 'base_model.classifier.weight': [2, BC], 'base_model.classifier.bias': [2] });

    const engine = await nodeClassifier(BERT_DIR);
    await expectPlaygroundMatchesEngine(engine, 'c-prefix', { config: strFromU8(prefix['adapter_config.json']), weights: prefix['adapter_model.safetensors'] });
    engine.loaded.model.destroy();
    expect(consoleLines.filter((l) => l.startsWith('pageerror'))).toEqual([]);
  });
});

if (skipReason) describe('every classifier method in the app, in Chromium', () => it.skip(skipReason, () => undefined));
