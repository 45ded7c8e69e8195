// DoRA (weight-decomposed LoRA) exactly as PEFT 0.21 implements it (LoraConfig(use_dora=True):
// peft/tuners/lora/dora.py DoraLinearLayer, variants.py DoraLinearVariant). Per targeted layer,
// LoRA's A [r, in] and B [out, r] plus a magnitude m [out] (lora_magnitude_vector), and
//   n = || W + s B A ||  per output feature (the norm over the input dim of the merged weight,
//                        PEFT's get_weight_norm; GPT-2's Conv1D is transposed to [out, in] first),
//                        DETACHED: no gradient flows through n
//   g = m / n
//   y = x W + b + (g - 1) * (xd W) + g * s * (xd A^T B^T)       xd = dropout(x)
// (PEFT: with lora_dropout 0, or in eval, the "base result" is the layer's own output minus its
// bias, so then y = g * (x W + s x A^T B^T) + b: the bias is never rescaled.) s is LoRA's scaling
// (alpha / r, or alpha / sqrt(r) with rsLoRA). At init B = 0 and m = ||W|| (the norm of each output
// feature's weights), so the layer starts as the base layer.
//
// The method makes the whole layer (replacesLinear). Per forward: the norm kernel (n, g from W,
// A, B, m), then
//   p = 0   z = x W (no bias) + s (x A^T) B^T;  y (+)= z * g + b
//   p > 0   y (+)= x W + b;  z = xd W;  y += z * (g - 1);  z = s (xd A^T) B^T;  y += z * g
// Backward (dy given; n and g as the forward of this step left them):
//   z = xd W + s u B^T, u = xd A^T     dm += sum_rows(dy * z) / n
//   t = dy * g                         dB += s t^T u;  du = s t B;  dA += du^T xd
//   p = 0   dx (+)= t W^T + du A
//   p > 0   dx (+)= dy W^T + dropout'((dy * (g - 1)) W^T + du A)
// Saved as PEFT saves it: ...lora_A.weight, ...lora_B.weight and ...lora_magnitude_vector (no
// ".weight"), use_dora true in adapter_config.json.

import type { Gpu } from '../gpu/gpu';
import type { Op } from '../gpu/dispatch';
import { runOps } from '../gpu/dispatch';
import type { Tensor } from '../gpu/tensor';
import { matmul } from '../kernels/matmul';
import { dropoutBackward, dropoutForward } from '../kernels/dropout';
import { columnDotDiv, doraWeightNorm, scaleShiftColumns } from '../kernels/dora';
import { scaleColumns } from '../kernels/peft-ops';
import type { StepUniforms } from '../kernels/step-uniforms';
import type { FrozenLinear, LinearGrad, LinearSite, PeftMethod, TrainableParam } from './method';
import { destroyParams, makeParams, type ParamSet } from './params';
import { LoraError, loraAInit, loraAdapterConfig, loraScale, loraTargets, type LinearModuleInfo, type LoraSettings } from './lora';

interface DoraModule {
  info: LinearModuleInfo;
  A: TrainableParam;
  B: TrainableParam;
  m: TrainableParam;
  /** n = ||W + s B A|| and g = m / n of the last forward [out] */
  norm: Tensor;
  g: Tensor;
  salt: number;
}

interface Scratch {
  u: Tensor;
  du: Tensor;
  /** [rows, widest output]: the layer's products, then dy * g */
  z: Tensor;
  t: Tensor;
  /** dropout(x) and the gradient before the dropout mask [rows, widest input] (p > 0 only) */
  xd: Tensor | null;
  dxd: Tensor | null;
}

export class Dora implements PeftMethod {
  readonly kind = 'dora' as const;
  readonly replacesLinear = true;
  readonly params: TrainableParam[];
  readonly scale: number;
  /** A, B and m of every module, their gradients and moments, in shared buffers (peft/params.ts). */
  private readonly paramSet: ParamSet;
  private readonly modules = new Map<string, DoraModule>();
  private readonly scratch = new Map<number, Scratch>();
  private readonly owned: Tensor[] = [];
  private readonly maxIn: number;
  private readonly maxOut: number;

  /**
   * @param linears every linear module of the model, each with its frozen weight on the GPU (the
   *   magnitude starts as its norm)
   * @param random uniform [0, 1) source for A's init
   */
  constructor(
    private readonly gpu: Gpu,
    readonly settings: LoraSettings,
    linears: readonly LinearModuleInfo[],
    private readonly step: StepUniforms,
    random: () => number,
  ) {
    this.scale = loraScale(settings, 'DoRA');
    const targeted = loraTargets(settings, linears, 'DoRA');
    const { r } = settings;
    for (const info of targeted) {
      if (!info.weight) throw new LoraError(`DoRA on ${info.module}: the model did not give the layer's weight (DoRA's magnitude starts as its norm)`);
    }
    // A (drawn module by module), B = 0 and m (set from W's norm below) of every module, in that order
    this.paramSet = makeParams(gpu, 'dora', targeted.flatMap((info) => {
      const base = `base_model.model.${info.module}`;
      return [
        { name: `${base}.lora_A.weight`, shape: [r, info.inFeatures], init: loraAInit(r, info.inFeatures, random) },
        { name: `${base}.lora_B.weight`, shape: [info.outFeatures, r] },
        { name: `${base}.lora_magnitude_vector`, shape: [info.outFeatures] },
      ];
    }));
    this.params = this.paramSet.params;
    const init: Op[] = [];
    targeted.forEach((info, i) => {
      const base = `base_model.model.${info.module}`;
      const [A, B, m] = this.params.slice(3 * i, 3 * i + 3);
      const norm = this.own(gpu.tensor([info.outFeatures], `${base}.dora_norm`));
      const g = this.own(gpu.tensor([info.outFeatures], `${base}.dora_g`));
      const mod: DoraModule = { info, A, B, m, norm, g, salt: 0x9e37 + i * 7919 };
      this.modules.set(info.module, mod);
      // PEFT's init: m = ||W + s B A|| with B = 0, i.e. the norm of W
      init.push(this.normOp(mod, info.weight!, info.weightLayout));
      init.push({ kind: 'copy', src: norm.buffer, srcOffset: 0, dst: m.value.buffer, dstOffset: m.value.byteOffset, size: info.outFeatures * 4 });
    });
    runOps(gpu, init, 'dora init');
    this.maxIn = Math.max(...targeted.map((l) => l.inFeatures));
    this.maxOut = Math.max(...targeted.map((l) => l.outFeatures));
  }

  private own(t: Tensor): Tensor {
    this.owned.push(t);
    return t;
  }

  get targetedModules(): string[] {
    return [...this.modules.keys()];
  }

  targetsLinear(module: string): boolean {
    return this.modules.has(module);
  }

  private normOp(m: DoraModule, W: Tensor, layout: 'in_out' | 'out_in'): Op {
    const { inFeatures: K, outFeatures: N } = m.info;
    return doraWeightNorm(this.gpu, { W, layout, A: m.A.value, B: m.B.value, m: m.m.value, scale: this.scale, norm: m.norm, gscale: m.g, N, K, r: this.settings.r });
  }

  private scratchFor(rows: number): Scratch {
    let s = this.scratch.get(rows);
    if (!s) {
      const r = this.settings.r;
      const p = this.settings.dropout > 0;
      const t = (shape: number[], label: string): Tensor => this.gpu.tensor(shape, `dora.${label}[${rows}]`);
      s = {
        u: t([rows, r], 'u'), du: t([rows, r], 'du'), z: t([rows, this.maxOut], 'z'), t: t([rows, this.maxOut], 't'),
        xd: p ? t([rows, this.maxIn], 'xd') : null, dxd: p ? t([rows, this.maxIn], 'dxd') : null,
      };
      this.scratch.set(rows, s);
    }
    return s;
  }

  private module(site: LinearSite): DoraModule {
    const m = this.modules.get(site.module);
    if (!m) throw new LoraError(`no DoRA on ${site.module}`);
    if (m.info.inFeatures !== site.inFeatures || m.info.outFeatures !== site.outFeatures) {
      throw new LoraError(`${site.module}: site is ${site.inFeatures}->${site.outFeatures}, DoRA was built for ${m.info.inFeatures}->${m.info.outFeatures}`);
    }
    if (site.weightLayout !== m.info.weightLayout) throw new LoraError(`${site.module}: the site's weight layout is ${site.weightLayout}, DoRA was built for ${m.info.weightLayout}`);
    return m;
  }

  /** xd = dropout(x) (p > 0) and u = xd A^T; returns xd. */
  private projectDown(site: LinearSite, m: DoraModule, s: Scratch, ops: Op[]): Tensor {
    const { rows, inFeatures: K } = site;
    const p = site.training ? this.settings.dropout : 0;
    let x = site.x;
    if (p > 0) {
      ops.push(dropoutForward(this.gpu, { x: site.x, out: s.xd!, n: rows * K, p, step: this.step, salt: m.salt }));
      x = s.xd!;
    }
    ops.push(matmul(this.gpu, { label: `${site.module}.lora_A`, a: x, b: m.A.value, c: s.u, M: rows, N: this.settings.r, K, transB: true }));
    return x;
  }

  /** z (+)= s u B^T */
  private upProduct(site: LinearSite, m: DoraModule, s: Scratch, accumulate: boolean): Op {
    return matmul(this.gpu, {
      label: `${site.module}.lora_B`, a: s.u, b: m.B.value, c: s.z, M: site.rows, N: site.outFeatures, K: this.settings.r, transB: true, alpha: this.scale, accumulate,
    });
  }

  linearForward(site: LinearSite, base: FrozenLinear): Op[] {
    const m = this.module(site);
    const s = this.scratchFor(site.rows);
    const { rows, outFeatures: N } = site;
    const g = this.gpu;
    const ops: Op[] = [this.normOp(m, base.weight, site.weightLayout)];
    const xd = this.projectDown(site, m, s, ops);
    if (!site.training || this.settings.dropout === 0) {
      ops.push(base.forward(site.x, s.z, false, false));
      ops.push(this.upProduct(site, m, s, true));
      ops.push(scaleShiftColumns(g, { x: s.z, s: m.g, shift: 0, bias: base.bias, out: site.y, rows, N, accumulate: base.accumulate }));
      return ops;
    }
    ops.push(base.forward(site.x, site.y, base.accumulate));
    ops.push(base.forward(xd, s.z, false, false));
    ops.push(scaleShiftColumns(g, { x: s.z, s: m.g, shift: -1, out: site.y, rows, N, accumulate: true }));
    ops.push(this.upProduct(site, m, s, false));
    ops.push(scaleShiftColumns(g, { x: s.z, s: m.g, shift: 0, out: site.y, rows, N, accumulate: true }));
    return ops;
  }

  linearBackward(site: LinearSite, grad: LinearGrad, base: FrozenLinear): Op[] {
    const m = this.module(site);
    const s = this.scratchFor(site.rows);
    const { rows, inFeatures: K, outFeatures: N } = site;
    const r = this.settings.r;
    const g = this.gpu;
    const p = this.settings.dropout;
    const ops: Op[] = [];
    const xd = this.projectDown(site, m, s, ops);
    // dm += sum_rows(dy * (xd W + s u B^T)) / n
    ops.push(base.forward(xd, s.z, false, false));
    ops.push(this.upProduct(site, m, s, true));
    ops.push(columnDotDiv(g, { a: grad.dy, b: s.z, d: m.norm, out: m.m.grad, rows, N, accumulate: true }));
    // t = dy * g; dB += s t^T u; du = s t B; dA += du^T xd
    ops.push(scaleColumns(g, { x: grad.dy, s: m.g, out: s.t, rows, N, accumulate: false }));
    ops.push(matmul(g, { label: `${site.module}.dB`, a: s.t, b: s.u, c: m.B.grad, M: N, N: r, K: rows, transA: true, alpha: this.scale, accumulate: true }));
    ops.push(matmul(g, { label: `${site.module}.du`, a: s.t, b: m.B.value, c: s.du, M: rows, N: r, K: N, alpha: this.scale }));
    ops.push(matmul(g, { label: `${site.module}.dA`, a: s.du, b: xd, c: m.A.grad, M: r, N: K, K: rows, transA: true, accumulate: true }));
    if (!grad.dx) return ops;
    if (p === 0) {
      ops.push(base.backward(s.t, grad.dx, base.accumulate));
      ops.push(matmul(g, { label: `${site.module}.dx`, a: s.du, b: m.A.value, c: grad.dx, M: rows, N: K, K: r, accumulate: true }));
      return ops;
    }
    ops.push(base.backward(grad.dy, grad.dx, base.accumulate));
    ops.push(scaleShiftColumns(g, { x: grad.dy, s: m.g, shift: -1, out: s.t, rows, N, accumulate: false }));
    ops.push(base.backward(s.t, s.dxd!, false));
    ops.push(matmul(g, { label: `${site.module}.dxd`, a: s.du, b: m.A.value, c: s.dxd!, M: rows, N: K, K: r, accumulate: true }));
    ops.push(dropoutBackward(g, { dout: s.dxd!, dx: grad.dx, n: rows * K, p, step: this.step, salt: m.salt, accumulate: true }));
    return ops;
  }

  destroy(): void {
    destroyParams(this.gpu, this.paramSet);
    for (const t of this.owned) this.gpu.destroyTensor(t);
    this.owned.length = 0;
    for (const sc of this.scratch.values()) for (const t of [sc.u, sc.du, sc.z, sc.t, sc.xd, sc.dxd]) if (t) this.gpu.destroyTensor(t);
    this.scratch.clear();
  }

  adapterConfig(baseModel: string): Record<string, unknown> {
    return loraAdapterConfig(this.settings, [...this.modules.values()].map((m) => m.info), baseModel, true);
  }
}
