// DistilBERT and BERT sequence classification (LoRA + head, and head only) against PyTorch + PEFT
// (task_type SEQ_CLS; values recorded by scripts/goldens/make_bert_goldens.py on the GPU machine,
// in float64): logits and loss within 1e-4, gradients of LoRA and head within 1e-3, 5 AdamW steps
// (clipping included) with the weights after them within 1e-3, the same tolerances as
// helpers/lora-goldens.ts; the export under PEFT's names and config; PEFT's own saved adapter loaded
// by our engine gives PEFT's logits; tokenization as the Python tokenizers library.
import fs from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { expectClose, rng, testGpu } from './helpers/gpu';
import { checkSeqClsGoldenRun, seqClsBatchOf } from './helpers/seqcls-goldens';
import { runOps } from '../src/engine/gpu/dispatch';
import { nodeModelFiles } from '../src/io/model-files-node';
import { loadHfModel, type HfModel } from '../src/io/model-files';
import { parseSafetensors, type SafetensorsFile } from '../src/io/safetensors';
import { loadTokenizer } from '../src/data/tokenizer';
import { loadSequenceClassifier } from '../src/engine/models/registry';
import { Lora } from '../src/engine/peft/lora';
import { StepUniforms } from '../src/engine/kernels/step-uniforms';
import { exportPeftAdapter } from '../src/engine/export/peft-export';
import { SequenceClassificationAdapter, importSeqClsAdapter } from '../src/engine/models/sequence-classification';
import type { Gpu } from '../src/engine/gpu/gpu';

const FIX = path.join(__dirname, 'fixtures');
const GOLD = path.join(FIX, 'bert-goldens');

interface SeqClsCase {
  name: string;
  model: string;
  num_labels: number;
  lora?: { r: number; lora_alpha: number; target_modules: string[]; use_rslora: boolean };
  optimizer: { lr: number; betas: [number, number]; eps: number; weight_decay: number; max_grad_norm: number; steps: number };
  batch: { input_ids: number[][]; attention_mask: number[][] };
  labels: number[];
  loss: number;
  step_losses: number[];
  step_grad_norms: number[];
  param_names: string[];
  peft_state_dict_keys?: string[];
  adapter_config?: Record<string, unknown>;
}

const golden = JSON.parse(fs.readFileSync(path.join(GOLD, 'bert-seqcls.json'), 'utf8')) as {
  cases: SeqClsCase[];
  tokenizer_checks: Record<string, { text: string; ids: number[] }[]>;
};
const tensors = parseSafetensors(new Uint8Array(fs.readFileSync(path.join(GOLD, 'bert-seqcls.safetensors'))), 'bert-seqcls.safetensors');

const batchOf = seqClsBatchOf;

async function runCase(gpu: Gpu, hf: HfModel, gc: SeqClsCase, t: SafetensorsFile): Promise<void> {
  // small embedding blocks: also covers the split word-embedding table
  const { model } = loadSequenceClassifier(gpu, hf, { numLabels: gc.num_labels, random: rng(3), maxChunkBytes: 16 * 1024 });
  const step = new StepUniforms(gpu);
  const lora = gc.lora
    ? new Lora(gpu, { r: gc.lora.r, alpha: gc.lora.lora_alpha, dropout: 0, targetModules: gc.lora.target_modules, useRslora: gc.lora.use_rslora }, model.linearModules(), step, rng(1))
    : null;
  const adapter = new SequenceClassificationAdapter(lora, model.headParams);
  expect(adapter.params.map((p) => p.name).sort()).toEqual([...gc.param_names].sort());
  if (gc.peft_state_dict_keys) expect(adapter.params.map((p) => p.name).sort()).toEqual(gc.peft_state_dict_keys);
  await checkSeqClsGoldenRun(gpu, model, adapter, step, gc, t);

  if (lora) {
    // the export: PEFT's names, and the config fields PEFT itself wrote for this case
    const files = await exportPeftAdapter(gpu, adapter, hf.name);
    const exported = parseSafetensors(files['adapter_model.safetensors']);
    expect([...exported.tensors.keys()].sort()).toEqual(gc.peft_state_dict_keys);
    for (const p of adapter.params) expectClose(exported.getF32(p.name), t.getF32(`${gc.name}/step5/${p.name}`), 1e-3, `exported ${p.name}`, 1e-2);
    const cfg = JSON.parse(files['adapter_config.json']);
    const peftCfg = gc.adapter_config!;
    for (const k of ['peft_type', 'task_type', 'r', 'lora_alpha', 'modules_to_save', 'fan_in_fan_out', 'bias', 'use_rslora', 'use_dora']) {
      expect(cfg[k], k).toEqual(peftCfg[k]);
    }
    // PEFT writes target_modules from a set (its order follows PYTHONHASHSEED)
    expect([...cfg.target_modules].sort()).toEqual([...(peftCfg.target_modules as string[])].sort());
  }
  model.destroy();
}

describe('DistilBERT / BERT sequence classification matches PyTorch + PEFT', async () => {
  const models = new Map<string, HfModel>();
  for (const m of ['tiny-distilbert', 'tiny-bert']) models.set(m, await loadHfModel(nodeModelFiles(path.join(FIX, m))));

  for (const m of models.keys()) {
    it(`${m}: tokenizes like the Python tokenizers library ([CLS] ... [SEP], lower case, accents stripped, ## pieces)`, () => {
      const hf = models.get(m)!;
      const tok = loadTokenizer(hf.tokenizerJson!, hf.tokenizerConfig);
      expect(golden.tokenizer_checks[m].length).toBeGreaterThan(3);
      for (const c of golden.tokenizer_checks[m]) expect(tok.encode(c.text, { addSpecialTokens: true }), JSON.stringify(c.text)).toEqual(c.ids);
      // the golden batch rows are the tokenizer's ids of the review texts
      const gc = golden.cases.find((c) => c.model === m)!;
      const texts = (gc.batch as unknown as { texts: string[] }).texts;
      texts.forEach((text, b) => {
        const n = gc.batch.attention_mask[b].reduce((s, x) => s + x, 0);
        expect(tok.encode(text, { addSpecialTokens: true })).toEqual(gc.batch.input_ids[b].slice(0, n));
      });
    });
  }

  for (const gc of golden.cases) {
    it(`case ${gc.name}: logits, loss, ${gc.lora ? 'LoRA and head' : 'head'} gradients, 5 AdamW steps${gc.lora ? ', export' : ''}`, async () => {
      await runCase(await testGpu(), models.get(gc.model)!, gc, tensors);
    });
  }

  for (const gc of golden.cases.filter((c) => c.lora)) {
    it(`case ${gc.name}: the adapter PEFT saved loads into our engine and gives PEFT's logits`, async () => {
      const gpu = await testGpu();
      const { model } = loadSequenceClassifier(gpu, models.get(gc.model)!, { numLabels: gc.num_labels, random: rng(4) });
      const dir = path.join(GOLD, `peft-${gc.name}`);
      const adapter = importSeqClsAdapter(gpu, {
        name: `peft-${gc.name}`,
        config: fs.readFileSync(path.join(dir, 'adapter_config.json'), 'utf8'),
        weights: new Uint8Array(fs.readFileSync(path.join(dir, 'adapter_model.safetensors'))),
      }, model, new StepUniforms(gpu));
      const batch = batchOf(gc);
      const program = model.buildProgram(adapter, { B: batch.B, T: batch.T, training: false });
      program.write(batch);
      runOps(gpu, program.forward);
      expectClose(await gpu.read(program.logits), tensors.getF32(`${gc.name}/logits`), 1e-4, 'logits', 1);
      program.destroy();
      model.destroy();
    });
  }
});
