// Float64 pieces of DoRA and the bottleneck adapters, written from PEFT's and AdapterHub's
// definitions, shared by the GPT-2 and Llama references (peft-reference.ts, llama-reference.ts):
//   DoRA        y = x W + b + (g - 1) * (xd W) + g * s * xd A^T B^T,  g = m / ||W + s B A|| per output
//               feature, xd = dropout(x) (= x without dropout); the norm is DETACHED, so callers pass
//               the norms of the unperturbed values when taking finite differences
//   bottleneck  f(u) = act(u Wd^T + bd) Wu^T + bu; Houlsby: out = residual + a + f(a);
//               Pfeiffer: out = v + f(v), v = residual + a
import { dropoutThreshold } from '../../src/engine/kernels/dropout';

export interface DoraModuleRef {
  A: Float64Array; // [r, K]
  B: Float64Array; // [N, r]
  m: Float64Array; // [N]
}

export interface DoraRef {
  modules: Map<string, DoraModuleRef>;
  r: number;
  scale: number;
  /** Detached norms per module (computed from the unperturbed values); computed on the fly when absent. */
  norms?: Map<string, Float64Array>;
  /** Dropout as the GPU applies it: the step seed and each module's salt. */
  dropout?: { p: number; seed: number; salts: Map<string, number> };
}

export type AdapterAct = 'relu' | 'swish' | 'gelu' | 'tanh';

export interface BottleneckModuleRef {
  Wd: Float64Array; // [bn, C]
  bd: Float64Array; // [bn]
  Wu: Float64Array; // [C, bn]
  bu: Float64Array; // [C]
}

export interface BottleneckRef {
  type: 'houlsby' | 'pfeiffer';
  act: AdapterAct;
  bn: number;
  /** key `${layer}.attention` / `${layer}.output` */
  adapters: Map<string, BottleneckModuleRef>;
}

/** The dropout kernel's hash (shaders/dropout.wgsl), to regenerate its keep mask. */
function pcg(v: number): number {
  const state = (Math.imul(v >>> 0, 747796405) + 2891336453) >>> 0;
  const word = Math.imul(((state >>> ((state >>> 28) + 4)) ^ state) >>> 0, 277803737) >>> 0;
  return ((word >>> 22) ^ word) >>> 0;
}

export function keepMask(n: number, seed: number, salt: number, p: number): Uint8Array {
  const key = pcg((seed ^ pcg(salt)) >>> 0);
  const threshold = dropoutThreshold(p);
  const mask = new Uint8Array(n);
  for (let i = 0; i < n; i++) mask[i] = pcg((pcg(i) ^ key) >>> 0) >= threshold ? 1 : 0;
  return mask;
}

/** W[o, k] of the weight in either layout ('in_out': stored [K, N]; 'out_in': [N, K]). */
const wAt = (W: Float64Array, layout: 'in_out' | 'out_in', o: number, k: number, K: number, N: number): number => (layout === 'in_out' ? W[k * N + o] : W[o * K + k]);

/** ||W[o, :] + s (B A)[o, :]|| for every output feature o. */
export function doraNorm(W: Float64Array, layout: 'in_out' | 'out_in', mod: DoraModuleRef, r: number, s: number, K: number, N: number): Float64Array {
  const out = new Float64Array(N);
  for (let o = 0; o < N; o++) {
    let sum = 0;
    for (let k = 0; k < K; k++) {
      let ba = 0;
      for (let j = 0; j < r; j++) ba += mod.B[o * r + j] * mod.A[j * K + k];
      const v = wAt(W, layout, o, k, K, N) + s * ba;
      sum += v * v;
    }
    out[o] = Math.sqrt(sum);
  }
  return out;
}

/** The DoRA layer over M rows (x [M, K]); null when the module has no DoRA. */
export function doraLinear(dora: DoraRef | undefined, module: string, x: Float64Array, W: Float64Array, b: Float64Array | null, layout: 'in_out' | 'out_in', M: number, K: number, N: number): Float64Array | null {
  const mod = dora?.modules.get(module);
  if (!dora || !mod) return null;
  const { r, scale: s } = dora;
  const n = dora.norms?.get(module) ?? doraNorm(W, layout, mod, r, s, K, N);
  let xd = x;
  if (dora.dropout && dora.dropout.p > 0) {
    const { p, seed } = dora.dropout;
    const mask = keepMask(M * K, seed, dora.dropout.salts.get(module)!, p);
    xd = x.map((v, i) => (mask[i] ? v / (1 - p) : 0));
  }
  const y = new Float64Array(M * N);
  for (let row = 0; row < M; row++) {
    const u = new Float64Array(r);
    for (let j = 0; j < r; j++) {
      let t = 0;
      for (let k = 0; k < K; k++) t += xd[row * K + k] * mod.A[j * K + k];
      u[j] = t;
    }
    for (let o = 0; o < N; o++) {
      let base = 0, dropped = 0, lora = 0;
      for (let k = 0; k < K; k++) {
        const w = wAt(W, layout, o, k, K, N);
        base += x[row * K + k] * w;
        dropped += xd[row * K + k] * w;
      }
      for (let j = 0; j < r; j++) lora += u[j] * mod.B[o * r + j];
      const g = mod.m[o] / n[o];
      y[row * N + o] = base + (b ? b[o] : 0) + (g - 1) * dropped + g * s * lora;
    }
  }
  return y;
}

/** The norms of every DoRA module at the current values (to hold fixed while perturbing A or B). */
export function freezeDoraNorms(dora: DoraRef, weight: (module: string) => { W: Float64Array; layout: 'in_out' | 'out_in'; K: number; N: number }): Map<string, Float64Array> {
  const out = new Map<string, Float64Array>();
  for (const [module, mod] of dora.modules) {
    const w = weight(module);
    out.set(module, doraNorm(w.W, w.layout, mod, dora.r, dora.scale, w.K, w.N));
  }
  return out;
}

const erf = (x: number): number => {
  // Abramowitz-Stegun 7.1.26 is too coarse for float64 checks: use a series / continued fraction
  const t = Math.abs(x);
  if (t < 3) {
    let sum = 0, term = t, n = 0;
    while (Math.abs(term) > 1e-17 * Math.abs(sum) || n < 5) {
      sum += term / (2 * n + 1);
      n++;
      term *= (-t * t) / n;
      if (n > 200) break;
    }
    return Math.sign(x) * (2 / Math.sqrt(Math.PI)) * sum;
  }
  // erfc continued fraction for large |x|
  let f = 0;
  for (let k = 60; k >= 1; k--) f = k / 2 / (t + f);
  const erfc = Math.exp(-t * t) / Math.sqrt(Math.PI) / (t + f);
  return Math.sign(x) * (1 - erfc);
};

export function activation(act: AdapterAct, v: number): number {
  switch (act) {
    case 'relu':
      return Math.max(v, 0);
    case 'tanh':
      return Math.tanh(v);
    case 'swish':
      return v / (1 + Math.exp(-v));
    case 'gelu':
      return 0.5 * v * (1 + erf(v / Math.SQRT2));
  }
}

/** f(u) = act(u Wd^T + bd) Wu^T + bu over M rows of width C. */
export function adapterF(u: Float64Array, ad: BottleneckModuleRef, act: AdapterAct, M: number, C: number, bn: number): Float64Array {
  const out = new Float64Array(M * C);
  for (let row = 0; row < M; row++) {
    const z = new Float64Array(bn);
    for (let j = 0; j < bn; j++) {
      let t = ad.bd[j];
      for (let c = 0; c < C; c++) t += u[row * C + c] * ad.Wd[j * C + c];
      z[j] = activation(act, t);
    }
    for (let c = 0; c < C; c++) {
      let t = ad.bu[c];
      for (let j = 0; j < bn; j++) t += z[j] * ad.Wu[c * bn + j];
      out[row * C + c] = t;
    }
  }
  return out;
}

/** The layer's stream after a residual branch: residual + branch, with the adapter where there is one. */
export function combineBranch(ref: BottleneckRef | undefined, layer: number, location: 'attention' | 'output', residual: Float64Array, branch: Float64Array, M: number, C: number): Float64Array {
  const sum = residual.map((v, i) => v + branch[i]);
  const ad = ref?.adapters.get(`${layer}.${location}`);
  if (!ref || !ad) return sum;
  const f = adapterF(ref.type === 'houlsby' ? branch : sum, ad, ref.act, M, C, ref.bn);
  return sum.map((v, i) => v + f[i]);
}
