// Global gradient-norm clipping like torch.nn.utils.clip_grad_norm_, in two kernels:
//   sum_of_squares:   out[outIndex + w] = sum x^2 over chunk w (CHUNK elements) of one gradient
//                     tensor, one 256-thread workgroup per chunk (a tensor of n elements makes
//                     ceil(n / CHUNK) partials, at least one)
//   clip_coefficient: out[0] = sqrt(sum of the partials) (the global L2 norm);
//                     out[1] = maxNorm > 0 ? min(1, maxNorm / (out[0] + 1e-6)) : 1 (the scale the
//                     optimizer applies to every gradient), as one workgroup.
// Fixed summation order (deterministic). One workgroup per tensor walking all of it was latency
// bound: 38 us for a LoRA B gradient of 18,432 elements on the H100.
// Two variants (kernels/subgroups.ts) of the workgroup sum: a tree through workgroup memory
// (log2(WG) barrier rounds), or, where the device has subgroups (and shaders/subgroup_reduce.wgsl
// found the usual layout in this workgroup), subgroupAdd per subgroup, one slot per subgroup, one
// barrier, and every subgroup sums the slots. Either order is fixed for a given device and shader.
struct Params { n: u32, outIndex: u32, maxNorm: f32 }
@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;  // a gradient, or the partials
@group(0) @binding(2) var<storage, read_write> out: array<f32>;

const WG: u32 = 256u;
const CHUNK: u32 = 4096u;  // elements per sum_of_squares workgroup (16 per thread); kernels/grad-norm.ts SUM_OF_SQUARES_CHUNK
var<workgroup> red: array<f32, WG>;

fn workgroupSum(v: f32, lid: u32) -> f32 {
  red[lid] = v;
  workgroupBarrier();
  for (var k = WG / 2u; k > 0u; k >>= 1u) {
    if (lid < k) { red[lid] += red[lid + k]; }
    workgroupBarrier();
  }
  return red[0];
}

// The workgroup sum through subgroups when sg (subgroupBlock) is not 0, else workgroupSum.
// #if subgroups
fn totalSum(v: f32, lid: u32, sg: u32) -> f32 {
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
fn totalSum(v: f32, lid: u32, sg: u32) -> f32 {
  return workgroupSum(v, lid);
}
// #endif

@compute @workgroup_size(WG)
fn sum_of_squares(@builtin(workgroup_id) wid: vec3<u32>,
// #if subgroups
                  @builtin(subgroup_size) sgSize: u32, @builtin(subgroup_invocation_id) sgId: u32,
// #endif
                  @builtin(local_invocation_index) lid: u32) {
// #if subgroups
  let sg = subgroupBlock(lid, sgSize, sgId, WG);
// #else
  let sg = 0u;
// #endif
  var s = 0.0;
  var comp = 0.0;  // Kahan compensation
  let end = min(params.n, (wid.x + 1u) * CHUNK);
  for (var i = wid.x * CHUNK + lid; i < end; i += WG) {
    let v = x[i];
    let y = v * v - comp;
    let t = s + y;
    comp = (t - s) - y;
    s = t;
  }
  let total = totalSum(s, lid, sg);
  if (lid == 0u) { out[params.outIndex + wid.x] = total; }
}

@compute @workgroup_size(WG)
fn clip_coefficient(
// #if subgroups
                    @builtin(subgroup_size) sgSize: u32, @builtin(subgroup_invocation_id) sgId: u32,
// #endif
                    @builtin(local_invocation_index) lid: u32) {
// #if subgroups
  let sg = subgroupBlock(lid, sgSize, sgId, WG);
// #else
  let sg = 0u;
// #endif
  var s = 0.0;
  for (var i = lid; i < params.n; i += WG) { s += x[i]; }
  let total = totalSum(s, lid, sg);
  if (lid == 0u) {
    let norm = sqrt(total);
    out[0] = norm;
    var coef = 1.0;
    if (params.maxNorm > 0.0) { coef = min(1.0, params.maxNorm / (norm + 1e-6)); }
    out[1] = coef;
  }
}
