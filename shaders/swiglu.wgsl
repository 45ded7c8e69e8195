// Llama's MLP activation (SwiGLU): h = silu(gate) * up, silu(g) = g * sigmoid(g).
//   backward: dgate = dout * up * silu'(gate), dup = dout * silu(gate),
//             silu'(g) = s * (1 + g * (1 - s)), s = sigmoid(g).
// gate, up, dgate and dup are strided: element (r, f) of gate is at r * gateStride + gateOffset + f,
// so they can be separate [rows, F] tensors or halves of one packed [rows, 2F] tensor. out and dout
// are dense [rows, F]. One thread per (r, f); 256 threads per workgroup, the grid folded into 2-D
// past 65535 workgroups.
// Entry points by aliasing (WebGPU forbids a buffer bound writable twice, or writable and read-only):
//   backward:          dgate and dup are two distinct buffers.
//   backward_packed:   dgate and dup are one buffer (binding 4, disjoint columns).
//   backward_inplace:  one buffer holds gate and up and receives dgate and dup in the same places.
struct Params {
  rows: u32,
  F: u32,
  gateStride: u32,
  gateOffset: u32,
  upStride: u32,
  upOffset: u32,
  dgateStride: u32,
  dgateOffset: u32,
  dupStride: u32,
  dupOffset: u32,
}
@group(0) @binding(0) var<uniform> params: Params;

// forward bindings
@group(0) @binding(1) var<storage, read> gate: array<f32>;
@group(0) @binding(2) var<storage, read> up: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

// backward bindings (an entry point may reuse binding numbers of variables it does not touch)
@group(0) @binding(1) var<storage, read> bDout: array<f32>;
@group(0) @binding(2) var<storage, read> bGate: array<f32>;
@group(0) @binding(3) var<storage, read> bUp: array<f32>;
@group(0) @binding(4) var<storage, read_write> dgate: array<f32>;  // also dup in backward_packed
@group(0) @binding(5) var<storage, read_write> dup: array<f32>;
// backward_inplace: gate/up in, dgate/dup out
@group(0) @binding(2) var<storage, read_write> gu: array<f32>;

// sigmoid(g) and 1 - sigmoid(g) from exp(-|g|), which never overflows: no inf/inf or 0*inf for any
// finite g (gate = -1e4 gives silu = -0 and silu' = -0, gate = 1e4 gives g and 1).
fn sigmoids(g: f32) -> vec2<f32> {
  let e = exp(-abs(g));
  let p = 1.0 / (1.0 + e);  // sigmoid(|g|)
  let q = e * p;            // sigmoid(-|g|)
  return select(vec2(q, p), vec2(p, q), g >= 0.0);
}

struct Index { r: u32, f: u32, ok: bool }

fn index(gid: vec3<u32>, nwg: vec3<u32>) -> Index {
  let t = gid.x + gid.y * nwg.x * 256u;
  let r = t / params.F;
  return Index(r, t - r * params.F, t < params.rows * params.F);
}

fn gateAt(i: Index) -> u32 { return i.r * params.gateStride + params.gateOffset + i.f; }
fn upAt(i: Index) -> u32 { return i.r * params.upStride + params.upOffset + i.f; }
fn dgateAt(i: Index) -> u32 { return i.r * params.dgateStride + params.dgateOffset + i.f; }
fn dupAt(i: Index) -> u32 { return i.r * params.dupStride + params.dupOffset + i.f; }

// (dgate, dup) for one element.
fn grads(d: f32, g: f32, u: f32) -> vec2<f32> {
  let s = sigmoids(g);
  return vec2(d * u * (s.x * (1.0 + g * s.y)), d * (g * s.x));
}

@compute @workgroup_size(256)
fn forward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let i = index(gid, nwg);
  if (!i.ok) { return; }
  let g = gate[gateAt(i)];
  out[i.r * params.F + i.f] = g * sigmoids(g).x * up[upAt(i)];
}

@compute @workgroup_size(256)
fn backward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let i = index(gid, nwg);
  if (!i.ok) { return; }
  let d = grads(bDout[i.r * params.F + i.f], bGate[gateAt(i)], bUp[upAt(i)]);
  dgate[dgateAt(i)] = d.x;
  dup[dupAt(i)] = d.y;
}

@compute @workgroup_size(256)
fn backward_packed(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let i = index(gid, nwg);
  if (!i.ok) { return; }
  let d = grads(bDout[i.r * params.F + i.f], bGate[gateAt(i)], bUp[upAt(i)]);
  dgate[dgateAt(i)] = d.x;
  dgate[dupAt(i)] = d.y;
}

@compute @workgroup_size(256)
fn backward_inplace(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let i = index(gid, nwg);
  if (!i.ok) { return; }
  // Each thread reads and then overwrites only its own two elements (dgate/dup layouts equal gate/up).
  let d = grads(bDout[i.r * params.F + i.f], gu[gateAt(i)], gu[upAt(i)]);
  gu[gateAt(i)] = d.x;
  gu[upAt(i)] = d.y;
}
