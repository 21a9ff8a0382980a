// Losses: their options and defaults, and the spec the native step reads.
import { callNativeAsync } from './errors';
import { native, type NativeTensor } from './native';
import { Tensor, tensor } from './tensor';
import { checkFiniteNumber, checkInteger, checkOneOf, checkOptions, checkPositiveNumber, rangeError, typeError } from './validate';

/** How per-element losses are combined, as in PyTorch. */
export type Reduction = 'mean' | 'sum' | 'none';

/** A loss function. Pass it to `trainStep`/`evaluate`, or call {@link Loss.compute} directly. */
export class Loss {
  /** @internal */
  readonly spec: Record<string, unknown>;

  /** @internal */
  constructor(spec: Record<string, unknown>) {
    this.spec = spec;
  }

  /** `'crossEntropy'`, `'nll'`, `'bceWithLogits'`, `'mse'`, `'l1'`, `'smoothL1'` or `'huber'`. */
  get kind(): string {
    return this.spec.kind as string;
  }

  /** Whether the model computes this loss itself (see {@link fromModel}). */
  get fromModel(): boolean {
    return this.kind === 'model';
  }

  /** @internal Where the targets go among the model's inputs: the argument name for named inputs. */
  get targetArgument(): string {
    return (this.spec.targetArgument as string | undefined) ?? 'targets';
  }

  /** Whether class-index targets make this a classification loss (accuracy applies): `crossEntropy` and `nll`. */
  get classifies(): boolean {
    return this.spec.classifies as boolean;
  }

  /** The loss of `output` against `target`, without recording gradients, computed as a job on `output`'s device lane. */
  compute(output: Tensor, target: Tensor): Promise<Tensor> {
    return callNativeAsync(async () => {
      if (this.fromModel) throw new TypeError('loss.fromModel() has nothing to compute from outputs: the model computes it, in trainStep');
      const out = Tensor.handle(output);
      const tgt = Tensor.handle(target);
      return new Tensor(await native.computeLoss(this.spec, out, tgt));
    });
  }
}

const REDUCTIONS = ['mean', 'sum', 'none'] as const;
/** The losses whose class-index targets make accuracy meaningful; the native step reads it from the spec. */
const CLASSIFICATION_KINDS = ['crossEntropy', 'nll'];

/** The native handle of a per-class weight given as a Tensor or number[], if any. */
function classWeight(value: unknown, name: string): NativeTensor | undefined {
  if (value === undefined) return undefined;
  if (value instanceof Tensor) return Tensor.handle(value);
  if (Array.isArray(value) && value.length > 0) {
    value.forEach((w, i) => {
      checkFiniteNumber(w, `${name}[${i}]`);
      if (w < 0) throw rangeError('a non-negative number', `${name}[${i}]`, w);
    });
    return Tensor.handle(tensor(value));
  }
  throw typeError('a non-empty number[] or a Tensor', name, value);
}

/**
 * Every field the native loss reads, at its default: the one place these defaults live (the
 * addon reads each field with no fallback of its own).
 */
const SPEC_DEFAULTS = { reduction: 'mean', labelSmoothing: 0, ignoreIndex: -100, beta: 1, delta: 1, weight: null, posWeight: null, lossWeights: null, outputWeights: null };

/**
 * Every loss computed from outputs takes `outputs`: for a model whose forward returns a dict
 * of outputs, the weight of each entry's loss against the same target (torchvision's
 * segmentation models: `{ out: 1, aux: 0.5 }`, as its reference training weighs them). Each
 * entry's loss is reported in `TrainStepResult.losses`. Without it, a dict output trains on
 * its `out` entry. Defaults to none.
 */
export interface OutputsOption {
  outputs?: Record<string, number>;
}

function outputWeights(value: unknown): Record<string, number> | undefined {
  if (value === undefined) return undefined;
  if (value === null || typeof value !== 'object' || Array.isArray(value) || Object.keys(value).length === 0)
    throw typeError('a record of output names to weights, e.g. { out: 1, aux: 0.5 }', 'options.outputs', value);
  for (const [name, w] of Object.entries(value)) {
    checkFiniteNumber(w, `options.outputs.${name}`);
    if (w < 0) throw rangeError('a non-negative number', `options.outputs.${name}`, w);
  }
  return { ...(value as Record<string, number>) };
}

function make(kind: string, options: unknown, known: string[], build: (o: Record<string, unknown>) => Record<string, unknown> = () => ({})): Loss {
  const o = checkOptions<Record<string, unknown>>(options, 'options', ['reduction', 'outputs', ...known]) as Record<string, unknown>;
  const reduction = o.reduction === undefined ? SPEC_DEFAULTS.reduction : checkOneOf(o.reduction, 'options.reduction', REDUCTIONS);
  const given = Object.fromEntries(Object.entries({ ...build(o), outputWeights: outputWeights(o.outputs) }).filter(([, value]) => value !== undefined));
  return new Loss({ ...SPEC_DEFAULTS, kind, classifies: CLASSIFICATION_KINDS.includes(kind), reduction, ...given });
}

export interface CrossEntropyOptions extends OutputsOption {
  /** Mixes the one-hot target with a uniform distribution, in [0, 1). Defaults to `0`. */
  labelSmoothing?: number;
  /** A weight per class. Defaults to equal weights. */
  weight?: number[] | Tensor;
  /** A target value that contributes nothing. Defaults to `-100`. */
  ignoreIndex?: number;
  /** Defaults to `'mean'`. */
  reduction?: Reduction;
}

/**
 * Cross entropy over class scores `[N, C, ...]` with class-index targets `[N, ...]`
 * (or class probabilities of the output's shape), like `torch.nn.CrossEntropyLoss`.
 */
export function crossEntropy(options?: CrossEntropyOptions): Loss {
  return make('crossEntropy', options, ['labelSmoothing', 'weight', 'ignoreIndex'], (o) => {
    const smoothing = o.labelSmoothing === undefined ? SPEC_DEFAULTS.labelSmoothing : checkFiniteNumber(o.labelSmoothing, 'options.labelSmoothing');
    if (smoothing < 0 || smoothing >= 1) throw rangeError('a number in [0, 1)', 'options.labelSmoothing', smoothing);
    return {
      labelSmoothing: smoothing,
      ignoreIndex: o.ignoreIndex === undefined ? undefined : checkInteger(o.ignoreIndex, 'options.ignoreIndex', -Number.MAX_SAFE_INTEGER),
      weight: classWeight(o.weight, 'options.weight'),
    };
  });
}

export interface NllOptions extends OutputsOption {
  /** A weight per class. Defaults to equal weights. */
  weight?: number[] | Tensor;
  /** A target value that contributes nothing. Defaults to `-100`. */
  ignoreIndex?: number;
  /** Defaults to `'mean'`. */
  reduction?: Reduction;
}

/** Negative log-likelihood over log-probabilities, like `torch.nn.NLLLoss`. */
export function nll(options?: NllOptions): Loss {
  return make('nll', options, ['weight', 'ignoreIndex'], (o) => ({
    ignoreIndex: o.ignoreIndex === undefined ? undefined : checkInteger(o.ignoreIndex, 'options.ignoreIndex', -Number.MAX_SAFE_INTEGER),
    weight: classWeight(o.weight, 'options.weight'),
  }));
}

export interface BceWithLogitsOptions extends OutputsOption {
  /** Weight of positive examples per class, for imbalanced multi-label data. Defaults to `1`. */
  posWeight?: number[] | Tensor;
  /** Defaults to `'mean'`. */
  reduction?: Reduction;
}

/** Sigmoid + binary cross entropy for multi-label targets of the output's shape, like `torch.nn.BCEWithLogitsLoss`. */
export function bceWithLogits(options?: BceWithLogitsOptions): Loss {
  return make('bceWithLogits', options, ['posWeight'], (o) => ({ posWeight: classWeight(o.posWeight, 'options.posWeight') }));
}

/** Options of the regression losses. */
export interface RegressionOptions extends OutputsOption {
  /** Defaults to `'mean'`. */
  reduction?: Reduction;
}

/** Mean squared error, like `torch.nn.MSELoss`. The target must have the output's shape. */
export function mse(options?: RegressionOptions): Loss {
  return make('mse', options, []);
}

/** Mean absolute error, like `torch.nn.L1Loss`. */
export function l1(options?: RegressionOptions): Loss {
  return make('l1', options, []);
}

/** Smooth L1, like `torch.nn.SmoothL1Loss`. `beta` defaults to `1`. */
export function smoothL1(options?: RegressionOptions & { beta?: number }): Loss {
  return make('smoothL1', options, ['beta'], (o) => ({ beta: o.beta === undefined ? undefined : checkPositiveNumber(o.beta, 'options.beta') }));
}

/** Huber loss, like `torch.nn.HuberLoss`. `delta` defaults to `1`. */
export function huber(options?: RegressionOptions & { delta?: number }): Loss {
  return make('huber', options, ['delta'], (o) => ({ delta: o.delta === undefined ? undefined : checkPositiveNumber(o.delta, 'options.delta') }));
}

export interface FromModelOptions {
  /** Weights of the named losses the model returns, summed into the one that trains (`{ loss_classifier: 2 }`); a name not listed weighs 1. Defaults to all 1. */
  weights?: Record<string, number>;
  /** For inputs given as an object of named arguments, the argument that takes the targets (`'labels'` for Hugging Face models). Defaults to `'targets'`. */
  argument?: string;
}

/**
 * The loss the model computes itself: its training forward takes the targets after its other
 * inputs (the last positional argument, or `argument` for named inputs) and returns a loss
 * tensor, a dict of named losses, a dict with a `loss` entry beside others (Hugging Face's
 * `{ loss, logits }`: the `loss` trains), or a tuple whose first item is one of those
 * (torchvision's scripted detection models return `(losses, detections)`). Named losses are summed (with
 * `weights`) and each is reported in `TrainStepResult.losses`. Targets may be a Tensor or any
 * model input, such as a list of per-image dicts of tensors.
 */
export function fromModel(options?: FromModelOptions): Loss {
  const o = checkOptions<FromModelOptions>(options, 'options', ['weights', 'argument']);
  const weights = o.weights ?? {};
  if (weights === null || typeof weights !== 'object') throw typeError('a record of numbers', 'options.weights', weights);
  for (const [name, w] of Object.entries(weights)) checkFiniteNumber(w, `options.weights.${name}`);
  const argument = o.argument === undefined ? 'targets' : o.argument;
  if (typeof argument !== 'string' || argument === '') throw typeError('an argument name', 'options.argument', argument);
  return new Loss({ ...SPEC_DEFAULTS, kind: 'model', classifies: false, lossWeights: { ...weights }, targetArgument: argument });
}
