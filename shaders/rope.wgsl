// Rotary position embeddings applied in place, Llama's rotate_half convention. x is [rows, rowStride]
// (rows = B*T, row m at position (m % T) + positionOffset); the heads to rotate are `heads`
// consecutive blocks of headDim columns from colOffset (Q or K inside a packed qkv row, or a plain
// q / k tensor). In each head, columns i and i + half (i < half = rotaryDim / 2) form a pair:
//   forward:  (a, b) -> (a*cos - b*sin, b*cos + a*sin)
//   backward: the transpose, (a, b) -> (a*cos + b*sin, b*cos - a*sin), applied to the gradient.
// Columns rotaryDim .. headDim of a head (partial rotary) are left as they are. cos/sin tables are
// [positions, half] (see src/engine/models/rope-tables.ts). One thread per pair; 256 threads per
// workgroup, the grid folded into 2-D past 65535 workgroups.
struct Params {
  rows: u32,
  T: u32,
  rowStride: u32,
  colOffset: u32,
  heads: u32,
  headDim: u32,
  half: u32,
  positionOffset: u32,
}
@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read_write> x: array<f32>;
@group(0) @binding(2) var<storage, read> cosT: array<f32>;
@group(0) @binding(3) var<storage, read> sinT: array<f32>;

// Rotates one pair by +angle (sign = 1) or -angle (sign = -1).
fn rotate(gid: vec3<u32>, nwg: vec3<u32>, sign: f32) {
  let t = gid.x + gid.y * nwg.x * 256u;
  let half = params.half;
  let perRow = params.heads * half;
  if (t >= params.rows * perRow) { return; }
  let m = t / perRow;
  let rem = t - m * perRow;
  let h = rem / half;
  let i = rem - h * half;
  let pos = m % params.T + params.positionOffset;
  let c = cosT[pos * half + i];
  let s = sign * sinT[pos * half + i];
  let ia = m * params.rowStride + params.colOffset + h * params.headDim + i;
  let ib = ia + half;
  let a = x[ia];
  let b = x[ib];
  x[ia] = a * c - b * s;
  x[ib] = b * c + a * s;
}

@compute @workgroup_size(256)
fn forward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  rotate(gid, nwg, 1.0);
}

@compute @workgroup_size(256)
fn backward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  rotate(gid, nwg, -1.0);
}
