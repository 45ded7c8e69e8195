// The command-line trainer's classification path (npm run train's entry, in a child process) on
// a tiny random BERT written to a temporary folder: labels from a string column, class counts
// before training, evaluation with accuracy / macro-F1 / confusion matrix, the best checkpoint,
// the PEFT SEQ_CLS files, trainer_state.json and the model card; head-only; clear errors.
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { beforeAll, describe, expect, it } from 'vitest';
import { parseSafetensors } from '../src/io/safetensors';
import { writeEncoderFolder } from './helpers/bert-reference';

const run = promisify(execFile);
const root = path.resolve(__dirname, '..');

async function train(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  try {
    const r = await run(process.execPath, ['scripts/node-run.mjs', 'src/cli/train.ts', ...args], { cwd: root, timeout: 300_000 });
    return { code: 0, stdout: r.stdout, stderr: r.stderr };
  } catch (e) {
    const err = e as { code: number; stdout: string; stderr: string };
    return { code: err.code, stdout: err.stdout, stderr: err.stderr };
  }
}

const GOOD = ['great', 'lovely', 'fun', 'moving', 'warm', 'clever'];
const BAD = ['dull', 'awful', 'boring', 'flat', 'tired', 'messy'];
const NEUTRAL = ['long', 'french', 'quiet', 'new'];

describe('npm run train: text classification', () => {
  let dir = '';
  let model = '';
  beforeAll(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cls-cli-'));
    model = path.join(dir, 'tiny-bert');
    writeEncoderFolder(model, { arch: 'bert', C: 16, L: 2, H: 2, F: 32, V: 0, P: 32, eps: 1e-12, activation: 'gelu' }, ['the', 'film', 'is', 'a', 'and', ...GOOD, ...BAD, ...NEUTRAL], 5);
    const rows = ['review,sentiment'];
    let i = 0;
    for (const g of GOOD) for (const n of NEUTRAL) rows.push(`"the ${n} film is ${g}",${i++ % 7 === 0 ? ' positive ' : 'positive'}`);
    for (const b of BAD) for (const n of NEUTRAL.slice(0, 2)) rows.push(`the ${n} film is ${b},negative`);
    rows.push(',negative', '"a film",');
    fs.writeFileSync(path.join(dir, 'reviews.csv'), rows.join('\n') + '\n');
  });

  it('trains LoRA + head, reports labels, metrics and the best checkpoint, writes the PEFT SEQ_CLS files', async () => {
    const out = path.join(dir, 'adapter');
    const r = await train([
      '--model', model, '--data', path.join(dir, 'reviews.csv'), '--out', out, '--text-column', 'review', '--label-column', 'sentiment',
      '--steps', '6', '--eval-every', '2', '--batch-size', '4', '--lr', '5e-3', '--rank', '2', '--alpha', '4', '--dropout', '0',
      '--validation', '0.25', '--metric-for-best', 'accuracy', '--max-length', '16',
    ]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/labels: 2 classes \(string labels; ids: 0=negative, 1=positive\)/);
    expect(r.stdout).toMatch(/class counts: negative 12 \(33\.3%\), positive 24 \(66\.7%\)/);
    expect(r.stdout).toMatch(/2 skipped \(rows 38, 39\)/);
    expect(r.stdout).toMatch(/LoRA on query, value; head trained in full: classifier; no dropout in the base model/);
    expect(r.stdout).toMatch(/eval at step 2: loss \d\.\d+ \| accuracy \d\.\d+ \| macro-F1 \d\.\d+ \(9 examples\)/);
    expect(r.stdout).toMatch(/confusion matrix/);
    expect(r.stdout).toMatch(/best checkpoint: step \d/);

    const cfg = JSON.parse(fs.readFileSync(path.join(out, 'adapter_config.json'), 'utf8'));
    expect(cfg).toMatchObject({ peft_type: 'LORA', task_type: 'SEQ_CLS', r: 2, lora_alpha: 4, target_modules: ['query', 'value'], modules_to_save: ['classifier', 'score'] });
    const st = parseSafetensors(new Uint8Array(fs.readFileSync(path.join(out, 'adapter_model.safetensors'))));
    const names = [...st.tensors.keys()].sort();
    expect(names).toContain('base_model.model.bert.encoder.layer.1.attention.self.value.lora_B.weight');
    expect(st.tensors.get('base_model.model.classifier.weight')!.shape).toEqual([2, 16]);
    expect(st.tensors.get('base_model.model.classifier.bias')!.shape).toEqual([2]);
    expect(names.length).toBe(2 * 2 * 2 + 2);

    const state = JSON.parse(fs.readFileSync(path.join(out, 'trainer_state.json'), 'utf8'));
    const evals = state.log_history.filter((e: { eval_loss?: number }) => e.eval_loss !== undefined);
    expect(evals.map((e: { step: number }) => e.step)).toEqual([2, 4, 6]);
    for (const e of evals) {
      expect(Object.keys(e).sort()).toEqual(['epoch', 'eval_accuracy', 'eval_f1', 'eval_loss', 'step']);
      expect(e.eval_accuracy).toBeGreaterThanOrEqual(0);
      expect(e.eval_accuracy).toBeLessThanOrEqual(1);
    }
    const bestAcc = Math.max(...evals.map((e: { eval_accuracy: number }) => e.eval_accuracy));
    expect(state.best_metric).toBe(bestAcc);
    expect(state.metric_for_best_model).toBe('eval_accuracy');
    expect(evals.find((e: { step: number }) => e.step === state.best_global_step).eval_accuracy).toBe(bestAcc);

    const card = fs.readFileSync(path.join(out, 'README.md'), 'utf8');
    expect(card).toMatch(/id2label:\n  0: "negative"\n  1: "positive"/);
    expect(card).toMatch(/label2id:\n  "negative": 0\n  "positive": 1/);
    expect(card).toMatch(/AutoModelForSequenceClassification\.from_pretrained\(\n    "tiny-bert", num_labels=2/);
    expect(card).toMatch(/\| 1 \| positive \| \d+ \|/);
  });

  it('head-only: trains the classifier alone and saves it under transformers names', async () => {
    const out = path.join(dir, 'head');
    const r = await train([
      '--model', model, '--data', path.join(dir, 'reviews.csv'), '--out', out, '--text-column', 'review', '--label-column', 'sentiment',
      '--steps', '3', '--batch-size', '4', '--lr', '1e-2', '--head-only', '--labels', 'positive,negative', '--validation', '0',
    ]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/ids: 0=positive, 1=negative/);
    expect(r.stdout).toMatch(/head only \(frozen encoder\)/);
    expect(fs.existsSync(path.join(out, 'adapter_config.json'))).toBe(false);
    const st = parseSafetensors(new Uint8Array(fs.readFileSync(path.join(out, 'head_model.safetensors'))));
    expect([...st.tensors.keys()].sort()).toEqual(['classifier.bias', 'classifier.weight']);
  });

  it('fails with one clear line on bad classification input', async () => {
    const csv = path.join(dir, 'reviews.csv');
    const cases: [string[], RegExp][] = [
      [['--text-column', 'review', '--label-column', 'nope'], /label column "nope" does not exist/],
      [['--text-column', 'review'], /encoder \(bert\).*--label-column/],
      [['--text-column', 'review', '--label-column', 'sentiment', '--labels', 'positive'], /labels the given order does not name: negative/],
      [['--text-column', 'review', '--label-column', 'sentiment', '--targets', 'all-linear'], /all-linear is not available for classifiers/],
      [['--text-column', 'review', '--label-column', 'sentiment', '--head-only', '--rank', '4'], /--rank has no effect with --head-only/],
    ];
    for (const [args, msg] of cases) {
      const r = await train(['--model', model, '--data', csv, '--out', path.join(dir, 'x'), '--steps', '1', ...args]);
      expect(r.code, r.stdout).toBe(1);
      expect(r.stderr.trim().split('\n')).toHaveLength(1);
      expect(r.stderr).toMatch(msg);
    }
    const gpt2 = await train(['--model', path.join(root, 'test/fixtures/tiny-gpt2'), '--data', csv, '--out', path.join(dir, 'y'), '--text-column', 'review', '--label-column', 'sentiment', '--steps', '1']);
    expect(gpt2.code).toBe(1);
    expect(gpt2.stderr).toMatch(/needs a DistilBERT or BERT model; tiny-gpt2 is model_type "gpt2"/);
  });
});
