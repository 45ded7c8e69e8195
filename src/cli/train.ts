// npm run train -- --model DIR --data FILE --out DIR [options]
// Trains an adapter with the same engine the app runs in its worker, on Node's WebGPU (Dawn).

import fs from 'node:fs';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { createNodeGpu } from '../engine/gpu/node-gpu';
import { fmtBytes } from '../engine/gpu/gpu';
import { nodeModelFiles } from '../io/model-files-node';
import { loadHfModel } from '../io/model-files';
import { loadTokenizer } from '../data/tokenizer';
import { decodeTableBytes, parseTableText } from '../data/table';
import { describeMapping, guessColumns, defaultTemplate, validateMapping, type ColumnMapping } from '../data/columns';
import { buildCausalExamples } from '../data/examples';
import { seededRandom, sequenceLengthFor, splitTrainValidation } from '../data/batches';
import { isSequenceClassifierFamily, loadCausalLM, loadSequenceClassifier } from '../engine/models/registry';
import { createPeftMethod, peftModelInfo, type MethodSpec } from '../engine/peft/factory';
import { METHODS, METHOD_OPTIONS, METHOD_USAGE, methodFromArgs } from './peft-args';
import { StepUniforms } from '../engine/kernels/step-uniforms';
import { Trainer, DEFAULT_TRAIN_CONFIG, type TrainConfig } from '../engine/train/trainer';
import { exportAdapter } from '../engine/export/peft-export';
import { RunLog, modelCard, trainerState } from '../train/run-report';
import type { HfModel } from '../io/model-files';
import type { TextTokenizer } from '../data/tokenizer';
import type { Table } from '../data/table';
import type { PeftKind } from '../engine/peft/method';
import { writeSafetensors } from '../io/safetensors';
import { buildLabelMap, classCounts, describeClassCounts } from '../data/labels';
import { buildClassificationExamples, classificationSequenceLength, validateClassificationMapping } from '../data/classification';
import { createSeqClsAdapter, exportSeqClsAdapter, headStateDictName } from '../engine/models/sequence-classification';
import { encoderMethodRefusal, encoderPeftInfo } from '../engine/models/encoder-methods';
import { ClassifierTrainer, type ClassifierTrainConfig } from '../engine/train/classifier-trainer';
import { formatConfusion } from '../engine/train/classification-metrics';
import { classificationRunLog, classificationTrainerState, classifierModelCard } from '../engine/train/classification-report';
import { mixSeed } from '../engine/train/trainer';
import { CliError, formatDuration, number, integer, stepTimeLine } from './args';
import type { FrozenStorage } from '../engine/models/weights';

const USAGE = `Usage: npm run train -- --model DIR --data FILE --out DIR [options]

  --model DIR              Hugging Face model folder (config.json, *.safetensors, tokenizer.json)
  --data FILE              CSV, TSV or JSONL training data
  --out DIR                where the adapter, README.md and trainer_state.json are written
${METHOD_USAGE}
  --steps N | --epochs E   length of training (default 1 epoch)
  --lr LR (2e-4)  --batch-size B (8)  --grad-accum K (1)  --max-length L (256)
  --warmup N (0)  --schedule linear|cosine|constant (linear)  --weight-decay W (0)  --max-grad-norm G (1)
  --prompt-column C --completion-column C [--template "{C}\\n"]  |  --text-column C

  Text classification (DistilBERT, BERT): --text-column C --label-column C
  (--method lora, dora, ia3, prompt or adapter on the encoder; the head always trains in full)
  --labels a,b,c           fix the class ids (default: integers sorted numerically, else names sorted)
  --head-only              train only the classification head (frozen encoder, no adapter): a baseline
  --metric-for-best loss|accuracy  which evaluation is kept (loss)   --no-load-best  keep the last weights
  --validation F           fraction held out for evaluation (0.1; 0 for none)
  --eval-every N           evaluate every N steps (0: at the end)
  --seed S (42)            --debug  print stack traces
  --tensor-cores           run the frozen layers' products on tensor cores where the GPU has them (f16
                           operands, f32 sums: mixed precision); asks Dawn for its unsafe subgroup matrices
  --tensor-cores-f32       the same products on tensor cores with f32 accuracy (each operand as two
                           halves, hi + lo, three products): slower than mixed, faster than f32 kernels
  --frozen f32|f16         how the base model's frozen matrices are kept on the GPU (f32; f16: about half
                           the memory, rounded once at upload, sums and the adapter in f32)`;

/** --frozen: f32 (default) or f16. */
function frozenStorage(v: unknown): FrozenStorage {
  const s = v === undefined ? 'f32' : String(v);
  if (s !== 'f32' && s !== 'f16') throw new CliError(`--frozen ${s}: use f32 or f16`);
  return s;
}

function weightsLine(bytes: number, frozen: FrozenStorage): string {
  return `weights: ${fmtBytes(bytes)} on the GPU (frozen matrices in ${frozen})`;
}

/**
 * The device, named on the console, from --tensor-cores / --tensor-cores-f32: with Dawn's toggles
 * for tensor cores (f32 accuracy there with the second), refused where the GPU has none.
 */
async function nodeGpuFor(a: { 'tensor-cores'?: boolean; 'tensor-cores-f32'?: boolean }) {
  const f32Accuracy = a['tensor-cores-f32'] === true, tensorCores = a['tensor-cores'] === true || f32Accuracy;
  if (a['tensor-cores'] && f32Accuracy) throw new CliError('--tensor-cores and --tensor-cores-f32: choose one (f16 operands, or f32 accuracy)');
  const gpu = await createNodeGpu({ tensorCores, tuning: { tensorCoreF32: f32Accuracy } });
  const gi = gpu.info;
  if (tensorCores && !gpu.hasTensorCores) throw new CliError(`--tensor-cores${f32Accuracy ? '-f32' : ''}: this GPU offers no f16 subgroup matrices (shader-f16 and chromium-experimental-subgroup-matrix with 16x16x16 f16 -> f32)`);
  const onTensorCores = gpu.hasTensorCores && gpu.tuning.tensorCores;
  const how = f32Accuracy ? 'f32 accuracy: operands as hi + lo halves, f32 sums' : 'mixed precision: f16 operands, f32 sums';
  const device = `${gi.description || gi.device || gi.vendor || 'WebGPU adapter'}${gi.isFallbackAdapter ? ' (software fallback, no GPU)' : ''}${onTensorCores ? `, tensor cores (${how})` : ''}`;
  console.log(`device: ${device}`);
  return { gpu, device };
}

async function main(argv: string[]): Promise<void> {
  const { values: a } = parseArgs({
    args: argv,
    strict: true,
    options: {
      model: { type: 'string' }, data: { type: 'string' }, out: { type: 'string' }, method: { type: 'string', default: 'lora' },
      rank: { type: 'string' }, alpha: { type: 'string' }, dropout: { type: 'string' }, targets: { type: 'string' }, rslora: { type: 'boolean' },
      steps: { type: 'string' }, epochs: { type: 'string' }, lr: { type: 'string' }, 'batch-size': { type: 'string' },
      'grad-accum': { type: 'string' }, 'max-length': { type: 'string' }, warmup: { type: 'string' }, schedule: { type: 'string' },
      'weight-decay': { type: 'string' }, 'max-grad-norm': { type: 'string' },
      'prompt-column': { type: 'string' }, 'completion-column': { type: 'string' }, template: { type: 'string' }, 'text-column': { type: 'string' },
      validation: { type: 'string' }, 'eval-every': { type: 'string' }, seed: { type: 'string' }, debug: { type: 'boolean' }, help: { type: 'boolean' },
      'label-column': { type: 'string' }, labels: { type: 'string' }, 'head-only': { type: 'boolean' },
      'metric-for-best': { type: 'string' }, 'no-load-best': { type: 'boolean' }, 'tensor-cores': { type: 'boolean' }, 'tensor-cores-f32': { type: 'boolean' },
      frozen: { type: 'string' },
      ...METHOD_OPTIONS,
    },
  });
  if (a.help) {
    console.log(USAGE);
    return;
  }
  for (const k of ['model', 'data', 'out'] as const) if (!a[k]) throw new CliError(`--${k} is required\n\n${USAGE}`);
  if (a.steps && a.epochs) throw new CliError('give --steps or --epochs, not both');

  // Model files and tokenizer
  const hf = await loadHfModel(nodeModelFiles(a.model!));
  if (!hf.tokenizerJson) throw new CliError(`${a.model}: no tokenizer.json in the model folder`);
  const tokenizer = loadTokenizer(hf.tokenizerJson, hf.tokenizerConfig, { chatTemplate: hf.chatTemplate, name: hf.name });

  // Data
  const dataPath = a.data!;
  if (!fs.existsSync(dataPath)) throw new CliError(`--data ${dataPath}: no such file`);
  const table = parseTableText(decodeTableBytes(new Uint8Array(fs.readFileSync(dataPath)), path.basename(dataPath)), path.basename(dataPath));
  if (a['label-column'] || isSequenceClassifierFamily(hf)) {
    await trainClassifier(a, hf, tokenizer, table);
    return;
  }
  for (const k of ['labels', 'head-only', 'metric-for-best', 'no-load-best'] as const) {
    if (a[k] !== undefined) throw new CliError(`--${k} is for text classification (--text-column with --label-column on a DistilBERT or BERT model)`);
  }
  let mapping: ColumnMapping;
  let guessed = false;
  if (a['text-column']) {
    if (a['prompt-column'] || a['completion-column']) throw new CliError('give --text-column, or --prompt-column with --completion-column, not both');
    mapping = { kind: 'text', text: a['text-column'] };
  } else if (a['prompt-column'] || a['completion-column']) {
    if (!a['prompt-column'] || !a['completion-column']) throw new CliError('--prompt-column and --completion-column go together');
    mapping = { kind: 'prompt-completion', prompt: a['prompt-column'], completion: a['completion-column'], template: a.template ?? defaultTemplate(a['prompt-column']) };
  } else {
    mapping = guessColumns(table);
    guessed = true;
    if (a.template && mapping.kind === 'prompt-completion') mapping = { ...mapping, template: a.template };
  }
  validateMapping(table, mapping);
  console.log(`data: ${table.fileName}: ${table.rows.length} rows, columns ${table.columns.join(', ')}`);
  console.log(`columns: ${describeMapping(mapping)}${guessed ? '  (guessed: set --prompt-column/--completion-column or --text-column to change)' : ''}`);

  const maxLength = integer(a['max-length'] ?? '256', '--max-length', 2);
  const { examples, stats } = buildCausalExamples(table, mapping, tokenizer, { maxLength });
  if (examples.length === 0) throw new CliError(`${table.fileName}: no usable rows (every row was empty or skipped)`);
  const validationFraction = number(a.validation ?? (examples.length >= 20 ? '0.1' : '0'), '--validation', 0, 0.9);
  const seed = integer(a.seed ?? '42', '--seed', 0);
  const { train, validation } = splitTrainValidation(examples, validationFraction, seed);
  console.log(`examples: ${train.length} train, ${validation.length} validation; tokens per example ${stats.tokenLength.min}-${stats.tokenLength.max} (mean ${stats.tokenLength.mean.toFixed(1)}); ${stats.truncated} truncated to ${maxLength}; ${stats.skipped.count} skipped${stats.skipped.count ? ` (rows ${stats.skipped.rows.map((r) => r.row).join(', ')}${stats.skipped.count > stats.skipped.rows.length ? ', ...' : ''})` : ''}`);

  // GPU, model and adapter
  const frozen = frozenStorage(a.frozen);
  const { gpu, device } = await nodeGpuFor(a);
  const loaded = loadCausalLM(gpu, hf, { frozen });
  console.log(weightsLine(loaded.model.weightBytes(), frozen));
  const info = peftModelInfo(hf.config, loaded.model.linearModules());
  const choice = methodFromArgs(a, info, loaded.defaultLoraTargets, a.model!);
  // prompt and prefix tuning's virtual tokens take positions too
  if (choice.virtualTokens >= loaded.maxPositions) throw new CliError(`--virtual-tokens ${choice.virtualTokens} leaves no room in the model's ${loaded.maxPositions} positions`);
  const seqLen = Math.min(sequenceLengthFor(examples, maxLength), loaded.maxPositions - choice.virtualTokens);
  const stepUniforms = new StepUniforms(gpu);
  const method = createPeftMethod(gpu, choice.spec, info, loaded.model, stepUniforms, {
    random: seededRandom(seed), tokenize: (text) => tokenizer.encode(text, { addSpecialTokens: true }),
  });
  const trainable = method.params.reduce((s, p) => s + p.value.size, 0);
  console.log(`adapter: ${choice.label} (${Object.entries(choice.settings).map(([k, v]) => `${k} ${Array.isArray(v) ? v.join(',') : v}`).join('; ')})`);
  const total = loaded.model.parameterCount();
  console.log(`trainable params: ${trainable.toLocaleString('en-US')} || all params: ${(total + trainable).toLocaleString('en-US')} || trainable%: ${((100 * trainable) / (total + trainable)).toFixed(4)}`);

  const batchSize = integer(a['batch-size'] ?? '8', '--batch-size', 1);
  const gradAccum = integer(a['grad-accum'] ?? '1', '--grad-accum', 1);
  const stepsPerEpoch = Trainer.stepsForEpochs(train.length, 1, batchSize, gradAccum);
  const totalSteps = a.steps ? integer(a.steps, '--steps', 1) : Trainer.stepsForEpochs(train.length, number(a.epochs ?? '1', '--epochs', 1e-9), batchSize, gradAccum);
  const schedule = a.schedule ?? 'linear';
  if (schedule !== 'linear' && schedule !== 'cosine' && schedule !== 'constant') throw new CliError(`--schedule ${schedule}: use linear, cosine or constant`);
  const config: TrainConfig = {
    ...DEFAULT_TRAIN_CONFIG,
    batchSize, gradAccumSteps: gradAccum, totalSteps, seqLen, schedule, seed,
    lr: number(a.lr ?? '2e-4', '--lr', 1e-12),
    warmupSteps: integer(a.warmup ?? '0', '--warmup', 0),
    weightDecay: number(a['weight-decay'] ?? '0', '--weight-decay', 0),
    maxGradNorm: number(a['max-grad-norm'] ?? '1', '--max-grad-norm', 0),
    evalEvery: integer(a['eval-every'] ?? '0', '--eval-every', 0),
  };
  const trainer = new Trainer(gpu, loaded.model, method, train, validation, config, tokenizer.padId, stepUniforms);
  console.log(`training: ${totalSteps} steps of ${batchSize} x ${seqLen} tokens${gradAccum > 1 ? ` x ${gradAccum} accumulated` : ''}, lr ${config.lr}`);

  const log = new RunLog(stepsPerEpoch);
  const reportTimes: number[] = [];
  const t0 = performance.now();
  const every = Math.max(1, Math.floor(totalSteps / 50));
  await trainer.run({
    onStep: (r) => {
      log.step(r);
      reportTimes.push(r.elapsedMs);
      if (r.step % every === 0 || r.step === 1 || r.step === r.totalSteps) {
        console.log(`step ${r.step}/${r.totalSteps} | loss ${r.loss.toFixed(4)} | lr ${r.lr.toExponential(2)} | grad norm ${r.gradNorm.toFixed(3)} | ${Math.round(r.tokensPerSecond).toLocaleString('en-US')} tok/s | eta ${formatDuration(r.etaMs)}`);
      }
    },
    onEval: (r) => {
      log.eval(r);
      console.log(`eval at step ${r.step}: loss ${r.evalLoss.toFixed(4)}`);
    },
  });
  const runtimeS = (performance.now() - t0) / 1000;
  log.finish(runtimeS, totalSteps * batchSize * gradAccum);

  // Output
  const out = a.out!;
  fs.mkdirSync(out, { recursive: true });
  // adapter_config points at the folder as given (PEFT reads the base config from there);
  // the model card names the model by its folder name.
  const baseModel = path.basename(path.resolve(a.model!));
  // PEFT's files, or AdapterHub's for bottleneck adapters (adapter.safetensors)
  const exported = await exportAdapter(gpu, method, a.model!);
  fs.writeFileSync(path.join(out, 'adapter_config.json'), exported.config);
  fs.writeFileSync(path.join(out, exported.weightsName), exported.weights);
  fs.writeFileSync(path.join(out, 'trainer_state.json'), JSON.stringify(trainerState(log, config, stepsPerEpoch), null, 2) + '\n');
  fs.writeFileSync(path.join(out, 'README.md'), modelCard({
    baseModel, method: choice.label, adapterSettings: choice.settings,
    config, dataFile: table.fileName, dataColumns: describeMapping(mapping), trainExamples: train.length, validationExamples: validation.length,
    trainableParams: trainable, totalParams: total + trainable, finalLoss: log.lastStep?.loss ?? NaN, finalEvalLoss: log.lastEval?.evalLoss ?? null,
    runtimeS, device, format: exported.format,
  }));
  console.log(`done in ${formatDuration(runtimeS * 1000)}: final loss ${(log.lastStep?.loss ?? NaN).toFixed(4)}${log.lastEval ? `, eval loss ${log.lastEval.evalLoss.toFixed(4)}` : ''}`);
  const stepTime = stepTimeLine(reportTimes);
  if (stepTime) console.log(stepTime);
  console.log(`gpu memory: ${fmtBytes(gpu.allocatedBytes)} in buffers at the end of training (weights, activations, adapter, optimizer)`);
  console.log(`wrote ${out}/adapter_config.json, ${exported.weightsName}, README.md, trainer_state.json${exported.format === 'adapterhub' ? ' (AdapterHub format: load with the adapters library)' : ''}`);
  trainer.destroy();
}

type Flags = Record<string, string | boolean | undefined>;

/**
 * --text-column + --label-column on a DistilBERT or BERT model: sequence classification with LoRA,
 * DoRA, IA3, prompt tuning, prefix tuning (BERT) or bottleneck adapters on the encoder (or head-only),
 * the head trained in full.
 */
async function trainClassifier(a: Flags, hf: HfModel, tokenizer: TextTokenizer, table: Table): Promise<void> {
  const str = (k: string): string | undefined => (typeof a[k] === 'string' ? (a[k] as string) : undefined);
  if (!isSequenceClassifierFamily(hf)) {
    throw new CliError(`--label-column trains a text classifier, which needs a DistilBERT or BERT model; ${hf.name} is model_type "${hf.config.model_type}"`);
  }
  const textCol = str('text-column'), labelCol = str('label-column');
  if (!textCol || !labelCol) {
    throw new CliError(`${hf.name} is an encoder (${hf.config.model_type}): it trains a text classifier; give --text-column C --label-column C (columns: ${table.columns.join(', ')})`);
  }
  for (const k of ['prompt-column', 'completion-column', 'template']) if (a[k] !== undefined) throw new CliError(`--${k} is not used for text classification`);
  const methodName = str('method') ?? 'lora';
  const kind = methodName === 'adapter' ? 'bottleneck' : methodName;
  const refusal = (METHODS as readonly string[]).includes(methodName) ? encoderMethodRefusal(hf.config.family as 'distilbert' | 'bert', kind as PeftKind) : null;
  if (refusal) throw new CliError(`--method ${methodName}: ${refusal}`);
  const headOnly = a['head-only'] === true;
  if (headOnly) {
    if (methodName !== 'lora') throw new CliError(`--head-only trains no adapter: leave out --method ${methodName}`);
    for (const k of ['targets', 'rank', 'alpha', 'dropout', 'rslora', ...Object.keys(METHOD_OPTIONS)]) if (a[k] !== undefined) throw new CliError(`--${k} has no effect with --head-only (no adapter)`);
  }
  const metricForBest = str('metric-for-best') ?? 'loss';
  if (metricForBest !== 'loss' && metricForBest !== 'accuracy') throw new CliError(`--metric-for-best ${metricForBest}: use loss or accuracy`);
  const mapping = { text: textCol, label: labelCol };
  validateClassificationMapping(table, mapping);
  const order = str('labels')?.split(',').map((s) => s.trim()).filter(Boolean);
  const labelMap = buildLabelMap(table.rows.map((r) => r[labelCol]), order);
  console.log(`data: ${table.fileName}: ${table.rows.length} rows, columns ${table.columns.join(', ')}`);
  console.log(`columns: text "${textCol}" -> label "${labelCol}" (sequence classification)`);

  const maxLength = integer(str('max-length') ?? '256', '--max-length', 3);
  const { examples, stats } = buildClassificationExamples(table, mapping, tokenizer, { maxLength, labelMap });
  if (examples.length === 0) throw new CliError(`${table.fileName}: no usable rows (every row was empty or skipped)`);
  const K = labelMap.names.length;
  const all = describeClassCounts(labelMap, stats.classCounts);
  console.log(`labels: ${K} classes (${labelMap.kind} labels; ids: ${labelMap.names.map((n, i) => `${i}=${n}`).join(', ')})`);
  console.log(`class counts: ${all.line}`);
  if (all.warning) console.log(`warning: ${all.warning}`);
  const validationFraction = number(str('validation') ?? (examples.length >= 20 ? '0.1' : '0'), '--validation', 0, 0.9);
  const seed = integer(str('seed') ?? '42', '--seed', 0);
  const { train, validation } = splitTrainValidation(examples, validationFraction, seed);
  const trainCounts = classCounts(train.map((e) => e.label), K);
  console.log(`examples: ${train.length} train (${describeClassCounts(labelMap, trainCounts).line}), ${validation.length} validation; tokens per example ${stats.tokenLength.min}-${stats.tokenLength.max} (mean ${stats.tokenLength.mean.toFixed(1)}); ${stats.truncated} truncated to ${maxLength}; ${stats.skipped.count} skipped${stats.skipped.count ? ` (rows ${stats.skipped.rows.map((r) => r.row).join(', ')}${stats.skipped.count > stats.skipped.rows.length ? ', ...' : ''})` : ''}`);

  const frozen = frozenStorage(a.frozen);
  const { gpu, device } = await nodeGpuFor(a);
  const loaded = loadSequenceClassifier(gpu, hf, { numLabels: K, random: seededRandom(mixSeed(seed, 0x4ead)), frozen });
  const model = loaded.model;
  console.log(weightsLine(model.weightBytes(), frozen));
  for (const n of model.notes) console.log(`head: ${n}`);
  const stepUniforms = new StepUniforms(gpu);
  const info = encoderPeftInfo(model);
  const choice = headOnly ? null : methodFromArgs(a, info, loaded.defaultLoraTargets, str('model')!);
  // prompt tuning's virtual tokens take positions too
  const nv = choice?.virtualTokens ?? 0;
  if (nv >= loaded.maxPositions) throw new CliError(`--virtual-tokens ${nv} leaves no room in the model's ${loaded.maxPositions} positions`);
  const seqLen = Math.min(classificationSequenceLength(examples, maxLength), loaded.maxPositions - nv);
  const adapter = createSeqClsAdapter(gpu, choice?.spec ?? null, model, stepUniforms, seededRandom(seed), (text) => tokenizer.encode(text, { addSpecialTokens: true }));
  const headModules = [...new Set(model.headParams.map((p) => p.name.replace(/^base_model\.model\./, '').replace(/\.(weight|bias)$/, '')))];
  const trainable = adapter.params.reduce((s, p) => s + p.value.size, 0);
  const methodCount = (adapter.method?.params ?? []).reduce((s, p) => s + p.value.size, 0);
  const total = model.parameterCount() + methodCount;
  console.log(`trainable params: ${trainable.toLocaleString('en-US')} || all params: ${total.toLocaleString('en-US')} || trainable%: ${((100 * trainable) / total).toFixed(4)}`);
  console.log(`${describeEncoderMethod(choice?.spec ?? null, choice?.label ?? '')}; head trained in full: ${headModules.join(', ')}; no dropout in the base model`);

  const batchSize = integer(str('batch-size') ?? '8', '--batch-size', 1);
  const gradAccum = integer(str('grad-accum') ?? '1', '--grad-accum', 1);
  const stepsPerEpoch = Trainer.stepsForEpochs(train.length, 1, batchSize, gradAccum);
  const totalSteps = str('steps') ? integer(str('steps')!, '--steps', 1) : Trainer.stepsForEpochs(train.length, number(str('epochs') ?? '1', '--epochs', 1e-9), batchSize, gradAccum);
  const schedule = str('schedule') ?? 'linear';
  if (schedule !== 'linear' && schedule !== 'cosine' && schedule !== 'constant') throw new CliError(`--schedule ${schedule}: use linear, cosine or constant`);
  const config: ClassifierTrainConfig = {
    ...DEFAULT_TRAIN_CONFIG,
    batchSize, gradAccumSteps: gradAccum, totalSteps, seqLen, schedule, seed,
    lr: number(str('lr') ?? '2e-4', '--lr', 1e-12),
    warmupSteps: integer(str('warmup') ?? '0', '--warmup', 0),
    weightDecay: number(str('weight-decay') ?? '0', '--weight-decay', 0),
    maxGradNorm: number(str('max-grad-norm') ?? '1', '--max-grad-norm', 0),
    evalEvery: integer(str('eval-every') ?? '0', '--eval-every', 0),
    metricForBest,
    loadBestAtEnd: a['no-load-best'] !== true,
  };
  const trainer = new ClassifierTrainer(gpu, model, adapter, train, validation, config, tokenizer.padId, stepUniforms);
  console.log(`training: ${totalSteps} steps of ${batchSize} x ${seqLen} tokens${gradAccum > 1 ? ` x ${gradAccum} accumulated` : ''}, lr ${config.lr}`);

  const log = classificationRunLog(stepsPerEpoch);
  const reportTimes: number[] = [];
  const t0 = performance.now();
  const every = Math.max(1, Math.floor(totalSteps / 50));
  await trainer.run({
    onStep: (r) => {
      log.step(r);
      reportTimes.push(r.elapsedMs);
      if (r.step % every === 0 || r.step === 1 || r.step === r.totalSteps) {
        console.log(`step ${r.step}/${r.totalSteps} | loss ${r.loss.toFixed(4)} | lr ${r.lr.toExponential(2)} | grad norm ${r.gradNorm.toFixed(3)} | ${Math.round(r.tokensPerSecond).toLocaleString('en-US')} tok/s | eta ${formatDuration(r.etaMs)}`);
      }
    },
    onEval: (r) => {
      log.eval(r);
      console.log(`eval at step ${r.step}: loss ${r.loss.toFixed(4)} | accuracy ${r.accuracy.toFixed(4)} | macro-F1 ${r.f1.toFixed(4)} (${r.count} examples)`);
    },
  });
  const runtimeS = (performance.now() - t0) / 1000;
  log.finish(runtimeS, totalSteps * batchSize * gradAccum);
  const confusionLines = log.lastEval ? formatConfusion(log.lastEval.confusion, labelMap.names) : [];
  if (log.lastEval) {
    console.log('confusion matrix (last evaluation; rows true, columns predicted):');
    for (const line of confusionLines) console.log(`  ${line}`);
  }
  if (trainer.best) {
    console.log(`best checkpoint: step ${trainer.best.step} (eval ${trainer.best.metric} ${trainer.best.value.toFixed(4)})${trainer.restoredBest ? '; its weights are the ones saved' : ''}`);
  }

  const out = str('out')!;
  fs.mkdirSync(out, { recursive: true });
  const baseModel = path.basename(path.resolve(str('model')!));
  const written: string[] = [];
  if (adapter.method) {
    // PEFT's two files, or AdapterHub's adapter + static head files for bottleneck adapters
    for (const [name, data] of await exportSeqClsAdapter(gpu, adapter, str('model')!, model)) {
      fs.writeFileSync(path.join(out, name), data);
      written.push(name);
    }
  } else {
    const tensors = [];
    for (const p of adapter.params) tensors.push({ name: headStateDictName(p.name), dtype: 'F32' as const, shape: p.shape, data: await gpu.read(p.value) });
    fs.writeFileSync(path.join(out, 'head_model.safetensors'), writeSafetensors(tensors, { format: 'pt' }));
    written.push('head_model.safetensors');
  }
  fs.writeFileSync(path.join(out, 'trainer_state.json'), JSON.stringify(classificationTrainerState(log, config, stepsPerEpoch, trainer.best), null, 2) + '\n');
  fs.writeFileSync(path.join(out, 'README.md'), classifierModelCard({
    baseModel, modelClass: model.spec.className, method: choice?.label ?? 'head only',
    // bottleneck adapters: AdapterHub's loading code (adapters.init + load_adapter), not PEFT's
    format: adapter.exportFormat === 'adapterhub' ? 'adapterhub' : 'peft',
    adapterSettings: choice?.settings ?? {},
    headModules, labels: labelMap, trainCounts, config, dataFile: table.fileName, dataColumns: `text "${textCol}", label "${labelCol}"`,
    trainExamples: train.length, validationExamples: validation.length, trainableParams: trainable, totalParams: total,
    finalLoss: log.lastStep?.loss ?? NaN, finalEval: log.lastEval, best: trainer.best, restoredBest: trainer.restoredBest,
    confusionLines, runtimeS, device,
  }));
  written.push('README.md', 'trainer_state.json');
  const ev = log.lastEval;
  console.log(`done in ${formatDuration(runtimeS * 1000)}: final loss ${(log.lastStep?.loss ?? NaN).toFixed(4)}${ev ? `, eval loss ${ev.loss.toFixed(4)}, accuracy ${ev.accuracy.toFixed(4)}, macro-F1 ${ev.f1.toFixed(4)}` : ''}`);
  const stepTime = stepTimeLine(reportTimes);
  if (stepTime) console.log(stepTime);
  console.log(`gpu memory: ${fmtBytes(gpu.allocatedBytes)} in buffers at the end of training (weights, activations, adapter, optimizer)`);
  console.log(`wrote ${out}/${written.join(', ')}`);
  trainer.destroy();
}

/** One line on what trains on the encoder, e.g. "LoRA on query, value". */
function describeEncoderMethod(spec: MethodSpec | null, label: string): string {
  if (!spec) return 'head only (frozen encoder)';
  if (spec.method === 'lora' || spec.method === 'dora') return `${label} on ${spec.lora.targetModules.join(', ')}`;
  if (spec.method === 'ia3') return `IA3 on ${spec.ia3.targetModules.join(', ')} (input-scaled: ${spec.ia3.feedforwardModules.join(', ') || 'none'})`;
  if (spec.method === 'prompt') return `prompt tuning (${spec.prompt.numVirtualTokens} virtual tokens before [CLS], init ${spec.prompt.init}; the head reads the first)`;
  if (spec.method === 'prefix') {
    const p = spec.prefix;
    return `prefix tuning (${p.numVirtualTokens} key/value rows before every layer's keys; ${p.projection ? `trained through the projection MLP, encoder hidden size ${p.encoderHiddenSize ?? 'token_dim'}` : 'no projection'})`;
  }
  if (spec.method === 'bottleneck') {
    const b = spec.bottleneck;
    return `${label} bottleneck adapters "${b.name}" (reduction factor ${b.reductionFactor}, ${b.nonLinearity}; saved in AdapterHub's format)`;
  }
  return label;
}

const argv = process.argv.slice(2);
main(argv).then(
  () => process.exit(0),
  (e: unknown) => {
    const err = e as Error;
    if (argv.includes('--debug')) console.error(err);
    else console.error(`error: ${err?.message ?? String(e)}`);
    process.exit(1);
  },
);
