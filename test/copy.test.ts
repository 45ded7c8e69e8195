// kernels/copy.ts: a buffer copy as a compute dispatch (inside the compute pass around it), or a
// copyBufferToBuffer where the length is not whole vec4s or tuning.copyKernel is off.
import { describe, expect, it } from 'vitest';
import { testGpu, randArray } from './helpers/gpu';
import { copyOp } from '../src/engine/kernels/copy';
import { makeArenas } from '../src/engine/gpu/arena';
import { run } from './helpers/kernel-check';

describe('copy kernel', () => {
  it('copies the first n elements bit for bit, dispatched or as a buffer copy, leaving the rest', async () => {
    const gpu = await testGpu();
    const saved = gpu.tuning.copyKernel;
    try {
      // 4, 1028, 264,000: whole vec4s (1, 2 and 258 workgroups); 7: not whole vec4s (a buffer copy
      // whatever the tuning); the last with the tuning off
      for (const [n, size, kernel] of [[4, 9, true], [1028, 1028, true], [264_000, 264_004, true], [7, 12, true], [1028, 1100, false]] as const) {
        gpu.tuning.copyKernel = kernel;
        const src = randArray(size, n);
        src[0] = NaN; // NaN and -0 survive as they are
        src[1] = -0;
        const dstInit = randArray(size + 3, n + 1, 50);
        const ts = gpu.tensorFrom(src, [size], 'src'), td = gpu.tensorFrom(dstInit, [size + 3], 'dst');
        const op = copyOp(gpu, ts, td, n);
        expect(op.kind, `n=${n}`).toBe(kernel && n % 4 === 0 ? 'dispatch' : 'copy');
        await run(gpu, [op]);
        const got = await gpu.read(td, 'u32');
        const want = new Uint32Array(Float32Array.from([...src.slice(0, n), ...dstInit.slice(n)]).buffer);
        expect(Array.from(got), `n=${n}`).toEqual(Array.from(want));
      }
    } finally {
      gpu.tuning.copyKernel = saved;
    }
  });

  it('copies the common length by default and rejects what does not fit', async () => {
    const gpu = await testGpu();
    const a = gpu.tensorFrom(randArray(8, 3), [8], 'a'), b = gpu.tensor([12], 'b');
    const op = copyOp(gpu, a, b);
    await run(gpu, [op]);
    expect(Array.from((await gpu.read(b)).slice(0, 8))).toEqual(Array.from(await gpu.read(a)));
    expect(() => copyOp(gpu, a, b, 9)).toThrow(/9 elements do not fit/);
    expect(() => copyOp(gpu, a, b, 2.5)).toThrow(/do not fit/);
    expect(() => copyOp(gpu, a, a)).toThrow(/one buffer/);
  });

  it('copies between views of shared buffers (gpu/arena.ts) within their ranges, dispatched or as a buffer copy', async () => {
    const gpu = await testGpu();
    const saved = gpu.tuning.copyKernel;
    try {
      for (const kernel of [true, false]) {
        gpu.tuning.copyKernel = kernel;
        const from = makeArenas(gpu, 'from', [{ shape: [8], label: 'a' }, { shape: [8], label: 'c' }]);
        const to = makeArenas(gpu, 'to', [{ shape: [12], label: 'b' }, { shape: [8], label: 'd' }]);
        const c = randArray(8, 6);
        gpu.write(from.views[1], c);
        const op = copyOp(gpu, from.views[1], to.views[1]);
        expect(op.kind).toBe(kernel ? 'dispatch' : 'copy');
        await run(gpu, [op]);
        const whole = await gpu.read(to.arenas[0].whole);
        expect(Array.from(whole.subarray(64, 72))).toEqual(Array.from(c));
        expect(whole.subarray(0, 64).every((x) => x === 0)).toBe(true);
        expect(whole.subarray(72).every((x) => x === 0)).toBe(true);
        // views of one buffer: refused (WebGPU's usage scope is the whole buffer)
        expect(() => copyOp(gpu, from.views[0], from.views[1])).toThrow(/one buffer/);
        for (const t of [from.arenas[0].whole, to.arenas[0].whole]) gpu.destroyTensor(t);
      }
    } finally {
      gpu.tuning.copyKernel = saved;
    }
  });
});
