// GPT-2 + LoRA against PyTorch + PEFT (values recorded by scripts/goldens/make_gpt2_goldens.py on
// the GPU machine, in float64): logits and loss within 1e-4, LoRA gradients and the LoRA weights
// after 5 AdamW steps (with gradient clipping) within 1e-3, relative (see helpers/lora-goldens.ts).
import fs from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { testGpu } from './helpers/gpu';
import { runLoraGoldenCase, type GoldenCase } from './helpers/lora-goldens';
import { nodeModelFiles } from '../src/io/model-files-node';
import { loadHfModel } from '../src/io/model-files';
import { parseSafetensors } from '../src/io/safetensors';
import { loadTokenizer } from '../src/data/tokenizer';

const FIX = path.join(__dirname, 'fixtures');

describe('GPT-2 + LoRA matches PyTorch + PEFT', async () => {
  const golden = JSON.parse(fs.readFileSync(path.join(FIX, 'goldens', 'gpt2-lora.json'), 'utf8')) as { tokenizer_checks: { text: string; ids: number[] }[]; cases: GoldenCase[] };
  const tensors = parseSafetensors(new Uint8Array(fs.readFileSync(path.join(FIX, 'goldens', 'gpt2-lora.safetensors'))), 'gpt2-lora.safetensors');
  const hf = await loadHfModel(nodeModelFiles(path.join(FIX, 'tiny-gpt2')));

  it('tokenizes like the Python tokenizer', () => {
    const tok = loadTokenizer(hf.tokenizerJson!, hf.tokenizerConfig);
    for (const c of golden.tokenizer_checks) expect(tok.encode(c.text, { addSpecialTokens: true }), JSON.stringify(c.text)).toEqual(c.ids);
  });

  for (const gc of golden.cases) {
    it(`case ${gc.name}: logits, loss, gradients, 5 AdamW steps, export`, async () => {
      await runLoraGoldenCase(await testGpu(), hf, gc, tensors);
    });
  }
});
