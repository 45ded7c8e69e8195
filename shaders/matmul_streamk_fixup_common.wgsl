// What the stream-K fix-up's two forms share (shaders/matmul_streamk_fixup.wgsl, C as scalars;
// shaders/matmul_streamk_fixup_vec4.wgsl, C as vec4s): their Params, the pieces' binding, the
// overrides, which vec4 of which split tile a thread sums, and that sum. kernels/matmul.ts puts this file (after shaders/gelu_tanh.wgsl)
// in front of each.
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
// the pieces of split tiles, TILE_M x TILE_N floats each, as vec4s (the product kernel's scratch)
@group(0) @binding(1) var<storage, read> parts: array<vec4<f32>>;

override GELU_GRAD: bool = false;

// the product kernel's output tile (kernels/matmul.ts STREAMK_KERNELS)
override TILE_M: u32 = 128u;
override TILE_N: u32 = 128u;

// A thread's vec4 of a split tile: the tile's pieces are parts[first * TILE_M * TILE_N / 4 + q] and
// parts[2g * TILE_M * TILE_N / 4 + q] for g in (g0, g1], in order of k; it lands at C's row m,
// columns n0 .. n0 + 3. split false: the thread has nothing to do (past the last tile, or a tile one
// workgroup covered and stored).
struct FixupVec4 {
  split: bool,
  first: u32,
  g0: u32,
  g1: u32,
  q: u32,
  m: u32,
  n0: u32,
}

// Workgroups per tile: each takes 256 of the tile's vec4s, one per thread, so every load of every
// split tile is in flight at once (one workgroup walking a whole tile waited on its loads in turn:
// 30 us per GPT-2 product on the H100, where this takes a third of that).
fn fixupVec4(wid: vec3<u32>, nwg: vec3<u32>, lidx: u32) -> FixupVec4 {
  let chunksPerTile = TILE_M * TILE_N / 1024u;
  let rowVec4s = TILE_N / 4u;
  let chunk = wid.x + nwg.x * (wid.y + nwg.y * wid.z);
  let tile = chunk / chunksPerTile;
  var f = FixupVec4(false, 0u, 0u, 0u, 0u, 0u, 0u);
  if (tile >= params.tiles) { return f; }
  let firstIter = tile * params.kTiles;
  f.g0 = firstIter / params.itersPerGroup;
  f.g1 = (firstIter + params.kTiles - 1u) / params.itersPerGroup;
  f.split = f.g0 != f.g1;
  // g0's piece is its range's first when the range starts at this tile's first iteration, else its last
  f.first = select(2u * f.g0 + 1u, 2u * f.g0, f.g0 * params.itersPerGroup == firstIter);
  f.q = (chunk % chunksPerTile) * 256u + lidx;
  f.m = (tile / params.tilesN) * TILE_M + f.q / rowVec4s;
  f.n0 = (tile % params.tilesN) * TILE_N + (f.q % rowVec4s) * 4u;
  return f;
}

// The thread's vec4 of its split tile: the pieces added in order of k.
fn splitTileSum(f: FixupVec4) -> vec4<f32> {
  let tileVec4s = TILE_M * TILE_N / 4u;
  var sum = parts[f.first * tileVec4s + f.q];
  for (var g = f.g0 + 1u; g <= f.g1; g++) {
    sum += parts[2u * g * tileVec4s + f.q];
  }
  return sum;
}
