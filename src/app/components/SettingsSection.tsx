// Step 3: how to train. LoRA's own settings, which layers it adapts, and the optimizer and length
// of the run. Every value is checked as it is typed; a bad one says why next to the field.

import { useApp } from '../store';
import { ALL_LINEAR, type TrainSettings } from '../../worker/settings';
import type { ScheduleKind } from '../../train/schedule';
import { NumberField, SelectField, Section } from './common';
import { formatInt } from '../format';

const METHODS: { id: string; name: string; blurb: string; available: boolean }[] = [
  { id: 'lora', name: 'LoRA', blurb: 'Low-rank updates to chosen layers. Small, fast, loads in PEFT.', available: true },
  { id: 'prefix-tuning', name: 'Prefix tuning', blurb: 'Learned key/value prefixes in every layer.', available: false },
  { id: 'prompt-tuning', name: 'Prompt tuning', blurb: 'Learned virtual tokens before the input.', available: false },
  { id: 'ia3', name: 'IA3', blurb: 'Learned rescaling of activations.', available: false },
  { id: 'bottleneck', name: 'Bottleneck adapters', blurb: 'Small MLPs inserted after layers.', available: false },
];

export function SettingsSection() {
  const s = useApp((st) => st.settings);
  const errors = useApp((st) => st.settingErrors);
  const update = useApp((st) => st.updateSettings);
  const model = useApp((st) => st.model);
  const prepare = useApp((st) => st.prepare);
  const phase = useApp((st) => st.training.phase);
  const locked = !['idle', 'done', 'failed'].includes(phase);
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
  const plan = prepare.status === 'ready' && Object.keys(errors).length === 0 ? prepare.result : null;
  const allLinear = s.targetModules.includes(ALL_LINEAR);
  return (
    <Section id="settings" step={3} title="Settings" subtitle="Defaults suit most small datasets; change what you need.">
      <fieldset className="methods" disabled={locked}>
        <legend>Method</legend>
        {METHODS.map((m) => (
          <label key={m.id} className={`method${m.available ? '' : ' method-disabled'}${m.id === s.method ? ' selected' : ''}`} data-testid={`method-${m.id}`}>
            <input type="radio" name="method" value={m.id} checked={m.id === s.method} disabled={!m.available} onChange={() => undefined} />
            <span className="method-name">{m.name}</span>
            {!m.available && <span className="tag">coming soon</span>}
            <span className="method-blurb">{m.blurb}</span>
          </label>
        ))}
      </fieldset>

      <h3>LoRA</h3>
      <div className="settings-grid">
        {num('rank', 'Rank (r)', { hint: 'Size of the update; 4–16 is typical.' })}
        {num('alpha', 'Alpha', { hint: `Scale = alpha / r${s.useRslora ? ' (√r with rsLoRA)' : ''}; often 2 × r.` })}
        {num('dropout', 'Dropout', { hint: 'On the adapter’s input, 0–0.1.' })}
        <div className="field checkbox-field">
          <label>
            <input type="checkbox" checked={s.useRslora} disabled={locked} onChange={(e) => update({ useRslora: e.target.checked })} data-testid="setting-useRslora" /> rsLoRA
            scaling (alpha / √r)
          </label>
          <span className="field-hint">Steadier at high ranks.</span>
        </div>
      </div>
      <fieldset className={`targets${errors.targetModules ? ' field-invalid' : ''}`} disabled={locked} data-testid="target-modules">
        <legend>Layers to adapt (target modules)</legend>
        {model.status !== 'ready' ? (
          <p className="muted small">Load a base model to choose among its layers.</p>
        ) : (
          <div className="target-list">
            <label className="target target-all">
              <input
                type="checkbox"
                checked={allLinear}
                data-testid="target-all-linear"
                // PEFT's 'all-linear': every linear layer but the output head; off again goes back to the model's defaults.
                onChange={(e) => update({ targetModules: e.target.checked ? [ALL_LINEAR] : model.summary.defaultTargets })}
              />
              <strong>All linear layers</strong>
              <span className="muted small">
                {model.summary.linearModules.reduce((n, g) => n + g.count, 0)} layers · target_modules "all-linear"
              </span>
            </label>
            {model.summary.linearModules.map((g) => (
              <label key={g.target} className={`target${allLinear ? ' target-implied' : ''}`}>
                <input
                  type="checkbox"
                  checked={allLinear || s.targetModules.includes(g.target)}
                  disabled={allLinear}
                  data-testid={`target-${g.target}`}
                  onChange={(e) =>
                    update({
                      targetModules: e.target.checked ? [...s.targetModules, g.target] : s.targetModules.filter((t) => t !== g.target),
                    })
                  }
                />
                <code>{g.target}</code>
                <span className="muted small">
                  {g.count} × {g.inFeatures}→{g.outFeatures}
                  {model.summary.defaultTargets.includes(g.target) ? ' · default' : ''}
                </span>
              </label>
            ))}
          </div>
        )}
        {errors.targetModules && <span className="field-error">{errors.targetModules}</span>}
      </fieldset>

      <h3>Training</h3>
      <div className="settings-grid">
        {num('learningRate', 'Learning rate', { hint: 'LoRA: 1e-4 to 1e-3.' })}
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
          hint: model.status === 'ready' ? `Longer examples are cut; at most ${model.summary.maxPositions}.` : 'Longer examples are cut.',
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
        </div>
      </details>
      {plan && (
        <p className="plan-line" data-testid="plan-line">
          {formatInt(plan.totalSteps)} steps of {s.batchSize}
          {s.gradAccum > 1 ? ` × ${s.gradAccum}` : ''} examples × {plan.seqLen} tokens · {formatInt(plan.stepsPerEpoch)} steps per epoch
        </p>
      )}
    </Section>
  );
}
