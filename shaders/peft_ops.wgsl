// Small kernels the non-LoRA adapter methods need (src/engine/kernels/peft-ops.ts):
//   scale_columns          out[r, c] = (acc ? out[r, c] : 0) + x[r, c] * s[c]      (IA3: a learned vector times each row)
//   scale_columns_inplace  out[r, c] *= s[c]
//   column_dot             out[c] = (acc ? out[c] : 0) + sum over r of a[r, c] * b[r, c]   (IA3's vector gradient)
//   rows_add               x[b*S + i, c] += p[i, c] for b < B, i < n                 (prompt tuning: virtual rows of every sequence)
//   rows_sum               out[i, c] = (acc ? out[i, c] : 0) + sum over b of d[b*S + i, c]   (their gradient; n = S = 1 is a column sum)
//   tanh_forward           out = tanh(x)
//   tanh_backward(_inplace) dx = dout * (1 - y^2), y = tanh's output
// Sums run over rows in order with Kahan compensation: deterministic and accurate for long batches.
// One thread per output element; 256 threads a workgroup, the grid folded into 2-D past 65535.
struct Params { n0: u32, n1: u32, n2: u32, n3: u32, n4: u32 }
@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read_write> out: array<f32>;
// scale_columns: x, s; scale_columns_inplace: s at 2; column_dot: a, b; rows_add: p at 2; rows_sum: d at 2;
// tanh_forward: x at 2; tanh_backward: y, dout; tanh_backward_inplace: y at 2
@group(0) @binding(2) var<storage, read> in0: array<f32>;
@group(0) @binding(3) var<storage, read> in1: array<f32>;

fn index(gid: vec3<u32>, nwg: vec3<u32>) -> u32 {
  return gid.x + gid.y * nwg.x * 256u;
}

// params: rows, N, accumulate
@compute @workgroup_size(256)
fn scale_columns(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let i = index(gid, nwg);
  let N = params.n1;
  if (i >= params.n0 * N) { return; }
  let c = i % N;
  var v = in0[i] * in1[c];
  if (params.n2 != 0u) { v += out[i]; }
  out[i] = v;
}

// params: rows, N
@compute @workgroup_size(256)
fn scale_columns_inplace(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let i = index(gid, nwg);
  let N = params.n1;
  if (i >= params.n0 * N) { return; }
  out[i] = out[i] * in0[i % N];
}

// params: rows, N, accumulate
@compute @workgroup_size(256)
fn column_dot(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
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
  if (params.n2 != 0u) { s += out[c]; }
  out[c] = s;
}

// params: B, S, n, C
@compute @workgroup_size(256)
fn rows_add(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let t = index(gid, nwg);
  let C = params.n3;
  let perSeq = params.n2 * C;
  if (t >= params.n0 * perSeq) { return; }
  let b = t / perSeq;
  let k = t - b * perSeq;  // i * C + c
  let o = b * params.n1 * C + k;
  out[o] = out[o] + in0[k];
}

// params: B, S, n, C, accumulate
@compute @workgroup_size(256)
fn rows_sum(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let k = index(gid, nwg);
  let C = params.n3;
  if (k >= params.n2 * C) { return; }
  let stride = params.n1 * C;
  var s = 0.0;
  var comp = 0.0;
  for (var b = 0u; b < params.n0; b++) {
    let y = in0[b * stride + k] - comp;
    let t = s + y;
    comp = (t - s) - y;
    s = t;
  }
  if (params.n4 != 0u) { s += out[k]; }
  out[k] = s;
}

// No overflow for large |x|; near 0 the series keeps the relative error at f32 rounding (where
// 1 - exp(-2|x|) would cancel).
fn tanhStable(x: f32) -> f32 {
  let a = abs(x);
  if (a < 0.2) {
    let x2 = x * x;
    return x * (1.0 + x2 * (-1.0 / 3.0 + x2 * (2.0 / 15.0 + x2 * (-17.0 / 315.0 + x2 * (62.0 / 2835.0)))));
  }
  let e = exp(-2.0 * a);
  return sign(x) * (1.0 - e) / (1.0 + e);
}

// params: n
@compute @workgroup_size(256)
fn tanh_forward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let i = index(gid, nwg);
  if (i >= params.n0) { return; }
  out[i] = tanhStable(in0[i]);
}

// params: n
@compute @workgroup_size(256)
fn tanh_backward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let i = index(gid, nwg);
  if (i >= params.n0) { return; }
  let y = in0[i];
  out[i] = in1[i] * (1.0 - y * y);
}

// params: n
@compute @workgroup_size(256)
fn tanh_backward_inplace(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let i = index(gid, nwg);
  if (i >= params.n0) { return; }
  let y = in0[i];
  out[i] = out[i] * (1.0 - y * y);
}
