// A float64 CPU Llama-family forward pass (RMSNorm, RoPE with transformers' rotate_half, grouped-
// query attention, SwiGLU, optional q/k/v/o/MLP biases; no Qwen3 q/k norm) with DoRA and the
// bottleneck adapters, written plainly for checking the GPU program and its gradients by finite
// differences. The rotary cos/sin come from the engine's ropeTables (float32 values, used as exact
// float64 inputs), so the reference checks everything but the tables, which have their own tests.
import type { LlamaConfig } from '../../src/io/hf-config';
import { ropeTables } from '../../src/engine/models/rope-tables';
import { combineBranch, doraLinear, type BottleneckRef, type DoraRef } from './dora-bottleneck-reference';

export interface LlamaMethodsRef {
  dora?: DoraRef;
  bottleneck?: BottleneckRef;
}

function rmsNorm(x: Float64Array, w: Float64Array, M: number, C: number, eps: number): Float64Array {
  const y = new Float64Array(M * C);
  for (let m = 0; m < M; m++) {
    let ss = 0;
    for (let c = 0; c < C; c++) ss += x[m * C + c] ** 2;
    const r = 1 / Math.sqrt(ss / C + eps);
    for (let c = 0; c < C; c++) y[m * C + c] = x[m * C + c] * r * w[c];
  }
  return y;
}

/** logits [B*T, V] and the mean loss over targets >= 0 (right-padded rows of `lengths`). */
export function llamaReference(
  c: LlamaConfig, weight: (name: string) => Float64Array | null, m: LlamaMethodsRef,
  tokens: ArrayLike<number>, targets: ArrayLike<number>, lengths: ArrayLike<number>, B: number, T: number,
): { logits: Float64Array; loss: number } {
  if (c.qk_norm) throw new Error('llamaReference: no q/k norm');
  const C = c.hidden_size, H = c.num_attention_heads, KV = c.num_key_value_heads, D = c.head_dim, I = c.intermediate_size, V = c.vocab_size;
  const G = H / KV, M = B * T;
  const w = (n: string): Float64Array => {
    const t = weight(n);
    if (!t) throw new Error(`llamaReference: no weight ${n}`);
    return t;
  };
  const tables = ropeTables({
    headDim: D, ropeTheta: c.rope_theta, ropeScaling: c.rope_scaling, maxPositions: T,
    maxPositionEmbeddings: c.max_position_embeddings, partialRotaryFactor: (c.raw.partial_rotary_factor as number | undefined) ?? 1,
  });
  const half = tables.rotaryDim / 2;
  const linear = (module: string, x: Float64Array, K: number, N: number): Float64Array => {
    const W = w(`${module}.weight`);
    const b = weight(`${module}.bias`);
    const dy = doraLinear(m.dora, module, x, W, b, 'out_in', M, K, N);
    if (dy) return dy;
    const y = new Float64Array(M * N);
    for (let r = 0; r < M; r++) {
      for (let n = 0; n < N; n++) {
        let s = b ? b[n] : 0;
        for (let k = 0; k < K; k++) s += x[r * K + k] * W[n * K + k];
        y[r * N + n] = s;
      }
    }
    return y;
  };
  const rope = (x: Float64Array, heads: number): void => {
    for (let r = 0; r < M; r++) {
      const pos = r % T;
      for (let h = 0; h < heads; h++) {
        const o = r * heads * D + h * D;
        for (let i = 0; i < half; i++) {
          const cos = tables.cos[pos * half + i], sin = tables.sin[pos * half + i];
          const a = x[o + i], bb = x[o + i + half];
          x[o + i] = a * cos - bb * sin;
          x[o + i + half] = bb * cos + a * sin;
        }
      }
    }
  };
  const embed = w('model.embed_tokens.weight');
  let x: Float64Array = new Float64Array(M * C);
  for (let r = 0; r < M; r++) for (let cc = 0; cc < C; cc++) x[r * C + cc] = embed[tokens[r] * C + cc];
  for (let l = 0; l < c.num_hidden_layers; l++) {
    const p = `model.layers.${l}.`;
    const xn = rmsNorm(x, w(`${p}input_layernorm.weight`), M, C, c.rms_norm_eps);
    const q = linear(`${p}self_attn.q_proj`, xn, C, H * D);
    const k = linear(`${p}self_attn.k_proj`, xn, C, KV * D);
    const v = linear(`${p}self_attn.v_proj`, xn, C, KV * D);
    rope(q, H);
    rope(k, KV);
    const ctx = new Float64Array(M * H * D);
    for (let b = 0; b < B; b++) {
      for (let h = 0; h < H; h++) {
        const g = Math.floor(h / G);
        for (let i = 0; i < T; i++) {
          const keys: number[] = [];
          for (let j = 0; j <= i && j < lengths[b]; j++) keys.push(j);
          if (keys.length === 0) continue;
          const sc = keys.map((j) => {
            let dot = 0;
            for (let e = 0; e < D; e++) dot += q[(b * T + i) * H * D + h * D + e] * k[(b * T + j) * KV * D + g * D + e];
            return dot / Math.sqrt(D);
          });
          const mx = Math.max(...sc);
          const ex = sc.map((s) => Math.exp(s - mx));
          const sum = ex.reduce((a, e) => a + e, 0);
          keys.forEach((j, n) => {
            for (let e = 0; e < D; e++) ctx[(b * T + i) * H * D + h * D + e] += (ex[n] / sum) * v[(b * T + j) * KV * D + g * D + e];
          });
        }
      }
    }
    const o = linear(`${p}self_attn.o_proj`, ctx, H * D, C);
    const x2 = combineBranch(m.bottleneck, l, 'attention', x, o, M, C);
    const xn2 = rmsNorm(x2, w(`${p}post_attention_layernorm.weight`), M, C, c.rms_norm_eps);
    const gate = linear(`${p}mlp.gate_proj`, xn2, C, I);
    const up = linear(`${p}mlp.up_proj`, xn2, C, I);
    const hmid = gate.map((gv, i) => (gv / (1 + Math.exp(-gv))) * up[i]);
    const down = linear(`${p}mlp.down_proj`, hmid, I, C);
    x = combineBranch(m.bottleneck, l, 'output', x2, down, M, C);
  }
  const xf = rmsNorm(x, w('model.norm.weight'), M, C, c.rms_norm_eps);
  const head = c.tie_word_embeddings ? embed : w('lm_head.weight');
  const logits = new Float64Array(M * V);
  let loss = 0, count = 0;
  for (let r = 0; r < M; r++) {
    let mx = -Infinity;
    for (let vv = 0; vv < V; vv++) {
      let s = 0;
      for (let cc = 0; cc < C; cc++) s += xf[r * C + cc] * head[vv * C + cc];
      logits[r * V + vv] = s;
      mx = Math.max(mx, s);
    }
    const t = targets[r];
    if (t < 0) continue;
    let sum = 0;
    for (let vv = 0; vv < V; vv++) sum += Math.exp(logits[r * V + vv] - mx);
    loss += Math.log(sum) + mx - logits[r * V + t];
    count++;
  }
  return { logits, loss: loss / Math.max(1, count) };
}
