#!/usr/bin/env node
// Runs a TypeScript entry point of ours in Node: builds it with Vite (SSR mode, so `?raw` WGSL
// imports work exactly as in the app) into .cache/node/, then runs it with the remaining arguments.
//   node scripts/node-run.mjs src/cli/train.ts --model DIR ...
// With --bundle-only OUT_DIR it only writes a self-contained bundle (everything inlined except the
// `webgpu` package), for machines that have no node_modules (the GPU machine, see bench/).
import { build } from 'vite';
import { spawn } from 'node:child_process';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const args = process.argv.slice(2);
let bundleOnly = null;
if (args[0] === '--bundle-only') {
  bundleOnly = path.resolve(args[1]);
  args.splice(0, 2);
}
const entry = args.shift();
if (!entry) {
  console.error('usage: node scripts/node-run.mjs [--bundle-only OUT_DIR] ENTRY.ts [args...]');
  process.exit(2);
}
const name = path.basename(entry).replace(/\.[cm]?[jt]s$/, '');
const outDir = bundleOnly ?? path.join(root, '.cache', 'node');
// Node-only packages transformers.js references but our code never runs (ONNX runtime, image codecs).
const stub = path.join(root, 'scripts', 'empty-module.mjs');
await build({
  root,
  configFile: false,
  logLevel: 'warn',
  publicDir: false,
  resolve: bundleOnly
    ? {
        alias: [
          // the web build: the Node build loads onnxruntime-node through a require() no bundler can follow
          { find: /^@huggingface\/transformers$/, replacement: path.join(root, 'node_modules/@huggingface/transformers/dist/transformers.web.js') },
          { find: /^(onnxruntime-node|sharp)(\/.*)?$/, replacement: stub },
        ],
      }
    : {},
  ssr: bundleOnly ? { noExternal: true, external: ['webgpu'] } : {},
  build: {
    ssr: path.resolve(root, entry),
    outDir,
    emptyOutDir: false,
    target: 'node20',
    minify: false,
    sourcemap: !bundleOnly,
    rollupOptions: { output: { entryFileNames: `${name}.mjs`, codeSplitting: false } },
  },
});
if (bundleOnly) {
  console.error(`bundled ${entry} -> ${path.join(outDir, name + '.mjs')}`);
  process.exit(0);
}
const child = spawn(process.execPath, ['--enable-source-maps', path.join(outDir, `${name}.mjs`), ...args], { stdio: 'inherit' });
child.on('exit', (code, signal) => process.exit(signal ? 1 : code ?? 1));
