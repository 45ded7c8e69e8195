// Flash attention, backward: the pre-pass. The backward (kernels/flash-attention.ts
// flashAttentionBackward) is three dispatches:
//   1. this one: delta[(b*H + h)*T + i] = sum_d dO[b, i, h, d] * O[b, i, h, d] (= rowsum(P * dP),
//      FlashAttention-2's D_i), for every row;
//   2. shaders/flash_attention_backward_dkdv.wgsl: dK and dV, one workgroup per (b, key/value head,
//      key block) walking the group's query heads and the query blocks that see the keys (or, with
//      grouped-query heads and a scratch, one per query head writing partial sums that
//      shaders/flash_attention_backward_reduce.wgsl then adds up per group);
//   3. shaders/flash_attention_backward_dq.wgsl: dQ, one workgroup per (b, head, query block)
//      walking the key blocks its queries see.
// Both recompute the probabilities P = exp(scale * q.k - lse) from the forward's log-sum-exp, so
// no T x T matrix is ever stored; dS = P * (dP - delta), dP = dO V^T:
//   dV = P^T dO,  dK = scale * dS^T Q,  dQ = scale * dS K.
// Layouts as in shaders/flash_attention_forward.wgsl (o and dO: offO / ldO, offDO / ldDO).
// `main`: one thread per row (b, i, h) (heads of one position on neighbouring threads: their D-wide
// slices of o and dO lie side by side), workgroups folded into y past 65535. `main_vec4`, where every
// offset and row stride is a multiple of 4 (kernels/flash-attention.ts picks it): LANES = D / 4
// neighbouring threads per row, one vec4 of o and dO each, so a warp reads whole runs of the rows
// (one thread walking a row ran GPT-2's 24,576 rows at ~0.45 TB/s on the H100), their products
// summed through workgroup memory; a workgroup takes 256 / LANES rows.
struct Params {
  rows: u32,  // B * T * H
  H: u32,
  T: u32,
  D: u32,
  offO: u32, ldO: u32,
  offDO: u32, ldDO: u32,
}
@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> o: array<f32>;
@group(0) @binding(2) var<storage, read> dout: array<f32>;
@group(0) @binding(3) var<storage, read_write> delta: array<f32>;
// main_vec4's views of o and dout
@group(0) @binding(1) var<storage, read> o4: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> dout4: array<vec4<f32>>;

// main_vec4: threads per row (D / 4, at most 32)
override LANES: u32 = 16u;
var<workgroup> partial: array<f32, 256>;

const WG: u32 = 256u;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
  let n = (wid.x + wid.y * nwg.x) * WG + lid;
  if (n >= params.rows) { return; }
  let h = n % params.H;
  let bt = n / params.H;  // b*T + i
  let b = bt / params.T;
  let i = bt % params.T;
  let atO = params.offO + bt * params.ldO + h * params.D;
  let atDO = params.offDO + bt * params.ldDO + h * params.D;
  var s = vec4<f32>(0.0);
  for (var d = 0u; d < params.D; d += 4u) {
    let x = vec4<f32>(o[atO + d], o[atO + d + 1u], o[atO + d + 2u], o[atO + d + 3u]);
    let y = vec4<f32>(dout[atDO + d], dout[atDO + d + 1u], dout[atDO + d + 2u], dout[atDO + d + 3u]);
    s = fma(x, y, s);
  }
  delta[(b * params.H + h) * params.T + i] = (s.x + s.y) + (s.z + s.w);
}

@compute @workgroup_size(WG)
fn main_vec4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
             @builtin(local_invocation_index) lid: u32) {
  let rowsPerWg = WG / LANES;
  let inWg = lid / LANES;
  let lane = lid % LANES;
  let n = (wid.x + wid.y * nwg.x) * rowsPerWg + inWg;
  let valid = inWg < rowsPerWg && n < params.rows;
  var x = 0.0;
  if (valid) {
    let h = n % params.H;
    let bt = n / params.H;
    let o = o4[(params.offO + bt * params.ldO + h * params.D) / 4u + lane];
    let g = dout4[(params.offDO + bt * params.ldDO + h * params.D) / 4u + lane];
    let p = o * g;
    x = (p.x + p.y) + (p.z + p.w);
  }
  partial[lid] = x;
  workgroupBarrier();
  if (valid && lane == 0u) {
    var s = 0.0;
    for (var l = 0u; l < LANES; l++) { s += partial[lid + l]; }
    let h = n % params.H;
    let bt = n / params.H;
    delta[((bt / params.T) * params.H + h) * params.T + bt % params.T] = s;
  }
}
