// Matmul kernel experiments on the GPU machine: bash .gpu/boot.sh node bench/matmul-bench.mjs
// Prints adapter facts (features, subgroup-matrix configs) and TFLOP/s of each kernel variant at the
// models' shapes, with each variant's max error against the production kernel.
import { create, globals } from 'webgpu';
import fs from 'node:fs';
Object.assign(globalThis, globals);
const keep = []; // Dawn aborts when objects it still uses are garbage-collected
const gpu = create(['enable-dawn-features=allow_unsafe_apis']);
const adapter = await gpu.requestAdapter({ powerPreference: 'high-performance' });
const info = adapter.info;
const configs = info.subgroupMatrixConfigs ? [...info.subgroupMatrixConfigs].map((c) => ({ M: c.M, N: c.N, K: c.K, componentType: c.componentType, resultComponentType: c.resultComponentType })) : [];
console.log(JSON.stringify({ desc: info.description, sgMin: info.subgroupMinSize, sgMax: info.subgroupMaxSize, features: [...adapter.features].sort(), configs }));
const want = ['subgroups', 'timestamp-query', 'chromium-experimental-subgroup-matrix', 'shader-f16'].filter((f) => adapter.features.has(f));
const l = adapter.limits;
const device = await adapter.requestDevice({ requiredFeatures: want, requiredLimits: { maxStorageBufferBindingSize: l.maxStorageBufferBindingSize, maxBufferSize: l.maxBufferSize, maxComputeWorkgroupStorageSize: l.maxComputeWorkgroupStorageSize, maxComputeInvocationsPerWorkgroup: l.maxComputeInvocationsPerWorkgroup, maxComputeWorkgroupSizeX: l.maxComputeWorkgroupSizeX } });
device.addEventListener('uncapturederror', (e) => console.log('UNCAPTURED', e.error.message));

function buf(n, data) {
  const b = device.createBuffer({ size: n * 4, usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST });
  if (data) device.queue.writeBuffer(b, 0, data);
  return b;
}
function rand(n, seed) { const a = new Float32Array(n); let s = seed; for (let i = 0; i < n; i++) { s = (s * 1664525 + 1013904223) >>> 0; a[i] = (s / 2 ** 32) - 0.5; } return a; }
async function read(b, n) {
  const r = device.createBuffer({ size: n * 4, usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST });
  const e = device.createCommandEncoder(); e.copyBufferToBuffer(b, 0, r, 0, n * 4); device.queue.submit([e.finish()]);
  await r.mapAsync(GPUMapMode.READ); const out = new Float32Array(r.getMappedRange().slice(0)); r.unmap(); keep.push(r); return out;
}
const pipelines = new Map();
async function pipeline(code, label) {
  if (pipelines.has(code)) return pipelines.get(code);
  device.pushErrorScope('validation');
  const module = device.createShaderModule({ code, label });
  const p = device.createComputePipeline({ layout: 'auto', compute: { module, entryPoint: 'main' }, label });
  const err = await device.popErrorScope();
  const r = err ? { error: err.message.slice(0, 400) } : { p };
  pipelines.set(code, r);
  keep.push(module, p);
  return r;
}
function uniform(words) {
  const u = device.createBuffer({ size: Math.max(16, Math.ceil(words.length / 4) * 16), usage: GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST });
  const ab = new ArrayBuffer(Math.max(16, Math.ceil(words.length / 4) * 16)); const u32 = new Uint32Array(ab); const f = new Float32Array(ab);
  words.forEach((w, i) => { if (typeof w === 'object') f[i] = w.f; else u32[i] = w; });
  device.queue.writeBuffer(u, 0, ab); return u;
}
async function time(p, bufs, wg, reps = 20) {
  { const e = device.createCommandEncoder(); e.clearBuffer(bufs[3]); device.queue.submit([e.finish()]); }
  const bg = device.createBindGroup({ layout: p.getBindGroupLayout(0), entries: bufs.map((b, i) => ({ binding: i, resource: { buffer: b } })) });
  keep.push(bg, p, ...bufs);
  const run = async (n) => {
    const e = device.createCommandEncoder(); const pass = e.beginComputePass(); pass.setPipeline(p); pass.setBindGroup(0, bg);
    for (let i = 0; i < n; i++) pass.dispatchWorkgroups(...wg);
    pass.end(); device.queue.submit([e.finish()]); await device.queue.onSubmittedWorkDone();
  };
  await run(2);
  const t0 = performance.now(); await run(reps); return (performance.now() - t0) / reps;
}
// production-layout params (shaders/matmul.wgsl): plain or transposed B ([N,K] stored)
function prodParams(M, N, K, rows, cols, transB) {
  return [M, N, K, Math.ceil(N / cols), Math.ceil(M / rows), 1, 1, 0, 0, 0, K, 1, transB ? K : 1, transB ? 1 : N, N, 0, 0, 0, 0, 0, 0, 1, transB ? 1 : 0, 0, 0, { f: 1 }];
}
const prodCode = fs.readFileSync(new URL('../shaders/matmul.wgsl', import.meta.url), 'utf8');
const shader = (f) => fs.readFileSync(new URL(`../shaders/${f}.wgsl`, import.meta.url), 'utf8');
const kernels = [{ name: '64x64', code: prodCode, rows: 64, cols: 64 }, { name: '128x128', code: shader('matmul_wide_128x128'), rows: 128, cols: 128 },
  { name: '128x64', code: shader('matmul_wide_128x64'), rows: 128, cols: 64 }, { name: '64x128', code: shader('matmul_wide_64x128'), rows: 64, cols: 128 }];
const shapes = process.env.SMALL ? [[256, 192, 128, false], [130, 70, 40, true], [200, 300, 50, false]] : [
  [4096, 4096, 4096, false],
  // GPT-2 124M at 8 x 256: c_attn, c_fc, mlp c_proj, attn c_proj forward (x W, W [in, out]); their dx (dy W^T); LM head forward (x E^T) and dx (dlogits E)
  [2048, 2304, 768, false], [2048, 3072, 768, false], [2048, 768, 3072, false], [2048, 768, 768, false],
  [2048, 768, 2304, true], [2048, 768, 3072, true], [2048, 3072, 768, true],
  [2048, 50257, 768, true], [2048, 768, 50257, false],
  // SmolLM2-135M: q/o (576), k/v (192), gate/up (1536), down; nn.Linear W [out, in]: forward x W^T, dx dy W
  [2048, 576, 576, true], [2048, 192, 576, true], [2048, 1536, 576, true], [2048, 576, 1536, true], [2048, 576, 1536, false], [2048, 1536, 576, false],
];
const results = [];
for (const [M, N, K, transB] of shapes) {
  const A = buf(M * K, rand(M * K, 1)), B = buf(K * N, rand(K * N, 2)), C = buf(M * N);
  const flops = 2 * M * N * K; let ref = null;
  for (const k of kernels) {
    const pl = await pipeline(k.code, k.name); if (pl.error) { console.log(k.name, 'ERROR', pl.error); continue; }
    const u = uniform(prodParams(M, N, K, k.rows, k.cols, transB)); keep.push(u);
    const ms = await time(pl.p, [u, A, B, C, A], [Math.ceil(N / k.cols), Math.ceil(M / k.rows), 1]);
    const out = await read(C, M * N); let err = 0, mx = 0;
    if (!ref) ref = out; else for (let i = 0; i < out.length; i += 7) { err = Math.max(err, Math.abs(out[i] - ref[i])); mx = Math.max(mx, Math.abs(ref[i])); }
    const row = { kernel: k.name, M, N, K, transB, ms: +ms.toFixed(3), tflops: +(flops / ms / 1e9).toFixed(1), relErr: mx ? +(err / mx).toExponential(2) : 0 };
    results.push(row); console.log(JSON.stringify(row));
  }
  keep.push(A, B, C);
}
if (process.env.OUT) fs.writeFileSync(`${process.env.OUT}/matmul-bench.json`, JSON.stringify({ info: { desc: info.description, configs }, results }, null, 1));
// best variant per shape
const byShape = new Map();
for (const r of results) { const k = `${r.M}x${r.N}x${r.K}${r.transB ? ' tB' : ''}`; if (!byShape.has(k) || byShape.get(k).tflops < r.tflops) byShape.set(k, r); }
for (const [k, r] of byShape) console.log(`best ${k}: ${r.kernel} ${r.tflops} TFLOP/s`);
process.exit(0);
