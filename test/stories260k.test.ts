// The real pretrained stories260K (../shared, skipped when absent): the forward pass, greedy
// generation token for token against transformers, and the first steps of PEFT's LoRA fine-tuning
// on E2E replayed exactly (same batches, same initial values). The whole 40-step run is
// `npm run verify:stories` (on a GPU; the closing notes give its output).
import fs from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { testGpu } from './helpers/gpu';
import { nodeModelFiles } from '../src/io/model-files-node';
import { loadHfModel } from '../src/io/model-files';
import { parseSafetensors } from '../src/io/safetensors';
import { loadTokenizer } from '../src/data/tokenizer';
import { loadCausalLM } from '../src/engine/models/registry';
import { Generator } from '../src/engine/infer/generator';
import { replayStoriesLora, type StoriesGolden } from '../src/verify/stories-replay';

const SHARED = path.resolve(__dirname, '../../shared');
const MODEL = path.join(SHARED, 'models', 'stories260K-hf');
const DATA = path.join(SHARED, 'data', 'e2e_dev.csv');
const have = fs.existsSync(MODEL) && fs.existsSync(DATA);
if (!have) console.warn(`stories260K tests skipped: ${MODEL} or ${DATA} is not there (../shared is absent)`);

describe.skipIf(!have)('stories260K (real pretrained Llama)', async () => {
  const FIX = path.join(__dirname, 'fixtures', 'goldens');
  const golden = JSON.parse(fs.readFileSync(path.join(FIX, 'stories260k.json'), 'utf8')) as StoriesGolden & {
    generation: { prompt: string; prompt_ids: number[]; generated_ids: number[]; text: string; max_new_tokens: number };
    last_prompt_logits: { top10_ids: number[]; top10_logits_float64: number[] };
  };
  const hf = have ? await loadHfModel(nodeModelFiles(MODEL)) : null!;

  it('greedy generation from "Once upon a time" equals transformers token for token', { timeout: 900_000 }, async () => {
    const gpu = await testGpu();
    const tok = loadTokenizer(hf.tokenizerJson!, hf.tokenizerConfig);
    const g = golden.generation;
    const prompt = tok.encode(g.prompt, { addSpecialTokens: true });
    expect(prompt).toEqual(g.prompt_ids);
    const { model } = loadCausalLM(gpu, hf);
    const gen = new Generator(gpu, model, null, prompt.length + g.max_new_tokens);
    // the last prompt position's top logits first (a cheap forward check)
    const logits = await gen.nextLogits(prompt);
    const top = Array.from(logits.keys()).sort((x, y) => logits[y] - logits[x]).slice(0, 10);
    expect(top).toEqual(golden.last_prompt_logits.top10_ids);
    top.forEach((id, k) => expect(Math.abs(logits[id] - golden.last_prompt_logits.top10_logits_float64[k])).toBeLessThan(1e-4 * 18));
    const out = await gen.generate(prompt, { maxNewTokens: g.max_new_tokens, stopIds: [tok.eosId] });
    expect(out).toEqual(g.generated_ids);
    expect(tok.decode([...prompt, ...out], { skipSpecialTokens: true })).toBe(g.text);
    gen.destroy();
  });

  it('LoRA fine-tuning on E2E: the first steps equal PEFT\'s losses on the same batches', { timeout: 900_000 }, async () => {
    const gpu = await testGpu();
    const init = parseSafetensors(new Uint8Array(fs.readFileSync(path.join(FIX, 'stories260k-lora.safetensors'))));
    const { steps } = await replayStoriesLora(gpu, hf, fs.readFileSync(DATA, 'utf8'), golden, init, { steps: 2 });
    for (const s of steps) expect(Math.abs(s.ours - s.peft) / s.peft, `step ${s.step}: ours ${s.ours}, PEFT ${s.peft}`).toBeLessThan(1e-4);
    // the loss moves the way PEFT's does (4.59 -> 4.36)
    expect(steps[1].ours).toBeLessThan(steps[0].ours);
  });
});
