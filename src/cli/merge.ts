// npm run merge -- --model DIR --adapter DIR --out DIR [--dtype f32|bf16|f16] [--max-shard-size 2GB]
// Folds a LoRA or DoRA adapter into the base model's weights (PEFT's merge_and_unload) and writes
// a model folder transformers loads with from_pretrained, and this engine too.

import fs from 'node:fs';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { nodeModelFiles } from '../io/model-files-node';
import { loadHfModel } from '../io/model-files';
import { mergeAdapter, type MergedDType } from '../engine/export/merge';
import { CliError, readAdapterDir } from './args';

const USAGE = 'npm run merge -- --model DIR --adapter DIR --out DIR [--dtype f32|bf16|f16] [--max-shard-size 2GB]';

/** "2GB", "500MB", "1.5GiB" or a byte count. */
export function parseSize(text: string): number {
  const m = /^(\d+(?:\.\d+)?)\s*(B|KB|MB|GB|KiB|MiB|GiB)?$/i.exec(text.trim());
  if (!m) throw new CliError(`--max-shard-size ${JSON.stringify(text)}: give a size like 2GB, 500MB or a number of bytes`);
  const units: Record<string, number> = { b: 1, kb: 1e3, mb: 1e6, gb: 1e9, kib: 2 ** 10, mib: 2 ** 20, gib: 2 ** 30 };
  const bytes = Number(m[1]) * units[(m[2] ?? 'b').toLowerCase()];
  if (!(bytes >= 1)) throw new CliError(`--max-shard-size ${text}: must be at least one byte`);
  return Math.floor(bytes);
}

async function main(argv: string[]): Promise<void> {
  const { values: a } = parseArgs({
    args: argv, strict: true,
    options: { model: { type: 'string' }, adapter: { type: 'string' }, out: { type: 'string' }, dtype: { type: 'string' }, 'max-shard-size': { type: 'string' }, debug: { type: 'boolean' } },
  });
  for (const k of ['model', 'adapter', 'out'] as const) if (!a[k]) throw new CliError(`--${k} is required (${USAGE})`);
  let dtype: MergedDType | undefined;
  if (a.dtype) {
    const d = a.dtype.toUpperCase();
    if (d !== 'F32' && d !== 'BF16' && d !== 'F16') throw new CliError(`--dtype ${a.dtype}: use f32, bf16 or f16`);
    dtype = d;
  }
  const files = nodeModelFiles(a.model!);
  const hf = await loadHfModel(files);
  const merged = await mergeAdapter(files, hf, readAdapterDir(a.adapter!), { dtype, maxShardBytes: a['max-shard-size'] ? parseSize(a['max-shard-size']) : undefined });
  fs.mkdirSync(a.out!, { recursive: true });
  for (const [file, bytes] of merged.files) {
    fs.mkdirSync(path.dirname(path.join(a.out!, file)), { recursive: true });
    fs.writeFileSync(path.join(a.out!, file), bytes);
  }
  const weights = [...merged.files.keys()].filter((f) => f.endsWith('.safetensors'));
  console.log(`merged ${merged.merged.length} weight${merged.merged.length === 1 ? '' : 's'}${merged.replaced.length ? ` and replaced ${merged.replaced.length} (${merged.replaced.join(', ')})` : ''} into ${a.out}: ${weights.length === 1 ? weights[0] : `${weights.length} shards`} (${merged.dtype}), ${merged.files.size} files`);
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
