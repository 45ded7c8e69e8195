// The adapter-method flags of the command-line trainer (--method lora|dora|ia3|prompt|prefix|adapter
// and each method's options), checked and turned into a MethodSpec for createPeftMethod.

import type { MethodSpec, PeftModelInfo } from '../engine/peft/factory';
import { defaultIa3Settings } from '../engine/peft/factory';
import type { PromptInit } from '../engine/peft/prompt-tuning';
import { BOTTLENECK_ACTIVATIONS, BOTTLENECK_PRESETS, type BottleneckActivation, type BottleneckType } from '../engine/peft/bottleneck';
import { CliError, integer, number } from './args';

export const METHODS = ['lora', 'dora', 'ia3', 'prompt', 'prefix', 'adapter'] as const;
export type MethodName = (typeof METHODS)[number];

/** parseArgs options of the method flags (besides --method, --rank, --alpha, --dropout, --targets, --rslora). */
export const METHOD_OPTIONS = {
  'virtual-tokens': { type: 'string' },
  'prompt-init': { type: 'string' },
  'prompt-init-text': { type: 'string' },
  'prefix-projection': { type: 'boolean' },
  'encoder-hidden-size': { type: 'string' },
  feedforward: { type: 'string' },
  'adapter-type': { type: 'string' },
  'reduction-factor': { type: 'string' },
  'non-linearity': { type: 'string' },
  'adapter-name': { type: 'string' },
} as const;

export const METHOD_USAGE = `  --method M               adapter method: lora (default), dora, ia3, prompt (prompt tuning), prefix (prefix tuning),
                           adapter (bottleneck adapters, saved in AdapterHub's format, not PEFT's)
  LoRA:   --rank R (8)  --alpha A (16)  --dropout P (0.05)  --targets a,b (architecture default, e.g. c_attn)  --rslora
  DoRA:   LoRA's flags; PEFT's LoraConfig(use_dora=True): a learned magnitude per output feature
  IA3:    --targets a,b  --feedforward a,b   (PEFT's defaults, e.g. c_attn,mlp.c_proj with mlp.c_proj feedforward)
  prompt: --virtual-tokens N (20)  --prompt-init random|text|vocab (random; text when --prompt-init-text is given)
          --prompt-init-text "T"   the text whose token embeddings start the prompt (cut or repeated to N)
  prefix: --virtual-tokens N (20)  --prefix-projection (train through PEFT's MLP)  --encoder-hidden-size H
  adapter: --adapter-type houlsby|pfeiffer (houlsby: after attention and MLP; pfeiffer: after the MLP)
          --reduction-factor F (16: bottleneck = hidden / F)  --non-linearity relu|swish|gelu|tanh
          (houlsby swish, pfeiffer relu)  --adapter-name NAME (adapter)`;

type Flags = Record<string, string | boolean | undefined>;

const list = (s: string): string[] => s.split(',').map((x) => x.trim()).filter(Boolean);

const OWN: Record<MethodName, string[]> = {
  lora: ['rank', 'alpha', 'dropout', 'targets', 'rslora'],
  dora: ['rank', 'alpha', 'dropout', 'targets', 'rslora'],
  adapter: ['adapter-type', 'reduction-factor', 'non-linearity', 'adapter-name'],
  ia3: ['targets', 'feedforward'],
  prompt: ['virtual-tokens', 'prompt-init', 'prompt-init-text'],
  prefix: ['virtual-tokens', 'prefix-projection', 'encoder-hidden-size'],
};

export interface MethodChoice {
  spec: MethodSpec;
  /** For the model card (its title and tag), e.g. "prefix-tuning". */
  label: string;
  settings: Record<string, unknown>;
  /** Positions the method adds to each sequence (prompt and prefix tuning). */
  virtualTokens: number;
}

/** The method the flags ask for; flags that belong to another method are an error. */
export function methodFromArgs(a: Flags, info: PeftModelInfo, defaultLoraTargets: string[], modelDir: string): MethodChoice {
  const method = String(a.method ?? 'lora');
  if (!(METHODS as readonly string[]).includes(method)) throw new CliError(`--method ${method}: use ${METHODS.join(', ')}`);
  const m = method as MethodName;
  const all = new Set(Object.values(OWN).flat());
  for (const k of all) {
    if (a[k] !== undefined && !OWN[m].includes(k)) {
      const owners = METHODS.filter((x) => OWN[x].includes(k)).join(' or ');
      throw new CliError(`--${k} is an option of --method ${owners}, not ${m}`);
    }
  }
  const str = (k: string): string | undefined => (typeof a[k] === 'string' ? (a[k] as string) : undefined);
  if (m === 'lora' || m === 'dora') {
    const targets = str('targets') ? list(str('targets')!) : defaultLoraTargets;
    const lora = {
      r: integer(str('rank') ?? '8', '--rank', 1),
      alpha: number(str('alpha') ?? '16', '--alpha', 1e-9),
      dropout: number(str('dropout') ?? '0.05', '--dropout', 0, 0.99),
      targetModules: targets,
      useRslora: Boolean(a.rslora),
    };
    return {
      spec: { method: m, lora }, label: m === 'lora' ? 'LoRA' : 'DoRA', virtualTokens: 0,
      settings: { rank: lora.r, alpha: lora.alpha, dropout: lora.dropout, 'target modules': targets, rsLoRA: lora.useRslora },
    };
  }
  if (m === 'adapter') {
    const typeName = str('adapter-type') ?? 'houlsby';
    if (!(typeName in BOTTLENECK_PRESETS)) throw new CliError(`--adapter-type ${typeName}: use houlsby or pfeiffer`);
    const type = typeName as BottleneckType;
    const preset = BOTTLENECK_PRESETS[type];
    const reductionFactor = number(str('reduction-factor') ?? String(preset.reductionFactor), '--reduction-factor', 1e-9);
    const act = str('non-linearity') ?? preset.nonLinearity;
    if (!(BOTTLENECK_ACTIVATIONS as readonly string[]).includes(act)) throw new CliError(`--non-linearity ${act}: use ${BOTTLENECK_ACTIVATIONS.join(', ')}`);
    const name = str('adapter-name') ?? 'adapter';
    if (!/^[A-Za-z0-9_-]+$/.test(name)) throw new CliError(`--adapter-name ${name}: use letters, digits, _ and -`);
    const size = Math.max(1, Math.floor(info.hidden / reductionFactor));
    return {
      spec: { method: 'bottleneck', bottleneck: { type, reductionFactor, nonLinearity: act as BottleneckActivation, name } },
      label: type === 'houlsby' ? 'Houlsby' : 'Pfeiffer', virtualTokens: 0,
      settings: { type, 'reduction factor': reductionFactor, bottleneck: size, 'non-linearity': act, name, format: 'AdapterHub (adapters library)' },
    };
  }
  if (m === 'ia3') {
    const d = defaultIa3Settings(info);
    const targets = str('targets') ? list(str('targets')!) : d.targetModules;
    // PEFT: feedforward_modules defaults to the model type's list; only the targeted ones matter
    const feedforward = str('feedforward') !== undefined ? list(str('feedforward')!) : d.feedforwardModules.filter((f) => targets.includes(f));
    return {
      spec: { method: 'ia3', ia3: { targetModules: targets, feedforwardModules: feedforward } }, label: 'IA3', virtualTokens: 0,
      settings: { 'target modules': targets, 'feedforward modules': feedforward },
    };
  }
  const n = integer(str('virtual-tokens') ?? '20', '--virtual-tokens', 1);
  if (m === 'prompt') {
    const text = str('prompt-init-text');
    const initName = str('prompt-init') ?? (text !== undefined ? 'text' : 'random');
    if (!['random', 'text', 'vocab'].includes(initName)) throw new CliError(`--prompt-init ${initName}: use random, text or vocab`);
    const init = initName as PromptInit;
    if (init === 'text' && !text) throw new CliError('--prompt-init text needs --prompt-init-text "..."');
    if (init !== 'text' && text !== undefined) throw new CliError(`--prompt-init-text is used with --prompt-init text (not ${init})`);
    return {
      spec: { method: 'prompt', prompt: { numVirtualTokens: n, init, initText: text ?? null, tokenizerNameOrPath: init === 'text' ? modelDir : null } },
      label: 'prompt-tuning', virtualTokens: n,
      settings: { 'virtual tokens': n, init: init === 'text' ? `text "${text}"` : init },
    };
  }
  const projection = Boolean(a['prefix-projection']);
  const enc = str('encoder-hidden-size');
  if (enc !== undefined && !projection) throw new CliError('--encoder-hidden-size sizes the prefix projection: give --prefix-projection too');
  const encoderHiddenSize = enc !== undefined ? integer(enc, '--encoder-hidden-size', 1) : null;
  return {
    spec: { method: 'prefix', prefix: { numVirtualTokens: n, projection, encoderHiddenSize } },
    label: 'prefix-tuning', virtualTokens: n,
    settings: { 'virtual tokens': n, projection: projection ? `yes (encoder hidden size ${encoderHiddenSize ?? 'token_dim'})` : 'no' },
  };
}
