// Generates shaders/matmul_wide_*.wgsl: register-tiled f32 matmuls with the Params, strides and
// batching of shaders/matmul.wgsl, for large outputs. 256 threads (16 x 16) per workgroup; each
// thread computes TM x TN outputs as (TM/4) x (TN/4) blocks of 4x4 that lie 64 rows / columns apart,
// so the staged tiles are read as conflict-free vec4s; K is walked in tiles of TK, the next tile
// prefetched into registers while the current one is consumed. Every kernel takes the
// pipeline-overridable TRIANGLE of shaders/matmul.wgsl (causal attention's products, kernels/
// matmul.ts MatmulArgs.triangle): the K tiles a workgroup walks, or whether it runs at all, cut to
// the triangle that matters (TRIANGLE_DOC below); and its GELU_A / GELU_GRAD (GPT-2's MLP with its
// GELU fused in, kernels/matmul.ts MatmulArgs.geluA / geluGradOf: GELU_DOC below).
//   node scripts/gen-matmul-wide.mjs   → rewrites every variant in WIDE_VARIANTS
export const WIDE_VARIANTS = [
  { name: 'matmul_wide_128x128', TM: 8, TN: 8, TK: 16 },
  { name: 'matmul_wide_128x64', TM: 8, TN: 4, TK: 16 },
  { name: 'matmul_wide_64x128', TM: 4, TN: 8, TK: 16 },
  // double-buffered staging, one barrier per K tile instead of two: 2-5% faster than 64x64 at
  // 2048 x 768 outputs on the H100; the double-buffered 128-tiles were slower than single (dropped)
  { name: 'matmul_db_64x64', TM: 4, TN: 4, TK: 16, db: true },
];

// What both kernel families share: the Params (as shaders/matmul.wgsl's), the epilogue, the tile
// and batch a workgroup owns, and the TM x TN accumulators of a thread as (TM/4) x (TN/4) blocks of
// 4x4 lying 64 rows / columns apart.
const PARAMS_STRUCT = `struct Params {
  M: u32, N: u32, K: u32, tilesN: u32, tilesM: u32, batchCount: u32, batchInner: u32,
  offA: u32, offB: u32, offC: u32, strideAm: u32, strideAk: u32, strideBn: u32, strideBk: u32, ldc: u32,
  batchA0: u32, batchA1: u32, batchB0: u32, batchB1: u32, batchC0: u32, batchC1: u32,
  kFastA: u32, kFastB: u32, accumulate: u32, hasBias: u32, alpha: f32, offPre: u32, ldPre: u32, groupB: u32,
}
`;
const STORE_ROW = `fn storeRow(baseC: u32, m: u32, n0: u32, v: vec4<f32>) {
  if (m >= params.M) { return; }
  let rowBase = baseC + m * params.ldc;
  for (var j = 0u; j < 4u; j++) {
    let n = n0 + j;
    if (n >= params.N) { return; }
    var x = params.alpha * v[j];
    if (params.accumulate != 0u) { x += c[rowBase + n]; }
    if (params.hasBias != 0u) { x += bias[n]; }
    if (GELU_GRAD) { x *= geluTanhGrad(pre[params.offPre + m * params.ldPre + n]); }
    c[rowBase + n] = x;
  }
}
`;
// storeRow for a C of vec4s (the _c4 kernels: N, ldc, offC and C's batch strides multiples of 4,
// so a thread's 4 consecutive outputs are one vec4 of C, wholly inside C or wholly outside): one
// load and one store where storeRow makes four, in storeRow's order of operations.
const STORE_ROW_C4 = `fn storeRow(baseC: u32, m: u32, n0: u32, v: vec4<f32>) {
  if (m >= params.M || n0 >= params.N) { return; }
  let at = (baseC + m * params.ldc + n0) >> 2u;
  var x = params.alpha * v;
  if (params.accumulate != 0u) { x += c[at]; }
  if (params.hasBias != 0u) { x += vec4<f32>(bias[n0], bias[n0 + 1u], bias[n0 + 2u], bias[n0 + 3u]); }
  if (GELU_GRAD) { x *= geluGradRow(m, n0); }
  c[at] = x;
}
`;
// The vec4 kernels' epilogue under GELU_GRAD for whole tiles (CHECKED false: no bounds to check).
// storeRow reads gelu'(pre) one element at a time between its stores, which the compiler keeps in
// order (the buffers may alias): a memory round trip per element, half a millisecond per GPT-2
// step in mlp.c_proj.dx on the H100. Here each block of 4 x 4 outputs issues its reads before it
// computes and stores, in storeRow's order of operations (alpha * sum, + C, + bias, * gelu'). Only
// under GELU_GRAD: every epilogue batched this way made the other products 0.1-0.4 ms slower.
// c4: C bound as vec4s (the _c4 kernels, STORE_ROW_C4; i is then a multiple of 4).
const geluGradHelpers = (c4) => (c4
  ? `fn cRow(i: u32) -> vec4<f32> { return c[i >> 2u]; }
fn storeRow4(i: u32, v: vec4<f32>) {
  c[i >> 2u] = v;
}
`
  : `fn cRow(i: u32) -> vec4<f32> { return vec4<f32>(c[i], c[i + 1u], c[i + 2u], c[i + 3u]); }
fn storeRow4(i: u32, v: vec4<f32>) {
  c[i] = v.x;
  c[i + 1u] = v.y;
  c[i + 2u] = v.z;
  c[i + 3u] = v.w;
}
`) + `fn geluGradRow(m: u32, n0: u32) -> vec4<f32> {
  let p = params.offPre + m * params.ldPre + n0;
  return vec4<f32>(geluTanhGrad(pre[p]), geluTanhGrad(pre[p + 1u]), geluTanhGrad(pre[p + 2u]), geluTanhGrad(pre[p + 3u]));
}
`;
function geluGradWholeTileStore(TM, TN, acc) {
  const bi = [...Array(TM / 4).keys()], bj = [...Array(TN / 4).keys()], four = [0, 1, 2, 3];
  let x = '';
  for (const i of bi) for (const j of bj) {
    x += `  {\n    let m0 = mTile + ${i * 64}u + lid.y * 4u;\n    let n0 = nTile + ${j * 64}u + lid.x * 4u;\n    let i0 = baseC + m0 * params.ldc + n0;\n`;
    x += `    var c0 = vec4<f32>(0.0);\n    var c1 = vec4<f32>(0.0);\n    var c2 = vec4<f32>(0.0);\n    var c3 = vec4<f32>(0.0);\n`;
    x += `    if (params.accumulate != 0u) {\n${four.map((r) => `      c${r} = cRow(i0 + ${r}u * params.ldc);\n`).join('')}    }\n`;
    x += `    var bn = vec4<f32>(0.0);\n    if (params.hasBias != 0u) { bn = vec4<f32>(bias[n0], bias[n0 + 1u], bias[n0 + 2u], bias[n0 + 3u]); }\n`;
    for (const r of four) x += `    let g${r} = geluGradRow(m0 + ${r}u, n0);\n`;
    for (const r of four) x += `    storeRow4(i0 + ${r}u * params.ldc, ((params.alpha * ${acc(i, j, r)} + c${r}) + bn) * g${r});\n`;
    x += `  }\n`;
  }
  return x;
}
// The override selecting a triangle, as in shaders/matmul.wgsl.
const TRIANGLE_DOC = `// Causal products (kernels/matmul.ts MatmulArgs.triangle), decided per workgroup (uniform):
// 0 full product (the default); 1 lowerA: op(A)[m][k] = 0 for k > m, a tile of rows [m0, m0 + BM)
// walks only the K tiles below m0 + BM; 2 upperA: op(A)[m][k] = 0 for k < m, it starts at the K
// tile holding m0; 3 lowerC: only C[m][n] with n <= m wanted, a tile wholly above the diagonal
// (n0 > m0 + BM - 1) returns without writing, the others write their whole tile.
override TRIANGLE: u32 = 0u;
`;
// The fused GELU of shaders/matmul.wgsl: the overrides; geluTanh / geluTanhGrad come from
// shaders/gelu_tanh.wgsl, which kernels/matmul.ts puts in front of every matmul shader (the
// separate GELU kernels use the same file). opA is what a staged vec4 of A becomes.
const GELU_DOC = `// GPT-2's GELU (tanh form) fused in (false, the default, leaves it out): GELU_A: op(A) = gelu(stored
// A), applied as A is staged (gelu(0) = 0 keeps the padding zero); GELU_GRAD: the finished value
// (alpha * sum (+ C) (+ bias)) times gelu'(pre[offPre + m * ldPre + n]) (unbatched products only).
// geluTanh / geluTanhGrad: shaders/gelu_tanh.wgsl, put in front of this file by kernels/matmul.ts.
override GELU_A: bool = false;
override GELU_GRAD: bool = false;

fn opA(v: vec4<f32>) -> vec4<f32> {
  if (GELU_A) { return vec4<f32>(geluTanh(v.x), geluTanh(v.y), geluTanh(v.z), geluTanh(v.w)); }
  return v;
}

`;
// Attention's softmax backward fused into dP's product (kernels/matmul.ts MatmulArgs.softmaxGradOf):
// the override and the epilogue's helpers. `pre` holds P laid out as C, `bias` the row terms.
const SOFTMAX_DOC = `// SOFTMAX_GRAD (false, the default, leaves it out): the softmax backward of attention fused into
// dP's product: C[m][n] = alpha * P[m][n] * (sum - delta[m]), with P = pre at C's own index and
// delta = bias[z * M + m] (batch entry z; the bias binding, the product has no bias then). With
// TRIANGLE 3 (lowerC) a tile wholly above the diagonal writes zeros there instead of returning (P
// is 0 there, and the causal products that read dS next may read such a tile inside their diagonal
// blocks).
override SOFTMAX_GRAD: bool = false;

`;
// Its epilogue reads each 4 x 4 block's P and delta before any store (reads between stores stay in
// order: the buffers may alias), checked against M and N. c4: C bound as vec4s (i a multiple of 4).
const softmaxGradHelpers = (c4) => `// P[m][n0 .. n0 + 3] at C's index i, zero outside C.
fn probsRow(i: u32, m: u32, n0: u32) -> vec4<f32> {
  var p = vec4<f32>(0.0);
  if (m < params.M) {
    for (var j = 0u; j < 4u; j++) { if (n0 + j < params.N) { p[j] = pre[i + j]; } }
  }
  return p;
}
// delta[at + m0 .. at + m0 + 3] (SOFTMAX_GRAD's row terms), zero past M.
fn rowTerms4(at: u32, m0: u32) -> vec4<f32> {
  var d = vec4<f32>(0.0);
  for (var r = 0u; r < 4u; r++) { if (m0 + r < params.M) { d[r] = bias[at + m0 + r]; } }
  return d;
}
${c4
  ? `fn storeRowChecked(i: u32, m: u32, n0: u32, x: vec4<f32>) {
  if (m < params.M && n0 < params.N) { c[i >> 2u] = x; }
}`
  : `fn storeRowChecked(i: u32, m: u32, n0: u32, x: vec4<f32>) {
  if (m >= params.M) { return; }
  for (var j = 0u; j < 4u; j++) { if (n0 + j < params.N) { c[i + j] = x[j]; } }
}`}
`;
/** SOFTMAX_GRAD's stores of a thread's TM x TN outputs (`zero`: the zeros of a tile above the diagonal), block by block. */
function softmaxGradStore(TM, TN, acc, zero) {
  const bi = [...Array(TM / 4).keys()], bj = [...Array(TN / 4).keys()], four = [0, 1, 2, 3], comp = ['x', 'y', 'z', 'w'];
  let x = '';
  for (const i of bi) for (const j of bj) {
    x += `  {\n    let m0 = mTile + ${i * 64}u + lid.y * 4u;\n    let n0 = nTile + ${j * 64}u + lid.x * 4u;\n    let i0 = baseC + m0 * params.ldc + n0;\n`;
    if (zero) {
      for (const r of four) x += `    storeRowChecked(i0 + ${r}u * params.ldc, m0 + ${r}u, n0, vec4<f32>(0.0));\n`;
    } else {
      for (const r of four) x += `    let p${r} = probsRow(i0 + ${r}u * params.ldc, m0 + ${r}u, n0);\n`;
      x += `    let d = rowTerms4(z * params.M, m0);\n`;
      for (const r of four) x += `    storeRowChecked(i0 + ${r}u * params.ldc, m0 + ${r}u, n0, params.alpha * p${r} * (${acc(i, j, r)} - vec4<f32>(d.${comp[r]})));\n`;
    }
    x += `  }\n`;
  }
  return x;
}
// The vec4 kernels' load checks: with both the checked and the unchecked loads in the K loop
// (taken by a uniform branch) the kernel ran GPT-2's c_fc forward at 30.6 TFLOP/s on the H100, with
// only the unchecked ones at 39.9 (bench/probe/matmul-variants.ts, 'E 128x128 nocheck'), though
// that shape never takes the checked branch. So the host picks: CHECKED false when M and N are
// multiples of the tile and K of the K tile (no load can leave the matrix).
const CHECKED_DOC = `// false: the caller promises M and N multiples of the output tile and K a multiple of the K tile,
// so no load is checked (kernels/matmul.ts sets it; the checks' mere presence slowed the K loop).
override CHECKED: bool = true;
`;
const PRE_BINDING = `// GELU_GRAD's pre-activations: bound to \`a\` by the wrapper when GELU_GRAD is off (then never read).
@group(0) @binding(5) var<storage, read> pre: array<f32>;
`;
/**
 * main()'s opening: the folded (tileN, tileM, batch) index, mTile / nTile (local lets, or the
 * module-scope privates set from the local tileM / tileN), the batch bases, lowerC's exit and the
 * K tiles [tBegin, tEnd) the workgroup walks (of numKTiles). Everything the exit and the loop
 * bounds use is a local let, so uniformity analysis sees them uniform (a module-scope private is not).
 */
function mainPreamble(BM, BN, TK, localTiles, zeroTile) {
  const tiles = localTiles
    ? `  let mTile = (inMatrix / params.tilesN) * ${BM}u;
  let nTile = (inMatrix % params.tilesN) * ${BN}u;
  let tileM = mTile;
  let tileN = nTile;
`
    : `  let tileM = (inMatrix / params.tilesN) * ${BM}u;
  let tileN = (inMatrix % params.tilesN) * ${BN}u;
  mTile = tileM;
  nTile = tileN;
`;
  return `@compute @workgroup_size(16, 16)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_id) lid: vec3<u32>, @builtin(local_invocation_index) lidx: u32) {
  // folded 1-D list of (tileN, tileM, batch) triples, as in shaders/matmul.wgsl
  let linear = wid.x + nwg.x * (wid.y + nwg.y * wid.z);
  let tilesPerMatrix = params.tilesN * params.tilesM;
  let z = linear / tilesPerMatrix;
  if (z >= params.batchCount) { return; }
  let inMatrix = linear % tilesPerMatrix;
${tiles}  let zOuter = z / params.batchInner;
  let zInner = z % params.batchInner;
  let baseA = params.offA + zOuter * params.batchA0 + zInner * params.batchA1;
  let baseB = params.offB + zOuter * params.batchB0 + (zInner / params.groupB) * params.batchB1;
  let baseC = params.offC + zOuter * params.batchC0 + zInner * params.batchC1;
  if (TRIANGLE == 3u && tileN > tileM + ${BM - 1}u) { // wholly above the diagonal
    if (SOFTMAX_GRAD) {
${zeroTile.replace(/^(?=.)/gm, '    ')}    }
    return;
  }
  // the K tiles [tBegin, tEnd) this workgroup walks: all of them unless TRIANGLE cuts them
  let numKTiles = (params.K + ${TK - 1}u) / ${TK}u;
  let tBegin = select(0u, tileM / ${TK}u, TRIANGLE == 2u);
  let tEnd = select(numKTiles, min(numKTiles, (tileM + ${BM + TK - 1}u) / ${TK}u), TRIANGLE == 1u);
`;
}
/** A thread's accumulators: their names, declarations and the stores through storeRow. */
function accumulators(TM, TN) {
  const bi = [...Array(TM / 4).keys()], bj = [...Array(TN / 4).keys()], four = [0, 1, 2, 3];
  const comp = ['x', 'y', 'z', 'w'];
  const acc = (i, j, r) => `acc${i}${j}${r}`;
  let decl = '', store = '';
  for (const i of bi) for (const j of bj) for (const r of four) decl += `  var ${acc(i, j, r)} = vec4<f32>(0.0);\n`;
  for (const i of bi) for (const j of bj) for (const r of four) store += `  storeRow(baseC, mTile + ${i * 64 + r}u + lid.y * 4u, nTile + ${j * 64}u + lid.x * 4u, ${acc(i, j, r)});\n`;
  return { bi, bj, four, comp, acc, decl, store };
}

export function wideMatmulWgsl({ TM, TN, TK, db = false }) {
  const BM = 16 * TM, BN = 16 * TN;
  const QA = BM / 4, QB = BN / 4; // vec4 quads per k-row of each staged tile
  const slotsA = (TK * QA) / 256, slotsB = (TK * QB) / 256;
  if (!Number.isInteger(slotsA) || !Number.isInteger(slotsB)) throw new Error('TK * tile must be a multiple of 1024');
  const { bi, bj, four, comp, acc, decl, store } = accumulators(TM, TN);
  let fma = '', loadsInit = '', loadsNext = '', stage = '';
  for (const i of bi) fma += `      let a${i} = tileA[${db ? 'curA + ' : ''}k * ${QA}u + ${i * 16}u + lid.y];\n`;
  for (const j of bj) fma += `      let b${j} = tileB[${db ? 'curB + ' : ''}k * ${QB}u + ${j * 16}u + lid.x];\n`;
  for (const i of bi) for (const j of bj) for (const r of four) fma += `      ${acc(i, j, r)} = fma(vec4<f32>(a${i}.${comp[r]}), b${j}, ${acc(i, j, r)});\n`;
  for (let s = 0; s < slotsA; s++) {
    loadsInit += `  let sA${s} = slotA(lidx + ${s * 256}u, params.kFastA);\n  var nA${s} = loadA(baseA, mTile + sA${s}.y * 4u, tBegin * ${TK}u + sA${s}.x);\n`;
    loadsNext += `      nA${s} = loadA(baseA, mTile + sA${s}.y * 4u, k0 + sA${s}.x);\n`;
    stage += `    tileA[${db ? 'dstA + ' : ''}sA${s}.x * ${QA}u + sA${s}.y] = opA(nA${s});\n`;
  }
  for (let s = 0; s < slotsB; s++) {
    loadsInit += `  let sB${s} = slotB(lidx + ${s * 256}u, params.kFastB);\n  var nB${s} = loadB(baseB, nTile + sB${s}.y * 4u, tBegin * ${TK}u + sB${s}.x);\n`;
    loadsNext += `      nB${s} = loadB(baseB, nTile + sB${s}.y * 4u, k0 + sB${s}.x);\n`;
    stage += `    tileB[${db ? 'dstB + ' : ''}sB${s}.x * ${QB}u + sB${s}.y] = nB${s};\n`;
  }
  return `// GENERATED by scripts/gen-matmul-wide.mjs (edit that, then run it). C = alpha * op(A) @ op(B) (+ C)
// (+ bias) exactly as shaders/matmul.wgsl computes it (same Params, strides, batching, summation
// order), with ${BM}x${BN} output tiles: each of the 16x16 threads computes ${TM}x${TN} outputs as
// ${TM / 4}x${TN / 4} blocks of 4x4 lying 64 rows / columns apart; K tiles of ${TK}${db ? ', staged double-buffered (one barrier per tile)' : ''}.
${PARAMS_STRUCT}${TRIANGLE_DOC}${GELU_DOC}${SOFTMAX_DOC}@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read_write> c: array<f32>;
@group(0) @binding(4) var<storage, read> bias: array<f32>;
${PRE_BINDING}
// [k][quad]: element (k, 4 * quad + i) of a staged tile is tile[k * quads + quad][i].
var<workgroup> tileA: array<vec4<f32>, ${(db ? 2 : 1) * TK * QA}>;
var<workgroup> tileB: array<vec4<f32>, ${(db ? 2 : 1) * TK * QB}>;

// The (k, quad) a thread stages: k fastest across neighbouring threads when memory is contiguous
// along k, quad fastest otherwise.
fn slotA(s: u32, kFast: u32) -> vec2<u32> {
  if (kFast != 0u) { return vec2<u32>(s % ${TK}u, s / ${TK}u); }
  return vec2<u32>(s / ${QA}u, s % ${QA}u);
}
fn slotB(s: u32, kFast: u32) -> vec2<u32> {
  if (kFast != 0u) { return vec2<u32>(s % ${TK}u, s / ${TK}u); }
  return vec2<u32>(s / ${QB}u, s % ${QB}u);
}
// Four consecutive m (A) or n (B) at one k, zero outside the matrix.
fn loadA(base: u32, m0: u32, k: u32) -> vec4<f32> {
  var v = vec4<f32>(0.0);
  if (k < params.K) {
    let kOff = base + k * params.strideAk;
    if (m0 + 3u < params.M) {
      v = vec4<f32>(a[kOff + m0 * params.strideAm], a[kOff + (m0 + 1u) * params.strideAm], a[kOff + (m0 + 2u) * params.strideAm], a[kOff + (m0 + 3u) * params.strideAm]);
    } else {
      for (var i = 0u; i < 4u; i++) { if (m0 + i < params.M) { v[i] = a[kOff + (m0 + i) * params.strideAm]; } }
    }
  }
  return v;
}
fn loadB(base: u32, n0: u32, k: u32) -> vec4<f32> {
  var v = vec4<f32>(0.0);
  if (k < params.K) {
    let kOff = base + k * params.strideBk;
    if (n0 + 3u < params.N) {
      v = vec4<f32>(b[kOff + n0 * params.strideBn], b[kOff + (n0 + 1u) * params.strideBn], b[kOff + (n0 + 2u) * params.strideBn], b[kOff + (n0 + 3u) * params.strideBn]);
    } else {
      for (var i = 0u; i < 4u; i++) { if (n0 + i < params.N) { v[i] = b[kOff + (n0 + i) * params.strideBn]; } }
    }
  }
  return v;
}
${STORE_ROW}${softmaxGradHelpers(false)}
${mainPreamble(BM, BN, TK, true, softmaxGradStore(TM, TN, acc, true))}${decl}${loadsInit}${db ? doubleBuffered() : singleBuffered()}  if (SOFTMAX_GRAD) {
${softmaxGradStore(TM, TN, acc, false).replace(/^(?=.)/gm, '  ')}  } else {
${store.replace(/^(?=.)/gm, '  ')}  }
}
`;
  function singleBuffered() {
    return `  for (var t = tBegin; t < tEnd; t++) {
    workgroupBarrier(); // everyone is done reading the previous tile
${stage}    workgroupBarrier();
    if (t + 1u < tEnd) {
      let k0 = (t + 1u) * ${TK}u;
${loadsNext}    }
    for (var k = 0u; k < ${TK}u; k++) {
${fma}    }
  }
`;
  }
  // Tile t is read from half t % 2 while tile t + 1 is written into the other half; the one
  // barrier per tile keeps a fast thread from overwriting a half a slow one still reads.
  function doubleBuffered() {
    return `  {
    let dstA = (tBegin % 2u) * ${TK * QA}u;
    let dstB = (tBegin % 2u) * ${TK * QB}u;
${stage}  }
  workgroupBarrier();
  for (var t = tBegin; t < tEnd; t++) {
    let curA = (t % 2u) * ${TK * QA}u;
    let curB = (t % 2u) * ${TK * QB}u;
    let more = t + 1u < tEnd;
    if (more) {
      let k0 = (t + 1u) * ${TK}u;
${loadsNext}    }
    for (var k = 0u; k < ${TK}u; k++) {
${fma}    }
    if (more) {
      let dstA = ${TK * QA}u - curA;
      let dstB = ${TK * QB}u - curB;
${stage}    }
    workgroupBarrier();
  }
`;
  }
}

/**
 * Vec4 variants (shaders/matmul_vec4_*.wgsl): the same product, Params and thread layout, for
 * operands whose contiguous dimension and every offset and stride are multiples of 4 (kernels/
 * matmul.ts vec4Aligned): A and B are read as vec4s (one load where the kernels above make four),
 * the inner loop over the K tile is unrolled, and a staged tile transposed on its way into
 * workgroup memory (an operand contiguous along k) has one vec4 of padding per k-row so the
 * neighbouring threads' scalar writes fall in different banks. The operands' layouts are
 * pipeline-overridable constants (K_FAST_A, K_FAST_B), so each pipeline has only its own staging.
 * On the H100 (bench/probe/matmul-variants.ts) these went 38-45 TFLOP/s at the models' large
 * shapes where the kernels above went 26-32.
 */
export const VEC4_VARIANTS = [
  { name: 'matmul_vec4_128x128', TM: 8, TN: 8, TK: 16 },
  { name: 'matmul_vec4_128x64', TM: 8, TN: 4, TK: 16 },
  { name: 'matmul_vec4_64x128', TM: 4, TN: 8, TK: 16 },
  { name: 'matmul_vec4_64x64', TM: 4, TN: 4, TK: 16 },
];

/**
 * The vec4 tilings that also come with C bound as vec4s (name_c4: STORE_ROW_C4), for a C whose
 * rows are whole vec4s: those with 4 outputs a row per thread (TN = 4). On the H100 (bench/sweep-tuning.sh)
 * the C4 forms made the 64x64 and 128x64 products faster (attention's scores and dP 25-32%) and the
 * TN = 8 ones slower (SmolLM2's down_proj.dx in 64x128 tiles 3.54 -> 4.49 ms per step, stream-K's
 * 128x128 products 2-12%), though those barely store through it: their K loops compiled differently.
 */
export const VEC4_C4_VARIANTS = VEC4_VARIANTS.filter((v) => v.TN === 4);

/**
 * Stream-K (streamKWgsl below): the 128x128 and 128x64 vec4 tilings. (256x128 with 16x8 outputs
 * per thread and K tiles of 8, 47 TFLOP/s at 4096^3 in bench/probe/matmul-variants.ts's specialized
 * form, made GPT-2's step 44.8 ms against 37.0 as a stream-K kernel with the engine's Params: dropped.)
 */
export const STREAMK_VARIANTS = [
  { name: 'matmul_streamk_128x128', TM: 8, TN: 8, TK: 16 },
  // for outputs whose width is a multiple of 64 but not of 128 (SmolLM2's 576): whole tiles
  { name: 'matmul_streamk_128x64', TM: 8, TN: 4, TK: 16 },
];

/**
 * How the vec4 and stream-K kernels hold B between its load and its staging: f32 vec4s, as written
 * here. kernels/packed-f16.ts withStagedHalfB swaps this block for words of packed halves where B is
 * a frozen weight kept in f16, so the prefetched registers carry the words through the K loop's
 * products and are widened only when staged (widening them as loaded, inside the prefetch's branch,
 * made the products wait for the loads: the f32 kernels were ~12 % slower with f16 B).
 */
export const B_STORED_F32 = `// B as loaded (kernels/packed-f16.ts withStagedHalfB: packed halves where B is f16)
alias BStored = vec4<f32>;
fn widenB(stored: BStored) -> vec4<f32> { return stored; }
`;

export function vec4MatmulWgsl({ TM, TN, TK, streamK = false, c4 = false }) {
  const BM = 16 * TM, BN = 16 * TN;
  const QA = BM / 4 + 1, QB = BN / 4 + 1; // vec4s per k-row of each staged tile (one of padding)
  const KQ = TK / 4; // vec4s along k in one row of a k-contiguous tile
  const slotsA = (BM * KQ) / 256, slotsB = (BN * KQ) / 256;
  if (!Number.isInteger(slotsA) || !Number.isInteger(slotsB)) throw new Error('tile * TK must be a multiple of 1024');
  const { bi, bj, four, comp, acc, decl, store } = accumulators(TM, TN);
  let body = '', loadsInit = '', loadsNext = '', stage = '';
  for (let k = 0; k < TK; k++) {
    body += `    {\n`;
    for (const i of bi) body += `      let a${i} = tileA[${k * QA + i * 16}u + lid.y];\n`;
    for (const j of bj) body += `      let b${j} = tileB[${k * QB + j * 16}u + lid.x];\n`;
    for (const i of bi) for (const j of bj) for (const r of four) body += `      ${acc(i, j, r)} = fma(vec4<f32>(a${i}.${comp[r]}), b${j}, ${acc(i, j, r)});\n`;
    body += `    }\n`;
  }
  let loadsChecked = '';
  for (const [X, slots] of [['A', slotsA], ['B', slotsB]]) {
    for (let s = 0; s < slots; s++) {
      loadsInit += `  let s${X}${s} = slot${X}(lidx + ${s * 256}u);\n  var n${X}${s} = load${X}(base${X}, s${X}${s}, tBegin * ${TK}u, CHECKED);\n`;
      loadsNext += `        n${X}${s} = load${X}(base${X}, s${X}${s}, k0, false);\n`;
      loadsChecked += `        n${X}${s} = load${X}(base${X}, s${X}${s}, k0, true);\n`;
      stage += X === 'A' ? `    stageA(sA${s}, opA(nA${s}));\n` : `    stageB(sB${s}, nB${s});\n`;
    }
  }
  // per operand X (A: rows m, M, tile mTile; B: rows n, N, tile nTile), contiguous along k or along its rows
  // A's vec4s are loaded as f32; B's as BStored (B_STORED_F32 below), widened only as they are staged
  const loaded = (X) => (X === 'A' ? 'vec4<f32>' : 'BStored');
  const zero = (X) => (X === 'A' ? 'vec4<f32>(0.0)' : 'BStored()');
  const operand = (X, rows, R, tile, Q, kFast, stepRow, stepK, buf) => `
// The (k-or-row, quad) slot s of the staged ${X} tile: along k, (row, k-quad) with the k-quads of one
// row on neighbouring threads; along rows, (k, row-quad).
fn slot${X}(s: u32) -> vec2<u32> {
  if (${kFast}) { return vec2<u32>(s / ${KQ}u, s % ${KQ}u); }
  return vec2<u32>(s / ${BR(X)}u, s % ${BR(X)}u);
}
// The slot's vec4 of ${X} in K tile k0; \`checked\`: zero outside the matrix (only tiles on an edge
// of the output or K's last tile need it: checking every load cost a third of the speed on the H100).
fn load${X}(base: u32, slot: vec2<u32>, k0: u32, checked: bool) -> ${loaded(X)} {
  if (${kFast}) {
    let ${rows} = ${tile} + slot.x;
    let k = k0 + slot.y * 4u;
    if (checked && (${rows} >= params.${R} || k >= params.K)) { return ${zero(X)}; }
    return ${buf}[(base + ${rows} * params.${stepRow} + k) >> 2u];
  }
  let k = k0 + slot.x;
  let ${rows}0 = ${tile} + slot.y * 4u;
  if (checked && (${rows}0 >= params.${R} || k >= params.K)) { return ${zero(X)}; }
  return ${buf}[(base + k * params.${stepK} + ${rows}0) >> 2u];
}
fn stage${X}(slot: vec2<u32>, ${X === 'A' ? 'v: vec4<f32>' : 'stored: BStored'}) {
${X === 'A' ? '' : '  let v = widenB(stored);\n'}  if (${kFast}) {
    let row = slot.x;
    let at = slot.y * ${4 * Q}u + row / 4u;
    let lane = row % 4u;
    tile${X}[at][lane] = v.x;
    tile${X}[at + ${Q}u][lane] = v.y;
    tile${X}[at + ${2 * Q}u][lane] = v.z;
    tile${X}[at + ${3 * Q}u][lane] = v.w;
    return;
  }
  tile${X}[slot.x * ${Q}u + slot.y] = v;
}
`;
  function BR(X) { return (X === 'A' ? BM : BN) / 4; }
  // what the vec4 and stream-K kernels share: bindings 0-5, the staged tiles and their loads, the epilogues
  const bindings = `@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> a: array<vec4<f32>>;
${B_STORED_F32}@group(0) @binding(2) var<storage, read> b: array<BStored>;
@group(0) @binding(3) var<storage, read_write> c: array<${c4 ? 'vec4<f32>' : 'f32'}>;
@group(0) @binding(4) var<storage, read> bias: array<f32>;
${PRE_BINDING}`;
  const staging = `// [k][quad]: element (k, 4 * quad + i) of a staged tile is tile[k * ${QA} + quad][i] (A; B: * ${QB}).
var<workgroup> tileA: array<vec4<f32>, ${TK * QA}>;
var<workgroup> tileB: array<vec4<f32>, ${TK * QB}>;
${operand('A', 'm', 'M', 'mTile', QA, 'K_FAST_A', 'strideAm', 'strideAk', 'a')}${operand('B', 'n', 'N', 'nTile', QB, 'K_FAST_B', 'strideBn', 'strideBk', 'b')}
${c4 ? STORE_ROW_C4 : STORE_ROW}${geluGradHelpers(c4)}
var<private> mTile: u32;
var<private> nTile: u32;
`;
  // the K loop over tiles [tBegin, tEnd) of the output tile at (mTile, nTile)
  const kLoop = `  // a tile wholly inside the output reads unchecked except in K's last tile (uniform branches;
  // ${streamK ? 'a range\'s pieces' : 'TRIANGLE\'s K ranges'} start and end on K tiles, or at K, so this holds for them unchanged)
  let interior = mTile + ${BM}u <= params.M && nTile + ${BN}u <= params.N;
  for (var t = tBegin; t < tEnd; t++) {
    workgroupBarrier(); // everyone is done reading the previous tile
${stage}    workgroupBarrier();
    if (t + 1u < tEnd) {
      let k0 = (t + 1u) * ${TK}u;
      if (!CHECKED || (interior && k0 + ${TK}u <= params.K)) {
${loadsNext}      } else {
${loadsChecked}      }
    }
${body}  }
`;
  if (streamK) return streamKWgsl({ TM, TN, TK, BM, BN, bindings, staging, decl, loadsInit, kLoop, store, acc, bi, bj, four });
  return `// GENERATED by scripts/gen-matmul-wide.mjs (edit that, then run it). C = alpha * op(A) @ op(B) (+ C)
// (+ bias) as shaders/matmul.wgsl computes it (same Params, strides, batching), with ${BM}x${BN} output
// tiles, for vec4-aligned operands (kernels/matmul.ts vec4Aligned): A and B read as vec4s; each of
// the 16x16 threads computes ${TM}x${TN} outputs as ${TM / 4}x${TN / 4} blocks of 4x4 lying 64 rows / columns
// apart; K tiles of ${TK}, the next prefetched into registers, the inner loop unrolled.
${PARAMS_STRUCT}// A stored [M, K] (contiguous along k) rather than [K, M]; B stored [N, K] rather than [K, N].
override K_FAST_A: bool = true;
override K_FAST_B: bool = false;
${CHECKED_DOC}${TRIANGLE_DOC}${GELU_DOC}${SOFTMAX_DOC}${bindings}
${staging}${softmaxGradHelpers(c4)}
${mainPreamble(BM, BN, TK, false, softmaxGradStore(TM, TN, acc, true))}${decl}${loadsInit}${kLoop}  if (GELU_GRAD && !CHECKED) {
${geluGradWholeTileStore(TM, TN, acc).replace(/^/gm, '  ').replace(/^ +$/gm, '')}  } else if (SOFTMAX_GRAD) {
${softmaxGradStore(TM, TN, acc, false).replace(/^(?=.)/gm, '  ')}  } else {
${store.replace(/^/gm, '  ').replace(/^ +$/gm, '')}  }
}
`;
}

/**
 * Stream-K (shaders/matmul_streamk_*.wgsl, kernels/matmul.ts matmulStreamK): an unbatched product's
 * tiles x K-tiles iterations cut into `groups` equal contiguous ranges, one per workgroup (one per
 * SM), so a product with a few tiles per SM (GPT-2's 2048-row products: 96-384 tiles of 128x128 on
 * the H100's 132 SMs) keeps every SM busy to the end. A workgroup walks its range
 * tile by tile: a tile it covers whole gets the usual epilogue; a part of a tile (where its range
 * starts or ends inside one) goes unscaled into `parts` (slot 2g for the range's first piece,
 * 2g + 1 for its last), and shaders/matmul_streamk_fixup.wgsl sums a split tile's pieces in order
 * of k and applies the epilogue. No atomics, no waiting on other workgroups: deterministic.
 */
function streamKWgsl({ TM, TN, TK, BM, BN, bindings, staging, decl, loadsInit, kLoop, store, acc, bi, bj, four }) {
  const Q = BN / 4; // vec4s per row of a tile in parts
  let partial = '';
  for (const i of bi) for (const j of bj) for (const r of four) {
    partial += `      parts[at + (${i * 64 + r}u + lid.y * 4u) * ${Q}u + ${j * 16}u + lid.x] = ${acc(i, j, r)};\n`;
  }
  return `// GENERATED by scripts/gen-matmul-wide.mjs (edit that, then run it). Stream-K: C = alpha * op(A) @ op(B)
// (+ C) (+ bias) (* gelu'(pre)) as shaders/matmul_vec4_${BM}x${BN}.wgsl computes it (same Params, strides,
// staging, ${BM}x${BN} tiles, K tiles of ${TK}; unbatched, no triangles), its tiles x K-tiles iterations
// cut into params.groups contiguous ranges of params.itersPerGroup, one per workgroup. A tile a
// workgroup covers whole is stored as the plain kernel stores it; a part of a tile goes unscaled to
// parts[slot] (${BM}x${BN} floats, row-major; slot 2g: the first piece of workgroup g's range,
// 2g + 1: its last), summed by shaders/matmul_streamk_fixup.wgsl (kernels/matmul.ts matmulStreamK).
${PARAMS_STRUCT.replace('ldPre: u32, groupB: u32,\n', 'ldPre: u32, groupB: u32,\n  groups: u32, itersPerGroup: u32, kTiles: u32,\n')}// A stored [M, K] (contiguous along k) rather than [K, M]; B stored [N, K] rather than [K, N].
override K_FAST_A: bool = true;
override K_FAST_B: bool = false;
${CHECKED_DOC}${GELU_DOC}${bindings}@group(0) @binding(6) var<storage, read_write> parts: array<vec4<f32>>;

${staging}
@compute @workgroup_size(16, 16)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_id) lid: vec3<u32>, @builtin(local_invocation_index) lidx: u32) {
  let g = wid.x + nwg.x * (wid.y + nwg.y * wid.z);
  if (g >= params.groups) { return; }
  let total = params.tilesN * params.tilesM * params.kTiles;
  let itBegin = min(g * params.itersPerGroup, total);
  let itEnd = min(itBegin + params.itersPerGroup, total);
  let baseA = params.offA;
  let baseB = params.offB;
  let baseC = params.offC;
  var it = itBegin;
  loop {
    if (it >= itEnd) { break; }
    let tile = it / params.kTiles;
    let tBegin = it - tile * params.kTiles;
    let tEnd = min(params.kTiles, tBegin + (itEnd - it));
    let tileM = (tile / params.tilesN) * ${BM}u;
    let tileN = (tile % params.tilesN) * ${BN}u;
    mTile = tileM;
    nTile = tileN;
${decl.replace(/^ {2}/gm, '    ')}${loadsInit.replace(/^ {2}/gm, '    ')}${kLoop.replace(/^/gm, '  ').replace(/^ +$/gm, '')}    if (tBegin == 0u && tEnd == params.kTiles && GELU_GRAD && !CHECKED) {
${geluGradWholeTileStore(TM, TN, acc).replace(/^(?=.)/gm, '    ')}    } else if (tBegin == 0u && tEnd == params.kTiles) {
${store.replace(/^(?=.)/gm, '    ')}    } else {
      let at = select(2u * g + 1u, 2u * g, it == itBegin) * ${(BM * BN) / 4}u;
${partial}    }
    it += tEnd - tBegin;
  }
}
`;
}

import { fileURLToPath } from 'node:url';
if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const fs = await import('node:fs');
  for (const v of WIDE_VARIANTS) fs.writeFileSync(new URL(`../shaders/${v.name}.wgsl`, import.meta.url), wideMatmulWgsl(v));
  for (const v of VEC4_VARIANTS) fs.writeFileSync(new URL(`../shaders/${v.name}.wgsl`, import.meta.url), vec4MatmulWgsl(v));
  for (const v of VEC4_C4_VARIANTS) fs.writeFileSync(new URL(`../shaders/${v.name}_c4.wgsl`, import.meta.url), vec4MatmulWgsl({ ...v, c4: true }));
  for (const v of STREAMK_VARIANTS) fs.writeFileSync(new URL(`../shaders/${v.name}.wgsl`, import.meta.url), vec4MatmulWgsl({ ...v, streamK: true }));
}
