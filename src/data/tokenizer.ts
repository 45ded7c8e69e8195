// The tokenizer the data pipeline sees: a thin wrapper over transformers.js' PreTrainedTokenizer
// (built offline from tokenizer.json + tokenizer_config.json) with the few ids training needs.

import { PreTrainedTokenizer } from '@huggingface/transformers';

export class TokenizerError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'TokenizerError';
  }
}

export interface ChatMessage {
  role: 'system' | 'user' | 'assistant' | (string & {});
  content: string;
}

export interface TextTokenizer {
  encode(text: string, options?: { addSpecialTokens?: boolean }): number[];
  decode(ids: ArrayLike<number>, options?: { skipSpecialTokens?: boolean }): string;
  eosId: number;
  bosId: number | null;
  /** The pad token, else eos, else 0. Padded positions never reach the loss, so any id works. */
  padId: number;
  /** One more than the largest token id (the model's embedding may have more rows). */
  vocabSize: number;
  /** The Jinja chat template, when the tokenizer has one. */
  chatTemplate?: string;
  /** Renders messages with the chat template; throws TokenizerError when there is none. */
  applyChatTemplate(messages: ChatMessage[], options?: { addGenerationPrompt?: boolean }): string;
}

export interface LoadTokenizerOptions {
  /** A template from chat_template.jinja, used when tokenizer_config.json has none. */
  chatTemplate?: string;
  /** Shown in messages. */
  name?: string;
}

// Used only when tokenizer_config.json does not name an eos token (e.g. a bare tokenizer.json).
const EOS_CANDIDATES = ['</s>', '<|endoftext|>', '<eos>', '<|end_of_text|>', '<|im_end|>', '[SEP]'];

export function loadTokenizer(tokenizerJson: object, tokenizerConfig?: object, options: LoadTokenizerOptions = {}): TextTokenizer {
  const name = options.name ?? 'tokenizer';
  if (typeof tokenizerJson !== 'object' || tokenizerJson === null || !('model' in tokenizerJson)) {
    throw new TokenizerError(`${name}: tokenizer.json has no "model" section; is it a Hugging Face tokenizers file?`);
  }
  const config: Record<string, unknown> = { ...((tokenizerConfig ?? {}) as Record<string, unknown>) };
  if (options.chatTemplate && config.chat_template == null) config.chat_template = options.chatTemplate;

  let tok: PreTrainedTokenizer;
  try {
    tok = new PreTrainedTokenizer(tokenizerJson, config);
  } catch (e) {
    throw new TokenizerError(`${name}: could not build the tokenizer (${(e as Error).message})`);
  }

  const vocab = tok.get_vocab();
  let maxId = -1;
  for (const id of vocab.values()) if (id > maxId) maxId = id;
  const idOf = (token: string): number | null => {
    const id = vocab.get(token);
    return id === undefined ? null : id;
  };
  const validId = (id: unknown): number | null => (typeof id === 'number' && Number.isInteger(id) && id >= 0 ? id : null);

  let eosId = validId(tok.eos_token_id) ?? validId(tok.sep_token_id);
  if (eosId === null) {
    for (const t of EOS_CANDIDATES) {
      eosId = idOf(t);
      if (eosId !== null) break;
    }
  }
  if (eosId === null) {
    throw new TokenizerError(`${name}: has no end-of-sequence token (tokenizer_config.json sets no eos_token and none of ${EOS_CANDIDATES.join(' ')} is in the vocabulary)`);
  }
  const bosId = validId(tok.bos_token_id);
  // transformers.js already falls back from pad to eos; keep our own fallback for a missing eos in config.
  const padId = validId(tok.pad_token_id) ?? eosId ?? 0;

  let chatTemplate: string | undefined;
  try {
    chatTemplate = tok.chat_template ? tok.get_chat_template() : undefined;
  } catch {
    chatTemplate = undefined; // several named templates and none called "default"
  }

  return {
    eosId,
    bosId,
    padId,
    vocabSize: maxId + 1,
    chatTemplate,
    encode(text, opts = {}) {
      const ids = tok.encode(text, { add_special_tokens: opts.addSpecialTokens ?? true });
      // Some tokenizer models return undefined for unknown words instead of the unk id; a bad id
      // here would surface much later as a garbage embedding row.
      for (const id of ids) {
        if (!Number.isInteger(id) || id < 0 || id > maxId) {
          throw new TokenizerError(`${name}: produced token id ${String(id)} for ${JSON.stringify(text.slice(0, 80))}`);
        }
      }
      return ids;
    },
    decode(ids, opts = {}) {
      const list = Array.from(ids);
      if (list.length === 0) return '';
      return tok.decode(list, { skip_special_tokens: opts.skipSpecialTokens ?? false });
    },
    applyChatTemplate(messages, opts = {}) {
      if (!chatTemplate) throw new TokenizerError(`${name}: has no chat template`);
      try {
        return tok.apply_chat_template(messages, {
          chat_template: chatTemplate,
          add_generation_prompt: opts.addGenerationPrompt ?? false,
          tokenize: false,
        });
      } catch (e) {
        throw new TokenizerError(`${name}: the chat template failed to render (${(e as Error).message})`);
      }
    },
  };
}
