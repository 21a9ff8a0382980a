// The Model façade: one object per loaded model, whose methods validate their arguments,
// queue the native work in call order (queue.ts) and keep the JS snapshot the getters read.
import { callNative, callNativeAsync, disposedError, misuse, TorchError } from '../errors';
import { Loss } from '../loss';
import type { Metrics } from '../metrics';
import type { NativeGroupOptions, NativeModel, NativeSync, NativeTensor } from '../native';
import { conv2d, dropout as dropoutLayer, kLayerSpec, type Layer, type LayerSpec, linear, sequential, specOf } from '../nn';
import type { Pattern } from '../patterns';
import { compilePattern, describePattern } from '../patterns';
import { type Device, Tensor } from '../tensor';
import { checkDevice, checkFiniteNumber, checkOneOf, checkOptions, checkPositiveInteger, checkString, rangeError, typeError } from '../validate';
import { type LoadWeightsResult, matchWeights, readWeightsIndex, safetensorsHeader } from '../weights';
import { type AdmissionBaton, checkModelCapacity, checkRequestOptions, type RequestOptions, Ticket } from './admission';
import { type BatchingOptions, type BatchingStats, Batcher, type BatchKind } from './batching';
import { evaluation, type EvaluateOptions, type Prediction } from './inference';
import { type Batch, type BatchInput, batchArgs, type ModelInput, type ModelOutput, type ReadQueue, stepBatch, unwrapInput, wrapOutput } from './io';
import { carriedMetadata, type LoadWeightsOptions, metadataText, type SaveOptions } from './persist';
import { type DataParallelLink, kDataParallel } from './protocols';
import { OperationQueue } from './queue';
import { formatSummary, type MethodInfo, type ModuleInfo, type ParameterInfo, readSnapshot, type Snapshot, type TensorInfo } from './snapshot';
import { stepBaton, type TrainStepOptions, type TrainStepResult } from './step';
import { BATCH_NORM_POLICIES, type BatchNormPolicy, classifierHead, detectorPredictors, type FreezeResult, segmenterClassifiers, markRequiresGrad, type ResetClassifierOptions, selectParameters } from './surgery';

/** Where a loss the model computes itself takes its targets; `undefined` for other losses. */
function fromModelOf(options: TrainStepOptions): { argument: string } | undefined {
  const loss = (options as Partial<TrainStepOptions> | null)?.loss;
  return loss instanceof Loss && loss.fromModel ? { argument: loss.targetArgument } : undefined;
}

/** `forward`, `call` and `predict` bound to request options (see {@link Model.with}). */
export interface InferenceRequests {
  forward<T extends ModelOutput = Tensor>(...inputs: ModelInput[]): Promise<T>;
  call<T extends ModelOutput = ModelOutput>(method: string, ...inputs: ModelInput[]): Promise<T>;
  predict(input: BatchInput): Promise<Prediction>;
}

/**
 * A TorchScript model. Everything done to a model happens in call order:
 *
 * - **Queued** (run one at a time, off the event loop): `forward`, `call`, `predict`,
 *   `evaluate`, `trainStep`, `trainSteps`, `stateDict`, `loadStateDict`, `resetParameters`,
 *   `loadWeights`, `save`, `saveWeights`, `to`, and an optimizer's `flush`.
 * - **Queued behind them, returning at once**: `train`/`eval`, `freeze`/`unfreeze`/
 *   `requiresGrad`, `bnPolicy = …` and `channelsLast`. They apply when the operations
 *   called before them are done; the getters show their effect straight away.
 * - **Synchronous, refused while operations are pending** with `TORCHLITE_MODEL_BUSY` (a
 *   `TypeError`; await them first, e.g. `await model.idle()`): `replace` and `resetClassifier`
 *   (they build one layer on the JS thread: well under a millisecond for a classifier head;
 *   copying a loaded model in as a module copies its weights), and an optimizer's
 *   `addParamGroup`, `stateDict` and `loadStateDict`.
 * - **Never blocking**: `training`, `device`, `isTraced`, `bnPolicy`, `metadata`,
 *   `methods()`, `modules()`, `parameters()`, `buffers()` and `summary()` read a snapshot
 *   kept in JS.
 */
export class Model implements Disposable, AsyncDisposable {
  #native: NativeModel | null;
  readonly #queue = new OperationQueue();
  #metadata: unknown;
  #snapshot: Snapshot;
  #warnedEvalStep = false;
  #parallel: DataParallelLink | null = null;
  #batcher: Batcher | null = null;

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
    this.#snapshot = readSnapshot(handle);
    // Requests waiting for their batch start before any write or synchronous change.
    this.#queue.beforeWrite = () => this.#batcher?.flushAll();
  }

  /** @internal The native handle, for other torchlite modules. */
  static handle(model: Model): NativeModel {
    if (model.#native === null) throw disposedError('Model');
    return model.#native;
  }

  /** @internal The native handle for a synchronous method that must not overtake queued work. */
  static idleHandle(model: Model, what: string): NativeModel {
    const handle = Model.handle(model);
    model.#queue.requireIdle(what);
    return handle;
  }

  get #live(): NativeModel {
    return Model.handle(this);
  }

  /** @internal Queues work that touches this model (a ScriptObject's method, a zoo model's placeholders) behind its other operations. */
  static enqueue<T>(model: Model, op: (handle: NativeModel) => Promise<T>, read = false): Promise<T> {
    return model.#enqueue(op, read);
  }

  #enqueue<T>(op: (handle: NativeModel) => Promise<T>, read = false): Promise<T> {
    const handle = this.#live;
    return this.#queue.run(() => op(handle), read);
  }

  /** Where this model's ScriptObjects queue their calls. */
  readonly #reads: ReadQueue = (op) => this.#enqueue(op, true);

  /**
   * Queues a training operation; on a data-parallel model it also takes its place in the
   * group's order of collectives now, at the call, and first re-broadcasts rank 0's
   * parameters if they changed since. `op` gets how to sync, for the native job (`null` alone).
   */
  #enqueueStep<T>(op: (handle: NativeModel, sync: NativeSync | null) => Promise<T>): Promise<T> {
    const link = this.#parallel;
    if (link === null) return this.#enqueue((handle) => op(handle, null));
    const handle = this.#live;
    const turn = link.turn();
    return this.#queue.runInTurn(turn, async () => {
      await turn.ready;
      if (link.stale) {
        await link.group.broadcastModel(handle);
        link.stale = false;
      }
      return op(handle, { group: link.group, buffers: link.broadcastBuffers, overlap: link.overlap, bucketBytes: link.bucketBytes });
    });
  }

  /** @internal See {@link DataParallelLink}; the broadcast of rank 0's parameters is queued now. */
  [kDataParallel](link: DataParallelLink): void {
    this.#parallel = link;
    link.stale = true;
    void this.#enqueueStep(async () => undefined).catch(() => undefined);
  }

  /** @internal Queues an optimizer update (a flush) as a training operation. */
  static enqueueStep<T>(model: Model, op: (handle: NativeModel, sync: NativeSync | null) => Promise<T>): Promise<T> {
    return model.#enqueueStep(op);
  }

  /** Runs a cheap native change now when the model is idle, else queued behind pending work. */
  #apply(change: (handle: NativeModel) => void): void {
    const handle = this.#live;
    this.#queue.apply(() => callNative(() => change(handle)));
  }

  /** Resolves when every operation called so far has settled (whether it succeeded or not). */
  idle(): Promise<void> {
    return this.#queue.idle();
  }

  /**
   * Dynamic batching of `forward` and `predict` requests that pass one tensor with a batch
   * dimension: those that arrive within `maxDelayMs` of the first, with the same row shape,
   * dtype and device, run as one batch of up to `maxBatch` rows (one job, one forward), and
   * each request gets its own rows back. Results equal running each alone for models whose
   * rows do not interact (BatchNorm in eval mode, no batch statistics), up to the float
   * rounding of a larger matrix product. `false` turns it off. Off by default.
   */
  batching(options: BatchingOptions | false): this {
    this.#live;
    if (options === false) {
      this.#batcher?.flushAll();
      this.#batcher = null;
      return this;
    }
    this.#batcher = new Batcher(options, async (kind, inputs) => {
      const handles = inputs.map((t) => Tensor.handle(t));
      return this.#enqueue((handle) => handle.forwardBatch(handles, kind), true);
    });
    return this;
  }

  /** What batching did since it was turned on; `undefined` while it is off. */
  get batchingStats(): BatchingStats | undefined {
    return this.#batcher?.stats;
  }

  /** A request through the batcher: refused at the call over the model's cap, and while it waits as `#request` is. */
  #batched(kind: BatchKind, input: Tensor, options: RequestOptions | undefined): Promise<unknown> {
    const batcher = this.#batcher!;
    const ticket = new Ticket(options);
    try {
      checkModelCapacity(this.#queue.pendingReads + batcher.waiting);
      this.#live;
      Tensor.handle(input);
      const refusal = ticket.refusal();
      if (refusal !== undefined) throw refusal;
      return batcher.add(kind, input, ticket).finally(() => ticket.done());
    } catch (error) {
      ticket.done();
      return Promise.reject(error);
    }
  }

  /** How many operations are queued or running on this model. */
  get pending(): number {
    return this.#queue.pending + (this.#batcher?.waiting ?? 0);
  }

  /**
   * Runs `forward` without recording gradients (like `torch.no_grad()`) and returns its
   * outputs. Runs ahead of queued training on the same device. For a deadline or an
   * AbortSignal, use `model.with({ timeoutMs, signal }).forward(...)`.
   */
  forward<T extends ModelOutput = Tensor>(...inputs: ModelInput[]): Promise<T> {
    return this.#forward(inputs, undefined);
  }

  #forward<T extends ModelOutput>(inputs: ModelInput[], options: RequestOptions | undefined): Promise<T> {
    return callNativeAsync(async () => {
      if (this.#batcher && !options?.adapter && inputs.length === 1 && this.#batcher.takes(inputs[0])) return wrapOutput(await this.#batched('forward', inputs[0], options), this.#reads) as T;
      const args = inputs.map((input, i) => unwrapInput(input, `inputs[${i}]`));
      return wrapOutput(await this.#request(options, (handle, admission) => handle.forward(args, admission)), this.#reads) as T;
    });
  }

  /**
   * @internal A forward of torchlite's own (fineTune's feature cache): queued as `forward` is,
   * but not a serving request, so it neither batches nor makes training leave the inference
   * lane its threads (which would make a run's rounding depend on timing).
   */
  static internalForward<T extends ModelOutput = Tensor>(model: Model, ...inputs: ModelInput[]): Promise<T> {
    return callNativeAsync(async () => {
      const args = inputs.map((input, i) => unwrapInput(input, `inputs[${i}]`));
      return wrapOutput(await model.#enqueue((handle) => handle.forward(args, null), true), model.#reads) as T;
    });
  }

  /**
   * An inference request on this model's queue: refused at once over the model's cap
   * (`TORCHLITE_OVERLOADED`), and, with `options`, refused while it waits once its deadline
   * passes or its signal aborts.
   */
  #request<T>(options: RequestOptions | undefined, post: (handle: NativeModel, admission: AdmissionBaton) => Promise<T>): Promise<T> {
    const ticket = new Ticket(options);
    try {
      checkModelCapacity(this.#queue.pendingReads);
      const handle = this.#live;
      return this.#queue.run(() => ticket.posted(post(handle, ticket.baton())), true, ticket);
    } catch (error) {
      ticket.done();
      throw error;
    }
  }

  /**
   * `forward`, `call` and `predict` with request options: a deadline to start by
   * (`timeoutMs`) and an `AbortSignal`, as a server passes them per request, e.g.
   * `await model.with({ timeoutMs: 200, signal }).predict(x)`.
   */
  with(options: RequestOptions): InferenceRequests {
    checkRequestOptions(options);
    return {
      forward: <T extends ModelOutput = Tensor>(...inputs: ModelInput[]) => this.#forward<T>(inputs, options),
      call: <T extends ModelOutput = ModelOutput>(method: string, ...inputs: ModelInput[]) => this.#call<T>(method, inputs, options),
      predict: (input: BatchInput) => this.predict(input, options),
    };
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
   * current mode. An unknown name is `TORCHLITE_NO_SUCH_METHOD`, listing the exported ones
   * (see {@link Model.methods}).
   */
  call<T extends ModelOutput = ModelOutput>(method: string, ...inputs: ModelInput[]): Promise<T> {
    return this.#call(method, inputs, undefined);
  }

  #call<T extends ModelOutput>(method: string, inputs: ModelInput[], options: RequestOptions | undefined): Promise<T> {
    return callNativeAsync(async () => {
      checkString(method, 'method');
      const args = inputs.map((input, i) => unwrapInput(input, `inputs[${i}]`));
      return wrapOutput(await this.#request(options, (handle, admission) => handle.call(method, args, admission)), this.#reads) as T;
    });
  }

  /**
   * Forward, loss, backward, gradient clipping, optimizer step and grad reset in one
   * native job. Runs in the model's current mode: call `train()` first (a step in eval
   * mode emits a `TORCHLITE_EVAL_MODE_STEP` warning, once per model). The optimizer's
   * group options (lr, …) are taken as they are at the call.
   */
  trainStep(input: BatchInput, target: Tensor | ModelInput, options: TrainStepOptions): Promise<TrainStepResult> {
    return callNativeAsync(async () => {
      const step = this.#stepBaton(options, null);
      const batch = stepBatch(input, target, ['input', 'target'], fromModelOf(options));
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
    return Model.trainWindow(this, batches, options, null);
  }

  /**
   * @internal fit's windows: `trainSteps` with each step's group options, read off the
   * schedule ahead of the job (`null`: the optimizer's options now, for every step).
   */
  static trainWindow(model: Model, batches: readonly Batch[], options: TrainStepOptions, groupsPerStep: NativeGroupOptions[][] | null): Promise<TrainStepResult[]> {
    return callNativeAsync(async () => {
      if (!Array.isArray(batches) || batches.length === 0) throw typeError('a non-empty array of { input, target } batches', 'batches', batches);
      const step = model.#stepBaton(options, groupsPerStep);
      const fromModel = fromModelOf(options);
      const work = batches.map((b, i) => stepBatch(b?.input, b?.target, [`batches[${i}].input`, `batches[${i}].target`], fromModel));
      return model.#enqueueStep((handle, sync) => handle.trainStep(work, { ...step, sync }));
    });
  }

  #stepBaton(options: TrainStepOptions, groupsPerStep: NativeGroupOptions[][] | null) {
    if (!this.#snapshot.training && !this.#warnedEvalStep) {
      this.#warnedEvalStep = true;
      process.emitWarning('trainStep() on a model in eval mode: dropout is off and BatchNorm neither uses batch statistics nor updates its running ones. Call model.train() first (this warning is shown once per model).', { code: 'TORCHLITE_EVAL_MODE_STEP' });
    }
    return stepBaton(options, this, groupsPerStep);
  }

  /**
   * Runs batches in eval mode without gradients (the mode is restored after) and
   * returns the mean loss and the metrics. The whole pass is one queued operation, so
   * operations called after it see none of it half-done; `batches` must not wait on
   * this model's own queue.
   */
  evaluate(batches: Iterable<Batch> | AsyncIterable<Batch>, options?: EvaluateOptions): Promise<Metrics> {
    return callNativeAsync(async () => {
      const { pass, turn } = evaluation(this, batches, options);
      const handle = this.#live;
      return turn ? this.#queue.runInTurn(turn, () => pass(handle), true) : this.#enqueue(pass, true);
    });
  }

  /**
   * Class probabilities (softmax over dimension 1) and the argmax, computed in eval mode ahead
   * of queued training; `options` gives the request a deadline or an AbortSignal.
   */
  predict(input: BatchInput, options?: RequestOptions): Promise<Prediction> {
    return callNativeAsync(async () => {
      if (this.#batcher?.takes(input) && !options?.adapter) {
        const [probabilities, argmax] = (await this.#batched('predict', input, options)) as NativeTensor[];
        return { probabilities: new Tensor(probabilities), argmax: new Tensor(argmax) };
      }
      const args = batchArgs(input, 'input');
      const { probabilities, argmax } = await this.#request(options, (handle, admission) => handle.predict(args, admission));
      return { probabilities: new Tensor(probabilities), argmax: new Tensor(argmax) };
    });
  }

  /**
   * Keeps 4-D weights, and 4-D inputs on their way in, in channels-last (NHWC) layout,
   * which oneDNN and cuDNN run faster for many CNNs (on the CPU it is the default: see
   * `LoadOptions.channelsLast`); `false` goes back to NCHW. Outputs are unchanged. Queued
   * behind pending operations, as a job on the model's lane (converting a ResNet's weights
   * takes milliseconds).
   */
  channelsLast(on = true): this {
    if (typeof on !== 'boolean') throw typeError('a boolean', 'on', on);
    void this.#enqueue((handle) => handle.setChannelsLast(on)).catch(() => undefined);
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
   * Copies of the parameters and buffers by name, taken on the model's queue after the
   * operations called before (so a later step does not change them); dispose them when done.
   */
  stateDict(): Promise<Record<string, Tensor>> {
    return callNativeAsync(async () => {
      const raw = await this.#enqueue((handle) => handle.stateDict(), true);
      return Object.fromEntries(Object.entries(raw).map(([name, handle]) => [name, new Tensor(handle)]));
    });
  }

  /**
   * Copies parameters and buffers from `dict` (as {@link Model.stateDict} returns) by name,
   * queued behind pending operations. With `strict` (the default) every parameter and buffer
   * must be present; nothing is copied unless all names and shapes match.
   */
  loadStateDict(dict: Record<string, Tensor>, options?: { strict?: boolean }): Promise<void> {
    return callNativeAsync(async () => {
      const { strict = true } = checkOptions<{ strict?: boolean }>(options, 'options', ['strict']);
      if (typeof strict !== 'boolean') throw typeError('a boolean', 'options.strict', strict);
      if (dict === null || typeof dict !== 'object') throw typeError('a record of Tensors', 'dict', dict);
      const handles = Object.fromEntries(Object.entries(dict).map(([name, t]) => [name, Tensor.handle(t)]));
      await this.#enqueue((handle) => handle.loadStateDict(handles, strict));
      if (this.#parallel) this.#parallel.stale = true;
    });
  }

  /**
   * Draws every parameter afresh as PyTorch's constructors would from the shapes alone
   * (kaiming-uniform weights with their biases, normalisation weights 1 and biases 0) and
   * resets normalisation statistics (running variances 1, means and counts 0; other buffers,
   * such as a text model's position ids, are kept): the same network, untrained, for
   * a from-scratch baseline. Draws from the generator seeded by `manualSeed`, in a job queued
   * behind pending operations (off the event loop).
   */
  resetParameters(): Promise<void> {
    return callNativeAsync(async () => {
      this.#live;
      const params = this.#snapshot.parameters;
      const names = new Set(params.map((p) => p.name));
      const plan: { name: string; init: 'kaiming' | 'ones' | 'zeros'; bias: string | null }[] = [];
      const drawn = new Set<string>();
      for (const p of params) {
        if (p.shape.length < 2) continue;
        const bias = `${p.name.slice(0, -'weight'.length)}bias`;
        plan.push({ name: p.name, init: 'kaiming', bias: names.has(bias) ? bias : null });
        drawn.add(p.name).add(bias);
      }
      for (const p of params) if (!drawn.has(p.name)) plan.push({ name: p.name, init: p.name.endsWith('weight') ? 'ones' : 'zeros', bias: null });
      // Only normalisation statistics are state to forget; other buffers are constants of the
      // architecture (a text model's position ids, an attention mask) that zeros would break.
      for (const b of this.#snapshot.buffers)
        if (/(^|\.)(running_mean|running_var|num_batches_tracked)$/.test(b.name)) plan.push({ name: b.name, init: b.name.endsWith('running_var') ? 'ones' : 'zeros', bias: null });
      await this.#enqueue((handle) => handle.resetParameters(plan));
      if (this.#parallel) this.#parallel.stale = true;
    });
  }

  /** A table of modules with their parameter counts, and totals. */
  summary(): string {
    this.#live;
    return formatSummary(this.#snapshot);
  }

  /**
   * Puts `module` at `path` (`fc`, `classifier.3`, `layer1.0.conv1`): a native layer, an
   * `nn.sequential`, `nn.identity()`, or another loaded model (copied in; it must be
   * idle). The new parameters are trainable and on the model's device. Siblings that
   * share the replaced module's class keep working. Synchronous; refused while operations
   * are pending.
   */
  replace(path: string, module: Layer | Model): this {
    checkString(path, 'path');
    Model.replaceAll(this, [[path, this.#specOf(module, 'module')]]);
    return this;
  }

  /**
   * @internal Several replacements in order (LoRA's wrappers), the module tree read back once
   * after them rather than after each: a ResNet-50's tree takes about 3 ms to read.
   */
  static replaceAll(model: Model, entries: readonly [path: string, spec: LayerSpec][]): void {
    const live = Model.idleHandle(model, 'replace()');
    try {
      for (const [path, spec] of entries) callNative(() => live.replace(path, spec));
      if (model.#parallel) model.#parallel.stale = true;
    } finally {
      model.#snapshot = readSnapshot(live);
    }
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
      if (model === this) throw misuse('TORCHLITE_BAD_ARGUMENT', 'A model cannot be put inside itself; load a second copy to use it as a module');
      Model.idleHandle(model, 'Copying a model into another');
    }
    return spec;
  }

  /**
   * Replaces the final classifier Linear (`fc`, the last Linear of `classifier`, `head`,
   * `heads.head`, …) by a fresh `nn.linear(inFeatures, numClasses)`, optionally behind
   * dropout, like timm's `reset_classifier`. Returns the path it replaced. Synchronous;
   * refused while operations are pending.
   *
   * For a torchvision Faster or Mask R-CNN, `numClasses` counts the background, as
   * torchvision's do: the box predictor's two Linears are replaced as `FastRCNNPredictor`
   * builds them (the same draws under the same seed), a Mask R-CNN's last mask convolution by
   * a fresh `nn.conv2d` (the tutorial's `MaskRCNNPredictor` also redraws the transposed
   * convolution before it, which keeps its pretrained weights here), and the path returned is
   * `roi_heads`, the heads to train first. For a torchvision segmentation model (FCN,
   * DeepLabV3, LR-ASPP), its per-pixel classifier convolutions (the auxiliary one too) are
   * replaced by fresh 1×1 `nn.conv2d`s, and the path returned is `classifier`.
   */
  resetClassifier(numClasses: number, options?: ResetClassifierOptions): string {
    checkPositiveInteger(numClasses, 'numClasses');
    const { dropout = 0 } = checkOptions<ResetClassifierOptions>(options, 'options', ['dropout']);
    checkFiniteNumber(dropout, 'options.dropout');
    if (dropout < 0 || dropout >= 1) throw rangeError('a probability in [0, 1)', 'options.dropout', dropout);
    Model.idleHandle(this, 'resetClassifier()');
    const inputs = (path: string) => this.parameters(`${path}.weight`)[0].shape[1];
    const detector = detectorPredictors(this.#snapshot.modules);
    if (detector) {
      // In the order the predictors draw them, so a seed gives torchvision's weights.
      this.replace(detector.classes, linear(inputs(detector.classes), numClasses));
      this.replace(detector.boxes, linear(inputs(detector.boxes), numClasses * 4));
      if (detector.masks) this.replace(detector.masks, conv2d(inputs(detector.masks), numClasses, 1));
      return 'roi_heads';
    }
    const segmenter = segmenterClassifiers(this.#snapshot.modules);
    if (segmenter) {
      for (const path of segmenter) this.replace(path, conv2d(inputs(path), numClasses, 1));
      return 'classifier';
    }
    const path = this.classifierHead();
    if (path === undefined) throw new TorchError('TORCHLITE_NO_MATCH', 'No Linear classifier found in the model');
    const head = linear(inputs(path), numClasses);
    this.replace(path, dropout > 0 ? sequential(dropoutLayer(dropout), head) : head);
    return path;
  }

  /**
   * The path of the final classifier Linear: the last Linear under a usual head name
   * (`fc`, `classifier`, `head`, `heads`, …), else the model's last Linear; `undefined`
   * when there is none. This is what {@link Model.resetClassifier} replaces.
   */
  classifierHead(): string | undefined {
    this.#live;
    return classifierHead(this.#snapshot.modules);
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
    this.#live;
    const names = selectParameters(this.#snapshot, patterns);
    this.#apply((handle) => handle.setRequiresGrad([...names], flag));
    return markRequiresGrad(this.#snapshot, names, flag);
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
      const text = metadataText(metadata);
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
      model.#snapshot = readSnapshot(live);
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
        this.#snapshot = readSnapshot(live);
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
      const header = safetensorsHeader(tensors, { format: 'pt', ...carriedMetadata(this.#metadata), ...metadata });
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
   * call (see `LoadOptions.channelsLast`): while operations are pending it throws
   * `TORCHLITE_MODEL_BUSY` (await `model.idle()` first).
   */
  get memoryFormat(): 'channelsLast' | 'contiguous' {
    const live = Model.idleHandle(this, 'memoryFormat');
    return callNative(() => live.info()).channelsLast ? 'channelsLast' : 'contiguous';
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
    return this.#queue.everything().then(() => handle?.dispose());
  }

  [Symbol.dispose](): void {
    this.dispose();
  }

  /** Waits for queued operations, then releases the model. */
  [Symbol.asyncDispose](): Promise<void> {
    return this.#release();
  }
}
