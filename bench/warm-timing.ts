// GPU time of a list of dispatches at the GPU's working clocks, for the matmul benches and probes.
import type { Gpu } from '../src/engine/gpu/gpu';
import { KernelProfiler } from '../src/engine/gpu/profiler';
import { encodeOps, type Op } from '../src/engine/gpu/dispatch';

/**
 * Mean GPU ms of one pass over `once` (timestamp queries per dispatch, summed), over `reps` passes.
 * A first timed run compiles the pipelines and estimates the time; the timed passes then follow,
 * in the same command buffer, about `busyMs` of the same work untimed, so the GPU is at its working
 * clocks when they run. (Without it a shape timed right after a pipeline was compiled found the GPU
 * at idle clocks: GPT-2's transposed products read 8-15 TFLOP/s in one run and 28-36 in the next.)
 */
export async function timeOpsWarm(gpu: Gpu, once: Op[], reps = 20, busyMs = 150): Promise<number> {
  const profiler = new KernelProfiler(gpu);
  const ops: Op[] = Array.from({ length: reps }, () => once).flat();
  let enc = gpu.device.createCommandEncoder();
  profiler.encode(enc, ops);
  gpu.device.queue.submit([enc.finish()]);
  await profiler.collect();
  const estimate = Math.max(1e-3, profiler.table().reduce((sum, r) => sum + r.totalMs, 0) / reps);
  profiler.reset();
  enc = gpu.device.createCommandEncoder();
  for (let i = Math.ceil(busyMs / estimate); i > 0; i--) encodeOps(enc, once);
  profiler.encode(enc, ops);
  gpu.device.queue.submit([enc.finish()]);
  await profiler.collect();
  const ms = profiler.table().reduce((sum, r) => sum + r.totalMs, 0) / reps;
  profiler.destroy();
  return ms;
}
