// Probe: why the engine's tensor-core kernel (shaders/matmul_tc_*.wgsl) runs under the plain one
// of bench/probe/tensor-core-matmul.ts (94 against 117 TFLOP/s at 4096^3, session 17). Times the
// engine's products (matmulWithScratch, A as values, no bias: the fragments stored straight) with
// its kernels' code edited one way at a time.
//   here:        node scripts/node-run.mjs --bundle-only bench/dist bench/probe/tc-engine-variants.ts
//   GPU machine: bash .gpu/boot.sh node bench/dist/tc-engine-variants.mjs
// @ts-nocheck -- a probe script, bundled like bench/matmul-shapes.ts
import { createNodeGpu } from '../../src/engine/gpu/node-gpu';
import { timeOpsWarm } from '../warm-timing';
import { matmulWithScratch } from '../../src/engine/kernels/matmul';
import { TC_KERNELS } from '../../src/engine/kernels/matmul-tc';
import { passTimer } from './pass-timer';

const gpu = await createNodeGpu({ dawnFlags: ['disable-dawn-features=timestamp_quantization'], tensorCores: true });
if (!gpu.hasTensorCores) throw new Error('no tensor cores');
const original = { '128x128': TC_KERNELS['128x128'].code, '64x64': TC_KERNELS['64x64'].code };
const noScale = (c: string) => c.replace(/vec4<f16>\(opA\((ra\d+)\) \* rs\d+\)/g, 'vec4<f16>(opA($1))');
// tileC of one fragment (8x smaller), without BIAS_INIT's loads (which need all of it)
const smallTileC = (c: string) => c.replace(/var<workgroup> tileC: array<f32, \d+>;/, 'var<workgroup> tileC: array<f32, 256>;').replace(/\n  if \(BIAS_INIT\) \{[\s\S]*?\n  \}\n/, '\n');
const EDITS: [string, (c: string) => string][] = [
  ['engine', (c) => c],
  ['no scale multiply', noScale],
  ['small tileC', smallTileC],
  ['both', (c) => smallTileC(noScale(c))],
  // the fragments stored as they are (no finished(): alpha 1 and no scales in these products)
  ['no finished()', (c) => c.replace(/finished\((acc\d+), [^)]*\)/g, '$1')],
  // no K slices: the whole K from the parameters' offsets
  ['no slices', (c) => c.replace('let kLen = min(params.sliceK, params.K - kBegin);', 'let kLen = params.K;').replace('let baseA = params.offA + kBegin;', 'let baseA = params.offA;').replace('let baseB = params.offB + kBegin * select(params.ldb, 1u, K_FAST_B);', 'let baseB = params.offB;')],
];
const SHAPES: [string, number, number, number, boolean][] = [
  ['4096^3 B [K, N]', 4096, 4096, 4096, false],
  ['c_attn 2048x2304x768 B [K, N]', 2048, 2304, 768, false],
  ['c_fc.dx 2048x768x3072 B [N, K]', 2048, 768, 3072, true],
];
const timeOps = (once) => timeOpsWarm(gpu, once);
const timer = passTimer(gpu.device);
for (const [what, M, N, K, transB] of SHAPES) {
  const A = gpu.tensor([M * K], 'A'), B = gpu.tensor([K * N], 'B'), C = gpu.tensor([M * N], 'C');
  const line = [];
  for (const tile of ['128x128', '64x64']) {
    gpu.tuning.tensorCoreTile = tile;
    {
      // the engine's kernel as is, timed as the plain probe times its own (bench/probe/tensor-core-matmul.ts:
      // back-to-back dispatches in one pass, timestamps at its two ends)
      const ops = matmulWithScratch(gpu, { a: A, b: B, c: C, M, N, K, transB, label: 'tc', tensorCores: 'values' }, null);
      await timer(ops, 20, 1);
      const us = await timer(ops, M * N * K > 2 ** 34 ? 10 : 40);
      line.push(`${tile} engine, pass timer ${((2 * M * N * K) / (us * 1e6)).toFixed(1)}`);
    }
    for (const [name, edit] of EDITS) {
      try { gpu.checkErrors(); } catch { /* an earlier variant's error, already reported */ }
      TC_KERNELS[tile].code = edit(original[tile]);
      try {
        const ops = matmulWithScratch(gpu, { a: A, b: B, c: C, M, N, K, transB, label: 'tc', tensorCores: 'values' }, null);
        const ms = await timeOps(ops);
        gpu.checkErrors();
        line.push(`${tile} ${name} ${((2 * M * N * K) / ms / 1e9).toFixed(1)}`);
      } catch (e) {
        line.push(`${tile} ${name} failed (${String(e.message).slice(0, 200)})`);
      }
      TC_KERNELS[tile].code = original[tile];
    }
  }
  console.log(`${what}: ${line.join(' | ')} TFLOP/s`);
  for (const t of [A, B, C]) gpu.destroyTensor(t);
}
process.exit(0);
