// One AdamW step, exactly torch.optim.AdamW (decoupled weight decay, bias-corrected moments):
//   g = grad * clip[1]
//   p -= lr * wd * p
//   m = b1 * m + (1 - b1) * g
//   v = b2 * v + (1 - b2) * g^2
//   p -= (lr / bc1) * m / (sqrt(v) / sqrt(bc2) + eps)     bc1 = 1 - b1^t, bc2 = 1 - b2^t
// Per-step values come from the shared Step uniform (written once per step); clip[1] is the global
// gradient-norm scale from clipCoefficient. Elementwise, 256 threads, grid folded past 65535.
struct Params { n: u32 }
struct Step { lr: f32, beta1: f32, beta2: f32, eps: f32, weightDecay: f32, biasCorrection1: f32, biasCorrection2: f32, seed: u32 }
@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<uniform> step: Step;
@group(0) @binding(2) var<storage, read> clip: array<f32>;
@group(0) @binding(3) var<storage, read> grad: array<f32>;
@group(0) @binding(4) var<storage, read_write> param: array<f32>;
@group(0) @binding(5) var<storage, read_write> m: array<f32>;
@group(0) @binding(6) var<storage, read_write> v: array<f32>;

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let i = gid.x + gid.y * nwg.x * 256u;
  if (i >= params.n) { return; }
  let g = grad[i] * clip[1];
  var p = param[i];
  p *= 1.0 - step.lr * step.weightDecay;
  let mi = step.beta1 * m[i] + (1.0 - step.beta1) * g;
  let vi = step.beta2 * v[i] + (1.0 - step.beta2) * g * g;
  m[i] = mi;
  v[i] = vi;
  let denom = sqrt(vi) / sqrt(step.biasCorrection2) + step.eps;
  p -= (step.lr / step.biasCorrection1) * (mi / denom);
  param[i] = p;
}
