// ReLU and tanh with their backward passes, elementwise: the classification heads' activations
// (DistilBERT: pre_classifier -> ReLU; BERT's pooler: dense -> tanh) and DistilBERT's "relu" FFN.
//   relu:  y = max(x, 0);   dx = dy where y > 0, else 0 (torch: relu'(0) = 0)
//   tanh:  y = tanh(x);     dx = dy * (1 - y^2)
// Both backward passes need only the forward OUTPUT y, so the forward may run in place.
// tanh: |x| < 0.25 uses its odd Taylor series to x^11 (relative error < 1e-9 there), elsewhere
// sign(x) * (1 - e) / (1 + e) with e = exp(-2|x|) in (0, 0.61): no overflow for any x (some
// backends' tanh gives NaN for large arguments) and no cancellation near 0.
// 256 threads per workgroup, grid folded into 2-D past 65535 workgroups. *_inplace entry points
// serve out == x (forward) and dx == dout (backward), read through the writable binding.
struct Params { n: u32 }
@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read_write> out: array<f32>;  // y (forward) or dx (backward)
@group(0) @binding(2) var<storage, read> x: array<f32>;          // forward: x; backward: forward output y
@group(0) @binding(3) var<storage, read> dout: array<f32>;       // backward, not in place

fn index(gid: vec3<u32>, nwg: vec3<u32>) -> u32 {
  return gid.x + gid.y * nwg.x * 256u;
}

fn tanhSafe(v: f32) -> f32 {
  let a = abs(v);
  if (a < 0.25) {
    let s = v * v;
    // x - x^3/3 + 2x^5/15 - 17x^7/315 + 62x^9/2835 - 1382x^11/155925
    return v * (1.0 + s * (-0.3333333333333333 + s * (0.13333333333333333 + s * (-0.05396825396825397 +
           s * (0.021869488536155203 + s * -0.008863235529902197)))));
  }
  let e = exp(-2.0 * a);
  return sign(v) * (1.0 - e) / (1.0 + e);
}

@compute @workgroup_size(256)
fn relu_forward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let i = index(gid, nwg);
  if (i >= params.n) { return; }
  out[i] = max(x[i], 0.0);
}

@compute @workgroup_size(256)
fn relu_forward_inplace(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let i = index(gid, nwg);
  if (i >= params.n) { return; }
  out[i] = max(out[i], 0.0);
}

@compute @workgroup_size(256)
fn relu_backward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let i = index(gid, nwg);
  if (i >= params.n) { return; }
  out[i] = select(0.0, dout[i], x[i] > 0.0);
}

@compute @workgroup_size(256)
fn relu_backward_inplace(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let i = index(gid, nwg);
  if (i >= params.n) { return; }
  out[i] = select(0.0, out[i], x[i] > 0.0);
}

@compute @workgroup_size(256)
fn tanh_forward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let i = index(gid, nwg);
  if (i >= params.n) { return; }
  out[i] = tanhSafe(x[i]);
}

@compute @workgroup_size(256)
fn tanh_forward_inplace(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let i = index(gid, nwg);
  if (i >= params.n) { return; }
  out[i] = tanhSafe(out[i]);
}

@compute @workgroup_size(256)
fn tanh_backward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let i = index(gid, nwg);
  if (i >= params.n) { return; }
  let y = x[i];
  out[i] = dout[i] * (1.0 - y * y);
}

@compute @workgroup_size(256)
fn tanh_backward_inplace(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let i = index(gid, nwg);
  if (i >= params.n) { return; }
  let y = x[i];
  out[i] = out[i] * (1.0 - y * y);
}
