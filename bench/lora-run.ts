// What the training benchmarks share (bench/step-bench.ts, bench/tc-train-check.ts): a causal LM
// from a model folder with LoRA (alpha 2r, dropout 0.05) on `targets` (the model's defaults when
// none), and `count` random full-length sequences of T tokens, every position a target.
import type { Gpu } from '../src/engine/gpu/gpu';
import type { HfModel } from '../src/io/model-files';
import { loadCausalLM } from '../src/engine/models/registry';
import type { FrozenStorage } from '../src/engine/models/weights';
import { createPeftMethod, peftModelInfo } from '../src/engine/peft/factory';
import { StepUniforms } from '../src/engine/kernels/step-uniforms';
import { seededRandom } from '../src/data/batches';
import type { Example } from '../src/data/examples';

export function loraRun(gpu: Gpu, hf: HfModel, o: { targets?: string[]; rank: number; count: number; T: number; frozen?: FrozenStorage }) {
  const loaded = loadCausalLM(gpu, hf, { frozen: o.frozen });
  const info = peftModelInfo(hf.config, loaded.model.linearModules());
  const stepUniforms = new StepUniforms(gpu);
  const targets = o.targets ?? loaded.defaultLoraTargets;
  const method = createPeftMethod(gpu, { method: 'lora', lora: { r: o.rank, alpha: 2 * o.rank, dropout: 0.05, targetModules: targets, useRslora: false } }, info, loaded.model, stepUniforms, {
    random: seededRandom(1), tokenize: () => [],
  });
  const rnd = seededRandom(7);
  const examples: Example[] = Array.from({ length: o.count }, (_, row) => {
    const ids = Array.from({ length: o.T }, () => Math.floor(rnd() * info.vocab));
    return { inputIds: ids, labels: ids.slice(), truncated: false, row };
  });
  return { loaded, info, stepUniforms, targets, method, examples };
}
