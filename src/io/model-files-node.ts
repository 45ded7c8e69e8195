// ModelFiles over a folder on disk (Node only: the CLI and tests).

import { readdirSync, statSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { basename, join, resolve } from 'node:path';
import { ModelFileError, normalizeModelPath, type ModelFiles } from './model-files';

export function nodeModelFiles(dir: string): ModelFiles {
  const root = resolve(dir);
  let isDir = false;
  try {
    isDir = statSync(root).isDirectory();
  } catch {
    throw new ModelFileError(`${dir}: no such folder`);
  }
  if (!isDir) throw new ModelFileError(`${dir}: is a file, not a model folder`);

  const paths: string[] = [];
  const walk = (rel: string) => {
    for (const entry of readdirSync(join(root, rel), { withFileTypes: true })) {
      const child = rel ? `${rel}/${entry.name}` : entry.name;
      if (entry.isDirectory()) {
        if (!entry.name.startsWith('.')) walk(child); // skip .git, .cache
      } else if (entry.isFile() || entry.isSymbolicLink()) {
        paths.push(child);
      }
    }
  };
  walk('');
  paths.sort();
  const known = new Set(paths);
  const name = basename(root);

  return {
    name,
    list: () => [...paths],
    has: (path) => known.has(normalizeModelPath(path)),
    async read(path) {
      const rel = normalizeModelPath(path);
      if (!known.has(rel)) throw new ModelFileError(`${name}: there is no file "${path}"`);
      const buf = await readFile(join(root, rel));
      return new Uint8Array(buf.buffer, buf.byteOffset, buf.byteLength);
    },
  };
}
