// The page's state and every action the user can take. All work happens in the training worker;
// this store sends it commands through the typed client and folds its events into state.

import { create } from 'zustand';
import type { ColumnMapping } from '../data/columns';
import type { ClassificationMapping } from '../data/classification';
import {
  startTrainWorker,
  WorkerCommandError,
  type BestEval,
  type DataSummary,
  type DownloadFileProgress,
  type ErrorInfo,
  type EvalPoint,
  type InitResult,
  type InputName,
  type LabelSummary,
  type ModelSummary,
  type PrepareResult,
  type RunMapping,
  type StepEventReport,
  type StepPoint,
  type TaskKind,
  type TestHook,
  type TestHookResult,
  type TrainingState,
  type TrainWorkerClient,
  type WorkerEvent,
} from '../worker/protocol';
import { DEFAULT_SETTINGS, validateSettings, withDefaults, type SettingErrors, type SettingLimits, type TrainSettings } from '../worker/settings';
import { METHOD_BY_ID, modelDefaults } from '../worker/methods';
import {
  deleteAdapter as dbDeleteAdapter,
  deleteCheckpoint as dbDeleteCheckpoint,
  listAdapters,
  listCheckpoints,
  renameAdapter as dbRenameAdapter,
  requestPersistence,
  storageStatus,
  type AdapterMeta,
  type CheckpointMeta,
  type StorageStatus,
} from '../worker/storage';
import { adapterZip, saveBytes } from './download';
import { pythonProjectZip } from './python-project';

export type GpuState =
  | { status: 'checking' }
  | { status: 'ready'; info: InitResult }
  | { status: 'unavailable'; reason: 'no-webgpu' | 'no-adapter' | 'failed'; message: string };

export type DataState =
  | { status: 'empty' }
  | { status: 'loading'; fileName: string; fileBytes: number; fraction: number }
  | { status: 'ready'; summary: DataSummary }
  | { status: 'error'; fileName: string; message: string };

export type ModelState =
  | { status: 'empty' }
  | { status: 'downloading'; repo: string; files: DownloadFileProgress[]; loaded: number; total: number | null }
  | { status: 'loading'; name: string; message: string }
  | { status: 'ready'; summary: ModelSummary }
  | { status: 'error'; message: string; input: 'repoId' | 'modelFolder' };

export type PrepareState =
  | { status: 'idle' }
  /** fraction: of the table's rows tokenized so far (null until the worker reports; none when the examples are cached). */
  | { status: 'running'; previous: PrepareResult | null; fraction: number | null }
  | { status: 'ready'; result: PrepareResult }
  | { status: 'error'; message: string; input?: InputName };

/** The label set and class balance of the chosen text and label columns (classification). */
export type LabelsState =
  | { status: 'idle' }
  | { status: 'loading'; previous: LabelSummary | null }
  | { status: 'ready'; summary: LabelSummary }
  | { status: 'error'; message: string };

export type RunPhase = TrainingState | 'done' | 'failed';

export interface TrainingView {
  phase: RunPhase;
  runId: string | null;
  name: string;
  /** What the run trains (set when it starts). */
  task: TaskKind | null;
  /** Class names by id (classification). */
  labels: string[] | null;
  /** The evaluation a classification run keeps and saves. */
  best: BestEval | null;
  totalSteps: number;
  points: StepPoint[];
  evals: EvalPoint[];
  last: StepEventReport | null;
  checkpoint: CheckpointMeta | null;
  error: ErrorInfo | null;
  /** A checkpoint or the adapter could not be saved: the run waits, paused, for room and Resume. */
  saveError: ErrorInfo | null;
  result: { adapter: AdapterMeta | null; stoppedEarly: boolean } | null;
}

export interface LibraryState {
  adapters: AdapterMeta[];
  checkpoints: CheckpointMeta[];
  storage: StorageStatus | null;
  error: string | null;
  /** Adapter id → what is happening to it ("Preparing the zip…"), or an error. */
  busy: Record<string, string>;
}

export interface AppState {
  gpu: GpuState;
  data: DataState;
  /** Prompt/completion-style columns (a causal LM learns these). */
  mapping: ColumnMapping | null;
  /** Text and label columns (a classifier learns these). */
  classMapping: ClassificationMapping | null;
  labels: LabelsState;
  model: ModelState;
  repoId: string;
  /** Where models download from: the hub, or a mirror with the same URL layout. */
  hubEndpoint: string;
  settings: TrainSettings;
  settingErrors: SettingErrors;
  prepare: PrepareState;
  adapterName: string;
  /** false until the user types a name of their own (until then it follows data and model). */
  adapterNameEdited: boolean;
  training: TrainingView;
  library: LibraryState;
  /** sha256 of the loaded data file, to tell which checkpoints can be resumed. */
  dataFingerprint: string | null;

  init(): Promise<void>;
  loadDataFile(file: File): Promise<void>;
  loadSample(): Promise<void>;
  setMapping(mapping: ColumnMapping): void;
  setClassMapping(mapping: ClassificationMapping): void;
  setRepoId(repo: string): void;
  setHubEndpoint(endpoint: string): void;
  downloadModel(): Promise<void>;
  cancelDownload(): void;
  loadModelFolder(files: { path: string; file: File }[]): Promise<void>;
  updateSettings(patch: Partial<TrainSettings>): void;
  setAdapterName(name: string): void;
  start(): Promise<void>;
  pause(): void;
  resume(): void;
  stop(): void;
  refreshLibrary(): Promise<void>;
  renameAdapter(id: string, name: string): Promise<void>;
  deleteAdapter(id: string): Promise<void>;
  downloadAdapter(id: string): Promise<void>;
  /** The adapter folded into the loaded base model (LoRA / DoRA), downloaded as a zipped model folder. */
  downloadMergedModel(id: string): Promise<void>;
  /** A Python project that continues the run with transformers + PEFT (script, settings, adapter, data). */
  downloadPythonProject(id: string): Promise<void>;
  /** Adds an adapter to the library from picked files (a zip, or a PEFT / AdapterHub folder's files); busy['import'] tells how it went. */
  importAdapterFiles(files: File[]): Promise<void>;
  resumeCheckpoint(runId: string): Promise<void>;
  deleteCheckpoint(runId: string): Promise<void>;
}

export const DEFAULT_HUB_ENDPOINT = 'https://huggingface.co';

/** The model the hub field starts with (the first of MODEL_SUGGESTIONS). */
export const DEFAULT_REPO_ID = 'HuggingFaceTB/SmolLM2-135M';

export const SAMPLE_URL = `${import.meta.env.BASE_URL}samples/restaurants.csv`;

const IDLE_TRAINING: TrainingView = {
  phase: 'idle',
  runId: null,
  name: '',
  task: null,
  labels: null,
  best: null,
  totalSteps: 0,
  points: [],
  evals: [],
  last: null,
  checkpoint: null,
  error: null,
  saveError: null,
  result: null,
};

/** Opened with ?test-hooks (the browser tests): window.finetuneTestHooks injects faults into the worker. */
const TEST_HOOKS = typeof location !== 'undefined' && new URLSearchParams(location.search).has('test-hooks');

let client: TrainWorkerClient | null = null;

/** The worker client once init() made it (the playground's own store talks to it too). */
export function workerClient(): TrainWorkerClient | null {
  return client;
}
let initialized = false;
let dataLoads = 0;
let prepareTimer: ReturnType<typeof setTimeout> | null = null;
let prepareSeq = 0;
let labelsSeq = 0;

function errorOf(e: unknown): ErrorInfo {
  if (e instanceof WorkerCommandError) return { message: e.message, input: e.input, name: e.errorName };
  return { message: e instanceof Error ? e.message : String(e), name: 'Error' };
}

export function limitsFrom(model: ModelState): SettingLimits | undefined {
  return model.status === 'ready'
    ? {
        maxPositions: model.summary.maxPositions,
        availableTargets: model.summary.peft.linearModules.map((g) => g.target),
        task: model.summary.task,
        unavailable: model.summary.peft.unavailable,
      }
    : undefined;
}

/** What the loaded model trains for (null before one is loaded). */
export function taskOfModel(model: ModelState): TaskKind | null {
  return model.status === 'ready' ? model.summary.task : null;
}

/** The columns a run would read: the mapping of the loaded model's task. */
export function runMappingOf(s: Pick<AppState, 'model' | 'mapping' | 'classMapping'>): RunMapping | null {
  const task = taskOfModel(s.model);
  if (task === 'classification') return s.classMapping ? { task, columns: s.classMapping } : null;
  return s.mapping ? { task: 'causal-lm', columns: s.mapping } : null;
}

function defaultAdapterName(data: DataState, model: ModelState, settings: TrainSettings): string {
  const modelPart = model.status === 'ready' ? model.summary.name.split('/').pop()! : 'model';
  const dataPart = data.status === 'ready' ? data.summary.fileName.replace(/\.[^.]+$/, '') : 'data';
  const what = taskOfModel(model) === 'classification' ? (settings.method === 'lora' ? 'classifier' : `${settings.method}-classifier`) : settings.method;
  return `${modelPart}-${dataPart}-${what}`;
}

/** The data file loaded last (the Python project download includes it when the run used it). */
let lastDataFile: File | null = null;

export const useApp = create<AppState>()((set, get) => {
  /** Re-runs prepare shortly after the last change, dropping answers to older requests. */
  const schedulePrepare = () => {
    if (prepareTimer) clearTimeout(prepareTimer);
    prepareTimer = setTimeout(() => void runPrepare(), 250);
  };

  const runPrepare = async () => {
    const s = get();
    const mapping = runMappingOf(s);
    if (s.data.status !== 'ready' || s.model.status !== 'ready' || !mapping || !client) {
      set({ prepare: { status: 'idle' } });
      return;
    }
    if (Object.keys(s.settingErrors).length > 0) return; // inline errors already say what to fix
    const seq = ++prepareSeq;
    const previous = s.prepare.status === 'ready' ? s.prepare.result : s.prepare.status === 'running' ? s.prepare.previous : null;
    set({ prepare: { status: 'running', previous, fraction: null } });
    try {
      const result = await client.call('prepare', { mapping, settings: s.settings });
      if (seq === prepareSeq) set({ prepare: { status: 'ready', result } });
    } catch (e) {
      const err = errorOf(e);
      if (seq === prepareSeq) set({ prepare: { status: 'error', message: err.message, input: err.input } });
    }
  };

  const refreshName = () => {
    const s = get();
    if (!s.adapterNameEdited) set({ adapterName: defaultAdapterName(s.data, s.model, s.settings) });
  };

  /** The class balance of the chosen columns, when the model is a classifier. */
  const refreshLabels = async () => {
    const s = get();
    if (!client || s.data.status !== 'ready' || taskOfModel(s.model) !== 'classification' || !s.classMapping) {
      labelsSeq++;
      set({ labels: { status: 'idle' } });
      return;
    }
    const seq = ++labelsSeq;
    const previous = s.labels.status === 'ready' ? s.labels.summary : s.labels.status === 'loading' ? s.labels.previous : null;
    set({ labels: { status: 'loading', previous } });
    try {
      const summary = await client.call('classLabels', { mapping: s.classMapping });
      if (seq === labelsSeq) set({ labels: { status: 'ready', summary } });
    } catch (e) {
      if (seq === labelsSeq) set({ labels: { status: 'error', message: errorOf(e).message } });
    }
  };

  const onEvent = (event: WorkerEvent) => {
    const s = get();
    switch (event.type) {
      case 'progress':
        if (event.task === 'parse' && s.data.status === 'loading') set({ data: { ...s.data, fraction: event.fraction } });
        else if (event.task === 'examples' && s.prepare.status === 'running') set({ prepare: { ...s.prepare, fraction: event.fraction } });
        else if (event.task === 'download' && s.model.status === 'downloading') {
          // In download order: the small files first, the weights last.
          const known = s.model.files.some((f) => f.file === event.file.file);
          const files = known ? s.model.files.map((f) => (f.file === event.file.file ? event.file : f)) : s.model.files.concat(event.file);
          set({ model: { ...s.model, files, loaded: event.loaded, total: event.total } });
        } else if (event.task === 'loadModel' && (s.model.status === 'loading' || s.model.status === 'downloading')) {
          const name = s.model.status === 'loading' ? s.model.name : s.model.repo;
          set({ model: { status: 'loading', name, message: event.message } });
        }
        return;
      case 'modelSummary':
        // the frozen weights were uploaded again in another dtype (a run's settings.frozenWeights)
        if (s.model.status === 'ready' && s.model.summary.name === event.summary.name) set({ model: { status: 'ready', summary: event.summary } });
        return;
      case 'trainingState':
        if (event.state === 'idle') {
          // 'done' and 'failed' are kept on screen; anything else returns to idle.
          if (s.training.phase !== 'done' && s.training.phase !== 'failed') set({ training: { ...s.training, phase: 'idle' } });
          void get().refreshLibrary();
          schedulePrepare();
        } else if (event.runId === s.training.runId || s.training.runId === null) {
          // Training again after a failed save: the save went through, or will be tried at the next checkpoint.
          const saveError = event.state === 'training' ? null : s.training.saveError;
          set({ training: { ...s.training, phase: event.state, runId: event.runId, saveError } });
        }
        return;
      case 'step':
        if (event.runId !== s.training.runId) return;
        set({ training: { ...s.training, points: s.training.points.concat(event.points), last: event.report } });
        return;
      case 'eval':
        if (event.runId !== s.training.runId) return;
        set({ training: { ...s.training, evals: s.training.evals.filter((e) => e.step !== event.point.step).concat(event.point), best: event.best } });
        return;
      case 'saveFailed':
        if (event.runId === s.training.runId) set({ training: { ...s.training, saveError: event.error } });
        void get().refreshLibrary();
        return;
      case 'checkpointSaved':
        if (event.runId === s.training.runId) set({ training: { ...s.training, checkpoint: event.checkpoint, saveError: null } });
        void get().refreshLibrary();
        return;
      case 'done':
        if (event.runId !== s.training.runId) return;
        set({ training: { ...s.training, phase: 'done', saveError: null, result: { adapter: event.adapter, stoppedEarly: event.stoppedEarly } } });
        // Only a page (not a worker) may ask the browser to keep our storage.
        void askPersistence();
        return;
      case 'error':
        if (event.runId !== null && event.runId !== s.training.runId) return;
        set({ training: { ...s.training, phase: 'failed', error: event.error, saveError: null } });
        return;
    }
  };

  return {
    gpu: { status: 'checking' },
    data: { status: 'empty' },
    mapping: null,
    classMapping: null,
    labels: { status: 'idle' },
    model: { status: 'empty' },
    repoId: DEFAULT_REPO_ID,
    hubEndpoint: DEFAULT_HUB_ENDPOINT,
    settings: DEFAULT_SETTINGS,
    settingErrors: validateSettings(DEFAULT_SETTINGS),
    prepare: { status: 'idle' },
    adapterName: defaultAdapterName({ status: 'empty' }, { status: 'empty' }, DEFAULT_SETTINGS),
    adapterNameEdited: false,
    training: IDLE_TRAINING,
    library: { adapters: [], checkpoints: [], storage: null, error: null, busy: {} },
    dataFingerprint: null,

    async init() {
      if (initialized) return; // React's StrictMode runs effects twice in development
      initialized = true;
      void get().refreshLibrary();
      if (typeof navigator === 'undefined' || !('gpu' in navigator) || !navigator.gpu) {
        set({ gpu: { status: 'unavailable', reason: 'no-webgpu', message: 'This browser does not offer WebGPU (navigator.gpu is missing).' } });
        return;
      }
      client ??= startTrainWorker();
      client.onEvent(onEvent);
      if (TEST_HOOKS) {
        const c = client;
        (window as unknown as { finetuneTestHooks: (hook: TestHook) => Promise<TestHookResult> }).finetuneTestHooks = (hook) => c.call('testHook', hook);
      }
      try {
        const info = await client.call('init', { testHooks: TEST_HOOKS });
        set({ gpu: { status: 'ready', info } });
      } catch (e) {
        const message = errorOf(e).message;
        const reason = /no GPU adapter/i.test(message) ? 'no-adapter' : 'failed';
        set({ gpu: { status: 'unavailable', reason, message } });
      }
    },

    async loadDataFile(file) {
      if (!client) return;
      lastDataFile = file;
      const load = ++dataLoads;
      prepareSeq++; // a prepare still tokenizing the old data answers too late to count
      set({ data: { status: 'loading', fileName: file.name, fileBytes: file.size, fraction: 0 }, prepare: { status: 'idle' }, dataFingerprint: null });
      try {
        const summary = await client.call('loadData', { file });
        if (load !== dataLoads) return;
        set({ data: { status: 'ready', summary }, mapping: summary.guessedMapping, classMapping: summary.guessedClassification });
        refreshName();
        void refreshLabels();
        schedulePrepare();
        // Hashing runs in the worker; the page only needs it to offer resuming unfinished runs.
        const { fingerprint } = await client.call('dataFingerprint', {});
        if (load === dataLoads) set({ dataFingerprint: fingerprint });
      } catch (e) {
        if (load === dataLoads) set({ data: { status: 'error', fileName: file.name, message: errorOf(e).message }, mapping: null, classMapping: null, labels: { status: 'idle' } });
      }
    },

    async loadSample() {
      try {
        const response = await fetch(SAMPLE_URL);
        if (!response.ok) throw new Error(`HTTP ${response.status}`);
        const blob = await response.blob();
        await get().loadDataFile(new File([blob], 'restaurants.csv', { type: 'text/csv' }));
      } catch (e) {
        set({ data: { status: 'error', fileName: 'restaurants.csv', message: `Could not load the sample: ${(e as Error).message}` } });
      }
    },

    setMapping(mapping) {
      set({ mapping });
      schedulePrepare();
    },

    setClassMapping(classMapping) {
      set({ classMapping });
      void refreshLabels();
      schedulePrepare();
    },

    setRepoId(repoId) {
      set({ repoId });
    },

    setHubEndpoint(hubEndpoint) {
      set({ hubEndpoint });
    },

    async downloadModel() {
      if (!client) return;
      const repo = get().repoId.trim();
      const endpoint = get().hubEndpoint.trim().replace(/\/+$/, '');
      prepareSeq++; // a prepare still running for the old model answers too late to count
      set({ model: { status: 'downloading', repo, files: [], loaded: 0, total: null }, prepare: { status: 'idle' } });
      try {
        const summary = await client.call('downloadModel', { repo, frozen: get().settings.frozenWeights, ...(endpoint !== DEFAULT_HUB_ENDPOINT ? { endpoint } : {}) });
        applyModel(summary);
      } catch (e) {
        set({ model: { status: 'error', message: errorOf(e).message, input: 'repoId' } });
      }
    },

    cancelDownload() {
      client?.control('cancelDownload');
    },

    async loadModelFolder(files) {
      if (!client) return;
      const name = files[0]?.path.split('/')[0] || 'local model';
      prepareSeq++; // a prepare still running for the old model answers too late to count
      set({ model: { status: 'loading', name, message: 'Reading the files' }, prepare: { status: 'idle' } });
      try {
        const summary = await client.call('loadModelFiles', { files, frozen: get().settings.frozenWeights });
        applyModel(summary);
      } catch (e) {
        set({ model: { status: 'error', message: errorOf(e).message, input: 'modelFolder' } });
      }
    },

    updateSettings(patch) {
      const settings = { ...get().settings, ...patch };
      set({ settings, settingErrors: validateSettings(settings, limitsFrom(get().model)) });
      if (patch.method !== undefined) refreshName();
      schedulePrepare();
    },

    setAdapterName(name) {
      set({ adapterName: name, adapterNameEdited: true });
    },

    async start() {
      const s = get();
      const mapping = runMappingOf(s);
      if (!client || !mapping) return;
      set({ training: { ...IDLE_TRAINING, phase: 'starting', name: s.adapterName, task: mapping.task } });
      try {
        const { runId, totalSteps, task, labels } = await client.call('start', { mapping, settings: s.settings, adapterName: s.adapterName });
        const t = get().training;
        set({ training: { ...t, runId, totalSteps, task, labels, phase: t.phase === 'starting' ? 'starting' : t.phase } });
      } catch (e) {
        set({ training: { ...IDLE_TRAINING, phase: 'failed', error: errorOf(e) } });
      }
    },

    pause() {
      client?.control('pause');
    },
    resume() {
      client?.control('resume');
    },
    stop() {
      client?.control('stop');
    },

    async refreshLibrary() {
      try {
        const [adapters, checkpoints, storage] = await Promise.all([listAdapters(), listCheckpoints(), storageStatus()]);
        set({ library: { ...get().library, adapters, checkpoints, storage, error: null } });
      } catch (e) {
        set({ library: { ...get().library, error: (e as Error).message } });
      }
    },

    async renameAdapter(id, name) {
      try {
        await dbRenameAdapter(id, name);
        await get().refreshLibrary();
      } catch (e) {
        setBusy(id, `Error: ${(e as Error).message}`);
      }
    },

    async deleteAdapter(id) {
      try {
        await dbDeleteAdapter(id);
        await get().refreshLibrary();
      } catch (e) {
        setBusy(id, `Error: ${(e as Error).message}`);
      }
    },

    async downloadAdapter(id) {
      const meta = get().library.adapters.find((a) => a.id === id);
      if (!meta) return;
      setBusy(id, 'Preparing the zip…');
      try {
        const { fileName, bytes } = await adapterZip(meta);
        saveBytes(fileName, bytes);
        setBusy(id, null);
      } catch (e) {
        setBusy(id, `Error: ${(e as Error).message}`);
      }
    },

    async importAdapterFiles(picked) {
      if (!client || picked.length === 0) return;
      const rel = (f: File) => (f as File & { webkitRelativePath?: string }).webkitRelativePath || f.name;
      const pickedName = picked.length === 1 ? picked[0].name : (rel(picked[0]).split('/').slice(-2, -1)[0] || `${picked.length} files`);
      setBusy('import', `Importing ${pickedName}…`);
      try {
        const files = await Promise.all(picked.map(async (f) => ({ path: rel(f), bytes: new Uint8Array(await f.arrayBuffer()) })));
        const meta = await client.call('importAdapter', { files, pickedName });
        await get().refreshLibrary();
        setBusy('import', `Imported “${meta.name}” (${meta.method}) for ${meta.baseModel.name}.`);
      } catch (e) {
        setBusy('import', `Error: ${(e as Error).message}`);
      }
    },

    async downloadPythonProject(id) {
      const meta = get().library.adapters.find((a) => a.id === id);
      if (!meta) return;
      setBusy(id, 'Preparing the Python project…');
      try {
        // the data goes in only when the file loaded now is the one the run used
        const same = lastDataFile !== null && get().dataFingerprint === meta.data.fingerprint;
        const r = await pythonProjectZip(meta, same ? lastDataFile : null);
        saveBytes(r.fileName, r.bytes);
        setBusy(id, r.withData ? `${r.fileName}: script, settings, adapter and data` : `${r.fileName}: load ${meta.data.fileName} first to include the data, or copy it into data/`);
      } catch (e) {
        setBusy(id, `Error: ${(e as Error).message}`);
      }
    },

    async downloadMergedModel(id) {
      const meta = get().library.adapters.find((a) => a.id === id);
      if (!meta || !client) return;
      setBusy(id, `Merging into ${meta.baseModel.name}…`);
      try {
        const r = await client.call('mergeAdapter', { adapterId: id });
        saveBytes(r.fileName, r.bytes);
        setBusy(id, `Merged ${r.merged} weight${r.merged === 1 ? '' : 's'} (${r.dtype}): ${r.fileName}`);
      } catch (e) {
        setBusy(id, `Error: ${(e as Error).message}`);
      }
    },

    async resumeCheckpoint(runId) {
      if (!client) return;
      set({ training: { ...IDLE_TRAINING, phase: 'starting' } });
      try {
        const r = await client.call('resumeCheckpoint', { runId });
        const t = get().training;
        set({
          settings: r.settings,
          settingErrors: validateSettings(r.settings, limitsFrom(get().model)),
          ...(r.mapping.task === 'classification' ? { classMapping: r.mapping.columns } : { mapping: r.mapping.columns }),
          adapterName: r.adapterName,
          adapterNameEdited: true,
          training: {
            ...t,
            runId: r.runId,
            name: r.adapterName,
            task: r.task,
            labels: r.labels,
            best: r.best,
            totalSteps: r.totalSteps,
            points: r.history.steps,
            evals: r.history.evals,
          },
        });
        if (r.mapping.task === 'classification') void refreshLabels();
        schedulePrepare(); // the estimates and counts for the run's own settings
      } catch (e) {
        set({ training: { ...IDLE_TRAINING, phase: 'failed', error: errorOf(e) } });
      }
    },

    async deleteCheckpoint(runId) {
      try {
        await dbDeleteCheckpoint(runId);
      } finally {
        await get().refreshLibrary();
      }
    },
  };

  function applyModel(summary: ModelSummary) {
    const s = get();
    const maxLength = Math.min(s.settings.maxLength, summary.maxPositions);
    const settings: TrainSettings = withDefaults({ ...s.settings, ...modelDefaults(summary.peft), maxLength });
    // A method this task does not train gives way to LoRA (prefix tuning is not offered for classifiers).
    if (!METHOD_BY_ID[settings.method].tasks.includes(summary.task)) settings.method = 'lora';
    const model: ModelState = { status: 'ready', summary };
    set({ model, settings, settingErrors: validateSettings(settings, limitsFrom(model)) });
    refreshName();
    void refreshLabels();
    schedulePrepare();
  }

  function setBusy(id: string, message: string | null) {
    const busy = { ...get().library.busy };
    if (message === null) delete busy[id];
    else busy[id] = message;
    set({ library: { ...get().library, busy } });
  }
});

/** Ask the browser to keep our storage once something worth keeping exists. */
export async function askPersistence(): Promise<void> {
  await requestPersistence();
  await useApp.getState().refreshLibrary();
}
