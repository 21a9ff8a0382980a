// Packs the library as npm would publish it, installs the tarball into a fresh project,
// and uses it from ESM, CommonJS and a ts-node script.
import { execFileSync, spawnSync } from 'node:child_process';
import { cpSync, existsSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { beforeAll, describe, expect, it } from 'vitest';

import { fixture, root } from '../helpers';

const run = (cmd: string, args: string[], cwd: string) =>
  execFileSync(cmd, args, { cwd, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, npm_config_loglevel: 'error' } });

const SCRIPT = (imports: string) => `${imports}
(async () => {
  const model = await loadPretrained(${JSON.stringify(fixture('mlp.scripted.pt'))});
  const out = await model.forward(tensor(new Float32Array(24), [2, 12]));
  console.log(JSON.stringify({ shape: out.shape, traced: model.isTraced, error: new TorchError('TORCH_ERROR', 'x').name }));
  model.dispose();
})();
`;

describe('the packed package', () => {
  let project: string;
  beforeAll(() => {
    const stage = mkdtempSync(join(tmpdir(), 'torchlite-pack-'));
    run('npm', ['run', '--silent', 'prebuild'], root);
    const tarball = run('npm', ['pack', '--silent', '--ignore-scripts', '--pack-destination', stage], root).trim().split('\n').pop()!;
    project = join(stage, 'app');
    run('mkdir', ['-p', project], stage);
    writeFileSync(join(project, 'package.json'), JSON.stringify({ name: 'app', version: '1.0.0', private: true }));
    // Dependencies come from the npm cache that `npm ci` filled; the addon from the tarball's prebuild.
    run('npm', ['install', '--prefer-offline', '--no-audit', '--no-fund', join(stage, tarball), `typescript@${require('typescript/package.json').version}`, `ts-node@${require('ts-node/package.json').version}`, '@types/node@20'], project);
  });

  const expected = { shape: [2, 4], traced: false, error: 'TorchError' };

  it('imports from ESM', () => {
    writeFileSync(join(project, 'esm.mjs'), SCRIPT("import { loadPretrained, tensor, TorchError } from 'torchlite';"));
    expect(JSON.parse(run('node', ['esm.mjs'], project))).toEqual(expected);
  });

  it('requires from CommonJS, sharing one addon with ESM', () => {
    writeFileSync(join(project, 'cjs.cjs'), SCRIPT("const { loadPretrained, tensor, TorchError } = require('torchlite');"));
    expect(JSON.parse(run('node', ['cjs.cjs'], project))).toEqual(expected);
    writeFileSync(join(project, 'same.mjs'), "import { createRequire } from 'node:module';\nimport * as esm from 'torchlite';\nconsole.log(esm.Tensor === createRequire(import.meta.url)('torchlite').Tensor);\n");
    expect(run('node', ['same.mjs'], project).trim()).toBe('true');
  });

  it('runs a type-checked ts-node script with the generated .d.ts', () => {
    writeFileSync(join(project, 'tsconfig.json'), JSON.stringify({ compilerOptions: { target: 'ES2022', module: 'commonjs', strict: true, lib: ['ES2022', 'ESNext.Disposable'], types: ['node'] } }));
    writeFileSync(
      join(project, 'script.ts'),
      SCRIPT("import { loadPretrained, tensor, TorchError, type Tensor } from 'torchlite';\nconst check: (t: Tensor) => number[] = (t) => t.shape;\nvoid check;"),
    );
    expect(JSON.parse(run(join(project, 'node_modules', '.bin', 'ts-node'), ['script.ts'], project))).toEqual(expected);
    // The whole of the shipped .d.ts must compile (skipLibCheck off): a public type may not
    // name an @internal one that stripInternal removed.
    run(join(project, 'node_modules', '.bin', 'tsc'), ['--noEmit', '-p', '.'], project);
    writeFileSync(join(project, 'bad.ts'), "import { tensor } from 'torchlite';\nconst n: string = tensor([1]).numel;\n");
    expect(() => run(join(project, 'node_modules', '.bin', 'ts-node'), ['bad.ts'], project)).toThrow(/TS2322/);
  });

  it.skipIf(!existsSync('/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz'))("runs the README's quick start as written: type-checked, from the installed package, on the shipped model", () => {
    // The first TypeScript block of the README, as a user pastes it into an ES module.
    const readme = readFileSync(join(root, 'README.md'), 'utf8');
    const code = /```ts\n([\s\S]*?)```/.exec(readme)![1];
    writeFileSync(join(project, 'quick.mts'), code);
    run(join(project, 'node_modules', '.bin', 'tsc'), ['--strict', '--module', 'nodenext', '--target', 'es2022', '--types', 'node', '--lib', 'es2022,esnext.disposable', 'quick.mts'], project);
    const out = run('node', ['quick.mjs'], project);
    const accuracy = Number(/^test accuracy (\d+\.\d)%$/m.exec(out)![1]);
    expect(accuracy).toBeGreaterThan(60); // 5 classes: chance is 20%
    expect(existsSync(join(project, 'finetuned.pt'))).toBe(true);
  });
});

describe('a missing addon', () => {
  it('fails to load with the paths it tried and what to do', () => {
    const dir = mkdtempSync(join(tmpdir(), 'torchlite-noaddon-'));
    cpSync(join(root, 'lib'), join(dir, 'lib'), { recursive: true });
    writeFileSync(join(dir, 'package.json'), JSON.stringify({ name: 'torchlite', main: 'lib/index.js' }));
    const result = spawnSync('node', ['-e', `try { require(${JSON.stringify(join(dir, 'lib'))}) } catch (e) { console.log(JSON.stringify({ name: e.name, code: e.code, message: e.message })) }`], { encoding: 'utf8' });
    const error = JSON.parse(result.stdout);
    expect(error.name).toBe('TorchError');
    expect(error.code).toBe('TORCHLITE_ADDON_LOAD');
    expect(error.message).toContain(`${join(dir, 'build', 'Release', 'torchlite.node')}: not found`);
    expect(error.message).toContain('npm run build:native');
    expect(error.message).toContain('LIBTORCH=/path/to/libtorch');
  });
});

describe('building from source under npm install', () => {
  it('says what it compiles, since npm hides an install script\'s output until it fails', () => {
    const r = spawnSync('bash', [join(root, 'scripts', 'build-addon.sh')], { cwd: root, encoding: 'utf8', env: { ...process.env, npm_lifecycle_event: 'install' } });
    expect(r.status).toBe(0);
    expect(r.stderr).toMatch(/^torchlite: no prebuilt addon fits this machine's LibTorch: compiling one \(\d+ files, \d+ parallel jobs; a few minutes; npm install --foreground-scripts shows the compiler\)$/m);
    expect(r.stderr).toMatch(/^torchlite: built build\/Release\/torchlite\.node$/m);
  });
});
