// Masked, scaled softmax over attention score rows. scores/probs are [B*H, T, T]: row (z, i) holds
// query i's scores against keys j. Key j is allowed iff j < lengths[b] (right padding) and, when
// causal, j <= i. So the allowed keys of a row are exactly j < limit, limit = min(len, T[, i + 1]).
//   forward:  probs[z,i,j] = exp(scale*s_ij - max) / sum over allowed j; 0 where not allowed;
//             a row with no allowed key is all zeros.
//   backward: dscores = scale * P * (dP - sum_j P*dP)  (masked entries have P = 0, so give 0).
// One 256-thread workgroup per row, rows folded into the y dimension past 65535 workgroups.
// The *_inplace entry points serve probs == scores and dscores == dprobs: WebGPU forbids binding
// one buffer twice when one binding is writable, so they read through the writable binding. Each
// thread reads and writes only its own columns, so in place is safe.
struct Params { B: u32, H: u32, T: u32, scale: f32, causal: u32 }
@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read_write> out: array<f32>;  // probs (forward) or dscores (backward)
// forward
@group(0) @binding(2) var<storage, read> lengths: array<u32>;
@group(0) @binding(3) var<storage, read> scores: array<f32>;
// backward
@group(0) @binding(2) var<storage, read> probs: array<f32>;
@group(0) @binding(3) var<storage, read> dprobs: array<f32>;

const WG: u32 = 256u;
const NEG_BIG: f32 = -3.0e38;
var<workgroup> red: array<f32, WG>;

fn workgroupMax(v: f32, lid: u32) -> f32 {
  red[lid] = v;
  workgroupBarrier();
  for (var s = WG / 2u; s > 0u; s >>= 1u) {
    if (lid < s) { red[lid] = max(red[lid], red[lid + s]); }
    workgroupBarrier();
  }
  let r = red[0];
  workgroupBarrier();  // before red is reused
  return r;
}

fn workgroupSum(v: f32, lid: u32) -> f32 {
  red[lid] = v;
  workgroupBarrier();
  for (var s = WG / 2u; s > 0u; s >>= 1u) {
    if (lid < s) { red[lid] += red[lid + s]; }
    workgroupBarrier();
  }
  let r = red[0];
  workgroupBarrier();
  return r;
}

fn rowIndex(wid: vec3<u32>, nwg: vec3<u32>) -> u32 {
  return wid.x + wid.y * nwg.x;
}

fn rowCount() -> u32 {
  return params.B * params.H * params.T;
}

// Allowed keys of row (z, i) are j < limit.
fn allowedLimit(row: u32) -> u32 {
  let T = params.T;
  let z = row / T;
  let i = row - z * T;
  var limit = min(lengths[z / params.H], T);
  if (params.causal != 0u) { limit = min(limit, i + 1u); }
  return limit;
}

@compute @workgroup_size(WG)
fn forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_index) lid: u32) {
  let row = rowIndex(wid, nwg);
  if (row >= rowCount()) { return; }
  let base = row * params.T;
  let limit = allowedLimit(row);
  var m = NEG_BIG;
  for (var j = lid; j < limit; j += WG) { m = max(m, params.scale * scores[base + j]); }
  m = workgroupMax(m, lid);
  var s = 0.0;
  for (var j = lid; j < limit; j += WG) { s += exp(params.scale * scores[base + j] - m); }
  s = workgroupSum(s, lid);
  let inv = select(0.0, 1.0 / s, limit > 0u);
  for (var j = lid; j < params.T; j += WG) {
    var p = 0.0;
    if (j < limit) { p = exp(params.scale * scores[base + j] - m) * inv; }
    out[base + j] = p;
  }
}

@compute @workgroup_size(WG)
fn forward_inplace(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                   @builtin(local_invocation_index) lid: u32) {
  let row = rowIndex(wid, nwg);
  if (row >= rowCount()) { return; }
  let base = row * params.T;
  let limit = allowedLimit(row);
  var m = NEG_BIG;
  for (var j = lid; j < limit; j += WG) { m = max(m, params.scale * out[base + j]); }
  m = workgroupMax(m, lid);
  var s = 0.0;
  for (var j = lid; j < limit; j += WG) { s += exp(params.scale * out[base + j] - m); }
  s = workgroupSum(s, lid);
  let inv = select(0.0, 1.0 / s, limit > 0u);
  for (var j = lid; j < params.T; j += WG) {
    var p = 0.0;
    if (j < limit) { p = exp(params.scale * out[base + j] - m) * inv; }
    out[base + j] = p;
  }
}

@compute @workgroup_size(WG)
fn backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_index) lid: u32) {
  let row = rowIndex(wid, nwg);
  if (row >= rowCount()) { return; }
  let base = row * params.T;
  var d = 0.0;
  for (var j = lid; j < params.T; j += WG) { d += probs[base + j] * dprobs[base + j]; }
  d = workgroupSum(d, lid);
  for (var j = lid; j < params.T; j += WG) {
    let k = base + j;
    out[k] = params.scale * probs[k] * (dprobs[k] - d);
  }
}

@compute @workgroup_size(WG)
fn backward_inplace(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                    @builtin(local_invocation_index) lid: u32) {
  let row = rowIndex(wid, nwg);
  if (row >= rowCount()) { return; }
  let base = row * params.T;
  var d = 0.0;
  for (var j = lid; j < params.T; j += WG) { d += probs[base + j] * out[base + j]; }
  d = workgroupSum(d, lid);
  for (var j = lid; j < params.T; j += WG) {
    let k = base + j;
    out[k] = params.scale * probs[k] * (out[k] - d);
  }
}
