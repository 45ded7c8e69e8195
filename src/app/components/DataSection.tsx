// Step 1: the user's data. Pick or drop a file (or the sample), see its first rows and any
// problems with row numbers, say which columns are the prompt and the completion (or, for a text
// classifier, the text and the label, with the label set and its class balance), and, once a
// model is loaded, how many tokens the examples have and how many get cut.

import { useMemo, useState, type ChangeEvent, type DragEvent, type ReactNode } from 'react';
import { taskOfModel, useApp } from '../store';
import { defaultTemplate, validateMapping, type ColumnMapping } from '../../data/columns';
import { validateClassificationMapping } from '../../data/classification';
import type { Table } from '../../data/table';
import type { ClassificationPrepareResult, DataSummary, LabelSummary } from '../../worker/protocol';
import { ErrorBox, NumberField, ProgressBar, Section } from './common';
import { formatBytes, formatInt, percent } from '../format';

const FORMAT_NAMES: Record<string, string> = { csv: 'CSV', tsv: 'TSV', delimited: 'Delimited text', jsonl: 'JSON Lines', json: 'JSON', text: 'Plain text' };

export function DataSection() {
  const data = useApp((s) => s.data);
  const loadDataFile = useApp((s) => s.loadDataFile);
  const loadSample = useApp((s) => s.loadSample);
  const phase = useApp((s) => s.training.phase);
  // The worker refuses new data during a run; say so by disabling the controls.
  const busy = data.status === 'loading' || !['idle', 'done', 'failed'].includes(phase);
  return (
    <Section
      id="data"
      step={1}
      title="Training data"
      subtitle="A CSV, TSV, JSON Lines or text file. It is read here, in this tab: it never leaves your machine."
    >
      <FileDrop busy={busy} onFile={(f) => void loadDataFile(f)} onSample={() => void loadSample()} />
      {data.status === 'loading' && (
        <div className="loading-line" data-testid="data-loading">
          <span>
            Reading <strong>{data.fileName}</strong> ({formatBytes(data.fileBytes)}) — {percent(data.fraction)}
          </span>
          <ProgressBar fraction={data.fraction} label={`Reading ${data.fileName}`} testId="data-progress" />
        </div>
      )}
      {data.status === 'error' && (
        <ErrorBox testId="data-error" title={`Could not use ${data.fileName}:`}>
          {stripFileName(data.message, data.fileName)}
        </ErrorBox>
      )}
      {data.status === 'ready' && <LoadedData summary={data.summary} />}
    </Section>
  );
}

/** DataError messages start with "file.csv: "; the box title already names the file. */
function stripFileName(message: string, fileName: string): string {
  return message.startsWith(`${fileName}: `) ? message.slice(fileName.length + 2) : message;
}

function FileDrop(props: { busy: boolean; onFile: (f: File) => void; onSample: () => void }) {
  const [over, setOver] = useState(false);
  const onDrop = (e: DragEvent) => {
    e.preventDefault();
    setOver(false);
    const file = e.dataTransfer.files[0];
    if (file && !props.busy) props.onFile(file);
  };
  const onPick = (e: ChangeEvent<HTMLInputElement>) => {
    const file = e.target.files?.[0];
    e.target.value = ''; // picking the same file again should load it again
    if (file) props.onFile(file);
  };
  return (
    <div
      className={`dropzone${over ? ' dropzone-over' : ''}`}
      data-testid="data-dropzone"
      onDragOver={(e) => {
        e.preventDefault();
        setOver(true);
      }}
      onDragLeave={() => setOver(false)}
      onDrop={onDrop}
    >
      <div className="dropzone-text">
        <strong>Drop a data file here</strong>
        <span className="muted">.csv · .tsv · .jsonl · .txt — one example per row</span>
      </div>
      <div className="dropzone-actions">
        <label className={`button${props.busy ? ' button-disabled' : ''}`}>
          Choose a file…
          <input
            type="file"
            accept=".csv,.tsv,.jsonl,.txt"
            className="visually-hidden"
            data-testid="data-file-input"
            disabled={props.busy}
            onChange={onPick}
          />
        </label>
        <button type="button" className="button button-secondary" onClick={props.onSample} disabled={props.busy} data-testid="try-sample">
          Try the sample
        </button>
      </div>
    </div>
  );
}

function LoadedData({ summary }: { summary: DataSummary }) {
  const task = useApp((s) => taskOfModel(s.model));
  if (task === 'classification') {
    return (
      <>
        <FileLine summary={summary} />
        <PreviewTable summary={summary} />
        <Problems summary={summary} />
        <ClassificationEditor summary={summary} />
        <TokenStats />
      </>
    );
  }
  return (
    <>
      <FileLine summary={summary} />
      <PreviewTable summary={summary} />
      <Problems summary={summary} />
      <MappingEditor summary={summary} />
      {task === null && (
        <p className="muted small task-hint" data-testid="task-hint">
          Loading an encoder (DistilBERT, BERT) in step 2 makes this a text classifier instead: you then pick a text column and a label column.
        </p>
      )}
      <TokenStats />
    </>
  );
}

function FileLine({ summary }: { summary: DataSummary }) {
  return (
    <p className="file-line" data-testid="data-summary">
        <strong>{summary.fileName}</strong>
        <span>{formatInt(summary.rowCount)} rows</span>
        <span>
          {summary.columns.length} {summary.columns.length === 1 ? 'column' : 'columns'}
        </span>
        <span>{FORMAT_NAMES[summary.format] ?? summary.format}</span>
        <span>{formatBytes(summary.fileBytes)}</span>
    </p>
  );
}

function PreviewTable({ summary }: { summary: DataSummary }) {
  return (
    <div className="table-scroll" data-testid="data-preview">
      <table className="preview-table">
        <caption className="visually-hidden">First rows of {summary.fileName}</caption>
        <thead>
          <tr>
            <th scope="col" className="row-number">
              Row
            </th>
            {summary.columns.map((c) => (
              <th scope="col" key={c}>
                {c}
              </th>
            ))}
          </tr>
        </thead>
        <tbody>
          {summary.preview.map((row, i) => (
            <tr key={summary.previewRowNumbers[i]}>
              <td className="row-number">{summary.previewRowNumbers[i]}</td>
              {summary.columns.map((c) => (
                <td key={c} title={row[c]}>
                  {row[c] === '' ? <span className="empty-cell">empty</span> : row[c]}
                </td>
              ))}
            </tr>
          ))}
        </tbody>
      </table>
      {summary.rowCount > summary.preview.length && (
        <p className="muted small table-note">
          First {summary.preview.length} of {formatInt(summary.rowCount)} rows.
        </p>
      )}
    </div>
  );
}

const PROBLEMS_SHOWN = 8;

function Problems({ summary }: { summary: DataSummary }) {
  const [all, setAll] = useState(false);
  const total = Object.values(summary.problemCounts).reduce((a, b) => a + b, 0);
  if (total === 0) return null;
  const shown = all ? summary.problems : summary.problems.slice(0, PROBLEMS_SHOWN);
  return (
    <div className="problems" data-testid="data-problems">
      <h3>
        {formatInt(total)} {total === 1 ? 'problem' : 'problems'} in the file
        <span className="muted small"> — rows are still used; empty cells count as empty text</span>
      </h3>
      <ul>
        {shown.map((p, i) => (
          <li key={`${p.row}-${p.kind}-${i}`}>
            <span className="problem-row">Row {p.row}</span> {p.message.replace(/^(row|line|item) \d+: /, '')}
          </li>
        ))}
      </ul>
      {summary.problems.length > PROBLEMS_SHOWN && (
        <button type="button" className="link-button" onClick={() => setAll(!all)}>
          {all ? 'Show fewer' : `Show ${summary.problems.length - PROBLEMS_SHOWN} more`}
        </button>
      )}
      {total > summary.problems.length && <p className="muted small">Only the first {summary.problems.length} are listed.</p>}
    </div>
  );
}

type MappingKind = ColumnMapping['kind'];

/** A mapping of the given kind built from what the current one uses, so switching keeps choices. */
function switchKind(kind: MappingKind, current: ColumnMapping, columns: string[]): ColumnMapping {
  const used = current.kind === 'prompt-completion' ? [current.prompt, current.completion] : current.kind === 'text' ? [current.text] : [current.instruction, current.output];
  const first = used[0] ?? columns[0];
  const second = used[1] ?? columns.find((c) => c !== first) ?? columns[0];
  switch (kind) {
    case 'prompt-completion':
      return { kind, prompt: first, completion: second, template: defaultTemplate(first) };
    case 'text':
      return { kind, text: first };
    case 'instruction':
      return { kind, instruction: first, output: second };
  }
}

function MappingEditor({ summary }: { summary: DataSummary }) {
  const mapping = useApp((s) => s.mapping);
  const setMapping = useApp((s) => s.setMapping);
  const prepare = useApp((s) => s.prepare);
  const phase = useApp((s) => s.training.phase);
  // Checked here as the user edits (the worker checks again): only columns and the file name matter.
  const localError = useMemo(() => {
    if (!mapping) return null;
    try {
      validateMapping({ fileName: summary.fileName, columns: summary.columns } as Table, mapping);
      return null;
    } catch (e) {
      return (e as Error).message.replace(`${summary.fileName}: `, '');
    }
  }, [mapping, summary]);
  if (!mapping) return null;
  const locked = !['idle', 'done', 'failed'].includes(phase);
  const cols = summary.columns;
  const workerError = prepare.status === 'error' && (prepare.input === 'mapping' || prepare.input === 'template') ? prepare.message.replace(`${summary.fileName}: `, '') : null;
  const error = localError ?? workerError;
  const errorAtTemplate = error !== null && /template/i.test(error);
  const columnSelect = (label: string, value: string, onChange: (v: string) => void, testId: string, optional = false) => (
    <div className="field">
      <label htmlFor={testId}>{label}</label>
      <select id={testId} data-testid={testId} value={value} onChange={(e) => onChange(e.target.value)}>
        {optional && <option value="">(none)</option>}
        {cols.map((c) => (
          <option key={c} value={c}>
            {c}
          </option>
        ))}
      </select>
    </div>
  );
  return (
    <div className="mapping" data-testid="mapping">
      <h3>What the model learns</h3>
      {/* A run in progress keeps the mapping it started with. */}
      <fieldset disabled={locked}>
      <div className="segmented" role="radiogroup" aria-label="How the columns are used">
        {(
          [
            ['prompt-completion', 'Prompt → completion'],
            ['text', 'One text column'],
            ['instruction', 'Instruction → output'],
          ] as [MappingKind, string][]
        ).map(([kind, label]) => (
          <label key={kind} className={mapping.kind === kind ? 'selected' : ''}>
            <input type="radio" name="mapping-kind" value={kind} checked={mapping.kind === kind} onChange={() => setMapping(switchKind(kind, mapping, cols))} />
            {label}
          </label>
        ))}
      </div>
      {mapping.kind === 'prompt-completion' && (
        <div className="mapping-grid">
          {columnSelect('Prompt column', mapping.prompt, (v) => setMapping({ ...mapping, prompt: v, template: mapping.template === defaultTemplate(mapping.prompt) ? defaultTemplate(v) : mapping.template }), 'map-prompt')}
          {columnSelect('Completion column (the part it learns)', mapping.completion, (v) => setMapping({ ...mapping, completion: v }), 'map-completion')}
          <div className={`field field-wide${errorAtTemplate ? ' field-invalid' : ''}`}>
            <label htmlFor="map-template">Prompt template</label>
            <textarea
              id="map-template"
              data-testid="map-template"
              rows={2}
              spellCheck={false}
              value={mapping.template}
              aria-invalid={errorAtTemplate || undefined}
              onChange={(e) => setMapping({ ...mapping, template: e.target.value })}
            />
            <span className="field-hint">
              <code>{'{column}'}</code> inserts a column’s text. The completion follows right after; the loss is on the completion only.
            </span>
          </div>
        </div>
      )}
      {mapping.kind === 'text' && (
        <div className="mapping-grid">{columnSelect('Text column (every token is learned)', mapping.text, (v) => setMapping({ kind: 'text', text: v }), 'map-text')}</div>
      )}
      {mapping.kind === 'instruction' && (
        <div className="mapping-grid mapping-grid-3">
          {columnSelect('Instruction column', mapping.instruction, (v) => setMapping({ ...mapping, instruction: v }), 'map-instruction')}
          {columnSelect('Input column', mapping.input ?? '', (v) => setMapping({ ...mapping, input: v === '' ? undefined : v }), 'map-input', true)}
          {columnSelect('Output column (the part it learns)', mapping.output, (v) => setMapping({ ...mapping, output: v }), 'map-output')}
        </div>
      )}
      {error && (
        <ErrorBox testId="mapping-error" title="Column mapping:">
          {error}
        </ErrorBox>
      )}
      <div className="mapping-grid">
        <ValidationSplit hint="Held out to measure the loss on examples the model does not train on." />
      </div>
      </fieldset>
    </div>
  );
}

function ValidationSplit({ hint }: { hint: string }) {
  const validation = useApp((s) => s.settings.validationFraction);
  const validationError = useApp((s) => s.settingErrors.validationFraction);
  const updateSettings = useApp((s) => s.updateSettings);
  return (
    <NumberField
      label="Validation split"
      value={validation}
      scale={100}
      suffix="%"
      error={validationError}
      hint={hint}
      testId="validation-split"
      onChange={(v) => updateSettings({ validationFraction: v })}
    />
  );
}

function ColumnSelect(props: { label: string; value: string; columns: string[]; onChange: (v: string) => void; testId: string }) {
  return (
    <div className="field">
      <label htmlFor={props.testId}>{props.label}</label>
      <select id={props.testId} data-testid={props.testId} value={props.value} onChange={(e) => props.onChange(e.target.value)}>
        {props.columns.map((c) => (
          <option key={c} value={c}>
            {c}
          </option>
        ))}
      </select>
    </div>
  );
}

/** Text classification: the text and label columns, then the label set and its balance. */
function ClassificationEditor({ summary }: { summary: DataSummary }) {
  const mapping = useApp((s) => s.classMapping);
  const setMapping = useApp((s) => s.setClassMapping);
  const labels = useApp((s) => s.labels);
  const prepare = useApp((s) => s.prepare);
  const phase = useApp((s) => s.training.phase);
  const localError = useMemo(() => {
    if (!mapping) return null;
    try {
      validateClassificationMapping({ fileName: summary.fileName, columns: summary.columns } as Table, mapping);
      return null;
    } catch (e) {
      return (e as Error).message.replace(`${summary.fileName}: `, '');
    }
  }, [mapping, summary]);
  if (summary.columns.length < 2) {
    return (
      <ErrorBox testId="mapping-error" title="Column mapping:">
        A text classifier needs two columns, a text and its label; {summary.fileName} has one.
      </ErrorBox>
    );
  }
  if (!mapping) return null;
  const locked = !['idle', 'done', 'failed'].includes(phase);
  const workerError = prepare.status === 'error' && prepare.input === 'mapping' ? prepare.message.replace(`${summary.fileName}: `, '') : null;
  const error = localError ?? (labels.status === 'error' ? labels.message : workerError);
  const prepared = prepare.status === 'ready' && prepare.result.task === 'classification' ? prepare.result : null;
  return (
    <div className="mapping" data-testid="class-mapping">
      <h3>What the model learns: a label for each text</h3>
      <fieldset disabled={locked}>
        <div className="mapping-grid">
          <ColumnSelect label="Text column (what it reads)" value={mapping.text} columns={summary.columns} onChange={(v) => setMapping({ ...mapping, text: v })} testId="map-text-column" />
          <ColumnSelect label="Label column (the class to predict)" value={mapping.label} columns={summary.columns} onChange={(v) => setMapping({ ...mapping, label: v })} testId="map-label-column" />
        </div>
        {error && (
          <ErrorBox testId="mapping-error" title="Column mapping:">
            {error}
          </ErrorBox>
        )}
        {!localError && labels.status === 'ready' && <ClassBalance labels={labels.summary} prepared={prepared} />}
        {!localError && labels.status === 'loading' && (labels.previous ? <ClassBalance labels={labels.previous} prepared={null} stale /> : <p className="muted">Reading the labels…</p>)}
        <div className="mapping-grid">
          <ValidationSplit hint="Held out to measure loss, accuracy and macro-F1; the best evaluation is the one saved." />
        </div>
      </fieldset>
    </div>
  );
}

/** Classes with their counts and bars; per split once the examples are built; a warning when unbalanced. */
function ClassBalance({ labels, prepared, stale }: { labels: LabelSummary; prepared: ClassificationPrepareResult | null; stale?: boolean }) {
  const { names } = labels.labels;
  const max = Math.max(1, ...labels.counts);
  // The split counts belong to these labels only if the worker read the same label set.
  const splits = prepared && prepared.labels.join('\u0000') === names.join('\u0000') ? prepared : null;
  const skipped: ReactNode[] = [];
  if (labels.emptyText) skipped.push(`${formatInt(labels.emptyText)} with an empty text`);
  if (labels.emptyLabel) skipped.push(`${formatInt(labels.emptyLabel)} with an empty label`);
  return (
    <div className={`class-balance${stale ? ' stale' : ''}`} data-testid="class-balance">
      <h4>
        <span data-testid="class-count">{names.length} classes</span>
        <span className="muted small">
          {' '}
          · {labels.labels.kind === 'integer' ? 'integer labels: the class ids are the values' : 'text labels: ids in sorted order'} · {formatInt(labels.total)} usable rows
          {skipped.length ? ` (rows left out: ${skipped.join(', ')})` : ''}
        </span>
      </h4>
      <table className="class-table">
        <thead>
          <tr>
            <th scope="col" className="num">
              id
            </th>
            <th scope="col">label</th>
            <th scope="col" className="num">
              rows
            </th>
            <th scope="col" className="num">
              share
            </th>
            <th scope="col" className="bar-col">
              <span className="visually-hidden">bar</span>
            </th>
            {splits && (
              <>
                <th scope="col" className="num">
                  train
                </th>
                <th scope="col" className="num">
                  validation
                </th>
              </>
            )}
          </tr>
        </thead>
        <tbody>
          {names.map((n, k) => (
            <tr key={n} data-testid="class-row" data-label={n} data-count={labels.counts[k]}>
              <td className="num muted">{k}</td>
              <td className="class-name" title={n}>
                {n}
              </td>
              <td className="num">{formatInt(labels.counts[k])}</td>
              <td className="num">{percent(labels.counts[k] / Math.max(1, labels.total), 1)}</td>
              <td className="bar-col">
                <span className="class-bar" style={{ width: `${(100 * labels.counts[k]) / max}%` }} />
              </td>
              {splits && (
                <>
                  <td className="num">{formatInt(splits.trainCounts[k])}</td>
                  <td className="num">{formatInt(splits.validationCounts[k])}</td>
                </>
              )}
            </tr>
          ))}
        </tbody>
      </table>
      {labels.warning && (
        <p className="warning-box" data-testid="class-balance-warning">
          Class balance: {labels.warning}.
        </p>
      )}
    </div>
  );
}

function TokenStats() {
  const prepare = useApp((s) => s.prepare);
  const modelReady = useApp((s) => s.model.status === 'ready');
  const maxLength = useApp((s) => s.settings.maxLength);
  if (!modelReady) return <p className="muted token-note">Token counts appear once a base model is loaded (step 2): they depend on its tokenizer.</p>;
  const result = prepare.status === 'ready' ? prepare.result : prepare.status === 'running' ? prepare.previous : null;
  // A large table takes a while to tokenize: the worker reports every thousand rows.
  const counting =
    prepare.status === 'running' && prepare.fraction !== null && prepare.fraction < 1 ? (
      <div className="loading-line token-note" data-testid="examples-progress-line">
        <span>Counting tokens… {percent(prepare.fraction)} of the rows</span>
        <ProgressBar fraction={prepare.fraction} label="Tokenizing the rows" testId="examples-progress" />
      </div>
    ) : null;
  if (!result) {
    return prepare.status === 'running' ? (counting ?? <p className="muted token-note">Counting tokens…</p>) : null;
  }
  if (result.task === 'classification') {
    const { stats } = result;
    const t = stats.tokenLength;
    return (
      <div className={`token-stats${prepare.status === 'running' ? ' stale' : ''}`} data-testid="token-stats">
        {counting}
        <h3>Examples</h3>
        <dl className="facts">
          <div>
            <dt>Examples</dt>
            <dd data-testid="examples-count">
              {formatInt(result.trainExamples)} train · {formatInt(result.validationExamples)} validation
            </dd>
          </div>
          <div>
            <dt>Tokens per text</dt>
            <dd data-testid="token-lengths">
              min {t.min} · mean {t.mean.toFixed(1)} · max {t.max} <span className="muted">([CLS] and [SEP] included)</span>
            </dd>
          </div>
          <div>
            <dt>Cut to max length ({maxLength})</dt>
            <dd data-testid="truncated-count" className={stats.truncated > 0 ? 'warn-text' : ''}>
              {stats.truncated === 0 ? 'none' : `${formatInt(stats.truncated)} ${stats.truncated === 1 ? 'text' : 'texts'} (${percent(stats.truncated / Math.max(1, stats.count), 1)})`}
            </dd>
          </div>
          <div>
            <dt>Skipped rows</dt>
            <dd data-testid="skipped-count">{stats.skipped.count === 0 ? 'none' : formatInt(stats.skipped.count)}</dd>
          </div>
        </dl>
        {stats.skipped.count > 0 && <SkippedRows skipped={stats.skipped} maxLength={maxLength} />}
        {result.sample && (
          <div className="sample-example">
            <div className="muted small">Row {result.sample.row} as the model reads it, and the class it learns to predict</div>
            <pre data-testid="sample-example">
              <span className="sample-context">{result.sample.text}</span>
              {'  →  '}
              <mark>{result.sample.label}</mark>
            </pre>
          </div>
        )}
      </div>
    );
  }
  const { stats } = result;
  const t = stats.tokenLength;
  return (
    <div className={`token-stats${prepare.status === 'running' ? ' stale' : ''}`} data-testid="token-stats">
      {counting}
      <h3>Examples</h3>
      <dl className="facts">
        <div>
          <dt>Examples</dt>
          <dd data-testid="examples-count">
            {formatInt(result.trainExamples)} train · {formatInt(result.validationExamples)} validation
          </dd>
        </div>
        <div>
          <dt>Tokens per example</dt>
          <dd data-testid="token-lengths">
            min {t.min} · mean {t.mean.toFixed(1)} · 95 % ≤ {t.p95} · max {t.max}
          </dd>
        </div>
        <div>
          <dt>Cut to max length ({maxLength})</dt>
          <dd data-testid="truncated-count" className={stats.truncated > 0 ? 'warn-text' : ''}>
            {stats.truncated === 0 ? 'none' : `${formatInt(stats.truncated)} ${stats.truncated === 1 ? 'example' : 'examples'} (${percent(stats.truncated / Math.max(1, stats.count), 1)})`}
          </dd>
        </div>
        <div>
          <dt>Skipped rows</dt>
          <dd data-testid="skipped-count">{stats.skipped.count === 0 ? 'none' : formatInt(stats.skipped.count)}</dd>
        </div>
        <div>
          <dt>Tokens with loss</dt>
          <dd>{formatInt(stats.lossTokens)}</dd>
        </div>
      </dl>
      {stats.skipped.count > 0 && <SkippedRows skipped={stats.skipped} maxLength={maxLength} />}
      {result.sample && (
        <div className="sample-example">
          <div className="muted small">Row {result.sample.row} as the model sees it (highlighted: what it learns to write)</div>
          <pre data-testid="sample-example">
            <span className="sample-context">{result.sample.context}</span>
            <mark>{result.sample.target}</mark>
          </pre>
        </div>
      )}
    </div>
  );
}

const SKIPPED_SHOWN = 5;

function SkippedRows({ skipped, maxLength }: { skipped: { count: number; rows: { row: number; reason: string }[] }; maxLength: number }) {
  const [all, setAll] = useState(false);
  const rows = all ? skipped.rows : skipped.rows.slice(0, SKIPPED_SHOWN);
  const tooLong = skipped.rows.filter((r) => /fills all/.test(r.reason)).length;
  return (
    <div className="skipped" data-testid="skipped-rows">
      {tooLong > 0 && (
        <p className="warning-box">
          Some prompts are {maxLength} tokens or longer, so nothing of their completion is left to learn. Raise <strong>Max length</strong> (step 3)
          or shorten the prompt template.
        </p>
      )}
      <ul className="skipped-list">
        {rows.map((r) => (
          <li key={r.row}>
            <span className="problem-row">Row {r.row}</span> skipped: {r.reason}
          </li>
        ))}
      </ul>
      {(skipped.rows.length > SKIPPED_SHOWN || skipped.count > skipped.rows.length) && (
        <p className="muted small">
          {skipped.rows.length > SKIPPED_SHOWN && (
            <button type="button" className="link-button" onClick={() => setAll(!all)}>
              {all ? 'Show fewer' : `Show ${skipped.rows.length - SKIPPED_SHOWN} more`}
            </button>
          )}
          {skipped.count > skipped.rows.length && ` ${formatInt(skipped.count - skipped.rows.length)} more skipped rows are not listed.`}
        </p>
      )}
    </div>
  );
}
