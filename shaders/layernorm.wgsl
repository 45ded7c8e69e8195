// LayerNorm over the last dimension C, one 256-thread workgroup per row (rows folded into the y
// dimension past 65535 workgroups). Each thread reads its columns (c = lid + 256 i) once into
// registers (up to CACHED per thread: C <= 1024; longer rows re-read the rest), so the passes
// after the first cost no memory traffic. Biased variance like torch. Two passes over the row for
// the variance (sum of squared deviations), which stays accurate when |mean| >> std.
// (8 rows per workgroup with 32 threads each ran at two thirds of this speed on the H100: a
// quarter of the threads, each with eight times the loads in sequence.)
//   forward:  out = (x - mean) * rstd * weight + bias, and saves mean, rstd per row;
//             forward_copy also copies x to xCopy.
//   backward: dx (+)= rstd * (g - mean(g) - xhat * mean(g * xhat)),  g = dout * weight,
//             xhat = (x - mean) * rstd. Weight and bias are frozen: no gradients for them.
// Two variants (kernels/subgroups.ts): the row sums go through workgroup memory in a tree
// (log2(WG) barrier rounds), or, where the device has subgroups, through subgroupAdd: each subgroup
// sums its lanes, one lane per subgroup puts that in a slot of `red`, one barrier, and every
// subgroup sums the slots (shaders/subgroup_reduce.wgsl checks the layout this needs, per workgroup,
// and falls back to the tree where it does not hold). The forward's two sums use different slots,
// so no barrier between them.
struct Params { rows: u32, C: u32, eps: f32, accumulate: u32 }
@group(0) @binding(0) var<uniform> params: Params;

// forward bindings
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> weight: array<f32>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;
@group(0) @binding(5) var<storage, read_write> meanOut: array<f32>;
@group(0) @binding(6) var<storage, read_write> rstdOut: array<f32>;
@group(0) @binding(7) var<storage, read_write> xCopy: array<f32>; // forward_copy only

// backward bindings (an entry point may reuse binding numbers of variables it does not touch)
@group(0) @binding(1) var<storage, read> bDout: array<f32>;
@group(0) @binding(2) var<storage, read> bX: array<f32>;
@group(0) @binding(3) var<storage, read> bWeight: array<f32>;
@group(0) @binding(4) var<storage, read> bMean: array<f32>;
@group(0) @binding(5) var<storage, read> bRstd: array<f32>;
@group(0) @binding(6) var<storage, read_write> dx: array<f32>;

const WG: u32 = 256u;
const CACHED: u32 = 4u;
var<workgroup> red: array<vec2<f32>, WG>;

// Sum of v over the workgroup, returned to every thread. Must be called in uniform control flow.
fn workgroupSum(v: vec2<f32>, lid: u32) -> vec2<f32> {
  red[lid] = v;
  workgroupBarrier();
  for (var s = WG / 2u; s > 0u; s >>= 1u) {
    if (lid < s) { red[lid] += red[lid + s]; }
    workgroupBarrier();
  }
  let total = red[0];
  // Keep the next call from overwriting red[0] before every thread has read it.
  workgroupBarrier();
  return total;
}

// Sum of v over the workgroup, returned to every thread: through subgroups when sg (subgroupBlock)
// is not 0, else workgroupSum. Subgroup slots at red[at ..], at most WG / 4 of them.
// Must be called in uniform control flow.
// #if subgroups
fn rowSum(v: vec2<f32>, lid: u32, sg: u32, at: u32) -> vec2<f32> {
  if (sg == 0u) { return workgroupSum(v, lid); }
  let part = subgroupAdd(v);
  let lane = lid % sg;
  if (lane == 0u) { red[at + lid / sg] = part; }
  workgroupBarrier();
  var acc = vec2(0.0);
  for (var k = lane; k < WG / sg; k += sg) { acc += red[at + k]; }
  return subgroupAdd(acc);
}
// #else
fn rowSum(v: vec2<f32>, lid: u32, sg: u32, at: u32) -> vec2<f32> {
  return workgroupSum(v, lid);
}
// #endif

// The forward of one row (every thread of the workgroup, uniform control flow).
fn normalizeRow(row: u32, lid: u32, sg: u32) {
  let C = params.C;
  let base = row * C;
  var xs: array<f32, CACHED>;
  var s = 0.0;
  for (var i = 0u; i < CACHED; i++) {
    let c = lid + i * WG;
    if (c < C) { xs[i] = x[base + c]; s += xs[i]; }
  }
  for (var c = lid + CACHED * WG; c < C; c += WG) { s += x[base + c]; }
  let mean = rowSum(vec2(s, 0.0), lid, sg, 0u).x / f32(C);
  var q = 0.0;
  for (var i = 0u; i < CACHED; i++) {
    if (lid + i * WG < C) { let d = xs[i] - mean; q += d * d; }
  }
  for (var c = lid + CACHED * WG; c < C; c += WG) {
    let d = x[base + c] - mean;
    q += d * d;
  }
  let variance = rowSum(vec2(q, 0.0), lid, sg, WG / 2u).x / f32(C);
  let rstd = 1.0 / sqrt(variance + params.eps);
  for (var i = 0u; i < CACHED; i++) {
    let c = lid + i * WG;
    if (c < C) { out[base + c] = (xs[i] - mean) * rstd * weight[c] + bias[c]; }
  }
  for (var c = lid + CACHED * WG; c < C; c += WG) {
    out[base + c] = (x[base + c] - mean) * rstd * weight[c] + bias[c];
  }
  if (lid == 0u) {
    meanOut[row] = mean;
    rstdOut[row] = rstd;
  }
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
// product accumulates into (kernels/layernorm.ts copyTo), in place of a copy pass.
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
  let mean = bMean[row];
  let rstd = bRstd[row];
  // g = dout * weight and xhat of the cached columns; both row sums in one reduction: (sum g, sum g * xhat).
  var gs: array<f32, CACHED>;
  var xh: array<f32, CACHED>;
  var acc = vec2(0.0, 0.0);
  for (var i = 0u; i < CACHED; i++) {
    let c = lid + i * WG;
    if (c < C) {
      gs[i] = bDout[base + c] * bWeight[c];
      xh[i] = (bX[base + c] - mean) * rstd;
      acc += vec2(gs[i], gs[i] * xh[i]);
    }
  }
  for (var c = lid + CACHED * WG; c < C; c += WG) {
    let g = bDout[base + c] * bWeight[c];
    let xhat = (bX[base + c] - mean) * rstd;
    acc += vec2(g, g * xhat);
  }
  let sums = rowSum(acc, lid, sg, 0u) / f32(C);
  for (var i = 0u; i < CACHED; i++) {
    let c = lid + i * WG;
    if (c < C) {
      var v = rstd * (gs[i] - sums.x - xh[i] * sums.y);
      if (params.accumulate != 0u) { v += dx[base + c]; }
      dx[base + c] = v;
    }
  }
  for (var c = lid + CACHED * WG; c < C; c += WG) {
    let g = bDout[base + c] * bWeight[c];
    let xhat = (bX[base + c] - mean) * rstd;
    var v = rstd * (g - sums.x - xhat * sums.y);
    if (params.accumulate != 0u) { v += dx[base + c]; }
    dx[base + c] = v;
  }
}
