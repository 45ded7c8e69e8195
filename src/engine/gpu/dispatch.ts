// Recorded GPU work. Kernels are bound once, when a model builds its program (pipelines, uniform
// buffers and bind groups made up front); a training step then only replays the list, so the hot
// loop allocates nothing.

import type { Gpu } from './gpu';
import { Tensor } from './tensor';

/** One compute dispatch with everything bound. */
export interface Dispatch {
  kind: 'dispatch';
  label: string;
  pipeline: GPUComputePipeline;
  bindGroup: GPUBindGroup;
  workgroups: [number, number, number];
}

/** Zero a buffer (or a byte range of it). */
export interface Clear {
  kind: 'clear';
  buffer: GPUBuffer;
  offset?: number;
  size?: number;
}

export interface Copy {
  kind: 'copy';
  src: GPUBuffer;
  srcOffset: number;
  dst: GPUBuffer;
  dstOffset: number;
  size: number;
}

export type Op = Dispatch | Clear | Copy;

/** A 4-byte uniform field: plain numbers are u32; wrap floats with f32() and signed ints with i32(). */
export type Param = number | { f32: number } | { i32: number };
export const f32 = (v: number): Param => ({ f32: v });
export const i32 = (v: number): Param => ({ i32: v });

/**
 * Packs scalars in declaration order, padded to 16 bytes, matching a WGSL struct of u32/i32/f32
 * fields (all 4-byte aligned, so no inner padding).
 */
export function packParams(params: readonly Param[]): ArrayBuffer {
  const n = Math.max(4, Math.ceil(params.length / 4) * 4);
  const buf = new ArrayBuffer(n * 4);
  const u = new Uint32Array(buf);
  const f = new Float32Array(buf);
  const s = new Int32Array(buf);
  params.forEach((p, i) => {
    if (typeof p === 'number') {
      if (!Number.isInteger(p) || p < 0 || p > 0xffffffff) throw new Error(`param ${i}: ${p} is not a u32 (wrap floats in f32())`);
      u[i] = p;
    } else if ('f32' in p) f[i] = p.f32;
    else s[i] = p.i32;
  });
  return buf;
}

export interface DispatchSpec {
  label: string;
  /** WGSL source. Binding 0 of group 0 is the uniform `params` (when given), then `buffers` in order. */
  code: string;
  entryPoint?: string;
  constants?: Record<string, number>;
  params?: readonly Param[];
  /** A uniform buffer to bind at 0 instead of `params` (e.g. per-step values written each step). */
  uniform?: GPUBuffer;
  buffers: readonly (Tensor | GPUBuffer)[];
  workgroups: [number, number?, number?];
}

/** Binds a kernel once. All declared bindings must be used by the shader (layout 'auto'). */
export function bindDispatch(gpu: Gpu, spec: DispatchSpec): Dispatch {
  const pipeline = gpu.pipeline(spec.code, spec.label, spec.entryPoint ?? 'main', spec.constants);
  const entries: GPUBindGroupEntry[] = [];
  let binding = 0;
  if (spec.params || spec.uniform) {
    let ub = spec.uniform;
    if (!ub) {
      const data = packParams(spec.params!);
      ub = gpu.device.createBuffer({ size: data.byteLength, usage: GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST, label: `${spec.label}.params` });
      gpu.device.queue.writeBuffer(ub, 0, data);
    }
    entries.push({ binding: binding++, resource: { buffer: ub } });
  }
  for (const b of spec.buffers) {
    // a view binds its own range, rounded up to whole vec4s (its slot has room: gpu/arena.ts)
    const resource = b instanceof Tensor ? (b.isView ? { buffer: b.buffer, offset: b.byteOffset, size: Math.ceil(b.bytes / 16) * 16 } : { buffer: b.buffer }) : { buffer: b };
    entries.push({ binding: binding++, resource });
  }
  const bindGroup = gpu.device.createBindGroup({ label: spec.label, layout: pipeline.getBindGroupLayout(0), entries });
  const max = gpu.info.limits.maxComputeWorkgroupsPerDimension;
  const [x, y = 1, z = 1] = spec.workgroups;
  for (const w of [x, y, z]) {
    if (!(w >= 0) || w > max || !Number.isInteger(w)) throw new Error(`${spec.label}: ${w} workgroups in one dimension (limit ${max})`);
  }
  return { kind: 'dispatch', label: spec.label, pipeline, bindGroup, workgroups: [x, y, z] };
}

/** Encodes ops in order; consecutive dispatches share one compute pass. */
export function encodeOps(encoder: GPUCommandEncoder, ops: readonly Op[]): void {
  let pass: GPUComputePassEncoder | null = null;
  for (const op of ops) {
    if (op.kind === 'dispatch') {
      if (!pass) pass = encoder.beginComputePass();
      if (op.workgroups[0] === 0 || op.workgroups[1] === 0 || op.workgroups[2] === 0) continue;
      pass.setPipeline(op.pipeline);
      pass.setBindGroup(0, op.bindGroup);
      pass.dispatchWorkgroups(op.workgroups[0], op.workgroups[1], op.workgroups[2]);
      continue;
    }
    if (pass) {
      pass.end();
      pass = null;
    }
    if (op.kind === 'clear') encoder.clearBuffer(op.buffer, op.offset ?? 0, op.size);
    else encoder.copyBufferToBuffer(op.src, op.srcOffset, op.dst, op.dstOffset, op.size);
  }
  if (pass) pass.end();
}

/** Encodes and submits ops as one command buffer. */
export function runOps(gpu: Gpu, ops: readonly Op[], label = 'ops'): void {
  const encoder = gpu.device.createCommandEncoder({ label });
  encodeOps(encoder, ops);
  gpu.device.queue.submit([encoder.finish()]);
}

export const ceilDiv = (a: number, b: number): number => Math.ceil(a / b);
