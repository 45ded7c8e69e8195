// Float64 reference of the engine's matmul (kernels/matmul.ts MatmulArgs) for the kernel tests:
// the whole C buffer after the op and each element's error scale.
import type { MatmulBatch } from '../../src/engine/kernels/matmul';

/** One matmul with plain arrays: the fields of MatmulArgs that shape the product. */
export interface MatmulCase {
  M: number; N: number; K: number;
  transA?: boolean; transB?: boolean;
  lda?: number; ldb?: number; ldc?: number;
  offsetA?: number; offsetB?: number; offsetC?: number;
  batch?: MatmulBatch;
  alpha?: number; accumulate?: boolean; bias?: Float32Array;
}

/**
 * Float64 reference straight from the spec: the whole C buffer after the op, starting from its
 * previous contents `c0` (so elements the kernel must not touch are checked too), and for each
 * element the sum of the magnitudes of the terms that make it up, the scale its f32 rounding
 * error is proportional to. `opA` maps each stored element of A (a fused prologue); `epilogue`
 * gives the factor the finished element (m, n) is multiplied by, and what its scale becomes.
 */
export function matmulReference(
  a: Float32Array, b: Float32Array, c0: Float32Array, k: MatmulCase,
  fused: { opA?: (v: number) => number; epilogue?: (m: number, n: number) => { factor: number; scaleFactor: number } } = {},
): { want: Float64Array; scale: Float64Array } {
  const { M, N, K } = k;
  const lda = k.lda ?? (k.transA ? M : K), ldb = k.ldb ?? (k.transB ? K : N), ldc = k.ldc ?? N;
  const batch = k.batch ?? { outer: 1, inner: 1, strideA: [0, 0], strideB: [0, 0], strideC: [0, 0] };
  const alpha = k.alpha ?? 1;
  const opA = fused.opA ?? ((v: number) => v);
  const want = Float64Array.from(c0);
  const scale = Float64Array.from(c0, Math.abs);
  for (let z = 0; z < batch.outer * batch.inner; z++) {
    const zo = Math.floor(z / batch.inner), zi = z % batch.inner;
    const offA = (k.offsetA ?? 0) + zo * batch.strideA[0] + zi * batch.strideA[1];
    const offB = (k.offsetB ?? 0) + zo * batch.strideB[0] + Math.floor(zi / (batch.groupB ?? 1)) * batch.strideB[1];
    const offC = (k.offsetC ?? 0) + zo * batch.strideC[0] + zi * batch.strideC[1];
    for (let m = 0; m < M; m++) {
      for (let n = 0; n < N; n++) {
        let s = 0, mag = 0;
        for (let kk = 0; kk < K; kk++) {
          const av = opA(a[offA + (k.transA ? kk * lda + m : m * lda + kk)]);
          const bv = b[offB + (k.transB ? n * ldb + kk : kk * ldb + n)];
          s += av * bv;
          mag += Math.abs(av * bv);
        }
        const ci = offC + m * ldc + n;
        const prev = k.accumulate ? c0[ci] : 0;
        const bias = k.bias ? k.bias[n] : 0;
        let v = alpha * s + prev + bias;
        let sc = Math.abs(alpha) * mag + Math.abs(prev) + Math.abs(bias);
        if (fused.epilogue) {
          const e = fused.epilogue(m, n);
          v *= e.factor;
          sc *= e.scaleFactor;
        }
        want[ci] = v;
        scale[ci] = sc;
      }
    }
  }
  return { want, scale };
}

/**
 * Each element must be within tol of the reference relative to its own term-magnitude scale
 * (f32 summation error grows with the terms, not with the possibly cancelled result). A single
 * wrong or missing term of K = 256 is ~1e-3 of the scale, far above tol.
 */
export function expectMatmulClose(got: Float32Array, want: Float64Array, scale: Float64Array, tol: number, what: string): void {
  let worst = 0, at = -1;
  for (let i = 0; i < want.length; i++) {
    const e = Math.abs(got[i] - want[i]) / Math.max(scale[i], 1e-30);
    if (!(e <= worst)) {
      worst = e;
      at = i;
      if (Number.isNaN(e)) break;
    }
  }
  if (!(worst <= tol)) {
    throw new Error(`${what}: error ${worst.toExponential(3)} of the term scale > ${tol} at index ${at} (got ${got[at]}, want ${want[at]})`);
  }
}

/**
 * The WGSL kernels/matmul.ts binds for a vec4 variant (VEC4_MATMUL_VARIANTS) and this case under
 * the default tuning (vec4C on): its C4 form where it has one and C's rows are whole vec4s (N, ldc,
 * offsetC and C's batch strides multiples of 4: kernels/matmul.ts cInVec4s), else the plain form.
 */
export function vec4Code(variant: { code: string; codeC4: string | null }, k: Pick<MatmulCase, 'N' | 'ldc' | 'offsetC' | 'batch'>): string {
  const strideC = k.batch?.strideC ?? [0, 0];
  const c4 = [k.N, k.ldc ?? k.N, k.offsetC ?? 0, ...strideC].every((x) => x % 4 === 0);
  return c4 && variant.codeC4 !== null ? variant.codeC4 : variant.code;
}

/**
 * The overrides kernels/matmul.ts gives a vec4 kernel with rows x cols output tiles for this case:
 * the operands' layouts, and CHECKED off (no load checked) when the output is whole tiles and K
 * whole K tiles of 16.
 */
export function vec4Constants(k: Pick<MatmulCase, 'M' | 'N' | 'K' | 'transA' | 'transB'>, rows: number, cols: number): Record<string, number> {
  const whole = k.M % rows === 0 && k.N % cols === 0 && k.K % 16 === 0;
  return { K_FAST_A: k.transA ? 0 : 1, K_FAST_B: k.transB ? 1 : 0, ...(whole ? { CHECKED: 0 } : {}) };
}
