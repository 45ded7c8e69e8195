// Settings over the GPU's buffer limit are refused with the batch size and length that fit
// (issue #8): the search, and the refusal on a real model's memory estimate.

import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { testGpu } from './helpers/gpu';
import { DEFAULT_KERNEL_TUNING } from '../src/engine/gpu/gpu';
import { nodeModelFiles } from '../src/io/model-files-node';
import { loadHfModel } from '../src/io/model-files';
import { loadCausalLM } from '../src/engine/models/registry';
import { moduleMatches } from '../src/engine/peft/lora';
import { estimateTraining } from '../src/worker/memory';
import { bufferLimitRefusal, largestFitting } from '../src/worker/fit';

describe('largestFitting', () => {
  it('finds the last n that fits, 0 when none does, upTo when all do', () => {
    for (const upTo of [0, 1, 2, 7, 100, 1024]) {
      for (const limit of [0, 1, 3, 50, 1023, 5000]) {
        let calls = 0;
        const got = largestFitting(upTo, (n) => {
          calls++;
          expect(n).toBeGreaterThanOrEqual(1);
          expect(n).toBeLessThanOrEqual(upTo);
          return n <= limit;
        });
        expect(got).toBe(Math.min(upTo, limit));
        expect(calls).toBeLessThanOrEqual(Math.ceil(Math.log2(upTo + 1)) + 1);
      }
    }
  });
});

describe('bufferLimitRefusal on a real model', async () => {
  const gpu = await testGpu();
  const hf = await loadHfModel(nodeModelFiles(path.join(__dirname, 'fixtures', 'tiny-llama')));
  const device = { maxBufferSize: 2 ** 28, maxStorageBufferBindingSize: 2 ** 27, isFallbackAdapter: false };
  // The engine plans against its own GPU's binding limit too (the LM head's logits block, the fused
  // gate/up rows), as the worker does with the device it estimates for: give the engine this
  // made-up device's 128 MiB while these cases run (SwiftShader allows more).
  beforeEach(() => { Object.defineProperty(gpu, 'maxBindingBytes', { value: 2 ** 27, configurable: true }); });
  afterEach(() => { delete (gpu as { maxBindingBytes?: number }).maxBindingBytes; });

  it('names the largest batch at this length and the longest length at this batch, both of which fit', () => {
    // the T x T attention path: its scores are the buffer that outgrows the limit first
    // (flash attention keeps none; the next case)
    gpu.tuning.flashAttention = false;
    const { model } = loadCausalLM(gpu, hf);
    const targeted = model.linearModules().filter((l) => moduleMatches(l.module, ['q_proj']));
    const estimateAt = (B: number, T: number) => estimateTraining(model, { B, T, adapter: { kind: 'lora', rank: 4, dropout: 0, targeted }, hasValidation: true }, device);
    const fits = (B: number, T: number) => estimateAt(B, T).largestBuffer <= estimateAt(B, T).bufferLimit;

    expect(bufferLimitRefusal(8, 64, estimateAt)).toBeNull();
    // 4096 rows of 64 tokens: the attention scores are over the 128 MiB binding limit.
    const refusal = bufferLimitRefusal(4096, 64, estimateAt)!;
    expect(refusal).not.toBeNull();
    console.log(refusal.message);
    expect(fits(refusal.largestBatch, 64)).toBe(true);
    expect(fits(refusal.largestBatch + 1, 64)).toBe(false);
    expect(fits(4096, refusal.longestLength)).toBe(true);
    expect(fits(4096, refusal.longestLength + 1)).toBe(false);
    expect(refusal.message).toMatch(/^A batch of 4096 × 64 tokens needs a [\d.]+ MiB buffer \(l0\.att\), more than this GPU allows in one buffer \(128\.0 MiB\)\./);
    expect(refusal.message).toContain(`At 64 tokens the largest batch size that fits is ${refusal.largestBatch}; at batch size 4096 the longest max length that fits is ${refusal.longestLength} tokens.`);
    model.destroy();
    gpu.tuning.flashAttention = 'auto';
  });

  it('with flash attention the same settings fit: no T x T buffer is planned', () => {
    gpu.tuning.flashAttention = true;
    const { model } = loadCausalLM(gpu, hf);
    const targeted = model.linearModules().filter((l) => moduleMatches(l.module, ['q_proj']));
    const estimate = estimateTraining(model, { B: 4096, T: 64, adapter: { kind: 'lora', rank: 4, dropout: 0, targeted }, hasValidation: true }, device);
    expect(estimate.largestBuffer).toBeLessThanOrEqual(estimate.bufferLimit);
    expect(bufferLimitRefusal(4096, 64, (B, T) => estimateTraining(model, { B, T, adapter: { kind: 'lora', rank: 4, dropout: 0, targeted }, hasValidation: true }, device))).toBeNull();
    model.destroy();
    gpu.tuning.flashAttention = 'auto';
  });

  it('\'auto\' takes flash attention once one layer\'s scores pass flashAttentionMinScoresMiB or the binding limit', () => {
    const { model } = loadCausalLM(gpu, hf);
    const labels = (B: number) => model.programBuffers({ B, T: 64, training: true }).map((b) => b.label);
    gpu.tuning.flashAttention = 'auto';
    gpu.tuning.flashAttentionMinScoresMiB = 64;
    try {
      // 4 heads x 64 x 64 floats = 64 KiB per sequence: 1024 sequences are exactly 64 MiB
      expect(gpu.info.limits.maxStorageBufferBindingSize).toBeGreaterThan(2 ** 26);
      expect(labels(1024)).toContain('l0.att');
      expect(labels(1025)).not.toContain('l0.att');
      expect(labels(1025)).toContain('l0.lse');
      // past the binding limit whatever the threshold
      gpu.tuning.flashAttentionMinScoresMiB = 1e9;
      const fits = gpu.info.limits.maxStorageBufferBindingSize / 2 ** 16;
      expect(labels(Math.floor(fits))).toContain('l0.att');
      expect(labels(Math.floor(fits) + 1)).toContain('l0.lse');
    } finally {
      gpu.tuning.flashAttentionMinScoresMiB = DEFAULT_KERNEL_TUNING.flashAttentionMinScoresMiB;
    }
    model.destroy();
  });
});
