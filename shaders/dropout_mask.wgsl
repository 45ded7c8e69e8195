// The dropout keep mask, shared by shaders/dropout.wgsl and shaders/lora.wgsl (their wrappers put
// this file in front of them: WGSL has no include). keep(i) is a stateless hash of (step seed,
// salt, element index i) compared against threshold = round(p * 2^32), so a backward pass
// regenerates its forward's mask, and p = 0 (threshold 0) keeps every element.
struct Step { lr: f32, beta1: f32, beta2: f32, eps: f32, weightDecay: f32, biasCorrection1: f32, biasCorrection2: f32, seed: u32 }

// PCG-based integer hash (Jarzynski & Olano 2020, "Hash Functions for GPU Rendering").
fn pcg(v: u32) -> u32 {
  let state = v * 747796405u + 2891336453u;
  let word = ((state >> ((state >> 28u) + 4u)) ^ state) * 277803737u;
  return (word >> 22u) ^ word;
}

// The per-dispatch key of a dropout site: hash of the step's seed and the site's salt.
fn dropoutKey(seed: u32, salt: u32) -> u32 {
  return pcg(seed ^ pcg(salt));
}

fn dropoutKeep(key: u32, threshold: u32, i: u32) -> bool {
  return pcg(pcg(i) ^ key) >= threshold;
}
