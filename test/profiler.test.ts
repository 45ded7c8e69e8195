import { describe, expect, it } from 'vitest';
import { testGpu } from './helpers/gpu';
import { bindDispatch, type Op } from '../src/engine/gpu/dispatch';
import { KernelProfiler } from '../src/engine/gpu/profiler';

const ADD_ONE = `
@group(0) @binding(0) var<storage, read_write> x: array<f32>;
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) id: vec3<u32>) {
  if (id.x < arrayLength(&x)) { x[id.x] += 1.0; }
}`;

describe('kernel profiler (timestamp queries)', () => {
  it('times every dispatch, groups layers by label, spans several query sets and keeps the results right', async () => {
    const gpu = await testGpu();
    expect(gpu.hasTimestamps).toBe(true); // SwiftShader and real GPUs here have timestamp-query
    const x = gpu.tensor([100], 'x');
    const ops: Op[] = [{ kind: 'clear', buffer: x.buffer }];
    // 2100 dispatches: 4200 queries, more than one set of 4096 holds
    for (let i = 0; i < 2100; i++) ops.push(bindDispatch(gpu, { label: i % 3 === 0 ? `addOne(layer${i % 2}.a)` : `other`, code: ADD_ONE, buffers: [x], workgroups: [2] }));
    const profiler = new KernelProfiler(gpu);
    const enc = gpu.device.createCommandEncoder();
    profiler.encode(enc, ops);
    gpu.device.queue.submit([enc.finish()]);
    await profiler.collect();
    const table = profiler.table();
    expect(table.map((r) => r.kernel).sort()).toEqual(['addOne(layer#.a)', 'other']);
    expect(table.find((r) => r.kernel === 'other')!.count).toBe(1400);
    expect(table.find((r) => r.kernel === 'addOne(layer#.a)')!.count).toBe(700);
    for (const r of table) expect(r.totalMs).toBeGreaterThan(0);
    expect(table[0].totalMs).toBeGreaterThanOrEqual(table[1].totalMs);
    // the work itself ran in order: every dispatch added one
    const got = await gpu.read(x);
    expect(Array.from(got).every((v) => v === 2100)).toBe(true);
    expect(profiler.dropped).toBe(0);

    // past maxDispatches, dispatches still run but are not timed
    const small = new KernelProfiler(gpu, 5);
    const enc2 = gpu.device.createCommandEncoder();
    small.encode(enc2, ops.slice(1, 9));
    gpu.device.queue.submit([enc2.finish()]);
    await small.collect();
    expect(small.dropped).toBe(3);
    expect(small.table().reduce((s, r) => s + r.count, 0)).toBe(5);
    expect((await gpu.read(x))[0]).toBe(2108);
    profiler.destroy();
    small.destroy();
  });
});
