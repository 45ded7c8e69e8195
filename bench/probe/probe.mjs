// Probe of the GPU machine's WebGPU adapter: features, subgroup-matrix configs, under several Dawn flag sets.
import { create, globals } from 'webgpu';
Object.assign(globalThis, globals);
const keep = [];
for (const flags of [[], ['enable-dawn-features=allow_unsafe_apis'], ['enable-dawn-features=allow_unsafe_apis', 'disable-dawn-features=vulkan_use_storage_input_output_16']]) {
  const gpu = create(flags); keep.push(gpu);
  const adapter = await gpu.requestAdapter({ powerPreference: 'high-performance' });
  if (!adapter) { console.log(flags, 'no adapter'); continue; }
  const info = adapter.info;
  console.log(JSON.stringify({ flags, vendor: info.vendor, arch: info.architecture, desc: info.description, sgMin: info.subgroupMinSize, sgMax: info.subgroupMaxSize,
    features: [...adapter.features].sort(), configs: info.subgroupMatrixConfigs ? [...info.subgroupMatrixConfigs].map((c) => ({ ...c, M: c.M, N: c.N, K: c.K, componentType: c.componentType, resultComponentType: c.resultComponentType })) : null }));
}
process.exit(0);
