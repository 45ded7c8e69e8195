// The Llama family on WebGPU (Llama, SmolLM2, TinyLlama, Mistral, Qwen2/2.5, Qwen3): RMSNorm,
// rotary embeddings, grouped-query attention, SwiGLU MLP, tied or untied head; Qwen2's q/k/v
// biases; Qwen3's per-head q/k RMSNorm. Forward and the backward adapter gradients need, one
// layer's two halves side by side (layerForward / layerBackward).
//
// Shapes: M = B*T rows, C = hidden_size, H query heads and KV key/value heads of D = head_dim,
// G = H / KV query heads per KV head, I = intermediate_size. nn.Linear stores W as [out, in].

import type { Gpu } from '../gpu/gpu';
import type { Op } from '../gpu/dispatch';
import { Tensor } from '../gpu/tensor';
import { ARENA_ALIGN } from '../gpu/arena';
import { matmul, matmulWithScratch } from '../kernels/matmul';
import { rmsNormBackward, rmsNormForward } from '../kernels/rmsnorm';
import { ropeBackward, ropeForward } from '../kernels/rope';
import { swigluBackward, swigluForward } from '../kernels/swiglu';
import { attentionSoftmaxForward } from '../kernels/attention-softmax';
import { attentionPrefixSoftmaxBackward, attentionPrefixSoftmaxForward } from '../kernels/attention-prefix-softmax';
import { attentionRowDelta, flashAttentionBackward, flashAttentionForward, flashAttentionScratchElements, flashAttentionSupported, groupedHeadSum, useFlashAttention, type FlashAttentionShape } from '../kernels/flash-attention';
import type { LinearModuleInfo } from '../peft/lora';
import type { AttentionPrefix, LinearSite, PeftMethod } from '../peft/method';
import type { LlamaConfig } from '../../io/hf-config';
import { TensorPool, adapterBackward, adapterForward, branchSite, copyTableRows, embedTokens, linearBackward, linearForward, lmHeadAndLoss } from './common';
import { ropeTables } from './rope-tables';
import { WeightLoader, type FrozenStorage, type RowChunks, type WeightSource } from './weights';
import { ProgramError, headAndLossBuffers, methodModules, methodTakesColumnSlices, programSplitKElements, plannedBytes, writeBatch, type BatchArrays, type PlannedBuffer, type Program, type ProgramOptions } from './program';
import { kvAppend, kvRope } from '../kernels/kv-cache';
import { kvAttention } from '../kernels/kv-attention';
import { checkKvCache, lastRowLogits, prefixIntoCache, writeDecodeTokens, type DecodeProgram, type DecodeProgramOptions, type KvCacheShape } from '../infer/kv-program';

interface LayerWeights {
  inNorm: Tensor; postNorm: Tensor;
  q: Tensor; k: Tensor; v: Tensor; o: Tensor;
  qBias: Tensor | null; kBias: Tensor | null; vBias: Tensor | null; oBias: Tensor | null;
  qNorm: Tensor | null; kNorm: Tensor | null;
  gate: Tensor; up: Tensor; down: Tensor;
  gateBias: Tensor | null; upBias: Tensor | null; downBias: Tensor | null;
  /**
   * [2I, C]: gate_proj's rows then up_proj's, one buffer (gate and up are views of it), so that a
   * program can run both as one product (Llama.fusesGateUp); null where they are separate (MLP
   * biases, or I * C not a multiple of 64 elements: up's view must start on a 256-byte boundary).
   */
  gateUp: Tensor | null;
  /**
   * [(H + 2 KV) D, C]: q_proj's rows, then k_proj's, then v_proj's, one buffer (q, k and v are views
   * of it), so that a program can run the three as one product (Llama.fusesQkv); null where they are
   * separate (the views would not start on 256-byte boundaries).
   */
  qkv: Tensor | null;
  /** [(H + 2 KV) D]: the three biases end to end (a copy; qBias, kBias, vBias stay) where qkv is stacked and the model has them. */
  qkvBias: Tensor | null;
}

/**
 * Where a program keeps q, k and v (LayerActs; their gradients in Scratch laid out alike): three
 * dense tensors (ldq = H D, ldkv = KV D, offsets 0), or, where q_proj, k_proj and v_proj run as one
 * product (Llama.fusesQkv), columns [0, H D), [H D, (H + KV) D) and [(H + KV) D, (H + 2 KV) D) of one
 * [M, (H + 2 KV) D] tensor (LayerActs.q, k and v are then that tensor).
 */
interface QkvLayout {
  fused: boolean;
  ldq: number; ldkv: number;
  offQ: number; offK: number; offV: number;
}

interface LayerActs {
  xn: Tensor; rstd1: Tensor; // input RMSNorm
  qPre: Tensor | null; rstdQ: Tensor | null; kPre: Tensor | null; rstdK: Tensor | null; // Qwen3 q/k norm inputs
  q: Tensor; k: Tensor; v: Tensor; // q, k after RoPE (one tensor where QkvLayout.fused)
  /** [B*H, T, P+T] probabilities; null with flash attention (Llama.flash) */
  att: Tensor | null;
  /** [B*H*T] each score row's log-sum-exp, for flash attention's backward; null without it */
  lse: Tensor | null;
  ctx: Tensor; // [M, H*D]
  x2: Tensor;
  xn2: Tensor; rstd2: Tensor;
  gate: Tensor; up: Tensor; h: Tensor; // [M, I]
  /** [M, 2I] gate's columns then up's when the program runs them as one product (gate and up are then this tensor), else null */
  gu: Tensor | null;
}

const SUPPORTED_ACT = new Set(['silu', 'swish']);

/**
 * The layer activations that are only the input of linear modules (names within a layer): a
 * training program keeps them per layer only where a method acts on one of those modules (its
 * gradients read x; the frozen products' backward needs W alone). The attention output (ctx) is
 * not among them: the softmax backward's row terms read it.
 */
const LAYER_INPUT_READERS: Readonly<Record<string, readonly string[]>> = {
  xn: ['self_attn.q_proj', 'self_attn.k_proj', 'self_attn.v_proj'],
  xn2: ['mlp.gate_proj', 'mlp.up_proj'],
  h: ['mlp.down_proj'],
};

export class Llama {
  readonly C: number;
  readonly L: number;
  readonly H: number;
  readonly KV: number;
  readonly D: number;
  readonly I: number;
  readonly V: number;
  /** cos/sin tables for positions [0, maxPositions); grown when a program needs longer sequences. */
  private rope: { cos: Tensor; sin: Tensor; rotaryDim: number; maxPositions: number };
  /** Every cos/sin table made (older ones stay alive while programs built before bind them); freed by destroy(). */
  private readonly ropeTensors: Tensor[] = [];
  private destroyed = false;

  private constructor(
    private readonly gpu: Gpu,
    readonly config: LlamaConfig,
    private readonly embed: RowChunks,
    private readonly lmHead: RowChunks,
    private readonly layers: LayerWeights[],
    private readonly finalNorm: Tensor,
  ) {
    const c = config;
    this.C = c.hidden_size;
    this.L = c.num_hidden_layers;
    this.H = c.num_attention_heads;
    this.KV = c.num_key_value_heads;
    this.D = c.head_dim;
    this.I = c.intermediate_size;
    this.V = c.vocab_size;
    this.rope = this.makeRope(Math.min(c.max_position_embeddings, 4096));
  }

  private makeRope(maxPositions: number): Llama['rope'] {
    const c = this.config;
    const tables = ropeTables({
      headDim: this.D, ropeTheta: c.rope_theta, ropeScaling: c.rope_scaling, maxPositions,
      maxPositionEmbeddings: c.max_position_embeddings, partialRotaryFactor: (c.raw.partial_rotary_factor as number | undefined) ?? 1,
    });
    const cos = this.gpu.tensorFrom(tables.cos, [tables.cos.length], 'rope.cos');
    const sin = this.gpu.tensorFrom(tables.sin, [tables.sin.length], 'rope.sin');
    this.ropeTensors.push(cos, sin);
    return { cos, sin, rotaryDim: tables.rotaryDim, maxPositions };
  }

  static load(gpu: Gpu, c: LlamaConfig, src: WeightSource, where: string, opts: { maxChunkBytes?: number; frozen?: FrozenStorage } = {}): Llama {
    const C = c.hidden_size, H = c.num_attention_heads, KV = c.num_key_value_heads, D = c.head_dim, I = c.intermediate_size, V = c.vocab_size;
    if (H % KV !== 0) throw new ProgramError(`${where}: num_attention_heads ${H} is not a multiple of num_key_value_heads ${KV}`);
    if (!SUPPORTED_ACT.has(c.hidden_act)) throw new ProgramError(`${where}: hidden_act "${c.hidden_act}" is not supported (Llama models use silu)`);
    if (c.sliding_window !== null) throw new ProgramError(`${where}: sliding-window attention is not supported yet`);
    const w = new WeightLoader(gpu, src, [], where, opts.frozen);
    // frozen matrices: the linear layers' weights, the vocabulary table and an untied head (f16 on request)
    const dt = w.frozen;
    // a view starts on a 256-byte boundary (the binding offset's alignment): ARENA_ALIGN f32s, twice as many halves
    const align = dt === 'f16' ? 2 * ARENA_ALIGN : ARENA_ALIGN;
    const chunk = Math.min(opts.maxChunkBytes ?? Infinity, gpu.maxBindingBytes);
    const embed = w.loadRowChunks('model.embed_tokens.weight', V, C, chunk);
    const untied = !c.tie_word_embeddings && w.has('lm_head.weight');
    if (!c.tie_word_embeddings && !untied) throw new ProgramError(`${where}: config.json says the head is not tied but lm_head.weight is missing`);
    const lmHead = untied ? w.loadRowChunks('lm_head.weight', V, C, chunk) : embed;
    const opt = (name: string, shape: number[], present: boolean): Tensor | null => (present ? w.load(name, shape) : null);
    // gate_proj and up_proj stacked in one buffer where the stack can be one product's operand
    const stack = !c.mlp_bias && (I * C) % align === 0;
    const gateUp = (p: string): Pick<LayerWeights, 'gate' | 'up' | 'gateUp'> => {
      const [g, u] = [`${p}mlp.gate_proj.weight`, `${p}mlp.up_proj.weight`];
      if (!stack) return { gate: w.loadFrozen(g, [I, C]), up: w.loadFrozen(u, [I, C]), gateUp: null };
      const whole = gpu.tensor([2 * I, C], `${p}mlp.gate_up_proj.weight`, dt);
      const gate = new Tensor(whole.buffer, [I, C], g, dt, 0, true), up = new Tensor(whole.buffer, [I, C], u, dt, I * C, true);
      w.loadInto(g, [I, C], gate);
      w.loadInto(u, [I, C], up);
      return { gate, up, gateUp: whole };
    };
    // q_proj, k_proj and v_proj stacked likewise where k's and v's views start on 256-byte boundaries
    const stackQkv = (H * D * C) % align === 0 && (KV * D * C) % align === 0;
    const W = (H + 2 * KV) * D;
    const qkv = (p: string): Pick<LayerWeights, 'q' | 'k' | 'v' | 'qkv'> => {
      const [q, k, v] = [`${p}self_attn.q_proj.weight`, `${p}self_attn.k_proj.weight`, `${p}self_attn.v_proj.weight`];
      if (!stackQkv) return { q: w.loadFrozen(q, [H * D, C]), k: w.loadFrozen(k, [KV * D, C]), v: w.loadFrozen(v, [KV * D, C]), qkv: null };
      const whole = gpu.tensor([W, C], `${p}self_attn.qkv_proj.weight`, dt);
      const views = {
        q: new Tensor(whole.buffer, [H * D, C], q, dt, 0, true),
        k: new Tensor(whole.buffer, [KV * D, C], k, dt, H * D * C, true),
        v: new Tensor(whole.buffer, [KV * D, C], v, dt, (H + KV) * D * C, true),
      };
      w.loadInto(q, [H * D, C], views.q);
      w.loadInto(k, [KV * D, C], views.k);
      w.loadInto(v, [KV * D, C], views.v);
      return { ...views, qkv: whole };
    };
    const layers: LayerWeights[] = [];
    for (let i = 0; i < c.num_hidden_layers; i++) {
      const p = `model.layers.${i}.`;
      const hasQkvBias = c.attention_bias;
      const qkvWeights = qkv(p);
      const qBias = opt(`${p}self_attn.q_proj.bias`, [H * D], hasQkvBias), kBias = opt(`${p}self_attn.k_proj.bias`, [KV * D], hasQkvBias);
      const vBias = opt(`${p}self_attn.v_proj.bias`, [KV * D], hasQkvBias);
      const qkvBias = qkvWeights.qkv && qBias && kBias && vBias
        ? w.loadStacked([[`${p}self_attn.q_proj.bias`, [H * D]], [`${p}self_attn.k_proj.bias`, [KV * D]], [`${p}self_attn.v_proj.bias`, [KV * D]]], `${p}self_attn.qkv_proj.bias`)
        : null;
      layers.push({
        inNorm: w.load(`${p}input_layernorm.weight`, [C]), postNorm: w.load(`${p}post_attention_layernorm.weight`, [C]),
        ...qkvWeights, qkvBias, o: w.loadFrozen(`${p}self_attn.o_proj.weight`, [C, H * D]),
        qBias, kBias, vBias, oBias: opt(`${p}self_attn.o_proj.bias`, [C], c.attention_output_bias),
        qNorm: opt(`${p}self_attn.q_norm.weight`, [D], c.qk_norm), kNorm: opt(`${p}self_attn.k_norm.weight`, [D], c.qk_norm),
        ...gateUp(p),
        down: w.loadFrozen(`${p}mlp.down_proj.weight`, [C, I]),
        gateBias: opt(`${p}mlp.gate_proj.bias`, [I], c.mlp_bias), upBias: opt(`${p}mlp.up_proj.bias`, [I], c.mlp_bias), downBias: opt(`${p}mlp.down_proj.bias`, [C], c.mlp_bias),
      });
    }
    return new Llama(gpu, c, embed, lmHead, layers, w.load('model.norm.weight', [C]));
  }

  linearModules(): LinearModuleInfo[] {
    const { C, H, KV, D, I } = this;
    const out: LinearModuleInfo[] = [];
    for (let i = 0; i < this.L; i++) {
      const a = `model.layers.${i}.self_attn.`, m = `model.layers.${i}.mlp.`;
      const w = this.layers[i];
      const lin = (module: string, inFeatures: number, outFeatures: number, weight: Tensor): void => void out.push({ module, inFeatures, outFeatures, weightLayout: 'out_in', weight });
      lin(`${a}q_proj`, C, H * D, w.q); lin(`${a}k_proj`, C, KV * D, w.k); lin(`${a}v_proj`, C, KV * D, w.v); lin(`${a}o_proj`, H * D, C, w.o);
      lin(`${m}gate_proj`, C, I, w.gate); lin(`${m}up_proj`, C, I, w.up); lin(`${m}down_proj`, I, C, w.down);
    }
    return out;
  }

  parameterCount(): number {
    const { C, H, KV, D, I, V, L } = this;
    const c = this.config;
    const attn = C * H * D + 2 * C * KV * D + H * D * C + (c.attention_bias ? H * D + 2 * KV * D : 0) + (c.attention_output_bias ? C : 0) + (c.qk_norm ? 2 * D : 0);
    const mlp = 3 * C * I + (c.mlp_bias ? 2 * I + C : 0);
    return V * C + L * (attn + mlp + 2 * C) + C + (this.lmHead === this.embed ? 0 : V * C);
  }

  /**
   * Every buffer buildProgram allocates for these options, in the order it allocates them: the
   * longer rotary tables first when T is past the current ones (those stay with the model), then
   * the program's own. The adapter's scratch is the adapter's (see Lora). Keep in step with
   * buildProgram: test/memory-estimate.test.ts checks the two allocate the same bytes.
   */
  programBuffers(opts: ProgramOptions, prefixTokens = 0): PlannedBuffer[] {
    const { C, L, H, KV, D, I, V } = this;
    const { B, T, training } = opts;
    const M = B * T;
    const flash = this.flash(prefixTokens, B, T);
    const scores = B * H * T * (prefixTokens + T);
    const qk = this.config.qk_norm;
    const out: PlannedBuffer[] = [];
    if (T > this.rope.maxPositions) {
      const half = (this.config.max_position_embeddings * this.rope.rotaryDim) / 2;
      out.push({ label: 'rope.cos', elements: half }, { label: 'rope.sin', elements: half });
    }
    out.push({ label: 'tokens', elements: M }, { label: 'targets', elements: M }, { label: 'lengths', elements: B });
    const residuals = training ? L + 1 : 2;
    for (let i = 0; i < residuals; i++) out.push({ label: `x${i}`, elements: M * C });
    const keep = training ? L : 1;
    const actsOn = opts.methodActsOn ?? (() => false);
    const fused = this.fusesGateUp(actsOn, M);
    const lay = this.qkvLayout(this.fusesQkv(actsOn, methodTakesColumnSlices(null, opts), M));
    const W = this.qkvWidth;
    const shared = new Set<string>();
    for (let i = 0; i < keep; i++) {
      const per: [string, number, boolean][] = [
        ['xn', M * C, true], ['rstd1', M, true],
        ['qPre', M * H * D, qk], ['rstdQ', M * H, qk], ['kPre', M * KV * D, qk], ['rstdK', M * KV, qk],
        ['qkv', M * W, lay.fused], ['q', M * H * D, !lay.fused], ['k', M * KV * D, !lay.fused], ['v', M * KV * D, !lay.fused],
        ['att', scores, !flash], ['lse', B * H * T, flash], ['ctx', M * H * D, true],
        ['x2', M * C, true], ['xn2', M * C, true], ['rstd2', M, true],
        ['gate', M * I, !fused], ['up', M * I, !fused], ['gu', 2 * M * I, fused], ['h', M * I, true],
      ];
      for (const [name, elements, made] of per) {
        if (!made) continue;
        const readers = LAYER_INPUT_READERS[name];
        if (!training || !readers || readers.some((m) => actsOn(`model.layers.${i}.${m}`))) out.push({ label: `l${i}.${name}`, elements });
        else if (!shared.has(name)) {
          shared.add(name);
          out.push({ label: name, elements });
        }
      }
    }
    out.push({ label: 'xf', elements: M * C }, { label: 'rstdf', elements: M });
    if (training) out.push({ label: 'dres', elements: M * C }, { label: 'dxn', elements: M * C });
    out.push(...headAndLossBuffers(this.gpu, M, this.lmHead, opts));
    const splitK = programSplitKElements(this.gpu, M, this.productShapes(fused, lay.fused), this.lmHead, opts);
    if (splitK > 0) out.push({ label: 'splitK', elements: splitK });
    if (training) {
      const per: [string, number, boolean][] = [
        ['dqkv', M * W, lay.fused], ['dq', M * H * D, !lay.fused], ['dk', M * KV * D, !lay.fused], ['dv', M * KV * D, !lay.fused],
        ['dqPre', M * H * D, qk], ['dkPre', M * KV * D, qk],
        ['dctx', M * H * D, true], ['dP', scores, !flash], ['delta', B * H * T, true],
        ['dkvScratch', flashAttentionScratchElements(B, T, H, D), flash && this.flashScratch()],
        ['headGrads', M * H * D, !flash && KV < H],
        ['dh', M * I, true], ['dgate', M * I, !fused], ['dup', M * I, !fused],
      ];
      for (const [label, elements, made] of per) if (made) out.push({ label, elements });
    }
    return out;
  }

  /** Bytes buildProgram(peft, opts) allocates on the GPU (Gpu.buffer's 16-byte rounding included). */
  estimateProgramBytes(opts: ProgramOptions, prefixTokens = 0): number {
    return plannedBytes(this.programBuffers(opts, prefixTokens));
  }

  /**
   * Whether the causal self-attention runs as flash attention (kernels/flash-attention.ts: no
   * T x T matrices kept, grouped-query heads in one dispatch) rather than as score, softmax and
   * value products: tuning.flashAttention, a head size the kernel takes on this device, and no
   * prefix tuning (its always-visible rows go through the products).
   */
  private flash(prefixTokens: number, B: number, T: number): boolean {
    return prefixTokens === 0 && useFlashAttention(this.gpu, B, this.H, T) && flashAttentionSupported(this.gpu, this.D, { separateDkDv: !this.flashScratch() });
  }

  /**
   * Flash attention's backward gets per-query-head dK/dV partial sums (2 M H D floats) with
   * grouped-query heads: a workgroup per query head instead of one walking its whole group
   * (SmolLM2: 3 heads per group, 192 workgroups otherwise); and where separate dk, dv would need a
   * ninth storage binding the device lacks.
   */
  private flashScratch(): boolean {
    return this.KV < this.H || this.gpu.info.limits.maxStorageBuffersPerShaderStage < 9;
  }

  /** The shape flash attention sees: causal, q [M, H*D] after RoPE, k and v [M, KV*D] (laid out as `lay` says). */
  private attentionShape(B: number, T: number, lengths: Tensor, a: LayerActs, lay: QkvLayout): FlashAttentionShape {
    const { H, KV, D } = this;
    return {
      B, T, H, kvHeads: KV, D, scale: this.scale, causal: true, lengths,
      q: a.q, offsetQ: lay.offQ, ldq: lay.ldq, k: a.k, offsetK: lay.offK, ldk: lay.ldkv, v: a.v, offsetV: lay.offV, ldv: lay.ldkv,
    };
  }

  /** Every weight tensor on the GPU (the tied head once) and the rotary tables. */
  private weightTensors(): Tensor[] {
    const out: Tensor[] = this.embed.chunks.map((c) => c.tensor);
    if (this.lmHead !== this.embed) out.push(...this.lmHead.chunks.map((c) => c.tensor));
    for (const l of this.layers) {
      const mlp = l.gateUp ? [l.gateUp] : [l.gate, l.up];
      const attn = l.qkv ? [l.qkv, l.qkvBias] : [l.q, l.k, l.v];
      for (const t of [l.inNorm, l.postNorm, ...attn, l.o, l.qBias, l.kBias, l.vBias, l.oBias, l.qNorm, l.kNorm, ...mlp, l.down, l.gateBias, l.upBias, l.downBias]) {
        if (t) out.push(t);
      }
    }
    out.push(this.finalNorm, ...this.ropeTensors);
    return out;
  }

  /** GPU bytes the frozen weights and rotary tables take (0 once destroyed). */
  weightBytes(): number {
    if (this.destroyed) return 0;
    return this.weightTensors().reduce((s, t) => s + t.buffer.size, 0);
  }

  /** Frees the weights and rotary tables. Programs built from this model must be destroyed first and not run again. */
  destroy(): void {
    if (this.destroyed) return;
    this.destroyed = true;
    for (const t of this.weightTensors()) this.gpu.destroyTensor(t);
    this.ropeTensors.length = 0;
  }

  /** Ops copying rows `ids` of embed_tokens into dst (prompt tuning's initializations). */
  copyTokenEmbeddings(ids: readonly number[], dst: Tensor): void {
    copyTableRows(this.gpu, this.embed, ids, dst);
  }

  buildProgram(peft: PeftMethod | null, opts: ProgramOptions): Program {
    const { gpu, C, L, H, KV, D, I } = this;
    const { B, training } = opts;
    // Prompt tuning runs nv virtual positions before each sequence (so T here counts them); prefix
    // tuning's P key/value rows take positions 0..P-1 (RoPE included), the tokens' start at P.
    const nv = peft?.virtualTokens ?? 0, P = peft?.prefixTokens ?? 0;
    const T = opts.T + nv;
    if (T + P > this.config.max_position_embeddings) {
      throw new ProgramError(`sequence length ${opts.T}${nv + P ? ` plus ${nv + P} virtual tokens` : ''} is longer than the model's max_position_embeddings (${this.config.max_position_embeddings})`);
    }
    if (P > 0 && H * D !== C) {
      throw new ProgramError(`prefix tuning as PEFT defines it needs head_dim = hidden_size / num_attention_heads (PEFT sizes the prefix from hidden_size); this model has head_dim ${D}, hidden_size ${C}, ${H} heads`);
    }
    const M = B * T;
    const flash = this.flash(P, B, T);
    if (T + P > this.rope.maxPositions) {
      // (the old tables stay alive: programs built before still bind them)
      this.rope = this.makeRope(this.config.max_position_embeddings);
    }
    const pool = new TensorPool(gpu);
    // split-K scratch for this program's layers (site() hands it out while the program is built)
    const actsOn = methodModules(peft, opts);
    const fused = this.fusesGateUp(actsOn, M);
    const lay = this.qkvLayout(this.fusesQkv(actsOn, methodTakesColumnSlices(peft, opts), M));
    const W = this.qkvWidth;
    const splitKElements = programSplitKElements(gpu, M, this.productShapes(fused, lay.fused), this.lmHead, opts);
    this.splitKScratch = splitKElements > 0 ? pool.t([splitKElements], 'splitK') : null;
    const t = pool.t.bind(pool);
    const tokens = t([M], 'tokens', 'u32');
    const targets = t([M], 'targets', 'i32');
    const lengths = t([B], 'lengths', 'u32');
    const qk = this.config.qk_norm;
    const keep = training ? L : 1;
    const xs = Array.from({ length: training ? L + 1 : 2 }, (_, i) => t([M, C], `x${i}`));
    const xAt = (l: number): Tensor => (training ? xs[l] : xs[l % 2]);
    // a layer's input to products no method reads in backward: one buffer for every layer
    const sharedInputs = new Map<string, Tensor>();
    const input = (i: number, name: keyof typeof LAYER_INPUT_READERS, shape: number[]): Tensor => {
      if (!training || LAYER_INPUT_READERS[name].some((m) => actsOn(`model.layers.${i}.${m}`))) return t(shape, `l${i}.${name}`);
      let shared = sharedInputs.get(name);
      if (!shared) sharedInputs.set(name, (shared = t(shape, name)));
      return shared;
    };
    const acts: LayerActs[] = Array.from({ length: keep }, (_, i) => {
      const gu = fused ? t([M, 2 * I], `l${i}.gu`) : null;
      const xn = input(i, 'xn', [M, C]), rstd1 = t([M], `l${i}.rstd1`);
      const qPre = qk ? t([M, H * D], `l${i}.qPre`) : null, rstdQ = qk ? t([M * H], `l${i}.rstdQ`) : null;
      const kPre = qk ? t([M, KV * D], `l${i}.kPre`) : null, rstdK = qk ? t([M * KV], `l${i}.rstdK`) : null;
      const qkv = lay.fused ? t([M, W], `l${i}.qkv`) : null;
      return {
        xn, rstd1, qPre, rstdQ, kPre, rstdK,
        q: qkv ?? t([M, H * D], `l${i}.q`), k: qkv ?? t([M, KV * D], `l${i}.k`), v: qkv ?? t([M, KV * D], `l${i}.v`),
        ...(flash ? { att: null, lse: t([B * H * T], `l${i}.lse`) } : { att: t([B * H, T, P + T], `l${i}.att`), lse: null }), ctx: t([M, H * D], `l${i}.ctx`),
        x2: t([M, C], `l${i}.x2`), xn2: input(i, 'xn2', [M, C]), rstd2: t([M], `l${i}.rstd2`),
        gate: gu ?? t([M, I], `l${i}.gate`), up: gu ?? t([M, I], `l${i}.up`), h: input(i, 'h', [M, I]), gu,
      };
    });
    const xf = t([M, C], 'xf'), rstdf = t([M], 'rstdf');

    const forward: Op[] = [...(peft?.forwardStart?.() ?? []), ...embedTokens(gpu, this.embed, tokens, xs[0], M, T, null)];
    if (nv) forward.push(...peft!.embeddingForward!(xs[0], B, T));
    for (let l = 0; l < L; l++) forward.push(...this.layerForward(l, xAt(l), xAt(l + 1), acts[l % keep], lay, lengths, peft, B, T, training));
    forward.push(rmsNormForward(gpu, { x: xAt(L), weight: this.finalNorm, out: xf, rstd: rstdf, rows: M, C, eps: this.config.rms_norm_eps }));
    const dres = training ? t([M, C], 'dres') : null;
    const dxn = training ? t([M, C], 'dxn') : null;
    const head = lmHeadAndLoss(gpu, pool, {
      hidden: xf, head: this.lmHead, targets, M, dHidden: dxn, captureLogits: Boolean(opts.captureLogits), headRowsPerChunk: opts.headRowsPerChunk,
      logitsRows: nv ? { S: T, skip: nv } : undefined, splitKScratch: this.splitKScratch,
    });
    forward.push(...head.ops);

    const backward: Op[] = [];
    if (training) {
      backward.push(...(peft?.backwardStart?.() ?? []));
      backward.push(rmsNormBackward(gpu, { dout: dxn!, x: xAt(L), weight: this.finalNorm, rstd: rstdf, dx: dres!, rows: M, C, accumulate: false }));
      const lowest = peft ? this.lowestTrainableLayer(peft) : L;
      const dqkv = lay.fused ? t([M, W], 'dqkv') : null;
      const s: Scratch = {
        dres: dres!, dxn: dxn!,
        dq: dqkv ?? t([M, H * D], 'dq'), dk: dqkv ?? t([M, KV * D], 'dk'), dv: dqkv ?? t([M, KV * D], 'dv'),
        dqPre: qk ? t([M, H * D], 'dqPre') : null, dkPre: qk ? t([M, KV * D], 'dkPre') : null,
        dctx: t([M, H * D], 'dctx'),
        dP: flash ? null : t([B * H, T, P + T], 'dP'), delta: t([B * H * T], 'delta'),
        dkvScratch: flash && this.flashScratch() ? t([flashAttentionScratchElements(B, T, H, D)], 'dkvScratch') : null,
        headGrads: !flash && KV < H ? t([M, H * D], 'headGrads') : null,
        dh: t([M, I], 'dh'), dgate: fused ? null : t([M, I], 'dgate'), dup: fused ? null : t([M, I], 'dup'),
      };
      // the lowest layer's input gradient only matters to prompt tuning (its virtual rows)
      for (let l = L - 1; l >= lowest; l--) backward.push(...this.layerBackward(l, xAt(l), xAt(l + 1), acts[l], lay, lengths, s, peft, B, T, l > lowest || nv > 0));
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

  /** The KV cache generation needs: one row of key/value heads x head_dim per position and layer. */
  kvCacheShape(): KvCacheShape {
    return { layers: this.L, width: this.KV * this.D, maxPositions: this.config.max_position_embeddings, heads: this.H };
  }

  /**
   * Generation with a KV cache (src/engine/infer/kv-program.ts): opts.T new rows at positions
   * cache.state[0].. go through the layers as in layerForward, except that q and k are rotated at
   * those positions, each layer appends the rows' keys and values to the cache and attends over
   * all cached rows (grouped-query heads read their key/value head); then the logits of the last
   * row. A prefill also runs the adapter's forwardStart, puts prefix tuning's rows (no rotation, as
   * in training) into cache rows 0..P-1 and prompt tuning's virtual rows before the tokens.
   */
  buildDecodeProgram(peft: PeftMethod | null, opts: DecodeProgramOptions): DecodeProgram {
    const { gpu, C, L, H, KV, D, I } = this;
    const { cache, prefill } = opts;
    const nv = prefill ? (peft?.virtualTokens ?? 0) : 0;
    const T = opts.T + nv;
    checkKvCache(cache, this.kvCacheShape(), T);
    if (peft?.prefixTokens && H * D !== C) {
      throw new ProgramError(`prefix tuning as PEFT defines it needs head_dim = hidden_size / num_attention_heads; this model has head_dim ${D}, hidden_size ${C}, ${H} heads`);
    }
    // (the old tables stay alive: programs built before still bind them)
    if (cache.capacity > this.rope.maxPositions) this.rope = this.makeRope(this.config.max_position_embeddings);
    const rope = this.rope;
    const pool = new TensorPool(gpu);
    const t = pool.t.bind(pool);
    const tokens = t([T], 'tokens', 'u32');
    const qk = this.config.qk_norm;
    const xs = [t([T, C], 'x0'), t([T, C], 'x1')];
    const scores = t([T * H, cache.capacity], 'scores');
    const a: LayerActs = {
      xn: t([T, C], 'xn'), rstd1: t([T], 'rstd1'),
      qPre: qk ? t([T, H * D], 'qPre') : null, rstdQ: qk ? t([T * H], 'rstdQ') : null,
      kPre: qk ? t([T, KV * D], 'kPre') : null, rstdK: qk ? t([T * KV], 'rstdK') : null,
      q: t([T, H * D], 'q'), k: t([T, KV * D], 'k'), v: t([T, KV * D], 'v'),
      att: scores, lse: null, ctx: t([T, H * D], 'ctx'),
      x2: t([T, C], 'x2'), xn2: t([T, C], 'xn2'), rstd2: t([T], 'rstd2'),
      gate: t([T, I], 'gate'), up: t([T, I], 'up'), h: t([T, I], 'h'), gu: null, // the decode program keeps gate and up as two products
    };
    const xf = t([T, C], 'xf'), rstdf = t([T], 'rstdf');
    const logits = t([this.V], 'logits');
    const state = cache.state;
    const eps = this.config.rms_norm_eps;
    const forward: Op[] = [];
    if (prefill) {
      forward.push(...(peft?.forwardStart?.() ?? []));
      if (peft?.prefixTokens) for (let l = 0; l < L; l++) forward.push(...prefixIntoCache(peft.attentionPrefix!(l), cache, l));
    }
    forward.push(...embedTokens(gpu, this.embed, tokens, xs[0], T, T, null));
    if (nv) forward.push(...peft!.embeddingForward!(xs[0], 1, T));
    for (let l = 0; l < L; l++) {
      const x = xs[l % 2], xOut = xs[(l + 1) % 2];
      const w = this.layers[l];
      const p = `model.layers.${l}.`;
      // (without a branch adapter, each norm also carries the residual stream on to the buffer
      // the block's output projection accumulates into)
      const attnBranch = branchSite(peft, l, 'attention', T, C, x, a.x2);
      const mlpBranch = branchSite(peft, l, 'output', T, C, a.x2, xOut);
      forward.push(rmsNormForward(gpu, { x, weight: w.inNorm, out: a.xn, rstd: a.rstd1, rows: T, C, eps, copyTo: attnBranch ? undefined : a.x2 }));
      const qOut = a.qPre ?? a.q, kOut = a.kPre ?? a.k;
      forward.push(...linearForward(gpu, this.site(false, `${p}self_attn.q_proj`, l, C, H * D, a.xn, qOut, T), w.q, w.qBias, false, peft));
      forward.push(...linearForward(gpu, this.site(false, `${p}self_attn.k_proj`, l, C, KV * D, a.xn, kOut, T), w.k, w.kBias, false, peft));
      forward.push(...linearForward(gpu, this.site(false, `${p}self_attn.v_proj`, l, C, KV * D, a.xn, a.v, T), w.v, w.vBias, false, peft));
      if (a.qPre) {
        forward.push(rmsNormForward(gpu, { x: a.qPre, weight: w.qNorm!, out: a.q, rstd: a.rstdQ!, rows: T * H, C: D, eps }));
        forward.push(rmsNormForward(gpu, { x: a.kPre!, weight: w.kNorm!, out: a.k, rstd: a.rstdK!, rows: T * KV, C: D, eps }));
      }
      const rot = { state, rows: T, colOffset: 0, headDim: D, rotaryDim: rope.rotaryDim, cos: rope.cos, sin: rope.sin, positions: rope.maxPositions };
      forward.push(kvRope(gpu, { ...rot, x: a.q, rowStride: H * D, heads: H }), kvRope(gpu, { ...rot, x: a.k, rowStride: KV * D, heads: KV }));
      const kv = { state, srcStride: KV * D, srcOffset: 0, rows: T, width: KV * D, capacity: cache.capacity };
      forward.push(kvAppend(gpu, { ...kv, src: a.k, cache: cache.k[l] }), kvAppend(gpu, { ...kv, src: a.v, cache: cache.v[l] }));
      forward.push(kvAttention(gpu, {
        state, q: a.q, qStride: H * D, qOffset: 0, kCache: cache.k[l], vCache: cache.v[l], scores, out: a.ctx, outStride: H * D,
        rows: T, H, kvHeads: KV, D, capacity: cache.capacity, scale: this.scale,
      }));
      if (attnBranch) {
        forward.push(...linearForward(gpu, this.site(false, `${p}self_attn.o_proj`, l, H * D, C, a.ctx, attnBranch.branch, T), w.o, w.oBias, false, peft));
        forward.push(...peft!.branchForward!(attnBranch));
      } else {
        forward.push(...linearForward(gpu, this.site(false, `${p}self_attn.o_proj`, l, H * D, C, a.ctx, a.x2, T), w.o, w.oBias, true, peft));
      }
      forward.push(rmsNormForward(gpu, { x: a.x2, weight: w.postNorm, out: a.xn2, rstd: a.rstd2, rows: T, C, eps, copyTo: mlpBranch ? undefined : xOut }));
      forward.push(...linearForward(gpu, this.site(false, `${p}mlp.gate_proj`, l, C, I, a.xn2, a.gate, T), w.gate, w.gateBias, false, peft));
      forward.push(...linearForward(gpu, this.site(false, `${p}mlp.up_proj`, l, C, I, a.xn2, a.up, T), w.up, w.upBias, false, peft));
      forward.push(swigluForward(gpu, { gate: a.gate, up: a.up, out: a.h, rows: T, F: I }));
      if (mlpBranch) {
        forward.push(...linearForward(gpu, this.site(false, `${p}mlp.down_proj`, l, I, C, a.h, mlpBranch.branch, T), w.down, w.downBias, false, peft));
        forward.push(...peft!.branchForward!(mlpBranch));
      } else {
        forward.push(...linearForward(gpu, this.site(false, `${p}mlp.down_proj`, l, I, C, a.h, xOut, T), w.down, w.downBias, true, peft));
      }
    }
    forward.push(rmsNormForward(gpu, { x: xs[L % 2], weight: this.finalNorm, out: xf, rstd: rstdf, rows: T, C, eps }));
    forward.push(...lastRowLogits(gpu, xf, T - 1, this.lmHead, logits));
    const V = this.V;
    return {
      T: opts.T, virtualTokens: nv, logits, forward,
      write: (ids: readonly number[]) => writeDecodeTokens(gpu, tokens, ids, opts.T, nv, V),
      destroy: () => pool.destroy(),
    };
  }

  /**
   * Whether a program of M rows runs gate_proj and up_proj as one product over the stacked
   * weights: every layer has them stacked (LayerWeights.gateUp), the method acts on neither in any
   * layer, and the packed [M, 2I] activations fit one binding (else two [M, I] ones may still).
   * On the H100 at SmolLM2's 2048 rows: 30.6 -> 32.5 TFLOP/s forward, 25.2 -> 29.5 for dx
   * (bench/matmul-shapes.ts, gate+up rows).
   */
  private fusesGateUp(actsOn: (module: string) => boolean, M: number): boolean {
    if (2 * M * this.I * 4 > this.gpu.maxBindingBytes) return false;
    return this.layers.every((w, i) => w.gateUp && !actsOn(`model.layers.${i}.mlp.gate_proj`) && !actsOn(`model.layers.${i}.mlp.up_proj`));
  }

  /**
   * Whether a program of M rows runs q_proj, k_proj and v_proj as one product over the stacked
   * weights (LayerWeights.qkv) into packed [M, (H + 2 KV) D] rows (QkvLayout): every layer has them
   * stacked, no q/k norms (Qwen3's run on their own pre-norm tensors), the packed rows fit one
   * binding, and the method acts on none of them or takes column slices (LoRA: its sites are then
   * columns of the packed rows). SmolLM2's three products at 2048 rows: one 2048 x 960 x 576 product
   * forward and one 2048 x 576 x 960 for dx instead of three each (docs/performance.md, session 15).
   */
  private fusesQkv(actsOn: (module: string) => boolean, takesColumnSlices: boolean, M: number): boolean {
    if (!this.gpu.tuning.fuseQkv || this.config.qk_norm) return false;
    if (M * this.qkvWidth * 4 > this.gpu.maxBindingBytes) return false;
    const modules = ['q_proj', 'k_proj', 'v_proj'];
    return this.layers.every((w, i) => w.qkv && (w.qkvBias !== null) === (w.qBias !== null)
      && (takesColumnSlices || modules.every((m) => !actsOn(`model.layers.${i}.self_attn.${m}`))));
  }

  private qkvLayout(fused: boolean): QkvLayout {
    const { H, KV, D, qkvWidth: W } = this;
    if (!fused) return { fused, ldq: H * D, ldkv: KV * D, offQ: 0, offK: 0, offV: 0 };
    return { fused, ldq: W, ldkv: W, offQ: 0, offK: H * D, offV: (H + KV) * D };
  }

  /** The linear products' shapes (the split-K scratch is sized for the largest): the modules', gate_proj + up_proj and q_proj + k_proj + v_proj as one where fused. */
  private productShapes(fusedGateUp: boolean, fusedQkv: boolean): { inFeatures: number; outFeatures: number }[] {
    const out: { inFeatures: number; outFeatures: number }[] = this.linearModules();
    if (fusedGateUp) out.push({ inFeatures: this.C, outFeatures: 2 * this.I });
    if (fusedQkv) out.push({ inFeatures: this.C, outFeatures: this.qkvWidth });
    return out;
  }

  private lowestTrainableLayer(peft: PeftMethod): number {
    // prompt tuning needs dLoss/dx0, prefix tuning the attention of every layer
    if (peft.virtualTokens || peft.prefixTokens) return 0;
    const mods = this.linearModules();
    for (let l = 0; l < this.L; l++) {
      if (peft.targetsBranch?.(l, 'attention') || peft.targetsBranch?.(l, 'output')) return l;
      if (mods.slice(l * 7, l * 7 + 7).some((m) => peft.targetsLinear(m.module))) return l;
    }
    return this.L;
  }

  /** The split-K scratch of the program being built (buildProgram), null otherwise. */
  private splitKScratch: Tensor | null = null;

  /** training: whether the program trains (adapter dropout on) or evaluates / generates (off). */
  private site(training: boolean, module: string, layer: number, inF: number, outF: number, x: Tensor, y: Tensor, rows: number): LinearSite {
    return { module, layer, inFeatures: inF, outFeatures: outF, rows, x, y, weightLayout: 'out_in', training, splitKScratch: this.splitKScratch };
  }

  /**
   * q_proj's, k_proj's and v_proj's sites where the three run as one product (QkvLayout.fused): each
   * one's y is its columns of the packed rows (a.q), with its weight and bias.
   */
  private qkvSites(training: boolean, l: number, a: LayerActs, lay: QkvLayout, M: number): [LinearSite, Tensor, Tensor | null][] {
    const { C, H, KV, D } = this;
    const w = this.layers[l];
    const p = `model.layers.${l}.self_attn.`;
    const slice = (name: string, outF: number, yOffset: number): LinearSite => ({ ...this.site(training, `${p}${name}`, l, C, outF, a.xn, a.q, M), yOffset, yStride: lay.ldq });
    return [[slice('q_proj', H * D, lay.offQ), w.q, w.qBias], [slice('k_proj', KV * D, lay.offK), w.k, w.kBias], [slice('v_proj', KV * D, lay.offV), w.v, w.vBias]];
  }

  /**
   * The prefix's dK and dV (summed over the batch and a group's query heads into the prefix's
   * rows): head h = g*G + j reads KV head g, one dispatch per j, each accumulating into what j - 1
   * left (one dispatch for all would race). The other attention products take every head at once
   * (kernels/matmul.ts MatmulBatch.groupB; headsIntoGroups).
   */
  private perGroup(fn: (j: number) => Op): Op[] {
    const G = this.H / this.KV;
    return Array.from({ length: G }, (_, j) => fn(j));
  }

  /**
   * dK or dV of the T x T path into `out` [M, KV*D] (from element offOut, rows ldOut apart):
   * product(c, offC, ldc) makes it for every (sequence, query head) into c [M, H*D] from offC with
   * rows ldc apart. With one query head per key/value head that is out itself; with grouped-query
   * heads it is s.headGrads (dense), then each group's sum (groupedHeadSum) goes to out.
   */
  private headsIntoGroups(s: Scratch, name: string, p: string, out: Tensor, offOut: number, ldOut: number, product: (c: Tensor, offC: number, ldc: number) => Op): Op[] {
    const { H, KV, D } = this;
    if (!s.headGrads) return [product(out, offOut, ldOut)];
    return [
      product(s.headGrads, 0, H * D),
      groupedHeadSum(this.gpu, { label: `${p}attn.${name}[group sum]`, part: s.headGrads, out, offOut, ldOut, rows: s.headGrads.shape[0], H, kvHeads: KV, D }),
    ];
  }

  private layerForward(l: number, x: Tensor, xOut: Tensor, a: LayerActs, lay: QkvLayout, lengths: Tensor, peft: PeftMethod | null, B: number, T: number, training: boolean): Op[] {
    const { gpu, C, H, KV, D, I } = this;
    const M = B * T;
    const w = this.layers[l];
    const p = `model.layers.${l}.`;
    const eps = this.config.rms_norm_eps;
    const ops: Op[] = [];
    // (a bottleneck adapter on a branch: the projection's output goes to its own tensor, the adapter
    // combines; without one, each norm also carries the residual stream on to the buffer the
    // block's output projection accumulates into)
    const attnBranch = branchSite(peft, l, 'attention', M, C, x, a.x2);
    const mlpBranch = branchSite(peft, l, 'output', M, C, a.x2, xOut);
    // attention block: x2 = x + o_proj(attn(rope(q), rope(k), v))
    ops.push(rmsNormForward(gpu, { x, weight: w.inNorm, out: a.xn, rstd: a.rstd1, rows: M, C, eps, copyTo: attnBranch ? undefined : a.x2 }));
    if (lay.fused) {
      // q_proj, k_proj and v_proj as one product: [q | k | v] = xn [W_q; W_k; W_v]^T (+ the stacked biases),
      // then the method's part of each on its columns
      ops.push(...matmulWithScratch(gpu, { label: `${p}self_attn.qkv_proj`, a: a.xn, b: w.qkv!, transB: true, c: a.q, bias: w.qkvBias ?? undefined, M, N: lay.ldq, K: C, tensorCores: 'values' }, this.splitKScratch));
      for (const [site, W, bias] of this.qkvSites(training, l, a, lay, M)) ops.push(...adapterForward(gpu, site, W, bias, peft));
    } else {
      const qOut = a.qPre ?? a.q, kOut = a.kPre ?? a.k;
      ops.push(...linearForward(gpu, this.site(training, `${p}self_attn.q_proj`, l, C, H * D, a.xn, qOut, M), w.q, w.qBias, false, peft));
      ops.push(...linearForward(gpu, this.site(training, `${p}self_attn.k_proj`, l, C, KV * D, a.xn, kOut, M), w.k, w.kBias, false, peft));
      ops.push(...linearForward(gpu, this.site(training, `${p}self_attn.v_proj`, l, C, KV * D, a.xn, a.v, M), w.v, w.vBias, false, peft));
    }
    if (a.qPre) {
      // Qwen3: RMSNorm over each head's D values, before RoPE
      ops.push(rmsNormForward(gpu, { x: a.qPre, weight: w.qNorm!, out: a.q, rstd: a.rstdQ!, rows: M * H, C: D, eps }));
      ops.push(rmsNormForward(gpu, { x: a.kPre!, weight: w.kNorm!, out: a.k, rstd: a.rstdK!, rows: M * KV, C: D, eps }));
    }
    // Prefix tuning: P key/value rows (no RoPE: transformers keeps them as cached) before the real
    // keys in every score row ([P | T] = Tk columns), read from the method's [P, ld] tensor and
    // shared by the batch; the tokens' rotary positions start at P.
    const pre = peft?.prefixTokens ? peft.attentionPrefix!(l) : null;
    const P = pre?.tokens ?? 0;
    const rope = { cos: this.rope.cos, sin: this.rope.sin, rotaryDim: this.rope.rotaryDim, rows: M, T, headDim: D, positionOffset: P };
    ops.push(ropeForward(gpu, { ...rope, x: a.q, rowStride: lay.ldq, colOffset: lay.offQ, heads: H }));
    ops.push(ropeForward(gpu, { ...rope, x: a.k, rowStride: lay.ldkv, colOffset: lay.offK, heads: KV }));
    if (a.lse) {
      // flash attention: every query head of a group reads its key/value head in the one dispatch
      ops.push(...flashAttentionForward(gpu, { ...this.attentionShape(B, T, lengths, a, lay), out: a.ctx, ldo: H * D, lse: a.lse }));
    } else {
      ops.push(...this.attentionForward(a.att!, a, lay, lengths, pre, B, T, p));
    }
    if (attnBranch) {
      ops.push(...linearForward(gpu, this.site(training, `${p}self_attn.o_proj`, l, H * D, C, a.ctx, attnBranch.branch, M), w.o, w.oBias, false, peft));
      ops.push(...peft!.branchForward!(attnBranch));
    } else {
      ops.push(...linearForward(gpu, this.site(training, `${p}self_attn.o_proj`, l, H * D, C, a.ctx, a.x2, M), w.o, w.oBias, true, peft));
    }
    // MLP block: xOut = x2 + down(silu(gate(xn2)) * up(xn2))
    ops.push(rmsNormForward(gpu, { x: a.x2, weight: w.postNorm, out: a.xn2, rstd: a.rstd2, rows: M, C, eps, copyTo: mlpBranch ? undefined : xOut }));
    if (a.gu) {
      // gate_proj and up_proj as one product: [gate | up] = xn2 [W_gate; W_up]^T, then SwiGLU over the packed rows
      ops.push(...matmulWithScratch(gpu, { label: `${p}mlp.gate_up_proj`, a: a.xn2, b: w.gateUp!, transB: true, c: a.gu, M, N: 2 * I, K: C, tensorCores: 'values' }, this.splitKScratch));
      ops.push(swigluForward(gpu, { gate: a.gu, up: a.gu, gateStride: 2 * I, upStride: 2 * I, gateOffset: 0, upOffset: I, out: a.h, rows: M, F: I }));
    } else {
      ops.push(...linearForward(gpu, this.site(training, `${p}mlp.gate_proj`, l, C, I, a.xn2, a.gate, M), w.gate, w.gateBias, false, peft));
      ops.push(...linearForward(gpu, this.site(training, `${p}mlp.up_proj`, l, C, I, a.xn2, a.up, M), w.up, w.upBias, false, peft));
      ops.push(swigluForward(gpu, { gate: a.gate, up: a.up, out: a.h, rows: M, F: I }));
    }
    if (mlpBranch) {
      ops.push(...linearForward(gpu, this.site(training, `${p}mlp.down_proj`, l, I, C, a.h, mlpBranch.branch, M), w.down, w.downBias, false, peft));
      ops.push(...peft!.branchForward!(mlpBranch));
    } else {
      ops.push(...linearForward(gpu, this.site(training, `${p}mlp.down_proj`, l, I, C, a.h, xOut, M), w.down, w.downBias, true, peft));
    }
    return ops;
  }

  /** The T x T path of layerForward's attention: scores, masked softmax and P V, one dispatch per query head of a group (prefix rows first when P > 0). */
  private attentionForward(att: Tensor, a: LayerActs, lay: QkvLayout, lengths: Tensor, pre: AttentionPrefix | null, B: number, T: number, p: string): Op[] {
    const { gpu, H, KV, D } = this;
    const { ldq, ldkv } = lay;
    const G = H / KV;
    const P = pre?.tokens ?? 0, Tk = P + T;
    const ops: Op[] = [];
    // scores = Q K^T for each (batch, head); P = softmax(scale * scores) causal + padding. The
    // products skip the masked half (kernels/matmul.ts triangle): scores only below the diagonal
    // (tiles wholly above it stay stale; the softmax never reads them and writes P = 0 there),
    // P V only over the keys up to each row tile's last query
    // (every (batch, query head) in one product, head h reading key/value head h / G: groupB)
    if (pre) {
      ops.push(matmul(gpu, {
        label: `${p}attn.prefix_scores`, a: a.q, offsetA: lay.offQ, lda: ldq, b: pre.value, offsetB: pre.keyOffset, ldb: pre.ld, transB: true,
        c: att, ldc: Tk, M: T, N: P, K: D,
        batch: { outer: B, inner: H, groupB: G, strideA: [T * ldq, D], strideB: [0, D], strideC: [H * T * Tk, T * Tk] },
      }));
    }
    ops.push(matmul(gpu, {
      label: `${p}attn.scores`, triangle: 'lowerC', a: a.q, offsetA: lay.offQ, lda: ldq, b: a.k, offsetB: lay.offK, ldb: ldkv, transB: true,
      c: att, offsetC: P, ldc: Tk, M: T, N: T, K: D,
      batch: { outer: B, inner: H, groupB: G, strideA: [T * ldq, D], strideB: [T * ldkv, D], strideC: [H * T * Tk, T * Tk] },
    }));
    if (pre) ops.push(attentionPrefixSoftmaxForward(gpu, { scores: att, probs: att, lengths, B, H, T, P, scale: this.scale, causal: true }));
    else ops.push(attentionSoftmaxForward(gpu, { scores: att, probs: att, lengths, B, H, T, scale: this.scale, causal: true }));
    if (pre) {
      ops.push(matmul(gpu, {
        label: `${p}attn.prefix_pv`, a: att, lda: Tk, b: pre.value, offsetB: pre.valueOffset, ldb: pre.ld, c: a.ctx, ldc: H * D, M: T, N: D, K: P,
        batch: { outer: B, inner: H, groupB: G, strideA: [H * T * Tk, T * Tk], strideB: [0, D], strideC: [T * H * D, D] },
      }));
    }
    ops.push(matmul(gpu, {
      label: `${p}attn.pv`, triangle: 'lowerA', a: att, offsetA: P, lda: Tk, b: a.v, offsetB: lay.offV, ldb: ldkv, c: a.ctx, ldc: H * D, M: T, N: D, K: T, accumulate: P > 0,
      batch: { outer: B, inner: H, groupB: G, strideA: [H * T * Tk, T * Tk], strideB: [T * ldkv, D], strideC: [T * H * D, D] },
    }));
    return ops;
  }

  /** The T x T path of layerBackward's attention (the mirror of attentionForward): dq, dk, dv into s, the prefix rows' gradients into the method's. */
  private attentionBackward(att: Tensor, dP: Tensor, a: LayerActs, lay: QkvLayout, s: Scratch, pre: AttentionPrefix | null, B: number, T: number, p: string): Op[] {
    const { gpu, H, KV, D } = this;
    const { ldq, ldkv } = lay;
    const G = H / KV;
    const ops: Op[] = [];
    // prefix tuning: score rows are [P prefix keys | T keys]; the prefix gradients are summed over
    // the batch one sequence (and query group) at a time (a batched accumulate into shared rows would race)
    const P = pre?.tokens ?? 0, Tk = P + T;
    // dP = dctx V^T ; dV = sum over the group of P^T dctx (causal halves skipped as in the forward).
    // With prefix rows dP's tiles above the diagonal stay stale: the causal softmax backward neither
    // reads them nor leaves them nonzero. Without, the softmax backward is dP's epilogue (matmul
    // softmaxGradOf): dS = scale * P * (dP - delta), delta = rowsum(dctx * ctx) = rowsum(P * dP),
    // and the tiles above the diagonal are written 0.
    if (pre) {
      ops.push(matmul(gpu, {
        label: `${p}attn.prefix_dP`, a: s.dctx, lda: H * D, b: pre.value, offsetB: pre.valueOffset, ldb: pre.ld, transB: true, c: dP, ldc: Tk, M: T, N: P, K: D,
        batch: { outer: B, inner: H, groupB: G, strideA: [T * H * D, D], strideB: [0, D], strideC: [H * T * Tk, T * Tk] },
      }));
    }
    if (!pre) ops.push(attentionRowDelta(gpu, { B, T, H, D, out: a.ctx, ldo: H * D, dout: s.dctx, lddo: H * D, delta: s.delta }));
    ops.push(matmul(gpu, {
      label: `${p}attn.dP`, triangle: 'lowerC', a: s.dctx, lda: H * D, b: a.v, offsetB: lay.offV, ldb: ldkv, transB: true, c: dP, offsetC: P, ldc: Tk, M: T, N: T, K: D,
      batch: { outer: B, inner: H, groupB: G, strideA: [T * H * D, D], strideB: [T * ldkv, D], strideC: [H * T * Tk, T * Tk] },
      ...(pre ? {} : { alpha: this.scale, softmaxGradOf: { probs: att, rowTerms: s.delta } }),
    }));
    ops.push(...this.headsIntoGroups(s, 'dV', p, s.dv, lay.offV, ldkv, (c, offsetC, ldc) => matmul(gpu, {
      label: `${p}attn.dV`, triangle: 'upperA', a: att, offsetA: P, lda: Tk, transA: true, b: s.dctx, ldb: H * D, c, offsetC, ldc, M: T, N: D, K: T,
      batch: { outer: B, inner: H, strideA: [H * T * Tk, T * Tk], strideB: [T * H * D, D], strideC: [T * ldc, D] },
    })));
    if (pre) {
      for (let b = 0; b < B; b++) {
        ops.push(...this.perGroup((j) => matmul(gpu, {
          label: `${p}attn.prefix_dV`, a: att, offsetA: b * H * T * Tk + j * T * Tk, lda: Tk, transA: true, b: s.dctx, offsetB: b * T * H * D + j * D, ldb: H * D,
          c: pre.grad, offsetC: pre.valueOffset, ldc: pre.ld, M: P, N: D, K: T, accumulate: true,
          batch: { outer: 1, inner: KV, strideA: [0, G * T * Tk], strideB: [0, G * D], strideC: [0, D] },
        })));
      }
      ops.push(attentionPrefixSoftmaxBackward(gpu, { dprobs: dP, probs: att, dscores: dP, B, H, T, P, scale: this.scale, causal: true }));
    }
    // dQ = dS K ; dK = sum over the group of dS^T Q
    ops.push(matmul(gpu, {
      label: `${p}attn.dQ`, triangle: 'lowerA', a: dP, offsetA: P, lda: Tk, b: a.k, offsetB: lay.offK, ldb: ldkv, c: s.dq, offsetC: lay.offQ, ldc: ldq, M: T, N: D, K: T,
      batch: { outer: B, inner: H, groupB: G, strideA: [H * T * Tk, T * Tk], strideB: [T * ldkv, D], strideC: [T * ldq, D] },
    }));
    ops.push(...this.headsIntoGroups(s, 'dK', p, s.dk, lay.offK, ldkv, (c, offsetC, ldc) => matmul(gpu, {
      label: `${p}attn.dK`, triangle: 'upperA', a: dP, offsetA: P, lda: Tk, transA: true, b: a.q, offsetB: lay.offQ, ldb: ldq, c, offsetC, ldc, M: T, N: D, K: T,
      batch: { outer: B, inner: H, strideA: [H * T * Tk, T * Tk], strideB: [T * ldq, D], strideC: [T * ldc, D] },
    })));
    if (pre) {
      ops.push(matmul(gpu, {
        label: `${p}attn.prefix_dQ`, a: dP, lda: Tk, b: pre.value, offsetB: pre.keyOffset, ldb: pre.ld, c: s.dq, offsetC: lay.offQ, ldc: ldq, M: T, N: D, K: P, accumulate: true,
        batch: { outer: B, inner: H, groupB: G, strideA: [H * T * Tk, T * Tk], strideB: [0, D], strideC: [T * ldq, D] },
      }));
      for (let b = 0; b < B; b++) {
        ops.push(...this.perGroup((j) => matmul(gpu, {
          label: `${p}attn.prefix_dK`, a: dP, offsetA: b * H * T * Tk + j * T * Tk, lda: Tk, transA: true, b: a.q, offsetB: lay.offQ + b * T * ldq + j * D, ldb: ldq,
          c: pre.grad, offsetC: pre.keyOffset, ldc: pre.ld, M: P, N: D, K: T, accumulate: true,
          batch: { outer: 1, inner: KV, strideA: [0, G * T * Tk], strideB: [0, G * D], strideC: [0, D] },
        })));
      }
    }
    return ops;
  }

  /** Columns of the packed q|k|v rows (QkvLayout.fused): (H + 2 KV) D. */
  private get qkvWidth(): number {
    return (this.H + 2 * this.KV) * this.D;
  }

  /** Softmax scale 1/sqrt(D) (YaRN's attention factor is folded into the cos/sin tables, as in transformers). */
  private get scale(): number {
    return 1 / Math.sqrt(this.D);
  }

  /** On entry s.dres = dLoss/d(output of layer l); on exit dLoss/d(input of layer l). */
  /** As GPT-2's: inputGrad false makes only the adapter's gradients at the input projections (no q/k/v dx, no input norm backward). */
  private layerBackward(l: number, x: Tensor, xOut: Tensor, a: LayerActs, lay: QkvLayout, lengths: Tensor, s: Scratch, peft: PeftMethod | null, B: number, T: number, inputGrad: boolean): Op[] {
    const { gpu, C, H, KV, D, I } = this;
    const M = B * T;
    const w = this.layers[l];
    const p = `model.layers.${l}.`;
    const ops: Op[] = [];
    // MLP block (a bottleneck adapter on the branch turns dres into the branch's gradient first)
    const mlpBranch = branchSite(peft, l, 'output', M, C, a.x2, xOut);
    let dy = s.dres;
    if (mlpBranch) {
      const r = peft!.branchBackward!(mlpBranch, s.dres);
      ops.push(...r.ops);
      dy = r.dBranch;
    }
    ops.push(...linearBackward(gpu, this.site(true, `${p}mlp.down_proj`, l, I, C, a.h, mlpBranch?.branch ?? xOut, M), w.down, dy, s.dh, false, peft, w.downBias));
    if (a.gu) {
      // the gradients of gate and up in place over them (dead after this), then dxn = [dgate | dup] [W_gate; W_up]
      const packed = { gateStride: 2 * I, upStride: 2 * I, gateOffset: 0, upOffset: I };
      ops.push(swigluBackward(gpu, { dout: s.dh, gate: a.gu, up: a.gu, dgate: a.gu, dup: a.gu, rows: M, F: I, ...packed }));
      ops.push(...matmulWithScratch(gpu, { label: `${p}mlp.gate_up_proj.dx`, a: a.gu, b: w.gateUp!, c: s.dxn, M, N: C, K: 2 * I, tensorCores: 'gradients' }, this.splitKScratch));
    } else {
      ops.push(swigluBackward(gpu, { dout: s.dh, gate: a.gate, up: a.up, dgate: s.dgate!, dup: s.dup!, rows: M, F: I }));
      ops.push(...linearBackward(gpu, this.site(true, `${p}mlp.gate_proj`, l, C, I, a.xn2, a.gate, M), w.gate, s.dgate!, s.dxn, false, peft, w.gateBias));
      ops.push(...linearBackward(gpu, this.site(true, `${p}mlp.up_proj`, l, C, I, a.xn2, a.up, M), w.up, s.dup!, s.dxn, true, peft, w.upBias));
    }
    ops.push(rmsNormBackward(gpu, { dout: s.dxn, x: a.x2, weight: w.postNorm, rstd: a.rstd2, dx: s.dres, rows: M, C, accumulate: true }));
    // attention block
    const attnBranch = branchSite(peft, l, 'attention', M, C, x, a.x2);
    dy = s.dres;
    if (attnBranch) {
      const r = peft!.branchBackward!(attnBranch, s.dres);
      ops.push(...r.ops);
      dy = r.dBranch;
    }
    ops.push(...linearBackward(gpu, this.site(true, `${p}self_attn.o_proj`, l, H * D, C, a.ctx, attnBranch?.branch ?? a.x2, M), w.o, dy, s.dctx, false, peft, w.oBias));
    const pre = peft?.prefixTokens ? peft.attentionPrefix!(l) : null;
    const P = pre?.tokens ?? 0;
    if (a.lse) {
      // flash attention: the scores and probabilities again from q, k and the saved log-sum-exp;
      // dk, dv summed over each group's query heads inside the kernel
      ops.push(...flashAttentionBackward(gpu, {
        ...this.attentionShape(B, T, lengths, a, lay), out: a.ctx, ldo: H * D, lse: a.lse, dout: s.dctx, lddo: H * D, delta: s.delta,
        dq: s.dq, offsetDQ: lay.offQ, lddq: lay.ldq, dk: s.dk, offsetDK: lay.offK, lddk: lay.ldkv, dv: s.dv, offsetDV: lay.offV, lddv: lay.ldkv,
        ...(s.dkvScratch ? { dkvScratch: s.dkvScratch } : {}),
      }));
    } else {
      ops.push(...this.attentionBackward(a.att!, s.dP!, a, lay, s, pre, B, T, p));
    }
    const rope = { cos: this.rope.cos, sin: this.rope.sin, rotaryDim: this.rope.rotaryDim, rows: M, T, headDim: D, positionOffset: P };
    ops.push(ropeBackward(gpu, { ...rope, x: s.dq, rowStride: lay.ldq, colOffset: lay.offQ, heads: H }));
    ops.push(ropeBackward(gpu, { ...rope, x: s.dk, rowStride: lay.ldkv, colOffset: lay.offK, heads: KV }));
    let dq = s.dq, dk = s.dk;
    if (a.qPre) {
      ops.push(rmsNormBackward(gpu, { dout: s.dq, x: a.qPre, weight: w.qNorm!, rstd: a.rstdQ!, dx: s.dqPre!, rows: M * H, C: D, accumulate: false }));
      ops.push(rmsNormBackward(gpu, { dout: s.dk, x: a.kPre!, weight: w.kNorm!, rstd: a.rstdK!, dx: s.dkPre!, rows: M * KV, C: D, accumulate: false }));
      dq = s.dqPre!;
      dk = s.dkPre!;
    }
    const dxn = inputGrad ? s.dxn : null;
    if (lay.fused) {
      // dxn = [dq | dk | dv] [W_q; W_k; W_v] as one product (K = (H + 2 KV) D), then each method's part
      if (dxn) ops.push(...matmulWithScratch(gpu, { label: `${p}self_attn.qkv_proj.dx`, a: s.dq, b: w.qkv!, c: dxn, M, N: C, K: lay.ldq, tensorCores: 'gradients' }, this.splitKScratch));
      for (const [site, W, bias] of this.qkvSites(true, l, a, lay, M)) ops.push(...adapterBackward(gpu, site, W, s.dq, dxn, peft, bias));
    } else {
      ops.push(...linearBackward(gpu, this.site(true, `${p}self_attn.q_proj`, l, C, H * D, a.xn, a.qPre ?? a.q, M), w.q, dq, dxn, false, peft, w.qBias));
      ops.push(...linearBackward(gpu, this.site(true, `${p}self_attn.k_proj`, l, C, KV * D, a.xn, a.kPre ?? a.k, M), w.k, dk, dxn, true, peft, w.kBias));
      ops.push(...linearBackward(gpu, this.site(true, `${p}self_attn.v_proj`, l, C, KV * D, a.xn, a.v, M), w.v, s.dv, dxn, true, peft, w.vBias));
    }
    if (inputGrad) ops.push(rmsNormBackward(gpu, { dout: s.dxn, x, weight: w.inNorm, rstd: a.rstd1, dx: s.dres, rows: M, C, accumulate: true }));
    return ops;
  }
}

interface Scratch {
  dres: Tensor; dxn: Tensor;
  dq: Tensor; dk: Tensor; dv: Tensor; dqPre: Tensor | null; dkPre: Tensor | null;
  dctx: Tensor;
  /** [B*H, T, P+T] the probabilities' gradient, then the scores' (T x T path) */
  dP: Tensor | null;
  /** [B*H*T] rowsum(dctx * ctx) per head (flash attention's backward; the T x T path's fused softmax backward) */
  delta: Tensor;
  /** flash attention's per-query-head dK/dV partial sums (Llama.flashScratch) */
  dkvScratch: Tensor | null;
  /** The T x T path's per-query-head dK and dV before their group sums, [M, H*D] (grouped-query heads only). */
  headGrads: Tensor | null;
  dh: Tensor;
  /** [M, I] each; null when gate and up run as one product (their gradients then go in place into LayerActs.gu) */
  dgate: Tensor | null; dup: Tensor | null;
}
