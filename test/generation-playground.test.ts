// The generation loop's contract as the playground and the CLI use it (tiny GPT-2): tokens stream
// to onToken in order; a stop id ends it ('eos', the id left out); shouldStop ends it ('stopped');
// the model's length ends it ('length'); sampling is reproducible from its seed, top-k 1 is greedy;
// and the playground's prompt in the tokenizer's chat template.
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { testGpu } from './helpers/gpu';
import { nodeModelFiles } from '../src/io/model-files-node';
import { loadHfModel } from '../src/io/model-files';
import { loadTokenizer } from '../src/data/tokenizer';
import { seededRandom } from '../src/data/batches';
import { loadCausalLM } from '../src/engine/models/registry';
import { Generator } from '../src/engine/infer/generator';
import { promptIds } from '../src/worker/playground';

const MODEL = path.join(__dirname, 'fixtures', 'tiny-gpt2');

describe('the generation loop', async () => {
  const gpu = await testGpu();
  const hf = await loadHfModel(nodeModelFiles(MODEL));
  const { model } = loadCausalLM(gpu, hf);
  const prompt = [268, 260, 338];

  it('streams, stops at a stop id, on request and at the length limit', { timeout: 300_000 }, async () => {
    const gen = new Generator(gpu, model, null, prompt.length + 12);
    const streamed: number[] = [];
    const greedy = await gen.run(prompt, { maxNewTokens: 12, onToken: (id) => void streamed.push(id) });
    expect(greedy.reason).toBe('max-tokens');
    expect(greedy.ids).toHaveLength(12);
    expect(streamed).toEqual(greedy.ids);
    // the third greedy token as a stop id: the two before it come back, and why it ended
    const stop = greedy.ids[2];
    const firstAt = greedy.ids.indexOf(stop);
    const eos = await gen.run(prompt, { maxNewTokens: 12, stopIds: [stop] });
    expect(eos).toEqual({ ids: greedy.ids.slice(0, firstAt), reason: 'eos' });
    let calls = 0;
    const stopped = await gen.run(prompt, { maxNewTokens: 12, shouldStop: () => ++calls > 4 });
    expect(stopped.reason).toBe('stopped');
    expect(stopped.ids).toEqual(greedy.ids.slice(0, 4));
    // past the room the generator was made with
    const long = await gen.run(prompt, { maxNewTokens: 50 });
    expect(long).toEqual({ ids: greedy.ids, reason: 'length' });
    gen.destroy();
  });

  it('samples reproducibly from a seed; top-k 1 is greedy', { timeout: 300_000 }, async () => {
    const gen = new Generator(gpu, model, null, prompt.length + 16);
    const sample = (seed: number, o: { topK?: number; topP?: number } = {}) => gen.generate(prompt, { maxNewTokens: 16, temperature: 1.5, random: seededRandom(seed), ...o });
    const a = await sample(3), b = await sample(3), c = await sample(4);
    expect(a).toEqual(b);
    expect(c).not.toEqual(a);
    expect(await sample(5, { topK: 1 })).toEqual(await gen.generate(prompt, { maxNewTokens: 16 }));
    gen.destroy();
  });
});

describe('the playground prompt', () => {
  it('is the typed text with the tokenizer\'s special tokens, or one user message in the chat template', async () => {
    const hf = await loadHfModel(nodeModelFiles(MODEL));
    const template = "{% for m in messages %}<|endoftext|>{{ m.role }}: {{ m.content }}\n{% endfor %}{% if add_generation_prompt %}assistant:{% endif %}";
    const tok = loadTokenizer(hf.tokenizerJson!, hf.tokenizerConfig, { chatTemplate: template, name: hf.name });
    expect(promptIds(tok, 'The sun', false)).toEqual(tok.encode('The sun', { addSpecialTokens: true }));
    const ids = promptIds(tok, 'The sun', true);
    expect(tok.decode(ids)).toBe('<|endoftext|>user: The sun\nassistant:');
    expect(ids[0]).toBe(tok.eosId); // the template's special token, once
    expect(ids.filter((id) => id === tok.eosId)).toHaveLength(1);
  });
});
