// Token + position embedding lookup. One thread per output element (m, c):
//   out[m, c] = (accumulate ? out[m, c] : 0)
//             + (rowStart <= tok[m] < rowStart + rows ? table[tok[m] - rowStart, c] : 0)
//             + (hasPositions ? positions[m % T + positionOffset, c] : 0)
// The vocabulary table may be one row chunk of a larger table (binding-size limit): tokens outside
// the chunk add nothing, and later chunks run with accumulate on. Grid folded into 2-D past 65535.
struct Params { M: u32, C: u32, T: u32, rowStart: u32, rows: u32, positionOffset: u32, accumulate: u32, hasPositions: u32 }
@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> tokens: array<u32>;
@group(0) @binding(2) var<storage, read> table: array<f32>;
// When there are no positions the wrapper binds the table here; it is then never read.
@group(0) @binding(3) var<storage, read> positions: array<f32>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let i = gid.x + gid.y * nwg.x * 256u;
  let C = params.C;
  if (i >= params.M * C) { return; }
  let m = i / C;
  let c = i - m * C;
  var v = 0.0;
  if (params.accumulate != 0u) { v = out[i]; }
  // u32 subtraction wraps for tok < rowStart, so one comparison checks both ends of the chunk.
  let r = tokens[m] - params.rowStart;
  if (r < params.rows) { v += table[r * C + c]; }
  if (params.hasPositions != 0u) {
    let p = m % params.T + params.positionOffset;
    v += positions[p * C + c];
  }
  out[i] = v;
}
