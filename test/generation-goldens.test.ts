// Greedy generation with a LoRA adapter through the KV cache against transformers + PEFT
// (scripts/goldens/make_generation_goldens.py): the PEFT-saved adapter goes through our importer,
// the prompt through our tokenizer, and the tokens must equal PEFT's token for token, with the
// adapter on and with it off, stopping at EOS where PEFT stopped. Tiny GPT-2 and tiny Llama (a
// deterministic LoRA with nonzero B on every linear layer) always; stories260K with a LoRA PEFT
// trained on E2E when ../shared has the model (48 new tokens). And `npm run generate` with
// --adapter on the tiny GPT-2 golden.
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import fs from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { testGpu } from './helpers/gpu';
import { nodeModelFiles } from '../src/io/model-files-node';
import { loadHfModel } from '../src/io/model-files';
import { loadTokenizer } from '../src/data/tokenizer';
import { loadCausalLM } from '../src/engine/models/registry';
import { StepUniforms } from '../src/engine/kernels/step-uniforms';
import { importPeftAdapter } from '../src/engine/peft/import';
import { peftModelInfo } from '../src/engine/peft/factory';
import { Generator } from '../src/engine/infer/generator';

const GOLDENS = path.join(__dirname, 'fixtures', 'generation-goldens');
const STORIES = path.resolve(__dirname, '../../shared/models/stories260K-hf');

interface Side { generated_ids: number[]; stopped_at_eos: boolean; min_top1_top2_margin: number }
interface Case {
  model: string; model_dir: string; adapter: string; prompt: string; prompt_ids: number[]; max_new_tokens: number; eos_token_id: number;
  adapter_on: Side; adapter_off: Side;
}
const doc = JSON.parse(fs.readFileSync(path.join(GOLDENS, 'generation.json'), 'utf8')) as { cases: Case[] };

function modelDir(c: Case): string {
  return c.model === 'stories260K' ? STORIES : path.join(__dirname, 'fixtures', c.model);
}

for (const c of doc.cases) {
  const have = fs.existsSync(modelDir(c));
  if (!have) console.warn(`generation golden for ${c.model} skipped: ${modelDir(c)} is not there (../shared is absent)`);
  describe.skipIf(!have)(`greedy generation with a PEFT LoRA on ${c.model} equals transformers + PEFT`, () => {
    it(`${c.max_new_tokens} new tokens from ${JSON.stringify(c.prompt)}, adapter on and off`, { timeout: 900_000 }, async () => {
      const gpu = await testGpu();
      const hf = await loadHfModel(nodeModelFiles(modelDir(c)));
      const tok = loadTokenizer(hf.tokenizerJson!, hf.tokenizerConfig, { chatTemplate: hf.chatTemplate, name: hf.name });
      const prompt = tok.encode(c.prompt, { addSpecialTokens: true });
      expect(prompt).toEqual(c.prompt_ids);
      expect(tok.eosId).toBe(c.eos_token_id);
      const loaded = loadCausalLM(gpu, hf);
      const dir = path.join(GOLDENS, c.adapter);
      const files = { config: fs.readFileSync(path.join(dir, 'adapter_config.json'), 'utf8'), weights: new Uint8Array(fs.readFileSync(path.join(dir, 'adapter_model.safetensors'))), name: c.adapter };
      const adapter = importPeftAdapter(gpu, files, peftModelInfo(hf.config, loaded.model.linearModules()), new StepUniforms(gpu));
      for (const [side, peft] of [['adapter_on', adapter], ['adapter_off', null]] as const) {
        const want = c[side];
        const gen = new Generator(gpu, loaded.model, peft, prompt.length + c.max_new_tokens);
        const got = await gen.run(prompt, { maxNewTokens: c.max_new_tokens, stopIds: [tok.eosId] });
        gen.destroy();
        expect(got.ids, `${side} (PEFT's smallest top-1/top-2 margin ${want.min_top1_top2_margin})`).toEqual(want.generated_ids);
        expect(got.reason).toBe(want.stopped_at_eos ? 'eos' : 'max-tokens');
      }
      // the adapter changed what the model writes
      expect(c.adapter_on.generated_ids).not.toEqual(c.adapter_off.generated_ids);
      adapter.destroy?.();
      loaded.model.destroy();
    });
  });
}

it('the stories260K golden is there and is 40+ tokens', () => {
  const s = doc.cases.find((c) => c.model === 'stories260K');
  expect(s, 'generation.json has a stories260K case').toBeDefined();
  expect(s!.adapter_on.generated_ids.length).toBeGreaterThanOrEqual(40);
});

it('npm run generate --adapter prints the same tokens for the tiny GPT-2 golden', { timeout: 300_000 }, async () => {
  const c = doc.cases.find((x) => x.model === 'tiny-gpt2')!;
  const root = path.resolve(__dirname, '..');
  const { stdout, stderr } = await promisify(execFile)(process.execPath, [
    'scripts/node-run.mjs', 'src/cli/generate.ts', '--model', path.join(root, 'test/fixtures/tiny-gpt2'), '--adapter', path.join(GOLDENS, c.adapter),
    '--prompt', c.prompt, '--max-new-tokens', String(c.max_new_tokens), '--ids',
  ], { cwd: root, timeout: 300_000 });
  const line = stdout.split('\n').find((l) => l.startsWith('{'))!;
  const ids = JSON.parse(line) as { prompt_ids: number[]; generated_ids: number[] };
  expect(ids.prompt_ids).toEqual(c.prompt_ids);
  expect(ids.generated_ids).toEqual(c.adapter_on.generated_ids);
  expect(stderr).toMatch(/40 tokens in [\d.]+ s \([\d.]+ tokens\/s, prefill included\); ended: max-tokens/);
});
