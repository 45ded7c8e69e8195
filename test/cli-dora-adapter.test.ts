// The command-line trainer with --method dora and --method adapter (bottleneck adapters) on the
// tiny fixtures, run as a user runs it: the files it writes (PEFT's for DoRA, AdapterHub's for the
// bottleneck adapters: names, shapes, config, model card), `npm run logits -- --adapter` loading
// them back (logits that differ from the base model's; scripts/goldens/dora_bottleneck_selftest.sh
// checks DoRA exports against PEFT itself), and one-line flag errors.
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { beforeAll, describe, expect, it } from 'vitest';
import { parseSafetensors } from '../src/io/safetensors';
import { methodFromArgs } from '../src/cli/peft-args';
import { peftModelInfo } from '../src/engine/peft/factory';
import { loadHfModel } from '../src/io/model-files';
import { nodeModelFiles } from '../src/io/model-files-node';

const run = promisify(execFile);
const root = path.resolve(__dirname, '..');

async function cli(entry: string, args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  try {
    const r = await run(process.execPath, ['scripts/node-run.mjs', entry, ...args], { cwd: root, timeout: 300_000 });
    return { code: 0, stdout: r.stdout, stderr: r.stderr };
  } catch (e) {
    const err = e as { code: number; stdout: string; stderr: string };
    return { code: err.code, stdout: err.stdout, stderr: err.stderr };
  }
}

describe('methodFromArgs: --method dora | adapter', () => {
  it('maps the flags to the method spec and refuses the other methods\' flags', async () => {
    const hf = await loadHfModel(nodeModelFiles(path.join(root, 'test/fixtures/tiny-gpt2')));
    const info = peftModelInfo(hf.config, []);
    expect(methodFromArgs({ method: 'dora', rank: '4', alpha: '8', dropout: '0', rslora: true }, info, ['c_attn'], 'm').spec)
      .toEqual({ method: 'dora', lora: { r: 4, alpha: 8, dropout: 0, targetModules: ['c_attn'], useRslora: true } });
    // the presets' defaults: Houlsby swish, Pfeiffer relu, reduction factor 16
    const h = methodFromArgs({ method: 'adapter' }, info, [], 'm');
    expect(h.spec).toEqual({ method: 'bottleneck', bottleneck: { type: 'houlsby', reductionFactor: 16, nonLinearity: 'swish', name: 'adapter' } });
    expect(h.settings.bottleneck).toBe(2); // 32 / 16
    expect(methodFromArgs({ method: 'adapter', 'adapter-type': 'pfeiffer', 'reduction-factor': '4' }, info, [], 'm').spec)
      .toEqual({ method: 'bottleneck', bottleneck: { type: 'pfeiffer', reductionFactor: 4, nonLinearity: 'relu', name: 'adapter' } });
    expect(() => methodFromArgs({ method: 'adapter', rank: '4' }, info, [], 'm')).toThrow(/--rank is an option of --method lora or dora, not adapter/);
    expect(() => methodFromArgs({ method: 'dora', 'adapter-type': 'houlsby' }, info, [], 'm')).toThrow(/--adapter-type is an option of --method adapter, not dora/);
    expect(() => methodFromArgs({ method: 'adapter', 'adapter-type': 'lora' }, info, [], 'm')).toThrow(/--adapter-type lora: use houlsby or pfeiffer/);
    expect(() => methodFromArgs({ method: 'adapter', 'non-linearity': 'sigmoid' }, info, [], 'm')).toThrow(/relu, swish, gelu, tanh/);
    expect(() => methodFromArgs({ method: 'adapter', 'reduction-factor': '0' }, info, [], 'm')).toThrow(/--reduction-factor/);
  });
});

describe('npm run train --method dora | adapter', () => {
  let dir = '';
  beforeAll(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cli-dora-'));
    const rows = ['name,sentence'];
    for (const n of ['The Old Mill', 'Blue Door', 'Sun Cafe', 'Green Garden', 'The Harbour', 'Red Lantern']) rows.push(`"${n}","${n} serves soup in the city."`);
    fs.writeFileSync(path.join(dir, 'data.csv'), rows.join('\n') + '\n');
    fs.writeFileSync(path.join(dir, 'inputs.json'), JSON.stringify({ input_ids: [[268, 265, 354, 271, 0], [51, 283, 270, 294, 290]], attention_mask: [[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]] }));
  });

  const common = (model: string, out: string): string[] => [
    '--model', path.join(root, 'test/fixtures', model), '--data', path.join(dir, 'data.csv'), '--out', out,
    '--text-column', 'sentence', '--steps', '2', '--lr', '1e-2', '--batch-size', '3', '--max-length', '16', '--validation', '0',
  ];

  async function logitsOf(model: string, adapter: string | null): Promise<Float32Array> {
    const out = path.join(dir, `logits-${model}-${path.basename(adapter ?? 'base')}.safetensors`);
    const r = await cli('src/cli/logits.ts', ['--model', path.join(root, 'test/fixtures', model), ...(adapter ? ['--adapter', adapter] : []), '--inputs', path.join(dir, 'inputs.json'), '--out', out]);
    expect(r.code, r.stderr).toBe(0);
    const st = parseSafetensors(new Uint8Array(fs.readFileSync(out)));
    expect(st.tensors.get('logits')!.shape).toEqual([2, 5, 360]);
    return st.getF32('logits');
  }

  it('trains DoRA and both bottleneck layouts on GPT-2 and Llama; the files load back', async () => {
    type Check = (cfg: Record<string, unknown>, st: ReturnType<typeof parseSafetensors>, files: string[], card: string) => void;
    const cases: [string, string, string[], Check][] = [
      ['tiny-gpt2', 'dora', ['--method', 'dora', '--rank', '4', '--alpha', '8', '--dropout', '0.1', '--targets', 'c_attn,mlp.c_proj'], (cfg, st, files, card) => {
        expect(files.sort()).toEqual(['README.md', 'adapter_config.json', 'adapter_model.safetensors', 'trainer_state.json']);
        expect(cfg).toMatchObject({ peft_type: 'LORA', use_dora: true, fan_in_fan_out: true, r: 4, lora_alpha: 8, target_modules: ['c_attn', 'mlp.c_proj'] });
        expect(st.tensors.get('base_model.model.transformer.h.1.attn.c_attn.lora_magnitude_vector')!.shape).toEqual([96]);
        expect(st.tensors.get('base_model.model.transformer.h.0.mlp.c_proj.lora_magnitude_vector')!.shape).toEqual([32]);
        expect(st.tensors.size).toBe(3 * 2 * 2);
        expect(card).toContain('PeftModel.from_pretrained');
        expect(card).toContain('# DoRA adapter');
      }],
      ['tiny-llama', 'houlsby', ['--method', 'adapter', '--reduction-factor', '8', '--adapter-name', 'sentences'], (cfg, st, files, card) => {
        expect(files.sort()).toEqual(['README.md', 'adapter.safetensors', 'adapter_config.json', 'trainer_state.json']);
        expect(cfg).toMatchObject({ model_type: 'llama', model_class: 'LlamaForCausalLM', hidden_size: 32, name: 'sentences' });
        expect(cfg.config).toMatchObject({ mh_adapter: true, output_adapter: true, reduction_factor: 8, non_linearity: 'swish', original_ln_before: false });
        expect(st.tensors.get('model.layers.1.attention_adapters.adapters.sentences.adapter_down.0.weight')!.shape).toEqual([4, 32]);
        expect(st.tensors.size).toBe(4 * 2 * 2);
        expect(card).toContain('adapters.init(model)');
        expect(card).not.toContain('PeftModel');
      }],
      ['tiny-gpt2', 'pfeiffer', ['--method', 'adapter', '--adapter-type', 'pfeiffer', '--reduction-factor', '4', '--non-linearity', 'gelu'], (cfg, st) => {
        expect(cfg).toMatchObject({ model_type: 'gpt2', model_class: 'GPT2LMHeadModel', hidden_size: 32, name: 'adapter' });
        expect(cfg.config).toMatchObject({ mh_adapter: false, output_adapter: true, reduction_factor: 4, non_linearity: 'gelu', original_ln_before: true });
        expect(st.tensors.get('transformer.h.0.output_adapters.adapters.adapter.adapter_up.weight')!.shape).toEqual([32, 8]);
        expect(st.tensors.size).toBe(4 * 2);
      }],
    ];
    const bases = new Map<string, Float32Array>();
    for (const [model, name, flags, check] of cases) {
      if (!bases.has(model)) bases.set(model, await logitsOf(model, null));
      const base = bases.get(model)!;
      const out = path.join(dir, `${model}-${name}`);
      const r = await cli('src/cli/train.ts', [...common(model, out), ...flags]);
      expect(r.code, r.stderr).toBe(0);
      expect(r.stdout).toMatch(/step 2\/2 \| loss \d+\.\d+/);
      const files = fs.readdirSync(out);
      const weights = files.includes('adapter.safetensors') ? 'adapter.safetensors' : 'adapter_model.safetensors';
      const cfg = JSON.parse(fs.readFileSync(path.join(out, 'adapter_config.json'), 'utf8'));
      check(cfg, parseSafetensors(new Uint8Array(fs.readFileSync(path.join(out, weights)))), files, fs.readFileSync(path.join(out, 'README.md'), 'utf8'));
      const withAdapter = await logitsOf(model, out);
      expect(withAdapter.some((v, i) => Math.abs(v - base[i]) > 1e-4), `${model} ${name}: the adapter changes the logits`).toBe(true);
    }
  }, 400_000);

  it('fails with one clear line on flags of another method', async () => {
    const r = await cli('src/cli/train.ts', [...common('tiny-gpt2', path.join(dir, 'x')), '--method', 'adapter', '--dropout', '0.1']);
    expect(r.code).toBe(1);
    expect(r.stderr.trim()).toBe('error: --dropout is an option of --method lora or dora, not adapter');
  });
});
