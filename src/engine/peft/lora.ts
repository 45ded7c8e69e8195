// LoRA exactly as PEFT defines it: for a targeted linear layer,
//   y = x W + b + scale * dropout(x) A^T B^T,   A: [r, in], B: [out, r],
// scale = alpha / r (or alpha / sqrt(r) with rsLoRA), A kaiming-uniform(a=sqrt(5)), B zero.
//
// Forward keeps u = dropout(x) A^T per site (an [rows, r] tensor: 64 KiB for GPT-2's 2048 rows at
// r = 8) for backward; backward regenerates the dropout mask from the step seed (dropout(x) for
// dA, and the mask on dx), so the rest is scratch shared by all sites of a program. Ranks up to 16
// go through shaders/lora.wgsl (u, du, the up projection and the masked dx each one pass over
// their large operand, the mask computed in place; dA and dB as sums over chunks of rows, dA's
// mask again in place); larger ones through the matmul and the dropout kernel.

import type { Gpu } from '../gpu/gpu';
import type { Op } from '../gpu/dispatch';
import type { Tensor } from '../gpu/tensor';
import { matmul } from '../kernels/matmul';
import { dropoutBackward, dropoutForward } from '../kernels/dropout';
import { LORA_MAX_RANK, loraExpand, loraProject, loraWeightGrad, loraWeightGradScratch } from '../kernels/lora';
import type { StepUniforms } from '../kernels/step-uniforms';
import type { LinearGrad, LinearSite, PeftMethod, TrainableParam } from './method';
import { destroyParams, makeParams, type ParamSet } from './params';

export interface LoraSettings {
  r: number;
  alpha: number;
  dropout: number;
  /** PEFT target_modules: a module matches when its path equals a target or ends with '.' + target. */
  targetModules: string[];
  useRslora: boolean;
}

export interface LinearModuleInfo {
  module: string;
  inFeatures: number;
  outFeatures: number;
  /** 'in_out' = GPT-2 Conv1D (PEFT then sets fan_in_fan_out). */
  weightLayout: 'in_out' | 'out_in';
  /** The frozen weight on the GPU, stored as weightLayout says (DoRA starts its magnitude from it). */
  weight?: Tensor;
}

export class LoraError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'LoraError';
  }
}

/** PEFT's rule for a list of target_modules (strings, not a regex). */
export function moduleMatches(module: string, targets: readonly string[]): boolean {
  return targets.some((t) => module === t || module.endsWith(`.${t}`));
}

/** Checks r, alpha and dropout; returns PEFT's scaling: alpha / r, or alpha / sqrt(r) with rsLoRA. */
export function loraScale(settings: LoraSettings, what = 'LoRA'): number {
  const { r, alpha, dropout } = settings;
  if (!Number.isInteger(r) || r < 1) throw new LoraError(`${what} rank must be a positive integer (got ${r})`);
  if (!(alpha > 0)) throw new LoraError(`${what} alpha must be positive (got ${alpha})`);
  if (!(dropout >= 0 && dropout < 1)) throw new LoraError(`${what} dropout must be in [0, 1) (got ${dropout})`);
  return settings.useRslora ? alpha / Math.sqrt(r) : alpha / r;
}

/**
 * The linear layers PEFT wraps for these target_modules ('all-linear': every linear layer but the
 * output head, which `linears` does not list); throws, naming the model's layers, when none match.
 */
export function loraTargets(settings: LoraSettings, linears: readonly LinearModuleInfo[], what = 'LoRA'): LinearModuleInfo[] {
  const targeted = settings.targetModules.includes('all-linear') ? [...linears] : linears.filter((l) => moduleMatches(l.module, settings.targetModules));
  if (targeted.length === 0) {
    const names = [...new Set(linears.map((l) => l.module.split('.').slice(-2).join('.')))].join(', ');
    throw new LoraError(`${what} target modules [${settings.targetModules.join(', ')}] match no layer of this model; its linear layers are: ${names}`);
  }
  return targeted;
}

/** PEFT's init of lora_A [r, in]: kaiming_uniform_(a=sqrt(5)), i.e. U(-1/sqrt(in), 1/sqrt(in)), from `random`. */
export function loraAInit(r: number, inFeatures: number, random: () => number): Float32Array {
  const bound = 1 / Math.sqrt(inFeatures);
  const a = new Float32Array(r * inFeatures);
  for (let j = 0; j < a.length; j++) a[j] = (random() * 2 - 1) * bound;
  return a;
}

/** The adapter_config.json PEFT (0.21) saves for a LoRA (use_dora false) or DoRA (true) on these modules. */
export function loraAdapterConfig(settings: LoraSettings, wrapped: readonly LinearModuleInfo[], baseModel: string, useDora: boolean): Record<string, unknown> {
  const anyConv1d = wrapped.some((m) => m.weightLayout === 'in_out');
  // PEFT (0.21) saves 'all-linear' expanded to the full path of every layer it wrapped
  const targets = settings.targetModules.includes('all-linear') ? wrapped.map((m) => m.module).sort() : [...new Set(settings.targetModules)];
  return {
    peft_type: 'LORA',
    task_type: 'CAUSAL_LM',
    base_model_name_or_path: baseModel,
    r: settings.r,
    lora_alpha: settings.alpha,
    lora_dropout: settings.dropout,
    target_modules: targets,
    fan_in_fan_out: anyConv1d,
    bias: 'none',
    use_rslora: settings.useRslora,
    use_dora: useDora,
    init_lora_weights: true,
    inference_mode: true,
    modules_to_save: null,
    layers_to_transform: null,
    layers_pattern: null,
    rank_pattern: {},
    alpha_pattern: {},
    revision: null,
  };
}

interface Scratch {
  du: Tensor;
  /** dropout(x) (p > 0, dA through the matmul only) */
  xd: Tensor | null;
  /** loraWeightGrad's row-chunk sums (dA and dB through it only) */
  gradParts: Tensor | null;
  /** the [rows, in] product before the dropout mask on the way back (p > 0 and rank > LORA_MAX_RANK only) */
  dxd: Tensor | null;
}

interface LoraModule {
  info: LinearModuleInfo;
  A: TrainableParam;
  B: TrainableParam;
  salt: number;
}

export class Lora implements PeftMethod {
  readonly kind = 'lora' as const;
  /** Its sites' y and dy may be column slices of wider rows (LinearSite.yOffset, yStride). */
  readonly takesColumnSlices = true;
  readonly params: TrainableParam[];
  readonly scale: number;
  private readonly modules = new Map<string, LoraModule>();
  private readonly scratch = new Map<number, Scratch>();
  /** u = dropout(x) A^T of each site, keyed by module and row count */
  private readonly siteU = new Map<string, Tensor>();
  private readonly maxIn: number;
  private readonly targeted: readonly LinearModuleInfo[];
  /** The parameters, gradients and moments, in shared buffers (peft/params.ts). */
  private readonly paramSet: ParamSet;

  /**
   * @param linears every linear module of the model that LoRA could target
   * @param random uniform [0,1) source for A's init (seeded by the caller)
   */
  constructor(
    private readonly gpu: Gpu,
    readonly settings: LoraSettings,
    linears: readonly LinearModuleInfo[],
    private readonly step: StepUniforms,
    random: () => number,
  ) {
    this.scale = loraScale(settings);
    const targeted = loraTargets(settings, linears, 'LoRA');
    // A and B of every module, in that order (A's init drawn module by module), B zero
    this.paramSet = makeParams(gpu, 'lora', targeted.flatMap((info) => {
      const base = `base_model.model.${info.module}`;
      return [
        { name: `${base}.lora_A.weight`, shape: [settings.r, info.inFeatures], init: loraAInit(settings.r, info.inFeatures, random) },
        { name: `${base}.lora_B.weight`, shape: [info.outFeatures, settings.r] },
      ];
    }));
    this.params = this.paramSet.params;
    targeted.forEach((info, i) => this.modules.set(info.module, { info, A: this.params[2 * i], B: this.params[2 * i + 1], salt: 0x9e37 + i * 7919 }));
    this.maxIn = Math.max(...targeted.map((l) => l.inFeatures));
    this.targeted = targeted;
  }

  get targetedModules(): string[] {
    return [...this.modules.keys()];
  }

  targetsLinear(module: string): boolean {
    return this.modules.has(module);
  }

  private scratchFor(rows: number): Scratch {
    let s = this.scratch.get(rows);
    if (!s) {
      const r = this.settings.r;
      const p = this.settings.dropout > 0;
      const chunked = this.chunkedGrads;
      const parts = chunked ? Math.max(...this.targeted.flatMap((l) => [l.inFeatures, l.outFeatures].map((cols) => loraWeightGradScratch(this.gpu.tuning.loraGradWorkgroups, rows, cols, r)))) : 0;
      s = {
        du: this.gpu.tensor([rows, r], `lora.du[${rows}]`),
        xd: p && !chunked ? this.gpu.tensor([rows, this.maxIn], `lora.xd[${rows}]`) : null,
        gradParts: chunked ? this.gpu.tensor([parts], `lora.gradParts[${rows}]`) : null,
        dxd: p && !this.fused ? this.gpu.tensor([rows, this.maxIn], `lora.dxd[${rows}]`) : null,
      };
      this.scratch.set(rows, s);
    }
    return s;
  }

  /** Whether the rank-r products go through shaders/lora.wgsl (ranks up to LORA_MAX_RANK). */
  private get fused(): boolean {
    return this.settings.r <= LORA_MAX_RANK;
  }

  /** Whether dA and dB go through loraWeightGrad (fused ranks, unless tuning.loraGradWorkgroups turns it off). */
  private get chunkedGrads(): boolean {
    return this.fused && this.gpu.tuning.loraGradWorkgroups > 0;
  }

  private uFor(site: LinearSite): Tensor {
    const key = `${site.module}|${site.rows}`;
    let u = this.siteU.get(key);
    if (!u) {
      u = this.gpu.tensor([site.rows, this.settings.r], `lora.u[${site.module}][${site.rows}]`);
      this.siteU.set(key, u);
    }
    return u;
  }

  private module(site: LinearSite): LoraModule {
    const m = this.modules.get(site.module);
    if (!m) throw new LoraError(`no LoRA on ${site.module}`);
    if (m.info.inFeatures !== site.inFeatures || m.info.outFeatures !== site.outFeatures) {
      throw new LoraError(`${site.module}: site is ${site.inFeatures}->${site.outFeatures}, LoRA was built for ${m.info.inFeatures}->${m.info.outFeatures}`);
    }
    return m;
  }

  /** dropout(x) into scratch when training with p > 0 (else x itself), and the ops that make it. */
  private droppedInput(site: LinearSite, m: LoraModule, s: Scratch, p: number): { x: Tensor; ops: Op[] } {
    if (p === 0) return { x: site.x, ops: [] };
    return { x: s.xd!, ops: [dropoutForward(this.gpu, { x: site.x, out: s.xd!, n: site.rows * site.inFeatures, p, step: this.step, salt: m.salt })] };
  }

  linearForward(site: LinearSite): Op[] {
    const m = this.module(site);
    const s = this.scratchFor(site.rows);
    const u = this.uFor(site);
    const { rows, inFeatures: K, outFeatures: N } = site;
    // y may be a column slice of wider rows (LinearSite.yOffset, yStride)
    const yOff = site.yOffset ?? 0, ldy = site.yStride ?? N;
    const r = this.settings.r;
    const p = site.training ? this.settings.dropout : 0;
    const g = this.gpu;
    if (this.fused) {
      // u = dropout(x) A^T (kept for backward); y += scale * u B^T
      return [
        loraProject(g, { x: site.x, w: m.A.value, wLayout: 'r_cols', out: u, rows, cols: K, r, alpha: 1, step: this.step, dropout: p > 0 ? { p, salt: m.salt } : undefined }),
        loraExpand(g, { u, w: m.B.value, wLayout: 'cols_r', out: site.y, offsetOut: yOff, ldo: ldy, rows, cols: N, r, alpha: this.scale, accumulate: true, step: this.step }),
      ];
    }
    const { x, ops } = this.droppedInput(site, m, s, p);
    ops.push(matmul(g, { label: `${site.module}.lora_A`, a: x, b: m.A.value, c: u, M: rows, N: r, K, transB: true }));
    ops.push(matmul(g, { label: `${site.module}.lora_B`, a: u, b: m.B.value, c: site.y, offsetC: yOff, ldc: ldy, M: rows, N, K: r, transB: true, alpha: this.scale, accumulate: true }));
    return ops;
  }

  linearBackward(site: LinearSite, grad: LinearGrad): Op[] {
    const m = this.module(site);
    const s = this.scratchFor(site.rows);
    const u = this.uFor(site);
    const { rows, inFeatures: K, outFeatures: N } = site;
    const r = this.settings.r;
    const g = this.gpu;
    const p = this.settings.dropout;
    const ops: Op[] = [];
    // dy laid out as y (LinearSite.yOffset, yStride)
    const dyOff = site.yOffset ?? 0, lddy = site.yStride ?? N;
    // dB += scale * dy^T u (u from the forward)
    if (this.chunkedGrads) {
      ops.push(...loraWeightGrad(g, { big: grad.dy, offsetBig: dyOff, ld: lddy, small: u, w: m.B.grad, wLayout: 'cols_r', parts: s.gradParts!, rows, cols: N, r, alpha: this.scale, accumulate: true, step: this.step }));
    } else {
      ops.push(matmul(g, { label: `${site.module}.dB`, a: grad.dy, offsetA: dyOff, lda: lddy, b: u, c: m.B.grad, M: N, N: r, K: rows, transA: true, alpha: this.scale, accumulate: true }));
    }
    // du = scale * dy B
    if (this.fused) ops.push(loraProject(g, { x: grad.dy, offsetX: dyOff, ldx: lddy, w: m.B.value, wLayout: 'cols_r', out: s.du, rows, cols: N, r, alpha: this.scale, step: this.step }));
    else ops.push(matmul(g, { label: `${site.module}.du`, a: grad.dy, offsetA: dyOff, lda: lddy, b: m.B.value, c: s.du, M: rows, N: r, K: N, alpha: this.scale }));
    // dA += du^T dropout(x) (the forward's mask, regenerated)
    if (this.chunkedGrads) {
      ops.push(...loraWeightGrad(g, { big: site.x, small: s.du, w: m.A.grad, wLayout: 'r_cols', parts: s.gradParts!, rows, cols: K, r, alpha: 1, accumulate: true, step: this.step, dropout: p > 0 ? { p, salt: m.salt } : undefined }));
    } else {
      const dropped = this.droppedInput(site, m, s, p);
      ops.push(...dropped.ops);
      ops.push(matmul(g, { label: `${site.module}.dA`, a: s.du, b: dropped.x, c: m.A.grad, M: r, N: K, K: rows, transA: true, accumulate: true }));
    }
    if (grad.dx) {
      // dx += mask * (du A) / (1 - p)
      if (this.fused) {
        ops.push(loraExpand(g, { u: s.du, w: m.A.value, wLayout: 'r_cols', out: grad.dx, rows, cols: K, r, alpha: 1, accumulate: true, step: this.step, dropout: p > 0 ? { p, salt: m.salt } : undefined }));
      } else if (p > 0) {
        ops.push(matmul(g, { label: `${site.module}.dxd`, a: s.du, b: m.A.value, c: s.dxd!, M: rows, N: K, K: r }));
        ops.push(dropoutBackward(g, { dout: s.dxd!, dx: grad.dx, n: rows * K, p, step: this.step, salt: m.salt, accumulate: true }));
      } else {
        ops.push(matmul(g, { label: `${site.module}.dx`, a: s.du, b: m.A.value, c: grad.dx, M: rows, N: K, K: r, accumulate: true }));
      }
    }
    return ops;
  }

  /**
   * Frees the parameters, their gradients and AdamW moments, and the scratch of every row count
   * seen. Programs and optimizers built over this adapter must not run afterwards.
   */
  destroy(): void {
    destroyParams(this.gpu, this.paramSet);
    for (const sc of this.scratch.values()) for (const t of [sc.du, sc.xd, sc.gradParts, sc.dxd]) if (t) this.gpu.destroyTensor(t);
    this.scratch.clear();
    for (const u of this.siteU.values()) this.gpu.destroyTensor(u);
    this.siteU.clear();
  }

  adapterConfig(baseModel: string): Record<string, unknown> {
    return loraAdapterConfig(this.settings, [...this.modules.values()].map((m) => m.info), baseModel, false);
  }
}
