// Picks the architecture file for a checkpoint's config.json.

import type { Gpu } from '../gpu/gpu';
import type { HfModel } from '../../io/model-files';
import type { LinearModuleInfo } from '../peft/lora';
import { Gpt2 } from './gpt2';
import { Llama } from './llama';
import { ProgramError, type CausalLM } from './program';

export interface CausalLMModel extends CausalLM {
  linearModules(): LinearModuleInfo[];
  parameterCount(): number;
}

export interface LoadedModel {
  architecture: 'gpt2' | 'llama';
  model: CausalLMModel;
  /** PEFT's default LoRA targets for this architecture. */
  defaultLoraTargets: string[];
  /** Longest sequence the model takes. */
  maxPositions: number;
}

export function loadCausalLM(gpu: Gpu, hf: HfModel, opts: { maxChunkBytes?: number } = {}): LoadedModel {
  const c = hf.config;
  const src = { tensorNames: hf.tensorNames, tensorInfo: (n: string) => hf.tensorInfo(n), getF32: (n: string) => hf.getF32(n) };
  if (c.family === 'gpt2') {
    const model = Gpt2.load(gpu, c, src, hf.name, opts);
    return { architecture: 'gpt2', model, defaultLoraTargets: ['c_attn'], maxPositions: c.n_positions };
  }
  if (c.family === 'llama') {
    const model = Llama.load(gpu, c, src, hf.name, opts);
    return { architecture: 'llama', model, defaultLoraTargets: ['q_proj', 'v_proj'], maxPositions: c.max_position_embeddings };
  }
  throw new ProgramError(`${hf.name}: model_type "${c.model_type}" can not be trained yet (supported: gpt2, llama, mistral, qwen2, qwen3)`);
}
