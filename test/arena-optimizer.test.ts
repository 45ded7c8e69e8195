// Tensors as views into shared buffers (gpu/arena.ts): the layout, reads and writes of views, a
// kernel bound to a view touching only its range; and the optimizer over shared buffers (one
// clear, norm and AdamW dispatch per buffer) against the same parameters as separate tensors (one
// per tensor), over three steps with clipping active, gaps staying zero.
import { describe, expect, it } from 'vitest';
import { testGpu, randArray } from './helpers/gpu';
import { runOps } from '../src/engine/gpu/dispatch';
import { ARENA_ALIGN, ARENA_MAX_BYTES, arenaLayout, makeArenas } from '../src/engine/gpu/arena';
import { StepUniforms } from '../src/engine/kernels/step-uniforms';
import { sumOfSquares } from '../src/engine/kernels/grad-norm';
import { buildAdamW, optimizerUnits } from '../src/engine/train/optimizer';
import type { ParamArena, TrainableParam } from '../src/engine/peft/method';
import { run } from './helpers/kernel-check';

describe('arenaLayout', () => {
  it('puts each tensor on a 64-element boundary in slots of whole 64s, and starts a buffer past 128 MiB', () => {
    const { buffers } = arenaLayout([1, 64, 65, 0, 200]);
    expect(buffers).toHaveLength(1);
    expect(buffers[0].slots.map((s) => s.offset)).toEqual([0, 64, 128, 256, 320]);
    expect(buffers[0].elements).toBe(320 + 256);
    const big = ARENA_MAX_BYTES / 4 / 2; // half a buffer each
    // a 10-element slot still fits the first buffer exactly; a 100-element one (two slots) does not
    expect(arenaLayout([big, big - ARENA_ALIGN, 10]).buffers.map((b) => b.elements * 4)).toEqual([ARENA_MAX_BYTES]);
    const split = arenaLayout([big, big - ARENA_ALIGN, 100, 3 * big]);
    expect(split.buffers.map((b) => b.slots.map((s) => s.index))).toEqual([[0, 1], [2], [3]]);
    expect(split.buffers[0].elements * 4).toBe(ARENA_MAX_BYTES - ARENA_ALIGN * 4);
    // a tensor larger than the limit gets a buffer of its own
    expect(split.buffers[2].elements).toBe(3 * big);
  });
});

describe('views into a shared buffer', () => {
  it('read and write their own range; kernels bound to a view see only it; views cannot be destroyed alone', async () => {
    const gpu = await testGpu();
    const { arenas, views } = makeArenas(gpu, 'arena', [{ shape: [3, 5], label: 'a' }, { shape: [70], label: 'b' }, { shape: [1], label: 'c' }]);
    expect(arenas).toHaveLength(1);
    expect(views.map((v) => v.offset)).toEqual([0, 64, 192]);
    const a = randArray(15, 1, 1), b = randArray(70, 2, 1);
    gpu.write(views[0], a);
    gpu.write(views[1], b);
    gpu.write(views[2], new Float32Array([5]));
    expect(Array.from(await gpu.read(views[1]))).toEqual(Array.from(b));
    const whole = await gpu.read(arenas[0].whole);
    expect(whole.length).toBe(256);
    expect(Array.from(whole.subarray(0, 15))).toEqual(Array.from(a));
    expect(whole.subarray(15, 64).every((x) => x === 0)).toBe(true);
    expect(whole[192]).toBe(5);
    expect(() => gpu.write(views[2], new Float32Array(2))).toThrow(/overrun/);
    // sum of squares of view b alone (the kernel reads its binding from index 0)
    const out = gpu.tensor([1], 'out');
    await run(gpu, [sumOfSquares(gpu, { x: views[1], n: 70, out, outIndex: 0 })]);
    const want = b.reduce((s, x) => s + x * x, 0);
    expect(Math.abs((await gpu.read(out))[0] - want)).toBeLessThan(1e-4 * want);
    expect(() => gpu.destroyTensor(views[0])).toThrow(/view/);
    gpu.destroyTensor(arenas[0].whole);
  });
});

describe('AdamW over shared buffers', () => {
  it('updates, norms and clips exactly as per tensor (3 steps, clipping on), leaving the gaps zero', async () => {
    const gpu = await testGpu();
    const shapes = [[4, 30], [50, 4], [4, 7], [9, 4]];
    const specs = shapes.map((shape, i) => ({ shape, label: `p${i}` }));
    const kinds = ['value', 'grad', 'm', 'v'].map((k) => makeArenas(gpu, k, specs));
    const arena: ParamArena = { value: kinds[0].arenas[0].whole, grad: kinds[1].arenas[0].whole, m: kinds[2].arenas[0].whole, v: kinds[3].arenas[0].whole, count: shapes.length };
    const shared: TrainableParam[] = shapes.map((shape, i) => ({ name: `p${i}`, shape, value: kinds[0].views[i], grad: kinds[1].views[i], m: kinds[2].views[i], v: kinds[3].views[i], arena }));
    const separate: TrainableParam[] = shapes.map((shape, i) => ({ name: `p${i}`, shape, value: gpu.tensor(shape, `s${i}`), grad: gpu.tensor(shape, `s${i}.grad`), m: gpu.tensor(shape, `s${i}.m`), v: gpu.tensor(shape, `s${i}.v`) }));
    expect(optimizerUnits(shared)).toEqual([arena]);
    // a subset of an arena's parameters is updated per tensor (the rest of the buffer is not theirs)
    expect(optimizerUnits(shared.slice(1))).toEqual(shared.slice(1));
    const step = new StepUniforms(gpu);
    const optShared = buildAdamW(gpu, shared, step, 0.5);
    const optSeparate = buildAdamW(gpu, separate, step, 0.5);
    expect(optShared.update.length).toBe(3);
    expect(optSeparate.update.length).toBe(2 * shapes.length + 1);
    shapes.forEach((_, i) => {
      const init = randArray(shared[i].value.size, 10 + i, 1);
      gpu.write(shared[i].value, init);
      gpu.write(separate[i].value, init);
    });
    for (let s = 1; s <= 3; s++) {
      step.write({ lr: 1e-2, beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 0.01, step: s, seed: s });
      runOps(gpu, [...optShared.zeroGrads, ...optSeparate.zeroGrads]);
      shapes.forEach((_, i) => {
        const g = randArray(shared[i].grad.size, 100 * s + i, 2);
        gpu.write(shared[i].grad, g);
        gpu.write(separate[i].grad, g);
      });
      runOps(gpu, [...optShared.update, ...optSeparate.update]);
      const [cs, cp] = [await gpu.read(optShared.clip), await gpu.read(optSeparate.clip)];
      expect(cs[1]).toBeLessThan(1); // clipping is on
      expect(Math.abs(cs[0] - cp[0])).toBeLessThan(1e-5 * cp[0]);
      expect(Math.abs(cs[1] - cp[1])).toBeLessThan(1e-5);
      for (let i = 0; i < shapes.length; i++) {
        for (const k of ['value', 'm', 'v'] as const) {
          const [a, b] = [await gpu.read(shared[i][k]), await gpu.read(separate[i][k])];
          const scale = Math.max(...Array.from(b, Math.abs));
          for (let j = 0; j < a.length; j++) expect(Math.abs(a[j] - b[j]), `step ${s} p${i} ${k}[${j}]`).toBeLessThanOrEqual(1e-5 * scale);
        }
      }
    }
    // the gaps between the slots are still zero in every buffer
    for (const t of [arena.value, arena.grad, arena.m, arena.v]) {
      const all = await gpu.read(t);
      const used = new Set<number>();
      shared.forEach((p) => { for (let j = 0; j < p.value.size; j++) used.add(p.value.offset + j); });
      all.forEach((x, j) => { if (!used.has(j)) expect(x, `${t.label}[${j}]`).toBe(0); });
    }
    optShared.destroy();
    optSeparate.destroy();
  });
});
