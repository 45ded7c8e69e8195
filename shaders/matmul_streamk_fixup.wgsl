// The second half of a stream-K matrix multiply (kernels/matmul.ts matmulStreamK): the first half
// (shaders/matmul_streamk_*.wgsl) cut the product's tilesM x tilesN x kTiles iterations into
// contiguous ranges of itersPerGroup, one per workgroup g, stored every tile a workgroup covered
// whole, and wrote the unscaled partial sums of the others to `parts`: slot 2g holds the first
// piece of g's range, 2g + 1 its last, TILE_M x TILE_N floats each (row-major, as vec4s). Here a
// tile split over workgroups g0 < ... < g1 sums their pieces in that order (increasing k) and
// applies the epilogue the plain kernels apply: C = alpha * sum (+ C) (+ bias[n]), then under
// GELU_GRAD times gelu'(pre[offPre + m * ldPre + n]) (shaders/gelu_tanh.wgsl, put in front of this
// file by kernels/matmul.ts). A tile one workgroup covered is left as it is.
struct Params {
  M: u32,
  N: u32,
  tilesN: u32,
  tiles: u32,
  kTiles: u32,
  itersPerGroup: u32,
  offC: u32,
  ldc: u32,
  accumulate: u32,
  hasBias: u32,
  alpha: f32,
  offPre: u32,
  ldPre: u32,
}
@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> parts: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> bias: array<f32>;
@group(0) @binding(3) var<storage, read_write> c: array<f32>;
// GELU_GRAD's pre-activations: bound to `bias` by the wrapper when GELU_GRAD is off (then never read).
@group(0) @binding(4) var<storage, read> pre: array<f32>;

override GELU_GRAD: bool = false;

// the product kernel's output tile (kernels/matmul.ts STREAMK_KERNELS)
override TILE_M: u32 = 128u;
override TILE_N: u32 = 128u;

// Workgroups per tile: each takes 256 of the tile's vec4s, one per thread, so every load of every
// split tile is in flight at once (one workgroup walking a whole tile waited on its loads in turn:
// 30 us per GPT-2 product on the H100, where this takes a third of that).
@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lidx: u32) {
  let TILE_VEC4S = TILE_M * TILE_N / 4u;
  let ROW_VEC4S = TILE_N / 4u;
  let chunksPerTile = TILE_VEC4S / 256u;
  let chunk = wid.x + nwg.x * (wid.y + nwg.y * wid.z);
  let tile = chunk / chunksPerTile;
  if (tile >= params.tiles) { return; }
  let first = tile * params.kTiles;
  let g0 = first / params.itersPerGroup;
  let g1 = (first + params.kTiles - 1u) / params.itersPerGroup;
  if (g0 == g1) { return; } // one workgroup covered the whole tile and stored it
  // g0's piece is its range's first when the range starts at this tile's first iteration, else its last
  let slot0 = select(2u * g0 + 1u, 2u * g0, g0 * params.itersPerGroup == first);
  let q = (chunk % chunksPerTile) * 256u + lidx;
  var sum = parts[slot0 * TILE_VEC4S + q];
  for (var g = g0 + 1u; g <= g1; g++) {
    sum += parts[2u * g * TILE_VEC4S + q];
  }
  let m = (tile / params.tilesN) * TILE_M + q / ROW_VEC4S;
  if (m >= params.M) { return; }
  let n0 = (tile % params.tilesN) * TILE_N + (q % ROW_VEC4S) * 4u;
  let rowBase = params.offC + m * params.ldc;
  for (var j = 0u; j < 4u; j++) {
    let n = n0 + j;
    if (n >= params.N) { break; }
    var x = params.alpha * sum[j];
    if (params.accumulate != 0u) { x += c[rowBase + n]; }
    if (params.hasBias != 0u) { x += bias[n]; }
    if (GELU_GRAD) { x *= geluTanhGrad(pre[params.offPre + m * params.ldPre + n]); }
    c[rowBase + n] = x;
  }
}
