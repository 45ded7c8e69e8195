// The WebGPU device and everything that allocates on it. Runs unchanged in a Web Worker and in
// Node: the caller hands in the `GPU` object (navigator.gpu in a browser, the `webgpu` package's
// `create()` in Node, see ./node-gpu.ts).

import { Tensor, dtypeBytes, shapeSize, type DType } from './tensor';
import { f16ToF32, f32ToF16 } from '../../io/safetensors';
import type { KernelProfiler } from './profiler';

export interface GpuInfo {
  vendor: string;
  architecture: string;
  device: string;
  description: string;
  /** true for a software adapter (SwiftShader, WARP): never present it as "your GPU". */
  isFallbackAdapter: boolean;
  features: string[];
  /**
   * The device takes f16 x f16 -> f32 subgroup matrices of 16 x 16 x 16 on subgroups of 32
   * (chromium-experimental-subgroup-matrix with shader-f16): the tensor-core products of
   * kernels/matmul-tc.ts. Where the adapter offers them, Gpu.create asks for both features.
   */
  tensorCores: boolean;
  /** Why the tensor cores the device offered are not used (kernels/matmul-tc.ts checkTensorCores), if so. */
  tensorCoresRefused?: string;
  /**
   * Why the f32-accuracy tensor-core kernels (tuning.tensorCoreF32) are not used where the others
   * are (their check failed: e.g. 128x128 tiles of hi + lo halves need 48 KB of workgroup memory):
   * those products then run in f32 kernels.
   */
  tensorCoreF32Refused?: string;
  limits: {
    maxStorageBufferBindingSize: number;
    maxBufferSize: number;
    maxComputeWorkgroupStorageSize: number;
    maxComputeInvocationsPerWorkgroup: number;
    maxComputeWorkgroupsPerDimension: number;
    maxStorageBuffersPerShaderStage: number;
  };
}

export interface GpuOptions {
  /** navigator.gpu, or the object from the `webgpu` package in Node. */
  gpu: GPU;
  powerPreference?: GPUPowerPreference;
  /** Ask for shader-f16 / subgroups when the adapter has them (default true). */
  optionalFeatures?: boolean;
  tuning?: Partial<KernelTuning>;
}

/** Kernel choices that depend on the GPU rather than on correctness (every choice computes the same). */
export interface KernelTuning {
  /** 'auto': by output size (kernels/matmul.ts matmulVariant); or force one tiled kernel. */
  matmul: 'auto' | '64x64' | '128x128' | '128x64' | '64x128' | 'db64x64';
  /** Vec4-aligned operands go to the vec4 variant of the chosen tiling (kernels/matmul.ts vec4Aligned). */
  vec4Matmul: boolean;
  /**
   * The vec4 64x64 and 128x64 kernels read and write C as vec4s where its rows are whole vec4s
   * (kernels/matmul.ts cInVec4s, scripts/gen-matmul-wide.mjs VEC4_C4_VARIANTS): on the H100 GPT-2's
   * attention scores and dP 0.54 -> 0.37 and 0.59 -> 0.45 ms per step.
   */
  vec4C: boolean;
  /**
   * GPT-2's MLP forward reads gelu(fc) in mlp.c_proj's product (kernels/matmul.ts geluA) instead
   * of a GELU kernel writing g first (where the method leaves mlp.c_proj alone; the backward's
   * gelu' is fused either way).
   */
  geluPrologue: boolean;
  /**
   * The LM head's logits are made this many MiB of rows at a time (at most one binding; models/program.ts
   * lmHeadChunkBytes). 512: the benchmarks' 8 x 256 batch in one block (GPT-2 412 MB, SmolLM2 403 MB).
   * On the H100 (bench/sweep-tuning.sh, 40 steps, two runs each) against 80 MiB (6 blocks of 384 rows):
   * SmolLM2 53.31 / 53.62 ms against 54.59 / 54.61 (its LM head's split-K backward 3.69 -> 2.93 ms),
   * peak 2.69 -> 3.03 GiB; GPT-2 31.63 / 31.61 against 31.97 / 32.12, 1.75 -> 2.10 GiB. Both stay
   * under PyTorch's smallest peak (3.17 and 3.24 GiB) since the layers share the inputs no method
   * reads (ProgramOptions.methodActsOn).
   */
  lmHeadChunkMiB: number;
  /** 'auto' uses the 128x128 tile only when it makes at least this many workgroups ... */
  wideMatmulMinWorkgroups: number;
  /**
   * ... and a 128x64 or 64x128 one from this many. 240 on the H100 (was 300): SmolLM2's packed
   * q|k|v product (2048 x 960 x 576, 240 tiles of 128x64) 2.77 -> 2.50 ms per step against 64x64
   * tiles (bench/sweep-tuning.sh, 60 steps, two runs each); no GPT-2 kernel moved.
   */
  halfWideMatmulMinWorkgroups: number;
  /**
   * Which half-wide tile 'auto' takes for vec4-aligned operands (kernels/matmul.ts matmulVariant):
   * 'tall' 128x64 wherever M >= 128; 'byLayout' 64x128 where B is stored [K, N], 128x64 where it is
   * stored [N, K] (session 4's rule). On the H100 'tall' made SmolLM2's step 48.28 -> 47.13 ms
   * (down_proj.dx 3.56 -> 3.11 ms, the gate/up dx slices 6.93 -> 6.47; bench/sweep-tuning.sh, two runs each).
   */
  vec4HalfTile: 'tall' | 'byLayout';
  /** Products with one output dimension <= 16 and K >= skinnyMatmulMinK go to the skinny kernel. */
  skinnyMatmul: boolean;
  skinnyMatmulMinK: number;
  /**
   * Rows per workgroup of the skinny kernel (4, 8 or 16) when A' is contiguous along K, and along
   * rows. 8 and 8 on the H100 (bench/matmul-shapes.ts, bench/run-step-bench.sh --tuning): 16 made
   * too few workgroups for LoRA's 2048-row products (GPT-2 -1.0 ms, SmolLM2 -3.2 ms per step).
   */
  skinnyRows: number;
  skinnyRowsRowFast: number;
  /**
   * Split-K (kernels/matmul.ts splitKFactor) for products with K >= splitKMinK whose 128x128 tiling
   * makes fewer than splitKWorkgroups tiles (splitKLongWorkgroups when K >= splitKLongK), into
   * enough slices for about that many, at most splitKMaxSlices (1: never), each at least
   * splitKMinSlice long. splitKMaxSlices 32 on the H100 (bench/sweep-tuning.sh): the LM head's
   * backward over 384-row logits blocks (18 tiles, K = 50,257) 5.03 -> 4.61 ms per GPT-2 step with
   * its sum (16: 5.03, 24: 4.82, 48: 4.95, 64: 4.82), for 14 MB more split-K scratch.
   */
  splitKMinK: number;
  splitKWorkgroups: number;
  splitKLongK: number;
  splitKLongWorkgroups: number;
  splitKMaxSlices: number;
  splitKMinSlice: number;
  /**
   * Stream-K (kernels/matmul.ts streamKPlan, matmulStreamK) for unbatched vec4-aligned products
   * with K >= streamKMinK whose 128x128 tiling makes fewer than streamKMaxTiles tiles (and, with
   * streamKWholeTiles, covers the output exactly): the tiles x K-tiles iterations cut into about
   * streamKWorkgroups equal ranges (at least streamKMinIters each), one per workgroup, so the GPU's
   * last wave is never short; then a fix-up pass sums the tiles split between workgroups. Takes
   * those products from split-K and the plain kernels. streamKWorkgroups: one per SM. On the H100
   * (bench/sweep-tuning.sh, GPT-2 ms per step): 132 workgroups 33.1-33.4, 264: 34.4, without
   * stream-K 36.1-36.7 (with the first fix-up pass, one workgroup per tile: 132 34.7, 100 37.7,
   * 198 38.9). SmolLM2's 576-wide outputs (4.5 tiles: edge tiles, checked loads) were 1.3 ms slower
   * through it: hence streamKWholeTiles. streamKMaxTiles 300 (was 4096): GPT-2's c_fc and
   * mlp.c_proj.dx (384 tiles) run faster as plain 128x64 tiles (3.29 -> 3.05 and 3.66 -> 3.52 ms per
   * step; c_attn's 288 tiles tie). SmolLM2's 576-wide outputs take stream-K in whole 128x64 tiles
   * (streamKHalfTiles) over 264 workgroups, two per SM (132: 46.7-46.9 ms a step, 198: 49.2, 396:
   * 46.7, 528: 46.1, 264: 45.0-45.4; split-K and plain kernels instead: 47.1-47.3).
   */
  streamK: boolean;
  streamKWorkgroups: number;
  streamKMaxTiles: number;
  streamKMinK: number;
  streamKMinIters: number;
  streamKWholeTiles: boolean;
  /**
   * Stream-K in 128x64 tiles for outputs that are whole 128x64 tiles but not whole 128x128 ones,
   * over streamKHalfTileWorkgroups workgroups, for K >= streamKHalfTileMinK and fewer than
   * streamKHalfTileMaxTiles tiles.
   */
  streamKHalfTiles: boolean;
  streamKHalfTileWorkgroups: number;
  streamKHalfTileMinK: number;
  streamKHalfTileMaxTiles: number;
  /**
   * Whole tiles per workgroup instead of an even cut when that makes the busiest workgroup at most
   * this fraction longer (no tile split, no fix-up pass): GPT-2's c_fc (384 tiles, 3 per workgroup
   * on 132: +3%) and the LM head's forward blocks (1179 tiles: +0.8%).
   */
  streamKWholeTileSlack: number;
  /**
   * The fix-up pass reads and writes C (and GELU_GRAD's pre) as vec4s where N, ldc and offC (and
   * ldPre, offPre) are multiples of 4 (shaders/matmul_streamk_fixup_vec4.wgsl); false: always the
   * scalar kernel. On the H100 (bench/sweep-tuning.sh, GPT-2, 40 steps, two runs each) GPT-2's six
   * fix-ups a layer went 1.44 -> 1.05 ms per step (timestamp queries; 21 -> 13-16 us each), the
   * step 31.48 / 31.47 -> 31.70 / 31.12 ms (within run-to-run noise).
   */
  streamKVec4Fixup: boolean;
  /**
   * Causal self-attention (without prefix tuning) as fused kernels with an online softmax
   * (kernels/flash-attention.ts): no [B, H, T, T] scores or probabilities in memory; the backward
   * recomputes them from the saved log-sum-exp. false: scores, softmax and products as separate
   * kernels, each layer's T x T probabilities kept for the backward. 'auto': flash attention where
   * one layer's T x T probabilities would take more than flashAttentionMinScoresMiB or than one
   * storage binding holds (kernels/flash-attention.ts useFlashAttention). On the H100 at 8 x 256
   * (bench/probe/flash-attention.ts, bench/sweep-tuning.sh) flash attention's forward is faster
   * (GPT-2 1.05 vs 1.43 ms per step) but its backward slower (6.4 vs 2.5 ms: it does seven block
   * products to the separate kernels' four), so it pays in memory only: GPT-2 1.52 vs 1.82 GiB and
   * 39.8 vs 35.9 ms per step; at 2 x 1024, 1.52 vs 2.74 GiB and 53.5 vs 42.6 ms.
   */
  flashAttention: boolean | 'auto';
  flashAttentionMinScoresMiB: number;
  /**
   * Row reductions (norms, softmax, cross-entropy, gradient norm) use subgroup operations where
   * the device has the `subgroups` feature (Gpu.hasSubgroups); off, or without it: workgroup
   * memory and barriers only.
   */
  subgroups: boolean;
  /**
   * Whole-vec4 buffer copies inside a program (BERT's residual stream before a product accumulates
   * into it; bottleneck adapters' gradients) as a compute dispatch (kernels/copy.ts) rather than
   * copyBufferToBuffer, which ends the compute pass around it. (GPT-2 and Llama carry their residual
   * stream in the norm's pass instead: kernels/layernorm.ts, kernels/rmsnorm.ts copyTo.) When their
   * residual copies were still copies, the dispatch made GPT-2's step 0.2 ms and SmolLM2's 0.7 ms
   * shorter than buffer copies on the H100.
   */
  copyKernel: boolean;
  /**
   * LoRA's dA and dB (ranks up to 16) as kernels/lora.ts loraWeightGrad: chunks of rows summed
   * into partials by about this many workgroups, then the split-K sum; dA regenerates the
   * forward's dropout mask in place, so no dropout(x) pass. 0: both through the skinny matmul,
   * dA over a dropout(x) scratch. On the H100 (bench/probe/lora-grad.ts, one site alone; GPT-2's
   * c_attn: dB 18.2 -> 14.8 us, dA with its dropout pass 25.9 -> 10.9; SmolLM2's q_proj 16.1 ->
   * 10.2 and 24.7 -> 10.8; bench/sweep-tuning.sh ms per step: GPT-2 32.19 / 32.35 against 32.62 /
   * 32.94 with 0, SmolLM2 56.08 / 56.23 against 57.70 / 57.68; 264: 32.62, 56.19).
   */
  loraGradWorkgroups: number;
  /**
   * Products that allow it (MatmulArgs.tensorCores: the frozen layers' products) run on tensor
   * cores where the device has them (GpuInfo.tensorCores; kernels/matmul-tc.ts): f16 operands
   * rounded from f32 as they are staged, f32 accumulation, the precision of PyTorch's autocast.
   * false: every product in f32. tensorCoreWideMinTiles: B stored [K, N] takes 128x128 tiles from
   * this many of them, else 64x64 (kernels/matmul-tc.ts tensorCoreTile). 288 since session 22's
   * kernels (fragments at constant offsets): GPT-2's c_attn (288 tiles) 68.0 TFLOP/s in 128x128
   * against 64.8 in 64x64, the step 20.37 -> 20.22 ms (SmolLM2 32.47 -> 32.44; 150: 20.22, 32.66).
   * With the staging's indices clamp-free too (both tiles at 94-110 TFLOP/s on GPT-2's shapes) the
   * rule no longer matters much: 288 / 384 / 384 with tensorCoreWideMinDim 4096, GPT-2 17.29 /
   * 17.33 / 17.39 ms, SmolLM2 27.79 / 27.67 / 27.77 (bench/sweep-tuning.sh, 60 steps).
   */
  tensorCores: boolean;
  /** 'auto': kernels/matmul-tc.ts tensorCoreTile's rule; or force one tile. */
  tensorCoreTile: 'auto' | '128x128' | '64x64';
  tensorCoreWideMinTiles: number;
  /** B stored [N, K] takes 128x128 tiles where N or K is at least this (kernels/matmul-tc.ts tensorCoreTile). */
  tensorCoreWideMinDim: number;
  /**
   * Tensor-core products with K >= tensorCoreSplitKMinK (tensorCoreSplitKGeluMinK under a GELU
   * prologue) and fewer tiles than tensorCoreSplitKWorkgroups are cut in K slices (each at least
   * tensorCoreSplitKMinSlice) into the program's scratch in one dispatch, then summed
   * (kernels/matmul-tc.ts tensorCoreSplitK). On the H100 (bench/sweep-tuning.sh, GPT-2): the LM
   * head's backward (96 tiles over K = 50,257) 3.53 ms a step in 64x64 tiles, 2.29 in 3 slices,
   * 1.85 in 5; mlp.c_proj with its GELU prologue 3.33 -> 2.01 + 0.24 (5 slices and their sum); but
   * GPT-2's 768-wide dx products (96 tiles, K = 2304 and 3072) slower in slices (c_fc.dx 2.09 ->
   * 2.48 + 0.22), hence the two thresholds.
   */
  tensorCoreSplitKMinK: number;
  tensorCoreSplitKGeluMinK: number;
  tensorCoreSplitKWorkgroups: number;
  tensorCoreSplitKMinSlice: number;
  /**
   * B kept in f16 (frozen weights) goes to the tensor cores as it is stored: the halves are staged
   * by bitcast (shaders/matmul_tc_*_half_b.wgsl). false: widened to f32 and rounded back as an f32
   * B is (kernels/packed-f16.ts), the same bits.
   */
  tensorCoreHalfB: boolean;
  /**
   * The tensor-core products in f32 accuracy instead of f16 operands: each f32 operand staged as two
   * halves, hi = x rounded to 11 significant bits and lo = x - hi, multiplied lo·hi + hi·lo + hi·hi
   * with f32 sums (two products where B is kept in f16, which is exact in hi alone)
   * (shaders/matmul_tc_*_split.wgsl).
   */
  tensorCoreF32: boolean;
  /**
   * With tensorCoreF32, A's rows scaled as gradients' are (shaders/row_scale.wgsl) for values too:
   * an activation's lo half (2^-12 of it) is an f16 subnormal below 0.25, with fewer bits. On the
   * H100 (bench/tc-train-check.ts --f32-accuracy, 30 steps against the f32 kernels) SmolLM2's
   * LoRA parameters' change 1.81e-3 apart without, 1.46e-4 with (two f32 runs summing in another
   * order: 1.35e-4), its gradient norm 2.35e-4 -> 1.64e-5 (6.6e-6); GPT-2 the same either way
   * (1.3e-4). It costs SmolLM2's step 33.83 -> 36.26 ms (150 steps, session 24: the residual adds
   * lose their straight store, ACC_INIT); GPT-2's 21.4 ms either way since a bias goes into the
   * accumulators under the scales.
   */
  tensorCoreF32ScaleValues: boolean;
  /**
   * Llama runs q_proj, k_proj and v_proj as one product over their stacked weights into packed
   * [q | k | v] rows, forward and dx, where the method acts on none of them or takes column slices
   * (LoRA) (models/llama.ts fusesQkv). false: three products each way.
   */
  fuseQkv: boolean;
}

export const DEFAULT_KERNEL_TUNING: KernelTuning = {
  matmul: 'auto', vec4Matmul: true, vec4C: true, geluPrologue: true, lmHeadChunkMiB: 512, wideMatmulMinWorkgroups: 1000, halfWideMatmulMinWorkgroups: 240, vec4HalfTile: 'tall', skinnyMatmul: true, skinnyMatmulMinK: 64, skinnyRows: 8, skinnyRowsRowFast: 8, splitKMinK: 1536, splitKWorkgroups: 320, splitKLongK: 8192, splitKLongWorkgroups: 1000, splitKMaxSlices: 32, splitKMinSlice: 256,
  streamK: true, streamKWorkgroups: 132, streamKMaxTiles: 300, streamKMinK: 768, streamKMinIters: 8, streamKWholeTiles: true, streamKHalfTiles: true, streamKHalfTileWorkgroups: 264, streamKHalfTileMinK: 512, streamKHalfTileMaxTiles: 200, streamKWholeTileSlack: 0.05, streamKVec4Fixup: true,
  flashAttention: 'auto', flashAttentionMinScoresMiB: 256, subgroups: true, copyKernel: true,
  loraGradWorkgroups: 132, fuseQkv: true, tensorCores: true, tensorCoreTile: 'auto', tensorCoreWideMinTiles: 288, tensorCoreWideMinDim: 2048, tensorCoreSplitKMinK: 8192, tensorCoreSplitKGeluMinK: 2048, tensorCoreSplitKWorkgroups: 400, tensorCoreSplitKMinSlice: 512, tensorCoreHalfB: true, tensorCoreF32: false, tensorCoreF32ScaleValues: true,
};

const SUBGROUP_MATRIX_FEATURE = 'chromium-experimental-subgroup-matrix';

/** The adapter's subgroup-matrix configurations as Dawn reports them (GPUAdapterInfo.subgroupMatrixConfigs). */
interface SubgroupMatrixConfig {
  componentType: string;
  resultComponentType: string;
  M: number;
  N: number;
  K: number;
}

/**
 * Whether the adapter offers what kernels/matmul-tc.ts needs: shader-f16, subgroups, subgroup matrices with
 * an f16 x f16 -> f32 configuration of 16 x 16 x 16, and subgroups of exactly 32 invocations (the
 * kernels count on 8 or 4 subgroups in their 256 or 128 invocations). On NVIDIA's Vulkan driver Dawn
 * offers shader-f16 only under its vulkan_enable_f16_on_nvidia toggle, and subgroup matrices under
 * allow_unsafe_apis (Chrome: --enable-unsafe-webgpu and --enable-dawn-features=...).
 */
export function adapterHasTensorCores(adapter: GPUAdapter): boolean {
  if (!adapter.features.has('shader-f16') || !adapter.features.has('subgroups') || !adapter.features.has(SUBGROUP_MATRIX_FEATURE as GPUFeatureName)) return false;
  const info = (adapter as { info?: GPUAdapterInfo & { subgroupMatrixConfigs?: Iterable<SubgroupMatrixConfig>; subgroupMinSize?: number; subgroupMaxSize?: number } }).info;
  if (!info || info.subgroupMinSize !== 32 || info.subgroupMaxSize !== 32) return false;
  return [...(info.subgroupMatrixConfigs ?? [])].some((c) => c.componentType === 'f16' && c.resultComponentType === 'f32' && c.M === 16 && c.N === 16 && c.K === 16);
}

export class GpuError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'GpuError';
  }
}

export class Gpu {
  readonly hasF16: boolean;
  readonly hasSubgroups: boolean;
  readonly hasTimestamps: boolean;
  /** GpuInfo.tensorCores: the tensor-core products of kernels/matmul-tc.ts can run here. */
  get hasTensorCores(): boolean {
    return this.info.tensorCores;
  }
  private readonly pipelines = new Map<string, GPUComputePipeline>();
  private readonly modules = new Map<string, GPUShaderModule>();
  /** Bytes of live buffers made through this object (weights, activations, optimizer state). */
  allocatedBytes = 0;
  /** Validation / out-of-memory errors nobody caught; thrown at the next read or sync. */
  private readonly uncaptured: string[] = [];
  /** Set when the device is lost (driver reset, destroy()); every later call fails with it. */
  lost: string | null = null;
  /** When set, training steps time every dispatch through it (benchmarks; see ./profiler.ts). */
  profiler: KernelProfiler | null = null;
  /**
   * The JS side polls for this device's events while a promise of it is pending (Node's Dawn: a
   * setImmediate loop; node-gpu.ts sets it), so the trainers ask for readbacks late
   * (train/submit-step.ts ReadbackPacer). Browsers deliver events themselves.
   */
  pollsForEvents = false;
  tuning: KernelTuning = { ...DEFAULT_KERNEL_TUNING };

  private constructor(
    readonly device: GPUDevice,
    readonly info: GpuInfo,
  ) {
    this.hasF16 = device.features.has('shader-f16');
    this.hasSubgroups = device.features.has('subgroups');
    this.hasTimestamps = device.features.has('timestamp-query');
    device.addEventListener('uncapturederror', (e) => {
      const msg = (e as GPUUncapturedErrorEvent).error.message;
      if (this.uncaptured.length < 20) this.uncaptured.push(msg);
    });
    void device.lost.then((info) => {
      this.lost = `the GPU device was lost (${info.reason}): ${info.message}`;
    });
  }

  /**
   * Runs `build` (which makes buffers and records programs) inside out-of-memory and validation
   * error scopes, so an allocation the device cannot satisfy comes back here as a GpuError naming
   * what was being built, not as a later uncaptured error. The scopes are popped even when
   * `build` throws (then its error is rethrown unless the device reported one first).
   */
  async allocating<T>(what: string, build: () => T): Promise<T> {
    this.device.pushErrorScope('validation');
    this.device.pushErrorScope('out-of-memory');
    let result: T | undefined;
    let thrown: unknown = null;
    try {
      result = build();
    } catch (e) {
      thrown = e;
    }
    const outOfMemory = await this.device.popErrorScope();
    const invalid = await this.device.popErrorScope();
    if (outOfMemory) throw new GpuError(`out of GPU memory while making ${what} (${fmtBytes(this.allocatedBytes)} in buffers): ${outOfMemory.message}`);
    if (invalid) throw new GpuError(`GPU error while making ${what}: ${invalid.message}`);
    if (thrown) throw thrown;
    return result as T;
  }

  /** Throws the first GPU error seen since the last check (validation, out of memory, device lost). */
  checkErrors(): void {
    if (this.lost) throw new GpuError(this.lost);
    if (this.uncaptured.length) {
      const first = this.uncaptured[0];
      const more = this.uncaptured.length - 1;
      this.uncaptured.length = 0;
      throw new GpuError(`GPU error: ${first.trim()}${more ? ` (and ${more} more)` : ''}`);
    }
  }

  static async create(options: GpuOptions): Promise<Gpu> {
    const adapter = await options.gpu.requestAdapter({ powerPreference: options.powerPreference ?? 'high-performance' });
    if (!adapter) throw new GpuError('WebGPU is available but no GPU adapter was found.');
    const wanted: GPUFeatureName[] = [];
    if (options.optionalFeatures !== false) {
      for (const f of ['shader-f16', 'subgroups', 'timestamp-query'] as GPUFeatureName[]) {
        if (adapter.features.has(f)) wanted.push(f);
      }
    }
    const tensorCores = options.optionalFeatures !== false && adapterHasTensorCores(adapter);
    if (tensorCores) wanted.push(SUBGROUP_MATRIX_FEATURE as GPUFeatureName);
    const l = adapter.limits;
    const requiredLimits: Record<string, number> = {
      maxStorageBufferBindingSize: l.maxStorageBufferBindingSize,
      maxBufferSize: l.maxBufferSize,
      maxComputeWorkgroupStorageSize: l.maxComputeWorkgroupStorageSize,
      maxComputeInvocationsPerWorkgroup: l.maxComputeInvocationsPerWorkgroup,
      maxComputeWorkgroupSizeX: l.maxComputeWorkgroupSizeX,
      maxComputeWorkgroupSizeY: l.maxComputeWorkgroupSizeY,
      maxComputeWorkgroupsPerDimension: l.maxComputeWorkgroupsPerDimension,
      maxStorageBuffersPerShaderStage: l.maxStorageBuffersPerShaderStage,
    };
    const device = await adapter.requestDevice({ requiredFeatures: wanted, requiredLimits });
    // `adapter.info` is the current spelling; older implementations had requestAdapterInfo().
    const ai: Partial<GPUAdapterInfo> = (adapter as { info?: GPUAdapterInfo }).info ?? {};
    const isFallback = Boolean(
      (adapter as { isFallbackAdapter?: boolean }).isFallbackAdapter ??
        (ai as { isFallbackAdapter?: boolean }).isFallbackAdapter ??
        /swiftshader|warp|llvmpipe|lavapipe/i.test(`${ai.vendor} ${ai.architecture} ${ai.device} ${ai.description}`),
    );
    const dl = device.limits;
    const info: GpuInfo = {
      vendor: ai.vendor ?? '',
      architecture: ai.architecture ?? '',
      device: ai.device ?? '',
      description: ai.description ?? '',
      isFallbackAdapter: isFallback,
      features: [...device.features].sort(),
      tensorCores: tensorCores && ['shader-f16', 'subgroups', SUBGROUP_MATRIX_FEATURE].every((f) => device.features.has(f as GPUFeatureName)),
      limits: {
        maxStorageBufferBindingSize: dl.maxStorageBufferBindingSize,
        maxBufferSize: dl.maxBufferSize,
        maxComputeWorkgroupStorageSize: dl.maxComputeWorkgroupStorageSize,
        maxComputeInvocationsPerWorkgroup: dl.maxComputeInvocationsPerWorkgroup,
        maxComputeWorkgroupsPerDimension: dl.maxComputeWorkgroupsPerDimension,
        maxStorageBuffersPerShaderStage: dl.maxStorageBuffersPerShaderStage,
      },
    };
    const gpu = new Gpu(device, info);
    Object.assign(gpu.tuning, options.tuning);
    return gpu;
  }

  /** Largest byte size one storage binding may have: the limit tensors are split against. */
  get maxBindingBytes(): number {
    return Math.min(this.info.limits.maxStorageBufferBindingSize, this.info.limits.maxBufferSize);
  }

  shaderModule(code: string, label: string): GPUShaderModule {
    let m = this.modules.get(code);
    if (!m) {
      m = this.device.createShaderModule({ code, label });
      this.modules.set(code, m);
    }
    return m;
  }

  /** Compute pipeline for a WGSL source, cached by source, entry point and override constants. */
  pipeline(code: string, label: string, entryPoint = 'main', constants?: Record<string, number>): GPUComputePipeline {
    const key = `${entryPoint}|${constants ? JSON.stringify(constants) : ''}|${code}`;
    let p = this.pipelines.get(key);
    if (!p) {
      p = this.device.createComputePipeline({
        label,
        layout: 'auto',
        compute: { module: this.shaderModule(code, label), entryPoint, constants },
      });
      this.pipelines.set(key, p);
    }
    return p;
  }

  buffer(bytes: number, label: string, usage = GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST): GPUBuffer {
    const size = Math.max(16, Math.ceil(bytes / 16) * 16);
    if (size > this.info.limits.maxBufferSize) {
      throw new GpuError(`${label}: ${fmtBytes(size)} is larger than this GPU's largest buffer (${fmtBytes(this.info.limits.maxBufferSize)}).`);
    }
    const b = this.device.createBuffer({ size, usage, label });
    this.allocatedBytes += size;
    return b;
  }

  /** A new zero-filled tensor. */
  tensor(shape: readonly number[], label: string, dtype: DType = 'f32'): Tensor {
    const bytes = dtypeBytes(dtype, shapeSize(shape));
    if (bytes > this.maxBindingBytes) {
      throw new GpuError(`${label}: ${fmtBytes(bytes)} is over this GPU's binding limit (${fmtBytes(this.maxBindingBytes)}); split it by rows.`);
    }
    return new Tensor(this.buffer(bytes, label), shape, label, dtype);
  }

  tensorFrom(data: Float32Array | Int32Array | Uint32Array, shape: readonly number[], label: string): Tensor {
    const dtype: DType = data instanceof Float32Array ? 'f32' : data instanceof Int32Array ? 'i32' : 'u32';
    const t = this.tensor(shape, label, dtype);
    if (data.length !== t.size) throw new GpuError(`${label}: ${data.length} values for shape [${shape.join(', ')}]`);
    this.write(t, data);
    return t;
  }

  /**
   * An 'f16' tensor of `values` rounded to the nearest half (ties to even). Refuses values past
   * f16's range (|x| > 65504), which would become infinities, naming the first.
   */
  tensorFromF16(values: Float32Array, shape: readonly number[], label: string): Tensor {
    const t = this.tensor(shape, label, 'f16');
    try {
      this.writeF16(t, values);
    } catch (e) {
      this.destroyTensor(t);
      throw e;
    }
    return t;
  }

  /**
   * Writes f32 values into an 'f16' tensor (a whole one or a view), rounded to nearest (ties to
   * even); refuses a finite value past f16's range, naming the element.
   */
  writeF16(t: Tensor, values: Float32Array): void {
    if (t.dtype !== 'f16') throw new GpuError(`${t.label}: writeF16 into a ${t.dtype} tensor`);
    if (values.length !== t.size) throw new GpuError(`${t.label}: ${values.length} values for shape [${t.shape.join(', ')}]`);
    const halves = new Uint16Array(t.bytes / 2);
    halves.set(f32ToF16(values));
    for (let i = 0; i < values.length; i++) {
      if ((halves[i] & 0x7c00) === 0x7c00 && Number.isFinite(values[i])) {
        throw new GpuError(`${t.label}: element ${i} (${values[i]}) is past the range of f16 (65504): keep this tensor in f32`);
      }
    }
    this.write(t, halves);
  }

  write(t: Tensor | GPUBuffer, data: ArrayBufferView, byteOffset = 0): void {
    const buffer = t instanceof Tensor ? t.buffer : t;
    if (t instanceof Tensor && t.isView && byteOffset + data.byteLength > t.bytes) throw new GpuError(`${t.label}: ${data.byteLength} bytes at ${byteOffset} overrun this ${t.bytes}-byte view`);
    this.device.queue.writeBuffer(buffer, byteOffset + (t instanceof Tensor ? t.byteOffset : 0), data.buffer, data.byteOffset, data.byteLength);
  }

  /** Reads a tensor back (waits for the GPU). For tests, reports and export; never inside a step. */
  async read(t: Tensor): Promise<Float32Array>;
  async read(t: Tensor, as: 'i32'): Promise<Int32Array>;
  async read(t: Tensor, as: 'u32'): Promise<Uint32Array>;
  async read(t: Tensor, as?: 'i32' | 'u32'): Promise<Float32Array | Int32Array | Uint32Array> {
    const bytes = await this.readBytes(t.buffer, t.bytes, t.byteOffset);
    // halves come back widened to f32
    if (t.dtype === 'f16' && as === undefined) return f16ToF32(new Uint16Array(bytes, 0, t.size));
    if (as === 'i32') return new Int32Array(bytes);
    if (as === 'u32') return new Uint32Array(bytes);
    return new Float32Array(bytes);
  }

  async readBytes(buffer: GPUBuffer, bytes: number, offset = 0): Promise<ArrayBuffer> {
    const size = Math.ceil(bytes / 4) * 4;
    const staging = this.device.createBuffer({ size, usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST, label: 'readback' });
    const enc = this.device.createCommandEncoder({ label: 'readback' });
    enc.copyBufferToBuffer(buffer, offset, staging, 0, size);
    this.device.queue.submit([enc.finish()]);
    await staging.mapAsync(GPUMapMode.READ);
    this.checkErrors();
    const out = staging.getMappedRange().slice(0, bytes);
    staging.unmap();
    staging.destroy();
    return out;
  }

  /**
   * Turns the tensor cores off on this device (GpuInfo.tensorCores false, the reason in
   * GpuInfo.tensorCoresRefused): every product built from now on runs in f32.
   */
  refuseTensorCores(reason: string): void {
    this.info.tensorCores = false;
    this.info.tensorCoresRefused = reason;
  }

  private readonly scratch = new Map<string, Tensor>();
  /**
   * A tensor of at least `elements` f32s shared by every op that asks under `key`, for work that
   * lives only from one dispatch to the next one in the same queue (the tensor-core products' row
   * scales). A larger request makes a new one; the old one stays alive for the ops already bound to it.
   */
  sharedScratch(key: string, elements: number): Tensor {
    const have = this.scratch.get(key);
    if (have && have.size >= elements) return have;
    const t = this.tensor([Math.max(elements, 4096)], `${key} (shared scratch)`);
    this.scratch.set(key, t);
    return t;
  }

  destroyTensor(t: Tensor): void {
    if (t.isView) throw new GpuError(`${t.label} is a view into a shared buffer: destroy that buffer's whole tensor (gpu/arena.ts)`);
    this.allocatedBytes -= t.buffer.size;
    t.buffer.destroy();
  }

  /** Waits until all submitted work is done. */
  async sync(): Promise<void> {
    await this.device.queue.onSubmittedWorkDone();
    this.checkErrors();
  }
}

export function fmtBytes(n: number): string {
  if (n >= 2 ** 30) return `${(n / 2 ** 30).toFixed(2)} GiB`;
  if (n >= 2 ** 20) return `${(n / 2 ** 20).toFixed(1)} MiB`;
  if (n >= 2 ** 10) return `${(n / 2 ** 10).toFixed(1)} KiB`;
  return `${n} B`;
}
