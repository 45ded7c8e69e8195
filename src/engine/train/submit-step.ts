// One optimizer step on the GPU, shared by the causal-LM and the classification trainers: one
// command buffer per micro-batch (inputs written with queue.writeBuffer before each), the
// optimizer after the last, and the loss sum + gradient norm copied into a small staging buffer
// that is read back asynchronously (the caller decides how many steps may run ahead).

import { GpuError, type Gpu } from '../gpu/gpu';
import { encodeOps, type Op } from '../gpu/dispatch';
import type { Tensor } from '../gpu/tensor';
import type { StepUniforms } from '../kernels/step-uniforms';
import type { OptimizerOps } from './optimizer';
import type { TrainConfig } from './trainer';

/** The parts of a training program a step drives (Program and SeqClsProgram both have them). */
export interface StepProgram<Batch> {
  write(batch: Batch): void;
  gradScale: Tensor;
  lossSum: Tensor;
  forward: Op[];
  backward: Op[];
}

/** A 32-bit mix of a seed and a counter (for dropout seeds and data order). */
export function mixSeed(seed: number, n: number): number {
  let h = (seed ^ Math.imul(n + 0x9e3779b9, 0x85ebca6b)) >>> 0;
  h = Math.imul(h ^ (h >>> 16), 0x7feb352d) >>> 0;
  h = Math.imul(h ^ (h >>> 15), 0x846ca68b) >>> 0;
  return (h ^ (h >>> 16)) >>> 0;
}

/**
 * Steps a trainer submits ahead of their reports: 2, or 3 where the JS side polls for GPU events
 * (Gpu.pollsForEvents, Node), whose garbage brings V8 pauses of 20-30 ms (GPT-2 on the H100; see
 * ReadbackPacer) that one queued step of 22 ms did not cover.
 */
export function stepsInFlight(gpu: Gpu): number {
  return gpu.pollsForEvents ? 3 : 2;
}

/**
 * When to ask for a step's readback, where the JS side polls for GPU events (Gpu.pollsForEvents:
 * Node's Dawn). There, while any mapAsync is pending, the binding polls from a setImmediate loop
 * that allocates a function with a native finalizer every turn; asked for at submit, a readback
 * two steps ahead kept it polling all the time, and V8's full collections of that garbage (every
 * ~23 GPT-2 steps on the H100, 16-20 ms each; bench/step-bench.ts under node --trace-gc) stalled
 * the GPU: 50-step means of the step time swung by 5 % while their medians held within 0.1 %.
 * So the readback is asked for shortly before the step should be done: after the median, over
 * the last few steps (not the first few), of the time from submit to done (the delay it was asked
 * for after plus its wait for the answer, where it had to wait), less a margin. Where the answer
 * came at once the step was done earlier (a step the CPU holds up), and the delay falls to 0.7 of
 * what it was at most. Without polling (browsers) it asks at once.
 */
export class ReadbackPacer {
  private static readonly SAMPLES = 5;
  private static readonly WARMUP = 5;
  private answers = 0;
  private readonly done = new Float64Array(ReadbackPacer.SAMPLES);
  private readonly sorted = new Float64Array(ReadbackPacer.SAMPLES);
  private count = 0;
  private delay = 0;
  constructor(private readonly enabled: boolean) {}

  /** The delay now (ms; tests). */
  get delayMs(): number {
    return this.delay;
  }

  /** staging.mapAsync(READ), asked for after the current delay (from now: call it at submit). */
  map(staging: GPUBuffer): Promise<void> {
    if (!this.enabled) return staging.mapAsync(GPUMapMode.READ);
    const delay = this.delay;
    const ask = (): Promise<void> => {
      const asked = performance.now();
      return staging.mapAsync(GPUMapMode.READ).then(() => this.answered(delay, performance.now() - asked));
    };
    return delay >= 1 ? new Promise<void>((resolve) => setTimeout(resolve, delay)).then(ask) : ask();
  }

  private answered(delay: number, waitMs: number): void {
    // the first steps' times include the driver's first use of each pipeline (GPT-2 on the H100:
    // 80-140 ms against 22-31 in steady state): a delay learnt from them came too late
    if (++this.answers <= ReadbackPacer.WARMUP) return;
    const n = ReadbackPacer.SAMPLES;
    const early = waitMs < 0.5;
    this.done[this.count++ % n] = early ? 0.7 * delay : delay + waitMs;
    if (this.count < n) return;
    this.sorted.set(this.done);
    this.sorted.sort();
    const median = this.sorted[n >> 1];
    this.delay = Math.min(1000, Math.max(0, 0.97 * median - 1.5));
    if (early) this.delay = Math.min(this.delay, 0.7 * delay);
  }
}

/**
 * Step reports in step order. A step's readback can answer before the previous step's (the pacer
 * asks for each map after a delay that changes from step to step), so reports chained on their own
 * readbacks came out of order now and then (a loss chart's points, a step counter going back, a
 * divergence blamed on a later step). `next(res, report)` runs `report` on `res` once every report
 * handed in before it has run (or failed).
 */
export class InOrderReports {
  private last: Promise<unknown> = Promise.resolve();

  next<T>(res: Promise<T>, report: (value: T) => void): Promise<void> {
    // (a step that fails before its turn is handled now: Node would count it unhandled till then)
    res.catch(() => undefined);
    const done = this.last.then(() => res).then(report);
    this.last = done.catch(() => undefined);
    return done;
  }
}

/**
 * Submits optimizer step `step` (0-based) over `batches` (its micro-batches) and resolves to the
 * mean loss per counted target and the gradient norm before clipping, or rejects with a GpuError:
 * the step's own validation error (an error scope around its submits), or any other the device
 * reported by then (Gpu.checkErrors). `stagingPool` holds reusable 8-byte MAP_READ
 * buffers; a buffer goes back to it once read. `pacer` asks for the readback (at once
 * where nothing polls).
 */
export function submitOptimizerStep<Batch>(a: {
  gpu: Gpu; program: StepProgram<Batch>; batches: Batch[]; validTargets: number; lr: number; step: number;
  config: TrainConfig; stepUniforms: StepUniforms; optimizer: OptimizerOps; stagingPool: GPUBuffer[]; pacer: ReadbackPacer;
}): Promise<{ loss: number; gradNorm: number }> {
  const { gpu, program: p, config: c, batches } = a;
  const scale = new Float32Array([1 / Math.max(1, a.validTargets)]);
  const staging = a.stagingPool.pop() ?? gpu.device.createBuffer({ size: 8, usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST, label: 'step-stats' });
  const last = batches.length - 1;
  // the step's own validation errors (a refused submit leaves the readback below stale)
  gpu.device.pushErrorScope('validation');
  batches.forEach((batch, j) => {
    p.write(batch);
    gpu.write(p.gradScale, scale);
    a.stepUniforms.write({
      lr: a.lr, beta1: c.beta1, beta2: c.beta2, eps: c.eps, weightDecay: c.weightDecay,
      step: a.step + 1, seed: mixSeed(c.seed, a.step * c.gradAccumSteps + j),
    });
    const ops: Op[] = [];
    if (j === 0) ops.push(...a.optimizer.zeroGrads, { kind: 'clear', buffer: p.lossSum.buffer });
    ops.push(...p.forward, ...p.backward);
    if (j === last) ops.push(...a.optimizer.update);
    const enc = gpu.device.createCommandEncoder({ label: `step ${a.step + 1}.${j}` });
    if (gpu.profiler) gpu.profiler.encode(enc, ops);
    else encodeOps(enc, ops);
    if (j === last) {
      enc.copyBufferToBuffer(p.lossSum.buffer, 0, staging, 0, 4);
      enc.copyBufferToBuffer(a.optimizer.clip.buffer, 0, staging, 4, 4);
    }
    gpu.device.queue.submit([enc.finish()]);
  });
  const invalid = gpu.device.popErrorScope();
  return Promise.all([a.pacer.map(staging), invalid]).then(([, error]) => {
    const v = new Float32Array(staging.getMappedRange().slice(0));
    staging.unmap();
    a.stagingPool.push(staging);
    if (error) throw new GpuError(`GPU error in step ${a.step + 1}: ${error.message.trim()}`);
    gpu.checkErrors(); // anything else reported meanwhile, or a lost device
    return { loss: v[0] / Math.max(1, a.validTargets), gradNorm: v[1] };
  });
}
