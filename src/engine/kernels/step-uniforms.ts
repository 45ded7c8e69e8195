// Values that change every optimizer step (learning rate from the schedule, Adam bias corrections,
// the dropout seed), kept in ONE uniform buffer that kernels bind once. The trainer writes it with
// queue.writeBuffer before submitting the step's commands, so nothing is rebound per step.
//
// WGSL layout (copy into shaders that bind it):
//   struct Step { lr: f32, beta1: f32, beta2: f32, eps: f32, weightDecay: f32,
//                 biasCorrection1: f32 /* 1-beta1^t */, biasCorrection2: f32 /* 1-beta2^t */, seed: u32 }

import type { Gpu } from '../gpu/gpu';

export interface StepValues {
  lr: number;
  beta1: number;
  beta2: number;
  eps: number;
  weightDecay: number;
  /** 1-based optimizer step, for Adam's bias correction. */
  step: number;
  /** u32 seed for dropout masks; change it every step. */
  seed: number;
}

/** Bytes of the WGSL `Step` struct: 8 four-byte fields. */
export const STEP_UNIFORM_BYTES = 32;

export class StepUniforms {
  readonly buffer: GPUBuffer;
  private readonly data = new ArrayBuffer(STEP_UNIFORM_BYTES);
  private readonly f = new Float32Array(this.data);
  private readonly u = new Uint32Array(this.data);

  constructor(private readonly gpu: Gpu) {
    this.buffer = gpu.device.createBuffer({
      size: STEP_UNIFORM_BYTES,
      usage: GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST,
      label: 'step-uniforms',
    });
  }

  write(v: StepValues): void {
    if (!Number.isInteger(v.step) || v.step < 1) throw new Error(`StepUniforms: step must be an integer >= 1 (got ${v.step})`);
    if (!Number.isInteger(v.seed) || v.seed < 0 || v.seed > 0xffffffff) throw new Error(`StepUniforms: seed must be a u32 (got ${v.seed})`);
    for (const k of ['lr', 'beta1', 'beta2', 'eps', 'weightDecay'] as const) {
      if (!Number.isFinite(v[k])) throw new Error(`StepUniforms: ${k} is not finite (${v[k]})`);
    }
    if (!(v.beta1 >= 0 && v.beta1 < 1 && v.beta2 >= 0 && v.beta2 < 1)) {
      throw new Error(`StepUniforms: betas must be in [0, 1) (got ${v.beta1}, ${v.beta2})`);
    }
    this.f[0] = v.lr;
    this.f[1] = v.beta1;
    this.f[2] = v.beta2;
    this.f[3] = v.eps;
    this.f[4] = v.weightDecay;
    // Computed in f64 here so late steps (beta2^t close to 1) keep their precision before rounding.
    this.f[5] = 1 - Math.pow(v.beta1, v.step);
    this.f[6] = 1 - Math.pow(v.beta2, v.step);
    this.u[7] = v.seed;
    this.gpu.device.queue.writeBuffer(this.buffer, 0, this.data);
  }
}
