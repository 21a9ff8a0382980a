import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    // LibTorch work is slow on 2 cores; exports from Python and npm installs are slower.
    testTimeout: 120_000,
    hookTimeout: 300_000,
    // Each file gets its own process: one LibTorch per process keeps threads predictable.
    pool: 'forks',
    reporters: ['default', 'json'],
    outputFile: { json: '.vitest-report.json' },
  },
});
