import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    // `npm test` runs the fast suite; `npm run test:slow` (TORCHLITE_SLOW=1) the end-to-end cases that train many times.
    include: process.env.TORCHLITE_SLOW ? ['test/slow/**/*.test.ts'] : ['test/**/*.test.ts'],
    exclude: process.env.TORCHLITE_SLOW ? [] : ['test/slow/**', 'node_modules/**'],
    // The training parity references are written on the machine that runs the tests.
    globalSetup: ['test/setup/references.ts'],
    // LibTorch work is slow on 2 cores; exports from Python and npm installs are slower.
    testTimeout: 120_000,
    hookTimeout: 300_000,
    // Each file gets its own process: one LibTorch per process keeps threads predictable.
    pool: 'forks',
    reporters: ['default', 'json'],
    outputFile: { json: process.env.TORCHLITE_SLOW ? '.vitest-report-slow.json' : '.vitest-report.json' },
  },
});
