import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { loadHfModel, ModelFileError, modelFilesFromFileList, modelFilesFromMap } from '../src/io/model-files';
import { nodeModelFiles } from '../src/io/model-files-node';
import { HfConfigError } from '../src/io/hf-config';
import { SafetensorsError, writeSafetensors } from '../src/io/safetensors';

const STORIES_DIR = new URL('../../shared/models/stories260K-hf', import.meta.url).pathname;
const haveShared = existsSync(STORIES_DIR);
if (!haveShared) console.warn(`skipping stories260K loading test: ${STORIES_DIR} not found (../shared is absent)`);

const enc = (s: string) => new TextEncoder().encode(s);
const json = (v: unknown) => enc(JSON.stringify(v));

const tinyConfig = { model_type: 'llama', hidden_size: 4, intermediate_size: 8, num_hidden_layers: 1, num_attention_heads: 2, vocab_size: 3 };
const embed = Float32Array.from({ length: 12 }, (_, i) => i / 4);
const norm = Float32Array.from([1, 2, 3, 4]);

async function rejection(p: Promise<unknown>): Promise<Error> {
  try {
    await p;
  } catch (e) {
    return e as Error;
  }
  throw new Error('expected a rejection');
}

describe('loadHfModel from an in-memory map', () => {
  it('loads config, a single safetensors file and the optional JSON files', async () => {
    const files = modelFilesFromMap(
      'tiny',
      new Map<string, Uint8Array | Blob>([
        ['config.json', json(tinyConfig)],
        [
          'model.safetensors',
          writeSafetensors([
            { name: 'model.norm.weight', dtype: 'F32', shape: [4], data: norm },
            { name: 'model.embed_tokens.weight', dtype: 'F32', shape: [3, 4], data: embed },
          ]),
        ],
        ['tokenizer_config.json', new Blob([JSON.stringify({ eos_token: '</s>' })])],
        ['generation_config.json', json({ eos_token_id: 2 })],
        ['chat_template.jinja', enc('{{ messages[0].content }}')],
      ]),
    );
    const m = await loadHfModel(files);
    expect(m.name).toBe('tiny');
    expect(m.config.family).toBe('llama');
    expect([...m.tensorNames].sort()).toEqual(['model.embed_tokens.weight', 'model.norm.weight']);
    expect(m.tensorInfo('model.embed_tokens.weight')).toEqual({ shape: [3, 4], dtype: 'F32' });
    expect(Array.from(m.getF32('model.embed_tokens.weight'))).toEqual(Array.from(embed));
    expect(m.hasTensor('lm_head.weight')).toBe(false);
    expect(m.tokenizerConfig).toEqual({ eos_token: '</s>' });
    expect(m.generationConfig).toEqual({ eos_token_id: 2 });
    expect(m.tokenizerJson).toBeUndefined();
    expect(m.chatTemplate).toBe('{{ messages[0].content }}');
    const err = await rejection(Promise.resolve().then(() => m.getF32('lm_head.weight')));
    expect(err).toBeInstanceOf(ModelFileError);
    expect(err.message).toMatch(/tiny: no tensor named "lm_head.weight"/);
  });

  it('loads sharded weights through the index, in index order', async () => {
    const index = { metadata: { total_size: 64 }, weight_map: { 'model.embed_tokens.weight': 'model-00001-of-00002.safetensors', 'model.norm.weight': 'model-00002-of-00002.safetensors' } };
    const files = modelFilesFromMap(
      'sharded',
      new Map([
        ['config.json', json(tinyConfig)],
        ['model.safetensors.index.json', json(index)],
        ['model-00001-of-00002.safetensors', writeSafetensors([{ name: 'model.embed_tokens.weight', dtype: 'F32', shape: [3, 4], data: embed }])],
        ['model-00002-of-00002.safetensors', writeSafetensors([{ name: 'model.norm.weight', dtype: 'F32', shape: [4], data: norm }])],
      ]),
    );
    const m = await loadHfModel(files);
    expect(m.tensorNames).toEqual(['model.embed_tokens.weight', 'model.norm.weight']);
    expect(Array.from(m.getF32('model.norm.weight'))).toEqual([1, 2, 3, 4]);
    expect(Array.from(m.getF32('model.embed_tokens.weight'))).toEqual(Array.from(embed));
  });

  it('names a shard that is missing, and an index entry its shard lacks', async () => {
    const index = { weight_map: { a: 's1.safetensors', b: 's2.safetensors' } };
    const missing = modelFilesFromMap(
      'm',
      new Map([
        ['config.json', json(tinyConfig)],
        ['model.safetensors.index.json', json(index)],
        ['s1.safetensors', writeSafetensors([{ name: 'a', dtype: 'F32', shape: [1], data: new Float32Array(1) }])],
      ]),
    );
    const e1 = await rejection(loadHfModel(missing));
    expect(e1).toBeInstanceOf(ModelFileError);
    expect(e1.message).toMatch(/m: model\.safetensors\.index\.json lists a shard that is not in the folder: s2\.safetensors/);

    const wrong = modelFilesFromMap(
      'm',
      new Map([
        ['config.json', json(tinyConfig)],
        ['model.safetensors.index.json', json(index)],
        ['s1.safetensors', writeSafetensors([{ name: 'a', dtype: 'F32', shape: [1], data: new Float32Array(1) }])],
        ['s2.safetensors', writeSafetensors([{ name: 'not-b', dtype: 'F32', shape: [1], data: new Float32Array(1) }])],
      ]),
    );
    const e2 = await rejection(loadHfModel(wrong));
    expect(e2.message).toMatch(/tensor "b" is in s2\.safetensors, but s2\.safetensors has no such tensor/);

    const noMap = modelFilesFromMap('m', new Map([['config.json', json(tinyConfig)], ['model.safetensors.index.json', json({})]]));
    expect((await rejection(loadHfModel(noMap))).message).toMatch(/no "weight_map"/);
  });

  it('explains a missing config.json, missing weights and PyTorch-only weights', async () => {
    const noConfig = modelFilesFromMap('folder', new Map([['model.safetensors', writeSafetensors([])]]));
    const e1 = await rejection(loadHfModel(noConfig));
    expect(e1).toBeInstanceOf(ModelFileError);
    expect(e1.message).toMatch(/folder: config\.json is missing/);
    expect(e1.message).toMatch(/Files found: model\.safetensors/);

    const noWeights = modelFilesFromMap('folder', new Map([['config.json', json(tinyConfig)]]));
    expect((await rejection(loadHfModel(noWeights))).message).toMatch(/no weights found: expected model\.safetensors or model\.safetensors\.index\.json/);

    const bin = modelFilesFromMap('folder', new Map([['config.json', json(tinyConfig)], ['pytorch_model.bin', new Uint8Array(4)]]));
    expect((await rejection(loadHfModel(bin))).message).toMatch(/pytorch_model\.bin: only safetensors weights are read/);
  });

  it('reports bad JSON, bad configs and corrupt weights with the file name', async () => {
    const badJson = modelFilesFromMap('m', new Map([['config.json', enc('{"model_type": ')]]));
    const e1 = await rejection(loadHfModel(badJson));
    expect(e1).toBeInstanceOf(ModelFileError);
    expect(e1.message).toMatch(/m\/config\.json: is not valid JSON/);

    const badConfig = modelFilesFromMap('m', new Map([['config.json', json({ model_type: 't5' })]]));
    const e2 = await rejection(loadHfModel(badConfig));
    expect(e2).toBeInstanceOf(HfConfigError);
    expect(e2.message).toMatch(/m\/config\.json: model_type "t5" is not supported/);

    const corrupt = modelFilesFromMap('m', new Map([['config.json', json(tinyConfig)], ['model.safetensors', new Uint8Array(3)]]));
    const e3 = await rejection(loadHfModel(corrupt));
    expect(e3).toBeInstanceOf(SafetensorsError);
    expect(e3.message).toMatch(/m\/model\.safetensors: file is 3 bytes/);

    const badTok = modelFilesFromMap('m', new Map([['config.json', json(tinyConfig)], ['model.safetensors', writeSafetensors([])], ['tokenizer.json', enc('[1]')]]));
    expect((await rejection(loadHfModel(badTok))).message).toMatch(/m\/tokenizer\.json: should hold a JSON object/);
  });
});

describe('modelFilesFromFileList (a dropped folder)', () => {
  it('strips the dropped folder name from webkitRelativePath', async () => {
    const file = (path: string, body: BlobPart) => {
      const f = new File([body], path.split('/').pop()!);
      Object.defineProperty(f, 'webkitRelativePath', { value: path });
      return f;
    };
    const files = modelFilesFromFileList([
      file('my-model/config.json', JSON.stringify(tinyConfig)),
      file('my-model/model.safetensors', writeSafetensors([{ name: 'model.norm.weight', dtype: 'F32', shape: [4], data: norm }])),
      file('my-model/extra/readme.txt', 'hi'),
    ]);
    expect(files.name).toBe('my-model');
    expect(files.list()).toEqual(['config.json', 'extra/readme.txt', 'model.safetensors']);
    const m = await loadHfModel(files);
    expect(Array.from(m.getF32('model.norm.weight'))).toEqual([1, 2, 3, 4]);
  });
});

describe('nodeModelFiles', () => {
  const tmp = mkdtempSync(join(tmpdir(), 'model-files-'));
  afterAll(() => rmSync(tmp, { recursive: true, force: true }));

  it('lists files in subfolders with forward slashes and reads them', async () => {
    mkdirSync(join(tmp, 'm', 'sub'), { recursive: true });
    writeFileSync(join(tmp, 'm', 'config.json'), JSON.stringify(tinyConfig));
    writeFileSync(join(tmp, 'm', 'sub', 'x.txt'), 'abc');
    const files = nodeModelFiles(join(tmp, 'm'));
    expect(files.name).toBe('m');
    expect(files.list()).toEqual(['config.json', 'sub/x.txt']);
    expect(files.has('./sub/x.txt')).toBe(true);
    expect(new TextDecoder().decode(await files.read('sub/x.txt'))).toBe('abc');
    expect((await rejection(files.read('nope.json'))).message).toMatch(/m: there is no file "nope\.json"/);
    expect((await rejection(loadHfModel(files))).message).toMatch(/no weights found/);
  });

  it('rejects a folder that does not exist', () => {
    expect(() => nodeModelFiles(join(tmp, 'absent'))).toThrow(ModelFileError);
  });

  it.skipIf(!haveShared)('loads the real stories260K folder', async () => {
    const m = await loadHfModel(nodeModelFiles(STORIES_DIR));
    expect(m.name).toBe('stories260K-hf');
    expect(m.config.model_type).toBe('llama');
    expect(m.tensorNames.length).toBe(48);
    expect(m.tensorInfo('model.embed_tokens.weight')).toEqual({ shape: [512, 64], dtype: 'F32' });
    expect(m.tensorInfo('model.layers.4.self_attn.k_proj.weight')).toEqual({ shape: [32, 64], dtype: 'F32' });
    expect(m.getF32('model.norm.weight').length).toBe(64);
    expect(m.tokenizerJson).toHaveProperty('model');
    expect(m.tokenizerConfig).toHaveProperty('eos_token', '</s>');
    expect(m.generationConfig).toHaveProperty('eos_token_id', 2);
  });
});
