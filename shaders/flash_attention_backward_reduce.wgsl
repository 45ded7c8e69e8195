// Flash attention, backward: the grouped-query sum of dK or dV when the dK/dV kernel ran one
// workgroup per query head (shaders/flash_attention_backward_dkdv.wgsl with HPU = 1, writing into
// kernels/flash-attention.ts's dkvScratch): for every row r = b*T + t, key/value head g and d < D,
//   out[offOut + r*ldOut + g*D + d] = sum over the G query heads h of group g of part[offPart + r*H*D + h*D + d].
// One thread per output element (consecutive d on neighbouring threads), workgroups folded into y
// past 65535. Written, not accumulated.
struct Params {
  n: u32,        // B*T * kvH*D outputs
  W: u32,        // kvH*D: outputs per row
  D: u32,
  G: u32,        // query heads per key/value head
  offPart: u32,  // start of this half of the scratch; its rows are H*D = G*W long
  offOut: u32,
  ldOut: u32,
}
@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> part: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;

const WG: u32 = 256u;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
  let n = (wid.x + wid.y * nwg.x) * WG + lid;
  if (n >= params.n) { return; }
  let r = n / params.W;
  let c = n % params.W;  // g*D + d
  let g = c / params.D;
  let d = c % params.D;
  // query head g*G + hh's column: (g*G + hh)*D + d
  var at = params.offPart + r * params.G * params.W + g * params.G * params.D + d;
  var s = 0.0;
  for (var hh = 0u; hh < params.G; hh++) {
    s += part[at];
    at += params.D;
  }
  out[params.offOut + r * params.ldOut + c] = s;
}
