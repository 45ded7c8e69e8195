// Softmax cross-entropy per row of logits [rows, V] (rows ld apart), replacing the logits IN PLACE by the gradient:
//   losses[rowOffset + r] = logsumexp(logits_r) - logits_r[t_r],  t_r = targets[rowOffset + r]
// (rowOffset: the logits block's first row, when a batch's logits are made a block at a time)
//   logits_r <- (softmax(logits_r) - onehot(t_r)) * gradScale[0]
// A target < 0 (e.g. -100) is ignored: loss 0 and a zero gradient row. A target >= V is a bug
// upstream: its loss is NaN so it cannot train silently.
// One 256-thread workgroup per row (rows folded into y past 65535 workgroups). Pass 1 reads the row
// once with an online max/sum-of-exp per thread (one exp per element), merged across the workgroup;
// pass 2 writes the gradient. Each thread reads and writes only its own columns (c = lid + k*256).
struct Params { rows: u32, V: u32, rowOffset: u32, ld: u32 }
@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read_write> logits: array<f32>;
@group(0) @binding(2) var<storage, read> targets: array<i32>;
@group(0) @binding(3) var<storage, read> gradScale: array<f32>;
@group(0) @binding(4) var<storage, read_write> losses: array<f32>;

const WG: u32 = 256u;
// Finite stand-in for -inf: exp(NEG_BIG - m) is 0 for any real m, and exp(NEG_BIG - NEG_BIG) = 1
// times a zero sum stays 0 (a real -inf would give NaN there).
const NEG_BIG: f32 = -3.0e38;
var<workgroup> red: array<vec2<f32>, WG>;  // (max, sum of exp(x - max))

fn merge(a: vec2<f32>, b: vec2<f32>) -> vec2<f32> {
  let m = max(a.x, b.x);
  return vec2(m, a.y * exp(a.x - m) + b.y * exp(b.x - m));
}

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
  let row = wid.x + wid.y * nwg.x;
  if (row >= params.rows) { return; }
  let V = params.V;
  let base = row * params.ld;
  let lossIndex = params.rowOffset + row;
  let tgt = targets[lossIndex];

  if (tgt < 0) {
    for (var c = lid; c < V; c += WG) { logits[base + c] = 0.0; }
    if (lid == 0u) { losses[lossIndex] = 0.0; }
    return;
  }

  var m = NEG_BIG;
  var s = 0.0;
  for (var c = lid; c < V; c += WG) {
    let x = logits[base + c];
    if (x > m) {
      s = s * exp(m - x) + 1.0;
      m = x;
    } else {
      s += exp(x - m);  // also propagates a NaN logit into the loss
    }
  }
  red[lid] = vec2(m, s);
  workgroupBarrier();
  for (var k = WG / 2u; k > 0u; k >>= 1u) {
    if (lid < k) { red[lid] = merge(red[lid], red[lid + k]); }
    workgroupBarrier();
  }
  let total = red[0];
  let rowMax = total.x;
  let invSum = 1.0 / total.y;

  let t = u32(tgt);
  if (t >= V) {
    if (lid == 0u) { losses[lossIndex] = bitcast<f32>(0x7fc00000u | (V & 0u)); } // a runtime NaN: a constant one is a WGSL error
  } else if (t % WG == lid) {
    // The thread that owns column t reads it before its own pass 2 overwrites it.
    losses[lossIndex] = (rowMax - logits[base + t]) + log(total.y);
  }

  let g = gradScale[0];
  for (var c = lid; c < V; c += WG) {
    var p = exp(logits[base + c] - rowMax) * invSum;
    if (c == t) { p -= 1.0; }
    logits[base + c] = p * g;
  }
}
