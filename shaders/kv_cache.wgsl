// The position-dependent steps of generation with a KV cache. A decode program is recorded once
// and replayed for every new token, so the position can not be a bound constant: it is the first
// u32 of the `state` buffer (`pos`, the cache rows filled before this run), written before each
// run. Row i of a run sits at position pos + i.
//   append:        cache[(pos + i) * width + c] = src[i * srcStride + srcOffset + c]
//                  (a key or value row into its cache row; rows past the capacity are dropped)
//   rope:          rotary embedding in place at position pos + i, as shaders/rope.wgsl with
//                  positionOffset = pos (Llama's rotate_half; pairs (c, c + half) of each head)
//   add_positions: x[i, c] += table[pos + i, c] (GPT-2's learned positions)
// One thread per element (per pair for rope); 256 threads per workgroup, the grid folded into 2-D
// past 65535 workgroups.
struct Params {
  rows: u32,
  width: u32,      // append: columns copied; rope: heads * half (pairs per row); add_positions: C
  srcStride: u32,  // append: elements per source row; rope: elements per row of x
  srcOffset: u32,  // append: first source column; rope: column of the first rotated head
  limit: u32,      // append: cache rows; rope / add_positions: table rows (positions)
  headDim: u32,    // rope
  half: u32,       // rope: rotated pairs per head (rotaryDim / 2)
}
@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> state: array<u32>;
// append
@group(0) @binding(2) var<storage, read> src: array<f32>;
@group(0) @binding(3) var<storage, read_write> cache: array<f32>;
// rope and add_positions (an entry point may reuse binding numbers of variables it does not touch)
@group(0) @binding(2) var<storage, read_write> x: array<f32>;
@group(0) @binding(3) var<storage, read> cosT: array<f32>;
@group(0) @binding(4) var<storage, read> sinT: array<f32>;
@group(0) @binding(3) var<storage, read> table: array<f32>;

fn flatIndex(gid: vec3<u32>, nwg: vec3<u32>) -> u32 {
  return gid.x + gid.y * nwg.x * 256u;
}

@compute @workgroup_size(256)
fn append(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let t = flatIndex(gid, nwg);
  if (t >= params.rows * params.width) { return; }
  let i = t / params.width;
  let c = t - i * params.width;
  let row = state[0] + i;
  if (row >= params.limit) { return; }
  cache[row * params.width + c] = src[i * params.srcStride + params.srcOffset + c];
}

@compute @workgroup_size(256)
fn rope(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let t = flatIndex(gid, nwg);
  if (t >= params.rows * params.width) { return; }
  let half = params.half;
  let m = t / params.width;
  let rem = t - m * params.width;
  let h = rem / half;
  let k = rem - h * half;
  // (a position past the tables only happens on rows that are dropped from the cache anyway)
  let pos = min(state[0] + m, params.limit - 1u);
  let c = cosT[pos * half + k];
  let s = sinT[pos * half + k];
  let ia = m * params.srcStride + params.srcOffset + h * params.headDim + k;
  let ib = ia + half;
  let a = x[ia];
  let b = x[ib];
  x[ia] = a * c - b * s;
  x[ib] = b * c + a * s;
}

@compute @workgroup_size(256)
fn add_positions(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let t = flatIndex(gid, nwg);
  if (t >= params.rows * params.width) { return; }
  let i = t / params.width;
  let c = t - i * params.width;
  let pos = min(state[0] + i, params.limit - 1u);
  x[t] += table[pos * params.width + c];
}
