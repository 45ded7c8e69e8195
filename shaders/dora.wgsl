// DoRA's kernels (src/engine/kernels/dora.ts):
//   weight_norm       norm[o] = || W[o, :] + scale * B[o, :] A ||  over the input dim (PEFT's get_weight_norm on the
//                     merged weight), gscale[o] = m[o] / norm[o]. W is [N, K] (layout 0, nn.Linear) or [K, N]
//                     (layout 1, GPT-2's Conv1D); A [r, K], B [N, r], m [N]. One workgroup of 64 threads per output
//                     row o; each thread sums a strided set of columns, then a fixed tree reduction: deterministic.
//   scale_shift       out[r, c] = (acc ? out[r, c] : 0) + x[r, c] * (s[c] + shift)
//   scale_shift_bias  the same + bias[c]
//   column_dot_div    out[c] = (acc ? out[c] : 0) + (sum over r of a[r, c] * b[r, c]) / d[c]   (Kahan, rows in order)
// Elementwise kernels: 256 threads a workgroup, the grid folded into 2-D past 65535.

// One uniform layout for every entry point: weight_norm reads n0 = N, n1 = K, n2 = r, n3 = layout,
// f = scale; the others n0 = rows, n1 = N, n2 = accumulate, f = shift.
struct Params { n0: u32, n1: u32, n2: u32, n3: u32, f: f32 }
@group(0) @binding(0) var<uniform> params: Params;
// weight_norm: out = norm, in0 = W, in1 = A, in2 = B, in3 = m, out2 = gscale.
// scale_shift: x, s; scale_shift_bias: x, s, bias; column_dot_div: a, b, d.
@group(0) @binding(1) var<storage, read_write> out: array<f32>;
@group(0) @binding(2) var<storage, read> in0: array<f32>;
@group(0) @binding(3) var<storage, read> in1: array<f32>;
@group(0) @binding(4) var<storage, read> in2: array<f32>;
@group(0) @binding(5) var<storage, read> in3: array<f32>;
@group(0) @binding(6) var<storage, read_write> out2: array<f32>;

var<workgroup> partial: array<f32, 64>;

@compute @workgroup_size(64)
fn weight_norm(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let o = wid.x + wid.y * nwg.x;
  let t = lid.x;
  // every thread of the workgroup reaches the barriers; rows past N compute nothing
  let N = params.n0;
  let K = params.n1;
  let r = params.n2;
  let live = o < N;
  var s = 0.0;
  if (live) {
    for (var k = t; k < K; k += 64u) {
      var w = 0.0;
      if (params.n3 == 1u) { w = in0[k * N + o]; } else { w = in0[o * K + k]; }
      var ba = 0.0;
      for (var j = 0u; j < r; j++) {
        ba += in2[o * r + j] * in1[j * K + k];
      }
      w += params.f * ba;
      s += w * w;
    }
  }
  partial[t] = s;
  workgroupBarrier();
  for (var h = 32u; h > 0u; h >>= 1u) {
    if (t < h) { partial[t] += partial[t + h]; }
    workgroupBarrier();
  }
  if (t == 0u && live) {
    let n = sqrt(partial[0]);
    out[o] = n;
    out2[o] = in3[o] / n;
  }
}

fn index(gid: vec3<u32>, nwg: vec3<u32>) -> u32 {
  return gid.x + gid.y * nwg.x * 256u;
}

@compute @workgroup_size(256)
fn scale_shift(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let i = index(gid, nwg);
  let N = params.n1;
  if (i >= params.n0 * N) { return; }
  let c = i % N;
  var v = in0[i] * (in1[c] + params.f);
  if (params.n2 != 0u) { v += out[i]; }
  out[i] = v;
}

@compute @workgroup_size(256)
fn scale_shift_bias(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let i = index(gid, nwg);
  let N = params.n1;
  if (i >= params.n0 * N) { return; }
  let c = i % N;
  var v = in0[i] * (in1[c] + params.f) + in2[c];
  if (params.n2 != 0u) { v += out[i]; }
  out[i] = v;
}

@compute @workgroup_size(256)
fn column_dot_div(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let c = index(gid, nwg);
  let N = params.n1;
  if (c >= N) { return; }
  var s = 0.0;
  var comp = 0.0;
  for (var r = 0u; r < params.n0; r++) {
    let y = in0[r * N + c] * in1[r * N + c] - comp;
    let t = s + y;
    comp = (t - s) - y;
    s = t;
  }
  var v = s / in2[c];
  if (params.n2 != 0u) { v += out[c]; }
  out[c] = v;
}
