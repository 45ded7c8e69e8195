// Probe: what one dispatch costs beyond its work, by whether Dawn puts a barrier before it. N
// dispatches of one small kernel back to back in one compute pass (timestamps at its two ends):
//   dependent:   each reads what the one before wrote (ping-pong between two buffers: a barrier each);
//   independent: each reads one input and writes its own buffer (no hazard: no barrier);
//   one buffer:  each writes its own range of one shared buffer (write after write on a buffer:
//                Dawn tracks a buffer's usage as a whole, so a barrier each, as in dependent);
// for a 1-workgroup kernel and for a 132-workgroup one that does about 2 us of work.
//   here:        node scripts/node-run.mjs --bundle-only bench/dist bench/probe/dispatch-cost.ts
//                VK_ICD_FILENAMES=/usr/lib/chromium/vk_swiftshader_icd.json node bench/dist/dispatch-cost.mjs --n 20
//   GPU machine: bash .gpu/boot.sh node bench/dist/dispatch-cost.mjs [--n 400]
// @ts-nocheck -- a probe script, bundled like bench/matmul-shapes.ts
import { parseArgs } from 'node:util';
import { createNodeGpu } from '../../src/engine/gpu/node-gpu';
import { passTimer } from './pass-timer';

const { values: a } = parseArgs({ options: { n: { type: 'string' }, iters: { type: 'string' } } });
const N = Number(a.n ?? 400);
const gpu = await createNodeGpu({ dawnFlags: ['disable-dawn-features=timestamp_quantization'] });
const device = gpu.device;
device.onuncapturederror = (e) => console.error('uncaptured', e.error?.message);
console.log(`${gpu.info.vendor} ${gpu.info.description} | ${N} dispatches a pass`);
const timer = passTimer(device);

// Each invocation walks ITERS steps of a short dependent chain from its input element and writes it.
const code = (iters: number) => /* wgsl */ `
@group(0) @binding(0) var<storage, read> src: array<f32>;
@group(0) @binding(1) var<storage, read_write> dst: array<f32>;
override OFFSET: u32 = 0u;
@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) id: vec3<u32>) {
  var x = src[id.x];
  for (var i = 0u; i < ${iters}u; i++) { x = fma(x, 0.999, 0.001); }
  dst[OFFSET + id.x] = x;
}`;
const ELEMS = 132 * 256;
const buf = (bytes: number) => device.createBuffer({ size: bytes, usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST });
const input = buf(ELEMS * 4), ping = buf(ELEMS * 4), pong = buf(ELEMS * 4);
const own = Array.from({ length: N }, () => buf(ELEMS * 4));
const shared = buf(N * ELEMS * 4);
const results = [];
for (const [kernel, workgroups, iters] of [['1 workgroup', 1, 16], ['132 workgroups', 132, 16], ['132 workgroups, ~2 us', 132, 2000]] as const) {
  const module = device.createShaderModule({ code: code(iters) });
  const pipe = (offset = 0) => device.createComputePipeline({ layout: 'auto', compute: { module, entryPoint: 'main', constants: { OFFSET: offset } } });
  const p0 = pipe();
  const bind = (p, src, dst) => device.createBindGroup({ layout: p.getBindGroupLayout(0), entries: [{ binding: 0, resource: { buffer: src } }, { binding: 1, resource: { buffer: dst } }] });
  const op = (p, src, dst) => ({ kind: 'dispatch', label: kernel, pipeline: p, bindGroup: bind(p, src, dst), workgroups: [workgroups, 1, 1] });
  const dependent = Array.from({ length: N }, (_, i) => (i % 2 ? op(p0, pong, ping) : op(p0, ping, pong)));
  const independent = own.map((o) => op(p0, input, o));
  // one pipeline per offset would be N pipelines: bind ranges of the shared buffer instead
  const ranged = Array.from({ length: N }, (_, i) => ({
    kind: 'dispatch', label: kernel, pipeline: p0, workgroups: [workgroups, 1, 1],
    bindGroup: device.createBindGroup({ layout: p0.getBindGroupLayout(0), entries: [{ binding: 0, resource: { buffer: input } }, { binding: 1, resource: { buffer: shared, offset: i * ELEMS * 4, size: ELEMS * 4 } }] }),
  }));
  const one = await timer([independent[0]], 1, 5);
  const row = { kernel, alone: one };
  for (const [what, ops] of [['dependent', dependent], ['independent', independent], ['one buffer', ranged]] as const) row[what] = (await timer(ops, 1, 5)) / N;
  results.push(row);
  console.log(`${kernel.padEnd(24)} alone ${one.toFixed(2).padStart(7)} us | per dispatch of ${N}: dependent ${row.dependent.toFixed(2).padStart(6)} us, independent ${row.independent.toFixed(2).padStart(6)} us, one buffer ${row['one buffer'].toFixed(2).padStart(6)} us`);
}
if (process.env.OUT) (await import('node:fs')).writeFileSync(`${process.env.OUT}/dispatch-cost.json`, JSON.stringify(results, null, 1));
process.exit(0);
