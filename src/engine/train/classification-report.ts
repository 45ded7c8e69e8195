// What a finished classification run leaves beside the adapter: trainer_state.json as transformers'
// Trainer writes it for a classifier (eval entries with eval_loss, eval_accuracy, eval_f1, and the
// best checkpoint's metric and step), and a README.md model card with the labels.

import type { StepReport, TrainConfig } from './trainer';
import type { ClassifierEvalReport, ClassifierTrainConfig, BestCheckpoint } from './classifier-trainer';
import type { LabelMap } from '../../data/labels';

export type ClassificationLogEntry =
  | { epoch: number; step: number; loss: number; learning_rate: number; grad_norm: number }
  | { epoch: number; step: number; eval_loss: number; eval_accuracy: number; eval_f1: number }
  | { epoch: number; step: number; train_loss: number; train_runtime: number; train_samples_per_second: number; train_steps_per_second: number; total_flos: number };

export class ClassificationRunLog {
  readonly history: ClassificationLogEntry[] = [];
  private lossSum = 0;
  private losses = 0;
  lastStep: StepReport | null = null;
  lastEval: ClassifierEvalReport | null = null;

  constructor(private readonly stepsPerEpoch: number) {}

  private epochAt(step: number): number {
    return Number((step / this.stepsPerEpoch).toFixed(4));
  }

  step(r: StepReport): void {
    this.history.push({ epoch: this.epochAt(r.step), step: r.step, loss: r.loss, learning_rate: r.lr, grad_norm: r.gradNorm });
    this.lossSum += r.loss;
    this.losses++;
    this.lastStep = r;
  }

  eval(r: ClassifierEvalReport): void {
    this.history.push({ epoch: this.epochAt(r.step), step: r.step, eval_loss: r.loss, eval_accuracy: r.accuracy, eval_f1: r.f1 });
    this.lastEval = r;
  }

  finish(runtimeS: number, samples: number): void {
    const step = this.lastStep?.step ?? 0;
    this.history.push({
      epoch: this.epochAt(step), step,
      train_loss: this.trainLoss,
      train_runtime: Number(runtimeS.toFixed(3)),
      train_samples_per_second: Number((samples / runtimeS).toFixed(3)),
      train_steps_per_second: Number((step / runtimeS).toFixed(3)),
      total_flos: 0,
    });
  }

  get trainLoss(): number {
    return this.losses ? this.lossSum / this.losses : NaN;
  }
}

/** trainer_state.json; best_metric / best_global_step name the kept evaluation (metric_for_best_model). */
export function classificationTrainerState(log: ClassificationRunLog, config: ClassifierTrainConfig, stepsPerEpoch: number, best: BestCheckpoint | null): Record<string, unknown> {
  const step = log.lastStep?.step ?? 0;
  return {
    best_global_step: best?.step ?? null,
    best_metric: best?.value ?? null,
    best_model_checkpoint: null,
    epoch: Number((step / stepsPerEpoch).toFixed(4)),
    eval_steps: config.evalEvery || null,
    global_step: step,
    is_hyper_param_search: false,
    is_local_process_zero: true,
    is_world_process_zero: true,
    load_best_model_at_end: config.loadBestAtEnd,
    log_history: log.history,
    logging_steps: 1,
    max_steps: config.totalSteps,
    metric_for_best_model: config.metricForBest === 'loss' ? 'eval_loss' : 'eval_accuracy',
    num_input_tokens_seen: 0,
    num_train_epochs: Math.ceil(config.totalSteps / stepsPerEpoch),
    save_steps: config.totalSteps,
    total_flos: 0,
    train_batch_size: config.batchSize,
    trial_name: null,
    trial_params: null,
  };
}

export interface ClassifierCardInfo {
  baseModel: string;
  /** transformers class the head belongs to, e.g. DistilBertForSequenceClassification. */
  modelClass: string;
  /** 'LoRA' or 'head only'. */
  method: string;
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
  const load = i.method === 'LoRA'
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
library_name: peft
pipeline_tag: text-classification
tags:
- ${i.method === 'LoRA' ? 'lora' : 'head-only'}
- peft
- text-classification
num_labels: ${K}
id2label:
${i.labels.names.map((n, k) => `  ${k}: ${yamlQuote(n)}`).join('\n')}
label2id:
${i.labels.names.map((n, k) => `  ${yamlQuote(n)}: ${k}`).join('\n')}
---

# ${i.method} ${i.modelClass} for ${i.baseModel}

Text classification into ${K} classes, trained on your own GPU with WebGPU kernels (no server saw the
data). The head (${i.headModules.join(', ')}) is trained in full and saved beside the adapter, as
PEFT's \`modules_to_save\` does for \`task_type="SEQ_CLS"\`. Load it with the labels:

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
