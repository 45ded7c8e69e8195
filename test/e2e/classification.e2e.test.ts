// Text classification in the app, end to end in Chromium: an encoder (DistilBERT, downloaded from
// a hub mirror; BERT, from a folder) turns the data step into a text + label column choice with
// the label set and class balance; a short LoRA run shows loss, accuracy, macro-F1 and a labelled
// confusion matrix per evaluation and keeps the best evaluation; the library shows accuracy and F1;
// the zip is PEFT's SEQ_CLS adapter (LoRA + the head as modules_to_save, model card with
// id2label/label2id, trainer_state.json with eval accuracy). A classification run resumes after a
// reload like a causal one. SST-2 comes from ../shared (skipped where it is absent); the BERT run
// uses a generated three-class CSV.

import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { unzipSync, strFromU8 } from 'fflate';
import type { Browser, Page } from 'playwright-core';
import { parseSafetensors } from '../../src/io/safetensors';
import { parseTableText } from '../../src/data/table';
import { browserMissingReason, buildApp, launchBrowser, numberIn, ROOT, screenshot, sectionScreenshot, serve, watchConsole, type TestServer, waitForEvalRows, waitForTrainDone } from './helpers';

const skipReason = browserMissingReason();
const DISTILBERT_DIR = path.join(ROOT, 'test', 'fixtures', 'tiny-distilbert');
const BERT_DIR = path.join(ROOT, 'test', 'fixtures', 'tiny-bert');
const HUB_REPO = 'test-org/tiny-distilbert';
const SHARED = path.resolve(ROOT, '../shared');
const SST2 = path.join(SHARED, 'data', 'sst2_dev.csv');
const sst2Missing = fs.existsSync(SST2) ? null : `${SST2} not found (../shared is absent): skipping the SST-2 run.`;

/** The first `rows` rows of SST-2 dev (one text per line there, so lines are rows). */
function sst2Slice(rows: number): string {
  const lines = fs.readFileSync(SST2, 'utf8').split('\n');
  return lines.slice(0, rows + 1).join('\n') + '\n';
}

/** Support tickets in three unbalanced classes (5 : 2 : 1), each with its own words. */
function ticketsCsv(): string {
  const words: Record<string, string[]> = {
    billing: ['invoice', 'charge', 'refund', 'payment', 'card', 'price'],
    shipping: ['parcel', 'delivery', 'courier', 'address', 'late', 'box'],
    technical: ['crash', 'error', 'login', 'update', 'screen', 'bug'],
  };
  const plan: [string, number][] = [['billing', 40], ['shipping', 16], ['technical', 8]];
  const rows: string[] = ['ticket_id,message,department'];
  let id = 1000;
  for (let i = 0; rows.length <= 64; i++) {
    for (const [label, n] of plan) {
      if (i >= n) continue;
      const w = words[label];
      rows.push(`${id++},"my ${w[i % 6]} and the ${w[(i + 2) % 6]}, ${w[(i + 4) % 6]} again",${label}`);
    }
  }
  return rows.join('\n') + '\n';
}

const cfg = (dir: string) => JSON.parse(fs.readFileSync(path.join(dir, 'config.json'), 'utf8'));

describe.skipIf(skipReason !== null)('text classification in the app, in Chromium', () => {
  let browser: Browser;
  let server: TestServer;
  let page: Page;
  let consoleLines: string[];
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'finetune-cls-e2e-'));

  beforeAll(async () => {
    server = await serve(buildApp(), { hub: { repo: HUB_REPO, dir: DISTILBERT_DIR } });
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

  it.skipIf(sst2Missing !== null)('SST-2 with DistilBERT from a hub mirror: columns, class balance, accuracy/F1/confusion matrix, best checkpoint, SEQ_CLS zip', { timeout: 900_000 }, async () => {
    const csvPath = path.join(tmp, 'sst2-slice.csv');
    fs.writeFileSync(csvPath, sst2Slice(120));
    const table = parseTableText(fs.readFileSync(csvPath, 'utf8'), 'sst2-slice.csv');
    const counts = { '0': table.rows.filter((r) => r.label === '0').length, '1': table.rows.filter((r) => r.label === '1').length };
    expect(counts['0'] + counts['1']).toBe(120);

    await page.goto(server.url);
    await page.getByTestId('gpu-name').waitFor({ timeout: 60_000 });
    await page.getByTestId('data-file-input').setInputFiles(csvPath);
    await expect.poll(() => page.getByTestId('data-summary').textContent().catch(() => ''), { timeout: 30_000 }).toContain('120 rows');
    // Before a model is chosen, the data step says an encoder makes it a classifier.
    expect(await page.getByTestId('task-hint').textContent()).toMatch(/encoder \(DistilBERT, BERT\).*text column and a label column/);

    // The encoder from the mirror.
    await page.getByTestId('hub-endpoint-details').locator('summary').click();
    await page.getByTestId('hub-endpoint').fill(`${server.url}hub`);
    await page.getByTestId('repo-id').fill(HUB_REPO);
    await page.getByTestId('download-model').click();
    await expect.poll(() => page.getByTestId('model-name').textContent().catch(() => ''), { timeout: 60_000 }).toBe(HUB_REPO);
    expect(await page.getByTestId('model-task').textContent()).toMatch(/Text classification · DistilBertForSequenceClassification; pre_classifier and classifier trained in full/);

    // The data step now asks for a text and a label column (guessed: text, label) and shows the classes.
    expect(await page.getByTestId('map-text-column').inputValue()).toBe('text');
    expect(await page.getByTestId('map-label-column').inputValue()).toBe('label');
    const balance = page.getByTestId('class-balance');
    await expect.poll(() => balance.textContent().catch(() => ''), { timeout: 30_000 }).toMatch(/2 classes.*integer labels.*120 usable rows/);
    const classRows = page.getByTestId('class-row');
    expect(await classRows.evaluateAll((els) => els.map((e) => [e.getAttribute('data-label'), Number(e.getAttribute('data-count'))]))).toEqual([
      ['0', counts['0']],
      ['1', counts['1']],
    ]);
    expect(await page.locator('.class-bar').count()).toBe(2);
    expect(await page.getByTestId('class-balance-warning').count()).toBe(0); // SST-2 is balanced

    // Picking the label as the text is refused inline.
    await page.getByTestId('map-text-column').selectOption('label');
    await expect.poll(() => page.getByTestId('mapping-error').textContent().catch(() => '')).toMatch(/text and the label are the same column "label"/);
    await expect.poll(() => page.getByTestId('start').isDisabled(), { timeout: 10_000 }).toBe(true);
    await page.getByTestId('map-text-column').selectOption('text');
    await expect.poll(() => page.getByTestId('mapping-error').count()).toBe(0);

    // LoRA (+ the head) is the classifier's default; DoRA, IA3, prompt tuning and bottleneck adapters
    // are offered too (classification-methods.e2e trains each), prefix tuning is refused on DistilBERT (PEFT cannot run it there). The count includes the head.
    const c = cfg(DISTILBERT_DIR);
    const C = c.dim, L = c.n_layers, F = c.hidden_dim, V = c.vocab_size, P = c.max_position_embeddings;
    expect(await page.getByTestId('method-lora').getAttribute('class')).toContain('selected');
    for (const m of ['lora', 'dora', 'ia3', 'prompt', 'bottleneck']) expect(await page.getByTestId(`method-${m}-count`).textContent(), m).toMatch(/trainable \+ the head$/);
    expect(await page.getByTestId('method-prefix-reason').textContent()).toMatch(/^Not for this model: prefix tuning is not available for DistilBERT classifiers: PEFT cannot run it/);
    const lora = L * 2 * 8 * (C + C); // q_lin and v_lin, r = 8
    const head = C * C + C + 2 * (C + 1); // pre_classifier, classifier for 2 labels
    expect(await numberIn(page, 'trainable-params')).toBe(lora + head);
    const perLayer = 4 * (C * C + C) + 2 * C + (C * F + F) + (F * C + C) + 2 * C;
    const all = V * C + P * C + 2 * C + L * perLayer + (C * C + C) + 2 * (C + 1) + lora;
    expect(await page.getByTestId('peft-line').textContent()).toContain(`trainable params: ${(lora + head).toLocaleString('en-US')} || all params: ${all.toLocaleString('en-US')}`);
    expect(await page.getByTestId('target-all-linear').count()).toBe(0); // PEFT would put LoRA on the head

    // A short run: 6 steps of 8, an evaluation every 2 steps, keep the best by accuracy.
    await page.getByTestId('setting-learningRate').fill('0.005');
    await page.getByTestId('setting-lengthUnit').selectOption('steps');
    await page.getByTestId('setting-steps').fill('6');
    await page.getByTestId('setting-batchSize').fill('8');
    await page.getByTestId('setting-maxLength').fill('40');
    await page.getByTestId('setting-metricForBest').selectOption('accuracy');
    await page.getByTestId('more-settings').locator('summary').click();
    await page.getByTestId('setting-evalEvery').fill('2');
    await page.getByTestId('adapter-name').fill('sst2 slice');
    await expect.poll(() => page.getByTestId('plan-line').textContent().catch(() => ''), { timeout: 30_000 }).toMatch(/^6 steps of 8 examples × \d+ tokens .* 2 classes/);
    expect(await page.getByTestId('examples-count').textContent()).toBe('108 train · 12 validation');
    // Once the examples are built, the class table also counts each split.
    await expect.poll(() => page.locator('.class-table thead').textContent()).toMatch(/train.*validation/);
    expect(await page.getByTestId('sample-example').textContent()).toMatch(/\[CLS\].*\[SEP\]\s*→\s*[01]/);
    await sectionScreenshot(page, 'section-data', '30-classification-data');
    await expect.poll(() => page.getByTestId('start').isEnabled(), { timeout: 10_000 }).toBe(true);
    await page.getByTestId('start').click();
    await waitForTrainDone(page);
    await sectionScreenshot(page, 'section-train', '31-classification-trained');

    // Accuracy, macro-F1 and the confusion matrix of the evaluations, on screen.
    expect(await page.getByTestId('step-counter').textContent()).toMatch(/Step 6 \/ 6/);
    const accuracy = (await numberIn(page, 'eval-accuracy')) / 100;
    const f1 = await numberIn(page, 'eval-f1');
    console.log(`SST-2 slice in the app (tiny random DistilBERT, 6 steps of 8, 12 validation rows): accuracy ${accuracy.toFixed(3)}, macro-F1 ${f1}`);
    expect(accuracy).toBeGreaterThanOrEqual(0);
    expect(accuracy).toBeLessThanOrEqual(1);
    expect(f1).toBeGreaterThanOrEqual(0);
    expect(f1).toBeLessThanOrEqual(1);
    expect(Number(await page.getByTestId('metrics-chart').getAttribute('data-evals'))).toBe(3);
    expect(Number(await page.getByTestId('loss-chart').getAttribute('data-evals'))).toBe(3);
    const evalRows = page.getByTestId('eval-row');
    expect(await evalRows.evaluateAll((els) => els.map((e) => Number(e.getAttribute('data-step'))))).toEqual([2, 4, 6]);
    const bestStep = await numberIn(page, 'best-eval');
    expect([2, 4, 6]).toContain(bestStep);
    expect(await page.locator('[data-testid="eval-row"].kept').getAttribute('data-step')).toBe(String(bestStep));
    const matrix = page.getByTestId('confusion-matrix');
    expect(await page.getByTestId('confusion-row').evaluateAll((els) => els.map((e) => e.getAttribute('data-label')))).toEqual(['0', '1']);
    expect(await matrix.locator('thead').textContent()).toMatch(/true ↓ · predicted →\s*01\s*recall/);
    let cells = 0, diagonal = 0;
    for (const [i, k] of [[0, 0], [0, 1], [1, 0], [1, 1]]) {
      const n = Number(await page.getByTestId(`confusion-${i}-${k}`).textContent());
      cells += n;
      if (i === k) diagonal += n;
    }
    expect(cells).toBe(12); // every validation example, once
    // The matrix shown is the latest evaluation's (step 6): its diagonal is the accuracy shown for it.
    expect(await matrix.getAttribute('data-step')).toBe('6');
    expect(diagonal / 12).toBeCloseTo(accuracy, 3);
    // What the run allocated is what was estimated before it, to the byte.
    const run = page.getByTestId('run');
    expect(Number(await run.getAttribute('data-gpu-bytes'))).toBe(Number(await run.getAttribute('data-estimate-bytes')));
    // The saved weights are the best evaluation's.
    const saved = page.getByTestId('saved-metrics');
    expect(await saved.textContent()).toContain(`step ${bestStep}’s`);
    const savedAcc = (await numberIn(page, 'saved-accuracy')) / 100;
    expect(await page.getByTestId('saved-method').textContent()).toMatch(/LoRA adapter \(PEFT LORA, task_type SEQ_CLS with the head in modules_to_save\)/);

    // The library shows the method, the task and accuracy/F1 of the saved weights.
    const row = page.getByTestId('library-row').filter({ hasText: 'sst2 slice' });
    await expect.poll(() => row.count(), { timeout: 30_000 }).toBe(1);
    expect(await row.getByTestId('library-method').textContent()).toMatch(/LoRAr=8 · q_lin, v_lin · \+ head/);
    expect(await row.getByTestId('library-task').textContent()).toBe('text classification · 2 labels');
    expect(Number((await row.getByTestId('library-accuracy').textContent())!.replace(' %', '')) / 100).toBeCloseTo(savedAcc, 3);
    expect(await row.getByTestId('library-f1').textContent()).toMatch(/^\d\.\d{3}$/);
    await sectionScreenshot(page, 'section-library', '32-classification-library');

    // The zip: PEFT's SEQ_CLS LoRA adapter with the head, as the CLI exports it.
    const [download] = await Promise.all([page.waitForEvent('download'), page.getByTestId('download-latest').click()]);
    expect(download.suggestedFilename()).toBe('sst2-slice.zip');
    const zipPath = path.join(tmp, 'sst2.zip');
    await download.saveAs(zipPath);
    const files = unzipSync(new Uint8Array(fs.readFileSync(zipPath)));
    expect(Object.keys(files).sort()).toEqual(['README.md', 'adapter_config.json', 'adapter_model.safetensors', 'trainer_state.json']);
    const config = JSON.parse(strFromU8(files['adapter_config.json']));
    expect(config.peft_type).toBe('LORA');
    expect(config.task_type).toBe('SEQ_CLS');
    expect(config.modules_to_save).toEqual(['classifier', 'score']);
    expect([...config.target_modules].sort()).toEqual(['q_lin', 'v_lin']);
    expect(config.r).toBe(8);
    expect(config.base_model_name_or_path).toBe(HUB_REPO);
    const st = parseSafetensors(files['adapter_model.safetensors'], 'adapter_model.safetensors');
    const expected = new Map<string, number[]>();
    for (let l = 0; l < L; l++) {
      for (const m of ['q_lin', 'v_lin']) {
        expected.set(`base_model.model.distilbert.transformer.layer.${l}.attention.${m}.lora_A.weight`, [8, C]);
        expected.set(`base_model.model.distilbert.transformer.layer.${l}.attention.${m}.lora_B.weight`, [C, 8]);
      }
    }
    expected.set('base_model.model.pre_classifier.weight', [C, C]);
    expected.set('base_model.model.pre_classifier.bias', [C]);
    expected.set('base_model.model.classifier.weight', [2, C]);
    expected.set('base_model.model.classifier.bias', [2]);
    expect([...st.tensors.keys()].sort()).toEqual([...expected.keys()].sort());
    for (const [name, shape] of expected) expect(st.tensors.get(name)!.shape, name).toEqual(shape);
    // lora_B starts at zero and the classifier bias too: non-zero values are trained ones.
    expect(Math.max(...Array.from(st.getF32('base_model.model.distilbert.transformer.layer.0.attention.q_lin.lora_B.weight'), Math.abs))).toBeGreaterThan(0);
    expect(Math.max(...Array.from(st.getF32('base_model.model.classifier.bias'), Math.abs))).toBeGreaterThan(0);

    const readme = strFromU8(files['README.md']);
    expect(readme).toContain('pipeline_tag: text-classification');
    expect(readme).toMatch(/id2label:\n {2}0: "0"\n {2}1: "1"\nlabel2id:\n {2}"0": 0\n {2}"1": 1/);
    expect(readme).toContain('AutoModelForSequenceClassification');
    expect(readme).toContain(`| 0 | 0 | ${await page.getByTestId('class-row').first().locator('td').nth(5).textContent()} |`);
    const state = JSON.parse(strFromU8(files['trainer_state.json']));
    expect(state.global_step).toBe(6);
    expect(state.metric_for_best_model).toBe('eval_accuracy');
    expect(state.load_best_model_at_end).toBe(true);
    expect(state.best_global_step).toBe(bestStep);
    const evals = state.log_history.filter((e: { eval_accuracy?: number }) => e.eval_accuracy !== undefined);
    expect(evals.map((e: { step: number }) => e.step)).toEqual([2, 4, 6]);
    expect(evals[2].eval_accuracy).toBeCloseTo(accuracy, 3);
    expect(evals[2].eval_f1).toBeCloseTo(f1, 2);
    expect(state.best_metric).toBeCloseTo(evals.find((e: { step: number }) => e.step === bestStep).eval_accuracy, 6);
    expect(consoleLines.filter((l) => l.startsWith('pageerror'))).toEqual([]);
  });

  it('BERT from a folder on three unbalanced string labels: the warning, then a run (frozen weights in f16) paused, reloaded and resumed from its checkpoint', { timeout: 900_000 }, async () => {
    const csvPath = path.join(tmp, 'tickets.csv');
    fs.writeFileSync(csvPath, ticketsCsv());
    const loadInputs = async () => {
      await page.getByTestId('data-file-input').setInputFiles(csvPath);
      await expect.poll(() => page.getByTestId('data-summary').textContent().catch(() => ''), { timeout: 30_000 }).toContain('tickets.csv');
      await page.getByTestId('model-folder-input').setInputFiles(BERT_DIR);
      await expect.poll(() => page.getByTestId('model-name').textContent().catch(() => ''), { timeout: 60_000 }).toBe('tiny-bert');
    };
    await page.goto(server.url);
    await page.getByTestId('gpu-name').waitFor({ timeout: 60_000 });
    await loadInputs();
    // Guessed by content: the short repeated values are the label, "message" the text (not the ids).
    expect(await page.getByTestId('map-label-column').inputValue()).toBe('department');
    expect(await page.getByTestId('map-text-column').inputValue()).toBe('message');
    const balance = page.getByTestId('class-balance');
    await expect.poll(() => balance.textContent().catch(() => ''), { timeout: 30_000 }).toMatch(/3 classes.*text labels: ids in sorted order.*64 usable rows/);
    expect(await page.getByTestId('class-row').evaluateAll((els) => els.map((e) => [e.getAttribute('data-label'), Number(e.getAttribute('data-count'))]))).toEqual([
      ['billing', 40],
      ['shipping', 16],
      ['technical', 8],
    ]);
    expect(await page.getByTestId('class-balance-warning').textContent()).toMatch(/unbalanced classes \(largest\/smallest = 5\.0\).*always guessing "billing" \(62\.5%\); watch macro-F1/);
    // The ids as labels instead: far too many classes for a label column.
    await page.getByTestId('map-label-column').selectOption('ticket_id');
    await expect.poll(() => page.getByTestId('mapping-error').textContent().catch(() => ''), { timeout: 30_000 }).toMatch(/"ticket_id" has 64 different values for 64 rows, most of them on a single row: is it an id or a text column\?/);
    await page.getByTestId('map-label-column').selectOption('department');
    await expect.poll(() => page.getByTestId('class-count').textContent().catch(() => ''), { timeout: 30_000 }).toBe('3 classes');
    await sectionScreenshot(page, 'section-data', '33-classification-unbalanced');

    // Every classifier method is offered on BERT, prefix tuning included (DistilBERT refuses it).
    for (const m of ['lora', 'dora', 'ia3', 'prompt', 'prefix', 'bottleneck']) expect(await page.getByTestId(`method-${m}-count`).textContent(), m).toMatch(/trainable \+ the head$/);
    expect(await page.getByTestId('method-prefix-reason').count()).toBe(0);
    // BERT's default LoRA targets; the head for 3 labels counts 3 classifier rows (the pooler stays frozen).
    const c = cfg(BERT_DIR);
    const C = c.hidden_size, L = c.num_hidden_layers;
    expect(await page.getByTestId('target-query').isChecked()).toBe(true);
    expect(await page.getByTestId('target-value').isChecked()).toBe(true);
    expect(await page.getByTestId('target-key').isChecked()).toBe(false);
    await expect.poll(() => numberIn(page, 'trainable-params'), { timeout: 30_000 }).toBe(L * 2 * 8 * 2 * C + 3 * (C + 1));
    // No validation split is refused for a classifier.
    await page.getByTestId('validation-split').fill('0');
    expect(await page.getByTestId('validation-split-error').textContent()).toMatch(/needs a validation split/);
    await page.getByTestId('validation-split').fill('25');

    await page.getByTestId('setting-learningRate').fill('0.01');
    await page.getByTestId('setting-lengthUnit').selectOption('steps');
    await page.getByTestId('setting-steps').fill('8');
    await page.getByTestId('setting-batchSize').fill('6');
    await page.getByTestId('setting-maxLength').fill('24');
    await page.getByTestId('more-settings').locator('summary').click();
    await page.getByTestId('setting-evalEvery').fill('2');
    await page.getByTestId('setting-checkpointEvery').fill('2');
    // the encoder's frozen weights in f16 (the head stays f32): the resumed run must keep them so
    await page.getByTestId('setting-frozenWeights').selectOption('f16');
    await expect.poll(() => page.getByTestId('model-weight-bytes').textContent().catch(() => ''), { timeout: 60_000 }).toMatch(/frozen matrices in f16/);
    await page.getByTestId('adapter-name').fill('tickets');
    await expect.poll(() => page.getByTestId('start').isEnabled(), { timeout: 30_000 }).toBe(true);
    // the counts follow the 25% split once the worker has re-split the examples
    await expect.poll(() => page.getByTestId('examples-count').textContent(), { timeout: 30_000 }).toBe('48 train · 16 validation');
    await page.getByTestId('start').click();

    // Pause once a checkpoint past an evaluation exists, then "close the tab".
    await expect.poll(() => numberIn(page, 'checkpoint-line').catch(() => 0), { timeout: 120_000 }).toBeGreaterThanOrEqual(2);
    await page.getByTestId('pause').click();
    await expect.poll(() => page.getByTestId('train-phase').textContent(), { timeout: 60_000 }).toBe('Paused');
    const pausedAt = await numberIn(page, 'step-counter');
    expect(pausedAt).toBeLessThan(8);
    const evalsBefore = await page.getByTestId('eval-row').count();
    expect(evalsBefore).toBeGreaterThanOrEqual(1);
    await page.reload();

    const unfinished = page.getByTestId('unfinished-run');
    await expect.poll(() => unfinished.textContent().catch(() => ''), { timeout: 30_000 }).toContain(`step ${pausedAt} of 8`);
    await loadInputs();
    await expect.poll(() => unfinished.getByRole('button', { name: 'Resume' }).isEnabled(), { timeout: 30_000 }).toBe(true);
    await unfinished.getByRole('button', { name: 'Resume' }).click();
    // The evaluations from before the reload are back on screen, with their confusion matrices.
    await waitForEvalRows(page, evalsBefore);
    await waitForTrainDone(page);
    expect(Number(await page.getByTestId('loss-chart').getAttribute('data-points'))).toBe(8);
    // the page loaded the model in f32 after the reload; the resumed run put its weights back in f16
    expect(await page.getByTestId('model-weight-bytes').textContent()).toMatch(/frozen matrices in f16/);
    expect(await page.getByTestId('eval-row').evaluateAll((els) => els.map((e) => Number(e.getAttribute('data-step'))))).toEqual([2, 4, 6, 8]);
    expect(await page.getByTestId('confusion-row').evaluateAll((els) => els.map((e) => e.getAttribute('data-label')))).toEqual(['billing', 'shipping', 'technical']);
    await screenshot(page, '34-classification-resumed');
    const row = page.getByTestId('library-row').filter({ hasText: 'tickets' });
    await expect.poll(() => row.getByTestId('library-task').textContent().catch(() => ''), { timeout: 30_000 }).toBe('text classification · 3 labels');
    expect(await page.getByTestId('unfinished-runs').count()).toBe(0);

    const [download] = await Promise.all([page.waitForEvent('download'), page.getByTestId('download-latest').click()]);
    const zipPath = path.join(tmp, 'tickets.zip');
    await download.saveAs(zipPath);
    const files = unzipSync(new Uint8Array(fs.readFileSync(zipPath)));
    const state = JSON.parse(strFromU8(files['trainer_state.json']));
    const steps = state.log_history.filter((e: { loss?: number }) => e.loss !== undefined).map((e: { step: number }) => e.step);
    expect(steps).toEqual([1, 2, 3, 4, 5, 6, 7, 8]);
    expect(state.log_history.filter((e: { eval_accuracy?: number }) => e.eval_accuracy !== undefined).map((e: { step: number }) => e.step)).toEqual([2, 4, 6, 8]);
    const config = JSON.parse(strFromU8(files['adapter_config.json']));
    expect(config.task_type).toBe('SEQ_CLS');
    expect([...config.target_modules].sort()).toEqual(['query', 'value']);
    const st = parseSafetensors(files['adapter_model.safetensors'], 'adapter_model.safetensors');
    expect(st.tensors.get('base_model.model.classifier.weight')!.shape).toEqual([3, C]);
    expect(st.tensors.get('base_model.model.classifier.bias')!.shape).toEqual([3]);
    expect(st.tensors.has('base_model.model.bert.pooler.dense.weight')).toBe(false); // frozen: not in modules_to_save
    const readme = strFromU8(files['README.md']);
    expect(readme).toMatch(/id2label:\n {2}0: "billing"\n {2}1: "shipping"\n {2}2: "technical"/);
    expect(readme).toContain('"billing": 0');
    expect(consoleLines.filter((l) => l.startsWith('pageerror'))).toEqual([]);
  });
});

if (skipReason) describe('text classification in the app, in Chromium', () => it.skip(skipReason, () => undefined));
