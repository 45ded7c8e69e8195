// AdamW over an adapter's parameters with global gradient-norm clipping, recorded once as ops:
// sums of squares (one partial per 4096 elements) -> clip coefficient -> AdamW update. Parameters
// kept in shared buffers (TrainableParam.arena: peft/params.ts) are cleared, normed and updated one buffer
// at a time (the gaps between them are zero and stay zero); the others one tensor at a time. The
// per-step values (learning rate, bias corrections) come from the StepUniforms buffer written
// before each submit.

import type { Gpu } from '../gpu/gpu';
import type { Op } from '../gpu/dispatch';
import type { Tensor } from '../gpu/tensor';
import { adamwUpdate } from '../kernels/adamw';
import { clipCoefficient, gradNormPartials, sumOfSquares, sumOfSquaresPartials } from '../kernels/grad-norm';
import type { StepUniforms } from '../kernels/step-uniforms';
import type { ParamArena, TrainableParam } from '../peft/method';

export interface OptimizerOps {
  /** [2]: total gradient norm before clipping, and the coefficient applied. */
  readonly clip: Tensor;
  /** Clears every gradient (run at the start of each optimizer step). */
  readonly zeroGrads: Op[];
  /** Norm, clip and update (run after the step's last micro-batch). */
  readonly update: Op[];
  /** Frees the norm buffers (the parameters and their moments belong to the adapter); twice is harmless. */
  destroy(): void;
}

/** What the optimizer updates as one tensor: a shared buffer of parameters, or one parameter. */
type Unit = Pick<ParamArena, 'value' | 'grad' | 'm' | 'v'>;

/** The arenas whose every parameter is in `params` (each once), then the parameters outside them. */
export function optimizerUnits(params: readonly TrainableParam[]): Unit[] {
  const inArena = new Map<ParamArena, number>();
  for (const p of params) if (p.arena) inArena.set(p.arena, (inArena.get(p.arena) ?? 0) + 1);
  const whole = new Set([...inArena].filter(([a, n]) => n === a.count).map(([a]) => a));
  return [...whole, ...params.filter((p) => !p.arena || !whole.has(p.arena))];
}

export function buildAdamW(gpu: Gpu, params: readonly TrainableParam[], step: StepUniforms, maxGradNorm: number): OptimizerOps {
  const units = optimizerUnits(params);
  const count = gradNormPartials(units.map((u) => u.grad.size));
  const partials = gpu.tensor([Math.max(1, count)], 'gradNorm.partials');
  const clip = gpu.tensor([2], 'gradNorm.clip');
  const update: Op[] = [];
  let at = 0;
  for (const u of units) {
    update.push(sumOfSquares(gpu, { x: u.grad, n: u.grad.size, out: partials, outIndex: at }));
    at += sumOfSquaresPartials(u.grad.size);
  }
  update.push(clipCoefficient(gpu, { partials, count, maxNorm: maxGradNorm, out: clip }));
  for (const u of units) update.push(adamwUpdate(gpu, { param: u.value, grad: u.grad, m: u.m, v: u.v, n: u.value.size, step, clip }));
  const zeroGrads: Op[] = units.map((u) => (u.grad.isView ? { kind: 'clear', buffer: u.grad.buffer, offset: u.grad.byteOffset, size: Math.ceil(u.grad.bytes / 16) * 16 } : { kind: 'clear', buffer: u.grad.buffer }));
  let freed = false;
  return {
    clip,
    zeroGrads,
    update,
    destroy: () => {
      if (freed) return;
      freed = true;
      gpu.destroyTensor(partials);
      gpu.destroyTensor(clip);
    },
  };
}
