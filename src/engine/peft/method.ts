// The interface every parameter-efficient method implements (LoRA, DoRA, IA3, prompt tuning,
// prefix tuning, bottleneck adapters). An architecture file builds its forward and backward
// programs and calls the method's hooks at the places the method acts on; the method owns its
// parameters, their gradients, its scratch and how it is exported.
//
// Hook points (all but the linear ones optional):
//   linear layers   linearForward / linearBackward after the frozen product (LoRA adds to it), or,
//                   with replacesLinear, instead of it through a FrozenLinear (IA3 scales the
//                   layer's input or output; DoRA rescales the layer's output per feature by its
//                   magnitude over the merged weight's norm, so it reads the frozen weight too)
//   residual branch targetsBranch(layer, location): the architecture writes that sub-block's
//                   output (attention after its output projection, or the MLP) into
//                   branchOutput(...) instead of adding it to the residual stream, and
//                   branchForward / branchBackward combine the two (bottleneck adapters)
//   embedding       virtualTokens > 0: the program runs virtualTokens + T positions per sequence
//                   (virtual rows first, real tokens at positions virtualTokens..), the method
//                   writes the virtual rows (embeddingForward) and takes their gradient
//                   (embeddingBackward); no loss on them except what PEFT puts there (see Program)
//   attention       prefixTokens > 0: every layer's attention also sees attentionPrefix(l)'s
//                   key/value rows, visible to every query; real tokens' positions start at
//                   prefixTokens (transformers counts the prefix as cached tokens)
//   program         forwardStart / backwardStart / backwardEnd: ops at the start of every forward,
//                   at the start and end of every backward (prefix tuning's reparameterization)

import type { Op } from '../gpu/dispatch';
import type { Tensor } from '../gpu/tensor';

/**
 * One trainable tensor with its gradient and AdamW state, named as PEFT's state dict names it
 * (prefix tuning's projection, which PEFT does not save, by PEFT's parameter name without the
 * adapter name, e.g. prompt_encoder.transform.0.weight).
 */
export interface TrainableParam {
  /** PEFT state-dict name, e.g. base_model.model.transformer.h.0.attn.c_attn.lora_A.weight, prompt_embeddings */
  name: string;
  shape: number[];
  value: Tensor;
  grad: Tensor;
  m: Tensor;
  v: Tensor;
  /** The shared buffers value, grad, m and v are views into (gpu/arena.ts), when they are. */
  arena?: ParamArena;
}

/**
 * Buffers holding `count` parameters' values, gradients and AdamW moments as views at the same
 * offsets in each (gaps zero): the optimizer clears, norms and updates each as one tensor.
 */
export interface ParamArena {
  value: Tensor;
  grad: Tensor;
  m: Tensor;
  v: Tensor;
  count: number;
}

/**
 * A linear layer of the frozen model, as an architecture sees it: y = x W (+ b) over `rows` rows.
 * `weightLayout` says how W is stored: 'in_out' for GPT-2's Conv1D ([in, out]), 'out_in' for
 * nn.Linear ([out, in]).
 */
export interface LinearSite {
  /** Module path in the Hugging Face model, e.g. transformer.h.0.attn.c_attn */
  module: string;
  layer: number;
  inFeatures: number;
  outFeatures: number;
  rows: number;
  /** The layer's input [rows, in] (kept for backward). */
  x: Tensor;
  /** The tensor y is accumulated into [rows, out]. */
  y: Tensor;
  /**
   * y as a column slice of wider rows: element (row, j) at yOffset + row * yStride + j (defaults 0
   * and outFeatures, dense); dy in backward has the same layout. Llama's q, k and v inside the
   * packed q|k|v rows of one frozen product. Only given to methods with takesColumnSlices.
   */
  yOffset?: number;
  yStride?: number;
  weightLayout: 'in_out' | 'out_in';
  /**
   * Whether the program trains: adapter dropout applies only then (evaluation, classification
   * metrics and generation run the adapter without it, as PyTorch's eval mode does).
   */
  training: boolean;
  /**
   * Scratch the architecture lends the frozen product for split-K (kernels/matmul.ts matmulSplitK;
   * the program's, shared by all its layers); absent: the product is never split. Not for methods.
   */
  splitKScratch?: Tensor | null;
}

/** Backward view of a linear site: dy is given; dx (when needed) already holds the base model's part. */
export interface LinearGrad {
  dy: Tensor;
  /** Gradient w.r.t. x to add into, or null when nothing below needs it. */
  dx: Tensor | null;
}

/**
 * The frozen layer's own product on tensors of the method's choosing, for methods that change it
 * (IA3). `accumulate` says whether the architecture adds the layer's result into site.y (a
 * residual sum) in forward, and into dx (shared by several layers) in backward.
 */
export interface FrozenLinear {
  readonly accumulate: boolean;
  /** Whether forward() adds the layer's real bias (false: the architecture did not pass it to the backward). */
  readonly biasKnown: boolean;
  /** The frozen weight, stored as the site's weightLayout says ([in, out] or [out, in]). */
  readonly weight: Tensor;
  /** The layer's bias; null when it has none or when the architecture did not pass it (biasKnown false). */
  readonly bias: Tensor | null;
  /** y (+)= x W (+ b): x [rows, in], y [rows, out]; withBias false leaves the bias out (default: added). */
  forward(x: Tensor, y: Tensor, accumulate: boolean, withBias?: boolean): Op;
  /** dx (+)= dy W^T: dy [rows, out], dx [rows, in]. */
  backward(dy: Tensor, dx: Tensor, accumulate: boolean): Op;
}

/** One layer's prefix keys and values (prefix tuning), as the attention reads them. */
export interface AttentionPrefix {
  /** Prefix rows, visible to every query. */
  tokens: number;
  /** [tokens, ld]: the keys of this layer are columns keyOffset.. (kvHeads * headDim of them), the values valueOffset.. */
  value: Tensor;
  /** Same layout as value; the attention's backward adds the prefix gradients into it. */
  grad: Tensor;
  ld: number;
  keyOffset: number;
  valueOffset: number;
}

/** Where in a transformer layer a bottleneck adapter sits (AdapterHub's mh_adapter and output_adapter). */
export type BranchLocation = 'attention' | 'output';

/**
 * One residual branch of a transformer layer: out = residual + branch without an adapter, where
 * branch is the attention block's output (after c_proj / o_proj) or the MLP's output.
 */
export interface BranchSite {
  layer: number;
  location: BranchLocation;
  rows: number;
  /** Hidden size. */
  width: number;
  /** The sub-block's output [rows, width] (the tensor branchOutput gave; kept for backward). */
  branch: Tensor;
  /** The sub-block's residual input [rows, width] (kept for backward). */
  residual: Tensor;
  /** Where the stream continues [rows, width]: branchForward writes all of it. */
  out: Tensor;
  /**
   * Post-LayerNorm blocks (BERT, DistilBERT): the block's LayerNorm, which the architecture applies
   * to `out` after the hook. AdapterHub's original_ln_before (Pfeiffer) also applies it to the
   * adapter's input. Absent for pre-LN blocks (GPT-2, Llama), which have no norm after the sum.
   */
  layerNorm?: { weight: Tensor; bias: Tensor; eps: number };
}

export type PeftKind = 'lora' | 'dora' | 'ia3' | 'prompt' | 'prefix' | 'bottleneck';

/** A tensor of the exported adapter_model.safetensors. */
export interface ExportTensor {
  name: string;
  shape: number[];
  data: Float32Array;
}

export interface PeftMethod {
  readonly kind: PeftKind;
  /** Trainable tensors, in a stable order (the export and optimizer state follow it). */
  readonly params: TrainableParam[];
  /** Whether this method acts on the given linear site (so the architecture knows to call the hooks). */
  targetsLinear(module: string): boolean;
  /**
   * Without replacesLinear: ops run right after the base layer's y (+)= x W + b. With it: the
   * ops of the whole layer, the frozen product made through `base`.
   */
  linearForward(site: LinearSite, base: FrozenLinear): Op[];
  /** Ops that add this site's parameter gradients and its part of dx (with replacesLinear: all of dx, through `base`). */
  linearBackward(site: LinearSite, grad: LinearGrad, base: FrozenLinear): Op[];
  /** The method makes the frozen product of the layers it targets itself (IA3). */
  readonly replacesLinear?: boolean;
  /**
   * Whether linearForward / linearBackward honour LinearSite.yOffset and yStride (y and dy as a
   * column slice of wider rows), so that an architecture may run several targeted layers sharing
   * an input as one frozen product (Llama's q_proj, k_proj and v_proj). Absent: never given one.
   */
  readonly takesColumnSlices?: boolean;
  /** Virtual tokens placed before every sequence (prompt tuning); 0 or absent otherwise. */
  readonly virtualTokens?: number;
  /** x0 is [B*S, C] (S = virtualTokens + T) with the token embeddings in place: write the virtual rows. */
  embeddingForward?(x0: Tensor, B: number, S: number): Op[];
  /** dx0 = dLoss/dx0 [B*S, C]: add the virtual rows' parameter gradients. */
  embeddingBackward?(dx0: Tensor, B: number, S: number): Op[];
  /** Key/value rows every layer's attention sees before the sequence (prefix tuning); 0 or absent otherwise. */
  readonly prefixTokens?: number;
  attentionPrefix?(layer: number): AttentionPrefix;
  /** Whether the method acts on this residual branch (bottleneck adapters). */
  targetsBranch?(layer: number, location: BranchLocation): boolean;
  /** The tensor [rows, width] the architecture writes a targeted branch's sub-block output into. */
  branchOutput?(layer: number, location: BranchLocation, rows: number): Tensor;
  /** Ops that write site.out from site.residual and site.branch (the whole combination). */
  branchForward?(site: BranchSite): Op[];
  /**
   * dOut holds dLoss/d(site.out) on entry and dLoss/d(site.residual) after the ops, which also add
   * the parameter gradients; dBranch holds dLoss/d(site.branch) after them (it may be dOut).
   */
  branchBackward?(site: BranchSite, dOut: Tensor): { ops: Op[]; dBranch: Tensor };
  /** Ops at the start of every forward of every program built with this method. */
  forwardStart?(): Op[];
  /** Ops at the start of every backward, before any hook adds gradients. */
  backwardStart?(): Op[];
  /** Ops at the end of every backward. */
  backwardEnd?(): Op[];
  /**
   * Whose file layout the export follows: 'peft' (adapter_config.json + adapter_model.safetensors,
   * the default) or 'adapterhub' (the `adapters` library's adapter_config.json + adapter.safetensors).
   */
  readonly exportFormat?: 'peft' | 'adapterhub';
  /**
   * Keys of adapterConfig() whose whole-number values must be written as floats ("1.0"): the
   * reader is Python and checks the type (AdapterHub's scaling must be a float).
   */
  readonly configFloatKeys?: readonly string[];
  /** The tensors PEFT saves (default: every parameter under its name). */
  exportTensors?(read: (t: Tensor) => Promise<Float32Array>): Promise<ExportTensor[]>;
  /** Frees the parameters, optimizer state and scratch. */
  destroy?(): void;
  /** adapter_config.json contents for this method (PEFT's, or AdapterHub's with exportFormat 'adapterhub'). */
  adapterConfig(baseModel: string): Record<string, unknown>;
}
