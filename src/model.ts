import { callNative, callNativeAsync, disposedError, TorchError } from './errors';
import { native, type NativeGroupOptions, type NativeInputs, type NativeModel, type NativeOptimizer, type NativeProcessGroup, type NativeScriptObject, type NativeSync, type NativeTensor } from './native';
import { Loss } from './loss';
import { MetricAccumulator, type Metrics, type MetricSpec } from './metrics';
import { dropout as dropoutLayer, kLayerSpec, type Layer, type LayerSpec, linear, sequential, specOf } from './nn';
import type { Optimizer } from './optim';
import { compilePattern, describePattern, type Pattern } from './patterns';
import { classNamesOf } from './preprocess';
import { describeMismatch, type LoadWeightsResult, matchWeights, readWeightsIndex, safetensorsHeader } from './weights';
import { type HubModel, hubModel, type ZooMetadata, zooPath, zooWeightsFile } from './zoo';
import type { Loader } from './data/loader';
import { type Device, type Dtype, ones, Tensor, zeros } from './tensor';
import { checkDevice, checkFiniteNumber, checkOneOf, checkOptions, checkPositiveInteger, checkString, rangeError, typeError } from './validate';

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
  /** The model whose method made it: its calls queue behind that model's operations. */
  readonly #owner: Model;
  #live = true;

  /** @internal */
  constructor(handle: NativeScriptObject, owner: Model) {
    this.#native = handle;
    this.#owner = owner;
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
      return wrapOutput(await Model.enqueue(this.#owner, () => handle.call(method, args), true), this.#owner) as T;
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

/** A method of a model (see {@link Model.methods}). */
export interface MethodInfo {
  name: string;
  /** Its arguments after `self`: name, TorchScript type (`Tensor`, `Dict[str, Tensor]`, `float`, …) and default, as written. */
  arguments: { name: string; type: string; default?: string }[];
  /** Its return type (a tuple's as `(T1, T2)`). */
  returns: string;
}

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

/** Options of {@link Model.loadWeights}. */
export interface LoadWeightsOptions {
  /**
   * Every parameter and buffer of the model must be in the file with its shape, and nothing
   * else: else a `TORCHLITE_WEIGHTS_MISMATCH` error names the missing, unexpected and
   * mis-shaped tensors and nothing is loaded. `false` loads what matches and reports the rest,
   * which is how a pretrained body gets a new head. Defaults to `true`.
   */
  strict?: boolean;
  /** Keeps each tensor's dtype from the file (float16, bfloat16) instead of converting to the model's. Defaults to `false`. */
  keepDtype?: boolean;
  /** Maps a file's tensor names to the model's (a prefix added or dropped); a tensor it maps to `undefined` is skipped. Defaults to none. */
  rename?: (name: string) => string | undefined;
}

/** Parameter element counts after a freeze, unfreeze or requiresGrad call. */
export interface FreezeResult {
  trainable: number;
  frozen: number;
}

/**
 * `'frozen-eval'` keeps a BatchNorm layer whose parameters are all frozen in eval mode
 * (running statistics untouched) even while the model trains; `'eval'` keeps every
 * BatchNorm layer so (its scale and shift still train), as Keras advises for fine-tuning on
 * small batches; `'train'` lets every layer follow the model.
 */
export const BATCH_NORM_POLICIES = ['frozen-eval', 'eval', 'train'] as const;
export type BatchNormPolicy = (typeof BATCH_NORM_POLICIES)[number];

export interface ResetClassifierOptions {
  /** Dropout probability put in front of the new Linear; `0` adds no dropout layer. Defaults to `0`. */
  dropout?: number;
}

export interface SaveOptions {
  /** Any JSON (class names, preprocessing, recipe), stored in the archive and read back as `model.metadata`. Defaults to the model's current metadata. */
  metadata?: unknown;
}

// Where classifier heads live in common architectures (torchvision, timm), checked in order.
const HEAD_PATHS = ['fc', 'classifier', 'head', 'heads.head', 'heads', 'head.fc', 'last_linear'];

/**
 * @internal How a trainStep reaches an optimizer without model.ts importing optim.ts:
 * the optimizer binds to the model and hands over its native handle and its group
 * options as they are now (they travel with the job, so later writes keep call order).
 */
export const kStepOptimizer = Symbol('torchlite.stepOptimizer');

/**
 * @internal How distributed.ts makes a model data-parallel without model.ts importing it:
 * the group its updates sync over, and a place in the group's order of collectives.
 */
export const kDataParallel = Symbol('torchlite.dataParallel');

/** @internal */
export interface DataParallelLink {
  group: NativeProcessGroup;
  broadcastBuffers: boolean;
  overlap: boolean;
  bucketBytes: number;
  turn(): { ready: Promise<void>; release(): void };
  /** The parameters changed on this rank since rank 0's were last broadcast. */
  stale: boolean;
}

/**
 * @internal A batch source sharded over ranks (a distributed loader): `evaluate` adds its
 * sums up over them, in the group's order of collectives.
 */
export const kShardGroup = Symbol('torchlite.shardGroup');

/** @internal */
export interface ShardGroup {
  turn(): { ready: Promise<void>; release(): void };
  reduce(values: Float64Array, op: 'sum' | 'max'): Promise<Float64Array>;
}

/**
 * @internal fit's windows: each step's group options in a `trainSteps` call, read off the
 * schedule ahead of the job (a key the public options cannot carry).
 */
export const kStepGroups = Symbol('torchlite.stepGroups');

/** @internal */
export interface StepOptimizer {
  [kStepOptimizer](model: Model): { handle: NativeOptimizer; groups: NativeGroupOptions[] };
}

function isStepOptimizer(value: unknown): value is StepOptimizer {
  return typeof (value as Partial<StepOptimizer> | null)?.[kStepOptimizer] === 'function';
}

/** What the synchronous getters read: native facts copied when the model is idle. */
interface Snapshot {
  training: boolean;
  traced: boolean;
  device: Device;
  bnPolicy: BatchNormPolicy;
  modules: ModuleInfo[];
  methods: MethodInfo[];
  parameters: ParameterInfo[];
  buffers: TensorInfo[];
}

export interface TrainStepOptions {
  /** The loss to minimise. */
  loss: Loss;
  /** The optimizer to step; one made from patterns binds to this model now. */
  optimizer: Optimizer;
  /** Clips the total gradient norm (over the optimizer's parameters) to this value. Defaults to no clipping. */
  clipGradNorm?: number;
  /**
   * Micro-batches per optimizer update: each loss is divided by this and the update
   * runs on every `accumulate`-th call (`optimizer.flush(accumulate)` applies a partial window). Defaults to `1`.
   */
  accumulate?: number;
  /** Mixed precision: `'bf16'` (CPU or CUDA) or `'fp16'` (CUDA, with a dynamic loss scale). Defaults to full precision. */
  amp?: 'bf16' | 'fp16';
  /** What a NaN or infinite loss does: `'skip'` the step and report it, or `'throw'` a `TORCH_NONFINITE_LOSS`. Defaults to `'skip'`. */
  nonFinite?: 'skip' | 'throw';
  /**
   * Read the loss back now. `false` keeps the step asynchronous on a GPU (no host sync):
   * `loss` is NaN, and the next step that reads returns the mean since the last read;
   * non-finite losses are noticed only then. Defaults to `true`.
   */
  readLoss?: boolean;
}

export interface TrainStepResult {
  /** The batch loss (before division for accumulation); NaN when not read. */
  loss: number;
  /** How many steps `loss` averages, when earlier steps did not read theirs. */
  lossSteps?: number;
  /** Correct top-1 predictions in the batch, for class-index targets. */
  correct?: number;
  /** True when a non-finite loss (or an fp16 overflow) skipped the update. */
  skipped: boolean;
  /** True when this call applied an optimizer update (false while accumulating). */
  stepped: boolean;
  /** The total gradient norm before clipping, when `clipGradNorm` is set. */
  gradNorm?: number;
}

/** One batch for {@link Model.evaluate}. */
export interface Batch {
  input: BatchInput;
  target: Tensor;
}

export interface EvaluateOptions {
  /** Reports the mean loss over all samples. Defaults to no loss. */
  loss?: Loss;
  /** Metrics to compute. Defaults to `['accuracy']` with a classification loss, else none. */
  metrics?: MetricSpec[];
}

export interface Prediction {
  /** Softmax over dimension 1. */
  probabilities: Tensor;
  /** The most likely class of each sample (int64). */
  argmax: Tensor;
}

export interface LoadOptions {
  /** Where the weights are placed. Defaults to `'cpu'`. */
  device?: Device;
  /**
   * The memory layout of 4-D weights and inputs. `'auto'` picks channels-last (NHWC) on the
   * CPU for models with 4-D weights (convolutions), which oneDNN trains faster than NCHW
   * (measured: the shipped CNN 1.3-1.4x, MobileNetV3 1.3x, ResNet-18 1.05x); a model whose
   * graph cannot run in NHWC (a `view()` of a convolution's output) goes back to NCHW on its
   * first forward, with the same result as if it had never tried; so does a model with a layer
   * oneDNN cannot train in NHWC (a 1x1 convolution with stride > 1 over a channel count that
   * is not a multiple of 16: its weight gradient corrupts memory inside LibTorch), on its first
   * training step on the CPU; moving the model to a GPU turns an automatic choice off.
   * `true`/`false` force it (as `model.channelsLast(on)` does later; `true` fails such a
   * model's CPU training steps with `TORCHLITE_UNSAFE_LAYOUT`). Saved files hold NCHW weights
   * either way.
   * Defaults to `'auto'`.
   */
  channelsLast?: boolean | 'auto';
  /**
   * For a zoo model (`'torchvision:resnet50'`): `'none'` (PyTorch's default initialisation of
   * each layer, drawn from the generator `manualSeed` seeds), a torchvision weights name such
   * as `'IMAGENET1K_V2'` or `'DEFAULT'` (read from torch.hub's cache, `$TORCH_HOME/hub/checkpoints`,
   * downloaded there when missing), or a `.safetensors` or `.pth` file. Ignored for a TorchScript
   * file. Defaults to `'DEFAULT'`.
   */
  weights?: string;
}

/** Maps output tensors to public Tensors, keeping arrays and objects. */
function wrapOutput(value: unknown, owner: Model): ModelOutput {
  if (Array.isArray(value)) return value.map((item) => wrapOutput(item, owner));
  if (value !== null && typeof value === 'object') {
    if (value instanceof native.Tensor) return new Tensor(value as NativeTensor);
    if (value instanceof native.ScriptObject) return new ScriptObject(value, owner);
    return Object.fromEntries(Object.entries(value).map(([key, item]) => [key, wrapOutput(item, owner)]));
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
  for (const t of [...inputTensors(batch.input), batch.target]) t.dispose();
}

function formatCount(n: number): string {
  return n.toLocaleString('en-US');
}

/**
 * A TorchScript model. Everything done to a model happens in call order:
 *
 * - **Queued** (run one at a time, off the event loop): `forward`, `predict`,
 *   `evaluate`, `trainStep`, `trainSteps`, `save`, `to`, and an optimizer's `flush`.
 * - **Queued behind them, returning at once**: `train`/`eval`, `freeze`/`unfreeze`/
 *   `requiresGrad`, `bnPolicy = …` and `channelsLast`. They apply when the operations
 *   called before them are done; the getters show their effect straight away.
 * - **Refused while operations are pending**, with `TORCHLITE_MODEL_BUSY` (await them
 *   first, e.g. `await model.idle()`): `replace`, `resetClassifier`, `stateDict`,
 *   `loadStateDict`, and an optimizer's `addParamGroup`, `stateDict` and `loadStateDict`.
 * - **Never blocking**: `training`, `device`, `isTraced`, `bnPolicy`, `metadata`,
 *   `modules()`, `parameters()`, `buffers()` and `summary()` read a snapshot kept in JS.
 */
export class Model implements Disposable, AsyncDisposable {
  #native: NativeModel | null;
  #lastWrite: Promise<unknown> = Promise.resolve();
  #reads: Promise<unknown>[] = [];
  #pending = 0;
  #metadata: unknown;
  #snapshot!: Snapshot;
  #warnedEvalStep = false;
  #parallel: DataParallelLink | null = null;

  /** @internal Use {@link loadPretrained}. */
  constructor(handle: NativeModel) {
    this.#native = handle;
    const { warnings, metadata } = handle.info();
    for (const warning of warnings) process.emitWarning(warning, { code: 'TORCHLITE_TRACED' });
    try {
      this.#metadata = metadata === '' ? undefined : JSON.parse(metadata);
    } catch {
      handle.dispose();
      throw new TorchError('TORCHLITE_CORRUPT_FILE', 'the archive\'s torchlite.json metadata is not valid JSON');
    }
    this.#refresh(handle);
  }

  /** @internal The native handle, for other torchlite modules. */
  static handle(model: Model): NativeModel {
    if (model.#native === null) throw disposedError('Model');
    return model.#native;
  }

  /** @internal The native handle for a synchronous method that must not overtake queued work. */
  static idleHandle(model: Model, what: string): NativeModel {
    const handle = Model.handle(model);
    if (model.#pending > 0)
      throw new TorchError(
        'TORCHLITE_MODEL_BUSY',
        `${what} cannot run while the model has ${model.#pending} operation${model.#pending === 1 ? '' : 's'} pending; await them first (e.g. \`await model.idle()\`)`,
      );
    return handle;
  }

  get #live(): NativeModel {
    return Model.handle(this);
  }

  /** @internal Queues work that touches this model (an optimizer flush, a ScriptObject's method) behind its other operations. */
  static enqueue<T>(model: Model, op: (handle: NativeModel) => Promise<T>, read = false): Promise<T> {
    return model.#enqueue(op, read);
  }

  /**
   * Queues `op` behind the operations called before it. Consecutive inference operations
   * (`read`) do not wait for each other: they reach their lane together and run back to
   * back there, in call order, so a server's requests are not each held up by a training
   * step on a shared lane. Any other operation waits for everything before it.
   */
  #enqueue<T>(op: (handle: NativeModel) => Promise<T>, read = false): Promise<T> {
    const handle = this.#live;
    this.#pending += 1;
    const before = read ? this.#lastWrite : this.#everything();
    const run = before.then(() => op(handle));
    // Registered before the caller's own reaction, so `pending` is down when it resumes.
    const done = () => {
      this.#pending -= 1;
    };
    const settled = run.then(done, done);
    if (read) {
      this.#reads.push(settled);
      void settled.then(() => {
        const at = this.#reads.indexOf(settled);
        if (at >= 0) this.#reads.splice(at, 1);
      });
    } else {
      this.#lastWrite = settled;
      this.#reads = [];
    }
    return run;
  }

  /**
   * Queues a training operation; on a data-parallel model it also takes its place in the
   * group's order of collectives now, at the call, and first re-broadcasts rank 0's
   * parameters if they changed since. `op` gets how to sync, for the native job.
   */
  #enqueueStep<T>(op: (handle: NativeModel, sync?: NativeSync) => Promise<T>): Promise<T> {
    const link = this.#parallel;
    if (link === null) return this.#enqueue((handle) => op(handle));
    const turn = link.turn();
    return this.#enqueueInTurn(turn, async (handle) => {
      await turn.ready;
      if (link.stale) {
        await link.group.broadcastModel(handle);
        link.stale = false;
      }
      return op(handle, { group: link.group, buffers: link.broadcastBuffers, overlap: link.overlap, bucketBytes: link.bucketBytes });
    });
  }

  /**
   * Queues `op`, which holds a place in a group's order of collectives (taken at the call,
   * awaited by `op` where its collective starts): the place is given up however `op` ends,
   * or at once if queueing fails, so the group's later collectives never wait on it forever.
   */
  #enqueueInTurn<T>(turn: { release(): void }, op: (handle: NativeModel) => Promise<T>, read = false): Promise<T> {
    try {
      return this.#enqueue(async (handle) => {
        try {
          return await op(handle);
        } finally {
          turn.release();
        }
      }, read);
    } catch (error) {
      turn.release();
      throw error;
    }
  }

  /** @internal See {@link DataParallelLink}; the broadcast of rank 0's parameters is queued now. */
  [kDataParallel](link: DataParallelLink): void {
    this.#parallel = link;
    link.stale = true;
    void this.#enqueueStep(async () => undefined).catch(() => undefined);
  }

  /** @internal Queues an optimizer update (a flush) as a training operation. */
  static enqueueStep<T>(model: Model, op: (handle: NativeModel, sync?: NativeSync) => Promise<T>): Promise<T> {
    return model.#enqueueStep(op);
  }

  /** Settles when everything called so far has. */
  #everything(): Promise<unknown> {
    return this.#reads.length === 0 ? this.#lastWrite : Promise.all([this.#lastWrite, ...this.#reads]);
  }

  /** Runs a cheap native change now when the model is idle, else queued behind pending work. */
  #apply(change: (handle: NativeModel) => void): void {
    const handle = this.#live;
    if (this.#pending === 0) callNative(() => change(handle));
    else void this.#enqueue(async (h) => change(h)).catch(() => undefined);
  }

  #refresh(handle: NativeModel): void {
    const info = handle.info();
    this.#snapshot = {
      training: info.training,
      traced: info.traced,
      device: info.device as Device,
      bnPolicy: info.bnPolicy as BatchNormPolicy,
      modules: handle.modules(),
      methods: handle.methods(),
      parameters: handle.parameters() as ParameterInfo[],
      buffers: handle.buffers() as TensorInfo[],
    };
  }

  /** Resolves when every operation called so far has settled (whether it succeeded or not). */
  async idle(): Promise<void> {
    while (this.#pending > 0) await this.#everything();
  }

  /** How many operations are queued or running on this model. */
  get pending(): number {
    return this.#pending;
  }

  /** Runs `forward` without recording gradients (like `torch.no_grad()`) and returns its outputs. Runs ahead of queued training on the same device. */
  forward<T extends ModelOutput = Tensor>(...inputs: ModelInput[]): Promise<T> {
    return callNativeAsync(async () => {
      const args = inputs.map((input, i) => unwrapInput(input, `inputs[${i}]`));
      return wrapOutput(await this.#enqueue((handle) => handle.forward(args), true), this) as T;
    });
  }

  /**
   * @internal A frozen copy in eval mode, optimised for inference as
   * `torch.jit.optimize_for_inference` does (BatchNorm folded into the convolutions), sharing
   * nothing with this model; fineTune's feature cache runs the frozen body through it.
   * `undefined` unless it gives this model's output on `probe` and on its first sample
   * (within 1e-4, without a LibTorch warning): freezing fails for some modules and its
   * passes get others wrong.
   */
  inferenceCopy(probe: Tensor): Promise<Model | undefined> {
    return callNativeAsync(async () => {
      const copy = await this.#enqueue((handle) => handle.inferenceCopy(Tensor.handle(probe)), true);
      return copy === null ? undefined : new Model(copy);
    });
  }

  /**
   * Calls an exported method other than forward (`@torch.jit.export`), e.g.
   * `model.call('generate', { ids, mask })`: a plain object is a `Dict[str, …]` argument, and
   * dict results come back as objects. Runs like `forward`: without gradients, in the model's
   * current mode. An unknown name is `TORCHLITE_NO_SUCH_METHOD`, listing the exported ones.
   */
  call<T extends ModelOutput = ModelOutput>(method: string, ...inputs: ModelInput[]): Promise<T> {
    return callNativeAsync(async () => {
      checkString(method, 'method');
      const args = inputs.map((input, i) => unwrapInput(input, `inputs[${i}]`));
      return wrapOutput(await this.#enqueue((handle) => handle.call(method, args), true), this) as T;
    });
  }

  /**
   * Forward, loss, backward, gradient clipping, optimizer step and grad reset in one
   * native job. Runs in the model's current mode: call `train()` first (a step in eval
   * mode emits a `TORCHLITE_EVAL_MODE_STEP` warning, once per model). The optimizer's
   * group options (lr, …) are taken as they are at the call.
   */
  trainStep(input: BatchInput, target: Tensor, options: TrainStepOptions): Promise<TrainStepResult> {
    return callNativeAsync(async () => {
      const step = this.#stepOptions(options);
      const batch: [NativeInputs, NativeTensor] = [batchArgs(input, 'input'), Tensor.handle(target)];
      const [result] = await this.#enqueueStep((handle, sync) => handle.trainStep([batch], { ...step, sync }));
      return result;
    });
  }

  /**
   * Several train steps in one native job, in order, with the same options. For small,
   * overhead-bound models this removes the per-call thread hand-off; lrs stay as they are
   * for the whole call (step schedulers between calls). Inference waiting on the same
   * device runs between two steps.
   */
  trainSteps(batches: readonly Batch[], options: TrainStepOptions): Promise<TrainStepResult[]> {
    return callNativeAsync(async () => {
      if (!Array.isArray(batches) || batches.length === 0) throw typeError('a non-empty array of { input, target } batches', 'batches', batches);
      const step = this.#stepOptions(options);
      const work = batches.map((b, i): [NativeInputs, NativeTensor] => [batchArgs(b?.input, `batches[${i}].input`), Tensor.handle(b?.target)]);
      return this.#enqueueStep((handle, sync) => handle.trainStep(work, { ...step, sync }));
    });
  }

  #stepOptions(options: TrainStepOptions): Record<string, unknown> {
    if (!this.#snapshot.training && !this.#warnedEvalStep) {
      this.#warnedEvalStep = true;
      process.emitWarning('trainStep() on a model in eval mode: dropout is off and BatchNorm neither uses batch statistics nor updates its running ones. Call model.train() first (this warning is shown once per model).', { code: 'TORCHLITE_EVAL_MODE_STEP' });
    }
    const o = checkOptions<TrainStepOptions>(options, 'options', ['loss', 'optimizer', 'clipGradNorm', 'accumulate', 'amp', 'nonFinite', 'readLoss']);
    if (!(o.loss instanceof Loss)) throw typeError('a Loss from `loss.*`', 'options.loss', o.loss);
    if (!isStepOptimizer(o.optimizer)) throw typeError('an Optimizer from `optim.*`', 'options.optimizer', o.optimizer);
    const { handle, groups } = o.optimizer[kStepOptimizer](this);
    const step: Record<string, unknown> = {
      loss: o.loss.spec,
      optimizer: handle,
      groups,
      accumulate: o.accumulate === undefined ? 1 : checkPositiveInteger(o.accumulate, 'options.accumulate'),
      nonFinite: o.nonFinite === undefined ? 'skip' : checkOneOf(o.nonFinite, 'options.nonFinite', ['skip', 'throw'] as const),
    };
    if (o.clipGradNorm !== undefined) {
      step.clipGradNorm = checkFiniteNumber(o.clipGradNorm, 'options.clipGradNorm');
      if ((step.clipGradNorm as number) <= 0) throw rangeError('a positive number', 'options.clipGradNorm', o.clipGradNorm);
    }
    if (o.amp !== undefined) step.amp = checkOneOf(o.amp, 'options.amp', ['bf16', 'fp16'] as const);
    if (o.readLoss !== undefined) {
      if (typeof o.readLoss !== 'boolean') throw typeError('a boolean', 'options.readLoss', o.readLoss);
      step.readLoss = o.readLoss;
    }
    const perStep = (options as { [kStepGroups]?: NativeGroupOptions[][] })[kStepGroups];
    if (perStep) step.groupsPerStep = perStep;
    return step;
  }

  /**
   * Runs batches in eval mode without gradients (the mode is restored after) and
   * returns the mean loss and the metrics. The whole pass is one queued operation, so
   * operations called after it see none of it half-done; `batches` must not wait on
   * this model's own queue.
   */
  evaluate(batches: Iterable<Batch> | AsyncIterable<Batch>, options?: EvaluateOptions): Promise<Metrics> {
    return callNativeAsync(async () => {
      const o = checkOptions<EvaluateOptions>(options, 'options', ['loss', 'metrics']);
      if (o.loss !== undefined && !(o.loss instanceof Loss)) throw typeError('a Loss from `loss.*`', 'options.loss', o.loss);
      const classification = o.loss === undefined || o.loss.classifies;
      const specs = o.metrics ?? (o.loss && classification ? (['accuracy'] as MetricSpec[]) : []);
      if (!Array.isArray(specs)) throw typeError('an array of metrics', 'options.metrics', specs);
      specs.forEach((spec, i) => {
        if (typeof spec === 'object' && spec !== null && 'topK' in spec) checkPositiveInteger(spec.topK, `options.metrics[${i}].topK`);
        else checkOneOf(spec, `options.metrics[${i}]`, ['accuracy', 'f1', 'confusionMatrix', 'mae', 'mse'] as const);
      });
      if (batches === null || typeof batches !== 'object' || !(Symbol.iterator in batches || Symbol.asyncIterator in batches))
        throw typeError('an iterable of { input, target } batches', 'batches', batches);
      checkSameClasses(this, (batches as Partial<Loader<BatchInput>>).dataset?.classes);
      const metrics = new MetricAccumulator(specs);
      const lossSpec = o.loss?.spec ?? null;
      const shard = (batches as Partial<Record<typeof kShardGroup, ShardGroup>>)[kShardGroup];
      const turn = shard?.turn();
      const pass = async (handle: NativeModel): Promise<Metrics> => {
        let lossSum = 0;
        let samples = 0;
        let classes = 0;
        for await (const batch of batches) {
          const args = batchArgs(batch.input, 'batch.input');
          const padding = (batch as { padding?: number }).padding ?? 0;
          const keep = padding > 0 ? batch.target.shape[0] - padding : undefined;
          const { scores, shape, targets, loss } = await handle.evalBatch(args, Tensor.handle(batch.target), lossSpec, keep);
          const n = shape[0] ?? 1;
          if (loss !== undefined) lossSum += loss * n;
          samples += n;
          classes = Math.max(classes, shape[1] ?? 1);
          if (specs.length > 0 && n > 0) metrics.add(scores, targets!, shape[1] ?? 1);
        }
        if (shard && turn) {
          // Every rank's sums, padding left out: the metrics of the whole dataset.
          await turn.ready;
          classes = (await shard.reduce(Float64Array.of(classes), 'max'))[0];
          const sums = await shard.reduce(Float64Array.of(lossSum, samples, ...metrics.sums(classes)), 'sum');
          [lossSum, samples] = sums;
          metrics.setSums(sums.subarray(2), classes);
        }
        if (samples === 0) throw new RangeError('Expected at least one batch for `batches` but received none');
        return { ...(o.loss && { loss: lossSum / samples }), ...metrics.result() };
      };
      return turn ? this.#enqueueInTurn(turn, pass, true) : this.#enqueue(pass, true);
    });
  }

  /** Class probabilities (softmax over dimension 1) and the argmax, computed in eval mode ahead of queued training. */
  predict(input: BatchInput): Promise<Prediction> {
    return callNativeAsync(async () => {
      const args = batchArgs(input, 'input');
      const { probabilities, argmax } = await this.#enqueue((handle) => handle.predict(args), true);
      return { probabilities: new Tensor(probabilities), argmax: new Tensor(argmax) };
    });
  }

  /**
   * Keeps 4-D weights, and 4-D inputs on their way in, in channels-last (NHWC) layout,
   * which oneDNN and cuDNN run faster for many CNNs (on the CPU it is the default: see
   * `LoadOptions.channelsLast`); `false` goes back to NCHW. Outputs are unchanged. Queued
   * behind pending operations.
   */
  channelsLast(on = true): this {
    if (typeof on !== 'boolean') throw typeError('a boolean', 'on', on);
    this.#apply((handle) => handle.setChannelsLast(on));
    return this;
  }

  /** Moves parameters and buffers to `device`. */
  to(device: Device): Promise<this> {
    return callNativeAsync(async () => {
      const target = checkDevice(device, 'device');
      await this.#enqueue(async (handle) => {
        await handle.to(target);
        this.#snapshot.device = handle.info().device as Device;
      });
      return this;
    });
  }

  /**
   * The methods `forward` and `call` can run (forward and `@torch.jit.export` methods), with
   * their arguments' names, TorchScript types and defaults, and their return type, as
   * TorchScript's schema gives them.
   */
  methods(): MethodInfo[] {
    this.#live;
    return this.#snapshot.methods.map((m) => ({ ...m, arguments: m.arguments.map((a) => ({ ...a })) }));
  }

  /** Every submodule, depth first, starting with the model itself at path `''`. */
  modules(): ModuleInfo[] {
    this.#live;
    return this.#snapshot.modules.map((m) => ({ ...m }));
  }

  /** Parameters in definition order, optionally only those whose names match `pattern`. */
  parameters(pattern?: Pattern): ParameterInfo[] {
    this.#live;
    const all = this.#snapshot.parameters.map((p) => ({ ...p, shape: [...p.shape] }));
    if (pattern === undefined) return all;
    const matches = compilePattern(pattern);
    const selected = all.filter((p) => matches(p.name));
    if (selected.length === 0)
      throw new TorchError('TORCHLITE_NO_MATCH', `No parameter matches ${describePattern(pattern)}`);
    return selected;
  }

  /** Buffers (BatchNorm running statistics and the like) in definition order. */
  buffers(): TensorInfo[] {
    this.#live;
    return this.#snapshot.buffers.map((b) => ({ ...b, shape: [...b.shape] }));
  }

  /**
   * Parameters and buffers by name. The tensors share memory with the model; dispose them
   * when done. Refused while operations are pending (their values would be mid-update).
   */
  stateDict(): Record<string, Tensor> {
    const live = Model.idleHandle(this, 'stateDict()');
    const raw = callNative(() => live.stateDict());
    return Object.fromEntries(Object.entries(raw).map(([name, handle]) => [name, new Tensor(handle)]));
  }

  /**
   * Copies parameters and buffers from `dict` (as {@link Model.stateDict} returns) by name.
   * With `strict` (the default) every parameter and buffer must be present; nothing is
   * copied unless all names and shapes match. Refused while operations are pending.
   */
  loadStateDict(dict: Record<string, Tensor>, options?: { strict?: boolean }): void {
    const { strict = true } = checkOptions<{ strict?: boolean }>(options, 'options', ['strict']);
    if (dict === null || typeof dict !== 'object') throw typeError('a record of Tensors', 'dict', dict);
    const handles = Object.fromEntries(Object.entries(dict).map(([name, t]) => [name, Tensor.handle(t)]));
    const live = Model.idleHandle(this, 'loadStateDict()');
    callNative(() => live.loadStateDict(handles, strict === true));
    if (this.#parallel) this.#parallel.stale = true;
  }

  /**
   * Draws every parameter afresh as PyTorch's constructors would from the shapes alone
   * (kaiming-uniform weights with their biases, normalisation weights 1 and biases 0) and
   * resets normalisation statistics (running variances 1, means and counts 0; other buffers,
   * such as a text model's position ids, are kept): the same network, untrained, for
   * a from-scratch baseline. Draws from the generator seeded by `manualSeed`. Refused
   * while operations are pending.
   */
  resetParameters(): void {
    Model.idleHandle(this, 'resetParameters()');
    const params = this.#snapshot.parameters;
    const names = new Set(params.map((p) => p.name));
    const fresh: Record<string, Tensor> = {};
    try {
      for (const p of params) {
        if (p.shape.length < 2) continue;
        const prefix = p.name.slice(0, -'weight'.length);
        const init = callNative(() => native.initLayerParameters(p.shape, names.has(`${prefix}bias`)));
        fresh[p.name] = new Tensor(init.weight);
        if (init.bias) fresh[`${prefix}bias`] = new Tensor(init.bias);
      }
      for (const p of params) if (!(p.name in fresh)) fresh[p.name] = (p.name.endsWith('weight') ? ones : zeros)(p.shape, { dtype: p.dtype });
      // Only normalisation statistics are state to forget; other buffers are constants of the
      // architecture (a text model's position ids, an attention mask) that zeros would break.
      for (const b of this.#snapshot.buffers)
        if (/(^|\.)(running_mean|running_var|num_batches_tracked)$/.test(b.name)) fresh[b.name] = (b.name.endsWith('running_var') ? ones : zeros)(b.shape, { dtype: b.dtype });
      this.loadStateDict(fresh, { strict: false });
    } finally {
      for (const t of Object.values(fresh)) t.dispose();
    }
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

  /**
   * Puts `module` at `path` (`fc`, `classifier.3`, `layer1.0.conv1`): a native layer, an
   * `nn.sequential`, `nn.identity()`, or another loaded model (copied in; it must be
   * idle). The new parameters are trainable and on the model's device. Siblings that
   * share the replaced module's class keep working. Refused while operations are pending.
   */
  replace(path: string, module: Layer | Model): this {
    checkString(path, 'path');
    const spec = this.#specOf(module, 'module');
    const live = Model.idleHandle(this, 'replace()');
    try {
      callNative(() => live.replace(path, spec));
      if (this.#parallel) this.#parallel.stale = true;
    } finally {
      this.#refresh(live);
    }
    return this;
  }

  /** @internal This model as a module to copy into another (`replace`, `nn.sequential`). */
  [kLayerSpec](): LayerSpec {
    return { kind: 'model', tensors: {}, model: this.#live, source: this };
  }

  /**
   * The spec of `module`, refusing this model itself anywhere inside it (copying it would
   * wait on its own lock) and models with operations pending (the copy would overtake them).
   */
  #specOf(module: unknown, name: string): LayerSpec {
    const spec = specOf(module, name);
    const models = (s: LayerSpec): Model[] => [...(s.source instanceof Model ? [s.source] : []), ...(s.children ?? []).flatMap(models)];
    for (const model of models(spec)) {
      if (model === this) throw new TorchError('TORCHLITE_BAD_ARGUMENT', 'A model cannot be put inside itself; load a second copy to use it as a module');
      Model.idleHandle(model, 'Copying a model into another');
    }
    return spec;
  }

  /**
   * Replaces the final classifier Linear (`fc`, the last Linear of `classifier`, `head`,
   * `heads.head`, …) by a fresh `nn.linear(inFeatures, numClasses)`, optionally behind
   * dropout, like timm's `reset_classifier`. Returns the path it replaced. Refused while
   * operations are pending.
   */
  resetClassifier(numClasses: number, options?: ResetClassifierOptions): string {
    checkPositiveInteger(numClasses, 'numClasses');
    const { dropout = 0 } = checkOptions<ResetClassifierOptions>(options, 'options', ['dropout']);
    checkFiniteNumber(dropout, 'options.dropout');
    if (dropout < 0 || dropout >= 1) throw rangeError('a probability in [0, 1)', 'options.dropout', dropout);
    Model.idleHandle(this, 'resetClassifier()');
    const path = this.classifierHead();
    if (path === undefined) throw new TorchError('TORCHLITE_NO_MATCH', 'No Linear classifier found in the model');
    const [, inFeatures] = this.parameters(`${path}.weight`)[0].shape;
    const head = linear(inFeatures, numClasses);
    this.replace(path, dropout > 0 ? sequential(dropoutLayer(dropout), head) : head);
    return path;
  }

  /**
   * The path of the final classifier Linear: the last Linear under a usual head name
   * (`fc`, `classifier`, `head`, `heads`, …), else the model's last Linear; `undefined`
   * when there is none. This is what {@link Model.resetClassifier} replaces.
   */
  classifierHead(): string | undefined {
    const linears = this.modules().filter((m) => m.type === 'Linear').map((m) => m.path);
    for (const head of HEAD_PATHS) {
      const inside = linears.filter((path) => path === head || path.startsWith(`${head}.`));
      if (inside.length > 0) return inside[inside.length - 1];
    }
    return linears.at(-1);
  }

  /** Stops training the parameters under `patterns` (all when omitted). Their grads are cleared. */
  freeze(patterns?: Pattern): FreezeResult {
    return this.requiresGrad(patterns, false);
  }

  /** Trains the parameters under `patterns` (all when omitted) again. */
  unfreeze(patterns?: Pattern): FreezeResult {
    return this.requiresGrad(patterns, true);
  }

  /**
   * Sets `requiresGrad` on the parameters whose names match `patterns` (a module or
   * parameter path prefix, a glob, a RegExp, or an array; `undefined` means all). A
   * pattern that matches nothing throws `TORCHLITE_NO_MATCH`. Queued behind pending
   * operations; the result and `parameters()` show the new state at once.
   */
  requiresGrad(patterns: Pattern | undefined, flag: boolean): FreezeResult {
    if (typeof flag !== 'boolean') throw typeError('a boolean', 'flag', flag);
    const parts = patterns === undefined ? undefined : Array.isArray(patterns) ? patterns : [patterns as string | RegExp];
    if (parts?.length === 0) throw typeError('a non-empty pattern array', 'patterns', patterns);
    this.#live;
    const all = this.#snapshot.parameters;
    const names = new Set<string>();
    if (parts === undefined) all.forEach((p) => names.add(p.name));
    parts?.forEach((part, i) => {
      const matches = compilePattern(part, Array.isArray(patterns) ? `patterns[${i}]` : 'patterns');
      const hits = all.filter((p) => matches(p.name));
      if (hits.length === 0) throw new TorchError('TORCHLITE_NO_MATCH', `No parameter matches ${describePattern(part)}`);
      hits.forEach((p) => names.add(p.name));
    });
    this.#apply((handle) => handle.setRequiresGrad([...names], flag));
    for (const p of all) if (names.has(p.name)) p.requiresGrad = flag;
    for (const m of this.#snapshot.modules) {
      const inside = all.filter((p) => m.path === '' || p.name.startsWith(`${m.path}.`));
      m.trainable = inside.reduce((n, p) => n + (p.requiresGrad ? p.numel : 0), 0);
    }
    const trainable = all.reduce((n, p) => n + (p.requiresGrad ? p.numel : 0), 0);
    return { trainable, frozen: all.reduce((n, p) => n + p.numel, 0) - trainable };
  }

  /** How BatchNorm layers with frozen parameters behave in `train()`. Defaults to `'frozen-eval'`. Setting it is queued behind pending operations. */
  get bnPolicy(): BatchNormPolicy {
    this.#live;
    return this.#snapshot.bnPolicy;
  }

  set bnPolicy(policy: BatchNormPolicy) {
    const value = checkOneOf(policy, 'bnPolicy', BATCH_NORM_POLICIES);
    this.#apply((handle) => handle.setBatchNormPolicy(value));
    this.#snapshot.bnPolicy = value;
  }

  /**
   * Writes a TorchScript archive that Python's `torch.jit.load` reads, atomically
   * (temporary file, fsync, rename).
   */
  save(path: string, options?: SaveOptions): Promise<void> {
    return this.#save(path, options, undefined);
  }

  /** @internal Saves with further extra files (checkpoint state) beside the metadata. */
  static saveWithExtras(model: Model, path: string, extras: Record<string, Buffer>): Promise<void> {
    return model.#save(path, undefined, extras);
  }

  #save(path: string, options: SaveOptions | undefined, extras: Record<string, Buffer> | undefined): Promise<void> {
    return callNativeAsync(async () => {
      checkString(path, 'path');
      const { metadata = this.#metadata } = checkOptions<SaveOptions>(options, 'options', ['metadata']);
      let text: string;
      try {
        text = metadata === undefined ? '' : JSON.stringify(metadata);
      } catch (error) {
        throw typeError(`JSON-serialisable metadata (${(error as Error).message})`, 'options.metadata', metadata);
      }
      if (text === undefined) throw typeError('JSON-serialisable metadata', 'options.metadata', metadata);
      await this.#enqueue((handle) => handle.save(path, text, extras));
      this.#metadata = metadata;
    });
  }

  /** @internal A zoo text model sized from a config: its placeholders' shapes and its sizing attributes (see `Reshape` in weights.cc). */
  static resize(model: Model, shapes: Record<string, number[]>, values: Record<string, number>): void {
    const live = Model.idleHandle(model, 'resize');
    try {
      callNative(() => live.reshape(shapes, values));
    } finally {
      model.#refresh(live);
    }
  }

  /**
   * Loads tensors by name from a `.safetensors` file (or a `model.safetensors.index.json` and
   * its shards) or a torch.save file (`.pth`, `.bin`), as PyTorch's `load_state_dict` does: the file's Python names (`layer1.0.conv1.weight`)
   * against this model's parameters and buffers. float16 and bfloat16 files are converted to the
   * model's dtype unless `keepDtype` asks for the file's. The bytes are read on the model's lane,
   * one tensor at a time (the extra memory is the largest tensor). Queued behind pending
   * operations. Resolves what matched; see {@link LoadWeightsOptions.strict}.
   */
  loadWeights(file: string, options?: LoadWeightsOptions): Promise<LoadWeightsResult> {
    return callNativeAsync(async () => {
      checkString(file, 'file');
      const o = checkOptions<LoadWeightsOptions>(options, 'options', ['strict', 'keepDtype', 'rename']);
      if (o.rename !== undefined && typeof o.rename !== 'function') throw typeError('a function', 'options.rename', o.rename);
      const strict = o.strict ?? true;
      if (typeof strict !== 'boolean') throw typeError('a boolean', 'options.strict', strict);
      const keep = o.keepDtype ?? false;
      if (typeof keep !== 'boolean') throw typeError('a boolean', 'options.keepDtype', keep);
      const weights = await readWeightsIndex(file);
      if (o.rename) {
        const rename = o.rename;
        weights.entries = weights.entries.flatMap((e) => {
          const name = rename(e.name);
          return name === undefined ? [] : [{ ...e, name }];
        });
      }
      await this.idle(); // the names and shapes below are the ones the load will meet
      const { entries, ...result } = matchWeights(file, weights, [...this.#snapshot.parameters, ...this.#snapshot.buffers], strict);
      const live = this.#live;
      try {
        await this.#enqueue((handle) => handle.loadWeights(entries.map((e) => ({ ...e, keep }))));
        if (this.#parallel) this.#parallel.stale = true;
      } finally {
        this.#refresh(live);
      }
      return result;
    });
  }

  /**
   * Writes the model's parameters and buffers as a `.safetensors` file under their Python
   * names, which PyTorch loads into the same architecture (`safetensors.torch.load_file`, then
   * `load_state_dict`). The model's class names and input spec go into the header's
   * `__metadata__` (as JSON under `torchlite`), beside `metadata` strings given. Written to a
   * temporary file and renamed, so a crash leaves no half file. Queued behind pending operations.
   */
  saveWeights(file: string, options?: { metadata?: Record<string, string> }): Promise<void> {
    return callNativeAsync(async () => {
      checkString(file, 'file');
      const { metadata = {} } = checkOptions<{ metadata?: Record<string, string> }>(options, 'options', ['metadata']);
      if (metadata === null || typeof metadata !== 'object' || Object.values(metadata).some((v) => typeof v !== 'string')) throw typeError('a record of strings', 'options.metadata', metadata);
      await this.idle();
      const tensors = [...this.#snapshot.parameters, ...this.#snapshot.buffers];
      const own = this.#metadata as { classes?: unknown; input?: unknown; text?: unknown } | undefined;
      const carried = own && typeof own === 'object' ? { ...(own.classes !== undefined && { classes: own.classes }), ...(own.input !== undefined && { input: own.input }) } : {};
      const header = safetensorsHeader(tensors, { format: 'pt', ...(Object.keys(carried).length > 0 && { torchlite: JSON.stringify(carried) }), ...metadata });
      await this.#enqueue((handle) => handle.saveWeights(file, header, tensors.map((t) => t.name)));
    });
  }

  /**
   * Switches dropout and normalisation layers to training behaviour (`on = false` is
   * {@link Model.eval}). Queued behind pending operations; `training` shows it at once.
   */
  train(on = true): this {
    if (typeof on !== 'boolean') throw typeError('a boolean', 'on', on);
    this.#apply((handle) => handle.setTraining(on));
    this.#snapshot.training = on;
    return this;
  }

  /** Switches to inference behaviour. */
  eval(): this {
    return this.train(false);
  }

  get training(): boolean {
    this.#live;
    return this.#snapshot.training;
  }

  get device(): Device {
    this.#live;
    return this.#snapshot.device;
  }

  /**
   * The layout 4-D weights and inputs run in now: `'channelsLast'` (NHWC) or `'contiguous'`
   * (NCHW). Read off the model itself, since an automatic choice can fall back on the first
   * forward (see `LoadOptions.channelsLast`): like `stateDict()`, it throws
   * `TORCHLITE_MODEL_BUSY` while a job runs.
   */
  get memoryFormat(): 'channelsLast' | 'contiguous' {
    return this.#live.info().channelsLast ? 'channelsLast' : 'contiguous';
  }

  /** Whether the archive came from `torch.jit.trace` rather than `torch.jit.script`. */
  get isTraced(): boolean {
    this.#live;
    return this.#snapshot.traced;
  }

  /**
   * The JSON metadata saved with the model by torchlite, if any: by convention
   * `classes` (names in output order) and `input` (see `InputSpec`), which `fit` fills
   * from the training data and `save` writes. Assign to change what `save` writes.
   */
  get metadata(): unknown {
    return this.#metadata;
  }

  set metadata(value: unknown) {
    this.#metadata = value;
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
    return this.#everything().then(() => handle?.dispose());
  }

  [Symbol.dispose](): void {
    this.dispose();
  }

  /** Waits for queued operations, then releases the model. */
  [Symbol.asyncDispose](): Promise<void> {
    return this.#release();
  }
}

/**
 * Refuses to score a model on data whose class names (a loader's `dataset.classes`) are not the
 * model's (`metadata.classes`) in the same order: target 3 would not mean output 3, and the
 * accuracy would be silently wrong.
 */
function checkSameClasses(model: Model, classes: string[] | undefined): void {
  const own = classNamesOf(model);
  if (classes === undefined || own === undefined || (classes.length === own.length && classes.every((c, i) => c === own[i]))) return;
  const list = (names: string[]) => names.slice(0, 8).map((c) => `'${c}'`).join(', ') + (names.length > 8 ? ', …' : '');
  throw new TorchError('TORCHLITE_BAD_DATA', `the data's classes (${list(classes)}) are not the model's (${list(own)}); read the data with \`like: model\`, which maps folders and labels to the model's classes by name, or map them with \`data.relabel\``);
}

/** The extra file that marks an archive as a torchlite checkpoint (checkpoint.ts writes it). */
export const CHECKPOINT_STATE = 'torchlite-checkpoint.json';

/**
 * Loads a TorchScript archive saved by `torch.jit.script(...).save()` or
 * `torch.jit.trace(...).save()`, in the mode it was saved in; or the weights of a checkpoint
 * that the `checkpoint` callback wrote (`best.ckpt` is the best epoch), in eval mode, ready for
 * inference (a checkpoint is written mid-training, in train mode; `train()` trains it again).
 */
export function loadPretrained(path: string, options?: LoadOptions): Promise<Model> {
  return callNativeAsync(async () => {
    checkString(path, 'path');
    const zoo = /^torchvision:(.+)$/.exec(path);
    if (zoo) return loadZoo(zooPath(zoo[1]), options ?? {});
    const hub = await hubModel(path);
    if (hub) return loadZoo(zooPath(hub.architecture, hub.text !== undefined), { ...options, weights: 'none' }, hub);
    const { weights: _weights, ...rest } = checkOptions<LoadOptions>(options, 'options', ['device', 'channelsLast', 'weights']);
    const { model, extras } = await loadArchive(path, rest, [CHECKPOINT_STATE]);
    return extras[CHECKPOINT_STATE] ? model.eval() : model;
  });
}

/**
 * A zoo architecture: its archive in NCHW; sized from a Hub config (text) or given a head of its
 * class count; the weights asked for, straight into the placeholders; the placeholders they
 * leave filled with default initialisation and the layout chosen, in one job on the lane; then
 * the device asked for (a copy or a layout change would have densified the placeholders).
 */
async function loadZoo(archive: string, options: LoadOptions, hub?: HubModel): Promise<Model> {
  const { weights = 'DEFAULT', channelsLast = 'auto', device = 'cpu' } = checkOptions<LoadOptions>(options, 'options', ['device', 'channelsLast', 'weights']);
  checkString(weights, 'options.weights');
  const target = checkDevice(device, 'options.device');
  if (channelsLast !== 'auto' && typeof channelsLast !== 'boolean') throw typeError("a boolean or 'auto'", 'options.channelsLast', channelsLast);
  // On the CPU first: a copy to another device would turn the placeholders into dense zeros.
  const { model } = await loadArchive(archive, { channelsLast: false }, []);
  try {
    const file = hub ? hub.weights : await zooWeightsFile((model.metadata as { zoo: ZooMetadata }).zoo, weights);
    if (hub?.text) Model.resize(model, hub.text.shapes, hub.text.values);
    else if (hub && hub.numClasses !== 1000) model.resetClassifier(hub.numClasses);
    if (hub) model.metadata = { ...(model.metadata as object), ...(hub.numClasses !== 1000 && { classes: undefined }), ...hub.metadata };
    if (file) {
      // The weights go straight into the placeholders; what they leave (a new head) is drawn after.
      // A text checkpoint may lack the classifier (a bare encoder) and hold tensors the rename skips.
      const loaded = await model.loadWeights(file, { strict: !hub?.text, ...(hub?.text && { rename: hub.text.rename }) });
      const missing = loaded.missing.filter((name) => !name.startsWith('classifier.'));
      if (missing.length || loaded.mismatched.length)
        throw new TorchError('TORCHLITE_WEIGHTS_MISMATCH', `${file} does not fit its config.json: ${describeMismatch({ missing, unexpected: [], mismatched: loaded.mismatched })}`);
    }
    await Model.enqueue(model, (handle) => handle.materialize(channelsLast === 'auto' ? 'auto' : channelsLast ? 'on' : 'off'));
    if (target !== 'cpu') await model.to(target as Device);
    return model.eval();
  } catch (error) {
    model.dispose();
    throw error;
  }
}

/** @internal Loads an archive and the named extra files (checkpoint state) in it. */
export async function loadArchive(path: string, options: LoadOptions | undefined, extraNames: string[]): Promise<{ model: Model; extras: Record<string, Buffer> }> {
  checkString(path, 'path');
  const { device = 'cpu', channelsLast = 'auto' } = checkOptions<LoadOptions>(options, 'options', ['device', 'channelsLast']);
  const target = checkDevice(device, 'options.device');
  if (channelsLast !== 'auto' && typeof channelsLast !== 'boolean') throw typeError("a boolean or 'auto'", 'options.channelsLast', channelsLast);
  const handle = await native.Model.load(path, target, extraNames, channelsLast === 'auto' ? 'auto' : channelsLast ? 'on' : 'off');
  return { model: new Model(handle), extras: handle.extras() };
}
