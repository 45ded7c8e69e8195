// dst[i] = src[i] for the first n vec4s (a buffer copy as a compute dispatch: kernels/copy.ts).
// A copyBufferToBuffer between two dispatches ends the compute pass they share; this does not.
// 1-D, 256 threads, grid folded into 2-D past the per-dimension workgroup limit.
struct Params { n: u32 }
@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> src: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read_write> dst: array<vec4<f32>>;

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let i = gid.x + gid.y * nwg.x * 256u;
  if (i >= params.n) { return; }
  dst[i] = src[i];
}
