// Tensor: a handle on a LibTorch tensor, made from and read into typed arrays.
import { callNative, callNativeAsync, disposedError } from './errors';
import { native, type NativeTensor, type NativeConversion, type NativeTensorOptions } from './native';
import { checkDevice, checkFiniteNumber, checkInteger, checkOneOf, checkOptions, rangeError, typeError } from './validate';

export const DTYPES = ['float32', 'float64', 'float16', 'bfloat16', 'int64', 'int32', 'int16', 'int8', 'uint8', 'bool'] as const;
/** Element type of a tensor, named as in PyTorch. */
export type Dtype = (typeof DTYPES)[number];
/** `'cpu'`, `'cuda'` (device 0) or `'cuda:N'`. */
export type Device = 'cpu' | 'cuda' | `cuda:${number}`;

/** Typed arrays a tensor can be made from; each maps to the dtype of the same name. */
export type TensorData =
  | Float32Array
  | Float64Array
  | Int32Array
  | BigInt64Array
  | Int16Array
  | Int8Array
  | Uint8Array
  | number[]
  | boolean[];

/** What {@link Tensor.toTypedArray} returns: 16-bit floats widen to Float32Array and bool to Uint8Array. */
export type TensorArray = Float32Array | Float64Array | Int32Array | BigInt64Array | Int16Array | Int8Array | Uint8Array;

export interface TensorOptions {
  /** Element type of the new tensor. Defaults to the type of the data (`'float32'` for `number[]`). */
  dtype?: Dtype;
  /** Where the tensor lives. Defaults to `'cpu'`. */
  device?: Device;
}

const ARRAY_TYPES = [Float32Array, Float64Array, Int32Array, BigInt64Array, Int16Array, Int8Array, Uint8Array];

/** A LibTorch tensor. Call {@link Tensor.dispose} (or `using`) to free it promptly; GC is only a safety net. */
export class Tensor implements Disposable {
  #native: NativeTensor | null;

  /** @internal Use {@link tensor} or a factory. */
  constructor(handle: NativeTensor) {
    this.#native = handle;
  }

  /** @internal The native handle, for other torchlite modules. */
  static handle(value: Tensor): NativeTensor {
    if (!(value instanceof Tensor)) throw typeError('a Tensor', 'input', value);
    if (value.#native === null) throw disposedError('Tensor');
    return value.#native;
  }

  get #live(): NativeTensor {
    return Tensor.handle(this);
  }

  /** Size of each dimension. */
  get shape(): number[] {
    return this.#live.shape();
  }

  get dtype(): Dtype {
    return this.#live.dtype() as Dtype;
  }

  get device(): Device {
    return this.#live.device() as Device;
  }

  /** Number of elements. */
  get numel(): number {
    return this.#live.numel();
  }

  /** True once {@link Tensor.dispose} has run. */
  get disposed(): boolean {
    return this.#native === null;
  }

  /**
   * A copy of the elements in row-major order, for a CPU tensor. A CUDA tensor throws
   * `TORCHLITE_DEVICE_SYNC` (waiting for the GPU would block the event loop): use {@link Tensor.read}.
   */
  toTypedArray(): TensorArray {
    const live = this.#live;
    return callNative(() => live.toTypedArray()) as TensorArray;
  }

  /** A copy of the elements in row-major order, from any device, fetched off the event loop ahead of queued training. */
  read(): Promise<TensorArray> {
    return callNativeAsync(async () => {
      const live = this.#live;
      return (await live.read()) as TensorArray;
    });
  }

  /** The value of a one-element CPU tensor (a CUDA tensor throws `TORCHLITE_DEVICE_SYNC`; use {@link Tensor.read}). */
  item(): number | boolean {
    const live = this.#live;
    const numel = live.numel();
    if (numel !== 1) throw new RangeError(`Expected a tensor with one element for \`item()\` but received ${numel} elements`);
    return callNative(() => live.item());
  }

  /**
   * A copy on another device or with another dtype, e.g. `t.to('cuda')` or `t.to('float64')`.
   * Synchronous: it runs on the JS thread (about 1.5 ms per MB converted), so keep it for small
   * tensors and use {@link Tensor.toAsync} for large ones; a copy off a GPU is refused with
   * `TORCHLITE_DEVICE_SYNC` (it would wait for the device).
   */
  to(target: Device | Dtype): Tensor {
    const live = this.#live;
    const options = this.#conversion(target);
    return new Tensor(callNative(() => live.to(options)));
  }

  /** {@link Tensor.to} as a job on the tensor's device lane, off the event loop. */
  toAsync(target: Device | Dtype): Promise<Tensor> {
    return callNativeAsync(async () => {
      const live = this.#live;
      return new Tensor(await live.toAsync(this.#conversion(target)));
    });
  }

  #conversion(target: Device | Dtype): NativeConversion {
    const dtype = (DTYPES as readonly string[]).includes(target);
    return { device: dtype ? this.device : checkDevice(target, 'target'), dtype: dtype ? (target as Dtype) : this.dtype };
  }

  /** Frees the native memory now. Idempotent; any later use throws `TORCHLITE_DISPOSED`. */
  dispose(): void {
    this.#native?.dispose();
    this.#native = null;
  }

  [Symbol.dispose](): void {
    this.dispose();
  }

  toString(): string {
    return this.#native === null ? 'Tensor(disposed)' : `Tensor(shape=[${this.shape}], dtype=${this.dtype}, device=${this.device})`;
  }
}

function checkShape(shape: unknown, name = 'shape'): number[] {
  if (!Array.isArray(shape)) throw typeError('an array of non-negative integers', name, shape);
  shape.forEach((size, i) => checkInteger(size, `${name}[${i}]`, 0, 'a non-negative integer'));
  return shape as number[];
}

/**
 * The native options of a new tensor, every field given: `dtype` defaults to `fallback`
 * (`null` keeps the data's own dtype), `device` to the CPU.
 */
function nativeOptions(options: unknown, name: string, fallback: Dtype | null): NativeTensorOptions {
  const { dtype, device } = checkOptions<TensorOptions>(options, name, ['dtype', 'device']);
  return {
    dtype: dtype === undefined ? fallback : checkOneOf(dtype, `${name}.dtype`, DTYPES),
    device: device === undefined ? 'cpu' : checkDevice(device, `${name}.device`),
  };
}

/**
 * A tensor from a typed array, `number[]` (float32 unless `dtype` says otherwise) or
 * `boolean[]` (bool, e.g. an attention mask), copied. `shape` defaults to one dimension of
 * the data's length.
 */
export function tensor(data: TensorData, shape?: number[], options?: TensorOptions): Tensor {
  let array: ArrayBufferView;
  if (Array.isArray(data) && data.length > 0 && data.every((v) => typeof v === 'boolean')) {
    array = Uint8Array.from(data as boolean[], Number);
    options = { dtype: 'bool', ...options };
  } else if (Array.isArray(data)) {
    data.forEach((v, i) => checkFiniteNumber(v, `data[${i}]`));
    // Float64 keeps integers exact up to 2^53; the native side casts to the dtype.
    array = Float64Array.from(data as number[]);
    options = { dtype: 'float32', ...options };
  } else if (ARRAY_TYPES.some((type) => data instanceof type)) {
    array = data;
  } else {
    throw typeError('a Float32Array, Float64Array, Int32Array, BigInt64Array, Int16Array, Int8Array, Uint8Array, number[] or boolean[]', 'data', data);
  }
  const length = (array as Float32Array).length;
  const dims = shape === undefined ? [length] : checkShape(shape);
  const numel = dims.reduce((a, b) => a * b, 1);
  if (numel !== length)
    throw new RangeError(`Expected data of ${numel} elements for \`shape\` [${dims.join(', ')}] but received ${length} elements`);
  const opts = nativeOptions(options, 'options', null);
  return new Tensor(callNative(() => native.Tensor.fromArray(array, dims, opts)));
}

/** A tensor filled with zeros. */
export function zeros(shape: number[], options?: TensorOptions): Tensor {
  return full(shape, 0, options);
}

/** A tensor filled with ones. */
export function ones(shape: number[], options?: TensorOptions): Tensor {
  return full(shape, 1, options);
}

function full(shape: number[], value: number, options: TensorOptions | undefined): Tensor {
  const dims = checkShape(shape);
  const opts = nativeOptions(options, 'options', 'float32');
  return new Tensor(callNative(() => native.Tensor.full(dims, value, opts)));
}

/** Samples from N(0, 1), drawn from the generator seeded by {@link manualSeed}. */
export function randn(shape: number[], options?: TensorOptions): Tensor {
  const dims = checkShape(shape);
  const opts = nativeOptions(options, 'options', 'float32');
  return new Tensor(callNative(() => native.Tensor.randn(dims, opts)));
}

/**
 * `[start, end)` in steps of `step`, like `torch.arange`. With one number, `arange(end)`
 * starts at 0. Integer arguments give `int64`, others `float32`, unless `options.dtype` says otherwise.
 */
export function arange(start: number, end?: number, step = 1, options?: TensorOptions): Tensor {
  const [from, to] = end === undefined ? [0, checkFiniteNumber(start, 'end')] : [checkFiniteNumber(start, 'start'), checkFiniteNumber(end, 'end')];
  checkFiniteNumber(step, 'step');
  if (step === 0 || Math.sign(to - from) * Math.sign(step) < 0) throw rangeError(`a step that moves from ${from} towards ${to}`, 'step', step);
  // As in PyTorch, integer bounds give int64 unless a dtype is asked for.
  const integral = [from, to, step].every(Number.isSafeInteger);
  const opts = nativeOptions(options, 'options', integral ? 'int64' : 'float32');
  return new Tensor(callNative(() => native.Tensor.arange(from, to, step, opts)));
}

/** Seeds LibTorch's default generator (weights init, randn, dropout), like `torch.manual_seed`. */
export function manualSeed(seed: number): void {
  native.Tensor.manualSeed(checkInteger(seed, 'seed', 0, 'a non-negative integer'));
}
