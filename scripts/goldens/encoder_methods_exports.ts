// node scripts/node-run.mjs scripts/goldens/encoder_methods_exports.ts --out .carry/encoder-methods
// The engine's exports of IA3, DoRA, prompt tuning, prefix tuning (BERT) and bottleneck adapters on the tiny DistilBERT and BERT
// classifiers (test/fixtures/tiny-*), with seeded non-trivial values in every trained tensor (the
// method's and the head's), and the engine's logits with each for the goldens' checker batch:
// what make_encoder_methods_goldens.py --ours checks that PEFT (or, for bottleneck adapters, the
// AdapterHub reference) loads with the same logits. Writes OUT/<case>/ (the adapter folder +
// our-logits.safetensors) and OUT/manifest.json.
import fs from 'node:fs';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { createNodeGpu } from '../../src/engine/gpu/node-gpu';
import { nodeModelFiles } from '../../src/io/model-files-node';
import { loadHfModel } from '../../src/io/model-files';
import { writeSafetensors } from '../../src/io/safetensors';
import { loadSequenceClassifier } from '../../src/engine/models/registry';
import { createSeqClsAdapter, exportSeqClsAdapter, importSeqClsAdapter } from '../../src/engine/models/sequence-classification';
import { ENCODER_IA3_DEFAULTS } from '../../src/engine/models/encoder-methods';
import { StepUniforms } from '../../src/engine/kernels/step-uniforms';
import { runOps } from '../../src/engine/gpu/dispatch';
import type { MethodSpec } from '../../src/engine/peft/factory';

const FIX = 'test/fixtures';

/** xorshift32 in [0, 1): the values are the same on every machine. */
function seeded(seed: number): () => number {
  let s = seed >>> 0 || 1;
  return () => {
    s ^= s << 13; s >>>= 0;
    s ^= s >>> 17;
    s ^= s << 5; s >>>= 0;
    return s / 4294967296;
  };
}

const CASES: { name: string; model: 'tiny-distilbert' | 'tiny-bert'; labels: number; spec: MethodSpec }[] = [
  { name: 'distilbert-ia3', model: 'tiny-distilbert', labels: 3, spec: { method: 'ia3', ia3: { ...ENCODER_IA3_DEFAULTS.distilbert } } },
  { name: 'bert-ia3', model: 'tiny-bert', labels: 2, spec: { method: 'ia3', ia3: { ...ENCODER_IA3_DEFAULTS.bert } } },
  { name: 'distilbert-dora', model: 'tiny-distilbert', labels: 3, spec: { method: 'dora', lora: { r: 4, alpha: 8, dropout: 0.1, useRslora: false, targetModules: ['q_lin', 'v_lin', 'ffn.lin2'] } } },
  { name: 'bert-dora-rslora', model: 'tiny-bert', labels: 2, spec: { method: 'dora', lora: { r: 4, alpha: 8, dropout: 0, useRslora: true, targetModules: ['query', 'value', 'attention.output.dense'] } } },
  { name: 'distilbert-prompt', model: 'tiny-distilbert', labels: 3, spec: { method: 'prompt', prompt: { numVirtualTokens: 3, init: 'random' } } },
  { name: 'bert-prompt', model: 'tiny-bert', labels: 2, spec: { method: 'prompt', prompt: { numVirtualTokens: 4, init: 'random' } } },
  { name: 'distilbert-houlsby', model: 'tiny-distilbert', labels: 3, spec: { method: 'bottleneck', bottleneck: { type: 'houlsby', reductionFactor: 4, nonLinearity: 'swish', name: 'sst' } } },
  { name: 'bert-pfeiffer', model: 'tiny-bert', labels: 2, spec: { method: 'bottleneck', bottleneck: { type: 'pfeiffer', reductionFactor: 4, nonLinearity: 'relu', name: 'sst' } } },
  { name: 'bert-prefix', model: 'tiny-bert', labels: 2, spec: { method: 'prefix', prefix: { numVirtualTokens: 3, projection: false } } },
  // saved as PEFT saves it: the prefix the projection MLP makes, prefix_projection true
  { name: 'bert-prefix-proj', model: 'tiny-bert', labels: 2, spec: { method: 'prefix', prefix: { numVirtualTokens: 2, projection: true, encoderHiddenSize: 24 } } },
];

async function main(argv: string[]): Promise<void> {
  const { values: a } = parseArgs({ args: argv, strict: true, options: { out: { type: 'string' } } });
  if (!a.out) throw new Error('--out is required');
  fs.rmSync(a.out, { recursive: true, force: true });
  fs.mkdirSync(a.out, { recursive: true });
  const gpu = await createNodeGpu();
  const manifest: Record<string, unknown>[] = [];
  for (const [ci, c] of CASES.entries()) {
    const hf = await loadHfModel(nodeModelFiles(path.join(FIX, c.model)));
    const { model } = loadSequenceClassifier(gpu, hf, { numLabels: c.labels, random: seeded(100 + ci) });
    const step = new StepUniforms(gpu);
    const adapter = createSeqClsAdapter(gpu, c.spec, model, step, seeded(200 + ci));
    // trained-looking values everywhere (IA3 around 1, DoRA's magnitude positive)
    const r = seeded(300 + ci);
    for (const p of adapter.params) {
      const n = p.value.size;
      const big = c.spec.method === 'prefix' && /^(prompt_embeddings|prompt_encoder\.embedding\.weight)$/.test(p.name); // prefix rows about as large as the keys
    const v = p.name.endsWith('.ia3_l') || p.name.endsWith('.lora_magnitude_vector')
        ? Float32Array.from({ length: n }, () => 0.6 + 0.8 * r())
        : Float32Array.from({ length: n }, () => (r() * 2 - 1) * (big ? 1 : 0.3));
      gpu.write(p.value, v);
    }
    const dir = path.join(a.out, c.name);
    fs.mkdirSync(dir, { recursive: true });
    const files = await exportSeqClsAdapter(gpu, adapter, c.model, model);
    for (const [name, data] of files) fs.writeFileSync(path.join(dir, name), data);
    // the logits through a fresh import of the written files (what a user's reload gives)
    const inputs = JSON.parse(fs.readFileSync(path.join(FIX, 'bert-goldens', `bert-checker-inputs-${c.model}.json`), 'utf8')) as { input_ids: number[][]; attention_mask: number[][] };
    const B = inputs.input_ids.length, T = inputs.input_ids[0].length;
    const weightsName = files.has('adapter.safetensors') ? 'adapter.safetensors' : 'adapter_model.safetensors';
    const back = loadSequenceClassifier(gpu, hf, { numLabels: c.labels, random: seeded(900) }).model;
    const imported = importSeqClsAdapter(gpu, {
      name: c.name, config: fs.readFileSync(path.join(dir, 'adapter_config.json'), 'utf8'),
      weights: new Uint8Array(fs.readFileSync(path.join(dir, weightsName))),
      head: files.has('model_head.safetensors') ? new Uint8Array(fs.readFileSync(path.join(dir, 'model_head.safetensors'))) : undefined,
    }, back, new StepUniforms(gpu));
    const program = back.buildProgram(imported, { B, T, training: false });
    program.write({
      B, T, inputIds: Uint32Array.from(inputs.input_ids.flat()),
      lengths: Uint32Array.from(inputs.attention_mask, (row) => row.reduce((s, x) => s + x, 0)),
      labels: new Int32Array(B).fill(-100), validLabels: 0,
    });
    runOps(gpu, program.forward);
    const logits = await gpu.read(program.logits);
    fs.writeFileSync(path.join(dir, 'our-logits.safetensors'), writeSafetensors([{ name: 'logits', dtype: 'F32', shape: [B, c.labels], data: logits }]));
    manifest.push({ name: c.name, model: c.model, num_labels: c.labels, method: c.spec.method, format: files.has('adapter.safetensors') ? 'adapterhub' : 'peft', files: [...files.keys()].sort() });
    console.log(`${c.name}: ${[...files.keys()].join(', ')}; logits [${B}, ${c.labels}]`);
    program.destroy();
    imported.destroy();
    adapter.destroy();
    model.destroy();
    back.destroy();
  }
  fs.writeFileSync(path.join(a.out, 'manifest.json'), JSON.stringify({ device: gpu.info.description || gpu.info.vendor, cases: manifest }, null, 2) + '\n');
}

main(process.argv.slice(2)).then(() => process.exit(0), (e: unknown) => {
  console.error(`error: ${(e as Error)?.stack ?? String(e)}`);
  process.exit(1);
});
