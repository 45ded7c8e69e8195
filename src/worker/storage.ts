// What the app keeps in the browser (IndexedDB): finished adapters and training checkpoints.
// The worker writes (it has the weights); the page lists, renames, deletes and downloads.
// Small metadata records are kept apart from the tensors so that listing never loads weights.
//
// Database "finetune-in-browser", version 1:
//   adapters          key id      AdapterMeta (name, base model, settings, data, metrics, log)
//   adapterFiles      key id      AdapterFiles (the PEFT or AdapterHub files, README.md, trainer_state.json)
//   checkpoints       key runId   CheckpointMeta (the latest checkpoint of a run)
//   checkpointTensors key runId   adapter values + AdamW m and v at that step (and a classifier's
//                                 best evaluation's values)
// Records written before a field existed lack it: readers complete them (withDefaults, taskOf).
//
// A checkpoint is written in ONE transaction over both of its stores: IndexedDB commits all of it
// or none, so a tab that crashes or a write that fails (quota, a lost disk) part-way leaves the
// previous checkpoint of the run whole; meta and tensors never come from two different steps.

import type { ColumnMapping } from '../data/columns';
import type { ClassificationMapping } from '../data/classification';
import type { LogEntry } from '../train/run-report';
import type { MethodId, TaskKind, TrainSettings } from './settings';
import type { BestEval, EvalPoint } from './protocol';

export const DB_NAME = 'finetune-in-browser';
export const DB_VERSION = 1;

export interface BaseModelInfo {
  name: string;
  source: 'hub' | 'folder';
  modelType: string;
  layers: number;
  hidden: number;
  vocabSize: number;
  parameterCount: number;
}

export interface DataInfo {
  fileName: string;
  /** "sha256:<hex>" of the file's bytes. */
  fingerprint: string;
  bytes: number;
  rows: number;
  trainExamples: number;
  validationExamples: number;
}

export interface AdapterMeta {
  id: string;
  runId: string;
  name: string;
  createdAt: number;
  method: MethodId;
  /** Absent in records from before text classification: 'causal-lm'. */
  task?: TaskKind;
  baseModel: BaseModelInfo;
  settings: TrainSettings;
  mapping: ColumnMapping | ClassificationMapping;
  data: DataInfo;
  metrics: {
    finalLoss: number;
    finalEvalLoss: number | null;
    steps: number;
    totalSteps: number;
    stoppedEarly: boolean;
    runtimeS: number;
    /** Classification: the evaluation whose weights were saved (the best one), with the labels. */
    classification?: SavedClassifierMetrics;
  };
  trainableParams: number;
  device: string;
  logHistory: LogEntry[];
  /** Bytes of the stored files. */
  bytes: number;
  /** Set for adapters imported into the library (not trained here): the file or folder they came from. */
  imported?: { from: string };
}

export interface SavedClassifierMetrics {
  labels: string[];
  /** The saved weights' evaluation: the best one when it was put back, else the last. */
  evaluation: EvalPoint;
  best: BestEval | null;
  /** Whether the saved weights are the best evaluation's rather than the last step's. */
  restoredBest: boolean;
}

/** What a stored record was trained for (older records are causal-LM LoRA). */
export function taskOf(meta: { task?: TaskKind }): TaskKind {
  return meta.task ?? 'causal-lm';
}

/**
 * The files of an adapter: PEFT's adapter_model.safetensors, or AdapterHub's adapter.safetensors
 * (bottleneck adapters); a bottleneck classifier also keeps AdapterHub's static head files.
 */
export type AdapterFiles = {
  id: string;
  'adapter_config.json': string;
  'README.md': string;
  'trainer_state.json': string;
  /** AdapterHub's head of a bottleneck classifier (save_adapter(..., with_head=True)). */
  'head_config.json'?: string;
  'model_head.safetensors'?: Uint8Array;
} & ({ 'adapter_model.safetensors': Uint8Array } | { 'adapter.safetensors': Uint8Array });

/** AdapterHub's static head files of a stored bottleneck classifier, or null. */
export function headFilesOf(files: AdapterFiles): { config: string; weights: Uint8Array } | null {
  const config = files['head_config.json'];
  const weights = files['model_head.safetensors'];
  return config !== undefined && weights !== undefined ? { config, weights } : null;
}

/** The weights file of a stored adapter, under the name its format uses. */
export function weightsFileOf(files: AdapterFiles): { name: 'adapter_model.safetensors' | 'adapter.safetensors'; bytes: Uint8Array } {
  return 'adapter.safetensors' in files ? { name: 'adapter.safetensors', bytes: files['adapter.safetensors'] } : { name: 'adapter_model.safetensors', bytes: files['adapter_model.safetensors'] };
}

export interface CheckpointMeta {
  runId: string;
  adapterName: string;
  savedAt: number;
  step: number;
  totalSteps: number;
  seqLen: number;
  settings: TrainSettings;
  task?: TaskKind;
  mapping: ColumnMapping | ClassificationMapping;
  data: { fileName: string; fingerprint: string };
  baseModel: BaseModelInfo;
  logHistory: LogEntry[];
  /** Classification: the labels, every evaluation (with its confusion matrix) and the best one so far. */
  classification?: { labels: string[]; evals: EvalPoint[]; best: BestEval | null };
  /** Set when the run finished and its adapter was saved. */
  adapterId: string | null;
  bytes: number;
  /**
   * Set when the run stopped because the loss or the gradients stopped being finite: resuming with
   * the same settings, data order and seed would diverge again at the same step, so it is not offered.
   */
  diverged?: { step: number; message: string };
}

export interface CheckpointTensors {
  runId: string;
  params: { name: string; shape: number[]; value: Float32Array; m: Float32Array; v: Float32Array }[];
  /** Classification: the best evaluation's parameter values (put back at the end of the run). */
  best?: { name: string; value: Float32Array }[];
}

export class StorageError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'StorageError';
  }
}

/** The browser refused a write for want of space (QuotaExceededError): with what it needed and had. */
export class StorageQuotaError extends StorageError {
  constructor(
    message: string,
    /** About the bytes the refused write needed. */
    readonly neededBytes: number | null,
    /** What navigator.storage.estimate() said right after (null where it says nothing). */
    readonly usage: number | null,
    readonly quota: number | null,
  ) {
    super(message);
    this.name = 'StorageQuotaError';
  }
}

/**
 * A fault the browser tests inject into the write of one step's checkpoint (the page's ?test-hooks,
 * through the worker; never set otherwise), once: 'abort' cuts the transaction off after both
 * records were put, as a crash before the commit would; 'quota' fails it there with the
 * QuotaExceededError a full disk gives (Chromium's CDP quota override does not reach IndexedDB
 * writes reliably enough to test with).
 */
export const storageTestFaults: { checkpointWrite: { atStep: number; fault: 'abort' | 'quota' } | null } = { checkpointWrite: null };

let dbPromise: Promise<IDBDatabase> | null = null;

function openDb(): Promise<IDBDatabase> {
  if (typeof indexedDB === 'undefined') return Promise.reject(new StorageError('This browser has no IndexedDB (private mode?): adapters cannot be kept.'));
  dbPromise ??= new Promise<IDBDatabase>((resolve, reject) => {
    const req = indexedDB.open(DB_NAME, DB_VERSION);
    req.onupgradeneeded = () => {
      const db = req.result;
      if (!db.objectStoreNames.contains('adapters')) db.createObjectStore('adapters', { keyPath: 'id' });
      if (!db.objectStoreNames.contains('adapterFiles')) db.createObjectStore('adapterFiles', { keyPath: 'id' });
      if (!db.objectStoreNames.contains('checkpoints')) db.createObjectStore('checkpoints', { keyPath: 'runId' });
      if (!db.objectStoreNames.contains('checkpointTensors')) db.createObjectStore('checkpointTensors', { keyPath: 'runId' });
    };
    req.onsuccess = () => {
      const db = req.result;
      // Another tab upgrading the schema: let it, and reopen next time.
      db.onversionchange = () => {
        db.close();
        dbPromise = null;
      };
      resolve(db);
    };
    req.onerror = () => {
      dbPromise = null;
      reject(new StorageError(`Could not open the browser database: ${req.error?.message ?? 'unknown error'}`));
    };
    req.onblocked = () => reject(new StorageError('The browser database is held by another tab of this app with an older version; close it and reload.'));
  });
  return dbPromise;
}

type StoreName = 'adapters' | 'adapterFiles' | 'checkpoints' | 'checkpointTensors';

/** Runs `body` in one transaction and resolves when it has committed. */
async function transact<T>(stores: StoreName[], mode: IDBTransactionMode, body: (tx: IDBTransaction) => T | Promise<T>): Promise<T> {
  const db = await openDb();
  const tx = db.transaction(stores, mode);
  const done = new Promise<void>((resolve, reject) => {
    tx.oncomplete = () => resolve();
    tx.onabort = () => reject(quotaAware(tx.error));
    tx.onerror = () => reject(quotaAware(tx.error));
  });
  let result: T;
  try {
    result = await body(tx);
  } catch (e) {
    done.catch(() => undefined); // the abort below rejects it; the body's error is the one to report
    try {
      tx.abort();
    } catch {
      // already finished
    }
    throw e;
  }
  await done;
  return result;
}

function quotaAware(e: DOMException | null): StorageError {
  if (e?.name === 'QuotaExceededError') {
    return new StorageQuotaError('The browser has no more storage for this site: delete old adapters or free disk space.', null, null, null);
  }
  return new StorageError(`Browser database error: ${e?.message ?? 'the transaction was aborted'}`);
}

function formatStorageBytes(n: number): string {
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KB`;
  if (n < 1024 ** 3) return `${(n / 1024 ** 2).toFixed(1)} MB`;
  return `${(n / 1024 ** 3).toFixed(2)} GB`;
}

/** Bytes a record takes, about: its typed arrays plus its JSON-able rest. */
function recordBytes(record: unknown): number {
  let bytes = 0;
  const json = JSON.stringify(record, (_k, v: unknown) => {
    if (ArrayBuffer.isView(v)) {
      bytes += v.byteLength;
      return null;
    }
    return v;
  });
  return bytes + (json?.length ?? 0);
}

/**
 * Runs a write; a quota refusal becomes a StorageQuotaError that says what the write needed and
 * how much of the site's quota is used (the browser's QuotaExceededError says neither).
 */
async function writeWithQuotaReport<T>(what: string, records: unknown[], write: () => Promise<T>): Promise<T> {
  try {
    return await write();
  } catch (e) {
    if (!(e instanceof StorageQuotaError)) throw e;
    const needed = records.reduce<number>((sum, r) => sum + recordBytes(r), 0);
    const { usage, quota } = await storageStatus();
    const used = usage !== null && quota !== null ? ` This site uses ${formatStorageBytes(usage)} of the ${formatStorageBytes(quota)} the browser allows it.` : '';
    throw new StorageQuotaError(
      `Not enough browser storage to save ${what}: it needs about ${formatStorageBytes(needed)}.${used} Delete adapters or unfinished runs you no longer need (in the library), or free disk space.`,
      needed,
      usage,
      quota,
    );
  }
}

function request<T>(req: IDBRequest<T>): Promise<T> {
  return new Promise((resolve, reject) => {
    req.onsuccess = () => resolve(req.result);
    req.onerror = () => reject(quotaAware(req.error));
  });
}

export async function listAdapters(): Promise<AdapterMeta[]> {
  const all = await transact(['adapters'], 'readonly', (tx) => request(tx.objectStore('adapters').getAll() as IDBRequest<AdapterMeta[]>));
  return all.sort((a, b) => b.createdAt - a.createdAt);
}

export async function getAdapterFiles(id: string): Promise<AdapterFiles | null> {
  const r = await transact(['adapterFiles'], 'readonly', (tx) => request(tx.objectStore('adapterFiles').get(id) as IDBRequest<AdapterFiles | undefined>));
  return r ?? null;
}

/** Saves an adapter and marks its run's checkpoint as finished, in one transaction. */
export async function saveAdapter(meta: AdapterMeta, files: AdapterFiles): Promise<void> {
  await writeWithQuotaReport(`the adapter "${meta.name}"`, [meta, files], () =>
    transact(['adapters', 'adapterFiles', 'checkpoints'], 'readwrite', async (tx) => {
      tx.objectStore('adapters').put(meta);
      tx.objectStore('adapterFiles').put(files);
      const ckpts = tx.objectStore('checkpoints');
      const ckpt = await request(ckpts.get(meta.runId) as IDBRequest<CheckpointMeta | undefined>);
      if (ckpt) ckpts.put({ ...ckpt, adapterId: meta.id });
    }),
  );
}

export async function renameAdapter(id: string, name: string): Promise<AdapterMeta> {
  const trimmed = name.trim();
  if (!trimmed) throw new StorageError('An adapter needs a name.');
  return transact(['adapters'], 'readwrite', async (tx) => {
    const store = tx.objectStore('adapters');
    const meta = await request(store.get(id) as IDBRequest<AdapterMeta | undefined>);
    if (!meta) throw new StorageError('That adapter no longer exists (deleted in another tab?).');
    const renamed = { ...meta, name: trimmed };
    store.put(renamed);
    return renamed;
  });
}

/** Marks a run's checkpoint as diverged (see CheckpointMeta.diverged); nothing happens when there is none. */
export async function markCheckpointDiverged(runId: string, diverged: { step: number; message: string }): Promise<void> {
  await transact(['checkpoints'], 'readwrite', async (tx) => {
    const store = tx.objectStore('checkpoints');
    const meta = await request(store.get(runId) as IDBRequest<CheckpointMeta | undefined>);
    if (meta) store.put({ ...meta, diverged });
  });
}

/** Deletes an adapter, its files and its run's checkpoint. */
export async function deleteAdapter(id: string): Promise<void> {
  await transact(['adapters', 'adapterFiles', 'checkpoints', 'checkpointTensors'], 'readwrite', async (tx) => {
    const meta = await request(tx.objectStore('adapters').get(id) as IDBRequest<AdapterMeta | undefined>);
    tx.objectStore('adapters').delete(id);
    tx.objectStore('adapterFiles').delete(id);
    if (meta) {
      tx.objectStore('checkpoints').delete(meta.runId);
      tx.objectStore('checkpointTensors').delete(meta.runId);
    }
  });
}

/**
 * Replaces the run's checkpoint (only the latest is kept): meta and tensors in one transaction, so
 * a write that fails or is cut off part-way leaves the previous checkpoint as it was.
 */
export async function saveCheckpoint(meta: CheckpointMeta, tensors: CheckpointTensors): Promise<void> {
  await writeWithQuotaReport(`the checkpoint at step ${meta.step}`, [meta, tensors], () =>
    transact(['checkpoints', 'checkpointTensors'], 'readwrite', async (tx) => {
      const written = Promise.all([request(tx.objectStore('checkpoints').put(meta)), request(tx.objectStore('checkpointTensors').put(tensors))]);
      const fault = storageTestFaults.checkpointWrite;
      if (fault && fault.atStep === meta.step) {
        storageTestFaults.checkpointWrite = null;
        await written;
        // Both records are in the transaction now; failing here aborts it before the commit.
        if (fault.fault === 'quota') throw quotaAware(new DOMException('The quota has been exceeded (test hook).', 'QuotaExceededError'));
        throw new StorageError(`Browser database error: the write of the checkpoint at step ${meta.step} was cut off before it committed (test hook).`);
      }
      await written;
    }),
  );
}

export async function listCheckpoints(): Promise<CheckpointMeta[]> {
  const all = await transact(['checkpoints'], 'readonly', (tx) => request(tx.objectStore('checkpoints').getAll() as IDBRequest<CheckpointMeta[]>));
  return all.sort((a, b) => b.savedAt - a.savedAt);
}

export async function getCheckpoint(runId: string): Promise<{ meta: CheckpointMeta; tensors: CheckpointTensors } | null> {
  return transact(['checkpoints', 'checkpointTensors'], 'readonly', async (tx) => {
    const meta = await request(tx.objectStore('checkpoints').get(runId) as IDBRequest<CheckpointMeta | undefined>);
    const tensors = await request(tx.objectStore('checkpointTensors').get(runId) as IDBRequest<CheckpointTensors | undefined>);
    return meta && tensors ? { meta, tensors } : null;
  });
}

export async function deleteCheckpoint(runId: string): Promise<void> {
  await transact(['checkpoints', 'checkpointTensors'], 'readwrite', (tx) => {
    tx.objectStore('checkpoints').delete(runId);
    tx.objectStore('checkpointTensors').delete(runId);
  });
}

export interface StorageStatus {
  /** true: the browser will not evict our data under storage pressure. null: unknown. */
  persisted: boolean | null;
  usage: number | null;
  quota: number | null;
}

/** Asks the browser to keep our data (it may say no; Chrome decides from site engagement). */
export async function requestPersistence(): Promise<boolean | null> {
  const storage = (globalThis.navigator as Navigator | undefined)?.storage;
  if (!storage?.persist) return null;
  try {
    return (await storage.persisted()) || (await storage.persist());
  } catch {
    return null;
  }
}

export async function storageStatus(): Promise<StorageStatus> {
  const storage = (globalThis.navigator as Navigator | undefined)?.storage;
  if (!storage?.estimate) return { persisted: null, usage: null, quota: null };
  const [estimate, persisted] = await Promise.all([storage.estimate().catch(() => null), storage.persisted?.().catch(() => null) ?? null]);
  return { persisted, usage: estimate?.usage ?? null, quota: estimate?.quota ?? null };
}

/** "sha256:<hex>" of a file. Files over 1 GiB are hashed as the SHA-256 of their 64 MiB chunks' digests. */
export async function fingerprintFile(file: Blob): Promise<string> {
  const hex = (b: ArrayBuffer) => [...new Uint8Array(b)].map((x) => x.toString(16).padStart(2, '0')).join('');
  if (file.size <= 2 ** 30) return `sha256:${hex(await crypto.subtle.digest('SHA-256', await file.arrayBuffer()))}`;
  const chunk = 64 * 2 ** 20;
  const digests = new Uint8Array(Math.ceil(file.size / chunk) * 32);
  for (let i = 0, k = 0; i < file.size; i += chunk, k++) {
    digests.set(new Uint8Array(await crypto.subtle.digest('SHA-256', await file.slice(i, i + chunk).arrayBuffer())), k * 32);
  }
  return `sha256-64MiB-chunks:${hex(await crypto.subtle.digest('SHA-256', digests))}`;
}
