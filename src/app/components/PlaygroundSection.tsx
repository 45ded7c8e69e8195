// Step 6: try an adapter. For a text-generation model: a prompt, greedy or sampled decoding, and
// the output with the adapter on beside the base model's, streamed token by token from the GPU
// (KV-cache decoding in the worker) with a Stop button and the speed. For a classifier: typed
// text and the probability of each label.

import { useEffect, useState } from 'react';
import { useApp } from '../store';
import { usePlayground, type PlaygroundSettings } from '../playground-store';
import { taskOf, type AdapterMeta } from '../../worker/storage';
import { METHOD_BY_ID } from '../../worker/methods';
import type { GenerationSide, GenerationStream } from '../../worker/protocol';
import { ErrorBox, NumberField, Section, SelectField } from './common';
import { formatDate, formatLoss } from '../format';
import { formatF1, formatPercent } from './ClassifierViews';

const MAX_NEW_TOKENS = 2048;

/** Inline errors of the decoding settings (the worker checks them again). */
function settingErrors(s: PlaygroundSettings, maxPositions: number): Partial<Record<keyof PlaygroundSettings, string>> {
  const e: Partial<Record<keyof PlaygroundSettings, string>> = {};
  const cap = Math.min(MAX_NEW_TOKENS, maxPositions - 1);
  if (!Number.isInteger(s.maxNewTokens) || s.maxNewTokens < 1 || s.maxNewTokens > cap) e.maxNewTokens = `A whole number from 1 to ${cap}`;
  if (s.mode === 'sample') {
    if (!(s.temperature > 0 && s.temperature <= 100)) e.temperature = 'Above 0 (use greedy for 0), at most 100';
    if (!Number.isInteger(s.topK) || s.topK < 0) e.topK = 'A whole number; 0 keeps every token';
    if (!(s.topP > 0 && s.topP <= 1)) e.topP = 'Above 0 and at most 1 (1 keeps every token)';
    if (!Number.isInteger(s.seed) || s.seed < 0 || s.seed > 0xffffffff) e.seed = 'A whole number from 0 to 4294967295';
  }
  return e;
}

export function PlaygroundSection() {
  const model = useApp((s) => s.model);
  const adapters = useApp((s) => s.library.adapters);
  const phase = useApp((s) => s.training.phase);
  const pg = usePlayground();
  const summary = model.status === 'ready' ? model.summary : null;
  const modelName = summary?.name ?? null;
  useEffect(() => {
    if (modelName) void usePlayground.getState().loadInfo();
  }, [modelName]);
  if (!summary) {
    return (
      <Section id="playground" step={6} title="Playground" subtitle="Try an adapter: load its base model first.">
        <p className="muted">No model is loaded.</p>
      </Section>
    );
  }
  const mine = adapters.filter((a) => a.baseModel.name === summary.name && taskOf(a) === summary.task).sort((a, b) => b.createdAt - a.createdAt);
  const adapter = mine.find((a) => a.id === pg.adapterId) ?? mine[0] ?? null;
  const training = !['idle', 'done', 'failed'].includes(phase);
  return (
    <Section
      id="playground"
      step={6}
      title="Playground"
      subtitle={summary.task === 'classification' ? 'Type a text and see what a trained classifier makes of it.' : 'Generate from a prompt with an adapter on, beside the base model without it.'}
    >
      {mine.length === 0 ? (
        <p className="muted" data-testid="playground-empty">
          No adapter trained on {summary.name} is stored yet. Train one above, or load the model another stored adapter was trained on.
        </p>
      ) : (
        <>
          <SelectField
            label="Adapter"
            value={adapter!.id}
            testId="playground-adapter"
            options={mine.map((a) => ({ value: a.id, label: adapterLabel(a) }))}
            onChange={(id) => pg.setAdapter(id)}
          />
          {training && <p className="warning-box">Training is running: the playground waits until it ends.</p>}
          {summary.task === 'classification' ? <ClassifierPlayground adapter={adapter!} disabled={training} /> : <GenerationPlayground adapter={adapter!} maxPositions={summary.maxPositions} disabled={training} />}
          {mine.length >= 2 && <CompareAdapters adapters={mine} task={summary.task} maxPositions={summary.maxPositions} disabled={training} />}
        </>
      )}
    </Section>
  );
}

function adapterLabel(a: AdapterMeta): string {
  return `${a.name} · ${METHOD_BY_ID[a.method]?.name ?? a.method} · ${formatDate(a.createdAt)}`;
}

function GenerationPlayground({ adapter, maxPositions, disabled }: { adapter: AdapterMeta; maxPositions: number; disabled: boolean }) {
  const pg = usePlayground();
  const s = pg.settings;
  const errors = settingErrors(s, maxPositions);
  const running = pg.generation.status === 'running';
  const canGenerate = !disabled && !running && s.prompt.trim() !== '' && Object.keys(errors).length === 0;
  const sides = pg.generation.status === 'idle' ? {} : pg.generation.sides;
  return (
    <div className="playground" data-testid="playground-generate">
      <div className="field">
        <label htmlFor="playground-prompt">Prompt</label>
        <textarea
          id="playground-prompt"
          rows={4}
          value={s.prompt}
          placeholder="Once upon a time"
          data-testid="playground-prompt"
          onChange={(e) => pg.update({ prompt: e.target.value })}
        />
      </div>
      {pg.info?.hasChatTemplate && (
        <label className="checkbox-line">
          <input type="checkbox" checked={s.useChatTemplate} data-testid="playground-chat-template" onChange={(e) => pg.update({ useChatTemplate: e.target.checked })} />
          Wrap the prompt in the model&apos;s chat template (as one user message)
        </label>
      )}
      <div className="playground-settings">
        <fieldset className="segmented" aria-label="Decoding">
          {(['greedy', 'sample'] as const).map((mode) => (
            <label key={mode} className={s.mode === mode ? 'selected' : undefined}>
              <input type="radio" name="playground-mode" value={mode} checked={s.mode === mode} data-testid={`playground-mode-${mode}`} onChange={() => pg.update({ mode })} />
              {mode === 'greedy' ? 'Greedy' : 'Sampling'}
            </label>
          ))}
        </fieldset>
        <NumberField label="Max new tokens" value={s.maxNewTokens} error={errors.maxNewTokens} testId="playground-max-new" onChange={(v) => pg.update({ maxNewTokens: v })} />
        {s.mode === 'sample' && (
          <>
            <NumberField label="Temperature" value={s.temperature} error={errors.temperature} testId="playground-temperature" onChange={(v) => pg.update({ temperature: v })} />
            <NumberField label="Top-k (0: all)" value={s.topK} error={errors.topK} testId="playground-top-k" onChange={(v) => pg.update({ topK: v })} />
            <NumberField label="Top-p" value={s.topP} error={errors.topP} testId="playground-top-p" onChange={(v) => pg.update({ topP: v })} />
            <NumberField label="Seed" value={s.seed} error={errors.seed} testId="playground-seed" onChange={(v) => pg.update({ seed: v })} />
          </>
        )}
      </div>
      <label className="checkbox-line">
        <input type="checkbox" checked={s.compareBase} data-testid="playground-compare" onChange={(e) => pg.update({ compareBase: e.target.checked })} />
        Also generate without the adapter (the base model), side by side
      </label>
      <div className="button-row">
        <button type="button" className="button button-primary" disabled={!canGenerate} data-testid="playground-generate-button" onClick={() => void pg.generate(adapter.id)}>
          Generate
        </button>
        <button type="button" className="button button-secondary" disabled={!running} data-testid="playground-stop" onClick={() => pg.stop()}>
          Stop
        </button>
        {pg.generation.status === 'done' && pg.generation.promptTokens !== null && <span className="muted small">Prompt: {pg.generation.promptTokens} tokens</span>}
      </div>
      {pg.generation.status === 'error' && <ErrorBox testId="playground-error">{pg.generation.message}</ErrorBox>}
      {(running || Object.keys(sides).length > 0) && (
        <div className={`playground-outputs${s.compareBase || sides.base ? ' playground-outputs-2' : ''}`}>
          <Output side="adapter" title={`With ${adapter.name}`} stream={sides.adapter} running={running} />
          {(sides.base || (running && s.compareBase)) && <Output side="base" title="Base model (adapter off)" stream={sides.base} running={running} />}
        </div>
      )}
    </div>
  );
}

const END_TEXT: Record<NonNullable<GenerationStream['end']>, string> = {
  eos: 'ended at the end-of-text token',
  'max-tokens': 'reached max new tokens',
  length: "reached the model's length",
  stopped: 'stopped',
};

function Output({ side, title, stream, running }: { side: GenerationSide; title: string; stream?: GenerationStream; running: boolean }) {
  const status = stream?.end ? END_TEXT[stream.end] : running ? 'generating…' : '';
  return (
    <div className="playground-output" data-testid={`playground-output-${side}`} data-end={stream?.end ?? ''}>
      <div className="playground-output-header">
        <strong>{title}</strong>
        <span className="muted small" data-testid={`playground-speed-${side}`}>
          {stream ? `${stream.ids.length} tokens · ${stream.tokensPerSecond.toFixed(1)} tokens/s` : ''}
          {status ? ` · ${status}` : ''}
        </span>
      </div>
      <pre className="playground-text" data-testid={`playground-text-${side}`} aria-live="polite">
        {stream?.text ?? ''}
      </pre>
    </div>
  );
}

function ClassifierPlayground({ adapter, disabled }: { adapter: AdapterMeta; disabled: boolean }) {
  const pg = usePlayground();
  const c = pg.classification;
  const running = c.status === 'running';
  return (
    <div className="playground" data-testid="playground-classify">
      <div className="field">
        <label htmlFor="playground-classify-text">Text</label>
        <textarea
          id="playground-classify-text"
          rows={3}
          value={pg.classifyText}
          data-testid="playground-classify-text"
          onChange={(e) => pg.setClassifyText(e.target.value)}
        />
      </div>
      <div className="button-row">
        <button
          type="button"
          className="button button-primary"
          disabled={disabled || running || pg.classifyText.trim() === ''}
          data-testid="playground-classify-button"
          onClick={() => void pg.classify(adapter.id)}
        >
          {running ? 'Classifying…' : 'Classify'}
        </button>
      </div>
      {c.status === 'error' && <ErrorBox testId="playground-error">{c.message}</ErrorBox>}
      {c.status === 'done' && (
        <table className="class-table playground-probs" data-testid="playground-probs">
          <tbody>
            {c.result.labels.map((label, k) => {
              const p = c.result.probabilities[k];
              const top = p === Math.max(...c.result.probabilities);
              return (
                <tr key={label} data-testid="playground-prob-row" data-label={label} data-probability={p}>
                  <td className="class-name">{top ? <strong>{label}</strong> : label}</td>
                  <td className="num">{(100 * p).toFixed(1)}%</td>
                  <td className="bar-col">
                    <span className="class-bar" style={{ width: `${100 * p}%` }} />
                  </td>
                </tr>
              );
            })}
          </tbody>
        </table>
      )}
      {c.status === 'done' && c.result.truncated && <p className="muted small">The text was cut to the model&apos;s {c.result.tokens} tokens.</p>}
    </div>
  );
}

/**
 * Two or more stored adapters of the loaded model side by side: their validation figures from
 * training, and their outputs for the playground's prompt (generation: greedy, or sampling with
 * the same seed) or its text (classifiers: the top label and its probability), run one by one.
 */
function CompareAdapters({ adapters, task, maxPositions, disabled }: { adapters: AdapterMeta[]; task: 'causal-lm' | 'classification'; maxPositions: number; disabled: boolean }) {
  const pg = usePlayground();
  const [picked, setPicked] = useState<string[]>([]);
  const chosen = adapters.filter((a) => picked.includes(a.id));
  const c = pg.comparison;
  const running = c.status === 'running' || pg.generation.status === 'running';
  const input = task === 'classification' ? pg.classifyText : pg.settings.prompt;
  const settingsOk = task === 'classification' || Object.keys(settingErrors(pg.settings, maxPositions)).length === 0;
  const can = !disabled && !running && chosen.length >= 2 && input.trim() !== '' && settingsOk;
  const byId = new Map(adapters.map((a) => [a.id, a]));
  return (
    <div className="playground compare-adapters" data-testid="compare-adapters">
      <h3>Compare adapters</h3>
      <p className="muted small">
        Pick two or more; each runs on the {task === 'classification' ? 'text' : 'prompt'} above
        {task === 'classification' ? '' : pg.settings.mode === 'greedy' ? ' (greedy)' : ` (sampling, seed ${pg.settings.seed} for each)`}.
      </p>
      <div className="compare-picks">
        {adapters.map((a) => (
          <label key={a.id} className="checkbox-line">
            <input
              type="checkbox"
              checked={picked.includes(a.id)}
              data-testid="compare-pick"
              data-adapter-id={a.id}
              onChange={(e) => setPicked(e.target.checked ? [...picked, a.id] : picked.filter((id) => id !== a.id))}
            />
            {adapterLabel(a)}
          </label>
        ))}
      </div>
      <div className="button-row">
        <button type="button" className="button button-primary" disabled={!can} data-testid="compare-button" onClick={() => void pg.compare(chosen.map((a) => a.id), task)}>
          {c.status === 'running' ? 'Comparing…' : `Compare ${chosen.length || ''}`.trim()}
        </button>
        {chosen.length < 2 && <span className="muted small">Pick at least two.</span>}
      </div>
      {c.status !== 'idle' && (
        <div className="table-scroll">
          <table className="library-table" data-testid="compare-table">
            <thead>
              <tr>
                <th scope="col">Adapter</th>
                <th scope="col" className="num">Final loss</th>
                <th scope="col" className="num">Validation</th>
                <th scope="col">{task === 'classification' ? `Label for “${c.input}”` : 'Output'}</th>
              </tr>
            </thead>
            <tbody>
              {c.rows.map((row) => {
                const a = byId.get(row.adapterId);
                const cls = a?.metrics.classification;
                return (
                  <tr key={row.adapterId} data-testid="compare-row" data-adapter-id={row.adapterId} data-status={row.status}>
                    <td>
                      <strong>{a?.name ?? row.adapterId}</strong>
                      <div className="muted small">{a ? METHOD_BY_ID[a.method]?.name ?? a.method : ''}</div>
                    </td>
                    <td className="num">{a ? formatLoss(a.metrics.finalLoss) : ''}</td>
                    <td className="num" data-testid="compare-validation">
                      {cls ? `${formatPercent(cls.evaluation.accuracy)} · F1 ${formatF1(cls.evaluation.f1)}` : a ? formatLoss(a.metrics.finalEvalLoss) : ''}
                    </td>
                    <td>
                      {row.status === 'waiting' && <span className="muted small">waiting</span>}
                      {row.status === 'running' && <span className="muted small">running…</span>}
                      {row.status === 'error' && <span className="field-error">{row.message}</span>}
                      {row.status === 'done' && row.result && (() => {
                        const k = row.result.probabilities.indexOf(Math.max(...row.result.probabilities));
                        return (
                          <span data-testid="compare-output">
                            <strong>{row.result.labels[k]}</strong> {(100 * row.result.probabilities[k]).toFixed(1)}%
                          </span>
                        );
                      })()}
                      {row.status === 'done' && row.text !== undefined && (
                        <pre className="playground-text" data-testid="compare-output" data-end={row.end ?? ''}>
                          {row.text}
                        </pre>
                      )}
                    </td>
                  </tr>
                );
              })}
            </tbody>
          </table>
        </div>
      )}
    </div>
  );
}
