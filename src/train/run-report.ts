// What a finished run leaves beside the adapter: trainer_state.json as transformers' Trainer
// writes it, and a README.md model card.

import type { EvalReport, StepReport, TrainConfig } from '../engine/train/trainer';

export type LogEntry =
  | { epoch: number; step: number; loss: number; learning_rate: number; grad_norm: number }
  | { epoch: number; step: number; eval_loss: number; eval_accuracy?: number; eval_f1?: number }
  | { epoch: number; step: number; train_loss: number; train_runtime: number; train_samples_per_second: number; train_steps_per_second: number; total_flos: number };

/** How an evaluation report becomes a log_history entry's metrics. */
export type EvalEntry<E> = (r: E) => { eval_loss: number; eval_accuracy?: number; eval_f1?: number };

/** Collects the log as the run goes, in Trainer's log_history shape. E is the evaluation report. */
export class RunLog<E extends { step: number } = EvalReport> {
  readonly history: LogEntry[] = [];
  private lossSum = 0;
  private losses = 0;
  lastStep: StepReport | null = null;
  lastEval: E | null = null;

  constructor(
    private readonly stepsPerEpoch: number,
    private readonly evalEntry: EvalEntry<E> = (r) => ({ eval_loss: (r as unknown as EvalReport).evalLoss }),
  ) {}

  private epochAt(step: number): number {
    return Number((step / this.stepsPerEpoch).toFixed(4));
  }

  step(r: StepReport): void {
    this.history.push({ epoch: this.epochAt(r.step), step: r.step, loss: r.loss, learning_rate: r.lr, grad_norm: r.gradNorm });
    this.lossSum += r.loss;
    this.losses++;
    this.lastStep = r;
  }

  eval(r: E): void {
    this.history.push({ epoch: this.epochAt(r.step), step: r.step, ...this.evalEntry(r) });
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

export function trainerState<E extends { step: number }>(log: RunLog<E>, config: TrainConfig, stepsPerEpoch: number): Record<string, unknown> {
  const step = log.lastStep?.step ?? 0;
  return {
    best_metric: null,
    best_model_checkpoint: null,
    epoch: Number((step / stepsPerEpoch).toFixed(4)),
    eval_steps: config.evalEvery || null,
    global_step: step,
    is_hyper_param_search: false,
    is_local_process_zero: true,
    is_world_process_zero: true,
    log_history: log.history,
    logging_steps: 1,
    max_steps: config.totalSteps,
    num_input_tokens_seen: 0,
    num_train_epochs: Math.ceil(config.totalSteps / stepsPerEpoch),
    save_steps: config.totalSteps,
    total_flos: 0,
    train_batch_size: config.batchSize,
    trial_name: null,
    trial_params: null,
  };
}

export interface ModelCardInfo {
  baseModel: string;
  method: string;
  adapterSettings: Record<string, unknown>;
  config: TrainConfig;
  dataFile: string;
  dataColumns: string;
  trainExamples: number;
  validationExamples: number;
  trainableParams: number;
  totalParams: number;
  finalLoss: number;
  finalEvalLoss: number | null;
  runtimeS: number;
  device: string;
  /** 'adapterhub': a bottleneck adapter saved for the `adapters` library (default 'peft'). */
  format?: 'peft' | 'adapterhub';
}

const fmt = (v: unknown): string => (typeof v === 'number' ? (Number.isInteger(v) ? String(v) : v.toPrecision(4)) : Array.isArray(v) ? v.join(', ') : String(v));

export function modelCard(i: ModelCardInfo): string {
  const c = i.config;
  const rows: [string, unknown][] = [
    ...Object.entries(i.adapterSettings),
    ['learning rate', c.lr], ['schedule', `${c.schedule}, ${c.warmupSteps} warmup steps`], ['steps', c.totalSteps],
    ['batch size', `${c.batchSize} x ${c.gradAccumSteps} accumulation`], ['sequence length', c.seqLen],
    ['weight decay', c.weightDecay], ['max grad norm', c.maxGradNorm], ['seed', c.seed],
  ];
  const pct = ((100 * i.trainableParams) / i.totalParams).toFixed(4);
  const hub = i.format === 'adapterhub';
  const load = hub
    ? `Load it with the AdapterHub \`adapters\` library (PEFT has no bottleneck adapters):

\`\`\`python
from transformers import AutoModelForCausalLM
import adapters
model = AutoModelForCausalLM.from_pretrained("${i.baseModel}")
adapters.init(model)
name = model.load_adapter("path/to/this/folder", use_safetensors=True, set_active=True)
\`\`\``
    : `Load it with PEFT:

\`\`\`python
from transformers import AutoModelForCausalLM
from peft import PeftModel
base = AutoModelForCausalLM.from_pretrained("${i.baseModel}")
model = PeftModel.from_pretrained(base, "path/to/this/folder")
\`\`\``;
  return `---
base_model: ${i.baseModel}
library_name: ${hub ? 'adapter-transformers' : 'peft'}
tags:
- ${i.method.toLowerCase()}
- ${hub ? 'adapter-transformers' : 'peft'}
---

# ${i.method} adapter for ${i.baseModel}

Trained on your own GPU with WebGPU kernels (no server saw the data). ${load}

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
| final validation loss | ${i.finalEvalLoss === null ? 'n/a (no validation split)' : i.finalEvalLoss.toFixed(4)} |
| training time | ${i.runtimeS.toFixed(1)} s |
| device | ${i.device} |
`;
}
