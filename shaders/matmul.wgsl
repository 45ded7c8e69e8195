// General matrix multiply: C = alpha * op(A) @ op(B) (+ C) (+ bias[n]), batched.
//
// Each workgroup computes one 64x64 tile of C with 16x16 threads, 4x4 outputs per thread, walking
// K in tiles of 16. Both operands are staged in workgroup memory as [k][64] with 4 consecutive
// rows (A) or columns (B) packed in one vec4, so the inner loop is two vec4 loads and 16 FMAs
// whatever the transposes. Transposes are handled when loading from global memory: the wrapper
// turns (trans, ld) into an (outer, k) stride pair per operand, and `kFast` picks which thread
// mapping makes neighbouring threads read neighbouring addresses. Global loads for the next K-tile
// are issued into registers before the current tile is consumed, hiding their latency.
//
// Workgroup memory: 2 * 16 * 16 vec4 = 8 KiB.
//
// Causal attention's products (kernels/matmul.ts MatmulArgs.triangle) are this kernel with the
// pipeline-overridable TRIANGLE set, the K range or the whole workgroup cut to the triangle that
// matters (decided per workgroup, so uniform; TRIANGLE = 0, the default, is the plain product):
//   1 lowerA: op(A)[m][k] = 0 for k > m (M == K): a tile of rows [m0, m0 + 64) walks only the K
//     tiles below m0 + 64, so it reads A (and B) only at k < min(K, m0 + 64);
//   2 upperA: op(A)[m][k] = 0 for k < m (M == K): it starts at the K tile holding m0 (m0 itself,
//     64 being a multiple of TK), reading only k >= m0;
//   3 lowerC: only C[m][n] with n <= m is wanted (M == N): a tile wholly above the diagonal
//     (n0 > m0 + 63) returns without writing; the others compute and write their whole tile.
//
// GPT-2's MLP fuses its GELU (tanh form, shaders/gelu.wgsl) into its products through two more
// overrides (kernels/matmul.ts MatmulArgs.geluA / geluGradOf; false, the default, leaves them out):
//   GELU_A: op(A) is gelu(stored A), applied to each element as it is staged into workgroup memory
//     (gelu(0) = 0, so the zero padding outside the matrix stays zero);
//   GELU_GRAD: the finished value (alpha * sum (+ C) (+ bias)) is multiplied by gelu'(pre[m][n]),
//     pre read at offPre + m * ldPre + n (unbatched products only).
//
// Attention's softmax backward fuses into the product of dP through SOFTMAX_GRAD (kernels/matmul.ts
// MatmulArgs.softmaxGradOf): C[m][n] = alpha * P[m][n] * (sum - delta[m]), P = pre at C's own index,
// delta = bias[z * M + m] for batch entry z (no bias then). Under lowerC a tile wholly above the
// diagonal writes zeros there (P is 0 there) instead of returning.

struct Params {
  M: u32,
  N: u32,
  K: u32,
  tilesN: u32,       // ceil(N / 64)
  tilesM: u32,       // ceil(M / 64)
  batchCount: u32,   // outer * inner
  batchInner: u32,
  offA: u32,
  offB: u32,
  offC: u32,
  strideAm: u32,     // element step of A(m, k) along m
  strideAk: u32,     // ... and along k
  strideBn: u32,     // element step of B(k, n) along n
  strideBk: u32,     // ... and along k
  ldc: u32,
  batchA0: u32,      // per outer batch index
  batchA1: u32,      // per inner batch index
  batchB0: u32,
  batchB1: u32,
  batchC0: u32,
  batchC1: u32,
  kFastA: u32,       // 1 when A is contiguous along k (not transposed)
  kFastB: u32,       // 1 when B is contiguous along k (transposed)
  accumulate: u32,
  hasBias: u32,
  alpha: f32,
  offPre: u32,       // GELU_GRAD's pre-activation: element offset ...
  ldPre: u32,        // ... and row stride
  groupB: u32,       // B's inner batch index is the inner index / groupB (grouped-query heads)
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read_write> c: array<f32>;
// Bound to `a` by the wrapper when there is no bias (then never read); SOFTMAX_GRAD's delta.
@group(0) @binding(4) var<storage, read> bias: array<f32>;
// GELU_GRAD's pre-activations, SOFTMAX_GRAD's P; bound to `a` when neither is on (then never read).
@group(0) @binding(5) var<storage, read> pre: array<f32>;

const TILE: u32 = 64u;
const TK: u32 = 16u;
// 0: full product; 1: lowerA; 2: upperA; 3: lowerC (see above).
override TRIANGLE: u32 = 0u;
override GELU_A: bool = false;
override GELU_GRAD: bool = false;
override SOFTMAX_GRAD: bool = false;

// geluTanh / geluTanhGrad: shaders/gelu_tanh.wgsl, put in front of this file by kernels/matmul.ts.

// A staged vec4 of A as the product reads it: gelu of each element under GELU_A.
fn opA(v: vec4<f32>) -> vec4<f32> {
  if (GELU_A) {
    return vec4<f32>(geluTanh(v.x), geluTanh(v.y), geluTanh(v.z), geluTanh(v.w));
  }
  return v;
}

// [k][quad]: element (k, 4*quad + i) of the tile is tileA[k * 16 + quad][i].
var<workgroup> tileA: array<vec4<f32>, 256>;
var<workgroup> tileB: array<vec4<f32>, 256>;

// Which (k, quad) of the 16x16 vec4 slots a thread fills: with k fastest across neighbouring
// threads when memory is contiguous along k, quad fastest otherwise.
fn slotOf(lidx: u32, kFast: u32) -> vec2<u32> {
  if (kFast != 0u) {
    return vec2<u32>(lidx % 16u, lidx / 16u);
  }
  return vec2<u32>(lidx / 16u, lidx % 16u);
}

// Four consecutive outer indices (m for A, n for B) at one k, zero outside the matrix.
fn loadA(base: u32, m0: u32, k: u32) -> vec4<f32> {
  var v = vec4<f32>(0.0);
  if (k < params.K) {
    let kOff = base + k * params.strideAk;
    for (var i = 0u; i < 4u; i++) {
      let m = m0 + i;
      if (m < params.M) {
        v[i] = a[kOff + m * params.strideAm];
      }
    }
  }
  return v;
}

fn loadB(base: u32, n0: u32, k: u32) -> vec4<f32> {
  var v = vec4<f32>(0.0);
  if (k < params.K) {
    let kOff = base + k * params.strideBk;
    for (var i = 0u; i < 4u; i++) {
      let n = n0 + i;
      if (n < params.N) {
        v[i] = b[kOff + n * params.strideBn];
      }
    }
  }
  return v;
}

@compute @workgroup_size(16, 16)
fn main(
  @builtin(workgroup_id) wid: vec3<u32>,
  @builtin(num_workgroups) nwg: vec3<u32>,
  @builtin(local_invocation_id) lid: vec3<u32>,
  @builtin(local_invocation_index) lidx: u32,
) {
  // The grid is a folded 1-D list of (tileN, tileM, batch) triples; when it fits, the wrapper
  // dispatches exactly (tilesN, tilesM, batch) and this decomposes back to wid.
  let linear = wid.x + nwg.x * (wid.y + nwg.y * wid.z);
  let tilesPerMatrix = params.tilesN * params.tilesM;
  let z = linear / tilesPerMatrix;
  if (z >= params.batchCount) {
    return; // padding workgroup of a folded grid (uniform across the workgroup)
  }
  let inMatrix = linear % tilesPerMatrix;
  let rowTile = inMatrix / params.tilesN;
  let colTile = inMatrix % params.tilesN;
  let zOuter = z / params.batchInner;
  let zInner = z % params.batchInner;
  let baseA = params.offA + zOuter * params.batchA0 + zInner * params.batchA1;
  let baseB = params.offB + zOuter * params.batchB0 + (zInner / params.groupB) * params.batchB1;
  let baseC = params.offC + zOuter * params.batchC0 + zInner * params.batchC1;
  let mTile = rowTile * TILE;
  let nTile = colTile * TILE;
  if (TRIANGLE == 3u && nTile > mTile + TILE - 1u) {
    // wholly above the diagonal (uniform across the workgroup)
    if (SOFTMAX_GRAD) {
      for (var i = 0u; i < 4u; i++) {
        let m = mTile + lid.y * 4u + i;
        for (var j = 0u; j < 4u; j++) {
          let n = nTile + lid.x * 4u + j;
          if (m < params.M && n < params.N) { c[baseC + m * params.ldc + n] = 0.0; }
        }
      }
    }
    return;
  }

  let slotA = slotOf(lidx, params.kFastA);
  let slotB = slotOf(lidx, params.kFastB);
  let storeA = slotA.x * 16u + slotA.y;
  let storeB = slotB.x * 16u + slotB.y;
  let loadMA = mTile + slotA.y * 4u;
  let loadNB = nTile + slotB.y * 4u;

  var acc0 = vec4<f32>(0.0);
  var acc1 = vec4<f32>(0.0);
  var acc2 = vec4<f32>(0.0);
  var acc3 = vec4<f32>(0.0);

  // the K tiles [tBegin, tEnd) this tile walks: all of them unless TRIANGLE cuts them
  let numKTiles = (params.K + TK - 1u) / TK;
  let tBegin = select(0u, mTile / TK, TRIANGLE == 2u);
  let tEnd = select(numKTiles, min(numKTiles, (mTile + TILE + TK - 1u) / TK), TRIANGLE == 1u);
  var nextA = loadA(baseA, loadMA, tBegin * TK + slotA.x);
  var nextB = loadB(baseB, loadNB, tBegin * TK + slotB.x);
  for (var t = tBegin; t < tEnd; t++) {
    workgroupBarrier(); // everyone is done reading the previous tile
    tileA[storeA] = opA(nextA);
    tileB[storeB] = nextB;
    workgroupBarrier();
    if (t + 1u < tEnd) {
      let k0 = (t + 1u) * TK;
      nextA = loadA(baseA, loadMA, k0 + slotA.x);
      nextB = loadB(baseB, loadNB, k0 + slotB.x);
    }
    for (var k = 0u; k < TK; k++) {
      let av = tileA[k * 16u + lid.y];
      let bv = tileB[k * 16u + lid.x];
      acc0 = fma(vec4<f32>(av.x), bv, acc0);
      acc1 = fma(vec4<f32>(av.y), bv, acc1);
      acc2 = fma(vec4<f32>(av.z), bv, acc2);
      acc3 = fma(vec4<f32>(av.w), bv, acc3);
    }
  }

  var acc = array<vec4<f32>, 4>(acc0, acc1, acc2, acc3);
  let n0 = nTile + lid.x * 4u;
  for (var i = 0u; i < 4u; i++) {
    let m = mTile + lid.y * 4u + i;
    if (m >= params.M) {
      break;
    }
    let rowBase = baseC + m * params.ldc;
    for (var j = 0u; j < 4u; j++) {
      let n = n0 + j;
      if (n >= params.N) {
        break;
      }
      if (SOFTMAX_GRAD) {
        c[rowBase + n] = params.alpha * pre[rowBase + n] * (acc[i][j] - bias[z * params.M + m]);
        continue;
      }
      var v = params.alpha * acc[i][j];
      if (params.accumulate != 0u) {
        v += c[rowBase + n];
      }
      if (params.hasBias != 0u) {
        v += bias[n];
      }
      if (GELU_GRAD) {
        v *= geluTanhGrad(pre[params.offPre + m * params.ldPre + n]);
      }
      c[rowBase + n] = v;
    }
  }
}
