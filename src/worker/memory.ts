// GPU memory a LoRA training run will take, before any buffer is made: the frozen weights (what
// the model holds now), the training program's activations and the evaluation program's (each
// architecture lists what its buildProgram allocates), and the adapter with its AdamW state and
// scratch (the buffers of src/engine/peft/lora.ts and src/engine/train/optimizer.ts). Exact to
// the byte: test/memory-estimate.test.ts builds real runs and compares with gpu.allocatedBytes.

import type { CausalLMModel } from '../engine/models/registry';
import { allocatedBytesFor, type PlannedBuffer } from '../engine/models/program';
import type { LinearModuleInfo } from '../engine/peft/lora';
import type { MemoryEstimate } from './protocol';

export interface RunShape {
  B: number;
  T: number;
  rank: number;
  dropout: number;
  /** The linear layers LoRA adapts. */
  targeted: LinearModuleInfo[];
  hasValidation: boolean;
}

/** What the device allows, from GpuInfo. */
export interface DeviceLimits {
  maxBufferSize: number;
  maxStorageBufferBindingSize: number;
  isFallbackAdapter: boolean;
}

/** Above this a software renderer (the CPU, through SwiftShader or WARP) is warned about. */
export const SOFTWARE_RENDERER_WARN_BYTES = 2 * 2 ** 30;

/** The adapter's buffers: value, grad and AdamW m, v of A [r, in] and B [out, r]; scratch for M rows; optimizer partials. */
export function adapterBuffers(run: RunShape): PlannedBuffer[] {
  const { B, T, rank, targeted } = run;
  const out: PlannedBuffer[] = [];
  for (const t of targeted) {
    for (const [name, elements] of [['lora_A', rank * t.inFeatures], ['lora_B', t.outFeatures * rank]] as const) {
      for (const part of ['', '.grad', '.m', '.v']) out.push({ label: `${t.module}.${name}${part}`, elements });
    }
  }
  // Lora's scratch: both programs (training and evaluation) have B*T rows, so one set.
  const M = B * T;
  out.push({ label: 'lora.u', elements: M * rank }, { label: 'lora.du', elements: M * rank });
  if (run.dropout > 0) {
    const maxIn = targeted.reduce((s, t) => Math.max(s, t.inFeatures), 0);
    out.push({ label: 'lora.xd', elements: M * maxIn }, { label: 'lora.dxd', elements: M * maxIn });
  }
  // buildAdamW: one gradient-norm partial per tensor, and the [norm, coefficient] pair.
  out.push({ label: 'gradNorm.partials', elements: Math.max(1, 2 * targeted.length) }, { label: 'gradNorm.clip', elements: 2 });
  return out;
}

const sum = (buffers: readonly PlannedBuffer[]) => buffers.reduce((s, b) => s + allocatedBytesFor(b.elements), 0);

export function estimateTraining(model: CausalLMModel, run: RunShape, device: DeviceLimits): MemoryEstimate {
  const weights = model.weightBytes();
  const trainBuffers = model.programBuffers({ B: run.B, T: run.T, training: true });
  const evalBuffers = run.hasValidation ? model.programBuffers({ B: run.B, T: run.T, training: false }) : [];
  const adapter = adapterBuffers(run);
  const evaluation = sum(evalBuffers);
  const activations = sum(trainBuffers) + evaluation;
  const adapterBytes = sum(adapter);
  const total = weights + activations + adapterBytes;
  // Every buffer is checked against the binding limit (Gpu.tensor) and the buffer limit (Gpu.buffer).
  let largest: PlannedBuffer = { label: '', elements: 0 };
  for (const b of [...trainBuffers, ...evalBuffers, ...adapter]) if (b.elements > largest.elements) largest = b;
  const largestBuffer = largest.elements * 4;
  const bufferLimit = Math.min(device.maxBufferSize, device.maxStorageBufferBindingSize);
  const warning =
    device.isFallbackAdapter && total > SOFTWARE_RENDERER_WARN_BYTES
      ? `${fmtGiB(total)} on a software renderer: it lives in this computer's main memory next to everything else, and each step will be very slow. Lower the batch size or max length, or pick a smaller model.`
      : null;
  return {
    weights,
    activations,
    evaluation,
    adapter: adapterBytes,
    total,
    largestBuffer,
    largestBufferLabel: largest.label,
    bufferLimit,
    warning,
  };
}

function fmtGiB(n: number): string {
  return `${(n / 2 ** 30).toFixed(2)} GB`;
}
