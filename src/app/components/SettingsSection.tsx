// Step 3: how to train. The adapter method (picked from the method descriptors of
// src/worker/methods.ts, each with a one-line explanation and its trainable-parameter count on the
// loaded model), the chosen method's own settings, and the optimizer and length of the run. Every
// value is checked as it is typed; a bad one says why next to the field.

import { useApp } from '../store';
import { DEFAULT_SETTINGS, type TrainSettings } from '../../worker/settings';
import { ALL_LINEAR, METHODS, METHOD_BY_ID, moduleMatchesTargets, notForClassifiers, type Hint, type MethodDescriptor, type MethodField, type PeftFacts } from '../../worker/methods';
import type { ModelSummary } from '../../worker/protocol';
import type { ScheduleKind } from '../../train/schedule';
import { NumberField, SelectField, Section } from './common';
import { formatInt } from '../format';

export function SettingsSection() {
  const s = useApp((st) => st.settings);
  const errors = useApp((st) => st.settingErrors);
  const update = useApp((st) => st.updateSettings);
  const model = useApp((st) => st.model);
  const prepare = useApp((st) => st.prepare);
  const phase = useApp((st) => st.training.phase);
  const gpu = useApp((st) => st.gpu);
  const tensorCores = gpu.status === 'ready' && gpu.info.gpu.tensorCores;
  const locked = !['idle', 'done', 'failed'].includes(phase);
  const summary = model.status === 'ready' ? model.summary : null;
  const classification = summary?.task === 'classification';
  const num = (key: keyof TrainSettings, label: string, extra: Partial<Parameters<typeof NumberField>[0]> = {}) => (
    <NumberField
      label={label}
      value={s[key] as number}
      error={errors[key]}
      testId={`setting-${key}`}
      disabled={locked}
      onChange={(v) => update({ [key]: v } as Partial<TrainSettings>)}
      {...extra}
    />
  );
  // A plan computed from earlier values would contradict the fields being fixed: hide it meanwhile.
  // While the values are checked again the last plan stays, dimmed (the page below does not jump).
  const checking = prepare.status === 'running';
  const plan = Object.keys(errors).length > 0 ? null : prepare.status === 'ready' ? prepare.result : checking ? prepare.previous : null;
  const method = METHOD_BY_ID[s.method];
  return (
    <Section id="settings" step={3} title="Settings" subtitle="Defaults suit most small datasets; change what you need.">
      <MethodPicker summary={summary} locked={locked} />
      {errors.method && (
        <p className="field-error method-error" data-testid="setting-method-error" role="alert">
          {errors.method}
        </p>
      )}

      <h3 data-testid="method-settings-title">
        {method.name} settings
        {classification && <span className="muted small"> · plus the classification head, trained in full</span>}
      </h3>
      <MethodFields method={method} summary={summary} locked={locked} />

      {classification && (
        <>
          <h3>Classification</h3>
          <div className="settings-grid">
            <SelectField<TrainSettings['metricForBest']>
              label="Keep the best evaluation by"
              value={s.metricForBest}
              disabled={locked}
              testId="setting-metricForBest"
              error={errors.metricForBest}
              options={[
                { value: 'loss', label: 'Lowest validation loss' },
                { value: 'accuracy', label: 'Highest accuracy' },
              ]}
              hint="Its weights are the ones saved (load_best_model_at_end)."
              onChange={(v) => update({ metricForBest: v })}
            />
          </div>
        </>
      )}

      <h3>Training</h3>
      <div className="settings-grid">
        {num('learningRate', 'Learning rate', { hint: method.lrHint })}
        <div className="field field-pair">
          <SelectField<'epochs' | 'steps'>
            label="Train for"
            value={s.lengthUnit}
            disabled={locked}
            testId="setting-lengthUnit"
            options={[
              { value: 'epochs', label: 'Epochs' },
              { value: 'steps', label: 'Steps' },
            ]}
            onChange={(v) => update({ lengthUnit: v })}
          />
          {s.lengthUnit === 'epochs' ? num('epochs', 'Epochs') : num('steps', 'Steps')}
        </div>
        {num('batchSize', 'Batch size', { hint: 'Examples per step.' })}
        {num('maxLength', 'Max length (tokens)', {
          hint: summary ? `Longer examples are cut; at most ${summary.maxPositions - method.extraPositions(s)}${method.extraPositions(s) ? ' with the virtual tokens' : ''}.` : 'Longer examples are cut.',
        })}
        {num('warmupRatio', 'Warmup', { scale: 100, suffix: '% of steps', hint: plan ? `= ${plan.warmupSteps} ${plan.warmupSteps === 1 ? 'step' : 'steps'}` : undefined })}
        <SelectField<ScheduleKind>
          label="Learning-rate schedule"
          value={s.schedule}
          disabled={locked}
          testId="setting-schedule"
          options={[
            { value: 'linear', label: 'Linear decay' },
            { value: 'cosine', label: 'Cosine decay' },
            { value: 'constant', label: 'Constant' },
          ]}
          onChange={(v) => update({ schedule: v })}
        />
      </div>
      <details className="more-settings" data-testid="more-settings">
        <summary>More settings</summary>
        <div className="settings-grid">
          {num('gradAccum', 'Gradient accumulation', { hint: 'Batches per optimizer step.' })}
          {num('weightDecay', 'Weight decay')}
          {num('evalEvery', 'Evaluate every (steps)', { hint: '0: ten times over the run.' })}
          {num('checkpointEvery', 'Checkpoint every (steps)', { hint: 'Also on pause and at the end.' })}
          {num('seed', 'Seed', { hint: 'Same seed, same data order and init.' })}
          <SelectField<TrainSettings['frozenWeights']>
            label="Frozen weights"
            value={s.frozenWeights}
            disabled={locked}
            testId="setting-frozenWeights"
            hint="f16 keeps the base model's matrices in half the GPU memory, rounded once (sums stay f32, the adapter trains in f32): about as fast as f32 (on an H100 within 3 % either way). Changing it uploads the weights again."
            options={[
              { value: 'f32', label: 'f32' },
              { value: 'f16', label: 'f16 (half the memory)' },
            ]}
            onChange={(v) => update({ frozenWeights: v })}
          />
          {tensorCores && (
            <SelectField<TrainSettings['precision']>
              label="Precision"
              value={s.precision}
              disabled={locked}
              testId="setting-precision"
              hint="Mixed: the frozen layers on tensor cores with f16 operands and f32 sums, the fastest. f32 on tensor cores: each operand as two halves (three products), close to f32's accuracy and faster than f32 kernels. f32: every product in f32 kernels."
              options={[
                { value: 'mixed', label: 'Mixed (tensor cores)' },
                { value: 'f32-tensor-cores', label: 'f32 on tensor cores' },
                { value: 'f32', label: 'f32 everywhere' },
              ]}
              onChange={(v) => update({ precision: v })}
            />
          )}
        </div>
      </details>
      {plan && (
        <p className={checking ? 'plan-line plan-line-checking' : 'plan-line'} data-testid="plan-line" aria-busy={checking}>
          {formatInt(plan.totalSteps)} steps of {s.batchSize}
          {s.gradAccum > 1 ? ` × ${s.gradAccum}` : ''} examples × {plan.seqLen} tokens · {formatInt(plan.stepsPerEpoch)} steps per epoch
          {plan.task === 'classification' ? ` · ${plan.labels.length} classes` : ''}
        </p>
      )}
    </Section>
  );
}

/** Why a method cannot be used with this model, or null. */
function unavailableReason(m: MethodDescriptor, summary: ModelSummary | null): string | null {
  if (!summary) return null;
  if (!m.tasks.includes(summary.task)) return summary.task === 'classification' ? notForClassifiers(m, summary.peft.unavailable[m.id]) : 'For text classifiers only.';
  const refused = summary.peft.unavailable[m.id];
  return refused ? `Not for this model: ${refused}` : null;
}

function MethodPicker({ summary, locked }: { summary: ModelSummary | null; locked: boolean }) {
  const s = useApp((st) => st.settings);
  const update = useApp((st) => st.updateSettings);
  return (
    <fieldset className="methods" disabled={locked} data-testid="method-picker">
      <legend>Method</legend>
      {METHODS.map((m) => {
        const reason = unavailableReason(m, summary);
        const selected = m.id === s.method;
        // Each card counts its own settings (the chosen ones, or the defaults it would start from).
        const count = summary && !reason ? m.trainableParams(s, summary.peft) : null;
        return (
          <label key={m.id} className={`method${reason ? ' method-unavailable' : ''}${selected ? ' selected' : ''}`} data-testid={`method-${m.id}`}>
            <input type="radio" name="method" value={m.id} checked={selected} onChange={() => update({ method: m.id })} />
            <span className="method-name">{m.name}</span>
            <span className="method-blurb">{m.blurb}</span>
            {reason ? (
              <span className="method-reason" data-testid={`method-${m.id}-reason`}>
                {reason}
              </span>
            ) : (
              count !== null && (
                <span className="method-count" data-testid={`method-${m.id}-count`}>
                  {formatInt(count)} trainable{summary?.task === 'classification' ? ' + the head' : ''}
                </span>
              )
            )}
          </label>
        );
      })}
    </fieldset>
  );
}

function hintText(hint: Hint | undefined, s: TrainSettings, peft: PeftFacts | null): string | undefined {
  if (hint === undefined) return undefined;
  return (typeof hint === 'function' ? hint(s, peft) : hint) ?? undefined;
}

/** The chosen method's settings, rendered from its descriptor's fields. */
function MethodFields({ method, summary, locked }: { method: MethodDescriptor; summary: ModelSummary | null; locked: boolean }) {
  const s = useApp((st) => st.settings);
  const errors = useApp((st) => st.settingErrors);
  const update = useApp((st) => st.updateSettings);
  const peft = summary?.peft ?? null;
  const simple = method.fields.filter((f) => f.kind !== 'modules' && (f.shown?.(s) ?? true));
  const modules = method.fields.filter((f): f is Extract<MethodField, { kind: 'modules' }> => f.kind === 'modules' && (f.shown?.(s) ?? true));
  return (
    <>
      {simple.length > 0 && (
        <div className="settings-grid" data-testid="method-fields">
          {simple.map((f) => {
            const hint = hintText(f.hint, s, peft);
            switch (f.kind) {
              case 'number':
                return (
                  <NumberField
                    key={f.key}
                    label={f.label}
                    value={s[f.key]}
                    error={errors[f.key]}
                    hint={hint}
                    testId={`setting-${f.key}`}
                    disabled={locked}
                    onChange={(v) => update({ [f.key]: v } as Partial<TrainSettings>)}
                  />
                );
              case 'toggle':
                return (
                  <div className="field checkbox-field" key={f.key}>
                    <label>
                      <input
                        type="checkbox"
                        checked={s[f.key]}
                        disabled={locked}
                        onChange={(e) => update({ [f.key]: e.target.checked } as Partial<TrainSettings>)}
                        data-testid={`setting-${f.key}`}
                      />{' '}
                      {f.label}
                    </label>
                    {errors[f.key] ? <span className="field-error">{errors[f.key]}</span> : hint && <span className="field-hint">{hint}</span>}
                  </div>
                );
              case 'choice':
                return (
                  <SelectField<string>
                    key={f.key}
                    label={f.label}
                    value={s[f.key]}
                    options={[...f.options]}
                    disabled={locked}
                    error={errors[f.key]}
                    hint={hint}
                    testId={`setting-${f.key}`}
                    onChange={(v) => update({ [f.key]: v } as Partial<TrainSettings>)}
                  />
                );
              case 'text':
                return (
                  <div className={`field field-span-2${errors[f.key] ? ' field-invalid' : ''}`} key={f.key}>
                    <label htmlFor={`setting-${f.key}`}>{f.label}</label>
                    <input
                      id={`setting-${f.key}`}
                      type="text"
                      value={s[f.key]}
                      placeholder={f.placeholder}
                      disabled={locked}
                      aria-invalid={errors[f.key] ? true : undefined}
                      data-testid={`setting-${f.key}`}
                      onChange={(e) => update({ [f.key]: e.target.value } as Partial<TrainSettings>)}
                    />
                    {errors[f.key] ? (
                      <span className="field-error" data-testid={`setting-${f.key}-error`}>
                        {errors[f.key]}
                      </span>
                    ) : (
                      hint && <span className="field-hint">{hint}</span>
                    )}
                  </div>
                );
            }
          })}
        </div>
      )}
      {modules.map((f) => (
        <ModulePicker key={f.key} field={f} summary={summary} locked={locked} />
      ))}
    </>
  );
}

/** Which layer groups a method acts on (LoRA and IA3's target_modules; IA3's feedforward marks). */
function ModulePicker({ field, summary, locked }: { field: Extract<MethodField, { kind: 'modules' }>; summary: ModelSummary | null; locked: boolean }) {
  const s = useApp((st) => st.settings);
  const errors = useApp((st) => st.settingErrors);
  const update = useApp((st) => st.updateSettings);
  const targets = s[field.key];
  const ffKey = field.feedforwardKey;
  const feedforward = ffKey ? s[ffKey] : [];
  // LoRA keeps its test ids (target-q_proj); other methods prefix theirs with the setting name.
  const idOf = (t: string) => (field.key === 'targetModules' ? `target-${t}` : `${field.key}-${t}`);
  const allLinear = targets.includes(ALL_LINEAR);
  const allowAll = field.allLinear && summary?.task !== 'classification';
  const error = errors[field.key] ?? (ffKey ? errors[ffKey] : undefined);
  const hint = hintText(field.hint, s, summary?.peft ?? null);
  const groups = summary?.peft.linearModules ?? [];
  const defaults = summary ? METHOD_BY_ID[s.method].modelDefaults(summary.peft)[field.key] ?? DEFAULT_SETTINGS[field.key] : [];
  return (
    <fieldset className={`targets${error ? ' field-invalid' : ''}`} disabled={locked} data-testid={field.key === 'targetModules' ? 'target-modules' : `${field.key}-modules`}>
      <legend>{field.label}</legend>
      {!summary ? (
        <p className="muted small">Load a base model to choose among its layers.</p>
      ) : (
        <div className="target-list">
          {allowAll && (
            <label className="target target-all">
              <input
                type="checkbox"
                checked={allLinear}
                data-testid={idOf(ALL_LINEAR)}
                // PEFT's 'all-linear': every linear layer but the output head; off again goes back to the model's defaults.
                onChange={(e) => update({ [field.key]: e.target.checked ? [ALL_LINEAR] : summary.peft.defaultTargets } as Partial<TrainSettings>)}
              />
              <strong>All linear layers</strong>
              <span className="muted small">
                {groups.reduce((n, g) => n + g.count, 0)} layers · target_modules "all-linear"
              </span>
            </label>
          )}
          {groups.map((g) => {
            const chosen = targets.includes(g.target);
            // A suffix can pick more than its own group (BERT's output.dense also ends attention.output.dense).
            const implied = allLinear || (!chosen && moduleMatchesTargets(g.example, targets.filter((t) => t !== ALL_LINEAR)));
            const isFf = feedforward.includes(g.target);
            return (
              <span key={g.target} className={`target${implied ? ' target-implied' : ''}${chosen ? ' target-chosen' : ''}`}>
                <label>
                  <input
                    type="checkbox"
                    checked={chosen || implied}
                    disabled={allLinear}
                    data-testid={idOf(g.target)}
                    onChange={(e) => {
                      const next = e.target.checked ? [...targets, g.target] : targets.filter((t) => t !== g.target);
                      const patch: Partial<TrainSettings> = { [field.key]: next };
                      if (ffKey && !e.target.checked) patch[ffKey] = feedforward.filter((t) => t !== g.target);
                      update(patch);
                    }}
                  />{' '}
                  <code>{g.target}</code>
                </label>
                <span className="muted small">
                  {g.count} × {g.inFeatures}→{g.outFeatures}
                  {defaults.includes(g.target) ? ' · default' : ''}
                </span>
                {ffKey && chosen && (
                  <label className="ff-toggle" title="Feedforward module: IA3 scales this layer's input instead of its output">
                    <input
                      type="checkbox"
                      checked={isFf}
                      data-testid={`${ffKey}-${g.target}`}
                      onChange={(e) => update({ [ffKey]: e.target.checked ? [...feedforward, g.target] : feedforward.filter((t) => t !== g.target) } as Partial<TrainSettings>)}
                    />{' '}
                    input
                  </label>
                )}
              </span>
            );
          })}
        </div>
      )}
      {error ? (
        <span className="field-error" data-testid={`setting-${field.key}-error`}>
          {error}
        </span>
      ) : (
        hint && <span className="field-hint">{hint}</span>
      )}
    </fieldset>
  );
}
