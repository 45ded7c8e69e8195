// Power-of-two scales for the tensor-core products' gradient operands (kernels/matmul-tc.ts,
// SCALE_ROWS of shaders/matmul_tc_*.wgsl), one per block of 16 rows (a subgroup matrix's rows), so
// the product can unscale each 16 x 16 fragment by one factor (subgroupMatrixScalarMultiply) and
// store it straight: scale[m] = 2^(14 - e) for every row m of a block whose largest magnitude lies
// in [2^(e-1), 2^e), bringing it into [2^13, 2^14), well inside f16's range (65504). Gradient rows
// of magnitudes around 1e-6 then keep f16's 11 significant bits instead of falling into its
// subnormals (below 6.1e-5); a row of the block down to 2^-27 of the block's largest value is still
// a normal f16. An all-zero (or non-finite) block gets 1. The exponent is clamped to +-100 so the
// scale and its inverse stay finite f32s.
// A[m][k] = a[offA + m * lda + k], read as vec4s (offA, lda and K multiples of 4). One block of 16
// rows per workgroup, 16 invocations per row.
struct Params { M: u32, K: u32, lda: u32, offA: u32 }
@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> a: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read_write> scale: array<f32>;

var<workgroup> partial: array<f32, 256>;

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let m0 = (wid.x + nwg.x * wid.y) * 16u;
  let m = m0 + lid / 16u;
  let lane = lid % 16u;
  var mx = 0.0;
  if (m < params.M) {
    let base = (params.offA + m * params.lda) >> 2u;
    let quads = params.K >> 2u;
    // eight independent loads in flight per invocation (one at a time left the pass waiting on
    // memory: ~3x slower than the bandwidth at K 768 .. 50,257)
    var q = lane;
    var m8 = vec4<f32>(0.0);
    for (; q + 112u < quads; q += 128u) {
      let v0 = abs(a[base + q]);
      let v1 = abs(a[base + q + 16u]);
      let v2 = abs(a[base + q + 32u]);
      let v3 = abs(a[base + q + 48u]);
      let v4 = abs(a[base + q + 64u]);
      let v5 = abs(a[base + q + 80u]);
      let v6 = abs(a[base + q + 96u]);
      let v7 = abs(a[base + q + 112u]);
      m8 = max(m8, max(max(max(v0, v1), max(v2, v3)), max(max(v4, v5), max(v6, v7))));
    }
    for (; q < quads; q += 16u) { m8 = max(m8, abs(a[base + q])); }
    mx = max(max(m8.x, m8.y), max(m8.z, m8.w));
  }
  partial[lid] = mx;
  workgroupBarrier();
  for (var s = 128u; s > 0u; s >>= 1u) {
    if (lid < s) { partial[lid] = max(partial[lid], partial[lid + s]); }
    workgroupBarrier();
  }
  let top = partial[0];
  // max(NaN, x) may return x: a NaN ends up scaled by the block's other values, and stays NaN
  let finite = top > 0.0 && top <= 3.4028234e38;
  var e = 0;
  if (finite) { e = frexp(top).exp; }
  if (lane == 0u && m < params.M) { scale[m] = select(1.0, ldexp(1.0, clamp(14 - e, -100, 100)), finite); }
}
