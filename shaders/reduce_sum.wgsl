// out[outIndex] = (accumulate ? out[outIndex] : 0) + sum_{i<n} x[i]  (e.g. per-token losses).
// A single 256-thread workgroup: each thread sums a strided slice with Kahan compensation, then a
// tree reduction. n is at most ~1e6 here, so one workgroup is fast enough, needs no second pass
// and sums in a fixed order (deterministic).
struct Params { n: u32, outIndex: u32, accumulate: u32 }
@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;

const WG: u32 = 256u;
var<workgroup> red: array<f32, WG>;

@compute @workgroup_size(WG)
fn main(@builtin(local_invocation_index) lid: u32) {
  var s = 0.0;
  var comp = 0.0;  // Kahan: low-order bits lost by the running sum
  for (var i = lid; i < params.n; i += WG) {
    let y = x[i] - comp;
    let t = s + y;
    comp = (t - s) - y;
    s = t;
  }
  red[lid] = s;
  workgroupBarrier();
  for (var k = WG / 2u; k > 0u; k >>= 1u) {
    if (lid < k) { red[lid] += red[lid + k]; }
    workgroupBarrier();
  }
  if (lid == 0u) {
    var total = red[0];
    if (params.accumulate != 0u) { total += out[params.outIndex]; }
    out[params.outIndex] = total;
  }
}
