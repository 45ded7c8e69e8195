import { describe, expect, it } from 'vitest';
import { testGpu, randArray, expectClose } from './helpers/gpu';
import { add } from '../src/engine/kernels/add';
import { runOps } from '../src/engine/gpu/dispatch';

describe('add kernel', () => {
  it('adds elementwise for sizes that are not multiples of the workgroup', async () => {
    const gpu = await testGpu();
    for (const n of [1, 255, 257, 1000]) {
      const a = randArray(n, 1), b = randArray(n, 2);
      const ta = gpu.tensorFrom(a, [n], 'a'), tb = gpu.tensorFrom(b, [n], 'b'), to = gpu.tensor([n], 'out');
      runOps(gpu, [add(gpu, ta, tb, to)]);
      const got = await gpu.read(to);
      const want = Array.from(a, (x, i) => x + b[i]);
      expectClose(got, want, 1e-6, `add n=${n}`);
    }
    expect(gpu.info.limits.maxStorageBufferBindingSize).toBeGreaterThan(0);
  });
});
