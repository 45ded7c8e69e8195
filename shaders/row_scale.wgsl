// Per-row power-of-two scales for the tensor-core products (kernels/matmul-tc.ts, SCALE_ROWS of
// shaders/matmul_tc_*.wgsl): scale[m] = 2^(14 - e) where max_k |A[m][k]| lies in [2^(e-1), 2^e), so
// the scaled row's largest magnitude lies in [2^13, 2^14) — well inside f16's range (65504), and
// a gradient row of magnitudes around 1e-6 keeps f16's 11 significant bits instead of falling
// into its subnormals (below 6.1e-5). An all-zero (or non-finite) row gets 1. The exponent is
// clamped to +-100 so the scale and its inverse stay finite f32s.
// A[m][k] = a[offA + m * lda + k], read as vec4s (offA, lda and K multiples of 4). Eight rows per
// workgroup, 32 invocations each (a whole workgroup per row left most of it idle at K = 768).
struct Params { M: u32, K: u32, lda: u32, offA: u32 }
@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> a: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read_write> scale: array<f32>;

var<workgroup> partial: array<f32, 256>;

const ROWS: u32 = 8u;
@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let row = lid / 32u;
  let lane = lid % 32u;
  let m = (wid.x + nwg.x * wid.y) * ROWS + row;
  var mx = 0.0;
  if (m < params.M) {
    let base = (params.offA + m * params.lda) >> 2u;
    let quads = params.K >> 2u;
    for (var q = lane; q < quads; q += 32u) {
      let v = abs(a[base + q]);
      mx = max(mx, max(max(v.x, v.y), max(v.z, v.w)));
    }
  }
  partial[lid] = mx;
  workgroupBarrier();
  for (var s = 16u; s > 0u; s >>= 1u) {
    if (lane < s) { partial[lid] = max(partial[lid], partial[lid + s]); }
    workgroupBarrier();
  }
  if (lane == 0u && m < params.M) {
    let top = partial[lid];
    var e = 0;
    // max(NaN, x) may return x: a NaN row ends up scaled by its other values, and stays NaN
    if (top > 0.0 && top <= 3.4028234e38) { e = frexp(top).exp; }
    scale[m] = select(1.0, ldexp(1.0, clamp(14 - e, -100, 100)), top > 0.0 && top <= 3.4028234e38);
  }
}
