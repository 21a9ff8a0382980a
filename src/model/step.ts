// A training step's options: their types, their defaults (the only place they live) and
// the baton the native step reads, every field present.
import { Loss } from '../loss';
import type { NativeGroupOptions, NativeOptimizer } from '../native';
import type { Optimizer } from '../optim';
import { checkFiniteNumber, checkOneOf, checkOptions, checkPositiveInteger, rangeError, typeError } from '../validate';
import type { Model } from './model';
import { isStepOptimizer, kStepOptimizer } from './protocols';

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
  /** The targets `correct` is out of: the batch's samples, or its pixels for per-pixel targets, less those equal to the loss's `ignoreIndex`. */
  scored?: number;
  /** True when a non-finite loss (or an fp16 overflow) skipped the update. */
  skipped: boolean;
  /** True when this call applied an optimizer update (false while accumulating). */
  stepped: boolean;
  /** The total gradient norm before clipping, when `clipGradNorm` is set. */
  gradNorm?: number;
  /** Each named loss, when read: of a model that computes its own (`loss.fromModel()`), or of each output a loss's `outputs` weighs. */
  losses?: Record<string, number>;
}

/** The defaults of the options above that have one, as the native step receives them. */
const STEP_DEFAULTS = { accumulate: 1, clipGradNorm: null, amp: 'none', nonFinite: 'skip', readLoss: true } as const;

/** @internal What the native step reads: every field present, `null` for "none". */
export interface StepBaton {
  loss: Record<string, unknown>;
  optimizer: NativeOptimizer;
  groups: NativeGroupOptions[];
  accumulate: number;
  clipGradNorm: number | null;
  amp: 'none' | 'bf16' | 'fp16';
  nonFinite: 'skip' | 'throw';
  readLoss: boolean;
  /** fit's windows: each step's group options in a `trainSteps` call, read off the schedule ahead of the job. */
  groupsPerStep: NativeGroupOptions[][] | null;
}

/** @internal Validates `options` into the native step's baton; `model` is what the optimizer binds to. */
export function stepBaton(options: TrainStepOptions, model: Model, groupsPerStep: NativeGroupOptions[][] | null = null): StepBaton {
  const o = checkOptions<TrainStepOptions>(options, 'options', ['loss', 'optimizer', 'clipGradNorm', 'accumulate', 'amp', 'nonFinite', 'readLoss']);
  if (!(o.loss instanceof Loss)) throw typeError('a Loss from `loss.*`', 'options.loss', o.loss);
  if (!isStepOptimizer(o.optimizer)) throw typeError('an Optimizer from `optim.*`', 'options.optimizer', o.optimizer);
  let clipGradNorm: number | null = STEP_DEFAULTS.clipGradNorm;
  if (o.clipGradNorm !== undefined) {
    clipGradNorm = checkFiniteNumber(o.clipGradNorm, 'options.clipGradNorm');
    if (clipGradNorm <= 0) throw rangeError('a positive number', 'options.clipGradNorm', o.clipGradNorm);
  }
  if (o.readLoss !== undefined && typeof o.readLoss !== 'boolean') throw typeError('a boolean', 'options.readLoss', o.readLoss);
  const { handle, groups } = o.optimizer[kStepOptimizer](model);
  return {
    loss: o.loss.spec,
    optimizer: handle,
    groups,
    accumulate: o.accumulate === undefined ? STEP_DEFAULTS.accumulate : checkPositiveInteger(o.accumulate, 'options.accumulate'),
    clipGradNorm,
    amp: o.amp === undefined ? STEP_DEFAULTS.amp : checkOneOf(o.amp, 'options.amp', ['bf16', 'fp16'] as const),
    nonFinite: o.nonFinite === undefined ? STEP_DEFAULTS.nonFinite : checkOneOf(o.nonFinite, 'options.nonFinite', ['skip', 'throw'] as const),
    readLoss: o.readLoss ?? STEP_DEFAULTS.readLoss,
    groupsPerStep,
  };
}
