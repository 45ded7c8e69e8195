// Gpu.allocating: buffers made inside it that the device refuses come back as a GpuError naming
// what was being made (the worker wraps building the training programs in it, so running out of
// GPU memory there is reported, not left for a later uncaptured error). A real validation error on
// SwiftShader; out-of-memory through a stand-in device, since no test machine runs out on demand.
import { describe, expect, it } from 'vitest';
import { testGpu } from './helpers/gpu';
import { GpuError, type Gpu } from '../src/engine/gpu/gpu';

describe('Gpu.allocating', () => {
  it('returns what the build made when the device reports nothing', async () => {
    const gpu = await testGpu();
    const t = await gpu.allocating('a tensor', () => gpu.tensor([16], 'ok'));
    expect(t.size).toBe(16);
    gpu.destroyTensor(t);
  });

  it('turns a validation error inside the build into a GpuError', async () => {
    const gpu = await testGpu();
    const bad = () => gpu.device.createBuffer({ size: 16, usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.STORAGE });
    await expect(gpu.allocating('a bad buffer', bad)).rejects.toThrow(/GPU error while making a bad buffer/);
    gpu.checkErrors(); // the error was taken by the scope, not left uncaptured
  });

  it('reports running out of memory with what was being made, and pops its scopes when the build throws', async () => {
    const real = await testGpu();
    const scopes: string[] = [];
    const fake = {
      pushErrorScope: (filter: string) => scopes.push(filter),
      popErrorScope: async () => (scopes.pop() === 'out-of-memory' && oom ? { message: 'Not enough memory left.' } : null),
    };
    let oom = true;
    const gpu: Gpu = Object.create(real, { device: { value: fake } });
    await expect(gpu.allocating('the training programs', () => 1)).rejects.toThrow(/out of GPU memory while making the training programs \(.* in buffers\): Not enough memory left\./);
    expect(scopes).toEqual([]);
    await expect(gpu.allocating('x', () => {
      throw new Error('the build failed');
    })).rejects.toThrow(GpuError); // the device's report comes first
    oom = false;
    await expect(gpu.allocating('x', () => {
      throw new Error('the build failed');
    })).rejects.toThrow('the build failed');
    expect(scopes).toEqual([]);
  });
});
