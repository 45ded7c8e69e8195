// What the app needs to know about a loaded model to offer the adapter methods: its linear layers
// grouped by kind (the target-module picker), PEFT's dimensions and defaults (prefix widths, IA3
// targets), which methods the engine refuses for it and why (found by building each method's
// smallest program), and the tensors a chosen method will make (for the memory estimate).

import type { Gpu, KernelTuning } from '../engine/gpu/gpu';
import type { HfConfig } from '../io/hf-config';
import type { LoadedModel, LoadedSequenceClassifier } from '../engine/models/registry';
import { createPeftMethod, defaultIa3Settings, peftModelInfo, prefixDims, type PeftModelInfo } from '../engine/peft/factory';
import { moduleMatches, type LinearModuleInfo } from '../engine/peft/lora';
import type { PeftMethod } from '../engine/peft/method';
import type { Program } from '../engine/models/program';
import type { StepUniforms } from '../engine/kernels/step-uniforms';
import { seededRandom } from '../data/batches';
import { ALL_LINEAR, METHODS, bottleneckSize, modelDefaults, prefixWidths, type MethodId, type PeftFacts } from './methods';
import { BOTTLENECK_PRESETS } from '../engine/peft/bottleneck';
import { ENCODER_IA3_DEFAULTS, encoderIa3Defaults, encoderMethodRefusal, encoderPeftInfo } from '../engine/models/encoder-methods';
import { DEFAULT_SETTINGS, type TrainSettings } from './settings';
import type { AdapterPlan } from './memory';
import type { LinearModuleGroup } from './protocol';

/** Module kind = the path after the layer index ("attn.c_attn"); target = its shortest unique suffix. */
export function linearGroups(linears: readonly LinearModuleInfo[]): LinearModuleGroup[] {
  const byKind = new Map<string, LinearModuleInfo[]>();
  for (const l of linears) {
    const kind = l.module.replace(/^.*?\.\d+\./, '');
    if (!byKind.has(kind)) byKind.set(kind, []);
    byKind.get(kind)!.push(l);
  }
  const kinds = [...byKind.keys()];
  return kinds.map((kind) => {
    const parts = kind.split('.');
    let target = kind;
    for (let n = 1; n <= parts.length; n++) {
      const suffix = parts.slice(-n).join('.');
      if (kinds.every((k) => k === kind || !(k === suffix || k.endsWith(`.${suffix}`)))) {
        target = suffix;
        break;
      }
    }
    const first = byKind.get(kind)![0];
    return { target, example: first.module, count: byKind.get(kind)!.length, inFeatures: first.inFeatures, outFeatures: first.outFeatures };
  });
}

const groupTargets = (groups: readonly LinearModuleGroup[], targets: readonly string[]) =>
  groups.filter((g) => moduleMatches(g.example, targets)).map((g) => g.target);

/** The facts of a causal LM (unavailable: filled by probeMethods). */
export function causalPeftFacts(config: HfConfig, loaded: LoadedModel): { facts: PeftFacts; info: PeftModelInfo } {
  const linears = loaded.model.linearModules();
  const info = peftModelInfo(config, linears);
  const groups = linearGroups(linears);
  let prefix: PeftFacts['prefix'] = null;
  try {
    const d = prefixDims(info);
    prefix = { kvHeads: d.kvHeads, headDim: d.headDim };
  } catch {
    // prefix tuning is then refused by the probe with the engine's reason
  }
  let ia3Defaults: PeftFacts['ia3Defaults'] = null;
  try {
    const d = defaultIa3Settings(info);
    ia3Defaults = { targetModules: groupTargets(groups, d.targetModules), feedforwardModules: groupTargets(groups, d.feedforwardModules) };
  } catch {
    // PEFT has no defaults for this model_type: the user picks the layers
  }
  const facts: PeftFacts = {
    task: 'causal-lm',
    linearModules: groups,
    defaultTargets: groupTargets(groups, loaded.defaultLoraTargets),
    hidden: info.hidden,
    layers: info.layers,
    heads: info.heads,
    vocab: info.vocab,
    prefix,
    ia3Defaults,
    unavailable: {},
  };
  return { facts, info };
}

/**
 * The facts of an encoder classifier: the methods act on its encoder (the head trains in full beside
 * any of them); IA3 starts from ENCODER_IA3_DEFAULTS (PEFT's for BERT, the engine's for DistilBERT);
 * the methods the engine refuses for this encoder (encoderMethodRefusal) carry its reason.
 */
export function classifierPeftFacts(loaded: LoadedSequenceClassifier): PeftFacts {
  const m = loaded.model;
  const groups = linearGroups(m.linearModules());
  const ia3 = encoderIa3Defaults(m);
  const unavailable: Partial<Record<MethodId, string>> = {};
  for (const d of METHODS) {
    const refusal = encoderMethodRefusal(m.spec.architecture, d.id);
    if (refusal) unavailable[d.id] = refusal;
  }
  // PEFT's prefix dimensions for the encoder (token_dim = hidden, its heads), as for a causal LM
  let prefix: PeftFacts['prefix'] = null;
  try {
    const d = prefixDims(encoderPeftInfo(m));
    prefix = { kvHeads: d.kvHeads, headDim: d.headDim };
  } catch {
    // refused with the engine's reason when the method is built
  }
  return {
    task: 'classification',
    linearModules: groups,
    defaultTargets: groupTargets(groups, loaded.defaultLoraTargets),
    hidden: m.C,
    layers: m.L,
    heads: m.H,
    vocab: m.V,
    prefix,
    ia3Defaults: {
      targetModules: groupTargets(groups, ia3.targetModules),
      feedforwardModules: groupTargets(groups, ia3.feedforwardModules),
      fromPeft: ENCODER_IA3_DEFAULTS[m.spec.architecture].fromPeft,
    },
    unavailable,
  };
}

/** The settings a method's probe builds: its smallest form with the model's defaults. */
function probeSettings(id: MethodId, facts: PeftFacts): TrainSettings | null {
  const s: TrainSettings = { ...DEFAULT_SETTINGS, ...modelDefaults(facts), method: id, rank: 1, dropout: 0, virtualTokens: 1, promptInit: 'random' };
  if (id === 'ia3' && s.ia3Targets.length === 0) {
    const first = facts.linearModules[0];
    if (!first) return null;
    s.ia3Targets = [first.target];
    s.ia3Feedforward = [];
  }
  if (s.targetModules.length === 0) s.targetModules = [ALL_LINEAR];
  return s;
}

/**
 * Which methods the engine refuses for this model, with its message: each method for the task is
 * built in its smallest form with a one-token training program, then freed. (Prefix tuning on a
 * model whose head_dim is not hidden_size / num_attention_heads, Qwen3 for one, is refused here.)
 */
export function probeMethods(gpu: Gpu, loaded: LoadedModel, info: PeftModelInfo, facts: PeftFacts, step: StepUniforms, modelName: string): Partial<Record<MethodId, string>> {
  const refused: Partial<Record<MethodId, string>> = {};
  for (const d of METHODS) {
    if (!d.tasks.includes(facts.task)) continue;
    const s = probeSettings(d.id, facts);
    if (!s) continue;
    let method: PeftMethod | null = null;
    let program: Program | null = null;
    try {
      method = createPeftMethod(gpu, d.spec(s, modelName), info, loaded.model, step, { random: seededRandom(0) });
      program = loaded.model.buildProgram(method, { B: 1, T: 1, training: true });
    } catch (e) {
      refused[d.id] = e instanceof Error ? e.message : String(e);
    } finally {
      program?.destroy();
      method?.destroy?.();
    }
  }
  return refused;
}

/** The linear layers a target list picks (PEFT's rules, 'all-linear' included). */
export function targetedLinears(linears: readonly LinearModuleInfo[], targets: readonly string[]): LinearModuleInfo[] {
  return targets.includes(ALL_LINEAR) ? [...linears] : linears.filter((l) => moduleMatches(l.module, targets));
}

/** The tensors the chosen method will make on this model, for the memory estimate. */
/** tuning: the running GPU's (Gpu.tuning), for what sizes a method's scratch; absent, the defaults. */
export function adapterPlan(s: TrainSettings, facts: PeftFacts, linears: readonly LinearModuleInfo[], tuning?: Pick<KernelTuning, 'loraGradWorkgroups'>): AdapterPlan {
  switch (s.method) {
    case 'lora':
      return { kind: 'lora', rank: s.rank, dropout: s.dropout, targeted: targetedLinears(linears, s.targetModules), gradWorkgroups: tuning?.loraGradWorkgroups };
    case 'dora':
      return { kind: 'dora', rank: s.rank, dropout: s.dropout, targeted: targetedLinears(linears, s.targetModules) };
    case 'bottleneck':
      return {
        kind: 'bottleneck',
        hidden: facts.hidden,
        layers: facts.layers,
        size: bottleneckSize(facts.hidden, s.reductionFactor),
        places: BOTTLENECK_PRESETS[s.bottleneckType].mhAdapter ? 2 : 1,
        inputSum: BOTTLENECK_PRESETS[s.bottleneckType].originalLnBefore,
      };
    case 'ia3':
      return {
        kind: 'ia3',
        targeted: targetedLinears(linears, s.ia3Targets).map((info) => ({ info, feedforward: s.ia3Feedforward.some((f) => info.module.endsWith(f)) })),
      };
    case 'prompt':
      return { kind: 'prompt', virtualTokens: s.virtualTokens, hidden: facts.hidden };
    case 'prefix': {
      const w = prefixWidths(facts);
      if (!w) throw new Error('prefix tuning needs the model’s attention dimensions');
      return { kind: 'prefix', virtualTokens: s.virtualTokens, tokenDim: w.tokenDim, width: w.width, projection: s.prefixProjection, encoderHiddenSize: s.prefixProjection ? s.encoderHiddenSize : w.tokenDim };
    }
  }
}
