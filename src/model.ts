import { callNative, callNativeAsync, disposedError, TorchError } from './errors';
import { native, type NativeModel, type NativeTensor } from './native';
import { compilePattern, describePattern, type Pattern } from './patterns';
import { type Device, type Dtype, Tensor } from './tensor';
import { checkDevice, checkOptions, checkString, typeError } from './validate';

/** What a model's forward accepts: tensors, numbers, booleans, strings, and lists of tensors. */
export type ModelInput = Tensor | number | boolean | string | null | readonly ModelInput[];
/** What a model's forward returns: tuples and lists become arrays, dicts become objects. */
export type ModelOutput = Tensor | number | boolean | string | null | ModelOutput[] | { [key: string]: ModelOutput };

export interface ModuleInfo {
  /** Dotted path, as in Python (`layer1.0.conv1`); `''` is the model itself. */
  path: string;
  /** Class name without TorchScript's module path and mangling, e.g. `BatchNorm2d`. */
  type: string;
  /** Parameters in this module and below it. */
  params: number;
  /** Of those, the ones with `requiresGrad`. */
  trainable: number;
}

export interface TensorInfo {
  name: string;
  shape: number[];
  dtype: Dtype;
  numel: number;
}

export interface ParameterInfo extends TensorInfo {
  requiresGrad: boolean;
}

export interface LoadOptions {
  /** Where the weights are placed. Defaults to `'cpu'`. */
  device?: Device;
}

/** Maps output tensors to public Tensors, keeping arrays and objects. */
function wrapOutput(value: unknown): ModelOutput {
  if (Array.isArray(value)) return value.map(wrapOutput);
  if (value !== null && typeof value === 'object') {
    if (value instanceof native.Tensor) return new Tensor(value as NativeTensor);
    return Object.fromEntries(Object.entries(value).map(([key, item]) => [key, wrapOutput(item)]));
  }
  return value as ModelOutput;
}

function unwrapInput(value: ModelInput, name: string): unknown {
  if (value instanceof Tensor) return Tensor.handle(value);
  if (Array.isArray(value)) return value.map((item, i) => unwrapInput(item, `${name}[${i}]`));
  if (value === null || ['number', 'boolean', 'string'].includes(typeof value)) return value;
  throw typeError('a Tensor, number, boolean, string or an array of them', name, value);
}

function formatCount(n: number): string {
  return n.toLocaleString('en-US');
}

/**
 * A TorchScript model. Operations on one model run one at a time, in call order, on a
 * worker thread; the event loop never waits for LibTorch.
 */
export class Model implements Disposable, AsyncDisposable {
  #native: NativeModel | null;
  #queue: Promise<unknown> = Promise.resolve();
  #metadata: unknown;

  /** @internal Use {@link loadPretrained}. */
  constructor(handle: NativeModel) {
    this.#native = handle;
    const text = handle.info().metadata;
    this.#metadata = text === '' ? undefined : JSON.parse(text);
  }

  get #live(): NativeModel {
    if (this.#native === null) throw disposedError('Model');
    return this.#native;
  }

  /** Queues `op` behind earlier operations so calls never interleave on the native model. */
  #enqueue<T>(op: (handle: NativeModel) => Promise<T>): Promise<T> {
    const handle = this.#live;
    const run = this.#queue.then(() => op(handle));
    this.#queue = run.catch(() => undefined);
    return run;
  }

  /** Runs `forward` without recording gradients, like calling the model under `torch.no_grad()`. */
  forward<T extends ModelOutput = Tensor>(...inputs: ModelInput[]): Promise<T> {
    return callNativeAsync(async () => {
      const args = inputs.map((input, i) => unwrapInput(input, `inputs[${i}]`));
      return wrapOutput(await this.#enqueue((handle) => handle.forward(args))) as T;
    });
  }

  /** Moves parameters and buffers to `device`. */
  to(device: Device): Promise<this> {
    return callNativeAsync(async () => {
      const target = checkDevice(device, 'device');
      await this.#enqueue((handle) => handle.to(target));
      return this;
    });
  }

  /** Every submodule, depth first, starting with the model itself at path `''`. */
  modules(): ModuleInfo[] {
    const live = this.#live;
    return callNative(() => live.modules());
  }

  /** Parameters in definition order, optionally only those whose names match `pattern`. */
  parameters(pattern?: Pattern): ParameterInfo[] {
    const live = this.#live;
    const all = callNative(() => live.parameters()) as ParameterInfo[];
    if (pattern === undefined) return all;
    const matches = compilePattern(pattern);
    const selected = all.filter((p) => matches(p.name));
    if (selected.length === 0)
      throw new TorchError('TORCHLITE_NO_MATCH', `No parameter matches ${describePattern(pattern)}`);
    return selected;
  }

  /** Buffers (BatchNorm running statistics and the like) in definition order. */
  buffers(): TensorInfo[] {
    const live = this.#live;
    return callNative(() => live.buffers()) as TensorInfo[];
  }

  /** Parameters and buffers by name. The tensors share memory with the model; dispose them when done. */
  stateDict(): Record<string, Tensor> {
    const live = this.#live;
    const raw = callNative(() => live.stateDict());
    return Object.fromEntries(Object.entries(raw).map(([name, handle]) => [name, new Tensor(handle)]));
  }

  /** A table of modules with their parameter counts, and totals. */
  summary(): string {
    const rows = this.modules();
    const [total] = rows;
    const body = rows.slice(1).map((m) => [
      `${'  '.repeat(m.path.split('.').length - 1)}${m.path.split('.').pop()}`,
      m.type,
      formatCount(m.params),
      m.params === 0 ? '-' : m.trainable === m.params ? 'yes' : m.trainable === 0 ? 'no' : 'partly',
    ]);
    const header = ['path', 'type', 'params', 'trainable'];
    const widths = header.map((h, i) => Math.max(h.length, ...body.map((r) => r[i].length)));
    const line = (cells: string[]) =>
      cells.map((c, i) => (i === 2 ? c.padStart(widths[i]) : c.padEnd(widths[i]))).join('  ').trimEnd();
    const rule = '-'.repeat(widths.reduce((a, b) => a + b + 2, -2));
    return [
      `${total.type} (${this.isTraced ? 'traced' : 'scripted'}, ${this.device}, ${this.training ? 'train' : 'eval'} mode)`,
      line(header),
      rule,
      ...body.map(line),
      rule,
      `Total params:     ${formatCount(total.params)}`,
      `Trainable params: ${formatCount(total.trainable)}`,
      `Frozen params:    ${formatCount(total.params - total.trainable)}`,
    ].join('\n');
  }

  /** Switches dropout and normalisation layers to training behaviour (`on = false` is {@link Model.eval}). */
  train(on = true): this {
    if (typeof on !== 'boolean') throw typeError('a boolean', 'on', on);
    const live = this.#live;
    callNative(() => live.setTraining(on));
    return this;
  }

  /** Switches to inference behaviour. */
  eval(): this {
    return this.train(false);
  }

  get training(): boolean {
    return this.#live.info().training;
  }

  get device(): Device {
    return this.#live.info().device as Device;
  }

  /** Whether the archive came from `torch.jit.trace` rather than `torch.jit.script`. */
  get isTraced(): boolean {
    return this.#live.info().traced;
  }

  /** The JSON metadata saved with the model by torchlite, if any. */
  get metadata(): unknown {
    return this.#metadata;
  }

  get disposed(): boolean {
    return this.#native === null;
  }

  /**
   * Releases the model. Idempotent. Later calls throw `TORCHLITE_DISPOSED`; operations
   * already queued finish first, and the memory is freed after them.
   */
  dispose(): void {
    void this.#release();
  }

  #release(): Promise<void> {
    const handle = this.#native;
    this.#native = null;
    return this.#queue.then(() => handle?.dispose());
  }

  [Symbol.dispose](): void {
    this.dispose();
  }

  /** Waits for queued operations, then releases the model. */
  [Symbol.asyncDispose](): Promise<void> {
    return this.#release();
  }
}

/** Loads a TorchScript archive saved by `torch.jit.script(...).save()` or `torch.jit.trace(...).save()`. */
export function loadPretrained(path: string, options?: LoadOptions): Promise<Model> {
  return callNativeAsync(async () => {
    checkString(path, 'path');
    const { device = 'cpu' } = checkOptions<LoadOptions>(options, 'options', ['device']);
    const handle = await native.Model.load(path, checkDevice(device, 'options.device'));
    return new Model(handle);
  });
}
