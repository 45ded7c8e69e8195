// The exported Python project (src/engine/export/python-project.ts): its files and settings, and
// that train.py builds the same examples as the app (src/data/examples.ts) from the same rows. The
// Python side runs here with stand-ins for torch / transformers / peft (only the example building is
// exercised) and the same character tokenizer on both sides. Training it for real with PEFT on the
// GPU machine: scripts/gpu/python-project-check.sh.
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { pythonProject, PythonProjectError, type ProjectMapping, type PythonProjectSpec } from '../src/engine/export/python-project';
import { buildCausalExamples } from '../src/data/examples';
import { parseTableText } from '../src/data/table';
import type { TextTokenizer } from '../src/data/tokenizer';

const python = spawnSync('python3', ['--version']).status === 0 ? 'python3' : null;

/** Characters as token ids, BOS 2 first when special tokens are added, EOS 1. */
const charTokenizer: TextTokenizer = {
  encode: (text, o) => [...(o?.addSpecialTokens ?? true ? [2] : []), ...Array.from(text, (c) => 3 + (c.codePointAt(0)! % 200))],
  decode: () => '',
  eosId: 1,
  bosId: 2,
  padId: 0,
  vocabSize: 203,
  applyChatTemplate: () => {
    throw new Error('no template');
  },
};

const PY_TOKENIZER = `
class CharTok:
    eos_token_id = 1
    sep_token_id = None
    chat_template = None
    def __call__(self, text, add_special_tokens=True):
        return {"input_ids": ([2] if add_special_tokens else []) + [3 + (ord(c) % 200) for c in text]}
`;

const CSV = [
  'question,answer,notes',
  '"What is {two}?",2,a',
  '"Say ""hi"", please",hi there,b',
  ',empty prompt,c',
  'long one,' + 'x'.repeat(40) + ',d',
  'no answer,,e',
  'ünïcødé,ok,f',
].join('\n');

const spec = (mapping: ProjectMapping, over: Partial<PythonProjectSpec> = {}): PythonProjectSpec => ({
  name: 'my run',
  baseModel: 'HuggingFaceTB/SmolLM2-135M',
  adapter: { config: JSON.stringify({ peft_type: 'LORA', task_type: 'CAUSAL_LM', r: 8, lora_alpha: 16, target_modules: ['q_proj'] }), weights: new Uint8Array([1, 2, 3]) },
  data: { fileName: 'qa.csv', bytes: new TextEncoder().encode(CSV) },
  mapping,
  hyper: { learningRate: 2e-4, steps: 120, batchSize: 8, gradAccum: 2, maxLength: 24, warmupSteps: 4, schedule: 'cosine', weightDecay: 0.01, maxGradNorm: 1, validationFraction: 0.1, evalEvery: 0, seed: 42 },
  ...over,
});

describe('the Python project', () => {
  it('holds the script, the settings, the adapter to continue from and the data', () => {
    const files = pythonProject(spec({ kind: 'prompt-completion', prompt: 'question', completion: 'answer', template: 'Q: {question}\n' }));
    expect([...files.keys()].sort()).toEqual(['README.md', 'adapter/adapter_config.json', 'adapter/adapter_model.safetensors', 'data/qa.csv', 'requirements.txt', 'run_config.json', 'train.py']);
    const cfg = JSON.parse(files.get('run_config.json') as string);
    expect(cfg).toMatchObject({
      base_model: 'HuggingFaceTB/SmolLM2-135M', data_file: 'data/qa.csv', continue_from: 'adapter',
      training: { learning_rate: 2e-4, max_steps: 120, per_device_train_batch_size: 8, gradient_accumulation_steps: 2, max_length: 24, warmup_steps: 4, lr_scheduler_type: 'cosine', weight_decay: 0.01, seed: 42 },
    });
    expect(files.get('requirements.txt')).toMatch(/peft/);
    expect(files.get('README.md')).toMatch(/accelerate launch train\.py/);
    // without the data the README says where to put it
    const noData = pythonProject(spec({ kind: 'text', text: 'question' }, { data: { fileName: 'qa.csv' } }));
    expect(noData.has('data/qa.csv')).toBe(false);
    expect(noData.get('README.md')).toMatch(/copy `qa.csv` to `data\/qa.csv`/);
    expect(JSON.parse(pythonProject(spec({ kind: 'text', text: 'q' }, { hyper: { ...spec({ kind: 'text', text: 'q' }).hyper, schedule: 'constant' } })).get('run_config.json') as string).training.lr_scheduler_type).toBe('constant_with_warmup');
  });

  it('refuses what PEFT cannot continue', () => {
    expect(() => pythonProject(spec({ kind: 'text', text: 'q' }, { adapter: { config: '{"adapter_config": {}}', weights: new Uint8Array() } }))).toThrow(/AdapterHub bottleneck adapter/);
    expect(() => pythonProject(spec({ kind: 'text', text: 'q' }, { adapter: { config: '{"peft_type": "LORA", "task_type": "SEQ_CLS"}', weights: new Uint8Array() } }))).toThrow(PythonProjectError);
    expect(() => pythonProject(spec({ kind: 'text', text: 'q' }, { adapter: { config: 'nope', weights: new Uint8Array() } }))).toThrow(/not valid JSON/);
  });

  it.skipIf(!python)('train.py builds the examples the app builds from the same rows', () => {
    const mappings: ProjectMapping[] = [
      { kind: 'prompt-completion', prompt: 'question', completion: 'answer', template: 'Q: {question} {{literal}}\n' },
      { kind: 'text', text: 'question' },
      { kind: 'instruction', instruction: 'question', input: 'notes', output: 'answer' },
      { kind: 'instruction', instruction: 'question', output: 'answer' },
    ];
    const table = parseTableText(CSV, 'qa.csv');
    for (const mapping of mappings) {
      const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'pyproj-'));
      for (const [p, content] of pythonProject(spec(mapping))) {
        fs.mkdirSync(path.dirname(path.join(dir, p)), { recursive: true });
        fs.writeFileSync(path.join(dir, p), content);
      }
      // stand-ins for the GPU libraries: train.py imports them at the top
      const stubs = path.join(dir, 'stubs');
      for (const mod of ['torch/__init__', 'torch/utils/__init__', 'torch/utils/data', 'peft/__init__', 'transformers/__init__', 'safetensors/__init__', 'safetensors/torch']) {
        fs.mkdirSync(path.dirname(path.join(stubs, `${mod}.py`)), { recursive: true });
        fs.writeFileSync(path.join(stubs, `${mod}.py`), mod === 'torch/utils/data' ? 'class Dataset: pass\n' : mod === 'torch/__init__' ? 'from . import utils\n' : mod === 'torch/utils/__init__' ? 'from . import data\n' : '');
      }
      fs.appendFileSync(path.join(stubs, 'peft/__init__.py'), 'get_peft_config = get_peft_model = set_peft_model_state_dict = None\n');
      fs.appendFileSync(path.join(stubs, 'transformers/__init__.py'), 'AutoModelForCausalLM = AutoTokenizer = Trainer = TrainingArguments = None\n');
      fs.appendFileSync(path.join(stubs, 'safetensors/torch.py'), 'load_file = None\n');
      const script = `
import json, sys
sys.path.insert(0, ${JSON.stringify(stubs)})
sys.path.insert(0, ${JSON.stringify(dir)})
import train
${PY_TOKENIZER}
cfg = json.load(open(${JSON.stringify(path.join(dir, 'run_config.json'))}))
rows = train.read_rows(${JSON.stringify(path.join(dir, 'data', 'qa.csv'))})
examples, skipped = train.build_examples(rows, CharTok(), cfg["mapping"], cfg["training"]["max_length"])
print(json.dumps({"examples": examples, "skipped": skipped}))
`;
      const r = spawnSync(python!, ['-c', script], { encoding: 'utf8' });
      expect(r.status, r.stderr).toBe(0);
      const got = JSON.parse(r.stdout) as { examples: [number[], number[]][]; skipped: number };
      const want = buildCausalExamples(table, mapping as never, charTokenizer, { maxLength: 24 });
      expect(got.examples.map(([ids, labels]) => ({ ids, labels })), JSON.stringify(mapping)).toEqual(want.examples.map((e) => ({ ids: e.inputIds, labels: e.labels })));
      expect(got.skipped, JSON.stringify(mapping)).toBe(want.stats.skipped.count);
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});
