// Probe: does Dawn's `vulkan_enable_f16_on_nvidia` toggle give the H100 `shader-f16`, and with it
// f16 subgroup-matrix configurations (tensor cores from WGSL)? Session 11 found ShaderF16 off on
// NVIDIA by Dawn's choice (crbug.com/tint/2164) and only i8 subgroup matrices, which crash; this
// Dawn (webgpu 0.6.2) also has a toggle that turns f16 on there. Prints the adapter's features and
// subgroup-matrix configurations with and without the toggle, then, for each f16 configuration:
// C[M, N] (f32) = A[M, K] B^T (A, B f16, B stored [N, K]) checked against the CPU (f16-rounded
// inputs, f64 sums) and timed at square and GPT-2 shapes. Each step is logged before the next,
// since a crash ends the process.
//   here:        node scripts/node-run.mjs --bundle-only bench/dist bench/probe/subgroup-matrix-f16.ts
//   GPU machine: bash .gpu/boot.sh node bench/dist/subgroup-matrix-f16.mjs [--tiles RMxRNxSGMxSGN,...]
//                [--info] (features and configurations only)
// @ts-nocheck -- a probe script, bundled like bench/matmul-shapes.ts
import { parseArgs } from 'node:util';
import { create, globals } from 'webgpu';
import { passTimer } from './pass-timer';
import { pipelineFor as pipelineOn, readF32 as readOn } from './probe-device';
import { f32ToF16, f16ToF32 } from '../../src/io/safetensors';

const { values: opt } = parseArgs({ options: { tiles: { type: 'string' }, info: { type: 'boolean' }, shapes: { type: 'string' } } });
Object.assign(globalThis, globals);

const feature = 'chromium-experimental-subgroup-matrix';
// Dawn frees an instance when its GPU object is garbage-collected and the next event poll then
// aborts the process (src/engine/gpu/node-gpu.ts): keep every one alive.
const liveInstances = [];
async function describe(flags: string[]) {
  const gpu = create(flags);
  liveInstances.push(gpu);
  const adapter = await gpu.requestAdapter({ powerPreference: 'high-performance' });
  const configs = [...(adapter?.info.subgroupMatrixConfigs ?? [])].map((c) => ({ componentType: c.componentType, resultComponentType: c.resultComponentType, M: c.M, N: c.N, K: c.K }));
  console.log(JSON.stringify({ flags, features: [...(adapter?.features ?? [])].sort(), configs }));
  return { adapter, configs };
}
await describe(['enable-dawn-features=allow_unsafe_apis']);
const { adapter, configs } = await describe(['enable-dawn-features=allow_unsafe_apis,vulkan_enable_f16_on_nvidia', 'disable-dawn-features=timestamp_quantization']);
if (opt.info) process.exit(0);
if (!adapter?.features.has('shader-f16')) {
  console.log('no shader-f16 even with the toggle');
  process.exit(0);
}
const wanted = ['shader-f16', 'subgroups', 'timestamp-query', ...(adapter.features.has(feature) ? [feature] : [])];
const device = await adapter.requestDevice({
  requiredFeatures: wanted,
  requiredLimits: { maxStorageBufferBindingSize: adapter.limits.maxStorageBufferBindingSize, maxBufferSize: adapter.limits.maxBufferSize, maxComputeWorkgroupStorageSize: adapter.limits.maxComputeWorkgroupStorageSize },
});
device.onuncapturederror = (e) => console.error('uncaptured', e.error?.message?.slice(-400));
console.log('device made with', wanted.join(', '));

const timer = passTimer(device);
const pipelineFor = (code: string) => pipelineOn(device, code);
const readF32 = (buf: GPUBuffer, n: number) => readOn(device, buf, n);
const storage = (data: ArrayBufferView | number) => {
  const size = typeof data === 'number' ? data : Math.ceil(data.byteLength / 4) * 4;
  const buf = device.createBuffer({ size, usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST | GPUBufferUsage.COPY_SRC });
  if (typeof data !== 'number') device.queue.writeBuffer(buf, 0, data.buffer, data.byteOffset, size);
  return buf;
};
const randF16 = (n: number, seed: number) => {
  let s = seed >>> 0;
  const x = new Float32Array(n);
  for (let i = 0; i < n; i++) x[i] = (((s = (s * 1664525 + 1013904223) >>> 0) >>> 8) / 2 ** 24 - 0.5) * 2;
  return f32ToF16(x);
};

// 1. shader-f16 alone: y = f32(x) * 2 over f16 storage, read back.
{
  const code = `enable f16;
@group(0) @binding(0) var<storage, read> x: array<vec2<f16>>;
@group(0) @binding(1) var<storage, read_write> y: array<f32>;
@compute @workgroup_size(64) fn main(@builtin(global_invocation_id) g: vec3<u32>) {
  if (g.x < arrayLength(&x)) { let v = vec2<f32>(x[g.x]) * 2.0; y[2u * g.x] = v.x; y[2u * g.x + 1u] = v.y; }
}`;
  const r = await pipelineFor(code);
  console.log('f16 storage kernel: pipeline', r.error ? 'failed' : 'made');
  if (r.error) console.log('f16 storage kernel:', r.error);
  else {
    const X = randF16(1024, 5), x = storage(X), y = storage(4096);
    const bg = device.createBindGroup({ layout: r.pipeline.getBindGroupLayout(0), entries: [x, y].map((buffer, binding) => ({ binding, resource: { buffer } })) });
    const enc = device.createCommandEncoder();
    const pass = enc.beginComputePass();
    pass.setPipeline(r.pipeline);
    pass.setBindGroup(0, bg);
    pass.dispatchWorkgroups(8);
    pass.end();
    device.queue.submit([enc.finish()]);
    console.log('f16 storage kernel: submitted');
    const Y = await readF32(y, 1024), ref = f16ToF32(X);
    let bad = 0;
    for (let i = 0; i < 1024; i++) if (Y[i] !== 2 * ref[i]) bad++;
    console.log(`f16 storage kernel: ${bad ? `${bad} WRONG` : 'exact'}`);
  }
}

// 2. f16 subgroup matrices. Each subgroup: RM x RN result tiles of cfg.M x cfg.N; a workgroup SGM x SGN subgroups.
const kernel = (cfg, RM: number, RN: number, SGM: number, SGN: number) => {
  const L = `subgroup_matrix_left<f16, ${cfg.K}, ${cfg.M}>`, R = `subgroup_matrix_right<f16, ${cfg.N}, ${cfg.K}>`, Res = `subgroup_matrix_result<${cfg.resultComponentType}, ${cfg.N}, ${cfg.M}>`;
  const lines = [], body = [], stores = [];
  for (let i = 0; i < RM; i++) for (let j = 0; j < RN; j++) lines.push(`var acc${i}${j} = ${Res}();`);
  for (let i = 0; i < RM; i++) body.push(`let l${i} = subgroupMatrixLoad<${L}, row_major>(&a, (m0 + ${cfg.M * i}u) * params.K + k, params.K);`);
  for (let j = 0; j < RN; j++) body.push(`let r${j} = subgroupMatrixLoad<${R}, col_major>(&b, (n0 + ${cfg.N * j}u) * params.K + k, params.K);`);
  for (let i = 0; i < RM; i++) for (let j = 0; j < RN; j++) body.push(`acc${i}${j} = subgroupMatrixMultiplyAccumulate(l${i}, r${j}, acc${i}${j});`);
  for (let i = 0; i < RM; i++) for (let j = 0; j < RN; j++) stores.push(`subgroupMatrixStore<row_major>(&c, (m0 + ${cfg.M * i}u) * params.N + n0 + ${cfg.N * j}u, acc${i}${j}, params.N);`);
  return /* wgsl */ `
enable f16;
enable chromium_experimental_subgroup_matrix;${SGM * SGN > 1 ? '\nenable subgroups;' : ''}
struct Params { M: u32, N: u32, K: u32 }
@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> a: array<f16>;
@group(0) @binding(2) var<storage, read> b: array<f16>;
@group(0) @binding(3) var<storage, read_write> c: array<${cfg.resultComponentType}>;
@compute @workgroup_size(${32 * SGM * SGN})
fn main(@builtin(workgroup_id) wid: vec3<u32>${SGM * SGN > 1 ? ', @builtin(subgroup_id) sg: u32' : ''}) {
  ${SGM * SGN > 1 ? '' : 'let sg = 0u;'}
  let m0 = wid.y * ${cfg.M * RM * SGM}u + (sg / ${SGN}u) * ${cfg.M * RM}u;
  let n0 = wid.x * ${cfg.N * RN * SGN}u + (sg % ${SGN}u) * ${cfg.N * RN}u;
  ${lines.join('\n  ')}
  for (var k = 0u; k < params.K; k += ${cfg.K}u) {
    ${body.join('\n    ')}
  }
  ${stores.join('\n  ')}
}`;
};
function setup(pipeline, M: number, N: number, K: number, seed: number) {
  const A = randF16(M * K, seed), B = randF16(N * K, seed + 1);
  const params = device.createBuffer({ size: 16, usage: GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST });
  device.queue.writeBuffer(params, 0, new Uint32Array([M, N, K, 0]));
  const a = storage(A), b = storage(B), c = storage(M * N * 4);
  const bindGroup = device.createBindGroup({ layout: pipeline.getBindGroupLayout(0), entries: [params, a, b, c].map((buffer, binding) => ({ binding, resource: { buffer } })) });
  return { A, B, c, bindGroup };
}
const results = [];
const shapes = (opt.shapes ?? '4096x4096x4096,2048x2304x768,2048x768x768,2048x3072x768,2048x768x3072').split(',').map((s) => s.split('x').map(Number));
for (const cfg of configs.filter((c) => c.componentType === 'f16' && c.resultComponentType === 'f32')) {
  for (const [RM, RN, SGM, SGN] of (opt.tiles ?? '1x1x1x1,2x2x1x1,4x2x1x1,2x2x2x2,4x2x2x2,4x4x2x2').split(',').map((t) => t.split('x').map(Number))) {
    const name = `${cfg.M}x${cfg.N}x${cfg.K} ${RM}x${RN} tiles/subgroup, ${SGM}x${SGN} subgroups`;
    console.log(`compiling ${name}`);
    const r = await pipelineFor(kernel(cfg, RM, RN, SGM, SGN));
    console.log('  pipeline', r.error ? 'failed' : 'made');
    if (r.error) { console.log(`${name}: ${r.error.slice(0, 600)}`); continue; }
    const tileM = cfg.M * RM * SGM, tileN = cfg.N * RN * SGN;
    {
      const M = 2 * tileM, N = 2 * tileN, K = 256;
      const { A, B, c, bindGroup } = setup(r.pipeline, M, N, K, 7);
      const enc = device.createCommandEncoder();
      const pass = enc.beginComputePass();
      pass.setPipeline(r.pipeline);
      pass.setBindGroup(0, bindGroup);
      pass.dispatchWorkgroups(N / tileN, M / tileM);
      pass.end();
      device.queue.submit([enc.finish()]);
      console.log('  submitted');
      const C = await readF32(c, M * N), a = f16ToF32(A), b = f16ToF32(B);
      let worst = 0;
      for (let m = 0; m < M; m++) for (let n = 0; n < N; n++) {
        let s = 0;
        for (let k = 0; k < K; k++) s += a[m * K + k] * b[n * K + k];
        worst = Math.max(worst, Math.abs(C[m * N + n] - s));
      }
      console.log(`${name}: ${M}x${N}x${K} max |error| ${worst.toExponential(2)} (f16 inputs, f64 reference)`);
    }
    for (const [M, N, K] of shapes) {
      if (M % tileM || N % tileN || K % cfg.K) continue;
      const { bindGroup } = setup(r.pipeline, M, N, K, 3);
      const us = await timer([{ kind: 'dispatch', label: 'f16 product', pipeline: r.pipeline, bindGroup, workgroups: [N / tileN, M / tileM, 1] }], M * N * K > 2 ** 34 ? 5 : 20);
      const tflops = (2 * M * N * K) / (us * 1e6);
      results.push({ cfg, RM, RN, SGM, SGN, M, N, K, us, tflops });
      console.log(`  ${M}x${N}x${K}: ${us.toFixed(1)} us, ${tflops.toFixed(1)} TFLOP/s`);
    }
  }
}
if (process.env.OUT) (await import('node:fs')).writeFileSync(`${process.env.OUT}/subgroup-matrix-f16.json`, JSON.stringify(results, null, 1));
process.exit(0);
