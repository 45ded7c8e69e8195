// An adapter's trainable tensors made together: values, gradients and AdamW's moments as views into
// shared buffers (gpu/arena.ts), one set of buffers per kind at the same offsets, so that the
// optimizer clears, norms and updates a whole buffer in one dispatch (train/optimizer.ts). A
// kernel must not bind two of them from one buffer while writing either (WebGPU tracks a buffer's
// usage as a whole); the methods' kernels read values and write gradients, which live apart.

import type { Gpu } from '../gpu/gpu';
import { makeArenas } from '../gpu/arena';
import type { ParamArena, TrainableParam } from './method';

export interface ParamSpec {
  /** PEFT state-dict name */
  name: string;
  shape: number[];
  /** Initial value (absent: zeros). */
  init?: Float32Array;
}

export interface ParamSet {
  params: TrainableParam[];
  arenas: ParamArena[];
}

/** The tensors in `specs` order; `label` names the shared buffers (`${label}.values`, ...). */
export function makeParams(gpu: Gpu, label: string, specs: readonly ParamSpec[]): ParamSet {
  const [values, grads, ms, vs] = (['value', 'grad', 'm', 'v'] as const).map((k) =>
    makeArenas(gpu, `${label}.${k}s`, specs.map((s) => ({ shape: s.shape, label: k === 'value' ? s.name : `${s.name}.${k}` }))),
  );
  const arenas: ParamArena[] = values.arenas.map((a, i) => ({ value: a.whole, grad: grads.arenas[i].whole, m: ms.arenas[i].whole, v: vs.arenas[i].whole, count: a.views.length }));
  const arenaOf = new Map<number, ParamArena>();
  values.arenas.forEach((a, i) => a.views.forEach((v) => arenaOf.set(v.index, arenas[i])));
  const params = specs.map((s, j): TrainableParam => {
    const p = { name: s.name, shape: s.shape, value: values.views[j], grad: grads.views[j], m: ms.views[j], v: vs.views[j], arena: arenaOf.get(j) };
    if (s.init) gpu.write(p.value, s.init);
    return p;
  });
  return { params, arenas };
}

/** Frees the shared buffers (the views go with them). */
export function destroyParams(gpu: Gpu, set: ParamSet): void {
  for (const a of set.arenas) for (const t of [a.value, a.grad, a.m, a.v]) gpu.destroyTensor(t);
  set.arenas.length = 0;
  set.params.length = 0;
}
