// navigator.gpu for Node, from the `webgpu` npm package (Dawn). Only Node entry points (CLI,
// tests, benchmarks) import this file; the engine itself never does.
import { Gpu, type GpuOptions } from './gpu';

const SWIFTSHADER_ICD = '/usr/lib/chromium/vk_swiftshader_icd.json';

// Dawn frees its instance when the GPU object is garbage-collected, and the next event poll then
// aborts the process (a freed mutex in InstanceBase::ProcessEvents). Keep every one alive.
const liveInstances: GPU[] = [];

export async function createNodeGpu(options: Omit<GpuOptions, 'gpu'> & { dawnFlags?: string[] } = {}): Promise<Gpu> {
  // Without a Vulkan driver for a real GPU, Dawn can run on SwiftShader (CPU), which Debian's
  // chromium package ships. Must be set before Dawn creates its Vulkan instance.
  if (!process.env.VK_ICD_FILENAMES && !process.env.VK_DRIVER_FILES) {
    const fs = await import('node:fs');
    if (fs.existsSync(SWIFTSHADER_ICD)) process.env.VK_ICD_FILENAMES = SWIFTSHADER_ICD;
  }
  // SwiftShader's Vulkan ICD complains on stderr at every start when this is unset.
  if (!process.env.XDG_RUNTIME_DIR) {
    const os = await import('node:os');
    process.env.XDG_RUNTIME_DIR = os.tmpdir();
  }
  const webgpu = (await import('webgpu')) as unknown as { create: (flags: string[]) => GPU; globals: Record<string, unknown> };
  Object.assign(globalThis, webgpu.globals);
  const gpu = webgpu.create(options.dawnFlags ?? []);
  liveInstances.push(gpu);
  return Gpu.create({ ...options, gpu });
}
