// Small building blocks shared by the sections.

import { useEffect, useId, useState, type ReactNode } from 'react';

export function Section(props: { id: string; step?: number; title: string; subtitle?: ReactNode; children: ReactNode; aside?: ReactNode }) {
  return (
    <section className="card" id={props.id} aria-labelledby={`${props.id}-title`} data-testid={`section-${props.id}`}>
      <header className="card-header">
        <h2 id={`${props.id}-title`}>
          {props.step !== undefined && <span className="step-number">{props.step}</span>}
          {props.title}
        </h2>
        {props.aside}
      </header>
      {props.subtitle && <p className="card-subtitle">{props.subtitle}</p>}
      {props.children}
    </section>
  );
}

export function ProgressBar(props: { fraction: number | null; label?: string; testId?: string; small?: boolean }) {
  const indeterminate = props.fraction === null;
  const pct = indeterminate ? 0 : Math.max(0, Math.min(1, props.fraction!)) * 100;
  return (
    <div
      className={`progress${props.small ? ' progress-small' : ''}${indeterminate ? ' progress-indeterminate' : ''}`}
      role="progressbar"
      aria-label={props.label}
      aria-valuemin={0}
      aria-valuemax={100}
      aria-valuenow={indeterminate ? undefined : Math.round(pct)}
      data-testid={props.testId}
    >
      <div className="progress-fill" style={indeterminate ? undefined : { width: `${pct}%` }} />
    </div>
  );
}

export function ErrorBox(props: { children: ReactNode; testId?: string; title?: string }) {
  return (
    <div className="error-box" role="alert" data-testid={props.testId}>
      {props.title && <strong>{props.title} </strong>}
      {props.children}
    </div>
  );
}

/** A numeric input that keeps what the user types (e.g. "0." or "2e-") while it is not a number yet. */
export function NumberField(props: {
  label: string;
  value: number;
  onChange: (v: number) => void;
  error?: string;
  hint?: ReactNode;
  testId?: string;
  /** Shown value = stored value × scale (percentages). */
  scale?: number;
  suffix?: string;
  disabled?: boolean;
}) {
  const scale = props.scale ?? 1;
  const show = (v: number) => (Number.isFinite(v) ? String(Number((v * scale).toPrecision(12))) : '');
  const [text, setText] = useState(show(props.value));
  const id = useId();
  const parse = (t: string) => (t.trim() === '' ? NaN : Number(t.trim()) / scale);
  useEffect(() => {
    const parsed = parse(text);
    if (!(parsed === props.value || (Number.isNaN(parsed) && Number.isNaN(props.value)))) setText(show(props.value));
    // Only an outside change of the value should rewrite the text.
  }, [props.value]);
  return (
    <div className={`field${props.error ? ' field-invalid' : ''}`}>
      <label htmlFor={id}>{props.label}</label>
      <div className="input-with-suffix">
        <input
          id={id}
          type="text"
          inputMode="decimal"
          value={text}
          disabled={props.disabled}
          aria-invalid={props.error ? true : undefined}
          aria-describedby={props.error ? `${id}-error` : undefined}
          data-testid={props.testId}
          onChange={(e) => {
            setText(e.target.value);
            props.onChange(parse(e.target.value));
          }}
        />
        {props.suffix && <span className="suffix">{props.suffix}</span>}
      </div>
      {props.error ? (
        <span className="field-error" id={`${id}-error`} data-testid={props.testId ? `${props.testId}-error` : undefined}>
          {props.error}
        </span>
      ) : (
        props.hint && <span className="field-hint">{props.hint}</span>
      )}
    </div>
  );
}

export function SelectField<T extends string>(props: {
  label: string;
  value: T;
  options: { value: T; label: string }[];
  onChange: (v: T) => void;
  testId?: string;
  hint?: ReactNode;
  error?: string;
  disabled?: boolean;
}) {
  const id = useId();
  return (
    <div className={`field${props.error ? ' field-invalid' : ''}`}>
      <label htmlFor={id}>{props.label}</label>
      <select id={id} value={props.value} disabled={props.disabled} data-testid={props.testId} onChange={(e) => props.onChange(e.target.value as T)}>
        {props.options.map((o) => (
          <option key={o.value} value={o.value}>
            {o.label}
          </option>
        ))}
      </select>
      {props.error ? <span className="field-error">{props.error}</span> : props.hint && <span className="field-hint">{props.hint}</span>}
    </div>
  );
}

export function Stat(props: { label: string; value: ReactNode; testId?: string; sub?: ReactNode }) {
  return (
    <div className="stat">
      <div className="stat-label">{props.label}</div>
      <div className="stat-value" data-testid={props.testId}>
        {props.value}
      </div>
      {props.sub && <div className="stat-sub">{props.sub}</div>}
    </div>
  );
}
