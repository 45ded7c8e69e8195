// SST-2 (../shared/data/sst2_dev.csv: text,label) through the command-line trainer on the tiny
// DistilBERT fixture: integer labels, class counts before training, a few LoRA steps, evaluation on
// the validation split with accuracy / macro-F1 / confusion matrix in the output and in
// trainer_state.json. Skipped where ../shared is absent.
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';

const run = promisify(execFile);
const root = path.resolve(__dirname, '..');
const SST2 = path.resolve(root, '../shared/data/sst2_dev.csv');

describe.skipIf(!fs.existsSync(SST2))('SST-2 through npm run train (tiny DistilBERT)', () => {
  it('trains a few steps and reports accuracy, macro-F1 and the confusion matrix', async () => {
    const out = fs.mkdtempSync(path.join(os.tmpdir(), 'sst2-'));
    const r = await run(process.execPath, [
      'scripts/node-run.mjs', 'src/cli/train.ts', '--model', 'test/fixtures/tiny-distilbert', '--data', SST2, '--out', out,
      '--text-column', 'text', '--label-column', 'label', '--steps', '4', '--eval-every', '2', '--batch-size', '8', '--max-length', '32',
      '--lr', '5e-3', '--rank', '4', '--alpha', '8', '--validation', '0.05', '--metric-for-best', 'accuracy',
    ], { cwd: root, timeout: 600_000 });
    const stdout = r.stdout;
    expect(stdout).toMatch(/data: sst2_dev\.csv: 872 rows, columns text, label/);
    expect(stdout).toMatch(/labels: 2 classes \(integer labels; ids: 0=0, 1=1\)/);
    expect(stdout).toMatch(/class counts: 0 428 \(49\.1%\), 1 444 \(50\.9%\)/);
    expect(stdout).toMatch(/examples: 828 train .*, 44 validation/);
    const evals = [...stdout.matchAll(/eval at step (\d+): loss (\d+\.\d+) \| accuracy (\d\.\d+) \| macro-F1 (\d\.\d+) \(44 examples\)/g)];
    expect(evals.map((m) => Number(m[1]))).toEqual([2, 4]);
    const acc = Number(evals[1][3]);
    // the confusion matrix printed covers the 44 validation examples and agrees with the accuracy
    const rows = stdout.split('\n').filter((l) => /^ {2}[01] +\d+ +\d+$/.test(l)).map((l) => l.trim().split(/\s+/).slice(1).map(Number));
    expect(rows).toHaveLength(2);
    expect(rows.flat().reduce((a, b) => a + b, 0)).toBe(44);
    expect((rows[0][0] + rows[1][1]) / 44).toBeCloseTo(acc, 4);
    const state = JSON.parse(fs.readFileSync(path.join(out, 'trainer_state.json'), 'utf8'));
    const logged = state.log_history.filter((e: { eval_accuracy?: number }) => e.eval_accuracy !== undefined);
    expect(logged.map((e: { step: number }) => e.step)).toEqual([2, 4]);
    expect(logged[1].eval_accuracy).toBeCloseTo(acc, 4);
    for (const e of logged) expect(e.eval_f1).toBeGreaterThan(0);
    expect(state.best_metric).toBe(Math.max(...logged.map((e: { eval_accuracy: number }) => e.eval_accuracy)));
    console.log(`SST-2 (tiny random DistilBERT, 4 steps): ${evals.map((m) => `step ${m[1]} accuracy ${m[3]} macro-F1 ${m[4]}`).join('; ')}`);
  }, 600_000);
});
