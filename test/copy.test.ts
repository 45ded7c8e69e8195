// kernels/copy.ts: a buffer copy as a compute dispatch (inside the compute pass around it), or a
// copyBufferToBuffer where the length is not whole vec4s or tuning.copyKernel is off.
import { describe, expect, it } from 'vitest';
import { testGpu, randArray } from './helpers/gpu';
import { copyOp } from '../src/engine/kernels/copy';
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
});
