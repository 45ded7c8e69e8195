// A float64 CPU DistilBERT / BERT sequence classifier (+ LoRA), written plainly from transformers'
// modeling code, for checking the GPU encoder: logits and loss directly, gradients by central
// finite differences. Also random tiny weights under Hugging Face names, and a model folder on disk
// (config.json, model.safetensors, a small WordPiece tokenizer.json) for data and CLI tests.

import fs from 'node:fs';
import path from 'node:path';
import { writeSafetensors } from '../../src/io/safetensors';
import { rng } from './gpu';
import { geluTanh } from './gelu';

export type Weights = Map<string, Float64Array>;

export interface TinyEncoderDims {
  arch: 'distilbert' | 'bert';
  C: number;
  L: number;
  H: number;
  F: number;
  V: number;
  P: number;
  eps: number;
  activation: 'gelu' | 'relu' | 'gelu_new';
}

export interface RefLora {
  /** module path -> A [r, in], B [out, r] */
  modules: Map<string, { A: Float64Array; B: Float64Array }>;
  r: number;
  scale: number;
}

/**
 * The other methods on the encoder (test/encoder-methods.test.ts), as PEFT and AdapterHub define them:
 *   DoRA        y = g * (x W^T + s x A^T B^T) + b,  g = m / n,  n = ||W + s B A|| per output row; `norms`
 *               pins n (PEFT detaches it: finite differences must not move it)
 *   IA3         output: y = (x W^T + b) * l;  feedforward: y = (x * l) W^T + b
 *   bottleneck  f(u) = up(act(down(u))); Houlsby: LN(x + h + f(h)) after attention and FFN;
 *               Pfeiffer (FFN only): v = x + h, LN(v + f(LN(v))) with the block's own LayerNorm
 */
export interface RefMethods {
  /** prompt tuning: [n, C] rows before every sequence (positions 0..n-1, attention mask ones over them); the head reads row 0 */
  prompt?: { p: Float64Array; n: number };
  /**
   * prefix tuning (PEFT's PREFIX_TUNING through BERT's past_key_values): n key/value rows before every
   * layer's keys, seen by every query; the real tokens take positions n.. (past_key_values_length).
   * The prefix is `kv` [n, L*2*C] (row t: layer 0 key, layer 0 value, layer 1 key, ...; heads of D
   * inside each), or what PEFT's projection makes: tanh(E W1^T + b1) W2^T + b2.
   */
  prefix?: { n: number; kv?: Float64Array; proj?: { E: Float64Array; W1: Float64Array; b1: Float64Array; W2: Float64Array; b2: Float64Array; enc: number } };
  dora?: { modules: Map<string, { A: Float64Array; B: Float64Array; m: Float64Array }>; r: number; scale: number; norms?: Map<string, Float64Array> };
  ia3?: Map<string, { l: Float64Array; feedforward: boolean }>;
  bottleneck?: {
    type: 'houlsby' | 'pfeiffer';
    act: 'relu' | 'swish' | 'gelu' | 'tanh';
    size: number;
    /** key `${layer}.attention` / `${layer}.output` */
    modules: Map<string, { down: Float64Array; downB: Float64Array; up: Float64Array; upB: Float64Array }>;
  };
}

/** DoRA's n = ||W + s B A|| per output row of an nn.Linear W [N, K]. */
export function doraNorm(W: Float64Array, A: Float64Array, B: Float64Array, N: number, K: number, r: number, scale: number): Float64Array {
  const n = new Float64Array(N);
  for (let o = 0; o < N; o++) {
    let ss = 0;
    for (let k = 0; k < K; k++) {
      let v = W[o * K + k];
      for (let j = 0; j < r; j++) v += scale * B[o * r + j] * A[j * K + k];
      ss += v * v;
    }
    n[o] = Math.sqrt(ss);
  }
  return n;
}

/** erf to ~1e-15: its Maclaurin series below 2.5, a continued fraction for erfc above. */
export function erf(x: number): number {
  const a = Math.abs(x);
  if (a < 2.5) {
    let term = x, sum = x;
    for (let n = 1; n < 80; n++) {
      term *= (-x * x) / n;
      const add = term / (2 * n + 1);
      sum += add;
      if (Math.abs(add) < 1e-17 * Math.abs(sum)) break;
    }
    return (2 / Math.sqrt(Math.PI)) * sum;
  }
  let f = a;
  for (let k = 80; k >= 1; k--) f = a + k / 2 / f;
  const erfc = Math.exp(-a * a) / (Math.sqrt(Math.PI) * f);
  return Math.sign(x) * (1 - erfc);
}

export const geluErf = (x: number): number => 0.5 * x * (1 + erf(x / Math.SQRT2));
export const geluErfGrad = (x: number): number => 0.5 * (1 + erf(x / Math.SQRT2)) + (x * Math.exp(-0.5 * x * x)) / Math.sqrt(2 * Math.PI);

/** Module names of a tiny encoder, as the *ForSequenceClassification model has them. */
export function encoderNames(d: TinyEncoderDims) {
  if (d.arch === 'distilbert') {
    return {
      word: 'distilbert.embeddings.word_embeddings.weight', pos: 'distilbert.embeddings.position_embeddings.weight', type: null as string | null,
      embLn: 'distilbert.embeddings.LayerNorm',
      layer: (i: number) => {
        const p = `distilbert.transformer.layer.${i}.`;
        return { q: `${p}attention.q_lin`, k: `${p}attention.k_lin`, v: `${p}attention.v_lin`, o: `${p}attention.out_lin`, ln1: `${p}sa_layer_norm`, f1: `${p}ffn.lin1`, f2: `${p}ffn.lin2`, ln2: `${p}output_layer_norm` };
      },
      dense: 'pre_classifier', headAct: 'relu' as const, classifier: 'classifier',
    };
  }
  return {
    word: 'bert.embeddings.word_embeddings.weight', pos: 'bert.embeddings.position_embeddings.weight', type: 'bert.embeddings.token_type_embeddings.weight' as string | null,
    embLn: 'bert.embeddings.LayerNorm',
    layer: (i: number) => {
      const p = `bert.encoder.layer.${i}.`;
      return { q: `${p}attention.self.query`, k: `${p}attention.self.key`, v: `${p}attention.self.value`, o: `${p}attention.output.dense`, ln1: `${p}attention.output.LayerNorm`, f1: `${p}intermediate.dense`, f2: `${p}output.dense`, ln2: `${p}output.LayerNorm` };
    },
    dense: 'bert.pooler.dense', headAct: 'tanh' as const, classifier: 'classifier',
  };
}

/** Shapes of every weight (head included when K is given). */
export function encoderShapes(d: TinyEncoderDims, K: number | null): Map<string, number[]> {
  const n = encoderNames(d);
  const { C, F } = d;
  const s = new Map<string, number[]>([[n.word, [d.V, C]], [n.pos, [d.P, C]], [`${n.embLn}.weight`, [C]], [`${n.embLn}.bias`, [C]]]);
  if (n.type) s.set(n.type, [2, C]);
  for (let i = 0; i < d.L; i++) {
    const l = n.layer(i);
    for (const m of [l.q, l.k, l.v, l.o]) { s.set(`${m}.weight`, [C, C]); s.set(`${m}.bias`, [C]); }
    s.set(`${l.f1}.weight`, [F, C]); s.set(`${l.f1}.bias`, [F]);
    s.set(`${l.f2}.weight`, [C, F]); s.set(`${l.f2}.bias`, [C]);
    for (const m of [l.ln1, l.ln2]) { s.set(`${m}.weight`, [C]); s.set(`${m}.bias`, [C]); }
  }
  s.set(`${n.dense}.weight`, [C, C]); s.set(`${n.dense}.bias`, [C]);
  if (K !== null) { s.set(`${n.classifier}.weight`, [K, C]); s.set(`${n.classifier}.bias`, [K]); }
  return s;
}

/** Random weights (rounded to f32) with non-trivial LayerNorms and biases; the head when K is given. */
export function randomEncoderWeights(d: TinyEncoderDims, K: number | null, seed: number): Weights {
  const r = rng(seed);
  const w: Weights = new Map();
  for (const [name, shape] of encoderShapes(d, K)) {
    const n = shape.reduce((a, b) => a * b, 1);
    const isLnWeight = /(LayerNorm|layer_norm)\.weight$/.test(name);
    const scale = name.endsWith('.bias') ? 0.1 : isLnWeight ? 0.2 : name.includes('embeddings') ? 0.5 : 0.35;
    const base = isLnWeight ? 1 : 0;
    w.set(name, Float64Array.from(Float32Array.from({ length: n }, () => base + (r() * 2 - 1) * scale)));
  }
  return w;
}

function layerNorm(x: Float64Array, g: Float64Array, b: Float64Array, M: number, C: number, eps: number): Float64Array {
  const y = new Float64Array(M * C);
  for (let m = 0; m < M; m++) {
    let mean = 0;
    for (let c = 0; c < C; c++) mean += x[m * C + c];
    mean /= C;
    let v = 0;
    for (let c = 0; c < C; c++) v += (x[m * C + c] - mean) ** 2;
    const rstd = 1 / Math.sqrt(v / C + eps);
    for (let c = 0; c < C; c++) y[m * C + c] = (x[m * C + c] - mean) * rstd * g[c] + b[c];
  }
  return y;
}

/** y [M, N] = x [M, K] W^T + b with W [N, K] (nn.Linear), plus LoRA, DoRA or IA3 when the module has it. */
function linear(x0: Float64Array, W: Float64Array, b: Float64Array, M: number, K: number, N: number, lora: RefLora | null, module: string, methods: RefMethods = {}): Float64Array {
  const ia3 = methods.ia3?.get(module);
  const x = ia3?.feedforward ? x0.map((v, i) => v * ia3.l[i % K]) : x0;
  const dora = methods.dora?.modules.get(module);
  if (dora) {
    const { r, scale } = methods.dora!;
    const n = methods.dora!.norms?.get(module) ?? doraNorm(W, dora.A, dora.B, N, K, r, scale);
    const y = new Float64Array(M * N);
    for (let m = 0; m < M; m++) {
      const u = new Float64Array(r);
      for (let j = 0; j < r; j++) for (let k = 0; k < K; k++) u[j] += x[m * K + k] * dora.A[j * K + k];
      for (let o = 0; o < N; o++) {
        let s = 0;
        for (let k = 0; k < K; k++) s += x[m * K + k] * W[o * K + k];
        for (let j = 0; j < r; j++) s += scale * u[j] * dora.B[o * r + j];
        y[m * N + o] = (dora.m[o] / n[o]) * s + b[o];
      }
    }
    return y;
  }
  const y = new Float64Array(M * N);
  for (let m = 0; m < M; m++) {
    for (let n = 0; n < N; n++) {
      let s = b[n];
      for (let k = 0; k < K; k++) s += x[m * K + k] * W[n * K + k];
      y[m * N + n] = s;
    }
  }
  const l = lora?.modules.get(module);
  if (l) {
    const r = lora!.r;
    for (let m = 0; m < M; m++) {
      const u = new Float64Array(r);
      for (let j = 0; j < r; j++) {
        let s = 0;
        for (let k = 0; k < K; k++) s += x[m * K + k] * l.A[j * K + k];
        u[j] = s;
      }
      for (let n = 0; n < N; n++) {
        let s = 0;
        for (let j = 0; j < r; j++) s += u[j] * l.B[n * r + j];
        y[m * N + n] += lora!.scale * s;
      }
    }
  }
  if (ia3 && !ia3.feedforward) for (let i = 0; i < M * N; i++) y[i] *= ia3.l[i % N];
  return y;
}

function bottleneckAct(kind: 'relu' | 'swish' | 'gelu' | 'tanh', v: number): number {
  if (kind === 'relu') return Math.max(v, 0);
  if (kind === 'swish') return v / (1 + Math.exp(-v));
  if (kind === 'gelu') return geluErf(v);
  return Math.tanh(v);
}

/** f(u) = up(act(down(u))) over M rows of width C. */
function bottleneckF(u: Float64Array, mod: { down: Float64Array; downB: Float64Array; up: Float64Array; upB: Float64Array }, M: number, C: number, bn: number, act: 'relu' | 'swish' | 'gelu' | 'tanh'): Float64Array {
  const z = linear(u, mod.down, mod.downB, M, C, bn, null, '').map((v) => bottleneckAct(act, v));
  return linear(z, mod.up, mod.upB, M, bn, C, null, '');
}

export interface RefBatch {
  B: number;
  T: number;
  ids: ArrayLike<number>;
  lengths: ArrayLike<number>;
  labels: ArrayLike<number>;
}

/** Width of one prefix row: num_layers * 2 * hidden (PEFT's token_dim is the hidden size for BERT). */
function L2C(d: TinyEncoderDims): number {
  return d.L * 2 * d.C;
}

/** Logits [B, K] and the mean cross-entropy over labels >= 0. `w` must hold the head. */
export function encoderReference(w: Weights, d: TinyEncoderDims, K: number, lora: RefLora | null, batch: RefBatch, methods: RefMethods = {}): { logits: Float64Array; loss: number } {
  const g = (name: string): Float64Array => {
    const t = w.get(name);
    if (!t) throw new Error(`reference: no weight ${name}`);
    return t;
  };
  const n = encoderNames(d);
  const { C, H, F } = d;
  const D = C / H;
  const nv = methods.prompt?.n ?? 0;
  const B = batch.B, T = batch.T + nv;
  const M = B * T;
  // prefix tuning: the prefix rows [np, L*2*C], made by the projection MLP when there is one
  const np = methods.prefix?.n ?? 0;
  const KV = L2C(d);
  let kv: Float64Array | null = methods.prefix?.kv ?? null;
  const proj = methods.prefix?.proj;
  if (proj) {
    const hid = linear(proj.E, proj.W1, proj.b1, np, C, proj.enc, null, '').map(Math.tanh);
    kv = linear(hid, proj.W2, proj.b2, np, proj.enc, KV, null, '');
  }
  const word = g(n.word), pos = g(n.pos), type0 = n.type ? g(n.type) : null;
  let x: Float64Array = new Float64Array(M * C);
  for (let m = 0; m < M; m++) {
    const b = Math.floor(m / T), t = m % T;
    for (let c = 0; c < C; c++) {
      const tok = t < nv ? methods.prompt!.p[t * C + c] : word[batch.ids[b * batch.T + t - nv] * C + c];
      x[m * C + c] = tok + pos[(t + np) * C + c] + (type0 ? type0[c] : 0);
    }
  }
  const lengths = Array.from(batch.lengths, (len) => len + nv);
  x = layerNorm(x, g(`${n.embLn}.weight`), g(`${n.embLn}.bias`), M, C, d.eps);
  const act = (v: number) => (d.activation === 'gelu' ? geluErf(v) : d.activation === 'gelu_new' ? geluTanh(v) : Math.max(v, 0));
  for (let l = 0; l < d.L; l++) {
    const ln = n.layer(l);
    const lin = (inp: Float64Array, mod: string, K_: number, N_: number) => linear(inp, g(`${mod}.weight`), g(`${mod}.bias`), M, K_, N_, lora, mod, methods);
    const bn = methods.bottleneck;
    const adapterAt = (loc: 'attention' | 'output') => bn?.modules.get(`${l}.${loc}`);
    const q = lin(x, ln.q, C, C), k = lin(x, ln.k, C, C), v = lin(x, ln.v, C, C);
    const ctx = new Float64Array(M * C);
    for (let b = 0; b < B; b++) {
      for (let h = 0; h < H; h++) {
        for (let i = 0; i < T; i++) {
          // keys: the np prefix rows of this layer, then the row's real (unpadded) tokens
          const len = lengths[b];
          const keyAt = (j: number, e: number) => (j < np ? kv![j * KV + 2 * l * C + h * D + e] : k[(b * T + j - np) * C + h * D + e]);
          const valueAt = (j: number, e: number) => (j < np ? kv![j * KV + (2 * l + 1) * C + h * D + e] : v[(b * T + j - np) * C + h * D + e]);
          const s = new Float64Array(np + len);
          let mx = -Infinity;
          for (let j = 0; j < np + len; j++) {
            let dot = 0;
            for (let e = 0; e < D; e++) dot += q[(b * T + i) * C + h * D + e] * keyAt(j, e);
            s[j] = dot / Math.sqrt(D);
            mx = Math.max(mx, s[j]);
          }
          let sum = 0;
          for (let j = 0; j < np + len; j++) sum += Math.exp(s[j] - mx);
          for (let j = 0; j < np + len; j++) {
            const p = Math.exp(s[j] - mx) / sum;
            for (let e = 0; e < D; e++) ctx[(b * T + i) * C + h * D + e] += p * valueAt(j, e);
          }
        }
      }
    }
    const attnOut = lin(ctx, ln.o, C, C);
    const aAd = adapterAt('attention');
    // Houlsby: the adapter reads the sub-block output h and adds f(h) before the block's LayerNorm
    const aSum = x.map((val, i) => val + attnOut[i]);
    if (aAd) {
      const fa = bottleneckF(attnOut, aAd, M, C, bn!.size, bn!.act);
      for (let i = 0; i < M * C; i++) aSum[i] += fa[i];
    }
    const h1 = layerNorm(aSum, g(`${ln.ln1}.weight`), g(`${ln.ln1}.bias`), M, C, d.eps);
    const f = lin(h1, ln.f1, C, F).map(act);
    const o = lin(f, ln.f2, F, C);
    const oSum = h1.map((val, i) => val + o[i]);
    const oAd = adapterAt('output');
    if (oAd) {
      // Pfeiffer: u = LN2(h1 + o) (original_ln_before), Houlsby: u = o
      const u = bn!.type === 'pfeiffer' ? layerNorm(oSum, g(`${ln.ln2}.weight`), g(`${ln.ln2}.bias`), M, C, d.eps) : o;
      const fo = bottleneckF(u, oAd, M, C, bn!.size, bn!.act);
      for (let i = 0; i < M * C; i++) oSum[i] += fo[i];
    }
    x = layerNorm(oSum, g(`${ln.ln2}.weight`), g(`${ln.ln2}.bias`), M, C, d.eps);
  }
  const cls = new Float64Array(B * C);
  for (let b = 0; b < B; b++) for (let c = 0; c < C; c++) cls[b * C + c] = x[b * T * C + c];
  const z = linear(cls, g(`${n.dense}.weight`), g(`${n.dense}.bias`), B, C, C, null, n.dense).map((v) => (n.headAct === 'relu' ? Math.max(v, 0) : Math.tanh(v)));
  const logits = linear(z, g(`${n.classifier}.weight`), g(`${n.classifier}.bias`), B, C, K, null, n.classifier);
  let loss = 0, count = 0;
  for (let b = 0; b < B; b++) {
    const y = batch.labels[b];
    if (y < 0) continue;
    let mx = -Infinity;
    for (let k = 0; k < K; k++) mx = Math.max(mx, logits[b * K + k]);
    let sum = 0;
    for (let k = 0; k < K; k++) sum += Math.exp(logits[b * K + k] - mx);
    loss += Math.log(sum) + mx - logits[b * K + y];
    count++;
  }
  return { logits, loss: loss / Math.max(1, count) };
}

/** The config.json transformers writes for a tiny encoder of these dimensions. */
export function encoderConfigJson(d: TinyEncoderDims, extra: Record<string, unknown> = {}): Record<string, unknown> {
  if (d.arch === 'distilbert') {
    return {
      architectures: ['DistilBertModel'], model_type: 'distilbert', dim: d.C, n_layers: d.L, n_heads: d.H, hidden_dim: d.F,
      vocab_size: d.V, max_position_embeddings: d.P, activation: d.activation, sinusoidal_pos_embds: false, dropout: 0, attention_dropout: 0,
      seq_classif_dropout: 0, initializer_range: 0.02, pad_token_id: 0, ...extra,
    };
  }
  return {
    architectures: ['BertModel'], model_type: 'bert', hidden_size: d.C, num_hidden_layers: d.L, num_attention_heads: d.H, intermediate_size: d.F,
    vocab_size: d.V, max_position_embeddings: d.P, type_vocab_size: 2, layer_norm_eps: d.eps, hidden_act: d.activation,
    hidden_dropout_prob: 0, attention_probs_dropout_prob: 0, initializer_range: 0.02, pad_token_id: 0, position_embedding_type: 'absolute', ...extra,
  };
}

/** A WeightSource over a weight map (names as given, f32). */
export function encoderWeightSource(w: Weights, shapes: Map<string, number[]>) {
  return {
    tensorNames: [...w.keys()],
    tensorInfo: (name: string) => ({ shape: shapes.get(name)!, dtype: 'F32' }),
    getF32: (name: string) => Float32Array.from(w.get(name)!),
  };
}

/**
 * A BERT-style WordPiece tokenizer.json (the format the `tokenizers` library writes) over a word
 * list: special tokens, single characters, their ## forms, and whole words.
 */
export function wordPieceTokenizerJson(words: readonly string[]): { json: Record<string, unknown>; vocab: Map<string, number> } {
  const specials = ['[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]'];
  const vocab = new Map<string, number>();
  const add = (t: string) => { if (!vocab.has(t)) vocab.set(t, vocab.size); };
  specials.forEach(add);
  const chars = [...new Set([...'abcdefghijklmnopqrstuvwxyz0123456789.,!?\'-'])];
  chars.forEach(add);
  chars.forEach((c) => add(`##${c}`));
  words.forEach(add);
  const special = (id: number, content: string) => ({ id, content, single_word: false, lstrip: false, rstrip: false, normalized: false, special: true });
  const json = {
    version: '1.0',
    truncation: null,
    padding: null,
    added_tokens: specials.map((s, i) => special(i, s)),
    normalizer: { type: 'BertNormalizer', clean_text: true, handle_chinese_chars: true, strip_accents: null, lowercase: true },
    pre_tokenizer: { type: 'BertPreTokenizer' },
    post_processor: {
      type: 'TemplateProcessing',
      single: [{ SpecialToken: { id: '[CLS]', type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } }, { SpecialToken: { id: '[SEP]', type_id: 0 } }],
      pair: [{ SpecialToken: { id: '[CLS]', type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } }, { SpecialToken: { id: '[SEP]', type_id: 0 } }, { Sequence: { id: 'B', type_id: 1 } }, { SpecialToken: { id: '[SEP]', type_id: 1 } }],
      special_tokens: { '[CLS]': { id: '[CLS]', ids: [2], tokens: ['[CLS]'] }, '[SEP]': { id: '[SEP]', ids: [3], tokens: ['[SEP]'] } },
    },
    decoder: { type: 'WordPiece', prefix: '##', cleanup: true },
    model: { type: 'WordPiece', unk_token: '[UNK]', continuing_subword_prefix: '##', max_input_chars_per_word: 100, vocab: Object.fromEntries(vocab) },
  };
  return { json, vocab };
}

export const BERT_TOKENIZER_CONFIG = {
  tokenizer_class: 'BertTokenizer', do_lower_case: true, model_max_length: 64,
  cls_token: '[CLS]', sep_token: '[SEP]', pad_token: '[PAD]', unk_token: '[UNK]', mask_token: '[MASK]',
};

/** Writes a model folder: config.json, model.safetensors (f32, base-model names without the task prefix), tokenizer files. */
export function writeEncoderFolder(dir: string, d: TinyEncoderDims, words: readonly string[], seed: number): void {
  const tok = wordPieceTokenizerJson(words);
  const V = Math.max(d.V, tok.vocab.size);
  const dims = { ...d, V };
  const w = randomEncoderWeights(dims, null, seed);
  const shapes = encoderShapes(dims, null);
  const prefix = d.arch === 'distilbert' ? 'distilbert.' : 'bert.';
  const tensors = [...w.entries()].filter(([name]) => name.startsWith(prefix)).map(([name, data]) => ({ name: name.slice(prefix.length), dtype: 'F32' as const, shape: shapes.get(name)!, data: Float32Array.from(data) }));
  fs.mkdirSync(dir, { recursive: true });
  fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify(encoderConfigJson(dims), null, 2));
  fs.writeFileSync(path.join(dir, 'model.safetensors'), writeSafetensors(tensors, { format: 'pt' }));
  fs.writeFileSync(path.join(dir, 'tokenizer.json'), JSON.stringify(tok.json));
  fs.writeFileSync(path.join(dir, 'tokenizer_config.json'), JSON.stringify(BERT_TOKENIZER_CONFIG, null, 2));
}
