// Per-kernel GPU times from timestamp queries. While a profiler is attached to a Gpu
// (gpu.profiler), training steps encode every dispatch in its own compute pass with a timestamp
// at its start and end; collect() reads them back and adds each dispatch's duration to a table
// keyed by its label. Meant for benchmarks: one pass per dispatch costs a little, and Chrome
// quantizes timestamps unless its developer features are on (Dawn in Node: pass
// `disable-dawn-features=timestamp_quantization`).

import type { Gpu } from './gpu';
import { encodeOps, type Op } from './dispatch';

export interface KernelTime {
  /** The dispatch label with layer numbers replaced by '#', so a kernel of every layer is one row. */
  kernel: string;
  totalMs: number;
  count: number;
}

/** Queries in one set: WebGPU's limit. */
const QUERIES_PER_SET = 4096;

export class KernelProfiler {
  /** Query sets, each with its resolve and read buffers; more are made as a step needs them. */
  private readonly sets: { querySet: GPUQuerySet; resolve: GPUBuffer; read: GPUBuffer }[] = [];
  /** Labels of the dispatches whose timestamps are pending, in query order (2 queries each). */
  private pending: string[] = [];
  private readonly totals = new Map<string, { totalMs: number; count: number }>();
  /** Dispatches left unmeasured because `maxDispatches` were pending. */
  dropped = 0;

  constructor(
    private readonly gpu: Gpu,
    /** Dispatches measured between two collect() calls at most. */
    readonly maxDispatches = 16384,
  ) {
    if (!gpu.hasTimestamps) throw new Error('this GPU device has no timestamp-query feature');
  }

  private set(i: number) {
    while (this.sets.length <= i) {
      const n = this.sets.length;
      this.sets.push({
        querySet: this.gpu.device.createQuerySet({ type: 'timestamp', count: QUERIES_PER_SET, label: `kernel-profiler.${n}` }),
        resolve: this.gpu.device.createBuffer({ size: QUERIES_PER_SET * 8, usage: GPUBufferUsage.QUERY_RESOLVE | GPUBufferUsage.COPY_SRC, label: `kernel-profiler.resolve.${n}` }),
        read: this.gpu.device.createBuffer({ size: QUERIES_PER_SET * 8, usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST, label: `kernel-profiler.read.${n}` }),
      });
    }
    return this.sets[i];
  }

  /** Encodes ops like encodeOps, each dispatch in its own timed pass. */
  encode(encoder: GPUCommandEncoder, ops: readonly Op[]): void {
    for (const op of ops) {
      if (op.kind !== 'dispatch') {
        encodeOps(encoder, [op]);
        continue;
      }
      if (op.workgroups.some((w) => w === 0)) continue;
      const i = this.pending.length;
      if (i >= this.maxDispatches) {
        this.dropped++;
        encodeOps(encoder, [op]);
        continue;
      }
      this.pending.push(op.label);
      const q = 2 * i;
      const pass = encoder.beginComputePass({
        timestampWrites: {
          querySet: this.set(Math.floor(q / QUERIES_PER_SET)).querySet,
          beginningOfPassWriteIndex: q % QUERIES_PER_SET,
          endOfPassWriteIndex: (q % QUERIES_PER_SET) + 1,
        },
      });
      pass.setPipeline(op.pipeline);
      pass.setBindGroup(0, op.bindGroup);
      pass.dispatchWorkgroups(...op.workgroups);
      pass.end();
    }
  }

  /** Reads the timestamps of everything encoded since the last call into the totals (after the GPU work was submitted). */
  async collect(): Promise<void> {
    const n = this.pending.length;
    if (n === 0) return;
    const labels = this.pending;
    this.pending = [];
    const queries = 2 * n;
    const used = Math.ceil(queries / QUERIES_PER_SET);
    const enc = this.gpu.device.createCommandEncoder({ label: 'kernel-profiler.collect' });
    for (let s = 0; s < used; s++) {
      const count = Math.min(QUERIES_PER_SET, queries - s * QUERIES_PER_SET);
      const { querySet, resolve, read } = this.set(s);
      enc.resolveQuerySet(querySet, 0, count, resolve, 0);
      enc.copyBufferToBuffer(resolve, 0, read, 0, count * 8);
    }
    this.gpu.device.queue.submit([enc.finish()]);
    const t = new BigUint64Array(queries);
    for (let s = 0; s < used; s++) {
      const count = Math.min(QUERIES_PER_SET, queries - s * QUERIES_PER_SET);
      const { read } = this.set(s);
      await read.mapAsync(GPUMapMode.READ, 0, count * 8);
      t.set(new BigUint64Array(read.getMappedRange(0, count * 8).slice(0)), s * QUERIES_PER_SET);
      read.unmap();
    }
    for (let i = 0; i < n; i++) {
      const ns = t[2 * i + 1] > t[2 * i] ? Number(t[2 * i + 1] - t[2 * i]) : 0;
      const kernel = labels[i].replace(/\d+/g, '#');
      const row = this.totals.get(kernel) ?? { totalMs: 0, count: 0 };
      row.totalMs += ns / 1e6;
      row.count++;
      this.totals.set(kernel, row);
    }
  }

  /** Totals per kernel, largest first. */
  table(): KernelTime[] {
    return [...this.totals].map(([kernel, r]) => ({ kernel, ...r })).sort((a, b) => b.totalMs - a.totalMs);
  }

  reset(): void {
    this.totals.clear();
    this.dropped = 0;
  }

  destroy(): void {
    for (const s of this.sets) {
      s.querySet.destroy();
      s.resolve.destroy();
      s.read.destroy();
    }
    this.sets.length = 0;
  }
}
