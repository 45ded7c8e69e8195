// The adapter methods the app offers, one descriptor each: what the picker shows (name, a one-line
// explanation, the settings fields with their hints), the checks on those settings, the trainable
// parameter count for a model (the count PEFT's print_trainable_parameters gives), the rows of the
// model card, and the engine's MethodSpec (src/engine/peft/factory.ts createPeftMethod). The page
// renders the picker and each method's fields from this list and the worker builds the run from it,
// so a new method (DoRA, bottleneck adapters) is one more entry here.

import type { MethodSpec } from '../engine/peft/factory';
import { BOTTLENECK_PRESETS, type BottleneckActivation } from '../engine/peft/bottleneck';
import type { LinearModuleGroup } from './protocol';
import type { SettingErrors, SettingLimits, SettingName, TrainSettings } from './settings';

export type TaskKind = 'causal-lm' | 'classification';
export type MethodId = 'lora' | 'dora' | 'ia3' | 'prompt' | 'prefix' | 'bottleneck';

/** PEFT's shorthand for every linear layer except the output head. */
export const ALL_LINEAR = 'all-linear';

/** What the methods need to know about the loaded model (ModelSummary.peft). */
export interface PeftFacts {
  task: TaskKind;
  /** The linear layers adapters can target, grouped by kind (q_proj of every layer, ...). */
  linearModules: LinearModuleGroup[];
  /** PEFT's default LoRA targets for the architecture (group targets). */
  defaultTargets: string[];
  hidden: number;
  layers: number;
  heads: number;
  vocab: number;
  /** Prefix tuning's dimensions as PEFT sizes them (kv heads x hidden / heads per layer); null when not a causal LM. */
  prefix: { kvHeads: number; headDim: number } | null;
  /**
   * IA3's default targets for the model (group targets): PEFT's for the model_type; for DistilBERT,
   * which PEFT has none for, the engine's (fromPeft false; ENCODER_IA3_DEFAULTS). null: none at all.
   */
  ia3Defaults: { targetModules: string[]; feedforwardModules: string[]; fromPeft?: boolean } | null;
  /** Methods the engine refuses for this model, with its reason. */
  unavailable: Partial<Record<MethodId, string>>;
}

/** PEFT's target_modules rule for a list: the module path equals a target or ends with "." + target. */
export function moduleMatchesTargets(module: string, targets: readonly string[]): boolean {
  return targets.some((t) => module === t || module.endsWith(`.${t}`));
}

/** The model's layer groups a target_modules list adapts ('all-linear': every one). */
export function targetedGroups(groups: readonly LinearModuleGroup[], targets: readonly string[]): LinearModuleGroup[] {
  return targets.includes(ALL_LINEAR) ? [...groups] : groups.filter((g) => moduleMatchesTargets(g.example, targets));
}

/** `what` must be a whole number in [min, max]; the error goes to e[k]. */
export function checkInt(e: SettingErrors, k: SettingName, v: number, min: number, max: number, what: string): void {
  if (!Number.isFinite(v)) e[k] = `${what} must be a number.`;
  else if (!Number.isInteger(v)) e[k] = `${what} must be a whole number.`;
  else if (v < min || v > max) e[k] = `${what} must be between ${min} and ${max}.`;
}

type KeysOf<V> = { [K in SettingName]: TrainSettings[K] extends V ? K : never }[SettingName];

/** A hint under a field; may depend on the settings and the model (PEFT's default for it, say). */
export type Hint = string | ((s: TrainSettings, m: PeftFacts | null) => string | null);

export type MethodField =
  | { kind: 'number'; key: KeysOf<number>; label: string; hint?: Hint; shown?: (s: TrainSettings) => boolean }
  | { kind: 'toggle'; key: KeysOf<boolean>; label: string; hint?: Hint; shown?: (s: TrainSettings) => boolean }
  | { kind: 'choice'; key: KeysOf<string>; label: string; options: readonly { value: string; label: string }[]; hint?: Hint; shown?: (s: TrainSettings) => boolean }
  | { kind: 'text'; key: KeysOf<string>; label: string; placeholder?: string; hint?: Hint; shown?: (s: TrainSettings) => boolean }
  /** Which layer groups the method acts on; with feedforwardKey each chosen group also says whether its input is scaled (IA3). */
  | { kind: 'modules'; key: KeysOf<string[]>; label: string; allLinear: boolean; feedforwardKey?: KeysOf<string[]>; hint?: Hint; shown?: (s: TrainSettings) => boolean };

export interface MethodDescriptor {
  id: MethodId;
  /** As the picker, the library and the model card title say it. */
  name: string;
  /** PEFT's peft_type in adapter_config.json (AdapterHub's architecture for bottleneck adapters). */
  peftType: string;
  /** Which library loads the download: PEFT, or AdapterHub's `adapters` (bottleneck adapters, which PEFT lacks). */
  format: 'peft' | 'adapterhub';
  /** One line: what it trains. */
  blurb: string;
  /** The model card's method label and tag (the CLI's: LoRA, IA3, prompt-tuning, prefix-tuning). */
  cardLabel: string;
  tasks: readonly TaskKind[];
  fields: readonly MethodField[];
  /** A learning rate that usually suits it. */
  lrHint: string;
  /** Values that depend on the loaded model (its default targets, PEFT's default widths). */
  modelDefaults(m: PeftFacts): Partial<TrainSettings>;
  /** This method's own fields only; limits is absent until a model is loaded. */
  validate(s: TrainSettings, limits?: SettingLimits): SettingErrors;
  /** Positions the method adds in front of every sequence (prompt tuning, prefix tuning). */
  extraPositions(s: TrainSettings): number;
  /** Trainable parameters on this model with these settings (what PEFT counts). */
  trainableParams(s: TrainSettings, m: PeftFacts): number;
  /** Short description for lists, e.g. "r=8 · c_attn". */
  summary(s: TrainSettings): string;
  /** Rows of the model card's settings table. */
  cardSettings(s: TrainSettings): Record<string, unknown>;
  /** What createPeftMethod builds. */
  spec(s: TrainSettings, baseModel: string): MethodSpec;
}

const groupsCount = (groups: readonly LinearModuleGroup[], per: (g: LinearModuleGroup) => number) => groups.reduce((s, g) => s + g.count * per(g), 0);

const targetsList = (t: readonly string[]) => (t.length ? t.join(', ') : 'none');

function checkTargets(e: SettingErrors, key: SettingName, targets: readonly string[], limits: SettingLimits | undefined, what: string, allowAllLinear: boolean): void {
  if (!limits) return; // which layers exist is only known once a model is loaded
  if (targets.length === 0) {
    e[key] = `Pick at least one layer type for ${what} to adapt.`;
    return;
  }
  if (targets.includes(ALL_LINEAR) && !allowAllLinear) {
    e[key] = `"All linear layers" is not available for ${what} here; pick the layers.`;
    return;
  }
  const unknown = targets.filter((t) => t !== ALL_LINEAR && !limits.availableTargets.includes(t));
  if (unknown.length) e[key] = `This model has no ${unknown.join(', ')} layers.`;
}

/** LoRA's fields, shared with DoRA (the same LoraConfig with use_dora). */
const LORA_FIELDS: readonly MethodField[] = [
  { kind: 'number', key: 'rank', label: 'Rank (r)', hint: 'Size of the update; 4–16 is typical.' },
  { kind: 'number', key: 'alpha', label: 'Alpha', hint: (s) => `Scale = alpha / r${s.useRslora ? ' (√r with rsLoRA)' : ''}; often 2 × r.` },
  { kind: 'number', key: 'dropout', label: 'Dropout', hint: 'On the adapter’s input, 0–0.1.' },
  { kind: 'toggle', key: 'useRslora', label: 'rsLoRA scaling (alpha / √r)', hint: 'Steadier at high ranks.' },
  { kind: 'modules', key: 'targetModules', label: 'Layers to adapt (target modules)', allLinear: true },
];

function validateLora(s: TrainSettings, limits: SettingLimits | undefined, what: string): SettingErrors {
  const e: SettingErrors = {};
  checkInt(e, 'rank', s.rank, 1, 1024, 'Rank');
  if (!Number.isFinite(s.alpha) || s.alpha <= 0) e.alpha = 'Alpha must be a positive number (commonly 2 × rank).';
  else if (s.alpha > 10000) e.alpha = 'Alpha above 10000 would blow the update up; commonly 2 × rank.';
  if (!Number.isFinite(s.dropout) || s.dropout < 0 || s.dropout >= 1) e.dropout = 'Dropout must be at least 0 and below 1 (e.g. 0.05).';
  if (limits?.task === 'classification' && s.targetModules.includes(ALL_LINEAR)) {
    e.targetModules = `"All linear layers" is not available for classifiers (PEFT would also put ${what} on the classification head); pick the layers.`;
  } else {
    checkTargets(e, 'targetModules', s.targetModules, limits, what, true);
  }
  return e;
}

const loraCount = (s: TrainSettings, m: PeftFacts) =>
  Number.isInteger(s.rank) && s.rank > 0 ? groupsCount(targetedGroups(m.linearModules, s.targetModules), (g) => s.rank * (g.inFeatures + g.outFeatures)) : 0;

const LORA: MethodDescriptor = {
  id: 'lora',
  name: 'LoRA',
  peftType: 'LORA',
  cardLabel: 'LoRA',
  format: 'peft',
  blurb: 'Learns a low-rank update (B·A) beside chosen linear layers; the base weights stay frozen.',
  tasks: ['causal-lm', 'classification'],
  lrHint: 'LoRA: 1e-4 to 1e-3.',
  fields: LORA_FIELDS,
  modelDefaults: (m) => ({ targetModules: [...m.defaultTargets] }),
  validate: (s, limits) => validateLora(s, limits, 'LoRA'),
  extraPositions: () => 0,
  trainableParams: loraCount,
  summary: (s) => `r=${s.rank} · ${s.targetModules.join(', ')}`,
  cardSettings: (s) => ({ rank: s.rank, alpha: s.alpha, dropout: s.dropout, 'target modules': s.targetModules, rsLoRA: s.useRslora }),
  spec: (s) => ({ method: 'lora', lora: { r: s.rank, alpha: s.alpha, dropout: s.dropout, targetModules: [...s.targetModules], useRslora: s.useRslora } }),
};

const DORA: MethodDescriptor = {
  ...LORA,
  id: 'dora',
  name: 'DoRA',
  peftType: 'LORA with use_dora',
  cardLabel: 'DoRA',
  blurb: 'LoRA’s update split into a direction and a learned magnitude per output feature (PEFT use_dora): closer to full fine-tuning.',
  tasks: ['causal-lm', 'classification'],
  lrHint: 'DoRA: 1e-4 to 1e-3, as LoRA.',
  validate: (s, limits) => validateLora(s, limits, 'DoRA'),
  // LoRA's A and B plus a magnitude per output feature of each adapted layer
  trainableParams: (s, m) => (loraCount(s, m) > 0 ? loraCount(s, m) + groupsCount(targetedGroups(m.linearModules, s.targetModules), (g) => g.outFeatures) : 0),
  summary: (s) => `r=${s.rank} · ${s.targetModules.join(', ')} · magnitude`,
  spec: (s) => ({ method: 'dora', lora: { r: s.rank, alpha: s.alpha, dropout: s.dropout, targetModules: [...s.targetModules], useRslora: s.useRslora } }),
};

const IA3: MethodDescriptor = {
  id: 'ia3',
  name: 'IA3',
  peftType: 'IA3',
  format: 'peft',
  cardLabel: 'IA3',
  blurb: 'Learns one scaling vector per chosen layer (its output, or its input for feedforward layers): the fewest parameters.',
  tasks: ['causal-lm', 'classification'],
  lrHint: 'IA3: 1e-3 to 1e-2.',
  fields: [
    {
      kind: 'modules',
      key: 'ia3Targets',
      feedforwardKey: 'ia3Feedforward',
      label: 'Layers to scale (target modules; “input” marks feedforward modules)',
      allLinear: false,
      hint: (_s, m) =>
        m?.ia3Defaults
          ? m.ia3Defaults.fromPeft === false
            ? `PEFT has no IA3 defaults for this model type; the app starts from the equivalent layers of BERT’s: ${targetsList(m.ia3Defaults.targetModules)}, feedforward ${targetsList(m.ia3Defaults.feedforwardModules)} (written into adapter_config.json).`
            : `PEFT’s defaults for this model: ${targetsList(m.ia3Defaults.targetModules)}, feedforward ${targetsList(m.ia3Defaults.feedforwardModules)}.`
          : m
            ? 'PEFT has no IA3 defaults for this model type: pick the layers.'
            : null,
    },
  ],
  modelDefaults: (m) => {
    const available = m.linearModules.map((g) => g.target);
    const targets = (m.ia3Defaults?.targetModules ?? []).filter((t) => available.includes(t));
    // PEFT: feedforward_modules defaults to the model type's list; only the targeted ones matter.
    return { ia3Targets: targets, ia3Feedforward: (m.ia3Defaults?.feedforwardModules ?? []).filter((f) => targets.includes(f)) };
  },
  validate(s, limits) {
    const e: SettingErrors = {};
    checkTargets(e, 'ia3Targets', s.ia3Targets, limits, 'IA3', false);
    const outside = s.ia3Feedforward.filter((f) => !s.ia3Targets.includes(f));
    // PEFT's own check (IA3Config.__post_init__)
    if (!e.ia3Targets && outside.length) e.ia3Feedforward = `Feedforward modules must also be targets: ${outside.join(', ')} is not one.`;
    return e;
  },
  extraPositions: () => 0,
  trainableParams: (s, m) =>
    groupsCount(targetedGroups(m.linearModules, s.ia3Targets.filter((t) => t !== ALL_LINEAR)), (g) =>
      // PEFT: is_feedforward = any(key.endswith(f) for f in feedforward_modules)
      s.ia3Feedforward.some((f) => g.example.endsWith(f)) ? g.inFeatures : g.outFeatures,
    ),
  summary: (s) => `${s.ia3Targets.join(', ')}${s.ia3Feedforward.length ? ` (input: ${s.ia3Feedforward.join(', ')})` : ''}`,
  cardSettings: (s) => ({ 'target modules': s.ia3Targets, 'feedforward modules': s.ia3Feedforward }),
  spec: (s) => ({ method: 'ia3', ia3: { targetModules: [...s.ia3Targets], feedforwardModules: [...s.ia3Feedforward] } }),
};

const PROMPT_INITS = [
  { value: 'random', label: 'Random (PEFT RANDOM)' },
  { value: 'text', label: 'From a text (PEFT TEXT)' },
  { value: 'vocab', label: 'Random vocabulary tokens (PEFT SAMPLE_VOCAB)' },
] as const;

function checkVirtualTokens(e: SettingErrors, s: TrainSettings, limits: SettingLimits | undefined): void {
  checkInt(e, 'virtualTokens', s.virtualTokens, 1, limits ? Math.max(1, limits.maxPositions - 1) : 100_000, 'Virtual tokens');
}

const PROMPT: MethodDescriptor = {
  id: 'prompt',
  name: 'Prompt tuning',
  peftType: 'PROMPT_TUNING',
  format: 'peft',
  cardLabel: 'prompt-tuning',
  blurb: 'Learns a few embedding vectors (virtual tokens) put before every input; the model itself is untouched.',
  tasks: ['causal-lm', 'classification'],
  lrHint: 'Prompt tuning: 1e-3 to 3e-2.',
  fields: [
    { kind: 'number', key: 'virtualTokens', label: 'Virtual tokens', hint: (s, m) => `Learned positions before each example${m ? `: ${Number.isInteger(s.virtualTokens) ? s.virtualTokens : '?'} × ${m.hidden} values` : ''}.` },
    { kind: 'choice', key: 'promptInit', label: 'Start from', options: PROMPT_INITS, hint: 'A text close to the task often trains faster than random.' },
    { kind: 'text', key: 'promptInitText', label: 'Init text', placeholder: 'e.g. Classify the sentiment of this review:', shown: (s) => s.promptInit === 'text', hint: 'Its tokens’ embeddings, cut or repeated to the number of virtual tokens.' },
  ],
  modelDefaults: () => ({}),
  validate(s, limits) {
    const e: SettingErrors = {};
    checkVirtualTokens(e, s, limits);
    if (!PROMPT_INITS.some((o) => o.value === s.promptInit)) e.promptInit = 'Start from random values, a text, or random vocabulary tokens.';
    else if (s.promptInit === 'text' && s.promptInitText.trim() === '') e.promptInitText = 'Write the text the virtual tokens start from.';
    return e;
  },
  extraPositions: (s) => (Number.isInteger(s.virtualTokens) && s.virtualTokens > 0 ? s.virtualTokens : 0),
  trainableParams: (s, m) => (Number.isInteger(s.virtualTokens) && s.virtualTokens > 0 ? s.virtualTokens * m.hidden : 0),
  summary: (s) => `${s.virtualTokens} virtual tokens · ${s.promptInit === 'text' ? 'text init' : s.promptInit === 'vocab' ? 'vocabulary init' : 'random init'}`,
  cardSettings: (s) => ({ 'virtual tokens': s.virtualTokens, init: s.promptInit === 'text' ? `text "${s.promptInitText}"` : s.promptInit }),
  spec: (s, baseModel) => ({
    method: 'prompt',
    prompt: {
      numVirtualTokens: s.virtualTokens,
      init: s.promptInit,
      initText: s.promptInit === 'text' ? s.promptInitText : null,
      tokenizerNameOrPath: s.promptInit === 'text' ? baseModel : null,
    },
  }),
};

/** PEFT's token_dim for prefix tuning and the width of one prefix row (num_layers * 2 * token_dim). */
export function prefixWidths(m: PeftFacts): { tokenDim: number; width: number } | null {
  if (!m.prefix) return null;
  const tokenDim = m.prefix.kvHeads * m.prefix.headDim;
  return { tokenDim, width: m.layers * 2 * tokenDim };
}

const PREFIX: MethodDescriptor = {
  id: 'prefix',
  name: 'Prefix tuning',
  peftType: 'PREFIX_TUNING',
  format: 'peft',
  cardLabel: 'prefix-tuning',
  blurb: 'Learns key/value vectors that every attention layer sees before the input, as if they were earlier tokens.',
  // Classifiers: BERT only (encoderMethodRefusal refuses DistilBERT, whose model PEFT cannot run
  // with prefixes); the classifier's facts carry PEFT's prefix widths, and the memory plan widens
  // the encoder's attention by the prefix rows.
  tasks: ['causal-lm', 'classification'],
  lrHint: 'Prefix tuning: 1e-3 to 1e-2.',
  fields: [
    {
      kind: 'number',
      key: 'virtualTokens',
      label: 'Virtual tokens',
      hint: (_s, m) => {
        const w = m && prefixWidths(m);
        return w ? `Key/value rows in each of the ${m!.layers} layers (${w.tokenDim} values per key).` : 'Key/value rows in every layer.';
      },
    },
    { kind: 'toggle', key: 'prefixProjection', label: 'Train through a projection MLP (prefix_projection)', hint: 'PEFT’s reparameterization; more parameters while training, the same prefix saved.' },
    {
      kind: 'number',
      key: 'encoderHiddenSize',
      label: 'Projection width (encoder_hidden_size)',
      shown: (s) => s.prefixProjection,
      hint: (_s, m) => {
        const w = m && prefixWidths(m);
        return w ? `PEFT’s default: token_dim = ${w.tokenDim}.` : 'PEFT’s default: token_dim.';
      },
    },
  ],
  modelDefaults: (m) => {
    const w = prefixWidths(m);
    return w ? { encoderHiddenSize: w.tokenDim } : {};
  },
  validate(s, limits) {
    const e: SettingErrors = {};
    checkVirtualTokens(e, s, limits);
    if (s.prefixProjection) checkInt(e, 'encoderHiddenSize', s.encoderHiddenSize, 1, 65536, 'Projection width');
    return e;
  },
  extraPositions: (s) => (Number.isInteger(s.virtualTokens) && s.virtualTokens > 0 ? s.virtualTokens : 0),
  trainableParams(s, m) {
    const w = prefixWidths(m);
    const n = s.virtualTokens;
    if (!w || !Number.isInteger(n) || n < 1) return 0;
    if (!s.prefixProjection) return n * w.width;
    const enc = s.encoderHiddenSize;
    if (!Number.isInteger(enc) || enc < 1) return 0;
    // Embedding(n, token_dim) -> Linear(token_dim, enc) -> Tanh -> Linear(enc, width)
    return n * w.tokenDim + enc * w.tokenDim + enc + w.width * enc + w.width;
  },
  summary: (s) => `${s.virtualTokens} virtual tokens${s.prefixProjection ? ` · projection ${s.encoderHiddenSize}` : ''}`,
  cardSettings: (s) => ({ 'virtual tokens': s.virtualTokens, projection: s.prefixProjection ? `yes (encoder hidden size ${s.encoderHiddenSize})` : 'no' }),
  spec: (s) => ({ method: 'prefix', prefix: { numVirtualTokens: s.virtualTokens, projection: s.prefixProjection, encoderHiddenSize: s.prefixProjection ? s.encoderHiddenSize : null } }),
};

/** The bottleneck width AdapterHub makes: floor(hidden / reduction factor), at least 1. */
export function bottleneckSize(hidden: number, reductionFactor: number): number {
  return Math.max(1, Math.floor(hidden / reductionFactor));
}

/** The activation a bottleneck run uses: the chosen one, or its type's preset. */
export function bottleneckActivation(s: TrainSettings): BottleneckActivation {
  return s.bottleneckActivation === 'preset' ? BOTTLENECK_PRESETS[s.bottleneckType].nonLinearity : s.bottleneckActivation;
}

const BOTTLENECK: MethodDescriptor = {
  id: 'bottleneck',
  name: 'Bottleneck adapters',
  peftType: 'bottleneck (AdapterHub)',
  format: 'adapterhub',
  cardLabel: 'Bottleneck adapter',
  blurb: 'Adds a small down-up MLP after the attention and/or MLP block of every layer. Saved for the AdapterHub adapters library (PEFT has none).',
  tasks: ['causal-lm', 'classification'],
  lrHint: 'Bottleneck adapters: 1e-4 to 1e-3.',
  fields: [
    {
      kind: 'choice',
      key: 'bottleneckType',
      label: 'Placement',
      options: [
        { value: 'houlsby', label: 'Houlsby: after attention and MLP' },
        { value: 'pfeiffer', label: 'Pfeiffer: after the MLP only' },
      ],
      hint: 'AdapterHub’s DoubleSeqBnConfig and SeqBnConfig.',
    },
    {
      kind: 'number',
      key: 'reductionFactor',
      label: 'Reduction factor',
      hint: (s, m) => (m && Number.isFinite(s.reductionFactor) && s.reductionFactor > 0 ? `Bottleneck ${bottleneckSize(m.hidden, s.reductionFactor)} = ${m.hidden} / ${s.reductionFactor}.` : 'Bottleneck = hidden size / factor; 16 is the presets’.'),
    },
    {
      kind: 'choice',
      key: 'bottleneckActivation',
      label: 'Non-linearity',
      options: [
        { value: 'preset', label: 'The placement’s (Houlsby swish, Pfeiffer relu)' },
        { value: 'relu', label: 'relu' },
        { value: 'swish', label: 'swish (SiLU)' },
        { value: 'gelu', label: 'gelu' },
        { value: 'tanh', label: 'tanh' },
      ],
    },
    { kind: 'text', key: 'bottleneckName', label: 'Adapter name', hint: 'Inside AdapterHub’s tensor names and config; load_adapter() activates it by this name.' },
  ],
  modelDefaults: () => ({}),
  validate(s) {
    const e: SettingErrors = {};
    if (!(s.bottleneckType in BOTTLENECK_PRESETS)) e.bottleneckType = 'Place the adapters as Houlsby or Pfeiffer.';
    if (!Number.isFinite(s.reductionFactor) || s.reductionFactor <= 0) e.reductionFactor = 'The reduction factor must be a positive number (16 is usual).';
    else if (s.reductionFactor > 4096) e.reductionFactor = 'At most 4096.';
    if (!/^[A-Za-z0-9_-]+$/.test(s.bottleneckName)) e.bottleneckName = 'Use letters, digits, _ and - (it becomes part of the tensor names).';
    return e;
  },
  extraPositions: () => 0,
  trainableParams(s, m) {
    if (!(s.bottleneckType in BOTTLENECK_PRESETS) || !(s.reductionFactor > 0)) return 0;
    const C = m.hidden, bn = bottleneckSize(C, s.reductionFactor);
    const places = BOTTLENECK_PRESETS[s.bottleneckType].mhAdapter ? 2 : 1;
    // per place: adapter_down (bn x C + bn) and adapter_up (C x bn + C)
    return m.layers * places * (2 * bn * C + bn + C);
  },
  summary: (s) => `${s.bottleneckType === 'houlsby' ? 'Houlsby' : 'Pfeiffer'} · reduction ${s.reductionFactor} · ${bottleneckActivation(s)}`,
  cardSettings: (s) => ({ type: s.bottleneckType, 'reduction factor': s.reductionFactor, 'non-linearity': bottleneckActivation(s), name: s.bottleneckName, format: 'AdapterHub (adapters library)' }),
  spec: (s) => ({ method: 'bottleneck', bottleneck: { type: s.bottleneckType, reductionFactor: s.reductionFactor, nonLinearity: bottleneckActivation(s), name: s.bottleneckName } }),
};

/** The methods in the order the picker lists them. */
export const METHODS: readonly MethodDescriptor[] = [LORA, DORA, IA3, PROMPT, PREFIX, BOTTLENECK];

export const METHOD_BY_ID: Record<MethodId, MethodDescriptor> = Object.fromEntries(METHODS.map((m) => [m.id, m])) as Record<MethodId, MethodDescriptor>;

/** The methods a task can train, in the picker's order. */
export function methodsFor(task: TaskKind): MethodDescriptor[] {
  return METHODS.filter((d) => d.tasks.includes(task));
}

/** Why a method is not offered for classifiers: the engine's refusal (ENCODER_METHOD_REFUSALS, via PeftFacts.unavailable) when it has one. */
export function notForClassifiers(m: MethodDescriptor, refusal: string | undefined): string {
  return refusal ? `${refusal.charAt(0).toUpperCase()}${refusal.slice(1)}.` : `${m.name} is not offered for text classification.`;
}

/** Every method's model-dependent defaults, for when a model is loaded. */
export function modelDefaults(m: PeftFacts): Partial<TrainSettings> {
  return Object.assign({}, ...METHODS.map((d) => d.modelDefaults(m)));
}
