// shaders/matmul_streamk_fixup.wgsl for a C whose rows are whole vec4s (kernels/matmul.ts
// matmulStreamK takes it when N, ldc and offC are multiples of 4, and under GELU_GRAD ldPre and
// offPre too): the same sums in the same order and the same epilogue, but C (and pre) read and
// written as vec4s, one per thread, where the scalar kernel makes four strided accesses of each.
// geluTanhGrad: shaders/gelu_tanh.wgsl, put in front of this file (with the common part) by kernels/matmul.ts.
@group(0) @binding(2) var<storage, read> bias: array<f32>;
@group(0) @binding(3) var<storage, read_write> c: array<vec4<f32>>;
// GELU_GRAD's pre-activations: bound to `bias` by the wrapper when GELU_GRAD is off (then never read).
@group(0) @binding(4) var<storage, read> pre: array<vec4<f32>>;

// Params, `parts`, the overrides, fixupVec4 and splitTileSum: shaders/matmul_streamk_fixup_common.wgsl,
// put in front of this file.
@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lidx: u32) {
  let f = fixupVec4(wid, nwg, lidx);
  // N is a multiple of 4: a vec4 of C is wholly in or wholly out
  if (!f.split || f.m >= params.M || f.n0 >= params.N) { return; }
  let at = (params.offC + f.m * params.ldc + f.n0) / 4u;
  // every load before the sum's adds: the C and bias reads do not wait on the pieces
  var prev = vec4<f32>(0.0);
  if (params.accumulate != 0u) { prev = c[at]; }
  var bn = vec4<f32>(0.0);
  if (params.hasBias != 0u) { bn = vec4<f32>(bias[f.n0], bias[f.n0 + 1u], bias[f.n0 + 2u], bias[f.n0 + 3u]); }
  let sum = splitTileSum(f);
  var x = params.alpha * sum + prev + bn;
  if (GELU_GRAD) {
    let p = pre[(params.offPre + f.m * params.ldPre + f.n0) / 4u];
    x *= vec4<f32>(geluTanhGrad(p.x), geluTanhGrad(p.y), geluTanhGrad(p.z), geluTanhGrad(p.w));
  }
  c[at] = x;
}
