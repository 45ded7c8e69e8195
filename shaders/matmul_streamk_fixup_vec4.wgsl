// shaders/matmul_streamk_fixup.wgsl for a C whose rows are whole vec4s (kernels/matmul.ts
// matmulStreamK takes it when N, ldc and offC are multiples of 4, and under GELU_GRAD ldPre and
// offPre too): the same sums in the same order and the same epilogue, but C (and pre) read and
// written as vec4s, one per thread, where the scalar kernel makes four strided accesses of each.
// geluTanhGrad: shaders/gelu_tanh.wgsl, put in front of this file by kernels/matmul.ts.
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
@group(0) @binding(3) var<storage, read_write> c: array<vec4<f32>>;
// GELU_GRAD's pre-activations: bound to `bias` by the wrapper when GELU_GRAD is off (then never read).
@group(0) @binding(4) var<storage, read> pre: array<vec4<f32>>;

override GELU_GRAD: bool = false;

// the product kernel's output tile (kernels/matmul.ts STREAMK_KERNELS)
override TILE_M: u32 = 128u;
override TILE_N: u32 = 128u;

// Workgroups per tile as in shaders/matmul_streamk_fixup.wgsl: each takes 256 of the tile's vec4s.
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
  let slot0 = select(2u * g0 + 1u, 2u * g0, g0 * params.itersPerGroup == first);
  let q = (chunk % chunksPerTile) * 256u + lidx;
  let m = (tile / params.tilesN) * TILE_M + q / ROW_VEC4S;
  let n0 = (tile % params.tilesN) * TILE_N + (q % ROW_VEC4S) * 4u;
  if (m >= params.M || n0 >= params.N) { return; } // N is a multiple of 4: a vec4 is wholly in or out
  let at = (params.offC + m * params.ldc + n0) / 4u;
  // every load before the sum's adds: the C, bias and pre reads do not wait on the pieces
  var prev = vec4<f32>(0.0);
  if (params.accumulate != 0u) { prev = c[at]; }
  var bn = vec4<f32>(0.0);
  if (params.hasBias != 0u) { bn = vec4<f32>(bias[n0], bias[n0 + 1u], bias[n0 + 2u], bias[n0 + 3u]); }
  var sum = parts[slot0 * TILE_VEC4S + q];
  for (var g = g0 + 1u; g <= g1; g++) {
    sum += parts[2u * g * TILE_VEC4S + q];
  }
  var x = params.alpha * sum + prev + bn;
  if (GELU_GRAD) {
    let p = pre[(params.offPre + m * params.ldPre + n0) / 4u];
    x *= vec4<f32>(geluTanhGrad(p.x), geluTanhGrad(p.y), geluTanhGrad(p.z), geluTanhGrad(p.w));
  }
  c[at] = x;
}
