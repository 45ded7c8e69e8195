// The playground's part of the page <-> worker protocol (./protocol.ts includes it): generation
// with a saved adapter on and off side by side, streamed token by token, and label probabilities
// for a classifier adapter.

import type { TaskKind } from './methods';

/** What the playground can offer for the loaded model. */
export interface PlaygroundInfo {
  task: TaskKind;
  /** The tokenizer has a chat template (the prompt can be wrapped in it as a user message). */
  hasChatTemplate: boolean;
  maxPositions: number;
  modelName: string;
}

export interface GenerateParams {
  /** The page's number for this request: the streamed events carry it. */
  requestId: number;
  /** A saved adapter (src/worker/storage.ts) trained on the loaded model. */
  adapterId: string;
  prompt: string;
  /** Wrap the prompt as one user message in the tokenizer's chat template (with the generation prompt). */
  useChatTemplate: boolean;
  maxNewTokens: number;
  /** 0: greedy; otherwise sampling with temperature, top-k (0: all) and top-p (1: all). */
  temperature: number;
  topK: number;
  topP: number;
  /** Seed of the sampling; both sides draw from the same sequence. */
  seed: number;
  /** Also generate with the base model (the adapter off), interleaved token by token. */
  compareBase: boolean;
}

export type GenerationSide = 'adapter' | 'base';
export type GenerationEnd = 'eos' | 'max-tokens' | 'length' | 'stopped';

/** One side's output so far (sent after every token, and once more when it ends). */
export interface GenerationStream {
  requestId: number;
  side: GenerationSide;
  /** The new tokens so far, decoded (special tokens skipped). */
  text: string;
  ids: number[];
  /** null while it runs. */
  end: GenerationEnd | null;
  /** New tokens per second so far (the prefill's time included). */
  tokensPerSecond: number;
}

export interface GenerateResult {
  requestId: number;
  /** The prompt's tokens as the model read them (chat template applied). */
  promptTokens: number;
  /** The final state of each side (adapter first). */
  sides: GenerationStream[];
}

export interface ClassifyParams {
  /** A saved classifier adapter trained on the loaded model. */
  adapterId: string;
  text: string;
}

export interface ClassifyResult {
  labels: string[];
  /** Softmax of the classifier's logits, by label id. */
  probabilities: number[];
  tokens: number;
  /** The text was cut to the model's length. */
  truncated: boolean;
}
