// BERT (BertForSequenceClassification) on WebGPU: the names and the head of the shared
// post-LayerNorm encoder in ./encoder.ts. Absolute learned positions plus token type embeddings;
// every token type id is 0 (one sentence per example), so row 0 of token_type_embeddings is added
// to the position table once at load. attention.self.query/key/value, attention.output.dense +
// LayerNorm, intermediate.dense (GELU, erf) and output.dense + LayerNorm; layer_norm_eps from the config.
// Head: the pooler (dense + tanh on the first token, [CLS]; frozen: PEFT does not save it) and the
// classifier (hidden -> num_labels), which PEFT's modules_to_save trains and saves.

import type { Gpu } from '../gpu/gpu';
import type { BertConfig } from '../../io/hf-config';
import { EncoderClassifier, type EncoderSpec, type LoadEncoderOptions } from './encoder';
import { encoderActivation } from './distilbert';
import { ProgramError } from './program';
import type { WeightSource } from './weights';

export function bertSpec(c: BertConfig, where: string): EncoderSpec {
  const raw = c.raw;
  const posType = raw.position_embedding_type ?? 'absolute';
  if (posType !== 'absolute') throw new ProgramError(`${where}: position_embedding_type "${String(posType)}" is not supported (absolute)`);
  if (raw.is_decoder === true || raw.add_cross_attention === true) throw new ProgramError(`${where}: a BERT decoder (is_decoder / add_cross_attention) is not supported; use an encoder checkpoint`);
  const ir = raw.initializer_range;
  return {
    architecture: 'bert',
    className: 'BertForSequenceClassification',
    dims: {
      hidden: c.hidden_size, layers: c.num_hidden_layers, heads: c.num_attention_heads, intermediate: c.intermediate_size,
      vocab: c.vocab_size, maxPositions: c.max_position_embeddings, eps: c.layer_norm_eps,
      activation: encoderActivation(c.hidden_act, where),
      initializerRange: typeof ir === 'number' && Number.isFinite(ir) && ir > 0 ? ir : 0.02,
    },
    prefixes: ['bert.'],
    embeddings: {
      word: 'bert.embeddings.word_embeddings.weight',
      position: 'bert.embeddings.position_embeddings.weight',
      tokenType: 'bert.embeddings.token_type_embeddings.weight',
      layerNorm: 'bert.embeddings.LayerNorm',
    },
    layer: (i) => {
      const p = `bert.encoder.layer.${i}.`;
      return {
        q: `${p}attention.self.query`, k: `${p}attention.self.key`, v: `${p}attention.self.value`, o: `${p}attention.output.dense`,
        ln1: `${p}attention.output.LayerNorm`, ffnIn: `${p}intermediate.dense`, ffnOut: `${p}output.dense`, ln2: `${p}output.LayerNorm`,
      };
    },
    head: { dense: 'bert.pooler.dense', activation: 'tanh', classifier: 'classifier' },
  };
}

export function loadBert(gpu: Gpu, c: BertConfig, src: WeightSource, where: string, opts: LoadEncoderOptions): EncoderClassifier {
  return EncoderClassifier.load(gpu, bertSpec(c, where), src, where, opts);
}
