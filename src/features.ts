// Cached backbone features for fineTune's head-only phase. With the body frozen, BatchNorm
// on its running statistics and no augmentation, the head's inputs are the same every epoch
// (up to one dropout right before the head, which the head model replays with the same
// generator draws): they are computed once, and a model made of the head alone trains on
// them. The result equals training the whole model, within float noise, at the cost of one
// forward pass over the data. Nothing here draws from the generator that training would not.
import { type BatchTarget, type Dataset, tensorDataset } from './data/dataset';
import { type Loader, loader } from './data/loader';
import { misuse, TorchError } from './errors';
import { type BatchInput, Model } from './model';
import { disposeBatch } from './model/io';
import { native } from './native';
import { dropout, identity, linear, sequential } from './nn';
import { Tensor, tensor } from './tensor';

/** How fineTune's head-only phase ran: on cached features, or on the whole model and why. */
export interface FeatureCacheReport {
  used: boolean;
  /** Why the cache was not used. */
  reason?: string;
  /** The cache's size. */
  bytes?: number;
  /** Time spent computing it. */
  seconds?: number;
  /**
   * Whether the body ran as a frozen copy optimised for inference (BatchNorm folded into the
   * convolutions, as `torch.jit.optimize_for_inference`), which is faster on the CPU and gives
   * the model's features within float noise; the model itself computes them where freezing
   * fails or the copy disagrees on a probe batch.
   */
  optimized?: boolean;
}

/** What {@link prepareFeatureCache} hands fineTune when the cache applies. */
export interface FeatureCache {
  head: Model;
  train: Loader<BatchInput, BatchTarget>;
  val?: Loader<BatchInput, BatchTarget>;
  report: FeatureCacheReport;
}

const FEATURE_BATCH = 256;

/** The default memory budget for cached features (both splits). */
export const FEATURE_CACHE_BUDGET = 1 << 30;

/** The body's dropout modules: one may stand right before the head (checked on a probe batch). */
function bodyDropouts(model: Model, headPath: string): string[] {
  return model
    .modules()
    .filter((m) => /Dropout/.test(m.type) && m.path !== headPath && !m.path.startsWith(`${headPath}.`))
    .map((m) => m.path);
}

function reasonNotToCache(model: Model, headPath: string, train: Loader<BatchInput, BatchTarget>, val: Loader<BatchInput, BatchTarget> | undefined, newHeadDropout: number): string | undefined {
  if (train.dataset.collate) return "the model's inputs are not one tensor a sample (the cache covers image-like inputs)";
  if (newHeadDropout > 0) return 'dropout before the new head draws new masks every epoch';
  if (model.bnPolicy === 'train') return "BatchNorm policy 'train' updates the frozen body's statistics every step";
  const noisy = bodyDropouts(model, headPath);
  if (noisy.length > 1) return `the body has dropout in several places (${noisy.map((p) => `'${p}'`).join(', ')}), so the head's inputs change every epoch`;
  if (train.dataset.withoutAugmentation) return "the training data is augmented, so the head's inputs change every epoch";
  if (val?.dataset.withoutAugmentation) return 'the validation data is augmented';
  return undefined;
}

/** The model's outputs with the head made an identity: the head's inputs, as one float array per dataset. */
async function featuresOf(model: Model, dataset: Dataset<BatchInput, BatchTarget>, batchSize: number): Promise<{ data: Float32Array; width: number }> {
  const chunks: Float32Array[] = [];
  let width = 0;
  // In index order: the feature loader rebuilds each epoch's order from the same seed.
  for await (const batch of loader(dataset, { batchSize }).batches(0)) {
    const out = await Model.internalForward(model, batch.input);
    if (!(out instanceof Tensor) || out.shape.length !== 2) throw new TorchError('TORCHLITE_UNSUPPORTED_OUTPUT', 'the head does not take flat features');
    width = out.shape[1];
    chunks.push((await out.read()) as Float32Array);
    out.dispose();
    disposeBatch(batch);
  }
  const data = new Float32Array(chunks.reduce((n, c) => n + c.length, 0));
  let at = 0;
  for (const chunk of chunks) {
    data.set(chunk, at);
    at += chunk.length;
  }
  return { data, width };
}

/** A dataset of `features` with the targets of `source`, sample for sample: class indices, or float targets of its shape. */
async function featureDataset(source: Dataset<BatchInput, BatchTarget>, features: Float32Array, width: number): Promise<Dataset> {
  const n = source.length;
  // As the loader tells them apart: a sample's target is a number where it is a class index.
  const classIndices = n === 0 || typeof (await source.get(0, 0)).target === 'number';
  if (classIndices) return tensorDataset(features, Int32Array.from({ length: n }, (_, i) => source.target(i)), { inputShape: [width], ...(source.classes && { classes: source.classes }) });
  // `target` holds a float target's first value only; a sample holds all of it.
  const size = source.targetShape.reduce((a, b) => a * b, 1);
  const targets = new Float32Array(n * size);
  for (let i = 0; i < n; i++) targets.set((await source.get(i, 0)).target as Float32Array, i * size);
  return tensorDataset(features, tensor(targets, [n, ...source.targetShape]), { inputShape: [width] });
}

/**
 * Computes the features and the head model when caching is exact, else says why not
 * (`mode: true` turns a reason into an error). On success the model's head is an identity
 * until {@link restoreHead} puts the trained one back.
 */
export async function prepareFeatureCache(
  model: Model,
  headPath: string,
  options: { train: Loader<BatchInput, BatchTarget>; val?: Loader<BatchInput, BatchTarget>; dropout: number; mode: boolean | 'auto'; budget: number; blocked?: string },
): Promise<FeatureCache | FeatureCacheReport> {
  const refuse = (reason: string): FeatureCacheReport => {
    if (options.mode === true) throw misuse('TORCHLITE_BAD_ARGUMENT', `cacheFeatures: true cannot apply: ${reason}; pass cacheFeatures: 'auto' (or false) to train the whole model instead`);
    return { used: false, reason };
  };
  if (options.mode === false) return { used: false, reason: 'cacheFeatures: false' };
  const reason = options.blocked ?? reasonNotToCache(model, headPath, options.train, options.val, options.dropout);
  if (reason) return refuse(reason);
  const weight = model.parameters(`${headPath}.weight`)[0];
  const [outFeatures, inFeatures] = weight.shape;
  const samples = options.train.dataset.length + (options.val?.dataset.length ?? 0);
  const bytes = samples * inFeatures * 4;
  if (bytes > options.budget) return refuse(`the cache would take ${size(bytes)}, over the ${size(options.budget)} budget (cacheBudgetMB)`);
  const started = Date.now();
  const probe = (await loader(options.train.dataset, { batchSize: Math.min(options.train.batchSize, 16) }).batches(0).next()).value;
  const wasTraining = model.training;
  model.eval();
  const original = await Model.internalForward(model, probe.input);
  const dict = (await model.stateDict());
  // The new head's own initial weights, so training starts where the whole model's would.
  const linearHead = headLayer(inFeatures, outFeatures, dict[`${headPath}.weight`], dict[`${headPath}.bias`]);
  model.replace(headPath, identity());
  let head: Model | undefined;
  let fast: Model | undefined;
  try {
    // The head must be the model's last step: its output on the features is the model's.
    const features = await Model.internalForward(model, probe.input);
    const flat = features instanceof Tensor && original instanceof Tensor && features.shape.length === 2 && features.shape[1] === inFeatures;
    const p = flat && bodyDropouts(model, headPath).length === 1 ? await dropoutBeforeHead(model, probe.input, features as Tensor) : 0;
    head = new Model(native.Model.fromLayer((p > 0 ? sequential(dropout(p), linearHead) : linearHead).spec)); // copies the weights
    if (model.device !== 'cpu') await head.to(model.device);
    head.eval();
    const again = flat && p >= 0 ? ((await Model.internalForward(head, features)) as Tensor) : undefined;
    const same = again !== undefined && again.shape.join() === (original as Tensor).shape.join() && maxRelative((await again.read()) as Float32Array, (await (original as Tensor).read()) as Float32Array) < 1e-4;
    fast = same ? await inferenceBody(model, probe.input) : undefined;
    for (const t of [features, original, probe.input, probe.target, again]) if (t instanceof Tensor) t.dispose();
    if (!same) {
      await restoreHead(model, headPath, head);
      return refuse(
        p < 0
          ? `the body's dropout ('${bodyDropouts(model, headPath)[0]}') is not right before the head, so the head's inputs change every epoch`
          : `the classifier '${headPath}' is not the model's last step, so its inputs are not all it needs`,
      );
    }
    // Inference batches larger than training ones: fewer, better-filled kernels.
    const body = fast ?? model;
    const train = await featuresOf(body, options.train.dataset, Math.max(options.train.batchSize, FEATURE_BATCH));
    const val = options.val ? await featuresOf(body, options.val.dataset, Math.max(options.val.batchSize, FEATURE_BATCH)) : undefined;
    return {
      head,
      train: options.train.withDataset(await featureDataset(options.train.dataset, train.data, train.width)),
      ...(options.val && val && { val: options.val.withDataset(await featureDataset(options.val.dataset, val.data, val.width)) }),
      report: { used: true, bytes, seconds: (Date.now() - started) / 1000, optimized: fast !== undefined },
    };
  } catch (error) {
    if (head) await restoreHead(model, headPath, head);
    else model.replace(headPath, linearHead);
    throw error;
  } finally {
    fast?.dispose();
    model.train(wasTraining);
    Object.values(dict).forEach((t) => t.dispose());
  }
}

/**
 * The body (the model with its head an identity) as a frozen, inference-optimised copy,
 * checked against the model on the probe batch (see Model.inferenceCopy); on the CPU only,
 * where it was measured (ResNet-18 at 64 px: 1.25x faster). Else the model computes them.
 */
function inferenceBody(model: Model, input: BatchInput): Promise<Model | undefined> {
  return model.device === 'cpu' && input instanceof Tensor ? model.inferenceCopy(input) : Promise.resolve(undefined);
}

/**
 * With one dropout in the body, the cache is exact only if it acts on the head's input
 * itself: then the head model applies the same dropout to the cached features, drawing the
 * same masks from the generator as the whole model would. Checked on the probe: the body's
 * output in train mode must be a dropout of its eval output, reproduced by a dropout of the
 * rate read off it from the same generator state. Returns that rate, or -1. The generator
 * is left as it was.
 */
async function dropoutBeforeHead(model: Model, input: Tensor, evalFeatures: Tensor): Promise<number> {
  const state = native.getRngState();
  const disposeAll = (...ts: (Tensor | undefined)[]) => ts.forEach((t) => t?.dispose());
  let check: Model | undefined;
  let trainFeatures: Tensor | undefined;
  let replayed: Tensor | undefined;
  try {
    model.train();
    trainFeatures = (await Model.internalForward(model, input)) as Tensor;
    model.eval();
    const kept = (await trainFeatures.read()) as Float32Array;
    const plain = (await evalFeatures.read()) as Float32Array;
    const ratios = Array.from(kept, (v, i) => (v !== 0 && plain[i] !== 0 ? plain[i] / v : NaN)).filter(Number.isFinite).sort((a, b) => a - b);
    if (ratios.length === 0) return -1;
    // Kept values are scaled by 1 / (1 - p); rates are set as short decimals (0.2, 0.5).
    const p = Math.round((1 - ratios[Math.floor(ratios.length / 2)]) * 1e6) / 1e6;
    if (!(p > 0 && p < 1)) return -1;
    check = new Model(native.Model.fromLayer(dropout(p).spec));
    check.train();
    native.setRngState(state);
    replayed = (await Model.internalForward(check, evalFeatures)) as Tensor;
    return maxRelative((await replayed.read()) as Float32Array, kept) < 1e-5 ? p : -1;
  } finally {
    native.setRngState(state);
    disposeAll(trainFeatures, replayed);
    check?.dispose();
  }
}

/**
 * Puts a Linear with `head`'s weights (trained or not) back into the model in place of the
 * identity, and disposes `head`; once. A Linear from its weights rather than a copy of the
 * head model: both define the class `torchlite.nn.Linear`, which one archive cannot hold twice.
 */
export async function restoreHead(model: Model, headPath: string, head: Model): Promise<void> {
  if (head.disposed) return;
  await model.idle();
  await head.idle();
  const dict = (await head.stateDict());
  // The Linear's weights: `weight`, or `1.weight` behind a replayed dropout.
  const named = (suffix: string) => Object.entries(dict).find(([name]) => name === suffix || name.endsWith(`.${suffix}`))?.[1];
  try {
    const weight = named('weight')!;
    const [outFeatures, inFeatures] = weight.shape;
    model.replace(headPath, headLayer(inFeatures, outFeatures, weight, named('bias')));
  } finally {
    Object.values(dict).forEach((t) => t.dispose());
    head.dispose();
  }
}

/** A Linear layer holding the given weights; the generator is left as it was (linear() draws its own). */
function headLayer(inFeatures: number, outFeatures: number, weight: Tensor, bias: Tensor | undefined) {
  const rng = native.getRngState();
  const layer = linear(inFeatures, outFeatures, { bias: bias !== undefined });
  native.setRngState(rng);
  layer.spec.tensors = { weight: Tensor.handle(weight), ...(bias && { bias: Tensor.handle(bias) }) };
  return layer;
}

function size(bytes: number): string {
  return bytes < 2 ** 20 ? `${(bytes / 2 ** 10).toFixed(1)} KiB` : `${(bytes / 2 ** 20).toFixed(1)} MiB`;
}

function maxRelative(a: Float32Array, b: Float32Array): number {
  let worst = 0;
  for (let i = 0; i < b.length; i++) worst = Math.max(worst, Math.abs(a[i] - b[i]) / Math.max(1, Math.abs(b[i])));
  return a.length === b.length ? worst : Infinity;
}
