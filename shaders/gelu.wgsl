// GPT-2's GELU, tanh form (transformers "gelu_new"; the formula: shaders/gelu_tanh.wgsl).
// Elementwise, 256 threads per workgroup, grid folded into 2-D past 65535 workgroups.
// The *_inplace entry points serve out == x (forward) and dx == dout (backward): WebGPU forbids
// binding one buffer twice when one binding is writable, so they read through the writable one.
struct Params { n: u32 }
@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read_write> out: array<f32>;  // out (forward) or dx (backward)
@group(0) @binding(2) var<storage, read> x: array<f32>;
@group(0) @binding(3) var<storage, read> dout: array<f32>;      // backward, not in place

// geluTanh and geluTanhGrad: shaders/gelu_tanh.wgsl, put in front of this file (kernels/gelu.ts).

fn index(gid: vec3<u32>, nwg: vec3<u32>) -> u32 {
  return gid.x + gid.y * nwg.x * 256u;
}

@compute @workgroup_size(256)
fn forward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let i = index(gid, nwg);
  if (i >= params.n) { return; }
  out[i] = geluTanh(x[i]);
}

@compute @workgroup_size(256)
fn forward_inplace(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let i = index(gid, nwg);
  if (i >= params.n) { return; }
  out[i] = geluTanh(out[i]);
}

@compute @workgroup_size(256)
fn backward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let i = index(gid, nwg);
  if (i >= params.n) { return; }
  out[i] = dout[i] * geluTanhGrad(x[i]);
}

@compute @workgroup_size(256)
fn backward_inplace(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let i = index(gid, nwg);
  if (i >= params.n) { return; }
  out[i] = out[i] * geluTanhGrad(x[i]);
}
