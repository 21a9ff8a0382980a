// fit(): epochs of trainStep over a Loader, evaluation after each, callbacks, AbortSignal,
// checkpoints and exact resume. fineTune(): the fastai recipe on top of it.
import { appendFile, mkdir, readdir, rm } from 'node:fs/promises';
import { join } from 'node:path';

import { loadCheckpoint, readCheckpointPosition, saveCheckpoint, type TrainingPosition } from './checkpoint';
import { groupOf } from './distributed';
import { FEATURE_CACHE_BUDGET, type FeatureCache, type FeatureCacheReport, prepareFeatureCache, restoreHead } from './features';
import { findLr, type LrRule, type Snapshot, snapshot } from './findlr';
import { type Dataset, split } from './data/dataset';
import { TorchError } from './errors';
import type { Loader, LoaderBatch } from './data/loader';
import { Loss, crossEntropy } from './loss';
import type { Metrics, MetricSpec } from './metrics';
import { BATCH_NORM_POLICIES, type BatchInput, type BatchNormPolicy, disposeBatch, kStepGroups, Model, type TrainStepOptions, type TrainStepResult } from './model';
import { native } from './native';
import { compilePattern } from './patterns';
import { Optimizer, adamw, type ParamGroupSpec } from './optim';
import { PlateauScheduler, Scheduler, oneCycle } from './sched';
import { tensor } from './tensor';
import { checkFiniteNumber, checkInteger, checkOneOf, checkOptions, checkPositiveInteger, checkString, rangeError, typeError } from './validate';

/** What one epoch did. */
export interface EpochRecord {
  epoch: number;
  /** Mean training loss over the epoch's batches. */
  trainLoss: number;
  /** Training accuracy, for class-index targets. */
  trainAccuracy?: number;
  /** Metrics on the validation loader, with `loss`. */
  val?: Metrics;
  /** Each param group's lr at the end of the epoch. */
  lr: number[];
  seconds: number;
  /** fineTune's stage (0 trains the head only). */
  stage: number;
}

export type FitEvent =
  | { type: 'epochStart'; epoch: number; batches: number; stage: number }
  | { type: 'batchEnd'; epoch: number; batch: number; batches: number; step: number; loss: number; lr: number; accuracy?: number }
  | { type: 'epochEnd'; record: EpochRecord }
  | { type: 'checkpoint'; path: string; epoch: number }
  | { type: 'stopped'; reason: string };

/** What callbacks see and may act on. */
export interface FitContext {
  readonly model: Model;
  readonly optimizer: Optimizer;
  readonly history: EpochRecord[];
  /** Epochs completed so far. */
  readonly epoch: number;
  readonly step: number;
  /** Asks fit to stop after the current epoch. */
  stop(reason: string): void;
  /** Writes a checkpoint of the whole training state to `path`. */
  saveCheckpoint(path: string): Promise<void>;
  /** Per-callback state that checkpoints carry, keyed by callback name. */
  readonly callbackState: Record<string, unknown>;
}

export interface Callback {
  /** Names this callback's state in checkpoints. */
  readonly name: string;
  /**
   * Runs on rank 0 only when the model is data-parallel: for output (loggers, progress
   * bars) and files (checkpoints). Callbacks that decide (early stopping) run on every
   * rank and see the same metrics there, reduced over the ranks. Defaults to `false`.
   */
  readonly rankZeroOnly?: boolean;
  /**
   * Its `onBatchEnd` only observes (logs, draws, counts) and never changes the optimizer or
   * the model. When every callback with an `onBatchEnd` says so, `fit` on in-memory data runs
   * many steps per native job and calls `onBatchEnd` for each step after its job. Defaults
   * to `false` (one step per job).
   */
  readonly observesBatches?: boolean;
  onEpochEnd?(ctx: FitContext, record: EpochRecord): void | Promise<void>;
  onBatchEnd?(ctx: FitContext, event: Extract<FitEvent, { type: 'batchEnd' }>): void | Promise<void>;
  /** After each of fineTune's lr trials (see `lrSearch`): the trial, its place and how many there are. */
  onLrTrial?(trial: LrTrial, index: number, count: number): void | Promise<void>;
}

export interface FitOptions {
  train: Loader<BatchInput>;
  /** Evaluated after each epoch. Defaults to none. */
  val?: Loader<BatchInput>;
  /** Total epochs, counting those a resumed checkpoint already did. */
  epochs: number;
  optimizer: Optimizer;
  /** Defaults to `loss.crossEntropy()`. */
  loss?: Loss;
  /** A per-step `Scheduler` (stepped after each update) or a `PlateauScheduler` (stepped with the validation loss each epoch). Defaults to none. */
  scheduler?: Scheduler | PlateauScheduler;
  /** Validation metrics. Defaults to `['accuracy']` for a classification loss. */
  metrics?: MetricSpec[];
  callbacks?: Callback[];
  /** Stops cleanly between steps when aborted. */
  signal?: AbortSignal;
  /** A checkpoint to continue from, bit-exactly on the CPU. */
  resume?: string;
  /**
   * With `resume`, restores the random generator saved in the checkpoint, so dropout
   * repeats bit-exactly. The generator is process-wide (every model and worker thread
   * draws from it): pass `false` when other work in the process draws from it. Defaults to `true`.
   */
  resumeRng?: boolean;
  /** Passed to each trainStep. */
  clipGradNorm?: number;
  /** Passed to each trainStep. */
  accumulate?: number;
  /** Passed to each trainStep. */
  amp?: 'bf16' | 'fp16';
  /** @internal fineTune's stage, stored in checkpoints. */
  stage?: number;
}

/** The run: `await` it for the history, or `for await` its events. */
export interface FitRun extends PromiseLike<EpochRecord[]>, AsyncIterable<FitEvent> {}

const FIT_KEYS = ['train', 'val', 'epochs', 'optimizer', 'loss', 'scheduler', 'metrics', 'callbacks', 'signal', 'resume', 'resumeRng', 'clipGradNorm', 'accumulate', 'amp', 'stage'];

/**
 * Trains for `epochs`, evaluating on `val` after each; see {@link FitOptions}. The model
 * trains in train mode and is left in eval mode when the run ends (finished, stopped or
 * aborted).
 */
export function fit(model: Model, options: FitOptions): FitRun {
  if (!(model instanceof Model)) throw typeError('a Model', 'model', model);
  const o = checkOptions<FitOptions>(options, 'options', FIT_KEYS) as FitOptions;
  if (o.train === undefined || typeof o.train[Symbol.asyncIterator] !== 'function' || typeof o.train.batches !== 'function') throw typeError('a Loader from `data.loader`', 'options.train', o.train);
  if (o.val !== undefined && typeof o.val?.[Symbol.asyncIterator] !== 'function') throw typeError('a Loader from `data.loader`', 'options.val', o.val);
  checkPositiveInteger(o.epochs, 'options.epochs');
  if (!(o.optimizer instanceof Optimizer)) throw typeError('an Optimizer from `optim.*`', 'options.optimizer', o.optimizer);
  if (o.loss !== undefined && !(o.loss instanceof Loss)) throw typeError('a Loss from `loss.*`', 'options.loss', o.loss);
  if (o.signal !== undefined && !(o.signal instanceof AbortSignal)) throw typeError('an AbortSignal', 'options.signal', o.signal);
  if (o.resume !== undefined) checkString(o.resume, 'options.resume');
  if (o.resumeRng !== undefined && typeof o.resumeRng !== 'boolean') throw typeError('a boolean', 'options.resumeRng', o.resumeRng);
  const callbacks = o.callbacks ?? [];
  if (!Array.isArray(callbacks)) throw typeError('an array of callbacks', 'options.callbacks', callbacks);
  let started: AsyncGenerator<FitEvent, EpochRecord[]> | null = null;
  const start = () => {
    if (started) throw new Error('A fit run can be consumed once: await it or iterate it, not both');
    started = run(model, o, callbacks);
    return started;
  };
  return {
    [Symbol.asyncIterator]: start,
    then(onFulfilled, onRejected) {
      const drain = async () => {
        const events = start();
        for (;;) {
          const next = await events.next();
          if (next.done) return next.value;
        }
      };
      return drain().then(onFulfilled, onRejected);
    },
  };
}

/** Steps per native job in fit's windows: few enough that an abort or an event waits little. */
const STEPS_PER_JOB = 16;

/** Groups consecutive batches into windows of up to `size`. */
async function* windows<T>(batches: AsyncIterable<T>, size: number): AsyncGenerator<T[]> {
  let window: T[] = [];
  for await (const batch of batches) {
    window.push(batch);
    if (window.length === size) {
      yield window;
      window = [];
    }
  }
  if (window.length > 0) yield window;
}

type StepSpec = Pick<TrainStepOptions, 'loss' | 'optimizer' | 'accumulate' | 'clipGradNorm' | 'amp'>;

/**
 * Trains one window of batches; each result carries the lr after its step, as a per-step
 * loop reads it. A window of one is a plain trainStep with the scheduler stepped after
 * each update. A longer one is one `trainSteps` job: the schedule is read ahead (each step's
 * group options travel with the job, as a per-step loop would set them), then the scheduler
 * is put back and stepped once per update the job made, so a skipped step (a non-finite
 * loss) delays the schedule exactly as it would have.
 */
async function trainWindow(model: Model, window: LoaderBatch<BatchInput>[], step: StepSpec, scheduler: Scheduler | undefined, windowed: boolean): Promise<(TrainStepResult & { lr: number })[]> {
  const optimizer = step.optimizer;
  const lrNow = () => optimizer.paramGroups[0]?.lr ?? 0;
  if (!windowed) {
    const r = await model.trainStep(window[0].input, window[0].target, step);
    if (r.stepped) scheduler?.step();
    return [{ ...r, lr: lrNow() }];
  }
  // An optimizer made from patterns binds at its first step; its groups must exist before
  // their options are read ahead.
  Optimizer.bind(optimizer, model);
  const saved = scheduler?.stateDict();
  const perStep = window.map(() => {
    const groups = Optimizer.optionsNow(optimizer);
    scheduler?.step();
    return groups;
  });
  if (saved) scheduler!.loadStateDict(saved);
  const results = await model.trainSteps(
    window.map((b) => ({ input: b.input, target: b.target })),
    { ...step, [kStepGroups]: perStep } as TrainStepOptions,
  );
  return results.map((r) => {
    if (r.stepped) scheduler?.step();
    return { ...r, lr: lrNow() };
  });
}

/**
 * The model now answers in the training data's classes and expects its preprocessing:
 * recorded so that save() and checkpoints carry them (see InputSpec).
 */
function recordTrainingData(model: Model, dataset: Loader<BatchInput>['dataset']): void {
  const { preprocessing, text, classes } = dataset;
  if (preprocessing || text || classes) {
    const meta = model.metadata !== null && typeof model.metadata === 'object' ? model.metadata : {};
    model.metadata = { ...meta, ...(preprocessing && { input: preprocessing }), ...(text && { text }), ...(classes && { classes }) };
  }
}

/** Data-parallel: every rank trains, and rank 0 alone runs the callbacks that write and print (`rankZeroOnly`). */
function callbacksOfThisRank(model: Model, callbacks: Callback[]): Callback[] {
  const group = groupOf(model);
  return group && group.rank !== 0 ? callbacks.filter((cb) => !cb.rankZeroOnly) : callbacks;
}

async function* run(model: Model, o: FitOptions, callbacks: Callback[]): AsyncGenerator<FitEvent, EpochRecord[]> {
  const lossFn = o.loss ?? crossEntropy();
  recordTrainingData(model, o.train.dataset);
  const group = groupOf(model);
  callbacks = callbacksOfThisRank(model, callbacks);
  let position: TrainingPosition = { epoch: 0, step: 0, stage: o.stage ?? 0, history: [], callbacks: {} };
  if (o.resume) {
    await model.idle(); // operations called before fit (a data-parallel broadcast) come first
    position = await loadCheckpoint(o.resume, { model, optimizer: o.optimizer, scheduler: o.scheduler, rng: o.resumeRng, rank: group?.rank });
  }
  let rngs: string[] | undefined;
  const history = position.history as EpochRecord[];
  const callbackState = position.callbacks;
  let stopReason: string | null = null;
  const written: string[] = [];
  const ctx: FitContext = {
    model,
    optimizer: o.optimizer,
    history,
    get epoch() {
      return position.epoch;
    },
    get step() {
      return position.step;
    },
    stop: (reason) => {
      stopReason ??= reason;
    },
    saveCheckpoint: async (path) => {
      await saveCheckpoint(path, { model, optimizer: o.optimizer, scheduler: o.scheduler, position, ...(rngs && { rngs }) });
      written.push(path);
    },
    callbackState,
  };
  try {
    const accumulate = o.accumulate ?? 1;
    // Data already in memory, one update per batch: many steps per native job (see trainWindow).
    const windowed = o.train.dataset.rows !== undefined && accumulate === 1 && callbacks.every((cb) => !cb.onBatchEnd || cb.observesBatches);
    for (let epoch = position.epoch; epoch < o.epochs && stopReason === null; epoch++) {
      const started = Date.now();
      model.train();
      yield { type: 'epochStart', epoch, batches: o.train.length, stage: position.stage };
      let lossSum = 0;
      let samples = 0;
      let correct = 0;
      let counted = 0;
      let batchIndex = 0;
      const step = { loss: lossFn, optimizer: o.optimizer, accumulate, ...(o.clipGradNorm && { clipGradNorm: o.clipGradNorm }), ...(o.amp && { amp: o.amp }) };
      for await (const window of windows(o.train.batches(epoch), windowed ? STEPS_PER_JOB : 1)) {
        if (o.signal?.aborted) {
          window.forEach(disposeBatch);
          stopReason = 'aborted';
          break;
        }
        const done = await trainWindow(model, window, step, o.scheduler instanceof Scheduler ? o.scheduler : undefined, windowed);
        for (const [k, r] of done.entries()) {
          const n = window[k].target.shape[0];
          if (!r.skipped) {
            lossSum += r.loss * n;
            samples += n;
          }
          if (r.correct !== undefined) {
            correct += r.correct;
            counted += n;
          }
          if (r.stepped) position.step += 1;
          const event = {
            type: 'batchEnd' as const,
            epoch,
            batch: batchIndex++,
            batches: o.train.length,
            step: position.step,
            loss: r.loss,
            lr: r.lr,
            ...(counted > 0 && { accuracy: correct / counted }),
          };
          for (const cb of callbacks) await cb.onBatchEnd?.(ctx, event);
          yield event;
        }
        window.forEach(disposeBatch);
      }
      if (stopReason === 'aborted') break;
      if (accumulate > 1 && (await o.optimizer.flush(accumulate))) {
        position.step += 1;
        if (o.scheduler instanceof Scheduler) o.scheduler.step();
      }
      if (group) {
        // The epoch's training numbers over all ranks, and each rank's generator for a
        // checkpoint, so that every rank resumes its own dropout stream.
        const sums = tensor(Float64Array.of(lossSum, samples, correct, counted));
        [lossSum, samples, correct, counted] = (await group.allReduce(sums)).toTypedArray() as Float64Array;
        sums.dispose();
        const state = tensor(new Uint8Array(native.getRngState()));
        const all = await group.allGather(state);
        rngs = all.map((t) => Buffer.from((t.toTypedArray() as Uint8Array).buffer).toString('base64'));
        [state, ...all].forEach((t) => t.dispose());
      }
      const val = o.val ? await model.evaluate(o.val, { loss: lossFn, ...(o.metrics && { metrics: o.metrics }) }) : undefined;
      if (o.scheduler instanceof PlateauScheduler) {
        if (val?.loss === undefined) throw new RangeError('Expected a `val` loader for a reduceOnPlateau scheduler but received none');
        o.scheduler.step(val.loss);
      }
      const record: EpochRecord = {
        epoch,
        trainLoss: samples > 0 ? lossSum / samples : Number.NaN,
        ...(counted > 0 && { trainAccuracy: correct / counted }),
        ...(val && { val }),
        lr: o.optimizer.paramGroups.map((g) => g.lr),
        seconds: (Date.now() - started) / 1000,
        stage: position.stage,
      };
      history.push(record);
      position.epoch = epoch + 1;
      for (const cb of callbacks) await cb.onEpochEnd?.(ctx, record);
      yield { type: 'epochEnd', record };
      for (const path of written.splice(0)) yield { type: 'checkpoint', path, epoch };
    }
    if (stopReason) yield { type: 'stopped', reason: stopReason };
    return history;
  } finally {
    // As fastai does: a trained model is ready for inference (dropout off, BatchNorm on its
    // running statistics) until someone asks for train() again, also after a failure.
    if (!model.disposed) model.eval();
  }
}

function monitored(record: EpochRecord, monitor: string): number {
  const [scope, name] = monitor.includes('.') ? monitor.split('.', 2) : ['val', monitor];
  const source = scope === 'train' ? { loss: record.trainLoss, accuracy: record.trainAccuracy } : record.val;
  const value = (source as Record<string, unknown> | undefined)?.[name];
  if (typeof value !== 'number') throw new RangeError(`Expected a metric named \`${monitor}\` in the epoch record but it has none; evaluate on a val loader with that metric`);
  return value;
}

function improved(mode: 'min' | 'max', value: number, best: number | undefined, minDelta = 0): boolean {
  return best === undefined || (mode === 'min' ? value < best - minDelta : value > best + minDelta);
}

/** Stops when `monitor` (`'val.loss'`, `'val.accuracy'`, …) has not improved for `patience` epochs. */
export function earlyStopping(options?: { monitor?: string; patience?: number; mode?: 'min' | 'max'; minDelta?: number }): Callback {
  const o = checkOptions<{ monitor: string; patience: number; mode: 'min' | 'max'; minDelta: number }>(options, 'options', ['monitor', 'patience', 'mode', 'minDelta']);
  const monitor = o.monitor ?? 'val.loss';
  const patience = checkInteger(o.patience ?? 3, 'options.patience', 0, 'a non-negative integer');
  const mode = checkOneOf(o.mode ?? (monitor.endsWith('loss') ? 'min' : 'max'), 'options.mode', ['min', 'max'] as const);
  const minDelta = checkFiniteNumber(o.minDelta ?? 0, 'options.minDelta');
  return {
    name: 'earlyStopping',
    onEpochEnd(ctx, record) {
      const state = (ctx.callbackState.earlyStopping ??= { best: undefined, bad: 0 }) as { best?: number; bad: number };
      const value = monitored(record, monitor);
      if (improved(mode, value, state.best, minDelta)) {
        state.best = value;
        state.bad = 0;
      } else if (++state.bad > patience) {
        ctx.stop(`early stopping: ${monitor} did not improve for ${patience} epochs`);
      }
    },
  };
}

export interface CheckpointOptions {
  /** Folder for `epoch-N.ckpt` files (`stage-S-epoch-N.ckpt` in fineTune's later stages) and `best.ckpt`. */
  dir: string;
  /** Metric for `saveBest`. Defaults to `'val.loss'`. */
  monitor?: string;
  /** Also keep `best.ckpt`, the best epoch so far. Defaults to `true`. */
  saveBest?: boolean;
  /** How many `epoch-N.ckpt` files to keep. Defaults to `1`. */
  keepLast?: number;
  /** Defaults to `'min'` for losses, else `'max'`. */
  mode?: 'min' | 'max';
}

/** Writes a checkpoint (weights, optimizer, schedule, position, RNG) after every epoch. */
export function checkpoint(options: CheckpointOptions): Callback {
  const o = checkOptions<CheckpointOptions>(options, 'options', ['dir', 'monitor', 'saveBest', 'keepLast', 'mode']);
  const dir = checkString(o.dir, 'options.dir');
  const monitor = o.monitor ?? 'val.loss';
  const saveBest = o.saveBest ?? true;
  const keepLast = checkPositiveInteger(o.keepLast ?? 1, 'options.keepLast');
  const mode = checkOneOf(o.mode ?? (monitor.endsWith('loss') ? 'min' : 'max'), 'options.mode', ['min', 'max'] as const);
  return {
    name: 'checkpoint',
    rankZeroOnly: true,
    async onEpochEnd(ctx, record) {
      await mkdir(dir, { recursive: true });
      const state = (ctx.callbackState.checkpoint ??= { best: undefined }) as { best?: number };
      const prefix = record.stage > 0 ? `stage-${record.stage}-` : '';
      await ctx.saveCheckpoint(join(dir, `${prefix}epoch-${record.epoch + 1}.ckpt`));
      if (saveBest && record.val) {
        const value = monitored(record, monitor);
        if (improved(mode, value, state.best)) {
          state.best = value;
          await ctx.saveCheckpoint(join(dir, 'best.ckpt'));
        }
      }
      const pattern = new RegExp(`^${prefix}epoch-(\\d+)\\.ckpt$`);
      const old = (await readdir(dir)).map((f) => pattern.exec(f)).filter((m) => m !== null).map((m) => Number(m![1])).sort((a, b) => b - a).slice(keepLast);
      await Promise.all(old.map((n) => rm(join(dir, `${prefix}epoch-${n}.ckpt`), { force: true })));
    },
  };
}

/** Appends one JSON line per epoch (and a final one on stop) to `path`. */
export function jsonlLogger(path: string): Callback {
  checkString(path, 'path');
  return {
    name: 'jsonlLogger',
    rankZeroOnly: true,
    async onEpochEnd(_ctx, record) {
      await appendFile(path, `${JSON.stringify(record)}\n`);
    },
  };
}

export interface FineTuneOptions {
  train: Loader<BatchInput>;
  val?: Loader<BatchInput>;
  /** Replaces the head with a fresh Linear of this many outputs. Defaults to keeping the head. */
  numClasses?: number;
  /** Dropout before the new head. Defaults to `0`. */
  dropout?: number;
  /** Epochs training the head with the body frozen. Defaults to `1`, or more for a short loader (see `minSteps`). */
  freezeEpochs?: number;
  /** Epochs after unfreezing, split over the unfreeze stages. Defaults to `3`, or more for a short loader (see `minSteps`). */
  epochs?: number;
  /**
   * With neither `freezeEpochs` nor `epochs` given, the default 1 + 3 epochs are both
   * multiplied by the smallest whole factor that makes the run at least this many optimizer
   * steps. Four epochs of 50 images at batch 32 are 8 steps: in the recipe sweep that left
   * models 10 to 50 points short of what the same data reaches in 128 steps
   * (bench/results/recipes.md). Epoch counts given explicitly are kept as they are; the
   * counts used are in the result. Defaults to `128`.
   */
  minSteps?: number;
  /**
   * Peak lr of the head (halved after the frozen phase, as fastai does). `'auto'` runs an
   * LR range test ({@link findLr}) on the model as the first phase will train it (new
   * head, body frozen), reads the lr off it by `lrRule` times `lrScale`, and puts the model and the
   * random generator back before training; the choice is in the result's `lr`.
   * Defaults to `'auto'`.
   */
  lr?: number | 'auto';
  /**
   * How `lr: 'auto'` reads the range test. With the default lr ratio of 3, fastai's
   * `'valley'` landed closer to the best of an lr grid on five unseen datasets than
   * `'peak'` (the lr at the lowest loss, Leslie Smith's top of a one-cycle schedule), which
   * did better only with a ratio of 100 (bench/results/recipes.md). Defaults to `'valley'`.
   */
  lrRule?: LrRule;
  /**
   * Multiplies the lr that `lr: 'auto'` reads off the range test. The rules point into the
   * falling stretch of a 100-step test whose lr rises tenfold every dozen steps, while a
   * one-cycle schedule spends most of its steps well below its peak; in the recipe sweep
   * the valley times 7 landed closest to the best grid lr for both model families (valley
   * alone underfit by 6.5–8.5 points). Defaults to `7`.
   */
  lrScale?: number;
  /**
   * With `lr: 'auto'`, chooses among lrs around the range test's by trial, since on a few
   * hundred samples the range test alone is noisy: it holds out a fifth of each class, runs
   * this same recipe on the rest at the range test's lr times each of 1/4, 1/2, 1, 2 and 4,
   * scores each run on the held-out part, and trains on all the data at the lr whose held-out
   * loss plus twice its error rate (the loss alone without class targets) is lowest. Where a
   * fifth holds out fewer than 100 samples, each lr runs on all five fifths in turn
   * (five-fold cross-validation) and is scored on every sample: a fifth of 10 labels a class
   * is 2 a class, too few to rank lrs by (bench/results/recipes.md). The trials cost five
   * runs on 80% of the data, 25 on such small sets; the model and the random generator are
   * put back before each and after them, so the final run equals one given the chosen lr.
   * `'auto'` searches on training sets of at most 2,000 samples, where trials are cheap and
   * the range test least reliable, and says otherwise in the result's `lrFinder.search`.
   * A trial can be chosen only where its held-out accuracy beats always answering the
   * commonest class by more than luck gives (a one-sided binomial test at 5%, over all the
   * trials): one at chance ranks by noise. Where none can, fineTune trains at the range
   * test's lr under the model's BatchNorm policy, sets `lrFinder.search.abstained` and warns
   * (code `TORCHLITE_NO_SIGNAL`).
   * With `bnPolicy: 'auto'` the search may also try BatchNorm policy `'eval'` (see
   * `bnPolicy`). Defaults to `'auto'`.
   */
  lrSearch?: boolean | 'auto';
  /**
   * How BatchNorm layers train (see {@link Model.bnPolicy}): a policy, set on the model for
   * this run and left there, or `'auto'`: the model's own policy, except that where `lrSearch`
   * runs on a model with BatchNorm layers that its body's unfreezing trains, the search also
   * tries `'eval'` (every BatchNorm layer on its running statistics) at ¼, ½ and 1× the range
   * test's lr, eight trials in all (40 runs on small sets). The best trial wins as before, but
   * one under `'eval'` only where its three trials also have the lower mean held-out loss than
   * the model's policy at those lrs (else the model's policy's best trial does); the final run
   * trains under the winner's policy, which stays set on the model and is in the result's `bnPolicy`.
   * Which policy suits depends on the model: in the recipe sweep (bench/results/recipes.md),
   * `'eval'` raised MobileNetV3's best grid accuracy by 5.2 points and cost the shipped CNN
   * 8.5; it diverged on MobileNetV3 from lr 0.03, and at the higher trial lrs a CNN run
   * on all the data collapsed where its trials on 80% had trained well, hence the lower three
   * lrs only. Defaults to `'auto'`.
   */
  bnPolicy?: BatchNormPolicy | 'auto';
  /**
   * The earliest layers train at `lr / lrMult`, later ones geometrically closer to `lr`.
   * fastai's 100 suits long ImageNet runs. In the recipe sweep (bench/results/recipes.md),
   * one lr for every block landed within 2 points of the best grid lr in 23 of 30 cells
   * against 18 at a ratio of 3: a BatchNorm-heavy MobileNetV3 body wants as much lr as its
   * head, and the small CNN lost little. Defaults to `1`.
   */
  lrMult?: number;
  /** `'all'` at once, or stages of prefixes to unfreeze in turn, e.g. `['layer4', 'layer3', 'all']`. Defaults to `'all'`. */
  unfreeze?: 'all' | string[];
  /** AdamW's decoupled weight decay. Defaults to `0.01`. */
  weightDecay?: number;
  /** The share of each phase's steps over which one-cycle warms up to its peak lr. Defaults to `0.3`. */
  pctStart?: number;
  /**
   * Trains the head-only phase on cached backbone features: with the body frozen, BatchNorm
   * on its running statistics (the default policy) and no augmentation, the head's inputs are
   * the same every epoch, so one forward pass computes them and the head trains alone on them
   * (the LR range test too); a dropout right before the head is replayed on them with the same
   * random draws. The result equals training the whole model within float noise. `'auto'` uses the cache where that
   * holds, the classifier is the model's last step, and the cache fits `cacheBudgetMB`, and
   * says why not in the result's `featureCache` otherwise; `true` makes a reason an error.
   * Runs with a `checkpoint` callback, resumed runs and data-parallel models train the whole
   * model (a checkpoint must hold it). Callbacks see the head alone as `ctx.model` meanwhile.
   * Defaults to `'auto'`.
   */
  cacheFeatures?: boolean | 'auto';
  /** The memory the cached features of both splits may take, in MiB. Defaults to `1024`. */
  cacheBudgetMB?: number;
  loss?: Loss;
  metrics?: MetricSpec[];
  callbacks?: Callback[];
  signal?: AbortSignal;
  /**
   * A checkpoint written during an earlier fineTune (by a `checkpoint` callback) to continue
   * from: finished stages are skipped and the interrupted one resumes exactly.
   */
  resume?: string;
  /** As {@link FitOptions.resumeRng}. Defaults to `true`. */
  resumeRng?: boolean;
}

/** What {@link fineTune} resolves: the epoch records, and the lr it used. */
export type FineTuneHistory = EpochRecord[] & {
  /** The head's peak lr: the one given, or the one `lr: 'auto'` chose. */
  lr: number;
  /** The epoch counts used: as given, or the defaults scaled by `minSteps`. */
  freezeEpochs: number;
  epochs: number;
  /** The BatchNorm policy the run trained under: as given, or the one `bnPolicy: 'auto'` chose. */
  bnPolicy: BatchNormPolicy;
  /** How the head-only phase ran: on cached features or not, and why not. */
  featureCache?: FeatureCacheReport;
  /**
   * With `lr: 'auto'`: the rule and scale used, what each rule read off the range test, and
   * the search around the rule's suggestion × `scale` that chose `lr` (see `lrSearch`).
   */
  lrFinder?: { rule: LrRule; scale: number; suggestions: Record<LrRule, number>; search: LrSearchReport };
};

/** How `lrSearch` chose fineTune's lr. */
export interface LrSearchReport {
  /** Whether the trials ran. */
  used: boolean;
  /** Why they did not run, or (where `abstained`) why none of them was chosen. */
  reason?: string;
  /** The training samples held out to score each trial, over all folds. */
  holdout?: number;
  /** The held-out folds each lr ran on: 5 when one fold holds out fewer than 100 samples, else 1. */
  folds?: number;
  /** What ranked the trials: `'loss + 2 × error rate'` where they report accuracy, else `'loss'`. */
  score?: string;
  /** Each trial, in the order run. */
  trials?: LrTrial[];
  /** With class targets: the commonest class's share of the held-out samples, the accuracy of always answering it. */
  chance?: number;
  /**
   * True where no trial could be chosen (see {@link bestTrial}): none beat `chance` beyond luck,
   * or only the second BatchNorm policy's did and that policy lost, or every trial diverged.
   * fineTune then trains at the range test's lr under the model's BatchNorm policy, says why
   * in `reason` and warns (code `TORCHLITE_NO_SIGNAL`).
   */
  abstained?: boolean;
}

/** One of `lrSearch`'s trials: its lr and BatchNorm policy, and its held-out loss (and accuracy, for classification) over all folds. */
export interface LrTrial {
  lr: number;
  bnPolicy: BatchNormPolicy;
  loss: number;
  accuracy?: number;
  /** With class targets: whether its held-out accuracy beats the search's `chance` beyond luck (see {@link beatsChance}); only such a trial can be chosen. */
  beatsChance?: boolean;
}

/** The lrs `lrSearch` tries, as factors of the range test's. */
const LR_TRIAL_FACTORS = [0.25, 0.5, 1, 2, 4];
/** The lower of those, at which `bnPolicy: 'auto'` also tries BatchNorm policy 'eval'. */
const LR_TRIAL_EVAL_FACTORS = LR_TRIAL_FACTORS.slice(0, 3);
/** The largest training set `lrSearch: 'auto'` searches on. */
const LR_SEARCH_MAX_SAMPLES = 2000;
/** Holding out fewer samples than this, `lrSearch` runs each lr on all five folds rather than one. */
const LR_SEARCH_MIN_HOLDOUT = 100;
/** How much a trial's held-out error rate adds to its held-out loss in `lrSearch`'s score. */
const LR_TRIAL_ERROR_WEIGHT = 2;
/** How unlikely by luck alone a trial's held-out accuracy must be, over all the trials, for `lrSearch` to choose it (see `beatsChance`). */
const LR_TRIAL_SIGNIFICANCE = 0.05;

type Parts = { train: Dataset<BatchInput>; val: Dataset<BatchInput> };

/** What one fineTune trains, whatever the lr and the data: the trials and the final run share it. */
interface Recipe {
  headPath: string;
  stages: string[];
  freezeEpochs: number;
  epochs: number;
  lrMult: number;
  weightDecay: number;
  pctStart?: number;
  loss?: Loss;
  signal?: AbortSignal;
}

/**
 * The fastai recipe: new head, body frozen, one-cycle on the head for `freezeEpochs`;
 * then unfreeze (at once or in stages) with discriminative lrs and one-cycle again. The
 * BatchNorm policy keeps frozen BatchNorm layers in eval mode throughout.
 */
export async function fineTune(model: Model, options: FineTuneOptions): Promise<FineTuneHistory> {
  const o = checkOptions<FineTuneOptions>(options, 'options', ['train', 'val', 'numClasses', 'dropout', 'freezeEpochs', 'epochs', 'minSteps', 'lr', 'lrRule', 'lrScale', 'lrSearch', 'bnPolicy', 'lrMult', 'unfreeze', 'weightDecay', 'pctStart', 'cacheFeatures', 'cacheBudgetMB', 'loss', 'metrics', 'callbacks', 'signal', 'resume', 'resumeRng']) as FineTuneOptions;
  const resumed = o.resume === undefined ? undefined : await readCheckpointPosition(checkString(o.resume, 'options.resume'));
  const resumeStage = resumed?.stage ?? -1;
  const minSteps = checkInteger(o.minSteps ?? 128, 'options.minSteps', 0, 'a non-negative integer');
  // Scaling only the defaults keeps an explicit epoch count exact, as the user wrote it.
  const repeat = o.freezeEpochs === undefined && o.epochs === undefined ? Math.max(1, Math.ceil(minSteps / (4 * Math.max(o.train.length, 1)))) : 1;
  const freezeEpochs = checkInteger(o.freezeEpochs ?? repeat, 'options.freezeEpochs', 0, 'a non-negative integer');
  const epochs = checkInteger(o.epochs ?? 3 * repeat, 'options.epochs', 0, 'a non-negative integer');
  const auto = o.lr === undefined || o.lr === 'auto';
  if (!auto && (checkFiniteNumber(o.lr, 'options.lr') as number) <= 0) throw rangeError("a positive number or 'auto'", 'options.lr', o.lr);
  const rule = checkOneOf(o.lrRule ?? 'valley', 'options.lrRule', ['valley', 'peak', 'minimum', 'steepest'] as const);
  const lrScale = checkFiniteNumber(o.lrScale ?? 7, 'options.lrScale');
  if (lrScale <= 0) throw rangeError('a positive number', 'options.lrScale', lrScale);
  const lrSearch = o.lrSearch ?? 'auto';
  if (lrSearch !== true && lrSearch !== false && lrSearch !== 'auto') throw typeError("true, false or 'auto'", 'options.lrSearch', lrSearch);
  const bnPolicy = checkOneOf(o.bnPolicy ?? 'auto', 'options.bnPolicy', ['auto', ...BATCH_NORM_POLICIES] as const);
  const lrMult = checkFiniteNumber(o.lrMult ?? 1, 'options.lrMult');
  if (lrMult < 1) throw rangeError('a number ≥ 1', 'options.lrMult', lrMult);
  const stages = o.unfreeze === undefined || o.unfreeze === 'all' ? ['all'] : o.unfreeze;
  if (!Array.isArray(stages) || stages.length === 0) throw typeError("'all' or a non-empty array of prefixes", 'options.unfreeze', o.unfreeze);
  await model.idle(); // operations called before (a data-parallel broadcast) come first
  if (bnPolicy !== 'auto') model.bnPolicy = bnPolicy;
  const head = o.numClasses === undefined ? undefined : model.resetClassifier(o.numClasses, { dropout: o.dropout ?? 0 });
  const headPath = head ?? model.classifierHead();
  if (headPath === undefined) throw new RangeError('Expected a model with a Linear head for `fineTune` but found none; pass `numClasses`');
  model.freeze();
  model.unfreeze(headPath);
  const recipe: Recipe = { headPath, stages, freezeEpochs, epochs, lrMult, weightDecay: o.weightDecay ?? 0.01, pctStart: o.pctStart, loss: o.loss, signal: o.signal };
  let { cache, featureCache } = await headOnlyCache(model, headPath, o, freezeEpochs, resumeStage);
  try {
    // A resumed run reuses the lr its checkpoint recorded: a new range test on weights
    // already trained would pick another one and break exact resumption.
    const recorded = resumed?.callbacks.fineTune as { lr?: number; bnPolicy?: BatchNormPolicy } | undefined;
    if (bnPolicy === 'auto' && recorded?.bnPolicy !== undefined) model.bnPolicy = recorded.bnPolicy;
    let finder: FineTuneHistory['lrFinder'];
    let baseLr: number;
    if (!auto) baseLr = o.lr as number;
    else if (recorded?.lr !== undefined) baseLr = recorded.lr;
    else {
      const found = await findLr(cache?.head ?? model, cache?.train ?? o.train, { ...(o.loss && { loss: o.loss }) });
      const suggested = found.suggestions[rule] * lrScale;
      const plan = planLrSearch(o, lrSearch);
      let search: LrSearchReport;
      if (plan.used) {
        // The trials train the whole model: the head goes back in now, and the cache is made
        // again after them, under the policy they chose.
        if (cache) await restoreHead(model, headPath, cache.head);
        const policies = bnPolicy === 'auto' && model.bnPolicy !== 'eval' && bodyBatchNormTrains(model, headPath, recipe) ? [model.bnPolicy, 'eval' as const] : [model.bnPolicy];
        ({ lr: baseLr, report: search } = await searchLr(model, recipe, o, suggested, plan.folds, policies));
        ({ cache, featureCache } = await headOnlyCache(model, headPath, o, freezeEpochs, resumeStage));
      } else {
        baseLr = suggested;
        search = plan;
      }
      finder = { rule, scale: lrScale, suggestions: found.suggestions, search };
    }
    const trainedUnder = model.bnPolicy;
    const remember: Callback = {
      name: 'fineTune',
      onEpochEnd: (ctx) => {
        ctx.callbackState.fineTune = { lr: baseLr, bnPolicy: trainedUnder };
      },
    };
    const history: FineTuneHistory = Object.assign([] as EpochRecord[], { lr: baseLr, bnPolicy: trainedUnder, freezeEpochs, epochs, ...(finder && { lrFinder: finder }), ...(featureCache && { featureCache }) });
    await runRecipe(model, recipe, baseLr, { train: o.train, val: o.val, cache, metrics: o.metrics, callbacks: [remember, ...(o.callbacks ?? [])], resume: o.resume, resumeStage, resumeRng: o.resumeRng }, history);
    return history;
  } finally {
    // The trained head goes back into the model, also when training failed.
    if (cache) await restoreHead(model, headPath, cache.head);
  }
}

/**
 * Trains `recipe` at head lr `baseLr`: the head-only phase (on the feature cache when there
 * is one), then the unfreeze stages; each epoch's record goes into `records`.
 */
async function runRecipe(
  model: Model,
  recipe: Recipe,
  baseLr: number,
  run: { train: Loader<BatchInput>; val?: Loader<BatchInput>; cache?: FeatureCache; metrics?: MetricSpec[]; callbacks: Callback[]; resume?: string; resumeStage: number; resumeRng?: boolean },
  records: EpochRecord[],
): Promise<void> {
  const { headPath, signal } = recipe;
  const common = { loss: recipe.loss, metrics: run.metrics, callbacks: run.callbacks, signal };
  const phase = async (stage: number, epochCount: number, groups: ParamGroupSpec[], peak: number[], on = { model, train: run.train, val: run.val }): Promise<void> => {
    // Stages a resumed run already finished only replay their freezing, not their training.
    if (epochCount === 0 || signal?.aborted || stage < run.resumeStage) return;
    using optimizer = adamw(groups, { weightDecay: recipe.weightDecay });
    const scheduler = oneCycle(optimizer, { maxLr: peak, totalSteps: epochCount * on.train.length, ...(recipe.pctStart !== undefined && { pctStart: recipe.pctStart }) });
    const resume = stage === run.resumeStage ? run.resume : undefined;
    const done = await fit(on.model, { ...common, train: on.train, val: on.val, epochs: epochCount, optimizer, scheduler, stage, ...(resume && { resume, resumeRng: run.resumeRng }) });
    records.push(...done.map((r) => ({ ...r, epoch: records.length + r.epoch })));
  };
  if (run.cache) {
    await phase(0, recipe.freezeEpochs, [{ params: /.*/ }], [baseLr], { model: run.cache.head, train: run.cache.train, val: run.cache.val });
    await restoreHead(model, headPath, run.cache.head);
    recordTrainingData(model, run.train.dataset);
  } else {
    await phase(0, recipe.freezeEpochs, [{ params: headPath }], [baseLr]);
  }
  const lr = baseLr / 2;
  const topLevel = [...new Set(model.parameters().map((p) => p.name.split('.')[0]))];
  const perStage = recipe.stages.map((_, i) => Math.floor(recipe.epochs / recipe.stages.length) + (i < recipe.epochs % recipe.stages.length ? 1 : 0));
  for (const [i, prefix] of recipe.stages.entries()) {
    if (prefix === 'all') model.unfreeze();
    else model.unfreeze(prefix);
    // Discriminative lrs: each top-level block gets its own group, lr rising geometrically
    // from lr/lrMult (first block) to lr (the head).
    const trainable = topLevel.filter((block) => model.parameters().some((p) => p.requiresGrad && (p.name === block || p.name.startsWith(`${block}.`))));
    const peaks = trainable.map((_, k) => (trainable.length === 1 ? lr : lr / recipe.lrMult ** (1 - k / (trainable.length - 1))));
    await phase(i + 1, perStage[i], trainable.map((block) => ({ params: block })), peaks);
  }
}

/**
 * Whether `lrSearch` runs, with the held-out folds it scores on (a fifth of each class each):
 * one, or all five where one holds out too few samples to rank lrs; why not otherwise.
 */
function planLrSearch(o: FineTuneOptions, mode: boolean | 'auto'): { used: true; folds: Parts[] } | { used: false; reason: string } {
  const ds = o.train.dataset;
  if (mode === false) return { used: false, reason: 'lrSearch: false' };
  if (mode === 'auto' && ds.length > LR_SEARCH_MAX_SAMPLES)
    return { used: false, reason: `the training set has ${ds.length} samples, over the ${LR_SEARCH_MAX_SAMPLES} up to which lrSearch: 'auto' searches (pass lrSearch: true to search anyway)` };
  const stratify = isClassification(ds, o.loss);
  const fold = (index: number): Parts | undefined => {
    try {
      return split(ds, { val: 0.2, stratify, fold: index });
    } catch (error) {
      if (error instanceof RangeError) return undefined; // nothing to hold out in this fold
      throw error;
    }
  };
  const first = fold(0);
  if (!first) {
    const reason = `${ds.length} training samples leave none to hold out for the trials`;
    if (mode === true) throw new TorchError('TORCHLITE_BAD_ARGUMENT', `lrSearch: true cannot apply: ${reason}; pass lrSearch: 'auto' (or false)`);
    return { used: false, reason };
  }
  if (first.val.length >= LR_SEARCH_MIN_HOLDOUT) return { used: true, folds: [first] };
  // Folds of tiny classes can come out empty (a class of 3 fills three folds of one).
  return { used: true, folds: [first, ...[1, 2, 3, 4].map(fold).filter((parts) => parts !== undefined)] };
}

/** Class-index targets under a classification loss: the held-out split is stratified, and the trials report accuracy too. */
function isClassification(ds: Dataset<BatchInput>, loss: Loss | undefined): boolean {
  return ds.targetShape.length === 0 && (loss === undefined || ['crossEntropy', 'nll'].includes(loss.kind));
}

/**
 * Whether a BatchNorm layer trains once the body unfreezes, so that the BatchNorm policy
 * matters: the head-only phase keeps a frozen body's BatchNorm in eval mode under every policy.
 */
function bodyBatchNormTrains(model: Model, headPath: string, recipe: Recipe): boolean {
  if (recipe.epochs === 0) return false;
  // The stages match as `model.unfreeze` matches them: prefixes, globs or RegExps.
  const unfrozen = recipe.stages.map((stage) => (stage === 'all' ? () => true : compilePattern(stage)));
  const inHead = compilePattern(headPath);
  return model.modules().some((m) => /BatchNorm/.test(m.type) && m.params > 0 && !inHead(m.path) && unfrozen.some((matches) => matches(m.path)));
}

/**
 * `lrSearch`'s trials: the recipe at `suggested` times each of LR_TRIAL_FACTORS under the
 * first of `policies`, and times each of LR_TRIAL_EVAL_FACTORS under the second where there
 * is one, on the training part of each fold, scored on its held-out part (the loss and
 * accuracy over all folds' held-out samples); the model (new head, body frozen) and the
 * generator are put back before each run and afterwards. Resolves the winner's lr, with the
 * report, and leaves its policy set on the model.
 */
async function searchLr(model: Model, recipe: Recipe, o: FineTuneOptions, suggested: number, folds: Parts[], policies: BatchNormPolicy[]): Promise<{ lr: number; report: LrSearchReport }> {
  const classification = isClassification(o.train.dataset, o.loss);
  const lossFn = o.loss ?? crossEntropy();
  const saved = await snapshot(model, { rng: true });
  const plan = [...LR_TRIAL_FACTORS.map((factor) => ({ factor, bnPolicy: policies[0] })), ...(policies.length > 1 ? LR_TRIAL_EVAL_FACTORS.map((factor) => ({ factor, bnPolicy: policies[1] })) : [])];
  const trials: LrTrial[] = [];
  const listeners = callbacksOfThisRank(model, o.callbacks ?? []).filter((cb) => cb.onLrTrial);
  const holdout = folds.reduce((n, parts) => n + parts.val.length, 0);
  const chance = classification ? majorityShare(folds) : undefined;
  let runs = 0;
  try {
    for (const [k, { factor, bnPolicy }] of plan.entries()) {
      const lr = suggested * factor;
      model.bnPolicy = bnPolicy;
      let [loss, hits] = [0, 0];
      for (const parts of folds) {
        if (o.signal?.aborted) break;
        if (runs++ > 0) startOver(model, recipe.headPath, saved);
        const fitOn = o.train.withDataset(parts.train);
        const { cache } = await headOnlyCache(model, recipe.headPath, { ...o, train: fitOn, val: undefined, callbacks: undefined }, recipe.freezeEpochs, -1);
        try {
          await runRecipe(model, recipe, lr, { train: fitOn, cache, callbacks: [], resumeStage: -1 }, []);
        } finally {
          if (cache) await restoreHead(model, recipe.headPath, cache.head);
        }
        const scored = await model.evaluate(o.train.withDataset(parts.val), { loss: lossFn, metrics: classification ? ['accuracy'] : [] });
        loss += scored.loss! * parts.val.length;
        hits += (scored.accuracy ?? 0) * parts.val.length;
      }
      if (o.signal?.aborted) break;
      const scored = { lr, bnPolicy, loss: loss / holdout, ...(classification && { accuracy: hits / holdout }) };
      const trial = chance === undefined ? scored : { ...scored, beatsChance: beatsChance(scored, holdout, chance, plan.length) };
      trials.push(trial);
      for (const cb of listeners) await cb.onLrTrial!(trial, k, plan.length);
    }
  } finally {
    startOver(model, recipe.headPath, saved);
    saved.dispose();
  }
  if (trials.length === 0) {
    model.bnPolicy = policies[0];
    return { lr: suggested, report: { used: false, reason: 'aborted' } };
  }
  const score = classification ? `loss + ${LR_TRIAL_ERROR_WEIGHT} × error rate` : 'loss';
  const report: LrSearchReport = { used: true, holdout, folds: folds.length, score, trials, ...(chance !== undefined && { chance }) };
  const chosen = trials[bestTrial(trials)];
  if (chosen) {
    model.bnPolicy = chosen.bnPolicy;
    return { lr: chosen.lr, report };
  }
  model.bnPolicy = policies[0];
  const reason = whyNoTrial(trials, holdout, chance);
  // Every rank decides alike (the held-out scores are summed over the ranks); rank 0 alone says so.
  if ((groupOf(model)?.rank ?? 0) === 0) {
    const advice = chance === undefined ? 'Pass a lower lrScale, or an lr.' : 'Few labels, or features that do not suit this data: add labels, or start from a model pretrained nearer to it.';
    process.emitWarning(`lrSearch: ${reason}, so fineTune trains at the range test's lr ${suggested.toExponential(2)} under bnPolicy '${policies[0]}'. ${advice}`, { code: 'TORCHLITE_NO_SIGNAL' });
  }
  return { lr: suggested, report: { ...report, abstained: true, reason } };
}

/** Why {@link bestTrial} found no trial to choose among `trials`, scored on `holdout` samples against `chance` (none for regression). */
function whyNoTrial(trials: LrTrial[], holdout: number, chance: number | undefined): string {
  if (chance === undefined) return `every trial's held-out loss diverged, from ${LR_TRIAL_FACTORS[0]} × the range test's lr up`;
  const first = trials[0].bnPolicy;
  // Only the second policy's trials beat chance, and that policy lost on mean loss (bestTrial).
  const otherWins = trials.some((t) => t.beatsChance);
  const top = Math.max(...trials.filter((t) => !otherWins || t.bnPolicy === first).map((t) => t.accuracy!));
  const which = otherWins ? ` under bnPolicy '${first}'` : '';
  const other = otherWins ? `, and the '${trials.find((t) => t.bnPolicy !== first)!.bnPolicy}' trials, some of which did, had the higher mean held-out loss` : '';
  return `no trial${which} did better on its ${holdout} held-out samples than always answering the commonest class (${percent(chance)}; the best ${otherWins ? 'of them' : 'trial'} reached ${percent(top)})${other}`;
}

const percent = (share: number) => `${(share * 100).toFixed(1)}%`;

/** The share of the folds' held-out samples in their commonest class: the accuracy of always answering it. */
function majorityShare(folds: Parts[]): number {
  const counts = new Map<number, number>();
  let total = 0;
  for (const { val } of folds)
    for (let i = 0; i < val.length; i++, total++) {
      const target = val.target(i);
      counts.set(target, (counts.get(target) ?? 0) + 1);
    }
  return Math.max(...counts.values()) / total;
}

/**
 * Whether a trial's held-out accuracy is above `chance` (the commonest class's share of the
 * `holdout` samples) beyond what luck gives: its hit count has a one-sided binomial p-value
 * of at most LR_TRIAL_SIGNIFICANCE divided by the number of `trials` run (Bonferroni: each
 * is tested). A diverged trial never is. A trial at chance ranks lrs by noise: in the recipe
 * sweep, MobileNetV3 on letters at 10 labels a class (26% at its best grid lr, on five
 * classes) picked the lr of a run that collapsed to near-uniform outputs in 5 of 10 seeds,
 * since those score about ln(classes) and beat runs that learned a little but are
 * overconfident; where no trial beat chance, the range test's lr landed 0.3 points above
 * the best grid lr there, against 2.3 short (bench/results/recipes.md, "When the trials
 * find nothing").
 */
export function beatsChance(trial: Pick<LrTrial, 'loss' | 'accuracy'>, holdout: number, chance: number, trials: number): boolean {
  return Number.isFinite(trial.loss) && binomialTail(holdout, Math.round(trial.accuracy! * holdout), chance) <= LR_TRIAL_SIGNIFICANCE / trials;
}

/** P(X ≥ k) for X ~ Binomial(n, p), each term in logs so that none underflows on large n. */
function binomialTail(n: number, k: number, p: number): number {
  // A sure event (p = 1: one class held out) would give 0 × -∞ in the logs below.
  if (k <= 0 || p >= 1) return 1;
  let [logChoose, tail] = [0, 0];
  for (let i = 1; i <= n; i++) {
    logChoose += Math.log((n - i + 1) / i);
    if (i >= k) tail += Math.exp(logChoose + i * Math.log(p) + (n - i) * Math.log1p(-p));
  }
  return Math.min(1, tail);
}

/**
 * The trial fineTune trains at, or -1 where there is none to choose: the lowest held-out score
 * among the trials that neither diverged nor failed to beat chance (`beatsChance: false`),
 * the score being the loss plus twice the error rate where the trials report accuracy, else
 * the loss. Loss alone can prefer an lr whose runs
 * collapsed to near-uniform outputs (a loss near ln(classes), at chance) to one whose runs
 * learned but are overconfident on hard data; accuracy alone ranks lrs by a handful of
 * samples. Over the recipe sweep's 180 searches, scored on lrSearch's folds, the sum landed
 * within 2 points of the best grid lr in 26 of 30 cells, 0.37 points short on average and 4.0
 * at worst, against 25, 0.81 and 9.5 for the loss averaged 1-2-1 with its neighbours' (the
 * rule before), 24 for the loss alone and 22 for accuracy then loss; on either half of the
 * seeds alone its mean and worst gaps were still the lowest of those
 * (bench/results/recipes.md, "Choosing among the held-out trials").
 *
 * Where the trials ran under a second BatchNorm policy, a trial of it wins only if that
 * policy's trials also have the lower mean held-out loss at the lrs both ran, each pair on
 * the same folds; else the best trial of the first policy does, if it has one. A policy suits a model and
 * its data rather than one lr: the single best trial chose 'eval' for the shipped CNN where
 * its final runs fell 2.5 points short (fashion, 10 labels a class), and the mean alone can be
 * carried by one diverging lr of the other policy. With both, 28 of 30 cells landed within 2
 * points, 25 on either half of the seeds ("Choosing the BatchNorm policy"). The mean counts
 * every paired trial, at chance or not.
 *
 * A trial at chance can still score lowest where another beats chance: MobileNetV3 on shapes
 * at 10 labels a class trained at a trial whose runs had collapsed to near-uniform outputs
 * (28% held out on five classes, a loss near ln 5) while an 'eval' trial held out 40%.
 * Choosing only among trials that beat chance put all 30 cells within 2 points (mean 1.31
 * above the best grid lr, 1.9 short at worst), against 29 choosing among all; on the 16
 * searches run after it was fixed it changed 4 choices, by 1.8 points a search on average
 * ("Choosing only among trials that beat chance").
 */
export function bestTrial(trials: LrTrial[]): number {
  const first = trials[0]?.bnPolicy;
  const best = lowestScore(trials, () => true);
  if (best < 0 || trials[best].bnPolicy === first || meanPairedLoss(trials, trials[best].bnPolicy) < meanPairedLoss(trials, first)) return best;
  return lowestScore(trials, (t) => t.bnPolicy === first);
}

/** The index of the lowest-scoring trial that `among` accepts and that can be chosen (finite loss, not at chance); -1 where none. */
function lowestScore(trials: LrTrial[], among: (trial: LrTrial) => boolean): number {
  const scores = trials.map((t) => (among(t) && Number.isFinite(t.loss) && t.beatsChance !== false ? t.loss + LR_TRIAL_ERROR_WEIGHT * (1 - (t.accuracy ?? 1)) : Infinity));
  const lowest = Math.min(...scores);
  return lowest === Infinity ? -1 : scores.indexOf(lowest);
}

/** The mean held-out loss of `policy`'s trials at the lrs every policy tried (a diverged trial's counts as infinite). */
function meanPairedLoss(trials: LrTrial[], policy: BatchNormPolicy): number {
  const policies = new Set(trials.map((t) => t.bnPolicy));
  const everywhere = (lr: number) => [...policies].every((p) => trials.some((t) => t.bnPolicy === p && t.lr === lr));
  const losses = trials.filter((t) => t.bnPolicy === policy && everywhere(t.lr)).map((t) => (Number.isFinite(t.loss) ? t.loss : Infinity));
  return losses.reduce((a, b) => a + b, 0) / losses.length;
}

/** The model as fineTune's first phase starts it: saved weights and generator, new head trainable, body frozen. */
function startOver(model: Model, headPath: string, saved: Snapshot): void {
  saved.restore();
  model.freeze();
  model.unfreeze(headPath);
}

/**
 * The head-only phase's feature cache, when it applies (see `cacheFeatures`), and what
 * to report either way; nothing when that phase does not run here.
 */
async function headOnlyCache(model: Model, headPath: string, o: FineTuneOptions, freezeEpochs: number, resumeStage: number): Promise<{ cache?: FeatureCache; featureCache?: FeatureCacheReport }> {
  const cacheMode = o.cacheFeatures ?? 'auto';
  if (cacheMode !== true && cacheMode !== false && cacheMode !== 'auto') throw typeError("true, false or 'auto'", 'options.cacheFeatures', cacheMode);
  if (freezeEpochs === 0 || resumeStage >= 1) return {};
  const blocked =
    resumeStage === 0
      ? 'the run resumes inside the head-only phase, from a checkpoint of the whole model'
      : (o.callbacks ?? []).some((cb) => cb.name === 'checkpoint')
        ? 'a checkpoint callback saves the whole model every epoch'
        : groupOf(model)
          ? 'a data-parallel model syncs the whole model'
          : undefined;
  const budgetMB = checkFiniteNumber(o.cacheBudgetMB ?? FEATURE_CACHE_BUDGET / 2 ** 20, 'options.cacheBudgetMB');
  if (budgetMB <= 0) throw rangeError('a positive number', 'options.cacheBudgetMB', budgetMB);
  const budget = budgetMB * 2 ** 20;
  const prepared = await prepareFeatureCache(model, headPath, { train: o.train, val: o.val, dropout: o.dropout ?? 0, mode: cacheMode, budget, ...(blocked && { blocked }) });
  return 'head' in prepared ? { cache: prepared, featureCache: prepared.report } : { featureCache: prepared };
}
