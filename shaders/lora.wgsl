// LoRA's rank-r products, each one pass over its large operand, with the dropout mask fused in
// (shaders/dropout_mask.wgsl is put in front). The rank-r factor is W(c, j) = w[c * sW0 + j * sW1]
// for c < cols, j < R: LoRA's A [r, K] is sW0 = 1, sW1 = K; its B [N, r] is sW0 = r, sW1 = 1.
// mask(i) = keep(i) / (1 - p) when p > 0 (threshold != 0), else 1, with the element index i of a
// dense [rows, cols] tensor as shaders/dropout.wgsl numbers it (so it is dropout(x)'s mask).
//
// `down`: out[row * R + j] = alpha * sum_{c < cols} mask(row * cols + c) src[off + row * ld + c] W(c, j)
//   forward u = dropout(x) A^T (A), backward du = scale * dy B (B, no mask).
// `up`:   out[off + row * ld + c] (+)= alpha * mask(row * cols + c) * sum_{j < R} src[row * R + j] W(c, j)
//   forward y += scale * u B^T (B, no mask), backward dx += mask * (du A) (A).
// On the H100 the tiled and skinny matmuls took ~3x a pass over memory for these shapes (GPT-2's
// c_attn: lora_B 42 us, du 50 us per layer), and dropout needed a [rows, K] scratch and a kernel
// of its own each way.

// chunkRows: `grad`'s rows per chunk (0 for the others). off: the element offset of the large
// [rows, cols] operand's first row (src of `down` and `grad`, out of `up`): a column slice of a
// wider tensor (Llama's q, k or v inside the packed q|k|v rows) with ld its row stride.
struct Params { rows: u32, cols: u32, ld: u32, sW0: u32, sW1: u32, accumulate: u32, alpha: f32, salt: u32, threshold: u32, dropScale: f32, chunkRows: u32, off: u32 }
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

// W(c, 4g .. 4g + 3) (0 past R) for `up`: one vec4 load where W(c, 0..R) is one contiguous
// 16-byte-aligned run (LoRA's B row with R a multiple of 4), else strided scalar loads.
fn factorGroup(c: u32, g: u32) -> vec4<f32> {
  let wRow = c * params.sW0;
  if (params.sW1 == 1u && params.sW0 % 4u == 0u && R % 4u == 0u) { return w[(wRow >> 2u) + g]; }
  var v = vec4<f32>(0.0);
  for (var jj = 0u; jj < 4u; jj++) {
    if (4u * g + jj < R) { v[jj] = wAt(wRow + (4u * g + jj) * params.sW1); }
  }
  return v;
}

// ---- up: a workgroup takes UP_ROWS rows by 256 columns; thread c keeps W(c, 0..R) in four
// named vec4 registers, the block's src rows are staged in workgroup memory (read by all threads
// at once: a broadcast). Named registers, not an array indexed in loops (see `grad`): GPT-2's
// forward y += scale u B^T 19.6 -> 15.8 us per layer on the H100 (bench/probe/lora-grad.ts).
// (`down` with named registers was slower: 11.7 -> 12.9 us for u = dropout(x) A^T.)
const UP_ROWS: u32 = 16u;
var<workgroup> srcRows: array<vec4<f32>, 64>;  // UP_ROWS x MAX_R, as four vec4 per row

@compute @workgroup_size(256)
fn up(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let row0 = wid.y * UP_ROWS;
  if (lid < UP_ROWS * 4u) {
    let r = lid / 4u;
    let g = lid % 4u;
    var v = vec4<f32>(0.0);
    for (var jj = 0u; jj < 4u; jj++) {
      let j = 4u * g + jj;
      if (row0 + r < params.rows && j < R) { v[jj] = src[(row0 + r) * R + j]; }
    }
    srcRows[lid] = v;
  }
  workgroupBarrier();
  let c = wid.x * 256u + lid;
  if (c >= params.cols) { return; }
  let w0 = factorGroup(c, 0u);
  var w1 = vec4<f32>(0.0); var w2 = vec4<f32>(0.0); var w3 = vec4<f32>(0.0);
  if (R > 4u) { w1 = factorGroup(c, 1u); }
  if (R > 8u) { w2 = factorGroup(c, 2u); }
  if (R > 12u) { w3 = factorGroup(c, 3u); }
  let masked = params.threshold != 0u;
  let key = dropoutKey(step.seed, params.salt);
  let rows = min(UP_ROWS, params.rows - row0);
  for (var r = 0u; r < rows; r++) {
    var acc = dot(srcRows[r * 4u], w0);
    if (R > 4u) { acc += dot(srcRows[r * 4u + 1u], w1); }
    if (R > 8u) { acc += dot(srcRows[r * 4u + 2u], w2); }
    if (R > 12u) { acc += dot(srcRows[r * 4u + 3u], w3); }
    let row = row0 + r;
    var v = params.alpha * acc;
    if (masked) { v = select(0.0, v * params.dropScale, dropoutKeep(key, params.threshold, row * params.cols + c)); }
    let at = params.off + row * params.ld + c;
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
    let base = params.off + row * params.ld;
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

// ---- grad: the factor's gradient in two passes. This first pass sums chunks of rows:
//   parts[chunk * cols * R + c * sW0 + j * sW1] = sum_{row in chunk} mask(row * cols + c) src[off + row * ld + c] * small[row * R + j]
// (dA's chunks: src = x with the forward's mask, small = du; dB's: src = dy, small = u); the
// split-K sum (shaders/matmul_splitk_reduce.wgsl) then adds the chunks into the gradient. Chunks,
// not one workgroup per column block: 2048 rows by 768 columns would make six workgroups.
//
// A workgroup takes GRAD_COLS columns by `chunkRows` rows. Lane l of row slice s keeps columns
// 4l .. 4l + 3 of the block (one 16-byte load per row when ALIGNED: ld and cols multiples of 4)
// for rows s, s + 8, s + 16, ... of the chunk, four rows' loads in flight (ALIGNED also needs off a
// multiple of 4); the small operand's row
// is the same for every lane of a slice (a broadcast from cache). The sums are sixteen named vec4
// registers, a<column i><group g> over j = 4g .. 4g + 3: a 64-entry array indexed in loops ran
// at a third of the memory bandwidth on the H100 (NVIDIA's compiler kept it in local memory).
// The slices are then added in workgroup memory, one group of four j at a time.
const GRAD_LANES: u32 = 32u;
const GRAD_SLICES: u32 = 8u;
const GRAD_COLS: u32 = 128u;  // GRAD_LANES x 4
override ALIGNED: bool = false;
@group(0) @binding(3) var<storage, read> srcVec: array<vec4<f32>>;  // `src` read as vec4s (grad's binding)
var<workgroup> gradSlices: array<vec4<f32>, 1024>;  // [slice][column of the block] over four j: 16 KiB

// columns c .. c + 3 of src's row (0 past cols)
fn gradLoad(row: u32, c: u32) -> vec4<f32> {
  if (ALIGNED) {
    if (c < params.cols) { return srcVec[(params.off + row * params.ld + c) / 4u]; }
    return vec4<f32>(0.0);
  }
  var v = vec4<f32>(0.0);
  for (var i = 0u; i < 4u; i++) {
    if (c + i < params.cols) {
      let k = params.off + row * params.ld + c + i;
      v[i] = srcVec[k >> 2u][k & 3u];
    }
  }
  return v;
}

fn gradMasked(v: vec4<f32>, key: u32, row: u32, c: u32) -> vec4<f32> {
  if (params.threshold == 0u) { return v; }
  var m = v * params.dropScale;
  for (var i = 0u; i < 4u; i++) {
    if (!dropoutKeep(key, params.threshold, row * params.cols + c + i)) { m[i] = 0.0; }
  }
  return m;
}

// small[row, 4g .. 4g + 3] (0 past R)
fn gradSmall(row: u32, g: u32) -> vec4<f32> {
  if (R % 4u == 0u) { return w[row * (R / 4u) + g]; }
  var v = vec4<f32>(0.0);
  for (var jj = 0u; jj < 4u; jj++) {
    if (4u * g + jj < R) { v[jj] = wAt(row * R + 4u * g + jj); }
  }
  return v;
}

@compute @workgroup_size(256)
fn grad(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let slice = lid / GRAD_LANES;
  let lane = lid % GRAD_LANES;
  let c = wid.x * GRAD_COLS + 4u * lane;
  let start = wid.y * params.chunkRows;
  let end = min(params.rows, start + params.chunkRows);
  let key = dropoutKey(step.seed, params.salt);
  var a00 = vec4<f32>(0.0); var a10 = vec4<f32>(0.0); var a20 = vec4<f32>(0.0); var a30 = vec4<f32>(0.0);
  var a01 = vec4<f32>(0.0); var a11 = vec4<f32>(0.0); var a21 = vec4<f32>(0.0); var a31 = vec4<f32>(0.0);
  var a02 = vec4<f32>(0.0); var a12 = vec4<f32>(0.0); var a22 = vec4<f32>(0.0); var a32 = vec4<f32>(0.0);
  var a03 = vec4<f32>(0.0); var a13 = vec4<f32>(0.0); var a23 = vec4<f32>(0.0); var a33 = vec4<f32>(0.0);
  for (var row0 = start + slice; row0 < end; row0 += 4u * GRAD_SLICES) {
    // four rows' loads first (0 past the chunk), then their sums
    var x: array<vec4<f32>, 4>;
    for (var t = 0u; t < 4u; t++) {
      let row = row0 + t * GRAD_SLICES;
      x[t] = select(vec4<f32>(0.0), gradMasked(gradLoad(row, c), key, row, c), row < end);
    }
    for (var t = 0u; t < 4u; t++) {
      let row = min(row0 + t * GRAD_SLICES, params.rows - 1u);  // past the chunk x is 0: any row of small will do
      let xt = x[t];
      let s0 = gradSmall(row, 0u);
      a00 = fma(vec4<f32>(xt.x), s0, a00); a10 = fma(vec4<f32>(xt.y), s0, a10); a20 = fma(vec4<f32>(xt.z), s0, a20); a30 = fma(vec4<f32>(xt.w), s0, a30);
      if (R > 4u) {
        let s1 = gradSmall(row, 1u);
        a01 = fma(vec4<f32>(xt.x), s1, a01); a11 = fma(vec4<f32>(xt.y), s1, a11); a21 = fma(vec4<f32>(xt.z), s1, a21); a31 = fma(vec4<f32>(xt.w), s1, a31);
      }
      if (R > 8u) {
        let s2 = gradSmall(row, 2u);
        a02 = fma(vec4<f32>(xt.x), s2, a02); a12 = fma(vec4<f32>(xt.y), s2, a12); a22 = fma(vec4<f32>(xt.z), s2, a22); a32 = fma(vec4<f32>(xt.w), s2, a32);
      }
      if (R > 12u) {
        let s3 = gradSmall(row, 3u);
        a03 = fma(vec4<f32>(xt.x), s3, a03); a13 = fma(vec4<f32>(xt.y), s3, a13); a23 = fma(vec4<f32>(xt.z), s3, a23); a33 = fma(vec4<f32>(xt.w), s3, a33);
      }
    }
  }
  let partBase = wid.y * params.cols * R;
  let at = slice * GRAD_COLS + 4u * lane;
  for (var g = 0u; 4u * g < R; g++) {
    if (g == 0u) { gradSlices[at] = a00; gradSlices[at + 1u] = a10; gradSlices[at + 2u] = a20; gradSlices[at + 3u] = a30; }
    else if (g == 1u) { gradSlices[at] = a01; gradSlices[at + 1u] = a11; gradSlices[at + 2u] = a21; gradSlices[at + 3u] = a31; }
    else if (g == 2u) { gradSlices[at] = a02; gradSlices[at + 1u] = a12; gradSlices[at + 2u] = a22; gradSlices[at + 3u] = a32; }
    else { gradSlices[at] = a03; gradSlices[at + 1u] = a13; gradSlices[at + 2u] = a23; gradSlices[at + 3u] = a33; }
    workgroupBarrier();
    // column lid of the block: its eight slices, four j at once
    if (lid < GRAD_COLS) {
      var sum = vec4<f32>(0.0);
      for (var sl = 0u; sl < GRAD_SLICES; sl++) { sum += gradSlices[sl * GRAD_COLS + lid]; }
      let col = wid.x * GRAD_COLS + lid;
      if (col < params.cols) {
        for (var jj = 0u; jj < 4u; jj++) {
          let j = 4u * g + jj;
          if (j < R) { out[partBase + col * params.sW0 + j * params.sW1] = sum[jj]; }
        }
      }
    }
    workgroupBarrier();
  }
}
