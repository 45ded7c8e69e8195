// Inverted dropout, forward and backward in one kernel (they differ only in accumulate):
//   out[i] = (accumulate ? out[i] : 0) + (keep(i) ? x[i] * scale : 0),   scale = 1 / (1 - p)
// keep(i): shaders/dropout_mask.wgsl (the backward pass regenerates the forward mask; p = 0 keeps
// every element with scale exactly 1, an exact identity). Each dropout site passes its own salt.
// Elementwise, 256 threads, grid folded past 65535 workgroups. `main_inplace` serves out == x.
struct Params { n: u32, salt: u32, threshold: u32, scale: f32, accumulate: u32 }
@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<uniform> step: Step;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;
@group(0) @binding(3) var<storage, read> x: array<f32>;

// (Step, dropoutKey and dropoutKeep: shaders/dropout_mask.wgsl, put in front of this file.)
fn keep(i: u32) -> bool {
  return dropoutKeep(dropoutKey(step.seed, params.salt), params.threshold, i);
}

fn index(gid: vec3<u32>, nwg: vec3<u32>) -> u32 {
  return gid.x + gid.y * nwg.x * 256u;
}

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let i = index(gid, nwg);
  if (i >= params.n) { return; }
  var v = select(0.0, x[i] * params.scale, keep(i));
  if (params.accumulate != 0u) { v += out[i]; }
  out[i] = v;
}

@compute @workgroup_size(256)
fn main_inplace(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let i = index(gid, nwg);
  if (i >= params.n) { return; }
  out[i] = select(0.0, out[i] * params.scale, keep(i));
}
