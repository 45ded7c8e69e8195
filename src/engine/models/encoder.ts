// The BERT-family encoder shared by DistilBERT and BERT (./distilbert.ts, ./bert.ts say what each
// is called and which head it has) and the sequence-classification heads transformers puts on it:
// the frozen forward pass, the backward pass that the adapter's and the head's gradients need,
// and the head trained as PEFT's modules_to_save train it (weight and bias, every element).
//
//   embeddings  e = word[ids] + position[t] (+ token_type[0]: every token type id is 0), h0 = LN(e)
//   layer       q, k, v = Lin(h);  ctx = softmax(q k^T / sqrt(D), padding mask) v  (bidirectional)
//               h1 = LN1(h + Lin_o(ctx));  h' = LN2(h1 + Lin2(act(Lin1(h1))))   (post-LayerNorm)
//   head        cls = h_L[:, 0]; z = act_h(cls W_h^T + b_h) (DistilBERT: pre_classifier, ReLU;
//               BERT: pooler.dense, tanh); logits = z W_c^T + b_c; loss = mean cross-entropy
//
// No dropout anywhere in the base model or the head (transformers' train-mode dropout is not
// reproduced; the goldens run with dropout 0); LoRA's own dropout is the adapter's business.
//
// Adapter hooks (src/engine/peft/method.ts): every linear layer of the encoder is a LinearSite (LoRA,
// DoRA, IA3), with its bias in backward too (IA3's output scaling recomputes the layer's output);
// the attention output (after Lin_o) and the FFN output (after Lin2) are residual branches
// (AdapterHub's mh_adapter and output_adapter): with a bottleneck adapter there the sub-block's
// output goes to the method's tensor and the method writes the pre-LayerNorm sum (a, o above),
// which the block's LayerNorm then normalizes as usual (AdapterHub's original_ln_after).
// Prompt tuning's virtual rows go first in every sequence (positions 0..nv-1, no token embedding,
// visible to every query), so the head reads the first virtual token; its gradient reaches them
// through the embeddings' LayerNorm. Prefix tuning (BERT only: PEFT runs it through BertModel's
// past_key_values; DistilBERT's attention takes none) puts P key/value rows before every layer's
// keys, visible to every query and never masked (PEFT prepends a mask of ones for them); score rows
// are [P prefix keys | S keys], and transformers counts the prefix as cached tokens, so the real
// tokens take positions P..P+S-1 (BertEmbeddings' past_key_values_length). The prefix gradients
// are summed over the batch one sequence at a time, as in gpt2.ts.
// Shapes: M = B*T rows, C hidden, H heads of D = C/H, F the FFN width, K labels. nn.Linear stores
// W as [out, in]. Sequences are right-padded; key j of row b is attended to iff j < lengths[b].

import type { Gpu } from '../gpu/gpu';
import type { Op } from '../gpu/dispatch';
import type { Tensor } from '../gpu/tensor';
import { matmul } from '../kernels/matmul';
import { copyOp } from '../kernels/copy';
import { layerNormBackward, layerNormForward } from '../kernels/layernorm';
import { geluBackward, geluForward } from '../kernels/gelu';
import { activationBackward, activationForward, type HeadActivation } from '../kernels/relu-tanh';
import { columnSum } from '../kernels/column-sum';
import { crossEntropy } from '../kernels/cross-entropy';
import { reduceSum } from '../kernels/reduce-sum';
import { attentionSoftmaxBackward, attentionSoftmaxForward } from '../kernels/attention-softmax';
import { attentionPrefixSoftmaxBackward, attentionPrefixSoftmaxForward } from '../kernels/attention-prefix-softmax';
import type { LinearModuleInfo } from '../peft/lora';
import type { BranchSite, LinearSite, PeftMethod, TrainableParam } from '../peft/method';
import { TensorPool, branchSite, copyTableRows, embedTokens, linearBackward, linearForward } from './common';
import { WeightLoader, resolveName, type FrozenStorage, type RowChunks, type WeightSource } from './weights';
import { ProgramError, VIRTUAL_TOKEN_ID } from './program';

/** The FFN activations the encoders use: gelu (erf), gelu_new / gelu_pytorch_tanh, relu. */
export type EncoderActivation = 'gelu' | 'gelu_tanh' | 'relu';

export interface EncoderDims {
  hidden: number;
  layers: number;
  heads: number;
  /** FFN width. */
  intermediate: number;
  vocab: number;
  maxPositions: number;
  /** LayerNorm epsilon (every LayerNorm of the model). */
  eps: number;
  activation: EncoderActivation;
  /** Std of transformers' normal init for head layers missing from the checkpoint. */
  initializerRange: number;
}

/** Module paths (as in the *ForSequenceClassification model) of one layer's parts. */
export interface EncoderLayerNames {
  q: string; k: string; v: string; o: string;
  ln1: string;
  ffnIn: string; ffnOut: string;
  ln2: string;
}

export interface EncoderSpec {
  architecture: 'distilbert' | 'bert';
  /** Class name, for messages and the model card. */
  className: string;
  dims: EncoderDims;
  /** Leading name parts checkpoints may or may not have (a base-model checkpoint has none). */
  prefixes: string[];
  embeddings: { word: string; position: string; tokenType: string | null; layerNorm: string };
  layer(i: number): EncoderLayerNames;
  /** The head: dense [C, C] + activation on the first token, then the classifier [K, C]. */
  head: { dense: string; activation: HeadActivation; classifier: string };
}

/** PEFT's classification heads for task_type SEQ_CLS (PeftModelForSequenceClassification). */
export const SEQ_CLS_MODULES_TO_SAVE = ['classifier', 'score'];

/**
 * Whether PEFT wraps `module` in a ModulesToSaveWrapper (trains and saves it): its `_set_trainable`
 * tests `module_name.endswith(target)` on the plain string, so DistilBERT's `pre_classifier` is
 * matched by "classifier" too.
 */
export function peftSavesModule(module: string, modulesToSave: readonly string[]): boolean {
  return modulesToSave.some((t) => module.endsWith(t));
}

/** A padded classification batch (src/data/classification.ts makes these). */
export interface SeqClsBatch {
  B: number;
  T: number;
  /** [B*T] token ids, right-padded. */
  inputIds: Uint32Array;
  /** [B] real length of each row (at least 1: the first token is the one classified). */
  lengths: Uint32Array;
  /** [B] class ids; -100 for a row that carries no loss (padding rows of an evaluation batch). */
  labels: Int32Array;
  /** Labels that are not -100. */
  validLabels: number;
}

export interface SeqClsProgramOptions {
  B: number;
  T: number;
  /** Build the backward ops (head gradients, and the encoder's when the adapter acts on it). */
  training: boolean;
}

export interface SeqClsProgram {
  readonly B: number;
  readonly T: number;
  readonly tokens: Tensor;
  readonly lengths: Tensor;
  readonly labels: Tensor;
  /** [1] multiplier on the loss gradient: 1 / (labelled rows in the optimizer step). */
  readonly gradScale: Tensor;
  /** [B] per-row loss (0 for ignored rows). */
  readonly losses: Tensor;
  /** [1] += sum of `losses` on every forward run; whoever runs it clears it. */
  readonly lossSum: Tensor;
  /** [B, K] logits of the last forward run. */
  readonly logits: Tensor;
  readonly forward: Op[];
  readonly backward: Op[];
  /** Uploads a batch (checks its shape, token ids, lengths and labels). */
  write(batch: SeqClsBatch): void;
  destroy(): void;
}

interface LayerWeights {
  q: Tensor; qb: Tensor; k: Tensor; kb: Tensor; v: Tensor; vb: Tensor; o: Tensor; ob: Tensor;
  ln1w: Tensor; ln1b: Tensor;
  f1: Tensor; f1b: Tensor; f2: Tensor; f2b: Tensor;
  ln2w: Tensor; ln2b: Tensor;
}

interface LayerActs {
  q: Tensor; k: Tensor; v: Tensor; // [M, C] each
  att: Tensor; // [B*H, T, P+T] scores, then probabilities (P prefix keys first, prefix tuning)
  ctx: Tensor; // [M, C]
  a: Tensor; mean1: Tensor; rstd1: Tensor; // h + Lin_o(ctx), before LN1
  h1: Tensor; // LN1 output
  f: Tensor; g: Tensor; // [M, F] before and after the activation
  o: Tensor; mean2: Tensor; rstd2: Tensor; // h1 + Lin2(g), before LN2
}

/** One head linear layer: frozen weights, or a trainable pair (PEFT modules_to_save). */
interface HeadLinear {
  module: string;
  W: Tensor; // [out, in]
  b: Tensor; // [out]
  trainable: { W: TrainableParam; b: TrainableParam } | null;
}

/** A seeded standard normal (Box-Muller over a uniform [0, 1) source). */
function normalSource(random: () => number): () => number {
  let spare: number | null = null;
  return () => {
    if (spare !== null) {
      const s = spare;
      spare = null;
      return s;
    }
    let u = 0;
    while (u <= Number.EPSILON) u = random();
    const v = random();
    const r = Math.sqrt(-2 * Math.log(u));
    spare = r * Math.sin(2 * Math.PI * v);
    return r * Math.cos(2 * Math.PI * v);
  };
}

export interface LoadEncoderOptions {
  /** Number of classes of the head. */
  numLabels: number;
  /** Modules PEFT saves for SEQ_CLS (default SEQ_CLS_MODULES_TO_SAVE): which head layers train. */
  modulesToSave?: readonly string[];
  /** Uniform [0, 1) source for head layers the checkpoint lacks (transformers' init: N(0, initializer_range), bias 0). */
  random: () => number;
  /** Caps the embedding's row blocks (tests force small ones). */
  maxChunkBytes?: number;
  /** How the frozen matrices (the layers' linear weights and the word table) are kept; the head trains and stays f32. */
  frozen?: FrozenStorage;
}

/** A BERT-family encoder with a sequence-classification head on the GPU. */
export class EncoderClassifier {
  readonly C: number;
  readonly L: number;
  readonly H: number;
  readonly D: number;
  readonly F: number;
  readonly V: number;
  /** Classes. */
  readonly K: number;
  /** The head's parameters that train (PEFT's modules_to_save), named as PEFT saves them. */
  readonly headParams: TrainableParam[];
  /** What loading did that a user should know (head layers initialized, checkpoint head replaced). */
  readonly notes: string[];
  private readonly owned: Tensor[];
  private destroyed = false;

  private constructor(
    private readonly gpu: Gpu,
    readonly spec: EncoderSpec,
    private readonly word: RowChunks,
    /** position table, with token type 0 folded in for BERT */
    private readonly positions: Tensor,
    private readonly embLnW: Tensor,
    private readonly embLnB: Tensor,
    private readonly layers: LayerWeights[],
    private readonly dense: HeadLinear,
    private readonly classifier: HeadLinear,
    numLabels: number,
    notes: string[],
    owned: Tensor[],
  ) {
    const d = spec.dims;
    this.C = d.hidden;
    this.L = d.layers;
    this.H = d.heads;
    this.D = d.hidden / d.heads;
    this.F = d.intermediate;
    this.V = d.vocab;
    this.K = numLabels;
    this.notes = notes;
    this.owned = owned;
    this.headParams = [dense, classifier].flatMap((h) => (h.trainable ? [h.trainable.W, h.trainable.b] : []));
  }

  static load(gpu: Gpu, spec: EncoderSpec, src: WeightSource, where: string, opts: LoadEncoderOptions): EncoderClassifier {
    const d = spec.dims;
    const { hidden: C, heads: H, intermediate: F, vocab: V, maxPositions: P } = d;
    const K = opts.numLabels;
    if (!Number.isInteger(K) || K < 2) throw new ProgramError(`${where}: a classifier needs at least 2 labels (got ${K})`);
    if (C % H !== 0) throw new ProgramError(`${where}: hidden size ${C} is not divisible by ${H} heads`);
    const w = new WeightLoader(gpu, src, spec.prefixes, where, opts.frozen);
    const owned: Tensor[] = [];
    const own = (t: Tensor): Tensor => {
      owned.push(t);
      return t;
    };
    const load = (name: string, shape: number[]): Tensor => own(w.load(name, shape));
    const frozen = (name: string, shape: number[]): Tensor => own(w.loadFrozen(name, shape));
    const chunk = Math.min(opts.maxChunkBytes ?? Infinity, gpu.maxBindingBytes);
    const word = w.loadRowChunks(spec.embeddings.word, V, C, chunk);
    for (const ch of word.chunks) owned.push(ch.tensor);

    // Learned positions; BERT's token type 0 (all token type ids are 0) added in float64, rounded once.
    let positions: Tensor;
    if (spec.embeddings.tokenType) {
      const pos = readChecked(src, spec.prefixes, spec.embeddings.position, [P, C], where);
      const typeName = spec.embeddings.tokenType;
      const found = resolveOrThrow(src, spec.prefixes, typeName, where);
      const info = src.tensorInfo(found);
      if (info.shape.length !== 2 || info.shape[1] !== C || info.shape[0] < 1) {
        throw new ProgramError(`${where}: tensor ${found} has shape [${info.shape.join(', ')}], expected [type_vocab_size, ${C}]`);
      }
      const type0 = src.getF32(found).subarray(0, C);
      const sum = new Float32Array(P * C);
      for (let p = 0; p < P; p++) for (let c = 0; c < C; c++) sum[p * C + c] = pos[p * C + c] + type0[c];
      positions = gpu.tensorFrom(sum, [P, C], `${spec.embeddings.position}+${typeName}[0]`);
      owned.push(positions);
    } else {
      positions = load(spec.embeddings.position, [P, C]);
    }
    const embLnW = load(`${spec.embeddings.layerNorm}.weight`, [C]);
    const embLnB = load(`${spec.embeddings.layerNorm}.bias`, [C]);

    const layers: LayerWeights[] = [];
    for (let i = 0; i < d.layers; i++) {
      const n = spec.layer(i);
      layers.push({
        q: frozen(`${n.q}.weight`, [C, C]), qb: load(`${n.q}.bias`, [C]),
        k: frozen(`${n.k}.weight`, [C, C]), kb: load(`${n.k}.bias`, [C]),
        v: frozen(`${n.v}.weight`, [C, C]), vb: load(`${n.v}.bias`, [C]),
        o: frozen(`${n.o}.weight`, [C, C]), ob: load(`${n.o}.bias`, [C]),
        ln1w: load(`${n.ln1}.weight`, [C]), ln1b: load(`${n.ln1}.bias`, [C]),
        f1: frozen(`${n.ffnIn}.weight`, [F, C]), f1b: load(`${n.ffnIn}.bias`, [F]),
        f2: frozen(`${n.ffnOut}.weight`, [C, F]), f2b: load(`${n.ffnOut}.bias`, [C]),
        ln2w: load(`${n.ln2}.weight`, [C]), ln2b: load(`${n.ln2}.bias`, [C]),
      });
    }

    // The head: from the checkpoint when it has the layer with this shape (a fine-tuned model),
    // else initialized as transformers initializes a new layer.
    const notes: string[] = [];
    const normal = normalSource(opts.random);
    const saved = opts.modulesToSave ?? SEQ_CLS_MODULES_TO_SAVE;
    const headLinear = (module: string, out: number, inF: number): HeadLinear => {
      let Wd: Float32Array;
      let bd: Float32Array;
      const wName = resolveName(src, `${module}.weight`, spec.prefixes);
      const bName = resolveName(src, `${module}.bias`, spec.prefixes);
      const fits = wName !== null && bName !== null && sameShape(src.tensorInfo(wName).shape, [out, inF]) && sameShape(src.tensorInfo(bName).shape, [out]);
      if (fits) {
        Wd = src.getF32(wName!);
        bd = src.getF32(bName!);
      } else {
        if (wName !== null) notes.push(`${module}: the checkpoint's [${src.tensorInfo(wName).shape.join(', ')}] weight does not fit ${out} x ${inF}; initialized anew`);
        else notes.push(`${module}: not in the checkpoint; initialized (normal, std ${d.initializerRange}; bias 0)`);
        Wd = new Float32Array(out * inF);
        for (let i = 0; i < Wd.length; i++) Wd[i] = normal() * d.initializerRange;
        bd = new Float32Array(out);
      }
      if (!peftSavesModule(module, saved)) {
        const W = gpu.tensorFrom(Wd, [out, inF], `${module}.weight`);
        const b = gpu.tensorFrom(bd, [out], `${module}.bias`);
        owned.push(W, b);
        return { module, W, b, trainable: null };
      }
      const Wp = trainableParam(gpu, `base_model.model.${module}.weight`, [out, inF], Wd);
      const bp = trainableParam(gpu, `base_model.model.${module}.bias`, [out], bd);
      for (const p of [Wp, bp]) owned.push(p.value, p.grad, p.m, p.v);
      return { module, W: Wp.value, b: bp.value, trainable: { W: Wp, b: bp } };
    };
    const dense = headLinear(spec.head.dense, C, C);
    const classifier = headLinear(spec.head.classifier, K, C);
    if (!classifier.trainable) throw new ProgramError(`${where}: the classifier "${spec.head.classifier}" is not among the modules PEFT saves (${saved.join(', ')})`);
    return new EncoderClassifier(gpu, spec, word, positions, embLnW, embLnB, layers, dense, classifier, K, notes, owned);
  }

  /**
   * Every linear layer of the encoder, as PEFT names them (what LoRA, DoRA and IA3 can target; not
   * the head), with its frozen weight (DoRA's magnitude starts as its norm).
   */
  linearModules(): LinearModuleInfo[] {
    const { C, F } = this;
    const out: LinearModuleInfo[] = [];
    for (let i = 0; i < this.L; i++) {
      const n = this.spec.layer(i);
      const w = this.layers[i];
      for (const [m, W] of [[n.q, w.q], [n.k, w.k], [n.v, w.v], [n.o, w.o]] as const) out.push({ module: m, inFeatures: C, outFeatures: C, weightLayout: 'out_in', weight: W });
      out.push({ module: n.ffnIn, inFeatures: C, outFeatures: F, weightLayout: 'out_in', weight: w.f1 });
      out.push({ module: n.ffnOut, inFeatures: F, outFeatures: C, weightLayout: 'out_in', weight: w.f2 });
    }
    return out;
  }

  /** Writes word-embedding rows `ids` into dst now (prompt tuning's TEXT and vocabulary-sample inits). */
  copyTokenEmbeddings(ids: readonly number[], dst: Tensor): void {
    copyTableRows(this.gpu, this.word, ids, dst);
  }

  /** Parameters of the base model with its head (frozen and trainable head parameters both). */
  parameterCount(): number {
    const { C, F, V, K } = this;
    const d = this.spec.dims;
    const perLayer = 4 * (C * C + C) + 2 * C + (C * F + F) + (F * C + C) + 2 * C;
    const types = this.spec.embeddings.tokenType ? 2 * C : 0; // type_vocab_size is usually 2
    return V * C + d.maxPositions * C + types + 2 * C + d.layers * perLayer + (C * C + C) + (K * C + K);
  }

  /** GPU bytes of the weights and the head's trainable state. */
  weightBytes(): number {
    return this.owned.reduce((s, t) => s + t.buffer.size, 0);
  }

  /** Frees the weights and the head's parameters; programs built from the model must be destroyed first. */
  destroy(): void {
    if (this.destroyed) return;
    this.destroyed = true;
    for (const t of this.owned) this.gpu.destroyTensor(t);
    this.owned.length = 0;
  }

  private lowestTrainableLayer(peft: PeftMethod | null): number {
    if (!peft) return this.L;
    if (peft.virtualTokens) return 0; // the gradient goes down to the embeddings
    if (peft.prefixTokens) return 0; // every layer's attention has prefix rows
    for (let l = 0; l < this.L; l++) {
      const n = this.spec.layer(l);
      if ([n.q, n.k, n.v, n.o, n.ffnIn, n.ffnOut].some((m) => peft.targetsLinear(m))) return l;
      if (peft.targetsBranch?.(l, 'attention') || peft.targetsBranch?.(l, 'output')) return l;
    }
    return this.L;
  }

  buildProgram(peft: PeftMethod | null, opts: SeqClsProgramOptions): SeqClsProgram {
    if (this.destroyed) throw new ProgramError('the model was destroyed');
    const { gpu, C, L, H, F, K } = this;
    const { B, T, training } = opts;
    for (const [k, v] of Object.entries({ B, T })) {
      if (!Number.isInteger(v) || v < 1) throw new ProgramError(`${k} must be a positive integer (got ${v})`);
    }
    // Prefix tuning: P key/value rows before every layer's keys (attentionPrefix), the real tokens'
    // positions shifted by P as transformers' BertEmbeddings shifts them by past_key_values_length.
    const P = peft?.prefixTokens ?? 0;
    if (P && this.spec.architecture !== 'bert') {
      throw new ProgramError(`prefix tuning is not available for ${this.spec.className}: its attention takes no past_key_values (PEFT cannot run it there)`);
    }
    if (P && !peft!.attentionPrefix) throw new ProgramError(`the ${peft!.kind} method has ${P} prefix tokens but no attentionPrefix`);
    // Prompt tuning: nv virtual rows before each sequence's T tokens (PEFT's SEQ_CLS forward: the
    // prompts before the token embeddings, positions 0..nv-1 for them, the attention mask ones over
    // them); the head then reads row 0, the first virtual token, as transformers' classifier does.
    const nv = peft?.virtualTokens ?? 0;
    const S = T + nv;
    if (S + P > this.spec.dims.maxPositions) {
      throw new ProgramError(`sequence length ${T}${nv + P ? ` plus ${nv + P} virtual tokens` : ''} is longer than the model's max_position_embeddings (${this.spec.dims.maxPositions})`);
    }
    const M = B * S;
    const eps = this.spec.dims.eps;
    const pool = new TensorPool(gpu);
    const t = pool.t.bind(pool);
    const tokens = t([M], 'tokens', 'u32');
    const lengths = t([B], 'lengths', 'u32');
    const labels = t([B], 'labels', 'i32');
    const lowest = training ? this.lowestTrainableLayer(peft) : L;
    const encoderBackward = training && lowest < L;

    // hs[l] is the input of layer l (hs[0] the embeddings' LayerNorm output); hs[L] feeds the head.
    // Without the encoder's backward only the current layer's activations are needed.
    const keepAll = encoderBackward;
    const hs = Array.from({ length: keepAll ? L + 1 : 2 }, (_, i) => t([M, C], `h${i}`));
    const hAt = (l: number): Tensor => (keepAll ? hs[l] : hs[l % 2]);
    const acts: LayerActs[] = Array.from({ length: keepAll ? L : 1 }, (_, i) => ({
      q: t([M, C], `l${i}.q`), k: t([M, C], `l${i}.k`), v: t([M, C], `l${i}.v`),
      att: t([B * H, S, P + S], `l${i}.att`), ctx: t([M, C], `l${i}.ctx`),
      a: t([M, C], `l${i}.a`), mean1: t([M], `l${i}.mean1`), rstd1: t([M], `l${i}.rstd1`), h1: t([M, C], `l${i}.h1`),
      f: t([M, F], `l${i}.f`), g: t([M, F], `l${i}.g`),
      o: t([M, C], `l${i}.o`), mean2: t([M], `l${i}.mean2`), rstd2: t([M], `l${i}.rstd2`),
    }));
    const actAt = (l: number): LayerActs => acts[keepAll ? l : 0];

    const emb = t([M, C], 'emb'), embMean = t([M], 'emb.mean'), embRstd = t([M], 'emb.rstd');
    const forward: Op[] = [...(peft?.forwardStart?.() ?? []), ...embedTokens(gpu, this.word, tokens, emb, M, S, this.positions, P)];
    // the virtual rows carry no token (VIRTUAL_TOKEN_ID) but their positions: the prompt is added to them
    if (nv) forward.push(...peft!.embeddingForward!(emb, B, S));
    forward.push(layerNormForward(gpu, { x: emb, weight: this.embLnW, bias: this.embLnB, out: hAt(0), mean: embMean, rstd: embRstd, rows: M, C, eps }));
    for (let l = 0; l < L; l++) forward.push(...this.layerForward(l, hAt(l), hAt(l + 1), actAt(l), lengths, peft, B, S, training));

    // head: z = act(h_L[:, 0] W_d^T + b_d), logits = z W_c^T + b_c, cross-entropy
    const top = hAt(L);
    const z = t([B, C], 'head.z');
    const work = t([B, K], 'head.logits.work'); // logits, then d(loss)/d(logits) in place
    const logits = t([B, K], 'logits');
    const gradScale = t([1], 'gradScale');
    const losses = t([B], 'losses');
    const lossSum = t([1], 'lossSum');
    const act = this.spec.head.activation;
    const dn = this.dense, cl = this.classifier;
    forward.push(matmul(gpu, { label: `${dn.module}`, a: top, lda: S * C, b: dn.W, transB: true, bias: dn.b, c: z, M: B, N: C, K: C }));
    forward.push(activationForward(gpu, act, { x: z, out: z, n: B * C }));
    forward.push(matmul(gpu, { label: `${cl.module}`, a: z, b: cl.W, transB: true, bias: cl.b, c: work, M: B, N: K, K: C }));
    forward.push({ kind: 'copy', src: work.buffer, srcOffset: 0, dst: logits.buffer, dstOffset: 0, size: B * K * 4 });
    forward.push(crossEntropy(gpu, { logits: work, targets: labels, losses, gradScale, rows: B, V: K }));
    forward.push(reduceSum(gpu, { x: losses, n: B, out: lossSum, accumulate: true }));

    const backward: Op[] = [];
    if (training) {
      if (encoderBackward) backward.push(...(peft?.backwardStart?.() ?? []));
      const dz = t([B, C], 'head.dz');
      // classifier: dW_c += dlogits^T z, db_c += colsum(dlogits), dz = dlogits W_c
      backward.push(matmul(gpu, { label: `${cl.module}.dW`, a: work, transA: true, b: z, c: cl.trainable!.W.grad, M: K, N: C, K: B, accumulate: true }));
      backward.push(columnSum(gpu, { x: work, out: cl.trainable!.b.grad, rows: B, N: K, accumulate: true }));
      const needDz = dn.trainable !== null || encoderBackward;
      if (needDz) {
        backward.push(matmul(gpu, { label: `${cl.module}.dx`, a: work, b: cl.W, c: dz, M: B, N: C, K }));
        backward.push(activationBackward(gpu, act, { dout: dz, y: z, dx: dz, n: B * C }));
      }
      if (dn.trainable) {
        backward.push(matmul(gpu, { label: `${dn.module}.dW`, a: dz, transA: true, b: top, ldb: S * C, c: dn.trainable.W.grad, M: C, N: C, K: B, accumulate: true }));
        backward.push(columnSum(gpu, { x: dz, out: dn.trainable.b.grad, rows: B, N: C, accumulate: true }));
      }
      if (encoderBackward) {
        // d(loss)/d(h_L): only the first token of each row gets a gradient from the head
        const dh = t([M, C], 'dh');
        backward.push({ kind: 'clear', buffer: dh.buffer });
        backward.push(matmul(gpu, { label: `${dn.module}.dx`, a: dz, b: dn.W, c: dh, ldc: S * C, M: B, N: C, K: C }));
        const s = {
          dh, dpre: t([M, C], 'dpre'), dg: t([M, F], 'dg'), dctx: t([M, C], 'dctx'),
          dq: t([M, C], 'dq'), dk: t([M, C], 'dk'), dv: t([M, C], 'dv'), dP: t([B * H, S, P + S], 'dP'),
        };
        for (let l = L - 1; l >= lowest; l--) backward.push(...this.layerBackward(l, hAt(l), actAt(l), s, peft, B, S));
        if (nv) {
          // dh holds d(loss)/d(h0): through the embeddings' LayerNorm to the virtual rows
          const demb = t([M, C], 'demb');
          backward.push(layerNormBackward(gpu, { dout: dh, x: emb, weight: this.embLnW, mean: embMean, rstd: embRstd, dx: demb, rows: M, C, accumulate: false }));
          backward.push(...peft!.embeddingBackward!(demb, B, S));
        }
        backward.push(...(peft?.backwardEnd?.() ?? []));
      }
    }

    const V = this.V;
    return {
      B, T, tokens, lengths, labels, gradScale, losses, lossSum, logits, forward, backward,
      write: (batch: SeqClsBatch) => {
        if (batch.B !== B || batch.T !== T) throw new ProgramError(`batch is ${batch.B}x${batch.T} but the program was built for ${B}x${T}`);
        if (batch.inputIds.length !== B * T || batch.lengths.length !== B || batch.labels.length !== B) throw new ProgramError('batch arrays do not match B and T');
        for (let i = 0; i < B * T; i++) {
          if (batch.inputIds[i] >= V) throw new ProgramError(`token id ${batch.inputIds[i]} at position ${i} is outside the model's vocabulary (${V})`);
        }
        for (let b = 0; b < B; b++) {
          if (batch.lengths[b] < 1 || batch.lengths[b] > T) throw new ProgramError(`row ${b}: length ${batch.lengths[b]} is outside 1..${T}`);
          const y = batch.labels[b];
          if (y >= K || (y < 0 && y !== -100)) throw new ProgramError(`row ${b}: label ${y} is not a class id (0..${K - 1}) or -100`);
        }
        if (nv === 0) {
          gpu.write(tokens, batch.inputIds);
          gpu.write(lengths, batch.lengths);
        } else {
          const ids = new Uint32Array(M).fill(VIRTUAL_TOKEN_ID);
          for (let b = 0; b < B; b++) ids.set(batch.inputIds.subarray(b * T, (b + 1) * T), b * S + nv);
          gpu.write(tokens, ids);
          gpu.write(lengths, Uint32Array.from(batch.lengths, (n) => n + nv));
        }
        gpu.write(labels, batch.labels);
      },
      destroy: () => pool.destroy(),
    };
  }

  /** training: whether the program trains (adapter dropout on) or evaluates / generates (off). */
  private site(training: boolean, module: string, layer: number, inF: number, outF: number, x: Tensor, y: Tensor, rows: number): LinearSite {
    return { module, layer, inFeatures: inF, outFeatures: outF, rows, x, y, weightLayout: 'out_in', training };
  }

  /**
   * The residual branch `location` of layer l when the method puts an adapter there: residual + the
   * sub-block's output make `out`, which the block's LayerNorm (given to the method) normalizes next.
   */
  private branch(peft: PeftMethod | null, l: number, location: 'attention' | 'output', rows: number, residual: Tensor, out: Tensor): BranchSite | null {
    const site = branchSite(peft, l, location, rows, this.C, residual, out);
    if (!site) return null;
    const w = this.layers[l];
    const [weight, bias] = location === 'attention' ? [w.ln1w, w.ln1b] : [w.ln2w, w.ln2b];
    return { ...site, layerNorm: { weight, bias, eps: this.spec.dims.eps } };
  }

  private ffnActivationForward(x: Tensor, out: Tensor, n: number): Op {
    const a = this.spec.dims.activation;
    if (a === 'gelu') return geluForward(this.gpu, { x, out, n, form: 'erf' });
    if (a === 'gelu_tanh') return geluForward(this.gpu, { x, out, n });
    return activationForward(this.gpu, 'relu', { x, out, n });
  }

  /** d(act) in place on `d`, from the FFN's pre-activation `f` (gelu) or its output `g` (relu). */
  private ffnActivationBackward(d: Tensor, f: Tensor, g: Tensor, n: number): Op {
    const a = this.spec.dims.activation;
    if (a === 'gelu') return geluBackward(this.gpu, { dout: d, x: f, dx: d, n, form: 'erf' });
    if (a === 'gelu_tanh') return geluBackward(this.gpu, { dout: d, x: f, dx: d, n });
    return activationBackward(this.gpu, 'relu', { dout: d, y: g, dx: d, n });
  }

  private layerForward(l: number, h: Tensor, hOut: Tensor, a: LayerActs, lengths: Tensor, peft: PeftMethod | null, B: number, T: number, training: boolean): Op[] {
    const { gpu, C, H, D, F } = this;
    const M = B * T;
    const w = this.layers[l];
    const n = this.spec.layer(l);
    const eps = this.spec.dims.eps;
    const heads = { outer: B, inner: H };
    const lin = (module: string, inF: number, outF: number, x: Tensor, y: Tensor, W: Tensor, b: Tensor, accumulate: boolean) =>
      linearForward(gpu, this.site(training, module, l, inF, outF, x, y, M), W, b, accumulate, peft);
    const ops: Op[] = [];
    ops.push(...lin(n.q, C, C, h, a.q, w.q, w.qb, false));
    ops.push(...lin(n.k, C, C, h, a.k, w.k, w.kb, false));
    ops.push(...lin(n.v, C, C, h, a.v, w.v, w.vb, false));
    // Prefix tuning: each score row is [P prefix keys | T keys] (Tk columns), the prefix keys and
    // values read from the method's [P, ld] tensor, shared by the whole batch.
    const pre = peft?.prefixTokens ? peft.attentionPrefix!(l) : null;
    const P = pre?.tokens ?? 0, Tk = P + T;
    if (pre) {
      ops.push(matmul(gpu, {
        label: `${n.q}.prefix_scores`, a: a.q, lda: C, b: pre.value, offsetB: pre.keyOffset, ldb: pre.ld, transB: true, c: a.att, ldc: Tk, M: T, N: P, K: D,
        batch: { ...heads, strideA: [T * C, D], strideB: [0, D], strideC: [H * T * Tk, T * Tk] },
      }));
    }
    // scores = Q K^T per (row, head); softmax over the prefix and the row's real keys (no causal mask)
    ops.push(matmul(gpu, {
      label: `${n.q}.scores`, a: a.q, lda: C, b: a.k, ldb: C, transB: true, c: a.att, offsetC: P, ldc: Tk, M: T, N: T, K: D,
      batch: { ...heads, strideA: [T * C, D], strideB: [T * C, D], strideC: [H * T * Tk, T * Tk] },
    }));
    if (pre) ops.push(attentionPrefixSoftmaxForward(gpu, { scores: a.att, probs: a.att, lengths, B, H, T, P, scale: 1 / Math.sqrt(D), causal: false }));
    else ops.push(attentionSoftmaxForward(gpu, { scores: a.att, probs: a.att, lengths, B, H, T, scale: 1 / Math.sqrt(D), causal: false }));
    if (pre) {
      ops.push(matmul(gpu, {
        label: `${n.v}.prefix_pv`, a: a.att, lda: Tk, b: pre.value, offsetB: pre.valueOffset, ldb: pre.ld, c: a.ctx, ldc: C, M: T, N: D, K: P,
        batch: { ...heads, strideA: [H * T * Tk, T * Tk], strideB: [0, D], strideC: [T * C, D] },
      }));
    }
    ops.push(matmul(gpu, {
      label: `${n.v}.pv`, a: a.att, offsetA: P, lda: Tk, b: a.v, ldb: C, c: a.ctx, ldc: C, M: T, N: D, K: T, accumulate: P > 0,
      batch: { ...heads, strideA: [H * T * Tk, T * Tk], strideB: [T * C, D], strideC: [T * C, D] },
    }));
    // a = h + Lin_o(ctx); h1 = LN1(a) (a bottleneck adapter on the branch: Lin_o's output goes to
    // its own tensor and the adapter writes a)
    const attnBranch = this.branch(peft, l, 'attention', M, h, a.a);
    if (attnBranch) {
      ops.push(...lin(n.o, C, C, a.ctx, attnBranch.branch, w.o, w.ob, false));
      ops.push(...peft!.branchForward!(attnBranch));
    } else {
      ops.push(copyOp(gpu, h, a.a, M * C));
      ops.push(...lin(n.o, C, C, a.ctx, a.a, w.o, w.ob, true));
    }
    ops.push(layerNormForward(gpu, { x: a.a, weight: w.ln1w, bias: w.ln1b, out: a.h1, mean: a.mean1, rstd: a.rstd1, rows: M, C, eps }));
    // o = h1 + Lin2(act(Lin1(h1))); hOut = LN2(o)
    ops.push(...lin(n.ffnIn, C, F, a.h1, a.f, w.f1, w.f1b, false));
    ops.push(this.ffnActivationForward(a.f, a.g, M * F));
    const ffnBranch = this.branch(peft, l, 'output', M, a.h1, a.o);
    if (ffnBranch) {
      ops.push(...lin(n.ffnOut, F, C, a.g, ffnBranch.branch, w.f2, w.f2b, false));
      ops.push(...peft!.branchForward!(ffnBranch));
    } else {
      ops.push(copyOp(gpu, a.h1, a.o, M * C));
      ops.push(...lin(n.ffnOut, F, C, a.g, a.o, w.f2, w.f2b, true));
    }
    ops.push(layerNormForward(gpu, { x: a.o, weight: w.ln2w, bias: w.ln2b, out: hOut, mean: a.mean2, rstd: a.rstd2, rows: M, C, eps }));
    return ops;
  }

  /**
   * On entry s.dh holds d(loss)/d(output of layer l); on exit d(loss)/d(input of layer l).
   * The mirror image of layerForward, read from the bottom up.
   */
  private layerBackward(
    l: number, h: Tensor, a: LayerActs,
    s: { dh: Tensor; dpre: Tensor; dg: Tensor; dctx: Tensor; dq: Tensor; dk: Tensor; dv: Tensor; dP: Tensor },
    peft: PeftMethod | null, B: number, T: number,
  ): Op[] {
    const { gpu, C, H, D, F } = this;
    const M = B * T;
    const w = this.layers[l];
    const n = this.spec.layer(l);
    const heads = { outer: B, inner: H };
    const back = (module: string, inF: number, outF: number, x: Tensor, y: Tensor, W: Tensor, bias: Tensor, dy: Tensor, dx: Tensor, accumulate: boolean) =>
      linearBackward(gpu, this.site(true, module, l, inF, outF, x, y, M), W, dy, dx, accumulate, peft, bias);
    const ops: Op[] = [];
    // LN2: d(o) into dpre
    ops.push(layerNormBackward(gpu, { dout: s.dh, x: a.o, weight: w.ln2w, mean: a.mean2, rstd: a.rstd2, dx: s.dpre, rows: M, C, accumulate: false }));
    // FFN; the residual passes d(o) to h1, so Lin1's dx adds onto dpre, which becomes d(h1). With a
    // bottleneck adapter on the branch its backward leaves d(h1)'s residual part in dpre and gives
    // the branch's gradient.
    const ffnBranch = this.branch(peft, l, 'output', M, a.h1, a.o);
    let dFfnOut = s.dpre;
    if (ffnBranch) {
      const r = peft!.branchBackward!(ffnBranch, s.dpre);
      ops.push(...r.ops);
      dFfnOut = r.dBranch;
    }
    ops.push(...back(n.ffnOut, F, C, a.g, ffnBranch?.branch ?? a.o, w.f2, w.f2b, dFfnOut, s.dg, false));
    ops.push(this.ffnActivationBackward(s.dg, a.f, a.g, M * F));
    ops.push(...back(n.ffnIn, C, F, a.h1, a.f, w.f1, w.f1b, s.dg, s.dpre, true));
    // LN1: d(a) into dh
    ops.push(layerNormBackward(gpu, { dout: s.dpre, x: a.a, weight: w.ln1w, mean: a.mean1, rstd: a.rstd1, dx: s.dh, rows: M, C, accumulate: false }));
    const attnBranch = this.branch(peft, l, 'attention', M, h, a.a);
    let dAttnOut = s.dh;
    if (attnBranch) {
      const r = peft!.branchBackward!(attnBranch, s.dh);
      ops.push(...r.ops);
      dAttnOut = r.dBranch;
    }
    ops.push(...back(n.o, C, C, a.ctx, attnBranch?.branch ?? a.a, w.o, w.ob, dAttnOut, s.dctx, false));
    // prefix tuning: score rows are [P prefix keys | T keys]; the prefix gradients are summed over
    // the batch one sequence at a time (a batched accumulate into shared rows would race)
    const pre = peft?.prefixTokens ? peft.attentionPrefix!(l) : null;
    const P = pre?.tokens ?? 0, Tk = P + T;
    // dP = dctx V^T ; dV = P^T dctx
    if (pre) {
      ops.push(matmul(gpu, {
        label: `${n.v}.prefix_dP`, a: s.dctx, lda: C, b: pre.value, offsetB: pre.valueOffset, ldb: pre.ld, transB: true, c: s.dP, ldc: Tk, M: T, N: P, K: D,
        batch: { ...heads, strideA: [T * C, D], strideB: [0, D], strideC: [H * T * Tk, T * Tk] },
      }));
    }
    ops.push(matmul(gpu, {
      label: `${n.v}.dP`, a: s.dctx, lda: C, b: a.v, ldb: C, transB: true, c: s.dP, offsetC: P, ldc: Tk, M: T, N: T, K: D,
      batch: { ...heads, strideA: [T * C, D], strideB: [T * C, D], strideC: [H * T * Tk, T * Tk] },
    }));
    ops.push(matmul(gpu, {
      label: `${n.v}.dV`, a: a.att, offsetA: P, lda: Tk, transA: true, b: s.dctx, ldb: C, c: s.dv, ldc: C, M: T, N: D, K: T,
      batch: { ...heads, strideA: [H * T * Tk, T * Tk], strideB: [T * C, D], strideC: [T * C, D] },
    }));
    if (pre) {
      for (let b = 0; b < B; b++) {
        ops.push(matmul(gpu, {
          label: `${n.v}.prefix_dV`, a: a.att, offsetA: b * H * T * Tk, lda: Tk, transA: true, b: s.dctx, offsetB: b * T * C, ldb: C,
          c: pre.grad, offsetC: pre.valueOffset, ldc: pre.ld, M: P, N: D, K: T, accumulate: true,
          batch: { outer: 1, inner: H, strideA: [0, T * Tk], strideB: [0, D], strideC: [0, D] },
        }));
      }
      ops.push(attentionPrefixSoftmaxBackward(gpu, { dprobs: s.dP, probs: a.att, dscores: s.dP, B, H, T, P, scale: 1 / Math.sqrt(D) }));
    } else {
      ops.push(attentionSoftmaxBackward(gpu, { dprobs: s.dP, probs: a.att, dscores: s.dP, B, H, T, scale: 1 / Math.sqrt(D) }));
    }
    // dQ = dS K ; dK = dS^T Q
    ops.push(matmul(gpu, {
      label: `${n.q}.dQ`, a: s.dP, offsetA: P, lda: Tk, b: a.k, ldb: C, c: s.dq, ldc: C, M: T, N: D, K: T,
      batch: { ...heads, strideA: [H * T * Tk, T * Tk], strideB: [T * C, D], strideC: [T * C, D] },
    }));
    ops.push(matmul(gpu, {
      label: `${n.k}.dK`, a: s.dP, offsetA: P, lda: Tk, transA: true, b: a.q, ldb: C, c: s.dk, ldc: C, M: T, N: D, K: T,
      batch: { ...heads, strideA: [H * T * Tk, T * Tk], strideB: [T * C, D], strideC: [T * C, D] },
    }));
    if (pre) {
      ops.push(matmul(gpu, {
        label: `${n.q}.prefix_dQ`, a: s.dP, lda: Tk, b: pre.value, offsetB: pre.keyOffset, ldb: pre.ld, c: s.dq, ldc: C, M: T, N: D, K: P, accumulate: true,
        batch: { ...heads, strideA: [H * T * Tk, T * Tk], strideB: [0, D], strideC: [T * C, D] },
      }));
      for (let b = 0; b < B; b++) {
        ops.push(matmul(gpu, {
          label: `${n.k}.prefix_dK`, a: s.dP, offsetA: b * H * T * Tk, lda: Tk, transA: true, b: a.q, offsetB: b * T * C, ldb: C,
          c: pre.grad, offsetC: pre.keyOffset, ldc: pre.ld, M: P, N: D, K: T, accumulate: true,
          batch: { outer: 1, inner: H, strideA: [0, T * Tk], strideB: [0, D], strideC: [0, D] },
        }));
      }
    }
    // the residual passes d(a) to h; q, k and v add theirs
    ops.push(...back(n.q, C, C, h, a.q, w.q, w.qb, s.dq, s.dh, true));
    ops.push(...back(n.k, C, C, h, a.k, w.k, w.kb, s.dk, s.dh, true));
    ops.push(...back(n.v, C, C, h, a.v, w.v, w.vb, s.dv, s.dh, true));
    return ops;
  }
}

function sameShape(a: readonly number[], b: readonly number[]): boolean {
  return a.length === b.length && a.every((d, i) => d === b[i]);
}

function resolveOrThrow(src: WeightSource, prefixes: readonly string[], name: string, where: string): string {
  const found = resolveName(src, name, prefixes);
  if (!found) throw new ProgramError(`${where}: tensor ${name} is missing from the checkpoint`);
  return found;
}

function readChecked(src: WeightSource, prefixes: readonly string[], name: string, shape: number[], where: string): Float32Array {
  const found = resolveOrThrow(src, prefixes, name, where);
  const info = src.tensorInfo(found);
  if (!sameShape(info.shape, shape)) throw new ProgramError(`${where}: tensor ${found} has shape [${info.shape.join(', ')}] but config.json implies [${shape.join(', ')}]`);
  return src.getF32(found);
}

function trainableParam(gpu: Gpu, name: string, shape: number[], init: Float32Array): TrainableParam {
  return {
    name,
    shape,
    value: gpu.tensorFrom(init, shape, name),
    grad: gpu.tensor(shape, `${name}.grad`),
    m: gpu.tensor(shape, `${name}.m`),
    v: gpu.tensor(shape, `${name}.v`),
  };
}
