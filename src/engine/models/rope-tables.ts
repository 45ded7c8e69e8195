// Rotary-embedding tables on the CPU, computed as transformers computes them (modeling_rope_utils'
// ROPE_INIT_FUNCTIONS and LlamaRotaryEmbedding.forward, transformers 5), including its float32
// rounding: PyTorch builds inv_freq from float32 tensor ops and forms each angle as the float32
// product position * inv_freq, so at position ~1000 and beyond cos/sin of the exact (float64)
// angle differ from PyTorch's by up to ~1e-4. Every step that PyTorch does on a float32 tensor is
// done here in float64 and rounded with Math.fround; steps that transformers does on Python floats
// stay in float64. Python scalars meeting a float32 tensor are rounded to float32 first, as
// PyTorch's type promotion does. The remaining difference is the last bit of pow/cos/sin, whose
// float32 versions in PyTorch (SLEEF, libm, CUDA) are faithfully but not always correctly rounded:
// against PyTorch 2.11 + transformers 5.17 on CPU (test/kernels-llama.test.ts) inv_freq is
// bit-identical but for one value off by an ulp, and cos/sin are within one ulp at positions to 4095.
// Some transformers 4.x releases differ for 'yarn' with original_max_position_embeddings: it used
// factor = max_position_embeddings / original_max_position_embeddings instead of `factor`.
//
// Supported rope_type: default, linear, dynamic, yarn, llama3 (what the Llama family ships with);
// partial rotary (rotary dim < head dim) as GPT-NeoX-style models do: the first rotaryDim columns
// of each head rotate, the rest pass through.

export interface RopeTables {
  /**
   * cos(angle) * attentionScaling, row-major [maxPositions, rotaryDim / 2]: entry (p, i) at
   * p * (rotaryDim / 2) + i is for position p and the column pair (i, i + rotaryDim / 2). The
   * second half of transformers' cat((freqs, freqs)) table is the same values, so it is not stored.
   */
  cos: Float32Array;
  /** sin(angle) * attentionScaling, same layout as cos. */
  sin: Float32Array;
  /** The inverse frequencies, float32 as transformers has them, [rotaryDim / 2]. */
  invFreq: Float32Array;
  /** Columns of each head that rotate (head_dim * partial_rotary_factor, even). */
  rotaryDim: number;
  /** transformers' attention_scaling (YaRN's mscale; 1 otherwise), already multiplied into cos and sin. */
  attentionScaling: number;
  maxPositions: number;
}

export interface RopeTableOptions {
  headDim: number;
  ropeTheta: number;
  /** LlamaConfig.rope_scaling: {rope_type, factor, ...}, or null for plain RoPE. */
  ropeScaling: Record<string, unknown> | null;
  /** Table rows: positions 0 .. maxPositions - 1. For 'dynamic' also the sequence length it is for. */
  maxPositions: number;
  /** Defaults to ropeScaling.partial_rotary_factor, else 1. */
  partialRotaryFactor?: number;
  /**
   * config.max_position_embeddings: needed by 'dynamic', and by 'yarn' when rope_scaling lacks
   * original_max_position_embeddings (or factor), and by 'llama3' when it lacks
   * original_max_position_embeddings (transformers 5 fills both from it).
   */
  maxPositionEmbeddings?: number;
}

export const SUPPORTED_ROPE_TYPES = ['default', 'linear', 'dynamic', 'yarn', 'llama3'] as const;

const fr = Math.fround;

export class RopeConfigError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'RopeConfigError';
  }
}

/** Inverse frequencies and attention scaling, as transformers' ROPE_INIT_FUNCTIONS[rope_type]. */
export function ropeInvFreq(opts: RopeTableOptions): { invFreq: Float32Array; attentionScaling: number; rotaryDim: number } {
  const { headDim, ropeTheta: base } = opts;
  const s = opts.ropeScaling ?? {};
  const type = opts.ropeScaling ? opts.ropeScaling.rope_type ?? opts.ropeScaling.type ?? 'default' : 'default';
  const fail = (msg: string): never => {
    throw new RopeConfigError(`rope (${String(type)}): ${msg}`);
  };
  if (!Number.isInteger(headDim) || headDim < 2) fail(`head_dim must be an integer >= 2 (got ${headDim})`);
  if (!(Number.isFinite(base) && base > 1)) fail(`rope_theta must be a number > 1 (got ${base})`);
  const prfRaw = opts.partialRotaryFactor ?? s.partial_rotary_factor ?? 1;
  if (typeof prfRaw !== 'number' || !(prfRaw > 0 && prfRaw <= 1)) fail(`partial_rotary_factor must be in (0, 1] (got ${JSON.stringify(prfRaw)})`);
  const dim = Math.trunc(headDim * (prfRaw as number)); // Python int()
  if (dim < 2 || dim % 2 !== 0) fail(`rotary dim ${dim} (head_dim ${headDim} * partial_rotary_factor ${prfRaw}) must be even and >= 2`);
  const half = dim / 2;
  const mpe = opts.maxPositionEmbeddings;
  if (mpe !== undefined && !(Number.isInteger(mpe) && mpe > 0)) fail(`max_position_embeddings must be a positive integer (got ${mpe})`);

  const num = (key: string, dflt?: number): number => {
    const v = s[key];
    if (v === undefined || v === null) {
      if (dflt === undefined) fail(`rope_scaling needs "${key}"`);
      return dflt as number;
    }
    if (typeof v !== 'number' || !Number.isFinite(v)) fail(`rope_scaling "${key}" must be a number (got ${JSON.stringify(v)})`);
    return v as number;
  };
  const needMpe = (why: string): number => {
    if (mpe === undefined) fail(`maxPositionEmbeddings (config.max_position_embeddings) is needed ${why}`);
    return mpe as number;
  };

  // base ** (arange(0, dim, 2).float() / dim): a float32 exponent, Python's base cast to float32.
  const powFreqs = (b: number): Float64Array => {
    const out = new Float64Array(half);
    for (let i = 0; i < half; i++) out[i] = fr(Math.pow(fr(b), fr((2 * i) / dim)));
    return out;
  };
  const defaultInvFreq = (b: number): Float32Array => Float32Array.from(powFreqs(b), (p) => fr(1 / p));

  let invFreq: Float32Array;
  let attentionScaling = 1;
  switch (type) {
    case 'default':
      invFreq = defaultInvFreq(base);
      break;
    case 'linear': {
      const factor = num('factor');
      if (!(factor > 0)) fail(`factor must be > 0 (got ${factor})`);
      invFreq = defaultInvFreq(base).map((v) => fr(v / fr(factor)));
      break;
    }
    case 'dynamic': {
      // transformers computes the default frequencies at init and recomputes them (dynamic_rope_update)
      // only when the longest sequence of a batch, max(position_ids) + 1, exceeds
      // max_position_embeddings; then with seq_len as an int64 tensor, so in float32 steps.
      const factor = num('factor');
      const maxPos = needMpe("for rope_type 'dynamic'");
      const seqLen = opts.maxPositions;
      if (seqLen <= maxPos) {
        invFreq = defaultInvFreq(base);
      } else {
        let t = fr(fr(factor) * fr(seqLen));
        t = fr(t / fr(maxPos));
        t = fr(t - fr(factor - 1));
        t = fr(Math.pow(t, fr(dim / (dim - 2))));
        const b = fr(fr(base) * t);
        invFreq = new Float32Array(half);
        for (let i = 0; i < half; i++) invFreq[i] = fr(1 / fr(Math.pow(b, fr((2 * i) / dim))));
      }
      break;
    }
    case 'yarn': {
      const orig = s.original_max_position_embeddings != null ? num('original_max_position_embeddings') : needMpe("for 'yarn' without original_max_position_embeddings");
      if (!(orig > 0)) fail(`original_max_position_embeddings must be > 0 (got ${orig})`);
      const factor = s.factor != null ? num('factor') : needMpe("for 'yarn' without factor") / orig;
      if (!(factor > 0)) fail(`factor must be > 0 (got ${factor})`);
      const mscale = num('mscale', 0);
      const mscaleAllDim = num('mscale_all_dim', 0);
      const getMscale = (scale: number, m = 1): number => (scale <= 1 ? 1 : 0.1 * m * Math.log(scale) + 1);
      attentionScaling =
        s.attention_factor != null
          ? num('attention_factor')
          : mscale && mscaleAllDim
            ? getMscale(factor, mscale) / getMscale(factor, mscaleAllDim)
            : getMscale(factor);
      const betaFast = num('beta_fast', 0) || 32; // Python `or`: 0 falls back too
      const betaSlow = num('beta_slow', 0) || 1;
      const truncate = s.truncate === undefined || s.truncate === null ? true : Boolean(s.truncate);
      const correctionDim = (rot: number): number => (dim * Math.log(orig / (rot * 2 * Math.PI))) / (2 * Math.log(base));
      let low = correctionDim(betaFast);
      let high = correctionDim(betaSlow);
      if (truncate) {
        low = Math.floor(low);
        high = Math.ceil(high);
      }
      low = Math.max(low, 0);
      high = Math.min(high, dim - 1);
      if (low === high) high += 0.001; // transformers: "Prevent singularity"
      const posFreqs = powFreqs(base);
      invFreq = new Float32Array(half);
      for (let i = 0; i < half; i++) {
        const extrapolation = fr(1 / posFreqs[i]);
        const interpolation = fr(1 / fr(fr(factor) * posFreqs[i]));
        const ramp = Math.min(1, Math.max(0, fr(fr(i - fr(low)) / fr(high - low))));
        const extrapolationFactor = fr(1 - ramp);
        invFreq[i] = fr(fr(interpolation * fr(1 - extrapolationFactor)) + fr(extrapolation * extrapolationFactor));
      }
      break;
    }
    case 'llama3': {
      const factor = num('factor');
      const lowFreqFactor = num('low_freq_factor');
      const highFreqFactor = num('high_freq_factor');
      const oldContextLen =
        s.original_max_position_embeddings != null ? num('original_max_position_embeddings') : needMpe("for 'llama3' without original_max_position_embeddings");
      if (!(factor > 0) || !(lowFreqFactor > 0) || !(highFreqFactor > lowFreqFactor)) {
        fail(`needs factor > 0 and high_freq_factor > low_freq_factor > 0 (got ${factor}, ${lowFreqFactor}, ${highFreqFactor})`);
      }
      const lowFreqWavelen = fr(oldContextLen / lowFreqFactor);
      const highFreqWavelen = fr(oldContextLen / highFreqFactor);
      invFreq = defaultInvFreq(base).map((f) => {
        const wavelen = fr(fr(2 * Math.PI) / f);
        // wavelen < high_freq_wavelen: unchanged; wavelen > low_freq_wavelen: divided by factor.
        const scaled = wavelen > lowFreqWavelen ? fr(f / fr(factor)) : f;
        if (wavelen < highFreqWavelen || wavelen > lowFreqWavelen) return scaled;
        // In between: smooth interpolation of the two.
        const smooth = fr(fr(fr(fr(oldContextLen) / wavelen) - fr(lowFreqFactor)) / fr(highFreqFactor - lowFreqFactor));
        return fr(fr(fr(fr(1 - smooth) * scaled) / fr(factor)) + fr(smooth * scaled));
      });
      break;
    }
    default:
      return fail(`rope_type "${String(type)}" is not supported (supported: ${SUPPORTED_ROPE_TYPES.join(', ')})`);
  }
  if (!invFreq.every((v) => Number.isFinite(v) && v > 0)) fail('inverse frequencies came out non-finite or non-positive; check rope_scaling');
  return { invFreq, attentionScaling, rotaryDim: dim };
}

/**
 * cos/sin tables for positions 0 .. maxPositions - 1 (see RopeTables for the layout), as
 * LlamaRotaryEmbedding.forward computes them in float32: angle = fp32(position * inv_freq),
 * cos = fp32(cos(angle)) * attention_scaling (rounded to float32 again).
 */
export function ropeTables(opts: RopeTableOptions): RopeTables {
  const { maxPositions } = opts;
  if (!Number.isInteger(maxPositions) || maxPositions < 1 || maxPositions > 1 << 24) {
    throw new RopeConfigError(`rope: maxPositions must be an integer in [1, 2^24] (got ${maxPositions})`);
  }
  const { invFreq, attentionScaling, rotaryDim } = ropeInvFreq(opts);
  const half = rotaryDim / 2;
  const cos = new Float32Array(maxPositions * half);
  const sin = new Float32Array(maxPositions * half);
  const scale = fr(attentionScaling);
  for (let p = 0; p < maxPositions; p++) {
    for (let i = 0; i < half; i++) {
      const angle = fr(p * invFreq[i]);
      cos[p * half + i] = fr(Math.cos(angle)) * scale;
      sin[p * half + i] = fr(Math.sin(angle)) * scale;
    }
  }
  return { cos, sin, invFreq, rotaryDim, attentionScaling, maxPositions };
}
