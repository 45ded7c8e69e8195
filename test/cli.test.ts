// The command-line trainer, run as a user runs it (npm run train's entry, in a child process), on
// the tiny GPT-2 fixture (its frozen weights in f16): its output files, its progress lines, and
// one-line errors on bad input.
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { beforeAll, describe, expect, it } from 'vitest';
import { parseSafetensors } from '../src/io/safetensors';

const run = promisify(execFile);
const root = path.resolve(__dirname, '..');
const model = path.join(root, 'test/fixtures/tiny-gpt2');

async function train(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  try {
    const r = await run(process.execPath, ['scripts/node-run.mjs', 'src/cli/train.ts', ...args], { cwd: root, timeout: 300_000 });
    return { code: 0, stdout: r.stdout, stderr: r.stderr };
  } catch (e) {
    const err = e as { code: number; stdout: string; stderr: string };
    return { code: err.code, stdout: err.stdout, stderr: err.stderr };
  }
}

const NAMES = ['The Old Mill', 'The Red Lantern', 'Blue Door', 'Green Garden', 'The Harbour', 'Sun Cafe'];
const FOODS = ['noodles', 'fish', 'pasta', 'curry', 'soup', 'bread'];

describe('npm run train', () => {
  let dir = '';
  beforeAll(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cli-'));
    const rows = ['name,food,sentence'];
    NAMES.forEach((n, i) => FOODS.forEach((f, j) => {
      if ((i + j) % 2 === 0) rows.push(`"${n}",${f},"${n} serves ${f} in the city."`);
    }));
    fs.writeFileSync(path.join(dir, 'data.csv'), rows.join('\n') + '\n');
  });

  // CLI processes: 72 s in a full run on two cores
  it('trains LoRA on the tiny GPT-2 and writes the PEFT files, model card and trainer state', { timeout: 300_000 }, async () => {
    const out = path.join(dir, 'adapter');
    const r = await train([
      '--model', model, '--data', path.join(dir, 'data.csv'), '--out', out, '--method', 'lora',
      '--prompt-column', 'name', '--completion-column', 'sentence', '--template', '{name} ({food}):',
      '--rank', '4', '--alpha', '8', '--dropout', '0', '--targets', 'c_attn,mlp.c_fc', '--steps', '6', '--lr', '1e-2',
      '--batch-size', '4', '--max-length', '32', '--validation', '0.2', '--seed', '3', '--frozen', 'f16',
    ]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/^weights: [\d.]+ [KM]iB on the GPU \(frozen matrices in f16\)$/m);
    expect(r.stdout).toMatch(/columns: .*name.*sentence/);
    expect(r.stdout).toMatch(/trainable params: [\d,]+ \|\| all params: [\d,]+/);
    expect(r.stdout).toMatch(/step 6\/6 \| loss \d+\.\d+ \| lr/);
    const cfg = JSON.parse(fs.readFileSync(path.join(out, 'adapter_config.json'), 'utf8'));
    expect(cfg).toMatchObject({ peft_type: 'LORA', r: 4, lora_alpha: 8, target_modules: ['c_attn', 'mlp.c_fc'], fan_in_fan_out: true, task_type: 'CAUSAL_LM' });
    const st = parseSafetensors(new Uint8Array(fs.readFileSync(path.join(out, 'adapter_model.safetensors'))));
    const names = [...st.tensors.keys()].sort();
    expect(names).toContain('base_model.model.transformer.h.0.attn.c_attn.lora_A.weight');
    expect(names).toContain('base_model.model.transformer.h.1.mlp.c_fc.lora_B.weight');
    expect(names.length).toBe(2 * 2 * 2);
    expect(st.tensors.get('base_model.model.transformer.h.0.attn.c_attn.lora_A.weight')!.shape).toEqual([4, 32]);
    expect(st.tensors.get('base_model.model.transformer.h.0.attn.c_attn.lora_B.weight')!.shape).toEqual([96, 4]);
    expect(st.tensors.get('base_model.model.transformer.h.0.mlp.c_fc.lora_B.weight')!.shape).toEqual([128, 4]);
    const state = JSON.parse(fs.readFileSync(path.join(out, 'trainer_state.json'), 'utf8'));
    const steps = state.log_history.filter((e: { loss?: number }) => e.loss !== undefined);
    expect(steps.map((e: { step: number }) => e.step)).toEqual([1, 2, 3, 4, 5, 6]);
    for (const e of steps) expect(Object.keys(e).sort()).toEqual(['epoch', 'grad_norm', 'learning_rate', 'loss', 'step']);
    expect(state.log_history.some((e: { eval_loss?: number }) => Number.isFinite(e.eval_loss))).toBe(true);
    expect(state.global_step).toBe(6);
    const card = fs.readFileSync(path.join(out, 'README.md'), 'utf8');
    expect(card).toMatch(/base_model: tiny-gpt2/);
    expect(card).toMatch(/final training loss \| \d/);
  });

  it('fails with one clear line on bad input', async () => {
    const missingCol = await train(['--model', model, '--data', path.join(dir, 'data.csv'), '--out', path.join(dir, 'x'), '--text-column', 'nope', '--steps', '1']);
    expect(missingCol.code).toBe(1);
    expect(missingCol.stderr.trim().split('\n')).toHaveLength(1);
    expect(missingCol.stderr).toMatch(/nope/);
    expect(missingCol.stderr).toMatch(/name, food, sentence|name.*food.*sentence/);

    const noModel = await train(['--model', path.join(dir, 'nothing'), '--data', path.join(dir, 'data.csv'), '--out', path.join(dir, 'x')]);
    expect(noModel.code).toBe(1);
    expect(noModel.stderr.trim()).toMatch(/^error: .*nothing: no such folder$/);
    fs.mkdirSync(path.join(dir, 'empty'));
    const emptyModel = await train(['--model', path.join(dir, 'empty'), '--data', path.join(dir, 'data.csv'), '--out', path.join(dir, 'x')]);
    expect(emptyModel.code).toBe(1);
    expect(emptyModel.stderr).toMatch(/^error: .*config\.json/m);

    const badFlag = await train(['--model', model, '--data', path.join(dir, 'data.csv'), '--out', path.join(dir, 'x'), '--rank', 'eight']);
    expect(badFlag.code).toBe(1);
    expect(badFlag.stderr.trim()).toBe('error: --rank eight: not a number');
    const badFrozen = await train(['--model', model, '--data', path.join(dir, 'data.csv'), '--out', path.join(dir, 'x'), '--frozen', 'bf16']);
    expect(badFrozen.code).toBe(1);
    expect(badFrozen.stderr.trim()).toBe('error: --frozen bf16: use f32 or f16');
    const bothPrecisions = await train(['--model', model, '--data', path.join(dir, 'data.csv'), '--out', path.join(dir, 'x'), '--tensor-cores', '--tensor-cores-f32']);
    expect(bothPrecisions.code).toBe(1);
    expect(bothPrecisions.stderr.trim()).toBe('error: --tensor-cores and --tensor-cores-f32: choose one (f16 operands, or f32 accuracy)');
    // SwiftShader has no f16 subgroup matrices: asking for them is refused by name
    const noTensorCores = await train(['--model', model, '--data', path.join(dir, 'data.csv'), '--out', path.join(dir, 'x'), '--tensor-cores-f32']);
    expect(noTensorCores.code).toBe(1);
    expect(noTensorCores.stderr.trim()).toMatch(/^error: --tensor-cores-f32: this GPU offers no f16 subgroup matrices/);
  });
});
