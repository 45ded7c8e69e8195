// The tensor-core products' checks (test/helpers/tensor-core-cases.ts, as test/matmul-tc.test.ts
// runs them where the device has tensor cores) for the GPU machine, which has no vitest: prints
// each case, its error against its bound and the f32 kernels' error against the same bound (the
// tensor cores off), and exits 1 if any fails. Each case runs a second time with B's values on f16's
// grid, stored once in f32 and once in f16 (frozen weights at half the memory): C must be the same bits.
// Then every case again with f32 accuracy (tuning.tensorCoreF32: hi + lo halves), against a bound
// 512 times tighter (test/helpers/tensor-core-cases.ts).
//   here:        node scripts/node-run.mjs --bundle-only bench/dist bench/tc-check.ts
//   GPU machine: bash .gpu/boot.sh node bench/dist/tc-check.mjs
import { createNodeGpu } from '../src/engine/gpu/node-gpu';
import { TENSOR_CORE_CASES, runTensorCoreCase } from '../test/helpers/tensor-core-cases';

const gpu = await createNodeGpu({ tensorCores: true });
console.log(`device: ${gpu.info.description || gpu.info.vendor}; tensor cores: ${gpu.hasTensorCores}${gpu.info.tensorCoreF32Refused ? ` (${gpu.info.tensorCoreF32Refused})` : ''}; workgroup memory ${gpu.info.limits.maxComputeWorkgroupStorageSize} bytes`);
if (!gpu.hasTensorCores) {
  console.log(gpu.info.tensorCoresRefused ?? 'no f16 subgroup matrices');
  process.exit(1);
}
let failed = 0;
for (const f32Accuracy of [false, true]) {
  console.log(f32Accuracy ? 'f32 accuracy (hi + lo halves), bound 2^-19 sum |ab|:' : 'f16 operands, bound 2^-10 sum |ab|:');
  for (const c of TENSOR_CORE_CASES) {
    const t0 = performance.now();
    const r = await runTensorCoreCase(gpu, c, true, false, f32Accuracy);
    const h = await runTensorCoreCase(gpu, c, false, true, f32Accuracy);
    if (!r.ok || !h.ok) failed++;
    console.log(`${r.ok && h.ok ? 'ok  ' : 'FAIL'} ${c.name}: worst |error| / bound ${r.worstRatio.toPrecision(3)} (the f32 kernels: ${r.f32KernelWorstRatio!.toPrecision(3)}); B in f16: ${h.halfBIdentical ? 'same bits' : 'DIFFERENT'}, ${h.worstRatio.toPrecision(3)} of the bound (${r.labels.join(', ')}) ${(performance.now() - t0).toFixed(0)} ms`);
  }
}
const total = 2 * TENSOR_CORE_CASES.length;
console.log(failed ? `${failed} of ${total} failed` : `all ${total} passed`);
process.exit(failed ? 1 : 0);
