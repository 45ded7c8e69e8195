// Probe: an f32 product on tensor cores from WGSL. The operands stay f32 in memory (as every
// tensor of the engine is); each K tile is loaded as vec4<f32>, rounded to f16 as it is staged in
// workgroup memory, and multiplied by f16 subgroup matrices (M16 N16 K16, f32 results) with f32
// accumulation. Needs shader-f16 (Dawn's vulkan_enable_f16_on_nvidia toggle on NVIDIA Vulkan) and
// chromium-experimental-subgroup-matrix (allow_unsafe_apis); see bench/probe/subgroup-matrix-f16.ts.
// Checks each variant against the CPU (f16-rounded inputs, f64 sums), then times it at square and
// GPT-2 / SmolLM2 shapes.
//   here:        node scripts/node-run.mjs --bundle-only bench/dist bench/probe/tensor-core-matmul.ts
//   GPU machine: bash .gpu/boot.sh node bench/dist/tensor-core-matmul.mjs [--only SUBSTR] [--shapes MxNxK,...]
// @ts-nocheck -- a probe script, bundled like bench/matmul-shapes.ts
import { parseArgs } from 'node:util';
import { create, globals } from 'webgpu';
import { passTimer } from './pass-timer';
import { pipelineFor as pipelineOn, readF32 as readOn } from './probe-device';
import { f32ToF16, f16ToF32 } from '../../src/io/safetensors';

const { values: opt } = parseArgs({ options: { only: { type: 'string' }, shapes: { type: 'string' }, reps: { type: 'string' } } });
Object.assign(globalThis, globals);
// Dawn frees an instance when its GPU object is garbage-collected, and the next event poll then
// aborts the process (src/engine/gpu/node-gpu.ts): keep it alive for the whole run, on globalThis
// (a module-level constant used only before an await is not kept alive across it).
globalThis.liveGpuInstance = create(['enable-dawn-features=allow_unsafe_apis,vulkan_enable_f16_on_nvidia', 'disable-dawn-features=timestamp_quantization']);
const adapter = await globalThis.liveGpuInstance.requestAdapter({ powerPreference: 'high-performance' });
const feature = 'chromium-experimental-subgroup-matrix';
if (!adapter?.features.has('shader-f16') || !adapter.features.has(feature)) {
  console.log('needs shader-f16 and subgroup matrices');
  process.exit(0);
}
const device = await adapter.requestDevice({
  requiredFeatures: ['shader-f16', 'subgroups', 'timestamp-query', feature],
  requiredLimits: {
    maxStorageBufferBindingSize: adapter.limits.maxStorageBufferBindingSize, maxBufferSize: adapter.limits.maxBufferSize,
    maxComputeWorkgroupStorageSize: adapter.limits.maxComputeWorkgroupStorageSize,
    maxComputeInvocationsPerWorkgroup: adapter.limits.maxComputeInvocationsPerWorkgroup, maxComputeWorkgroupSizeX: adapter.limits.maxComputeWorkgroupSizeX,
  },
});
device.onuncapturederror = (e) => console.error('uncaptured', e.error?.message?.slice(-600));

interface Variant { name: string; SGM: number; SGN: number; FM: number; FN: number; BK: number; transB: boolean; pad: number }
// Workgroup SGM x SGN subgroups (32 invocations each), each FM x FN fragments of 16 x 16: a tile of
// BM = 16 SGM FM rows by BN = 16 SGN FN columns; K tiles of BK, the next one prefetched into registers.
function kernel(v: Variant) {
  const BM = 16 * v.SGM * v.FM, BN = 16 * v.SGN * v.FN, T = 32 * v.SGM * v.SGN, BK = v.BK;
  const SA = BK + v.pad; // A staged [BM][SA]
  const SB = v.transB ? BK + v.pad : BN + v.pad; // B staged [BN][SB] (stored [N, K]) or [BK][SB] (stored [K, N])
  const aLoads = (BM * BK) / 4 / T, bLoads = (BN * BK) / 4 / T;
  if (!Number.isInteger(aLoads) || !Number.isInteger(bLoads)) throw new Error(`${v.name}: loads do not divide`);
  const L = `subgroup_matrix_left<f16, 16, 16>`, R = `subgroup_matrix_right<f16, 16, 16>`, Res = `subgroup_matrix_result<f32, 16, 16>`;
  const decl = [], pre = [], stage = [], fetch = [], mma = [], store = [];
  for (let i = 0; i < aLoads; i++) {
    // slot s = lidx + i T: row s / (BK / 4), k-quad s % (BK / 4)
    decl.push(`let sa${i} = vec2<u32>((lidx + ${i * T}u) / ${BK / 4}u, (lidx + ${i * T}u) % ${BK / 4}u);`);
    pre.push(`var ra${i} = a[((m0 + sa${i}.x) * params.K + sa${i}.y * 4u) / 4u];`);
    fetch.push(`ra${i} = a[((m0 + sa${i}.x) * params.K + k0 + sa${i}.y * 4u) / 4u];`);
    stage.push(`{ let h = vec4<f16>(ra${i}); let at = sa${i}.x * ${SA}u + sa${i}.y * 4u; tA[at] = h.x; tA[at + 1u] = h.y; tA[at + 2u] = h.z; tA[at + 3u] = h.w; }`);
  }
  for (let i = 0; i < bLoads; i++) {
    if (v.transB) {
      decl.push(`let sb${i} = vec2<u32>((lidx + ${i * T}u) / ${BK / 4}u, (lidx + ${i * T}u) % ${BK / 4}u);`);
      pre.push(`var rb${i} = b[((n0 + sb${i}.x) * params.K + sb${i}.y * 4u) / 4u];`);
      fetch.push(`rb${i} = b[((n0 + sb${i}.x) * params.K + k0 + sb${i}.y * 4u) / 4u];`);
      stage.push(`{ let h = vec4<f16>(rb${i}); let at = sb${i}.x * ${SB}u + sb${i}.y * 4u; tB[at] = h.x; tB[at + 1u] = h.y; tB[at + 2u] = h.z; tB[at + 3u] = h.w; }`);
    } else {
      // slot: k s / (BN / 4), n-quad s % (BN / 4)
      decl.push(`let sb${i} = vec2<u32>((lidx + ${i * T}u) / ${BN / 4}u, (lidx + ${i * T}u) % ${BN / 4}u);`);
      pre.push(`var rb${i} = b[(sb${i}.x * params.N + n0 + sb${i}.y * 4u) / 4u];`);
      fetch.push(`rb${i} = b[((k0 + sb${i}.x) * params.N + n0 + sb${i}.y * 4u) / 4u];`);
      stage.push(`{ let h = vec4<f16>(rb${i}); let at = sb${i}.x * ${SB}u + sb${i}.y * 4u; tB[at] = h.x; tB[at + 1u] = h.y; tB[at + 2u] = h.z; tB[at + 3u] = h.w; }`);
    }
  }
  const accs = [];
  for (let i = 0; i < v.FM; i++) for (let j = 0; j < v.FN; j++) accs.push(`var acc${i}_${j} = ${Res}();`);
  for (let kk = 0; kk < BK; kk += 16) {
    const lines = [];
    for (let i = 0; i < v.FM; i++) lines.push(`let l${i} = subgroupMatrixLoad<${L}, row_major>(&tA, (sm + ${16 * i}u) * ${SA}u + ${kk}u, ${SA}u);`);
    for (let j = 0; j < v.FN; j++) {
      lines.push(v.transB
        ? `let r${j} = subgroupMatrixLoad<${R}, col_major>(&tB, (sn + ${16 * j}u) * ${SB}u + ${kk}u, ${SB}u);`
        : `let r${j} = subgroupMatrixLoad<${R}, row_major>(&tB, ${kk}u * ${SB}u + sn + ${16 * j}u, ${SB}u);`);
    }
    for (let i = 0; i < v.FM; i++) for (let j = 0; j < v.FN; j++) lines.push(`acc${i}_${j} = subgroupMatrixMultiplyAccumulate(l${i}, r${j}, acc${i}_${j});`);
    mma.push(`{\n      ${lines.join('\n      ')}\n    }`);
  }
  for (let i = 0; i < v.FM; i++) for (let j = 0; j < v.FN; j++) store.push(`subgroupMatrixStore<row_major>(&c, (m0 + sm + ${16 * i}u) * params.N + n0 + sn + ${16 * j}u, acc${i}_${j}, params.N);`);
  const code = /* wgsl */ `
enable f16;
enable subgroups;
enable chromium_experimental_subgroup_matrix;
struct Params { M: u32, N: u32, K: u32, tilesN: u32 }
@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> a: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> b: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read_write> c: array<f32>;
var<workgroup> tA: array<f16, ${BM * SA}>;
var<workgroup> tB: array<f16, ${v.transB ? BN * SB : BK * SB}>;
@compute @workgroup_size(${T})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lidx: u32, @builtin(subgroup_id) sg: u32) {
  let m0 = (wid.x / params.tilesN) * ${BM}u;
  let n0 = (wid.x % params.tilesN) * ${BN}u;
  let sm = (sg / ${v.SGN}u) * ${16 * v.FM}u;
  let sn = (sg % ${v.SGN}u) * ${16 * v.FN}u;
  ${decl.join('\n  ')}
  ${pre.join('\n  ')}
  ${accs.join('\n  ')}
  let numK = params.K / ${BK}u;
  for (var t = 0u; t < numK; t++) {
    workgroupBarrier();
    ${stage.join('\n    ')}
    workgroupBarrier();
    if (t + 1u < numK) {
      let k0 = (t + 1u) * ${BK}u;
      ${fetch.join('\n      ')}
    }
    ${mma.join('\n    ')}
  }
  ${store.join('\n  ')}
}`;
  return { code, BM, BN, T, sharedBytes: 2 * (BM * SA + (v.transB ? BN * SB : BK * SB)) };
}

const variants: Variant[] = [];
for (const transB of [true, false]) {
  const t = transB ? 'Bnk' : 'Bkn';
  variants.push(
    { name: `128x128 sg2x4 f4x2 k32 ${t}`, SGM: 2, SGN: 4, FM: 4, FN: 2, BK: 32, transB, pad: 8 },
    { name: `128x128 sg4x2 f2x4 k32 ${t}`, SGM: 4, SGN: 2, FM: 2, FN: 4, BK: 32, transB, pad: 8 },
    { name: `128x128 sg2x2 f4x4 k32 ${t}`, SGM: 2, SGN: 2, FM: 4, FN: 4, BK: 32, transB, pad: 8 },
    { name: `128x128 sg2x4 f4x2 k64 ${t}`, SGM: 2, SGN: 4, FM: 4, FN: 2, BK: 64, transB, pad: 8 },
    { name: `128x64 sg2x2 f4x2 k32 ${t}`, SGM: 2, SGN: 2, FM: 4, FN: 2, BK: 32, transB, pad: 8 },
    { name: `64x64 sg2x2 f2x2 k32 ${t}`, SGM: 2, SGN: 2, FM: 2, FN: 2, BK: 32, transB, pad: 8 },
    { name: `256x128 sg4x2 f4x4 k32 ${t}`, SGM: 4, SGN: 2, FM: 4, FN: 4, BK: 32, transB, pad: 8 },
  );
}

const timer = passTimer(device);
const pipelineFor = (code: string) => pipelineOn(device, code);
const readF32 = (buf: GPUBuffer, n: number) => readOn(device, buf, n);
const storage = (data: Float32Array | number) => {
  const size = typeof data === 'number' ? data : data.byteLength;
  const buf = device.createBuffer({ size, usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST | GPUBufferUsage.COPY_SRC });
  if (typeof data !== 'number') device.queue.writeBuffer(buf, 0, data);
  return buf;
};
const rand = (n: number, seed: number) => {
  let s = seed >>> 0;
  const x = new Float32Array(n);
  for (let i = 0; i < n; i++) x[i] = (((s = (s * 1664525 + 1013904223) >>> 0) >>> 8) / 2 ** 24 - 0.5) * 2;
  return x;
};
function setup(pipeline, M: number, N: number, K: number, BM: number, BN: number, seed: number) {
  const A = rand(M * K, seed), B = rand(N * K, seed + 1);
  const params = device.createBuffer({ size: 16, usage: GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST });
  device.queue.writeBuffer(params, 0, new Uint32Array([M, N, K, N / BN]));
  const a = storage(A), b = storage(B), c = storage(M * N * 4);
  const bindGroup = device.createBindGroup({ layout: pipeline.getBindGroupLayout(0), entries: [params, a, b, c].map((buffer, binding) => ({ binding, resource: { buffer } })) });
  return { A, B, c, bindGroup };
}

const shapes = (opt.shapes ?? '4096x4096x4096,2048x2304x768,2048x768x768,2048x3072x768,2048x768x3072,2048x768x2304,2048x1536x576,2048x576x1536,2048x50304x768').split(',').map((s) => s.split('x').map(Number));
const results = [];
for (const v of variants.filter((x) => !opt.only || opt.only.split(',').some((o) => x.name.includes(o)))) {
  const k = kernel(v);
  if (k.sharedBytes > device.limits.maxComputeWorkgroupStorageSize) { console.log(`${v.name}: ${k.sharedBytes} bytes of workgroup memory`); continue; }
  console.log(`${v.name}: compiling`);
  const r = await pipelineFor(k.code);
  if (r.error) { console.log(`${v.name}: ${r.error.slice(0, 600)}`); continue; }
  {
    const M = 2 * k.BM, N = 2 * k.BN, K = 4 * v.BK;
    const { A, B, c, bindGroup } = setup(r.pipeline, M, N, K, k.BM, k.BN, 7);
    const enc = device.createCommandEncoder();
    const pass = enc.beginComputePass();
    pass.setPipeline(r.pipeline);
    pass.setBindGroup(0, bindGroup);
    pass.dispatchWorkgroups((M / k.BM) * (N / k.BN));
    pass.end();
    device.queue.submit([enc.finish()]);
    const C = await readF32(c, M * N), a = f16ToF32(f32ToF16(A)), b = f16ToF32(f32ToF16(B));
    let worst = 0;
    for (let m = 0; m < M; m++) for (let n = 0; n < N; n++) {
      let s = 0;
      for (let kk = 0; kk < K; kk++) s += a[m * K + kk] * (v.transB ? b[n * K + kk] : b[kk * N + n]);
      worst = Math.max(worst, Math.abs(C[m * N + n] - s));
    }
    console.log(`${v.name}: ${M}x${N}x${K} max |error| ${worst.toExponential(2)}${worst > 1e-3 ? ' WRONG' : ''}`);
  }
  const line = [];
  for (const [M, N, K] of shapes) {
    if (M % k.BM || N % k.BN || K % v.BK) { line.push(`${M}x${N}x${K} -`); continue; }
    const { bindGroup } = setup(r.pipeline, M, N, K, k.BM, k.BN, 3);
    const work = [{ kind: 'dispatch', label: 'tc product', pipeline: r.pipeline, bindGroup, workgroups: [(M / k.BM) * (N / k.BN), 1, 1] }];
    await timer(work, 20, 1); // warm the clocks
    const us = await timer(work, Number(opt.reps ?? (M * N * K > 2 ** 34 ? 10 : 40)));
    const tflops = (2 * M * N * K) / (us * 1e6);
    results.push({ name: v.name, M, N, K, us, tflops });
    line.push(`${M}x${N}x${K} ${tflops.toFixed(1)}`);
  }
  console.log(`  ${line.join(' | ')}`);
}
if (process.env.OUT) (await import('node:fs')).writeFileSync(`${process.env.OUT}/tensor-core-matmul.json`, JSON.stringify(results, null, 1));
process.exit(0);
