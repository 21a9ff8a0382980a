// What crosses a model's boundary: batch inputs and method arguments unwrapped into native
// values, outputs wrapped into Tensors, arrays, objects and ScriptObjects.
import { callNative, callNativeAsync, disposedError } from '../errors';
import { native, type NativeInputs, type NativeScriptObject, type NativeTensor } from '../native';
import { Tensor } from '../tensor';
import { checkString, typeError } from '../validate';

/** @internal Queues a read (a ScriptObject's method) behind the operations of the model that made the object. */
export type ReadQueue = <T>(op: () => Promise<T>) => Promise<T>;

/**
 * One argument of a model's method: a Tensor, number, boolean, string or null; an array
 * (a `List` or `Tuple` argument); a {@link TensorList}; or a plain object (a `Dict[str, …]`
 * argument).
 */
export type ModelInput = Tensor | TensorList | ScriptObject | number | boolean | string | null | readonly ModelInput[] | { readonly [key: string]: ModelInput };

/**
 * A `List[Tensor]` argument, said explicitly. Where a batch's input is an array, its
 * elements are the model's positional arguments (`[ids, mask]`); to pass one list of
 * tensors as one argument, wrap it: `trainStep(tensorList([a, b]), y, …)`.
 */
export class TensorList {
  readonly tensors: readonly Tensor[];
  /** @internal Use {@link tensorList}. */
  constructor(tensors: readonly Tensor[]) {
    this.tensors = tensors;
  }
}

/** Wraps tensors as one `List[Tensor]` argument; see {@link TensorList}. */
export function tensorList(tensors: readonly Tensor[]): TensorList {
  if (!Array.isArray(tensors) || !tensors.every((t) => t instanceof Tensor)) throw typeError('an array of Tensors', 'tensors', tensors);
  return new TensorList([...tensors]);
}

/**
 * The input of one batch, as `trainStep`, `evaluate`, `predict`, `fit` and the loaders take
 * it:
 * - a Tensor: the model's one argument;
 * - an array: the model's positional arguments (`[ids, mask]` for `forward(ids, mask)`);
 *   inside it, a plain object is a `Dict[str, …]` argument;
 * - a plain object: arguments named as forward names them (`{ ids, mask }`); ones left out
 *   take forward's defaults;
 * - a {@link TensorList}: one `List[Tensor]` argument.
 */
export type BatchInput = Tensor | TensorList | readonly ModelInput[] | { readonly [name: string]: ModelInput };

/** What a model's forward returns: tuples and lists become arrays, dicts become objects, TorchScript class instances ScriptObjects. */
export type ModelOutput = Tensor | ScriptObject | number | boolean | string | null | ModelOutput[] | { [key: string]: ModelOutput };

/**
 * An instance of a TorchScript class (`@torch.jit.script class`) that a model's method
 * returned: call its methods, or pass it back into the model's methods
 * (`model.call('add_them', obj)`). Its methods run like `model.call`: on the model's lane,
 * without gradients.
 */
export class ScriptObject {
  readonly #native: NativeScriptObject;
  /** Where its calls queue: behind the operations of the model whose method made it. */
  readonly #queue: ReadQueue;
  #live = true;

  /** @internal */
  constructor(handle: NativeScriptObject, queue: ReadQueue) {
    this.#native = handle;
    this.#queue = queue;
  }

  /** @internal */
  static handle(object: ScriptObject): NativeScriptObject {
    if (!object.#live) throw disposedError('ScriptObject');
    return object.#native;
  }

  /** The TorchScript class's qualified name, e.g. `__torch__.MyPair`. */
  get type(): string {
    return callNative(() => ScriptObject.handle(this).type());
  }

  /** The names of the class's methods. */
  methods(): string[] {
    return callNative(() => ScriptObject.handle(this).methods());
  }

  /**
   * Calls one of the object's methods, queued as `model.call` is on the model that made the
   * object (so after operations called on it before); an unknown name is
   * `TORCHLITE_NO_SUCH_METHOD`, listing them.
   */
  call<T extends ModelOutput = ModelOutput>(method: string, ...inputs: ModelInput[]): Promise<T> {
    return callNativeAsync(async () => {
      checkString(method, 'method');
      const args = inputs.map((input, i) => unwrapInput(input, `inputs[${i}]`));
      const handle = ScriptObject.handle(this);
      return wrapOutput(await this.#queue(() => handle.call(method, args)), this.#queue) as T;
    });
  }

  /** Releases the object; idempotent. */
  dispose(): void {
    if (!this.#live) return;
    this.#live = false;
    this.#native.dispose();
  }

  [Symbol.dispose](): void {
    this.dispose();
  }
}

/** One batch for {@link Model.evaluate}. */
export interface Batch {
  input: BatchInput;
  /** A Tensor; for `loss.fromModel()`, any model input (a list of per-image dicts of tensors). */
  target: Tensor | ModelInput;
}

/** @internal Maps output tensors to public Tensors, keeping arrays and objects; ScriptObjects queue their calls on `queue`. */
export function wrapOutput(value: unknown, queue: ReadQueue): ModelOutput {
  if (Array.isArray(value)) return value.map((item) => wrapOutput(item, queue));
  if (value !== null && typeof value === 'object') {
    if (value instanceof native.Tensor) return new Tensor(value as NativeTensor);
    if (value instanceof native.ScriptObject) return new ScriptObject(value, queue);
    return Object.fromEntries(Object.entries(value).map(([key, item]) => [key, wrapOutput(item, queue)]));
  }
  return value as ModelOutput;
}

/** @internal */
export function unwrapInput(value: ModelInput, name: string): unknown {
  if (value instanceof Tensor) return Tensor.handle(value);
  if (value instanceof TensorList) return value.tensors.map((t) => Tensor.handle(t));
  if (value instanceof ScriptObject) return ScriptObject.handle(value);
  if (Array.isArray(value)) return value.map((item, i) => unwrapInput(item, `${name}[${i}]`));
  if (value === null || ['number', 'boolean', 'string'].includes(typeof value)) return value;
  // A plain object stands for a Dict[str, …] argument.
  if (typeof value === 'object' && Object.getPrototypeOf(value) === Object.prototype)
    return Object.fromEntries(Object.entries(value).map(([key, item]) => [key, unwrapInput(item as ModelInput, `${name}.${key}`)]));
  throw typeError('a Tensor, number, boolean, string, or an array or plain object of them', name, value);
}

/** @internal A batch input as the native calls take it: positional arguments (an array) or named ones (an object). */
export function batchArgs(input: BatchInput, name: string): unknown[] | Record<string, unknown> {
  if (Array.isArray(input)) return input.map((item, i) => unwrapInput(item, `${name}[${i}]`));
  if (input instanceof Tensor || input instanceof TensorList) return [unwrapInput(input, name)];
  if (input === null || typeof input !== 'object' || Object.getPrototypeOf(input) !== Object.prototype)
    throw typeError('a Tensor, an array of arguments, an object of named arguments or a TensorList', name, input);
  return unwrapInput(input as ModelInput, name) as Record<string, unknown>;
}

/** @internal Every tensor of a batch input, e.g. to dispose of them. */
export function inputTensors(input: BatchInput | ModelInput): Tensor[] {
  if (input instanceof Tensor) return [input];
  if (input instanceof TensorList) return [...input.tensors];
  if (Array.isArray(input)) return input.flatMap(inputTensors);
  if (input !== null && typeof input === 'object') return Object.values(input).flatMap(inputTensors);
  return [];
}

/** @internal Frees a batch's tensors. */
export function disposeBatch(batch: Batch): void {
  for (const t of [...inputTensors(batch.input), ...inputTensors(batch.target)]) t.dispose();
}

/**
 * @internal A training batch as the native step takes it: the model's arguments, and the
 * target tensor; for a loss the model computes itself, the targets join the arguments (the
 * last positional one, or `argument` for named inputs) and no target goes beside them.
 */
export function stepBatch(input: BatchInput, target: Tensor | ModelInput, names: [string, string], fromModel: { argument: string } | undefined): [NativeInputs, NativeTensor | null] {
  const args = batchArgs(input, names[0]);
  if (!fromModel) return [args, Tensor.handle(target as Tensor)];
  const targets = unwrapInput(target, names[1]);
  return [Array.isArray(args) ? [...args, targets] : { ...args, [fromModel.argument]: targets }, null];
}
