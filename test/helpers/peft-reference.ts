// A float64 CPU GPT-2 forward pass with the non-LoRA adapter methods, written plainly from PEFT's
// definitions (for checking the GPU program, and its gradients by finite differences):
//   IA3      y = (x W + b) * l, or y = (x * l) W + b for feedforward modules
//   prompt   n embeddings before the sequence at positions 0..n-1 (wpe added), tokens at n..;
//            every real token sees them; the last virtual position predicts the first token
//   prefix   n key/value rows per layer from a [n, L*2*C] table (row: per layer keys then values),
//            visible to every query; tokens at positions n..; optionally the table made by
//            tanh(E W1^T + b1) W2^T + b2
//   DoRA / bottleneck adapters: see dora-bottleneck-reference.ts
import type { Gpt2Dims } from '../../src/engine/models/gpt2';
import type { Weights } from './gpt2-reference';
import { combineBranch, doraLinear, type BottleneckRef, type DoraRef } from './dora-bottleneck-reference';
import { geluTanh as gelu } from './gelu';

export interface PrefixProjectionRef {
  E: Float64Array; // [n, C]
  W1: Float64Array; // [enc, C]
  b1: Float64Array; // [enc]
  W2: Float64Array; // [L*2*C, enc]
  b2: Float64Array; // [L*2*C]
  enc: number;
}

export interface MethodsRef {
  ia3?: Map<string, { l: Float64Array; feedforward: boolean }>;
  prompt?: { n: number; E: Float64Array };
  prefix?: { n: number; table?: Float64Array; projection?: PrefixProjectionRef };
  dora?: DoraRef;
  bottleneck?: BottleneckRef;
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

/** The prefix table [n, L*2*C] from the projection MLP. */
export function prefixFromProjection(p: PrefixProjectionRef, n: number, C: number, width: number): Float64Array {
  const out = new Float64Array(n * width);
  for (let t = 0; t < n; t++) {
    const a = new Float64Array(p.enc);
    for (let j = 0; j < p.enc; j++) {
      let s = p.b1[j];
      for (let c = 0; c < C; c++) s += p.E[t * C + c] * p.W1[j * C + c];
      a[j] = Math.tanh(s);
    }
    for (let o = 0; o < width; o++) {
      let s = p.b2[o];
      for (let j = 0; j < p.enc; j++) s += a[j] * p.W2[o * p.enc + j];
      out[t * width + o] = s;
    }
  }
  return out;
}

/**
 * logits of the real tokens [B*T, V] and the mean loss over the targets (plus, with prompt tuning,
 * firstTargets at each row's last virtual position).
 */
export function gpt2MethodsReference(
  w: Weights, d: Gpt2Dims, m: MethodsRef,
  tokens: ArrayLike<number>, targets: ArrayLike<number>, lengths: ArrayLike<number>, B: number, T: number,
  firstTargets?: ArrayLike<number>,
): { logits: Float64Array; loss: number } {
  const C = d.n_embd, H = d.n_head, D = C / H, V = d.vocab_size, F = d.n_inner ?? 4 * C, L = d.n_layer;
  const nv = m.prompt?.n ?? 0, P = m.prefix?.n ?? 0;
  const S = nv + T, M = B * S;
  const g = (n: string): Float64Array => {
    const t = w.get(n);
    if (!t) throw new Error(`reference: no weight ${n}`);
    return t;
  };
  const width = L * 2 * C;
  const table = m.prefix ? (m.prefix.projection ? prefixFromProjection(m.prefix.projection, P, C, width) : m.prefix.table!) : null;
  const linear = (module: string, x: Float64Array, W: Float64Array, b: Float64Array, K: number, N: number): Float64Array => {
    const dy = doraLinear(m.dora, module, x, W, b, 'in_out', M, K, N);
    if (dy) return dy;
    const ia = m.ia3?.get(module);
    let xin = x;
    if (ia?.feedforward) xin = x.map((v, i) => v * ia.l[i % K]);
    const y = new Float64Array(M * N);
    for (let r = 0; r < M; r++) {
      for (let n = 0; n < N; n++) {
        let s = b[n];
        for (let k = 0; k < K; k++) s += xin[r * K + k] * W[k * N + n];
        y[r * N + n] = ia && !ia.feedforward ? s * ia.l[n] : s;
      }
    }
    return y;
  };
  const wte = g('transformer.wte.weight'), wpe = g('transformer.wpe.weight');
  let x: Float64Array = new Float64Array(M * C);
  for (let b = 0; b < B; b++) {
    for (let s = 0; s < S; s++) {
      const r = b * S + s;
      for (let c = 0; c < C; c++) {
        const e = s < nv ? m.prompt!.E[s * C + c] : wte[tokens[b * T + s - nv] * C + c];
        x[r * C + c] = e + wpe[(s + P) * C + c];
      }
    }
  }
  for (let l = 0; l < L; l++) {
    const p = `transformer.h.${l}.`;
    const ln1 = layerNorm(x, g(`${p}ln_1.weight`), g(`${p}ln_1.bias`), M, C, d.layer_norm_epsilon);
    const qkv = linear(`${p}attn.c_attn`, ln1, g(`${p}attn.c_attn.weight`), g(`${p}attn.c_attn.bias`), C, 3 * C);
    const ctx = new Float64Array(M * C);
    for (let b = 0; b < B; b++) {
      const len = lengths[b] + nv;
      for (let h = 0; h < H; h++) {
        for (let i = 0; i < S; i++) {
          const q = (b * S + i) * 3 * C + h * D;
          // keys: P prefix rows, then the sequence's own (causal, unpadded)
          const keys: { k: (e: number) => number; v: (e: number) => number }[] = [];
          for (let t = 0; t < P; t++) {
            keys.push({ k: (e) => table![t * width + 2 * l * C + h * D + e], v: (e) => table![t * width + (2 * l + 1) * C + h * D + e] });
          }
          for (let j = 0; j <= i && j < len; j++) {
            const kr = (b * S + j) * 3 * C;
            keys.push({ k: (e) => qkv[kr + C + h * D + e], v: (e) => qkv[kr + 2 * C + h * D + e] });
          }
          const sc = keys.map((key) => {
            let dot = 0;
            for (let e = 0; e < D; e++) dot += qkv[q + e] * key.k(e);
            return dot / Math.sqrt(D);
          });
          if (sc.length === 0) continue;
          const mx = Math.max(...sc);
          const ex = sc.map((s) => Math.exp(s - mx));
          const sum = ex.reduce((a, c) => a + c, 0);
          keys.forEach((key, j) => {
            for (let e = 0; e < D; e++) ctx[(b * S + i) * C + h * D + e] += (ex[j] / sum) * key.v(e);
          });
        }
      }
    }
    const proj = linear(`${p}attn.c_proj`, ctx, g(`${p}attn.c_proj.weight`), g(`${p}attn.c_proj.bias`), C, C);
    const x2 = combineBranch(m.bottleneck, l, 'attention', x, proj, M, C);
    const ln2 = layerNorm(x2, g(`${p}ln_2.weight`), g(`${p}ln_2.bias`), M, C, d.layer_norm_epsilon);
    const fc = linear(`${p}mlp.c_fc`, ln2, g(`${p}mlp.c_fc.weight`), g(`${p}mlp.c_fc.bias`), C, F);
    const act = fc.map(gelu);
    const mo = linear(`${p}mlp.c_proj`, act, g(`${p}mlp.c_proj.weight`), g(`${p}mlp.c_proj.bias`), F, C);
    x = combineBranch(m.bottleneck, l, 'output', x2, mo, M, C);
  }
  const hf = layerNorm(x, g('transformer.ln_f.weight'), g('transformer.ln_f.bias'), M, C, d.layer_norm_epsilon);
  const logits = new Float64Array(B * T * V);
  let loss = 0;
  let count = 0;
  for (let b = 0; b < B; b++) {
    for (let s = 0; s < S; s++) {
      const r = b * S + s;
      const row = new Float64Array(V);
      let mx = -Infinity;
      for (let v = 0; v < V; v++) {
        let acc = 0;
        for (let c = 0; c < C; c++) acc += hf[r * C + c] * wte[v * C + c];
        row[v] = acc;
        mx = Math.max(mx, acc);
      }
      if (s >= nv) logits.set(row, (b * T + s - nv) * V);
      const target = s >= nv ? targets[b * T + s - nv] : s === nv - 1 && firstTargets ? firstTargets[b] : -100;
      if (target < 0) continue;
      let sum = 0;
      for (let v = 0; v < V; v++) sum += Math.exp(row[v] - mx);
      loss += Math.log(sum) + mx - row[target];
      count++;
    }
  }
  return { logits, loss: loss / Math.max(1, count) };
}
