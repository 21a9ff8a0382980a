import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { describe, expect, it } from 'vitest';

import { cuda, loadPretrained, tensor, TorchError } from '../src';
import { decode, fixture, hasTorch, python, refs } from './helpers';

const dir = mkdtempSync(join(tmpdir(), 'torchlite-errors-'));
const write = (name: string, data: Uint8Array | string) => {
  const path = join(dir, name);
  writeFileSync(path, data);
  return path;
};

async function rejection(promise: Promise<unknown>): Promise<TorchError> {
  const error = await promise.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(error).toBeInstanceOf(TorchError);
  return error as TorchError;
}

describe('loading bad files', () => {
  const scripted = readFileSync(fixture('mlp.scripted.pt'));
  const cases: [string, () => string, string, RegExp][] = [
    ['a missing file', () => join(dir, 'missing.pt'), 'TORCHLITE_FILE_NOT_FOUND', /^no such file: .*missing\.pt$/],
    ['a directory', () => dir, 'TORCHLITE_IS_DIRECTORY', /is a directory, not a TorchScript \.pt file$/],
    ['an empty file', () => write('empty.pt', ''), 'TORCHLITE_NOT_TORCHSCRIPT', /empty\.pt is empty$/],
    ['a truncated .pt', () => write('truncated.pt', scripted.subarray(0, scripted.length >> 1)), 'TORCHLITE_CORRUPT_FILE', /truncated\.pt is a truncated or damaged archive$/],
    ['random bytes', () => write('random.pt', Uint8Array.from({ length: 4096 }, (_, i) => (i * 7919 + 13) % 251)), 'TORCHLITE_NOT_TORCHSCRIPT', /random\.pt is not a TorchScript archive \(no zip signature\)$/],
    ['a torch.save(state_dict) file', () => fixture('state_dict.pt'), 'TORCHLITE_NOT_TORCHSCRIPT', /state_dict\.pt holds torch\.save\(\) data \(a state_dict or pickled module\), not TorchScript; export the model with torch\.jit\.script/],
  ];
  it.each(cases)('%s', async (_, path, code, message) => {
    const error = await rejection(loadPretrained(path()));
    expect(error.code).toBe(code);
    expect(error.message).toMatch(message);
  });

  it('points the stack at the caller, not at native code', async () => {
    const error = await rejection(loadPretrained(join(dir, 'nope.pt')));
    expect(error.stack?.split('\n')[0]).toBe(`TorchError: no such file: ${join(dir, 'nope.pt')}`);
    expect(error.stack).toContain('errors.test.ts');
  });

  it.skipIf(cuda.isAvailable())("refuses device 'cuda' without CUDA", async () => {
    const error = await rejection(loadPretrained(fixture('mlp.scripted.pt'), { device: 'cuda' }));
    expect(error.code).toBe('TORCHLITE_CUDA_UNAVAILABLE');
    expect(error.message).toMatch(/^device 'cuda' requested but CUDA is not available/);
  });

  it('throws TypeError/RangeError for misuse', async () => {
    await expect(loadPretrained(42 as never)).rejects.toThrow(new TypeError('Expected a non-empty string for `path` but received 42'));
    await expect(loadPretrained('x.pt', { device: 'tpu' as never })).rejects.toThrow(
      new RangeError("Expected a device ('cpu', 'cuda' or 'cuda:N') for `options.device` but received 'tpu'"),
    );
    await expect(loadPretrained('x.pt', { devcie: 'cpu' } as never)).rejects.toThrow(
      new TypeError('Unknown option `options.devcie`; known options are `device`, `channelsLast`, `weights`'),
    );
  });
});

describe('bad forward inputs', () => {
  it('wrong input rank gets TORCH_SHAPE with the root cause first', async () => {
    await using model = await loadPretrained(fixture('resnet_small.scripted.pt'));
    const error = await rejection(model.forward(tensor(new Float32Array(6), [2, 3])));
    expect(error.code).toBe('TORCH_SHAPE');
    expect(error.message).toBe('Expected 3D (unbatched) or 4D (batched) input to conv2d, but got input of size: [2, 3]');
    expect(error.backtrace).toContain('TorchScript');
  });

  it('wrong input dtype gets TORCH_DTYPE', async () => {
    await using model = await loadPretrained(fixture('mlp.traced.pt'));
    const error = await rejection(model.forward(tensor(new Float64Array(24), [2, 12])));
    expect(error.code).toBe('TORCH_DTYPE');
    expect(error.message).toMatch(/expected .*scalar type|dtype/i);
  });

  it('token ids must be integers', async () => {
    await using model = await loadPretrained(fixture('text.scripted.pt'));
    const error = await rejection(model.forward(tensor(new Float32Array(8), [2, 4])));
    expect(error.code).toBe('TORCH_DTYPE');
  });

  it('a wrong argument count or type gets TORCH_ARGUMENT', async () => {
    await using model = await loadPretrained(fixture('mlp.scripted.pt'));
    const input = decode(refs.mlp.input);
    expect((await rejection(model.forward(input, input))).code).toBe('TORCH_ARGUMENT');
    expect((await rejection(model.forward(3))).code).toBe('TORCH_ARGUMENT');
    await expect(model.forward({})).rejects.toThrow(
      new TorchError('TORCH_ARGUMENT', "expected a value of type 'Tensor' but received an object; plain objects are only for Dict[str, ...] arguments"),
    );
    await expect(model.forward(new Map() as never)).rejects.toThrow(
      new TypeError('Expected a Tensor, number, boolean, string, or an array or plain object of them for `inputs[0]` but received a Map'),
    );
  });

  it('a disposed tensor as input gets TORCHLITE_DISPOSED', async () => {
    await using model = await loadPretrained(fixture('mlp.scripted.pt'));
    const input = decode(refs.mlp.input);
    input.dispose();
    expect((await rejection(model.forward(input))).code).toBe('TORCHLITE_DISPOSED');
  });

  it('the model stays usable after failures', async () => {
    await using model = await loadPretrained(fixture('mlp.scripted.pt'));
    await model.forward(tensor([1, 2])).catch(() => undefined);
    const out = await model.forward(decode(refs.mlp.input));
    expect(out.shape).toEqual([4, 4]);
  });
});

describe('metadata', () => {
  it.skipIf(!hasTorch)('an archive with broken torchlite.json metadata gets a coded error', async () => {
    const path = join(dir, 'bad-meta.pt');
    python(`import sys, torch
m = torch.jit.load(sys.argv[1])
torch.jit.save(m, sys.argv[2], _extra_files={'torchlite.json': '{not json'})`, [fixture('mlp.scripted.pt'), path]);
    await expect(loadPretrained(path)).rejects.toMatchObject({ code: 'TORCHLITE_CORRUPT_FILE', message: "the archive's torchlite.json metadata is not valid JSON" });
  });
});
