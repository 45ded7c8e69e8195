// npm run train -- --model DIR --data FILE --out DIR [options]
// Trains an adapter with the same engine the app runs in its worker, on Node's WebGPU (Dawn).

import fs from 'node:fs';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { createNodeGpu } from '../engine/gpu/node-gpu';
import { nodeModelFiles } from '../io/model-files-node';
import { loadHfModel } from '../io/model-files';
import { loadTokenizer } from '../data/tokenizer';
import { decodeTableBytes, parseTableText } from '../data/table';
import { describeMapping, guessColumns, defaultTemplate, validateMapping, type ColumnMapping } from '../data/columns';
import { buildCausalExamples } from '../data/examples';
import { seededRandom, sequenceLengthFor, splitTrainValidation } from '../data/batches';
import { loadCausalLM } from '../engine/models/registry';
import { Lora } from '../engine/peft/lora';
import { StepUniforms } from '../engine/kernels/step-uniforms';
import { Trainer, DEFAULT_TRAIN_CONFIG, type TrainConfig } from '../engine/train/trainer';
import { exportPeftAdapter } from '../engine/export/peft-export';
import { RunLog, modelCard, trainerState } from '../train/run-report';
import { CliError, formatDuration, number, integer } from './args';

const USAGE = `Usage: npm run train -- --model DIR --data FILE --out DIR [options]

  --model DIR              Hugging Face model folder (config.json, *.safetensors, tokenizer.json)
  --data FILE              CSV, TSV or JSONL training data
  --out DIR                where the adapter, README.md and trainer_state.json are written
  --method lora            adapter type (lora)
  --rank R                 LoRA rank (8)          --alpha A    LoRA alpha (16)
  --dropout P              LoRA dropout (0.05)    --targets a,b  modules (architecture default, e.g. c_attn)
  --rslora                 scale by alpha/sqrt(r)
  --steps N | --epochs E   length of training (default 1 epoch)
  --lr LR (2e-4)  --batch-size B (8)  --grad-accum K (1)  --max-length L (256)
  --warmup N (0)  --schedule linear|cosine|constant (linear)  --weight-decay W (0)  --max-grad-norm G (1)
  --prompt-column C --completion-column C [--template "{C}\\n"]  |  --text-column C
  --validation F           fraction held out for evaluation (0.1; 0 for none)
  --eval-every N           evaluate every N steps (0: at the end)
  --seed S (42)            --debug  print stack traces`;

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
    },
  });
  if (a.help) {
    console.log(USAGE);
    return;
  }
  for (const k of ['model', 'data', 'out'] as const) if (!a[k]) throw new CliError(`--${k} is required\n\n${USAGE}`);
  if (a.method !== 'lora') throw new CliError(`--method ${a.method} is not available yet (available: lora)`);
  if (a.steps && a.epochs) throw new CliError('give --steps or --epochs, not both');

  // Model files and tokenizer
  const hf = await loadHfModel(nodeModelFiles(a.model!));
  if (!hf.tokenizerJson) throw new CliError(`${a.model}: no tokenizer.json in the model folder`);
  const tokenizer = loadTokenizer(hf.tokenizerJson, hf.tokenizerConfig, { chatTemplate: hf.chatTemplate, name: hf.name });

  // Data
  const dataPath = a.data!;
  if (!fs.existsSync(dataPath)) throw new CliError(`--data ${dataPath}: no such file`);
  const table = parseTableText(decodeTableBytes(new Uint8Array(fs.readFileSync(dataPath)), path.basename(dataPath)), path.basename(dataPath));
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
  const gpu = await createNodeGpu();
  const gi = gpu.info;
  const device = `${gi.description || gi.device || gi.vendor || 'WebGPU adapter'}${gi.isFallbackAdapter ? ' (software fallback, no GPU)' : ''}`;
  console.log(`device: ${device}`);
  const loaded = loadCausalLM(gpu, hf);
  const seqLen = Math.min(sequenceLengthFor(examples, maxLength), loaded.maxPositions);
  const targets = a.targets ? a.targets.split(',').map((s) => s.trim()).filter(Boolean) : loaded.defaultLoraTargets;
  const loraSettings = {
    r: integer(a.rank ?? '8', '--rank', 1),
    alpha: number(a.alpha ?? '16', '--alpha', 1e-9),
    dropout: number(a.dropout ?? '0.05', '--dropout', 0, 0.99),
    targetModules: targets,
    useRslora: Boolean(a.rslora),
  };
  const stepUniforms = new StepUniforms(gpu);
  const lora = new Lora(gpu, loraSettings, loaded.model.linearModules(), stepUniforms, seededRandom(seed));
  const trainable = lora.params.reduce((s, p) => s + p.value.size, 0);
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
  const trainer = new Trainer(gpu, loaded.model, lora, train, validation, config, tokenizer.padId, stepUniforms);
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
  const files = await exportPeftAdapter(gpu, lora, a.model!);
  fs.writeFileSync(path.join(out, 'adapter_config.json'), files['adapter_config.json']);
  fs.writeFileSync(path.join(out, 'adapter_model.safetensors'), files['adapter_model.safetensors']);
  fs.writeFileSync(path.join(out, 'trainer_state.json'), JSON.stringify(trainerState(log, config, stepsPerEpoch), null, 2) + '\n');
  fs.writeFileSync(path.join(out, 'README.md'), modelCard({
    baseModel, method: 'LoRA', adapterSettings: { rank: loraSettings.r, alpha: loraSettings.alpha, dropout: loraSettings.dropout, 'target modules': targets, rsLoRA: loraSettings.useRslora },
    config, dataFile: table.fileName, dataColumns: describeMapping(mapping), trainExamples: train.length, validationExamples: validation.length,
    trainableParams: trainable, totalParams: total + trainable, finalLoss: log.lastStep?.loss ?? NaN, finalEvalLoss: log.lastEval?.evalLoss ?? null,
    runtimeS, device,
  }));
  console.log(`done in ${formatDuration(runtimeS * 1000)}: final loss ${(log.lastStep?.loss ?? NaN).toFixed(4)}${log.lastEval ? `, eval loss ${log.lastEval.evalLoss.toFixed(4)}` : ''}`);
  if (reportTimes.length >= 3) {
    // the first step includes compiling every pipeline; later ones are the steady state
    const steady = (reportTimes.at(-1)! - reportTimes[0]) / (reportTimes.length - 1);
    console.log(`step time: ${steady.toFixed(1)} ms/step over steps 2-${reportTimes.length} (first step ${reportTimes[0].toFixed(0)} ms, with pipeline compilation)`);
  }
  console.log(`wrote ${out}/adapter_config.json, adapter_model.safetensors, README.md, trainer_state.json`);
  trainer.destroy();
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
