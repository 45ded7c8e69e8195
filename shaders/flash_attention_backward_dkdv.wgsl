// Flash attention, backward: dK and dV (see shaders/flash_attention_backward.wgsl for the whole
// backward and shaders/flash_attention_forward.wgsl for the layouts and the mask). For each
// (b, key/value head g, key j), over the G query heads h of the group and the queries i that see j:
//   dv_j = sum_{h, i} P_ij dO_i,   dk_j = scale * sum_{h, i} dS_ij q_i,
//   P_ij = exp2(log2(e) * (scale * q_i . k_j - lse_i)),   dS_ij = P_ij (dO_i . v_j - delta_i).
// The group's sum is made in registers, so no atomics: dk and dv are written (not accumulated);
// keys past lengths[b] get 0, keys past T are not touched.
// A workgroup's "unit" is a key/value head whose HPU = G query heads it walks (the above), or, with
// grouped-query heads and a scratch (kernels/flash-attention.ts dkvScratch), a single query head
// (HPU = 1, units = H): the kernel then writes that head's share of dk and dv into the scratch's
// [B*T, H*D] halves at column h*D, and shaders/flash_attention_backward_reduce.wgsl sums each group.
//
// Tiling (roles swapped from the forward: the tile's rows are keys): one workgroup of TR*TC
// threads per (b, unit, block of BK = 4*TR keys), the first key blocks (the most queries see them
// under the causal mask) first. K's block (scaled by scale*log2(e)) and V's are staged once, rows
// padded to DS = D/4 + 1 vec4s; a block past lengths[b] only writes zeros. Then, for each query
// head of the unit and each block of BQ = 4*TC queries from the first that sees the keys:
//   1. stage Q and dO rows (zero past T);
//   2. thread (tr, tc) computes s = k.q and dp = v.dO for its 4 keys tr + TR*a and 4 queries
//      tc + TC*b (32 registers), then P (0 where masked, and for queries past T) and dS, reading
//      lse and delta of its 4 queries; P^T and dS^T go to pt and dst: [query][tr] = vec4 of its keys
//      (rows of PS = TR + 1 vec4s);
//   3. dv += P^T dO and dk += dS^T Q: the same thread owns its 4 keys and the d-quads tc + TC*kk
//      (kk < NK) of dk and dv (8*NK vec4 registers), reading 2 vec4s of pt / dst and 2*NK of
//      dO / Q per query.
// Two barriers per query block. Workgroup memory (vec4s): ks and vs BK*DS each, qs and dos BQ*DS
// each, pt and dst BQ*PS each (kernels/flash-attention.ts dkdvBytes). D, TR and TC are baked in at
// bind time; so is whether dk and dv are one buffer (the lines marked SEPARATE_DV are then dropped
// and those marked SHARED_DV uncommented: WebGPU cannot bind one buffer twice when one of the
// bindings is writable).
struct Params {
  B: u32,
  T: u32,
  H: u32,
  G: u32,          // query heads per key/value head
  units: u32,      // units per sequence: key/value heads (HPU = G) or query heads (HPU = 1)
  HPU: u32,        // query heads per unit
  nKB: u32,        // key blocks per (b, unit): ceil(T / BK)
  causal: u32,
  scaleLog2: f32,  // scale * log2(e)
  scale: f32,
  offQ: u32, ldQ: u32,
  offK: u32, ldK: u32,
  offV: u32, ldV: u32,
  offDO: u32, ldDO: u32,
  offDK: u32, ldDK: u32,
  offDV: u32, ldDV: u32,
}
@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> lengths: array<u32>;
@group(0) @binding(2) var<storage, read> lse: array<f32>;
@group(0) @binding(3) var<storage, read> delta: array<f32>;
@group(0) @binding(4) var<storage, read> q: array<f32>;
@group(0) @binding(5) var<storage, read> k: array<f32>;
@group(0) @binding(6) var<storage, read> v: array<f32>;
@group(0) @binding(7) var<storage, read> dout: array<f32>;
@group(0) @binding(8) var<storage, read_write> dk: array<f32>;
@group(0) @binding(9) var<storage, read_write> dv: array<f32>; // SEPARATE_DV
fn storeDV(at: u32, x: f32) { dv[at] = x; } // SEPARATE_DV
// fn storeDV(at: u32, x: f32) { dk[at] = x; } // SHARED_DV

// ---- baked by kernels/flash-attention.ts
const D: u32 = 64u;  // head size, a multiple of 4
const TR: u32 = 8u;  // row groups: BK = 4*TR keys per workgroup
const TC: u32 = 8u;  // column groups: BQ = 4*TC queries per block
// ----
const WG: u32 = TR * TC;
const BK: u32 = 4u * TR;
const BQ: u32 = 4u * TC;
const D4: u32 = D / 4u;
const DS: u32 = D4 + 1u;                 // padded row of ks, vs, qs and dos, in vec4s
const PS: u32 = TR + 1u;                 // padded row of pt and dst
const NK: u32 = (D4 + TC - 1u) / TC;
const FULL_D: bool = D4 % TC == 0u;
const LOG2E: f32 = 1.4426950408889634;

var<workgroup> ks: array<vec4<f32>, BK * DS>;
var<workgroup> vs: array<vec4<f32>, BK * DS>;
var<workgroup> qs: array<vec4<f32>, BQ * DS>;
var<workgroup> dos: array<vec4<f32>, BQ * DS>;
var<workgroup> pt: array<vec4<f32>, BQ * PS>;
var<workgroup> dst: array<vec4<f32>, BQ * PS>;

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
  let BG = params.B * params.units;
  let item = wid.x + wid.y * nwg.x;
  if (item >= BG * params.nKB) { return; }
  let kb = item / BG;  // first key blocks (the longest under the causal mask) first
  let b = (item % BG) / params.units;
  let unit = item % params.units;
  let h0 = unit * params.HPU;  // first query head
  let g = h0 / params.G;       // key/value head
  let T = params.T;
  let kEnd = min(lengths[b], T);
  let k0 = kb * BK;
  let tr = lid / TC;
  let tc = lid % TC;

  let kBase = params.offK + g * D;
  let vBase = params.offV + g * D;
  for (var e = lid; e < BK * D4; e += WG) {
    let r = e / D4;
    let c4 = e % D4;
    var kx = vec4<f32>(0.0);
    var vx = vec4<f32>(0.0);
    if (k0 + r < kEnd) {
      let row = b * T + k0 + r;
      kx = loadK(kBase + row * params.ldK + 4u * c4) * params.scaleLog2;
      vx = loadV(vBase + row * params.ldV + 4u * c4);
    }
    ks[r * DS + c4] = kx;
    vs[r * DS + c4] = vx;
  }

  // this thread's keys k0 + tr + TR*a
  let keys = vec4<u32>(k0 + tr) + vec4<u32>(0u, TR, 2u * TR, 3u * TR);
  let keyOk = keys < vec4<u32>(kEnd);
  let noCausal = vec4<bool>(params.causal == 0u);
  var dka: array<vec4<f32>, 4u * NK>;  // [a*NK + kk]: key a, d-quad tc + TC*kk
  var dva: array<vec4<f32>, 4u * NK>;
  let nQB = (T + BQ - 1u) / BQ;
  var qbStart = 0u;
  if (params.causal != 0u) { qbStart = k0 / BQ; }
  if (k0 >= kEnd) { qbStart = nQB; }  // no visible key here: zeros
  for (var hh = 0u; hh < params.HPU; hh++) {
    let h = h0 + hh;
    let qBase = params.offQ + h * D;
    let doBase = params.offDO + h * D;
    for (var qb = qbStart; qb < nQB; qb++) {
      let q0 = qb * BQ;
      workgroupBarrier();  // everyone is done with the previous block's Q, dO, P^T and dS^T
      for (var e = lid; e < BQ * D4; e += WG) {
        let r = e / D4;
        let c4 = e % D4;
        var x = vec4<f32>(0.0);
        var y = vec4<f32>(0.0);
        if (q0 + r < T) {
          let row = b * T + q0 + r;
          x = loadQ(qBase + row * params.ldQ + 4u * c4);
          y = loadDO(doBase + row * params.ldDO + 4u * c4);
        }
        qs[r * DS + c4] = x;
        dos[r * DS + c4] = y;
      }
      // lse (log2 units) and delta of this thread's queries q0 + tc + TC*c
      let queries = vec4<u32>(q0 + tc) + vec4<u32>(0u, TC, 2u * TC, 3u * TC);
      var lse2 = vec4<f32>(0.0);
      var dlt = vec4<f32>(0.0);
      for (var c = 0u; c < 4u; c++) {
        if (queries[c] < T) {
          let at = (b * params.H + h) * T + queries[c];
          lse2[c] = lse[at] * LOG2E;
          dlt[c] = delta[at];
        }
      }
      let queryOk = queries < vec4<u32>(T);
      workgroupBarrier();

      // 2. s and dp of keys tr + TR*a, queries tc + TC*c
      var s = array<vec4<f32>, 4>();  // zeroed explicitly: SwiftShader keeps a bare var's value across iterations
      var dp = array<vec4<f32>, 4>();
      for (var d4 = 0u; d4 < D4; d4++) {
        let q0v = qs[tc * DS + d4];
        let q1v = qs[(tc + TC) * DS + d4];
        let q2v = qs[(tc + 2u * TC) * DS + d4];
        let q3v = qs[(tc + 3u * TC) * DS + d4];
        let o0v = dos[tc * DS + d4];
        let o1v = dos[(tc + TC) * DS + d4];
        let o2v = dos[(tc + 2u * TC) * DS + d4];
        let o3v = dos[(tc + 3u * TC) * DS + d4];
        for (var a = 0u; a < 4u; a++) {
          let at = (tr + a * TR) * DS + d4;
          s[a] = dot4x4(s[a], ks[at], q0v, q1v, q2v, q3v);
          dp[a] = dot4x4(dp[a], vs[at], o0v, o1v, o2v, o3v);
        }
      }
      var p: array<vec4<f32>, 4>;
      var ds: array<vec4<f32>, 4>;
      for (var a = 0u; a < 4u; a++) {
        let ok = vec4<bool>(keyOk[a]) & queryOk & (noCausal | (vec4<u32>(keys[a]) <= queries));
        p[a] = select(vec4<f32>(0.0), exp2(s[a] - lse2), ok);
        ds[a] = p[a] * (dp[a] - dlt);
      }
      for (var c = 0u; c < 4u; c++) {
        let at = (tc + c * TC) * PS + tr;
        pt[at] = vec4<f32>(p[0][c], p[1][c], p[2][c], p[3][c]);
        dst[at] = vec4<f32>(ds[0][c], ds[1][c], ds[2][c], ds[3][c]);
      }
      workgroupBarrier();

      // 3. dv += P^T dO, dk += dS^T Q
      for (var j = 0u; j < BQ; j++) {
        let pj = pt[j * PS + tr];
        let sj = dst[j * PS + tr];
        for (var kk = 0u; kk < NK; kk++) {
          let dqd = tc + kk * TC;
          if (FULL_D || dqd < D4) {
            let oj = dos[j * DS + dqd];
            let qj = qs[j * DS + dqd];
            dva[kk] = fma(vec4<f32>(pj.x), oj, dva[kk]);
            dva[NK + kk] = fma(vec4<f32>(pj.y), oj, dva[NK + kk]);
            dva[2u * NK + kk] = fma(vec4<f32>(pj.z), oj, dva[2u * NK + kk]);
            dva[3u * NK + kk] = fma(vec4<f32>(pj.w), oj, dva[3u * NK + kk]);
            dka[kk] = fma(vec4<f32>(sj.x), qj, dka[kk]);
            dka[NK + kk] = fma(vec4<f32>(sj.y), qj, dka[NK + kk]);
            dka[2u * NK + kk] = fma(vec4<f32>(sj.z), qj, dka[2u * NK + kk]);
            dka[3u * NK + kk] = fma(vec4<f32>(sj.w), qj, dka[3u * NK + kk]);
          }
        }
      }
    }
  }

  for (var a = 0u; a < 4u; a++) {
    let t = keys[a];
    if (t >= T) { continue; }
    let atK = params.offDK + (b * T + t) * params.ldDK + unit * D;
    let atV = params.offDV + (b * T + t) * params.ldDV + unit * D;
    for (var kk = 0u; kk < NK; kk++) {
      let dqd = tc + kk * TC;
      if (FULL_D || dqd < D4) {
        let x = dka[a * NK + kk] * params.scale;
        let y = dva[a * NK + kk];
        dk[atK + 4u * dqd] = x.x;
        dk[atK + 4u * dqd + 1u] = x.y;
        dk[atK + 4u * dqd + 2u] = x.z;
        dk[atK + 4u * dqd + 3u] = x.w;
        storeDV(atV + 4u * dqd, y.x);
        storeDV(atV + 4u * dqd + 1u, y.y);
        storeDV(atV + 4u * dqd + 2u, y.z);
        storeDV(atV + 4u * dqd + 3u, y.w);
      }
    }
  }
}
