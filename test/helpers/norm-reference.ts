// Float64 LayerNorm references (forward, and the backward for the input), shared by the kernel
// tests of shaders/layernorm.wgsl (test/kernels-activations.test.ts checks the backward against
// finite differences of the forward); and the gradient norm's per-chunk partial sums
// (shaders/grad_norm.wgsl, test/kernels-optim.test.ts and test/kernels-subgroups.test.ts).
import { SUM_OF_SQUARES_CHUNK } from '../../src/engine/kernels/grad-norm';

/** Float64 sums of squares of each tensor's SUM_OF_SQUARES_CHUNK-long chunks, tensor after tensor (sum_of_squares' partials). */
export function chunkSumsOfSquares(grads: ArrayLike<number>[], sizes: number[]): number[] {
  const want: number[] = [];
  sizes.forEach((n, k) => {
    // at least one partial, 0 for an empty tensor
    for (let start = 0; start === 0 || start < n; start += SUM_OF_SQUARES_CHUNK) {
      let s = 0;
      for (let i = start; i < Math.min(n, start + SUM_OF_SQUARES_CHUNK); i++) s += grads[k][i] ** 2;
      want.push(s);
    }
  });
  return want;
}

export function lnForwardRef(x: ArrayLike<number>, w: ArrayLike<number>, b: ArrayLike<number>, rows: number, C: number, eps: number) {
  const out = new Float64Array(rows * C), mean = new Float64Array(rows), rstd = new Float64Array(rows);
  for (let r = 0; r < rows; r++) {
    let s = 0;
    for (let c = 0; c < C; c++) s += x[r * C + c];
    const mu = s / C;
    let q = 0;
    for (let c = 0; c < C; c++) q += (x[r * C + c] - mu) ** 2;
    const rs = 1 / Math.sqrt(q / C + eps);
    mean[r] = mu;
    rstd[r] = rs;
    for (let c = 0; c < C; c++) out[r * C + c] = (x[r * C + c] - mu) * rs * w[c] + b[c];
  }
  return { out, mean, rstd };
}

export function lnBackwardRef(dout: ArrayLike<number>, x: ArrayLike<number>, w: ArrayLike<number>, rows: number, C: number, eps: number): Float64Array {
  const { mean, rstd } = lnForwardRef(x, w, new Float64Array(C), rows, C, eps);
  const dx = new Float64Array(rows * C);
  for (let r = 0; r < rows; r++) {
    let sg = 0, sgx = 0;
    for (let c = 0; c < C; c++) {
      const g = dout[r * C + c] * w[c];
      sg += g;
      sgx += g * (x[r * C + c] - mean[r]) * rstd[r];
    }
    for (let c = 0; c < C; c++) {
      const g = dout[r * C + c] * w[c];
      const xhat = (x[r * C + c] - mean[r]) * rstd[r];
      dx[r * C + c] = rstd[r] * (g - sg / C - xhat * (sgx / C));
    }
  }
  return dx;
}
