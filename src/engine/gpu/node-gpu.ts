// navigator.gpu for Node, from the `webgpu` npm package (Dawn). Only Node entry points (CLI,
// tests, benchmarks) import this file; the engine itself never does.
import { Gpu, type GpuOptions } from './gpu';
import { checkTensorCores } from '../kernels/matmul-tc';

const SWIFTSHADER_ICD = '/usr/lib/chromium/vk_swiftshader_icd.json';

// Dawn frees its instance when the GPU object is garbage-collected, and the next event poll then
// aborts the process (a freed mutex in InstanceBase::ProcessEvents). Keep every one alive.
const liveInstances: GPU[] = [];

/**
 * Dawn's toggles for the tensor-core products (kernels/matmul-tc.ts) on NVIDIA's Vulkan driver:
 * shader-f16 is off there unless vulkan_enable_f16_on_nvidia (crbug.com/tint/2164), and the
 * experimental subgroup matrices need allow_unsafe_apis.
 */
export const TENSOR_CORE_DAWN_FEATURES = ['allow_unsafe_apis', 'vulkan_enable_f16_on_nvidia'];

/** Dawn's flags with every enable-dawn-features list merged into one (so a caller's list and ours both hold). */
function mergedDawnFlags(flags: readonly string[]): string[] {
  const enable: string[] = [], rest: string[] = [];
  for (const f of flags) {
    if (f.startsWith('enable-dawn-features=')) enable.push(...f.slice('enable-dawn-features='.length).split(',').filter(Boolean));
    else rest.push(f);
  }
  return enable.length ? [...rest, `enable-dawn-features=${[...new Set(enable)].join(',')}`] : rest;
}

/**
 * navigator.gpu's device in Node. tensorCores: ask Dawn for what the tensor-core products need
 * (TENSOR_CORE_DAWN_FEATURES; the device then has them where the GPU does, and they pass
 * kernels/matmul-tc.ts checkTensorCores).
 */
export async function createNodeGpu(options: Omit<GpuOptions, 'gpu'> & { dawnFlags?: string[]; tensorCores?: boolean } = {}): Promise<Gpu> {
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
  const flags = [...(options.dawnFlags ?? []), ...(options.tensorCores ? [`enable-dawn-features=${TENSOR_CORE_DAWN_FEATURES.join(',')}`] : [])];
  const gpu = webgpu.create(mergedDawnFlags(flags));
  liveInstances.push(gpu);
  const { dawnFlags: _flags, tensorCores: _tc, ...rest } = options;
  const made = await Gpu.create({ ...rest, gpu });
  made.pollsForEvents = true;
  // a driver the tensor-core kernels fail on: every product in f32 (GpuInfo.tensorCoresRefused says why)
  await checkTensorCores(made);
  return made;
}
