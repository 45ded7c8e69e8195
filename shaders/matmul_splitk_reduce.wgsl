// The second half of a split-K matrix multiply (kernels/matmul.ts matmulSplitK): the first half
// computed S partial products of K-slices into `parts` [S, M, N] (dense); this sums them per
// output element and applies what the whole product would have: C = alpha * sum (+ C) (+ bias[n]),
// then under GELU_GRAD (kernels/matmul.ts MatmulArgs.geluGradOf; false, the default, leaves it out)
// times gelu'(pre[offPre + m * ldPre + n]), GELU's tanh form (shaders/gelu_tanh.wgsl).
// One thread per output element, threads along n, so the S reads of a thread are M*N apart and
// neighbouring threads read neighbouring addresses.
struct Params {
  M: u32,
  N: u32,
  S: u32,
  offC: u32,
  ldc: u32,
  accumulate: u32,
  hasBias: u32,
  alpha: f32,
  offPre: u32,
  ldPre: u32,
}
@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> parts: array<f32>;
@group(0) @binding(2) var<storage, read> bias: array<f32>;
@group(0) @binding(3) var<storage, read_write> c: array<f32>;
// GELU_GRAD's pre-activations: bound to `parts` by the wrapper when GELU_GRAD is off (then never read).
@group(0) @binding(4) var<storage, read> pre: array<f32>;

override GELU_GRAD: bool = false;

// geluTanhGrad: shaders/gelu_tanh.wgsl, put in front of this file by kernels/matmul.ts.

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let i = gid.x + gid.y * nwg.x * 256u;
  let total = params.M * params.N;
  if (i >= total) { return; }
  // four slices' loads in flight (a sum of 30-50 row chunks for LoRA's weight gradients)
  var s4 = vec4<f32>(0.0);
  var s = 0u;
  for (; s + 4u <= params.S; s += 4u) {
    s4 += vec4<f32>(parts[s * total + i], parts[(s + 1u) * total + i], parts[(s + 2u) * total + i], parts[(s + 3u) * total + i]);
  }
  for (; s < params.S; s++) {
    s4.x += parts[s * total + i];
  }
  let sum = (s4.x + s4.y) + (s4.z + s4.w);
  let m = i / params.N;
  let n = i - m * params.N;
  var v = params.alpha * sum;
  if (params.hasBias != 0u) { v += bias[n]; }
  let at = params.offC + m * params.ldc + n;
  if (params.accumulate != 0u) { v += c[at]; }
  if (GELU_GRAD) { v *= geluTanhGrad(pre[params.offPre + m * params.ldPre + n]); }
  c[at] = v;
}
