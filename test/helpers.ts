import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';

import { type Dtype, type ModelOutput, Tensor, tensor } from '../src';

export const root = resolve(__dirname, '..');
export const fixtures = join(root, 'test', 'fixtures');
export const fixture = (name: string) => join(fixtures, name);

export interface Encoded {
  shape: number[];
  dtype: string;
  data: number[];
}
export type EncodedOutput = Encoded | EncodedOutput[] | { [key: string]: EncodedOutput };

export const refs: Record<string, { input: Encoded; output: EncodedOutput }> = JSON.parse(
  readFileSync(fixture('refs.json'), 'utf8'),
);

/** A Tensor from a JSON reference written by scripts/fixtures. */
export function decode(encoded: Encoded): Tensor {
  const dtype = encoded.dtype as Dtype;
  const data = dtype === 'int64' ? BigInt64Array.from(encoded.data.map(BigInt)) : Float32Array.from(encoded.data);
  return tensor(data, encoded.shape);
}

export function maxAbsDiff(actual: ArrayLike<number>, expected: ArrayLike<number>): number {
  if (actual.length !== expected.length) return Infinity;
  let worst = 0;
  for (let i = 0; i < actual.length; i++) worst = Math.max(worst, Math.abs(actual[i] - expected[i]));
  return worst;
}

/** Largest difference between a model output and a reference, walking tuples and dicts alike. */
export function outputDiff(actual: ModelOutput, expected: EncodedOutput): number {
  if (Array.isArray(expected)) {
    if (!Array.isArray(actual) || actual.length !== expected.length) return Infinity;
    return Math.max(...expected.map((e, i) => outputDiff(actual[i], e)));
  }
  if ('data' in expected && Array.isArray(expected.data)) {
    if (!(actual instanceof Tensor)) return Infinity;
    if (actual.shape.join() !== (expected as Encoded).shape.join()) return Infinity;
    return maxAbsDiff(actual.toTypedArray() as Float32Array, (expected as Encoded).data);
  }
  const record = expected as Record<string, EncodedOutput>;
  const got = actual as Record<string, ModelOutput>;
  if (Object.keys(got).sort().join() !== Object.keys(record).sort().join()) return Infinity;
  return Math.max(...Object.keys(record).map((k) => outputDiff(got[k], record[k])));
}

/** The reference Python: Debian's here; the GPU machine's own python3 via TORCHLITE_PYTHON. */
export const PYTHON = process.env.TORCHLITE_PYTHON ?? '/usr/bin/python3';

function pythonHas(module: string): boolean {
  return spawnSync(PYTHON, ['-c', `import ${module}`], { stdio: 'ignore' }).status === 0;
}

export const hasTorch = pythonHas('torch');
export const hasTorchvision = hasTorch && pythonHas('torchvision');

/** Runs Python (the arguments after the interpreter) and returns stdout; throws with stderr on failure. */
function runPython(argv: string[]): string {
  const result = spawnSync(PYTHON, argv, { encoding: 'utf8', maxBuffer: 64 << 20 });
  if (result.status !== 0) throw new Error(`python failed: ${result.stderr}`);
  return result.stdout;
}

/** Runs Python code with /usr/bin/python3 and returns stdout; throws with stderr on failure. */
export function python(code: string, args: string[] = []): string {
  return runPython(['-c', code, ...args]);
}

/**
 * Runs a Python script given as its source, from a file (TorchScript needs one to script the
 * classes it defines), with `args`; returns stdout, throws with stderr on failure.
 */
export function pythonScript(source: string, args: string[] = []): string {
  const file = join(mkdtempSync(join(tmpdir(), 'torchlite-script-')), 'script.py');
  writeFileSync(file, source);
  return runPython([file, ...args]);
}

/** {@link pythonScript}'s last line of output, as JSON. */
export function pythonJson<T>(source: string, args: string[] = []): T {
  return JSON.parse(pythonScript(source, args).trim().split('\n').pop()!) as T;
}

/** Largest difference relative to the largest reference magnitude. */
export function relativeDiff(actual: ArrayLike<number>, expected: ArrayLike<number>): number {
  let scale = 0;
  for (let i = 0; i < expected.length; i++) scale = Math.max(scale, Math.abs(expected[i]));
  return maxAbsDiff(actual, expected) / (scale || 1);
}

/**
 * Exports torchvision models with scripts/fixtures/export_torchvision.py into a temporary
 * folder; returns the folder and the shapes it reports.
 */
export function exportTorchvision(names: string[]): { dir: string; shapes: Record<string, { input: number[]; output: number[] }> } {
  const dir = mkdtempSync(join(tmpdir(), 'torchlite-tv-'));
  const result = spawnSync(PYTHON, [join(root, 'scripts', 'fixtures', 'export_torchvision.py'), dir, ...names], { encoding: 'utf8' });
  if (result.status !== 0) throw new Error(`export_torchvision.py failed: ${result.stderr}`);
  return { dir, shapes: JSON.parse(result.stdout) };
}

export function readF32(path: string): Float32Array {
  const bytes = readFileSync(path);
  return new Float32Array(bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength));
}

/** Loads `model` with Python's torch.jit.load, runs it in eval mode on `input`, and returns the output. */
export function pythonForward(model: string, input: Tensor): Float32Array {
  const dir = mkdtempSync(join(tmpdir(), 'torchlite-py-'));
  const data = input.toTypedArray() as Float32Array;
  writeFileSync(join(dir, 'input.f32'), new Uint8Array(data.buffer, data.byteOffset, data.byteLength));
  python(
    `import sys, numpy, torch
m = torch.jit.load(sys.argv[1]).eval()
x = torch.from_numpy(numpy.fromfile(sys.argv[2], dtype="<f4").reshape(${JSON.stringify(input.shape)}))
with torch.no_grad():
    m(x).numpy().astype("<f4").tofile(sys.argv[3])`,
    [model, join(dir, 'input.f32'), join(dir, 'output.f32')],
  );
  return readF32(join(dir, 'output.f32'));
}

/** A TCP port on 127.0.0.1 that was free a moment ago, for a rendezvous. */
export function freePort(): Promise<number> {
  return new Promise((resolve) => {
    const server = createServer().listen(0, '127.0.0.1', () => {
      const { port } = server.address() as { port: number };
      server.close(() => resolve(port));
    });
  });
}
