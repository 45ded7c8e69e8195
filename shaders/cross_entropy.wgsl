// Softmax cross-entropy per row of logits [rows, V] (rows ld apart), replacing the logits IN PLACE by the gradient:
//   losses[rowOffset + r] = logsumexp(logits_r) - logits_r[t_r],  t_r = targets[rowOffset + r]
// (rowOffset: the logits block's first row, when a batch's logits are made a block at a time)
//   logits_r <- (softmax(logits_r) - onehot(t_r)) * gradScale[0]
// A target < 0 (e.g. -100) is ignored: loss 0 and a zero gradient row. A target >= V is a bug
// upstream: its loss is NaN so it cannot train silently. The columns [V, ld) are never written.
//
// One workgroup of WG threads per row (WG an override constant, a power of two >= 8); a grid with
// fewer workgroups than rows loops over rows `number of workgroups` apart (rows folded into y past
// 65535 workgroups are the same loop). Memory-bound: the row is read twice and written once, so
// the logits are bound as vec4s (16-byte loads and stores, 4 of them in flight per thread):
//   - the row's elements [base, base + V), base = row * ld, split into the whole vec4s inside it,
//     [qa, qb) in vec4 units, and at most 3 elements before (when ld % 4 != 0) and 3 after them
//     (V % 4 != 0), read and written one component at a time by threads 0..5;
//   - pass 1: per thread an online (max, sum of exp(x - max)) over its vec4s, one exp per element
//     plus one per 16 elements for the rescaling, then merged across the workgroup in a tree;
//   - pass 2: gradient over the same vec4s in descending order, so that the end of the row, read
//     last in pass 1, is re-read first while it is most likely still in L2.
// A thread reads and writes only its own vec4s/elements; the target's logit is read by thread 0
// before the reduction's barriers, after which the row is overwritten.
// GRAD_MAX (and the lines marked #gradMax, which kernels/cross-entropy.ts drops without it, so
// that no buffer is bound for nothing): also gradMax[row] = (max |gradient| over the row, 0, 0, 0), the vec4 rows
// from which shaders/row_scale.wgsl (K = lda = 4) makes the LM head backward's tensor-core row
// scales without reading the gradient again (kernels/cross-entropy.ts).
// Two variants (kernels/subgroups.ts) of the pass-1 merge across the workgroup: a tree through
// workgroup memory (log2(WG) barrier rounds, then one more before red is reused); or, where the
// device has subgroups (and shaders/subgroup_reduce.wgsl found the usual layout in this
// workgroup), each subgroup merges its lanes with subgroupMax / subgroupAdd, one slot per subgroup,
// one barrier, and every subgroup merges the slots. Consecutive rows of a workgroup use two
// different slot ranges, so the next row needs no barrier before writing its own.
struct Params { rows: u32, V: u32, rowOffset: u32, ld: u32 }
@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read_write> logits: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> targets: array<i32>;
@group(0) @binding(3) var<storage, read> gradScale: array<f32>;
@group(0) @binding(4) var<storage, read_write> losses: array<f32>;
@group(0) @binding(5) var<storage, read_write> gradMax: array<vec4<f32>>;  // #gradMax

override WG: u32 = 256u;
override GRAD_MAX: bool = false;
// Finite stand-in for -inf: exp(NEG_BIG - m) is 0 for any real m, and exp(NEG_BIG - NEG_BIG) = 1
// times a zero sum stays 0 (a real -inf would give NaN there).
const NEG_BIG: f32 = -3.0e38;
const NONE: u32 = 0xffffffffu;
const ABS: u32 = 0x7fffffffu;
const INF_BITS: u32 = 0x7f800000u;  // |x| bits above it: a NaN
var<workgroup> red: array<vec2<f32>, WG>;  // (max, sum of exp(x - max)); sum -1: a NaN was seen
var<workgroup> redMax: array<f32, WG>;  // GRAD_MAX's merge

// A NaN logit is detected from its bits: max() may drop a NaN (NVIDIA does) and exp(NaN) need
// not be NaN on every Vulkan driver (SwiftShader's is finite), so the arithmetic alone may lose it.
fn merge(a: vec2<f32>, b: vec2<f32>) -> vec2<f32> {
  let m = max(a.x, b.x);
  let s = a.y * exp(a.x - m) + b.y * exp(b.x - m);
  return vec2(m, select(s, -1.0, min(a.y, b.y) < 0.0));
}

// The merge of v over the workgroup, returned to every thread; a barrier at the end, so red can be
// written again. Must be called in uniform control flow.
fn workgroupMerge(v: vec2<f32>, lid: u32) -> vec2<f32> {
  red[lid] = v;
  workgroupBarrier();
  for (var k = WG / 2u; k > 0u; k >>= 1u) {
    if (lid < k) { red[lid] = merge(red[lid], red[lid + k]); }
    workgroupBarrier();
  }
  let total = red[0];
  workgroupBarrier();  // everyone has read red[0] before the next row writes red
  return total;
}

// The same through subgroups when sg (subgroupBlock) is not 0, with the subgroups' partials in
// red[at + lid / sg] (at most WG / 4 of them); else workgroupMerge.
// #if subgroups
fn subgroupMerge(v: vec2<f32>) -> vec2<f32> {
  let m = subgroupMax(v.x);
  let s = subgroupAdd(v.y * exp(v.x - m));
  return vec2(m, select(s, -1.0, subgroupAny(v.y < 0.0)));
}

fn rowMerge(v: vec2<f32>, lid: u32, sg: u32, at: u32) -> vec2<f32> {
  if (sg == 0u) { return workgroupMerge(v, lid); }
  let part = subgroupMerge(v);
  let lane = lid % sg;
  if (lane == 0u) { red[at + lid / sg] = part; }
  workgroupBarrier();
  var acc = vec2(NEG_BIG, 0.0);
  for (var k = lane; k < WG / sg; k += sg) { acc = merge(acc, red[at + k]); }
  return subgroupMerge(acc);
}
// #else
fn rowMerge(v: vec2<f32>, lid: u32, sg: u32, at: u32) -> vec2<f32> {
  return workgroupMerge(v, lid);
}
// #endif

fn max4(v: vec4<f32>) -> f32 { return max(max(v.x, v.y), max(v.z, v.w)); }
fn sum4(v: vec4<f32>) -> f32 { return (v.x + v.y) + (v.z + v.w); }

fn loadElem(e: u32) -> f32 { return logits[e >> 2u][e & 3u]; }
fn storeElem(e: u32, v: f32) { logits[e >> 2u][e & 3u] = v; }

// Thread lid's element outside the whole vec4s (threads 0..2: before them, 3..5: after), or NONE.
fn extraElem(lid: u32, base: u32, end: u32, qa: u32, qb: u32) -> u32 {
  let headEnd = min(4u * qa, end);
  if (lid < 3u) {
    let e = base + lid;
    if (e < headEnd) { return e; }
  } else if (lid < 6u) {
    let e = max(4u * qb, headEnd) + (lid - 3u);
    if (e < end) { return e; }
  }
  return NONE;
}

// The gradient of 4 columns (vec4 q) from their logits x; onehot: the target's lane in vec4 tq.
// Returns the gradient's magnitudes.
fn grad4(q: u32, x: vec4<f32>, rowMax: f32, invSum: f32, tq: u32, onehot: vec4<f32>, g: f32) -> vec4<f32> {
  var p = exp(x - vec4(rowMax)) * invSum;
  if (q == tq) { p -= onehot; }
  let d = p * g;
  logits[q] = d;
  return abs(d);
}

// The largest of v over the workgroup, to thread 0 (others get a partial). Must be called in
// uniform control flow. redMax is written again only after the next row's rowMerge barrier, which
// thread 0 reaches after reading it here, so no barrier at the end.
fn workgroupMaxTo0(v: f32, lid: u32, sg: u32) -> f32 {
// #if subgroups
  if (sg != 0u) {
    let part = subgroupMax(v);
    if (lid % sg == 0u) { redMax[lid / sg] = part; }
    workgroupBarrier();
    var acc = 0.0;
    if (lid == 0u) {
      for (var k = 0u; k < WG / sg; k++) { acc = max(acc, redMax[k]); }
    }
    return acc;
  }
// #endif
  redMax[lid] = v;
  workgroupBarrier();
  for (var k = WG / 2u; k > 0u; k >>= 1u) {
    if (lid < k) { redMax[lid] = max(redMax[lid], redMax[lid + k]); }
    workgroupBarrier();
  }
  return redMax[0];
}

fn crossEntropyRow(row: u32, lid: u32, sg: u32, at: u32) {
  let V = params.V;
  let base = row * params.ld;
  let end = base + V;
  let qa = (base + 3u) / 4u;          // first whole vec4
  let qb = max(end / 4u, qa);         // past the last one
  let n = qb - qa;
  let extra = extraElem(lid, base, end, qa, qb);
  let lossIndex = params.rowOffset + row;
  let tgt = targets[lossIndex];

  if (tgt < 0) {
    for (var q = qa + lid; q < qb; q += WG) { logits[q] = vec4(0.0); }
    if (extra != NONE) { storeElem(extra, 0.0); }
    if (lid == 0u) {
      losses[lossIndex] = 0.0;
      if (GRAD_MAX) { gradMax[row] = vec4(0.0); }  // #gradMax
    }
    return;
  }
  let t = u32(tgt);
  let et = base + t;  // the target's element (when t < V)
  var xt = 0.0;
  if (lid == 0u && t < V) { xt = loadElem(et); }

  // pass 1: online max / sum of exp, 4 vec4 loads in flight
  var m = NEG_BIG;
  var s = 0.0;
  var nan = vec4(0u);  // max of |x| bits
  var i = lid;
  for (; i + 3u * WG < n; i += 4u * WG) {
    let q = qa + i;
    let x0 = logits[q];
    let x1 = logits[q + WG];
    let x2 = logits[q + 2u * WG];
    let x3 = logits[q + 3u * WG];
    let b0 = bitcast<vec4<u32>>(x0) & vec4(ABS);
    let b1 = bitcast<vec4<u32>>(x1) & vec4(ABS);
    let b2 = bitcast<vec4<u32>>(x2) & vec4(ABS);
    let b3 = bitcast<vec4<u32>>(x3) & vec4(ABS);
    nan = max(nan, max(max(b0, b1), max(b2, b3)));
    let mn = max(m, max(max(max4(x0), max4(x1)), max(max4(x2), max4(x3))));
    let mv = vec4(mn);
    let e = (exp(x0 - mv) + exp(x1 - mv)) + (exp(x2 - mv) + exp(x3 - mv));
    s = s * exp(m - mn) + sum4(e);
    m = mn;
  }
  for (; i < n; i += WG) {
    let x = logits[qa + i];
    nan = max(nan, bitcast<vec4<u32>>(x) & vec4(ABS));
    let mn = max(m, max4(x));
    s = s * exp(m - mn) + sum4(exp(x - vec4(mn)));
    m = mn;
  }
  if (extra != NONE) {
    let x = loadElem(extra);
    nan.x = max(nan.x, bitcast<u32>(x) & ABS);
    let mn = max(m, x);
    s = s * exp(m - mn) + exp(x - mn);
    m = mn;
  }

  if (any(nan > vec4(INF_BITS))) { s = -1.0; }
  let total = rowMerge(vec2(m, s), lid, sg, at);
  let rowMax = total.x;
  let sawNaN = total.y < 0.0;
  let NaN = bitcast<f32>(0x7fc00000u | (V & 0u));  // a runtime NaN: a constant one is a WGSL error
  let invSum = select(1.0 / total.y, NaN, sawNaN);  // a NaN logit: a NaN gradient row

  if (lid == 0u) {
    losses[lossIndex] = select((rowMax - xt) + log(total.y), NaN, sawNaN || t >= V);
  }

  // pass 2: the gradient, vec4s in descending order (qb - 1 - i), 4 loads in flight
  let g = gradScale[0];
  let tq = select(NONE, et >> 2u, t < V);
  let onehot = select(vec4(0.0), vec4(1.0), vec4(et & 3u) == vec4(0u, 1u, 2u, 3u));
  i = lid;
  var big = vec4(0.0);  // the gradient's largest magnitudes (GRAD_MAX)
  for (; i + 3u * WG < n; i += 4u * WG) {
    let q = qb - 1u - i;
    let x0 = logits[q];
    let x1 = logits[q - WG];
    let x2 = logits[q - 2u * WG];
    let x3 = logits[q - 3u * WG];
    let d0 = grad4(q, x0, rowMax, invSum, tq, onehot, g);
    let d1 = grad4(q - WG, x1, rowMax, invSum, tq, onehot, g);
    let d2 = grad4(q - 2u * WG, x2, rowMax, invSum, tq, onehot, g);
    let d3 = grad4(q - 3u * WG, x3, rowMax, invSum, tq, onehot, g);
    big = max(big, max(max(d0, d1), max(d2, d3)));
  }
  for (; i < n; i += WG) {
    let q = qb - 1u - i;
    big = max(big, grad4(q, logits[q], rowMax, invSum, tq, onehot, g));
  }
  if (extra != NONE) {
    var p = exp(loadElem(extra) - rowMax) * invSum;
    if (extra == et && t < V) { p -= 1.0; }
    storeElem(extra, p * g);
    big.x = max(big.x, abs(p * g));
  }
  if (GRAD_MAX) {
    let top = workgroupMaxTo0(max(max(big.x, big.y), max(big.z, big.w)), lid, sg);
    if (lid == 0u) { gradMax[row] = vec4(top, 0.0, 0.0, 0.0); }  // #gradMax
  }
}

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
// #if subgroups
        @builtin(subgroup_size) sgSize: u32, @builtin(subgroup_invocation_id) sgId: u32,
// #endif
        @builtin(local_invocation_index) lid: u32) {
// #if subgroups
  let sg = subgroupBlock(lid, sgSize, sgId, WG);
// #else
  let sg = 0u;
// #endif
  let stride = nwg.x * nwg.y;
  var at = 0u;  // this row's subgroup slots: red[0 ..] and red[WG / 4 ..] in turn
  for (var row = wid.x + wid.y * nwg.x; row < params.rows; row += stride) {
    crossEntropyRow(row, lid, sg, at);
    at = WG / 4u - at;
  }
}
