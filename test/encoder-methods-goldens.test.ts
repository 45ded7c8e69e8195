// IA3, DoRA (with rsLoRA), prompt tuning, prefix tuning (BERT, with and without the projection) and
// bottleneck adapters on the tiny DistilBERT and BERT classifiers against PyTorch + PEFT (values
// recorded by scripts/goldens/make_encoder_methods_goldens.py on the GPU machine in float64;
// bottleneck adapters against its PyTorch reference of AdapterHub's placement): logits and loss
// within 1e-4, gradients of every trained tensor (method and head) within 2e-3 (helpers/seqcls-goldens.ts says why), 5 AdamW steps
// (clipping included) with the weights after them within 1e-3; the export under PEFT's (or
// AdapterHub's) names and config; the adapters PEFT itself saved load into the engine with PEFT's
// logits. (That PEFT loads the engine's exports with the engine's logits was checked on the same
// device runs: docs/runs/2026-11-22-encoder-methods-goldens.txt, and for prefix tuning
// docs/runs/2026-11-22-encoder-prefix-goldens.txt.)
import fs from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { expectClose, rng, testGpu } from './helpers/gpu';
import { checkSeqClsGoldenRun, seqClsBatchOf } from './helpers/seqcls-goldens';
import { runOps } from '../src/engine/gpu/dispatch';
import { nodeModelFiles } from '../src/io/model-files-node';
import { loadHfModel, type HfModel } from '../src/io/model-files';
import { parseSafetensors } from '../src/io/safetensors';
import { loadSequenceClassifier } from '../src/engine/models/registry';
import { StepUniforms } from '../src/engine/kernels/step-uniforms';
import { createSeqClsAdapter, exportSeqClsAdapter, importSeqClsAdapter } from '../src/engine/models/sequence-classification';
import { ENCODER_IA3_DEFAULTS, encoderMethodRefusal } from '../src/engine/models/encoder-methods';
import type { MethodSpec } from '../src/engine/peft/factory';
import type { BottleneckActivation, BottleneckType } from '../src/engine/peft/bottleneck';

const FIX = path.join(__dirname, 'fixtures');
const GOLD = path.join(FIX, 'encoder-methods-goldens');

interface Case {
  name: string;
  model: 'tiny-distilbert' | 'tiny-bert';
  num_labels: number;
  method: 'ia3' | 'dora' | 'prompt' | 'prefix' | 'bottleneck';
  settings: {
    ia3?: { target_modules: string[]; feedforward_modules: string[] } | null;
    lora?: { r: number; lora_alpha: number; target_modules: string[]; use_rslora: boolean };
    bn?: { type: BottleneckType; reduction_factor: number; non_linearity: BottleneckActivation };
    prompt?: { num_virtual_tokens: number };
    prefix?: { num_virtual_tokens: number; prefix_projection: boolean; encoder_hidden_size?: number };
  };
  param_names: string[];
  batch: { input_ids: number[][]; attention_mask: number[][] };
  labels: number[];
  loss: number;
  optimizer: { lr: number; betas: [number, number]; eps: number; weight_decay: number; max_grad_norm: number; steps: number };
  step_losses: number[];
  step_grad_norms: number[];
  peft_config?: { target_modules: string[]; feedforward_modules?: string[]; modules_to_save: string[] };
  peft_saved_keys?: string[];
  adapter_config?: Record<string, unknown>;
}

const golden = JSON.parse(fs.readFileSync(path.join(GOLD, 'encoder-methods.json'), 'utf8')) as {
  cases: Case[];
  prompt_learning_probe: Record<string, Record<'prompt' | 'prefix', { ran: boolean; error?: string; adapter_changes_output?: boolean }>>;
  bert_prefix_positions: {
    ran: boolean; num_virtual_tokens: number; real_token_positions_start_at: number | null;
    embeddings_kwargs: { past_key_values_length?: number; position_ids?: unknown };
    bert_kwargs: { attention_mask?: { tensor: number[] }; input_ids?: { tensor: number[] }; past_key_values?: { type: string; get_seq_length?: number } };
    [k: string]: unknown;
  };
  distilbert_prefix: { ran: boolean; error?: string; forward_takes_past_key_values: Record<string, boolean> };
};
const tensors = parseSafetensors(new Uint8Array(fs.readFileSync(path.join(GOLD, 'encoder-methods.safetensors'))), 'encoder-methods.safetensors');

function specOf(gc: Case): MethodSpec {
  const s = gc.settings;
  if (gc.method === 'ia3') {
    const arch = gc.model === 'tiny-bert' ? 'bert' : 'distilbert';
    // null: PEFT chose its defaults for the model type; the engine's defaults must be those
    const ia3 = s.ia3 ?? { target_modules: ENCODER_IA3_DEFAULTS[arch].targetModules, feedforward_modules: ENCODER_IA3_DEFAULTS[arch].feedforwardModules };
    return { method: 'ia3', ia3: { targetModules: [...ia3.target_modules], feedforwardModules: [...ia3.feedforward_modules] } };
  }
  if (gc.method === 'prompt') return { method: 'prompt', prompt: { numVirtualTokens: s.prompt!.num_virtual_tokens, init: 'random' } };
  if (gc.method === 'prefix') {
    const p = s.prefix!;
    return { method: 'prefix', prefix: { numVirtualTokens: p.num_virtual_tokens, projection: p.prefix_projection, encoderHiddenSize: p.encoder_hidden_size ?? null } };
  }
  if (gc.method === 'dora') {
    const l = s.lora!;
    return { method: 'dora', lora: { r: l.r, alpha: l.lora_alpha, dropout: 0, targetModules: [...l.target_modules], useRslora: l.use_rslora } };
  }
  const b = s.bn!;
  return { method: 'bottleneck', bottleneck: { type: b.type, reductionFactor: b.reduction_factor, nonLinearity: b.non_linearity, name: 'sst' } };
}

const batchOf = seqClsBatchOf;

describe('IA3, DoRA, prompt tuning, prefix tuning and bottleneck adapters on DistilBERT / BERT classifiers match PyTorch + PEFT', async () => {
  const models = new Map<string, HfModel>();
  for (const m of ['tiny-distilbert', 'tiny-bert']) models.set(m, await loadHfModel(nodeModelFiles(path.join(FIX, m))));

  it('the golden run covers every case, and records what PEFT does with prompt and prefix tuning on these classifiers', () => {
    expect(golden.cases.map((c) => c.name).sort()).toEqual([
      'bert-dora-rslora', 'bert-houlsby', 'bert-ia3', 'bert-pfeiffer', 'bert-prefix', 'bert-prefix-proj', 'bert-prompt',
      'distilbert-dora', 'distilbert-houlsby', 'distilbert-ia3', 'distilbert-pfeiffer', 'distilbert-prompt',
    ]);
    // PEFT 0.21 cannot size prompt learning from DistilBERT's config (it asks for token_dim: the
    // distilbert-prompt case gives it); on BERT both run and change the logits. The engine trains
    // prompt tuning on both and prefix tuning on BERT (the bert-prefix cases).
    const p = golden.prompt_learning_probe;
    expect(p['tiny-distilbert'].prompt.ran).toBe(false);
    expect(p['tiny-distilbert'].prompt.error).toMatch(/token_dim/);
    expect(p['tiny-distilbert'].prefix.ran).toBe(false);
    expect(p['tiny-bert'].prompt.adapter_changes_output).toBe(true);
    expect(p['tiny-bert'].prefix.adapter_changes_output).toBe(true);
    // With every size given, PEFT still cannot run prefix tuning on DistilBERT: neither forward takes
    // past_key_values. That is why the engine refuses it there (ENCODER_ARCH_METHOD_REFUSALS).
    const d = golden.distilbert_prefix;
    expect(d.ran).toBe(false);
    expect(d.error).toMatch(/does not support past key values/);
    expect(d.forward_takes_past_key_values).toEqual({ DistilBertForSequenceClassification: false, DistilBertModel: false });
    expect(encoderMethodRefusal('distilbert', 'prefix')).toMatch(/PEFT cannot run it/);
    expect(encoderMethodRefusal('bert', 'prefix')).toBeNull();
    // BERT under prefix tuning: the prefix is a cache of n positions, so BertEmbeddings gets
    // past_key_values_length n and the real tokens take positions n..n+T-1 (as the engine does);
    // the mask BertModel gets is PEFT's ones over the prefix, then the batch's
    const b = golden.bert_prefix_positions;
    expect(b.ran).toBe(true);
    expect(b.real_token_positions_start_at).toBe(b.num_virtual_tokens);
    expect(b.embeddings_kwargs.past_key_values_length).toBe(b.num_virtual_tokens);
    expect(b.bert_kwargs.past_key_values).toMatchObject({ type: 'DynamicCache', get_seq_length: b.num_virtual_tokens });
    const [B, T] = b.bert_kwargs.input_ids!.tensor;
    expect(b.bert_kwargs.attention_mask!.tensor).toEqual([B, T + b.num_virtual_tokens]);
  });

  for (const gc of golden.cases) {
    it(`case ${gc.name}: names, logits, loss, gradients, 5 AdamW steps, export`, async () => {
      const gpu = await testGpu();
      const hf = models.get(gc.model)!;
      const { model } = loadSequenceClassifier(gpu, hf, { numLabels: gc.num_labels, random: rng(3), maxChunkBytes: 16 * 1024 });
      const step = new StepUniforms(gpu);
      const spec = specOf(gc);
      const adapter = createSeqClsAdapter(gpu, spec, model, step, rng(1));
      expect(adapter.params.map((p) => p.name).sort()).toEqual([...gc.param_names].sort());
      // (prefix tuning with the projection trains the MLP and saves the prefix it makes: the export below)
      if (gc.peft_saved_keys && !(spec.method === 'prefix' && spec.prefix.projection)) expect(adapter.params.map((p) => adapter.headSavedName(p.name)).sort()).toEqual(gc.peft_saved_keys);
      await checkSeqClsGoldenRun(gpu, model, adapter, step, gc, tensors);

      const files = await exportSeqClsAdapter(gpu, adapter, hf.name, model);
      const cfg = JSON.parse(files.get('adapter_config.json') as string);
      if (gc.method === 'bottleneck') {
        const st = parseSafetensors(files.get('adapter.safetensors') as Uint8Array);
        const headNames = model.headParams.map((p) => p.name);
        expect([...st.tensors.keys()].sort()).toEqual(gc.param_names.filter((n) => !headNames.includes(n)).sort());
        for (const n of st.tensors.keys()) expectClose(st.getF32(n), tensors.getF32(`${gc.name}/step5/${n}`), 1e-3, `exported ${n}`, 1e-2);
        const head = parseSafetensors(files.get('model_head.safetensors') as Uint8Array);
        for (const n of headNames) expectClose(head.getF32(n.replace('base_model.model.', '')), tensors.getF32(`${gc.name}/step5/${n}`), 1e-3, `exported head ${n}`, 1e-2);
        const b = gc.settings.bn!;
        expect(cfg.config).toMatchObject({ reduction_factor: b.reduction_factor, non_linearity: b.non_linearity, mh_adapter: b.type === 'houlsby', original_ln_before: b.type === 'pfeiffer', original_ln_after: true });
      } else {
        const st = parseSafetensors(files.get('adapter_model.safetensors') as Uint8Array);
        expect([...st.tensors.keys()].sort()).toEqual(gc.peft_saved_keys);
        for (const p of adapter.params) {
          if (!st.tensors.has(adapter.headSavedName(p.name))) continue; // the projection MLP: not saved
          expectClose(st.getF32(adapter.headSavedName(p.name)), tensors.getF32(`${gc.name}/step5/${p.name}`), 1e-3, `exported ${p.name}`, 1e-2);
        }
        // prefix tuning saves what get_peft_model_state_dict gives after the steps (with the projection, the prefix its MLP makes)
        if (gc.method === 'prefix') expectClose(st.getF32('prompt_embeddings'), tensors.getF32(`${gc.name}/export/prompt_embeddings`), 1e-3, 'exported prefix', 1e-2);
        const peftCfg = gc.adapter_config!;
        const promptLearning = ['peft_type', 'task_type', 'num_virtual_tokens', 'token_dim', 'num_layers', 'num_attention_heads', 'num_transformer_submodules', 'inference_mode'];
        const keys = {
          ia3: ['peft_type', 'task_type', 'fan_in_fan_out'],
          dora: ['peft_type', 'task_type', 'r', 'lora_alpha', 'fan_in_fan_out', 'bias', 'use_rslora', 'use_dora'],
          prompt: [...promptLearning, 'prompt_tuning_init'],
          prefix: [...promptLearning, 'encoder_hidden_size', 'prefix_projection'],
        }[gc.method as 'ia3' | 'dora' | 'prompt' | 'prefix'];
        for (const k of keys) expect(cfg[k], k).toEqual(peftCfg[k]);
        // PEFT writes module lists from sets (their order follows PYTHONHASHSEED); for prompt learning
        // it extends modules_to_save twice (["classifier", "score", "classifier", "score"])
        expect([...new Set(cfg.modules_to_save as string[])].sort()).toEqual([...new Set(peftCfg.modules_to_save as string[])].sort());
        if (gc.method !== 'prompt' && gc.method !== 'prefix') expect([...cfg.target_modules].sort()).toEqual([...(peftCfg.target_modules as string[])].sort());
        if (gc.method === 'ia3') expect([...cfg.feedforward_modules].sort()).toEqual([...(peftCfg.feedforward_modules as string[])].sort());
      }
      adapter.destroy();
      model.destroy();
    });
  }

  for (const gc of golden.cases.filter((c) => c.method !== 'bottleneck')) {
    it(`case ${gc.name}: the adapter PEFT saved loads into our engine and gives PEFT's logits`, async () => {
      const gpu = await testGpu();
      const { model } = loadSequenceClassifier(gpu, models.get(gc.model)!, { numLabels: gc.num_labels, random: rng(4) });
      const dir = path.join(GOLD, `peft-${gc.name}`);
      const adapter = importSeqClsAdapter(gpu, {
        name: `peft-${gc.name}`,
        config: fs.readFileSync(path.join(dir, 'adapter_config.json'), 'utf8'),
        weights: new Uint8Array(fs.readFileSync(path.join(dir, 'adapter_model.safetensors'))),
      }, model, new StepUniforms(gpu));
      expect(adapter.kind).toBe(gc.method);
      const batch = batchOf(gc);
      const program = model.buildProgram(adapter, { B: batch.B, T: batch.T, training: false });
      program.write(batch);
      runOps(gpu, program.forward);
      expectClose(await gpu.read(program.logits), tensors.getF32(`${gc.name}/logits`), 1e-4, 'logits', 1);
      program.destroy();
      adapter.destroy();
      model.destroy();
    });
  }
});
