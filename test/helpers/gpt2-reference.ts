// A float64 CPU GPT-2 (+ LoRA) forward pass, written plainly, for checking the GPU model:
// logits and loss directly, and LoRA gradients by central finite differences in float64.

import type { Gpt2Dims } from '../../src/engine/models/gpt2';
import type { Gpu } from '../../src/engine/gpu/gpu';
import type { Lora } from '../../src/engine/peft/lora';
import { rng } from './gpu';
import { geluTanh as gelu } from './gelu';

export type Weights = Map<string, Float64Array>;
export interface LoraRef {
  /** module path -> A [r, in], B [out, r] */
  modules: Map<string, { A: Float64Array; B: Float64Array }>;
  r: number;
  scale: number;
}

/** y[M, N] = x[M, K] W[K, N] + b (Conv1D layout) */
function conv1d(x: Float64Array, W: Float64Array, b: Float64Array, M: number, K: number, N: number): Float64Array {
  const y = new Float64Array(M * N);
  for (let m = 0; m < M; m++) {
    for (let n = 0; n < N; n++) {
      let s = b[n];
      for (let k = 0; k < K; k++) s += x[m * K + k] * W[k * N + n];
      y[m * N + n] = s;
    }
  }
  return y;
}

function addLora(y: Float64Array, x: Float64Array, lora: LoraRef | null, module: string, M: number, K: number, N: number): void {
  const l = lora?.modules.get(module);
  if (!l) return;
  const r = lora!.r;
  for (let m = 0; m < M; m++) {
    const u = new Float64Array(r);
    for (let j = 0; j < r; j++) {
      let s = 0;
      for (let k = 0; k < K; k++) s += x[m * K + k] * l.A[j * K + k];
      u[j] = s;
    }
    for (let n = 0; n < N; n++) {
      let s = 0;
      for (let j = 0; j < r; j++) s += u[j] * l.B[n * r + j];
      y[m * N + n] += lora!.scale * s;
    }
  }
}

function layerNorm(x: Float64Array, w: Float64Array, b: Float64Array, M: number, C: number, eps: number): Float64Array {
  const y = new Float64Array(M * C);
  for (let m = 0; m < M; m++) {
    let mean = 0;
    for (let c = 0; c < C; c++) mean += x[m * C + c];
    mean /= C;
    let v = 0;
    for (let c = 0; c < C; c++) v += (x[m * C + c] - mean) ** 2;
    const rstd = 1 / Math.sqrt(v / C + eps);
    for (let c = 0; c < C; c++) y[m * C + c] = (x[m * C + c] - mean) * rstd * w[c] + b[c];
  }
  return y;
}

export function gpt2Reference(
  w: Weights, d: Gpt2Dims, lora: LoraRef | null,
  tokens: ArrayLike<number>, targets: ArrayLike<number>, lengths: ArrayLike<number>, B: number, T: number,
): { logits: Float64Array; loss: number } {
  const C = d.n_embd, H = d.n_head, D = C / H, V = d.vocab_size, F = d.n_inner ?? 4 * C, M = B * T;
  const g = (n: string): Float64Array => {
    const t = w.get(n);
    if (!t) throw new Error(`reference: no weight ${n}`);
    return t;
  };
  const wte = g('transformer.wte.weight'), wpe = g('transformer.wpe.weight');
  let x = new Float64Array(M * C);
  for (let m = 0; m < M; m++) for (let c = 0; c < C; c++) x[m * C + c] = wte[tokens[m] * C + c] + wpe[(m % T) * C + c];
  for (let l = 0; l < d.n_layer; l++) {
    const p = `transformer.h.${l}.`;
    const ln1 = layerNorm(x, g(`${p}ln_1.weight`), g(`${p}ln_1.bias`), M, C, d.layer_norm_epsilon);
    const qkv = conv1d(ln1, g(`${p}attn.c_attn.weight`), g(`${p}attn.c_attn.bias`), M, C, 3 * C);
    addLora(qkv, ln1, lora, `${p}attn.c_attn`, M, C, 3 * C);
    const ctx = new Float64Array(M * C);
    for (let b = 0; b < B; b++) {
      for (let h = 0; h < H; h++) {
        for (let i = 0; i < T; i++) {
          const q = (b * T + i) * 3 * C + h * D;
          const allowed = (j: number): boolean => j <= i && j < lengths[b];
          const s = new Float64Array(T);
          let mx = -Infinity;
          for (let j = 0; j < T; j++) {
            if (!allowed(j)) continue;
            let dot = 0;
            for (let e = 0; e < D; e++) dot += qkv[q + e] * qkv[(b * T + j) * 3 * C + C + h * D + e];
            s[j] = dot / Math.sqrt(D);
            mx = Math.max(mx, s[j]);
          }
          let sum = 0;
          for (let j = 0; j < T; j++) if (allowed(j)) sum += Math.exp(s[j] - mx);
          for (let j = 0; j < T; j++) {
            if (!allowed(j)) continue;
            const pj = Math.exp(s[j] - mx) / sum;
            for (let e = 0; e < D; e++) ctx[(b * T + i) * C + h * D + e] += pj * qkv[(b * T + j) * 3 * C + 2 * C + h * D + e];
          }
        }
      }
    }
    const proj = conv1d(ctx, g(`${p}attn.c_proj.weight`), g(`${p}attn.c_proj.bias`), M, C, C);
    addLora(proj, ctx, lora, `${p}attn.c_proj`, M, C, C);
    const x2 = x.map((v, i) => v + proj[i]);
    const ln2 = layerNorm(x2, g(`${p}ln_2.weight`), g(`${p}ln_2.bias`), M, C, d.layer_norm_epsilon);
    const fc = conv1d(ln2, g(`${p}mlp.c_fc.weight`), g(`${p}mlp.c_fc.bias`), M, C, F);
    addLora(fc, ln2, lora, `${p}mlp.c_fc`, M, C, F);
    const act = fc.map(gelu);
    const mo = conv1d(act, g(`${p}mlp.c_proj.weight`), g(`${p}mlp.c_proj.bias`), M, F, C);
    addLora(mo, act, lora, `${p}mlp.c_proj`, M, F, C);
    x = x2.map((v, i) => v + mo[i]);
  }
  const h = layerNorm(x, g('transformer.ln_f.weight'), g('transformer.ln_f.bias'), M, C, d.layer_norm_epsilon);
  const logits = new Float64Array(M * V);
  let loss = 0;
  let count = 0;
  for (let m = 0; m < M; m++) {
    let mx = -Infinity;
    for (let v = 0; v < V; v++) {
      let s = 0;
      for (let c = 0; c < C; c++) s += h[m * C + c] * wte[v * C + c];
      logits[m * V + v] = s;
      mx = Math.max(mx, s);
    }
    if (targets[m] < 0) continue;
    let sum = 0;
    for (let v = 0; v < V; v++) sum += Math.exp(logits[m * V + v] - mx);
    loss += Math.log(sum) + mx - logits[m * V + targets[m]];
    count++;
  }
  return { logits, loss: loss / Math.max(1, count) };
}

/** Random GPT-2 weights (Hugging Face names, Conv1D layout) with non-trivial LayerNorms and biases. */
export function randomGpt2Weights(d: Gpt2Dims, seed: number): Weights {
  const r = rng(seed);
  const C = d.n_embd, V = d.vocab_size, F = d.n_inner ?? 4 * C;
  const w: Weights = new Map();
  const u = (n: number, s: number, base = 0): Float64Array => Float64Array.from({ length: n }, () => base + (r() * 2 - 1) * s);
  // Rounded to f32 so the GPU (which stores f32) and the reference use the same numbers.
  const put = (name: string, a: Float64Array): void => void w.set(name, Float64Array.from(Float32Array.from(a)));
  put('transformer.wte.weight', u(V * C, 0.3));
  put('transformer.wpe.weight', u(d.n_positions * C, 0.1));
  for (let l = 0; l < d.n_layer; l++) {
    const p = `transformer.h.${l}.`;
    put(`${p}ln_1.weight`, u(C, 0.2, 1)); put(`${p}ln_1.bias`, u(C, 0.1));
    put(`${p}attn.c_attn.weight`, u(C * 3 * C, 0.25)); put(`${p}attn.c_attn.bias`, u(3 * C, 0.1));
    put(`${p}attn.c_proj.weight`, u(C * C, 0.2)); put(`${p}attn.c_proj.bias`, u(C, 0.1));
    put(`${p}ln_2.weight`, u(C, 0.2, 1)); put(`${p}ln_2.bias`, u(C, 0.1));
    put(`${p}mlp.c_fc.weight`, u(C * F, 0.2)); put(`${p}mlp.c_fc.bias`, u(F, 0.1));
    put(`${p}mlp.c_proj.weight`, u(F * C, 0.1)); put(`${p}mlp.c_proj.bias`, u(C, 0.1));
  }
  put('transformer.ln_f.weight', u(C, 0.2, 1)); put('transformer.ln_f.bias', u(C, 0.1));
  return w;
}

/** Shapes of a GPT-2's weights, for a WeightSource over the map above. */
export function gpt2Shapes(d: Gpt2Dims): Map<string, number[]> {
  const C = d.n_embd, V = d.vocab_size, F = d.n_inner ?? 4 * C;
  const s = new Map<string, number[]>([['transformer.wte.weight', [V, C]], ['transformer.wpe.weight', [d.n_positions, C]], ['transformer.ln_f.weight', [C]], ['transformer.ln_f.bias', [C]]]);
  for (let l = 0; l < d.n_layer; l++) {
    const p = `transformer.h.${l}.`;
    for (const n of ['ln_1', 'ln_2']) { s.set(`${p}${n}.weight`, [C]); s.set(`${p}${n}.bias`, [C]); }
    s.set(`${p}attn.c_attn.weight`, [C, 3 * C]); s.set(`${p}attn.c_attn.bias`, [3 * C]);
    s.set(`${p}attn.c_proj.weight`, [C, C]); s.set(`${p}attn.c_proj.bias`, [C]);
    s.set(`${p}mlp.c_fc.weight`, [C, F]); s.set(`${p}mlp.c_fc.bias`, [F]);
    s.set(`${p}mlp.c_proj.weight`, [F, C]); s.set(`${p}mlp.c_proj.bias`, [C]);
  }
  return s;
}

export function weightSource(w: Weights, d: Gpt2Dims) {
  const shapes = gpt2Shapes(d);
  return {
    tensorNames: [...w.keys()],
    tensorInfo: (n: string) => ({ shape: shapes.get(n)!, dtype: 'F32' }),
    getF32: (n: string) => Float32Array.from(w.get(n)!),
  };
}

/**
 * Gives every LoRA tensor uniform values in (-0.4, 0.4) (B too: PEFT's zero B would make A's
 * gradient vanish), float32-exact, on the GPU and in ref.modules; returns them by parameter name
 * (the float64 arrays ref reads, for loraFiniteDifferences to perturb).
 */
export function setRandomLoraValues(gpu: Gpu, lora: Lora, ref: LoraRef, seed: number): Map<string, Float64Array> {
  const r = rng(seed);
  const values = new Map<string, Float64Array>();
  for (const p of lora.params) {
    const v = Float64Array.from(Float32Array.from({ length: p.value.size }, () => (r() * 2 - 1) * 0.4));
    gpu.write(p.value, Float32Array.from(v));
    values.set(p.name, v);
  }
  for (const mod of lora.targetedModules) {
    ref.modules.set(mod, { A: values.get(`base_model.model.${mod}.lora_A.weight`)!, B: values.get(`base_model.model.${mod}.lora_B.weight`)! });
  }
  return values;
}

/**
 * Central finite differences (step h) of loss() at entries 0, the last, 1/3 and 2/3 of every tensor
 * in values, each perturbed in place and restored.
 */
export function loraFiniteDifferences(values: Map<string, Float64Array>, loss: () => number, h = 1e-5): Map<string, { idx: number[]; fd: number[] }> {
  const out = new Map<string, { idx: number[]; fd: number[] }>();
  for (const [name, v] of values) {
    const idx = [0, v.length - 1, Math.floor(v.length / 3), Math.floor((2 * v.length) / 3)];
    const fd = idx.map((i) => {
      const old = v[i];
      v[i] = old + h;
      const lp = loss();
      v[i] = old - h;
      const lm = loss();
      v[i] = old;
      return (lp - lm) / (2 * h);
    });
    out.set(name, { idx, fd });
  }
  return out;
}
