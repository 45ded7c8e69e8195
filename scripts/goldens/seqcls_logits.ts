// node scripts/node-run.mjs scripts/goldens/seqcls_logits.ts --model DIR --adapter DIR --inputs FILE.json --out FILE.safetensors
// The engine's classification logits [B, K] for given token ids ({"input_ids": [[...]],
// "attention_mask": [[...]]}, right-padded) with a SEQ_CLS adapter (LoRA + head, as the CLI exports
// it or PEFT saves it): what scripts/goldens/check_peft_seqcls.py compares with PyTorch + PEFT.
import fs from 'node:fs';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { createNodeGpu } from '../../src/engine/gpu/node-gpu';
import { nodeModelFiles } from '../../src/io/model-files-node';
import { loadHfModel } from '../../src/io/model-files';
import { parseSafetensors, writeSafetensors } from '../../src/io/safetensors';
import { loadSequenceClassifier } from '../../src/engine/models/registry';
import { importSeqClsAdapter } from '../../src/engine/models/sequence-classification';
import { StepUniforms } from '../../src/engine/kernels/step-uniforms';
import { runOps } from '../../src/engine/gpu/dispatch';

async function main(argv: string[]): Promise<void> {
  const { values: a } = parseArgs({ args: argv, strict: true, options: { model: { type: 'string' }, adapter: { type: 'string' }, inputs: { type: 'string' }, out: { type: 'string' } } });
  for (const k of ['model', 'adapter', 'inputs', 'out'] as const) if (!a[k]) throw new Error(`--${k} is required`);
  const inputs = JSON.parse(fs.readFileSync(a.inputs!, 'utf8')) as { input_ids: number[][]; attention_mask?: number[][] };
  const ids = inputs.input_ids;
  const B = ids.length, T = ids[0].length;
  const mask = inputs.attention_mask ?? ids.map((r) => r.map(() => 1));
  const lengths = Uint32Array.from(mask, (row, b) => {
    const n = row.reduce((s, x) => s + x, 0);
    if (row.some((x, t) => x !== (t < n ? 1 : 0))) throw new Error(`row ${b} is not right-padded`);
    return n;
  });
  const config = fs.readFileSync(path.join(a.adapter!, 'adapter_config.json'), 'utf8');
  const weights = new Uint8Array(fs.readFileSync(path.join(a.adapter!, 'adapter_model.safetensors')));
  const st = parseSafetensors(weights);
  const cls = [...st.tensors.keys()].find((n) => /(^|\.)classifier\.weight$/.test(n) && !n.endsWith('pre_classifier.weight'));
  if (!cls) throw new Error('the adapter has no classifier weight');
  const K = st.tensors.get(cls)!.shape[0];
  const gpu = await createNodeGpu();
  const hf = await loadHfModel(nodeModelFiles(a.model!));
  const { model } = loadSequenceClassifier(gpu, hf, { numLabels: K, random: () => 0.5 });
  const adapter = importSeqClsAdapter(gpu, { name: path.basename(a.adapter!), config, weights }, model, new StepUniforms(gpu));
  const program = model.buildProgram(adapter, { B, T, training: false });
  program.write({ B, T, inputIds: Uint32Array.from(ids.flat()), lengths, labels: new Int32Array(B).fill(-100), validLabels: 0 });
  runOps(gpu, program.forward);
  const logits = await gpu.read(program.logits);
  fs.writeFileSync(a.out!, writeSafetensors([{ name: 'logits', dtype: 'F32', shape: [B, K], data: logits }]));
  console.log(`wrote ${a.out}: logits [${B}, ${K}] with adapter ${a.adapter} (${gpu.info.description || gpu.info.vendor})`);
}

main(process.argv.slice(2)).then(() => process.exit(0), (e: unknown) => {
  console.error(`error: ${(e as Error)?.message ?? String(e)}`);
  process.exit(1);
});
