/// <reference lib="webworker" />
// The training worker: owns the GPU device, the loaded model, the parsed data and the running
// trainer, so that nothing heavy ever runs on the page's thread. It answers the commands of
// ./protocol.ts and pushes progress and training events.
//
// Two tasks, picked by the model: a causal LM (GPT-2, the Llama family) trains any adapter method
// of ./methods.ts on prompt/completion-style columns; an encoder (DistilBERT, BERT) trains a text
// classifier (a method of ./methods.ts for classification on the encoder + the head trained in
// full: PEFT task_type SEQ_CLS, or AdapterHub's files for bottleneck adapters) on a text and a
// label column. Both run
// through a TrainerSession (./sessions.ts), so pausing, checkpoints, resuming and saving are shared.

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
import { buildLabelMap, classCounts, type LabelMap } from '../data/labels';
import { classificationSequenceLength, validateClassificationMapping, type ClassificationExample, type ClassificationMapping, type ClassificationStats } from '../data/classification';
import { buildClassificationExamplesAsync, guessClassificationColumns, summarizeLabels, type LabelSummary } from '../data/classification-columns';
import { isSequenceClassifierFamily, loadCausalLM, loadSequenceClassifier, type LoadedModel, type LoadedSequenceClassifier } from '../engine/models/registry';
import type { FrozenStorage } from '../engine/models/weights';
import { plannedBytes, ProgramError } from '../engine/models/program';
import { createSeqClsAdapter, SeqClsAdapterError, type SequenceClassificationAdapter } from '../engine/models/sequence-classification';
import { EncoderMethodError } from '../engine/models/encoder-methods';
import { LoraError } from '../engine/peft/lora';
import { createPeftMethod, PeftSetupError, type PeftModelInfo } from '../engine/peft/factory';
import { importPeftAdapter } from '../engine/peft/import';
import { Ia3Error } from '../engine/peft/ia3';
import { BottleneckError } from '../engine/peft/bottleneck';
import { PromptTuningError } from '../engine/peft/prompt-tuning';
import { checkTensorCores } from '../engine/kernels/matmul-tc';
import { PrefixTuningError } from '../engine/peft/prefix-tuning';
import type { PeftMethod } from '../engine/peft/method';
import { StepUniforms } from '../engine/kernels/step-uniforms';
import { DEFAULT_TRAIN_CONFIG, DivergenceError, mixSeed, Trainer, TrainError, type StepReport, type TrainConfig } from '../engine/train/trainer';
import { ClassifierTrainer, type ClassifierTrainConfig } from '../engine/train/classifier-trainer';
import { warmupStepsFromRatio } from '../train/schedule';
import { estimateClassifierTraining, estimateTraining, headBuffers } from './memory';
import { bufferLimitRefusal } from './fit';
import { METHOD_BY_ID, type MethodId, type TaskKind } from './methods';
import { adapterPlan, causalPeftFacts, classifierPeftFacts, probeMethods } from './model-facts';
import { CausalSession, ClassifierSession, type TrainerSession } from './sessions';
import { DEFAULT_SETTINGS, firstSettingError, validateSettings, withDefaults, type SettingLimits, type SettingName, type TrainSettings } from './settings';
import { allowedHostsText, modelHostAllowed } from './network-policy';
import { classifyText, generateSideBySide, isGenerating, playgroundInfo, stopGeneration } from './playground';
import { mergedModelZip } from './merge-adapter';
import { AdapterImportError, collectAdapterFiles, importedAdapterRecord } from './import-adapter';
import { ExamplesCache, Superseded } from './examples-cache';
import {
  fingerprintFile,
  getCheckpoint,
  listAdapters,
  markCheckpointDiverged,
  saveAdapter,
  saveCheckpoint,
  StorageError,
  storageTestFaults,
  taskOf,
  type AdapterMeta,
  type BaseModelInfo,
  type CheckpointMeta,
} from './storage';
import type {
  BestEval,
  ClassifierHead,
  CommandName,
  Commands,
  DataSummary,
  ErrorInfo,
  EvalPoint,
  InitResult,
  InputName,
  MemoryEstimate,
  ModelSummary,
  PageToWorker,
  PrepareResult,
  RunMapping,
  StepPoint,
  TestHook,
  TestHookResult,
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
/** For the methods' probes at model load (one uniform buffer, kept). */
let probeUniforms: StepUniforms | null = null;

interface CausalModelState {
  task: 'causal-lm';
  hf: HfModel;
  /** Replaced when a run asks for the frozen weights in another dtype (settings.frozenWeights). */
  loaded: LoadedModel;
  /** How the frozen matrices are kept on the GPU now. */
  frozen: FrozenStorage;
  info: PeftModelInfo;
  tokenizer: TextTokenizer;
  summary: ModelSummary;
}

/** A classifier head is made from the run's seed mixed with this (as the CLI does). */
const HEAD_SEED_SALT = 0x4ead;
/** The seed of the head made at load: the default seed, so a first run with it needs no new head. */
const DEFAULT_SEED = DEFAULT_SETTINGS.seed;

interface ClassifierModelState {
  task: 'classification';
  hf: HfModel;
  /** Replaced when a run needs a head of another size or a fresh one (the head trains in place), or the frozen weights in another dtype. */
  loaded: LoadedSequenceClassifier;
  /** How the frozen matrices are kept on the GPU now (the head is f32 either way). */
  frozen: FrozenStorage;
  /** The head on the GPU: its number of labels, the seed it was made with, and whether a run has trained it since. */
  head: { numLabels: number; seed: number; fresh: boolean };
  tokenizer: TextTokenizer;
  summary: ModelSummary;
}

type ModelState = CausalModelState | ClassifierModelState;
let model: ModelState | null = null;
/** The loaded model's files: a lost GPU device takes the weights with it, and they upload again from these. */
let modelSource: { files: ModelFiles; source: 'hub' | 'folder'; input: InputName } | null = null;
/**
 * How the next model load keeps the frozen weights: what the page asked for with the load, or
 * the last run's settings.frozenWeights (a recovered device uploads the model as it was).
 */
let frozenPreference: FrozenStorage = 'f32';
/**
 * Serializes what replaces the loaded model's weights: start and resume (until `run` is set), a
 * preview's upload in another dtype (changeFrozenStorage), the playground's head swap.
 */
let modelLock: Promise<unknown> = Promise.resolve();
function underModelLock<T>(f: () => Promise<T>): Promise<T> {
  const result = modelLock.then(f, f);
  modelLock = result.catch(() => undefined);
  return result;
}

/** Set by init when the page was opened with ?test-hooks (the browser tests); TestHooks are refused otherwise. */
let testHooksEnabled = false;
/** The loseDevice test hook's step: the device is destroyed once a run reports it. */
let loseDeviceAtStep: number | null = null;
/** The poisonAdapter test hook's step: after it (and its checkpoint), the adapter's first tensor turns to NaN. */
let poisonAtStep: number | null = null;

interface DataState {
  file: File;
  table: Table;
  fingerprint: Promise<string> | null;
}
let data: DataState | null = null;

type BuiltExamples =
  | { task: 'causal-lm'; examples: Example[]; stats: ExampleStats }
  | { task: 'classification'; examples: ClassificationExample[]; stats: ClassificationStats; labelMap: LabelMap };

/** The tokenized examples, kept across setting changes (examples-cache.ts says when a build stops). */
const examplesCache = new ExamplesCache<BuiltExamples>();

let downloadAbort: AbortController | null = null;

interface RunState {
  id: string;
  name: string;
  task: TaskKind;
  session: TrainerSession;
  /** The run's per-step uniform buffer (freed with the session). */
  stepUniforms: StepUniforms;
  config: TrainConfig;
  settings: TrainSettings;
  mapping: RunMapping;
  stepsPerEpoch: number;
  trainCount: number;
  validationCount: number;
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
  /** The session's step when this session (start or resume from a checkpoint) began. */
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

let recovering: Promise<void> | null = null;

/**
 * After a lost device (driver reset, GPU crash, the tests' device.destroy()): a new device, and the
 * loaded model uploaded to it again from its files, so that training can go on without a reload.
 * Shared by whoever asks while it runs.
 */
function recoverDevice(): Promise<void> {
  // While it runs, the new device is there before the model is back on it: wait for both.
  if (recovering) return recovering;
  if (!gpu?.lost) return Promise.resolve();
  recovering = (async () => {
    try {
      const source = modelSource;
      if (model && source) await loadModel(source.files, source.source, source.input);
      else await init();
    } finally {
      recovering = null;
    }
  })();
  return recovering;
}

/** Whether `e` came from the device being lost (its lost promise settles a moment after the failing call). */
async function deviceWasLost(e: unknown): Promise<boolean> {
  const g = gpu;
  if (!g) return false;
  if (g.lost) return true;
  if (e instanceof TrainError || e instanceof StorageError || e instanceof InputError) return false;
  await Promise.race([g.device.lost, new Promise((resolve) => setTimeout(resolve, 1000))]);
  return g.lost !== null;
}

function requireIdle(what: string): void {
  if (run) throw new InputError(`Training is running: stop it before ${what}.`, 'gpu');
  if (isGenerating()) throw new InputError(`The playground is generating: stop it before ${what}.`, 'gpu');
}

function setState(r: RunState | null, state: TrainingState): void {
  if (r) r.state = state;
  emit({ type: 'trainingState', state, runId: r?.id ?? null });
}

// ---------------------------------------------------------------------------------------------
// init

async function init(params: { testHooks?: boolean } = {}): Promise<InitResult> {
  if (params.testHooks) testHooksEnabled = true;
  const nav = scope.navigator as WorkerNavigator & { gpu?: GPU };
  if (!nav.gpu) {
    throw new InputError('WebGPU is not available in this browser (navigator.gpu is missing in the worker).', 'gpu');
  }
  if (!gpu || gpu.lost) {
    gpu = await Gpu.create({ gpu: nav.gpu });
    // tensor cores whose kernels fail on this driver are refused: every product in f32
    await checkTensorCores(gpu);
    probeUniforms = null;
  }
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
  examplesCache.clear();
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
    guessedClassification: guessClassificationColumns(table),
    parseMs: performance.now() - t0,
  };
}

function dataFingerprint(d: DataState): Promise<string> {
  d.fingerprint ??= fingerprintFile(d.file);
  return d.fingerprint;
}

function classLabels(mapping: ClassificationMapping): LabelSummary {
  if (!data) throw new InputError('Load a data file first.', 'dataFile');
  try {
    validateClassificationMapping(data.table, mapping);
    return summarizeLabels(data.table, mapping);
  } catch (e) {
    throw new InputError(messageOf(e), 'mapping');
  }
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

/** The head's facts for the page: what trains in full, and how its size follows the labels. */
function classifierHead(loaded: LoadedSequenceClassifier): ClassifierHead {
  const m = loaded.model;
  const classifier = `base_model.model.${m.spec.head.classifier}.`;
  const size = (shape: number[]) => shape.reduce((a, b) => a * b, 1);
  const fixed = m.headParams.filter((p) => !p.name.startsWith(classifier)).reduce((s, p) => s + size(p.shape), 0);
  const trainedModules = [...new Set(m.headParams.map((p) => p.name.replace(/^base_model\.model\./, '').replace(/\.(weight|bias)$/, '')))];
  return { className: m.spec.className, trainedModules, fixedTrainable: fixed, perLabel: m.C + 1 };
}

function loadClassifier(g: Gpu, hf: HfModel, numLabels: number, seed: number, frozen: FrozenStorage): LoadedSequenceClassifier {
  return loadSequenceClassifier(g, hf, { numLabels, random: seededRandom(mixSeed(seed, HEAD_SEED_SALT)), frozen });
}

/**
 * Replaces the loaded model's GPU weights in place: frees them (two copies may not fit), then
 * `upload` sets m.loaded anew. Where the upload fails the old weights are gone too, so the model is
 * dropped (it must be loaded again) and the error goes on.
 */
async function replaceLoadedWeights(g: Gpu, m: ModelState, upload: () => void): Promise<void> {
  m.loaded.model.destroy();
  try {
    upload();
    await g.sync();
  } catch (e) {
    if (model === m) model = null;
    examplesCache.clear();
    throw e;
  }
}

async function loadModel(files: ModelFiles, source: 'hub' | 'folder', input: InputName, frozen: FrozenStorage = frozenPreference): Promise<ModelSummary> {
  requireIdle('loading another model');
  frozenPreference = frozen;
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
    const family = hf.config.family;
    if (family !== 'gpt2' && family !== 'llama' && !isSequenceClassifierFamily(hf)) {
      throw new InputError(`${hf.name}: model_type "${hf.config.model_type}" is not a model this app can train.`, input);
    }
  } catch (e) {
    throw asInput(e);
  }
  // Free the previous model's weights first: a GPU may not hold two models at once.
  if (model) {
    const old = model;
    model = null;
    examplesCache.clear();
    if (gpu && !gpu.lost) old.loaded.model.destroy();
  }
  if (gpu?.lost) await init();
  const g = requireGpu();
  emit({ type: 'progress', task: 'loadModel', message: 'Uploading the weights to the GPU' });
  const before = g.allocatedBytes;
  const base = {
    name: hf.name,
    source,
    modelType: hf.config.model_type,
    ...dimsOf(hf.config),
    vocabSize: hf.config.vocab_size,
    storedDType: hf.tensorNames.length ? hf.tensorInfo(hf.tensorNames[0]).dtype : 'F32',
    frozenDType: frozen,
  };
  let state: ModelState;
  try {
    if (isSequenceClassifierFamily(hf)) {
      // A head of 2 labels to start with; a run reloads it for the labels of its data.
      const loaded = loadClassifier(g, hf, 2, DEFAULT_SEED, frozen);
      await g.sync();
      const head = classifierHead(loaded);
      const m = loaded.model;
      const classifierModule = m.spec.head.classifier;
      state = {
        task: 'classification',
        hf,
        loaded,
        frozen,
        tokenizer,
        head: { numLabels: 2, seed: DEFAULT_SEED, fresh: true },
        summary: {
          ...base,
          architecture: loaded.architecture,
          task: 'classification',
          maxPositions: loaded.maxPositions,
          parameterCount: m.parameterCount() - m.K * head.perLabel,
          // The frozen part: the head trains, so it counts with the adapter.
          weightBytes: m.weightBytes() - plannedBytes(headBuffers(m, m.K)),
          peft: classifierPeftFacts(loaded),
          classifier: head,
          notes: [
            ...m.notes.filter((n) => !n.startsWith(`${classifierModule}:`)),
            `${classifierModule}: made for the labels of your data (initialized as transformers does: normal, std ${m.spec.dims.initializerRange}; bias 0)`,
          ],
          loadMs: 0,
        },
      };
    } else {
      const loaded = loadCausalLM(g, hf, { frozen });
      await g.sync();
      const { facts, info } = causalPeftFacts(hf.config, loaded);
      probeUniforms ??= new StepUniforms(g);
      facts.unavailable = probeMethods(g, loaded, info, facts, probeUniforms, hf.name);
      await g.sync();
      state = {
        task: 'causal-lm',
        hf,
        loaded,
        frozen,
        info,
        tokenizer,
        summary: {
          ...base,
          architecture: loaded.architecture,
          task: 'causal-lm',
          maxPositions: loaded.maxPositions,
          parameterCount: loaded.model.parameterCount(),
          weightBytes: loaded.model.weightBytes(),
          peft: facts,
          classifier: null,
          notes: [],
          loadMs: 0,
        },
      };
    }
  } catch (e) {
    // A load that failed part-way leaves the tensors it made with no handle to free them by; nothing
    // else lives on the device now (no model, no run), so a fresh device is the clean way back.
    if (g.allocatedBytes > before || g.lost) {
      g.device.destroy();
      gpu = null;
      probeUniforms = null;
      await init().catch(() => undefined);
    }
    throw asInput(e);
  }
  state.summary.loadMs = performance.now() - t0;
  model = state;
  modelSource = { files, source, input };
  examplesCache.clear();
  return state.summary;
}

/**
 * Uploads the loaded model's frozen weights again in `frozen` (settings.frozenWeights changed):
 * f16 takes about half the GPU memory of f32. The page gets the new summary (its weight bytes).
 */
async function changeFrozenStorage(m: ModelState, frozen: FrozenStorage): Promise<void> {
  requireIdle(`keeping the frozen weights in ${frozen}`);
  const g = requireGpu();
  emit({ type: 'progress', task: 'loadModel', message: `Uploading the weights to the GPU in ${frozen}` });
  try {
    await replaceLoadedWeights(g, m, () => {
      if (m.task === 'causal-lm') {
        m.loaded = loadCausalLM(g, m.hf, { frozen });
        m.info = causalPeftFacts(m.hf.config, m.loaded).info;
        m.summary.weightBytes = m.loaded.model.weightBytes();
      } else {
        m.loaded = loadClassifier(g, m.hf, m.head.numLabels, m.head.seed, frozen);
        m.head = { ...m.head, fresh: true }; // made anew from its seed: no run has trained it
        const cls = m.loaded.model;
        m.summary.weightBytes = cls.weightBytes() - plannedBytes(headBuffers(cls, cls.K));
      }
    });
  } catch (e) {
    throw new InputError(`Could not upload the weights in ${frozen}: ${messageOf(e)} Load the model again.`, 'frozenWeights');
  }
  m.frozen = frozen;
  frozenPreference = frozen;
  m.summary.frozenDType = frozen;
  emit({ type: 'modelSummary', summary: m.summary });
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

async function downloadModel(repo: string, endpoint?: string, frozen?: FrozenStorage): Promise<ModelSummary> {
  requireIdle('loading another model');
  try {
    validateRepoId(repo);
  } catch (e) {
    throw new InputError(messageOf(e), 'repoId');
  }
  if (endpoint !== undefined && !/^https?:\/\/[^/\s]+/i.test(endpoint)) {
    throw new InputError(`"${endpoint}" is not a web address: the endpoint looks like https://huggingface.co or a mirror's https://… address.`, 'repoId');
  }
  // The page's Content-Security-Policy would block any other host: say so before fetch() fails bare.
  if (endpoint !== undefined && !modelHostAllowed(endpoint)) {
    throw new InputError(
      `This app downloads models only from ${allowedHostsText()}: its Content-Security-Policy blocks ${new URL(endpoint).origin}, so that the page can reach no other server. To use another mirror, add it to src/worker/network-policy.ts and build the app.`,
      'repoId',
    );
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
  return loadModel(files, 'hub', 'repoId', frozen);
}

// ---------------------------------------------------------------------------------------------
// Prepare: examples, statistics, parameter counts and memory

interface PreparedCommon {
  config: TrainConfig;
  /** The model and data this was prepared from (either may be replaced while a prepare awaits). */
  model: ModelState;
  data: DataState;
}

type Prepared =
  | (PreparedCommon & { task: 'causal-lm'; result: PrepareResult & { task: 'causal-lm' }; train: Example[]; validation: Example[] })
  | (PreparedCommon & {
      task: 'classification';
      result: PrepareResult & { task: 'classification' };
      train: ClassificationExample[];
      validation: ClassificationExample[];
      labelMap: LabelMap;
      config: ClassifierTrainConfig;
    });

function limitsOf(m: ModelState): SettingLimits {
  return {
    maxPositions: m.summary.maxPositions,
    availableTargets: m.summary.peft.linearModules.map((g) => g.target),
    task: m.task,
    unavailable: m.summary.peft.unavailable,
  };
}

/**
 * Tokenizes the table (shared with a build already running for the same key), reporting progress.
 * `forRun`: for a run being set up, whose build a preview's does not stop.
 */
function examplesFor(d: DataState, m: ModelState, mapping: RunMapping, maxLength: number, forRun: boolean): Promise<BuiltExamples> {
  const key = JSON.stringify({ mapping, maxLength });
  const report = (fraction: number) => emit({ type: 'progress', task: 'examples', fraction });
  return examplesCache.get(key, forRun, async (onProgress): Promise<BuiltExamples> => {
    if (mapping.task === 'causal-lm') {
      const r = await buildCausalExamplesAsync(d.table, mapping.columns, m.tokenizer, { maxLength, onProgress });
      return { task: 'causal-lm', ...r };
    }
    const columns = mapping.columns;
    const labelMap = buildLabelMap(d.table.rows.map((r) => r[columns.label]));
    const r = await buildClassificationExamplesAsync(d.table, columns, m.tokenizer, { maxLength, labelMap, onProgress });
    return { task: 'classification', examples: r.examples, stats: r.stats, labelMap };
  }, report);
}

function fail(settingsError: [SettingName, string] | null): void {
  if (settingsError) throw new InputError(settingsError[1], settingsError[0]);
}

/** `forRun`: for a run being set up (createRun), which may upload the weights in another dtype; else a preview. */
async function prepareRun(mapping: RunMapping, settings: TrainSettings, forRun = false): Promise<Prepared> {
  const d = data;
  const m = model;
  if (!d) throw new InputError('Load a data file first.', 'dataFile');
  if (!m) throw new InputError('Load a base model first.', 'modelFolder');
  const g = requireGpu();
  // the products the run's programs will bind (and its memory estimate counts): on tensor cores
  // where the GPU has them, unless the settings say f32 (with f32 accuracy there for 'f32-tensor-cores')
  g.tuning.tensorCores = settings.precision !== 'f32';
  g.tuning.tensorCoreF32 = settings.precision === 'f32-tensor-cores';
  if (mapping.task !== m.task) {
    throw new InputError(
      m.task === 'classification'
        ? `${m.summary.name} is a text classifier: pick a text column and a label column.`
        : `${m.summary.name} generates text: pick the prompt and completion columns (a text classifier needs a DistilBERT or BERT model).`,
      'mapping',
    );
  }
  fail(firstSettingError(validateSettings(settings, limitsOf(m))));
  if (settings.frozenWeights !== m.frozen) {
    if (forRun) await changeFrozenStorage(m, settings.frozenWeights);
    else {
      // a preview uploads them only while no run is running (start and resume hold the lock until
      // they set it) and the playground is not generating: their programs read the weights it would
      // free; otherwise it estimates with the weights as they are
      await underModelLock(async () => {
        if (!run && !isGenerating() && model === m && m.frozen !== settings.frozenWeights) await changeFrozenStorage(m, settings.frozenWeights);
      });
    }
  }
  try {
    if (mapping.task === 'causal-lm') validateMapping(d.table, mapping.columns);
    // The label column must hold a few classes (the page shows the same check with the class balance).
    else summarizeLabels(d.table, mapping.columns);
  } catch (e) {
    throw new InputError(messageOf(e), /template/i.test(messageOf(e)) ? 'template' : 'mapping');
  }
  let built: BuiltExamples;
  try {
    built = await examplesFor(d, m, mapping, settings.maxLength, forRun);
  } catch (e) {
    if (e instanceof Superseded) throw new InputError(e.message, 'mapping');
    throw new InputError(messageOf(e), e instanceof DataError ? (/template/i.test(messageOf(e)) ? 'template' : 'mapping') : 'maxLength');
  }
  if (data !== d || model !== m) throw new InputError(new Superseded().message, d !== data ? 'dataFile' : 'modelFolder');
  if (built.examples.length === 0) {
    const why = built.stats.skipped.rows.slice(0, 3).map((r) => `row ${r.row}: ${r.reason}`).join('; ');
    throw new InputError(`No row of ${d.table.fileName} gives a training example${why ? ` (${why})` : ''}. Check the column mapping.`, 'mapping');
  }
  const limits = g.info.limits;
  const device = { maxBufferSize: limits.maxBufferSize, maxStorageBufferBindingSize: limits.maxStorageBufferBindingSize, isFallbackAdapter: g.info.isFallbackAdapter };
  const descriptor = METHOD_BY_ID[settings.method];
  const lengthOf = (train: number) => {
    const stepsPerEpoch = Trainer.stepsForEpochs(train, 1, settings.batchSize, settings.gradAccum);
    const totalSteps = settings.lengthUnit === 'epochs' ? Trainer.stepsForEpochs(train, settings.epochs, settings.batchSize, settings.gradAccum) : settings.steps;
    return { stepsPerEpoch, totalSteps, warmupSteps: warmupStepsFromRatio(settings.warmupRatio, totalSteps) };
  };
  const configOf = (seqLen: number, totalSteps: number, warmupSteps: number): TrainConfig => ({
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
  });
  /** Refuses a run whose largest buffer is over the GPU's limit, naming the batch size and length that fit. */
  const checkBuffer = (seqLen: number, estimateAt: (B: number, T: number) => MemoryEstimate) => {
    const refusal = bufferLimitRefusal(settings.batchSize, seqLen, estimateAt);
    if (refusal) throw new InputError(refusal.message, 'batchSize');
  };

  if (built.task === 'causal-lm' && m.task === 'causal-lm') {
    const { examples, stats } = built;
    const { train, validation } = splitTrainValidation(examples, settings.validationFraction, settings.seed);
    // Prompt and prefix tuning's virtual tokens take positions too.
    const extra = descriptor.extraPositions(settings);
    const seqLen = Math.min(sequenceLengthFor(examples, settings.maxLength), m.summary.maxPositions - extra);
    const { stepsPerEpoch, totalSteps, warmupSteps } = lengthOf(train.length);
    const facts = m.summary.peft;
    const plan = adapterPlan(settings, facts, m.loaded.model.linearModules(), g.tuning);
    if ((plan.kind === 'lora' || plan.kind === 'dora') && plan.targeted.length === 0) throw new InputError(`The target modules [${settings.targetModules.join(', ')}] match no layer of ${m.summary.name}.`, 'targetModules');
    if (plan.kind === 'ia3' && plan.targeted.length === 0) throw new InputError(`The target modules [${settings.ia3Targets.join(', ')}] match no layer of ${m.summary.name}.`, 'ia3Targets');
    const trainable = descriptor.trainableParams(settings, facts);
    const frozen = m.summary.parameterCount;
    const estimateAt = (B: number, T: number) => estimateTraining(m.loaded.model, { B, T, adapter: plan, hasValidation: validation.length > 0 }, device);
    const memory = estimateAt(settings.batchSize, seqLen);
    checkBuffer(seqLen, estimateAt);
    const first = examples[0];
    const decode = (ids: number[]) => m.tokenizer.decode(ids);
    const sample = first
      ? {
          row: first.row,
          context: decode(first.inputIds.filter((_, i) => first.labels[i] === IGNORE_INDEX)),
          target: decode(first.inputIds.filter((_, i) => first.labels[i] !== IGNORE_INDEX)),
        }
      : null;
    return {
      task: 'causal-lm',
      result: {
        task: 'causal-lm',
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
      config: configOf(seqLen, totalSteps, warmupSteps),
      model: m,
      data: d,
    };
  }
  if (built.task !== 'classification' || m.task !== 'classification') throw new Error('unreachable: task mismatch');
  const { examples, stats, labelMap } = built;
  const K = labelMap.names.length;
  const { train, validation } = splitTrainValidation(examples, settings.validationFraction, settings.seed);
  if (validation.length === 0) {
    throw new InputError(`${examples.length} examples leave none for validation at ${(settings.validationFraction * 100).toFixed(0)} %: raise the validation split or add rows.`, 'validationFraction');
  }
  // Prompt tuning's virtual tokens take positions too.
  const seqLen = Math.min(classificationSequenceLength(examples, settings.maxLength), m.summary.maxPositions - descriptor.extraPositions(settings));
  const { stepsPerEpoch, totalSteps, warmupSteps } = lengthOf(train.length);
  const facts = m.summary.peft;
  const plan = adapterPlan(settings, facts, m.loaded.model.linearModules(), g.tuning);
  if ((plan.kind === 'lora' || plan.kind === 'dora') && plan.targeted.length === 0) throw new InputError(`The target modules [${settings.targetModules.join(', ')}] match no layer of ${m.summary.name}.`, 'targetModules');
  if (plan.kind === 'ia3' && plan.targeted.length === 0) throw new InputError(`The target modules [${settings.ia3Targets.join(', ')}] match no layer of ${m.summary.name}.`, 'ia3Targets');
  const head = m.summary.classifier!;
  const methodCount = descriptor.trainableParams(settings, facts);
  const headCount = head.fixedTrainable + K * head.perLabel;
  const trainable = methodCount + headCount;
  // As the CLI counts: the whole classifier (head included) plus the method's tensors.
  const all = m.summary.parameterCount + K * head.perLabel + methodCount;
  const estimateAt = (B: number, T: number) => estimateClassifierTraining(m.loaded.model, { B, T, K, adapter: plan, hasValidation: true }, device);
  const memory = estimateAt(settings.batchSize, seqLen);
  checkBuffer(seqLen, estimateAt);
  const first = examples[0];
  const config: ClassifierTrainConfig = {
    ...configOf(seqLen, totalSteps, warmupSteps),
    metricForBest: settings.metricForBest,
    // The worker puts the best evaluation back itself when the run ends (ClassifierSession.finish).
    loadBestAtEnd: false,
  };
  return {
    task: 'classification',
    result: {
      task: 'classification',
      stats,
      labels: [...labelMap.names],
      trainCounts: classCounts(train.map((e) => e.label), K),
      validationCounts: classCounts(validation.map((e) => e.label), K),
      trainExamples: train.length,
      validationExamples: validation.length,
      seqLen,
      stepsPerEpoch,
      totalSteps,
      warmupSteps,
      params: { trainable, frozen: all - trainable, all, percent: (100 * trainable) / all },
      memory,
      sample: first ? { row: first.row, text: m.tokenizer.decode(first.inputIds), label: labelMap.names[first.label] } : null,
    },
    train,
    validation,
    labelMap,
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

/** The setting an adapter method's refusal is about. */
function inputForMethodError(e: unknown, method: MethodId): InputName {
  const msg = messageOf(e);
  if (e instanceof LoraError) return /target/i.test(msg) ? 'targetModules' : 'rank'; // DoRA's errors too
  if (e instanceof Ia3Error) return /feedforward/i.test(msg) ? 'ia3Feedforward' : 'ia3Targets';
  if (e instanceof PromptTuningError) return /text/i.test(msg) ? 'promptInitText' : 'virtualTokens';
  if (e instanceof PrefixTuningError) return /encoder/i.test(msg) ? 'encoderHiddenSize' : 'virtualTokens';
  if (e instanceof BottleneckError) return /name/i.test(msg) ? 'bottleneckName' : /reduction/i.test(msg) ? 'reductionFactor' : 'bottleneckType';
  if (e instanceof EncoderMethodError && /target/i.test(msg)) return 'targetModules'; // all-linear on a classifier (LoRA, DoRA)
  if (e instanceof PeftSetupError || e instanceof ProgramError || e instanceof EncoderMethodError || e instanceof SeqClsAdapterError) return 'method';
  return method === 'lora' ? 'rank' : 'method';
}

function describeRunMapping(mapping: RunMapping): string {
  return mapping.task === 'causal-lm' ? describeMapping(mapping.columns) : `text "${mapping.columns.text}", label "${mapping.columns.label}"`;
}

async function createRun(mapping: RunMapping, settings: TrainSettings, adapterName: string, runId: string): Promise<RunState> {
  const name = adapterName.trim();
  if (!name) throw new InputError('Give the adapter a name.', 'adapterName');
  if (name.length > 120) throw new InputError('The adapter name is too long (120 characters at most).', 'adapterName');
  const prepared = await prepareRun(mapping, settings, true);
  const g = requireGpu();
  const m = prepared.model;
  const d = prepared.data;
  const fingerprint = await dataFingerprint(d);
  if (model !== m || data !== d) throw new InputError(new Superseded().message, model !== m ? 'modelFolder' : 'dataFile');
  const stepUniforms = new StepUniforms(g);
  const descriptor = METHOD_BY_ID[settings.method];
  const { params } = prepared.result;
  let session: TrainerSession;
  if (prepared.task === 'causal-lm' && m.task === 'causal-lm') {
    let method: PeftMethod;
    try {
      method = createPeftMethod(g, descriptor.spec(settings, m.summary.name), m.info, m.loaded.model, stepUniforms, {
        random: seededRandom(settings.seed),
        tokenize: (text) => m.tokenizer.encode(text, { addSpecialTokens: true }),
      });
    } catch (e) {
      throw new InputError(`${descriptor.name}: ${messageOf(e)}`, inputForMethodError(e, settings.method));
    }
    let trainer: Trainer;
    try {
      trainer = await g.allocating('the training programs', () => new Trainer(g, m.loaded.model, method, prepared.train, prepared.validation, prepared.config, m.tokenizer.padId, stepUniforms));
      await g.sync();
    } catch (e) {
      method.destroy?.();
      if (e instanceof ProgramError && !/buffer|memory/i.test(messageOf(e))) throw new InputError(`${descriptor.name}: ${messageOf(e)}`, 'method');
      throw new InputError(`Could not set up training: ${messageOf(e)} Try a smaller batch size or max length.`, 'batchSize');
    }
    session = new CausalSession(g, trainer, method, descriptor, settings, prepared.result.stepsPerEpoch, params.trainable, params.all);
  } else if (prepared.task === 'classification' && m.task === 'classification') {
    const K = prepared.labelMap.names.length;
    // A fresh head of the data's size, made from the run's seed (the loaded one may have been trained).
    if (!(m.head.fresh && m.head.numLabels === K && m.head.seed === settings.seed)) {
      try {
        await replaceLoadedWeights(g, m, () => {
          m.loaded = loadClassifier(g, m.hf, K, settings.seed, m.frozen);
          m.head = { numLabels: K, seed: settings.seed, fresh: true };
        });
      } catch (e) {
        throw new InputError(`Could not make the classification head: ${messageOf(e)} Load the model again.`, 'modelFolder');
      }
    }
    const cls = m.loaded.model;
    let adapter: SequenceClassificationAdapter;
    try {
      // The method the settings ask for on the encoder (as the CLI makes it), the head beside it.
      adapter = createSeqClsAdapter(g, descriptor.spec(settings, m.summary.name), cls, stepUniforms, seededRandom(settings.seed), (text) =>
        m.tokenizer.encode(text, { addSpecialTokens: true }),
      );
    } catch (e) {
      throw new InputError(`${descriptor.name}: ${messageOf(e)}`, inputForMethodError(e, settings.method));
    }
    m.head.fresh = false; // trained in place from here on
    let trainer: ClassifierTrainer;
    try {
      trainer = await g.allocating('the training programs', () => new ClassifierTrainer(g, cls, adapter, prepared.train, prepared.validation, prepared.config, m.tokenizer.padId, stepUniforms));
      await g.sync();
    } catch (e) {
      adapter.destroy();
      if (e instanceof ProgramError && !/buffer|memory/i.test(messageOf(e))) throw new InputError(`${descriptor.name}: ${messageOf(e)}`, 'method');
      throw new InputError(`Could not set up training: ${messageOf(e)} Try a smaller batch size or max length.`, 'batchSize');
    }
    session = new ClassifierSession(
      g,
      trainer,
      adapter,
      cls,
      prepared.labelMap,
      {
        modelClass: cls.spec.className,
        headModules: m.summary.classifier!.trainedModules,
        trainCounts: prepared.result.trainCounts,
        settings,
        descriptor,
        stepsPerEpoch: prepared.result.stepsPerEpoch,
      },
      params.trainable,
      params.all,
    );
  } else {
    throw new Error('unreachable: task mismatch');
  }
  return {
    id: runId,
    name,
    task: m.task,
    session,
    stepUniforms,
    config: prepared.config,
    settings,
    mapping,
    stepsPerEpoch: prepared.result.stepsPerEpoch,
    trainCount: prepared.train.length,
    validationCount: prepared.validation.length,
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
  r.session.log.step(report);
  r.tokens += report.tokens;
  r.pendingPoints.push({ step: report.step, loss: report.loss });
  r.lastReport = report;
  if (loseDeviceAtStep !== null && report.step >= loseDeviceAtStep) {
    loseDeviceAtStep = null;
    gpu?.device.destroy();
  }
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

function onEval(r: RunState, point: EvalPoint): void {
  r.lastEvalStep = point.step;
  // The step events before it first, so the page never sees an evaluation ahead of its step.
  emitSteps(r);
  emit({ type: 'eval', runId: r.id, point, best: r.session.best() });
}

async function checkpoint(r: RunState): Promise<void> {
  const snap = await r.session.snapshot();
  const bytes = snap.params.reduce((s, p) => s + 3 * p.value.byteLength, 0) + (snap.best ?? []).reduce((s, p) => s + p.value.byteLength, 0);
  const classification = r.session.checkpointExtra();
  const meta: CheckpointMeta = {
    runId: r.id,
    adapterName: r.name,
    savedAt: Date.now(),
    step: snap.step,
    totalSteps: r.config.totalSteps,
    seqLen: r.config.seqLen,
    settings: r.settings,
    task: r.task,
    mapping: r.mapping.columns,
    data: { fileName: r.dataFileName, fingerprint: r.dataFingerprint },
    baseModel: baseModelInfo(r.model),
    logHistory: r.session.log.history.slice(),
    ...(classification ? { classification } : {}),
    adapterId: null,
    bytes,
  };
  await saveCheckpoint(meta, { runId: r.id, params: snap.params, ...(snap.best ? { best: snap.best } : {}) });
  r.lastCheckpointStep = snap.step;
  emit({ type: 'checkpointSaved', runId: r.id, checkpoint: meta });
}

/**
 * Runs a save (a checkpoint, the adapter). When the browser refuses it (storage full, a failed
 * write) the run does not end: it waits, paused, with its weights still on the GPU, says why, and
 * tries again on Resume, once the user has made room. Stop gives up (the error ends the run; the
 * last checkpoint that was saved stays whole, see saveCheckpoint).
 */
async function saveOrWait(r: RunState, save: () => Promise<void>, stateAfter: TrainingState): Promise<void> {
  for (;;) {
    try {
      await save();
      return;
    } catch (e) {
      if (!(e instanceof StorageError)) throw e;
      emitSteps(r);
      emit({ type: 'saveFailed', runId: r.id, error: errorInfo(e) });
      setState(r, 'paused');
      await new Promise<void>((resolve) => (r.resumeWaiter = resolve));
      r.resumeWaiter = null;
      r.pauseRequested = false;
      if (r.stopRequested) throw e;
      setState(r, stateAfter);
    }
  }
}

/** Trains until done or stopped, pausing and checkpointing on the way, then saves the adapter. */
async function drive(r: RunState): Promise<void> {
  const t = r.session;
  const total = r.config.totalSteps;
  try {
    setState(r, 'training');
    for (;;) {
      r.segmentStart = performance.now();
      await t.run({
        onStep: (rep) => onStep(r, rep),
        onEval: (p) => onEval(r, p),
        shouldStop: () => r.pauseRequested || r.stopRequested || t.step >= r.nextCheckpointAt || (poisonAtStep !== null && t.step >= poisonAtStep),
      });
      r.activeMs += performance.now() - r.segmentStart;
      r.segmentStart = null;
      emitSteps(r);
      if (t.step >= total || r.stopRequested) break;
      if (t.step >= r.nextCheckpointAt) {
        await saveOrWait(r, () => checkpoint(r), 'training');
        r.nextCheckpointAt = t.step + r.settings.checkpointEvery;
        if (r.stopRequested) break;
      }
      if (poisonAtStep !== null && t.step >= poisonAtStep) await poisonAdapter(r);
      if (r.pauseRequested) {
        // A paused run survives a closed tab: its checkpoint can be resumed later.
        if (r.lastCheckpointStep !== t.step && t.step > 0) await saveOrWait(r, () => checkpoint(r), 'pausing');
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
    if (await deviceWasLost(e)) {
      // The weights on the GPU are gone; the last checkpoint in IndexedDB is what is left. The run
      // ends, a new device is made and the model uploaded to it, and the page offers to resume.
      const kept = r.lastCheckpointStep > 0 ? r.lastCheckpointStep : null;
      const why = (gpu?.lost ?? 'the GPU device was lost').replace(/[.\s]+$/, '');
      const message =
        `${why.charAt(0).toUpperCase()}${why.slice(1)}. Training stopped after step ${r.lastReport?.step ?? r.sessionStartStep}; ` +
        (kept !== null ? `the checkpoint at step ${kept} is kept: resume from it on a new GPU device.` : 'no checkpoint was saved yet: start the run again.');
      emit({ type: 'error', runId: r.id, error: { message, name: 'DeviceLost', input: 'gpu', ...(kept !== null ? { resumable: true } : {}) } });
      endRun(r);
      // Ready for the page's Resume: a new device with the model on it. A failure here says so now.
      void recoverDevice().catch((err: unknown) => emit({ type: 'error', runId: r.id, error: { ...errorInfo(err, 'gpu'), message: `${message} But a new GPU device could not be set up: ${messageOf(err)}` } }));
      return;
    }
    if (e instanceof DivergenceError) {
      // resuming from the kept checkpoint would replay the same steps into the same divergence
      await markCheckpointDiverged(r.id, { step: e.step, message: e.message }).catch(() => undefined);
    }
    emit({ type: 'error', runId: r.id, error: errorInfo(e, inputForTrainingError(e)) });
    endRun(r);
  }
}

async function finish(r: RunState): Promise<void> {
  const t = r.session;
  const g = requireGpu();
  const stoppedEarly = t.step < r.config.totalSteps;
  if (t.step === 0) {
    emit({ type: 'done', runId: r.id, adapter: null, stoppedEarly: true });
    endRun(r);
    return;
  }
  setState(r, 'saving');
  if (r.validationCount > 0 && r.lastEvalStep !== t.step) onEval(r, await t.evaluateNow());
  if (r.lastCheckpointStep !== t.step) await saveOrWait(r, () => checkpoint(r), 'saving');
  const runtimeS = r.activeMs / 1000;
  const device = deviceName(g);
  const out = await t.finish({
    baseModel: r.model.summary.name,
    runtimeS,
    samples: (t.step - r.sessionStartStep) * r.config.batchSize * r.config.gradAccumSteps,
    dataFile: r.dataFileName,
    dataColumns: describeRunMapping(r.mapping),
    trainExamples: r.trainCount,
    validationExamples: r.validationCount,
    device,
  });
  const files = out.files;
  const id = `adapter-${r.id.slice(4)}`;
  const fileBytes =
    files['adapter_config.json'].length + files.weights.byteLength + files['README.md'].length + files['trainer_state.json'].length + (files.head ? files.head.config.length + files.head.weights.byteLength : 0);
  const log = t.log;
  const meta: AdapterMeta = {
    id,
    runId: r.id,
    name: r.name,
    createdAt: Date.now(),
    method: r.settings.method,
    task: r.task,
    baseModel: baseModelInfo(r.model),
    settings: r.settings,
    mapping: r.mapping.columns,
    data: {
      fileName: r.dataFileName,
      fingerprint: r.dataFingerprint,
      bytes: r.dataBytes,
      rows: r.dataRows,
      trainExamples: r.trainCount,
      validationExamples: r.validationCount,
    },
    metrics: {
      finalLoss: log.lastStep?.loss ?? NaN,
      finalEvalLoss: out.finalEvalLoss,
      steps: t.step,
      totalSteps: r.config.totalSteps,
      stoppedEarly,
      runtimeS,
      ...(out.classification ? { classification: out.classification } : {}),
    },
    trainableParams: t.trainable,
    device,
    logHistory: log.history.slice(),
    bytes: fileBytes,
  };
  const adapterFiles = {
    id,
    'adapter_config.json': files['adapter_config.json'],
    'README.md': files['README.md'],
    'trainer_state.json': files['trainer_state.json'],
    // PEFT's weights file, or AdapterHub's for bottleneck adapters (with a classifier's static head)
    ...(files.weightsName === 'adapter.safetensors' ? { 'adapter.safetensors': files.weights } : { 'adapter_model.safetensors': files.weights }),
    ...(files.head ? { 'head_config.json': files.head.config, 'model_head.safetensors': files.head.weights } : {}),
  };
  await saveOrWait(r, () => saveAdapter(meta, adapterFiles), 'saving');
  emit({ type: 'done', runId: r.id, adapter: meta, stoppedEarly });
  endRun(r);
}

function endRun(r: RunState): void {
  try {
    r.session.destroy();
    r.stepUniforms.buffer.destroy();
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

function start(mapping: RunMapping, settings: TrainSettings, adapterName: string): Promise<Commands['start']['result']> {
  return underModelLock(() => startRun(mapping, settings, adapterName));
}

async function startRun(mapping: RunMapping, settings: TrainSettings, adapterName: string): Promise<Commands['start']['result']> {
  requireIdle('starting another run');
  await recoverDevice();
  const r = await createRun(mapping, withDefaults(settings), adapterName, newRunId());
  if (run) {
    endRun(r);
    throw new InputError('Another run started meanwhile.', 'gpu');
  }
  run = r;
  setState(r, 'starting');
  setTimeout(() => void drive(r), 0); // after the reply, so the page knows the run id first
  return { runId: r.id, totalSteps: r.config.totalSteps, task: r.task, labels: r.session.checkpointExtra()?.labels ?? null };
}

/** The mapping a stored checkpoint was trained with (records from before classification are causal). */
function runMappingOf(meta: CheckpointMeta): RunMapping {
  return taskOf(meta) === 'classification'
    ? { task: 'classification', columns: meta.mapping as ClassificationMapping }
    : { task: 'causal-lm', columns: meta.mapping as ColumnMapping };
}

function resumeCheckpoint(runId: string): Promise<Commands['resumeCheckpoint']['result']> {
  return underModelLock(() => resumeRun(runId));
}

async function resumeRun(runId: string): Promise<Commands['resumeCheckpoint']['result']> {
  requireIdle('resuming another run');
  await recoverDevice();
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
  const mapping = runMappingOf(meta);
  const settings = withDefaults(meta.settings);
  const r = await createRun(mapping, settings, meta.adapterName, meta.runId);
  const extra = meta.classification;
  try {
    if (r.config.seqLen !== meta.seqLen || r.config.totalSteps !== meta.totalSteps) {
      throw new InputError('The data or model no longer gives the same batches as when the checkpoint was saved.', 'checkpoint');
    }
    const labels = r.session.checkpointExtra()?.labels;
    if (labels && extra && labels.join('\u0000') !== extra.labels.join('\u0000')) {
      throw new InputError(`The labels of the data (${labels.join(', ')}) are not the run's (${extra.labels.join(', ')}).`, 'checkpoint');
    }
    r.session.restore({ step: meta.step, params: tensors.params, best: tensors.best }, extra?.best ?? null);
    // Replay the log so the model card and trainer_state.json cover the whole run.
    for (const entry of meta.logHistory) r.session.replay(entry, extra?.evals ?? []);
  } catch (e) {
    endRun(r);
    throw e instanceof InputError ? e : new InputError(`The checkpoint does not fit: ${messageOf(e)}`, 'checkpoint');
  }
  r.sessionStartStep = meta.step;
  r.lastCheckpointStep = meta.step;
  r.nextCheckpointAt = meta.step + settings.checkpointEvery;
  r.lastEvalStep = [...meta.logHistory].reverse().find((e) => 'eval_loss' in e)?.step ?? -1;
  run = r;
  setState(r, 'starting');
  setTimeout(() => void drive(r), 0);
  const steps = meta.logHistory.flatMap((e) => ('loss' in e ? [{ step: e.step, loss: e.loss }] : []));
  const evals: EvalPoint[] = extra?.evals ?? meta.logHistory.flatMap((e) => ('eval_loss' in e ? [{ step: e.step, evalLoss: e.eval_loss }] : []));
  const best: BestEval | null = extra?.best ?? null;
  return {
    runId: r.id,
    totalSteps: meta.totalSteps,
    task: r.task,
    labels: extra?.labels ?? null,
    step: meta.step,
    adapterName: meta.adapterName,
    settings,
    mapping,
    history: { steps, evals },
    best,
  };
}

// ---------------------------------------------------------------------------------------------
// Errors and dispatch

function messageOf(e: unknown): string {
  if (e instanceof Error) return e.message;
  return String(e);
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
  init: (params) => init(params),
  loadData: ({ file }) => loadData(file),
  loadModelFiles: ({ files, name, frozen }) => {
    if (files.length === 0) return Promise.reject(new InputError('The folder is empty.', 'modelFolder'));
    return loadModel(folderFiles(files, name), 'folder', 'modelFolder', frozen);
  },
  downloadModel: ({ repo, endpoint, frozen }) => downloadModel(repo.trim(), endpoint, frozen),
  prepare: async ({ mapping, settings }) => {
    await recoverDevice();
    return (await prepareRun(mapping, withDefaults(settings))).result;
  },
  start: ({ mapping, settings, adapterName }) => start(mapping, settings, adapterName),
  resumeCheckpoint: ({ runId }) => resumeCheckpoint(runId),
  dataFingerprint: async () => ({ fingerprint: data ? await dataFingerprint(data) : null }),
  classLabels: async ({ mapping }) => classLabels(mapping),
  testHook: (hook) => testHook(hook),
  playgroundInfo: async () => {
    if (!model) throw new InputError('Load a model first.', 'modelFolder');
    return playgroundInfo(model);
  },
  generate: async (params) => {
    requireIdle('generating');
    await recoverDevice();
    const m = model;
    if (!m) throw new InputError('Load a model first.', 'modelFolder');
    if (m.task !== 'causal-lm') throw new InputError(`${m.summary.name} is a classifier: it gives label probabilities, not text.`, 'modelFolder');
    return generateSideBySide(requireGpu(), m, params, emit);
  },
  classify: async (params) => {
    requireIdle('classifying');
    await recoverDevice();
    const m = model;
    if (!m) throw new InputError('Load a model first.', 'modelFolder');
    if (m.task !== 'classification') throw new InputError(`${m.summary.name} generates text: it has no labels.`, 'modelFolder');
    return classifyText(requireGpu(), { tokenizer: m.tokenizer, summary: m.summary, withHead: (k) => classifierWithHead(m, k) }, params);
  },
  importAdapter: async ({ files, pickedName }) => {
    requireIdle('importing an adapter');
    const m = model;
    if (!m) throw new InputError('Load the base model first: an adapter is checked against the model it is imported for.', 'modelFolder');
    if (m.task !== 'causal-lm') throw new AdapterImportError('Importing classifier adapters is not available yet: load a text-generation model.');
    const collected = collectAdapterFiles(files);
    const g = requireGpu();
    let method: PeftMethod;
    try {
      method = importPeftAdapter(g, { name: collected.name, config: collected.config, weights: collected.weights }, m.info, new StepUniforms(g));
    } catch (e) {
      throw new AdapterImportError(`${collected.name} does not fit ${m.summary.name}: ${messageOf(e)}`);
    }
    const trainable = method.params.reduce((s, p) => s + p.shape.reduce((a, b) => a * b, 1), 0);
    method.destroy?.();
    const { meta, files: stored } = importedAdapterRecord(collected, baseModelInfo(m), trainable, deviceName(g), pickedName);
    await saveAdapter(meta, stored);
    return meta;
  },
  mergeAdapter: async ({ adapterId }) => {
    const meta = (await listAdapters()).find((a) => a.id === adapterId);
    if (!meta) throw new InputError('That adapter is gone (deleted in another tab?).', 'checkpoint');
    if (!model || !modelSource) throw new InputError(`Load ${meta.baseModel.name} first: merging writes it with the adapter folded in.`, 'modelFolder');
    return mergedModelZip(meta, { files: modelSource.files, hf: model.hf, name: model.summary.name });
  },
};

/**
 * The playground's classifier: the loaded encoder with a head of numLabels outputs (reloaded when
 * the loaded head has another size). The adapter's head values go into it, so a later run makes
 * a fresh head of its own.
 */
function classifierWithHead(m: ClassifierModelState, numLabels: number) {
  // apart from a preview's weight upload, which replaces m.loaded too
  return underModelLock(() => replaceHead(m, numLabels));
}

async function replaceHead(m: ClassifierModelState, numLabels: number) {
  const g = requireGpu();
  if (m.head.numLabels !== numLabels) {
    await replaceLoadedWeights(g, m, () => {
      m.loaded = loadClassifier(g, m.hf, numLabels, m.head.seed, m.frozen);
    });
  }
  m.head = { numLabels, seed: m.head.seed, fresh: false };
  return m.loaded.model;
}

/** The poisonAdapter test hook: NaN in the adapter's first tensor, as a diverging run would leave it. */
async function poisonAdapter(r: RunState): Promise<void> {
  poisonAtStep = null;
  const s = await r.session.snapshot();
  s.params[0].value.fill(NaN);
  r.session.restore(s, r.session.best());
}

/** Fault injection for the browser tests (protocol.ts TestHook); refused unless the page enabled it. */
async function testHook(hook: TestHook): Promise<TestHookResult> {
  if (!testHooksEnabled) throw new InputError('Test hooks are off (open the page with ?test-hooks).', 'gpu');
  switch (hook.name) {
    case 'loseDevice':
      if (hook.atStep !== undefined) {
        loseDeviceAtStep = hook.atStep;
        return { outcome: `the device will be destroyed at step ${hook.atStep}` };
      }
      requireGpu().device.destroy();
      return { outcome: 'device destroyed' };
    case 'poisonAdapter':
      poisonAtStep = hook.atStep;
      return { outcome: `the adapter turns to NaN after step ${hook.atStep}` };
    case 'failCheckpointWrite':
      storageTestFaults.checkpointWrite = { atStep: hook.atStep, fault: hook.fault };
      return { outcome: `the checkpoint write at step ${hook.atStep} will fail (${hook.fault})` };
    case 'workerFetch': {
      let blockedUri: string | null = null;
      const onViolation = (e: Event) => {
        blockedUri = (e as SecurityPolicyViolationEvent).blockedURI;
      };
      scope.addEventListener('securitypolicyviolation', onViolation);
      let outcome: string;
      try {
        const response = await fetch(hook.url);
        outcome = `ok ${response.status}`;
      } catch (e) {
        outcome = `failed: ${messageOf(e)}`;
      }
      await new Promise((resolve) => setTimeout(resolve, 50)); // the violation event comes a task later
      scope.removeEventListener('securitypolicyviolation', onViolation);
      return { outcome, blockedUri };
    }
  }
}

function control(c: 'pause' | 'resume' | 'stop' | 'cancelDownload' | 'stopGeneration'): void {
  if (c === 'stopGeneration') {
    stopGeneration();
    return;
  }
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
      const fallback: Partial<Record<CommandName, InputName>> = { loadData: 'dataFile', loadModelFiles: 'modelFolder', downloadModel: 'repoId', init: 'gpu', classLabels: 'mapping' };
      scope.postMessage({ kind: 'reply', id, command, ok: false, error: errorInfo(err, fallback[command]) } satisfies WorkerToPage);
    },
  );
});
