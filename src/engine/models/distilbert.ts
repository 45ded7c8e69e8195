// DistilBERT (DistilBertForSequenceClassification) on WebGPU: the names and the head of the
// shared post-LayerNorm encoder in ./encoder.ts. Every LayerNorm has eps 1e-12 (hard-coded in
// transformers' DistilBERT); learned positions (a sinusoidal table is stored in the checkpoint the
// same way); q_lin/k_lin/v_lin/out_lin attention, ffn.lin1/lin2 with GELU (erf) or ReLU.
// Head: pre_classifier (dim -> dim) -> ReLU -> classifier (dim -> num_labels) on the first token
// ([CLS]). PEFT's modules_to_save suffix match ("classifier") trains and saves both head layers.

import type { Gpu } from '../gpu/gpu';
import type { DistilBertConfig } from '../../io/hf-config';
import { EncoderClassifier, type EncoderActivation, type EncoderSpec, type LoadEncoderOptions } from './encoder';
import { ProgramError } from './program';
import type { WeightSource } from './weights';

export function encoderActivation(name: string, where: string): EncoderActivation {
  if (name === 'gelu') return 'gelu';
  if (name === 'gelu_new' || name === 'gelu_pytorch_tanh') return 'gelu_tanh';
  if (name === 'relu') return 'relu';
  throw new ProgramError(`${where}: activation "${name}" is not supported (gelu, gelu_new, gelu_pytorch_tanh, relu)`);
}

function initializerRange(raw: Record<string, unknown>): number {
  const v = raw.initializer_range;
  return typeof v === 'number' && Number.isFinite(v) && v > 0 ? v : 0.02;
}

export function distilBertSpec(c: DistilBertConfig, where: string): EncoderSpec {
  return {
    architecture: 'distilbert',
    className: 'DistilBertForSequenceClassification',
    dims: {
      hidden: c.dim, layers: c.n_layers, heads: c.n_heads, intermediate: c.hidden_dim, vocab: c.vocab_size,
      maxPositions: c.max_position_embeddings, eps: 1e-12, activation: encoderActivation(c.activation, where),
      initializerRange: initializerRange(c.raw),
    },
    prefixes: ['distilbert.'],
    embeddings: {
      word: 'distilbert.embeddings.word_embeddings.weight',
      position: 'distilbert.embeddings.position_embeddings.weight',
      tokenType: null,
      layerNorm: 'distilbert.embeddings.LayerNorm',
    },
    layer: (i) => {
      const p = `distilbert.transformer.layer.${i}.`;
      return {
        q: `${p}attention.q_lin`, k: `${p}attention.k_lin`, v: `${p}attention.v_lin`, o: `${p}attention.out_lin`,
        ln1: `${p}sa_layer_norm`, ffnIn: `${p}ffn.lin1`, ffnOut: `${p}ffn.lin2`, ln2: `${p}output_layer_norm`,
      };
    },
    head: { dense: 'pre_classifier', activation: 'relu', classifier: 'classifier' },
  };
}

export function loadDistilBert(gpu: Gpu, c: DistilBertConfig, src: WeightSource, where: string, opts: LoadEncoderOptions): EncoderClassifier {
  return EncoderClassifier.load(gpu, distilBertSpec(c, where), src, where, opts);
}
