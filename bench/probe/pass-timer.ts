// The probes' timer (bench/probe/lora-grad.ts, norms.ts, dispatch-cost.ts, subgroup-matrix-i8.ts):
// bound dispatches repeated back to back in one compute pass, timestamp queries at its two ends
// (Dawn's timestamp quantization off: pass dawnFlags ['disable-dawn-features=timestamp_quantization']
// to createNodeGpu).
import type { Dispatch } from '../../src/engine/gpu/dispatch';

/** A timer over `device`: best of `trials` passes of `reps` repetitions of `ops`, in microseconds per repetition. */
export function passTimer(device: GPUDevice): (ops: readonly Dispatch[], reps: number, trials?: number) => Promise<number> {
  const qs = device.createQuerySet({ type: 'timestamp', count: 2 });
  const qb = device.createBuffer({ size: 16, usage: GPUBufferUsage.QUERY_RESOLVE | GPUBufferUsage.COPY_SRC });
  const qr = device.createBuffer({ size: 16, usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST });
  return async (ops, reps, trials = 3) => {
    let best = Infinity;
    for (let trial = 0; trial < trials; trial++) {
      const enc = device.createCommandEncoder();
      const pass = enc.beginComputePass({ timestampWrites: { querySet: qs, beginningOfPassWriteIndex: 0, endOfPassWriteIndex: 1 } });
      for (let r = 0; r < reps; r++) {
        for (const op of ops) {
          pass.setPipeline(op.pipeline);
          pass.setBindGroup(0, op.bindGroup);
          pass.dispatchWorkgroups(...op.workgroups);
        }
      }
      pass.end();
      enc.resolveQuerySet(qs, 0, 2, qb, 0);
      enc.copyBufferToBuffer(qb, 0, qr, 0, 16);
      device.queue.submit([enc.finish()]);
      await qr.mapAsync(GPUMapMode.READ);
      const t = new BigUint64Array(qr.getMappedRange().slice(0));
      qr.unmap();
      best = Math.min(best, Number(t[1] - t[0]) / 1e3 / reps);
    }
    return best;
  };
}
