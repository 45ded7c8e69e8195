import code from '../../../shaders/swiglu.wgsl?raw';
import type { Gpu } from '../gpu/gpu';
import { bindDispatch, type Dispatch } from '../gpu/dispatch';
import type { Tensor } from '../gpu/tensor';
import { grid1d } from './grid';

/**
 * Where gate and up live: element (r, f) of gate is gate[r * gateStride + gateOffset + f].
 * Separate [rows, F] tensors: the defaults (stride F, offset 0). One packed [rows, 2F] tensor
 * (gate_proj and up_proj fused): gate = up = that tensor, gateStride = upStride = 2F,
 * gateOffset = 0, upOffset = F.
 */
export interface SwigluLayout {
  gateStride?: number;
  upStride?: number;
  gateOffset?: number;
  upOffset?: number;
}

export interface SwigluForwardArgs extends SwigluLayout {
  gate: Tensor;
  up: Tensor;
  out: Tensor; // [rows, F], dense
  rows: number;
  F: number;
}

export interface SwigluBackwardArgs extends SwigluLayout {
  dout: Tensor; // [rows, F], dense
  gate: Tensor;
  up: Tensor;
  dgate: Tensor;
  dup: Tensor;
  rows: number;
  F: number;
  /** Layout of dgate/dup; each defaults to the layout of gate/up. */
  dgateStride?: number;
  dgateOffset?: number;
  dupStride?: number;
  dupOffset?: number;
}

interface Strided {
  name: string;
  t: Tensor;
  stride: number;
  offset: number;
}

function checkDims(what: string, rows: number, F: number): void {
  if (!Number.isInteger(rows) || rows < 0) throw new Error(`${what}: rows must be a non-negative integer (got ${rows})`);
  if (!Number.isInteger(F) || F < 1) throw new Error(`${what}: F must be a positive integer (got ${F})`);
}

function checkF32(what: string, name: string, t: Tensor, n: number): void {
  if (t.dtype !== 'f32') throw new Error(`${what}: ${name} must be f32 (got ${t.dtype})`);
  if (t.size < n) throw new Error(`${what}: ${name} has ${t.size} elements, need ${n}`);
}

function checkStrided(what: string, rows: number, F: number, s: Strided): void {
  for (const [k, v] of [['Stride', s.stride], ['Offset', s.offset]] as const) {
    if (!Number.isInteger(v) || v < 0) throw new Error(`${what}: ${s.name}${k} must be a non-negative integer (got ${v})`);
  }
  if (s.offset + F > s.stride) throw new Error(`${what}: ${s.name} columns ${s.offset}..${s.offset + F} overrun ${s.name}Stride ${s.stride}`);
  checkF32(what, s.name, s.t, rows === 0 ? 0 : (rows - 1) * s.stride + s.offset + F);
}

/** Whether two strided [rows, F] views of one buffer share an element (same stride: column ranges overlap). */
function overlaps(a: Strided, b: Strided, F: number): boolean {
  if (a.stride !== b.stride) return true; // conservative: only equal strides are allowed to share a buffer
  return a.offset < b.offset + F && b.offset < a.offset + F;
}

function layout(a: SwigluLayout, F: number): { gate: [number, number]; up: [number, number] } {
  return { gate: [a.gateStride ?? F, a.gateOffset ?? 0], up: [a.upStride ?? F, a.upOffset ?? 0] };
}

/** out = silu(gate) * up (Llama's MLP activation); gate/up separate or packed (see SwigluLayout). */
export function swigluForward(gpu: Gpu, a: SwigluForwardArgs): Dispatch {
  const what = `swigluForward(${a.out.label})`;
  checkDims(what, a.rows, a.F);
  const l = layout(a, a.F);
  const gate: Strided = { name: 'gate', t: a.gate, stride: l.gate[0], offset: l.gate[1] };
  const up: Strided = { name: 'up', t: a.up, stride: l.up[0], offset: l.up[1] };
  checkStrided(what, a.rows, a.F, gate);
  checkStrided(what, a.rows, a.F, up);
  checkF32(what, 'out', a.out, a.rows * a.F);
  if (a.out.buffer === a.gate.buffer || a.out.buffer === a.up.buffer) throw new Error(`${what}: out must not alias gate or up`);
  return bindDispatch(gpu, {
    label: what,
    code,
    entryPoint: 'forward',
    params: [a.rows, a.F, gate.stride, gate.offset, up.stride, up.offset, 0, 0, 0, 0],
    buffers: [a.gate, a.up, a.out],
    workgroups: grid1d(a.rows * a.F),
  });
}

/**
 * dgate = dout * up * silu'(gate), dup = dout * silu(gate). Three ways to place the results:
 * dgate and dup in two other buffers; in one other buffer (packed, disjoint columns); or in place
 * over the gate/up buffer when gate, up, dgate and dup are all one buffer with dgate/dup laid out
 * exactly as gate/up (the pre-activations are dead after this, so their memory takes the gradient).
 */
export function swigluBackward(gpu: Gpu, a: SwigluBackwardArgs): Dispatch {
  const what = `swigluBackward(${a.dgate.label})`;
  const { rows, F } = a;
  checkDims(what, rows, F);
  const l = layout(a, F);
  const gate: Strided = { name: 'gate', t: a.gate, stride: l.gate[0], offset: l.gate[1] };
  const up: Strided = { name: 'up', t: a.up, stride: l.up[0], offset: l.up[1] };
  const dgate: Strided = { name: 'dgate', t: a.dgate, stride: a.dgateStride ?? gate.stride, offset: a.dgateOffset ?? gate.offset };
  const dup: Strided = { name: 'dup', t: a.dup, stride: a.dupStride ?? up.stride, offset: a.dupOffset ?? up.offset };
  for (const s of [gate, up, dgate, dup]) checkStrided(what, rows, F, s);
  checkF32(what, 'dout', a.dout, rows * F);

  const params = [rows, F, gate.stride, gate.offset, up.stride, up.offset, dgate.stride, dgate.offset, dup.stride, dup.offset];
  const base = { label: what, code, params, workgroups: grid1d(rows * F) };
  const outs = new Set([a.dgate.buffer, a.dup.buffer]);
  if (outs.has(a.dout.buffer)) throw new Error(`${what}: dgate/dup must not alias dout`);
  if (a.dgate.buffer === a.dup.buffer && overlaps(dgate, dup, F)) {
    throw new Error(`${what}: dgate and dup share a buffer and overlap (they need equal strides and disjoint columns)`);
  }

  const ins = new Set([a.gate.buffer, a.up.buffer]);
  if ([...outs].some((b) => ins.has(b))) {
    // Only the fully in-place form is allowed: one buffer, each gradient where its input was.
    const one = ins.size === 1 && outs.size === 1 && a.gate.buffer === a.dgate.buffer;
    const same = (x: Strided, y: Strided) => x.stride === y.stride && x.offset === y.offset;
    if (!one || !same(gate, dgate) || !same(up, dup) || overlaps(gate, up, F)) {
      throw new Error(
        `${what}: dgate/dup may alias gate/up only all together in one buffer, with dgate laid out as gate and dup as up ` +
          '(and gate and up disjoint)',
      );
    }
    return bindDispatch(gpu, { ...base, entryPoint: 'backward_inplace', buffers: [a.dout, a.gate] });
  }
  if (a.dgate.buffer === a.dup.buffer) {
    return bindDispatch(gpu, { ...base, entryPoint: 'backward_packed', buffers: [a.dout, a.gate, a.up, a.dgate] });
  }
  return bindDispatch(gpu, { ...base, entryPoint: 'backward', buffers: [a.dout, a.gate, a.up, a.dgate, a.dup] });
}
