// Step 2: the base model, downloaded from the Hugging Face hub (kept in the browser's cache for
// the next visit) or read from a folder on disk: a causal LM generates text, an encoder (DistilBERT,
// BERT) becomes a text classifier. Then its size, what the chosen method trains, and the GPU memory
// the run will take.

import { useState, type ChangeEvent, type DragEvent } from 'react';
import { useApp } from '../store';
import { ErrorBox, ProgressBar, Section } from './common';
import { formatBytes, formatCount, formatInt } from '../format';
import type { MemoryEstimate, ModelSummary } from '../../worker/protocol';
import { METHOD_BY_ID } from '../../worker/methods';
import type { TrainSettings } from '../../worker/settings';
import { MODEL_SUGGESTIONS, SUPPORTED_ARCHITECTURES, TASK_NAMES, type ModelSuggestion } from '../models';

export function ModelSection() {
  const model = useApp((s) => s.model);
  const repoId = useApp((s) => s.repoId);
  const setRepoId = useApp((s) => s.setRepoId);
  const hubEndpoint = useApp((s) => s.hubEndpoint);
  const setHubEndpoint = useApp((s) => s.setHubEndpoint);
  const downloadModel = useApp((s) => s.downloadModel);
  const cancelDownload = useApp((s) => s.cancelDownload);
  const loadModelFolder = useApp((s) => s.loadModelFolder);
  const frozenWeights = useApp((s) => s.settings.frozenWeights);
  const training = useApp((s) => s.training.phase);
  const runActive = !['idle', 'done', 'failed'].includes(training);
  const busy = model.status === 'downloading' || model.status === 'loading' || runActive;
  const [over, setOver] = useState(false);

  const onPickFolder = (e: ChangeEvent<HTMLInputElement>) => {
    const files = Array.from(e.target.files ?? []);
    e.target.value = '';
    if (files.length) void loadModelFolder(files.map((file) => ({ path: file.webkitRelativePath || file.name, file })));
  };
  const onDrop = (e: DragEvent) => {
    e.preventDefault();
    setOver(false);
    if (busy) return;
    // Entries must be taken synchronously, inside the drop event.
    const entries = Array.from(e.dataTransfer.items)
      .map((item) => item.webkitGetAsEntry?.())
      .filter((x): x is FileSystemEntry => !!x);
    void filesOfEntries(entries).then((files) => {
      if (files.length) void loadModelFolder(files);
    });
  };

  return (
    <Section
      id="model"
      step={2}
      title="Base model"
      subtitle="A Hugging Face model in safetensors format, from the hub or from a folder on this computer: a causal language model learns to write, an encoder (DistilBERT, BERT) learns to classify texts."
    >
      <form
        className="hub-row"
        onSubmit={(e) => {
          e.preventDefault();
          if (!busy) void downloadModel();
        }}
      >
        <div className={`field hub-field${model.status === 'error' && model.input === 'repoId' ? ' field-invalid' : ''}`}>
          <label htmlFor="repo-id">Hugging Face model id</label>
          <input
            id="repo-id"
            data-testid="repo-id"
            value={repoId}
            spellCheck={false}
            autoComplete="off"
            placeholder="owner/name"
            list="model-suggestion-list"
            onChange={(e) => setRepoId(e.target.value)}
            disabled={busy}
          />
          <datalist id="model-suggestion-list">
            {MODEL_SUGGESTIONS.map((m) => (
              <option key={m.repo} value={m.repo}>
                {`${m.family} · ${TASK_NAMES[m.task].toLowerCase()} · ${formatCount(m.parameters)} parameters · ${formatBytes(m.downloadBytes)}`}
              </option>
            ))}
          </datalist>
        </div>
        {model.status === 'downloading' ? (
          <button type="button" className="button button-secondary" onClick={cancelDownload} data-testid="cancel-download">
            Cancel download
          </button>
        ) : (
          <button type="submit" className="button" disabled={busy || repoId.trim() === ''} data-testid="download-model">
            Download
          </button>
        )}
      </form>
      <div className="model-suggestions" data-testid="model-suggestions">
        <span className="muted small">
          Small models that train in a browser ({frozenWeights === 'f16' ? 'frozen weights in F16 on the GPU: about 2 bytes a parameter' : 'F32 on the GPU: 4 bytes a parameter'}):
        </span>
        {(['causal-lm', 'classification'] as const).map((task) => (
          <div className="suggestion-group" key={task} data-testid={`suggestions-${task}`}>
            <h4>{task === 'causal-lm' ? 'Text generation (learns prompt → completion)' : 'Text classification (learns a label per text)'}</h4>
            <ul className="suggestion-list">
              {MODEL_SUGGESTIONS.filter((m) => m.task === task).map((m) => (
                <li key={m.repo}>
                  <SuggestionButton m={m} frozen={frozenWeights} selected={repoId.trim() === m.repo} disabled={busy} onPick={() => setRepoId(m.repo)} />
                </li>
              ))}
            </ul>
          </div>
        ))}
        <p className="muted small" data-testid="supported-architectures">
          Supported architectures: {SUPPORTED_ARCHITECTURES}; weights as safetensors in F32, F16 or BF16.
        </p>
      </div>
      <details className="endpoint" data-testid="hub-endpoint-details">
        <summary>Download from a mirror</summary>
        <div className="field hub-field">
          <label htmlFor="hub-endpoint">Hub address (the same URL layout as huggingface.co)</label>
          <input
            id="hub-endpoint"
            data-testid="hub-endpoint"
            value={hubEndpoint}
            spellCheck={false}
            autoComplete="off"
            disabled={busy}
            onChange={(e) => setHubEndpoint(e.target.value)}
          />
          <span className="field-hint">Downloaded files are kept in this browser, so a model loads again without the network.</span>
        </div>
      </details>
      <div
        className={`dropzone dropzone-compact${over ? ' dropzone-over' : ''}`}
        onDragOver={(e) => {
          e.preventDefault();
          setOver(true);
        }}
        onDragLeave={() => setOver(false)}
        onDrop={onDrop}
        data-testid="model-dropzone"
      >
        <div className="dropzone-text">
          <strong>Or drop a model folder here</strong>
          <span className="muted">config.json, model.safetensors, tokenizer.json, tokenizer_config.json</span>
        </div>
        <label className={`button button-secondary${busy ? ' button-disabled' : ''}`}>
          Choose a folder…
          <input
            type="file"
            className="visually-hidden"
            data-testid="model-folder-input"
            disabled={busy}
            onChange={onPickFolder}
            // React has no typed prop for these; they make the picker choose a folder.
            {...{ webkitdirectory: '', directory: '' }}
            multiple
          />
        </label>
      </div>

      {model.status === 'downloading' && <DownloadProgress />}
      {model.status === 'loading' && (
        <div className="loading-line" data-testid="model-loading">
          <span>
            Loading <strong>{model.name}</strong>: {model.message}…
          </span>
          <ProgressBar fraction={null} label="Loading the model" />
        </div>
      )}
      {model.status === 'error' && (
        <ErrorBox testId="model-error" title="Could not load the model:">
          {model.message}
        </ErrorBox>
      )}
      {model.status === 'ready' && <ModelFacts summary={model.summary} />}
    </Section>
  );
}

const ARCHITECTURE_NAMES: Record<string, string> = { gpt2: 'GPT-2', llama: 'Llama family', distilbert: 'DistilBERT', bert: 'BERT' };

function SuggestionButton({ m, frozen, selected, disabled, onPick }: { m: ModelSuggestion; frozen: TrainSettings['frozenWeights']; selected: boolean; disabled: boolean; onPick: () => void }) {
  return (
    <button
      type="button"
      className={`suggestion${selected ? ' suggestion-selected' : ''}`}
      disabled={disabled}
      aria-pressed={selected}
      onClick={onPick}
      data-testid="model-suggestion"
      data-repo={m.repo}
    >
      <code>{m.repo}</code>
      <span className="suggestion-facts">
        {m.family} · {formatCount(m.parameters)} parameters · {formatBytes(m.downloadBytes)} download ({m.storedDType}) · {formatBytes((frozen === 'f16' ? 2 : 4) * m.parameters)} on the GPU{frozen === 'f16' ? ' in f16' : ''}
      </span>
    </button>
  );
}

async function filesOfEntries(entries: FileSystemEntry[]): Promise<{ path: string; file: File }[]> {
  const out: { path: string; file: File }[] = [];
  const walk = async (entry: FileSystemEntry, prefix: string): Promise<void> => {
    if (entry.isFile) {
      const file = await new Promise<File>((resolve, reject) => (entry as FileSystemFileEntry).file(resolve, reject));
      out.push({ path: `${prefix}${entry.name}`, file });
    } else if (entry.isDirectory) {
      const reader = (entry as FileSystemDirectoryEntry).createReader();
      // readEntries returns the folder in batches until an empty one.
      for (;;) {
        const batch = await new Promise<FileSystemEntry[]>((resolve, reject) => reader.readEntries(resolve, reject));
        if (batch.length === 0) break;
        for (const child of batch) await walk(child, `${prefix}${entry.name}/`);
      }
    }
  };
  for (const e of entries) await walk(e, '');
  return out;
}

function DownloadProgress() {
  const model = useApp((s) => s.model);
  if (model.status !== 'downloading') return null;
  const overall = model.total ? model.loaded / model.total : null;
  return (
    <div className="download" data-testid="download-progress">
      <div className="loading-line">
        <span>
          Downloading <strong>{model.repo}</strong>
          {model.total ? ` — ${formatBytes(model.loaded)} of ${formatBytes(model.total)}` : model.loaded ? ` — ${formatBytes(model.loaded)}` : ' — finding the files…'}
        </span>
        <ProgressBar fraction={overall} label="Overall download" />
      </div>
      <ul className="file-progress">
        {model.files.map((f) => (
          <li key={f.file}>
            <span className="file-name">{f.file}</span>
            <ProgressBar small fraction={f.total ? f.loaded / f.total : null} label={f.file} />
            <span className="file-size">{f.fromCache ? 'from cache' : f.total ? `${formatBytes(f.loaded)} / ${formatBytes(f.total)}` : formatBytes(f.loaded)}</span>
          </li>
        ))}
      </ul>
    </div>
  );
}

function ModelFacts({ summary }: { summary: ModelSummary }) {
  const settings = useApp((s) => s.settings);
  const prepare = useApp((s) => s.prepare);
  const labels = useApp((s) => s.labels);
  const dataReady = useApp((s) => s.data.status === 'ready');
  const fallback = useApp((s) => s.gpu.status === 'ready' && s.gpu.info.gpu.isFallbackAdapter);
  const result = prepare.status === 'ready' ? prepare.result : prepare.status === 'running' ? prepare.previous : null;
  const method = METHOD_BY_ID[settings.method];
  // As PEFT counts them: the method's tensors, plus for a classifier the head it trains in full.
  const adapter = method.tasks.includes(summary.task) ? method.trainableParams(settings, summary.peft) : 0;
  const head = summary.classifier;
  const K =
    result?.task === 'classification' ? result.labels.length : labels.status === 'ready' ? labels.summary.labels.names.length : labels.status === 'loading' && labels.previous ? labels.previous.labels.names.length : null;
  const headCount = head ? head.fixedTrainable + (K ?? 2) * head.perLabel : 0;
  const trainable = adapter + headCount;
  const all = summary.parameterCount + (head ? (K ?? 2) * head.perLabel : 0) + adapter;
  const methodLabel = `${method.name}${method.id === 'lora' ? ` r=${Number.isFinite(settings.rank) ? settings.rank : '?'}` : ''}${head ? ' + head' : ''}`;
  return (
    <div className="model-facts" data-testid="model-summary">
      <dl className="facts">
        <div>
          <dt>Model</dt>
          <dd data-testid="model-name">{summary.name}</dd>
        </div>
        <div>
          <dt>Architecture</dt>
          <dd>
            {ARCHITECTURE_NAMES[summary.architecture] ?? summary.architecture}
            {summary.modelType !== summary.architecture ? ` (${summary.modelType})` : ''} · {summary.layers} layers · {summary.hidden} wide · {summary.heads} heads
          </dd>
        </div>
        <div>
          <dt>Task</dt>
          <dd data-testid="model-task">
            {TASK_NAMES[summary.task]}
            {head && (
              <span className="muted">
                {' '}
                · {head.className}; {head.trainedModules.join(' and ')} trained in full (PEFT modules_to_save)
              </span>
            )}
          </dd>
        </div>
        <div>
          <dt>Vocabulary · context</dt>
          <dd>
            {formatInt(summary.vocabSize)} tokens · up to {formatInt(summary.maxPositions)} tokens
          </dd>
        </div>
        <div>
          <dt>Parameters</dt>
          <dd data-testid="model-params">
            {formatCount(summary.parameterCount)} <span className="muted">(stored as {summary.storedDType}, {summary.frozenDType === 'f16' ? 'kept in F16 on the GPU with F32 sums' : 'trained in F32'}{head ? '; without the classifier layer' : ''})</span>
          </dd>
        </div>
        <div>
          <dt>Weights on the GPU</dt>
          <dd data-testid="model-weight-bytes">
            {formatBytes(summary.weightBytes)} <span className="muted">({summary.frozenDType === 'f16' ? 'frozen matrices in f16' : 'f32'})</span>
          </dd>
        </div>
        <div>
          <dt>Trainable ({methodLabel})</dt>
          <dd data-testid="trainable-params" data-method={method.id}>
            {formatInt(trainable)} <span className="muted">of {formatInt(all)} ({((100 * trainable) / all).toFixed(4)} %){head ? ` · head for ${K === null ? '2 labels until the label column is read' : `${K} labels`}` : ''}</span>
          </dd>
        </div>
        <div>
          <dt>GPU memory for training</dt>
          <dd data-testid="memory-estimate" data-bytes={result ? result.memory.total : ''}>
            {result ? (
              <MemoryLine memory={result.memory} classifier={head !== null} />
            ) : (
              <span className="muted">{dataReady ? 'estimating…' : 'estimated once data is loaded (it depends on the sequence length)'}</span>
            )}
          </dd>
        </div>
      </dl>
      {summary.notes.length > 0 && (
        <ul className="model-notes muted small" data-testid="model-notes">
          {summary.notes.map((n) => (
            <li key={n}>{n}</li>
          ))}
        </ul>
      )}
      {result?.memory.warning && (
        <p className="warning-box" data-testid="memory-warning">
          GPU memory: {result.memory.warning}
        </p>
      )}
      {fallback && summary.parameterCount > 20e6 && (
        <p className="warning-box" data-testid="slow-model-warning">
          {formatCount(summary.parameterCount)} parameters on a software renderer (no GPU): each step will take minutes. Pick a much smaller
          model here, or use a computer whose GPU Chrome can use.
        </p>
      )}
      <p className="peft-line muted small" data-testid="peft-line">
        trainable params: {formatInt(trainable)} || all params: {formatInt(all)} || trainable%: {((100 * trainable) / all).toFixed(4)}
      </p>
    </div>
  );
}

/** The estimate's total, then what it is made of. */
function MemoryLine({ memory: m, classifier }: { memory: MemoryEstimate; classifier: boolean }) {
  const training = m.activations - m.evaluation;
  return (
    <>
      about {formatBytes(m.total)}{' '}
      <span className="muted" data-testid="memory-breakdown">
        (weights {formatBytes(m.weights)} + training activations {formatBytes(training)}
        {m.evaluation > 0 ? ` + evaluation ${formatBytes(m.evaluation)}` : ''} + adapter{classifier ? ' and head' : ''} with optimizer state {formatBytes(m.adapter)}; largest buffer{' '}
        {formatBytes(m.largestBuffer)} of the {formatBytes(m.bufferLimit)} allowed)
      </span>
    </>
  );
}
