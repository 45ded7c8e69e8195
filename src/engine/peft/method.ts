// The interface every parameter-efficient method implements (LoRA now; prefix, prompt, IA3 and
// bottleneck adapters later). An architecture file builds its forward and backward programs and
// calls the method's hooks at the places the method acts on; the method owns its parameters,
// their gradients and how they are exported.

import type { Op } from '../gpu/dispatch';
import type { Tensor } from '../gpu/tensor';

/** One trainable tensor with its gradient and AdamW state, named as PEFT's state dict names it. */
export interface TrainableParam {
  /** PEFT state-dict name, e.g. base_model.model.transformer.h.0.attn.c_attn.lora_A.weight */
  name: string;
  shape: number[];
  value: Tensor;
  grad: Tensor;
  m: Tensor;
  v: Tensor;
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
  weightLayout: 'in_out' | 'out_in';
}

/** Backward view of a linear site: dy is given; dx (when needed) already holds the base model's part. */
export interface LinearGrad {
  dy: Tensor;
  /** Gradient w.r.t. x to add into, or null when nothing below needs it. */
  dx: Tensor | null;
}

export interface PeftMethod {
  readonly kind: 'lora';
  /** Trainable tensors, in a stable order (the export and optimizer state follow it). */
  readonly params: TrainableParam[];
  /** Whether this method acts on the given linear site (so the architecture knows to call the hooks). */
  targetsLinear(module: string): boolean;
  /** Ops run right after the base layer's y = x W + b. */
  linearForward(site: LinearSite): Op[];
  /** Ops that add this site's parameter gradients and its part of dx. */
  linearBackward(site: LinearSite, grad: LinearGrad): Op[];
  /** PEFT adapter_config.json contents for this method. */
  adapterConfig(baseModel: string): Record<string, unknown>;
}
