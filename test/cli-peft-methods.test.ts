// The command-line trainer with --method ia3 | prompt | prefix on the tiny fixtures, run as a user
// runs it: the PEFT files it writes (names, shapes, config), and `npm run logits -- --adapter`
// loading them back (logits that differ from the base model's; scripts/goldens/peft_methods_selftest.sh
// checks such exports against PEFT itself), plus one-line flag errors.
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { beforeAll, describe, expect, it } from 'vitest';
import { parseSafetensors } from '../src/io/safetensors';

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

describe('npm run train --method ia3 | prompt | prefix', () => {
  let dir = '';
  beforeAll(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cli-peft-'));
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
    const out = path.join(dir, `logits-${path.basename(adapter ?? 'base')}.safetensors`);
    const r = await cli('src/cli/logits.ts', ['--model', path.join(root, 'test/fixtures', model), ...(adapter ? ['--adapter', adapter] : []), '--inputs', path.join(dir, 'inputs.json'), '--out', out]);
    expect(r.code, r.stderr).toBe(0);
    const st = parseSafetensors(new Uint8Array(fs.readFileSync(out)));
    expect(st.tensors.get('logits')!.shape).toEqual([2, 5, 360]);
    return st.getF32('logits');
  }

  // Seven CLI processes (the base logits, three trainings, three logits runs): 64-73 s alone here, past
  // the default 120 s in a full run on two cores (seen once), hence its own limit.
  it('trains each method and writes PEFT\'s files; the logits CLI loads them', { timeout: 300_000 }, async () => {
    const base = await logitsOf('tiny-gpt2', null);
    const cases: [string, string[], (cfg: Record<string, unknown>, st: ReturnType<typeof parseSafetensors>) => void][] = [
      ['ia3', ['--method', 'ia3'], (cfg, st) => {
        expect(cfg).toMatchObject({ peft_type: 'IA3', target_modules: ['c_attn', 'mlp.c_proj'], feedforward_modules: ['mlp.c_proj'], fan_in_fan_out: true });
        expect(st.tensors.get('base_model.model.transformer.h.1.attn.c_attn.ia3_l')!.shape).toEqual([96, 1]);
      }],
      ['prompt', ['--method', 'prompt', '--virtual-tokens', '3', '--prompt-init-text', 'The cafe'], (cfg, st) => {
        expect(cfg).toMatchObject({ peft_type: 'PROMPT_TUNING', num_virtual_tokens: 3, token_dim: 32, prompt_tuning_init: 'TEXT', prompt_tuning_init_text: 'The cafe' });
        expect(st.tensors.get('prompt_embeddings')!.shape).toEqual([3, 32]);
      }],
      ['prefix', ['--method', 'prefix', '--virtual-tokens', '2', '--prefix-projection', '--encoder-hidden-size', '8'], (cfg, st) => {
        expect(cfg).toMatchObject({ peft_type: 'PREFIX_TUNING', num_virtual_tokens: 2, token_dim: 32, num_layers: 2, num_attention_heads: 4, prefix_projection: true, encoder_hidden_size: 8 });
        expect([...st.tensors.keys()]).toEqual(['prompt_embeddings']);
        expect(st.tensors.get('prompt_embeddings')!.shape).toEqual([2, 2 * 2 * 32]);
      }],
    ];
    for (const [name, flags, check] of cases) {
      const out = path.join(dir, name);
      const r = await cli('src/cli/train.ts', [...common('tiny-gpt2', out), ...flags]);
      expect(r.code, r.stderr).toBe(0);
      expect(r.stdout).toMatch(/step 2\/2 \| loss \d+\.\d+/);
      const cfg = JSON.parse(fs.readFileSync(path.join(out, 'adapter_config.json'), 'utf8'));
      check(cfg, parseSafetensors(new Uint8Array(fs.readFileSync(path.join(out, 'adapter_model.safetensors')))));
      const card = fs.readFileSync(path.join(out, 'README.md'), 'utf8');
      expect(card.toLowerCase()).toContain(name === 'ia3' ? 'ia3' : `${name}-tuning`);
      const withAdapter = await logitsOf('tiny-gpt2', out);
      expect(withAdapter.some((v, i) => Math.abs(v - base[i]) > 1e-4), `${name}: the adapter changes the logits`).toBe(true);
    }
  });

  it('fails with one clear line on flags of another method', async () => {
    const r = await cli('src/cli/train.ts', [...common('tiny-gpt2', path.join(dir, 'x')), '--method', 'prefix', '--rank', '4']);
    expect(r.code).toBe(1);
    expect(r.stderr.trim()).toBe('error: --rank is an option of --method lora or dora, not prefix');
    const v = await cli('src/cli/train.ts', [...common('tiny-gpt2', path.join(dir, 'x')), '--method', 'prompt', '--virtual-tokens', '70']);
    expect(v.code).toBe(1);
    expect(v.stderr.trim()).toMatch(/^error: --virtual-tokens 70 leaves no room in the model's 64 positions$/);
  });
});
