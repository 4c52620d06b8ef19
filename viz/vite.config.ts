/// <reference types="vitest/config" />
import { fileURLToPath } from 'node:url';
import { defineConfig } from 'vite';

// The dashboard is served by `engine serve` from `viz/dist`, same origin as the API.
// `npm run dev` proxies the API to a running engine (ENGINE_URL, default :8080).
const engine = process.env.ENGINE_URL ?? 'http://127.0.0.1:8080';

export default defineConfig({
  resolve: { alias: { '@': fileURLToPath(new URL('./src', import.meta.url)) } },
  build: { outDir: 'dist', sourcemap: false, chunkSizeWarningLimit: 400 },
  server: { proxy: { '/api': engine, '/healthz': engine, '/signin': engine } },
  test: {
    environment: 'jsdom',
    include: ['src/**/*.test.{ts,tsx}'],
    setupFiles: ['src/testing/setup.ts'],
    restoreMocks: true,
    // Times are shown in the browser's zone; tests pin one with a DST change.
    env: { TZ: 'Europe/Berlin' },
  },
});
