// The second half of a stream-K matrix multiply (kernels/matmul.ts matmulStreamK): the first half
// (shaders/matmul_streamk_*.wgsl) cut the product's tilesM x tilesN x kTiles iterations into
// contiguous ranges of itersPerGroup, one per workgroup g, stored every tile a workgroup covered
// whole, and wrote the unscaled partial sums of the others to `parts`: slot 2g holds the first
// piece of g's range, 2g + 1 its last, TILE_M x TILE_N floats each (row-major, as vec4s). Here a
// tile split over workgroups g0 < ... < g1 sums their pieces in that order (increasing k) and
// applies the epilogue the plain kernels apply: C = alpha * sum (+ C) (+ bias[n]), then under
// GELU_GRAD times gelu'(pre[offPre + m * ldPre + n]) (shaders/gelu_tanh.wgsl, put in front of this
// file by kernels/matmul.ts). A tile one workgroup covered is left as it is. C is read and written
// as scalars; shaders/matmul_streamk_fixup_vec4.wgsl is the form for rows of whole vec4s.
@group(0) @binding(2) var<storage, read> bias: array<f32>;
@group(0) @binding(3) var<storage, read_write> c: array<f32>;
// GELU_GRAD's pre-activations: bound to `bias` by the wrapper when GELU_GRAD is off (then never read).
@group(0) @binding(4) var<storage, read> pre: array<f32>;

// Params, `parts`, the overrides, fixupVec4 and splitTileSum: shaders/matmul_streamk_fixup_common.wgsl,
// put in front of this file.
@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lidx: u32) {
  let f = fixupVec4(wid, nwg, lidx);
  if (!f.split) { return; }
  let sum = splitTileSum(f);
  if (f.m >= params.M) { return; }
  let rowBase = params.offC + f.m * params.ldc;
  for (var j = 0u; j < 4u; j++) {
    let n = f.n0 + j;
    if (n >= params.N) { break; }
    var x = params.alpha * sum[j];
    if (params.accumulate != 0u) { x += c[rowBase + n]; }
    if (params.hasBias != 0u) { x += bias[n]; }
    if (GELU_GRAD) { x *= geluTanhGrad(pre[params.offPre + f.m * params.ldPre + n]); }
    c[rowBase + n] = x;
  }
}
