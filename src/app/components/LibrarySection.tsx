// Step 5: what is kept in this browser. Finished adapters (rename, delete, download as a PEFT zip,
// merged into the base model, or as a Python project that continues the run)
// and runs that stopped half-way (resume from their last checkpoint).

import { useState } from 'react';
import { useApp } from '../store';
import { taskOf, type AdapterMeta, type CheckpointMeta } from '../../worker/storage';
import { METHOD_BY_ID } from '../../worker/methods';
import { withDefaults } from '../../worker/settings';
import { mergeRefusal } from '../../worker/merge-adapter';
import { pythonProjectRefusal } from '../python-project';
import { Section } from './common';
import { formatF1, formatPercent } from './ClassifierViews';
import { formatBytes, formatDate, formatInt, formatLoss } from '../format';

export function LibrarySection() {
  const library = useApp((s) => s.library);
  const training = useApp((s) => s.training);
  const running = !['idle', 'done', 'failed'].includes(training.phase);
  // The run in progress has a checkpoint too; it is not "unfinished" while it runs.
  const unfinished = library.checkpoints.filter((c) => c.adapterId === null && !(running && c.runId === training.runId));
  const storage = library.storage;
  return (
    <Section
      id="library"
      step={5}
      title="Library"
      subtitle="Adapters are kept in this browser (IndexedDB) until you delete them."
      aside={
        storage && (
          <span className="muted small" data-testid="storage-status">
            {storage.usage !== null ? `${formatBytes(storage.usage)} used` : ''}
            {storage.persisted === true ? ' · kept by the browser' : storage.persisted === false ? ' · the browser may clear it when disk space runs low' : ''}
          </span>
        )
      }
    >
      {library.error && <p className="error-box">{library.error}</p>}
      {library.adapters.length === 0 ? (
        <p className="muted" data-testid="library-empty">
          No adapters yet. Finished training runs appear here.
        </p>
      ) : (
        <div className="table-scroll">
          <table className="library-table" data-testid="library-table">
            <thead>
              <tr>
                <th scope="col">Name</th>
                <th scope="col">Base model</th>
                <th scope="col">Method</th>
                <th scope="col" className="num">
                  Final loss
                </th>
                <th scope="col" className="num">
                  Validation
                </th>
                <th scope="col">
                  <span className="visually-hidden">Actions</span>
                </th>
              </tr>
            </thead>
            <tbody>
              {library.adapters.map((a) => (
                <AdapterRow key={a.id} adapter={a} busy={library.busy[a.id]} />
              ))}
            </tbody>
          </table>
        </div>
      )}
      {unfinished.length > 0 && <UnfinishedRuns runs={unfinished} />}
      <ImportAdapter status={library.busy['import']} />
    </Section>
  );
}

/** Adds an adapter made elsewhere (our zip, PEFT's save_pretrained folder, AdapterHub's) for the loaded model. */
function ImportAdapter({ status }: { status?: string }) {
  const modelReady = useApp((s) => s.model.status === 'ready');
  const { importAdapterFiles } = useApp.getState();
  return (
    <div className="import-adapter" data-testid="import-adapter">
      <label className={`button button-small button-secondary${modelReady ? '' : ' disabled'}`} title={modelReady ? 'A zip, or adapter_config.json with adapter_model.safetensors (PEFT) or adapter.safetensors (AdapterHub)' : 'Load the base model first'}>
        Import an adapter…
        <input
          type="file"
          multiple
          accept=".zip,.json,.safetensors"
          disabled={!modelReady}
          className="visually-hidden"
          data-testid="import-adapter-input"
          onChange={(e) => {
            const files = Array.from(e.target.files ?? []);
            e.target.value = '';
            void importAdapterFiles(files);
          }}
        />
      </label>{' '}
      <span className="muted small">our zip, or a PEFT adapter folder&apos;s adapter_config.json + adapter_model.safetensors, for the loaded model</span>
      {status && (
        <div className={status.startsWith('Error') ? 'field-error' : 'muted small'} data-testid="import-adapter-status">
          {status}
        </div>
      )}
    </div>
  );
}

function AdapterRow({ adapter: a, busy }: { adapter: AdapterMeta; busy?: string }) {
  const { renameAdapter, deleteAdapter, downloadAdapter, downloadMergedModel, downloadPythonProject } = useApp.getState();
  const pythonRefusal = pythonProjectRefusal(a);
  // merging needs the adapter's base model loaded (the same check as resuming a run)
  const baseLoaded = useApp((st) => st.model.status === 'ready' && st.model.summary.name === a.baseModel.name);
  const mergeBlocked = mergeRefusal(a) ?? (baseLoaded ? null : `Load ${a.baseModel.name} to merge the adapter into it`);
  const [editing, setEditing] = useState(false);
  const [name, setName] = useState(a.name);
  const [confirming, setConfirming] = useState(false);
  return (
    <tr data-testid="library-row" data-adapter-id={a.id}>
      <td className="name-cell">
        {editing ? (
          <form
            className="rename-form"
            onSubmit={(e) => {
              e.preventDefault();
              if (name.trim() === '') return;
              void renameAdapter(a.id, name).then(() => setEditing(false));
            }}
          >
            <input aria-label="New name" value={name} autoFocus onChange={(e) => setName(e.target.value)} data-testid="rename-input" />
            <button type="submit" className="button button-small" disabled={name.trim() === ''} data-testid="rename-save">
              Save
            </button>
            <button
              type="button"
              className="button button-small button-secondary"
              onClick={() => {
                setName(a.name);
                setEditing(false);
              }}
            >
              Cancel
            </button>
          </form>
        ) : (
          <>
            <div className="adapter-name" data-testid="library-name">
              {a.name}
            </div>
            <div className="muted small">
              {a.imported ? (
                <span data-testid="library-data">imported from {a.imported.from}</span>
              ) : (
                <span title={`${a.data.fileName}: ${a.data.fingerprint}`} data-testid="library-data">
                  {a.data.fileName} ({shortHash(a.data.fingerprint)})
                </span>
              )}{' '}
              {a.imported ? '' : ` · ${formatInt(a.metrics.steps)} steps`}
              {a.metrics.stoppedEarly ? ` of ${formatInt(a.metrics.totalSteps)} (stopped)` : ''} · {formatBytes(a.bytes)} ·{' '}
              <span data-testid="library-date">{formatDate(a.createdAt)}</span>
            </div>
          </>
        )}
        {busy && <div className={busy.startsWith('Error') ? 'field-error' : 'muted small'}>{busy}</div>}
      </td>
      <td>
        {a.baseModel.name}
        <div className="muted small" data-testid="library-task">
          {taskOf(a) === 'classification' ? `text classification · ${a.metrics.classification?.labels.length ?? '?'} labels` : 'text generation'}
        </div>
      </td>
      <td data-testid="library-method">
        <MethodCell adapter={a} />
      </td>
      <td className="num" data-testid="library-loss">
        {formatLoss(a.metrics.finalLoss)}
      </td>
      <td className="num" data-testid="library-validation">
        {a.metrics.classification ? (
          <>
            <div>
              acc <span data-testid="library-accuracy">{formatPercent(a.metrics.classification.evaluation.accuracy)}</span>
            </div>
            <div className="muted small">
              F1 <span data-testid="library-f1">{formatF1(a.metrics.classification.evaluation.f1)}</span> · step {a.metrics.classification.evaluation.step}
            </div>
          </>
        ) : (
          formatLoss(a.metrics.finalEvalLoss)
        )}
      </td>
      <td className="library-actions">
        <div className="action-buttons">
          {confirming ? (
            <span className="confirm">
              Delete?{' '}
              <button type="button" className="button button-small button-danger" onClick={() => void deleteAdapter(a.id)} data-testid="delete-confirm">
                Delete
              </button>
              <button type="button" className="button button-small button-secondary" onClick={() => setConfirming(false)}>
                Keep
              </button>
            </span>
          ) : (
            <>
              <button type="button" className="button button-small" onClick={() => void downloadAdapter(a.id)} data-testid="library-download">
                Download
              </button>
              <button
                type="button"
                className="button button-small button-secondary"
                onClick={() => void downloadMergedModel(a.id)}
                disabled={mergeBlocked !== null}
                title={mergeBlocked ?? `The base model with this adapter folded into its weights (like PEFT's merge_and_unload), as a folder transformers loads`}
                data-testid="library-merge"
              >
                Merged model
              </button>
              <button
                type="button"
                className="button button-small button-secondary"
                onClick={() => void downloadPythonProject(a.id)}
                disabled={pythonRefusal !== null}
                title={pythonRefusal ?? 'A folder that continues this run with transformers + PEFT on a GPU server (python train.py, or accelerate launch train.py)'}
                data-testid="library-python"
              >
                Python project
              </button>
              <button type="button" className="button button-small button-secondary" onClick={() => setEditing(true)} disabled={editing} data-testid="library-rename">
                Rename
              </button>
              <button type="button" className="button button-small button-secondary" onClick={() => setConfirming(true)} data-testid="library-delete">
                Delete
              </button>
            </>
          )}
        </div>
      </td>
    </tr>
  );
}

/** The method and its main settings (older records are LoRA). */
function MethodCell({ adapter: a }: { adapter: AdapterMeta }) {
  const method = METHOD_BY_ID[a.method] ?? METHOD_BY_ID.lora;
  const settings = withDefaults(a.settings);
  return (
    <>
      <div className="method-cell-name">{method.name}</div>
      <div className="muted small method-cell-summary" title={method.summary(settings)}>
        {method.summary(settings)}
        {taskOf(a) === 'classification' ? ' · + head' : ''}
      </div>
    </>
  );
}

function UnfinishedRuns({ runs }: { runs: CheckpointMeta[] }) {
  const model = useApp((s) => s.model);
  const data = useApp((s) => s.data);
  const fingerprint = useApp((s) => s.dataFingerprint);
  const phase = useApp((s) => s.training.phase);
  const { resumeCheckpoint, deleteCheckpoint } = useApp.getState();
  const busy = !['idle', 'done', 'failed'].includes(phase);
  return (
    <div className="unfinished" data-testid="unfinished-runs">
      <h3>Unfinished runs</h3>
      <ul>
        {runs.map((c) => {
          const modelOk = model.status === 'ready' && model.summary.name === c.baseModel.name;
          const dataOk = data.status === 'ready' && fingerprint === c.data.fingerprint;
          const missing = [!modelOk && `the model ${c.baseModel.name}`, !dataOk && `the data file ${c.data.fileName}`].filter(Boolean).join(' and ');
          return (
            <li key={c.runId} data-testid="unfinished-run">
              <div>
                <strong>{c.adapterName}</strong>
                <div className="muted small">
                  step {formatInt(c.step)} of {formatInt(c.totalSteps)} · {c.baseModel.name} · {c.data.fileName} · saved {formatDate(c.savedAt)}
                </div>
                {c.diverged ? (
                  <div className="field-error" data-testid="unfinished-diverged">
                    Stopped at step {formatInt(c.diverged.step)}: the loss stopped being finite. Resuming with the same settings would diverge again; start a new run with a lower learning rate.
                  </div>
                ) : (
                  missing && !busy && <div className="muted small">To resume, load {missing}.</div>
                )}
              </div>
              <div className="actions">
                <button
                  type="button"
                  className="button button-small"
                  disabled={busy || !modelOk || !dataOk || Boolean(c.diverged)}
                  data-testid="unfinished-resume"
                  onClick={() => void resumeCheckpoint(c.runId)}
                >
                  Resume
                </button>
                <button type="button" className="button button-small button-secondary" disabled={busy} onClick={() => void deleteCheckpoint(c.runId)}>
                  Discard
                </button>
              </div>
            </li>
          );
        })}
      </ul>
    </div>
  );
}

/** "sha256:9f86d081…" → "sha256 9f86d081": enough to tell files apart at a glance. */
function shortHash(fingerprint: string): string {
  const [kind, hex] = fingerprint.split(':');
  return hex ? `${kind.replace(/-.*$/, '')} ${hex.slice(0, 8)}` : fingerprint;
}
