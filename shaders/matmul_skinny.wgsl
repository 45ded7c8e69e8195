// Matrix multiply with one small output dimension: C[rows, S] = alpha * A'[rows, K] @ B'[K, S]
// (+ C), S <= 16, K long. LoRA's gradients and down projections (rank-r outputs over thousands
// of rows or features) are this shape; a tiled kernel would make a few dozen workgroups, each
// walking all of K with most of its lanes idle.
//
// A workgroup takes ROWS rows and splits K 256 / ROWS ways (SLICES) among its 256 threads: thread
// (row, slice) sums k = slice, slice + SLICES, ... into S registers, then the slices of each row
// are added in workgroup memory. Every operand is addressed through strides, so the wrapper can
// hand in the transposed problem (C^T = B^T A^T) when the small dimension is M, and any transposes.
// `rowFast` picks the thread layout that makes neighbouring threads read neighbouring addresses
// of A' (1 when A' is contiguous along rows, 0 when contiguous along k). S is a pipeline
// constant, so the per-thread sums stay in registers (loops of constant length unroll).

struct Params {
  rows: u32,
  K: u32,
  offA: u32,
  offB: u32,
  offC: u32,
  strideArow: u32,
  strideAk: u32,
  strideBk: u32,
  strideBs: u32,
  strideCrow: u32,
  strideCs: u32,
  rowFast: u32,
  accumulate: u32,
  alpha: f32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read_write> c: array<f32>;

// Rows per workgroup (4, 8 or 16) and the K-slices of each (256 / ROWS): fewer rows make more
// workgroups, which a GPU with many cores needs when the row count is only a few thousand.
override ROWS: u32 = 16u;
override SLICES: u32 = 256u / ROWS;
const MAX_S: u32 = 16u;
override S: u32 = 16u; // output columns, 1..MAX_S

// partial[(slice * ROWS + row) * MAX_S + s]
var<workgroup> partial: array<f32, 4096>;

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lidx: u32) {
  let block = wid.x + nwg.x * (wid.y + nwg.y * wid.z);
  var rowInBlock: u32;
  var slice: u32;
  if (params.rowFast != 0u) {
    rowInBlock = lidx % ROWS;
    slice = lidx / ROWS;
  } else {
    rowInBlock = lidx / SLICES;
    slice = lidx % SLICES;
  }
  let row = block * ROWS + rowInBlock;
  var acc: array<f32, MAX_S>;
  if (row < params.rows) {
    let aRow = params.offA + row * params.strideArow;
    for (var k = slice; k < params.K; k += SLICES) {
      let x = a[aRow + k * params.strideAk];
      let bk = params.offB + k * params.strideBk;
      for (var s = 0u; s < S; s++) {
        acc[s] = fma(x, b[bk + s * params.strideBs], acc[s]);
      }
    }
  }
  let base = (slice * ROWS + rowInBlock) * MAX_S;
  for (var s = 0u; s < S; s++) {
    partial[base + s] = acc[s];
  }
  workgroupBarrier();
  // 256 threads finish the ROWS x S outputs of the block (S <= 16): one each.
  let outRow = lidx / MAX_S;
  let s = lidx % MAX_S;
  let r = block * ROWS + outRow;
  if (outRow < ROWS && r < params.rows && s < S) {
    var sum = 0.0;
    for (var sl = 0u; sl < SLICES; sl++) {
      sum += partial[(sl * ROWS + outRow) * MAX_S + s];
    }
    let ci = params.offC + r * params.strideCrow + s * params.strideCs;
    var v = params.alpha * sum;
    if (params.accumulate != 0u) {
      v += c[ci];
    }
    c[ci] = v;
  }
}
