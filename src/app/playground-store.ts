// The playground's state: which stored adapter, the prompt and decoding settings, the streamed
// outputs with the adapter on and off, and a classifier's label probabilities. The work happens in
// the training worker (src/worker/playground.ts); this store sends it commands through the app
// store's worker client and folds its 'generation' events into the two outputs.

import { create } from 'zustand';
import { workerClient } from './store';
import { WorkerCommandError, type ClassifyResult, type GenerateParams, type GenerationSide, type GenerationStream, type PlaygroundInfo, type WorkerEvent } from '../worker/protocol';

export type DecodingMode = 'greedy' | 'sample';

export interface PlaygroundSettings {
  prompt: string;
  useChatTemplate: boolean;
  mode: DecodingMode;
  temperature: number;
  topK: number;
  topP: number;
  seed: number;
  maxNewTokens: number;
  /** Generate with the base model beside the adapter. */
  compareBase: boolean;
}

export type GenerationView =
  | { status: 'idle' }
  | { status: 'running' | 'done'; requestId: number; promptTokens: number | null; sides: Partial<Record<GenerationSide, GenerationStream>> }
  | { status: 'error'; message: string; sides: Partial<Record<GenerationSide, GenerationStream>> };

export type ClassifyView =
  | { status: 'idle' }
  | { status: 'running' }
  | { status: 'done'; result: ClassifyResult; text: string }
  | { status: 'error'; message: string };

/** One adapter's row of a comparison: its output for the shared prompt (or text), when done. */
export interface ComparisonRow {
  adapterId: string;
  status: 'waiting' | 'running' | 'done' | 'error';
  /** Generation: the text and why it ended. */
  text?: string;
  end?: GenerationStream['end'];
  /** Classification: label probabilities. */
  result?: ClassifyResult;
  message?: string;
}

export type ComparisonView = { status: 'idle' } | { status: 'running' | 'done'; input: string; rows: ComparisonRow[] };

export interface PlaygroundState {
  /** The chosen stored adapter (null: none chosen yet, the newest one for the model is offered). */
  adapterId: string | null;
  settings: PlaygroundSettings;
  info: PlaygroundInfo | null;
  generation: GenerationView;
  classifyText: string;
  classification: ClassifyView;
  /** Several stored adapters on the same prompt (greedy or the same seed) or the same text, one after another. */
  comparison: ComparisonView;
  compare(adapterIds: string[], task: 'causal-lm' | 'classification'): Promise<void>;
  setAdapter(id: string): void;
  update(patch: Partial<PlaygroundSettings>): void;
  setClassifyText(text: string): void;
  /** Asks the worker what the loaded model offers (chat template, positions). */
  loadInfo(): Promise<void>;
  generate(adapterId: string): Promise<void>;
  stop(): void;
  classify(adapterId: string): Promise<void>;
}

export const DEFAULT_PLAYGROUND: PlaygroundSettings = {
  prompt: '',
  useChatTemplate: false,
  mode: 'greedy',
  temperature: 0.8,
  topK: 50,
  topP: 0.95,
  seed: 1,
  maxNewTokens: 64,
  compareBase: true,
};

/** The worker's generate request for these settings (greedy: temperature 0, no top-k / top-p cut). */
function generateRequest(s: PlaygroundSettings, requestId: number, adapterId: string, prompt: string, compareBase: boolean): GenerateParams {
  const greedy = s.mode === 'greedy';
  return {
    requestId, adapterId, prompt, useChatTemplate: s.useChatTemplate, maxNewTokens: s.maxNewTokens,
    temperature: greedy ? 0 : s.temperature, topK: greedy ? 0 : s.topK, topP: greedy ? 1 : s.topP, seed: s.seed, compareBase,
  };
}

const messageOf = (e: unknown): string => (e instanceof WorkerCommandError || e instanceof Error ? e.message : String(e));

let nextRequestId = 1;
let unsubscribe: (() => void) | null = null;

export const usePlayground = create<PlaygroundState>()((set, get) => {
  /** Streamed tokens of the current request go into its side's output. */
  const onEvent = (e: WorkerEvent) => {
    if (e.type !== 'generation') return;
    const g = get().generation;
    if (g.status !== 'running' || g.requestId !== e.stream.requestId) return;
    set({ generation: { ...g, sides: { ...g.sides, [e.stream.side]: e.stream } } });
  };
  const client = () => {
    const c = workerClient();
    if (!c) throw new Error('The worker is not running yet.');
    if (!unsubscribe) unsubscribe = c.onEvent(onEvent);
    return c;
  };

  return {
    adapterId: null,
    settings: DEFAULT_PLAYGROUND,
    info: null,
    generation: { status: 'idle' },
    classifyText: '',
    classification: { status: 'idle' },
    comparison: { status: 'idle' },

    async compare(adapterIds, task) {
      const s = get().settings;
      const input = task === 'classification' ? get().classifyText : s.prompt;
      const rows: ComparisonRow[] = adapterIds.map((adapterId) => ({ adapterId, status: 'waiting' }));
      const put = (i: number, row: ComparisonRow) => {
        rows[i] = row;
        const c = get().comparison;
        if (c.status !== 'idle') set({ comparison: { ...c, rows: rows.slice() } });
      };
      set({ comparison: { status: 'running', input, rows: rows.slice() } });
      for (let i = 0; i < adapterIds.length; i++) {
        const adapterId = adapterIds[i];
        put(i, { adapterId, status: 'running' });
        try {
          if (task === 'classification') {
            put(i, { adapterId, status: 'done', result: await client().call('classify', { adapterId, text: input }) });
          } else {
            const result = await client().call('generate', generateRequest(s, nextRequestId++, adapterId, input, false));
            const out = result.sides.find((x) => x.side === 'adapter');
            put(i, { adapterId, status: 'done', text: out?.text ?? '', end: out?.end });
          }
        } catch (e) {
          put(i, { adapterId, status: 'error', message: messageOf(e) });
        }
      }
      set({ comparison: { status: 'done', input, rows: rows.slice() } });
    },

    setAdapter(id) {
      set({ adapterId: id });
    },
    update(patch) {
      set({ settings: { ...get().settings, ...patch } });
    },
    setClassifyText(text) {
      set({ classifyText: text });
    },

    async loadInfo() {
      try {
        const info = await client().call('playgroundInfo', {});
        // a model without a chat template can not use it
        set({ info, settings: { ...get().settings, useChatTemplate: get().settings.useChatTemplate && info.hasChatTemplate } });
      } catch {
        set({ info: null });
      }
    },

    async generate(adapterId) {
      const s = get().settings;
      const requestId = nextRequestId++;
      set({ generation: { status: 'running', requestId, promptTokens: null, sides: {} } });
      try {
        const result = await client().call('generate', generateRequest(s, requestId, adapterId, s.prompt, s.compareBase));
        const sides: Partial<Record<GenerationSide, GenerationStream>> = {};
        for (const side of result.sides) sides[side.side] = side;
        set({ generation: { status: 'done', requestId, promptTokens: result.promptTokens, sides } });
      } catch (e) {
        const g = get().generation;
        set({ generation: { status: 'error', message: messageOf(e), sides: g.status === 'idle' ? {} : g.sides } });
      }
    },

    stop() {
      workerClient()?.control('stopGeneration');
    },

    async classify(adapterId) {
      const text = get().classifyText;
      set({ classification: { status: 'running' } });
      try {
        const result = await client().call('classify', { adapterId, text });
        set({ classification: { status: 'done', result, text } });
      } catch (e) {
        set({ classification: { status: 'error', message: messageOf(e) } });
      }
    },
  };
});
