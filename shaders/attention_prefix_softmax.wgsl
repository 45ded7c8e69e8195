// Masked, scaled softmax over attention score rows that have P always-visible key columns before
// the sequence's own keys (prefix tuning's per-layer key/value prefix). scores/probs are
// [B*H, T, P+T]: row (z, i) holds query i's scores against the P prefix keys (columns 0..P-1)
// and then the T real keys (column P+j is key j). Prefix keys are visible to every query; real key
// j is visible iff j < lengths[b] (right padding) and, when causal, j <= i. So the allowed columns
// of a row are exactly c < limit, limit = P + min(len, T[, i + 1]). With P = 0 this is plain
// causal/padded attention: src/engine/kernels/attention-softmax.ts binds it that way.
//   forward:  probs[z,i,c] = exp(scale*s_ic - max) / sum over allowed c; 0 where not allowed.
//   backward: dscores = scale * P * (dP - sum_c P*dP)  (masked entries have P = 0, so give 0).
//     When causal, real key j > i is not read at all (neither P nor dP) and gets an exact 0: the
//     causal products leave dP's tiles above the diagonal unwritten (kernels/matmul.ts
//     triangle 'lowerC'), and 0 * (stale NaN or Inf) would be NaN. The padding mask still goes
//     through P = 0 (dP is computed there).
// A 256-thread workgroup takes ROWS_PER_WG = 8 rows, 32 threads (LANES) per row: with one row per
// workgroup the H100 ran this at a sixth of its memory bandwidth (24,576 tiny workgroups per GPT-2
// layer). Rows are folded into the y dimension past 65535 workgroups. Every thread reaches every
// barrier (threads past the last row work on an empty row), as WGSL requires.
// The *_inplace entry points serve probs == scores and dscores == dprobs (WebGPU forbids binding
// one buffer twice when one binding is writable); each thread touches only its own columns.
// Two variants (kernels/subgroups.ts) of the row max/sum over a row's LANES threads: through
// workgroup memory, log2(LANES) barrier rounds each; or, where the device has subgroups (and
// shaders/subgroup_reduce.wgsl found the usual layout in this workgroup), a butterfly of
// subgroupShuffleXor over the row's lanes in one subgroup: no barrier when a subgroup holds whole
// rows (subgroup size >= LANES: NVIDIA, AMD), else the butterfly over each subgroup then one
// barrier to combine the row's LANES / subgroup-size partials through workgroup memory. Each
// butterfly step adds a + b on one lane and b + a on its partner, so every lane of a row ends with
// the same bits.
struct Params { B: u32, H: u32, T: u32, P: u32, scale: f32, causal: u32 }
@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read_write> out: array<f32>;  // probs (forward) or dscores (backward)
// forward
@group(0) @binding(2) var<storage, read> lengths: array<u32>;
@group(0) @binding(3) var<storage, read> scores: array<f32>;
// backward
@group(0) @binding(2) var<storage, read> probs: array<f32>;
@group(0) @binding(3) var<storage, read> dprobs: array<f32>;

const WG: u32 = 256u;
const LANES: u32 = 32u;
const ROWS_PER_WG: u32 = WG / LANES;
const NEG_BIG: f32 = -3.0e38;
var<workgroup> red: array<f32, WG>;

// Max and sum over the LANES threads of one row (a segment of `red`); every thread calls these.
fn rowMax(v: f32, lid: u32) -> f32 {
  red[lid] = v;
  workgroupBarrier();
  let lane = lid % LANES;
  for (var s = LANES / 2u; s > 0u; s >>= 1u) {
    if (lane < s) { red[lid] = max(red[lid], red[lid + s]); }
    workgroupBarrier();
  }
  let r = red[lid - lane];
  workgroupBarrier();
  return r;
}

fn rowSum(v: f32, lid: u32) -> f32 {
  red[lid] = v;
  workgroupBarrier();
  let lane = lid % LANES;
  for (var s = LANES / 2u; s > 0u; s >>= 1u) {
    if (lane < s) { red[lid] += red[lid + s]; }
    workgroupBarrier();
  }
  let r = red[lid - lane];
  workgroupBarrier();
  return r;
}

// The row max / sum through subgroups when sg (subgroupBlock) is not 0, else rowMax / rowSum.
// Partials of rows split over several subgroups (sg < LANES) go to red[at + lid / sg], at most
// WG / 4 of them: the forward's max and sum use different ranges, so no barrier between them.
// #if subgroups
fn rowMaxSg(v: f32, lid: u32, sg: u32, at: u32) -> f32 {
  if (sg == 0u) { return rowMax(v, lid); }
  var r = v;
  for (var k = min(sg, LANES) / 2u; k > 0u; k >>= 1u) { r = max(r, subgroupShuffleXor(r, k)); }
  if (sg >= LANES) { return r; }
  if (lid % sg == 0u) { red[at + lid / sg] = r; }
  workgroupBarrier();
  let first = at + (lid / LANES) * (LANES / sg);
  var m = red[first];
  for (var k = 1u; k < LANES / sg; k++) { m = max(m, red[first + k]); }
  return m;
}

fn rowSumSg(v: f32, lid: u32, sg: u32, at: u32) -> f32 {
  if (sg == 0u) { return rowSum(v, lid); }
  var r = v;
  for (var k = min(sg, LANES) / 2u; k > 0u; k >>= 1u) { r += subgroupShuffleXor(r, k); }
  if (sg >= LANES) { return r; }
  if (lid % sg == 0u) { red[at + lid / sg] = r; }
  workgroupBarrier();
  let first = at + (lid / LANES) * (LANES / sg);
  var s = red[first];
  for (var k = 1u; k < LANES / sg; k++) { s += red[first + k]; }
  return s;
}
// #else
fn rowMaxSg(v: f32, lid: u32, sg: u32, at: u32) -> f32 {
  return rowMax(v, lid);
}

fn rowSumSg(v: f32, lid: u32, sg: u32, at: u32) -> f32 {
  return rowSum(v, lid);
}
// #endif

// This thread's row: ROWS_PER_WG rows per workgroup, LANES threads each.
fn rowIndex(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
  return (wid.x + wid.y * nwg.x) * ROWS_PER_WG + lid / LANES;
}

fn rowCount() -> u32 {
  return params.B * params.H * params.T;
}

fn rowLength() -> u32 {
  return params.P + params.T;
}

// Columns of row (z, i) the backward reads: all P + T, or c < P + i + 1 when causal.
fn causalLimit(row: u32) -> u32 {
  let i = row % params.T;
  if (params.causal != 0u) { return params.P + i + 1u; }
  return rowLength();
}

// Allowed columns of row (z, i) are c < limit.
fn allowedLimit(row: u32) -> u32 {
  let T = params.T;
  let z = row / T;
  let i = row - z * T;
  var limit = min(lengths[z / params.H], T);
  if (params.causal != 0u) { limit = min(limit, i + 1u); }
  return params.P + limit;
}

@compute @workgroup_size(WG)
fn forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
// #if subgroups
           @builtin(subgroup_size) sgSize: u32, @builtin(subgroup_invocation_id) sgId: u32,
// #endif
           @builtin(local_invocation_index) lid: u32) {
// #if subgroups
  let sg = subgroupBlock(lid, sgSize, sgId, WG);
// #else
  let sg = 0u;
// #endif
  let row = rowIndex(wid, nwg, lid);
  let valid = row < rowCount();
  let lane = lid % LANES;
  let n = select(0u, rowLength(), valid);
  let base = row * rowLength();
  var limit = 0u;
  if (valid) { limit = allowedLimit(row); }
  var m = NEG_BIG;
  for (var c = lane; c < limit; c += LANES) { m = max(m, params.scale * scores[base + c]); }
  m = rowMaxSg(m, lid, sg, 0u);
  var s = 0.0;
  for (var c = lane; c < limit; c += LANES) { s += exp(params.scale * scores[base + c] - m); }
  s = rowSumSg(s, lid, sg, WG / 4u);
  let inv = select(0.0, 1.0 / s, limit > 0u);
  for (var c = lane; c < n; c += LANES) {
    var p = 0.0;
    if (c < limit) { p = exp(params.scale * scores[base + c] - m) * inv; }
    out[base + c] = p;
  }
}

@compute @workgroup_size(WG)
fn forward_inplace(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
// #if subgroups
                   @builtin(subgroup_size) sgSize: u32, @builtin(subgroup_invocation_id) sgId: u32,
// #endif
                   @builtin(local_invocation_index) lid: u32) {
// #if subgroups
  let sg = subgroupBlock(lid, sgSize, sgId, WG);
// #else
  let sg = 0u;
// #endif
  let row = rowIndex(wid, nwg, lid);
  let valid = row < rowCount();
  let lane = lid % LANES;
  let n = select(0u, rowLength(), valid);
  let base = row * rowLength();
  var limit = 0u;
  if (valid) { limit = allowedLimit(row); }
  var m = NEG_BIG;
  for (var c = lane; c < limit; c += LANES) { m = max(m, params.scale * out[base + c]); }
  m = rowMaxSg(m, lid, sg, 0u);
  var s = 0.0;
  for (var c = lane; c < limit; c += LANES) { s += exp(params.scale * out[base + c] - m); }
  s = rowSumSg(s, lid, sg, WG / 4u);
  let inv = select(0.0, 1.0 / s, limit > 0u);
  for (var c = lane; c < n; c += LANES) {
    var p = 0.0;
    if (c < limit) { p = exp(params.scale * out[base + c] - m) * inv; }
    out[base + c] = p;
  }
}

@compute @workgroup_size(WG)
fn backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
// #if subgroups
            @builtin(subgroup_size) sgSize: u32, @builtin(subgroup_invocation_id) sgId: u32,
// #endif
            @builtin(local_invocation_index) lid: u32) {
// #if subgroups
  let sg = subgroupBlock(lid, sgSize, sgId, WG);
// #else
  let sg = 0u;
// #endif
  let row = rowIndex(wid, nwg, lid);
  let lane = lid % LANES;
  let valid = row < rowCount();
  let n = select(0u, rowLength(), valid);
  var limit = 0u;
  if (valid) { limit = causalLimit(row); }
  let base = row * rowLength();
  var d = 0.0;
  for (var c = lane; c < limit; c += LANES) { d += probs[base + c] * dprobs[base + c]; }
  d = rowSumSg(d, lid, sg, 0u);
  for (var c = lane; c < n; c += LANES) {
    let k = base + c;
    var g = 0.0;
    if (c < limit) { g = params.scale * probs[k] * (dprobs[k] - d); }
    out[k] = g;
  }
}

@compute @workgroup_size(WG)
fn backward_inplace(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
// #if subgroups
                    @builtin(subgroup_size) sgSize: u32, @builtin(subgroup_invocation_id) sgId: u32,
// #endif
                    @builtin(local_invocation_index) lid: u32) {
// #if subgroups
  let sg = subgroupBlock(lid, sgSize, sgId, WG);
// #else
  let sg = 0u;
// #endif
  let row = rowIndex(wid, nwg, lid);
  let lane = lid % LANES;
  let valid = row < rowCount();
  let n = select(0u, rowLength(), valid);
  var limit = 0u;
  if (valid) { limit = causalLimit(row); }
  let base = row * rowLength();
  var d = 0.0;
  for (var c = lane; c < limit; c += LANES) { d += probs[base + c] * out[base + c]; }
  d = rowSumSg(d, lid, sg, 0u);
  for (var c = lane; c < n; c += LANES) {
    let k = base + c;
    var g = 0.0;
    if (c < limit) { g = params.scale * probs[k] * (out[k] - d); }
    out[k] = g;
  }
}
