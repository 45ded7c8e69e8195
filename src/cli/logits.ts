// npm run logits -- --model DIR [--adapter DIR] --inputs FILE.json --out FILE.safetensors
// Runs the WGSL forward pass on given token ids ({"input_ids": [[...]], "attention_mask": [[...]]},
// right-padded) and writes the logits [B, T, V] as tensor "logits": what
// scripts/goldens/check_peft_adapter.py compares with PyTorch + PEFT.

import fs from 'node:fs';
import { parseArgs } from 'node:util';
import { createNodeGpu } from '../engine/gpu/node-gpu';
import { nodeModelFiles } from '../io/model-files-node';
import { loadHfModel } from '../io/model-files';
import { writeSafetensors } from '../io/safetensors';
import { loadCausalLM } from '../engine/models/registry';
import { StepUniforms } from '../engine/kernels/step-uniforms';
import { importPeftAdapter } from '../engine/peft/import';
import { peftModelInfo } from '../engine/peft/factory';
import { runOps } from '../engine/gpu/dispatch';
import { CliError, readAdapterDir } from './args';

async function main(argv: string[]): Promise<void> {
  const { values: a } = parseArgs({
    args: argv, strict: true,
    options: { model: { type: 'string' }, adapter: { type: 'string' }, inputs: { type: 'string' }, out: { type: 'string' }, debug: { type: 'boolean' } },
  });
  for (const k of ['model', 'inputs', 'out'] as const) if (!a[k]) throw new CliError(`--${k} is required (npm run logits -- --model DIR [--adapter DIR] --inputs FILE.json --out FILE.safetensors)`);
  const inputs = JSON.parse(fs.readFileSync(a.inputs!, 'utf8')) as { input_ids: number[][]; attention_mask?: number[][] };
  const ids = inputs.input_ids;
  if (!Array.isArray(ids) || ids.length === 0 || !ids.every((r) => Array.isArray(r) && r.length === ids[0].length)) {
    throw new CliError(`${a.inputs}: input_ids must be a non-empty list of equal-length lists`);
  }
  const B = ids.length, T = ids[0].length;
  const mask = inputs.attention_mask ?? ids.map((r) => r.map(() => 1));
  const lengths = Uint32Array.from(mask, (row, b) => {
    const n = row.reduce((s, x) => s + x, 0);
    if (row.some((x, t) => x !== (t < n ? 1 : 0))) throw new CliError(`${a.inputs}: row ${b} is not right-padded (attention_mask must be 1s then 0s)`);
    return n;
  });

  const gpu = await createNodeGpu();
  const hf = await loadHfModel(nodeModelFiles(a.model!));
  const { model } = loadCausalLM(gpu, hf);
  // any PEFT adapter type this engine trains (LoRA, IA3, prompt and prefix tuning)
  const adapter = a.adapter ? importPeftAdapter(gpu, readAdapterDir(a.adapter), peftModelInfo(hf.config, model.linearModules()), new StepUniforms(gpu)) : null;
  const program = model.buildProgram(adapter, { B, T, training: false, captureLogits: true });
  program.write({ B, T, inputIds: Uint32Array.from(ids.flat()), targets: new Int32Array(B * T).fill(-100), lengths, validTargets: 0 });
  runOps(gpu, program.forward);
  const logits = await gpu.read(program.logits!);
  fs.writeFileSync(a.out!, writeSafetensors([{ name: 'logits', dtype: 'F32', shape: [B, T, model.V], data: logits }]));
  console.log(`wrote ${a.out}: logits [${B}, ${T}, ${model.V}]${adapter ? ` with ${adapter.kind} adapter ${a.adapter}` : ''}`);
}

const argv = process.argv.slice(2);
main(argv).then(
  () => process.exit(0),
  (e: unknown) => {
    if (argv.includes('--debug')) console.error(e);
    else console.error(`error: ${(e as Error)?.message ?? String(e)}`);
    process.exit(1);
  },
);
