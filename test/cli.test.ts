import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join } from 'node:path';

import { describe, expect, it } from 'vitest';

import { root } from './helpers';

const cli = (...args: string[]) => spawnSync('node', [join(root, 'lib', 'cli', 'main.js'), ...args], { encoding: 'utf8' });
const hasFashion = existsSync('/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz');

describe('torchlite CLI', () => {
  it.skipIf(!hasFashion)('demo classifies test images with the shipped model and prints top-3 class names', () => {
    const { status, stdout } = cli('demo', '--count', '20');
    expect(status).toBe(0);
    const rows = stdout.split('\n').filter((line) => line.startsWith('test image #'));
    expect(rows).toHaveLength(20);
    expect(rows[0]).toMatch(/^test image #1 +true: Pullover +top-3: Pullover \d+\.\d%, \S.* \d+\.\d%, \S.* \d+\.\d%$/);
    const correct = Number(/^(\d+)\/20 top-1 correct$/m.exec(stdout)?.[1]);
    expect(correct).toBeGreaterThanOrEqual(16); // the shipped model scores ~90% on these classes
  });

  it('inspect prints the table, the archive kind and the metadata', () => {
    const { status, stdout } = cli('inspect', join(root, 'models', 'fashion-cnn.pt'));
    expect(status).toBe(0);
    expect(stdout).toContain('FashionCNN (scripted, cpu, eval mode)');
    expect(stdout).toContain('Total params:     38,829');
    expect(stdout).toContain('Archive: scripted (torch.jit.script)');
    expect(stdout).toContain('"T-shirt/top"');
    const json = JSON.parse(cli('inspect', '--json', join(root, 'test', 'fixtures', 'mlp.traced.pt')).stdout);
    expect(json.traced).toBe(true);
  });

  it('bad flags exit 2 with one line; failures exit 1 with the code', () => {
    const bad = cli('demo', '--count', '0');
    expect(bad.status).toBe(2);
    expect(bad.stderr.trim()).toBe('torchlite: Expected a positive integer for `--count` but received 0');
    const unknown = cli('demo', '--nope');
    expect(unknown.status).toBe(2);
    expect(unknown.stderr).toContain("error: unknown option '--nope'");
    const missing = cli('inspect', '/nonexistent.pt');
    expect(missing.status).toBe(1);
    expect(missing.stderr.trim()).toBe('torchlite: no such file: /nonexistent.pt [TORCHLITE_FILE_NOT_FOUND]');
  });
});
