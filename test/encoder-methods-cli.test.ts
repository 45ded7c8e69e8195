// The command-line trainer's classification path with DoRA, IA3, prompt tuning and bottleneck adapters on the tiny
// DistilBERT fixture, and prefix tuning (with and without the projection) on the tiny BERT fixture
// (npm run train's entry, in a child process): the method line, evaluation, the files each method
// writes (PEFT SEQ_CLS, or AdapterHub's adapter + static head), and that the written folder loads
// back onto the model (importSeqClsAdapter) with the trained values; prefix tuning on DistilBERT is
// refused with the reason (PEFT cannot run it there).
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { beforeAll, describe, expect, it } from 'vitest';
import { parseSafetensors } from '../src/io/safetensors';
import { nodeModelFiles } from '../src/io/model-files-node';
import { loadHfModel } from '../src/io/model-files';
import { loadSequenceClassifier } from '../src/engine/models/registry';
import { importSeqClsAdapter } from '../src/engine/models/sequence-classification';
import { StepUniforms } from '../src/engine/kernels/step-uniforms';
import { rng, testGpu } from './helpers/gpu';

const run = promisify(execFile);
const root = path.resolve(__dirname, '..');
const MODEL = path.join(root, 'test/fixtures/tiny-distilbert');
const BERT = path.join(root, 'test/fixtures/tiny-bert');

async function train(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  try {
    const r = await run(process.execPath, ['scripts/node-run.mjs', 'src/cli/train.ts', ...args], { cwd: root, timeout: 300_000 });
    return { code: 0, stdout: r.stdout, stderr: r.stderr };
  } catch (e) {
    const err = e as { code: number; stdout: string; stderr: string };
    return { code: err.code, stdout: err.stdout, stderr: err.stderr };
  }
}

const GOOD = ['a warm and funny film', 'a great cast and a sharp script', 'lovely music and a moving story', 'a smart thriller'];
const BAD = ['the plot makes no sense', 'a dull , tired movie', 'the jokes fall flat', 'an ugly , loud and empty film'];
const MID = ['a film about a family', 'the second half', 'the old house', 'the camera and the music'];

/** The folder's files as importSeqClsAdapter takes them; the trained tensors load back with their values. */
async function loadsBack(out: string, files: string[], modelDir = MODEL): Promise<void> {
  const gpu = await testGpu();
  const hf = await loadHfModel(nodeModelFiles(modelDir));
  const { model } = loadSequenceClassifier(gpu, hf, { numLabels: 3, random: rng(2) });
  const read = (f: string) => new Uint8Array(fs.readFileSync(path.join(out, f)));
  const weightsFile = files.includes('adapter.safetensors') ? 'adapter.safetensors' : 'adapter_model.safetensors';
  const adapter = importSeqClsAdapter(gpu, {
    name: path.basename(out), config: fs.readFileSync(path.join(out, 'adapter_config.json'), 'utf8'), weights: read(weightsFile),
    head: files.includes('model_head.safetensors') ? read('model_head.safetensors') : undefined,
  }, model, new StepUniforms(gpu));
  const stored = parseSafetensors(read(weightsFile));
  const method = adapter.method!.params[0];
  expect(Array.from(await gpu.read(method.value))).toEqual(Array.from(stored.getF32(method.name)));
  adapter.destroy();
  model.destroy();
}

describe('npm run train: text classification with DoRA, IA3, prompt tuning, prefix tuning and bottleneck adapters', () => {
  let dir = '';
  let csv = '';
  beforeAll(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'enc-methods-cli-'));
    csv = path.join(dir, 'reviews.csv');
    const rows = ['text,label'];
    for (let i = 0; i < 8; i++) {
      rows.push(`"${GOOD[i % 4]} ${i % 2 ? '.' : '!'}",positive`, `"${BAD[i % 4]} ${i % 2 ? '.' : '!'}",negative`, `"${MID[i % 4]} ${i % 2 ? '.' : '!'}",neutral`);
    }
    fs.writeFileSync(csv, rows.join('\n') + '\n');
  });

  const base = () => ['--model', MODEL, '--data', csv, '--text-column', 'text', '--label-column', 'label', '--steps', '4', '--eval-every', '2',
    '--batch-size', '4', '--lr', '1e-2', '--validation', '0.25', '--max-length', '24'];

  const cases: { name: string; args: string[]; line: RegExp; files: string[]; config: Record<string, unknown>; tensor: RegExp }[] = [
    {
      name: 'dora', args: ['--method', 'dora', '--rank', '2', '--alpha', '4', '--dropout', '0.1', '--targets', 'q_lin,v_lin,lin2'],
      line: /DoRA on q_lin, v_lin, lin2; head trained in full: pre_classifier, classifier/,
      files: ['adapter_config.json', 'adapter_model.safetensors'],
      config: { peft_type: 'LORA', use_dora: true, task_type: 'SEQ_CLS', modules_to_save: ['classifier', 'score'], r: 2 },
      tensor: /^base_model\.model\.distilbert\.transformer\.layer\.1\.ffn\.lin2\.lora_magnitude_vector$/,
    },
    {
      name: 'ia3', args: ['--method', 'ia3'],
      line: /IA3 on k_lin, v_lin, ffn\.lin2 \(input-scaled: ffn\.lin2\); head trained in full/,
      files: ['adapter_config.json', 'adapter_model.safetensors'],
      config: { peft_type: 'IA3', task_type: 'SEQ_CLS', target_modules: ['k_lin', 'v_lin', 'ffn.lin2'], feedforward_modules: ['ffn.lin2'], modules_to_save: ['classifier', 'score'] },
      tensor: /^base_model\.model\.distilbert\.transformer\.layer\.0\.ffn\.lin2\.ia3_l$/,
    },
    {
      name: 'prompt', args: ['--method', 'prompt', '--virtual-tokens', '3', '--prompt-init', 'text', '--prompt-init-text', 'a film review'],
      line: /prompt tuning \(3 virtual tokens before \[CLS\], init text; the head reads the first\); head trained in full/,
      files: ['adapter_config.json', 'adapter_model.safetensors'],
      config: { peft_type: 'PROMPT_TUNING', task_type: 'SEQ_CLS', num_virtual_tokens: 3, token_dim: 32, prompt_tuning_init: 'TEXT', prompt_tuning_init_text: 'a film review', modules_to_save: ['classifier', 'score'] },
      tensor: /^prompt_embeddings$/,
    },
    {
      name: 'adapter', args: ['--method', 'adapter', '--adapter-type', 'pfeiffer', '--reduction-factor', '4', '--adapter-name', 'reviews'],
      line: /Pfeiffer bottleneck adapters "reviews" \(reduction factor 4, relu; saved in AdapterHub's format\)/,
      files: ['adapter.safetensors', 'adapter_config.json', 'head_config.json', 'model_head.safetensors'],
      config: { model_type: 'distilbert', model_class: 'DistilBertForSequenceClassification', name: 'reviews', hidden_size: 32 },
      tensor: /^distilbert\.transformer\.layer\.1\.output_adapters\.adapters\.reviews\.adapter_up\.weight$/,
    },
  ];

  for (const c of cases) {
    it(`--method ${c.name}: trains with the head, evaluates, writes its files, which load back`, async () => {
      const out = path.join(dir, c.name);
      const r = await train([...base(), '--out', out, ...c.args]);
      expect(r.code, r.stderr).toBe(0);
      expect(r.stdout).toMatch(c.line);
      expect(r.stdout).toMatch(/eval at step 2: loss \d\.\d+ \| accuracy \d\.\d+ \| macro-F1 \d\.\d+/);
      expect(r.stdout).toMatch(/done in .*: final loss \d\.\d+, eval loss \d\.\d+/);
      const files = fs.readdirSync(out).filter((f) => !['README.md', 'trainer_state.json'].includes(f)).sort();
      expect(files).toEqual(c.files);
      expect(JSON.parse(fs.readFileSync(path.join(out, 'adapter_config.json'), 'utf8'))).toMatchObject(c.config);
      const weights = parseSafetensors(new Uint8Array(fs.readFileSync(path.join(out, files.includes('adapter.safetensors') ? 'adapter.safetensors' : 'adapter_model.safetensors'))));
      expect([...weights.tensors.keys()].some((n) => c.tensor.test(n)), [...weights.tensors.keys()].join('\n')).toBe(true);
      if (files.includes('model_head.safetensors')) {
        const head = parseSafetensors(new Uint8Array(fs.readFileSync(path.join(out, 'model_head.safetensors'))));
        expect([...head.tensors.keys()].sort()).toEqual(['classifier.bias', 'classifier.weight', 'pre_classifier.bias', 'pre_classifier.weight']);
        expect(head.tensors.get('classifier.weight')!.shape).toEqual([3, 32]);
      } else {
        // prompt learning's PeftModel names the head base_model.classifier.*, the tuners base_model.model.classifier.*
        const head = c.name === 'prompt' ? 'base_model.classifier.weight' : 'base_model.model.classifier.weight';
        expect(weights.tensors.get(head)!.shape).toEqual([3, 32]);
      }
      const readme = fs.readFileSync(path.join(out, 'README.md'), 'utf8');
      expect(readme).toMatch(/DistilBertForSequenceClassification/);
      // the card's loading code: AdapterHub's for bottleneck adapters, PEFT's for the others
      if (c.name === 'adapter') expect(readme).toMatch(/adapters\.init\(model\)[\s\S]*load_adapter\(/);
      else expect(readme).toMatch(/PeftModel\.from_pretrained/);
      await loadsBack(out, files);
    });
  }

  for (const projection of [false, true]) {
    it(`--method prefix${projection ? ' --prefix-projection' : ''} on BERT: trains with the head, evaluates, writes PEFT's files, which load back`, async () => {
      const out = path.join(dir, `prefix-${projection}`);
      const extra = projection ? ['--prefix-projection', '--encoder-hidden-size', '16'] : [];
      const args = base().map((x) => (x === MODEL ? BERT : x));
      const r = await train([...args, '--out', out, '--method', 'prefix', '--virtual-tokens', '3', ...extra]);
      expect(r.code, r.stderr).toBe(0);
      const line = projection
        ? /prefix tuning \(3 key\/value rows before every layer's keys; trained through the projection MLP, encoder hidden size 16\); head trained in full: classifier/
        : /prefix tuning \(3 key\/value rows before every layer's keys; no projection\); head trained in full: classifier/;
      expect(r.stdout).toMatch(line);
      expect(r.stdout).toMatch(/eval at step 2: loss \d\.\d+ \| accuracy \d\.\d+ \| macro-F1 \d\.\d+/);
      expect(r.stdout).toMatch(/done in .*: final loss \d\.\d+, eval loss \d\.\d+/);
      const files = fs.readdirSync(out).filter((f) => !['README.md', 'trainer_state.json'].includes(f)).sort();
      expect(files).toEqual(['adapter_config.json', 'adapter_model.safetensors']);
      expect(JSON.parse(fs.readFileSync(path.join(out, 'adapter_config.json'), 'utf8'))).toMatchObject({
        peft_type: 'PREFIX_TUNING', task_type: 'SEQ_CLS', num_virtual_tokens: 3, token_dim: 32, num_layers: 2, num_attention_heads: 4,
        num_transformer_submodules: 1, prefix_projection: projection, encoder_hidden_size: projection ? 16 : 32, modules_to_save: ['classifier', 'score'],
      });
      // PEFT saves the prefix itself (with the projection, the one its MLP makes) and the head under base_model.classifier.*
      const weights = parseSafetensors(new Uint8Array(fs.readFileSync(path.join(out, 'adapter_model.safetensors'))));
      expect([...weights.tensors.keys()].sort()).toEqual(['base_model.classifier.bias', 'base_model.classifier.weight', 'prompt_embeddings']);
      expect(weights.tensors.get('prompt_embeddings')!.shape).toEqual([3, 2 * 2 * 32]);
      expect(weights.tensors.get('base_model.classifier.weight')!.shape).toEqual([3, 32]);
      expect(fs.readFileSync(path.join(out, 'README.md'), 'utf8')).toMatch(/BertForSequenceClassification/);
      await loadsBack(out, files, BERT);
    });
  }

  it('refuses prefix tuning on DistilBERT, and --head-only with a method, in one line', async () => {
    const cases: [string[], RegExp][] = [
      [['--method', 'prefix'], /--method prefix: prefix tuning is not available for DistilBERT classifiers: PEFT cannot run it on DistilBertForSequenceClassification/],
      [['--method', 'ia3', '--head-only'], /--head-only trains no adapter: leave out --method ia3/],
    ];
    for (const [args, msg] of cases) {
      const r = await train([...base(), '--out', path.join(dir, 'x'), ...args]);
      expect(r.code, r.stdout).toBe(1);
      expect(r.stderr.trim().split('\n')).toHaveLength(1);
      expect(r.stderr).toMatch(msg);
    }
  });
});
