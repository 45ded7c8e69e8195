// GPT-2's GELU, tanh form (transformers "gelu_new"), and its derivative: the one definition that
// shaders/gelu.wgsl and the matmul kernels that fuse it (kernels/matmul.ts geluA / geluGradOf) use;
// their wrappers put this file in front of them (WGSL has no include), so a fused product rounds
// exactly as the separate kernels do.
//   y = 0.5 * x * (1 + tanh(u)),  u = sqrt(2/pi) * (x + 0.044715 * x^3)
//   dy/dx = 0.5 * (1 + t) + 0.5 * x * (1 - t^2) * sqrt(2/pi) * (1 + 3 * 0.044715 * x^2),  t = tanh(u)
// Evaluated through sigmoids: 0.5 * (1 + tanh(u)) = sigmoid(2u) and 0.5 * (1 - tanh(u)) =
// sigmoid(-2u), so y = x * sigmoid(2u) and dy/dx = s + 2x * s * (1 - s) * du/dx, s = sigmoid(2u).
// Unlike 1 + tanh(u) near tanh = -1, these keep full relative precision for negative x, and
// nothing computes inf/inf (some backends' tanh gives NaN for large arguments). u is clamped to
// +-40 (exp(80) still fits in f32); beyond that s is 0 or 1 to f32 precision and y's curvature
// term is zero.
const GELU_SQRT_2_OVER_PI: f32 = 0.7978845608028654;
const GELU_K: f32 = 0.044715;
const GELU_U_MAX: f32 = 40.0;

fn geluU(v: f32) -> f32 {
  return GELU_SQRT_2_OVER_PI * (v + GELU_K * v * v * v);
}

fn geluTanh(v: f32) -> f32 {
  let u = clamp(geluU(v), -GELU_U_MAX, GELU_U_MAX);
  return v / (1.0 + exp(-2.0 * u));
}

fn geluTanhGrad(v: f32) -> f32 {
  let uRaw = geluU(v);
  let u = clamp(uRaw, -GELU_U_MAX, GELU_U_MAX);
  let s = 1.0 / (1.0 + exp(-2.0 * u));
  let sNeg = 1.0 / (1.0 + exp(2.0 * u));  // 1 - s without cancellation
  let du = GELU_SQRT_2_OVER_PI * (1.0 + 3.0 * GELU_K * v * v);
  return s + select(0.0, 2.0 * v * s * sNeg * du, abs(uRaw) < GELU_U_MAX);
}

