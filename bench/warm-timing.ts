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

/**
 * Mean GPU ms of one pass over `once` run back to back: `reps` copies of its dispatches in ONE
 * compute pass, timed by the pass's own two timestamps, divided by reps; after about `busyMs` of
 * the same work untimed (working clocks, as timeOpsWarm). This is how PyTorch's side is timed
 * (CUDA events around reps launches on one stream), and how the training step runs its dispatches
 * (kernels/dispatch.ts encodeOps: one pass); timeOpsWarm's per-dispatch timestamps (a pass each)
 * add the passes' own start and end to every dispatch, ~10 µs on the H100, a fifth of a 50 µs
 * product. Ops that are not dispatches (copies, clears) end a pass: those lists are refused here.
 */
export async function timeOpsBackToBack(gpu: Gpu, once: Op[], reps = 20, busyMs = 150): Promise<number> {
  if (once.some((o) => o.kind !== 'dispatch')) throw new Error('timeOpsBackToBack: dispatches only');
  const dev = gpu.device;
  const querySet = dev.createQuerySet({ type: 'timestamp', count: 2, label: 'back-to-back' });
  const resolve = dev.createBuffer({ size: 16, usage: GPUBufferUsage.QUERY_RESOLVE | GPUBufferUsage.COPY_SRC });
  const read = dev.createBuffer({ size: 16, usage: GPUBufferUsage.COPY_DST | GPUBufferUsage.MAP_READ });
  const timed = async (warmReps: number): Promise<number> => {
    const enc = dev.createCommandEncoder();
    for (let i = 0; i < warmReps; i++) encodeOps(enc, once);
    const pass = enc.beginComputePass({ timestampWrites: { querySet, beginningOfPassWriteIndex: 0, endOfPassWriteIndex: 1 } });
    for (let r = 0; r < reps; r++) {
      for (const op of once) {
        if (op.kind !== 'dispatch') continue;
        pass.setPipeline(op.pipeline);
        pass.setBindGroup(0, op.bindGroup);
        pass.dispatchWorkgroups(op.workgroups[0], op.workgroups[1], op.workgroups[2]);
      }
    }
    pass.end();
    enc.resolveQuerySet(querySet, 0, 2, resolve, 0);
    enc.copyBufferToBuffer(resolve, 0, read, 0, 16);
    dev.queue.submit([enc.finish()]);
    await read.mapAsync(GPUMapMode.READ, 0, 16);
    const t = new BigInt64Array(read.getMappedRange(0, 16).slice(0));
    read.unmap();
    return Number(t[1] - t[0]) / 1e6 / reps;
  };
  const estimate = Math.max(1e-3, await timed(0));
  const ms = await timed(Math.ceil(busyMs / estimate));
  querySet.destroy();
  resolve.destroy();
  read.destroy();
  return ms;
}
