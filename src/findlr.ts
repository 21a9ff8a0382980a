// The LR range test (Leslie Smith; fastai's lr_find): train briefly with an exponentially
// rising lr, watch the loss, and suggest the lr where it falls fastest. The model's
// weights, buffers and the RNG are restored afterwards.
import { writeFile } from 'node:fs/promises';

import { lineChart } from './chart';
import type { BatchTarget } from './data/dataset';
import type { Loader } from './data/loader';
import { groupOf } from './distributed';
import { type Loss, crossEntropy } from './loss';
import type { BatchInput, Model } from './model';
import { native } from './native';
import { adamw } from './optim';
import { tensor } from './tensor';
import { checkFiniteNumber, checkOptions, checkPositiveInteger, rangeError, typeError } from './validate';

export interface FindLrOptions {
  /** Defaults to `1e-7`. */
  startLr?: number;
  /** Defaults to `10`. */
  endLr?: number;
  /** Steps of the test (cycling through the loader). Defaults to `100`. */
  steps?: number;
  /** Defaults to `loss.crossEntropy()`. */
  loss?: Loss;
  /**
   * Puts the random generator back as it was after the test, so a seeded run draws the
   * same numbers with or without it. The generator is process-wide (every model and
   * worker thread draws from it): pass `false` when other work draws from it meanwhile.
   * Defaults to `true`.
   */
  restoreRng?: boolean;
}

/** How to read an lr off the range test's curve. */
export type LrRule = 'valley' | 'peak' | 'minimum' | 'steepest';

export interface LrFinderResult {
  lrs: number[];
  /** Exponentially smoothed, bias-corrected losses. */
  losses: number[];
  /** The lr each rule reads off the curve. */
  suggestions: Record<LrRule, number>;
  /** `suggestions.valley`, the rule fineTune's `lr: 'auto'` uses. */
  suggestion: number;
  /** Writes the loss-vs-lr curve as an SVG file. */
  plot(path: string): Promise<void>;
}

export async function findLr(model: Model, loader: Loader<BatchInput, BatchTarget>, options?: FindLrOptions): Promise<LrFinderResult> {
  const o = checkOptions<FindLrOptions>(options, 'options', ['startLr', 'endLr', 'steps', 'loss', 'restoreRng']);
  if (o.restoreRng !== undefined && typeof o.restoreRng !== 'boolean') throw typeError('a boolean', 'options.restoreRng', o.restoreRng);
  const startLr = checkFiniteNumber(o.startLr ?? 1e-7, 'options.startLr');
  const endLr = checkFiniteNumber(o.endLr ?? 10, 'options.endLr');
  if (startLr <= 0 || endLr <= startLr) throw rangeError(`0 < startLr < endLr`, 'options.startLr', startLr);
  const steps = checkPositiveInteger(o.steps ?? 100, 'options.steps');
  const lossFn = o.loss ?? crossEntropy();
  // Data-parallel: every rank reads the same mean loss, so all stop at the same step.
  const group = groupOf(model);
  const saved = await snapshot(model, { rng: o.restoreRng !== false });
  const optimizer = adamw(model, { lr: startLr, weightDecay: 0 });
  const lrs: number[] = [];
  const losses: number[] = [];
  let average = 0;
  let best = Infinity;
  try {
    model.train();
    for (let step = 0, epoch = 0; step < steps; epoch++) {
      for await (const { input, target } of loader.batches(epoch)) {
        const lr = startLr * (endLr / startLr) ** (step / Math.max(steps - 1, 1));
        optimizer.paramGroups.forEach((g) => (g.lr = lr));
        let { loss } = await model.trainStep(input, target, { loss: lossFn, optimizer });
        if (group) {
          const mean = await group.allReduce(tensor(Float64Array.of(loss)), 'avg');
          loss = (mean.toTypedArray() as Float64Array)[0];
          mean.dispose();
        }
        average = 0.98 * average + 0.02 * loss;
        const smoothed = average / (1 - 0.98 ** (step + 1));
        lrs.push(lr);
        losses.push(smoothed);
        best = Math.min(best, smoothed);
        step++;
        if (step >= steps || !Number.isFinite(smoothed) || smoothed > 4 * best) {
          step = steps;
          break;
        }
      }
    }
  } finally {
    await saved.restore();
    saved.dispose();
    optimizer.dispose();
  }
  const low = lowest(losses);
  const suggestions = { valley: valley(lrs, losses), peak: lrs[low], minimum: lrs[low] / 10, steepest: steepest(lrs, losses) };
  const suggestion = suggestions.valley;
  return {
    lrs,
    losses,
    suggestions,
    suggestion,
    plot: (path) => writeFile(path, lineChart(`LR range test (suggested ${suggestion.toExponential(1)})`, 'step', [{ name: 'smoothed loss', color: '#1565c0', points: losses.map((l, i) => [i, l]) }])),
  };
}

/** A model's state as {@link snapshot} saved it. */
export interface Snapshot {
  /** Puts the weights, buffers, training mode and (if saved) the generator back; may be called again. */
  restore(): Promise<void>;
  dispose(): void;
}

/** The model's weights and buffers, its training mode and the random generator, to put back after trial training. */
export async function snapshot(model: Model, options: { rng: boolean }): Promise<Snapshot> {
  await model.idle();
  const saved = await model.stateDict();
  const rng = options.rng ? native.getRngState() : null;
  const wasTraining = model.training;
  return {
    async restore() {
      await model.loadStateDict(saved);
      if (rng) native.setRngState(rng);
      model.train(wasTraining);
    },
    dispose() {
      Object.values(saved).forEach((t) => t.dispose());
    },
  };
}

/** Steepest descent of the smoothed loss against log(lr), ignoring the noisy ends. */
function steepest(lrs: number[], losses: number[]): number {
  let best = lrs[0];
  let slope = 0;
  for (let i = 1; i < losses.length - 1; i++) {
    const s = (losses[i + 1] - losses[i - 1]) / (Math.log(lrs[i + 1]) - Math.log(lrs[i - 1]));
    if (s < slope) {
      slope = s;
      best = lrs[i];
    }
  }
  return best;
}

/**
 * Where the smoothed loss is lowest, past the first tenth of the test (the bias-corrected
 * average of the first few batches is noise). `peak` is its lr, Leslie Smith's choice
 * for the top of a one-cycle schedule; `minimum` a tenth of it, fastai's old rule for a
 * constant lr.
 */
function lowest(losses: number[]): number {
  let at = Math.min(losses.length - 1, Math.floor(losses.length / 10));
  for (let i = at + 1; i < losses.length; i++) if (losses[i] < losses[at]) at = i;
  return at;
}

/**
 * fastai's "valley": the longest run of the curve along which the loss keeps falling
 * (a longest decreasing subsequence), and the point a half of the way into its middle
 * third, where the loss still falls but well before it turns.
 */
function valley(lrs: number[], losses: number[]): number {
  const n = losses.length;
  const runs = new Array<number>(n).fill(1);
  let start = 0;
  let end = 0;
  for (let i = 1; i < n; i++) {
    for (let j = 0; j < i; j++) if (losses[i] < losses[j] && runs[i] < runs[j] + 1) runs[i] = runs[j] + 1;
    if (runs[i] > runs[end]) {
      end = i;
      start = end - runs[end];
    }
  }
  const third = (end - start) / 3;
  return lrs[Math.max(0, Math.min(n - 1, start + Math.floor(third) + Math.floor(third / 2)))];
}
