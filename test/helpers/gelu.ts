// GELU in its tanh form (GPT-2's, transformers' gelu_new / gelu_pytorch_tanh) and its derivative, in
// float64: the one reference the tests and the other helpers compare against
// (test/kernels-activations.test.ts checks the derivative against finite differences).
const SQRT_2_OVER_PI = Math.sqrt(2 / Math.PI), K = 0.044715;

export const geluTanh = (x: number): number => 0.5 * x * (1 + Math.tanh(SQRT_2_OVER_PI * (x + K * x ** 3)));

export function geluTanhGrad(x: number): number {
  const t = Math.tanh(SQRT_2_OVER_PI * (x + K * x ** 3));
  return 0.5 * (1 + t) + 0.5 * x * (1 - t * t) * SQRT_2_OVER_PI * (1 + 3 * K * x * x);
}
