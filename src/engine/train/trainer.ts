// The training loop, shared by the CLI (Node) and the app's worker. Each optimizer step submits
// one command buffer per micro-batch (inputs written with queue.writeBuffer before each); the loss
// and gradient norm are copied into a small staging buffer and read back asynchronously, so the
// CPU never waits for the GPU inside a step (at most `inFlight` steps run ahead of their reports).

import type { Gpu } from '../gpu/gpu';
import { encodeOps } from '../gpu/dispatch';
import { StepUniforms } from '../kernels/step-uniforms';
import type { PeftMethod } from '../peft/method';
import { lossTargetCount, type BatchArrays, type CausalLM, type Program } from '../models/program';
import { buildAdamW, type OptimizerOps } from './optimizer';
import { InOrderReports, ReadbackPacer, stepsInFlight, submitOptimizerStep } from './submit-step';
import { makeBatch, epochOrder } from '../../data/batches';
import type { Example } from '../../data/examples';
import { learningRateAt, type ScheduleKind } from '../../train/schedule';

export interface TrainConfig {
  /** Rows per micro-batch. */
  batchSize: number;
  gradAccumSteps: number;
  /** Optimizer steps in the whole run. */
  totalSteps: number;
  /** Sequence length every batch is padded to. */
  seqLen: number;
  lr: number;
  warmupSteps: number;
  schedule: ScheduleKind;
  weightDecay: number;
  beta1: number;
  beta2: number;
  eps: number;
  /** 0 turns clipping off. */
  maxGradNorm: number;
  seed: number;
  /** Evaluate every this many steps (0: only at the end); needs validation examples. */
  evalEvery: number;
}

export interface StepReport {
  /** 1-based optimizer step. */
  step: number;
  totalSteps: number;
  /** Epochs done, fractional. */
  epoch: number;
  /** Mean loss per target token in this step. */
  loss: number;
  lr: number;
  /** Gradient norm before clipping. */
  gradNorm: number;
  /** Non-padding tokens processed in this step. */
  tokens: number;
  tokensPerSecond: number;
  elapsedMs: number;
  etaMs: number;
}

export interface EvalReport {
  step: number;
  evalLoss: number;
}

/** The adapter's parameters and optimizer state at a step: what a checkpoint stores. */
export interface TrainerSnapshot {
  step: number;
  params: { name: string; shape: number[]; value: Float32Array; m: Float32Array; v: Float32Array }[];
}

export interface TrainHooks {
  onStep?(r: StepReport): void;
  onEval?(r: EvalReport): void;
  /** Checked between steps: true stops the run after the current step. */
  shouldStop?(): boolean;
}

export class TrainError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'TrainError';
  }
}

/** The loss or the gradient norm of `step` was not finite: the run diverged there. */
export class DivergenceError extends TrainError {
  constructor(
    readonly step: number,
    loss: number,
    gradNorm: number,
  ) {
    super(`step ${step}: the loss became ${loss} (gradient norm ${gradNorm}); try a lower learning rate`);
  }
}

export const DEFAULT_TRAIN_CONFIG: Omit<TrainConfig, 'totalSteps' | 'seqLen'> = {
  batchSize: 8,
  gradAccumSteps: 1,
  lr: 2e-4,
  warmupSteps: 0,
  schedule: 'linear',
  weightDecay: 0,
  beta1: 0.9,
  beta2: 0.999,
  eps: 1e-8,
  maxGradNorm: 1,
  seed: 42,
  evalEvery: 0,
};

export { mixSeed } from './submit-step';

/**
 * With virtual tokens (prompt tuning) a batch also carries each row's first label: PEFT's labels
 * put -100 on the virtual positions, and after the shift the last one predicts the first token.
 */
export function withFirstTargets(batch: BatchArrays, rows: readonly Example[], virtualTokens: number): BatchArrays {
  if (virtualTokens === 0) return batch;
  return { ...batch, firstTargets: Int32Array.from(rows, (e) => e.labels[0] ?? -100) };
}

export class Trainer {
  readonly stepUniforms: StepUniforms;
  private readonly program: Program;
  private evalProgram: Program | null = null;
  private readonly optimizer: OptimizerOps;
  /** Steps completed (also the step to resume from). */
  step = 0;
  private readonly orders = new Map<number, Uint32Array>();
  private readonly staging: GPUBuffer[] = [];
  /** Steps submitted ahead of their reports (submit-step.ts stepsInFlight). */
  private readonly inFlight: number;
  private readonly pacer: ReadbackPacer;

  constructor(
    private readonly gpu: Gpu,
    private readonly model: CausalLM,
    readonly peft: PeftMethod,
    private readonly train: readonly Example[],
    private readonly validation: readonly Example[],
    readonly config: TrainConfig,
    private readonly padId: number,
    stepUniforms?: StepUniforms,
  ) {
    if (train.length === 0) throw new TrainError('there are no training examples');
    for (const k of ['batchSize', 'gradAccumSteps', 'totalSteps', 'seqLen'] as const) {
      if (!Number.isInteger(config[k]) || config[k] < 1) throw new TrainError(`${k} must be a positive integer (got ${config[k]})`);
    }
    if (!(config.lr > 0)) throw new TrainError(`learning rate must be positive (got ${config.lr})`);
    this.stepUniforms = stepUniforms ?? new StepUniforms(gpu);
    this.pacer = new ReadbackPacer(gpu.pollsForEvents);
    this.inFlight = stepsInFlight(gpu);
    this.program = model.buildProgram(peft, { B: config.batchSize, T: config.seqLen, training: true });
    this.optimizer = buildAdamW(gpu, peft.params, this.stepUniforms, config.maxGradNorm);
  }

  /** Epochs' worth of steps for a dataset size. */
  static stepsForEpochs(examples: number, epochs: number, batchSize: number, gradAccum: number): number {
    return Math.max(1, Math.ceil((epochs * examples) / (batchSize * gradAccum)));
  }

  /** The example used at position `i` of the endless, epoch-by-epoch shuffled stream. */
  private exampleAt(i: number): Example {
    const n = this.train.length;
    const epoch = Math.floor(i / n);
    let order = this.orders.get(epoch);
    if (!order) {
      order = Uint32Array.from(epochOrder(n, epoch, this.config.seed));
      this.orders.clear();
      this.orders.set(epoch, order);
    }
    return this.train[order[i % n]];
  }

  lrAt(step: number): number {
    const c = this.config;
    return learningRateAt(step, { peakLr: c.lr, warmupSteps: c.warmupSteps, totalSteps: c.totalSteps, kind: c.schedule });
  }


  /**
   * Runs one optimizer step (all micro-batches) and returns a promise of its report values.
   * The GPU work is submitted before this returns; the promise resolves when it has finished.
   */
  private submitStep(): Promise<{ loss: number; gradNorm: number }> & { tokens: number; lr: number } {
    const c = this.config;
    const { gpu, program: p } = this;
    const perStep = c.batchSize * c.gradAccumSteps;
    const batches = [];
    let valid = 0;
    let tokens = 0;
    for (let j = 0; j < c.gradAccumSteps; j++) {
      const rows: Example[] = [];
      for (let b = 0; b < c.batchSize; b++) rows.push(this.exampleAt(this.step * perStep + j * c.batchSize + b));
      const batch = withFirstTargets(makeBatch(rows, c.seqLen, this.padId), rows, p.virtualTokens);
      valid += lossTargetCount(batch, p.virtualTokens);
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

  /** Trains until totalSteps (from `this.step`, so a restored trainer resumes). */
  async run(hooks: TrainHooks = {}): Promise<void> {
    const c = this.config;
    const start = performance.now();
    const startStep = this.step;
    let tokensDone = 0;
    const pending: Promise<void>[] = [];
    const reports = new InOrderReports();
    let failure: unknown = null;
    while (this.step < c.totalSteps && !hooks.shouldStop?.()) {
      const step = this.step + 1;
      const epoch = ((step * c.batchSize * c.gradAccumSteps) / this.train.length);
      const res = this.submitStep();
      const report = reports.next(res, ({ loss, gradNorm }) => {
        tokensDone += res.tokens;
        const elapsedMs = performance.now() - start;
        const done = step - startStep;
        if (!Number.isFinite(loss) || !Number.isFinite(gradNorm)) {
          failure ??= new DivergenceError(step, loss, gradNorm);
        }
        hooks.onStep?.({
          step, totalSteps: c.totalSteps, epoch, loss, lr: res.lr, gradNorm, tokens: res.tokens,
          tokensPerSecond: tokensDone / (elapsedMs / 1000), elapsedMs,
          etaMs: (elapsedMs / done) * (c.totalSteps - step),
        });
      }).catch((e: unknown) => {
        // a GPU error (the step's readback checks): the run stops with it, after the steps in flight
        failure ??= e;
      });
      pending.push(report);
      if (pending.length >= this.inFlight) await pending.shift();
      if (failure) throw failure;
      if (c.evalEvery > 0 && step % c.evalEvery === 0 && step < c.totalSteps && this.validation.length > 0) {
        await Promise.all(pending.splice(0));
        hooks.onEval?.({ step, evalLoss: await this.evaluate() });
      }
    }
    await Promise.all(pending);
    if (failure) throw failure;
    if (this.validation.length > 0 && (this.step === c.totalSteps)) hooks.onEval?.({ step: this.step, evalLoss: await this.evaluate() });
  }

  /** Mean loss per target token over the validation examples (forward only). */
  async evaluate(): Promise<number> {
    const c = this.config;
    if (this.validation.length === 0) throw new TrainError('there is no validation split to evaluate on');
    this.evalProgram ??= this.model.buildProgram(this.peft, { B: c.batchSize, T: c.seqLen, training: false });
    const p = this.evalProgram;
    let valid = 0;
    this.gpu.write(p.gradScale, new Float32Array([0]));
    const enc0 = this.gpu.device.createCommandEncoder();
    enc0.clearBuffer(p.lossSum.buffer);
    this.gpu.device.queue.submit([enc0.finish()]);
    for (let i = 0; i < this.validation.length; i += c.batchSize) {
      const rows = this.validation.slice(i, i + c.batchSize);
      // Pad the last batch with copies whose targets are all ignored, so they add no loss.
      const padded = rows.concat(Array.from({ length: c.batchSize - rows.length }, () => ({ ...rows[0], labels: rows[0].labels.map(() => -100) })));
      const batch = withFirstTargets(makeBatch(padded, c.seqLen, this.padId), padded, p.virtualTokens);
      valid += lossTargetCount(batch, p.virtualTokens);
      p.write(batch);
      const enc = this.gpu.device.createCommandEncoder({ label: 'eval' });
      encodeOps(enc, p.forward);
      this.gpu.device.queue.submit([enc.finish()]);
    }
    const sum = (await this.gpu.read(p.lossSum))[0];
    return sum / Math.max(1, valid);
  }

  /** Copies the adapter's parameters and AdamW state back from the GPU (for a checkpoint). */
  async snapshot(): Promise<TrainerSnapshot> {
    const params = [];
    for (const p of this.peft.params) {
      params.push({ name: p.name, shape: p.shape, value: await this.gpu.read(p.value), m: await this.gpu.read(p.m), v: await this.gpu.read(p.v) });
    }
    return { step: this.step, params };
  }

  /** Puts a snapshot back (same method, same shapes), so run() continues from its step. */
  restore(s: TrainerSnapshot): void {
    const byName = new Map(s.params.map((p) => [p.name, p]));
    if (s.params.length !== this.peft.params.length) throw new TrainError(`checkpoint has ${s.params.length} tensors, this adapter has ${this.peft.params.length}`);
    for (const p of this.peft.params) {
      const q = byName.get(p.name);
      if (!q) throw new TrainError(`checkpoint has no tensor ${p.name}`);
      if (q.value.length !== p.value.size || q.m.length !== p.value.size || q.v.length !== p.value.size) {
        throw new TrainError(`checkpoint tensor ${p.name} has ${q.value.length} values, expected ${p.value.size}`);
      }
      this.gpu.write(p.value, q.value);
      this.gpu.write(p.m, q.m);
      this.gpu.write(p.v, q.v);
    }
    if (!(Number.isInteger(s.step) && s.step >= 0 && s.step <= this.config.totalSteps)) throw new TrainError(`checkpoint step ${s.step} is outside this run (0..${this.config.totalSteps})`);
    this.step = s.step;
  }

  /** Frees the programs' activations and the optimizer's norm buffers (the adapter's parameters stay). */
  destroy(): void {
    this.program.destroy();
    this.evalProgram?.destroy();
    this.optimizer.destroy();
    for (const s of this.staging) s.destroy();
  }
}
