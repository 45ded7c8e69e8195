// What the model step offers before anything is loaded: small hub models that train in a browser
// (text generators and text classifiers), and the architectures the engine runs.

import type { TaskKind } from '../worker/methods';

export interface ModelSuggestion {
  repo: string;
  /** The engine's architecture and the checkpoint's model_type. */
  family: string;
  task: TaskKind;
  parameters: number;
  /** Bytes of the checkpoint's safetensors (what downloads once). */
  downloadBytes: number;
  /** dtype the checkpoint is stored in; training runs in F32 (4 bytes a parameter on the GPU). */
  storedDType: 'BF16' | 'F32';
}

/**
 * Real models on the hub, the default first. Parameters counted from each config.json as the
 * engine counts them (tied heads once; the encoders with a 2-label classification head, as
 * DistilBertForSequenceClassification and BertForSequenceClassification have); download = the
 * safetensors weights, about 2 bytes a parameter for BF16 (gpt2's F32 file also holds its
 * attention-mask buffers, the encoders' their masked-LM heads).
 */
export const MODEL_SUGGESTIONS: ModelSuggestion[] = [
  { repo: 'HuggingFaceTB/SmolLM2-135M', family: 'Llama', task: 'causal-lm', parameters: 134_515_008, downloadBytes: 269e6, storedDType: 'BF16' },
  { repo: 'HuggingFaceTB/SmolLM2-360M', family: 'Llama', task: 'causal-lm', parameters: 361_821_120, downloadBytes: 724e6, storedDType: 'BF16' },
  { repo: 'Qwen/Qwen2.5-0.5B', family: 'Qwen2', task: 'causal-lm', parameters: 494_032_768, downloadBytes: 988e6, storedDType: 'BF16' },
  { repo: 'openai-community/gpt2', family: 'GPT-2', task: 'causal-lm', parameters: 124_439_808, downloadBytes: 548e6, storedDType: 'F32' },
  { repo: 'TinyLlama/TinyLlama-1.1B-Chat-v1.0', family: 'Llama', task: 'causal-lm', parameters: 1_100_048_384, downloadBytes: 2.2e9, storedDType: 'BF16' },
  { repo: 'distilbert/distilbert-base-uncased', family: 'DistilBERT', task: 'classification', parameters: 66_955_010, downloadBytes: 268e6, storedDType: 'F32' },
  { repo: 'google-bert/bert-base-uncased', family: 'BERT', task: 'classification', parameters: 109_483_778, downloadBytes: 440e6, storedDType: 'F32' },
];

export const TASK_NAMES: Record<TaskKind, string> = {
  'causal-lm': 'Text generation',
  classification: 'Text classification',
};

/** The model_type values of config.json the engine trains, as the page lists them. */
export const SUPPORTED_ARCHITECTURES =
  'GPT-2 (gpt2) and the Llama family: Llama 2 and 3, SmolLM2, TinyLlama (llama), Mistral without sliding-window attention (mistral), Qwen2 and Qwen2.5 (qwen2), Qwen3 (qwen3) for text generation; DistilBERT (distilbert) and BERT (bert) for text classification';
