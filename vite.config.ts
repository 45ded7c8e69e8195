/// <reference types="vitest/config" />
import { defineConfig, type Plugin } from 'vite';
import react from '@vitejs/plugin-react';
import { contentSecurityPolicy } from './src/worker/network-policy.js';

/**
 * Puts the Content-Security-Policy first in index.html's <head>: the app may load its own
 * scripts and connect only to itself and the model hosts of src/worker/network-policy.ts. A
 * <meta> works on any static host (no server headers needed); the dev server's variant also
 * lets Vite's inline React preamble and HMR websocket through.
 */
function contentSecurityPolicyMeta(): Plugin {
  return {
    name: 'content-security-policy',
    transformIndexHtml(_html, ctx) {
      return [{ tag: 'meta', attrs: { 'http-equiv': 'Content-Security-Policy', content: contentSecurityPolicy({ dev: ctx.server !== undefined }) }, injectTo: 'head-prepend' }];
    },
  };
}

// One config for the app (vite / vite build), the tests (vitest) and the Node entry points
// (scripts/node-run.mjs builds src/cli/*.ts with it in SSR mode).
export default defineConfig({
  plugins: [react(), contentSecurityPolicyMeta()],
  worker: { format: 'es' },
  build: { target: 'es2022', outDir: 'dist' },
  server: { host: '127.0.0.1' },
  preview: { host: '127.0.0.1' },
  test: {
    include: ['test/**/*.test.ts', 'test/**/*.test.tsx'],
    environment: 'node',
    testTimeout: 120_000,
    hookTimeout: 120_000,
    // SwiftShader runs WebGPU on the CPU; two cores: keep files from fighting over them.
    maxWorkers: 2,
    setupFiles: ['test/helpers/setup.ts'],
  },
});
