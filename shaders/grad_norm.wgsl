// Global gradient-norm clipping like torch.nn.utils.clip_grad_norm_, in two kernels:
//   sum_of_squares:   out[outIndex] = sum x^2 over one gradient tensor (one partial per tensor)
//   clip_coefficient: out[0] = sqrt(sum of the partials) (the global L2 norm);
//                     out[1] = maxNorm > 0 ? min(1, maxNorm / (out[0] + 1e-6)) : 1 (the scale the
//                     optimizer applies to every gradient).
// Both run as one 256-thread workgroup (LoRA gradients are small; one pass, fixed summation order).
struct Params { n: u32, outIndex: u32, maxNorm: f32 }
@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;  // a gradient, or the partials
@group(0) @binding(2) var<storage, read_write> out: array<f32>;

const WG: u32 = 256u;
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

@compute @workgroup_size(WG)
fn sum_of_squares(@builtin(local_invocation_index) lid: u32) {
  var s = 0.0;
  var comp = 0.0;  // Kahan compensation
  for (var i = lid; i < params.n; i += WG) {
    let v = x[i];
    let y = v * v - comp;
    let t = s + y;
    comp = (t - s) - y;
    s = t;
  }
  let total = workgroupSum(s, lid);
  if (lid == 0u) { out[params.outIndex] = total; }
}

@compute @workgroup_size(WG)
fn clip_coefficient(@builtin(local_invocation_index) lid: u32) {
  var s = 0.0;
  for (var i = lid; i < params.n; i += WG) { s += x[i]; }
  let total = workgroupSum(s, lid);
  if (lid == 0u) {
    let norm = sqrt(total);
    out[0] = norm;
    var coef = 1.0;
    if (params.maxNorm > 0.0) { coef = min(1.0, params.maxNorm / (norm + 1e-6)); }
    out[1] = coef;
  }
}
