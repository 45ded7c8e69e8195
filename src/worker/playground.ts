// The playground's work in the training worker: a saved adapter (IndexedDB, ./storage.ts) on the
// loaded model, generating from a prompt with the adapter on and, beside it, off (the base model),
// both through the KV-cache decoder and interleaved token by token so the page can stream them
// side by side; or, for a classifier adapter, the label probabilities of one text.
//
// train-worker.ts owns the model and the device and calls these with them.

import type { Gpu } from '../engine/gpu/gpu';
import { runOps } from '../engine/gpu/dispatch';
import type { PeftModelInfo } from '../engine/peft/factory';
import { importPeftAdapter } from '../engine/peft/import';
import type { PeftMethod } from '../engine/peft/method';
import type { LoadedModel } from '../engine/models/registry';
import type { EncoderClassifier } from '../engine/models/encoder';
import { importSeqClsAdapter } from '../engine/models/sequence-classification';
import { StepUniforms } from '../engine/kernels/step-uniforms';
import { Generator, type GenerateResult as EngineResult } from '../engine/infer/generator';
import { seededRandom } from '../data/batches';
import { specialTokenFrame } from '../data/classification';
import type { TextTokenizer } from '../data/tokenizer';
import { getAdapterFiles, headFilesOf, listAdapters, taskOf, weightsFileOf, type AdapterMeta } from './storage';
import type { ModelSummary, WorkerEvent } from './protocol';
import type { ClassifyParams, ClassifyResult, GenerateParams, GenerateResult, GenerationSide, GenerationStream, PlaygroundInfo } from './playground-types';

export class PlaygroundError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'PlaygroundError';
  }
}

/** The most new tokens one request may ask for (the model's positions cap it further). */
export const MAX_NEW_TOKENS = 2048;

export function playgroundInfo(m: { summary: ModelSummary; tokenizer: TextTokenizer }): PlaygroundInfo {
  return { task: m.summary.task, hasChatTemplate: Boolean(m.tokenizer.chatTemplate), maxPositions: m.summary.maxPositions, modelName: m.summary.name };
}

/** Set by the page's Stop; checked before every token. */
let stopRequested = false;
let generating = false;

export function stopGeneration(): void {
  stopRequested = true;
}

export function isGenerating(): boolean {
  return generating;
}

/** The stored adapter and its files, checked against the loaded model and the task. */
async function storedAdapter(adapterId: string, summary: ModelSummary): Promise<{ meta: AdapterMeta; config: string; weights: Uint8Array; head?: Uint8Array }> {
  const meta = (await listAdapters()).find((a) => a.id === adapterId);
  const files = meta ? await getAdapterFiles(adapterId) : null;
  if (!meta || !files) throw new PlaygroundError('That adapter is no longer stored in this browser (deleted in another tab?).');
  if (meta.baseModel.name !== summary.name) {
    throw new PlaygroundError(`"${meta.name}" was trained on ${meta.baseModel.name}; the loaded model is ${summary.name}. Load ${meta.baseModel.name} to try it.`);
  }
  if (taskOf(meta) !== summary.task) {
    throw new PlaygroundError(`"${meta.name}" is a ${taskOf(meta) === 'classification' ? 'text classifier' : 'text generation adapter'}; the loaded model is not.`);
  }
  const head = headFilesOf(files);
  return { meta, config: files['adapter_config.json'], weights: weightsFileOf(files).bytes, ...(head ? { head: head.weights } : {}) };
}

export interface CausalPlaygroundModel {
  loaded: LoadedModel;
  info: PeftModelInfo;
  tokenizer: TextTokenizer;
  summary: ModelSummary;
}

function checkGenerateParams(p: GenerateParams): void {
  const int = (name: string, v: number, min: number, max: number): void => {
    if (!Number.isInteger(v) || v < min || v > max) throw new PlaygroundError(`${name} must be a whole number from ${min} to ${max} (got ${v})`);
  };
  int('Max new tokens', p.maxNewTokens, 1, MAX_NEW_TOKENS);
  int('Top-k', p.topK, 0, 1_000_000);
  int('Seed', p.seed, 0, 0xffffffff);
  if (!(p.temperature >= 0 && p.temperature <= 100)) throw new PlaygroundError(`Temperature must be from 0 (greedy) to 100 (got ${p.temperature})`);
  if (!(p.topP > 0 && p.topP <= 1)) throw new PlaygroundError(`Top-p must be above 0 and at most 1 (got ${p.topP})`);
}

/** The prompt's token ids: as typed (with the tokenizer's special tokens), or inside the chat template. */
export function promptIds(tokenizer: TextTokenizer, prompt: string, useChatTemplate: boolean): number[] {
  if (!useChatTemplate) return tokenizer.encode(prompt, { addSpecialTokens: true });
  const text = tokenizer.applyChatTemplate([{ role: 'user', content: prompt }], { addGenerationPrompt: true });
  // the template writes the special tokens itself
  return tokenizer.encode(text, { addSpecialTokens: false });
}

/**
 * Generates with the adapter and (compareBase) without it, one token of each in turn, posting a
 * 'generation' event per side after every token; resolves when both have ended.
 */
export async function generateSideBySide(gpu: Gpu, m: CausalPlaygroundModel, p: GenerateParams, emit: (e: WorkerEvent) => void): Promise<GenerateResult> {
  if (generating) throw new PlaygroundError('A generation is already running: stop it first.');
  checkGenerateParams(p);
  if (p.prompt.trim() === '') throw new PlaygroundError('Type a prompt first.');
  generating = true;
  stopRequested = false;
  const made: { gen: Generator | null; peft: PeftMethod | null }[] = [];
  try {
    const { meta, config, weights } = await storedAdapter(p.adapterId, m.summary);
    const adapter = importPeftAdapter(gpu, { config, weights, name: meta.name }, m.info, new StepUniforms(gpu));
    made.push({ gen: null, peft: adapter });
    const ids = promptIds(m.tokenizer, p.prompt, p.useChatTemplate);
    if (ids.length === 0) throw new PlaygroundError('The prompt has no tokens.');
    const sides: { side: GenerationSide; peft: PeftMethod | null }[] = [{ side: 'adapter', peft: adapter }];
    if (p.compareBase) sides.push({ side: 'base', peft: null });
    const runs = sides.map(({ side, peft }) => {
      // prompt and prefix tuning's virtual tokens take positions before the prompt
      const positions = m.loaded.maxPositions - (peft?.virtualTokens ?? 0) - (peft?.prefixTokens ?? 0);
      if (ids.length >= positions) throw new PlaygroundError(`The prompt is ${ids.length} tokens; the model takes at most ${positions - 1} before the first new one.`);
      const gen = new Generator(gpu, m.loaded.model, peft, Math.min(positions, ids.length + p.maxNewTokens));
      made.push({ gen, peft: null });
      return { side, gen };
    });
    const started = performance.now();
    const streams = await Promise.all(runs.map(({ side, gen }) => {
      const out: number[] = [];
      const stream = (end: GenerationStream['end']): GenerationStream => ({
        requestId: p.requestId, side, ids: out.slice(), text: m.tokenizer.decode(out, { skipSpecialTokens: true }), end,
        tokensPerSecond: out.length / Math.max(1e-3, (performance.now() - started) / 1000),
      });
      return gen.run(ids, {
        maxNewTokens: p.maxNewTokens,
        stopIds: [m.tokenizer.eosId],
        temperature: p.temperature,
        topK: p.topK,
        topP: p.topP,
        random: seededRandom(p.seed),
        shouldStop: () => stopRequested,
        onToken: (id) => {
          out.push(id);
          emit({ type: 'generation', stream: stream(null) });
        },
      }).then((r: EngineResult) => {
        const final = stream(r.reason);
        emit({ type: 'generation', stream: final });
        return final;
      });
    }));
    return { requestId: p.requestId, promptTokens: ids.length, sides: streams };
  } finally {
    for (const { gen, peft } of made) {
      gen?.destroy();
      peft?.destroy?.();
    }
    generating = false;
  }
}

/** What the classifier side needs: the tokenizer, and the model with a head of K labels. */
export interface ClassifierPlaygroundModel {
  tokenizer: TextTokenizer;
  summary: ModelSummary;
  /** The loaded classifier with a head of numLabels outputs (its values are about to be overwritten). */
  withHead(numLabels: number): Promise<EncoderClassifier>;
}

/** The label probabilities a saved classifier adapter gives one text. */
export async function classifyText(gpu: Gpu, m: ClassifierPlaygroundModel, p: ClassifyParams): Promise<ClassifyResult> {
  if (p.text.trim() === '') throw new PlaygroundError('Type a text first.');
  const { meta, config, weights, head } = await storedAdapter(p.adapterId, m.summary);
  const labels = meta.metrics.classification?.labels;
  if (!labels || labels.length < 2) throw new PlaygroundError(`"${meta.name}" does not record its labels.`);
  const model = await m.withHead(labels.length);
  const r = await classifierProbabilities(gpu, model, { config, weights, head, name: meta.name }, m.tokenizer, m.summary.maxPositions, p.text);
  return { labels, ...r };
}

/**
 * Softmax of a classifier adapter's logits for one text, tokenized as training tokenizes it (the
 * tokenizer's special tokens around it, cut to maxPositions less the method's virtual tokens).
 * The adapter's head values are written into the model's head, which must have the adapter's
 * number of labels. `head`: AdapterHub's model_head.safetensors (bottleneck adapters).
 */
export async function classifierProbabilities(
  gpu: Gpu, model: EncoderClassifier, files: { config: string; weights: Uint8Array; head?: Uint8Array; name: string }, tokenizer: TextTokenizer, maxPositions: number, text: string,
): Promise<Omit<ClassifyResult, 'labels'>> {
  const adapter = importSeqClsAdapter(gpu, files, model, new StepUniforms(gpu));
  const { prefix, suffix } = specialTokenFrame(tokenizer);
  const body = tokenizer.encode(text, { addSpecialTokens: false });
  // prompt tuning's virtual tokens and prefix tuning's rows take positions too
  const room = Math.max(0, maxPositions - adapter.virtualTokens - adapter.prefixTokens - prefix.length - suffix.length);
  const truncated = body.length > room;
  const ids = [...prefix, ...body.slice(0, room), ...suffix];
  const T = ids.length;
  const program = model.buildProgram(adapter, { B: 1, T, training: false });
  try {
    program.write({ B: 1, T, inputIds: Uint32Array.from(ids), lengths: Uint32Array.of(T), labels: Int32Array.of(-100), validLabels: 0 });
    gpu.write(program.gradScale, new Float32Array([0]));
    runOps(gpu, program.forward, 'classify');
    const logits = await gpu.read(program.logits);
    const max = Math.max(...logits);
    const exp = Array.from(logits, (v) => Math.exp(v - max));
    const sum = exp.reduce((a, b) => a + b, 0);
    return { probabilities: exp.map((e) => e / sum), tokens: T, truncated };
  } finally {
    program.destroy();
    adapter.method?.destroy?.();
  }
}
