// Adapter dropout acts only in training programs. An evaluation / generation program (training:
// false) of a LoRA or DoRA adapter with dropout p > 0 must give exactly the logits of the same
// adapter with dropout 0, as PyTorch's eval mode does; the training program must not (so the test
// can fail). GPT-2, Llama and a DistilBERT-shaped encoder.
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { expectClose, rng, testGpu } from './helpers/gpu';
import { randomGpt2Weights, weightSource } from './helpers/gpt2-reference';
import { encoderShapes, encoderWeightSource, randomEncoderWeights, type TinyEncoderDims } from './helpers/bert-reference';
import { Gpt2, type Gpt2Dims } from '../src/engine/models/gpt2';
import { Lora } from '../src/engine/peft/lora';
import { Dora } from '../src/engine/peft/dora';
import type { LinearModuleInfo } from '../src/engine/peft/lora';
import type { PeftMethod } from '../src/engine/peft/method';
import { StepUniforms } from '../src/engine/kernels/step-uniforms';
import { runOps } from '../src/engine/gpu/dispatch';
import type { Gpu } from '../src/engine/gpu/gpu';
import type { BatchArrays } from '../src/engine/models/program';
import { nodeModelFiles } from '../src/io/model-files-node';
import { loadHfModel } from '../src/io/model-files';
import { loadCausalLM } from '../src/engine/models/registry';
import { EncoderClassifier } from '../src/engine/models/encoder';
import { distilBertSpec } from '../src/engine/models/distilbert';
import { SequenceClassificationAdapter } from '../src/engine/models/sequence-classification';
import { parseHfConfig, type DistilBertConfig } from '../src/io/hf-config';
import { encoderConfigJson } from './helpers/bert-reference';

type Kind = 'lora' | 'dora';

function makeMethod(gpu: Gpu, kind: Kind, dropout: number, linears: LinearModuleInfo[], targets: string[]): PeftMethod {
  const step = new StepUniforms(gpu);
  step.write({ lr: 0, beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 0, step: 3, seed: 777 });
  const settings = { r: 2, alpha: 4, dropout, targetModules: targets, useRslora: false };
  const method = kind === 'lora' ? new Lora(gpu, settings, linears, step, rng(1)) : new Dora(gpu, settings, linears, step, rng(1));
  // B nonzero, so the adapter changes the output (and dropout would show)
  const r = rng(2);
  for (const p of method.params) {
    const values = Float32Array.from({ length: p.value.size }, () => (p.name.endsWith('magnitude_vector') ? 0.5 + r() : (r() * 2 - 1) * 0.5));
    gpu.write(p.value, values);
  }
  return method;
}

function causalBatch(B: number, T: number, vocab: number): BatchArrays {
  const r = rng(5);
  const inputIds = Uint32Array.from({ length: B * T }, () => Math.floor(r() * vocab));
  const targets = Int32Array.from({ length: B * T }, (_, i) => (i % T < T - 1 ? inputIds[i + 1] : -100));
  return { B, T, inputIds, targets, lengths: new Uint32Array(B).fill(T), validTargets: targets.filter((x) => x >= 0).length };
}

interface Runner {
  linears: LinearModuleInfo[];
  targets: string[];
  logits(method: PeftMethod, training: boolean): Promise<Float32Array>;
}

async function check(gpu: Gpu, runner: Runner, kind: Kind): Promise<void> {
  const withDropout = makeMethod(gpu, kind, 0.4, runner.linears, runner.targets);
  const without = makeMethod(gpu, kind, 0, runner.linears, runner.targets);
  const evalDropout = await runner.logits(withDropout, false);
  const evalPlain = await runner.logits(without, false);
  expectClose(evalDropout, Float64Array.from(evalPlain), 1e-6, `${kind} eval logits with dropout 0.4 vs dropout 0`);
  const trainDropout = await runner.logits(withDropout, true);
  const trainPlain = await runner.logits(without, true);
  expectClose(trainPlain, Float64Array.from(evalPlain), 1e-6, `${kind} training logits, dropout 0`);
  const maxDiff = Math.max(...Array.from(trainDropout, (v, i) => Math.abs(v - trainPlain[i])));
  expect(maxDiff, 'dropout acts in the training program').toBeGreaterThan(1e-3);
  withDropout.destroy?.();
  without.destroy?.();
}

describe('adapter dropout is off in evaluation programs', () => {
  const gdims: Gpt2Dims = { n_embd: 16, n_layer: 2, n_head: 2, n_positions: 24, vocab_size: 37, layer_norm_epsilon: 1e-5 };

  for (const kind of ['lora', 'dora'] as const) {
    it(`GPT-2 + ${kind}`, async () => {
      const gpu = await testGpu();
      const model = Gpt2.load(gpu, gdims, weightSource(randomGpt2Weights(gdims, 1), gdims), 'random-gpt2');
      const batch = causalBatch(2, 6, gdims.vocab_size);
      await check(gpu, {
        linears: model.linearModules(),
        targets: ['c_attn', 'mlp.c_fc', 'mlp.c_proj'],
        async logits(method, training) {
          const program = model.buildProgram(method, { B: 2, T: 6, training, captureLogits: true });
          program.write(batch);
          runOps(gpu, [{ kind: 'clear', buffer: program.lossSum.buffer }, ...program.forward]);
          const out = await gpu.read(program.logits!);
          program.destroy();
          return out;
        },
      }, kind);
    });

    it(`Llama + ${kind}`, async () => {
      const gpu = await testGpu();
      const hf = await loadHfModel(nodeModelFiles(path.join(__dirname, 'fixtures', 'tiny-llama')));
      const { model } = loadCausalLM(gpu, hf, {});
      const batch = causalBatch(2, 5, hf.config.vocab_size as number);
      await check(gpu, {
        linears: model.linearModules(),
        targets: ['q_proj', 'v_proj', 'down_proj'],
        async logits(method, training) {
          const program = model.buildProgram(method, { B: 2, T: 5, training, captureLogits: true });
          program.write(batch);
          runOps(gpu, [{ kind: 'clear', buffer: program.lossSum.buffer }, ...program.forward]);
          const out = await gpu.read(program.logits!);
          program.destroy();
          return out;
        },
      }, kind);
    });
  }

  it('DistilBERT-shaped encoder + lora', async () => {
    const gpu = await testGpu();
    const d: TinyEncoderDims = { arch: 'distilbert', C: 16, L: 2, H: 2, F: 24, V: 50, P: 12, eps: 1e-12, activation: 'gelu' };
    const K = 3;
    const spec = distilBertSpec(parseHfConfig(encoderConfigJson(d)) as DistilBertConfig, 'tiny');
    const model = EncoderClassifier.load(gpu, spec, encoderWeightSource(randomEncoderWeights(d, K, 4), encoderShapes(d, K)), 'tiny', { numLabels: K, random: rng(9) });
    const B = 2, T = 6;
    const r = rng(8);
    const batch = {
      B, T,
      inputIds: Uint32Array.from({ length: B * T }, () => Math.floor(r() * d.V)),
      lengths: Uint32Array.from([6, 4]),
      labels: Int32Array.from([1, 2]),
      validLabels: 2,
    };
    await check(gpu, {
      linears: model.linearModules(),
      targets: ['q_lin', 'v_lin'],
      async logits(method, training) {
        const program = model.buildProgram(new SequenceClassificationAdapter(method as Lora, model.headParams), { B, T, training });
        program.write(batch);
        runOps(gpu, [{ kind: 'clear', buffer: program.lossSum.buffer }, ...program.forward]);
        const out = await gpu.read(program.logits);
        program.destroy();
        return out;
      },
    }, 'lora');
  });
});
