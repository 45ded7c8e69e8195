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
 * Submits optimizer step `step` (0-based) over `batches` (its micro-batches) and resolves to the
 * mean loss per counted target and the gradient norm before clipping, or rejects with a GpuError:
 * the step's own validation error (an error scope around its submits), or any other the device
 * reported by then (Gpu.checkErrors). `stagingPool` holds reusable 8-byte MAP_READ
 * buffers; a buffer goes back to it once read.
 */
export function submitOptimizerStep<Batch>(a: {
  gpu: Gpu; program: StepProgram<Batch>; batches: Batch[]; validTargets: number; lr: number; step: number;
  config: TrainConfig; stepUniforms: StepUniforms; optimizer: OptimizerOps; stagingPool: GPUBuffer[];
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
  return Promise.all([staging.mapAsync(GPUMapMode.READ), invalid]).then(([, error]) => {
    const v = new Float32Array(staging.getMappedRange().slice(0));
    staging.unmap();
    a.stagingPool.push(staging);
    if (error) throw new GpuError(`GPU error in step ${a.step + 1}: ${error.message.trim()}`);
    gpu.checkErrors(); // anything else reported meanwhile, or a lost device
    return { loss: v[0] / Math.max(1, a.validTargets), gradNorm: v[1] };
  });
}
