// out[n] = (accumulate ? out[n] : 0) + sum over r < rows of x[r * N + n]: the sum over rows of a
// [rows, N] matrix, i.e. the gradient of a bias that was added to every row (a head's bias, from
// its output gradient). One thread per column, rows summed in order with Kahan compensation:
// deterministic, and rows (a batch) is small wherever this runs.
struct Params { rows: u32, N: u32, accumulate: u32 }
@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let n = gid.x + gid.y * nwg.x * 256u;
  if (n >= params.N) { return; }
  var s = 0.0;
  var comp = 0.0;
  for (var r = 0u; r < params.rows; r++) {
    let y = x[r * params.N + n] - comp;
    let t = s + y;
    comp = (t - s) - y;
    s = t;
  }
  if (params.accumulate != 0u) { s += out[n]; }
  out[n] = s;
}
