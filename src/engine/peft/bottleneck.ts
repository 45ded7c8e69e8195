// Bottleneck adapters as the AdapterHub `adapters` library builds them (adapters/methods/modeling.py
// Adapter, bottleneck.py BottleneckLayer, configuration/adapter_config.py), for GPT-2 and the Llama
// family, whose decoder layers call
//   attention_adapters(attn_output, residual, None)   after the attention block's output projection
//   output_adapters(mlp_output, residual, None)       after the MLP
// (layer_norm None: the pre-LN blocks have no norm after the residual sum). One adapter is
//   f(u) = up(act(down(u))),   down: Linear(hidden, hidden // reduction_factor), up: Linear(.., hidden)
// (scaling 1.0, no gating, no extra LayerNorms, dropout 0) placed as the two presets place it:
//   Houlsby (DoubleSeqBnConfig: mh_adapter and output_adapter, original_ln_before False, swish):
//       x2  = x  + a + f_attn(a)          a = the attention block's output (after c_proj / o_proj)
//       out = x2 + h + f_out(h)           h = the MLP's output
//   Pfeiffer (SeqBnConfig: output_adapter only, original_ln_before True, relu):
//       x2  = x  + a
//       out = v + f_out(v),  v = x2 + h   (the adapter sees the sub-block's output plus its residual)
// (Adapter.pre_forward / forward / post_forward: residual_before_ln True takes the adapter's own
// residual from the sub-block output before any add; original_ln_before adds the block's residual
// to the adapter's INPUT; original_ln_after, with no layer norm, adds it to the output. Pfeiffer:
// f(v) + h + x2 = v + f(v). Houlsby: f(a) + a + x.)
// Post-LayerNorm encoders (BERT's BertSelfOutput / BertOutput, DistilBERT's TransformerBlock) pass
// the block's LayerNorm: original_ln_after makes the block output LN(adapter output + residual),
// i.e. LN(x + h + f(u)), the architecture's own LayerNorm on the sum this method writes; and
// original_ln_before (Pfeiffer) feeds the adapter u = LN(h + x), the same LayerNorm applied to
// the plain sum first (so it runs twice). Houlsby's input stays the sub-block output h.
// Init as the presets' default init_weights "bert": both weights N(0, 0.02), biases 0.
//
// Exported in AdapterHub's layout, not PEFT's (PEFT has no bottleneck adapters): adapter_config.json
// as `adapters` writes it (the full BnConfig under "config", model_type, hidden_size, model_class,
// model_name, name, version) and adapter.safetensors (AdapterHub's safetensors weights name) with
// its state-dict names, e.g. transformer.h.0.output_adapters.adapters.<name>.adapter_down.0.weight.
//
// The architecture writes a targeted branch's output into branchOutput(...) (one tensor per layer,
// location and row count, kept for backward); per row count the method keeps scratch: the adapter's
// input v (Pfeiffer, recomputed in backward), the bottleneck before and after the activation, and
// the branch gradient.

import type { Gpu } from '../gpu/gpu';
import type { Op } from '../gpu/dispatch';
import type { Tensor } from '../gpu/tensor';
import { matmul } from '../kernels/matmul';
import { copyOp } from '../kernels/copy';
import { add } from '../kernels/add';
import { columnSum } from '../kernels/column-sum';
import { activationBackward, activationForward } from '../kernels/relu-tanh';
import { geluBackward, geluForward } from '../kernels/gelu';
import { siluBackward, siluForward } from '../kernels/silu';
import { layerNormBackward, layerNormForward } from '../kernels/layernorm';
import type { BranchLocation, BranchSite, PeftMethod, TrainableParam } from './method';
import { destroyParams, makeParams, type ParamSet } from './params';
import { normalValues } from './prompt-tuning';

export type BottleneckType = 'houlsby' | 'pfeiffer';
/** AdapterHub's names (transformers' ACT2FN): relu, swish (SiLU), gelu (the exact, erf GELU), tanh. */
export type BottleneckActivation = 'relu' | 'swish' | 'gelu' | 'tanh';
export const BOTTLENECK_ACTIVATIONS: readonly BottleneckActivation[] = ['relu', 'swish', 'gelu', 'tanh'];

export interface BottleneckSettings {
  type: BottleneckType;
  /** bottleneck = floor(hidden / reduction_factor), at least 1 (default 16). */
  reductionFactor: number;
  /** default: the preset's (Houlsby swish, Pfeiffer relu) */
  nonLinearity: BottleneckActivation;
  /** The adapter's name inside the state-dict names and the config (AdapterHub's adapter name). */
  name: string;
}

/** What the AdapterHub config records about the model, and where its layers live. */
export interface BottleneckModelDims {
  modelType: string;
  /** transformers' class, e.g. GPT2LMHeadModel (AdapterHub's model_class) */
  modelClass: string;
  hidden: number;
  layers: number;
  /** Module path of layer i without the index: transformer.h (GPT-2), model.layers (Llama family) */
  layersPath: string;
  /**
   * The module holding the adapter layer at `location` of layer i, where it is not
   * `${layersPath}.${i}` (BERT: bert.encoder.layer.i.attention.output / bert.encoder.layer.i.output).
   */
  adapterModule?(layer: number, location: BranchLocation): string;
}

/** The preset defaults (SeqBnConfig = Pfeiffer, DoubleSeqBnConfig = Houlsby). */
export const BOTTLENECK_PRESETS: Record<BottleneckType, { nonLinearity: BottleneckActivation; reductionFactor: number; mhAdapter: boolean; originalLnBefore: boolean; config: string }> = {
  houlsby: { nonLinearity: 'swish', reductionFactor: 16, mhAdapter: true, originalLnBefore: false, config: 'double_seq_bn' },
  pfeiffer: { nonLinearity: 'relu', reductionFactor: 16, mhAdapter: false, originalLnBefore: true, config: 'seq_bn' },
};

/** The AdapterHub version whose file layout the export follows (written as "version"). */
export const ADAPTERHUB_VERSION = 'adapters.1.2.0';

export class BottleneckError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'BottleneckError';
  }
}

interface AdapterModule {
  layer: number;
  location: BranchLocation;
  down: TrainableParam; // [bn, C]
  downBias: TrainableParam; // [bn]
  up: TrainableParam; // [C, bn]
  upBias: TrainableParam; // [C]
}

interface Scratch {
  /** v = residual + branch (Pfeiffer's adapter input, recomputed in backward) [rows, C] */
  v: Tensor;
  /** LN(v), its mean and rstd (Pfeiffer in a post-LayerNorm block), allocated when first needed */
  ln: { u: Tensor; mean: Tensor; rstd: Tensor } | null;
  z: Tensor; // [rows, bn] before the activation
  act: Tensor; // [rows, bn] after it
  dz: Tensor; // [rows, bn]
  dBranch: Tensor; // [rows, C]
}

const key = (layer: number, location: BranchLocation): string => `${layer}.${location}`;

export class BottleneckAdapters implements PeftMethod {
  readonly kind = 'bottleneck' as const;
  readonly exportFormat = 'adapterhub' as const;
  /** Python floats in BnConfig (Adapter checks isinstance(scaling, float); a JSON 1 loads as an int). */
  readonly configFloatKeys = ['scaling', 'dropout', 'stochastic_depth'] as const;
  readonly params: TrainableParam[];
  /** Every adapter's weights and biases, their gradients and moments, in shared buffers (peft/params.ts). */
  private readonly paramSet: ParamSet;
  /** The bottleneck width: floor(hidden / reduction_factor), at least 1. */
  readonly size: number;
  private readonly modules = new Map<string, AdapterModule>();
  private readonly branches = new Map<string, Tensor>();
  private readonly scratch = new Map<number, Scratch>();

  /** `random`: uniform [0, 1) source for the N(0, 0.02) weights. */
  constructor(
    private readonly gpu: Gpu,
    readonly settings: BottleneckSettings,
    readonly dims: BottleneckModelDims,
    random: () => number,
  ) {
    const { type, reductionFactor: rf, nonLinearity, name } = settings;
    if (!(type in BOTTLENECK_PRESETS)) throw new BottleneckError(`bottleneck adapter type "${type}": use houlsby or pfeiffer`);
    if (!(Number.isFinite(rf) && rf > 0)) throw new BottleneckError(`the reduction factor must be a positive number (got ${rf})`);
    if (!BOTTLENECK_ACTIVATIONS.includes(nonLinearity)) throw new BottleneckError(`non-linearity "${nonLinearity}": use ${BOTTLENECK_ACTIVATIONS.join(', ')}`);
    if (!/^[A-Za-z0-9_-]+$/.test(name)) throw new BottleneckError(`adapter name "${name}": use letters, digits, _ and - (it becomes part of the tensor names)`);
    // AdapterHub: down_sample = int(hidden_size // reduction_factor), raised to 1 if smaller
    this.size = Math.max(1, Math.floor(dims.hidden / rf));
    const C = dims.hidden, bn = this.size;
    // down, its bias, up, its bias of every (layer, location), in that order (weights drawn in that order too)
    const normal = (n: number): Float32Array => Float32Array.from(normalValues(n, random), (v) => v * 0.02);
    const places = Array.from({ length: dims.layers }, (_, l) => this.locations().map((location) => ({ l, location }))).flat();
    this.paramSet = makeParams(gpu, 'bottleneck', places.flatMap(({ l, location }) => {
      const holder = dims.adapterModule?.(l, location) ?? `${dims.layersPath}.${l}`;
      const p = `${holder}.${location === 'attention' ? 'attention_adapters' : 'output_adapters'}.adapters.${name}`;
      return [
        { name: `${p}.adapter_down.0.weight`, shape: [bn, C], init: normal(bn * C) },
        { name: `${p}.adapter_down.0.bias`, shape: [bn] },
        { name: `${p}.adapter_up.weight`, shape: [C, bn], init: normal(C * bn) },
        { name: `${p}.adapter_up.bias`, shape: [C] },
      ];
    }));
    this.params = this.paramSet.params;
    places.forEach(({ l, location }, i) => {
      const [down, downBias, up, upBias] = this.params.slice(4 * i, 4 * i + 4);
      this.modules.set(key(l, location), { layer: l, location, down, downBias, up, upBias });
    });
  }

  /** Where the adapters sit: Houlsby after both sub-blocks, Pfeiffer after the MLP only. */
  locations(): BranchLocation[] {
    return BOTTLENECK_PRESETS[this.settings.type].mhAdapter ? ['attention', 'output'] : ['output'];
  }

  targetsLinear(): boolean {
    return false;
  }

  linearForward(site: { module: string }): Op[] {
    throw new BottleneckError(`bottleneck adapters have no linear-layer hook (${site.module})`);
  }

  linearBackward(site: { module: string }): Op[] {
    throw new BottleneckError(`bottleneck adapters have no linear-layer hook (${site.module})`);
  }

  targetsBranch(layer: number, location: BranchLocation): boolean {
    return this.modules.has(key(layer, location));
  }

  branchOutput(layer: number, location: BranchLocation, rows: number): Tensor {
    if (!this.targetsBranch(layer, location)) throw new BottleneckError(`no bottleneck adapter at layer ${layer} (${location})`);
    const k = `${key(layer, location)}.${rows}`;
    let t = this.branches.get(k);
    if (!t) {
      t = this.gpu.tensor([rows, this.dims.hidden], `bottleneck.branch[${k}]`);
      this.branches.set(k, t);
    }
    return t;
  }

  private scratchFor(rows: number): Scratch {
    let s = this.scratch.get(rows);
    if (!s) {
      const C = this.dims.hidden, bn = this.size;
      const t = (shape: number[], label: string): Tensor => this.gpu.tensor(shape, `bottleneck.${label}[${rows}]`);
      s = { v: t([rows, C], 'v'), ln: null, z: t([rows, bn], 'z'), act: t([rows, bn], 'act'), dz: t([rows, bn], 'dz'), dBranch: t([rows, C], 'dBranch') };
      this.scratch.set(rows, s);
    }
    return s;
  }

  private module(site: BranchSite): AdapterModule {
    const m = this.modules.get(key(site.layer, site.location));
    if (!m) throw new BottleneckError(`no bottleneck adapter at layer ${site.layer} (${site.location})`);
    if (site.width !== this.dims.hidden) throw new BottleneckError(`layer ${site.layer}: the branch is ${site.width} wide, the adapter was built for ${this.dims.hidden}`);
    return m;
  }

  /** z = u Wd^T + bd; act = f(z) */
  private down(m: AdapterModule, u: Tensor, rows: number, s: Scratch): Op[] {
    const g = this.gpu, C = this.dims.hidden, bn = this.size, n = rows * bn;
    const ops: Op[] = [matmul(g, { label: `${m.down.name}`, a: u, b: m.down.value, transB: true, bias: m.downBias.value, c: s.z, M: rows, N: bn, K: C })];
    switch (this.settings.nonLinearity) {
      case 'relu':
      case 'tanh':
        ops.push(activationForward(g, this.settings.nonLinearity, { x: s.z, out: s.act, n }));
        break;
      case 'gelu':
        ops.push(geluForward(g, { x: s.z, out: s.act, n, form: 'erf' }));
        break;
      case 'swish':
        ops.push(siluForward(g, { x: s.z, out: s.act, n }));
        break;
    }
    return ops;
  }

  /** LN(v)'s tensors for this row count. */
  private lnScratch(s: Scratch, rows: number): { u: Tensor; mean: Tensor; rstd: Tensor } {
    if (!s.ln) {
      const t = (shape: number[], label: string): Tensor => this.gpu.tensor(shape, `bottleneck.${label}[${rows}]`);
      s.ln = { u: t([rows, this.dims.hidden], 'ln.u'), mean: t([rows], 'ln.mean'), rstd: t([rows], 'ln.rstd') };
    }
    return s.ln;
  }

  /**
   * The adapter's input: the branch (Houlsby: original_ln_before False) or residual + branch
   * (Pfeiffer), written to `into` when it is a sum, then put through the block's LayerNorm when the
   * block has one after the sum (post-LN encoders).
   */
  private input(site: BranchSite, into: Tensor, s: Scratch, ops: Op[]): Tensor {
    if (!BOTTLENECK_PRESETS[this.settings.type].originalLnBefore) return site.branch;
    ops.push(add(this.gpu, site.residual, site.branch, into));
    if (!site.layerNorm) return into;
    const ln = this.lnScratch(s, site.rows);
    const { weight, bias, eps } = site.layerNorm;
    ops.push(layerNormForward(this.gpu, { x: into, weight, bias, out: ln.u, mean: ln.mean, rstd: ln.rstd, rows: site.rows, C: this.dims.hidden, eps }));
    return ln.u;
  }

  branchForward(site: BranchSite): Op[] {
    const m = this.module(site);
    const s = this.scratchFor(site.rows);
    const g = this.gpu, C = this.dims.hidden, bn = this.size;
    const ops: Op[] = [];
    // out = residual + branch, then out += up(act(down(u))) with u the branch, that sum, or its LayerNorm
    const u = this.input(site, site.out, s, ops);
    if (u === site.branch) ops.push(add(g, site.residual, site.branch, site.out));
    ops.push(...this.down(m, u, site.rows, s));
    ops.push(matmul(g, { label: m.up.name, a: s.act, b: m.up.value, transB: true, bias: m.upBias.value, c: site.out, M: site.rows, N: C, K: bn, accumulate: true }));
    return ops;
  }

  branchBackward(site: BranchSite, dOut: Tensor): { ops: Op[]; dBranch: Tensor } {
    const m = this.module(site);
    const s = this.scratchFor(site.rows);
    const g = this.gpu, C = this.dims.hidden, bn = this.size, rows = site.rows, n = rows * bn;
    const ops: Op[] = [];
    const u = this.input(site, s.v, s, ops);
    ops.push(...this.down(m, u, rows, s));
    // up: dWu += d^T act, dbu += colsum(d); dz = (d Wu) * f'(z)
    ops.push(matmul(g, { label: `${m.up.name}.grad`, a: dOut, transA: true, b: s.act, c: m.up.grad, M: C, N: bn, K: rows, accumulate: true }));
    ops.push(columnSum(g, { x: dOut, out: m.upBias.grad, rows, N: C, accumulate: true }));
    ops.push(matmul(g, { label: `${m.up.name}.dact`, a: dOut, b: m.up.value, c: s.dz, M: rows, N: bn, K: C }));
    switch (this.settings.nonLinearity) {
      case 'relu':
      case 'tanh':
        ops.push(activationBackward(g, this.settings.nonLinearity, { dout: s.dz, y: s.act, dx: s.dz, n }));
        break;
      case 'gelu':
        ops.push(geluBackward(g, { dout: s.dz, x: s.z, dx: s.dz, n, form: 'erf' }));
        break;
      case 'swish':
        ops.push(siluBackward(g, { dout: s.dz, x: s.z, dx: s.dz, n }));
        break;
    }
    // down: dWd += dz^T u, dbd += colsum(dz)
    ops.push(matmul(g, { label: `${m.down.name}.grad`, a: s.dz, transA: true, b: u, c: m.down.grad, M: bn, N: C, K: rows, accumulate: true }));
    ops.push(columnSum(g, { x: s.dz, out: m.downBias.grad, rows, N: bn, accumulate: true }));
    // du = d + dz Wd: the branch's gradient (Houlsby), or the sum's, which is also the residual's (Pfeiffer)
    if (u === site.branch) {
      ops.push(copyOp(g, dOut, s.dBranch, rows * C));
      ops.push(matmul(g, { label: `${m.down.name}.dx`, a: s.dz, b: m.down.value, c: s.dBranch, M: rows, N: C, K: bn, accumulate: true }));
      return { ops, dBranch: s.dBranch };
    }
    if (site.layerNorm) {
      // u = LN(v): du = dz Wd, then dv += LN'(du) (v = residual + branch: the gradient of both)
      ops.push(matmul(g, { label: `${m.down.name}.dx`, a: s.dz, b: m.down.value, c: s.dBranch, M: rows, N: C, K: bn }));
      const ln = this.lnScratch(s, rows);
      ops.push(layerNormBackward(g, { dout: s.dBranch, x: s.v, weight: site.layerNorm.weight, mean: ln.mean, rstd: ln.rstd, dx: dOut, rows, C, accumulate: true }));
      return { ops, dBranch: dOut };
    }
    ops.push(matmul(g, { label: `${m.down.name}.dx`, a: s.dz, b: m.down.value, c: dOut, M: rows, N: C, K: bn, accumulate: true }));
    return { ops, dBranch: dOut };
  }

  destroy(): void {
    destroyParams(this.gpu, this.paramSet);
    for (const t of this.branches.values()) this.gpu.destroyTensor(t);
    this.branches.clear();
    for (const sc of this.scratch.values()) for (const t of [sc.v, sc.z, sc.act, sc.dz, sc.dBranch, sc.ln?.u, sc.ln?.mean, sc.ln?.rstd]) if (t) this.gpu.destroyTensor(t);
    this.scratch.clear();
  }

  /** The BnConfig fields (adapters' dataclass, in its order) of this adapter. */
  bnConfig(): Record<string, unknown> {
    const preset = BOTTLENECK_PRESETS[this.settings.type];
    return {
      mh_adapter: preset.mhAdapter,
      output_adapter: true,
      reduction_factor: this.settings.reductionFactor,
      non_linearity: this.settings.nonLinearity,
      original_ln_before: preset.originalLnBefore,
      original_ln_after: true,
      ln_before: false,
      ln_after: false,
      init_weights: 'bert',
      is_parallel: false,
      scaling: 1.0,
      use_gating: false,
      residual_before_ln: true,
      adapter_residual_before_ln: false,
      inv_adapter: null,
      inv_adapter_reduction_factor: null,
      cross_adapter: false,
      leave_out: [],
      dropout: 0.0,
      phm_layer: false,
      phm_dim: 4,
      factorized_phm_W: true,
      shared_W_phm: false,
      shared_phm_rule: true,
      factorized_phm_rule: false,
      phm_c_init: 'normal',
      phm_init_range: 0.0001,
      learn_phm: true,
      hypercomplex_nonlinearity: 'glorot-uniform',
      phm_rank: 1,
      phm_bias: true,
      stochastic_depth: 0.0,
    };
  }

  /** adapter_config.json as `adapters` writes it (build_full_config; json.dump(sort_keys=True)). */
  adapterConfig(baseModel: string): Record<string, unknown> {
    const sorted = (o: Record<string, unknown>): Record<string, unknown> => Object.fromEntries(Object.keys(o).sort().map((k) => [k, o[k]]));
    return sorted({
      config: sorted(this.bnConfig()),
      hidden_size: this.dims.hidden,
      model_class: this.dims.modelClass,
      model_name: baseModel,
      model_type: this.dims.modelType,
      name: this.settings.name,
      version: ADAPTERHUB_VERSION,
    });
  }
}
