// LoRA's rank-r products, each one pass over its large operand, with the dropout mask fused in
// (shaders/dropout_mask.wgsl is put in front). The rank-r factor is W(c, j) = w[c * sW0 + j * sW1]
// for c < cols, j < R: LoRA's A [r, K] is sW0 = 1, sW1 = K; its B [N, r] is sW0 = r, sW1 = 1.
// mask(i) = keep(i) / (1 - p) when p > 0 (threshold != 0), else 1, with the element index i of a
// dense [rows, cols] tensor as shaders/dropout.wgsl numbers it (so it is dropout(x)'s mask).
//
// `down`: out[row * R + j] = alpha * sum_{c < cols} mask(row * cols + c) src[row * ld + c] W(c, j)
//   forward u = dropout(x) A^T (A), backward du = scale * dy B (B, no mask).
// `up`:   out[row * ld + c] (+)= alpha * mask(row * cols + c) * sum_{j < R} src[row * R + j] W(c, j)
//   forward y += scale * u B^T (B, no mask), backward dx += mask * (du A) (A).
// On the H100 the tiled and skinny matmuls took ~3x a pass over memory for these shapes (GPT-2's
// c_attn: lora_B 42 us, du 50 us per layer), and dropout needed a [rows, K] scratch and a kernel
// of its own each way.

struct Params { rows: u32, cols: u32, ld: u32, sW0: u32, sW1: u32, accumulate: u32, alpha: f32, salt: u32, threshold: u32, dropScale: f32 }
@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<uniform> step: Step;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;
@group(0) @binding(3) var<storage, read> src: array<f32>;
@group(0) @binding(4) var<storage, read> w: array<vec4<f32>>;  // the factor's buffer (16-byte rounded), read as vec4s

fn wAt(i: u32) -> f32 {
  return w[i >> 2u][i & 3u];
}

const MAX_R: u32 = 16u;
override R: u32 = 8u;  // the rank, 1..MAX_R

// ---- up: a workgroup takes UP_ROWS rows by 256 columns; thread c keeps W(c, 0..R) in registers,
// the block's src rows are staged in workgroup memory (read by all threads at once: a broadcast).
const UP_ROWS: u32 = 16u;
var<workgroup> srcRows: array<f32, 256>;  // UP_ROWS x MAX_R

@compute @workgroup_size(256)
fn up(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let row0 = wid.y * UP_ROWS;
  {
    let r = lid / MAX_R;
    let j = lid % MAX_R;
    var v = 0.0;
    if (row0 + r < params.rows && j < R) { v = src[(row0 + r) * R + j]; }
    srcRows[lid] = v;
  }
  workgroupBarrier();
  let c = wid.x * 256u + lid;
  if (c >= params.cols) { return; }
  var wc: array<f32, MAX_R>;
  for (var j = 0u; j < R; j++) { wc[j] = wAt(c * params.sW0 + j * params.sW1); }
  let masked = params.threshold != 0u;
  let key = dropoutKey(step.seed, params.salt);
  let rows = min(UP_ROWS, params.rows - row0);
  for (var r = 0u; r < rows; r++) {
    var acc = 0.0;
    for (var j = 0u; j < R; j++) { acc = fma(srcRows[r * MAX_R + j], wc[j], acc); }
    let row = row0 + r;
    var v = params.alpha * acc;
    if (masked) { v = select(0.0, v * params.dropScale, dropoutKeep(key, params.threshold, row * params.cols + c)); }
    let at = row * params.ld + c;
    if (params.accumulate != 0u) { v += out[at]; }
    out[at] = v;
  }
}

// ---- down: a workgroup takes DOWN_ROWS rows, DOWN_LANES threads each, lane l summing columns
// l, l + DOWN_LANES, ... into R registers (coalesced loads of src; W's rows come from cache); then
// the lanes' partials are added in workgroup memory, eight outputs per row at a time. 128 lanes
// per row keep the H100 full (2048 rows make 262,144 threads); 64 ran at half occupancy.
const DOWN_LANES: u32 = 128u;
const DOWN_ROWS: u32 = 2u;
const OUTS: u32 = 16u;         // outputs added per phase: DOWN_ROWS rows x 8
const RED_STRIDE: u32 = 17u;   // OUTS + 1 against bank conflicts
var<workgroup> lanePartials: array<f32, 2176>;  // DOWN_LANES x RED_STRIDE
var<workgroup> groupPartials: array<f32, 256>;

@compute @workgroup_size(256)
fn down(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let block = wid.x + nwg.x * wid.y;
  let rowIn = lid / DOWN_LANES;
  let lane = lid % DOWN_LANES;
  let row = block * DOWN_ROWS + rowIn;
  var acc: array<f32, MAX_R>;
  if (row < params.rows) {
    let base = row * params.ld;
    let masked = params.threshold != 0u;
    let key = dropoutKey(step.seed, params.salt);
    let rowsAsVec4 = params.sW1 == 1u && params.sW0 % 4u == 0u && R % 4u == 0u;
    for (var c0 = lane; c0 < params.cols; c0 += 4u * DOWN_LANES) {
      // four loads in flight per thread
      var xs: array<f32, 4>;
      for (var q = 0u; q < 4u; q++) {
        let c = c0 + q * DOWN_LANES;
        var v = 0.0;
        if (c < params.cols) {
          v = src[base + c];
          if (masked) { v = select(0.0, v * params.dropScale, dropoutKeep(key, params.threshold, row * params.cols + c)); }
        }
        xs[q] = v;
      }
      for (var q = 0u; q < 4u; q++) {
        let c = c0 + q * DOWN_LANES;
        if (c < params.cols) {
          let wRow = c * params.sW0;
          if (rowsAsVec4) {
            // W(c, 0..R) is one contiguous run (LoRA's B row): R / 4 vec4 loads instead of R strided ones
            for (var j4 = 0u; j4 < R / 4u; j4++) {
              let wv = w[(wRow >> 2u) + j4];
              for (var i = 0u; i < 4u; i++) { acc[4u * j4 + i] = fma(xs[q], wv[i], acc[4u * j4 + i]); }
            }
          } else {
            for (var j = 0u; j < R; j++) { acc[j] = fma(xs[q], wAt(wRow + j * params.sW1), acc[j]); }
          }
        }
      }
    }
  }
  for (var j0 = 0u; j0 < R; j0 += 8u) {
    for (var jj = 0u; jj < 8u; jj++) { lanePartials[lane * RED_STRIDE + rowIn * 8u + jj] = acc[j0 + jj]; }
    workgroupBarrier();
    // output o = (row in block, jj) of OUTS; sixteen threads each add eight lanes, then one adds those
    let o = lid / 16u;
    let part = lid % 16u;
    var s = 0.0;
    for (var l = 0u; l < 8u; l++) { s += lanePartials[(part * 8u + l) * RED_STRIDE + o]; }
    groupPartials[lid] = s;
    workgroupBarrier();
    if (lid < OUTS) {
      var t = 0.0;
      for (var q = 0u; q < 16u; q++) { t += groupPartials[lid * 16u + q]; }
      let r = block * DOWN_ROWS + lid / 8u;
      let j = j0 + lid % 8u;
      if (r < params.rows && j < R) { out[r * R + j] = params.alpha * t; }
    }
    workgroupBarrier();
  }
}
