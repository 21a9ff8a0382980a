import { describe, expect, it } from 'vitest';

import { externalMemory } from '../src/testing';
import { arange, cuda, manualSeed, ones, randn, Tensor, TorchError, tensor, zeros } from '../src';

describe('tensor()', () => {
  const cases = [
    [Float32Array, 'float32'],
    [Float64Array, 'float64'],
    [Int32Array, 'int32'],
    [Int16Array, 'int16'],
    [Int8Array, 'int8'],
    [Uint8Array, 'uint8'],
  ] as const;
  it.each(cases)('maps %o to its dtype and copies the data', (Type, dtype) => {
    const data = new Type([1, 2, 3, 4, 5, 6]);
    const t = tensor(data, [2, 3]);
    expect(t.dtype).toBe(dtype);
    expect(t.shape).toEqual([2, 3]);
    expect(t.numel).toBe(6);
    expect(t.device).toBe('cpu');
    data[0] = 42; // the tensor owns a copy
    expect(Array.from(t.toTypedArray() as Float32Array)).toEqual([1, 2, 3, 4, 5, 6]);
    expect(t.toTypedArray()).toBeInstanceOf(Type);
  });

  it('maps BigInt64Array to int64', () => {
    const t = tensor(new BigInt64Array([1n, -2n, 9007199254740993n]));
    expect(t.dtype).toBe('int64');
    expect(t.toTypedArray()).toEqual(new BigInt64Array([1n, -2n, 9007199254740993n]));
  });

  it('makes float32 from number[] and keeps a 1-D default shape', () => {
    const t = tensor([0.5, 1.5, -2]);
    expect(t.dtype).toBe('float32');
    expect(t.shape).toEqual([3]);
    expect(Array.from(t.toTypedArray() as Float32Array)).toEqual([0.5, 1.5, -2]);
  });

  it('casts to a requested dtype, exactly for integers', () => {
    expect(tensor([16777217, 3], [2], { dtype: 'int64' }).toTypedArray()).toEqual(new BigInt64Array([16777217n, 3n]));
    const half = tensor(new Float32Array([1, 0.5, -3]), [3], { dtype: 'float16' });
    expect(half.dtype).toBe('float16');
    expect(half.toTypedArray()).toEqual(new Float32Array([1, 0.5, -3]));
    const bf = tensor([2.5], [1], { dtype: 'bfloat16' });
    expect(bf.item()).toBe(2.5);
    const flags = tensor([1, 0, 2], [3], { dtype: 'bool' });
    expect(flags.dtype).toBe('bool');
    expect(flags.toTypedArray()).toEqual(new Uint8Array([1, 0, 1]));
  });

  it('handles empty tensors and scalars', () => {
    expect(tensor(new Float32Array(0), [0, 3]).shape).toEqual([0, 3]);
    const scalar = tensor([7], []);
    expect(scalar.shape).toEqual([]);
    expect(scalar.item()).toBe(7);
  });

  it('reads through a subarray offset', () => {
    const base = new Float32Array([9, 9, 1, 2]);
    expect(Array.from(tensor(base.subarray(2)).toTypedArray() as Float32Array)).toEqual([1, 2]);
  });

  it('makes bool tensors from boolean[] (an attention mask), and refuses booleans mixed with numbers', () => {
    const mask = tensor([true, false, true], [3]);
    expect(mask.dtype).toBe('bool');
    expect(Array.from(mask.toTypedArray() as Uint8Array)).toEqual([1, 0, 1]);
    expect(tensor([true, false], [2], { dtype: 'float32' }).toTypedArray()).toEqual(Float32Array.of(1, 0));
    expect(() => tensor([true, 2] as never)).toThrow(new TypeError('Expected a finite number for `data[0]` but received true'));
  });

  it('rejects misuse with TypeError and RangeError', () => {
    expect(() => tensor(new Float32Array(6), [2, 2])).toThrow(
      new RangeError('Expected data of 4 elements for `shape` [2, 2] but received 6 elements'),
    );
    expect(() => tensor(new Uint16Array(2) as never)).toThrow(
      new TypeError(
        'Expected a Float32Array, Float64Array, Int32Array, BigInt64Array, Int16Array, Int8Array, Uint8Array, number[] or boolean[] for `data` but received a Uint16Array',
      ),
    );
    expect(() => tensor([1, 2], [2], { dtype: 'float8' as never })).toThrow(
      new RangeError(
        "Expected one of 'float32', 'float64', 'float16', 'bfloat16', 'int64', 'int32', 'int16', 'int8', 'uint8', 'bool' for `options.dtype` but received 'float8'",
      ),
    );
    expect(() => tensor([1, 2], [2, -1])).toThrow(new RangeError('Expected a non-negative integer for `shape[1]` but received -1'));
    expect(() => tensor([1, NaN])).toThrow(new RangeError('Expected a finite number for `data[1]` but received NaN'));
    expect(() => tensor([1], [1], { device: 'gpu' as never })).toThrow(
      new RangeError("Expected a device ('cpu', 'cuda' or 'cuda:N') for `options.device` but received 'gpu'"),
    );
    expect(() => tensor([1], [1], { dtyp: 'int64' } as never)).toThrow(
      new TypeError('Unknown option `options.dtyp`; known options are `dtype`, `device`'),
    );
  });

  it.skipIf(cuda.isAvailable())('refuses CUDA without it, with a coded error', () => {
    let error: unknown;
    try {
      tensor([1], [1], { device: 'cuda' });
    } catch (e) {
      error = e;
    }
    expect(error).toBeInstanceOf(TorchError);
    expect((error as TorchError).code).toBe('TORCHLITE_CUDA_UNAVAILABLE');
    expect(() => tensor([1]).to('cuda:0')).toThrow(TorchError);
  });
});

describe('factories', () => {
  it('zeros, ones and arange follow PyTorch', () => {
    expect(Array.from(zeros([2, 2]).toTypedArray() as Float32Array)).toEqual([0, 0, 0, 0]);
    expect(ones([3], { dtype: 'int32' }).toTypedArray()).toEqual(new Int32Array([1, 1, 1]));
    const ints = arange(4);
    expect(ints.dtype).toBe('int64');
    expect(ints.toTypedArray()).toEqual(new BigInt64Array([0n, 1n, 2n, 3n]));
    expect(Array.from(arange(0, 1, 0.25).toTypedArray() as Float32Array)).toEqual([0, 0.25, 0.5, 0.75]);
    expect(() => arange(0, 5, -1)).toThrow(RangeError);
  });

  it('randn is reproducible under manualSeed and matches torch.manual_seed(42); torch.randn(4)', () => {
    manualSeed(42);
    const a = randn([4]).toTypedArray() as Float32Array;
    manualSeed(42);
    const b = randn([4]).toTypedArray() as Float32Array;
    expect(b).toEqual(a);
    // Python: torch.manual_seed(42); torch.randn(4)
    const python = [0.33669036626815796, 0.12880940735340118, 0.23446236550807953, 0.23033303022384644];
    Array.from(a).forEach((v, i) => expect(v).toBeCloseTo(python[i], 6));
  });
});

describe('Tensor', () => {
  it('converts between dtypes', () => {
    const t = tensor([1.7, -2.2]);
    const d = t.to('float64');
    expect(d.dtype).toBe('float64');
    expect(t.to('int32').toTypedArray()).toEqual(new Int32Array([1, -2]));
    expect(t.to('cpu').device).toBe('cpu');
  });

  it('converts off the event loop with toAsync, to the same values', async () => {
    const t = tensor([1.7, -2.2]);
    const d = await t.toAsync('float64');
    expect([d.dtype, Array.from(d.toTypedArray() as Float64Array)]).toEqual(['float64', Array.from(t.to('float64').toTypedArray() as Float64Array)]);
    expect((await t.toAsync('int32')).toTypedArray()).toEqual(new Int32Array([1, -2]));
    expect((await t.toAsync('cpu')).device).toBe('cpu');
    await expect(t.toAsync('cuda:7' as never)).rejects.toMatchObject({ code: expect.stringMatching(/^TORCHLITE_(CUDA_UNAVAILABLE|BAD_DEVICE)$/) });
  });

  it('item() needs exactly one element', () => {
    expect(() => tensor([1, 2]).item()).toThrow(new RangeError('Expected a tensor with one element for `item()` but received 2 elements'));
    expect(tensor([1], [1], { dtype: 'bool' }).item()).toBe(true);
  });

  it('dispose is idempotent, then every use throws TORCHLITE_DISPOSED', () => {
    const t = tensor([1, 2]);
    t.dispose();
    t.dispose();
    expect(t.disposed).toBe(true);
    expect(() => t.shape).toThrow(expect.objectContaining({ code: 'TORCHLITE_DISPOSED', message: 'Tensor has been disposed' }));
    expect(() => t.toTypedArray()).toThrow(TorchError);
    expect(String(t)).toBe('Tensor(disposed)');
  });

  it('supports `using` through Symbol.dispose', () => {
    let outer: Tensor;
    {
      using t = ones([2]);
      outer = t;
      expect(outer.disposed).toBe(false);
    }
    expect(outer.disposed).toBe(true);
  });

  it('reports native memory to V8', () => {
    const before = externalMemory();
    const big = zeros([1024, 1024]);
    expect(externalMemory() - before).toBe(4 * 1024 * 1024);
    big.dispose();
    expect(externalMemory()).toBe(before);
  });
});

describe('options objects', () => {
  it('must be plain objects', async () => {
    const { loss } = await import('../src');
    expect(() => loss.crossEntropy(/re/ as never)).toThrow(new TypeError('Expected an options object for `options` but received /re/'));
    expect(() => zeros([2], [] as never)).toThrow(new TypeError('Expected an options object for `options` but received an array of length 0'));
    expect(arange(1e300, 1e300 + 1e290, 1e290).dtype).toBe('float32');
  });
});
