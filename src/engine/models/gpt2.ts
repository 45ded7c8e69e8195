// GPT-2 on WebGPU: the frozen forward pass and the backward pass adapter gradients need.
// One layer's forward and backward are written side by side (see buildLayerForward /
// buildLayerBackward); every activation has its own named buffer.
//
// Shapes: M = B*T rows, C = n_embd, H heads of D = C/H, V vocabulary, L layers.
// Weights follow Hugging Face's GPT2LMHeadModel: Conv1D stores W as [in, out] (y = x W + b).

import type { Gpu } from '../gpu/gpu';
import type { Op } from '../gpu/dispatch';
import type { Tensor } from '../gpu/tensor';
import { matmul } from '../kernels/matmul';
import { layerNormBackward, layerNormForward } from '../kernels/layernorm';
import { geluBackward, geluForward } from '../kernels/gelu';
import { attentionSoftmaxForward } from '../kernels/attention-softmax';
import { attentionPrefixSoftmaxBackward, attentionPrefixSoftmaxForward } from '../kernels/attention-prefix-softmax';
import { attentionRowDelta, flashAttentionBackward, flashAttentionForward, flashAttentionSupported, useFlashAttention, type FlashAttentionShape } from '../kernels/flash-attention';
import type { LinearModuleInfo } from '../peft/lora';
import type { AttentionPrefix, LinearSite, PeftMethod } from '../peft/method';
import { TensorPool, branchSite, copyTableRows, embedTokens, frozenProduct, linearBackward, linearForward, lmHeadAndLoss } from './common';
import { WeightLoader, type FrozenStorage, type RowChunks, type WeightSource } from './weights';
import { ProgramError, headAndLossBuffers, methodModules, programSplitKElements, plannedBytes, writeBatch, type BatchArrays, type PlannedBuffer, type Program, type ProgramOptions } from './program';
import { kvAddPositions, kvAppend } from '../kernels/kv-cache';
import { kvAttention } from '../kernels/kv-attention';
import { checkKvCache, lastRowLogits, prefixIntoCache, writeDecodeTokens, type DecodeProgram, type DecodeProgramOptions, type KvCacheShape } from '../infer/kv-program';

/** The config.json fields GPT-2 uses (Hugging Face names). */
export interface Gpt2Dims {
  n_embd: number;
  n_layer: number;
  n_head: number;
  n_positions: number;
  /** MLP width (default 4 * n_embd) */
  n_inner?: number | null;
  vocab_size: number;
  layer_norm_epsilon: number;
  activation_function?: string;
  tie_word_embeddings?: boolean;
}

interface Gpt2LayerWeights {
  ln1w: Tensor; ln1b: Tensor;
  attnW: Tensor; attnB: Tensor; // [C, 3C], [3C]
  projW: Tensor; projB: Tensor; // [C, C], [C]
  ln2w: Tensor; ln2b: Tensor;
  fcW: Tensor; fcB: Tensor; // [C, 4C], [4C]
  mprojW: Tensor; mprojB: Tensor; // [4C, C], [C]
}

/**
 * The layer activations that are only the input of linear modules (names within a layer): a
 * training program keeps them per layer only where a method acts on one of those modules (its
 * gradients read x; the frozen products' backward needs W alone). The attention output (ctx) is
 * not among them: the softmax backward's row terms read it; nor is fc (GELU's derivative).
 */
const LAYER_INPUT_READERS: Readonly<Record<string, readonly string[]>> = {
  ln1: ['attn.c_attn'],
  ln2: ['mlp.c_fc'],
};

/** Per-layer activations kept for backward. */
interface LayerActs {
  ln1: Tensor; mean1: Tensor; rstd1: Tensor;
  qkv: Tensor; // [M, 3C]
  /** [B*H, T, P+T] scores, then probabilities; null with flash attention (Gpt2.flash) */
  att: Tensor | null;
  /** [B*H*T] each score row's log-sum-exp, for flash attention's backward; null without it */
  lse: Tensor | null;
  ctx: Tensor; // [M, C] attention output before c_proj
  x2: Tensor; // residual after attention
  ln2: Tensor; mean2: Tensor; rstd2: Tensor;
  fc: Tensor; // [M, 4C] before GELU
  /**
   * [M, 4C] after GELU, one buffer every layer shares: only layers whose MLP is not fused
   * (Gpt2.mlpFused) write it, in forward, and again in backward for their method's gradients.
   */
  g: Tensor;
}

/** Gradient buffers every layer's backward shares. */
interface BackwardScratch {
  dres: Tensor; dln: Tensor; dqkv: Tensor; dctx: Tensor; dg: Tensor;
  /** [B*H, T, P+T] the probabilities' gradient, then the scores' (T x T path) */
  dP: Tensor | null;
  /** [B*H*T] rowsum(dctx * ctx) per head (flash attention's backward; the T x T path's fused softmax backward) */
  delta: Tensor;
}

const PREFIXES = ['transformer.'];
const SUPPORTED_ACTIVATIONS = new Set(['gelu_new', 'gelu_pytorch_tanh']);

export class Gpt2 {
  readonly C: number;
  readonly L: number;
  readonly H: number;
  readonly D: number;
  readonly V: number;
  /** MLP width */
  readonly F: number;
  private destroyed = false;
  private constructor(
    private readonly gpu: Gpu,
    readonly dims: Gpt2Dims,
    private readonly wte: RowChunks,
    private readonly wpe: Tensor,
    private readonly lmHead: RowChunks,
    private readonly layers: Gpt2LayerWeights[],
    private readonly lnfW: Tensor,
    private readonly lnfB: Tensor,
  ) {
    this.C = dims.n_embd;
    this.L = dims.n_layer;
    this.H = dims.n_head;
    this.D = dims.n_embd / dims.n_head;
    this.V = dims.vocab_size;
    this.F = dims.n_inner ?? 4 * dims.n_embd;
  }

  /**
   * Uploads the frozen weights. `maxChunkBytes` caps the embedding's row blocks (tests force small
   * ones); `frozen` keeps the linear layers' weights and wte / lm_head in f16 (weights.ts FrozenStorage).
   */
  static load(gpu: Gpu, dims: Gpt2Dims, src: WeightSource, where: string, opts: { maxChunkBytes?: number; frozen?: FrozenStorage } = {}): Gpt2 {
    const { n_embd: C, n_layer: L, n_head: H, n_positions: P, vocab_size: V } = dims;
    const F = dims.n_inner ?? 4 * C;
    if (C % H !== 0) throw new ProgramError(`${where}: n_embd ${C} is not divisible by n_head ${H}`);
    const act = dims.activation_function ?? 'gelu_new';
    if (!SUPPORTED_ACTIVATIONS.has(act)) throw new ProgramError(`${where}: activation_function "${act}" is not supported (GPT-2 uses gelu_new)`);
    const w = new WeightLoader(gpu, src, PREFIXES, where, opts.frozen);
    const chunk = Math.min(opts.maxChunkBytes ?? Infinity, gpu.maxBindingBytes);
    const wte = w.loadRowChunks('transformer.wte.weight', V, C, chunk);
    const tied = dims.tie_word_embeddings !== false || !w.has('lm_head.weight');
    const lmHead = tied ? wte : w.loadRowChunks('lm_head.weight', V, C, chunk);
    const wpe = w.load('transformer.wpe.weight', [P, C]);
    const layers: Gpt2LayerWeights[] = [];
    for (let i = 0; i < L; i++) {
      const p = `transformer.h.${i}.`;
      layers.push({
        ln1w: w.load(`${p}ln_1.weight`, [C]), ln1b: w.load(`${p}ln_1.bias`, [C]),
        attnW: w.loadFrozen(`${p}attn.c_attn.weight`, [C, 3 * C]), attnB: w.load(`${p}attn.c_attn.bias`, [3 * C]),
        projW: w.loadFrozen(`${p}attn.c_proj.weight`, [C, C]), projB: w.load(`${p}attn.c_proj.bias`, [C]),
        ln2w: w.load(`${p}ln_2.weight`, [C]), ln2b: w.load(`${p}ln_2.bias`, [C]),
        fcW: w.loadFrozen(`${p}mlp.c_fc.weight`, [C, F]), fcB: w.load(`${p}mlp.c_fc.bias`, [F]),
        mprojW: w.loadFrozen(`${p}mlp.c_proj.weight`, [F, C]), mprojB: w.load(`${p}mlp.c_proj.bias`, [C]),
      });
    }
    return new Gpt2(gpu, dims, wte, wpe, lmHead, layers, w.load('transformer.ln_f.weight', [C]), w.load('transformer.ln_f.bias', [C]));
  }

  /** Every linear layer, as PEFT names them (what LoRA can target), with its frozen weight. */
  linearModules(): LinearModuleInfo[] {
    const { C, F } = this;
    const out: LinearModuleInfo[] = [];
    for (let i = 0; i < this.L; i++) {
      const p = `transformer.h.${i}.`;
      const w = this.layers[i];
      out.push({ module: `${p}attn.c_attn`, inFeatures: C, outFeatures: 3 * C, weightLayout: 'in_out', weight: w.attnW });
      out.push({ module: `${p}attn.c_proj`, inFeatures: C, outFeatures: C, weightLayout: 'in_out', weight: w.projW });
      out.push({ module: `${p}mlp.c_fc`, inFeatures: C, outFeatures: F, weightLayout: 'in_out', weight: w.fcW });
      out.push({ module: `${p}mlp.c_proj`, inFeatures: F, outFeatures: C, weightLayout: 'in_out', weight: w.mprojW });
    }
    return out;
  }

  /** Frozen parameter count (the tied head counted once). */
  parameterCount(): number {
    const { C, L, V, F } = this;
    const perLayer = 2 * C + (C * 3 * C + 3 * C) + (C * C + C) + 2 * C + (C * F + F) + (F * C + C);
    const head = this.lmHead === this.wte ? 0 : V * C;
    return V * C + this.dims.n_positions * C + L * perLayer + 2 * C + head;
  }

  /**
   * Every buffer buildProgram allocates for these options, in the order it allocates them (the
   * adapter's own scratch is the adapter's: see Lora). Keep in step with buildProgram:
   * test/memory-estimate.test.ts checks the two allocate the same bytes.
   */
  programBuffers(opts: ProgramOptions, prefixTokens = 0): PlannedBuffer[] {
    const { C, L, H, F, V } = this;
    const { B, T, training } = opts;
    const M = B * T;
    const flash = this.flash(prefixTokens, B, T);
    const scores = B * H * T * (prefixTokens + T);
    const out: PlannedBuffer[] = [
      { label: 'tokens', elements: M },
      { label: 'targets', elements: M },
      { label: 'lengths', elements: B },
    ];
    const residuals = training ? L + 1 : 2;
    for (let i = 0; i < residuals; i++) out.push({ label: `x${i}`, elements: M * C });
    // GELU's output, shared by the layers (whatever the method: mlpFused), so the plan holds for any
    out.push({ label: 'g', elements: M * F });
    const keep = training ? L : 1;
    const actsOn = opts.methodActsOn ?? (() => false);
    const shared = new Set<string>();
    for (let i = 0; i < keep; i++) {
      const per: [string, number][] = [
        ['ln1', M * C], ['mean1', M], ['rstd1', M], ['qkv', 3 * M * C], flash ? ['lse', B * H * T] : ['att', scores], ['ctx', M * C], ['x2', M * C],
        ['ln2', M * C], ['mean2', M], ['rstd2', M], ['fc', M * F],
      ];
      for (const [name, elements] of per) {
        const readers = LAYER_INPUT_READERS[name];
        if (!training || !readers || readers.some((m) => actsOn(`transformer.h.${i}.${m}`))) out.push({ label: `h${i}.${name}`, elements });
        else if (!shared.has(name)) {
          shared.add(name);
          out.push({ label: name, elements });
        }
      }
    }
    out.push({ label: 'lnf', elements: M * C }, { label: 'meanf', elements: M }, { label: 'rstdf', elements: M });
    if (training) out.push({ label: 'dres', elements: M * C }, { label: 'dln', elements: M * C });
    out.push(...headAndLossBuffers(this.gpu, M, this.lmHead, opts));
    const splitK = programSplitKElements(this.gpu, M, this.linearModules(), this.lmHead, opts);
    if (splitK > 0) out.push({ label: 'splitK', elements: splitK });
    if (training) {
      out.push({ label: 'dqkv', elements: 3 * M * C }, { label: 'dctx', elements: M * C }, { label: 'dg', elements: M * F });
      // delta: rowsum(dctx * ctx) per score row, for flash attention's backward and for the T x T
      // path's softmax backward fused into dP's product
      if (!flash) out.push({ label: 'dP', elements: scores });
      out.push({ label: 'delta', elements: B * H * T });
    }
    return out;
  }

  /** Bytes buildProgram(peft, opts) allocates on the GPU (Gpu.buffer's 16-byte rounding included). */
  estimateProgramBytes(opts: ProgramOptions, prefixTokens = 0): number {
    return plannedBytes(this.programBuffers(opts, prefixTokens));
  }

  /**
   * Whether the causal self-attention runs as flash attention (kernels/flash-attention.ts: no
   * T x T matrices kept) rather than as score, softmax and value products: tuning.flashAttention,
   * a head size the kernel takes on this device, and no prefix tuning (its always-visible rows
   * go through the products).
   */
  private flash(prefixTokens: number, B: number, T: number): boolean {
    // (dk and dv are column ranges of the one dqkv buffer: one binding)
    return prefixTokens === 0 && useFlashAttention(this.gpu, B, this.H, T) && flashAttentionSupported(this.gpu, this.D, { separateDkDv: false });
  }

  /** Every weight tensor on the GPU (the tied head once). */
  private weightTensors(): Tensor[] {
    const out: Tensor[] = this.wte.chunks.map((c) => c.tensor);
    if (this.lmHead !== this.wte) out.push(...this.lmHead.chunks.map((c) => c.tensor));
    out.push(this.wpe);
    for (const l of this.layers) out.push(l.ln1w, l.ln1b, l.attnW, l.attnB, l.projW, l.projB, l.ln2w, l.ln2b, l.fcW, l.fcB, l.mprojW, l.mprojB);
    out.push(this.lnfW, this.lnfB);
    return out;
  }

  /** GPU bytes the frozen weights take (0 once destroyed). */
  weightBytes(): number {
    if (this.destroyed) return 0;
    return this.weightTensors().reduce((s, t) => s + t.buffer.size, 0);
  }

  /** Frees the weights. Programs built from this model must be destroyed first and not run again. */
  destroy(): void {
    if (this.destroyed) return;
    this.destroyed = true;
    for (const t of this.weightTensors()) this.gpu.destroyTensor(t);
  }

  /** Ops copying rows `ids` of wte into dst (prompt tuning's initializations). */
  copyTokenEmbeddings(ids: readonly number[], dst: Tensor): void {
    copyTableRows(this.gpu, this.wte, ids, dst);
  }

  buildProgram(peft: PeftMethod | null, opts: ProgramOptions): Program {
    const { gpu, C, L, H, F } = this;
    const { B, training } = opts;
    // Prompt tuning runs nv virtual positions before each sequence (so T here counts them); prefix
    // tuning's P key/value rows take positions 0..P-1, the tokens' positions start at P.
    const nv = peft?.virtualTokens ?? 0, P = peft?.prefixTokens ?? 0;
    const T = opts.T + nv;
    if (T + P > this.dims.n_positions) {
      throw new ProgramError(`sequence length ${opts.T}${nv + P ? ` plus ${nv + P} virtual tokens` : ''} is longer than the model's n_positions (${this.dims.n_positions})`);
    }
    const M = B * T;
    const flash = this.flash(P, B, T);
    const pool = new TensorPool(gpu);
    // split-K scratch for this program's layers (site() hands it out while the program is built)
    const splitKElements = programSplitKElements(gpu, M, this.linearModules(), this.lmHead, opts);
    this.splitKScratch = splitKElements > 0 ? pool.t([splitKElements], 'splitK') : null;
    const t = pool.t.bind(pool);
    const tokens = t([M], 'tokens', 'u32');
    const targets = t([M], 'targets', 'i32');
    const lengths = t([B], 'lengths', 'u32');

    // Residual stream: x[l] is the input of layer l; x[L] feeds ln_f.
    // Without backward only the current layer's activations are needed, so they are shared.
    const keep = training ? L : 1;
    const xs = Array.from({ length: training ? L + 1 : 2 }, (_, i) => t([M, C], `x${i}`));
    const g = t([M, F], 'g');
    const xAt = (l: number): Tensor => (training ? xs[l] : xs[l % 2]);
    // a layer's input to products no method reads in backward: one buffer for every layer
    const actsOn = methodModules(peft, opts);
    const sharedInputs = new Map<string, Tensor>();
    const input = (i: number, name: string, shape: number[]): Tensor => {
      if (!training || LAYER_INPUT_READERS[name].some((m) => actsOn(`transformer.h.${i}.${m}`))) return t(shape, `h${i}.${name}`);
      let shared = sharedInputs.get(name);
      if (!shared) sharedInputs.set(name, (shared = t(shape, name)));
      return shared;
    };
    const acts: LayerActs[] = Array.from({ length: keep }, (_, i) => ({
      ln1: input(i, 'ln1', [M, C]), mean1: t([M], `h${i}.mean1`), rstd1: t([M], `h${i}.rstd1`),
      qkv: t([M, 3 * C], `h${i}.qkv`), ...(flash ? { att: null, lse: t([B * H * T], `h${i}.lse`) } : { att: t([B * H, T, P + T], `h${i}.att`), lse: null }),
      ctx: t([M, C], `h${i}.ctx`),
      x2: t([M, C], `h${i}.x2`),
      ln2: input(i, 'ln2', [M, C]), mean2: t([M], `h${i}.mean2`), rstd2: t([M], `h${i}.rstd2`),
      fc: t([M, F], `h${i}.fc`), g,
    }));
    const lnf = t([M, C], 'lnf'), meanf = t([M], 'meanf'), rstdf = t([M], 'rstdf');

    const forward: Op[] = [...(peft?.forwardStart?.() ?? []), ...embedTokens(gpu, this.wte, tokens, xs[0], M, T, this.wpe, P)];
    if (nv) forward.push(...peft!.embeddingForward!(xs[0], B, T));
    for (let l = 0; l < L; l++) forward.push(...this.layerForward(l, xAt(l), xAt(l + 1), acts[l % keep], lengths, peft, B, T, training));
    forward.push(layerNormForward(gpu, { x: xAt(L), weight: this.lnfW, bias: this.lnfB, out: lnf, mean: meanf, rstd: rstdf, rows: M, C, eps: this.dims.layer_norm_epsilon }));
    const dres = training ? t([M, C], 'dres') : null;
    const dln = training ? t([M, C], 'dln') : null;
    const head = lmHeadAndLoss(gpu, pool, {
      hidden: lnf, head: this.lmHead, targets, M, dHidden: dln, captureLogits: Boolean(opts.captureLogits), headRowsPerChunk: opts.headRowsPerChunk,
      logitsRows: nv ? { S: T, skip: nv } : undefined, splitKScratch: this.splitKScratch,
    });
    forward.push(...head.ops);

    const backward: Op[] = [];
    if (training) {
      backward.push(...(peft?.backwardStart?.() ?? []));
      backward.push(layerNormBackward(gpu, { dout: dln!, x: xAt(L), weight: this.lnfW, mean: meanf, rstd: rstdf, dx: dres!, rows: M, C, accumulate: false }));
      const lowest = peft ? this.lowestTrainableLayer(peft) : L;
      const scratch = {
        dres: dres!, dln: dln!,
        dqkv: t([M, 3 * C], 'dqkv'), dctx: t([M, C], 'dctx'), dg: t([M, F], 'dg'),
        dP: flash ? null : t([B * H, T, P + T], 'dP'), delta: t([B * H * T], 'delta'),
      };
      // the lowest layer's input gradient only matters to prompt tuning (its virtual rows)
      for (let l = L - 1; l >= lowest; l--) backward.push(...this.layerBackward(l, xAt(l), xAt(l + 1), acts[l], lengths, scratch, peft, B, T, l > lowest || nv > 0));
      // dres now holds dLoss/dx0: the virtual rows' gradient
      if (nv) backward.push(...peft!.embeddingBackward!(dres!, B, T));
      backward.push(...(peft?.backwardEnd?.() ?? []));
    }

    const V = this.V;
    const Tin = opts.T;
    this.splitKScratch = null;
    return {
      B, T: Tin, virtualTokens: nv, tokens, targets, lengths, gradScale: head.gradScale, losses: head.losses, lossSum: head.lossSum, logits: head.logits, forward, backward,
      write: (batch: BatchArrays) => writeBatch(gpu, { B, T: Tin, tokens, targets, lengths }, batch, V, nv),
      destroy: () => pool.destroy(),
    };
  }

  /** The KV cache generation needs: one row of n_embd keys (and values) per position and layer. */
  kvCacheShape(): KvCacheShape {
    return { layers: this.L, width: this.C, maxPositions: this.dims.n_positions, heads: this.H };
  }

  /**
   * Generation with a KV cache (src/engine/infer/kv-program.ts): opts.T new rows at positions
   * cache.state[0].. go through the layers as in layerForward, except that each layer appends the
   * rows' keys and values to the cache and attends over all cached rows; then the logits of the
   * last row. A prefill also runs the adapter's forwardStart, puts prefix tuning's rows into cache
   * rows 0..P-1 and prompt tuning's virtual rows before the tokens. Adapter dropout is off.
   */
  buildDecodeProgram(peft: PeftMethod | null, opts: DecodeProgramOptions): DecodeProgram {
    const { gpu, C, L, H, D, F } = this;
    const { cache, prefill } = opts;
    const nv = prefill ? (peft?.virtualTokens ?? 0) : 0;
    const T = opts.T + nv;
    checkKvCache(cache, this.kvCacheShape(), T);
    const pool = new TensorPool(gpu);
    const t = pool.t.bind(pool);
    const tokens = t([T], 'tokens', 'u32');
    const xs = [t([T, C], 'x0'), t([T, C], 'x1')];
    const scores = t([T * H, cache.capacity], 'scores');
    const a: LayerActs = {
      ln1: t([T, C], 'ln1'), mean1: t([T], 'mean1'), rstd1: t([T], 'rstd1'), qkv: t([T, 3 * C], 'qkv'),
      att: scores, lse: null, ctx: t([T, C], 'ctx'), x2: t([T, C], 'x2'),
      ln2: t([T, C], 'ln2'), mean2: t([T], 'mean2'), rstd2: t([T], 'rstd2'), fc: t([T, F], 'fc'), g: t([T, F], 'g'),
    };
    const lnf = t([T, C], 'lnf'), meanf = t([T], 'meanf'), rstdf = t([T], 'rstdf');
    const logits = t([this.V], 'logits');
    const state = cache.state;
    const forward: Op[] = [];
    if (prefill) {
      forward.push(...(peft?.forwardStart?.() ?? []));
      if (peft?.prefixTokens) for (let l = 0; l < L; l++) forward.push(...prefixIntoCache(peft.attentionPrefix!(l), cache, l));
    }
    forward.push(...embedTokens(gpu, this.wte, tokens, xs[0], T, T, null));
    forward.push(kvAddPositions(gpu, { state, x: xs[0], table: this.wpe, rows: T, C, positions: this.dims.n_positions }));
    if (nv) forward.push(...peft!.embeddingForward!(xs[0], 1, T));
    const eps = this.dims.layer_norm_epsilon;
    for (let l = 0; l < L; l++) {
      const x = xs[l % 2], xOut = xs[(l + 1) % 2];
      const w = this.layers[l];
      const p = `transformer.h.${l}.`;
      // (without a branch adapter, each norm also carries the residual stream on to the buffer
      // the block's output projection accumulates into)
      const attnBranch = branchSite(peft, l, 'attention', T, C, x, a.x2);
      const mlpBranch = branchSite(peft, l, 'output', T, C, a.x2, xOut);
      forward.push(layerNormForward(gpu, { x, weight: w.ln1w, bias: w.ln1b, out: a.ln1, mean: a.mean1, rstd: a.rstd1, rows: T, C, eps, copyTo: attnBranch ? undefined : a.x2 }));
      forward.push(...this.linear(this.site(false, `${p}attn.c_attn`, l, C, 3 * C, a.ln1, a.qkv, T), w.attnW, w.attnB, false, peft));
      const kv = { state, src: a.qkv, srcStride: 3 * C, rows: T, width: C, capacity: cache.capacity };
      forward.push(kvAppend(gpu, { ...kv, srcOffset: C, cache: cache.k[l] }), kvAppend(gpu, { ...kv, srcOffset: 2 * C, cache: cache.v[l] }));
      forward.push(kvAttention(gpu, {
        state, q: a.qkv, qStride: 3 * C, qOffset: 0, kCache: cache.k[l], vCache: cache.v[l], scores, out: a.ctx, outStride: C,
        rows: T, H, kvHeads: H, D, capacity: cache.capacity, scale: 1 / Math.sqrt(D),
      }));
      if (attnBranch) {
        forward.push(...this.linear(this.site(false, `${p}attn.c_proj`, l, C, C, a.ctx, attnBranch.branch, T), w.projW, w.projB, false, peft));
        forward.push(...peft!.branchForward!(attnBranch));
      } else {
        forward.push(...this.linear(this.site(false, `${p}attn.c_proj`, l, C, C, a.ctx, a.x2, T), w.projW, w.projB, true, peft));
      }
      forward.push(layerNormForward(gpu, { x: a.x2, weight: w.ln2w, bias: w.ln2b, out: a.ln2, mean: a.mean2, rstd: a.rstd2, rows: T, C, eps, copyTo: mlpBranch ? undefined : xOut }));
      forward.push(...this.linear(this.site(false, `${p}mlp.c_fc`, l, C, F, a.ln2, a.fc, T), w.fcW, w.fcB, false, peft));
      forward.push(geluForward(gpu, { x: a.fc, out: a.g, n: T * F }));
      if (mlpBranch) {
        forward.push(...this.linear(this.site(false, `${p}mlp.c_proj`, l, F, C, a.g, mlpBranch.branch, T), w.mprojW, w.mprojB, false, peft));
        forward.push(...peft!.branchForward!(mlpBranch));
      } else {
        forward.push(...this.linear(this.site(false, `${p}mlp.c_proj`, l, F, C, a.g, xOut, T), w.mprojW, w.mprojB, true, peft));
      }
    }
    forward.push(layerNormForward(gpu, { x: xs[L % 2], weight: this.lnfW, bias: this.lnfB, out: lnf, mean: meanf, rstd: rstdf, rows: T, C, eps }));
    forward.push(...lastRowLogits(gpu, lnf, T - 1, this.lmHead, logits));
    const V = this.V;
    return {
      T: opts.T, virtualTokens: nv, logits, forward,
      write: (ids: readonly number[]) => writeDecodeTokens(gpu, tokens, ids, opts.T, nv, V),
      destroy: () => pool.destroy(),
    };
  }

  private lowestTrainableLayer(peft: PeftMethod): number {
    // prompt tuning needs dLoss/dx0, prefix tuning the attention of every layer
    if (peft.virtualTokens || peft.prefixTokens) return 0;
    for (let l = 0; l < this.L; l++) {
      if (peft.targetsBranch?.(l, 'attention') || peft.targetsBranch?.(l, 'output')) return l;
      for (const m of this.linearModules().slice(l * 4, l * 4 + 4)) if (peft.targetsLinear(m.module)) return l;
    }
    return this.L;
  }

  /** The split-K scratch of the program being built (buildProgram), null otherwise. */
  private splitKScratch: Tensor | null = null;

  /** training: whether the program trains (adapter dropout on) or evaluates / generates (off). */
  private site(training: boolean, module: string, layer: number, inF: number, outF: number, x: Tensor, y: Tensor, rows: number): LinearSite {
    return { module, layer, inFeatures: inF, outFeatures: outF, rows, x, y, weightLayout: 'in_out', training, splitKScratch: this.splitKScratch };
  }

  private linear(site: LinearSite, W: Tensor, bias: Tensor, accumulate: boolean, peft: PeftMethod | null): Op[] {
    return linearForward(this.gpu, site, W, bias, accumulate, peft);
  }

  private linearBack(site: LinearSite, W: Tensor, bias: Tensor, dy: Tensor, dx: Tensor | null, peft: PeftMethod | null): Op[] {
    return linearBackward(this.gpu, site, W, dy, dx, false, peft, bias);
  }

  /**
   * Whether layer l's GELU is fused into mlp.c_proj (kernels/matmul.ts geluA in its forward,
   * geluGradOf in its dx): when nothing reads gelu(fc) itself, i.e. the method leaves mlp.c_proj
   * alone (LoRA, DoRA and IA3 there read its input, IA3's feedforward scaling included). A
   * bottleneck adapter on the 'output' branch reads c_proj's output and the residual, not g.
   * GPT-2's activations are all the tanh form (SUPPORTED_ACTIVATIONS), the one the kernels fuse.
   */
  private mlpFused(l: number, peft: PeftMethod | null): boolean {
    return !(peft?.targetsLinear(`transformer.h.${l}.mlp.c_proj`) ?? false);
  }

  /** Whether layer l's forward reads gelu(fc) inside mlp.c_proj (the prologue; tuning.geluPrologue) rather than through the GELU kernel into g. */
  private geluInProjection(l: number, peft: PeftMethod | null): boolean {
    return this.gpu.tuning.geluPrologue && this.mlpFused(l, peft);
  }

  /** mlp.c_proj's forward, y (+)= gelu(fc) W + b: straight from a.fc when fused, else from a.g through the method's hooks. */
  private mlpProjForward(training: boolean, l: number, a: LayerActs, y: Tensor, rows: number, accumulate: boolean, peft: PeftMethod | null): Op[] {
    const { C, F } = this;
    const w = this.layers[l];
    const module = `transformer.h.${l}.mlp.c_proj`;
    if (!this.geluInProjection(l, peft)) return this.linear(this.site(training, module, l, F, C, a.g, y, rows), w.mprojW, w.mprojB, accumulate, peft);
    const site = this.site(training, module, l, F, C, a.fc, y, rows);
    return frozenProduct(this.gpu, site, { label: module, a: a.fc, b: w.mprojW, c: y, bias: w.mprojB, M: rows, N: C, K: F, accumulate, geluA: 'tanh', tensorCores: 'values' });
  }

  private layerForward(l: number, x: Tensor, xOut: Tensor, a: LayerActs, lengths: Tensor, peft: PeftMethod | null, B: number, T: number, training: boolean): Op[] {
    const { gpu, C, F } = this;
    const M = B * T;
    const w = this.layers[l];
    const p = `transformer.h.${l}.`;
    const eps = this.dims.layer_norm_epsilon;
    const ops: Op[] = [];
    // (a bottleneck adapter on a branch: the projection's output goes to its own tensor, the adapter
    // combines; without one, each norm also carries the residual stream on to the buffer the
    // block's output projection accumulates into)
    const attnBranch = branchSite(peft, l, 'attention', M, C, x, a.x2);
    const mlpBranch = branchSite(peft, l, 'output', M, C, a.x2, xOut);
    // attention block: x2 = x + c_proj(attn(c_attn(ln_1(x))))
    ops.push(layerNormForward(gpu, { x, weight: w.ln1w, bias: w.ln1b, out: a.ln1, mean: a.mean1, rstd: a.rstd1, rows: M, C, eps, copyTo: attnBranch ? undefined : a.x2 }));
    ops.push(...this.linear(this.site(training, `${p}attn.c_attn`, l, C, 3 * C, a.ln1, a.qkv, M), w.attnW, w.attnB, false, peft));
    // Prefix tuning: each score row is [P prefix keys | T keys] (Tk columns), the prefix keys and
    // values read from the method's [P, ld] tensor, shared by the whole batch.
    const pre = peft?.prefixTokens ? peft.attentionPrefix!(l) : null;
    const P = pre?.tokens ?? 0, Tk = P + T;
    if (a.lse) {
      // flash attention: q, k, v read from the packed qkv rows, the context written straight to ctx
      ops.push(...flashAttentionForward(gpu, {
        ...this.attentionShape(B, T, lengths, a.qkv), out: a.ctx, ldo: C, lse: a.lse,
      }));
    } else {
      ops.push(...this.attentionForward(a.att!, a, lengths, pre, B, T, P, Tk, p));
    }
    if (attnBranch) {
      ops.push(...this.linear(this.site(training, `${p}attn.c_proj`, l, C, C, a.ctx, attnBranch.branch, M), w.projW, w.projB, false, peft));
      ops.push(...peft!.branchForward!(attnBranch));
    } else {
      ops.push(...this.linear(this.site(training, `${p}attn.c_proj`, l, C, C, a.ctx, a.x2, M), w.projW, w.projB, true, peft));
    }
    // MLP block: xOut = x2 + c_proj(gelu(c_fc(ln_2(x2))))
    ops.push(layerNormForward(gpu, { x: a.x2, weight: w.ln2w, bias: w.ln2b, out: a.ln2, mean: a.mean2, rstd: a.rstd2, rows: M, C, eps, copyTo: mlpBranch ? undefined : xOut }));
    ops.push(...this.linear(this.site(training, `${p}mlp.c_fc`, l, C, F, a.ln2, a.fc, M), w.fcW, w.fcB, false, peft));
    if (!this.geluInProjection(l, peft)) ops.push(geluForward(gpu, { x: a.fc, out: a.g, n: M * F }));
    if (mlpBranch) {
      ops.push(...this.mlpProjForward(training, l, a, mlpBranch.branch, M, false, peft));
      ops.push(...peft!.branchForward!(mlpBranch));
    } else {
      ops.push(...this.mlpProjForward(training, l, a, xOut, M, true, peft));
    }
    return ops;
  }

  /** The T x T path of layerForward's attention: scores, masked softmax and P V (prefix rows first when P > 0). */
  private attentionForward(att: Tensor, a: LayerActs, lengths: Tensor, pre: AttentionPrefix | null, B: number, T: number, P: number, Tk: number, p: string): Op[] {
    const { gpu, C, H, D } = this;
    const qkvBatch = { outer: B, inner: H };
    const ops: Op[] = [];
    if (pre) {
      ops.push(matmul(gpu, {
        label: `${p}attn.prefix_scores`, a: a.qkv, lda: 3 * C, b: pre.value, offsetB: pre.keyOffset, ldb: pre.ld, transB: true, c: att, ldc: Tk, M: T, N: P, K: D,
        batch: { ...qkvBatch, strideA: [T * 3 * C, D], strideB: [0, D], strideC: [H * T * Tk, T * Tk] },
      }));
    }
    // scores = Q K^T per (batch, head), read straight out of the packed qkv rows. Causal: the
    // products skip the masked half (kernels/matmul.ts triangle): scores only below the diagonal
    // (tiles wholly above it stay stale; the softmax never reads them and writes P = 0 there),
    // P V only over the keys up to each row tile's last query
    ops.push(matmul(gpu, {
      label: `${p}attn.scores`, triangle: 'lowerC', a: a.qkv, lda: 3 * C, b: a.qkv, offsetB: C, ldb: 3 * C, transB: true, c: att, offsetC: P, ldc: Tk, M: T, N: T, K: D,
      batch: { ...qkvBatch, strideA: [T * 3 * C, D], strideB: [T * 3 * C, D], strideC: [H * T * Tk, T * Tk] },
    }));
    if (pre) ops.push(attentionPrefixSoftmaxForward(gpu, { scores: att, probs: att, lengths, B, H, T, P, scale: 1 / Math.sqrt(D), causal: true }));
    else ops.push(attentionSoftmaxForward(gpu, { scores: att, probs: att, lengths, B, H, T, scale: 1 / Math.sqrt(D), causal: true }));
    if (pre) {
      ops.push(matmul(gpu, {
        label: `${p}attn.prefix_pv`, a: att, lda: Tk, b: pre.value, offsetB: pre.valueOffset, ldb: pre.ld, c: a.ctx, ldc: C, M: T, N: D, K: P,
        batch: { ...qkvBatch, strideA: [H * T * Tk, T * Tk], strideB: [0, D], strideC: [T * C, D] },
      }));
    }
    ops.push(matmul(gpu, {
      label: `${p}attn.pv`, triangle: 'lowerA', a: att, offsetA: P, lda: Tk, b: a.qkv, offsetB: 2 * C, ldb: 3 * C, c: a.ctx, ldc: C, M: T, N: D, K: T, accumulate: P > 0,
      batch: { ...qkvBatch, strideA: [H * T * Tk, T * Tk], strideB: [T * 3 * C, D], strideC: [T * C, D] },
    }));
    return ops;
  }

  /** The shape flash attention sees: causal over the packed qkv rows (q, k, v at columns 0, C, 2C of each row). */
  private attentionShape(B: number, T: number, lengths: Tensor, qkv: Tensor): FlashAttentionShape {
    const { C, H, D } = this;
    return {
      B, T, H, kvHeads: H, D, scale: 1 / Math.sqrt(D), causal: true, lengths,
      q: qkv, offsetQ: 0, ldq: 3 * C, k: qkv, offsetK: C, ldk: 3 * C, v: qkv, offsetV: 2 * C, ldv: 3 * C,
    };
  }

  /**
   * On entry s.dres holds dLoss/d(output of layer l); on exit dLoss/d(input of layer l), when
   * inputGrad (otherwise only the adapter's gradients are made: c_attn's dx and ln_1's backward
   * are skipped). The mirror image of layerForward, bottom to top read upwards.
   */
  private layerBackward(
    l: number, x: Tensor, xOut: Tensor, a: LayerActs, lengths: Tensor,
    s: BackwardScratch,
    peft: PeftMethod | null, B: number, T: number, inputGrad: boolean,
  ): Op[] {
    const { gpu, C, F } = this;
    const M = B * T;
    const w = this.layers[l];
    const p = `transformer.h.${l}.`;
    const ops: Op[] = [];
    // MLP block (the residual passes dres through unchanged, unless a bottleneck adapter combines them)
    const mlpBranch = branchSite(peft, l, 'output', M, C, a.x2, xOut);
    let dy = s.dres;
    if (mlpBranch) {
      const r = peft!.branchBackward!(mlpBranch, s.dres);
      ops.push(...r.ops);
      dy = r.dBranch;
    }
    if (this.mlpFused(l, peft)) {
      // d(fc) = (dy W^T) * gelu'(fc) in the one product (its epilogue): linearBackward's frozen
      // product, which is all of it for a site the method does not target
      const site = this.site(true, `${p}mlp.c_proj`, l, F, C, a.fc, mlpBranch?.branch ?? xOut, M);
      ops.push(...frozenProduct(this.gpu, site, { label: `${site.module}.dx`, a: dy, b: w.mprojW, transB: true, c: s.dg, M, N: F, K: C, geluGradOf: { pre: a.fc }, tensorCores: 'gradients' }));
    } else {
      // the shared g holds the last layer's: this layer's again, for the method's gradients
      ops.push(geluForward(gpu, { x: a.fc, out: a.g, n: M * F }));
      ops.push(...this.linearBack(this.site(true, `${p}mlp.c_proj`, l, F, C, a.g, mlpBranch?.branch ?? xOut, M), w.mprojW, w.mprojB, dy, s.dg, peft));
      ops.push(geluBackward(gpu, { dout: s.dg, x: a.fc, dx: s.dg, n: M * F }));
    }
    ops.push(...this.linearBack(this.site(true, `${p}mlp.c_fc`, l, C, F, a.ln2, a.fc, M), w.fcW, w.fcB, s.dg, s.dln, peft));
    ops.push(layerNormBackward(gpu, { dout: s.dln, x: a.x2, weight: w.ln2w, mean: a.mean2, rstd: a.rstd2, dx: s.dres, rows: M, C, accumulate: true }));
    // attention block
    const attnBranch = branchSite(peft, l, 'attention', M, C, x, a.x2);
    dy = s.dres;
    if (attnBranch) {
      const r = peft!.branchBackward!(attnBranch, s.dres);
      ops.push(...r.ops);
      dy = r.dBranch;
    }
    ops.push(...this.linearBack(this.site(true, `${p}attn.c_proj`, l, C, C, a.ctx, attnBranch?.branch ?? a.x2, M), w.projW, w.projB, dy, s.dctx, peft));
    if (a.lse) {
      // flash attention: the scores and probabilities again from q, k and the saved log-sum-exp;
      // dq, dk, dv straight into their columns of dqkv
      ops.push(...flashAttentionBackward(gpu, {
        ...this.attentionShape(B, T, lengths, a.qkv), out: a.ctx, ldo: C, lse: a.lse, dout: s.dctx, lddo: C, delta: s.delta,
        dq: s.dqkv, offsetDQ: 0, lddq: 3 * C, dk: s.dqkv, offsetDK: C, lddk: 3 * C, dv: s.dqkv, offsetDV: 2 * C, lddv: 3 * C,
      }));
    } else {
      ops.push(...this.attentionBackward(a.att!, s.dP!, a, s, peft?.prefixTokens ? peft.attentionPrefix!(l) : null, B, T, p));
    }
    ops.push(...this.linearBack(this.site(true, `${p}attn.c_attn`, l, C, 3 * C, a.ln1, a.qkv, M), w.attnW, w.attnB, s.dqkv, inputGrad ? s.dln : null, peft));
    if (inputGrad) ops.push(layerNormBackward(gpu, { dout: s.dln, x, weight: w.ln1w, mean: a.mean1, rstd: a.rstd1, dx: s.dres, rows: M, C, accumulate: true }));
    return ops;
  }

  /** The T x T path of layerBackward's attention (the mirror of attentionForward): dq, dk, dv into s.dqkv, the prefix rows' gradients into the method's. */
  private attentionBackward(att: Tensor, dP: Tensor, a: LayerActs, s: BackwardScratch, pre: AttentionPrefix | null, B: number, T: number, p: string): Op[] {
    const { gpu, C, H, D } = this;
    const qkvBatch = { outer: B, inner: H };
    const ops: Op[] = [];
    // prefix tuning: score rows are [P prefix keys | T keys]; the prefix gradients are summed over
    // the batch one sequence at a time (a batched accumulate into shared rows would race)
    const P = pre?.tokens ?? 0, Tk = P + T;
    // dP = dctx V^T ; dV = P^T dctx (causal halves skipped as in the forward). With prefix rows
    // dP's tiles above the diagonal stay stale: the causal softmax backward neither reads them nor
    // leaves them nonzero. Without, the softmax backward is dP's epilogue (matmul softmaxGradOf):
    // dS = scale * P * (dP - delta), delta = rowsum(dctx * ctx) = rowsum(P * dP), and the tiles
    // above the diagonal are written 0.
    if (pre) {
      ops.push(matmul(gpu, {
        label: `${p}attn.prefix_dP`, a: s.dctx, lda: C, b: pre.value, offsetB: pre.valueOffset, ldb: pre.ld, transB: true, c: dP, ldc: Tk, M: T, N: P, K: D,
        batch: { ...qkvBatch, strideA: [T * C, D], strideB: [0, D], strideC: [H * T * Tk, T * Tk] },
      }));
    }
    const scale = 1 / Math.sqrt(D);
    if (!pre) ops.push(attentionRowDelta(gpu, { B, T, H, D, out: a.ctx, ldo: C, dout: s.dctx, lddo: C, delta: s.delta }));
    ops.push(matmul(gpu, {
      label: `${p}attn.dP`, triangle: 'lowerC', a: s.dctx, lda: C, b: a.qkv, offsetB: 2 * C, ldb: 3 * C, transB: true, c: dP, offsetC: P, ldc: Tk, M: T, N: T, K: D,
      batch: { ...qkvBatch, strideA: [T * C, D], strideB: [T * 3 * C, D], strideC: [H * T * Tk, T * Tk] },
      ...(pre ? {} : { alpha: scale, softmaxGradOf: { probs: att, rowTerms: s.delta } }),
    }));
    ops.push(matmul(gpu, {
      label: `${p}attn.dV`, triangle: 'upperA', a: att, offsetA: P, lda: Tk, transA: true, b: s.dctx, ldb: C, c: s.dqkv, offsetC: 2 * C, ldc: 3 * C, M: T, N: D, K: T,
      batch: { ...qkvBatch, strideA: [H * T * Tk, T * Tk], strideB: [T * C, D], strideC: [T * 3 * C, D] },
    }));
    if (pre) {
      for (let b = 0; b < B; b++) {
        ops.push(matmul(gpu, {
          label: `${p}attn.prefix_dV`, a: att, offsetA: b * H * T * Tk, lda: Tk, transA: true, b: s.dctx, offsetB: b * T * C, ldb: C,
          c: pre.grad, offsetC: pre.valueOffset, ldc: pre.ld, M: P, N: D, K: T, accumulate: true,
          batch: { outer: 1, inner: H, strideA: [0, T * Tk], strideB: [0, D], strideC: [0, D] },
        }));
      }
      ops.push(attentionPrefixSoftmaxBackward(gpu, { dprobs: dP, probs: att, dscores: dP, B, H, T, P, scale, causal: true }));
    }
    // dQ = dS K ; dK = dS^T Q
    ops.push(matmul(gpu, {
      label: `${p}attn.dQ`, triangle: 'lowerA', a: dP, offsetA: P, lda: Tk, b: a.qkv, offsetB: C, ldb: 3 * C, c: s.dqkv, ldc: 3 * C, M: T, N: D, K: T,
      batch: { ...qkvBatch, strideA: [H * T * Tk, T * Tk], strideB: [T * 3 * C, D], strideC: [T * 3 * C, D] },
    }));
    ops.push(matmul(gpu, {
      label: `${p}attn.dK`, triangle: 'upperA', a: dP, offsetA: P, lda: Tk, transA: true, b: a.qkv, ldb: 3 * C, c: s.dqkv, offsetC: C, ldc: 3 * C, M: T, N: D, K: T,
      batch: { ...qkvBatch, strideA: [H * T * Tk, T * Tk], strideB: [T * 3 * C, D], strideC: [T * 3 * C, D] },
    }));
    if (pre) {
      ops.push(matmul(gpu, {
        label: `${p}attn.prefix_dQ`, a: dP, lda: Tk, b: pre.value, offsetB: pre.keyOffset, ldb: pre.ld, c: s.dqkv, ldc: 3 * C, M: T, N: D, K: P, accumulate: true,
        batch: { ...qkvBatch, strideA: [H * T * Tk, T * Tk], strideB: [0, D], strideC: [T * 3 * C, D] },
      }));
      for (let b = 0; b < B; b++) {
        ops.push(matmul(gpu, {
          label: `${p}attn.prefix_dK`, a: dP, offsetA: b * H * T * Tk, lda: Tk, transA: true, b: a.qkv, offsetB: b * T * 3 * C, ldb: 3 * C,
          c: pre.grad, offsetC: pre.keyOffset, ldc: pre.ld, M: P, N: D, K: T, accumulate: true,
          batch: { outer: 1, inner: H, strideA: [0, T * Tk], strideB: [0, D], strideC: [0, D] },
        }));
      }
    }
    return ops;
  }
}
