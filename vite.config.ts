/// <reference types="vitest/config" />
import { defineConfig } from 'vite';
import react from '@vitejs/plugin-react';

// One config for the app (vite / vite build), the tests (vitest) and the Node entry points
// (scripts/node-run.mjs builds src/cli/*.ts with it in SSR mode).
export default defineConfig({
  plugins: [react()],
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
