// LoRA's fused rank-r products (shaders/lora.wgsl) against float64 references: loraProject
// (u = dropout(x) A^T, du = scale * dy B), loraExpand (y += scale * u B^T, dx += dropout'(du A))
// and loraWeightGrad (dA += du^T dropout(x), dB += scale * dy^T u), with the dropout mask
// regenerated in JS (the dropout kernel's hash).
import { describe, expect, it } from 'vitest';
import { testGpu, randArray, expectClose } from './helpers/gpu';
import { run, bind } from './helpers/kernel-check';
import { StepUniforms } from '../src/engine/kernels/step-uniforms';
import { loraExpand, loraProject, loraWeightGrad, loraWeightGradChunks, loraWeightGradScratch, type RankFactorLayout } from '../src/engine/kernels/lora';
import { keepMask } from './helpers/dora-bottleneck-reference';

const stepValues = (seed: number) => ({ lr: 1e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 0, step: 1, seed });
const SEED = 777, SALT = 0x9e37 + 7919;

const wAt = (w: Float32Array, layout: RankFactorLayout, c: number, j: number, cols: number, r: number) => (layout === 'cols_r' ? w[c * r + j] : w[j * cols + c]);
const maskOf = (rows: number, cols: number, p: number) => (p > 0 ? keepMask(rows * cols, SEED, SALT, p) : null);

function expectDropRate(mask: Uint8Array | null, p: number): void {
  if (!mask) return;
  const dropped = mask.reduce((s, m) => s + (1 - m), 0) / mask.length;
  expect(Math.abs(dropped - p)).toBeLessThan(0.05);
}

describe('loraExpand', () => {
  for (const { rows, cols, r, ld, layout, accumulate, p, off = 0 } of [
    // GPT-2-like up projection (B [N, r]) accumulated into the base output
    { rows: 37, cols: 300, r: 8, ld: 300, layout: 'cols_r', accumulate: true, p: 0 },
    // rank 1 and 16 (the limit), a row stride wider than cols (its padding must stay), no accumulate
    { rows: 16, cols: 256, r: 1, ld: 260, layout: 'cols_r', accumulate: false, p: 0 },
    { rows: 50, cols: 70, r: 16, ld: 73, layout: 'cols_r', accumulate: true, p: 0 },
    // the backward's dx += dropout'(du A) (A [r, K])
    { rows: 33, cols: 520, r: 8, ld: 520, layout: 'r_cols', accumulate: true, p: 0.3 },
    { rows: 17, cols: 96, r: 4, ld: 96, layout: 'r_cols', accumulate: false, p: 0.05 },
    { rows: 20, cols: 64, r: 3, ld: 64, layout: 'r_cols', accumulate: true, p: 0 },
    // a column slice of wider rows (Llama's v inside the packed q|k|v): offset and stride, the rest untouched
    { rows: 19, cols: 48, r: 8, ld: 160, layout: 'cols_r', accumulate: true, p: 0, off: 112 },
    { rows: 7, cols: 30, r: 5, ld: 97, layout: 'r_cols', accumulate: false, p: 0.2, off: 13 },
  ] as { rows: number; cols: number; r: number; ld: number; layout: RankFactorLayout; accumulate: boolean; p: number; off?: number }[]) {
    it(`${layout} ${rows}x${cols}, r=${r}, ld=${ld}, accumulate=${accumulate}, p=${p}, offset ${off}`, async () => {
      const gpu = await testGpu();
      const step = new StepUniforms(gpu);
      step.write(stepValues(SEED));
      const u = randArray(rows * r, 1, 1), w = randArray(cols * r, 2, 1);
      const prior = randArray(off + (rows - 1) * ld + cols + 5, 3, 1);
      const tu = gpu.tensorFrom(u, [rows, r], 'u'), tw = gpu.tensorFrom(w, [cols * r], 'w');
      const out = gpu.tensorFrom(prior, [prior.length], 'out');
      const alpha = 1.75;
      await run(gpu, [await bind(gpu, () => loraExpand(gpu, {
        u: tu, w: tw, wLayout: layout, out, ldo: ld, offsetOut: off || undefined, rows, cols, r, alpha, accumulate, step, dropout: p > 0 ? { p, salt: SALT } : undefined,
      }))]);
      const mask = maskOf(rows, cols, p);
      expectDropRate(mask, p);
      const want = Float64Array.from(prior);
      for (let row = 0; row < rows; row++) {
        for (let c = 0; c < cols; c++) {
          let s = 0;
          for (let j = 0; j < r; j++) s += u[row * r + j] * wAt(w, layout, c, j, cols, r);
          let v = alpha * s;
          if (mask) v = mask[row * cols + c] ? v / (1 - p) : 0;
          want[off + row * ld + c] = (accumulate ? prior[off + row * ld + c] : 0) + v;
        }
      }
      const got = await gpu.read(out);
      expectClose(got, want, 1e-4, 'out');
      // everything outside the [rows, cols] slice (before it, between its rows, after it) is untouched, bit for bit
      const inSlice = (i: number) => i >= off && (i - off) % ld < cols && Math.floor((i - off) / ld) < rows;
      for (let i = 0; i < prior.length; i++) if (!inSlice(i)) expect(got[i]).toBe(prior[i]);
    });
  }
});

describe('loraProject', () => {
  for (const { rows, cols, r, ld, layout, p, off = 0 } of [
    // forward u = dropout(x) A^T: GPT-2-like widths, rows not a multiple of the 4-row block
    { rows: 37, cols: 768, r: 8, ld: 768, layout: 'r_cols', p: 0.1 },
    { rows: 9, cols: 300, r: 16, ld: 303, layout: 'r_cols', p: 0 },
    // backward du = scale * dy B (B [N, r]); short rows (fewer columns than a lane sweep), rank 1 and 5
    { rows: 21, cols: 2304, r: 5, ld: 2304, layout: 'cols_r', p: 0 },
    // B's rows read as vec4s (r a multiple of 4)
    { rows: 13, cols: 2304, r: 8, ld: 2304, layout: 'cols_r', p: 0 },
    { rows: 5, cols: 301, r: 16, ld: 301, layout: 'cols_r', p: 0 },
    { rows: 3, cols: 77, r: 4, ld: 80, layout: 'cols_r', p: 0.2 },
    { rows: 6, cols: 40, r: 1, ld: 40, layout: 'cols_r', p: 0 },
    { rows: 4, cols: 257, r: 12, ld: 260, layout: 'r_cols', p: 0.5 },
    // du = scale * dy B with dy a column slice of wider rows (Llama's packed q|k|v gradients)
    { rows: 21, cols: 192, r: 8, ld: 960, layout: 'cols_r', p: 0, off: 768 },
    { rows: 6, cols: 33, r: 3, ld: 71, layout: 'r_cols', p: 0.3, off: 9 },
  ] as { rows: number; cols: number; r: number; ld: number; layout: RankFactorLayout; p: number; off?: number }[]) {
    it(`${layout} ${rows}x${cols}, r=${r}, ld=${ld}, p=${p}, offset ${off}`, async () => {
      const gpu = await testGpu();
      const step = new StepUniforms(gpu);
      step.write(stepValues(SEED));
      const x = randArray(off + (rows - 1) * ld + cols, 4, 1), w = randArray(cols * r, 5, 1);
      const tx = gpu.tensorFrom(x, [x.length], 'x'), tw = gpu.tensorFrom(w, [cols * r], 'w');
      const out = gpu.tensorFrom(randArray(rows * r, 6, 100), [rows, r], 'out'); // overwritten
      const alpha = 0.625;
      await run(gpu, [await bind(gpu, () => loraProject(gpu, {
        x: tx, ldx: ld, offsetX: off || undefined, w: tw, wLayout: layout, out, rows, cols, r, alpha, step, dropout: p > 0 ? { p, salt: SALT } : undefined,
      }))]);
      const mask = maskOf(rows, cols, p);
      expectDropRate(mask, p);
      const want = new Float64Array(rows * r);
      for (let row = 0; row < rows; row++) {
        for (let j = 0; j < r; j++) {
          let s = 0;
          for (let c = 0; c < cols; c++) {
            const xv = mask ? (mask[row * cols + c] ? x[off + row * ld + c] / (1 - p) : 0) : x[off + row * ld + c];
            s += xv * wAt(w, layout, c, j, cols, r);
          }
          want[row * r + j] = alpha * s;
        }
      }
      expectClose(await gpu.read(out), want, 1e-4, 'u');
    });
  }
});

describe('loraWeightGrad', () => {
  // workgroups: tuning.loraGradWorkgroups, which sets the rows per chunk (1: one chunk of all rows; 4000: chunks of 32 rows).
  // ld and cols multiples of 4 take the vec4 loads (ALIGNED), the others scalar ones.
  for (const { rows, cols, r, ld, layout, accumulate, p, workgroups, off = 0 } of [
    // dB = scale * dy^T u (B [N, r]): GPT-2-like width, several chunks, accumulated
    { rows: 37, cols: 2304, r: 8, ld: 2304, layout: 'cols_r', accumulate: true, p: 0, workgroups: 264 },
    // dA += du^T dropout(x) (A [r, K]): the forward's mask regenerated in the kernel
    { rows: 70, cols: 520, r: 8, ld: 520, layout: 'r_cols', accumulate: true, p: 0.3, workgroups: 264 },
    // one chunk of all rows; rank 16 (the limit), a row stride wider than cols, no accumulate
    { rows: 45, cols: 130, r: 16, ld: 133, layout: 'r_cols', accumulate: false, p: 0.05, workgroups: 1 },
    // chunks of 8 rows with a short last one; ranks not a multiple of 4 (the scalar reads of small)
    { rows: 29, cols: 77, r: 3, ld: 80, layout: 'cols_r', accumulate: true, p: 0, workgroups: 4000 },
    { rows: 17, cols: 256, r: 1, ld: 256, layout: 'r_cols', accumulate: true, p: 0.5, workgroups: 4000 },
    { rows: 9, cols: 300, r: 12, ld: 300, layout: 'cols_r', accumulate: false, p: 0, workgroups: 264 },
    // vec4 loads with a rank not a multiple of 4, a wider row stride, three chunks (the last short), the mask
    { rows: 70, cols: 64, r: 3, ld: 68, layout: 'r_cols', accumulate: true, p: 0.2, workgroups: 4000 },
    // dB from dy, a column slice of wider rows (Llama's packed q|k|v gradients): vec4 loads (offset a
    // multiple of 4) and scalar ones (not)
    { rows: 40, cols: 192, r: 8, ld: 960, layout: 'cols_r', accumulate: true, p: 0, workgroups: 4000, off: 576 },
    { rows: 33, cols: 16, r: 8, ld: 56, layout: 'cols_r', accumulate: false, p: 0, workgroups: 264, off: 38 },
  ] as { rows: number; cols: number; r: number; ld: number; layout: RankFactorLayout; accumulate: boolean; p: number; workgroups: number; off?: number }[]) {
    it(`${layout} ${rows}x${cols}, r=${r}, ld=${ld}, accumulate=${accumulate}, p=${p}, ${workgroups} workgroups, offset ${off}`, async () => {
      const gpu = await testGpu();
      const saved = gpu.tuning.loraGradWorkgroups;
      gpu.tuning.loraGradWorkgroups = workgroups;
      try {
        const step = new StepUniforms(gpu);
        step.write(stepValues(SEED));
        const big = randArray(off + (rows - 1) * ld + cols, 7, 1), small = randArray(rows * r, 8, 1), prior = randArray(cols * r, 9, 1);
        const tBig = gpu.tensorFrom(big, [big.length], 'big'), tSmall = gpu.tensorFrom(small, [rows, r], 'small');
        const grad = gpu.tensorFrom(prior, [cols * r], 'grad');
        const { chunks } = loraWeightGradChunks(workgroups, rows, cols);
        if (workgroups === 1) expect(chunks).toBe(1);
        if (workgroups === 4000) expect(chunks).toBe(Math.ceil(rows / 32));
        const partsSize = loraWeightGradScratch(workgroups, rows, cols, r);
        const parts = gpu.tensorFrom(randArray(partsSize, 10, 100), [partsSize], 'parts');
        const alpha = 1.25;
        await run(gpu, await bind(gpu, () => loraWeightGrad(gpu, {
          big: tBig, ld, offsetBig: off || undefined, small: tSmall, w: grad, wLayout: layout, parts, rows, cols, r, alpha, accumulate, step, dropout: p > 0 ? { p, salt: SALT } : undefined,
        })));
        const mask = maskOf(rows, cols, p);
        expectDropRate(mask, p);
        const want = new Float64Array(cols * r);
        for (let c = 0; c < cols; c++) {
          for (let j = 0; j < r; j++) {
            let s = 0;
            for (let row = 0; row < rows; row++) {
              const xv = mask ? (mask[row * cols + c] ? big[off + row * ld + c] / (1 - p) : 0) : big[off + row * ld + c];
              s += xv * small[row * r + j];
            }
            const at = layout === 'cols_r' ? c * r + j : j * cols + c;
            want[at] = (accumulate ? prior[at] : 0) + alpha * s;
          }
        }
        expectClose(await gpu.read(grad), want, 1e-4, 'grad');
      } finally {
        gpu.tuning.loraGradWorkgroups = saved;
      }
    });
  }
});

describe('LoRA products: argument checks', () => {
  it('rejects bad arguments with the reason', async () => {
    const gpu = await testGpu();
    const step = new StepUniforms(gpu);
    const u = gpu.tensor([4, 8], 'u'), w = gpu.tensor([16 * 8], 'w'), out = gpu.tensor([4 * 16], 'out');
    const ok = { u, w, wLayout: 'cols_r' as const, out, rows: 4, cols: 16, r: 8, alpha: 1, accumulate: false, step };
    expect(() => loraExpand(gpu, ok)).not.toThrow();
    expect(() => loraExpand(gpu, { ...ok, r: 17, w: gpu.tensor([16 * 17], 'w17'), u: gpu.tensor([4 * 17], 'u17') })).toThrow(/rank 17/);
    expect(() => loraExpand(gpu, { ...ok, rows: 5, out: gpu.tensor([5 * 16], 'out5') })).toThrow(/\(u\) has 32 elements, need 40/);
    expect(() => loraExpand(gpu, { ...ok, ldo: 17 })).toThrow(/\(out\) has 64 elements, need 67/);
    expect(() => loraExpand(gpu, { ...ok, ldo: 15 })).toThrow(/row stride 15/);
    expect(() => loraExpand(gpu, { ...ok, offsetOut: 1 })).toThrow(/\(out\) has 64 elements, need 65/);
    expect(() => loraExpand(gpu, { ...ok, offsetOut: -4 })).toThrow(/offset must be a non-negative integer/);
    expect(() => loraExpand(gpu, { ...ok, rows: 1, cols: 4, out: u })).toThrow(/alias/);
    expect(() => loraExpand(gpu, { ...ok, dropout: { p: 1, salt: 1 } })).toThrow(/\[0, 1\)/);
    const x = gpu.tensor([4 * 16], 'x');
    const proj = { x, w, wLayout: 'cols_r' as const, out: u, rows: 4, cols: 16, r: 8, alpha: 1, step };
    expect(() => loraProject(gpu, proj)).not.toThrow();
    expect(() => loraProject(gpu, { ...proj, out: x })).toThrow(/alias/);
    expect(() => loraProject(gpu, { ...proj, cols: 17 })).toThrow(/\(x\) has 64 elements, need 68/);
    expect(() => loraProject(gpu, { ...proj, rows: 0 })).toThrow(/rows must be a positive integer/);
    expect(() => loraProject(gpu, { ...proj, ldx: 20, offsetX: 2 })).toThrow(/\(x\) has 64 elements, need 78/);
    const gradW = gpu.tensor([16 * 8], 'gradW'), parts = gpu.tensor([loraWeightGradScratch(gpu.tuning.loraGradWorkgroups, 4, 16, 8)], 'parts');
    const wg = { big: x, small: u, w: gradW, wLayout: 'r_cols' as const, parts, rows: 4, cols: 16, r: 8, alpha: 1, accumulate: true, step };
    expect(() => loraWeightGrad(gpu, wg)).not.toThrow();
    expect(() => loraWeightGrad(gpu, { ...wg, big: gradW })).toThrow(/the output must not alias/);
    expect(() => loraWeightGrad(gpu, { ...wg, parts: gradW })).toThrow(/parts must not alias/);
    expect(() => loraWeightGrad(gpu, { ...wg, parts: gpu.tensor([8], 'short') })).toThrow(/parts \(short\) has 8 elements, need 128/);
    expect(() => loraWeightGrad(gpu, { ...wg, rows: 5 })).toThrow(/operand \(x\) has 64 elements, need 80/);
    const saved = gpu.tuning.loraGradWorkgroups;
    gpu.tuning.loraGradWorkgroups = 0;
    try {
      expect(() => loraWeightGrad(gpu, wg)).toThrow(/loraGradWorkgroups is 0/);
    } finally {
      gpu.tuning.loraGradWorkgroups = saved;
    }
  });
});
