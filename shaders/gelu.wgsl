// GPT-2's GELU, tanh form (transformers "gelu_new"):
//   y = 0.5 * x * (1 + tanh(u)),  u = sqrt(2/pi) * (x + 0.044715 * x^3)
//   dy/dx = 0.5 * (1 + t) + 0.5 * x * (1 - t^2) * sqrt(2/pi) * (1 + 3 * 0.044715 * x^2),  t = tanh(u)
// Elementwise, 256 threads per workgroup, grid folded into 2-D past 65535 workgroups.
// The *_inplace entry points serve out == x (forward) and dx == dout (backward): WebGPU forbids
// binding one buffer twice when one binding is writable, so they read through the writable one.
struct Params { n: u32 }
@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read_write> out: array<f32>;  // out (forward) or dx (backward)
@group(0) @binding(2) var<storage, read> x: array<f32>;
@group(0) @binding(3) var<storage, read> dout: array<f32>;      // backward, not in place

const SQRT_2_OVER_PI: f32 = 0.7978845608028654;
const K: f32 = 0.044715;

// Evaluated through sigmoids: 0.5 * (1 + tanh(u)) = sigmoid(2u) and 0.5 * (1 - tanh(u)) =
// sigmoid(-2u), so y = x * sigmoid(2u) and dy/dx = s + 2x * s * (1 - s) * du/dx, s = sigmoid(2u).
// Unlike 1 + tanh(u) near tanh = -1, these keep full relative precision for negative x, and
// nothing computes inf/inf (some backends' tanh gives NaN for large arguments). u is clamped to
// +-40 (exp(80) still fits in f32); beyond that s is 0 or 1 to f32 precision and y's curvature
// term is zero.
const U_MAX: f32 = 40.0;

fn uOf(v: f32) -> f32 {
  return SQRT_2_OVER_PI * (v + K * v * v * v);
}

fn gelu(v: f32) -> f32 {
  let u = clamp(uOf(v), -U_MAX, U_MAX);
  return v / (1.0 + exp(-2.0 * u));
}

fn geluGrad(v: f32) -> f32 {
  let uRaw = uOf(v);
  let u = clamp(uRaw, -U_MAX, U_MAX);
  let s = 1.0 / (1.0 + exp(-2.0 * u));
  let sNeg = 1.0 / (1.0 + exp(2.0 * u));  // 1 - s without cancellation
  let du = SQRT_2_OVER_PI * (1.0 + 3.0 * K * v * v);
  return s + select(0.0, 2.0 * v * s * sNeg * du, abs(uRaw) < U_MAX);
}

fn index(gid: vec3<u32>, nwg: vec3<u32>) -> u32 {
  return gid.x + gid.y * nwg.x * 256u;
}

@compute @workgroup_size(256)
fn forward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let i = index(gid, nwg);
  if (i >= params.n) { return; }
  out[i] = gelu(x[i]);
}

@compute @workgroup_size(256)
fn forward_inplace(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let i = index(gid, nwg);
  if (i >= params.n) { return; }
  out[i] = gelu(out[i]);
}

@compute @workgroup_size(256)
fn backward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let i = index(gid, nwg);
  if (i >= params.n) { return; }
  out[i] = dout[i] * geluGrad(x[i]);
}

@compute @workgroup_size(256)
fn backward_inplace(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let i = index(gid, nwg);
  if (i >= params.n) { return; }
  out[i] = out[i] * geluGrad(x[i]);
}
