// Flash attention, backward: dQ (see shaders/flash_attention_backward.wgsl for the whole backward
// and shaders/flash_attention_forward.wgsl for the layouts and the mask). For each (b, h, i):
//   dq_i = scale * sum_j dS_ij k_j,   dS_ij = P_ij (dO_i . v_j - delta_i),
//   P_ij = exp2(log2(e) * (scale * q_i . k_j - lse_i))   over the keys j visible to i (0 elsewhere).
// dq is written (not accumulated); rows past T are not touched, rows that see no key get 0.
//
// Tiling: one workgroup of TR*TC threads per (b, h, block of BQ = 4*TR queries), the longest
// blocks first, like the forward. Q's block (scaled by scale*log2(e)) and dO's are staged once,
// rows padded to DS = D/4 + 1 vec4s. For each block of BK = 4*TC keys up to the last one any of the
// block's queries sees:
//   1. stage K and V rows (zero past lengths[b]);
//   2. thread (tr, tc) computes s = q.k and dp = dO.v for its 4 queries tr + TR*i and 4 keys
//      tc + TC*jj (32 registers), then P (0 where masked) and dS = P * (dp - delta);
//   3. after a barrier (V is no longer read) it writes dS^T over vs: [key][tr] = vec4 of its rows
//      (rows of PS = TR + 1 vec4s);
//   4. dq += dS K: the same thread owns its 4 rows and the d-quads tc + TC*kk (kk < NK) of dq,
//      reading one vec4 of dS^T and NK of K per key.
// Four barriers per key block. Workgroup memory (vec4s): qs and dos BQ*DS each, ks BK*DS,
// vs max(BK*DS, BK*PS) (kernels/flash-attention.ts dqBytes). D, TR and TC are baked in at bind time.
struct Params {
  B: u32,
  T: u32,
  H: u32,
  G: u32,          // query heads per key/value head
  nQB: u32,        // query blocks per (b, h): ceil(T / BQ)
  causal: u32,
  scaleLog2: f32,  // scale * log2(e)
  scale: f32,
  offQ: u32, ldQ: u32,
  offK: u32, ldK: u32,
  offV: u32, ldV: u32,
  offDO: u32, ldDO: u32,
  offDQ: u32, ldDQ: u32,
}
@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> lengths: array<u32>;
@group(0) @binding(2) var<storage, read> lse: array<f32>;
@group(0) @binding(3) var<storage, read> delta: array<f32>;
@group(0) @binding(4) var<storage, read> q: array<f32>;
@group(0) @binding(5) var<storage, read> k: array<f32>;
@group(0) @binding(6) var<storage, read> v: array<f32>;
@group(0) @binding(7) var<storage, read> dout: array<f32>;
@group(0) @binding(8) var<storage, read_write> dq: array<f32>;

// ---- baked by kernels/flash-attention.ts
const D: u32 = 64u;  // head size, a multiple of 4
const TR: u32 = 8u;  // row groups: BQ = 4*TR queries per workgroup
const TC: u32 = 8u;  // column groups: BK = 4*TC keys per block
// ----
const WG: u32 = TR * TC;
const BQ: u32 = 4u * TR;
const BK: u32 = 4u * TC;
const D4: u32 = D / 4u;
const DS: u32 = D4 + 1u;                 // padded row of qs, dos, ks and vs, in vec4s
const PS: u32 = TR + 1u;                 // padded row of dS^T
const NK: u32 = (D4 + TC - 1u) / TC;
const FULL_D: bool = D4 % TC == 0u;
const LOG2E: f32 = 1.4426950408889634;

var<workgroup> qs: array<vec4<f32>, BQ * DS>;
var<workgroup> dos: array<vec4<f32>, BQ * DS>;
var<workgroup> ks: array<vec4<f32>, BK * DS>;
var<workgroup> vs: array<vec4<f32>, max(BK * DS, BK * PS)>;  // V block, then dS^T

fn loadQ(at: u32) -> vec4<f32> { return vec4<f32>(q[at], q[at + 1u], q[at + 2u], q[at + 3u]); }
fn loadK(at: u32) -> vec4<f32> { return vec4<f32>(k[at], k[at + 1u], k[at + 2u], k[at + 3u]); }
fn loadV(at: u32) -> vec4<f32> { return vec4<f32>(v[at], v[at + 1u], v[at + 2u], v[at + 3u]); }
fn loadDO(at: u32) -> vec4<f32> { return vec4<f32>(dout[at], dout[at + 1u], dout[at + 2u], dout[at + 3u]); }

// acc + (a . c0, a . c1, a . c2, a . c3) as 16 fmas
fn dot4x4(acc: vec4<f32>, a: vec4<f32>, c0: vec4<f32>, c1: vec4<f32>, c2: vec4<f32>, c3: vec4<f32>) -> vec4<f32> {
  var r = fma(vec4<f32>(a.x), vec4<f32>(c0.x, c1.x, c2.x, c3.x), acc);
  r = fma(vec4<f32>(a.y), vec4<f32>(c0.y, c1.y, c2.y, c3.y), r);
  r = fma(vec4<f32>(a.z), vec4<f32>(c0.z, c1.z, c2.z, c3.z), r);
  return fma(vec4<f32>(a.w), vec4<f32>(c0.w, c1.w, c2.w, c3.w), r);
}

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
  let BH = params.B * params.H;
  let item = wid.x + wid.y * nwg.x;
  if (item >= BH * params.nQB) { return; }
  let qb = params.nQB - 1u - item / BH;
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

  let qBase = params.offQ + h * D;
  let doBase = params.offDO + h * D;
  for (var e = lid; e < BQ * D4; e += WG) {
    let r = e / D4;
    let c4 = e % D4;
    var x = vec4<f32>(0.0);
    var y = vec4<f32>(0.0);
    if (q0 + r < T) {
      let row = b * T + q0 + r;
      x = loadQ(qBase + row * params.ldQ + 4u * c4) * params.scaleLog2;
      y = loadDO(doBase + row * params.ldDO + 4u * c4);
    }
    qs[r * DS + c4] = x;
    dos[r * DS + c4] = y;
  }

  // this thread's rows q0 + tr + TR*i: their lse (log2 units) and delta
  let rows = vec4<u32>(q0 + tr) + vec4<u32>(0u, TR, 2u * TR, 3u * TR);
  var lse2 = vec4<f32>(0.0);
  var dlt = vec4<f32>(0.0);
  for (var i = 0u; i < 4u; i++) {
    if (rows[i] < T) {
      let at = (b * params.H + h) * T + rows[i];
      lse2[i] = lse[at] * LOG2E;
      dlt[i] = delta[at];
    }
  }

  var acc: array<vec4<f32>, 4u * NK>;  // acc[i*NK + kk]: row i, d-quad tc + TC*kk
  let kBase = params.offK + g * D;
  let vBase = params.offV + g * D;
  for (var kb = 0u; kb < nKB; kb++) {
    let k0 = kb * BK;
    workgroupBarrier();  // everyone is done with the previous block's K and dS^T
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
      vs[r * DS + c4] = vx;
    }
    workgroupBarrier();

    // 2. s and dp of rows tr + TR*i, keys tc + TC*jj
    var s = array<vec4<f32>, 4>();  // zeroed explicitly: SwiftShader keeps a bare var's value across iterations
    var dp = array<vec4<f32>, 4>();
    for (var d4 = 0u; d4 < D4; d4++) {
      let k0v = ks[tc * DS + d4];
      let k1v = ks[(tc + TC) * DS + d4];
      let k2v = ks[(tc + 2u * TC) * DS + d4];
      let k3v = ks[(tc + 3u * TC) * DS + d4];
      let v0v = vs[tc * DS + d4];
      let v1v = vs[(tc + TC) * DS + d4];
      let v2v = vs[(tc + 2u * TC) * DS + d4];
      let v3v = vs[(tc + 3u * TC) * DS + d4];
      for (var i = 0u; i < 4u; i++) {
        let at = (tr + i * TR) * DS + d4;
        s[i] = dot4x4(s[i], qs[at], k0v, k1v, k2v, k3v);
        dp[i] = dot4x4(dp[i], dos[at], v0v, v1v, v2v, v3v);
      }
    }
    let keys = vec4<u32>(k0 + tc) + vec4<u32>(0u, TC, 2u * TC, 3u * TC);
    let inLength = keys < vec4<u32>(kEnd);
    let noCausal = vec4<bool>(params.causal == 0u);
    var ds: array<vec4<f32>, 4>;
    for (var i = 0u; i < 4u; i++) {
      let ok = inLength & (noCausal | (keys <= vec4<u32>(rows[i])));
      let p = select(vec4<f32>(0.0), exp2(s[i] - vec4<f32>(lse2[i])), ok);
      ds[i] = p * (dp[i] - vec4<f32>(dlt[i]));
    }
    workgroupBarrier();  // everyone is done reading V
    for (var jj = 0u; jj < 4u; jj++) {
      vs[(tc + jj * TC) * PS + tr] = vec4<f32>(ds[0][jj], ds[1][jj], ds[2][jj], ds[3][jj]);
    }
    workgroupBarrier();

    // 4. dq += dS K
    for (var j = 0u; j < BK; j++) {
      let sj = vs[j * PS + tr];
      for (var kk = 0u; kk < NK; kk++) {
        let dqd = tc + kk * TC;
        if (FULL_D || dqd < D4) {
          let kj = ks[j * DS + dqd];
          acc[kk] = fma(vec4<f32>(sj.x), kj, acc[kk]);
          acc[NK + kk] = fma(vec4<f32>(sj.y), kj, acc[NK + kk]);
          acc[2u * NK + kk] = fma(vec4<f32>(sj.z), kj, acc[2u * NK + kk]);
          acc[3u * NK + kk] = fma(vec4<f32>(sj.w), kj, acc[3u * NK + kk]);
        }
      }
    }
  }

  for (var i = 0u; i < 4u; i++) {
    let t = rows[i];
    if (t >= T) { continue; }
    let at = params.offDQ + (b * T + t) * params.ldDQ + h * D;
    for (var kk = 0u; kk < NK; kk++) {
      let dqd = tc + kk * TC;
      if (FULL_D || dqd < D4) {
        let x = acc[i * NK + kk] * params.scale;
        dq[at + 4u * dqd] = x.x;
        dq[at + 4u * dqd + 1u] = x.y;
        dq[at + 4u * dqd + 2u] = x.z;
        dq[at + 4u * dqd + 3u] = x.w;
      }
    }
  }
}
