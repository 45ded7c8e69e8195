// Probe: how fast can a WGSL f32 matmul go on this GPU? Specialized kernels (contiguous A [M,K],
// B [K,N] or [N,K], dims multiples of the tiles) in several shapes of register tiling, timed with
// timestamp queries, checked against a CPU product on a sample of outputs.
//   here:        node scripts/node-run.mjs --bundle-only bench/dist bench/probe/matmul-variants.ts
//                node bench/dist/matmul-variants.mjs --small --shape=0
//   GPU machine: bash .gpu/boot.sh node bench/dist/matmul-variants.mjs --shape=N (one shape per process)
// @ts-nocheck -- a probe script, bundled like bench/matmul-shapes.ts
import { createNodeGpu } from '../../src/engine/gpu/node-gpu';
import { passTimer } from './pass-timer';
import geluTanh from '../../shaders/gelu_tanh.wgsl?raw';
import engine128Kernel from '../../shaders/matmul_vec4_128x128.wgsl?raw';
import engine128x64Kernel from '../../shaders/matmul_vec4_128x64.wgsl?raw';

// the engine's kernels call geluTanh (kernels/matmul.ts puts its definition in front of each)
const engine128 = geluTanh + engine128Kernel, engine128x64 = geluTanh + engine128x64Kernel;

const small = process.argv.includes('--small');
const only = process.argv.find((a) => a.startsWith('--only='))?.slice(7);
const gpu = await createNodeGpu({ dawnFlags: ['disable-dawn-features=timestamp_quantization', ...(process.argv.includes('--no-robust') ? ['enable-dawn-features=disable_robustness'] : [])] });
const device = gpu.device;
const timer = passTimer(device);
device.onuncapturederror = (e) => console.error('uncaptured', e.error?.message);

/**
 * C[M,N] = A[M,K] @ op(B). Threads TX x TY (16 x 16 unless given); each computes RM x RN outputs as (RM/4)x(RN/4)
 * blocks of 4x4 lying 4*TY rows / 4*TX columns apart. K tiles of BK; the next tile prefetched into
 * registers (vec4 global loads) while the current one is consumed; the inner loop over BK unrolled
 * when `unroll`. transB: B stored [N,K]. warp: the thread grid one 32-lane subgroup covers, rows x
 * columns of threads: '2x16' (lanes in local_invocation_index order, the engine's layout), '4x8' or
 * '8x4' (each subgroup a squarer block of the output tile, so fewer distinct A / B vec4s per load).
 */
function kernel({ RM, RN, BK, unroll, transB, padA = 1, db = false, warp = '2x16', TX = 16, TY = 16 }) {
  const T = TX * TY;
  const BM = TY * RM, BN = TX * RN;
  const QA = BM / 4 + padA, QB = BN / 4 + (transB ? padA : 0); // vec4s per k-row of the staged tiles
  const KQ = BK / 4; // vec4s per tile row along k
  // A tile BM x BK read as vec4 along k: BM*KQ vec4s
  const nA = (BM * KQ) / T, nB = (BN * BK) / 4 / T;
  if (!Number.isInteger(nA) || !Number.isInteger(nB)) throw new Error('tile sizes');
  const bi = [...Array(RM / 4).keys()], bj = [...Array(RN / 4).keys()], c4 = ['x', 'y', 'z', 'w'];
  const buf = db ? 2 : 1;
  let s = `
struct P { M: u32, N: u32, K: u32, tilesN: u32 }
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> a: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> b: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read_write> c: array<vec4<f32>>;
var<workgroup> tA: array<vec4<f32>, ${buf * BK * QA}>;
var<workgroup> tB: array<vec4<f32>, ${buf * BK * QB}>;
@compute @workgroup_size(${TX}, ${TY})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>, @builtin(local_invocation_index) li: u32) {
  ${threadCoords(warp, TX)}
  let mT = wid.y * ${BM}u;
  let nT = wid.x * ${BN}u;
  let K4 = p.K / 4u;
  let N4 = p.N / 4u;
`;
  for (const i of bi) for (const j of bj) for (const r of [0, 1, 2, 3]) s += `  var acc${i}${j}${r} = vec4<f32>(0.0);\n`;
  // slots: A: row = slot / KQ, kq = slot % KQ ; B (n-fast): krow = slot / (BN/4), nq = slot % (BN/4); B (k-fast): like A
  const ga = [], gb = [];
  for (let q = 0; q < nA; q++) {
    s += `  let rA${q} = (li + ${q * T}u) / ${KQ}u; let kA${q} = (li + ${q * T}u) % ${KQ}u;\n`;
    ga.push(q);
  }
  for (let q = 0; q < nB; q++) {
    if (transB) s += `  let rB${q} = (li + ${q * T}u) / ${KQ}u; let kB${q} = (li + ${q * T}u) % ${KQ}u;\n`;
    else s += `  let rB${q} = (li + ${q * T}u) / ${BN / 4}u; let kB${q} = (li + ${q * T}u) % ${BN / 4}u;\n`;
    gb.push(q);
  }
  const loadA = (q, k0) => `a[(mT + rA${q}) * K4 + ${k0} / 4u + kA${q}]`;
  const loadB = (q, k0) => (transB ? `b[(nT + rB${q}) * K4 + ${k0} / 4u + kB${q}]` : `b[(${k0} + rB${q}) * N4 + nT / 4u + kB${q}]`);
  for (const q of ga) s += `  var gA${q} = ${loadA(q, '0u')};\n`;
  for (const q of gb) s += `  var gB${q} = ${loadB(q, '0u')};\n`;
  s += `  let nK = p.K / ${BK}u;\n  for (var t = 0u; t < nK; t++) {\n`;
  const baseA = db ? `(t % 2u) * ${BK * QA}u + ` : '', baseB = db ? `(t % 2u) * ${BK * QB}u + ` : '';
  if (!db) s += `    workgroupBarrier();\n`;
  for (const q of ga) for (const r of [0, 1, 2, 3]) s += `    tA[${baseA}(kA${q} * 4u + ${r}u) * ${QA}u + rA${q} / 4u][rA${q} % 4u] = gA${q}.${c4[r]};\n`;
  for (const q of gb) {
    if (transB) for (const r of [0, 1, 2, 3]) s += `    tB[${baseB}(kB${q} * 4u + ${r}u) * ${QB}u + rB${q} / 4u][rB${q} % 4u] = gB${q}.${c4[r]};\n`;
    else s += `    tB[${baseB}rB${q} * ${QB}u + kB${q}] = gB${q};\n`;
  }
  s += `    workgroupBarrier();\n    if (t + 1u < nK) {\n      let k0 = (t + 1u) * ${BK}u;\n`;
  for (const q of ga) s += `      gA${q} = ${loadA(q, 'k0')};\n`;
  for (const q of gb) s += `      gB${q} = ${loadB(q, 'k0')};\n`;
  s += `    }\n`;
  const body = (k) => {
    let x = '';
    for (const i of bi) x += `      let a${i} = tA[${baseA}${k} * ${QA}u + ${i * TY}u + ty];\n`;
    for (const j of bj) x += `      let b${j} = tB[${baseB}${k} * ${QB}u + ${j * TX}u + tx];\n`;
    for (const i of bi) for (const j of bj) for (const r of [0, 1, 2, 3]) x += `      acc${i}${j}${r} = fma(vec4<f32>(a${i}.${c4[r]}), b${j}, acc${i}${j}${r});\n`;
    return x;
  };
  if (unroll) for (let k = 0; k < BK; k++) s += `    {\n${body(`${k}u`)}    }\n`;
  else s += `    for (var k = 0u; k < ${BK}u; k++) {\n${body('k')}    }\n`;
  s += `  }\n`;
  for (const i of bi) for (const j of bj) for (const r of [0, 1, 2, 3]) {
    s += `  c[(mT + ${i * TY * 4 + r}u + ty * 4u) * N4 + (nT + ${j * TX * 4}u) / 4u + tx] = acc${i}${j}${r};\n`;
  }
  s += `}\n`;
  return { code: s, BM, BN, shared: 16 * buf * BK * (QA + QB) };
}

/** WGSL for the thread's (tx, ty) in the TX-wide grid such that each subgroup of 32 lanes covers `warp` (rows x columns). */
function threadCoords(warp: string, TX: number) {
  const [wr, wc] = warp.split('x').map(Number);
  if (wr * wc !== 32 || TX % wc) throw new Error(`warp ${warp}`);
  const warpsAcross = TX / wc;
  return `let lane = li % 32u; let w = li / 32u;
  let tx = (w % ${warpsAcross}u) * ${wc}u + lane % ${wc}u;
  let ty = (w / ${warpsAcross}u) * ${wr}u + lane / ${wc}u;`;
}

// edits of the engine's kernel: its load checks cut out; its epilogue as four plain stores
const noCheck = (c: string) => c.replace(/checked && /g, 'false && ');
const noStore = (c: string) => c.replace(/fn storeRow[\s\S]*?\n}\n/, `fn storeRow(baseC: u32, m: u32, n0: u32, v: vec4<f32>) {
  let r = baseC + m * params.ldc + n0;
  c[r] = v.x; c[r + 1u] = v.y; c[r + 2u] = v.z; c[r + 3u] = v.w;
}
`);
/** The engine kernel with `lid` (the thread's column and row in the 16 x 16 grid) computed from `from` as `expr`. */
function threadIds(code: string, from: 'lidx' | 'l3', expr: string): string {
  const sig = '@builtin(local_invocation_id) lid: vec3<u32>, @builtin(local_invocation_index) lidx: u32) {\n';
  if (!code.includes(sig)) throw new Error('threadIds: the kernel signature changed');
  const args = from === 'lidx' ? '@builtin(local_invocation_index) lidx: u32) {\n' : '@builtin(local_invocation_id) l3: vec3<u32>, @builtin(local_invocation_index) lidx: u32) {\n';
  return code.replace(sig, `${args}  let lid = ${expr};\n`);
}
const VARIANTS = [
  { name: '128x128 k16', RM: 8, RN: 8, BK: 16, unroll: false },
  { name: '128x128 k16 unroll', RM: 8, RN: 8, BK: 16, unroll: true },
  { name: '128x128 k8 unroll', RM: 8, RN: 8, BK: 8, unroll: true },
  { name: '128x128 k32', RM: 8, RN: 8, BK: 32, unroll: false },
  { name: '128x128 k16 db unroll', RM: 8, RN: 8, BK: 16, unroll: true, db: true },
  { name: '128x128 k8 db unroll', RM: 8, RN: 8, BK: 8, unroll: true, db: true },
  { name: '128x64 k16 unroll', RM: 8, RN: 4, BK: 16, unroll: true },
  { name: '64x128 k16 unroll', RM: 4, RN: 8, BK: 16, unroll: true },
  { name: '64x64 k16 unroll', RM: 4, RN: 4, BK: 16, unroll: true },
  { name: '256x128 k8 unroll', RM: 16, RN: 8, BK: 8, unroll: true },
  { name: '128x256 k8 unroll', RM: 8, RN: 16, BK: 8, unroll: true },
  { name: '128x128 k16 nopad', RM: 8, RN: 8, BK: 16, unroll: true, padA: 0 },
  { name: '128x128 k16 unroll w4x8', RM: 8, RN: 8, BK: 16, unroll: true, warp: '4x8' },
  { name: '128x128 k16 unroll w8x4', RM: 8, RN: 8, BK: 16, unroll: true, warp: '8x4' },
  { name: '128x128 k16 db unroll w4x8', RM: 8, RN: 8, BK: 16, unroll: true, db: true, warp: '4x8' },
  { name: '128x128 k8 unroll w4x8', RM: 8, RN: 8, BK: 8, unroll: true, warp: '4x8' },
  { name: '256x128 k8 unroll w4x8', RM: 16, RN: 8, BK: 8, unroll: true, warp: '4x8' },
  // 128 threads of 16x8 outputs: the 256x128 kernel's work per thread on a 128x128 tile
  { name: '128x128 t128 k8 unroll w4x8', RM: 16, RN: 8, BK: 8, unroll: true, warp: '4x8', TY: 8 },
  { name: '128x128 t128 k16 unroll w4x8', RM: 16, RN: 8, BK: 16, unroll: true, warp: '4x8', TY: 8 },
  { name: '128x128 t128 k8 unroll w8x4', RM: 16, RN: 8, BK: 8, unroll: true, warp: '8x4', TY: 8 },
  { name: '128x128 t128x k8 unroll w4x8', RM: 8, RN: 16, BK: 8, unroll: true, warp: '4x8', TX: 8 },
  { name: '64x128 t64 k16 unroll w4x8', RM: 8, RN: 16, BK: 16, unroll: true, warp: '4x8', TX: 8, TY: 8 },
  // the engine's generated vec4 kernels (Params-driven), as generated and with parts cut out
  { name: 'E 128x128', engine: engine128, BM: 128, BN: 128, BK: 16 },
  { name: 'E 128x128 nostore', engine: engine128, BM: 128, BN: 128, BK: 16, edit: noStore },
  { name: 'E 128x128 nocheck', engine: engine128, BM: 128, BN: 128, BK: 16, edit: noCheck },
  { name: 'E 128x128 noprivate', engine: engine128, BM: 128, BN: 128, BK: 16, edit: (c) => c.replace('var<private> mTile: u32;\nvar<private> nTile: u32;', 'var<workgroup> mTile: u32;\nvar<workgroup> nTile: u32;') },
  // where a thread's outputs lie: from the builtin id (as generated), computed from the index
  // (row-major as generated, or each 32 invocations a 4 x 8 block of the grid), or a (8, 4, 8)
  // workgroup whose builtin ids give the 4 x 8 blocks. Computed ids cost 10-15 % with Dawn's
  // robustness on (its clamps of workgroup-array indices stay), nothing with --no-robust (session 16).
  { name: 'E 128x128 nocheck rowmajor', engine: engine128, BM: 128, BN: 128, BK: 16, edit: (c) => threadIds(noCheck(c), 'lidx', 'vec2<u32>(lidx & 15u, lidx >> 4u)') },
  { name: 'E 128x128 nocheck square', engine: engine128, BM: 128, BN: 128, BK: 16, edit: (c) => threadIds(noCheck(c), 'lidx', 'vec2<u32>(((lidx >> 5u) & 1u) * 8u + (lidx & 7u), ((lidx >> 6u) & 3u) * 4u + ((lidx >> 3u) & 3u))') },
  { name: 'E 128x128 nocheck wg848', engine: engine128, BM: 128, BN: 128, BK: 16, edit: (c) => threadIds(noCheck(c), 'l3', 'vec2<u32>(l3.x + 8u * (l3.z & 1u), l3.y + 4u * (l3.z >> 1u))').replace('@compute @workgroup_size(16, 16)', '@compute @workgroup_size(8, 4, 8)') },
  { name: 'E 128x64', engine: engine128x64, BM: 128, BN: 64, BK: 16 },
  { name: 'E 128x128 nocheck+nostore', engine: engine128, BM: 128, BN: 128, BK: 16, edit: (c) => noStore(noCheck(c)) },
].filter((v) => !only || only.split(',').some((o) => v.name === o || (o.includes('*') && v.name.includes(o.replaceAll('*', '')))));

const SHAPES = small
  ? [['small tB', 256, 256, 64, true], ['small', 256, 256, 64, false]]
  : [
    ['square 4096', 4096, 4096, 4096, false],
    ['gpt2 c_attn fwd', 2048, 2304, 768, false],
    ['gpt2 c_fc fwd', 2048, 3072, 768, false],
    ['gpt2 mlp c_proj fwd', 2048, 768, 3072, false],
    ['gpt2 lm_head fwd tB', 2048, 50432, 768, true],
    ['gpt2 lm_head dx', 2048, 768, 50432, false],
    ['smollm2 gate/up fwd tB', 2048, 1536, 576, true],
  ];
const shapeArg = process.argv.find((a) => a.startsWith('--shape='));
if (shapeArg) SHAPES.splice(0, SHAPES.length, SHAPES[Number(shapeArg.slice(8))]);

function rand(n, seed) {
  const x = new Float32Array(n);
  let s = seed >>> 0;
  for (let i = 0; i < n; i++) { s = (s * 1664525 + 1013904223) >>> 0; x[i] = (s / 2 ** 32) - 0.5; }
  return x;
}
function buffer(data, usage) {
  const b = device.createBuffer({ size: data.byteLength, usage, mappedAtCreation: true });
  new Float32Array(b.getMappedRange()).set(data);
  b.unmap();
  return b;
}
const S = GPUBufferUsage.STORAGE, CS = GPUBufferUsage.COPY_SRC, CD = GPUBufferUsage.COPY_DST;
const reps = small ? 2 : 10;
const results = [];
for (const [what, M, N, K, transB] of SHAPES) {
  const A = rand(M * K, 1), B = rand(K * N, 2);
  const bufA = buffer(A, S), bufB = buffer(B, S);
  const bufC = device.createBuffer({ size: M * N * 4, usage: S | CS });
  const read = device.createBuffer({ size: M * N * 4, usage: GPUBufferUsage.MAP_READ | CD });
  const line = [];
  for (const v of VARIANTS) {
    let code: string, BM: number, BN: number, shared = 0;
    let constants: Record<string, number> | undefined;
    let params: ArrayBuffer;
    if (v.engine) {
      ({ BM, BN } = v);
      code = v.edit ? v.edit(v.engine) : v.engine;
      if (v.edit && code === v.engine) throw new Error(`${v.name}: the edit changed nothing`);
      constants = { K_FAST_A: 1, K_FAST_B: transB ? 1 : 0 };
      const u = new Uint32Array(29);
      // M N K tilesN tilesM batchCount batchInner offA offB offC sAm sAk sBn sBk ldc b* x6 kFastA kFastB acc bias alpha offPre ldPre groupB
      u.set([M, N, K, N / BN, M / BM, 1, 1, 0, 0, 0, K, 1, transB ? K : 1, transB ? 1 : N, N, 0, 0, 0, 0, 0, 0, 1, transB ? 1 : 0, 0, 0]);
      new Float32Array(u.buffer)[25] = 1;
      u[28] = 1; // groupB: B's batch index is the product's own
      params = u.buffer;
    } else {
      const k = kernel({ ...v, transB });
      ({ code, BM, BN, shared } = k);
      params = new Uint32Array([M, N, K, N / BN]).buffer;
    }
    if (M % BM || N % BN || K % v.BK || shared > device.limits.maxComputeWorkgroupStorageSize) { line.push(`${v.name} -`); continue; }
    device.pushErrorScope('validation');
    const module = device.createShaderModule({ code });
    const pipeline = device.createComputePipeline({ layout: 'auto', compute: { module, entryPoint: 'main', constants } });
    const err = await device.popErrorScope();
    if (err) { console.log(v.name, 'ERROR', err.message.slice(0, 400)); line.push(`${v.name} err`); continue; }
    const u = device.createBuffer({ size: Math.ceil(params.byteLength / 16) * 16, usage: GPUBufferUsage.UNIFORM | CD });
    device.queue.writeBuffer(u, 0, params);
    const entries = [u, bufA, bufB, bufC, ...(v.engine && code.includes('bias[') ? [bufA] : []), ...(v.engine && code.includes('pre[') ? [bufA] : [])];
    const bg = device.createBindGroup({ layout: pipeline.getBindGroupLayout(0), entries: entries.map((buffer, binding) => ({ binding, resource: { buffer } })) });
    // ms per product: one pass of `reps` dispatches, best of 3 (bench/probe/pass-timer.ts)
    const best = (await timer([{ kind: 'dispatch', label: v.name, pipeline, bindGroup: bg, workgroups: [N / BN, M / BM, 1] }], reps)) / 1e3;
    // check a sample of outputs
    const enc = device.createCommandEncoder();
    enc.copyBufferToBuffer(bufC, 0, read, 0, M * N * 4);
    device.queue.submit([enc.finish()]);
    await read.mapAsync(GPUMapMode.READ);
    const C = new Float32Array(read.getMappedRange().slice(0));
    read.unmap();
    let maxErr = 0;
    for (let sIdx = 0; sIdx < 64; sIdx++) {
      const m = (sIdx * 7919) % M, n = (sIdx * 104729) % N;
      let ref = 0;
      for (let k = 0; k < K; k++) ref += A[m * K + k] * (transB ? B[n * K + k] : B[k * N + n]);
      maxErr = Math.max(maxErr, Math.abs(ref - C[m * N + n]) / Math.sqrt(K));
    }
    const tflops = (2 * M * N * K) / best / 1e9;
    results.push({ what, M, N, K, transB, variant: v.name, ms: best, tflops, maxErr });
    line.push(`${v.name} ${tflops.toFixed(1)}${maxErr > 1e-4 ? ` BAD(${maxErr.toExponential(1)})` : ''}`);

  }
  console.log(`${what} ${M}x${N}x${K}${transB ? ' tB' : ''}: ${line.join(' | ')}`);
  // (destroying these here crashed Dawn on SwiftShader; left to process exit)
}
if (process.env.OUT) (await import('node:fs')).appendFileSync(`${process.env.OUT}/matmul-variants.jsonl`, results.map((r) => JSON.stringify(r) + '\n').join(''));
process.exit(0);
