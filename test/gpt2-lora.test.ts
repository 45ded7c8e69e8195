// The whole GPT-2 + LoRA program on the GPU against a float64 CPU model: logits, loss, and every
// LoRA tensor's gradient checked by central finite differences of the float64 loss. The embedding
// and the logits are split into several blocks to exercise the over-the-binding-limit paths.
import { describe, expect, it } from 'vitest';
import { testGpu, rng, expectClose } from './helpers/gpu';
import { gpt2Reference, loraFiniteDifferences, randomGpt2Weights, setRandomLoraValues, weightSource, type LoraRef } from './helpers/gpt2-reference';
import { Gpt2, type Gpt2Dims } from '../src/engine/models/gpt2';
import { Lora } from '../src/engine/peft/lora';
import { StepUniforms } from '../src/engine/kernels/step-uniforms';
import { runOps } from '../src/engine/gpu/dispatch';

const dims: Gpt2Dims = { n_embd: 16, n_layer: 2, n_head: 2, n_positions: 16, vocab_size: 37, layer_norm_epsilon: 1e-5 };
const B = 2, T = 7;
const lengths = [7, 4];

function makeInputs() {
  const r = rng(7);
  const tokens = new Uint32Array(B * T);
  const targets = new Int32Array(B * T).fill(-100);
  for (let b = 0; b < B; b++) {
    for (let t = 0; t < T; t++) tokens[b * T + t] = t < lengths[b] ? Math.floor(r() * dims.vocab_size) : 0;
    // loss on positions 2.. of each row (as if the first tokens were the prompt)
    for (let t = 2; t < lengths[b] - 1; t++) targets[b * T + t] = tokens[b * T + t + 1];
  }
  return { tokens, targets, validTargets: targets.filter((x) => x >= 0).length };
}

describe('GPT-2 + LoRA program', () => {
  it('matches a float64 reference (logits, loss) and finite-difference LoRA gradients', async () => {
    const gpu = await testGpu();
    const w = randomGpt2Weights(dims, 1);
    // 10 rows per embedding block -> 4 blocks; 5 rows of logits at a time -> 3 blocks
    const model = Gpt2.load(gpu, dims, weightSource(w, dims), 'random-gpt2', { maxChunkBytes: 10 * dims.n_embd * 4 });
    const step = new StepUniforms(gpu);
    step.write({ lr: 0, beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 0, step: 1, seed: 1 });
    const settings = { r: 3, alpha: 6, dropout: 0, targetModules: ['c_attn', 'attn.c_proj', 'mlp.c_fc', 'mlp.c_proj'], useRslora: false };
    const lora = new Lora(gpu, settings, model.linearModules(), step, rng(3));
    expect(lora.params.length).toBe(2 * 4 * dims.n_layer);
    // Non-zero B (PEFT starts it at zero, which would make A's gradient vanish).
    const ref: LoraRef = { modules: new Map(), r: 3, scale: 2 };
    const values = setRandomLoraValues(gpu, lora, ref, 11);

    const { tokens, targets, validTargets } = makeInputs();
    // captured logits are dense; a training program's logits blocks have rows padded to a multiple of
    // 4 (V = 37 -> 40: the LM head's backward then reads them as vec4s): both must give the gradients
    for (const captureLogits of [true, false]) {
      const program = model.buildProgram(lora, { B, T, training: true, captureLogits, headRowsPerChunk: 5 });
      program.write({ B, T, inputIds: tokens, targets, lengths: Uint32Array.from(lengths), validTargets });
      gpu.write(program.gradScale, new Float32Array([1 / validTargets]));
      runOps(gpu, [...lora.params.map((p) => ({ kind: 'clear' as const, buffer: p.grad.buffer })), { kind: 'clear', buffer: program.lossSum.buffer }, ...program.forward, ...program.backward]);

      const want = gpt2Reference(w, dims, ref, tokens, targets, lengths, B, T);
      // (relative to 1% of the largest logit at the least: a logit near 0 carries the float32
      // rounding of the whole sum, 3e-7 here, and the subgroup reductions' order moves it)
      if (captureLogits) expectClose(await gpu.read(program.logits!), want.logits, 1e-4, 'logits', 1e-2);
      else expect(program.logits).toBeNull();
      const loss = (await gpu.read(program.lossSum))[0] / validTargets;
      expect(Math.abs(loss - want.loss) / want.loss).toBeLessThan(1e-5);

      // Finite differences of the float64 loss, a few entries of every LoRA tensor.
      const fds = loraFiniteDifferences(values, () => gpt2Reference(w, dims, ref, tokens, targets, lengths, B, T).loss);
      for (const p of lora.params) {
        const grad = await gpu.read(p.grad);
        const { idx, fd } = fds.get(p.name)!;
        const got = idx.map((i) => grad[i]);
        // relative to the tensor's largest gradient: entries near 0 have no meaningful relative error
        const scale = Math.max(...Array.from(grad, Math.abs));
        got.forEach((g, k) => {
          const err = Math.abs(g - fd[k]) / Math.max(Math.abs(fd[k]), 1e-2 * scale);
          if (!(err < 2e-3)) throw new Error(`${p.name}[${idx[k]}] (captureLogits ${captureLogits}): gpu ${g}, finite difference ${fd[k]}`);
        });
      }
      program.destroy();
    }
  });

  it("skips the lowest trainable layer's input gradient (c_attn's dx, ln_1's backward) unless prompt tuning needs it", async () => {
    const gpu = await testGpu();
    const model = Gpt2.load(gpu, dims, weightSource(randomGpt2Weights(dims, 4), dims), 'random-gpt2');
    const step = new StepUniforms(gpu);
    const labels = (targetModules: string[]) => {
      const lora = new Lora(gpu, { r: 2, alpha: 4, dropout: 0, targetModules, useRslora: false }, model.linearModules(), step, rng(3));
      const program = model.buildProgram(lora, { B, T, training: true, captureLogits: false });
      const out = program.backward.flatMap((op) => (op.kind === 'dispatch' ? [op.label] : []));
      program.destroy();
      lora.destroy();
      return out;
    };
    // LoRA on c_attn everywhere: layer 0 is the lowest; its c_attn still gets LoRA's gradients
    const all = labels(['c_attn']);
    expect(all.some((l) => l.startsWith('transformer.h.1.attn.c_attn.dx'))).toBe(true);
    expect(all.some((l) => l.startsWith('transformer.h.0.attn.c_attn.dx'))).toBe(false);
    expect(all.filter((l) => l.startsWith('layerNormBackward')).length).toBe(1 + 2 * dims.n_layer - 1);
    expect(all.some((l) => l.includes('transformer.h.0.attn.c_attn.lora_B.weight.grad'))).toBe(true);
    // LoRA on layer 1's MLP only: layer 1 is the lowest; nothing of layer 0 runs backward
    const top = labels(['h.1.mlp.c_fc']);
    expect(top.some((l) => l.startsWith('transformer.h.0.'))).toBe(false);
    expect(top.some((l) => l.startsWith('transformer.h.1.attn.c_attn.dx'))).toBe(false);
    expect(top.some((l) => l.startsWith('transformer.h.1.mlp.c_fc.dx'))).toBe(true);
  });

  it('an untargeted model gives the same logits as the base model', async () => {
    const gpu = await testGpu();
    const w = randomGpt2Weights(dims, 2);
    const model = Gpt2.load(gpu, dims, weightSource(w, dims), 'random-gpt2');
    const { tokens, targets, validTargets } = makeInputs();
    const program = model.buildProgram(null, { B, T, training: false, captureLogits: true });
    program.write({ B, T, inputIds: tokens, targets, lengths: Uint32Array.from(lengths), validTargets });
    runOps(gpu, program.forward);
    const want = gpt2Reference(w, dims, null, tokens, targets, lengths, B, T);
    expectClose(await gpu.read(program.logits!), want.logits, 1e-4, 'logits');
    program.destroy();
  });
});
