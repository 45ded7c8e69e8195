// npm run generate -- --model DIR [--adapter DIR] --prompt TEXT --max-new-tokens N
//   [--temperature T --top-k K --top-p P --seed S]   (greedy unless --temperature > 0)
// Generates with the same WGSL layers the trainer uses, through a KV cache (the prompt prefilled
// once, then one single-token run per new token), and prints the text; the speed goes to stderr.

import { parseArgs } from 'node:util';
import { createNodeGpu } from '../engine/gpu/node-gpu';
import { nodeModelFiles } from '../io/model-files-node';
import { loadHfModel } from '../io/model-files';
import { loadTokenizer } from '../data/tokenizer';
import { seededRandom } from '../data/batches';
import { loadCausalLM } from '../engine/models/registry';
import { StepUniforms } from '../engine/kernels/step-uniforms';
import { importPeftAdapter } from '../engine/peft/import';
import { peftModelInfo } from '../engine/peft/factory';
import { Generator } from '../engine/infer/generator';
import { CliError, integer, number, readAdapterDir } from './args';

async function main(argv: string[]): Promise<void> {
  const { values: a } = parseArgs({
    args: argv, strict: true,
    options: {
      model: { type: 'string' }, adapter: { type: 'string' }, prompt: { type: 'string' }, 'max-new-tokens': { type: 'string' },
      temperature: { type: 'string' }, 'top-k': { type: 'string' }, 'top-p': { type: 'string' }, seed: { type: 'string' },
      ids: { type: 'boolean' }, debug: { type: 'boolean' },
    },
  });
  if (!a.model || a.prompt === undefined) throw new CliError('usage: npm run generate -- --model DIR [--adapter DIR] --prompt TEXT --max-new-tokens N [--temperature T --top-k K --top-p P --seed S] [--ids]');
  const maxNew = integer(a['max-new-tokens'] ?? '64', '--max-new-tokens', 1);
  const hf = await loadHfModel(nodeModelFiles(a.model));
  if (!hf.tokenizerJson) throw new CliError(`${a.model}: no tokenizer.json in the model folder`);
  const tok = loadTokenizer(hf.tokenizerJson, hf.tokenizerConfig, { chatTemplate: hf.chatTemplate, name: hf.name });
  const gpu = await createNodeGpu();
  const loaded = loadCausalLM(gpu, hf);
  const adapter = a.adapter ? importPeftAdapter(gpu, readAdapterDir(a.adapter), peftModelInfo(hf.config, loaded.model.linearModules()), new StepUniforms(gpu)) : null;
  const promptIds = tok.encode(a.prompt, { addSpecialTokens: true });
  // prompt and prefix tuning's virtual tokens take positions before the text
  const positions = loaded.maxPositions - (adapter?.virtualTokens ?? 0) - (adapter?.prefixTokens ?? 0);
  const maxLength = Math.min(positions, promptIds.length + maxNew);
  if (promptIds.length >= maxLength) throw new CliError(`the prompt is ${promptIds.length} tokens; the model takes at most ${positions}${positions < loaded.maxPositions ? ' with this adapter\'s virtual tokens' : ''}`);
  const gen = new Generator(gpu, loaded.model, adapter, maxLength);
  const started = performance.now();
  const { ids: out, reason } = await gen.run(promptIds, {
    maxNewTokens: maxNew,
    stopIds: [tok.eosId],
    temperature: number(a.temperature ?? '0', '--temperature', 0),
    topK: integer(a['top-k'] ?? '0', '--top-k', 0),
    topP: number(a['top-p'] ?? '1', '--top-p', 0, 1),
    random: seededRandom(integer(a.seed ?? '0', '--seed', 0)),
  });
  const seconds = (performance.now() - started) / 1000;
  console.error(`${out.length} tokens in ${seconds.toFixed(2)} s (${(out.length / seconds).toFixed(1)} tokens/s, prefill included); ended: ${reason}`);
  if (a.ids) console.log(JSON.stringify({ prompt_ids: promptIds, generated_ids: out }));
  console.log(tok.decode([...promptIds, ...out], { skipSpecialTokens: true }));
  gen.destroy();
}

const argv = process.argv.slice(2);
main(argv).then(
  () => process.exit(0),
  (e: unknown) => {
    if (argv.includes('--debug')) console.error(e);
    else console.error(`error: ${(e as Error)?.message ?? String(e)}`);
    process.exit(1);
  },
);
