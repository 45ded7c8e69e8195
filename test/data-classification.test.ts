// Labels, classification examples and batches, and the metrics (against values worked by hand
// and scikit-learn's definitions).
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { buildLabelMap, classCounts, describeClassCounts, labelId, normalizeLabel } from '../src/data/labels';
import { buildClassificationExamples, classificationSequenceLength, makeClassificationBatch, specialTokenFrame } from '../src/data/classification';
import { parseTableText } from '../src/data/table';
import { loadTokenizer } from '../src/data/tokenizer';
import { loadHfModel } from '../src/io/model-files';
import { nodeModelFiles } from '../src/io/model-files-node';
import { argmax, classificationMetrics, formatConfusion } from '../src/engine/train/classification-metrics';

describe('labels', () => {
  it('integers sort numerically and keep 0..K-1 as their own ids; other values sort by code point', () => {
    const ints = buildLabelMap(['1', '0', ' 2', '10', '+1', '', undefined]);
    expect(ints.kind).toBe('integer');
    expect(ints.names).toEqual(['0', '1', '2', '10']);
    expect(ints.id2label).toEqual({ 0: '0', 1: '1', 2: '2', 3: '10' });
    expect(labelId(ints, '+01')).toBe(1);
    const stars = buildLabelMap(['5', '3', '4']);
    expect(stars.label2id).toEqual({ 3: 0, 4: 1, 5: 2 });
    const words = buildLabelMap(['positive', 'negative', 'Neutral', 'negative ']);
    expect(words.kind).toBe('string');
    expect(words.names).toEqual(['Neutral', 'negative', 'positive']);
    expect(labelId(words, '')).toBeNull();
    expect(() => labelId(words, 'other')).toThrow(/"other" is not one of the model's labels/);
    expect(normalizeLabel('  x ')).toBe('x');
  });

  it('an explicit order fixes the ids and must name every label', () => {
    expect(buildLabelMap(['pos', 'neg'], ['pos', 'neg']).names).toEqual(['pos', 'neg']);
    expect(() => buildLabelMap(['pos', 'neg', 'mid'], ['pos', 'neg'])).toThrow(/does not name: mid/);
    expect(() => buildLabelMap(['a', 'b'], ['a', 'a', 'b'])).toThrow(/twice/);
    expect(() => buildLabelMap(['only', 'only'])).toThrow(/at least 2 different labels; the label column has only "only"/);
  });

  it('class counts and the imbalance warning', () => {
    const m = buildLabelMap(['a', 'b', 'c']);
    expect(classCounts([0, 0, 2, 0, 5, -100], 3)).toEqual([3, 0, 1]);
    expect(describeClassCounts(m, [50, 50, 0]).warning).toMatch(/no examples of "c"/);
    const skew = describeClassCounts(m, [90, 5, 5]);
    expect(skew.line).toBe('a 90 (90.0%), b 5 (5.0%), c 5 (5.0%)');
    expect(skew.warning).toMatch(/unbalanced classes \(largest\/smallest = 18\.0\).*always guessing "a" \(90\.0%\)/);
    expect(describeClassCounts(m, [10, 9, 8]).warning).toBeNull();
  });
});

describe('classification examples', async () => {
  const hf = await loadHfModel(nodeModelFiles(path.join(__dirname, 'fixtures', 'tiny-bert')));
  const tok = loadTokenizer(hf.tokenizerJson!, hf.tokenizerConfig);

  it('finds the [CLS] ... [SEP] frame and keeps it when truncating', () => {
    const frame = specialTokenFrame(tok);
    expect(frame).toEqual({ prefix: [2], suffix: [3] });
    const table = parseTableText('text,label\n"a warm and funny film about a family , with a great cast and a sharp script",pos\n"dull",neg\n,neg\n"no label",\n', 'd.csv');
    const { examples, labelMap, stats } = buildClassificationExamples(table, { text: 'text', label: 'label' }, tok, { maxLength: 8 });
    expect(labelMap.names).toEqual(['neg', 'pos']);
    expect(examples.map((e) => e.label)).toEqual([1, 0]);
    expect(examples[0].inputIds).toHaveLength(8);
    expect(examples[0].inputIds[0]).toBe(2);
    expect(examples[0].inputIds[7]).toBe(3);
    expect(examples[0].inputIds.slice(1, 7)).toEqual(tok.encode('a warm and funny film about a family', { addSpecialTokens: false }).slice(0, 6));
    expect(examples[0].truncated).toBe(true);
    expect(stats.truncated).toBe(1);
    expect(stats.skipped.rows.map((r) => r.row)).toEqual([4, 5]);
    expect(stats.classCounts).toEqual([1, 1]);
    expect(classificationSequenceLength(examples, 64)).toBe(8);
    expect(() => buildClassificationExamples(table, { text: 'text', label: 'text' }, tok, { maxLength: 8 })).toThrow(/same column/);
    expect(() => buildClassificationExamples(table, { text: 'text', label: 'nope' }, tok, { maxLength: 8 })).toThrow(/label column "nope" does not exist/);
  });

  it('batches right-pad with the pad id and fill missing rows with unlabelled pad rows', () => {
    const ex = [{ inputIds: [2, 10, 3], label: 1, truncated: false, row: 2 }, { inputIds: [2, 11, 12, 13, 3], label: 0, truncated: false, row: 3 }];
    const b = makeClassificationBatch(ex, 5, 0, 3);
    expect([...b.inputIds]).toEqual([2, 10, 3, 0, 0, 2, 11, 12, 13, 3, 0, 0, 0, 0, 0]);
    expect([...b.lengths]).toEqual([3, 5, 1]);
    expect([...b.labels]).toEqual([1, 0, -100]);
    expect(b.validLabels).toBe(2);
  });
});

describe('classification metrics', () => {
  it('accuracy, macro-F1 over the classes present (sklearn), confusion matrix', () => {
    // truth 0 0 0 1 1 2, predicted 0 1 0 1 2 2 ; class 3 absent from both (left out of the macro mean)
    const m = classificationMetrics([0, 0, 0, 1, 1, 2], [0, 1, 0, 1, 2, 2], 4, 3);
    expect(m.accuracy).toBeCloseTo(4 / 6, 12);
    expect(m.confusion).toEqual([[2, 1, 0, 0], [0, 1, 1, 0], [0, 0, 1, 0], [0, 0, 0, 0]]);
    // F1: class 0 = 2*2/(3+2) = 0.8; class 1 = 2*1/(2+2) = 0.5; class 2 = 2*1/(1+2) = 2/3
    expect(m.f1).toBeCloseTo((0.8 + 0.5 + 2 / 3) / 3, 12);
    expect(m.loss).toBeCloseTo(0.5, 12);
    expect(m.perClass[0]).toMatchObject({ precision: 1, recall: 2 / 3, support: 3 });
    // a class never predicted counts with F1 0
    expect(classificationMetrics([0, 1, 1], [1, 1, 1], 2, 0).f1).toBeCloseTo((0 + 0.8) / 2, 12);
    expect(argmax([0.1, 0.7, 0.7, -1], 0, 4)).toBe(1);
    expect(formatConfusion([[5, 1], [0, 12]], ['neg', 'pos'])).toEqual(['true \\ pred  neg  pos', 'neg            5    1', 'pos            0   12']);
  });
});
