// fit(): epochs of trainStep over a Loader, evaluation after each, callbacks, AbortSignal,
// checkpoints and exact resume.
import { loadCheckpoint, saveCheckpoint, type TrainingPosition } from './checkpoint';
import type { BatchTarget } from './data/dataset';
import type { Loader, LoaderBatch } from './data/loader';
import { groupOf } from './distributed';
import { crossEntropy, Loss } from './loss';
import type { LrSearchPlan, LrTrial } from './lrsearch';
import type { Metrics, MetricSpec } from './metrics';
import { type BatchInput, Model, type TrainStepOptions, type TrainStepResult } from './model';
import { disposeBatch } from './model/io';
import { native } from './native';
import { Optimizer } from './optim';
import { PlateauScheduler, Scheduler } from './sched';
import { tensor } from './tensor';
import { checkOptions, checkPositiveInteger, checkString, typeError } from './validate';


/** What one epoch did. */
export interface EpochRecord {
  epoch: number;
  /** Mean training loss over the epoch's batches. */
  trainLoss: number;
  /** The mean of each named loss over the epoch: a detector's (`loss.fromModel()`), or each output a loss's `outputs` weighs. */
  trainLosses?: Record<string, number>;
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
  | { type: 'batchEnd'; epoch: number; batch: number; batches: number; step: number; loss: number; lr: number; accuracy?: number; losses?: Record<string, number> }
  | { type: 'epochEnd'; record: EpochRecord }
  | { type: 'checkpoint'; path: string; epoch: number }
  | { type: 'stopped'; reason: string };

/** What callbacks see and may act on. */
export interface FitContext {
  readonly model: Model;
  readonly optimizer: Optimizer;
  readonly history: EpochRecord[];
  /** The run's scheduler, if any. */
  readonly scheduler?: Scheduler | PlateauScheduler;
  /** The epochs the run trains for in all (`FitOptions.epochs`). */
  readonly epochs: number;
  /** Epochs completed so far. */
  readonly epoch: number;
  readonly step: number;
  /** Asks fit to stop after the current epoch. */
  stop(reason: string): void;
  /** Whether a callback has asked fit to stop. */
  readonly stopping: boolean;
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
  /** Before fineTune's `lrSearch` starts: how many trials and whole runs it will make, and roughly how long they take. */
  onLrSearch?(plan: LrSearchPlan): void | Promise<void>;
  /** After each of fineTune's lr trials (see `lrSearch`): the trial, its place and how many there are. */
  onLrTrial?(trial: LrTrial, index: number, count: number): void | Promise<void>;
}

export interface FitOptions {
  train: Loader<BatchInput, BatchTarget>;
  /** Evaluated after each epoch. Defaults to none. */
  val?: Loader<BatchInput, BatchTarget>;
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
  /** @internal Epochs fineTune's earlier stages trained: records and events count from there, as its history does. */
  epochOffset?: number;
}

/** The run: `await` it for the history, or `for await` its events. */
export interface FitRun extends PromiseLike<EpochRecord[]>, AsyncIterable<FitEvent> {}

const FIT_KEYS = ['train', 'val', 'epochs', 'optimizer', 'loss', 'scheduler', 'metrics', 'callbacks', 'signal', 'resume', 'resumeRng', 'clipGradNorm', 'accumulate', 'amp', 'stage', 'epochOffset'];

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

/** Samples in a batch: the rows of its target, or the images of a list of per-image targets. */
function batchSize(batch: LoaderBatch<BatchInput, BatchTarget>): number {
  return Array.isArray(batch.target) ? batch.target.length : (batch.target as { shape: number[] }).shape[0];
}

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
async function trainWindow(model: Model, window: LoaderBatch<BatchInput, BatchTarget>[], step: StepSpec, scheduler: Scheduler | undefined, windowed: boolean): Promise<(TrainStepResult & { lr: number })[]> {
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
  const results = await Model.trainWindow(model, window.map((b) => ({ input: b.input, target: b.target })), step, perStep);
  return results.map((r) => {
    if (r.stepped) scheduler?.step();
    return { ...r, lr: lrNow() };
  });
}

/**
 * The model now answers in the training data's classes and expects its preprocessing:
 * recorded so that save() and checkpoints carry them (see InputSpec).
 */
export function recordTrainingData(model: Model, dataset: Loader<BatchInput, BatchTarget>['dataset']): void {
  const { preprocessing, text, classes } = dataset;
  if (preprocessing || text || classes) {
    const meta = model.metadata !== null && typeof model.metadata === 'object' ? model.metadata : {};
    model.metadata = { ...meta, ...(preprocessing && { input: preprocessing }), ...(text && { text }), ...(classes && { classes }) };
  }
}

/** Data-parallel: every rank trains, and rank 0 alone runs the callbacks that write and print (`rankZeroOnly`). */
export function callbacksOfThisRank(model: Model, callbacks: Callback[]): Callback[] {
  const group = groupOf(model);
  return group && group.rank !== 0 ? callbacks.filter((cb) => !cb.rankZeroOnly) : callbacks;
}

async function* run(model: Model, o: FitOptions, callbacks: Callback[]): AsyncGenerator<FitEvent, EpochRecord[]> {
  const lossFn = o.loss ?? crossEntropy();
  recordTrainingData(model, o.train.dataset);
  const group = groupOf(model);
  callbacks = callbacksOfThisRank(model, callbacks);
  let position: TrainingPosition = { epoch: 0, step: 0, stage: o.stage ?? 0, history: [], callbacks: {} };
  const offset = o.epochOffset ?? 0;
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
    scheduler: o.scheduler,
    epochs: o.epochs,
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
    get stopping() {
      return stopReason !== null;
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
      yield { type: 'epochStart', epoch: epoch + offset, batches: o.train.length, stage: position.stage };
      let lossSum = 0;
      let samples = 0;
      let correct = 0;
      let counted = 0;
      const named: Record<string, number> = {};
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
          const n = batchSize(window[k]);
          if (!r.skipped) {
            lossSum += r.loss * n;
            samples += n;
            for (const [name, value] of Object.entries(r.losses ?? {})) named[name] = (named[name] ?? 0) + value * n;
          }
          if (r.correct !== undefined) {
            correct += r.correct;
            counted += r.scored ?? n;
          }
          if (r.stepped) position.step += 1;
          const event = {
            type: 'batchEnd' as const,
            epoch: epoch + offset,
            batch: batchIndex++,
            batches: o.train.length,
            step: position.step,
            loss: r.loss,
            lr: r.lr,
            ...(counted > 0 && { accuracy: correct / counted }),
            ...(r.losses && { losses: r.losses }),
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
      // A loss the model computes needs train mode and targets: validation scores the metrics only.
      const val = o.val ? await model.evaluate(o.val, { ...(!lossFn.fromModel && { loss: lossFn }), ...(o.metrics && { metrics: o.metrics }) }) : undefined;
      if (o.scheduler instanceof PlateauScheduler) {
        if (val?.loss === undefined) throw new RangeError('Expected a `val` loader for a reduceOnPlateau scheduler but received none');
        o.scheduler.step(val.loss);
      }
      const record: EpochRecord = {
        epoch: epoch + offset,
        trainLoss: samples > 0 ? lossSum / samples : Number.NaN,
        ...(Object.keys(named).length > 0 && samples > 0 && { trainLosses: Object.fromEntries(Object.entries(named).map(([name, sum]) => [name, sum / samples])) }),
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
