// Datasets: in-memory tensors, IDX files, splits, subsets and relabelling.
import { misuse, TorchError } from '../errors';
import { Tensor, tensor } from '../tensor';
import { checkFiniteNumber, checkInteger, checkOptions, checkPositiveInteger, rangeError, typeError } from '../validate';
import { readIdx } from './idx';
import type { BatchInput, ModelInput } from '../model';
import type { MetricSpec } from '../metrics';
import type { InputSpec } from '../preprocess';
import type { TextSpec } from '../text';
import { permutation } from './random';

/**
 * One sample: a flat float input of the dataset's `inputShape` (or, for a dataset with its
 * own `collate`, what that takes, such as a text's token ids), and a class index or a float
 * target.
 */
export interface Sample {
  input: Float32Array | Int32Array;
  /** A class index, a float target, or named parts (a detection's boxes, labels and masks) that the dataset's `collateTargets` batches. */
  target: number | Float32Array | TargetParts;
  /** This sample's input shape, where samples differ in size (detection images). Defaults to the dataset's `inputShape`. */
  shape?: number[];
}

/** A structured target: named arrays with their shapes, e.g. boxes `[n, 4]`, labels `[n]`, masks `[n, H, W]`. */
export interface TargetParts {
  [name: string]: { data: Float32Array | BigInt64Array | Uint8Array | Int32Array; shape: number[] };
}

/** What a batch's target is: a Tensor, or what a dataset's `collateTargets` makes (a list of per-image dicts of tensors). */
export type BatchTarget = Tensor | ModelInput;

/**
 * A random-access dataset. `get` may be async (image decoding); `target` never decodes.
 * `I` is what its batches' input is: one Tensor, unless `collate` makes another {@link BatchInput}.
 */
export interface Dataset<I extends BatchInput = Tensor, T extends BatchTarget = Tensor> {
  readonly length: number;
  /** Shape of one input, e.g. `[1, 28, 28]`; −1 marks a size that differs between samples. */
  readonly inputShape: number[];
  /** Shape of one float target (`[]` for class indices). */
  readonly targetShape: number[];
  /** Class names, when the targets are class indices. */
  readonly classes?: string[];
  /** The class index (or first target value) of sample `i`. */
  target(i: number): number;
  /** Sample `i`; `epoch` seeds augmentation so runs repeat exactly. */
  get(i: number, epoch: number): Sample | Promise<Sample>;
  /** What to call sample `i` in an error message (its file, or its index). */
  describe(i: number): string;
  /** How raw images became inputs, for datasets of images: it travels into the model's metadata when it trains on them. */
  readonly preprocessing?: InputSpec;
  /** How texts became inputs (the tokenizer), for text datasets: it travels into the model's metadata as `preprocessing` does. */
  readonly text?: TextSpec;
  /**
   * Makes one batch's input from its samples' inputs, for samples that are not flat float
   * arrays of one shape: e.g. token ids padded to the longest of the batch, returned as
   * `[ids, mask]`. Without it the loader stacks the float arrays into `[B, ...inputShape]`.
   */
  collate?(inputs: Sample['input'][], samples: Sample[]): I;
  /** Makes one batch's target from its samples' targets, for structured ones: a detection's list of per-image dicts. Without it the loader stacks class indices or float targets. */
  collateTargets?(targets: Sample['target'][]): T;
  /** The metrics that score a model on this data when `evaluate` or `fit` is given none: `['map']` for detection. Defaults to accuracy for a classification loss. */
  readonly metrics?: MetricSpec[];
  /** The same samples without random augmentation (`data.split` uses it for the validation part). */
  withoutAugmentation?(): Dataset<I, T>;
  /** @internal A batch of samples gathered natively (a job), for data already in memory as tensors. */
  rows?(indices: number[]): Promise<{ input: I; target: T }>;
}

type NumericArray = Float32Array | Float64Array | Int32Array | Int16Array | Int8Array | Uint8Array | BigInt64Array;

function toArray(value: unknown, name: string): { data: NumericArray; shape: number[] } {
  if (value instanceof Tensor) return { data: value.toTypedArray() as NumericArray, shape: value.shape };
  if (ArrayBuffer.isView(value) && !(value instanceof DataView)) return { data: value as NumericArray, shape: [(value as NumericArray).length] };
  if (Array.isArray(value)) return { data: Float64Array.from(value as number[]), shape: [value.length] };
  throw typeError('a Tensor, a typed array or number[]', name, value);
}

export interface TensorDatasetOptions {
  /** Shape of one input when `inputs` is a flat typed array. Defaults to the Tensor's trailing dimensions. */
  inputShape?: number[];
  /** Class names for class-index targets. */
  classes?: string[];
}

/**
 * Samples from in-memory inputs (`[N, ...]`) and targets (`[N]` class indices as
 * integers, or float targets `[N, ...]`).
 */
export function tensorDataset(inputs: Tensor | ArrayBufferView | number[], targets: Tensor | ArrayBufferView | number[], options?: TensorDatasetOptions): Dataset {
  const o = checkOptions<TensorDatasetOptions>(options, 'options', ['inputShape', 'classes']);
  const x = toArray(inputs, 'inputs');
  const y = toArray(targets, 'targets');
  const n = y.shape[0];
  const inputShape = o.inputShape ?? (x.shape.length > 1 ? x.shape.slice(1) : [x.data.length / Math.max(n, 1)]);
  const inputSize = inputShape.reduce((a, b) => a * b, 1);
  if (x.data.length !== n * inputSize)
    throw new RangeError(`Expected inputs of ${n} samples × ${inputSize} values for \`inputs\` but received ${x.data.length} values`);
  // Integer targets (an integer typed array, or number[] of integers) are class indices.
  const integral = Array.isArray(targets) ? targets.every(Number.isInteger) : !(y.data instanceof Float32Array || y.data instanceof Float64Array);
  const classIndices = y.shape.length === 1 && integral;
  const targetShape = classIndices ? [] : y.shape.slice(1);
  const targetSize = targetShape.reduce((a, b) => a * b, 1);
  const xs = x.data instanceof Float32Array ? x.data : Float32Array.from(x.data as ArrayLike<number>, Number);
  const ys = Float64Array.from(y.data as ArrayLike<number>, Number);
  if (classIndices && o.classes) {
    const bad = ys.findIndex((t) => t < 0 || t >= o.classes!.length);
    if (bad >= 0) throw new TorchError('TORCHLITE_BAD_DATA', `target ${ys[bad]} of sample ${bad} is out of range for ${o.classes.length} classes`);
  }
  // Made on first use: a loader then batches with one native gather per batch.
  let stored: { input: Tensor; target: Tensor } | undefined;
  const tensors = () =>
    (stored ??= {
      input: tensor(xs, [n, ...inputShape]),
      target: classIndices ? tensor(BigInt64Array.from(ys, (v) => BigInt(v))) : tensor(Float32Array.from(ys), [n, ...targetShape]),
    });
  return withRows(
    {
      length: n,
      inputShape,
      targetShape,
      classes: o.classes,
      target: (i) => ys[i * targetSize],
      get: (i) => ({
        input: xs.subarray(i * inputSize, (i + 1) * inputSize),
        target: classIndices ? ys[i] : Float32Array.from(ys.subarray(i * targetSize, (i + 1) * targetSize)),
      }),
      describe: (i) => `sample ${i}`,
    },
    async (indices) => {
      const at = Int32Array.from(indices);
      const { input, target } = tensors();
      const [x, y] = await Promise.all([Tensor.handle(input).rows(at), Tensor.handle(target).rows(at)]);
      return { input: new Tensor(x), target: new Tensor(y) };
    },
  );
}

/**
 * Gives `ds` its native batch gather, not enumerable: a dataset made by spreading this one
 * with its own `get` must be read through that `get`.
 */
function withRows<I extends BatchInput, T extends BatchTarget>(ds: Dataset<I, T>, rows: Dataset<I, T>['rows']): Dataset<I, T> {
  return rows ? Object.defineProperty(ds, 'rows', { value: rows, enumerable: false }) : ds;
}

export interface IdxOptions {
  /** Subtracted after scaling pixels to [0, 1]. Defaults to `0`. */
  mean?: number;
  /** Divides after subtracting the mean. Defaults to `1`. */
  std?: number;
  /** Class names. Defaults to none. */
  classes?: string[];
}

/** A dataset over a pair of (gzipped) IDX files, such as Fashion-MNIST's. Pixels are scaled to [0, 1], then normalised. */
export async function idx(imagesPath: string, labelsPath: string, options?: IdxOptions): Promise<Dataset> {
  const o = checkOptions<IdxOptions>(options, 'options', ['mean', 'std', 'classes']);
  const mean = o.mean === undefined ? 0 : checkFiniteNumber(o.mean, 'options.mean');
  const std = o.std === undefined ? 1 : checkFiniteNumber(o.std, 'options.std');
  if (std <= 0) throw rangeError('a positive number', 'options.std', std);
  const [images, labels] = await Promise.all([readIdx(imagesPath), readIdx(labelsPath)]);
  if (labels.shape.length !== 1 || images.shape[0] !== labels.shape[0])
    throw new TorchError('TORCHLITE_BAD_DATA', `${imagesPath} holds ${images.shape[0]} images but ${labelsPath} holds ${labels.shape.join('×')} labels`);
  if (o.classes) {
    const bad = labels.data.findIndex((t) => t >= o.classes!.length);
    if (bad >= 0) throw new TorchError('TORCHLITE_BAD_DATA', `label ${labels.data[bad]} of sample ${bad} in ${labelsPath} is out of range for ${o.classes.length} classes`);
  }
  const inputShape = [1, ...images.shape.slice(1)];
  const size = inputShape.reduce((a, b) => a * b, 1);
  return {
    length: labels.shape[0],
    inputShape,
    targetShape: [],
    classes: o.classes,
    target: (i) => labels.data[i],
    get: (i) => ({
      input: Float32Array.from(images.data.subarray(i * size, (i + 1) * size), (v) => (v / 255 - mean) / std),
      target: labels.data[i],
    }),
    describe: (i) => `image ${i} of ${imagesPath}`,
    preprocessing: { shape: inputShape, mean: [mean], std: [std], resize: 'center-crop' },
  };
}

/** A view of `base` through `indices`, optionally with remapped class indices. */
function view<I extends BatchInput, T extends BatchTarget>(base: Dataset<I, T>, indices: number[], remap?: Map<number, number>, classes?: string[]): Dataset<I, T> {
  const rows =
    base.rows &&
    (async (at: number[]) => {
      const batch = await base.rows!(at.map((i) => indices[i]));
      if (!remap) return batch;
      (batch.target as Tensor).dispose();
      return { input: batch.input, target: tensor(BigInt64Array.from(at, (i) => BigInt(remap.get(base.target(indices[i]))!))) as T };
    });
  return withRows({
    length: indices.length,
    inputShape: base.inputShape,
    targetShape: base.targetShape,
    classes: classes ?? base.classes,
    target: (i) => (remap ? remap.get(base.target(indices[i]))! : base.target(indices[i])),
    get: async (i, epoch) => {
      const sample = await base.get(indices[i], epoch);
      return remap ? { ...sample, target: remap.get(sample.target as number)! } : sample;
    },
    describe: (i) => base.describe(indices[i]),
    ...(base.preprocessing && { preprocessing: base.preprocessing }),
    ...(base.text && { text: base.text }),
    ...(base.collate && { collate: base.collate }),
    ...(base.collateTargets && { collateTargets: base.collateTargets }),
    ...(base.metrics && { metrics: base.metrics }),
    ...(base.withoutAugmentation && { withoutAugmentation: () => view(base.withoutAugmentation!(), indices, remap, classes) }),
  }, rows);
}

function checkDataset<I extends BatchInput, T extends BatchTarget>(ds: Dataset<I, T>, name: string): Dataset<I, T> {
  if (ds === null || typeof ds !== 'object' || typeof (ds as Dataset).get !== 'function' || typeof (ds as Dataset).length !== 'number')
    throw typeError('a Dataset from `data.*`', name, ds);
  return ds;
}

export interface SplitOptions {
  /** The share of samples in the validation part, in (0, 1). */
  val: number;
  /** Defaults to `0`. */
  seed?: number;
  /**
   * Takes the validation share of every class (of class-index targets) rather than of the
   * whole, so that a few labels a class still leave each class in both parts. A class with
   * one sample stays in the training part. Defaults to `false`.
   */
  stratify?: boolean;
  /**
   * Which share to hold out, counting from 0: with the same `seed`, folds 0 to ⌊1/val⌋ − 1
   * hold out disjoint shares (of every class, with `stratify`), e.g. the five folds of a
   * five-fold cross-validation for `val: 0.2`. Defaults to `0`.
   */
  fold?: number;
}

/** Splits a dataset at random into train and validation views; the validation view is never augmented. */
export function split<I extends BatchInput, T extends BatchTarget>(ds: Dataset<I, T>, options: SplitOptions): { train: Dataset<I, T>; val: Dataset<I, T> } {
  checkDataset(ds, 'ds');
  const o = checkOptions<SplitOptions>(options, 'options', ['val', 'seed', 'stratify', 'fold']);
  const fraction = checkFiniteNumber(o.val, 'options.val');
  if (fraction <= 0 || fraction >= 1) throw rangeError('a fraction in (0, 1)', 'options.val', fraction);
  if (o.stratify !== undefined && typeof o.stratify !== 'boolean') throw typeError('a boolean', 'options.stratify', o.stratify);
  const folds = Math.floor(1 / fraction);
  const fold = checkInteger(o.fold ?? 0, 'options.fold', 0, 'a non-negative integer');
  if (fold >= folds) throw rangeError(`a fold from 0 to ${folds - 1} (val ${fraction} makes ${folds})`, 'options.fold', fold);
  // The fold-th run of `size` samples from `members`, in their shuffled order.
  const share = (members: number[], size: number) => members.slice(fold * size, (fold + 1) * size);
  const order = permutation(ds.length, checkInteger(o.seed ?? 0, 'options.seed', 0));
  const held = new Set<number>();
  if (o.stratify) {
    const floats = () => misuse('TORCHLITE_BAD_ARGUMENT', 'stratify needs class-index targets but the dataset has float targets; split without stratify');
    if (ds.targetShape.length > 0) throw floats();
    const byClass = new Map<number, number[]>();
    for (const i of order) {
      const t = ds.target(i);
      if (!Number.isInteger(t)) throw floats(); // float targets of one value a sample
      const members = byClass.get(t);
      if (members) members.push(i);
      else byClass.set(t, [i]);
    }
    for (const members of byClass.values()) share(members, members.length < 2 ? 0 : Math.max(1, Math.round(members.length * fraction))).forEach((i) => held.add(i));
  } else share(order, Math.round(ds.length * fraction)).forEach((i) => held.add(i));
  if (held.size === 0 || held.size === ds.length) throw new RangeError(`Expected a split that leaves both parts non-empty for \`options.val\` but received ${fraction} of ${ds.length} samples`);
  const all = Array.from({ length: ds.length }, (_, i) => i);
  const plain = ds.withoutAugmentation?.() ?? ds;
  return { val: view(plain, all.filter((i) => held.has(i))), train: view(ds, all.filter((i) => !held.has(i))) };
}

/**
 * The same samples with each class renumbered to its position in `classes`, e.g. a
 * model's class list, so a folder holding some of a model's classes (in any order) is
 * scored against the right outputs. A class of `ds` missing from `classes` is a
 * `TORCHLITE_UNKNOWN_CLASSES` error that names it.
 */
export function relabel<I extends BatchInput, T extends BatchTarget>(ds: Dataset<I, T>, classes: readonly string[]): Dataset<I, T> {
  checkDataset(ds, 'ds');
  if (!Array.isArray(classes) || classes.some((c) => typeof c !== 'string')) throw typeError('an array of class names', 'classes', classes);
  if (!ds.classes) throw new TorchError('TORCHLITE_BAD_DATA', 'the dataset has no class names to match');
  const unknown = ds.classes.filter((name) => !classes.includes(name));
  if (unknown.length > 0)
    throw new TorchError('TORCHLITE_UNKNOWN_CLASSES', `the data has classes the model does not know: ${unknown.map((c) => `'${c}'`).join(', ')} (the model's are ${classes.map((c) => `'${c}'`).join(', ')})`);
  const remap = new Map(ds.classes.map((name, i) => [i, classes.indexOf(name)]));
  return view(ds, Array.from({ length: ds.length }, (_, i) => i), remap, [...classes]);
}

export interface SubsetOptions {
  /** Samples kept per class, drawn at random. Defaults to all. */
  perClass?: number;
  /** The class indices to keep; targets are renumbered 0..k-1 in this order. Defaults to all classes. */
  classes?: number[];
  /** Defaults to `0`. */
  seed?: number;
}

/** A class-balanced subset, for small labelled budgets, optionally of some classes only (renumbered). */
export function subset<I extends BatchInput, T extends BatchTarget>(ds: Dataset<I, T>, options: SubsetOptions): Dataset<I, T> {
  checkDataset(ds, 'ds');
  const o = checkOptions<SubsetOptions>(options, 'options', ['perClass', 'classes', 'seed']);
  const perClass = o.perClass === undefined ? Infinity : checkPositiveInteger(o.perClass, 'options.perClass');
  const keep = o.classes?.map((c, i) => checkInteger(c, `options.classes[${i}]`, 0, 'a class index'));
  const order = permutation(ds.length, checkInteger(o.seed ?? 0, 'options.seed', 0));
  const counts = new Map<number, number>();
  const picked: number[] = [];
  for (const i of order) {
    const t = ds.target(i);
    if (keep && !keep.includes(t)) continue;
    const n = counts.get(t) ?? 0;
    if (n >= perClass) continue;
    counts.set(t, n + 1);
    picked.push(i);
  }
  for (const c of keep ?? []) if (!counts.has(c)) throw new TorchError('TORCHLITE_BAD_DATA', `class ${c} has no samples in the dataset`);
  const remap = keep && new Map(keep.map((c, i) => [c, i]));
  const names = keep && ds.classes ? keep.map((c) => ds.classes![c]) : undefined;
  return view(ds, picked.sort((a, b) => a - b), remap, names);
}
