// Attention of `rows` new queries over a key/value cache (generation with a KV cache). The cache
// holds one row per position, [capacity, kvStride], key/value head g in columns g*D .. g*D+D-1.
// The `state` buffer's first u32 is `pos`, the number of cache rows filled before these queries:
// query row i sits at position pos + i and (its own key/value already appended at row pos + i)
// attends to cache rows 0 .. pos + i, causal. Rows before the sequence's own tokens, such as
// prefix tuning's key/value rows, are simply cache rows every query sees.
//   out[i, h*D + d] = sum_j softmax_j(scale * q_ih . k_jg) v_jg[d],   g = h / G (grouped-query heads)
// One workgroup per (row, head), items folded into the y dimension past 65535 workgroups. The
// scaled scores go to `scores` [rows*H, capacity] (global scratch: a long cache does not fit in
// workgroup memory), then become exp(s - max), then weight the values.
struct Params {
  rows: u32,
  H: u32,
  G: u32,          // query heads per key/value head
  D: u32,
  capacity: u32,   // cache rows
  qStride: u32,    // elements per query row
  qOffset: u32,    // column of head 0's query in a row
  kvStride: u32,   // elements per cache row
  outStride: u32,  // elements per output row (head h writes columns h*D ..)
  scale: f32,
}
@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> state: array<u32>;
@group(0) @binding(2) var<storage, read> q: array<f32>;
@group(0) @binding(3) var<storage, read> kCache: array<f32>;
@group(0) @binding(4) var<storage, read> vCache: array<f32>;
@group(0) @binding(5) var<storage, read_write> scores: array<f32>;
@group(0) @binding(6) var<storage, read_write> out: array<f32>;

const WG: u32 = 64u;
const NEG_BIG: f32 = -3.0e38;
var<workgroup> red: array<f32, WG>;

fn workgroupMax(v: f32, lid: u32) -> f32 {
  red[lid] = v;
  workgroupBarrier();
  for (var s = WG / 2u; s > 0u; s >>= 1u) {
    if (lid < s) { red[lid] = max(red[lid], red[lid + s]); }
    workgroupBarrier();
  }
  let r = red[0];
  workgroupBarrier();
  return r;
}

fn workgroupSum(v: f32, lid: u32) -> f32 {
  red[lid] = v;
  workgroupBarrier();
  for (var s = WG / 2u; s > 0u; s >>= 1u) {
    if (lid < s) { red[lid] += red[lid + s]; }
    workgroupBarrier();
  }
  let r = red[0];
  workgroupBarrier();
  return r;
}

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
  let item = wid.x + wid.y * nwg.x;
  // (item is the same for the whole workgroup, so this return keeps the barriers uniform)
  if (item >= params.rows * params.H) { return; }
  let i = item / params.H;
  let h = item - i * params.H;
  let g = h / params.G;
  let D = params.D;
  let n = min(state[0] + i + 1u, params.capacity);
  let qBase = i * params.qStride + params.qOffset + h * D;
  let sBase = item * params.capacity;
  var m = NEG_BIG;
  for (var j = lid; j < n; j += WG) {
    let kBase = j * params.kvStride + g * D;
    var s = 0.0;
    for (var d = 0u; d < D; d++) { s += q[qBase + d] * kCache[kBase + d]; }
    s *= params.scale;
    scores[sBase + j] = s;
    m = max(m, s);
  }
  m = workgroupMax(m, lid);
  var sum = 0.0;
  for (var j = lid; j < n; j += WG) {
    let e = exp(scores[sBase + j] - m);
    scores[sBase + j] = e;
    sum += e;
  }
  sum = workgroupSum(sum, lid);
  // every thread reads every score below: make the other threads' writes visible
  storageBarrier();
  let inv = select(0.0, 1.0 / sum, n > 0u);
  for (var d = lid; d < D; d += WG) {
    var acc = 0.0;
    for (var j = 0u; j < n; j++) { acc += scores[sBase + j] * vCache[j * params.kvStride + g * D + d]; }
    out[i * params.outStride + h * D + d] = acc * inv;
  }
}
