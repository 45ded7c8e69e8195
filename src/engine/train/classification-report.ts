// What a finished classification run leaves beside the adapter: trainer_state.json as transformers'
// Trainer writes it for a classifier (eval entries with eval_loss, eval_accuracy, eval_f1, and the
// best checkpoint's metric and step), and a README.md model card with the labels.

import type { TrainConfig } from './trainer';
import { RunLog, trainerState } from '../../train/run-report';
import type { ClassifierEvalReport, ClassifierTrainConfig, BestCheckpoint } from './classifier-trainer';
import type { LabelMap } from '../../data/labels';

/** The run log of a classifier: eval entries carry eval_loss, eval_accuracy and eval_f1. */
export type ClassificationRunLog = RunLog<ClassifierEvalReport>;
export function classificationRunLog(stepsPerEpoch: number): ClassificationRunLog {
  return new RunLog<ClassifierEvalReport>(stepsPerEpoch, (r) => ({ eval_loss: r.loss, eval_accuracy: r.accuracy, eval_f1: r.f1 }));
}

/** trainer_state.json; best_metric / best_global_step name the kept evaluation (metric_for_best_model). */
export function classificationTrainerState(log: ClassificationRunLog, config: ClassifierTrainConfig, stepsPerEpoch: number, best: BestCheckpoint | null): Record<string, unknown> {
  return {
    ...trainerState(log, config, stepsPerEpoch),
    best_global_step: best?.step ?? null,
    best_metric: best?.value ?? null,
    load_best_model_at_end: config.loadBestAtEnd,
    metric_for_best_model: config.metricForBest === 'loss' ? 'eval_loss' : 'eval_accuracy',
  };
}

export interface ClassifierCardInfo {
  baseModel: string;
  /** transformers class the head belongs to, e.g. DistilBertForSequenceClassification. */
  modelClass: string;
  /** The method's label ('LoRA', 'DoRA', 'IA3', 'prompt-tuning', ...), or 'head only'. */
  method: string;
  /** 'adapterhub': bottleneck adapters saved for the `adapters` library with the static head beside them (default 'peft'). */
  format?: 'peft' | 'adapterhub';
  adapterSettings: Record<string, unknown>;
  /** Head modules trained in full (PEFT's modules_to_save). */
  headModules: string[];
  labels: LabelMap;
  trainCounts: number[];
  config: TrainConfig;
  dataFile: string;
  dataColumns: string;
  trainExamples: number;
  validationExamples: number;
  trainableParams: number;
  totalParams: number;
  finalLoss: number;
  finalEval: ClassifierEvalReport | null;
  best: BestCheckpoint | null;
  restoredBest: boolean;
  confusionLines: string[];
  runtimeS: number;
  device: string;
}

const fmt = (v: unknown): string => (typeof v === 'number' ? (Number.isInteger(v) ? String(v) : v.toPrecision(4)) : Array.isArray(v) ? v.join(', ') : String(v));

export function classifierModelCard(i: ClassifierCardInfo): string {
  const c = i.config;
  const K = i.labels.names.length;
  const id2label = JSON.stringify(Object.fromEntries(i.labels.names.map((n, k) => [k, n])));
  const label2id = JSON.stringify(i.labels.label2id);
  const rows: [string, unknown][] = [
    ...Object.entries(i.adapterSettings),
    ['head (trained in full)', i.headModules],
    ['learning rate', c.lr], ['schedule', `${c.schedule}, ${c.warmupSteps} warmup steps`], ['steps', c.totalSteps],
    ['batch size', `${c.batchSize} x ${c.gradAccumSteps} accumulation`], ['sequence length', c.seqLen],
    ['weight decay', c.weightDecay], ['max grad norm', c.maxGradNorm], ['seed', c.seed],
    ['dropout of the base model', 'none'],
  ];
  const pct = ((100 * i.trainableParams) / i.totalParams).toFixed(4);
  const yamlQuote = (s: string) => JSON.stringify(s);
  const headOnly = i.method === 'head only';
  const hub = !headOnly && i.format === 'adapterhub';
  const load = hub
    ? `from transformers import AutoModelForSequenceClassification
import adapters
id2label = ${id2label}
label2id = ${label2id}
model = AutoModelForSequenceClassification.from_pretrained(
    "${i.baseModel}", num_labels=${K}, id2label={int(k): v for k, v in id2label.items()}, label2id=label2id)
adapters.init(model)
# with_head (the default) loads the trained head from head_config.json and model_head.safetensors
name = model.load_adapter("path/to/this/folder", use_safetensors=True, set_active=True)`
    : !headOnly
    ? `from transformers import AutoModelForSequenceClassification
from peft import PeftModel
id2label = ${id2label}
label2id = ${label2id}
base = AutoModelForSequenceClassification.from_pretrained(
    "${i.baseModel}", num_labels=${K}, id2label={int(k): v for k, v in id2label.items()}, label2id=label2id)
model = PeftModel.from_pretrained(base, "path/to/this/folder")`
    : `from safetensors.torch import load_file
from transformers import AutoModelForSequenceClassification
id2label = ${id2label}
label2id = ${label2id}
model = AutoModelForSequenceClassification.from_pretrained(
    "${i.baseModel}", num_labels=${K}, id2label={int(k): v for k, v in id2label.items()}, label2id=label2id)
model.load_state_dict(load_file("path/to/this/folder/head_model.safetensors"), strict=False)`;
  const ev = i.finalEval;
  const best = i.best
    ? `${i.best.metric === 'loss' ? 'eval loss' : 'eval accuracy'} ${i.best.value.toFixed(4)} at step ${i.best.step}${i.restoredBest ? ' (these weights are that checkpoint\'s)' : ''}`
    : 'n/a';
  return `---
base_model: ${i.baseModel}
library_name: ${hub ? 'adapter-transformers' : 'peft'}
pipeline_tag: text-classification
tags:
- ${headOnly ? 'head-only' : i.method.toLowerCase().replace(/\s+/g, '-')}
- ${hub ? 'adapter-transformers' : 'peft'}
- text-classification
num_labels: ${K}
id2label:
${i.labels.names.map((n, k) => `  ${k}: ${yamlQuote(n)}`).join('\n')}
label2id:
${i.labels.names.map((n, k) => `  ${yamlQuote(n)}: ${k}`).join('\n')}
---

# ${i.method} ${i.modelClass} for ${i.baseModel}

Text classification into ${K} classes, trained on your own GPU with WebGPU kernels (no server saw the
data). The head (${i.headModules.join(', ')}) is trained in full and saved beside the adapter, ${hub
    ? 'in model_head.safetensors with head_config.json, as AdapterHub\'s `save_adapter(..., with_head=True)` does for a static head (PEFT has no bottleneck adapters)'
    : 'as PEFT\'s `modules_to_save` does for `task_type="SEQ_CLS"`'}. Load it with the labels:

\`\`\`python
${load}
\`\`\`

## Labels

| id | label | training examples |
| --- | --- | --- |
${i.labels.names.map((n, k) => `| ${k} | ${n.replace(/\|/g, '\\|')} | ${i.trainCounts[k] ?? 0} |`).join('\n')}

## Data

- File: \`${i.dataFile}\` (${i.dataColumns})
- ${i.trainExamples} training examples, ${i.validationExamples} validation examples

## Settings

| setting | value |
| --- | --- |
${rows.map(([k, v]) => `| ${k} | ${fmt(v)} |`).join('\n')}

Trainable parameters: ${i.trainableParams.toLocaleString('en-US')} of ${i.totalParams.toLocaleString('en-US')} (${pct}%).

## Results

| metric | value |
| --- | --- |
| final training loss | ${i.finalLoss.toFixed(4)} |
| validation loss (last evaluation) | ${ev ? ev.loss.toFixed(4) : 'n/a (no validation split)'} |
| validation accuracy (last evaluation) | ${ev ? ev.accuracy.toFixed(4) : 'n/a'} |
| validation macro-F1 (last evaluation) | ${ev ? ev.f1.toFixed(4) : 'n/a'} |
| best checkpoint | ${best} |
| training time | ${i.runtimeS.toFixed(1)} s |
| device | ${i.device} |
${i.confusionLines.length ? `\nConfusion matrix of the last evaluation (rows: true label, columns: predicted):\n\n\`\`\`\n${i.confusionLines.join('\n')}\n\`\`\`\n` : ''}`;
}
