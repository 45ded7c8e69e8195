// The app's text-classification helpers: which columns are the text and the label, the label set
// and class balance shown before training (and the refusal of a column that is not labels), the
// worker's chunked tokenizing (same examples as one pass), and a classification run's checkpoint:
// resumed into a fresh session it continues with the same weights, moments and kept best
// evaluation, and finishing puts the best evaluation's weights back before the SEQ_CLS export.
// Every method the app trains classifiers with (DoRA, IA3, prompt tuning, Houlsby and Pfeiffer
// bottleneck adapters) resumes the same way and finishes with its own files, which load back.

import fs from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { rng, testGpu } from './helpers/gpu';
import { parseTableText, type Table } from '../src/data/table';
import { loadTokenizer } from '../src/data/tokenizer';
import { buildClassificationExamples } from '../src/data/classification';
import { buildLabelMap } from '../src/data/labels';
import { PROGRESS_ROWS } from '../src/data/examples';
import { buildClassificationExamplesAsync, guessClassificationColumns, summarizeLabels } from '../src/data/classification-columns';
import { nodeModelFiles } from '../src/io/model-files-node';
import { loadHfModel } from '../src/io/model-files';
import { loadSequenceClassifier } from '../src/engine/models/registry';
import { Lora } from '../src/engine/peft/lora';
import { StepUniforms } from '../src/engine/kernels/step-uniforms';
import { createSeqClsAdapter, importSeqClsAdapter, SequenceClassificationAdapter } from '../src/engine/models/sequence-classification';
import { ClassifierTrainer, type ClassifierTrainConfig } from '../src/engine/train/classifier-trainer';
import { DEFAULT_TRAIN_CONFIG } from '../src/engine/train/trainer';
import { parseSafetensors } from '../src/io/safetensors';
import { splitTrainValidation } from '../src/data/batches';
import { ClassifierSession } from '../src/worker/sessions';
import { METHOD_BY_ID, modelDefaults } from '../src/worker/methods';
import { classifierPeftFacts } from '../src/worker/model-facts';
import { DEFAULT_SETTINGS, type TrainSettings } from '../src/worker/settings';

const FIX = path.join(__dirname, 'fixtures');
const table = (csv: string, name = 't.csv'): Table => parseTableText(csv, name);

describe('text and label columns', () => {
  it('guesses by name, else by content (few short values: the label; long cells: the text)', () => {
    expect(guessClassificationColumns(table('sentence,label\na b c,1\nd e f,0\n'))).toEqual({ text: 'sentence', label: 'label' });
    expect(guessClassificationColumns(table('id,Review,Sentiment\n1,great film,pos\n2,dull,neg\n'))).toEqual({ text: 'Review', label: 'Sentiment' });
    // No known names: 'kind' has 2 short values, 'body' the longest cells, 'n' is an id.
    const t = table(['n,body,kind', ...Array.from({ length: 30 }, (_, i) => `${i},some longer words number ${i} here,${i % 2 ? 'x' : 'y'}`)].join('\n'));
    expect(guessClassificationColumns(t)).toEqual({ text: 'body', label: 'kind' });
    expect(guessClassificationColumns(table('only\na\nb\n'))).toBeNull();
  });

  it('summarizes the label set and class balance of the rows that make examples, warning on imbalance', () => {
    const rows = ['text,label', ...Array.from({ length: 8 }, (_, i) => `t${i},neg`), 'u,pos', 'v,pos', ',pos', 'w,', 'x,neutral'];
    const s = summarizeLabels(table(rows.join('\n')), { text: 'text', label: 'label' });
    expect(s.labels.names).toEqual(['neg', 'neutral', 'pos']);
    expect(s.labels.kind).toBe('string');
    expect(s.counts).toEqual([8, 1, 2]); // the row with an empty text and the one with an empty label are left out
    expect(s.total).toBe(11);
    expect([s.emptyText, s.emptyLabel]).toEqual([1, 1]);
    expect(s.warning).toMatch(/unbalanced classes \(largest\/smallest = 8\.0\).*"neg"/);
    const balanced = summarizeLabels(table('text,label\na,0\nb,1\nc,1\nd,0\n'), { text: 'text', label: 'label' });
    expect(balanced.labels.kind).toBe('integer');
    expect(balanced.warning).toBeNull();
  });

  it('refuses what is not a label column: one value, an id column, the text itself', () => {
    expect(() => summarizeLabels(table('text,label\na,1\nb,1\n'), { text: 'text', label: 'label' })).toThrow(/at least 2 different labels/);
    const ids = table(['id,text', ...Array.from({ length: 40 }, (_, i) => `${i},row ${i}`)].join('\n'));
    expect(() => summarizeLabels(ids, { text: 'text', label: 'id' })).toThrow(/"id" has 40 different values for 40 rows, most of them on a single row/);
    expect(() => summarizeLabels(ids, { text: 'id', label: 'id' })).toThrow(/same column "id"/);
    expect(() => summarizeLabels(ids, { text: 'text', label: 'nope' })).toThrow(/the label column "nope" does not exist/);
  });

  it('tokenizes in blocks with progress and gives what one pass gives', async () => {
    const dir = path.join(FIX, 'tiny-distilbert');
    const tokenizer = loadTokenizer(JSON.parse(fs.readFileSync(path.join(dir, 'tokenizer.json'), 'utf8')), JSON.parse(fs.readFileSync(path.join(dir, 'tokenizer_config.json'), 'utf8')));
    const n = 2 * PROGRESS_ROWS + 77;
    const lines = ['text,label', ...Array.from({ length: n }, (_, i) => (i === 5 ? ',a' : `${'word '.repeat(1 + (i % 9))}${i},${['a', 'b', 'c'][i % 3]}`))];
    const t = table(lines.join('\n'));
    const mapping = { text: 'text', label: 'label' };
    const labelMap = buildLabelMap(t.rows.map((r) => r.label));
    const one = buildClassificationExamples(t, mapping, tokenizer, { maxLength: 8, labelMap });
    const progress: number[] = [];
    const blocks = await buildClassificationExamplesAsync(t, mapping, tokenizer, { maxLength: 8, labelMap, onProgress: (f) => progress.push(f) });
    expect(blocks.examples).toEqual(one.examples);
    expect({ ...blocks.stats, tokenLength: null }).toEqual({ ...one.stats, tokenLength: null });
    expect(blocks.stats.tokenLength.min).toBe(one.stats.tokenLength.min);
    expect(blocks.stats.tokenLength.max).toBe(one.stats.tokenLength.max);
    expect(blocks.stats.tokenLength.mean).toBeCloseTo(one.stats.tokenLength.mean, 9);
    expect(progress).toEqual([PROGRESS_ROWS / n, (2 * PROGRESS_ROWS) / n, 1]);
    expect(blocks.stats.skipped.rows).toEqual([{ row: 7, reason: '"text" is empty' }]);
  });
});

describe('a classification run resumed from its checkpoint', async () => {
  const gpu = await testGpu();
  const hf = await loadHfModel(nodeModelFiles(path.join(FIX, 'tiny-distilbert')));
  const tokenizer = loadTokenizer(hf.tokenizerJson!, hf.tokenizerConfig);
  const words = ['good', 'bad', 'fine', 'awful', 'nice', 'poor'];
  const csv = ['text,label', ...Array.from({ length: 40 }, (_, i) => `${words[i % 6]} ${words[(i + 3) % 6]} film,${i % 2}`)].join('\n');
  const t = table(csv);
  const labelMap = buildLabelMap(t.rows.map((r) => r.label));
  const { examples } = buildClassificationExamples(t, { text: 'text', label: 'label' }, tokenizer, { maxLength: 12, labelMap });
  const { train, validation } = splitTrainValidation(examples, 0.25, 1);
  const config: ClassifierTrainConfig = { ...DEFAULT_TRAIN_CONFIG, batchSize: 4, totalSteps: 6, seqLen: 12, lr: 0.02, evalEvery: 2, metricForBest: 'accuracy', loadBestAtEnd: false };
  const settings = { ...DEFAULT_SETTINGS, rank: 4, targetModules: ['q_lin', 'v_lin'] };

  /** A session as the worker makes one (a fresh head from the seed, LoRA, the trainer). */
  const session = () => {
    const loaded = loadSequenceClassifier(gpu, hf, { numLabels: 2, random: rng(9) });
    const step = new StepUniforms(gpu);
    const lora = new Lora(gpu, { r: 4, alpha: 8, dropout: 0, targetModules: ['q_lin', 'v_lin'], useRslora: false }, loaded.model.linearModules(), step, rng(3));
    const adapter = new SequenceClassificationAdapter(lora, loaded.model.headParams);
    const trainer = new ClassifierTrainer(gpu, loaded.model, adapter, train, validation, config, tokenizer.padId, step);
    const s = new ClassifierSession(gpu, trainer, adapter, loaded.model, labelMap, {
      modelClass: loaded.model.spec.className, headModules: ['pre_classifier', 'classifier'], trainCounts: [1, 1], settings, descriptor: METHOD_BY_ID.lora, stepsPerEpoch: 8,
    }, 100, 1000);
    return { s, loaded, adapter };
  };
  const hooks = (stopAt: number, s: ClassifierSession) => ({ onStep: () => undefined, onEval: () => undefined, shouldStop: () => s.step >= stopAt });
  const values = async (adapter: SequenceClassificationAdapter) => Promise.all(adapter.params.map((p) => gpu.read(p.value)));

  it('continues exactly where it stopped, with the best evaluation kept, and saves the best weights', { timeout: 400_000 }, async () => {
    // Straight through.
    const a = session();
    await a.s.run(hooks(99, a.s));
    expect(a.s.step).toBe(6);
    const straightBest = a.s.best();
    const straight = await values(a.adapter);
    const straightEvals = a.s.checkpointExtra().evals;

    // Stopped at step 4 (after its evaluation), checkpointed, "reloaded" into a fresh session, resumed.
    const b = session();
    await b.s.run(hooks(4, b.s));
    expect(b.s.step).toBe(4);
    const snap = await b.s.snapshot();
    const extra = b.s.checkpointExtra();
    expect(extra.labels).toEqual(['0', '1']);
    expect(extra.evals.map((e) => e.step)).toEqual([2, 4]);
    expect(extra.evals[0].confusion!.flat().reduce((x, y) => x + y, 0)).toBe(validation.length);
    expect(snap.best?.length).toBe(b.adapter.params.length);
    b.s.destroy();
    b.loaded.model.destroy();

    const c = session();
    c.s.restore(snap, extra.best);
    for (const e of b.s.log.history) c.s.replay(e, extra.evals);
    expect(c.s.step).toBe(4);
    expect(c.s.best()).toEqual(extra.best);
    await c.s.run(hooks(99, c.s));
    // Same data order, same weights: the resumed run ends where the straight one did.
    const resumed = await values(c.adapter);
    resumed.forEach((v, i) => expect(Array.from(v)).toEqual(Array.from(straight[i])));
    expect(c.s.best()).toEqual(straightBest);
    expect(c.s.checkpointExtra().evals.map((e) => [e.step, e.accuracy])).toEqual(straightEvals.map((e) => [e.step, e.accuracy]));

    // Finishing puts the best evaluation's weights back (when it is not the last) and exports them.
    const best = straightBest!;
    // (On this data the best accuracy comes before the last step, so the put-back is what is tested.)
    expect(best.step).toBeLessThan(6);
    const out = await c.s.finish({ baseModel: 'tiny-distilbert', runtimeS: 1, samples: 8, dataFile: 't.csv', dataColumns: 'text', trainExamples: train.length, validationExamples: validation.length, device: 'test' });
    expect(out.classification.best).toEqual(best);
    expect(out.classification.restoredBest).toBe(true);
    expect(out.classification.evaluation.step).toBe(best.step);
    const st = parseSafetensors(out.files.weights, 'adapter_model.safetensors');
    const saved = await values(c.adapter);
    const bias = c.adapter.params.findIndex((p) => p.name === 'base_model.model.classifier.bias');
    expect(Array.from(st.getF32('base_model.model.classifier.bias'))).toEqual(Array.from(saved[bias]));
    expect(Array.from(saved[bias])).not.toEqual(Array.from(straight[bias]));
    const state = JSON.parse(out.files['trainer_state.json']);
    expect(state.best_global_step).toBe(best.step);
    expect(state.log_history.filter((e: { eval_accuracy?: number }) => e.eval_accuracy !== undefined).map((e: { step: number }) => e.step)).toEqual([2, 4, 6]);
    expect(JSON.parse(out.files['adapter_config.json']).task_type).toBe('SEQ_CLS');
    c.s.destroy();
    c.loaded.model.destroy();
    a.s.destroy();
    a.loaded.model.destroy();
  });
});

describe('every classifier method through the worker\'s session: resumed from a checkpoint, finished with its own files', async () => {
  const gpu = await testGpu();
  const hf = await loadHfModel(nodeModelFiles(path.join(FIX, 'tiny-distilbert')));
  const tokenizer = loadTokenizer(hf.tokenizerJson!, hf.tokenizerConfig);
  const words = ['good', 'bad', 'fine', 'awful', 'nice', 'poor'];
  const csv = ['text,label', ...Array.from({ length: 30 }, (_, i) => `${words[i % 6]} ${words[(i + 3) % 6]} film,${['neg', 'pos', 'mid'][i % 3]}`)].join('\n');
  const t = table(csv);
  const labelMap = buildLabelMap(t.rows.map((r) => r.label));
  const { examples } = buildClassificationExamples(t, { text: 'text', label: 'label' }, tokenizer, { maxLength: 10, labelMap });
  const { train, validation } = splitTrainValidation(examples, 0.2, 1);
  const config: ClassifierTrainConfig = { ...DEFAULT_TRAIN_CONFIG, batchSize: 4, totalSteps: 4, seqLen: 10, lr: 0.01, evalEvery: 2, metricForBest: 'loss', loadBestAtEnd: false };

  const cases: { label: string; settings: Partial<TrainSettings>; files: string[]; peftType?: string }[] = [
    { label: 'DoRA', settings: { method: 'dora', rank: 2, dropout: 0, targetModules: ['q_lin', 'v_lin'] }, files: ['adapter_config.json', 'adapter_model.safetensors'], peftType: 'LORA' },
    { label: 'IA3 (the engine\'s DistilBERT defaults)', settings: { method: 'ia3' }, files: ['adapter_config.json', 'adapter_model.safetensors'], peftType: 'IA3' },
    { label: 'prompt tuning from a text', settings: { method: 'prompt', virtualTokens: 3, promptInit: 'text', promptInitText: 'a film review' }, files: ['adapter_config.json', 'adapter_model.safetensors'], peftType: 'PROMPT_TUNING' },
    { label: 'Houlsby bottleneck adapters', settings: { method: 'bottleneck', bottleneckType: 'houlsby', reductionFactor: 8, bottleneckName: 'films' }, files: ['adapter.safetensors', 'adapter_config.json', 'head_config.json', 'model_head.safetensors'] },
    { label: 'Pfeiffer bottleneck adapters', settings: { method: 'bottleneck', bottleneckType: 'pfeiffer', reductionFactor: 4 }, files: ['adapter.safetensors', 'adapter_config.json', 'head_config.json', 'model_head.safetensors'] },
  ];

  for (const c of cases) {
    it(`${c.label}: the resumed run ends where the straight one does; the files load back with the saved values`, async () => {
      const before = gpu.allocatedBytes;
      const probe = loadSequenceClassifier(gpu, hf, { numLabels: 3, random: rng(9) });
      const facts = classifierPeftFacts(probe);
      probe.model.destroy();
      const settings = { ...DEFAULT_SETTINGS, ...modelDefaults(facts), ...c.settings } as TrainSettings;
      const descriptor = METHOD_BY_ID[settings.method];
      /** A session as the worker's createRun makes one: a fresh head from the seed, the method from the descriptor's spec. */
      const session = () => {
        const loaded = loadSequenceClassifier(gpu, hf, { numLabels: 3, random: rng(9) });
        const step = new StepUniforms(gpu);
        const adapter = createSeqClsAdapter(gpu, descriptor.spec(settings, 'tiny-distilbert'), loaded.model, step, rng(3), (text) => tokenizer.encode(text, { addSpecialTokens: true }));
        const trainer = new ClassifierTrainer(gpu, loaded.model, adapter, train, validation, config, tokenizer.padId, step);
        const s = new ClassifierSession(gpu, trainer, adapter, loaded.model, labelMap, {
          modelClass: loaded.model.spec.className, headModules: ['pre_classifier', 'classifier'], trainCounts: [1, 1, 1], settings, descriptor, stepsPerEpoch: 6,
        }, 100, 1000);
        return { s, loaded, adapter, step };
      };
      const hooks = (stopAt: number, s: ClassifierSession) => ({ onStep: () => undefined, onEval: () => undefined, shouldStop: () => s.step >= stopAt });
      const values = async (adapter: SequenceClassificationAdapter) => Promise.all(adapter.params.map((p) => gpu.read(p.value)));

      const a = session();
      await a.s.run(hooks(99, a.s));
      const straight = await values(a.adapter);
      a.s.destroy();
      a.loaded.model.destroy();

      const b = session();
      await b.s.run(hooks(2, b.s));
      const snap = await b.s.snapshot();
      const extra = b.s.checkpointExtra();
      expect(snap.params.map((p) => p.name)).toEqual(b.adapter.params.map((p) => p.name));
      b.s.destroy();
      b.loaded.model.destroy();

      const r = session();
      r.s.restore(snap, extra.best);
      for (const e of b.s.log.history) r.s.replay(e, extra.evals);
      await r.s.run(hooks(99, r.s));
      expect(r.s.step).toBe(4);
      const resumed = await values(r.adapter);
      resumed.forEach((v, i) => expect(Array.from(v), r.adapter.params[i].name).toEqual(Array.from(straight[i])));

      const out = await r.s.finish({ baseModel: 'tiny-distilbert', runtimeS: 1, samples: 8, dataFile: 't.csv', dataColumns: 'text', trainExamples: train.length, validationExamples: validation.length, device: 'test' });
      const files = ['adapter_config.json', out.files.weightsName, ...(out.files.head ? ['head_config.json', 'model_head.safetensors'] : [])].sort();
      expect(files).toEqual(c.files);
      const cfg = JSON.parse(out.files['adapter_config.json']);
      if (c.peftType) {
        expect(cfg.peft_type).toBe(c.peftType);
        expect(cfg.task_type).toBe('SEQ_CLS');
        if (settings.method === 'dora') expect(cfg.use_dora).toBe(true);
      } else {
        // AdapterHub's adapter config, and its static head config for the 3 labels
        expect(cfg).toMatchObject({ name: settings.bottleneckName, model_type: 'distilbert', model_class: 'DistilBertForSequenceClassification', config: { reduction_factor: settings.reductionFactor } });
        expect(JSON.parse(out.files.head!.config)).toMatchObject({ model_class: 'DistilBertForSequenceClassification', num_labels: 3 });
        expect(out.files['README.md']).toMatch(/library_name: adapter-transformers[\s\S]*adapters\.init\(model\)[\s\S]*load_adapter/);
      }
      if (c.peftType) expect(out.files['README.md']).toMatch(/library_name: peft[\s\S]*PeftModel\.from_pretrained/);
      // the saved values (the best evaluation's) load back onto a fresh classifier
      const saved = await values(r.adapter);
      const fresh = loadSequenceClassifier(gpu, hf, { numLabels: 3, random: rng(1) });
      const imported = importSeqClsAdapter(gpu, { config: out.files['adapter_config.json'], weights: out.files.weights, head: out.files.head?.weights, name: c.label }, fresh.model, r.step);
      expect(imported.params.map((p) => p.name).sort()).toEqual(r.adapter.params.map((p) => p.name).sort());
      const byName = new Map(r.adapter.params.map((p, i) => [p.name, saved[i]]));
      for (const p of imported.params) expect(Array.from(await gpu.read(p.value)), p.name).toEqual(Array.from(byName.get(p.name)!));
      imported.destroy();
      fresh.model.destroy();
      r.s.destroy();
      r.loaded.model.destroy();
      for (const x of [a, b, r]) x.step.buffer.destroy();
      expect(gpu.allocatedBytes).toBe(before); // everything the sessions made was freed
    });
  }
});
