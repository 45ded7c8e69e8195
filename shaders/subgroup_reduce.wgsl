// Shared by the subgroup variants of the row reductions (layernorm, rmsnorm, attention softmax,
// cross-entropy, grad norm): src/engine/kernels/subgroups.ts puts it in front of a kernel's
// `// #if subgroups` text, and only for a device with the `subgroups` feature.
//
// What the WGSL spec does and does not promise, and what these kernels therefore check:
//   - the subgroup size is a power of two in [4, 128], uniform within a workgroup of a dispatch
//     (so branching on it is uniform control flow), but chosen by the device compiler per shader:
//     nothing here assumes a size (SwiftShader: 4; NVIDIA 32; AMD 32 or 64; Intel 8 to 32);
//   - how the invocations of a workgroup are split into subgroups is NOT specified: there is no
//     relation between subgroup_invocation_id and local_invocation_index, and a subgroup may be
//     partial (Vulkan's SubgroupLocalInvocationId note; WGSL's subgroup_id extension, which would
//     name the subgroup, is not relied on).
// The kernels want the usual layout: subgroup k is exactly the invocations k*B .. k*B + B - 1 of
// local_invocation_index, in subgroup_invocation_id order, B = min(subgroup size, workgroup size).
// subgroupBlock checks that at run time, per workgroup, and returns the answer as a uniform value; a
// workgroup where any subgroup differs takes the workgroup-memory reduction instead (the same code
// as the plain variant), so results never depend on the layout, only the speed does.
enable subgroups;

// Tests: take the workgroup-memory path inside the subgroup variant (kernels/subgroups.ts).
override SG_FORCE_FALLBACK: bool = false;

// Set by any subgroup of the workgroup that is not one whole block of the layout above. Workgroup
// variables start at zero in every workgroup (WGSL zero-initializes them).
var<workgroup> sgLayoutBad: atomic<u32>;

// B = min(sgSize, wg) when every subgroup of this workgroup is one whole block of B consecutive
// local_invocation_index values in order (lid = k * B + subgroup_invocation_id, all B active);
// else 0: the kernels then reduce through workgroup memory. With B != 0, lid % B is the
// invocation's subgroup_invocation_id and lid / B its subgroup's block. A uniform value
// (workgroupUniformLoad: a barrier, the load, a barrier). Call once, at the top of the entry
// point, in uniform control flow.
fn subgroupBlock(lid: u32, sgSize: u32, sgId: u32, wg: u32) -> u32 {
  let block = min(sgSize, wg);
  let k = lid / block;
  let firstK = subgroupBroadcastFirst(k);
  let lanes = subgroupAdd(1u);
  // Every lane in block firstK at position sgId, and B lanes: the subgroup is that whole block.
  let whole = subgroupAll(k == firstK && lid % block == sgId) && lanes == block;
  if (!whole || SG_FORCE_FALLBACK) { atomicOr(&sgLayoutBad, 1u); }
  return select(0u, block, workgroupUniformLoad(&sgLayoutBad) == 0u);
}
