// Vitest global setup: writes the training parity references on this machine, once per run.
// Float results differ between CPUs (AVX2 against AVX-512), so references written on one
// machine fail on another for code nobody touched; Python and torchlite on the same CPU agree
// within 1e-5, and a formula error (such as Adam's 2.x lerp) is far larger.
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';

import type { TestProject } from 'vitest/node';

declare module 'vitest' {
  export interface ProvidedContext {
    /** The path of the training references that scripts/fixtures/make_training_refs.py wrote for this run. */
    trainingRefs: string;
  }
}

export default function setup(project: TestProject): () => void {
  const python = process.env.TORCHLITE_PYTHON ?? '/usr/bin/python3';
  const dir = mkdtempSync(join(tmpdir(), 'torchlite-refs-'));
  const out = join(dir, 'training.json');
  const script = resolve(__dirname, '..', '..', 'scripts', 'fixtures', 'make_training_refs.py');
  const result = spawnSync(python, [script, '--refs', out], { encoding: 'utf8' });
  if (result.status !== 0)
    throw new Error(`The training references need ${python} with torch (bash scripts/bootstrap.sh installs Debian's; TORCHLITE_PYTHON names another): ${result.stderr || result.error?.message}`);
  project.provide('trainingRefs', out);
  return () => rmSync(dir, { recursive: true, force: true });
}
