// SiLU ("swish" in transformers' ACT2FN, nn.SiLU): the Houlsby bottleneck adapter's default
// non-linearity.
//   y = x * s,  s = sigmoid(x) = 1 / (1 + exp(-x))
//   dy/dx = s * (1 + x * (1 - s))
// exp(-x) overflows to +inf for x < -88, where s = 1 / inf = 0 exactly: no NaN for any finite x.
// Elementwise, 256 threads per workgroup, grid folded into 2-D past 65535 workgroups. The
// *_inplace entry points serve out == x (forward) and dx == dout (backward).
struct Params { n: u32 }
@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read_write> out: array<f32>;  // y (forward) or dx (backward)
@group(0) @binding(2) var<storage, read> x: array<f32>;
@group(0) @binding(3) var<storage, read> dout: array<f32>;       // backward, not in place

fn sigmoid(v: f32) -> f32 {
  return 1.0 / (1.0 + exp(-v));
}

fn siluGrad(v: f32) -> f32 {
  let s = sigmoid(v);
  return s * (1.0 + v * (1.0 - s));
}

fn index(gid: vec3<u32>, nwg: vec3<u32>) -> u32 {
  return gid.x + gid.y * nwg.x * 256u;
}

@compute @workgroup_size(256)
fn forward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let i = index(gid, nwg);
  if (i >= params.n) { return; }
  let v = x[i];
  out[i] = v * sigmoid(v);
}

@compute @workgroup_size(256)
fn forward_inplace(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let i = index(gid, nwg);
  if (i >= params.n) { return; }
  let v = out[i];
  out[i] = v * sigmoid(v);
}

@compute @workgroup_size(256)
fn backward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let i = index(gid, nwg);
  if (i >= params.n) { return; }
  out[i] = dout[i] * siluGrad(x[i]);
}

@compute @workgroup_size(256)
fn backward_inplace(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let i = index(gid, nwg);
  if (i >= params.n) { return; }
  out[i] = out[i] * siluGrad(x[i]);
}
