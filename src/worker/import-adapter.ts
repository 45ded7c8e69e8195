// Importing an adapter into the library: our own zip, a PEFT adapter folder's files
// (adapter_config.json + adapter_model.safetensors, as save_pretrained writes them, zipped or not),
// or an AdapterHub bottleneck adapter (adapter.safetensors). The files are read here; the worker
// loads them onto the model it holds (src/engine/peft/import.ts checks method, names and shapes) so
// an adapter made for another model is refused with the tensor that does not fit, then stores them.

import { unzipSync } from 'fflate';
import type { AdapterFiles, AdapterMeta, BaseModelInfo } from './storage';
import { withDefaults, type TrainSettings } from './settings';
import type { MethodId } from './methods';

export class AdapterImportError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'AdapterImportError';
  }
}

export interface ImportedFile {
  /** The file's path as picked (a zip's entries get their paths inside it). */
  path: string;
  bytes: Uint8Array;
}

export interface CollectedAdapter {
  /** A name for the library: the zip's or the folder's, else the base model's. */
  name: string;
  config: string;
  weightsName: 'adapter_model.safetensors' | 'adapter.safetensors';
  weights: Uint8Array;
  readme: string | null;
  trainerState: string | null;
}

const baseName = (p: string) => p.split('/').pop() ?? p;

/** The adapter's files among those picked (zips unpacked); errors name what is missing. */
export function collectAdapterFiles(picked: readonly ImportedFile[]): CollectedAdapter {
  if (picked.length === 0) throw new AdapterImportError('No files were picked.');
  const files: ImportedFile[] = [];
  let name: string | null = null;
  for (const f of picked) {
    if (f.path.toLowerCase().endsWith('.zip')) {
      name ??= baseName(f.path).replace(/\.zip$/i, '');
      let entries: Record<string, Uint8Array>;
      try {
        entries = unzipSync(f.bytes);
      } catch (e) {
        throw new AdapterImportError(`${baseName(f.path)} is not a readable zip (${(e as Error).message}).`);
      }
      for (const [p, bytes] of Object.entries(entries)) if (!p.endsWith('/')) files.push({ path: p, bytes });
    } else {
      files.push(f);
      const dir = f.path.split('/').slice(-2, -1)[0];
      if (dir) name ??= dir;
    }
  }
  const find = (file: string) => {
    const hits = files.filter((f) => baseName(f.path) === file);
    if (hits.length > 1) throw new AdapterImportError(`There are ${hits.length} files named ${file}: pick one adapter at a time.`);
    return hits[0] ?? null;
  };
  const config = find('adapter_config.json');
  if (!config) throw new AdapterImportError('There is no adapter_config.json among the files: an adapter is adapter_config.json with adapter_model.safetensors (PEFT) or adapter.safetensors (AdapterHub).');
  const peftWeights = find('adapter_model.safetensors');
  const hubWeights = find('adapter.safetensors');
  const weights = peftWeights ?? hubWeights;
  if (!weights) {
    const bin = files.find((f) => /\.bin$/.test(f.path));
    throw new AdapterImportError(bin
      ? `${baseName(bin.path)} is a pickle, which this app does not load: save the adapter with safetensors (PEFT does by default).`
      : 'There is no adapter_model.safetensors (or AdapterHub adapter.safetensors) beside adapter_config.json.');
  }
  const text = (f: ImportedFile | null) => (f ? new TextDecoder().decode(f.bytes) : null);
  return {
    name: name ?? 'imported adapter',
    config: text(config)!,
    weightsName: peftWeights ? 'adapter_model.safetensors' : 'adapter.safetensors',
    weights: weights.bytes,
    readme: text(find('README.md')),
    trainerState: text(find('trainer_state.json')),
  };
}

/** The method and the settings the library shows, read from the adapter's config. */
export function settingsFromConfig(configText: string): { method: MethodId; settings: TrainSettings } {
  let cfg: Record<string, unknown>;
  try {
    cfg = JSON.parse(configText) as Record<string, unknown>;
  } catch (e) {
    throw new AdapterImportError(`adapter_config.json is not valid JSON (${(e as Error).message}).`);
  }
  const list = (v: unknown): string[] => (Array.isArray(v) ? v.filter((x): x is string => typeof x === 'string') : typeof v === 'string' ? [v] : []);
  switch (cfg.peft_type) {
    case 'LORA': {
      const method: MethodId = cfg.use_dora ? 'dora' : 'lora';
      return { method, settings: withDefaults({ method, rank: Number(cfg.r), alpha: Number(cfg.lora_alpha), dropout: Number(cfg.lora_dropout ?? 0), targetModules: list(cfg.target_modules), useRslora: Boolean(cfg.use_rslora) }) };
    }
    case 'IA3':
      return { method: 'ia3', settings: withDefaults({ method: 'ia3', ia3Targets: list(cfg.target_modules), ia3Feedforward: list(cfg.feedforward_modules) }) };
    case 'PROMPT_TUNING':
      return { method: 'prompt', settings: withDefaults({ method: 'prompt', virtualTokens: Number(cfg.num_virtual_tokens) }) };
    case 'PREFIX_TUNING':
      return { method: 'prefix', settings: withDefaults({ method: 'prefix', virtualTokens: Number(cfg.num_virtual_tokens), prefixProjection: Boolean(cfg.prefix_projection) }) };
    case undefined:
      // AdapterHub's adapter_config.json: {"config": {...}, "name": ...}
      if (cfg.config && typeof cfg.config === 'object') {
        const c = cfg.config as Record<string, unknown>;
        return { method: 'bottleneck', settings: withDefaults({ method: 'bottleneck', reductionFactor: Number(c.reduction_factor) || 16, bottleneckName: typeof cfg.name === 'string' ? cfg.name : 'adapter' }) };
      }
      throw new AdapterImportError('adapter_config.json names no peft_type: this is not a PEFT adapter.');
    default:
      throw new AdapterImportError(`${String(cfg.peft_type)} adapters are not supported here (LoRA, DoRA, IA3, prompt tuning, prefix tuning, AdapterHub bottleneck adapters).`);
  }
}

/** The library record and stored files of an imported adapter (already loaded onto the model once). */
export function importedAdapterRecord(
  collected: CollectedAdapter, baseModel: BaseModelInfo, trainableParams: number, device: string, pickedName: string,
): { meta: AdapterMeta; files: AdapterFiles } {
  const { method, settings } = settingsFromConfig(collected.config);
  const id = `adapter-${Date.now().toString(36)}-${Math.floor(Math.random() * 1e9).toString(36)}`;
  const readme = collected.readme ?? `# ${collected.name}\n\nImported into the library from ${pickedName}; base model ${baseModel.name}.\n`;
  const trainerState = collected.trainerState ?? '{"log_history": []}\n';
  const files = { id, 'adapter_config.json': collected.config, 'README.md': readme, 'trainer_state.json': trainerState, [collected.weightsName]: collected.weights } as AdapterFiles;
  const meta: AdapterMeta = {
    id,
    runId: `imported-${id}`,
    name: collected.name,
    createdAt: Date.now(),
    method,
    task: 'causal-lm',
    baseModel,
    settings,
    mapping: { kind: 'text', text: '' },
    data: { fileName: '', fingerprint: '', bytes: 0, rows: 0, trainExamples: 0, validationExamples: 0 },
    metrics: { finalLoss: NaN, finalEvalLoss: null, steps: 0, totalSteps: 0, stoppedEarly: false, runtimeS: 0 },
    trainableParams,
    device,
    logHistory: [],
    bytes: collected.weights.byteLength + collected.config.length + readme.length + trainerState.length,
    imported: { from: pickedName },
  };
  return { meta, files };
}
