// Variants of the 128x128 stream-K kernel at GPT-2's stream-K shapes, over 132 and 264 workgroups:
// TFLOP/s and C against the engine's kernel. Run with __GL_SHADER_DISK_CACHE_PATH set to an empty
// folder, then bench/probe/nv_cache_sass.py reads each compiled program's register count (two
// workgroups of 256 threads fit an SM at <= 128 registers a thread).
//   here:        node scripts/node-run.mjs --bundle-only bench/dist bench/probe/streamk-variants.ts
//   GPU machine: bash .gpu/boot.sh node bench/dist/streamk-variants.mjs [--only NAME,...]
import { parseArgs } from 'node:util';
import { createNodeGpu } from '../../src/engine/gpu/node-gpu';
import { matmulWithScratch, productScratchElements, STREAMK_KERNELS } from '../../src/engine/kernels/matmul';
import type { Op } from '../../src/engine/gpu/dispatch';
import { timeOpsWarm } from '../warm-timing';
import { seededRandom } from '../../src/data/batches';

const { values: a } = parseArgs({ options: { only: { type: 'string' }, groups: { type: 'string' } } });
const gpu = await createNodeGpu({ dawnFlags: ['disable-dawn-features=timestamp_quantization'] });
const kernel = STREAMK_KERNELS['128x128'] as { code: string };
const original = kernel.code;

/** Replaces `from` (which must occur) in the kernel's code. */
function edit(code: string, from: string | RegExp, to: string): string {
  const next = code.replace(from, to);
  if (next === code) throw new Error(`variant edit found nothing: ${String(from).slice(0, 80)}`);
  return next;
}

const VARIANTS: Record<string, (code: string) => string> = {
  engine: (c) => c,
  // the K loop's checked-load branch gone (the stream-K shapes here are whole tiles: CHECKED is false anyway)
  unchecked: (c) => edit(c, /if \(!CHECKED \|\| \(interior && k0 \+ 16u <= params\.K\)\) \{([\s\S]*?)\} else \{[\s\S]*?\n {8}\}/, '{$1}'),
  // the vec4 GELU-gradient epilogue gone (GELU_GRAD is false here: the compiler drops it anyway)
  noGeluVec4: (c) => edit(c, /if \(tBegin == 0u && tEnd == params\.kTiles && GELU_GRAD && !CHECKED\) \{[\s\S]*?\n {4}\} else if/, 'if'),
  // the 16 unrolled k steps as a loop (the compiler's own unrolling and register choice)
  // the load slots recomputed from lidx where used (nothing kept across the K loop for them)
  inlineSlots: (c) => {
    let out = c;
    for (const [v, f, off] of [['sA0', 'slotA', '0u'], ['sA1', 'slotA', '256u'], ['sB0', 'slotB', '0u'], ['sB1', 'slotB', '256u']]) {
      out = edit(out, `    let ${v} = ${f}(lidx + ${off});\n`, '');
      out = out.replaceAll(`, ${v},`, `, ${f}(lidx + ${off}),`).replaceAll(`(${v}, `, `(${f}(lidx + ${off}), `);
    }
    return out;
  },
  // the loop over a workgroup's tile segments written out 4 times (no outer loop; enough for
  // itersPerGroup < 3 kTiles: 4 segments at most)
  segments4: (c) => {
    const head = '  var it = itBegin;\n  loop {\n    if (it >= itEnd) { break; }\n';
    const tail = '    it += tEnd - tBegin;\n  }\n}';
    const from = c.indexOf(head), to = c.lastIndexOf(tail);
    if (from < 0 || to < 0) throw new Error('segments4: loop not found');
    const body = c.slice(from + head.length, to);
    const one = `  if (it < itEnd) {\n${body}    it += tEnd - tBegin;\n  }\n`;
    return c.slice(0, from) + '  var it = itBegin;\n' + one.repeat(4) + '}' + c.slice(to + tail.length);
  },
  kloop: (c) => {
    const first = c.indexOf('      {\n        let a0 = tileA[0u + lid.y];');
    const end = c.indexOf('\n    }\n    if (tBegin == 0u');
    if (first < 0 || end < 0) throw new Error('kloop: blocks not found');
    const blockEnd = c.indexOf('\n      }\n', first) + '\n      }\n'.length;
    const body = c.slice(first, blockEnd)
      .replace('tileA[0u + lid.y]', 'tileA[33u * j + lid.y]').replace('tileA[16u + lid.y]', 'tileA[33u * j + 16u + lid.y]')
      .replace('tileB[0u + lid.x]', 'tileB[33u * j + lid.x]').replace('tileB[16u + lid.x]', 'tileB[33u * j + 16u + lid.x]');
    return c.slice(0, first) + '      for (var j = 0u; j < 16u; j++) {\n' + body + '      }' + c.slice(end);
  },
};

const SHAPES: [string, number, number, number, boolean][] = [
  ['c_attn fwd', 2048, 2304, 768, false],
  ['mlp c_proj fwd', 2048, 768, 3072, false],
  ['attn c_proj fwd', 2048, 768, 768, false],
  ['c_attn dx', 2048, 768, 2304, true],
  ['c_fc dx', 2048, 768, 3072, true],
];
const groupCounts = (a.groups ?? '132,264').split(',').map(Number);

const timeOps = (once: Op[]) => timeOpsWarm(gpu, once);

const names = a.only ? a.only.split(',') : Object.keys(VARIANTS);
const reference = new Map<string, Float32Array>();
for (const name of ['engine', ...names.filter((n) => n !== 'engine')]) {
  // 'a+b': variant b applied to variant a
  kernel.code = name.split('+').reduce((code, part) => VARIANTS[part](code), original);
  const line: string[] = [];
  for (const [what, M, N, K, transB] of SHAPES) {
    const random = seededRandom(M * 7 + N * 3 + K); // the same operands for every variant
    const A = gpu.tensorFrom(Float32Array.from({ length: M * K }, () => random() - 0.5), [M * K], 'A');
    const B = gpu.tensorFrom(Float32Array.from({ length: K * N }, () => random() - 0.5), [K * N], 'B');
    const C = gpu.tensor([M * N], 'C');
    for (const groups of groupCounts) {
      gpu.tuning.streamKWorkgroups = groups;
      const scratch = gpu.tensor([Math.max(1, productScratchElements(gpu, M, N, K))], 'scratch');
      const ops = matmulWithScratch(gpu, { a: A, b: B, c: C, M, N, K, transA: false, transB, label: 'p' }, scratch);
      if (!ops.some((o) => o.kind === 'dispatch' && o.label.includes('[streamK'))) throw new Error(`${what}: not stream-K`);
      const ms = await timeOps(ops);
      const c = await gpu.read(C);
      const key = `${what}`;
      let diff = 0;
      if (!reference.has(key)) reference.set(key, c);
      else { const r = reference.get(key)!; for (let i = 0; i < c.length; i++) diff = Math.max(diff, Math.abs(c[i] - r[i])); }
      line.push(`${what} /${groups}: ${((2 * M * N * K) / ms / 1e9).toFixed(1)}${diff > 1e-3 ? ` WRONG(${diff.toExponential(1)})` : ''}`);
      gpu.destroyTensor(scratch);
    }
    for (const t of [A, B, C]) gpu.destroyTensor(t);
  }
  console.log(`${name.padEnd(12)} ${line.join(' | ')}`);
}
gpu.checkErrors();
process.exit(0);
