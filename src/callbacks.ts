// The callbacks fit and fineTune ship: early stopping, checkpoints, a JSON-lines log.
import { appendFile, mkdir, readdir, rm } from 'node:fs/promises';
import { join } from 'node:path';

import type { Callback, EpochRecord } from './fit';
import { type Snapshot, snapshot } from './findlr';
import { Scheduler } from './sched';
import { checkFiniteNumber, checkInteger, checkOneOf, checkOptions, checkPositiveInteger, checkString, typeError } from './validate';


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

export interface EarlyStoppingOptions {
  /** The metric watched: `'val.loss'`, `'val.accuracy'`, `'train.loss'`, …. Defaults to `'val.loss'`. */
  monitor?: string;
  /** Epochs without improvement before stopping. Defaults to `3`. */
  patience?: number;
  /** Defaults to `'min'` for losses, else `'max'`. */
  mode?: 'min' | 'max';
  /** The least change that counts as an improvement. Defaults to `0`. */
  minDelta?: number;
  /**
   * Epochs of the run before stopping may happen. Epochs that end inside the scheduler's
   * warm-up (one-cycle's rise, a linear warm-up) never count against `patience` either: the lr
   * is still climbing there, and the metric dips before it recovers. Defaults to `0`.
   */
  minEpochs?: number;
  /**
   * At the end of the run (stopped or not), puts back the weights and buffers of the best
   * epoch seen in this run, so that the model is the one the metric chose. Defaults to `false`.
   */
  restoreBest?: boolean;
}

/**
 * Stops when `monitor` has not improved for `patience` epochs after the warm-up and
 * `minEpochs` (see {@link EarlyStoppingOptions}).
 */
export function earlyStopping(options?: EarlyStoppingOptions): Callback {
  const o = checkOptions<EarlyStoppingOptions>(options, 'options', ['monitor', 'patience', 'mode', 'minDelta', 'minEpochs', 'restoreBest']);
  const monitor = o.monitor ?? 'val.loss';
  checkString(monitor, 'options.monitor');
  const patience = checkInteger(o.patience ?? 3, 'options.patience', 0, 'a non-negative integer');
  const mode = checkOneOf(o.mode ?? (monitor.endsWith('loss') ? 'min' : 'max'), 'options.mode', ['min', 'max'] as const);
  const minDelta = checkFiniteNumber(o.minDelta ?? 0, 'options.minDelta');
  const minEpochs = checkInteger(o.minEpochs ?? 0, 'options.minEpochs', 0, 'a non-negative integer');
  const restoreBest = o.restoreBest ?? false;
  if (typeof restoreBest !== 'boolean') throw typeError('a boolean', 'options.restoreBest', restoreBest);
  // The best epoch's weights, for restoreBest; one fit run at a time uses a callback.
  let best: Snapshot | undefined;
  return {
    name: 'earlyStopping',
    async onEpochEnd(ctx, record) {
      if (ctx.callbackState.earlyStopping === undefined) {
        best?.dispose(); // a new run
        best = undefined;
      }
      const state = (ctx.callbackState.earlyStopping ??= { best: undefined, bad: 0 }) as { best?: number; bad: number; bestEpoch?: number };
      const value = monitored(record, monitor);
      const warmingUp = ctx.scheduler instanceof Scheduler && ctx.step < ctx.scheduler.warmupSteps;
      if (improved(mode, value, state.best, minDelta)) {
        state.best = value;
        state.bestEpoch = record.epoch;
        state.bad = 0;
        if (restoreBest) {
          best?.dispose();
          best = await snapshot(ctx.model, { rng: false });
        }
      } else if (!warmingUp && ctx.epoch >= minEpochs && ++state.bad > patience) {
        ctx.stop(`early stopping: ${monitor} did not improve for ${patience} epochs after epoch ${state.bestEpoch! + 1}`);
      }
      const last = ctx.stopping || ctx.epoch >= ctx.epochs;
      if (last && best) {
        await best.restore();
        best.dispose();
        best = undefined;
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
      await ctx.saveCheckpoint(join(dir, `${prefix}epoch-${ctx.epoch}.ckpt`));
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
