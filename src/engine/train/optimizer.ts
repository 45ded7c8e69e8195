// AdamW over an adapter's parameters with global gradient-norm clipping, recorded once as ops:
// per-tensor sums of squares (one partial per 4096 elements) -> clip coefficient -> AdamW update. The per-step values (learning
// rate, bias corrections) come from the StepUniforms buffer written before each submit.

import type { Gpu } from '../gpu/gpu';
import type { Op } from '../gpu/dispatch';
import type { Tensor } from '../gpu/tensor';
import { adamwUpdate } from '../kernels/adamw';
import { clipCoefficient, gradNormPartials, sumOfSquares, sumOfSquaresPartials } from '../kernels/grad-norm';
import type { StepUniforms } from '../kernels/step-uniforms';
import type { TrainableParam } from '../peft/method';

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

export function buildAdamW(gpu: Gpu, params: readonly TrainableParam[], step: StepUniforms, maxGradNorm: number): OptimizerOps {
  const count = gradNormPartials(params.map((p) => p.grad.size));
  const partials = gpu.tensor([Math.max(1, count)], 'gradNorm.partials');
  const clip = gpu.tensor([2], 'gradNorm.clip');
  const update: Op[] = [];
  let at = 0;
  for (const p of params) {
    update.push(sumOfSquares(gpu, { x: p.grad, n: p.grad.size, out: partials, outIndex: at }));
    at += sumOfSquaresPartials(p.grad.size);
  }
  update.push(clipCoefficient(gpu, { partials, count, maxNorm: maxGradNorm, out: clip }));
  for (const p of params) update.push(adamwUpdate(gpu, { param: p.value, grad: p.grad, m: p.m, v: p.v, n: p.value.size, step, clip }));
  const zeroGrads: Op[] = params.map((p) => ({ kind: 'clear', buffer: p.grad.buffer }));
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
