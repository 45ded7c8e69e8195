import { existsSync, readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { loadTokenizer, TokenizerError } from '../src/data/tokenizer';

const DIR = new URL('../../shared/models/stories260K-hf/', import.meta.url).pathname;
const haveShared = existsSync(DIR);
if (!haveShared) console.warn(`skipping stories260K tokenizer tests: ${DIR} not found (../shared is absent)`);
const readJson = (name: string) => JSON.parse(readFileSync(DIR + name, 'utf8')) as object;

// A word-level tokenizer written by hand, so some tests need no shared files.
const wordLevelJson = {
  version: '1.0',
  truncation: null,
  padding: null,
  added_tokens: [
    { id: 0, content: '[UNK]', single_word: false, lstrip: false, rstrip: false, normalized: false, special: true },
    { id: 1, content: '[PAD]', single_word: false, lstrip: false, rstrip: false, normalized: false, special: true },
    { id: 2, content: '<|endoftext|>', single_word: false, lstrip: false, rstrip: false, normalized: false, special: true },
  ],
  normalizer: null,
  pre_tokenizer: { type: 'Whitespace' },
  post_processor: null,
  decoder: null,
  model: { type: 'WordLevel', vocab: { '[UNK]': 0, '[PAD]': 1, '<|endoftext|>': 2, hello: 3, world: 4, again: 5 }, unk_token: '[UNK]' },
};

describe.skipIf(!haveShared)('stories260K tokenizer', () => {
  const tok = () => loadTokenizer(readJson('tokenizer.json'), readJson('tokenizer_config.json'));

  it('encodes with and without BOS and knows its special ids', () => {
    const t = tok();
    expect(t.encode('Once upon a time', { addSpecialTokens: true })).toEqual([1, 403, 407, 261, 378]);
    expect(t.encode('Once upon a time')).toEqual([1, 403, 407, 261, 378]);
    expect(t.encode('Once upon a time', { addSpecialTokens: false })).toEqual([403, 407, 261, 378]);
    expect(t.eosId).toBe(2);
    expect(t.bosId).toBe(1);
    expect(t.padId).toBe(2); // no pad token: falls back to eos
    expect(t.vocabSize).toBe(512);
    expect(t.chatTemplate).toBeUndefined();
  });

  it('decodes, skipping special tokens on request', () => {
    const t = tok();
    expect(t.decode([1, 403, 407, 261, 378, 2], { skipSpecialTokens: true })).toBe('Once upon a time');
    expect(t.decode([403, 407, 261, 378, 2])).toContain('</s>');
    expect(t.decode([])).toBe('');
  });

  it('throws TokenizerError for applyChatTemplate without a template, and uses one given separately', () => {
    expect(() => tok().applyChatTemplate([{ role: 'user', content: 'hi' }])).toThrow(TokenizerError);
    const template =
      "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}";
    const t = loadTokenizer(readJson('tokenizer.json'), readJson('tokenizer_config.json'), { chatTemplate: template });
    expect(t.chatTemplate).toBe(template);
    expect(t.applyChatTemplate([{ role: 'user', content: 'Tell a story' }], { addGenerationPrompt: true })).toBe('<user>Tell a story\n<assistant>');
    expect(t.applyChatTemplate([{ role: 'user', content: 'x' }])).toBe('<user>x\n');
  });

  it('prefers the chat template of tokenizer_config.json and reports template errors', () => {
    const config = { ...readJson('tokenizer_config.json'), chat_template: '{{ bos_token }}{{ messages[0].content }}' };
    const t = loadTokenizer(readJson('tokenizer.json'), config, { chatTemplate: 'ignored' });
    expect(t.applyChatTemplate([{ role: 'user', content: 'hey' }])).toBe('<s>hey');
    const broken = loadTokenizer(readJson('tokenizer.json'), { ...config, chat_template: '{{ raise_exception("no") }}' });
    expect(() => broken.applyChatTemplate([{ role: 'user', content: 'x' }])).toThrow(/chat template failed to render/);
  });
});

describe('loadTokenizer without shared files', () => {
  it('builds a word-level tokenizer; pad from config, eos found by name when the config has none', () => {
    const t = loadTokenizer(wordLevelJson, { pad_token: '[PAD]' });
    expect(t.encode('hello world again', { addSpecialTokens: false })).toEqual([3, 4, 5]);
    expect(t.encode('world hello')).toEqual([4, 3]);
    expect(t.eosId).toBe(2);
    expect(t.padId).toBe(1);
    expect(t.bosId).toBeNull();
    expect(t.vocabSize).toBe(6);
  });

  it('pads with eos when there is no pad token', () => {
    const t = loadTokenizer(wordLevelJson, { eos_token: '<|endoftext|>' });
    expect([t.eosId, t.padId]).toEqual([2, 2]);
  });

  it('rejects a file that is not a tokenizer.json', () => {
    expect(() => loadTokenizer({ hello: 1 }, {}, { name: 'my-model' })).toThrow(/my-model: tokenizer\.json has no "model" section/);
    const noEos = { ...wordLevelJson, added_tokens: [], model: { type: 'WordLevel', vocab: { a: 0, b: 1 }, unk_token: 'a' } };
    expect(() => loadTokenizer(noEos, {})).toThrow(TokenizerError);
  });
});
