// Inverted dropout, forward and backward in one kernel (they differ only in accumulate):
//   out[i] = (accumulate ? out[i] : 0) + (keep(i) ? x[i] * scale : 0),   scale = 1 / (1 - p)
// keep(i) is a stateless hash of (step seed, salt, i) compared against threshold = p * 2^32, so
// the backward pass regenerates the forward mask, and p = 0 (threshold 0) keeps every element
// with scale exactly 1 (exact identity). Each dropout site passes its own salt.
// Elementwise, 256 threads, grid folded past 65535 workgroups. `main_inplace` serves out == x.
struct Params { n: u32, salt: u32, threshold: u32, scale: f32, accumulate: u32 }
struct Step { lr: f32, beta1: f32, beta2: f32, eps: f32, weightDecay: f32, biasCorrection1: f32, biasCorrection2: f32, seed: u32 }
@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<uniform> step: Step;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;
@group(0) @binding(3) var<storage, read> x: array<f32>;

// PCG-based integer hash (Jarzynski & Olano 2020, "Hash Functions for GPU Rendering").
fn pcg(v: u32) -> u32 {
  let state = v * 747796405u + 2891336453u;
  let word = ((state >> ((state >> 28u) + 4u)) ^ state) * 277803737u;
  return (word >> 22u) ^ word;
}

fn keep(i: u32) -> bool {
  let key = pcg(step.seed ^ pcg(params.salt));
  return pcg(pcg(i) ^ key) >= params.threshold;
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
