// The only way the page and the training worker talk. The page sends commands (each answered by
// exactly one reply with the same id) and fire-and-forget controls (pause, resume, stop); the
// worker also pushes events (progress, training steps, checkpoints, the finished adapter, errors).
// Everything here is structured-clone friendly: plain objects, arrays, Files and typed arrays.

import type { GpuInfo } from '../engine/gpu/gpu';
import type { ColumnMapping } from '../data/columns';
import type { ExampleStats } from '../data/examples';
import type { ClassificationMapping, ClassificationStats } from '../data/classification';
import type { LabelSummary } from '../data/classification-columns';
import type { TableFormat, TableProblem, TableProblemKind } from '../data/table';
import type { TrainSettings, SettingName } from './settings';
import type { FrozenStorage } from '../engine/models/weights';
import type { PeftFacts, TaskKind } from './methods';
import type { AdapterMeta, CheckpointMeta } from './storage';
import type { ClassifyParams, ClassifyResult, GenerateParams, GenerateResult, GenerationStream, PlaygroundInfo } from './playground-types';
import trainWorkerUrl from './train-worker.ts?worker&url';

export type { LabelSummary } from '../data/classification-columns';
export type { TaskKind } from './methods';
export type * from './playground-types';

// ---------------------------------------------------------------------------------------------
// Inputs an error can point at, so the page can show the message next to the right control.

export type InputName =
  | 'gpu'
  | 'dataFile'
  | 'mapping'
  | 'template'
  | 'modelFolder'
  | 'repoId'
  | 'adapterName'
  | 'checkpoint'
  | SettingName;

// ---------------------------------------------------------------------------------------------
// Command payloads and results

export interface InitResult {
  gpu: GpuInfo;
  hasF16: boolean;
  hasSubgroups: boolean;
}

export interface DataSummary {
  fileName: string;
  fileBytes: number;
  format: TableFormat;
  delimiter?: string;
  columns: string[];
  rowCount: number;
  /** The first rows, cells cut to a readable length. */
  preview: Record<string, string>[];
  previewRowNumbers: number[];
  /** The first problems (problemCounts has the totals). */
  problems: TableProblem[];
  problemCounts: Record<TableProblemKind, number>;
  guessedMapping: ColumnMapping;
  /** The text and label columns, for when the model is a classifier (null: fewer than two columns). */
  guessedClassification: ClassificationMapping | null;
  parseMs: number;
}

/** Which columns a run reads: prompt/completion-style for a causal LM, text + label for a classifier. */
export type RunMapping =
  | { task: 'causal-lm'; columns: ColumnMapping }
  | { task: 'classification'; columns: ClassificationMapping };

/** A group of the model's linear layers that LoRA can target, e.g. "c_attn" in each of 12 blocks. */
export interface LinearModuleGroup {
  /** The shortest module-name suffix that picks exactly this group (PEFT target_modules syntax). */
  target: string;
  /** Full path of the first one, e.g. transformer.h.0.attn.c_attn */
  example: string;
  count: number;
  inFeatures: number;
  outFeatures: number;
}

/** The head of a classifier: what trains in full beside the method on the encoder (PEFT's modules_to_save). */
export interface ClassifierHead {
  /** transformers' class, e.g. DistilBertForSequenceClassification. */
  className: string;
  /** Head modules trained in full, e.g. pre_classifier, classifier. */
  trainedModules: string[];
  /** Trainable head parameters that do not depend on the number of labels (DistilBERT's pre_classifier). */
  fixedTrainable: number;
  /** The classifier adds this many parameters per label (weight row + bias). */
  perLabel: number;
}

export interface ModelSummary {
  /** What PEFT's base_model_name_or_path will say: the repo id, or the folder name. */
  name: string;
  source: 'hub' | 'folder';
  modelType: string;
  /** The engine's implementation that runs it (e.g. 'gpt2', 'llama', 'distilbert'). */
  architecture: string;
  /** What it is trained for: text generation (causal LM) or text classification (encoder + head). */
  task: TaskKind;
  layers: number;
  hidden: number;
  heads: number;
  vocabSize: number;
  maxPositions: number;
  /** Parameters of the base model (a classifier's: without the classifier layer, whose size depends on the labels). */
  parameterCount: number;
  /** dtype of the checkpoint's tensors as stored (they are trained in f32). */
  storedDType: string;
  /** How the frozen matrices are kept on the GPU now (settings.frozenWeights; sums are f32 either way). */
  frozenDType: FrozenStorage;
  /** GPU bytes taken by the frozen weights. */
  weightBytes: number;
  /** What the adapter methods need (layer groups, default targets, PEFT dimensions, refusals). */
  peft: PeftFacts;
  /** The classification head (task 'classification' only). */
  classifier: ClassifierHead | null;
  /** What loading did that the user should know (e.g. the head initialized anew). */
  notes: string[];
  loadMs: number;
}

export interface PrepareParams {
  mapping: RunMapping;
  settings: TrainSettings;
}

export interface MemoryEstimate {
  weights: number;
  /** Training and (when there is a validation split) evaluation buffers. */
  activations: number;
  /** The evaluation part of `activations`: made at the first evaluation, so the peak comes then. */
  evaluation: number;
  /** Adapter values, gradients and AdamW moments, plus its scratch. */
  adapter: number;
  total: number;
  /** Bytes of the largest single buffer, checked against the GPU's limit (`bufferLimit`). */
  largestBuffer: number;
  /** What that buffer holds (e.g. "l0.att": layer 0's attention scores). */
  largestBufferLabel: string;
  /** The largest buffer (and storage binding) this GPU allows. */
  bufferLimit: number;
  /** Set when the total is more than the device can sensibly hold (WebGPU reports no memory size). */
  warning: string | null;
}

export interface ParameterCounts {
  trainable: number;
  /** Frozen base model parameters. */
  frozen: number;
  /** frozen + trainable, as PEFT's print_trainable_parameters counts "all params". */
  all: number;
  percent: number;
}

interface PrepareCommon {
  trainExamples: number;
  validationExamples: number;
  /** Sequence length every batch is padded to. */
  seqLen: number;
  stepsPerEpoch: number;
  totalSteps: number;
  warmupSteps: number;
  params: ParameterCounts;
  memory: MemoryEstimate;
}

export interface CausalPrepareResult extends PrepareCommon {
  task: 'causal-lm';
  stats: ExampleStats;
  /** The first example as the model sees it: the part without loss and the part it learns. */
  sample: { row: number; context: string; target: string } | null;
}

export interface ClassificationPrepareResult extends PrepareCommon {
  task: 'classification';
  stats: ClassificationStats;
  /** Class names by id (the model card's id2label). */
  labels: string[];
  /** Examples per class id in each split. */
  trainCounts: number[];
  validationCounts: number[];
  /** The first example as the model reads it (special tokens included) and its label. */
  sample: { row: number; text: string; label: string } | null;
}

export type PrepareResult = CausalPrepareResult | ClassificationPrepareResult;

export interface StartParams {
  mapping: RunMapping;
  settings: TrainSettings;
  adapterName: string;
}

export interface StartResult {
  runId: string;
  totalSteps: number;
  task: TaskKind;
  /** Class names by id (classification). */
  labels: string[] | null;
}

export interface ResumeCheckpointResult extends StartResult {
  step: number;
  adapterName: string;
  settings: TrainSettings;
  mapping: RunMapping;
  history: { steps: StepPoint[]; evals: EvalPoint[] };
  best: BestEval | null;
}

/**
 * Faults the browser tests inject, only when the page was opened with ?test-hooks (the page sends
 * `testHooks: true` with init; the worker refuses these otherwise). Never reachable from the UI.
 */
export type TestHook =
  /** device.destroy() now, or once the run reaches `atStep`, as a driver reset would lose it. */
  | { name: 'loseDevice'; atStep?: number }
  /**
   * The write of step `atStep`'s checkpoint fails once after both records were put: 'abort' cuts
   * the transaction off (a crash mid-write), 'quota' fails it with a QuotaExceededError (a full disk).
   */
  | { name: 'failCheckpointWrite'; atStep: number; fault: 'abort' | 'quota' }
  /** After step `atStep` (and its checkpoint), NaN in the adapter's first tensor: the next step's loss is NaN, as when a run diverges. */
  | { name: 'poisonAdapter'; atStep: number }
  /** fetch() from inside the worker: whether the Content-Security-Policy lets it out. */
  | { name: 'workerFetch'; url: string };

export interface TestHookResult {
  /** workerFetch: what fetch() did ("ok 200", or the error), and the URI a CSP violation event blocked. */
  outcome: string;
  blockedUri?: string | null;
}

export interface HubDownloadParams {
  repo: string;
  /** Hugging Face endpoint (mirror); the hub's own by default. */
  endpoint?: string;
  /** How to keep the frozen weights on the GPU (settings.frozenWeights); the last one used by default. */
  frozen?: FrozenStorage;
}

/** Command name → what it takes and what its reply carries. */
export interface Commands {
  init: { params: { testHooks?: boolean }; result: InitResult };
  loadData: { params: { file: File }; result: DataSummary };
  /** Files of a picked or dropped folder, with their paths inside it. */
  loadModelFiles: { params: { files: { path: string; file: File }[]; name?: string; frozen?: FrozenStorage }; result: ModelSummary };
  downloadModel: { params: HubDownloadParams; result: ModelSummary };
  prepare: { params: PrepareParams; result: PrepareResult };
  start: { params: StartParams; result: StartResult };
  resumeCheckpoint: { params: { runId: string }; result: ResumeCheckpointResult };
  /** The loaded data file's SHA-256, to match checkpoints against. */
  dataFingerprint: { params: Record<string, never>; result: { fingerprint: string | null } };
  /** The label set and class balance of the loaded data for a text and a label column (no tokenizer needed). */
  classLabels: { params: { mapping: ClassificationMapping }; result: LabelSummary };
  /** Fault injection for the browser tests (see TestHook). */
  testHook: { params: TestHook; result: TestHookResult };
  /** Playground: what it can offer for the loaded model. */
  playgroundInfo: { params: Record<string, never>; result: PlaygroundInfo };
  /** Playground: generates with a saved adapter (and the base model), streaming 'generation' events; replies when both end. */
  generate: { params: GenerateParams; result: GenerateResult };
  /** Playground: label probabilities of a saved classifier adapter for one text. */
  classify: { params: ClassifyParams; result: ClassifyResult };
  /** A saved LoRA / DoRA adapter folded into the loaded base model (merge_and_unload), as a zipped model folder. */
  mergeAdapter: { params: { adapterId: string }; result: { fileName: string; bytes: Uint8Array; merged: number; dtype: string } };
  /** Adapter files picked by the user (a zip, or a PEFT / AdapterHub folder's files), loaded onto the model to check them, then stored in the library. */
  importAdapter: { params: { files: { path: string; bytes: Uint8Array }[]; pickedName: string }; result: AdapterMeta };
}

export type CommandName = keyof Commands;

/** Controls that need no reply (their effect arrives as a trainingState event). */
export type Control = 'pause' | 'resume' | 'stop' | 'cancelDownload' | 'stopGeneration';

// ---------------------------------------------------------------------------------------------
// Messages

export type PageToWorker =
  | { [C in CommandName]: { kind: 'command'; id: number; command: C; params: Commands[C]['params'] } }[CommandName]
  | { kind: 'control'; control: Control };

export interface ErrorInfo {
  message: string;
  /** The control the user should look at, when the error is about one. */
  input?: InputName;
  /** The error class, e.g. DataError, GpuError (for logs, not shown as such); 'DeviceLost' when the GPU device went away mid-run. */
  name: string;
  /** A run that failed this way can go on from its last checkpoint (on a new device after 'DeviceLost'). */
  resumable?: boolean;
}

export type TrainingState = 'starting' | 'training' | 'pausing' | 'paused' | 'stopping' | 'saving' | 'idle';

export interface StepPoint {
  step: number;
  loss: number;
}

export interface EvalPoint {
  step: number;
  evalLoss: number;
  /** Classification: accuracy, macro-F1 and confusion[true][predicted] on the validation split. */
  accuracy?: number;
  f1?: number;
  confusion?: number[][];
}

/** The evaluation a classification run keeps (load_best_model_at_end): its weights are the ones saved. */
export interface BestEval {
  step: number;
  metric: 'loss' | 'accuracy';
  value: number;
}

/** One optimizer step as the page shows it (rates and ETA over the run's active time). */
export interface StepEventReport {
  step: number;
  totalSteps: number;
  epoch: number;
  loss: number;
  lr: number;
  gradNorm: number;
  tokensPerSecond: number;
  elapsedMs: number;
  etaMs: number;
  gpuBytes: number;
}

export interface DownloadFileProgress {
  file: string;
  loaded: number;
  total: number | null;
  fromCache: boolean;
}

export type WorkerEvent =
  | { type: 'progress'; task: 'parse'; fraction: number }
  | { type: 'progress'; task: 'download'; file: DownloadFileProgress; loaded: number; total: number | null }
  | { type: 'progress'; task: 'loadModel'; message: string }
  /** The loaded model's summary changed (its frozen weights uploaded again in another dtype). */
  | { type: 'modelSummary'; summary: ModelSummary }
  /** Tokenizing the table into examples (prepare), fraction of the rows done. */
  | { type: 'progress'; task: 'examples'; fraction: number }
  | { type: 'trainingState'; state: TrainingState; runId: string | null }
  /** The latest step, and every step's loss since the previous step event (the worker batches them). */
  | { type: 'step'; runId: string; report: StepEventReport; points: StepPoint[] }
  | { type: 'eval'; runId: string; point: EvalPoint; best: BestEval | null }
  | { type: 'checkpointSaved'; runId: string; checkpoint: CheckpointMeta }
  /**
   * A checkpoint or the adapter could not be saved (storage full, a failed write): the run waits,
   * paused, with its weights still on the GPU; Resume tries the save again, Stop gives up.
   */
  | { type: 'saveFailed'; runId: string; error: ErrorInfo }
  /** adapter is null when the run was stopped before its first step (nothing to keep). */
  | { type: 'done'; runId: string; adapter: AdapterMeta | null; stoppedEarly: boolean }
  | { type: 'error'; runId: string | null; error: ErrorInfo }
  /** Playground: one side of a generation after a new token (or at its end). */
  | { type: 'generation'; stream: GenerationStream };

export type WorkerToPage =
  | { [C in CommandName]: { kind: 'reply'; id: number; command: C; ok: true; result: Commands[C]['result'] } }[CommandName]
  | { kind: 'reply'; id: number; command: CommandName; ok: false; error: ErrorInfo }
  | { kind: 'event'; event: WorkerEvent };

// ---------------------------------------------------------------------------------------------
// The page's side: a typed client

/** A command the worker refused or that failed; `input` says which control is wrong. */
export class WorkerCommandError extends Error {
  readonly input?: InputName;
  readonly errorName: string;
  constructor(info: ErrorInfo) {
    super(info.message);
    this.name = 'WorkerCommandError';
    this.input = info.input;
    this.errorName = info.name;
  }
}

/** Anything with postMessage and message events: a Worker, or a fake in tests. */
export interface MessagePort_ {
  postMessage(message: PageToWorker): void;
  addEventListener(type: 'message', listener: (e: MessageEvent<WorkerToPage>) => void): void;
  addEventListener(type: 'error', listener: (e: ErrorEvent) => void): void;
  terminate?(): void;
}

export class TrainWorkerClient {
  private nextId = 1;
  private readonly pending = new Map<number, { resolve: (v: unknown) => void; reject: (e: Error) => void }>();
  private readonly listeners = new Set<(e: WorkerEvent) => void>();

  constructor(private readonly port: MessagePort_) {
    port.addEventListener('message', (e: MessageEvent<WorkerToPage>) => this.receive(e.data));
    // A worker that fails to load (bad bundle, CSP) never answers: fail everything that waits.
    port.addEventListener('error', (e: ErrorEvent) => {
      const err = new WorkerCommandError({ message: `The training worker stopped: ${e.message || 'it could not be loaded'}`, name: 'WorkerError', input: 'gpu' });
      for (const p of this.pending.values()) p.reject(err);
      this.pending.clear();
    });
  }

  /** Sends a command; resolves with its result or rejects with a WorkerCommandError. */
  call<C extends CommandName>(command: C, params: Commands[C]['params']): Promise<Commands[C]['result']> {
    const id = this.nextId++;
    return new Promise<Commands[C]['result']>((resolve, reject) => {
      this.pending.set(id, { resolve: resolve as (v: unknown) => void, reject });
      this.port.postMessage({ kind: 'command', id, command, params } as PageToWorker);
    });
  }

  control(control: Control): void {
    this.port.postMessage({ kind: 'control', control });
  }

  /** Subscribes to worker events; returns the unsubscribe function. */
  onEvent(listener: (e: WorkerEvent) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  terminate(): void {
    this.port.terminate?.();
  }

  private receive(msg: WorkerToPage): void {
    if (msg.kind === 'event') {
      for (const l of this.listeners) l(msg.event);
      return;
    }
    const p = this.pending.get(msg.id);
    if (!p) return;
    this.pending.delete(msg.id);
    if (msg.ok) p.resolve(msg.result);
    else p.reject(new WorkerCommandError(msg.error));
  }
}

/**
 * Starts the training worker (a module worker, bundled by Vite). It starts from a blob: URL that
 * imports the bundle: a blob worker inherits the page's Content-Security-Policy (index.html's
 * meta), so its downloads are held to the same hosts; a worker loaded from its own URL would take
 * its policy from the response headers, which a static host does not send.
 */
export function startTrainWorker(): TrainWorkerClient {
  const bundle = new URL(trainWorkerUrl, location.href).href;
  const loader = URL.createObjectURL(new Blob([`import ${JSON.stringify(bundle)};\n`], { type: 'text/javascript' }));
  const worker = new Worker(loader, { type: 'module', name: 'train-worker' });
  return new TrainWorkerClient(worker as unknown as MessagePort_);
}
