// A training run as the worker drives it, whatever it trains: a causal LM with any adapter method
// (the engine's Trainer) or a text classifier (ClassifierTrainer: a method on the encoder + the
// head). The worker's loop runs, pauses, checkpoints and finishes a session the same way; the
// session knows its trainer, how an evaluation reads on the page, what a checkpoint holds, and the
// files it leaves.

import type { Gpu } from '../engine/gpu/gpu';
import type { PeftMethod } from '../engine/peft/method';
import type { StepReport, Trainer, TrainConfig, TrainerSnapshot } from '../engine/train/trainer';
import { TrainError } from '../engine/train/trainer';
import type { BestCheckpoint, ClassifierEvalReport, ClassifierTrainConfig, ClassifierTrainer } from '../engine/train/classifier-trainer';
import { classificationMetrics, formatConfusion, type ClassificationMetrics } from '../engine/train/classification-metrics';
import { classificationRunLog, classificationTrainerState, classifierModelCard, type ClassificationRunLog } from '../engine/train/classification-report';
import { ADAPTERHUB_HEAD_CONFIG, ADAPTERHUB_HEAD_WEIGHTS, exportSeqClsAdapter, type SequenceClassificationAdapter } from '../engine/models/sequence-classification';
import type { EncoderClassifier } from '../engine/models/encoder';
import { exportAdapter, WEIGHTS_FILE } from '../engine/export/peft-export';
import { RunLog, modelCard, trainerState, type LogEntry } from '../train/run-report';
import type { LabelMap } from '../data/labels';
import type { MethodDescriptor, TaskKind } from './methods';
import type { TrainSettings } from './settings';
import type { BestEval, EvalPoint } from './protocol';
import type { CheckpointTensors, SavedClassifierMetrics } from './storage';

export interface SessionHooks {
  onStep(r: StepReport): void;
  onEval(p: EvalPoint): void;
  shouldStop(): boolean;
}

/** What the model card and trainer_state.json need from the run around the session. */
export interface FinishContext {
  baseModel: string;
  runtimeS: number;
  /** Examples trained on in this session (for train_samples_per_second). */
  samples: number;
  dataFile: string;
  dataColumns: string;
  trainExamples: number;
  validationExamples: number;
  device: string;
}

export interface FinishedFiles {
  'adapter_config.json': string;
  /** adapter_model.safetensors (PEFT) or adapter.safetensors (AdapterHub's bottleneck adapters) */
  weightsName: string;
  weights: Uint8Array;
  'README.md': string;
  'trainer_state.json': string;
  /** A bottleneck classifier's static head, as AdapterHub saves it beside the adapter (head_config.json, model_head.safetensors). */
  head?: { config: string; weights: Uint8Array };
}

export interface StepLog {
  step(r: StepReport): void;
  readonly history: LogEntry[];
  readonly lastStep: StepReport | null;
}

export interface SessionSnapshot {
  step: number;
  params: CheckpointTensors['params'];
  best?: CheckpointTensors['best'];
}

export interface TrainerSession {
  readonly task: TaskKind;
  readonly step: number;
  readonly config: TrainConfig;
  /** Trainable parameters (what PEFT's print_trainable_parameters calls trainable) and all of them. */
  readonly trainable: number;
  readonly totalParams: number;
  /** The run's log_history as it grows (the worker adds the steps; evaluations come from the session). */
  readonly log: StepLog;
  run(hooks: SessionHooks): Promise<void>;
  /** An evaluation now (a run stopped early gets one at its last step). */
  evaluateNow(): Promise<EvalPoint>;
  /** The best evaluation so far (classification), or null. */
  best(): BestEval | null;
  snapshot(): Promise<SessionSnapshot>;
  /** Puts a checkpoint back, so run() continues from its step (with the best evaluation it had kept). */
  restore(s: SessionSnapshot, best: BestEval | null): void;
  /** Adds a saved log entry back (resuming from a checkpoint). */
  replay(e: LogEntry, evals: readonly EvalPoint[]): void;
  /** What a checkpoint keeps beside the tensors (classification: labels, evaluations, best). */
  checkpointExtra(): { labels: string[]; evals: EvalPoint[]; best: BestEval | null } | undefined;
  /** Puts the weights to save in place (the best evaluation's, for a classifier) and writes the files. */
  finish(ctx: FinishContext): Promise<{ files: FinishedFiles; classification?: SavedClassifierMetrics; finalEvalLoss: number | null }>;
  destroy(): void;
}

/** Reads every parameter with its AdamW moments. */
async function readParams(gpu: Gpu, method: PeftMethod): Promise<SessionSnapshot['params']> {
  const out: SessionSnapshot['params'] = [];
  for (const p of method.params) out.push({ name: p.name, shape: p.shape, value: await gpu.read(p.value), m: await gpu.read(p.m), v: await gpu.read(p.v) });
  return out;
}

/** Writes saved values (and moments) back, checking names and sizes. */
function writeParams(gpu: Gpu, method: PeftMethod, saved: SessionSnapshot['params']): void {
  if (saved.length !== method.params.length) throw new TrainError(`checkpoint has ${saved.length} tensors, this adapter has ${method.params.length}`);
  const byName = new Map(saved.map((p) => [p.name, p]));
  for (const p of method.params) {
    const q = byName.get(p.name);
    if (!q) throw new TrainError(`checkpoint has no tensor ${p.name}`);
    if (q.value.length !== p.value.size || q.m.length !== p.value.size || q.v.length !== p.value.size) {
      throw new TrainError(`checkpoint tensor ${p.name} has ${q.value.length} values, expected ${p.value.size}`);
    }
    gpu.write(p.value, q.value);
    gpu.write(p.m, q.m);
    gpu.write(p.v, q.v);
  }
}

function replayStep(log: StepLog, e: LogEntry, totalSteps: number): boolean {
  if (!('loss' in e)) return false;
  log.step({ step: e.step, totalSteps, epoch: e.epoch, loss: e.loss, lr: e.learning_rate, gradNorm: e.grad_norm, tokens: 0, tokensPerSecond: 0, elapsedMs: 0, etaMs: 0 });
  return true;
}

// ---- causal LM: any method ----------------------------------------------------------------------

export class CausalSession implements TrainerSession {
  readonly task = 'causal-lm' as const;
  readonly log: RunLog;

  constructor(
    private readonly gpu: Gpu,
    private readonly trainer: Trainer,
    private readonly method: PeftMethod,
    private readonly descriptor: MethodDescriptor,
    private readonly settings: TrainSettings,
    private readonly stepsPerEpoch: number,
    readonly trainable: number,
    readonly totalParams: number,
  ) {
    this.log = new RunLog(stepsPerEpoch);
  }

  get step(): number {
    return this.trainer.step;
  }

  get config(): TrainConfig {
    return this.trainer.config;
  }

  async run(hooks: SessionHooks): Promise<void> {
    await this.trainer.run({
      onStep: hooks.onStep,
      onEval: (r) => {
        this.log.eval(r);
        hooks.onEval({ step: r.step, evalLoss: r.evalLoss });
      },
      shouldStop: hooks.shouldStop,
    });
  }

  async evaluateNow(): Promise<EvalPoint> {
    const p = { step: this.trainer.step, evalLoss: await this.trainer.evaluate() };
    this.log.eval(p);
    return p;
  }

  best(): BestEval | null {
    return null;
  }

  async snapshot(): Promise<SessionSnapshot> {
    const s: TrainerSnapshot = await this.trainer.snapshot();
    return { step: s.step, params: s.params };
  }

  restore(s: SessionSnapshot): void {
    this.trainer.restore({ step: s.step, params: s.params });
  }

  replay(e: LogEntry): void {
    if (replayStep(this.log, e, this.config.totalSteps)) return;
    if ('eval_loss' in e) this.log.eval({ step: e.step, evalLoss: e.eval_loss });
  }

  checkpointExtra(): undefined {
    return undefined;
  }

  async finish(ctx: FinishContext): Promise<{ files: FinishedFiles; finalEvalLoss: number | null }> {
    const log = this.log;
    log.finish(ctx.runtimeS, ctx.samples);
    const exported = await exportAdapter(this.gpu, this.method, ctx.baseModel);
    const config = { ...this.config };
    const finalEvalLoss = log.lastEval?.evalLoss ?? null;
    const readme = modelCard({
      baseModel: ctx.baseModel,
      method: this.descriptor.cardLabel,
      adapterSettings: this.descriptor.cardSettings(this.settings),
      config,
      dataFile: ctx.dataFile,
      dataColumns: ctx.dataColumns,
      trainExamples: ctx.trainExamples,
      validationExamples: ctx.validationExamples,
      trainableParams: this.trainable,
      totalParams: this.totalParams,
      finalLoss: log.lastStep?.loss ?? NaN,
      finalEvalLoss,
      runtimeS: ctx.runtimeS,
      device: ctx.device,
      format: exported.format,
    });
    const state = JSON.stringify(trainerState(log, config, this.stepsPerEpoch), null, 2) + '\n';
    const files: FinishedFiles = { 'adapter_config.json': exported.config, weightsName: exported.weightsName, weights: exported.weights, 'README.md': readme, 'trainer_state.json': state };
    return { files, finalEvalLoss };
  }

  destroy(): void {
    this.trainer.destroy();
    this.method.destroy?.();
  }
}

// ---- text classification: a method on the encoder + the head ------------------------------------

/** The page's view of an evaluation. */
function evalPoint(step: number, m: ClassificationMetrics): EvalPoint {
  return { step, evalLoss: m.loss, accuracy: m.accuracy, f1: m.f1, confusion: m.confusion.map((r) => [...r]) };
}

/** An evaluation report rebuilt from its confusion matrix (a resumed run's log). */
function reportFromPoint(p: EvalPoint, K: number): ClassifierEvalReport {
  const truth: number[] = [];
  const predicted: number[] = [];
  (p.confusion ?? []).forEach((row, y) => row.forEach((n, k) => {
    for (let i = 0; i < n; i++) {
      truth.push(y);
      predicted.push(k);
    }
  }));
  return { step: p.step, ...classificationMetrics(truth, predicted, K, p.evalLoss * truth.length) };
}

export class ClassifierSession implements TrainerSession {
  readonly task = 'classification' as const;
  readonly log: ClassificationRunLog;
  /** Every evaluation of the run, in order (with its confusion matrix). */
  private readonly evals: EvalPoint[] = [];
  private restoredBest = false;

  constructor(
    private readonly gpu: Gpu,
    private readonly trainer: ClassifierTrainer,
    /** The method on the encoder (any of SeqClsMethod) with the head; the session frees the method. */
    private readonly adapter: SequenceClassificationAdapter,
    /** The classifier it trains (the head's class and size for AdapterHub's head files). */
    private readonly model: EncoderClassifier,
    private readonly labels: LabelMap,
    private readonly card: {
      modelClass: string;
      headModules: string[];
      trainCounts: number[];
      settings: TrainSettings;
      descriptor: MethodDescriptor;
      stepsPerEpoch: number;
    },
    readonly trainable: number,
    readonly totalParams: number,
  ) {
    this.log = classificationRunLog(card.stepsPerEpoch);
  }

  get step(): number {
    return this.trainer.step;
  }

  get config(): ClassifierTrainConfig {
    return this.trainer.config;
  }

  private record(step: number, m: ClassificationMetrics): EvalPoint {
    const p = evalPoint(step, m);
    this.log.eval({ step, ...m });
    this.evals.push(p);
    return p;
  }

  async run(hooks: SessionHooks): Promise<void> {
    // The trainer's own put-back at the end is off (config.loadBestAtEnd false): run() returns at
    // every pause and checkpoint, and the weights must go on training from where they are.
    await this.trainer.run({
      onStep: hooks.onStep,
      onEval: (r) => hooks.onEval(this.record(r.step, r)),
      shouldStop: hooks.shouldStop,
    });
  }

  async evaluateNow(): Promise<EvalPoint> {
    const step = this.trainer.step;
    const m = await this.trainer.evaluate();
    await this.considerBest(step, m);
    return this.record(step, m);
  }

  /** As ClassifierTrainer keeps its best (for an evaluation the worker asks for itself). */
  private async considerBest(step: number, m: ClassificationMetrics): Promise<void> {
    const metric = this.config.metricForBest;
    const value = metric === 'loss' ? m.loss : m.accuracy;
    const b = this.trainer.best;
    const better = !b || (metric === 'loss' ? value < b.value : value > b.value);
    if (!better || !Number.isFinite(value)) return;
    const params = [];
    for (const p of this.adapter.params) params.push({ name: p.name, value: await this.gpu.read(p.value) });
    this.trainer.best = { step, metric, value, params };
  }

  best(): BestEval | null {
    const b = this.trainer.best;
    return b ? { step: b.step, metric: b.metric, value: b.value } : null;
  }

  async snapshot(): Promise<SessionSnapshot> {
    const best = this.trainer.best;
    return { step: this.trainer.step, params: await readParams(this.gpu, this.adapter), ...(best ? { best: best.params.map((p) => ({ name: p.name, value: p.value })) } : {}) };
  }

  restore(s: SessionSnapshot, best: BestEval | null): void {
    writeParams(this.gpu, this.adapter, s.params);
    if (!(Number.isInteger(s.step) && s.step >= 0 && s.step <= this.config.totalSteps)) throw new TrainError(`checkpoint step ${s.step} is outside this run (0..${this.config.totalSteps})`);
    this.trainer.step = s.step;
    if (best && s.best) {
      const names = new Set(this.adapter.params.map((p) => p.name));
      if (s.best.length !== names.size || s.best.some((p) => !names.has(p.name))) throw new TrainError('the checkpoint\'s best evaluation does not fit this adapter');
      this.trainer.best = { ...best, params: s.best.map((p) => ({ name: p.name, value: p.value })) } satisfies BestCheckpoint;
    }
  }

  replay(e: LogEntry, evals: readonly EvalPoint[]): void {
    if (replayStep(this.log, e, this.config.totalSteps)) return;
    if (!('eval_loss' in e)) return;
    const p = evals.find((x) => x.step === e.step);
    if (!p) throw new TrainError(`the checkpoint has no evaluation details for step ${e.step}`);
    this.log.eval(reportFromPoint(p, this.labels.names.length));
    this.evals.push(p);
  }

  checkpointExtra(): { labels: string[]; evals: EvalPoint[]; best: BestEval | null } {
    return { labels: [...this.labels.names], evals: this.evals.slice(), best: this.best() };
  }

  async finish(ctx: FinishContext): Promise<{ files: FinishedFiles; classification: SavedClassifierMetrics; finalEvalLoss: number | null }> {
    const best = this.trainer.best;
    // load_best_model_at_end: the best evaluation's weights are the ones saved.
    if (best && best.step !== this.trainer.step) {
      const byName = new Map(best.params.map((p) => [p.name, p.value]));
      for (const p of this.adapter.params) {
        const v = byName.get(p.name);
        if (!v) throw new TrainError(`best checkpoint has no tensor ${p.name}`);
        this.gpu.write(p.value, v);
      }
      this.restoredBest = true;
    }
    const log = this.log;
    log.finish(ctx.runtimeS, ctx.samples);
    // PEFT's two files (method + head under modules_to_save names), or AdapterHub's adapter files and static head
    const exported = await exportSeqClsAdapter(this.gpu, this.adapter, ctx.baseModel, this.model);
    const format = this.adapter.exportFormat;
    const weightsName = WEIGHTS_FILE[format];
    const text = (name: string): string => {
      const v = exported.get(name);
      if (typeof v !== 'string') throw new TrainError(`the export has no ${name}`);
      return v;
    };
    const bytes = (name: string): Uint8Array => {
      const v = exported.get(name);
      if (!(v instanceof Uint8Array)) throw new TrainError(`the export has no ${name}`);
      return v;
    };
    const reportConfig: ClassifierTrainConfig = { ...this.config, loadBestAtEnd: true };
    const state = JSON.stringify(classificationTrainerState(log, reportConfig, this.card.stepsPerEpoch, best), null, 2) + '\n';
    const last = log.lastEval;
    const confusionLines = last ? formatConfusion(last.confusion, this.labels.names) : [];
    const readme = classifierModelCard({
      baseModel: ctx.baseModel,
      modelClass: this.card.modelClass,
      method: this.card.descriptor.cardLabel,
      format,
      adapterSettings: this.card.descriptor.cardSettings(this.card.settings),
      headModules: this.card.headModules,
      labels: this.labels,
      trainCounts: this.card.trainCounts,
      config: reportConfig,
      dataFile: ctx.dataFile,
      dataColumns: ctx.dataColumns,
      trainExamples: ctx.trainExamples,
      validationExamples: ctx.validationExamples,
      trainableParams: this.trainable,
      totalParams: this.totalParams,
      finalLoss: log.lastStep?.loss ?? NaN,
      finalEval: last,
      best,
      restoredBest: this.restoredBest,
      confusionLines,
      runtimeS: ctx.runtimeS,
      device: ctx.device,
    });
    const savedEval = (this.restoredBest && best ? this.evals.find((e) => e.step === best.step) : this.evals.at(-1)) ?? this.evals.at(-1);
    return {
      files: {
        'adapter_config.json': text('adapter_config.json'),
        weightsName,
        weights: bytes(weightsName),
        'README.md': readme,
        'trainer_state.json': state,
        ...(format === 'adapterhub' ? { head: { config: text(ADAPTERHUB_HEAD_CONFIG), weights: bytes(ADAPTERHUB_HEAD_WEIGHTS) } } : {}),
      },
      finalEvalLoss: last?.loss ?? null,
      classification: {
        labels: [...this.labels.names],
        evaluation: savedEval ?? { step: this.trainer.step, evalLoss: NaN },
        best: this.best(),
        restoredBest: this.restoredBest,
      },
    };
  }

  destroy(): void {
    this.trainer.destroy();
    this.adapter.destroy();
  }
}
