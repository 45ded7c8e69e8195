// Flash attention, forward (FlashAttention-2's online softmax): for every batch b, query head h and
// query row i,
//   o[b, i, h] = sum_j softmax_j(scale * q[b, i, h] . k[b, j, g]) v[b, j, g],   g = h / G,
// over the keys j visible to i, without the T x T scores in memory; and the row's log-sum-exp
//   lse[(b*H + h)*T + i] = ln(sum over visible j of exp(scale * q . k_j))
// that the backward (shaders/flash_attention_backward*.wgsl) recomputes the probabilities from.
//
// Layout (kernels/flash-attention.ts FlashAttentionShape): element (b, t, h, d) of q is at
// offQ + (b*T + t)*ldQ + h*D + d; k and v have H / G heads (grouped-query attention: query head h
// reads key/value head g = h / G) at offK + (b*T + t)*ldK + g*D + d and offV + (b*T + t)*ldV + ...;
// o like q at offO, ldO. Every tensor is read with scalar loads (no alignment asked of offsets or
// row strides), staged in workgroup memory as vec4s.
//
// Mask (shaders/attention_prefix_softmax.wgsl's with P = 0): key j is visible to query i iff
// j < min(lengths[b], T) and, when causal, j <= i. Rows past lengths[b] are computed like any
// other. A row that sees no key (only when lengths[b] = 0) gets o = 0 and lse = EMPTY_LSE (1e30: a
// finite "log of nothing" such that exp(score - lse) is 0 for any finite score).
//
// Tiling: one workgroup of TR*TC threads per (b, h, block of BQ = 4*TR queries), the blocks with
// the most keys to walk (the last ones under the causal mask) numbered first. Q's block is staged
// once, multiplied by scale*log2(e) so scores come out in log2 units (exp2 below). Then, for each
// block of BK = 4*TC keys up to the last one any of the block's queries sees (blocks wholly beyond
// lengths[b], or above the diagonal, are never loaded):
//   1. stage K and V rows (zero past lengths[b]);
//   2. thread (tr, tc) computes scores for its 4 queries tr + TR*i and 4 keys tc + TC*jj
//      (16 registers; rows of qs and ks padded to DS = D/4 + 1 vec4s so a warp's reads spread over
//      the banks), masks them, and posts its per-row maxima in `red`;
//   3. each thread takes the new row maxima m (all TC partial maxima of its rows), rescales its
//      partial row sums l and its output registers by exp2(m_old - m), and writes its
//      probabilities p = exp2(s - m) (0 where masked: never exp of a sentinel) as P^T into ks,
//      whose K is no longer needed: pt[key][tr] = vec4 of its 4 rows (rows of PS = TR + 1 vec4s);
//   4. o += P V: the same thread owns its 4 query rows and the d-quads tc + TC*kk (kk < NK) of o,
//      4*NK vec4 registers, reading one vec4 of P^T and NK of V per key.
// Three barriers per key block. At the end the TC partial sums of each row are added through
// `red` and o / l and lse are written (rows < T only).
// Workgroup memory (vec4s): qs BQ*DS + ks max(BK*DS, BK*PS) + vs BK*D/4 + red TC*PS
// (kernels/flash-attention.ts forwardBytes). D, TR and TC are baked into this text at bind time
// (the constants below are its defaults); the threads of the workgroup run in one dimension.
struct Params {
  B: u32,
  T: u32,
  H: u32,
  G: u32,          // query heads per key/value head
  nQB: u32,        // query blocks per (b, h): ceil(T / BQ)
  causal: u32,
  scaleLog2: f32,  // scale * log2(e)
  offQ: u32, ldQ: u32,
  offK: u32, ldK: u32,
  offV: u32, ldV: u32,
  offO: u32, ldO: u32,
}
@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> lengths: array<u32>;
@group(0) @binding(2) var<storage, read> q: array<f32>;
@group(0) @binding(3) var<storage, read> k: array<f32>;
@group(0) @binding(4) var<storage, read> v: array<f32>;
@group(0) @binding(5) var<storage, read_write> out: array<f32>;
@group(0) @binding(6) var<storage, read_write> lse: array<f32>;

// ---- baked by kernels/flash-attention.ts
const D: u32 = 64u;   // head size, a multiple of 4
const TR: u32 = 16u;  // row groups: BQ = 4*TR queries per workgroup
const TC: u32 = 8u;   // column groups: BK = 4*TC keys per block
// ----
const WG: u32 = TR * TC;
const BQ: u32 = 4u * TR;
const BK: u32 = 4u * TC;
const D4: u32 = D / 4u;
const DS: u32 = D4 + 1u;                    // padded row of qs and ks, in vec4s
const PS: u32 = TR + 1u;                    // padded row of P^T and red (a warp's stores hit every bank)
const NK: u32 = (D4 + TC - 1u) / TC;        // d-quads of o per thread
const FULL_D: bool = D4 % TC == 0u;         // every thread has NK whole quads
const NEG_BIG: f32 = -3.0e38;
const LN2: f32 = 0.6931471805599453;
const EMPTY_LSE: f32 = 1.0e30;

var<workgroup> qs: array<vec4<f32>, BQ * DS>;
var<workgroup> ks: array<vec4<f32>, max(BK * DS, BK * PS)>;  // K block, then P^T
var<workgroup> vs: array<vec4<f32>, BK * D4>;
var<workgroup> red: array<vec4<f32>, TC * PS>;               // [tc][tr]: per-row partial max / sum

fn loadQ(at: u32) -> vec4<f32> { return vec4<f32>(q[at], q[at + 1u], q[at + 2u], q[at + 3u]); }
fn loadK(at: u32) -> vec4<f32> { return vec4<f32>(k[at], k[at + 1u], k[at + 2u], k[at + 3u]); }
fn loadV(at: u32) -> vec4<f32> { return vec4<f32>(v[at], v[at + 1u], v[at + 2u], v[at + 3u]); }

// acc + (a . c0, a . c1, a . c2, a . c3) as 16 fmas (no separate add)
fn dot4x4(acc: vec4<f32>, a: vec4<f32>, c0: vec4<f32>, c1: vec4<f32>, c2: vec4<f32>, c3: vec4<f32>) -> vec4<f32> {
  var r = fma(vec4<f32>(a.x), vec4<f32>(c0.x, c1.x, c2.x, c3.x), acc);
  r = fma(vec4<f32>(a.y), vec4<f32>(c0.y, c1.y, c2.y, c3.y), r);
  r = fma(vec4<f32>(a.z), vec4<f32>(c0.z, c1.z, c2.z, c3.z), r);
  return fma(vec4<f32>(a.w), vec4<f32>(c0.w, c1.w, c2.w, c3.w), r);
}

fn maxOf(x: vec4<f32>) -> f32 { return max(max(x.x, x.y), max(x.z, x.w)); }

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
  let BH = params.B * params.H;
  let item = wid.x + wid.y * nwg.x;
  if (item >= BH * params.nQB) { return; }
  let qb = params.nQB - 1u - item / BH;  // last (longest) query blocks first
  let b = (item % BH) / params.H;
  let h = item % params.H;
  let g = h / params.G;
  let T = params.T;
  let kEnd = min(lengths[b], T);
  let q0 = qb * BQ;
  var kLimit = kEnd;
  if (params.causal != 0u) { kLimit = min(kLimit, q0 + BQ); }
  let nKB = (kLimit + BK - 1u) / BK;
  let tr = lid / TC;
  let tc = lid % TC;

  // Q's block, scaled to log2 units; zero past T
  let qBase = params.offQ + h * D;
  for (var e = lid; e < BQ * D4; e += WG) {
    let r = e / D4;
    let c4 = e % D4;
    var x = vec4<f32>(0.0);
    if (q0 + r < T) { x = loadQ(qBase + (b * T + q0 + r) * params.ldQ + 4u * c4) * params.scaleLog2; }
    qs[r * DS + c4] = x;
  }

  // this thread's rows are q0 + tr + TR*i (component i of m and l)
  let rows = vec4<u32>(q0 + tr) + vec4<u32>(0u, TR, 2u * TR, 3u * TR);
  var m = vec4<f32>(NEG_BIG);  // running row maxima (log2 units)
  var l = vec4<f32>(0.0);      // running sums over this thread's keys
  var o: array<vec4<f32>, 4u * NK>;  // o[i*NK + kk]: row i, d-quad tc + TC*kk
  let kBase = params.offK + g * D;
  let vBase = params.offV + g * D;
  for (var kb = 0u; kb < nKB; kb++) {
    let k0 = kb * BK;
    workgroupBarrier();  // everyone is done with the previous block's P^T and V
    for (var e = lid; e < BK * D4; e += WG) {
      let r = e / D4;
      let c4 = e % D4;
      var kx = vec4<f32>(0.0);
      var vx = vec4<f32>(0.0);
      if (k0 + r < kEnd) {
        let row = b * T + k0 + r;
        kx = loadK(kBase + row * params.ldK + 4u * c4);
        vx = loadV(vBase + row * params.ldV + 4u * c4);
      }
      ks[r * DS + c4] = kx;
      vs[r * D4 + c4] = vx;
    }
    workgroupBarrier();

    // 2. scores s[i][jj] of rows tr + TR*i and keys tc + TC*jj
    var s = array<vec4<f32>, 4>();  // zeroed explicitly: SwiftShader keeps a bare var's value across iterations
    for (var d4 = 0u; d4 < D4; d4++) {
      let c0 = ks[tc * DS + d4];
      let c1 = ks[(tc + TC) * DS + d4];
      let c2 = ks[(tc + 2u * TC) * DS + d4];
      let c3 = ks[(tc + 3u * TC) * DS + d4];
      for (var i = 0u; i < 4u; i++) {
        s[i] = dot4x4(s[i], qs[(tr + i * TR) * DS + d4], c0, c1, c2, c3);
      }
    }
    let keys = vec4<u32>(k0 + tc) + vec4<u32>(0u, TC, 2u * TC, 3u * TC);
    let inLength = keys < vec4<u32>(kEnd);
    let noCausal = vec4<bool>(params.causal == 0u);
    var ok: array<vec4<bool>, 4>;
    var mx = vec4<f32>(NEG_BIG);
    for (var i = 0u; i < 4u; i++) {
      ok[i] = inLength & (noCausal | (keys <= vec4<u32>(rows[i])));
      mx[i] = maxOf(select(vec4<f32>(NEG_BIG), s[i], ok[i]));
    }
    red[tc * PS + tr] = mx;
    workgroupBarrier();  // (also: everyone is done reading K)

    // 3. online softmax
    var mNew = m;
    for (var t = 0u; t < TC; t++) { mNew = max(mNew, red[t * PS + tr]); }
    let alpha = exp2(m - mNew);  // 1 while a row has seen nothing (both NEG_BIG), 0 on its first keys
    m = mNew;
    var p: array<vec4<f32>, 4>;
    for (var i = 0u; i < 4u; i++) {
      p[i] = select(vec4<f32>(0.0), exp2(s[i] - vec4<f32>(mNew[i])), ok[i]);
      l[i] = l[i] * alpha[i] + (p[i].x + p[i].y + p[i].z + p[i].w);
      for (var kk = 0u; kk < NK; kk++) { o[i * NK + kk] *= alpha[i]; }
    }
    for (var jj = 0u; jj < 4u; jj++) {
      ks[(tc + jj * TC) * PS + tr] = vec4<f32>(p[0][jj], p[1][jj], p[2][jj], p[3][jj]);
    }
    workgroupBarrier();

    // 4. o += P V
    for (var j = 0u; j < BK; j++) {
      let pj = ks[j * PS + tr];
      for (var kk = 0u; kk < NK; kk++) {
        let dq = tc + kk * TC;
        if (FULL_D || dq < D4) {
          let vj = vs[j * D4 + dq];
          o[kk] = fma(vec4<f32>(pj.x), vj, o[kk]);
          o[NK + kk] = fma(vec4<f32>(pj.y), vj, o[NK + kk]);
          o[2u * NK + kk] = fma(vec4<f32>(pj.z), vj, o[2u * NK + kk]);
          o[3u * NK + kk] = fma(vec4<f32>(pj.w), vj, o[3u * NK + kk]);
        }
      }
    }
  }

  // row sums: the TC partial sums of each row (every thread is past the last block's reads of red)
  red[tc * PS + tr] = l;
  workgroupBarrier();
  var lSum = vec4<f32>(0.0);
  for (var t = 0u; t < TC; t++) { lSum += red[t * PS + tr]; }
  let seen = lSum > vec4<f32>(0.0);
  let inv = select(vec4<f32>(0.0), vec4<f32>(1.0) / select(vec4<f32>(1.0), lSum, seen), seen);
  for (var i = 0u; i < 4u; i++) {
    let t = rows[i];
    if (t >= T) { continue; }
    let at = params.offO + (b * T + t) * params.ldO + h * D;
    for (var kk = 0u; kk < NK; kk++) {
      let dq = tc + kk * TC;
      if (FULL_D || dq < D4) {
        let x = o[i * NK + kk] * inv[i];
        out[at + 4u * dq] = x.x;
        out[at + 4u * dq + 1u] = x.y;
        out[at + 4u * dq + 2u] = x.z;
        out[at + 4u * dq + 3u] = x.w;
      }
    }
    if (tc == 0u) {
      lse[(b * params.H + h) * T + t] = select(EMPTY_LSE, (m[i] + log2(lSum[i])) * LN2, seen[i]);
    }
  }
}
