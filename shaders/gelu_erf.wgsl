// GELU, exact (erf) form: transformers' "gelu" (GELUActivation = torch.nn.functional.gelu), used by
// BERT and DistilBERT. With Phi the standard normal CDF and phi its density:
//   y = x * Phi(x),  Phi(x) = 0.5 * erfc(-x / sqrt(2))
//   dy/dx = Phi(x) + x * phi(x),  phi(x) = exp(-x^2 / 2) / sqrt(2 pi)
// WGSL has no erf. erfc(z), z >= 0, is Numerical Recipes' erfcc Chebyshev fit (fractional error
// below 1.2e-7 for every z), so Phi keeps its relative precision in both tails: for x < 0 it is
// 0.5 * erfc(|x| / sqrt(2)) directly (no 1 - erf cancellation), for x >= 0 it is 1 minus that.
// Elementwise, 256 threads per workgroup, grid folded into 2-D past 65535 workgroups.
// The *_inplace entry points serve out == x (forward) and dx == dout (backward): WebGPU forbids
// binding one buffer twice when one binding is writable, so they read through the writable one.
struct Params { n: u32 }
@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read_write> out: array<f32>;  // out (forward) or dx (backward)
@group(0) @binding(2) var<storage, read> x: array<f32>;
@group(0) @binding(3) var<storage, read> dout: array<f32>;      // backward, not in place

const INV_SQRT2: f32 = 0.7071067811865476;
const INV_SQRT_2PI: f32 = 0.3989422804014327;

// erfc(z) for z >= 0 (Numerical Recipes, 2nd ed., 6.2: erfcc).
fn erfcNonNeg(z: f32) -> f32 {
  let t = 1.0 / (1.0 + 0.5 * z);
  let p = -1.26551223 + t * (1.00002368 + t * (0.37409196 + t * (0.09678418 + t * (-0.18628806 +
          t * (0.27886807 + t * (-1.13520398 + t * (1.48851587 + t * (-0.82215223 + t * 0.17087277))))))));
  return t * exp(-z * z + p);
}

// Standard normal CDF.
fn phiCdf(v: f32) -> f32 {
  let half = 0.5 * erfcNonNeg(abs(v) * INV_SQRT2);
  return select(half, 1.0 - half, v >= 0.0);
}

fn gelu(v: f32) -> f32 {
  return v * phiCdf(v);
}

fn geluGrad(v: f32) -> f32 {
  // exp(-v^2/2) underflows to 0 for |v| > ~13, where the second term is 0 to f32 precision anyway.
  return phiCdf(v) + v * INV_SQRT_2PI * exp(-0.5 * v * v);
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
