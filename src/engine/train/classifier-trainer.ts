// The training loop for sequence classification (BERT-family encoders with a head), beside the
// causal-LM Trainer and built the same way: one command buffer per micro-batch, the loss and the
// gradient norm read back asynchronously. The loss is the mean cross-entropy over the labelled rows
// of an optimizer step. Evaluation gives loss, accuracy, macro-F1 and the confusion matrix; the
// best evaluation (by loss or accuracy) is kept in memory and put back at the end, like
// transformers' load_best_model_at_end.

import type { Gpu } from '../gpu/gpu';
import { encodeOps } from '../gpu/dispatch';
import { StepUniforms } from '../kernels/step-uniforms';
import type { PeftMethod } from '../peft/method';
import type { EncoderClassifier, SeqClsProgram } from '../models/encoder';
import { buildAdamW, type OptimizerOps } from './optimizer';
import { DivergenceError, TrainError, type StepReport, type TrainConfig } from './trainer';
import { InOrderReports, ReadbackPacer, stepsInFlight, submitOptimizerStep } from './submit-step';
import { argmax, classificationMetrics, type ClassificationMetrics } from './classification-metrics';
import { epochOrder } from '../../data/batches';
import { makeClassificationBatch, type ClassificationExample } from '../../data/classification';
import { learningRateAt } from '../../train/schedule';

export type BestMetric = 'loss' | 'accuracy';

export interface ClassifierTrainConfig extends TrainConfig {
  /** Which evaluation counts as best: lowest loss or highest accuracy. */
  metricForBest: BestMetric;
  /** Put the best evaluation's parameters back when training ends. */
  loadBestAtEnd: boolean;
}

export interface ClassifierEvalReport extends ClassificationMetrics {
  step: number;
}

export interface ClassifierTrainHooks {
  onStep?(r: StepReport): void;
  onEval?(r: ClassifierEvalReport): void;
  shouldStop?(): boolean;
}

export interface BestCheckpoint {
  step: number;
  metric: BestMetric;
  value: number;
  params: { name: string; value: Float32Array }[];
}

export class ClassifierTrainer {
  readonly stepUniforms: StepUniforms;
  private readonly program: SeqClsProgram;
  private evalProgram: SeqClsProgram | null = null;
  private readonly optimizer: OptimizerOps;
  step = 0;
  /** The best evaluation so far (parameters copied off the GPU). */
  best: BestCheckpoint | null = null;
  /** Whether the parameters now on the GPU are the best checkpoint's (after run() put it back). */
  restoredBest = false;
  private readonly orders = new Map<number, Uint32Array>();
  private readonly staging: GPUBuffer[] = [];
  /** Steps submitted ahead of their reports (submit-step.ts stepsInFlight). */
  private readonly inFlight: number;
  private readonly pacer: ReadbackPacer;

  constructor(
    private readonly gpu: Gpu,
    private readonly model: EncoderClassifier,
    /** The trainable tensors and the method's hooks (SequenceClassificationAdapter: LoRA, DoRA, IA3, prompt tuning, bottleneck adapters, or the head alone). */
    readonly adapter: PeftMethod,
    private readonly train: readonly ClassificationExample[],
    private readonly validation: readonly ClassificationExample[],
    readonly config: ClassifierTrainConfig,
    private readonly padId: number,
    stepUniforms?: StepUniforms,
  ) {
    if (train.length === 0) throw new TrainError('there are no training examples');
    for (const k of ['batchSize', 'gradAccumSteps', 'totalSteps', 'seqLen'] as const) {
      if (!Number.isInteger(config[k]) || config[k] < 1) throw new TrainError(`${k} must be a positive integer (got ${config[k]})`);
    }
    if (!(config.lr > 0)) throw new TrainError(`learning rate must be positive (got ${config.lr})`);
    if (adapter.params.length === 0) throw new TrainError('nothing to train: the adapter has no parameters');
    this.stepUniforms = stepUniforms ?? new StepUniforms(gpu);
    this.pacer = new ReadbackPacer(gpu.pollsForEvents);
    this.inFlight = stepsInFlight(gpu);
    this.program = model.buildProgram(adapter, { B: config.batchSize, T: config.seqLen, training: true });
    this.optimizer = buildAdamW(gpu, adapter.params, this.stepUniforms, config.maxGradNorm);
  }

  private exampleAt(i: number): ClassificationExample {
    const n = this.train.length;
    const epoch = Math.floor(i / n);
    let order = this.orders.get(epoch);
    if (!order) {
      order = epochOrder(n, epoch, this.config.seed);
      this.orders.clear();
      this.orders.set(epoch, order);
    }
    return this.train[order[i % n]];
  }

  lrAt(step: number): number {
    const c = this.config;
    return learningRateAt(step, { peakLr: c.lr, warmupSteps: c.warmupSteps, totalSteps: c.totalSteps, kind: c.schedule });
  }

  private submitStep(): Promise<{ loss: number; gradNorm: number }> & { tokens: number; lr: number } {
    const c = this.config;
    const { gpu, program: p } = this;
    const perStep = c.batchSize * c.gradAccumSteps;
    const batches = [];
    let valid = 0;
    let tokens = 0;
    for (let j = 0; j < c.gradAccumSteps; j++) {
      const rows: ClassificationExample[] = [];
      for (let b = 0; b < c.batchSize; b++) rows.push(this.exampleAt(this.step * perStep + j * c.batchSize + b));
      const batch = makeClassificationBatch(rows, c.seqLen, this.padId);
      valid += batch.validLabels;
      for (const len of batch.lengths) tokens += len;
      batches.push(batch);
    }
    const lr = this.lrAt(this.step);
    const result = submitOptimizerStep({
      gpu, program: p, batches, validTargets: valid, lr, step: this.step, config: c,
      stepUniforms: this.stepUniforms, optimizer: this.optimizer, stagingPool: this.staging, pacer: this.pacer,
    });
    this.step++;
    return Object.assign(result, { tokens, lr });
  }

  /** Trains to totalSteps, evaluating every evalEvery steps and at the end (when there is a validation split). */
  async run(hooks: ClassifierTrainHooks = {}): Promise<void> {
    const c = this.config;
    const start = performance.now();
    const startStep = this.step;
    let tokensDone = 0;
    const pending: Promise<void>[] = [];
    const reports = new InOrderReports();
    let failure: unknown = null;
    const evaluateNow = async (step: number) => {
      await Promise.all(pending.splice(0));
      const m = await this.evaluate();
      await this.considerBest(step, m);
      hooks.onEval?.({ step, ...m });
    };
    while (this.step < c.totalSteps && !hooks.shouldStop?.()) {
      const step = this.step + 1;
      const epoch = (step * c.batchSize * c.gradAccumSteps) / this.train.length;
      const res = this.submitStep();
      pending.push(reports.next(res, ({ loss, gradNorm }) => {
        tokensDone += res.tokens;
        const elapsedMs = performance.now() - start;
        const done = step - startStep;
        if (!Number.isFinite(loss) || !Number.isFinite(gradNorm)) {
          failure ??= new DivergenceError(step, loss, gradNorm);
        }
        hooks.onStep?.({
          step, totalSteps: c.totalSteps, epoch, loss, lr: res.lr, gradNorm, tokens: res.tokens,
          tokensPerSecond: tokensDone / (elapsedMs / 1000), elapsedMs, etaMs: (elapsedMs / done) * (c.totalSteps - step),
        });
      }).catch((e: unknown) => {
        // a GPU error (the step's readback checks): the run stops with it, after the steps in flight
        failure ??= e;
      }));
      if (pending.length >= this.inFlight) await pending.shift();
      if (failure) throw failure;
      if (c.evalEvery > 0 && step % c.evalEvery === 0 && step < c.totalSteps && this.validation.length > 0) await evaluateNow(step);
    }
    await Promise.all(pending);
    if (failure) throw failure;
    if (this.validation.length > 0 && this.step === c.totalSteps) await evaluateNow(this.step);
    if (c.loadBestAtEnd && this.best && this.best.step !== this.step) {
      this.putBack(this.best);
      this.restoredBest = true;
    }
  }

  private async considerBest(step: number, m: ClassificationMetrics): Promise<void> {
    const metric = this.config.metricForBest;
    const value = metric === 'loss' ? m.loss : m.accuracy;
    const better = !this.best || (metric === 'loss' ? value < this.best.value : value > this.best.value);
    if (!better || !Number.isFinite(value)) return;
    const params = [];
    for (const p of this.adapter.params) params.push({ name: p.name, value: await this.gpu.read(p.value) });
    this.best = { step, metric, value, params };
  }

  private putBack(b: BestCheckpoint): void {
    const byName = new Map(b.params.map((p) => [p.name, p.value]));
    for (const p of this.adapter.params) {
      const v = byName.get(p.name);
      if (!v) throw new TrainError(`best checkpoint has no tensor ${p.name}`);
      this.gpu.write(p.value, v);
    }
  }

  /**
   * Loss, accuracy, macro-F1 and confusion matrix over `examples` (default: the validation split),
   * forward only; the last batch is filled with unlabelled rows.
   */
  async evaluate(examples: readonly ClassificationExample[] = this.validation): Promise<ClassificationMetrics & { predictions: number[] }> {
    const c = this.config;
    if (examples.length === 0) throw new TrainError('there is no validation split to evaluate on');
    this.evalProgram ??= this.model.buildProgram(this.adapter, { B: c.batchSize, T: c.seqLen, training: false });
    const p = this.evalProgram;
    const K = this.model.K;
    this.gpu.write(p.gradScale, new Float32Array([0]));
    const truth: number[] = [];
    const predictions: number[] = [];
    let lossSum = 0;
    for (let i = 0; i < examples.length; i += c.batchSize) {
      const rows = examples.slice(i, i + c.batchSize);
      const batch = makeClassificationBatch(rows, c.seqLen, this.padId, c.batchSize);
      p.write(batch);
      const enc = this.gpu.device.createCommandEncoder({ label: 'eval' });
      encodeOps(enc, p.forward);
      this.gpu.device.queue.submit([enc.finish()]);
      const [logits, losses] = [await this.gpu.read(p.logits), await this.gpu.read(p.losses)];
      rows.forEach((ex, b) => {
        truth.push(ex.label);
        predictions.push(argmax(logits, b * K, K));
        lossSum += losses[b];
      });
    }
    return { ...classificationMetrics(truth, predictions, K, lossSum), predictions };
  }

  /** Frees the programs' activations (the parameters stay). */
  destroy(): void {
    this.program.destroy();
    this.evalProgram?.destroy();
    this.optimizer.destroy();
    for (const s of this.staging) s.destroy();
  }
}
