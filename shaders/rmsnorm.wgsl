// RMSNorm over the last dimension C, exactly transformers' LlamaRMSNorm in f32 (also Qwen2/Qwen3,
// whose q_norm/k_norm apply it per head): one workgroup per row, rows folded into the y dimension
// past 65535 workgroups. WG threads per workgroup (override: 64 for short rows such as one head,
// 256 otherwise).
//   forward:  r = 1 / sqrt(mean(x^2) + eps),  out = weight * (x * r); saves r per row;
//             forward_copy also copies x to xCopy.
//   backward: dx (+)= r * (g - xhat * mean(g * xhat)),  g = dout * weight,  xhat = x * r.
//             (d/dx_k of w_c x_c r = r w_k [c == k] - w_c x_c r^3 x_k / C.) The weight is frozen.
// Two variants (kernels/subgroups.ts): the row sum goes through workgroup memory in a tree, or,
// where the device has subgroups, through subgroupAdd: per subgroup, one slot of `red` per
// subgroup, one barrier, every subgroup sums the slots (shaders/subgroup_reduce.wgsl checks the
// layout per workgroup and falls back to the tree where it does not hold).
struct Params { rows: u32, C: u32, eps: f32, accumulate: u32 }
@group(0) @binding(0) var<uniform> params: Params;

// forward bindings
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> weight: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;
@group(0) @binding(4) var<storage, read_write> rstdOut: array<f32>;
@group(0) @binding(5) var<storage, read_write> xCopy: array<f32>; // forward_copy only

// backward bindings (an entry point may reuse binding numbers of variables it does not touch)
@group(0) @binding(1) var<storage, read> bDout: array<f32>;
@group(0) @binding(2) var<storage, read> bX: array<f32>;
@group(0) @binding(3) var<storage, read> bWeight: array<f32>;
@group(0) @binding(4) var<storage, read> bRstd: array<f32>;
@group(0) @binding(5) var<storage, read_write> dx: array<f32>;

override WG: u32 = 256u;  // a power of two
var<workgroup> red: array<f32, WG>;

// Sum of v over the workgroup, returned to every thread. Must be called in uniform control flow.
fn workgroupSum(v: f32, lid: u32) -> f32 {
  red[lid] = v;
  workgroupBarrier();
  for (var s = WG / 2u; s > 0u; s >>= 1u) {
    if (lid < s) { red[lid] += red[lid + s]; }
    workgroupBarrier();
  }
  return red[0];
}

// Sum of v over the workgroup, returned to every thread: through subgroups when sg (subgroupBlock)
// is not 0, else workgroupSum. Must be called in uniform control flow, once per kernel.
// #if subgroups
fn rowSum(v: f32, lid: u32, sg: u32) -> f32 {
  if (sg == 0u) { return workgroupSum(v, lid); }
  let part = subgroupAdd(v);
  let lane = lid % sg;
  if (lane == 0u) { red[lid / sg] = part; }
  workgroupBarrier();
  var acc = 0.0;
  for (var k = lane; k < WG / sg; k += sg) { acc += red[k]; }
  return subgroupAdd(acc);
}
// #else
fn rowSum(v: f32, lid: u32, sg: u32) -> f32 {
  return workgroupSum(v, lid);
}
// #endif

// The forward of one row (every thread of the workgroup, uniform control flow).
fn normalizeRow(row: u32, lid: u32, sg: u32) {
  let C = params.C;
  let base = row * C;
  var q = 0.0;
  for (var c = lid; c < C; c += WG) {
    let v = x[base + c];
    q += v * v;
  }
  let rstd = 1.0 / sqrt(rowSum(q, lid, sg) / f32(C) + params.eps);
  for (var c = lid; c < C; c += WG) {
    // transformers: weight * (hidden_states * rsqrt(variance + eps)), in this order.
    out[base + c] = weight[c] * (x[base + c] * rstd);
  }
  if (lid == 0u) { rstdOut[row] = rstd; }
}

@compute @workgroup_size(WG)
fn forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
// #if subgroups
           @builtin(subgroup_size) sgSize: u32, @builtin(subgroup_invocation_id) sgId: u32,
// #endif
           @builtin(local_invocation_index) lid: u32) {
  let row = wid.x + wid.y * nwg.x;
  if (row >= params.rows) { return; }
// #if subgroups
  normalizeRow(row, lid, subgroupBlock(lid, sgSize, sgId, WG));
// #else
  normalizeRow(row, lid, 0u);
// #endif
}

// forward, and the row copied to xCopy: the residual stream carried on to the buffer the next
// product accumulates into (kernels/rmsnorm.ts copyTo), in place of a copy pass.
@compute @workgroup_size(WG)
fn forward_copy(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
// #if subgroups
                @builtin(subgroup_size) sgSize: u32, @builtin(subgroup_invocation_id) sgId: u32,
// #endif
                @builtin(local_invocation_index) lid: u32) {
  let row = wid.x + wid.y * nwg.x;
  if (row >= params.rows) { return; }
// #if subgroups
  normalizeRow(row, lid, subgroupBlock(lid, sgSize, sgId, WG));
// #else
  normalizeRow(row, lid, 0u);
// #endif
  let base = row * params.C;
  for (var c = lid; c < params.C; c += WG) { xCopy[base + c] = x[base + c]; }
}

@compute @workgroup_size(WG)
fn backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
// #if subgroups
            @builtin(subgroup_size) sgSize: u32, @builtin(subgroup_invocation_id) sgId: u32,
// #endif
            @builtin(local_invocation_index) lid: u32) {
  let row = wid.x + wid.y * nwg.x;
  if (row >= params.rows) { return; }
// #if subgroups
  let sg = subgroupBlock(lid, sgSize, sgId, WG);
// #else
  let sg = 0u;
// #endif
  let C = params.C;
  let base = row * C;
  let rstd = bRstd[row];
  var acc = 0.0;
  for (var c = lid; c < C; c += WG) {
    acc += bDout[base + c] * bWeight[c] * (bX[base + c] * rstd);
  }
  let m = rowSum(acc, lid, sg) / f32(C);
  for (var c = lid; c < C; c += WG) {
    let g = bDout[base + c] * bWeight[c];
    let xhat = bX[base + c] * rstd;
    var v = rstd * (g - xhat * m);
    if (params.accumulate != 0u) { v += dx[base + c]; }
    dx[base + c] = v;
  }
}
