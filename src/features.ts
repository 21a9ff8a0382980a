// Cached backbone features for fineTune's head-only phase. With the body frozen, BatchNorm
// on its running statistics, no dropout before the head and no augmentation, the head's
// inputs are the same every epoch: they are computed once, and a model made of the head
// alone trains on them. The result equals training the whole model, within float noise,
// at the cost of one forward pass over the data.
import type { Dataset } from './data/dataset';
import { tensorDataset } from './data/dataset';
import { type Loader, loader } from './data/loader';
import { TorchError } from './errors';
import { Model } from './model';
import { native } from './native';
import { identity, linear } from './nn';
import { Tensor } from './tensor';

/** How fineTune's head-only phase ran: on cached features, or on the whole model and why. */
export interface FeatureCacheReport {
  used: boolean;
  /** Why the cache was not used. */
  reason?: string;
  /** The cache's size. */
  bytes?: number;
  /** Time spent computing it. */
  seconds?: number;
}

/** What {@link prepareFeatureCache} hands fineTune when the cache applies. */
export interface FeatureCache {
  head: Model;
  train: Loader;
  val?: Loader;
  report: FeatureCacheReport;
}

const FEATURE_BATCH = 256;

/** The default memory budget for cached features (both splits). */
export const FEATURE_CACHE_BUDGET = 1 << 30;

function reasonNotToCache(model: Model, headPath: string, train: Loader, val: Loader | undefined, dropout: number): string | undefined {
  if (dropout > 0) return 'dropout before the new head draws new masks every epoch';
  if (model.bnPolicy !== 'frozen-eval') return "BatchNorm policy 'train' updates the frozen body's statistics every step";
  const noisy = model.modules().find((m) => /Dropout/.test(m.type) && m.path !== headPath && !m.path.startsWith(`${headPath}.`));
  if (noisy) return `the body has dropout ('${noisy.path}'), so the head's inputs change every epoch`;
  if (train.dataset.withoutAugmentation) return "the training data is augmented, so the head's inputs change every epoch";
  if (val?.dataset.withoutAugmentation) return 'the validation data is augmented';
  return undefined;
}

/** The model's outputs with the head made an identity: the head's inputs, as one float array per dataset. */
async function featuresOf(model: Model, dataset: Dataset, batchSize: number): Promise<{ data: Float32Array; width: number }> {
  const chunks: Float32Array[] = [];
  let width = 0;
  // In index order: the feature loader rebuilds each epoch's order from the same seed.
  for await (const batch of loader(dataset, { batchSize }).batches(0)) {
    const out = await model.forward(batch.input);
    if (!(out instanceof Tensor) || out.shape.length !== 2) throw new TorchError('TORCHLITE_UNSUPPORTED_OUTPUT', 'the head does not take flat features');
    width = out.shape[1];
    chunks.push((await out.read()) as Float32Array);
    out.dispose();
    batch.input.dispose();
    batch.target.dispose();
  }
  const data = new Float32Array(chunks.reduce((n, c) => n + c.length, 0));
  let at = 0;
  for (const chunk of chunks) {
    data.set(chunk, at);
    at += chunk.length;
  }
  return { data, width };
}

/** A dataset of `features` with the targets of `source`, sample for sample. */
function featureDataset(source: Dataset, features: Float32Array, width: number): Dataset {
  const targets = Array.from({ length: source.length }, (_, i) => source.target(i));
  return tensorDataset(features, Int32Array.from(targets), { inputShape: [width], ...(source.classes && { classes: source.classes }) });
}

/**
 * Computes the features and the head model when caching is exact, else says why not
 * (`mode: true` turns a reason into an error). On success the model's head is an identity
 * until {@link restoreHead} puts the trained one back.
 */
export async function prepareFeatureCache(
  model: Model,
  headPath: string,
  options: { train: Loader; val?: Loader; dropout: number; mode: boolean | 'auto'; budget: number; blocked?: string },
): Promise<FeatureCache | FeatureCacheReport> {
  const refuse = (reason: string): FeatureCacheReport => {
    if (options.mode === true) throw new TorchError('TORCHLITE_BAD_ARGUMENT', `cacheFeatures: true cannot apply: ${reason}; pass cacheFeatures: 'auto' (or false) to train the whole model instead`);
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
  const original = await model.forward(probe.input);
  const dict = model.stateDict();
  // The new head's own initial weights, so training starts where the whole model's would.
  const layer = headLayer(inFeatures, outFeatures, dict[`${headPath}.weight`], dict[`${headPath}.bias`]);
  const head = new Model(native.Model.fromLayer(layer.spec)); // copies the weights
  Object.values(dict).forEach((t) => t.dispose());
  model.replace(headPath, identity());
  try {
    if (model.device !== 'cpu') await head.to(model.device);
    // The head must be the model's last step: its output on the features is the model's.
    const features = await model.forward(probe.input);
    const flat = features instanceof Tensor && original instanceof Tensor && features.shape.length === 2 && features.shape[1] === inFeatures;
    const again = flat ? ((await head.forward(features)) as Tensor) : undefined;
    const same = again !== undefined && again.shape.join() === (original as Tensor).shape.join() && maxRelative((await again.read()) as Float32Array, (await (original as Tensor).read()) as Float32Array) < 1e-4;
    for (const t of [features, original, probe.input, probe.target, again]) if (t instanceof Tensor) t.dispose();
    if (!same) {
      await restoreHead(model, headPath, head);
      return refuse(`the classifier '${headPath}' is not the model's last step, so its inputs are not all it needs`);
    }
    // Inference batches larger than training ones: fewer, better-filled kernels.
    const train = await featuresOf(model, options.train.dataset, Math.max(options.train.batchSize, FEATURE_BATCH));
    const val = options.val ? await featuresOf(model, options.val.dataset, Math.max(options.val.batchSize, FEATURE_BATCH)) : undefined;
    return {
      head,
      train: options.train.withDataset(featureDataset(options.train.dataset, train.data, train.width)),
      ...(options.val && val && { val: options.val.withDataset(featureDataset(options.val.dataset, val.data, val.width)) }),
      report: { used: true, bytes, seconds: (Date.now() - started) / 1000 },
    };
  } catch (error) {
    await restoreHead(model, headPath, head);
    throw error;
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
  const dict = head.stateDict();
  try {
    const [outFeatures, inFeatures] = dict.weight.shape;
    model.replace(headPath, headLayer(inFeatures, outFeatures, dict.weight, dict.bias));
  } finally {
    Object.values(dict).forEach((t) => t.dispose());
    head.dispose();
  }
}

/** A Linear layer holding the given weights. */
function headLayer(inFeatures: number, outFeatures: number, weight: Tensor, bias: Tensor | undefined) {
  const layer = linear(inFeatures, outFeatures, { bias: bias !== undefined });
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
