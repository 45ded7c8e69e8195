// Probe: how fast are the H100's 8-bit integer subgroup matrices (Dawn's
// chromium-experimental-subgroup-matrix, the only configs it offers there: i8 x i8 -> i32, M16 N16
// K32 and M16 N8 K32) from WGSL? If fast enough, f32 products could be emulated by sums of exact
// int8 products of slices (the Ozaki scheme); this measures whether that could pay before anything
// is built. C[M, N] (i32) = A[M, K] (i8, row-major) B^T with B stored [N, K] (i8), packed four to
// an i32. Checks a small product exactly against the CPU, then times square ones. Each step is
// logged before the next, since a crash ends the process.
// Found on the H100 (Dawn of webgpu 0.6.2, driver 580.159.04, session 11): every kernel compiles and
// gets its pipeline, then the process crashes at the first submit (segmentation fault or abort), for
// i8 and u8, --tn 16 and 8, storage loads and --wg (workgroup) loads; and the validator counts a
// workgroup load's stride in i32 elements (--wgstride 8 passes it, 32 does not) where the SPIR-V
// writer divides the stride by 4. So no timings: the route is closed on this Dawn and driver.
//   here:        node scripts/node-run.mjs --bundle-only bench/dist bench/probe/subgroup-matrix-i8.ts
//   GPU machine: bash .gpu/boot.sh node bench/dist/subgroup-matrix-i8.mjs [--type i8|u8] [--tn 16|8]
//                [--tiles 1x1x1x1,2x2x1x1] [--wg --wgstride 8]  (one variant per process: a crash ends it)
// @ts-nocheck -- a probe script, bundled like bench/matmul-shapes.ts
import { parseArgs } from 'node:util';
import { create, globals } from 'webgpu';
import { passTimer } from './pass-timer';

// --type u8 / i8; --tn 16 / 8 (the right matrix's N); --tiles 'RMxRNxSGMxSGN,...'
const { values: opt } = parseArgs({ options: { type: { type: 'string' }, tn: { type: 'string' }, tiles: { type: 'string' }, wg: { type: 'boolean' }, wgstride: { type: 'string' } } });
const T8 = opt.type ?? 'i8', T32 = T8 === 'u8' ? 'u32' : 'i32', TN = Number(opt.tn ?? 16);

Object.assign(globalThis, globals);
const webgpu = create(['enable-dawn-features=allow_unsafe_apis', 'disable-dawn-features=timestamp_quantization']);
const adapter = await webgpu.requestAdapter({ powerPreference: 'high-performance' });
const feature = 'chromium-experimental-subgroup-matrix';
if (!adapter?.features.has(feature)) {
  console.log('no subgroup matrices on this adapter');
  process.exit(0);
}
console.log('configs', JSON.stringify([...(adapter.info.subgroupMatrixConfigs ?? [])].map((c) => ({ componentType: c.componentType, resultComponentType: c.resultComponentType, M: c.M, N: c.N, K: c.K }))));
const device = await adapter.requestDevice({
  requiredFeatures: [feature, 'subgroups', 'timestamp-query'],
  requiredLimits: { maxStorageBufferBindingSize: adapter.limits.maxStorageBufferBindingSize, maxBufferSize: adapter.limits.maxBufferSize, maxComputeWorkgroupStorageSize: adapter.limits.maxComputeWorkgroupStorageSize },
});
device.onuncapturederror = (e) => console.error('uncaptured', e.error?.message?.replace(/warning: use of deprecated[^\n]*/g, '').slice(-400));

// Each subgroup: RM x RN result tiles of 16 x 16 (rows x columns); a workgroup: SGM x SGN subgroups.
// `style`: 'flag' = subgroupMatrixLoad<T>(p, offset, colMajor, stride); 'template' = <T, row_major>(p, offset, stride)
const kernel = (RM: number, RN: number, SGM: number, SGN: number, style: 'flag' | 'template') => {
  const load = (T: string, off: string, colMajor: boolean, stride: string, buf: string) =>
    style === 'flag' ? `subgroupMatrixLoad<${T}>(&${buf}, ${off}, ${colMajor}, ${stride})` : `subgroupMatrixLoad<${T}, ${colMajor ? 'col_major' : 'row_major'}>(&${buf}, ${off}, ${stride})`;
  const store = (off: string, v: string) => (style === 'flag' ? `subgroupMatrixStore(&c, ${off}, ${v}, false, params.N)` : `subgroupMatrixStore<row_major>(&c, ${off}, ${v}, params.N)`);
  const L = `subgroup_matrix_left<${T8}, 32, 16>`, R = `subgroup_matrix_right<${T8}, ${TN}, 32>`, Res = `subgroup_matrix_result<${T32}, ${TN}, 16>`;
  const lines = [];
  for (let i = 0; i < RM; i++) for (let j = 0; j < RN; j++) lines.push(`var acc${i}${j} = ${Res}();`);
  const body = [];
  for (let i = 0; i < RM; i++) body.push(`let l${i} = ${load(L, `(m0 + ${16 * i}u) * params.K + k`, false, 'params.K', 'a')};`);
  for (let j = 0; j < RN; j++) body.push(`let r${j} = ${load(R, `(n0 + ${TN * j}u) * params.K + k`, true, 'params.K', 'b')};`);
  for (let i = 0; i < RM; i++) for (let j = 0; j < RN; j++) body.push(`acc${i}${j} = subgroupMatrixMultiplyAccumulate(l${i}, r${j}, acc${i}${j});`);
  const stores = [];
  for (let i = 0; i < RM; i++) for (let j = 0; j < RN; j++) stores.push(store(`(m0 + ${16 * i}u) * params.N + n0 + ${TN * j}u`, `acc${i}${j}`) + ';');
  return /* wgsl */ `
enable chromium_experimental_subgroup_matrix;${SGM * SGN > 1 ? '\nenable subgroups;' : ''}
struct Params { M: u32, N: u32, K: u32 }
@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> a: array<${T32}>;
@group(0) @binding(2) var<storage, read> b: array<${T32}>;
@group(0) @binding(3) var<storage, read_write> c: array<${T32}>;
@compute @workgroup_size(${32 * SGM * SGN})
fn main(@builtin(workgroup_id) wid: vec3<u32>${SGM * SGN > 1 ? ', @builtin(subgroup_id) sg: u32' : ''}) {
  ${SGM * SGN > 1 ? '' : 'let sg = 0u;'}
  let m0 = wid.y * ${16 * RM * SGM}u + (sg / ${SGN}u) * ${16 * RM}u;
  let n0 = wid.x * ${TN * RN * SGN}u + (sg % ${SGN}u) * ${TN * RN}u;
  ${lines.join('\n  ')}
  for (var k = 0u; k < params.K; k += 32u) {
    ${body.join('\n    ')}
  }
  ${stores.join('\n  ')}
}`;
};

// --wg: one subgroup, one 16 x TN result tile, operands staged through workgroup memory as i32s
// and the result stored to workgroup memory before plain stores (another route through the driver).
const kernelWg = () => /* wgsl */ `
enable chromium_experimental_subgroup_matrix;
struct Params { M: u32, N: u32, K: u32 }
@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> a: array<${T32}>;
@group(0) @binding(2) var<storage, read> b: array<${T32}>;
@group(0) @binding(3) var<storage, read_write> c: array<${T32}>;
var<workgroup> ta: array<${T32}, 128>;
var<workgroup> tb: array<${T32}, ${TN * 8}>;
var<workgroup> tc: array<${T32}, ${16 * TN}>;
@compute @workgroup_size(32)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lidx: u32) {
  let m0 = wid.y * 16u;
  let n0 = wid.x * ${TN}u;
  var acc = subgroup_matrix_result<${T32}, ${TN}, 16>();
  for (var k = 0u; k < params.K; k += 32u) {
    for (var i = lidx; i < 128u; i += 32u) { ta[i] = a[((m0 + i / 8u) * params.K + k) / 4u + i % 8u]; }
    for (var i = lidx; i < ${TN * 8}u; i += 32u) { tb[i] = b[((n0 + i / 8u) * params.K + k) / 4u + i % 8u]; }
    workgroupBarrier();
    let l = subgroupMatrixLoad<subgroup_matrix_left<${T8}, 32, 16>, row_major>(&ta, 0u, ${opt.wgstride ?? 32}u);
    let r = subgroupMatrixLoad<subgroup_matrix_right<${T8}, ${TN}, 32>, col_major>(&tb, 0u, ${opt.wgstride ?? 32}u);
    acc = subgroupMatrixMultiplyAccumulate(l, r, acc);
    workgroupBarrier();
  }
  subgroupMatrixStore<row_major>(&tc, 0u, acc, ${TN}u);
  workgroupBarrier();
  for (var i = lidx; i < ${16 * TN}u; i += 32u) { c[(m0 + i / ${TN}u) * params.N + n0 + i % ${TN}u] = tc[i]; }
}`;

const timer = passTimer(device);
const storage = (data: Int32Array | number) => {
  const size = typeof data === 'number' ? data : data.byteLength;
  const buf = device.createBuffer({ size, usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST | GPUBufferUsage.COPY_SRC });
  if (typeof data !== 'number') device.queue.writeBuffer(buf, 0, data);
  return buf;
};
const randI8 = (n: number, seed: number) => {
  let s = seed >>> 0;
  const x = T8 === 'u8' ? new Uint8Array(n) : new Int8Array(n);
  for (let i = 0; i < n; i++) x[i] = ((s = (s * 1664525 + 1013904223) >>> 0) >>> 24) - (T8 === 'u8' ? 0 : 128) || 1;
  return x;
};
async function readI32(buf: GPUBuffer, n: number) {
  const rb = device.createBuffer({ size: n * 4, usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST });
  const enc = device.createCommandEncoder();
  enc.copyBufferToBuffer(buf, 0, rb, 0, n * 4);
  device.queue.submit([enc.finish()]);
  await rb.mapAsync(GPUMapMode.READ);
  const out = new Int32Array(rb.getMappedRange().slice(0));
  rb.unmap();
  return out;
}
async function pipelineFor(code: string) {
  if (process.env.OUT) (await import('node:fs')).writeFileSync(`${process.env.OUT}/last.wgsl`, code);
  const module = device.createShaderModule({ code });
  const info = await module.getCompilationInfo();
  console.log('  module made');
  const errors = info.messages.filter((m) => m.type === 'error');
  if (errors.length) return { error: errors.map((m) => `${m.lineNum}:${m.linePos} ${m.message}`).join('; ') };
  device.pushErrorScope('validation');
  const pipeline = device.createComputePipeline({ layout: 'auto', compute: { module, entryPoint: 'main' } });
  const err = await device.popErrorScope();
  console.log('  pipeline made');
  return err ? { error: err.message } : { pipeline };
}
function setup(pipeline, M: number, N: number, K: number, seed: number) {
  const A = randI8(M * K, seed), B = randI8(N * K, seed + 1);
  const params = device.createBuffer({ size: 16, usage: GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST });
  device.queue.writeBuffer(params, 0, new Uint32Array([M, N, K, 0]));
  const a = storage(new Int32Array(A.buffer)), b = storage(new Int32Array(B.buffer)), c = storage(M * N * 4);
  const bindGroup = device.createBindGroup({ layout: pipeline.getBindGroupLayout(0), entries: [params, a, b, c].map((buffer, binding) => ({ binding, resource: { buffer } })) });
  return { A, B, c, bindGroup };
}
let style: 'flag' | 'template' | null = null;
const results = [];
for (const [RM, RN, SGM, SGN] of (opt.tiles ?? '1x1x1x1,2x2x1x1,2x4x1x1,4x4x1x1,2x2x2x2,4x4x2x2').split(',').map((t) => t.split('x').map(Number))) {
  let built = null;
  for (const s of style ? [style] : (['template'] as const)) {
    console.log(`compiling ${RM}x${RN} tiles/subgroup, ${SGM}x${SGN} subgroups`);
    const r = await pipelineFor(opt.wg ? kernelWg() : kernel(RM, RN, SGM, SGN, s));
    if (r.pipeline) { style = s; built = r.pipeline; break; }
    console.log(`${RM}x${RN} tiles/subgroup, ${SGM}x${SGN} subgroups, ${s} syntax: ${r.error.slice(0, 600)}`);
  }
  if (!built) continue;
  const tileM = 16 * RM * SGM, tileN = TN * RN * SGN;
  // exactness on a small product
  {
    const M = 2 * tileM, N = 2 * tileN, K = 128;
    const { A, B, c, bindGroup } = setup(built, M, N, K, 7);
    console.log('  set up');
    const enc = device.createCommandEncoder();
    const pass = enc.beginComputePass();
    pass.setPipeline(built);
    pass.setBindGroup(0, bindGroup);
    pass.dispatchWorkgroups(N / tileN, M / tileM);
    pass.end();
    device.queue.submit([enc.finish()]);
    console.log('  submitted');
    await device.queue.onSubmittedWorkDone();
    console.log('  done');
    const C = T8 === 'u8' ? new Uint32Array((await readI32(c, M * N)).buffer) : await readI32(c, M * N);
    let bad = 0;
    for (let m = 0; m < M; m++) for (let n = 0; n < N; n++) {
      let s = 0;
      for (let k = 0; k < K; k++) s += A[m * K + k] * B[n * K + k];
      if (C[m * N + n] !== s && bad++ < 3) console.log(`  mismatch at (${m}, ${n}): ${C[m * N + n]} vs ${s}`);
    }
    console.log(`${RM}x${RN} tiles/subgroup, ${SGM}x${SGN} subgroups (${style} syntax): ${M}x${N}x${K} ${bad ? `${bad} WRONG` : 'exact'}`);
  }
  for (const S of [2048, 4096, 8192]) {
    const { bindGroup } = setup(built, S, S, S, 3);
    const us = await timer([{ kind: 'dispatch', label: 'i8 product', pipeline: built, bindGroup, workgroups: [S / tileN, S / tileM, 1] }], S >= 8192 ? 3 : 10);
    const tops = (2 * S ** 3) / (us * 1e6);
    results.push({ RM, RN, SGM, SGN, S, us, tops });
    console.log(`  ${S}^3: ${us.toFixed(1)} us, ${tops.toFixed(0)} TOPS`);
  }
}
if (process.env.OUT) (await import('node:fs')).writeFileSync(`${process.env.OUT}/subgroup-matrix-i8.json`, JSON.stringify(results, null, 1));
process.exit(0);
