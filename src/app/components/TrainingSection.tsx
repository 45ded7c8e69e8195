// Step 4: run it. Start, pause, resume and stop; where the run is; the loss as it falls (and for
// a classifier accuracy, macro-F1 and the confusion matrix per evaluation); and the saved adapter
// at the end.

import { runMappingOf, useApp, type RunPhase } from '../store';
import { ErrorBox, ProgressBar, Section, Stat } from './common';
import { LossChart } from './LossChart';
import { ConfusionMatrix, EvalTable, MetricsChart, formatF1, formatPercent } from './ClassifierViews';
import { formatBytes, formatDuration, formatInt, formatLoss, formatLr } from '../format';
import { METHOD_BY_ID, type MethodId } from '../../worker/methods';
import type { SavedClassifierMetrics } from '../../worker/storage';
import { startGate } from '../start-gate';

const PHASE_TEXT: Record<RunPhase, string> = {
  idle: 'Ready',
  starting: 'Setting up the GPU…',
  training: 'Training',
  pausing: 'Pausing after this step…',
  paused: 'Paused',
  stopping: 'Stopping after this step…',
  saving: 'Saving the adapter…',
  done: 'Done',
  failed: 'Stopped by an error',
};

const INPUT_LABELS: Record<string, string> = {
  batchSize: 'Batch size',
  maxLength: 'Max length',
  learningRate: 'Learning rate',
  rank: 'Rank',
  targetModules: 'Layers to adapt',
  method: 'Method',
  ia3Targets: 'IA3 layers',
  ia3Feedforward: 'IA3 feedforward layers',
  virtualTokens: 'Virtual tokens',
  promptInitText: 'Init text',
  encoderHiddenSize: 'Projection width',
  validationFraction: 'Validation split',
  mapping: 'Column mapping',
  adapterName: 'Adapter name',
  gpu: 'GPU',
  modelFolder: 'Base model',
  repoId: 'Base model',
  dataFile: 'Training data',
  checkpoint: 'Checkpoint',
};

export function TrainingSection() {
  const t = useApp((s) => s.training);
  const data = useApp((s) => s.data);
  const model = useApp((s) => s.model);
  const hasMapping = useApp((s) => runMappingOf(s) !== null);
  const settingErrors = useApp((s) => s.settingErrors);
  const prepare = useApp((s) => s.prepare);
  const adapterName = useApp((s) => s.adapterName);
  const setAdapterName = useApp((s) => s.setAdapterName);
  const gpuReady = useApp((s) => s.gpu.status === 'ready');
  const { start, pause, resume, stop, downloadAdapter } = useApp.getState();

  const { idle, blockers, canStart } = startGate({
    phase: t.phase,
    gpuReady,
    dataReady: data.status === 'ready',
    modelReady: model.status === 'ready',
    hasMapping,
    settingErrorCount: Object.keys(settingErrors).length,
    prepareStatus: prepare.status,
    adapterName,
  });
  const active = !idle;
  const prepareError = prepare.status === 'error' && prepare.input !== 'mapping' && prepare.input !== 'template' ? prepare : null;
  const nameError = t.phase === 'failed' && t.error?.input === 'adapterName' ? t.error.message : adapterName.trim() === '' ? 'Give the adapter a name.' : undefined;

  const last = t.last;
  const first = t.points[0];
  const lastEval = t.evals.at(-1);
  const classifier = t.task === 'classification';
  const bestEval = t.best ? t.evals.find((e) => e.step === t.best!.step) : undefined;
  const estimate = prepare.status === 'ready' && prepare.result.memory ? prepare.result.memory : null;
  const fraction = last ? last.step / last.totalSteps : t.totalSteps ? 0 : null;

  return (
    <Section id="train" step={4} title="Train" aside={<span className={`phase phase-${t.phase}`} data-testid="train-phase">{PHASE_TEXT[t.phase]}</span>}>
      <div className="train-controls">
        <div className={`field name-field${nameError ? ' field-invalid' : ''}`}>
          <label htmlFor="adapter-name">Adapter name</label>
          <input id="adapter-name" data-testid="adapter-name" value={adapterName} disabled={active} onChange={(e) => setAdapterName(e.target.value)} />
          {nameError && <span className="field-error">{nameError}</span>}
        </div>
        <div className="buttons">
          {!active && (
            <button type="button" className="button button-primary" disabled={!canStart} onClick={() => void start()} data-testid="start">
              Start training
            </button>
          )}
          {(t.phase === 'training' || t.phase === 'starting' || t.phase === 'pausing') && (
            <button type="button" className="button button-secondary" disabled={t.phase !== 'training'} onClick={pause} data-testid="pause">
              {t.phase === 'pausing' ? 'Pausing…' : 'Pause'}
            </button>
          )}
          {t.phase === 'paused' && (
            <button type="button" className="button button-primary" onClick={resume} data-testid="resume">
              Resume
            </button>
          )}
          {active && (
            <button
              type="button"
              className="button button-danger"
              disabled={t.phase === 'stopping' || t.phase === 'saving'}
              onClick={stop}
              data-testid="stop"
              title="Stops after the current step and saves the adapter as it is"
            >
              Stop and save
            </button>
          )}
        </div>
      </div>
      {!active && blockers.length > 0 && <p className="muted">To start, this needs {blockers.join(', ')}.</p>}
      {/* A run the GPU lost offers its own Resume in the error below. */}
      {!active && !(t.phase === 'failed' && t.error?.resumable) && <ResumableHint />}
      {!active && prepareError && (
        <ErrorBox testId="prepare-error" title={prepareError.input ? `${INPUT_LABELS[prepareError.input] ?? 'Settings'}:` : undefined}>
          {prepareError.message}
        </ErrorBox>
      )}

      {(active || t.points.length > 0 || t.phase === 'done') && (
        <div
          className="run"
          data-testid="run"
          data-gpu-bytes={last?.gpuBytes ?? ''}
          // The evaluation buffers are made at the first evaluation; until then the run holds the rest.
          data-estimate-bytes={estimate ? (t.evals.length > 0 ? estimate.total : estimate.total - estimate.evaluation) : ''}
        >
          <div className="run-progress">
            <span data-testid="step-counter">
              Step {formatInt(last?.step ?? 0)} / {formatInt(last?.totalSteps ?? t.totalSteps)}
            </span>
            <span className="muted">epoch {last ? last.epoch.toFixed(2) : '0.00'}</span>
            <ProgressBar fraction={t.phase === 'starting' && !last ? null : fraction} label="Training progress" testId="train-progress" />
          </div>
          <div className={`stats${classifier ? ' stats-classifier' : ''}`}>
            <Stat label="Loss now" value={formatLoss(last?.loss)} testId="loss-latest" sub={first ? <>first step: <span data-testid="loss-first">{formatLoss(first.loss)}</span></> : undefined} />
            <Stat label="Validation loss" value={formatLoss(lastEval?.evalLoss)} testId="eval-loss" sub={lastEval ? `at step ${lastEval.step}` : 'at the end'} />
            {classifier && (
              <>
                <Stat label="Accuracy" value={formatPercent(lastEval?.accuracy)} testId="eval-accuracy" sub={lastEval ? `validation, step ${lastEval.step}` : 'at the first evaluation'} />
                <Stat label="Macro-F1" value={formatF1(lastEval?.f1)} testId="eval-f1" sub={lastEval ? `validation, step ${lastEval.step}` : 'at the first evaluation'} />
                <Stat
                  label="Kept (best)"
                  value={t.best ? `step ${t.best.step}` : '–'}
                  testId="best-eval"
                  sub={t.best ? (t.best.metric === 'loss' ? `loss ${formatLoss(t.best.value)}` : `accuracy ${formatPercent(t.best.value)}`) + (bestEval ? ` · F1 ${formatF1(bestEval.f1)}` : '') : 'best evaluation'}
                />
              </>
            )}
            {!classifier && <Stat label="Tokens / s" value={last ? formatInt(last.tokensPerSecond) : '–'} testId="tokens-per-second" />}
            <Stat label="Time left" value={last && active ? formatDuration(last.etaMs) : '–'} testId="eta" sub={last ? `${formatDuration(last.elapsedMs)} so far` : undefined} />
            <Stat label="Learning rate" value={last ? formatLr(last.lr) : '–'} sub={last ? `grad norm ${last.gradNorm.toFixed(3)}` : undefined} />
            <Stat
              label="GPU memory"
              value={last ? formatBytes(last.gpuBytes) : '–'}
              testId="gpu-memory"
              sub={estimate ? `peak estimate ${formatBytes(estimate.total)}` : undefined}
            />
          </div>
          <LossChart points={t.points} evals={t.evals} totalSteps={last?.totalSteps ?? t.totalSteps} />
          {classifier && t.labels && (
            <div className="classifier-views" data-testid="classifier-views">
              <MetricsChart evals={t.evals} totalSteps={last?.totalSteps ?? t.totalSteps} best={t.best} />
              <div className="classifier-grid">
                <EvalTable evals={t.evals} best={t.best} />
                <ConfusionMatrix labels={t.labels} evals={t.evals} best={t.best} />
              </div>
            </div>
          )}
          {t.checkpoint && (
            <p className="muted small" data-testid="checkpoint-line">
              Checkpoint saved at step {t.checkpoint.step} ({formatBytes(t.checkpoint.bytes)} with optimizer state)
              {t.phase === 'paused' ? ': it is safe to close this tab and resume later from the library.' : '.'}
            </p>
          )}
        </div>
      )}

      {t.phase === 'paused' && t.saveError && (
        <ErrorBox testId="save-error" title="Not saved:">
          {t.saveError.message} The run waits here, paused, with everything it has learned still in memory: make room, then press Resume to save again
          {t.checkpoint ? ` (Stop gives up the steps after the checkpoint at step ${t.checkpoint.step}, which stays in the library).` : ' (Stop gives the run up).'}
        </ErrorBox>
      )}
      {t.phase === 'failed' && t.error && t.error.input !== 'adapterName' && (
        <ErrorBox testId="train-error" title={t.error.input ? `${INPUT_LABELS[t.error.input] ?? 'Settings'}:` : 'Training failed:'}>
          {t.error.message}
          {t.checkpoint && !t.error.resumable ? `${/[.!?]$/.test(t.error.message) ? '' : '.'} The checkpoint at step ${t.checkpoint.step} is kept in the library.` : ''}
          {t.error.resumable && t.runId && (
            <>
              {' '}
              <button type="button" className="button button-small" onClick={() => void useApp.getState().resumeCheckpoint(t.runId!)} data-testid="resume-after-error">
                Resume from the checkpoint
              </button>
            </>
          )}
        </ErrorBox>
      )}
      {t.phase === 'done' && t.result && (
        <div className={t.result.adapter ? 'success-box' : 'warning-box'} data-testid="train-done" role="status">
          {t.result.adapter ? (
            <>
              <p>
                Saved <strong>{t.result.adapter.name}</strong> to the library
                {t.result.stoppedEarly ? ` (stopped at step ${t.result.adapter.metrics.steps} of ${t.result.adapter.metrics.totalSteps})` : ''}: final
                loss {formatLoss(t.result.adapter.metrics.finalLoss)}
                {t.result.adapter.metrics.finalEvalLoss !== null ? `, validation loss ${formatLoss(t.result.adapter.metrics.finalEvalLoss)}` : ''}.
              </p>
              {t.result.adapter.metrics.classification && <SavedClassifier metrics={t.result.adapter.metrics.classification} />}
              <p className="muted small" data-testid="saved-method">
                <SavedFormat method={t.result.adapter.method} classification={Boolean(t.result.adapter.metrics.classification)} />
              </p>
              <button type="button" className="button" onClick={() => void downloadAdapter(t.result!.adapter!.id)} data-testid="download-latest">
                Download adapter (.zip)
              </button>
            </>
          ) : (
            <p>Stopped before the first step finished: nothing was saved.</p>
          )}
        </div>
      )}
    </Section>
  );
}

/** How the download loads: which library and format. */
function SavedFormat({ method: id, classification }: { method: MethodId; classification: boolean }) {
  const m = METHOD_BY_ID[id] ?? METHOD_BY_ID.lora;
  if (m.format === 'adapterhub') {
    return (
      <>
        {m.name}: AdapterHub’s format (adapter_config.json + adapter.safetensors{classification ? '; the head in head_config.json + model_head.safetensors, as save_adapter(…, with_head=True) writes it' : ''}) for the
        adapters library; PEFT has no bottleneck adapters.
      </>
    );
  }
  return (
    <>
      {m.name} adapter (PEFT {m.peftType}, {classification ? 'task_type SEQ_CLS with the head in modules_to_save' : 'task_type CAUSAL_LM'}).
    </>
  );
}

function SavedClassifier({ metrics: c }: { metrics: SavedClassifierMetrics }) {
  const e = c.evaluation;
  return (
    <p data-testid="saved-metrics">
      The saved weights are step {e.step}’s{c.restoredBest ? ' (the best evaluation, put back at the end)' : c.best?.step === e.step ? ' (also the best evaluation)' : ''}: accuracy{' '}
      <strong data-testid="saved-accuracy">{formatPercent(e.accuracy)}</strong>, macro-F1 <strong data-testid="saved-f1">{formatF1(e.f1)}</strong>, validation loss{' '}
      {formatLoss(e.evalLoss)} over {c.labels.length} classes.
    </p>
  );
}

/** After a reload: an interrupted run that fits the loaded data and model can go on where it stopped. */
function ResumableHint() {
  const checkpoints = useApp((s) => s.library.checkpoints);
  const model = useApp((s) => s.model);
  const fingerprint = useApp((s) => s.dataFingerprint);
  const resumable = checkpoints.find(
    (c) => c.adapterId === null && model.status === 'ready' && c.baseModel.name === model.summary.name && c.data.fingerprint === fingerprint,
  );
  if (!resumable) return null;
  return (
    <p className="info-box" data-testid="resumable-hint">
      <strong>{resumable.adapterName}</strong> stopped at step {formatInt(resumable.step)} of {formatInt(resumable.totalSteps)} with this data and model.{' '}
      <button type="button" className="link-button" onClick={() => void useApp.getState().resumeCheckpoint(resumable.runId)}>
        Resume it
      </button>{' '}
      or start a new run.
    </p>
  );
}
