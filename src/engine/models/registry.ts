// Picks the architecture file for a checkpoint's config.json.

import type { Gpu } from '../gpu/gpu';
import type { HfModel } from '../../io/model-files';
import type { LinearModuleInfo } from '../peft/lora';
import { Gpt2 } from './gpt2';
import { ProgramError, type CausalLM } from './program';

export interface CausalLMModel extends CausalLM {
  linearModules(): LinearModuleInfo[];
  parameterCount(): number;
}

export interface LoadedModel {
  architecture: 'gpt2';
  model: CausalLMModel;
  /** PEFT's default LoRA targets for this architecture. */
  defaultLoraTargets: string[];
  /** Longest sequence the model takes. */
  maxPositions: number;
}

export function loadCausalLM(gpu: Gpu, hf: HfModel, opts: { maxChunkBytes?: number } = {}): LoadedModel {
  const c = hf.config;
  if (c.family === 'gpt2') {
    const model = Gpt2.load(gpu, c, { tensorNames: hf.tensorNames, tensorInfo: (n) => hf.tensorInfo(n), getF32: (n) => hf.getF32(n) }, hf.name, opts);
    return { architecture: 'gpt2', model, defaultLoraTargets: ['c_attn'], maxPositions: c.n_positions };
  }
  throw new ProgramError(`${hf.name}: model_type "${c.model_type}" can not be trained yet (supported: gpt2)`);
}
