// The BERT-family encoder classifier against a float64 CPU reference (test/helpers/bert-reference.ts):
// new kernels (GELU erf, ReLU/tanh, column sums) elementwise; whole DistilBERT and BERT models
// with LoRA and a trainable head: logits and loss, and every gradient against central finite
// differences of the reference; the head-only program; importing an exported SEQ_CLS adapter.
import { describe, expect, it } from 'vitest';
import { expectClose, f64, randArray, rng, testGpu } from './helpers/gpu';
import {
  encoderNames, encoderReference, encoderShapes, encoderWeightSource, erf, geluErf, geluErfGrad, randomEncoderWeights,
  type RefLora, type TinyEncoderDims, type Weights,
} from './helpers/bert-reference';
import { runOps, type Op } from '../src/engine/gpu/dispatch';
import { geluBackward, geluForward } from '../src/engine/kernels/gelu';
import { activationBackward, activationForward } from '../src/engine/kernels/relu-tanh';
import { columnSum } from '../src/engine/kernels/column-sum';
import { EncoderClassifier, peftSavesModule, SEQ_CLS_MODULES_TO_SAVE } from '../src/engine/models/encoder';
import { distilBertSpec } from '../src/engine/models/distilbert';
import { bertSpec } from '../src/engine/models/bert';
import { parseHfConfig, type BertConfig, type DistilBertConfig } from '../src/io/hf-config';
import { encoderConfigJson } from './helpers/bert-reference';
import { Lora } from '../src/engine/peft/lora';
import { StepUniforms } from '../src/engine/kernels/step-uniforms';
import { SequenceClassificationAdapter, importSeqClsAdapter } from '../src/engine/models/sequence-classification';
import { exportPeftAdapter } from '../src/engine/export/peft-export';
import { parseSafetensors } from '../src/io/safetensors';

describe('encoder kernels', () => {
  it('erf reference is accurate', () => {
    // values from the literature (Abramowitz & Stegun table 7.1)
    expect(Math.abs(erf(0.5) - 0.5204998778130465)).toBeLessThan(1e-15);
    expect(Math.abs(erf(1) - 0.8427007929497149)).toBeLessThan(1e-15);
    expect(Math.abs(erf(2) - 0.9953222650189527)).toBeLessThan(1e-15);
    expect(Math.abs(erf(3) - 0.9999779095030014)).toBeLessThan(1e-15);
    expect(Math.abs((1 - erf(5)) / 1.5374597944280349e-12 - 1)).toBeLessThan(1e-3); // 1 - erf(5) keeps ~4 digits in f64
    expect(Math.abs(erf(-5) + 0.9999999999984626)).toBeLessThan(1e-15);
    expect(erf(-1.3)).toBeCloseTo(-erf(1.3), 15);
  });

  it('GELU (erf) forward and backward, in place and not, match float64 in both tails', async () => {
    const gpu = await testGpu();
    const n = 5000;
    const x = randArray(n, 1, 9);
    x.set([0, -0, 1e-8, -1e-8, 30, -30, 12, -12, 5.5, -5.5]);
    const dout = randArray(n, 2);
    const tx = gpu.tensorFrom(x, [n], 'x'), tOut = gpu.tensor([n], 'out'), tIn = gpu.tensorFrom(x, [n], 'xin');
    const td = gpu.tensorFrom(dout, [n], 'dout'), tdx = gpu.tensor([n], 'dx'), tdIn = gpu.tensorFrom(dout, [n], 'din');
    runOps(gpu, [
      geluForward(gpu, { x: tx, out: tOut, n, form: 'erf' }), geluForward(gpu, { x: tIn, out: tIn, n, form: 'erf' }),
      geluBackward(gpu, { dout: td, x: tx, dx: tdx, n, form: 'erf' }), geluBackward(gpu, { dout: tdIn, x: tx, dx: tdIn, n, form: 'erf' }),
    ]);
    const want = f64(x).map(geluErf);
    const wantD = f64(x).map((v, i) => dout[i] * geluErfGrad(v));
    // relative to each value down to 1e-6 of the largest: keeps the negative tail (values ~1e-30) honest
    expectClose(await gpu.read(tOut), want, 5e-6, 'gelu', 1e-7);
    expectClose(await gpu.read(tIn), want, 5e-6, 'gelu in place', 1e-7);
    // Phi(x) + x phi(x) cancels for x < 0: the derivative is accurate to ~1e-8 absolute
    expectClose(await gpu.read(tdx), wantD, 5e-6, 'gelu backward', 1e-2);
    expectClose(await gpu.read(tdIn), wantD, 5e-6, 'gelu backward in place', 1e-2);
    expect(() => geluBackward(gpu, { dout: td, x: tx, dx: tx, n, form: 'erf' })).toThrow(/must not be the forward input/);
  });

  it('ReLU and tanh forward and backward (from the output), in place and not', async () => {
    const gpu = await testGpu();
    const n = 3000;
    const x = randArray(n, 3, 4);
    x.set([0, 1e-6, -1e-6, 0.2499, 0.2501, -0.26, 50, -50, 9, -9, 1e-30]);
    const dout = randArray(n, 4);
    for (const kind of ['relu', 'tanh'] as const) {
      const f = kind === 'relu' ? (v: number) => Math.max(v, 0) : Math.tanh;
      const tx = gpu.tensorFrom(x, [n], 'x'), y = gpu.tensor([n], 'y'), yIn = gpu.tensorFrom(x, [n], 'yin');
      const td = gpu.tensorFrom(dout, [n], 'd'), dx = gpu.tensor([n], 'dx'), dIn = gpu.tensorFrom(dout, [n], 'din');
      runOps(gpu, [
        activationForward(gpu, kind, { x: tx, out: y, n }), activationForward(gpu, kind, { x: yIn, out: yIn, n }),
        activationBackward(gpu, kind, { dout: td, y, dx, n }), activationBackward(gpu, kind, { dout: dIn, y, dx: dIn, n }),
      ]);
      const want = f64(x).map(f);
      const wantD = f64(x).map((v, i) => dout[i] * (kind === 'relu' ? (v > 0 ? 1 : 0) : 1 - Math.tanh(v) ** 2));
      expectClose(await gpu.read(y), want, 1e-6, `${kind}`, 1e-9);
      expectClose(await gpu.read(yIn), want, 1e-6, `${kind} in place`, 1e-9);
      // 1 - y^2 from an f32 y: absolute error ~1e-7 (tanh(9) rounds to 1, as in torch's f32)
      expectClose(await gpu.read(dx), wantD, 1e-3, `${kind} backward`, 1e-4);
      expectClose(await gpu.read(dIn), wantD, 1e-3, `${kind} backward in place`, 1e-4);
    }
  });

  it('column sums (bias gradients), overwriting and accumulating', async () => {
    const gpu = await testGpu();
    const rows = 37, N = 300;
    const x = randArray(rows * N, 5);
    const start = randArray(N, 6);
    const tx = gpu.tensorFrom(x, [rows, N], 'x'), o1 = gpu.tensorFrom(start, [N], 'o1'), o2 = gpu.tensorFrom(start, [N], 'o2');
    runOps(gpu, [columnSum(gpu, { x: tx, out: o1, rows, N, accumulate: false }), columnSum(gpu, { x: tx, out: o2, rows, N, accumulate: true })]);
    const sums = new Float64Array(N);
    for (let r = 0; r < rows; r++) for (let c = 0; c < N; c++) sums[c] += x[r * N + c];
    expectClose(await gpu.read(o1), sums, 1e-5, 'sum');
    expectClose(await gpu.read(o2), sums.map((v, i) => v + start[i]), 1e-5, 'sum + out');
  });
});

const K = 3;
const BATCH = { B: 3, T: 7, lengths: [7, 4, 5], labels: [2, 0, 1] };

function config(d: TinyEncoderDims): DistilBertConfig | BertConfig {
  return parseHfConfig(encoderConfigJson(d)) as DistilBertConfig | BertConfig;
}

function specOf(d: TinyEncoderDims) {
  const c = config(d);
  return c.family === 'distilbert' ? distilBertSpec(c, 'tiny') : bertSpec(c as BertConfig, 'tiny');
}

interface Setup {
  model: EncoderClassifier;
  w: Weights;
  lora: Lora | null;
  ref: RefLora | null;
  ids: Uint32Array;
}

async function setup(d: TinyEncoderDims, targets: string[] | null, seed: number): Promise<Setup> {
  const gpu = await testGpu();
  const w = randomEncoderWeights(d, K, seed);
  const model = EncoderClassifier.load(gpu, specOf(d), encoderWeightSource(w, encoderShapes(d, K)), 'tiny', { numLabels: K, random: rng(9), maxChunkBytes: 256 });
  let lora: Lora | null = null;
  let ref: RefLora | null = null;
  if (targets) {
    const r = 2;
    lora = new Lora(gpu, { r, alpha: 6, dropout: 0, targetModules: targets, useRslora: false }, model.linearModules(), new StepUniforms(gpu), rng(seed + 1));
    ref = { modules: new Map(), r, scale: 3 };
    const r2 = rng(seed + 2);
    for (let i = 0; i < lora.params.length; i += 2) {
      const A = lora.params[i], B = lora.params[i + 1];
      const a = Float32Array.from({ length: A.value.size }, () => (r2() * 2 - 1) * 0.4);
      const b = Float32Array.from({ length: B.value.size }, () => (r2() * 2 - 1) * 0.4);
      gpu.write(A.value, a);
      gpu.write(B.value, b);
      ref.modules.set(A.name.replace('base_model.model.', '').replace('.lora_A.weight', ''), { A: f64(a), B: f64(b) });
    }
  }
  const r3 = rng(seed + 3);
  const ids = Uint32Array.from({ length: BATCH.B * BATCH.T }, () => Math.floor(r3() * d.V));
  return { model, w, lora, ref, ids };
}

/** Finite-difference gradient of the reference loss w.r.t. some elements of a tensor. */
function fdGrad(loss: () => number, arr: Float64Array, idx: number[], h = 1e-5): number[] {
  return idx.map((i) => {
    const v = arr[i];
    arr[i] = v + h;
    const up = loss();
    arr[i] = v - h;
    const down = loss();
    arr[i] = v;
    return (up - down) / (2 * h);
  });
}

const DISTIL: TinyEncoderDims = { arch: 'distilbert', C: 16, L: 2, H: 2, F: 24, V: 50, P: 12, eps: 1e-12, activation: 'gelu' };
const BERT: TinyEncoderDims = { arch: 'bert', C: 16, L: 2, H: 4, F: 20, V: 45, P: 10, eps: 1e-12, activation: 'gelu' };

for (const [d, targets] of [[DISTIL, ['q_lin', 'v_lin', 'ffn.lin2']], [BERT, ['query', 'value', 'attention.output.dense', 'intermediate.dense']]] as const) {
  describe(`${d.arch} classifier`, () => {
    it('LoRA + head: logits, loss and every gradient match float64 (finite differences)', async () => {
      const gpu = await testGpu();
      const s = await setup(d, [...targets], 11);
      const adapter = new SequenceClassificationAdapter(s.lora, s.model.headParams);
      const names = encoderNames(d);
      const expectHead = d.arch === 'distilbert' ? ['pre_classifier', 'classifier'] : ['classifier'];
      expect(s.model.headParams.map((p) => p.name)).toEqual(expectHead.flatMap((m) => [`base_model.model.${m}.weight`, `base_model.model.${m}.bias`]));
      const program = s.model.buildProgram(adapter, { B: BATCH.B, T: BATCH.T, training: true });
      const labels = Int32Array.from(BATCH.labels);
      program.write({ B: BATCH.B, T: BATCH.T, inputIds: s.ids, lengths: Uint32Array.from(BATCH.lengths), labels, validLabels: 3 });
      gpu.write(program.gradScale, new Float32Array([1 / 3]));
      const zero: Op[] = [...adapter.params.map((p) => ({ kind: 'clear' as const, buffer: p.grad.buffer })), { kind: 'clear', buffer: program.lossSum.buffer }];
      runOps(gpu, [...zero, ...program.forward, ...program.backward]);
      const batch = { B: BATCH.B, T: BATCH.T, ids: s.ids, lengths: BATCH.lengths, labels: BATCH.labels };
      const ref = encoderReference(s.w, d, K, s.ref, batch);
      expectClose(await gpu.read(program.logits), ref.logits, 1e-4, 'logits', 1);
      const loss = (await gpu.read(program.lossSum))[0] / 3;
      expect(Math.abs(loss - ref.loss) / ref.loss).toBeLessThan(1e-5);

      const lossOf = () => encoderReference(s.w, d, K, s.ref, batch).loss;
      const r = rng(5);
      for (const p of adapter.params) {
        const got = await gpu.read(p.grad);
        const idx = Array.from({ length: Math.min(12, p.value.size) }, () => Math.floor(r() * p.value.size));
        let arr: Float64Array;
        const mod = p.name.replace('base_model.model.', '');
        if (p.name.includes('.lora_')) {
          const m = s.ref!.modules.get(mod.replace(/\.lora_[AB]\.weight$/, ''))!;
          arr = p.name.includes('lora_A') ? m.A : m.B;
        } else {
          arr = s.w.get(mod)!;
        }
        const want = fdGrad(lossOf, arr, idx);
        const scaleMax = Math.max(...Array.from(got, Math.abs), 1e-12);
        idx.forEach((i, j) => {
          expect(Math.abs(got[i] - want[j]), `${p.name}[${i}]: got ${got[i]}, want ${want[j]}`).toBeLessThan(2e-3 * scaleMax + 1e-6);
        });
      }
      // the forward-only program gives the same logits
      const ev = s.model.buildProgram(adapter, { B: BATCH.B, T: BATCH.T, training: false });
      ev.write({ B: BATCH.B, T: BATCH.T, inputIds: s.ids, lengths: Uint32Array.from(BATCH.lengths), labels, validLabels: 3 });
      runOps(gpu, ev.forward);
      expectClose(await gpu.read(ev.logits), ref.logits, 1e-4, 'eval logits', 1);
      expect(names.classifier).toBe('classifier');

      // export (PEFT SEQ_CLS names) and import back onto a fresh model: same logits
      const files = await exportPeftAdapter(gpu, adapter, 'tiny');
      const cfg = JSON.parse(files['adapter_config.json']);
      expect(cfg).toMatchObject({ peft_type: 'LORA', task_type: 'SEQ_CLS', modules_to_save: ['classifier', 'score'], fan_in_fan_out: false });
      const st = parseSafetensors(files['adapter_model.safetensors']);
      expect([...st.tensors.keys()].sort()).toEqual(adapter.params.map((p) => p.name).sort());
      const fresh = EncoderClassifier.load(gpu, specOf(d), encoderWeightSource(randomEncoderWeights(d, null, 11), encoderShapes(d, null)), 'tiny', { numLabels: K, random: rng(77) });
      const imported = importSeqClsAdapter(gpu, { name: 'x', config: files['adapter_config.json'], weights: files['adapter_model.safetensors'] }, fresh, new StepUniforms(gpu));
      const p2 = fresh.buildProgram(imported, { B: BATCH.B, T: BATCH.T, training: false });
      p2.write({ B: BATCH.B, T: BATCH.T, inputIds: s.ids, lengths: Uint32Array.from(BATCH.lengths), labels, validLabels: 3 });
      runOps(gpu, p2.forward);
      expectClose(await gpu.read(p2.logits), await gpu.read(ev.logits), 1e-6, 'imported logits', 1);
      for (const x of [program, ev, p2]) x.destroy();
    });

    it('head only (frozen encoder): head gradients match float64', async () => {
      const gpu = await testGpu();
      const s = await setup(d, null, 21);
      const adapter = new SequenceClassificationAdapter(null, s.model.headParams);
      const program = s.model.buildProgram(adapter, { B: BATCH.B, T: BATCH.T, training: true });
      // one row unlabelled: it must add nothing
      const labels = Int32Array.from([BATCH.labels[0], -100, BATCH.labels[2]]);
      program.write({ B: BATCH.B, T: BATCH.T, inputIds: s.ids, lengths: Uint32Array.from(BATCH.lengths), labels, validLabels: 2 });
      gpu.write(program.gradScale, new Float32Array([1 / 2]));
      runOps(gpu, [...adapter.params.map((p) => ({ kind: 'clear' as const, buffer: p.grad.buffer })), { kind: 'clear', buffer: program.lossSum.buffer }, ...program.forward, ...program.backward]);
      const batch = { B: BATCH.B, T: BATCH.T, ids: s.ids, lengths: BATCH.lengths, labels };
      const lossOf = () => encoderReference(s.w, d, K, null, batch).loss;
      const r = rng(8);
      for (const p of adapter.params) {
        const got = await gpu.read(p.grad);
        const arr = s.w.get(p.name.replace('base_model.model.', ''))!;
        const idx = Array.from({ length: Math.min(10, p.value.size) }, () => Math.floor(r() * p.value.size));
        const want = fdGrad(lossOf, arr, idx);
        const scaleMax = Math.max(...Array.from(got, Math.abs), 1e-12);
        idx.forEach((i, j) => expect(Math.abs(got[i] - want[j]), `${p.name}[${i}]`).toBeLessThan(2e-3 * scaleMax + 1e-6));
      }
      program.destroy();
    });
  });
}

describe('PEFT modules_to_save matching', () => {
  it('is a plain suffix match, so pre_classifier is saved too', () => {
    expect(peftSavesModule('classifier', SEQ_CLS_MODULES_TO_SAVE)).toBe(true);
    expect(peftSavesModule('pre_classifier', SEQ_CLS_MODULES_TO_SAVE)).toBe(true);
    expect(peftSavesModule('bert.pooler.dense', SEQ_CLS_MODULES_TO_SAVE)).toBe(false);
  });
});
