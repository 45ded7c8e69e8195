/// <reference lib="webworker" />
// The training worker: owns the GPU device, the loaded model, the parsed data and the running
// trainer, so that nothing heavy ever runs on the page's thread. It answers the commands of
// ./protocol.ts and pushes progress and training events.

import { Gpu, GpuError } from '../engine/gpu/gpu';
import { loadHfModel, modelFilesFromMap, ModelFileError, type HfModel, type ModelFiles } from '../io/model-files';
import { SafetensorsError } from '../io/safetensors';
import { HfConfigError, type HfConfig } from '../io/hf-config';
import { downloadHubModel, HubError, validateRepoId } from '../io/hub';
import { cacheStorageAvailable, cacheStorageModelCache } from '../io/model-cache';
import { DataError, parseTableStream, type Table } from '../data/table';
import { describeMapping, guessColumns, validateMapping, type ColumnMapping } from '../data/columns';
import { loadTokenizer, TokenizerError, type TextTokenizer } from '../data/tokenizer';
import { buildCausalExamplesAsync, IGNORE_INDEX, type Example, type ExampleStats } from '../data/examples';
import { seededRandom, sequenceLengthFor, splitTrainValidation } from '../data/batches';
import { loadCausalLM, type LoadedModel } from '../engine/models/registry';
import { ProgramError } from '../engine/models/program';
import { Lora, LoraError, moduleMatches, type LinearModuleInfo } from '../engine/peft/lora';
import { StepUniforms } from '../engine/kernels/step-uniforms';
import { DEFAULT_TRAIN_CONFIG, Trainer, TrainError, type StepReport, type TrainConfig } from '../engine/train/trainer';
import { exportPeftAdapter } from '../engine/export/peft-export';
import { RunLog, modelCard, trainerState, type LogEntry } from '../train/run-report';
import { warmupStepsFromRatio } from '../train/schedule';
import { estimateTraining } from './memory';
import { ALL_LINEAR, firstSettingError, validateSettings, type SettingLimits, type TrainSettings } from './settings';
import {
  fingerprintFile,
  getCheckpoint,
  saveAdapter,
  saveCheckpoint,
  type AdapterMeta,
  type BaseModelInfo,
  type CheckpointMeta,
} from './storage';
import type {
  CommandName,
  Commands,
  DataSummary,
  ErrorInfo,
  InitResult,
  InputName,
  LinearModuleGroup,
  ModelSummary,
  PageToWorker,
  PrepareResult,
  StepPoint,
  TrainingState,
  WorkerEvent,
  WorkerToPage,
} from './protocol';

const scope = self as unknown as DedicatedWorkerGlobalScope;

/** An error about one input the user controls. */
class InputError extends Error {
  constructor(
    message: string,
    readonly input: InputName,
  ) {
    super(message);
    this.name = 'InputError';
  }
}

function emit(event: WorkerEvent): void {
  scope.postMessage({ kind: 'event', event } satisfies WorkerToPage);
}

// ---------------------------------------------------------------------------------------------
// State

let gpu: Gpu | null = null;

interface ModelState {
  hf: HfModel;
  loaded: LoadedModel;
  tokenizer: TextTokenizer;
  summary: ModelSummary;
}
let model: ModelState | null = null;

interface DataState {
  file: File;
  table: Table;
  fingerprint: Promise<string> | null;
}
let data: DataState | null = null;

/**
 * Examples depend only on data, model (tokenizer), mapping and maxLength: kept across setting
 * changes. The build is shared while it runs, so a prepare for the same key waits for it; a newer
 * key (or new data or model, which clear this) makes a running build stop at its next progress point.
 */
let examplesCache: { key: string; built: Promise<BuiltExamples> | null } | null = null;
type BuiltExamples = { examples: Example[]; stats: ExampleStats };

/** A build of examples that a newer one replaced. */
class Superseded extends Error {
  constructor() {
    super('The data, model, column mapping or max length changed while the examples were being built.');
    this.name = 'Superseded';
  }
}

let downloadAbort: AbortController | null = null;

interface RunState {
  id: string;
  name: string;
  trainer: Trainer;
  lora: Lora;
  log: RunLog;
  config: TrainConfig;
  settings: TrainSettings;
  mapping: ColumnMapping;
  stepsPerEpoch: number;
  trainCount: number;
  validationCount: number;
  trainable: number;
  dataFingerprint: string;
  model: ModelState;
  dataFileName: string;
  dataBytes: number;
  dataRows: number;
  state: TrainingState;
  pauseRequested: boolean;
  stopRequested: boolean;
  resumeWaiter: (() => void) | null;
  nextCheckpointAt: number;
  lastCheckpointStep: number;
  lastEvalStep: number;
  /** Active (not paused) milliseconds before the current segment, and when that segment began. */
  activeMs: number;
  segmentStart: number | null;
  /** trainer.step when this session (start or resume from a checkpoint) began. */
  sessionStartStep: number;
  tokens: number;
  pendingPoints: StepPoint[];
  lastReport: StepReport | null;
  lastStepEmit: number;
}
let run: RunState | null = null;

function requireGpu(): Gpu {
  if (!gpu) throw new InputError('The GPU is not ready yet.', 'gpu');
  if (gpu.lost) throw new InputError(`${gpu.lost}. Reload the page to start a new GPU device.`, 'gpu');
  return gpu;
}

function requireIdle(what: string): void {
  if (run) throw new InputError(`Training is running: stop it before ${what}.`, 'gpu');
}

function setState(r: RunState | null, state: TrainingState): void {
  if (r) r.state = state;
  emit({ type: 'trainingState', state, runId: r?.id ?? null });
}

// ---------------------------------------------------------------------------------------------
// init

async function init(): Promise<InitResult> {
  const nav = scope.navigator as WorkerNavigator & { gpu?: GPU };
  if (!nav.gpu) {
    throw new InputError('WebGPU is not available in this browser (navigator.gpu is missing in the worker).', 'gpu');
  }
  if (!gpu || gpu.lost) gpu = await Gpu.create({ gpu: nav.gpu });
  return { gpu: gpu.info, hasF16: gpu.hasF16, hasSubgroups: gpu.hasSubgroups };
}

// ---------------------------------------------------------------------------------------------
// Data

const PREVIEW_ROWS = 8;
const PREVIEW_CELL_CHARS = 240;
const PROBLEMS_SENT = 200;

let dataLoads = 0;

async function loadData(file: File): Promise<DataSummary> {
  requireIdle('loading other data');
  const load = ++dataLoads;
  const t0 = performance.now();
  let table: Table;
  try {
    table = await parseTableStream(file, (fraction) => load === dataLoads && emit({ type: 'progress', task: 'parse', fraction }), { fileName: file.name });
  } catch (e) {
    throw new InputError(messageOf(e), 'dataFile');
  }
  // Another file was picked while this one parsed: that one wins.
  if (load !== dataLoads) throw new InputError(`${file.name} was replaced by a newer file before it finished loading.`, 'dataFile');
  data = { file, table, fingerprint: null };
  examplesCache = null;
  const clip = (s: string) => (s.length > PREVIEW_CELL_CHARS ? `${s.slice(0, PREVIEW_CELL_CHARS)}…` : s);
  const preview = table.rows.slice(0, PREVIEW_ROWS).map((row) => Object.fromEntries(Object.entries(row).map(([k, v]) => [k, clip(v)])));
  return {
    fileName: table.fileName,
    fileBytes: file.size,
    format: table.format,
    ...(table.delimiter !== undefined ? { delimiter: table.delimiter } : {}),
    columns: table.columns,
    rowCount: table.rows.length,
    preview,
    previewRowNumbers: table.rowNumbers.slice(0, PREVIEW_ROWS),
    problems: table.problems.slice(0, PROBLEMS_SENT),
    problemCounts: table.problemCounts,
    guessedMapping: guessColumns(table),
    parseMs: performance.now() - t0,
  };
}

function dataFingerprint(d: DataState): Promise<string> {
  d.fingerprint ??= fingerprintFile(d.file);
  return d.fingerprint;
}

// ---------------------------------------------------------------------------------------------
// Model

/** Strips the folder all paths share, so "my-model/config.json" becomes "config.json". */
function folderFiles(files: { path: string; file: File }[], name?: string): ModelFiles {
  const paths = files.map((f) => f.path.replace(/\\/g, '/').replace(/^\/+/, ''));
  const dirs = paths.map((p) => p.split('/').slice(0, -1));
  let shared = 0;
  while (dirs.length > 0 && shared < dirs[0].length && dirs.every((d) => d[shared] === dirs[0][shared])) shared++;
  const map = new Map<string, Blob>();
  paths.forEach((p, i) => map.set(p.split('/').slice(shared).join('/'), files[i].file));
  const folder = shared > 0 ? dirs[0][shared - 1] : undefined;
  return modelFilesFromMap(name ?? folder ?? 'local model', map);
}

/** Module kind = the path after the layer index ("attn.c_attn"); target = its shortest unique suffix. */
function linearGroups(linears: LinearModuleInfo[]): LinearModuleGroup[] {
  const byKind = new Map<string, LinearModuleInfo[]>();
  for (const l of linears) {
    const kind = l.module.replace(/^.*?\.\d+\./, '');
    if (!byKind.has(kind)) byKind.set(kind, []);
    byKind.get(kind)!.push(l);
  }
  const kinds = [...byKind.keys()];
  return kinds.map((kind) => {
    const parts = kind.split('.');
    let target = kind;
    for (let n = 1; n <= parts.length; n++) {
      const suffix = parts.slice(-n).join('.');
      if (kinds.every((k) => k === kind || !(k === suffix || k.endsWith(`.${suffix}`)))) {
        target = suffix;
        break;
      }
    }
    const first = byKind.get(kind)![0];
    return { target, example: first.module, count: byKind.get(kind)!.length, inFeatures: first.inFeatures, outFeatures: first.outFeatures };
  });
}

async function loadModel(files: ModelFiles, source: 'hub' | 'folder', input: InputName): Promise<ModelSummary> {
  requireIdle('loading another model');
  const t0 = performance.now();
  const asInput = (e: unknown) => (e instanceof InputError ? e : new InputError(messageOf(e), input));
  emit({ type: 'progress', task: 'loadModel', message: 'Reading config.json and the weights' });
  let hf: HfModel;
  let tokenizer: TextTokenizer;
  try {
    hf = await loadHfModel(files);
    if (!hf.tokenizerJson) throw new InputError(`${hf.name}: tokenizer.json is missing; the folder needs the tokenizer files next to the weights.`, input);
    tokenizer = loadTokenizer(hf.tokenizerJson, hf.tokenizerConfig, { chatTemplate: hf.chatTemplate, name: hf.name });
    // Checked before the current model is freed, so a wrong pick does not cost the loaded model.
    if (hf.config.family !== 'gpt2' && hf.config.family !== 'llama') {
      throw new InputError(`${hf.name}: model_type "${hf.config.model_type}" is not a causal language model this app can train (an encoder such as BERT cannot generate text).`, input);
    }
  } catch (e) {
    throw asInput(e);
  }
  // Free the previous model's weights first: a GPU may not hold two models at once.
  if (model) {
    const old = model;
    model = null;
    examplesCache = null;
    if (gpu && !gpu.lost) old.loaded.model.destroy();
  }
  if (gpu?.lost) await init();
  const g = requireGpu();
  emit({ type: 'progress', task: 'loadModel', message: 'Uploading the weights to the GPU' });
  const before = g.allocatedBytes;
  let loaded: LoadedModel;
  try {
    loaded = loadCausalLM(g, hf);
    await g.sync();
  } catch (e) {
    // A load that failed part-way leaves the tensors it made with no handle to free them by; nothing
    // else lives on the device now (no model, no run), so a fresh device is the clean way back.
    if (g.allocatedBytes > before || g.lost) {
      g.device.destroy();
      gpu = null;
      await init().catch(() => undefined);
    }
    throw asInput(e);
  }
  const dims = dimsOf(hf.config);
  const groups = linearGroups(loaded.model.linearModules());
  const defaults = groups.filter((grp) => moduleMatches(grp.example, loaded.defaultLoraTargets)).map((grp) => grp.target);
  const summary: ModelSummary = {
    name: hf.name,
    source,
    modelType: hf.config.model_type,
    architecture: loaded.architecture,
    ...dims,
    vocabSize: hf.config.vocab_size,
    maxPositions: loaded.maxPositions,
    parameterCount: loaded.model.parameterCount(),
    storedDType: hf.tensorNames.length ? hf.tensorInfo(hf.tensorNames[0]).dtype : 'F32',
    weightBytes: loaded.model.weightBytes(),
    linearModules: groups,
    defaultTargets: defaults,
    loadMs: performance.now() - t0,
  };
  model = { hf, loaded, tokenizer, summary };
  examplesCache = null;
  return summary;
}

function dimsOf(c: HfConfig): { layers: number; hidden: number; heads: number } {
  switch (c.family) {
    case 'gpt2':
      return { layers: c.n_layer, hidden: c.n_embd, heads: c.n_head };
    case 'llama':
    case 'bert':
      return { layers: c.num_hidden_layers, hidden: c.hidden_size, heads: c.num_attention_heads };
    case 'distilbert':
      return { layers: c.n_layers, hidden: c.dim, heads: c.n_heads };
  }
}

async function downloadModel(repo: string, endpoint?: string): Promise<ModelSummary> {
  requireIdle('loading another model');
  try {
    validateRepoId(repo);
  } catch (e) {
    throw new InputError(messageOf(e), 'repoId');
  }
  if (endpoint !== undefined && !/^https?:\/\/[^/\s]+/i.test(endpoint)) {
    throw new InputError(`"${endpoint}" is not a web address: the endpoint looks like https://huggingface.co or a mirror's https://… address.`, 'repoId');
  }
  downloadAbort?.abort();
  const abort = new AbortController();
  downloadAbort = abort;
  let files: ModelFiles;
  try {
    files = await downloadHubModel(repo, {
      endpoint,
      cache: cacheStorageAvailable() ? cacheStorageModelCache() : null,
      signal: abort.signal,
      onProgress: (p) =>
        emit({
          type: 'progress',
          task: 'download',
          file: { file: p.file, loaded: p.fileLoaded, total: p.fileTotal, fromCache: p.fromCache },
          loaded: p.loaded,
          total: p.total,
        }),
    });
  } catch (e) {
    if ((e as Error)?.name === 'AbortError') {
      throw new InputError('Download cancelled. The bytes received are kept: downloading again continues where it stopped.', 'repoId');
    }
    throw new InputError(messageOf(e), 'repoId');
  } finally {
    if (downloadAbort === abort) downloadAbort = null;
  }
  return loadModel(files, 'hub', 'repoId');
}

// ---------------------------------------------------------------------------------------------
// Prepare: examples, statistics, parameter counts and memory

interface Prepared {
  result: PrepareResult;
  train: Example[];
  validation: Example[];
  targeted: LinearModuleInfo[];
  config: TrainConfig;
  /** The model and data this was prepared from (either may be replaced while a prepare awaits). */
  model: ModelState;
  data: DataState;
}

function limitsOf(m: ModelState): SettingLimits {
  return { maxPositions: m.summary.maxPositions, availableTargets: m.summary.linearModules.map((g) => g.target) };
}

/** The linear layers LoRA adapts for these target modules (PEFT's rules, 'all-linear' included). */
function targetedModules(m: ModelState, targetModules: readonly string[]): LinearModuleInfo[] {
  const linears = m.loaded.model.linearModules();
  return targetModules.includes(ALL_LINEAR) ? linears : linears.filter((l) => moduleMatches(l.module, targetModules));
}

/** Tokenizes the table (shared with a build already running for the same key), reporting progress. */
function examplesFor(d: DataState, m: ModelState, mapping: ColumnMapping, maxLength: number): Promise<BuiltExamples> {
  const key = JSON.stringify({ mapping, maxLength });
  if (examplesCache?.key === key && examplesCache.built) return examplesCache.built;
  // In the cache before the build starts: its first rows run before buildCausalExamplesAsync returns.
  const entry: NonNullable<typeof examplesCache> = { key, built: null };
  examplesCache = entry;
  const built = buildCausalExamplesAsync(d.table, mapping, m.tokenizer, {
    maxLength,
    onProgress: (fraction) => {
      if (examplesCache !== entry) throw new Superseded();
      emit({ type: 'progress', task: 'examples', fraction });
    },
  });
  entry.built = built;
  built.catch(() => {
    if (examplesCache === entry) examplesCache = null;
  });
  return built;
}

async function prepareRun(mapping: ColumnMapping, settings: TrainSettings): Promise<Prepared> {
  const d = data;
  const m = model;
  if (!d) throw new InputError('Load a data file first.', 'dataFile');
  if (!m) throw new InputError('Load a base model first.', 'modelFolder');
  const g = requireGpu();
  const bad = firstSettingError(validateSettings(settings, limitsOf(m)));
  if (bad) throw new InputError(bad[1], bad[0]);
  try {
    validateMapping(d.table, mapping);
  } catch (e) {
    throw new InputError(messageOf(e), /template/i.test(messageOf(e)) ? 'template' : 'mapping');
  }
  let built: BuiltExamples;
  try {
    built = await examplesFor(d, m, mapping, settings.maxLength);
  } catch (e) {
    if (e instanceof Superseded) throw new InputError(e.message, 'mapping');
    throw new InputError(messageOf(e), e instanceof DataError ? (/template/i.test(messageOf(e)) ? 'template' : 'mapping') : 'maxLength');
  }
  if (data !== d || model !== m) throw new InputError(new Superseded().message, d !== data ? 'dataFile' : 'modelFolder');
  const { examples, stats } = built;
  if (examples.length === 0) {
    const why = stats.skipped.rows.slice(0, 3).map((r) => `row ${r.row}: ${r.reason}`).join('; ');
    throw new InputError(`No row of ${d.table.fileName} gives a training example${why ? ` (${why})` : ''}. Check the column mapping.`, 'mapping');
  }
  const { train, validation } = splitTrainValidation(examples, settings.validationFraction, settings.seed);
  const seqLen = Math.min(sequenceLengthFor(examples, settings.maxLength), m.summary.maxPositions);
  const stepsPerEpoch = Trainer.stepsForEpochs(train.length, 1, settings.batchSize, settings.gradAccum);
  const totalSteps =
    settings.lengthUnit === 'epochs' ? Trainer.stepsForEpochs(train.length, settings.epochs, settings.batchSize, settings.gradAccum) : settings.steps;
  const warmupSteps = warmupStepsFromRatio(settings.warmupRatio, totalSteps);

  const targeted = targetedModules(m, settings.targetModules);
  if (targeted.length === 0) throw new InputError(`The target modules [${settings.targetModules.join(', ')}] match no layer of ${m.summary.name}.`, 'targetModules');
  const trainable = targeted.reduce((s, t) => s + settings.rank * (t.inFeatures + t.outFeatures), 0);
  const frozen = m.summary.parameterCount;
  const limits = g.info.limits;
  const memory = estimateTraining(
    m.loaded.model,
    { B: settings.batchSize, T: seqLen, rank: settings.rank, dropout: settings.dropout, targeted, hasValidation: validation.length > 0 },
    { maxBufferSize: limits.maxBufferSize, maxStorageBufferBindingSize: limits.maxStorageBufferBindingSize, isFallbackAdapter: g.info.isFallbackAdapter },
  );
  if (memory.largestBuffer > memory.bufferLimit) {
    throw new InputError(
      `A batch of ${settings.batchSize} × ${seqLen} tokens needs a ${fmtMiB(memory.largestBuffer)} buffer (${memory.largestBufferLabel}), more than this GPU allows in one buffer (${fmtMiB(memory.bufferLimit)}). Lower the batch size or max length.`,
      'batchSize',
    );
  }

  const first = examples[0];
  const decode = (ids: number[]) => m.tokenizer.decode(ids);
  const sample = first
    ? {
        row: first.row,
        context: decode(first.inputIds.filter((_, i) => first.labels[i] === IGNORE_INDEX)),
        target: decode(first.inputIds.filter((_, i) => first.labels[i] !== IGNORE_INDEX)),
      }
    : null;

  const config: TrainConfig = {
    ...DEFAULT_TRAIN_CONFIG,
    batchSize: settings.batchSize,
    gradAccumSteps: settings.gradAccum,
    totalSteps,
    seqLen,
    lr: settings.learningRate,
    warmupSteps,
    schedule: settings.schedule,
    weightDecay: settings.weightDecay,
    seed: settings.seed,
    // 0 = automatic: ten validation points over the run draw a curve, not a single dot.
    evalEvery: settings.evalEvery > 0 ? settings.evalEvery : Math.max(1, Math.ceil(totalSteps / 10)),
  };
  return {
    result: {
      stats,
      trainExamples: train.length,
      validationExamples: validation.length,
      seqLen,
      stepsPerEpoch,
      totalSteps,
      warmupSteps,
      params: { trainable, frozen, all: frozen + trainable, percent: (100 * trainable) / (frozen + trainable) },
      memory,
      sample,
    },
    train,
    validation,
    targeted,
    config,
    model: m,
    data: d,
  };
}

// ---------------------------------------------------------------------------------------------
// Training

function newRunId(): string {
  return `run-${Date.now().toString(36)}-${Math.floor(Math.random() * 1e9).toString(36)}`;
}

function baseModelInfo(m: ModelState): BaseModelInfo {
  const s = m.summary;
  return { name: s.name, source: s.source, modelType: s.modelType, layers: s.layers, hidden: s.hidden, vocabSize: s.vocabSize, parameterCount: s.parameterCount };
}

function deviceName(g: Gpu): string {
  const i = g.info;
  const name = i.description || [i.vendor, i.architecture, i.device].filter(Boolean).join(' ') || 'WebGPU adapter';
  return `${name}${i.isFallbackAdapter ? ' (software renderer, no GPU)' : ''}`;
}

async function createRun(
  mapping: ColumnMapping,
  settings: TrainSettings,
  adapterName: string,
  runId: string,
): Promise<RunState> {
  const name = adapterName.trim();
  if (!name) throw new InputError('Give the adapter a name.', 'adapterName');
  if (name.length > 120) throw new InputError('The adapter name is too long (120 characters at most).', 'adapterName');
  const prepared = await prepareRun(mapping, settings);
  const g = requireGpu();
  const m = prepared.model;
  const d = prepared.data;
  const fingerprint = await dataFingerprint(d);
  if (model !== m || data !== d) throw new InputError(new Superseded().message, model !== m ? 'modelFolder' : 'dataFile');
  const stepUniforms = new StepUniforms(g);
  let lora: Lora;
  try {
    lora = new Lora(
      g,
      { r: settings.rank, alpha: settings.alpha, dropout: settings.dropout, targetModules: settings.targetModules, useRslora: settings.useRslora },
      m.loaded.model.linearModules(),
      stepUniforms,
      seededRandom(settings.seed),
    );
  } catch (e) {
    throw new InputError(messageOf(e), e instanceof LoraError && /target/i.test(messageOf(e)) ? 'targetModules' : 'rank');
  }
  let trainer: Trainer;
  try {
    trainer = new Trainer(g, m.loaded.model, lora, prepared.train, prepared.validation, prepared.config, m.tokenizer.padId, stepUniforms);
    await g.sync();
  } catch (e) {
    lora.destroy();
    throw new InputError(`Could not set up training: ${messageOf(e)} Try a smaller batch size or max length.`, 'batchSize');
  }
  return {
    id: runId,
    name,
    trainer,
    lora,
    log: new RunLog(prepared.result.stepsPerEpoch),
    config: prepared.config,
    settings,
    mapping,
    stepsPerEpoch: prepared.result.stepsPerEpoch,
    trainCount: prepared.train.length,
    validationCount: prepared.validation.length,
    trainable: prepared.result.params.trainable,
    dataFingerprint: fingerprint,
    model: m,
    dataFileName: d.table.fileName,
    dataBytes: d.file.size,
    dataRows: d.table.rows.length,
    state: 'starting',
    pauseRequested: false,
    stopRequested: false,
    resumeWaiter: null,
    nextCheckpointAt: settings.checkpointEvery,
    lastCheckpointStep: -1,
    lastEvalStep: -1,
    activeMs: 0,
    segmentStart: null,
    sessionStartStep: 0,
    tokens: 0,
    pendingPoints: [],
    lastReport: null,
    lastStepEmit: 0,
  };
}

const STEP_EMIT_MS = 100;

function onStep(r: RunState, report: StepReport): void {
  r.log.step(report);
  r.tokens += report.tokens;
  r.pendingPoints.push({ step: report.step, loss: report.loss });
  r.lastReport = report;
  // Fast GPUs make hundreds of steps a second: batch them so the page re-renders at most ~10 times a second.
  if (report.step === report.totalSteps || performance.now() - r.lastStepEmit >= STEP_EMIT_MS) emitSteps(r);
}

/** Sends the steps not yet sent, with rates over the run's active (unpaused) time. */
function emitSteps(r: RunState): void {
  const report = r.lastReport;
  if (!report || r.pendingPoints.length === 0) return;
  const now = performance.now();
  r.lastStepEmit = now;
  const active = r.activeMs + (r.segmentStart === null ? 0 : now - r.segmentStart);
  const done = report.step - r.sessionStartStep;
  emit({
    type: 'step',
    runId: r.id,
    points: r.pendingPoints.splice(0),
    report: {
      step: report.step,
      totalSteps: report.totalSteps,
      epoch: report.step / r.stepsPerEpoch,
      loss: report.loss,
      lr: report.lr,
      gradNorm: report.gradNorm,
      tokensPerSecond: active > 0 ? r.tokens / (active / 1000) : 0,
      elapsedMs: active,
      etaMs: done > 0 ? (active / done) * (report.totalSteps - report.step) : 0,
      gpuBytes: gpu?.allocatedBytes ?? 0,
    },
  });
}

function onEval(r: RunState, step: number, evalLoss: number): void {
  r.log.eval({ step, evalLoss });
  r.lastEvalStep = step;
  emit({ type: 'eval', runId: r.id, step, evalLoss });
}

async function checkpoint(r: RunState): Promise<void> {
  const snap = await r.trainer.snapshot();
  const bytes = snap.params.reduce((s, p) => s + 3 * p.value.byteLength, 0);
  const meta: CheckpointMeta = {
    runId: r.id,
    adapterName: r.name,
    savedAt: Date.now(),
    step: snap.step,
    totalSteps: r.config.totalSteps,
    seqLen: r.config.seqLen,
    settings: r.settings,
    mapping: r.mapping,
    data: { fileName: r.dataFileName, fingerprint: r.dataFingerprint },
    baseModel: baseModelInfo(r.model),
    logHistory: r.log.history.slice(),
    adapterId: null,
    bytes,
  };
  await saveCheckpoint(meta, { runId: r.id, params: snap.params });
  r.lastCheckpointStep = snap.step;
  emit({ type: 'checkpointSaved', runId: r.id, checkpoint: meta });
}

/** Trains until done or stopped, pausing and checkpointing on the way, then saves the adapter. */
async function drive(r: RunState): Promise<void> {
  const t = r.trainer;
  const total = r.config.totalSteps;
  try {
    setState(r, 'training');
    for (;;) {
      r.segmentStart = performance.now();
      await t.run({
        onStep: (rep) => onStep(r, rep),
        onEval: (rep) => onEval(r, rep.step, rep.evalLoss),
        shouldStop: () => r.pauseRequested || r.stopRequested || t.step >= r.nextCheckpointAt,
      });
      r.activeMs += performance.now() - r.segmentStart;
      r.segmentStart = null;
      emitSteps(r);
      if (t.step >= total || r.stopRequested) break;
      if (t.step >= r.nextCheckpointAt) {
        await checkpoint(r);
        r.nextCheckpointAt = t.step + r.settings.checkpointEvery;
      }
      if (r.pauseRequested) {
        // A paused run survives a closed tab: its checkpoint can be resumed later.
        if (r.lastCheckpointStep !== t.step && t.step > 0) await checkpoint(r);
        setState(r, 'paused');
        await new Promise<void>((resolve) => (r.resumeWaiter = resolve));
        r.resumeWaiter = null;
        r.pauseRequested = false;
        if (r.stopRequested) break;
        setState(r, 'training');
      }
    }
    await finish(r);
  } catch (e) {
    emit({ type: 'error', runId: r.id, error: errorInfo(e, inputForTrainingError(e)) });
    endRun(r);
  }
}

async function finish(r: RunState): Promise<void> {
  const t = r.trainer;
  const g = requireGpu();
  const stoppedEarly = t.step < r.config.totalSteps;
  if (t.step === 0) {
    emit({ type: 'done', runId: r.id, adapter: null, stoppedEarly: true });
    endRun(r);
    return;
  }
  setState(r, 'saving');
  if (r.validationCount > 0 && r.lastEvalStep !== t.step) onEval(r, t.step, await t.evaluate());
  if (r.lastCheckpointStep !== t.step) await checkpoint(r);
  const runtimeS = r.activeMs / 1000;
  const log = r.log;
  log.finish(runtimeS, (t.step - r.sessionStartStep) * r.config.batchSize * r.config.gradAccumSteps);
  const files = await exportPeftAdapter(g, r.lora, r.model.summary.name);
  const finalLoss = log.lastStep?.loss ?? NaN;
  const finalEvalLoss = log.lastEval?.evalLoss ?? null;
  const device = deviceName(g);
  const config = { ...r.config };
  const readme = modelCard({
    baseModel: r.model.summary.name,
    method: 'LoRA',
    adapterSettings: { rank: r.settings.rank, alpha: r.settings.alpha, dropout: r.settings.dropout, 'target modules': r.settings.targetModules, rsLoRA: r.settings.useRslora },
    config,
    dataFile: r.dataFileName,
    dataColumns: describeMapping(r.mapping),
    trainExamples: r.trainCount,
    validationExamples: r.validationCount,
    trainableParams: r.trainable,
    totalParams: r.model.summary.parameterCount + r.trainable,
    finalLoss,
    finalEvalLoss,
    runtimeS,
    device,
  });
  const state = JSON.stringify(trainerState(log, config, r.stepsPerEpoch), null, 2) + '\n';
  const id = `adapter-${r.id.slice(4)}`;
  const fileBytes = files['adapter_config.json'].length + files['adapter_model.safetensors'].byteLength + readme.length + state.length;
  const meta: AdapterMeta = {
    id,
    runId: r.id,
    name: r.name,
    createdAt: Date.now(),
    method: 'lora',
    baseModel: baseModelInfo(r.model),
    settings: r.settings,
    mapping: r.mapping,
    data: {
      fileName: r.dataFileName,
      fingerprint: r.dataFingerprint,
      bytes: r.dataBytes,
      rows: r.dataRows,
      trainExamples: r.trainCount,
      validationExamples: r.validationCount,
    },
    metrics: { finalLoss, finalEvalLoss, steps: t.step, totalSteps: r.config.totalSteps, stoppedEarly, runtimeS },
    trainableParams: r.trainable,
    device,
    logHistory: log.history.slice(),
    bytes: fileBytes,
  };
  await saveAdapter(meta, {
    id,
    'adapter_config.json': files['adapter_config.json'],
    'adapter_model.safetensors': files['adapter_model.safetensors'],
    'README.md': readme,
    'trainer_state.json': state,
  });
  emit({ type: 'done', runId: r.id, adapter: meta, stoppedEarly });
  endRun(r);
}

function endRun(r: RunState): void {
  try {
    r.trainer.destroy();
    r.lora.destroy();
  } catch {
    // a lost device has nothing left to free
  }
  if (run === r) run = null;
  setState(null, 'idle');
}

function inputForTrainingError(e: unknown): InputName | undefined {
  const msg = messageOf(e);
  if (e instanceof TrainError && /learning rate/i.test(msg)) return 'learningRate';
  if (e instanceof GpuError) return /out of memory|buffer/i.test(msg) ? 'batchSize' : 'gpu';
  return undefined;
}

async function start(mapping: ColumnMapping, settings: TrainSettings, adapterName: string): Promise<{ runId: string; totalSteps: number }> {
  requireIdle('starting another run');
  const r = await createRun(mapping, settings, adapterName, newRunId());
  if (run) {
    endRun(r);
    throw new InputError('Another run started meanwhile.', 'gpu');
  }
  run = r;
  setState(r, 'starting');
  setTimeout(() => void drive(r), 0); // after the reply, so the page knows the run id first
  return { runId: r.id, totalSteps: r.config.totalSteps };
}

async function resumeCheckpoint(runId: string): Promise<Commands['resumeCheckpoint']['result']> {
  requireIdle('resuming another run');
  const saved = await getCheckpoint(runId);
  if (!saved) throw new InputError('That checkpoint is gone (deleted in another tab?).', 'checkpoint');
  const { meta, tensors } = saved;
  if (!model || model.summary.name !== meta.baseModel.name) {
    throw new InputError(`This run was trained on ${meta.baseModel.name}: load that model first.`, 'modelFolder');
  }
  if (!data) throw new InputError(`Load the data file the run was trained on (${meta.data.fileName}) first.`, 'dataFile');
  const fingerprint = await dataFingerprint(data);
  if (fingerprint !== meta.data.fingerprint) {
    throw new InputError(`The loaded data (${data.table.fileName}) is not the file this run was trained on (${meta.data.fileName}, same bytes needed).`, 'dataFile');
  }
  const r = await createRun(meta.mapping, meta.settings, meta.adapterName, meta.runId);
  try {
    if (r.config.seqLen !== meta.seqLen || r.config.totalSteps !== meta.totalSteps) {
      throw new InputError('The data or model no longer gives the same batches as when the checkpoint was saved.', 'checkpoint');
    }
    r.trainer.restore({ step: meta.step, params: tensors.params });
  } catch (e) {
    endRun(r);
    throw e instanceof InputError ? e : new InputError(`The checkpoint does not fit: ${messageOf(e)}`, 'checkpoint');
  }
  // Replay the log so the model card and trainer_state.json cover the whole run.
  for (const entry of meta.logHistory) replayLog(r.log, entry, meta.totalSteps);
  r.sessionStartStep = meta.step;
  r.lastCheckpointStep = meta.step;
  r.nextCheckpointAt = meta.step + meta.settings.checkpointEvery;
  r.lastEvalStep = [...meta.logHistory].reverse().find((e) => 'eval_loss' in e)?.step ?? -1;
  run = r;
  setState(r, 'starting');
  setTimeout(() => void drive(r), 0);
  const steps = meta.logHistory.flatMap((e) => ('loss' in e ? [{ step: e.step, loss: e.loss }] : []));
  const evals = meta.logHistory.flatMap((e) => ('eval_loss' in e ? [{ step: e.step, evalLoss: e.eval_loss }] : []));
  return { runId: r.id, totalSteps: meta.totalSteps, step: meta.step, adapterName: meta.adapterName, settings: meta.settings, history: { steps, evals } };
}

function replayLog(log: RunLog, e: LogEntry, totalSteps: number): void {
  if ('loss' in e) {
    log.step({ step: e.step, totalSteps, epoch: e.epoch, loss: e.loss, lr: e.learning_rate, gradNorm: e.grad_norm, tokens: 0, tokensPerSecond: 0, elapsedMs: 0, etaMs: 0 });
  } else if ('eval_loss' in e) {
    log.eval({ step: e.step, evalLoss: e.eval_loss });
  }
}

// ---------------------------------------------------------------------------------------------
// Errors and dispatch

function messageOf(e: unknown): string {
  if (e instanceof Error) return e.message;
  return String(e);
}

function fmtMiB(n: number): string {
  return `${(n / 2 ** 20).toFixed(1)} MiB`;
}

function errorInfo(e: unknown, fallback?: InputName): ErrorInfo {
  const name = e instanceof Error ? e.name : 'Error';
  if (e instanceof InputError) return { message: e.message, input: e.input, name };
  let input = fallback;
  if (e instanceof DataError) input ??= 'dataFile';
  else if (e instanceof HubError) input = 'repoId';
  else if (e instanceof ModelFileError || e instanceof SafetensorsError || e instanceof HfConfigError || e instanceof TokenizerError) input ??= 'modelFolder';
  else if (e instanceof GpuError) input ??= 'gpu';
  else if (e instanceof ProgramError && /sequence length/i.test(messageOf(e))) input = 'maxLength';
  return { message: messageOf(e), name, ...(input ? { input } : {}) };
}

const handlers: { [C in CommandName]: (params: Commands[C]['params']) => Promise<Commands[C]['result']> } = {
  init: () => init(),
  loadData: ({ file }) => loadData(file),
  loadModelFiles: ({ files, name }) => {
    if (files.length === 0) return Promise.reject(new InputError('The folder is empty.', 'modelFolder'));
    return loadModel(folderFiles(files, name), 'folder', 'modelFolder');
  },
  downloadModel: ({ repo, endpoint }) => downloadModel(repo.trim(), endpoint),
  prepare: async ({ mapping, settings }) => (await prepareRun(mapping, settings)).result,
  start: ({ mapping, settings, adapterName }) => start(mapping, settings, adapterName),
  resumeCheckpoint: ({ runId }) => resumeCheckpoint(runId),
  dataFingerprint: async () => ({ fingerprint: data ? await dataFingerprint(data) : null }),
};

function control(c: 'pause' | 'resume' | 'stop' | 'cancelDownload'): void {
  if (c === 'cancelDownload') {
    downloadAbort?.abort();
    return;
  }
  const r = run;
  if (!r) return;
  if (c === 'pause' && r.state === 'training') {
    r.pauseRequested = true;
    setState(r, 'pausing');
  } else if (c === 'resume' && r.state === 'paused') {
    r.resumeWaiter?.();
  } else if (c === 'stop' && (r.state === 'training' || r.state === 'paused' || r.state === 'pausing' || r.state === 'starting')) {
    r.stopRequested = true;
    setState(r, 'stopping');
    r.resumeWaiter?.();
  }
}

scope.addEventListener('message', (e: MessageEvent<PageToWorker>) => {
  const msg = e.data;
  if (msg.kind === 'control') {
    control(msg.control);
    return;
  }
  const { id, command } = msg;
  const handler = handlers[command] as (p: unknown) => Promise<unknown>;
  handler(msg.params).then(
    (result) => scope.postMessage({ kind: 'reply', id, command, ok: true, result } as WorkerToPage),
    (err: unknown) => {
      const fallback: Partial<Record<CommandName, InputName>> = { loadData: 'dataFile', loadModelFiles: 'modelFolder', downloadModel: 'repoId', init: 'gpu' };
      scope.postMessage({ kind: 'reply', id, command, ok: false, error: errorInfo(err, fallback[command]) } satisfies WorkerToPage);
    },
  );
});
