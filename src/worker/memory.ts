// GPU memory a training run will take, before any buffer is made: the frozen weights (what the
// model holds now), the training program's activations and the evaluation program's (each
// architecture lists what its buildProgram allocates; prompt tuning runs its virtual positions
// through them too, prefix tuning widens every attention by its prefix rows), and the adapter with
// its AdamW state and scratch (the buffers of src/engine/peft/*.ts and src/engine/train/optimizer.ts).
// Text classifiers (DistilBERT, BERT) are planned here from the encoder's buildProgram, with the
// head that trains in full counted as part of the adapter. Exact to the byte:
// test/memory-estimate.test.ts builds real runs of every method and compares with gpu.allocatedBytes.

import type { CausalLMModel } from '../engine/models/registry';
import type { EncoderClassifier } from '../engine/models/encoder';
import { allocatedBytesFor, type PlannedBuffer } from '../engine/models/program';
import type { LinearModuleInfo } from '../engine/peft/lora';
import { gradNormPartials } from '../engine/kernels/grad-norm';
import { LORA_MAX_RANK, loraWeightGradScratch } from '../engine/kernels/lora';
import { DEFAULT_KERNEL_TUNING } from '../engine/gpu/gpu';
import { arenaLayout } from '../engine/gpu/arena';
import type { MemoryEstimate } from './protocol';

/** The adapter's tensors as each method makes them. */
export type AdapterPlan =
  /** gradWorkgroups: the running GPU's tuning.loraGradWorkgroups (absent: the default tuning's), which sizes dA's and dB's chunk scratch. */
  | { kind: 'lora'; rank: number; dropout: number; targeted: readonly LinearModuleInfo[]; gradWorkgroups?: number }
  | { kind: 'dora'; rank: number; dropout: number; targeted: readonly LinearModuleInfo[] }
  /** inputSum: the adapter reads residual + branch (Pfeiffer, AdapterHub's original_ln_before), which a post-LN encoder then normalizes. */
  | { kind: 'bottleneck'; hidden: number; layers: number; size: number; places: number; inputSum: boolean }
  | { kind: 'ia3'; targeted: readonly { info: LinearModuleInfo; feedforward: boolean }[] }
  | { kind: 'prompt'; virtualTokens: number; hidden: number }
  | { kind: 'prefix'; virtualTokens: number; tokenDim: number; width: number; projection: boolean; encoderHiddenSize: number };

export interface RunShape {
  /** Rows per micro-batch and the real tokens per row (virtual tokens not included). */
  B: number;
  T: number;
  adapter: AdapterPlan;
  hasValidation: boolean;
}

/** What the device allows, from GpuInfo. */
export interface DeviceLimits {
  maxBufferSize: number;
  maxStorageBufferBindingSize: number;
  isFallbackAdapter: boolean;
}

/** Above this a software renderer (the CPU, through SwiftShader or WARP) is warned about. */
export const SOFTWARE_RENDERER_WARN_BYTES = 2 * 2 ** 30;

/** A trainable tensor: value, gradient and AdamW's m and v. */
function param(label: string, elements: number): PlannedBuffer[] {
  return ['', '.grad', '.m', '.v'].map((part) => ({ label: `${label}${part}`, elements }));
}

/** Trainable tensors of these sizes made together (peft/params.ts): each shared buffer once per kind. */
function arenaParams(label: string, sizes: readonly number[]): PlannedBuffer[] {
  return arenaLayout(sizes).buffers.flatMap((b, i) => param(`${label}.arena[${i}]`, b.elements));
}

/** Positions a program runs per row: prompt tuning's virtual tokens come first. */
export function programPositions(run: Pick<RunShape, 'T' | 'adapter'>): number {
  return run.T + (run.adapter.kind === 'prompt' ? run.adapter.virtualTokens : 0);
}

function loraBuffers(rank: number, dropout: number, targeted: readonly LinearModuleInfo[], M: number, gradWorkgroups: number): PlannedBuffer[] {
  const out: PlannedBuffer[] = [];
  // A and B of every module as views into shared buffers (peft/params.ts)
  out.push(...arenaParams('lora', targeted.flatMap((t) => [rank * t.inFeatures, t.outFeatures * rank])));
  // Lora's scratch: both programs (training and evaluation) have the same M rows, so one set:
  // each site's u = dropout(x) A^T (kept for backward), and, shared by the sites, du, dA's and
  // dB's row-chunk sums (ranks up to LORA_MAX_RANK, unless tuned off) or else dropout(x) for dA,
  // and (ranks above LORA_MAX_RANK only) the masked product's scratch.
  for (const t of targeted) out.push({ label: `lora.u[${t.module}]`, elements: M * rank });
  out.push({ label: 'lora.du', elements: M * rank });
  const chunked = rank <= LORA_MAX_RANK && gradWorkgroups > 0;
  const maxIn = targeted.reduce((s, t) => Math.max(s, t.inFeatures), 0);
  if (dropout > 0 && !chunked) out.push({ label: 'lora.xd', elements: M * maxIn });
  if (chunked) {
    const parts = targeted.reduce((s, t) => Math.max(s, loraWeightGradScratch(gradWorkgroups, M, t.inFeatures, rank), loraWeightGradScratch(gradWorkgroups, M, t.outFeatures, rank)), 0);
    out.push({ label: 'lora.gradParts', elements: parts });
  }
  if (dropout > 0 && rank > LORA_MAX_RANK) out.push({ label: 'lora.dxd', elements: M * maxIn });
  return out;
}

/** buildAdamW: the gradient-norm partials of the trainable tensors (their `.grad` buffers; a shared buffer of them, LoRA's, counts as one), and the [norm, coefficient] pair. */
function optimizerBuffers(trainable: readonly PlannedBuffer[]): PlannedBuffer[] {
  const grads = trainable.filter((b) => b.label.endsWith('.grad')).map((b) => b.elements);
  return [{ label: 'gradNorm.partials', elements: Math.max(1, gradNormPartials(grads)) }, { label: 'gradNorm.clip', elements: 2 }];
}

/** The adapter's buffers (parameters with gradients and moments, scratch for M rows) and the optimizer's. */
export function adapterBuffers(run: RunShape): PlannedBuffer[] {
  const { buffers } = methodBuffers(run.adapter, run.B * programPositions(run), { postLayerNorm: false });
  return [...buffers, ...optimizerBuffers(buffers)];
}

/**
 * The method's own buffers for programs of M rows (parameters with gradients and moments, scratch). postLayerNorm: the blocks
 * normalize after the residual sum (the encoders), so Pfeiffer's adapter input goes through that
 * LayerNorm too (its output, mean and rstd).
 */
function methodBuffers(a: AdapterPlan, M: number, opts: { postLayerNorm: boolean }): { buffers: PlannedBuffer[] } {
  const out: PlannedBuffer[] = [];
  switch (a.kind) {
    case 'lora':
      out.push(...loraBuffers(a.rank, a.dropout, a.targeted, M, a.gradWorkgroups ?? DEFAULT_KERNEL_TUNING.loraGradWorkgroups));
      break;
    case 'dora': {
      // LoRA's A and B, the magnitude m, and the weight norm n and g = m / n of each layer
      out.push(...arenaParams('dora', a.targeted.flatMap((t) => [a.rank * t.inFeatures, t.outFeatures * a.rank, t.outFeatures])));
      for (const t of a.targeted) out.push({ label: `${t.module}.dora_norm`, elements: t.outFeatures }, { label: `${t.module}.dora_g`, elements: t.outFeatures });
      const maxIn = a.targeted.reduce((s, t) => Math.max(s, t.inFeatures), 0);
      const maxOut = a.targeted.reduce((s, t) => Math.max(s, t.outFeatures), 0);
      out.push({ label: 'dora.u', elements: M * a.rank }, { label: 'dora.du', elements: M * a.rank }, { label: 'dora.z', elements: M * maxOut }, { label: 'dora.t', elements: M * maxOut });
      if (a.dropout > 0) out.push({ label: 'dora.xd', elements: M * maxIn }, { label: 'dora.dxd', elements: M * maxIn });
      break;
    }
    case 'bottleneck': {
      const C = a.hidden, bn = a.size;
      // every adapter's down, its bias, up and its bias, as views into shared buffers (peft/params.ts)
      out.push(...arenaParams('bottleneck', Array.from({ length: a.layers * a.places }, () => [bn * C, bn, C * bn, C]).flat()));
      for (let l = 0; l < a.layers; l++) {
        // the branch output the layer writes for the adapter (both programs have M rows: one each)
        for (let p = 0; p < a.places; p++) out.push({ label: `bottleneck.branch[l${l}.${p}]`, elements: M * C });
      }
      out.push(
        { label: 'bottleneck.v', elements: M * C }, { label: 'bottleneck.z', elements: M * bn }, { label: 'bottleneck.act', elements: M * bn },
        { label: 'bottleneck.dz', elements: M * bn }, { label: 'bottleneck.dBranch', elements: M * C },
      );
      if (a.inputSum && opts.postLayerNorm) out.push({ label: 'bottleneck.ln.u', elements: M * C }, { label: 'bottleneck.ln.mean', elements: M }, { label: 'bottleneck.ln.rstd', elements: M });
      break;
    }
    case 'ia3': {
      let maxIn = 0, maxOut = 0;
      // the vectors as views into shared buffers (peft/params.ts)
      out.push(...arenaParams('ia3', a.targeted.map((t) => (t.feedforward ? t.info.inFeatures : t.info.outFeatures))));
      for (const t of a.targeted) {
        if (t.feedforward) maxIn = Math.max(maxIn, t.info.inFeatures);
        else maxOut = Math.max(maxOut, t.info.outFeatures);
      }
      // Scratch shared by every site of one row count: x * l for feedforward sites, x W + b for the others.
      if (maxIn) out.push({ label: 'ia3.xs', elements: M * maxIn });
      if (maxOut) out.push({ label: 'ia3.ys', elements: M * maxOut });
      break;
    }
    case 'prompt':
      out.push(...param('prompt_embeddings', a.virtualTokens * a.hidden));
      break;
    case 'prefix': {
      const n = a.virtualTokens, td = a.tokenDim, enc = a.encoderHiddenSize, w = a.width;
      if (!a.projection) {
        out.push(...param('prompt_embeddings', n * w));
      } else {
        out.push(
          ...param('prompt_encoder.embedding.weight', n * td),
          ...param('prompt_encoder.transform.0.weight', enc * td),
          ...param('prompt_encoder.transform.0.bias', enc),
          ...param('prompt_encoder.transform.2.weight', w * enc),
          ...param('prompt_encoder.transform.2.bias', w),
          { label: 'prefix.h1', elements: n * enc },
          { label: 'prefix.act', elements: n * enc },
          { label: 'prefix.dAct', elements: n * enc },
          { label: 'prefix.kv', elements: n * w },
          { label: 'prefix.dkv', elements: n * w },
        );
      }
      break;
    }
  }
  return { buffers: out };
}

/** The linear modules the method acts on (ProgramOptions.methodActsOn). */
function actedOn(a: AdapterPlan): (module: string) => boolean {
  const modules = new Set(a.kind === 'lora' || a.kind === 'dora' ? a.targeted.map((t) => t.module) : a.kind === 'ia3' ? a.targeted.map((t) => t.info.module) : []);
  return (module) => modules.has(module);
}

/**
 * The buffers a causal LM's buildProgram(method, {B, T}) allocates: prompt tuning runs T + n
 * positions; prefix tuning's P rows widen the attention scores (and their gradient) to P + T keys
 * (the model plans those) and need rotary tables up to T + P positions.
 */
export function causalProgramBuffers(model: Pick<CausalLMModel, 'programBuffers'>, run: Pick<RunShape, 'B' | 'T' | 'adapter'>, training: boolean): PlannedBuffer[] {
  const S = programPositions(run);
  const P = run.adapter.kind === 'prefix' ? run.adapter.virtualTokens : 0;
  // LoRA's sites may be column slices of one product's rows (peft/lora.ts Lora.takesColumnSlices)
  const buffers = model.programBuffers({ B: run.B, T: S, training, methodActsOn: actedOn(run.adapter), methodTakesColumnSlices: run.adapter.kind === 'lora' }, P);
  if (P === 0) return buffers;
  const rope = model.programBuffers({ B: 1, T: S + P, training: false }).filter((b) => b.label.startsWith('rope.'));
  return [...rope, ...buffers.filter((b) => !b.label.startsWith('rope.'))];
}

const sum = (buffers: readonly PlannedBuffer[]) => buffers.reduce((s, b) => s + allocatedBytesFor(b.elements), 0);

function summarize(weights: number, trainBuffers: PlannedBuffer[], evalBuffers: PlannedBuffer[], adapter: PlannedBuffer[], device: DeviceLimits): MemoryEstimate {
  const evaluation = sum(evalBuffers);
  const activations = sum(trainBuffers) + evaluation;
  const adapterBytes = sum(adapter);
  const total = weights + activations + adapterBytes;
  // Every buffer is checked against the binding limit (Gpu.tensor) and the buffer limit (Gpu.buffer).
  let largest: PlannedBuffer = { label: '', elements: 0 };
  for (const b of [...trainBuffers, ...evalBuffers, ...adapter]) if (b.elements > largest.elements) largest = b;
  const bufferLimit = Math.min(device.maxBufferSize, device.maxStorageBufferBindingSize);
  const warning =
    device.isFallbackAdapter && total > SOFTWARE_RENDERER_WARN_BYTES
      ? `${fmtGiB(total)} on a software renderer: it lives in this computer's main memory next to everything else, and each step will be very slow. Lower the batch size or max length, or pick a smaller model.`
      : null;
  return {
    weights,
    activations,
    evaluation,
    adapter: adapterBytes,
    total,
    largestBuffer: largest.elements * 4,
    largestBufferLabel: largest.label,
    bufferLimit,
    warning,
  };
}

export function estimateTraining(model: CausalLMModel, run: RunShape, device: DeviceLimits): MemoryEstimate {
  const trainBuffers = causalProgramBuffers(model, run, true);
  const evalBuffers = run.hasValidation ? causalProgramBuffers(model, run, false) : [];
  return summarize(model.weightBytes(), trainBuffers, evalBuffers, adapterBuffers(run), device);
}

// ---- Text classification -----------------------------------------------------------------------

export interface EncoderDims {
  /** hidden, layers, heads, FFN width, labels */
  C: number;
  L: number;
  H: number;
  F: number;
  K: number;
}

/**
 * The buffers EncoderClassifier.buildProgram allocates. With the encoder's backward (the adapter
 * acts on some layer) every layer's activations are kept and the gradient scratch is made;
 * without it two hidden states and one layer's activations are reused.
 */
export function encoderProgramBuffers(d: EncoderDims, opts: { B: number; T: number; training: boolean; encoderBackward: boolean }): PlannedBuffer[] {
  const { C, L, H, F, K } = d;
  const { B, T } = opts;
  const M = B * T;
  const keepAll = opts.training && opts.encoderBackward;
  const out: PlannedBuffer[] = [
    { label: 'tokens', elements: M },
    { label: 'lengths', elements: B },
    { label: 'labels', elements: B },
  ];
  for (let i = 0; i < (keepAll ? L + 1 : 2); i++) out.push({ label: `h${i}`, elements: M * C });
  for (let i = 0; i < (keepAll ? L : 1); i++) {
    const per: [string, number][] = [
      ['q', M * C], ['k', M * C], ['v', M * C], ['att', B * H * T * T], ['ctx', M * C],
      ['a', M * C], ['mean1', M], ['rstd1', M], ['h1', M * C], ['f', M * F], ['g', M * F],
      ['o', M * C], ['mean2', M], ['rstd2', M],
    ];
    for (const [name, elements] of per) out.push({ label: `l${i}.${name}`, elements });
  }
  out.push(
    { label: 'emb', elements: M * C }, { label: 'emb.mean', elements: M }, { label: 'emb.rstd', elements: M },
    { label: 'head.z', elements: B * C }, { label: 'head.logits.work', elements: B * K }, { label: 'logits', elements: B * K },
    { label: 'gradScale', elements: 1 }, { label: 'losses', elements: B }, { label: 'lossSum', elements: 1 },
  );
  if (opts.training) out.push({ label: 'head.dz', elements: B * C });
  if (keepAll) {
    out.push(
      { label: 'dh', elements: M * C }, { label: 'dpre', elements: M * C }, { label: 'dg', elements: M * F }, { label: 'dctx', elements: M * C },
      { label: 'dq', elements: M * C }, { label: 'dk', elements: M * C }, { label: 'dv', elements: M * C }, { label: 'dP', elements: B * H * T * T },
    );
  }
  return out;
}

export interface ClassifierRunShape {
  /** Rows per micro-batch and the real tokens per row (prompt tuning's virtual tokens not included). */
  B: number;
  T: number;
  /** Labels of this run (the loaded head may have another number: the run reloads it). */
  K: number;
  /** The method on the encoder (adapterPlan), or null for a head-only run. */
  adapter: AdapterPlan | null;
  hasValidation: boolean;
}

/** The head's trainable tensors (value, gradient, moments) for K labels, as the model would hold them. */
export function headBuffers(model: Pick<EncoderClassifier, 'headParams' | 'K' | 'spec'>, K: number): PlannedBuffer[] {
  const classifier = `base_model.model.${model.spec.head.classifier}.`;
  const out: PlannedBuffer[] = [];
  for (const p of model.headParams) {
    const size = p.shape.reduce((a, b) => a * b, 1);
    out.push(...param(p.name, p.name.startsWith(classifier) ? (size / model.K) * K : size));
  }
  return out;
}

/** Whether the method makes the encoder's program run its backward (EncoderClassifier's lowestTrainableLayer < L). */
function trainsEncoder(a: AdapterPlan | null, layers: number): boolean {
  if (!a) return false;
  switch (a.kind) {
    case 'lora':
    case 'dora':
    case 'ia3':
      return a.targeted.length > 0;
    case 'prompt':
    case 'prefix':
      return true; // the gradient goes down to the embeddings (prompt) or to every layer's prefix rows
    case 'bottleneck':
      return a.layers > 0 && layers > 0;
  }
}

/**
 * An encoder classifier's two programs with the method on it: prompt tuning runs T + n positions
 * and, training, takes the gradient through the embeddings' LayerNorm (demb); prefix tuning's P rows
 * widen the attention scores and their gradient to P + S keys.
 */
export function encoderRunBuffers(d: EncoderDims, run: Pick<ClassifierRunShape, 'B' | 'T' | 'adapter'>, training: boolean): PlannedBuffer[] {
  const a = run.adapter;
  const S = run.T + (a?.kind === 'prompt' ? a.virtualTokens : 0);
  const encoderBackward = training && trainsEncoder(a, d.L);
  const buffers = encoderProgramBuffers(d, { B: run.B, T: S, training, encoderBackward });
  if (a?.kind === 'prompt' && encoderBackward) buffers.push({ label: 'demb', elements: run.B * S * d.C });
  if (a?.kind === 'prefix') {
    const P = a.virtualTokens;
    return buffers.map((b) => (b.label.endsWith('.att') || b.label === 'dP' ? { ...b, elements: (b.elements / S) * (S + P) } : b));
  }
  return buffers;
}

/**
 * A classification run: the frozen encoder (its weights without the head that trains), both
 * programs, and the method + the head (trained in full, PEFT's modules_to_save) with their AdamW state.
 */
export function estimateClassifierTraining(
  model: Pick<EncoderClassifier, 'headParams' | 'K' | 'spec' | 'weightBytes' | 'C' | 'L' | 'H' | 'F'>,
  run: ClassifierRunShape,
  device: DeviceLimits,
): MemoryEstimate {
  const d: EncoderDims = { C: model.C, L: model.L, H: model.H, F: model.F, K: run.K };
  const trainBuffers = encoderRunBuffers(d, run, true);
  const evalBuffers = run.hasValidation ? encoderRunBuffers(d, run, false) : [];
  const weights = model.weightBytes() - sum(headBuffers(model, model.K));
  const adapter: PlannedBuffer[] = [];
  if (run.adapter) {
    // both programs have the same rows (B x (T + virtual tokens)): one set of method scratch
    const method = methodBuffers(run.adapter, run.B * programPositions({ T: run.T, adapter: run.adapter }), { postLayerNorm: true });
    adapter.push(...method.buffers);
  }
  adapter.push(...headBuffers(model, run.K));
  adapter.push(...optimizerBuffers(adapter));
  return summarize(weights, trainBuffers, evalBuffers, adapter, device);
}

function fmtGiB(n: number): string {
  return `${(n / 2 ** 30).toFixed(2)} GB`;
}
