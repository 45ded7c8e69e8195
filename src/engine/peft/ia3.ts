// (IA)^3 as PEFT defines it (peft.tuners.ia3): a learned vector l per targeted linear layer,
// initialized to ones.
//   output scaling (the default):  y = (x W + b) * l      l: [out, 1]  (bias scaled too)
//   feedforward_modules:           y = (x * l) W + b      l: [1, in]
// GPT-2's Conv1D layers take the same shapes (PEFT reads in/out from the [in, out] weight and sets
// fan_in_fan_out, which only matters for merging); for the fused c_attn all 3C outputs are scaled.
//
// The method makes the frozen product itself (replacesLinear), through the architecture's
// FrozenLinear:
//   feedforward  forward  xs = x * l (scratch); y (+)= xs W + b
//                backward dxs = dy W^T (scratch); dl += sum_rows(x * dxs); dx (+)= dxs * l
//   output       forward  y = x W + b, then y *= l in place, or, where y is a residual sum,
//                         ys = x W + b (scratch) and y += ys * l
//                backward ys = x W + b recomputed (nothing is kept from the forward: the output may
//                         have been changed in place since, e.g. by RoPE); dl += sum_rows(dy * ys);
//                         ys = dy * l; dx (+)= ys W^T
// so the scratch (two [rows, width] buffers per row count, shared by every layer) is all it adds.

import type { Gpu } from '../gpu/gpu';
import type { Op } from '../gpu/dispatch';
import type { Tensor } from '../gpu/tensor';
import { columnDot, scaleColumns } from '../kernels/peft-ops';
import type { FrozenLinear, LinearGrad, LinearSite, PeftMethod, TrainableParam } from './method';
import { destroyParams, makeParams, type ParamSet } from './params';
import { moduleMatches, type LinearModuleInfo } from './lora';

export interface Ia3Settings {
  /** PEFT target_modules: a module matches when its path equals a target or ends with '.' + target. */
  targetModules: string[];
  /** PEFT feedforward_modules (a subset of target_modules): scaled on the input; a module is one when its path ends with the name. */
  feedforwardModules: string[];
}

export class Ia3Error extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'Ia3Error';
  }
}

/** PEFT's default IA3 targets per model_type (TRANSFORMERS_MODELS_TO_IA3_*_MAPPING in peft.utils.constants). */
export const IA3_DEFAULTS: Record<string, Ia3Settings> = {
  gpt2: { targetModules: ['c_attn', 'mlp.c_proj'], feedforwardModules: ['mlp.c_proj'] },
  llama: { targetModules: ['k_proj', 'v_proj', 'down_proj'], feedforwardModules: ['down_proj'] },
  mistral: { targetModules: ['k_proj', 'v_proj', 'down_proj'], feedforwardModules: ['down_proj'] },
  qwen2: { targetModules: ['q_proj', 'v_proj', 'down_proj'], feedforwardModules: ['down_proj'] },
  qwen3: { targetModules: ['q_proj', 'v_proj', 'down_proj'], feedforwardModules: ['down_proj'] },
  // "output.dense" matches both attention.output.dense and the FFN's output.dense (both input-scaled)
  bert: { targetModules: ['key', 'value', 'output.dense'], feedforwardModules: ['output.dense'] },
};

/**
 * Targets the engine uses where PEFT has no default (PEFT then asks for target_modules); they are
 * written into adapter_config.json, so PEFT loads the adapter. DistilBERT: BERT's layers (key, value,
 * the FFN's output projection scaled on its input) under DistilBERT's names.
 */
export const IA3_ENGINE_DEFAULTS: Record<string, Ia3Settings> = {
  distilbert: { targetModules: ['k_lin', 'v_lin', 'ffn.lin2'], feedforwardModules: ['ffn.lin2'] },
};

interface Ia3Module {
  info: LinearModuleInfo;
  feedforward: boolean;
  l: TrainableParam;
}

interface Scratch {
  /** x * l (forward) or dy W^T (backward) of feedforward sites: [rows, widest input] */
  xs: Tensor | null;
  /** x W + b, then dy * l, of output-scaled sites: [rows, widest output] */
  ys: Tensor | null;
}

export class Ia3 implements PeftMethod {
  readonly kind = 'ia3' as const;
  readonly replacesLinear = true;
  readonly params: TrainableParam[];
  /** The vectors, their gradients and moments, in shared buffers (peft/params.ts). */
  private readonly paramSet: ParamSet;
  private readonly modules = new Map<string, Ia3Module>();
  private readonly scratch = new Map<number, Scratch>();
  private readonly maxIn: number;
  private readonly maxOut: number;

  constructor(
    private readonly gpu: Gpu,
    readonly settings: Ia3Settings,
    linears: readonly LinearModuleInfo[],
  ) {
    const { targetModules, feedforwardModules } = settings;
    if (targetModules.includes('all-linear')) throw new Ia3Error('IA3 target modules: list the modules (all-linear is not supported for IA3 here)');
    const missingFf = feedforwardModules.filter((f) => !targetModules.includes(f));
    // PEFT's own check (IA3Config.__post_init__): the feedforward modules are a subset of the targets
    if (missingFf.length) throw new Ia3Error(`IA3 feedforward modules [${missingFf.join(', ')}] must also be target modules [${targetModules.join(', ')}]`);
    const targeted = linears.filter((l) => moduleMatches(l.module, targetModules));
    if (targeted.length === 0) {
      const names = [...new Set(linears.map((l) => l.module.split('.').slice(-2).join('.')))].join(', ');
      throw new Ia3Error(`IA3 target modules [${targetModules.join(', ')}] match no layer of this model; its linear layers are: ${names}`);
    }
    // PEFT: is_feedforward = any(key.endswith(target_key) for target_key in feedforward_modules)
    const feedforward = targeted.map((info) => feedforwardModules.some((f) => info.module.endsWith(f)));
    // PEFT: init_ia3_weights -> ones
    this.paramSet = makeParams(gpu, 'ia3', targeted.map((info, i) => {
      const shape = feedforward[i] ? [1, info.inFeatures] : [info.outFeatures, 1];
      return { name: `base_model.model.${info.module}.ia3_l`, shape, init: new Float32Array(shape[0] * shape[1]).fill(1) };
    }));
    this.params = this.paramSet.params;
    let maxIn = 0, maxOut = 0;
    targeted.forEach((info, i) => {
      this.modules.set(info.module, { info, feedforward: feedforward[i], l: this.params[i] });
      if (feedforward[i]) maxIn = Math.max(maxIn, info.inFeatures);
      else maxOut = Math.max(maxOut, info.outFeatures);
    });
    this.maxIn = maxIn;
    this.maxOut = maxOut;
  }

  get targetedModules(): string[] {
    return [...this.modules.keys()];
  }

  /** Whether the module's vector scales its input (feedforward) rather than its output. */
  isFeedforward(module: string): boolean {
    return this.modules.get(module)?.feedforward ?? false;
  }

  targetsLinear(module: string): boolean {
    return this.modules.has(module);
  }

  private scratchFor(rows: number): Scratch {
    let s = this.scratch.get(rows);
    if (!s) {
      s = {
        xs: this.maxIn ? this.gpu.tensor([rows, this.maxIn], `ia3.xs[${rows}]`) : null,
        ys: this.maxOut ? this.gpu.tensor([rows, this.maxOut], `ia3.ys[${rows}]`) : null,
      };
      this.scratch.set(rows, s);
    }
    return s;
  }

  private module(site: LinearSite): Ia3Module {
    const m = this.modules.get(site.module);
    if (!m) throw new Ia3Error(`no IA3 vector on ${site.module}`);
    if (m.info.inFeatures !== site.inFeatures || m.info.outFeatures !== site.outFeatures) {
      throw new Ia3Error(`${site.module}: site is ${site.inFeatures}->${site.outFeatures}, IA3 was built for ${m.info.inFeatures}->${m.info.outFeatures}`);
    }
    return m;
  }

  linearForward(site: LinearSite, base: FrozenLinear): Op[] {
    const m = this.module(site);
    const s = this.scratchFor(site.rows);
    const { rows, inFeatures: K, outFeatures: N } = site;
    const g = this.gpu;
    if (m.feedforward) {
      return [
        scaleColumns(g, { x: site.x, s: m.l.value, out: s.xs!, rows, N: K, accumulate: false }),
        base.forward(s.xs!, site.y, base.accumulate),
      ];
    }
    if (!base.accumulate) {
      return [base.forward(site.x, site.y, false), scaleColumns(g, { x: site.y, s: m.l.value, out: site.y, rows, N, accumulate: false })];
    }
    return [base.forward(site.x, s.ys!, false), scaleColumns(g, { x: s.ys!, s: m.l.value, out: site.y, rows, N, accumulate: true })];
  }

  linearBackward(site: LinearSite, grad: LinearGrad, base: FrozenLinear): Op[] {
    const m = this.module(site);
    const s = this.scratchFor(site.rows);
    const { rows, inFeatures: K, outFeatures: N } = site;
    const g = this.gpu;
    if (m.feedforward) {
      const ops: Op[] = [
        base.backward(grad.dy, s.xs!, false),
        columnDot(g, { a: site.x, b: s.xs!, out: m.l.grad, rows, N: K, accumulate: true }),
      ];
      if (grad.dx) ops.push(scaleColumns(g, { x: s.xs!, s: m.l.value, out: grad.dx, rows, N: K, accumulate: base.accumulate }));
      return ops;
    }
    if (!base.biasKnown) throw new Ia3Error(`${site.module}: IA3 output scaling needs the layer's bias in backward; the architecture did not pass it`);
    const ops: Op[] = [
      base.forward(site.x, s.ys!, false),
      columnDot(g, { a: grad.dy, b: s.ys!, out: m.l.grad, rows, N, accumulate: true }),
    ];
    if (grad.dx) {
      ops.push(scaleColumns(g, { x: grad.dy, s: m.l.value, out: s.ys!, rows, N, accumulate: false }));
      ops.push(base.backward(s.ys!, grad.dx, base.accumulate));
    }
    return ops;
  }

  destroy(): void {
    destroyParams(this.gpu, this.paramSet);
    for (const sc of this.scratch.values()) for (const t of [sc.xs, sc.ys]) if (t) this.gpu.destroyTensor(t);
    this.scratch.clear();
  }

  adapterConfig(baseModel: string): Record<string, unknown> {
    // PEFT switches fan_in_fan_out on when it wraps a Conv1D (GPT-2) and saves it so
    const anyConv1d = [...this.modules.values()].some((m) => m.info.weightLayout === 'in_out');
    return {
      peft_type: 'IA3',
      task_type: 'CAUSAL_LM',
      base_model_name_or_path: baseModel,
      revision: null,
      inference_mode: true,
      target_modules: [...new Set(this.settings.targetModules)],
      feedforward_modules: [...new Set(this.settings.feedforwardModules)],
      fan_in_fan_out: anyConv1d,
      init_ia3_weights: true,
      modules_to_save: null,
    };
  }
}
