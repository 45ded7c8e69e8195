// Generates shaders/matmul_tc_*.wgsl: f32 products on tensor cores (Dawn's
// chromium-experimental-subgroup-matrix, f16 x f16 -> f32 fragments of 16 x 16 x 16). The operands
// stay f32 in memory; each K tile is read as vec4<f32>, rounded to f16 as it is staged in
// workgroup memory (A's rows first scaled by powers of two under SCALE_ROWS), and multiplied with
// f32 accumulation. kernels/matmul-tc.ts binds them. A workgroup of SGM x SGN subgroups of 32
// invocations owns a tile of BM = 16 SGM FM rows by BN = 16 SGN FN columns, each subgroup FM x FN
// fragments; K is walked in tiles of BK, the next tile prefetched into registers while the current
// one is multiplied (bench/probe/tensor-core-matmul.ts measured the layouts).
//   node scripts/gen-matmul-tc.mjs   → rewrites every variant in TC_VARIANTS
import fs from 'node:fs';
import { fileURLToPath } from 'node:url';

const TILES = [
  { name: 'matmul_tc_128x128', SGM: 4, SGN: 2, FM: 2, FN: 4, BK: 32 },
  { name: 'matmul_tc_64x64', SGM: 2, SGN: 2, FM: 2, FN: 2, BK: 32 },
];
// each tile twice: B as f32, and B as packed halves (gpu/tensor.ts 'f16': two to a 32-bit word,
// element 2i in the low half), staged as they are with bitcast, no widening and rounding again
// and each of those split (f32 accuracy): every f32 operand staged as two halves, hi = x rounded to
// 11 significant bits and lo = x - hi, multiplied lo·hi + hi·lo + hi·hi (B in f16 is exact: its lo
// is 0, so two products), as CUTLASS's 3xTF32 does with TF32
const PLAIN_VARIANTS = TILES.flatMap((t) => [t, { ...t, name: `${t.name}_half_b`, halfB: true }]);
export const TC_VARIANTS = [...PLAIN_VARIANTS, ...PLAIN_VARIANTS.map((v) => ({ ...v, name: `${v.name}_split`, split: true }))];
const PAD = 8; // f16 elements after each staged row (rows of 80 bytes for BK = 32)

export function tcMatmulWgsl(v) {
  const { SGM, SGN, FM, FN, BK } = v;
  const halfB = v.halfB === true, split = v.split === true;
  const splitB = split && !halfB;
  // B's registers: a vec4 of f32, or the same four values as two words of halves
  const BReg = halfB ? 'vec2<u32>' : 'vec4<f32>', BZero = halfB ? 'vec2<u32>(0u)' : 'vec4<f32>(0.0)';
  const BM = 16 * SGM * FM, BN = 16 * SGN * FN, T = 32 * SGM * SGN;
  // A staged in SGM blocks of the 16 FM rows a row of subgroups reads, B in SGN blocks of the 16 FN
  // columns a column of subgroups reads: each subgroup's fragments sit at constant offsets in its
  // block (&tileA[sg / SGN], &tileB[sg % SGN]), so Tint's robustness needs no bounds test around
  // the loads (it tests one whose offset is not a constant, and NVIDIA's driver then reads the
  // fragment by 16-bit loads instead of ldmatrix: 95 against 109 TFLOP/s at 4096^3, session 22)
  const SA = BK + PAD, SBK = BK + PAD, BNB = 16 * FN, SBN = BNB + PAD;
  const blockA = 16 * FM * SA, blockB = Math.max(BNB * SBK, BK * SBN);
  const aLoads = (BM * BK) / 4 / T, bLoads = (BN * BK) / 4 / T;
  if (!Number.isInteger(aLoads) || !Number.isInteger(bLoads)) throw new Error(`${v.name}: loads do not divide`);
  if (FN > SGM) throw new Error(`${v.name}: tileC (256 per subgroup) cannot hold BIAS_INIT's 16 x ${BN} bias rows`);
  const lines = [];
  const L = 'subgroup_matrix_left<f16, 16, 16>', R = 'subgroup_matrix_right<f16, 16, 16>', Res = 'subgroup_matrix_result<f32, 16, 16>';
  const idx = (i) => (i === 0 ? 'lidx' : `lidx + ${i * T}u`);
  // slots: A (row, k-quad); B along k (n, k-quad) or along n (k, n-quad)
  const slotDecl = [];
  for (let i = 0; i < aLoads; i++) slotDecl.push(`let sa${i} = vec2<u32>((${idx(i)}) / ${BK / 4}u, (${idx(i)}) % ${BK / 4}u);`);
  for (let i = 0; i < bLoads; i++) {
    slotDecl.push(`let sb${i} = select(vec2<u32>((${idx(i)}) / ${BN / 4}u, (${idx(i)}) % ${BN / 4}u), vec2<u32>((${idx(i)}) / ${BK / 4}u, (${idx(i)}) % ${BK / 4}u), K_FAST_B);`);
  }
  const scaleDecl = [];
  for (let i = 0; i < aLoads; i++) scaleDecl.push(`let rs${i} = rowScaleAt(m0 + sa${i}.x);`);
  const loads = (k0, checked) => {
    const out = [];
    for (let i = 0; i < aLoads; i++) out.push(`ra${i} = loadA(baseA, m0 + sa${i}.x, ${k0} + sa${i}.y * 4u, kLen, ${checked});`);
    for (let i = 0; i < bLoads; i++) out.push(`rb${i} = loadB(baseB, sb${i}, n0, ${k0}, kLen, ${checked});`);
    return out;
  };
  // The staging, written out with its indices computed from lidx by + * / % of constants only:
  // Tint's integer range analysis then proves them inside the tiles and adds no clamp (a clamp, or
  // an index passed through a function or select(), leaves NVIDIA's driver four 16-bit stores)
  const stage = [];
  const four = (arr, blk, at, h = 'h') => [0, 1, 2, 3].map((c) => `${arr}[${blk}][${at}${c ? ` + ${c}u` : ''}] = ${h}.${'xyzw'[c]};`).join(' ');
  // the staged halves of x (a vec4<f32>): h, and with split lo = x - hi too (hi rounded by its bits:
  // NVIDIA's driver folds f32(f16(x)) back to x, which would leave every lo 0; session 18)
  const halves = (x, splitIt) => (splitIt
    ? `let x = ${x};\n      let hi = bitcast<vec4<f32>>((bitcast<vec4<u32>>(x) + vec4<u32>(0x1000u)) & vec4<u32>(0xffffe000u));\n      let h = vec4<f16>(hi);\n      let lo = vec4<f16>(x - hi);`
    : `let h = vec4<f16>(${x});`);
  const fourBoth = (arr, blk, at, splitIt) => four(arr, blk, at) + (splitIt ? `\n      ${four(`${arr}Lo`, blk, at, 'lo')}` : '');
  const toHalves = (r) => (halfB ? `let h = vec4<f16>(bitcast<vec2<f16>>(${r}.x), bitcast<vec2<f16>>(${r}.y));` : halves(r, splitB));
  for (let i = 0; i < aLoads; i++) {
    const id = `(${idx(i)})`;
    stage.push(`{
      ${halves(`opA(ra${i}) * rs${i}`, split)}
      let row = ${id} / ${BK / 4}u;
      let at = (row % ${16 * FM}u) * ${SA}u + (${id} % ${BK / 4}u) * 4u;
      ${fourBoth('tileA', `row / ${16 * FM}u`, 'at', split)}
    }`);
  }
  for (let i = 0; i < bLoads; i++) {
    const id = `(${idx(i)})`;
    stage.push(`{
      ${toHalves(`rb${i}`)}
      if (K_FAST_B) {
        let n = ${id} / ${BK / 4}u;
        let at = (n % ${BNB}u) * ${SBK}u + (${id} % ${BK / 4}u) * 4u;
        ${fourBoth('tileB', `n / ${BNB}u`, 'at', splitB)}
      } else {
        let n = (${id} % ${BN / 4}u) * 4u;
        let at = (${id} / ${BN / 4}u) * ${SBN}u + n % ${BNB}u;
        ${fourBoth('tileB', `n / ${BNB}u`, 'at', splitB)}
      }
    }`);
  }
  const accs = [], biasInit = [], cInit = [];
  for (let i = 0; i < FM; i++) for (let j = 0; j < FN; j++) {
    accs.push(`var acc${i}${j} = ${Res}();`);
    biasInit.push(`acc${i}${j} = biasStart(subgroupMatrixLoad<${Res}, row_major>(&tileC, sn + ${16 * j}u, ${BN}u), m0 + sm + ${16 * i}u);`);
    cInit.push(`acc${i}${j} = subgroupMatrixLoad<${Res}, row_major>(&c, baseC + (m0 + sm + ${16 * i}u) * params.ldc + n0 + sn + ${16 * j}u, params.ldc);`);
  }
  // the K tile's products, B's fragments read along k (K_FAST_B) or along n: the two forms written
  // out (an offset passed through a function is not a constant to Tint)
  const mmaFor = (kFastB) => {
    const steps = [];
    for (let kk = 0; kk < BK; kk += 16) {
      const body = [];
      const leftLoad = (name, arr, i) => `let ${name}${i} = subgroupMatrixLoad<${L}, row_major>(&${arr}[sg / ${SGN}u], ${16 * i * SA + kk}u, ${SA}u);`;
      const rightLoad = (name, arr, j) => (kFastB
        ? `let ${name}${j} = subgroupMatrixLoad<${R}, col_major>(&${arr}[sg % ${SGN}u], ${16 * j * SBK + kk}u, ${SBK}u);`
        : `let ${name}${j} = subgroupMatrixLoad<${R}, row_major>(&${arr}[sg % ${SGN}u], ${kk * SBN + 16 * j}u, ${SBN}u);`);
      for (let i = 0; i < FM; i++) body.push(leftLoad('l', 'tileA', i));
      if (split) for (let i = 0; i < FM; i++) body.push(leftLoad('lLo', 'tileALo', i));
      for (let j = 0; j < FN; j++) body.push(rightLoad('r', 'tileB', j));
      if (splitB) for (let j = 0; j < FN; j++) body.push(rightLoad('rLo', 'tileBLo', j));
      // the small products first
      const mmaOf = (l, r, i, j) => `acc${i}${j} = subgroupMatrixMultiplyAccumulate(${l}${i}, ${r}${j}, acc${i}${j});`;
      for (let i = 0; i < FM; i++) for (let j = 0; j < FN; j++) {
        if (split) body.push(mmaOf('lLo', 'r', i, j));
        if (splitB) body.push(mmaOf('l', 'rLo', i, j));
        body.push(mmaOf('l', 'r', i, j));
      }
      steps.push(`{\n        ${body.join('\n        ')}\n      }`);
    }
    return steps.join('\n      ');
  };
  const mma = [`if (K_FAST_B) {\n      ${mmaFor(true)}\n    } else {\n      ${mmaFor(false)}\n    }`];
  const direct = [], staged = [];
  for (let i = 0; i < FM; i++) for (let j = 0; j < FN; j++) {
    direct.push(`subgroupMatrixStore<row_major>(&c, baseC + (m0 + sm + ${16 * i}u) * params.ldc + n0 + sn + ${16 * j}u, finished(acc${i}${j}, m0 + sm + ${16 * i}u), params.ldc);`);
    staged.push(`storeFragment(acc${i}${j}, baseC, m0 + sm + ${16 * i}u, n0 + sn + ${16 * j}u, sg, lane);`);
  }
  lines.push(`// GENERATED by scripts/gen-matmul-tc.mjs (edit that, then run it). C = alpha * A @ op(B) (+ C)
// (+ bias) (* gelu'(pre)) on tensor cores: f16 subgroup matrices (16 x 16 x 16, f32 results) over
// f32 operands ${split ? `staged as two halves each, hi and lo = x - hi (${splitB ? 'A and B' : 'A; B is in f16'}), and multiplied
// ${splitB ? 'lo·hi + hi·lo + hi·hi' : 'lo·B + hi·B'}: f32 accuracy` : 'rounded to f16 as they are staged'}. ${BM}x${BN} output tiles, ${SGM}x${SGN} subgroups of 32
// invocations, each ${FM}x${FN} fragments; K tiles of ${BK}, the next prefetched into registers. Operands
// are read as vec4<f32>: A stored [M, K] (lda, offA multiples of 4, K a multiple of 4), B stored
// [N, K] (K_FAST_B) or [K, N] (ldb, offB multiples of 4, and K or N a multiple of 4 along its rows).
// kernels/matmul-tc.ts binds it; bench/probe/tensor-core-matmul.ts measured the layouts. It puts
// the directives this file needs (enable f16; enable subgroups; enable
// chromium_experimental_subgroup_matrix;) and
// shaders/gelu_tanh.wgsl in front of it (directives must come before every declaration).

// K slices (kernels/matmul-tc.ts matmulTensorCore's split): workgroup w computes tile w % tilesPerSlice
// over k in [s sliceK, min(K, (s + 1) sliceK)) of slice s = w / tilesPerSlice, into C at offC + s sliceC
// (slices 1, sliceK K: the whole product).
struct Params {
  M: u32, N: u32, K: u32, tilesN: u32, offA: u32, offB: u32, offC: u32, lda: u32, ldb: u32, ldc: u32,
  accumulate: u32, hasBias: u32, alpha: f32, offPre: u32, ldPre: u32, slices: u32, sliceK: u32, sliceC: u32, tilesPerSlice: u32,
}
// B stored [N, K] (contiguous along k) rather than [K, N].
override K_FAST_B: bool = true;
// false: the caller promises M, N multiples of the tile and K of the K tile, so no load is checked.
override CHECKED: bool = true;
// The finished tile is stored straight from the fragments, each times alpha (and SCALE_ROWS's
// unscale) as a whole (no accumulate, GELU_GRAD nor bias but BIAS_INIT's, CHECKED false);
// otherwise each fragment goes through workgroup memory to the epilogue.
override DIRECT_STORE: bool = false;
// A's row m is multiplied by rowScale[m] (a power of two, shaders/row_scale.wgsl, the same for the
// 16 rows of a fragment) before it is rounded to f16, and the row's results divided by it:
// gradients, whose magnitudes lie far below f16's normal range (6.1e-5), keep 11 significant bits.
override SCALE_ROWS: bool = false;
// op(A) = gelu(stored A) (tanh form, shaders/gelu_tanh.wgsl put in front), applied before rounding.
override GELU_A: bool = false;
// The finished value times gelu'(pre[offPre + m * ldPre + n]).
override GELU_GRAD: bool = false;
// The accumulators start from the bias (16 copies of bias[n0 .. n0 + ${BN}) in tileC; under SCALE_ROWS
// times the fragment's row scale, which the store divides out again: values only, kernels/matmul-tc.ts)
// instead of 0, so that a product with a bias (alpha 1, no accumulate nor GELU_GRAD) can store its
// fragments straight (DIRECT_STORE); the epilogue then adds no bias.
override BIAS_INIT: bool = false;
// The accumulators start from C itself (accumulate with alpha 1, no bias, GELU_GRAD nor SCALE_ROWS,
// whole tiles): C += A op(B) with the fragments stored straight (DIRECT_STORE).
override ACC_INIT: bool = false;

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> a: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> b: array<${BReg}>;
@group(0) @binding(3) var<storage, read_write> c: array<f32>;
@group(0) @binding(4) var<storage, read> bias: array<f32>;
// GELU_GRAD's pre-activations (bound to \`a\` when off, then never read).
@group(0) @binding(5) var<storage, read> pre: array<f32>;
// SCALE_ROWS's row scales (bound to \`a\` when off, then never read).
@group(0) @binding(6) var<storage, read> rowScale: array<f32>;

// A staged in ${SGM} blocks of ${16 * FM} rows, each [${16 * FM} rows][${SA}] (k fastest); B in ${SGN} blocks of ${BNB}
// columns, each [${BNB} columns][${SBK}] when K_FAST_B, else [${BK} k][${SBN}]. Subgroup sg reads block sg / ${SGN}
// of A and block sg % ${SGN} of B.
var<workgroup> tileA: array<array<f16, ${blockA}>, ${SGM}>;
var<workgroup> tileB: array<array<f16, ${blockB}>, ${SGN}>;${split ? `
// A's (and B's) lo halves, staged the same way
var<workgroup> tileALo: array<array<f16, ${blockA}>, ${SGM}>;` : ''}${splitB ? `
var<workgroup> tileBLo: array<array<f16, ${blockB}>, ${SGN}>;` : ''}
// each subgroup's 16 x 16 fragment on its way to the epilogue
var<workgroup> tileC: array<f32, ${SGM * SGN * 256}>;

fn rowScaleAt(m: u32) -> f32 {
  if (SCALE_ROWS && m < params.M) { return rowScale[m]; }
  return 1.0;
}
fn opA(v: vec4<f32>) -> vec4<f32> {
  if (GELU_A) { return vec4<f32>(geluTanh(v.x), geluTanh(v.y), geluTanh(v.z), geluTanh(v.w)); }
  return v;
}
// A's vec4 at (m, k .. k + 3) of the slice that starts at base; zero outside it when checked
fn loadA(base: u32, m: u32, k: u32, kLen: u32, checked: bool) -> vec4<f32> {
  if (checked && (m >= params.M || k >= kLen)) { return vec4<f32>(0.0); }
  return a[(base + m * params.lda + k) >> 2u];
}
// B's ${halfB ? '4 halves' : 'vec4'} for slot s of the K tile at k0: (n, k-quad) when K_FAST_B, else (k, n-quad)
fn loadB(base: u32, s: vec2<u32>, n0: u32, k0: u32, kLen: u32, checked: bool) -> ${BReg} {
  if (K_FAST_B) {
    let n = n0 + s.x;
    let k = k0 + s.y * 4u;
    if (checked && (n >= params.N || k >= kLen)) { return ${BZero}; }
    return b[(base + n * params.ldb + k) >> 2u];
  }
  let k = k0 + s.x;
  let n = n0 + s.y * 4u;
  if (checked && (k >= kLen || n >= params.N)) { return ${BZero}; }
  return b[(base + k * params.ldb + n) >> 2u];
}
// DIRECT_STORE's fragment of rows m .. m + 15: times alpha, divided by the rows' scale
// BIAS_INIT's start of the fragment of rows m .. m + 15: the bias, times their row scale
fn biasStart(f: ${Res}, m: u32) -> ${Res} {
  if (!SCALE_ROWS) { return f; }
  return subgroupMatrixScalarMultiply(f, rowScaleAt(m));
}
fn finished(f: ${Res}, m: u32) -> ${Res} {
  if (!SCALE_ROWS && params.alpha == 1.0) { return f; }
  var s = params.alpha;
  if (SCALE_ROWS) { s /= rowScale[m]; }
  return subgroupMatrixScalarMultiply(f, s);
}
// One fragment through the epilogue: stored to the subgroup's part of tileC, then each invocation
// finishes 8 consecutive outputs of one row (lane / 2, 8 * (lane % 2) ..).
fn storeFragment(f: ${Res}, baseC: u32, m0: u32, n0: u32, sg: u32, lane: u32) {
  subgroupMatrixStore<row_major>(&tileC, sg * 256u, f, 16u);
  workgroupBarrier();
  let r = lane / 2u;
  let cq = (lane % 2u) * 8u;
  let m = m0 + r;
  if (m < params.M) {
    var unscale = 1.0;
    if (SCALE_ROWS) { unscale = 1.0 / rowScale[m]; }
    let rowC = baseC + m * params.ldc;
    for (var j = 0u; j < 8u; j++) {
      let n = n0 + cq + j;
      if (n < params.N) {
        var x = params.alpha * (tileC[sg * 256u + r * 16u + cq + j] * unscale);
        if (params.accumulate != 0u) { x += c[rowC + n]; }
        if (params.hasBias != 0u && !BIAS_INIT) { x += bias[n]; }
        if (GELU_GRAD) { x *= geluTanhGrad(pre[params.offPre + m * params.ldPre + n]); }
        c[rowC + n] = x;
      }
    }
  }
  workgroupBarrier();
}

@compute @workgroup_size(${T})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lidx: u32,
        @builtin(subgroup_id) sg: u32, @builtin(subgroup_invocation_id) lane: u32) {
  let w = wid.x + nwg.x * wid.y;
  let slice = w / params.tilesPerSlice;
  if (slice >= params.slices) { return; } // the folded grid's spare workgroups (uniform)
  let tile = w % params.tilesPerSlice;
  let m0 = (tile / params.tilesN) * ${BM}u;
  let n0 = (tile % params.tilesN) * ${BN}u;
  let kBegin = slice * params.sliceK;
  let kLen = min(params.sliceK, params.K - kBegin);
  let baseA = params.offA + kBegin;
  let baseB = params.offB + kBegin * select(params.ldb, 1u, K_FAST_B);
  let baseC = params.offC + slice * params.sliceC;
  // subgroup_id, not lidx / 32: the subgroup-matrix builtins want subgroup-uniform offsets (the
  // device has subgroups of exactly 32: gpu.ts adapterHasTensorCores)
  let sm = (sg / ${SGN}u) * ${16 * FM}u;
  let sn = (sg % ${SGN}u) * ${16 * FN}u;
  ${slotDecl.join('\n  ')}
  ${scaleDecl.join('\n  ')}
  // a tile wholly inside the output reads unchecked except in K's last tile (uniform branches)
  let interior = m0 + ${BM}u <= params.M && n0 + ${BN}u <= params.N;
  ${Array.from({ length: aLoads }, (_, i) => `var ra${i} = vec4<f32>(0.0);`).join('\n  ')}
  ${Array.from({ length: bLoads }, (_, i) => `var rb${i} = ${BZero};`).join('\n  ')}
  if (!CHECKED || (interior && ${BK}u <= kLen)) {
    ${loads('0u', 'false').join('\n    ')}
  } else {
    ${loads('0u', 'true').join('\n    ')}
  }
  ${accs.join('\n  ')}
  if (ACC_INIT) {
    ${cInit.join('\n    ')}
  }
  if (BIAS_INIT) {
    for (var i = lidx; i < ${16 * BN}u; i += ${T}u) {
      let n = n0 + i % ${BN}u;
      tileC[i] = select(0.0, bias[min(n, params.N - 1u)], n < params.N);
    }
    workgroupBarrier();
    ${biasInit.join('\n    ')}
  }
  let numK = (kLen + ${BK - 1}u) / ${BK}u;
  for (var t = 0u; t < numK; t++) {
    workgroupBarrier(); // everyone is done reading the previous tile
    ${stage.join('\n    ')}
    workgroupBarrier();
    if (t + 1u < numK) {
      let k0 = (t + 1u) * ${BK}u;
      if (!CHECKED || (interior && k0 + ${BK}u <= kLen)) {
        ${loads('k0', 'false').join('\n        ')}
      } else {
        ${loads('k0', 'true').join('\n        ')}
      }
    }
    ${mma.join('\n    ')}
  }
  if (DIRECT_STORE) {
    ${direct.join('\n    ')}
    return;
  }
  ${staged.join('\n  ')}
}
`);
  return lines.join('');
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  for (const v of TC_VARIANTS) fs.writeFileSync(new URL(`../shaders/${v.name}.wgsl`, import.meta.url), tcMatmulWgsl(v));
}
