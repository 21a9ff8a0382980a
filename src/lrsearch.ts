// fineTune's opt-in lr search (`lrSearch: true`): the recipe trained at a few lrs on held-out
// folds, scored, and one chosen. The rules and their constants live here once, in LR_SEARCH;
// bench/recipes/sweep.mjs imports them to score rules on recorded trials, and
// bench/recipes/README.md tells how each was measured.
import { type BatchTarget, type Dataset, split } from './data/dataset';
import { misuse } from './errors';
import type { Loss } from './loss';
import type { BatchInput, BatchNormPolicy } from './model';

/**
 * The search's rules, each measured in the recipe sweep:
 * - `factors`: the lrs tried, as factors of the centre lr (the range test's, or the one given);
 * - `evalFactors`: how many of the lowest factors also run under BatchNorm policy `'eval'`, where `bnPolicy: 'auto'` lets the search choose it;
 * - `minHoldout`: holding out fewer samples than this in one fold, each lr runs on all five folds;
 * - `errorWeight`: how much a trial's held-out error rate adds to its held-out loss in its score;
 * - `significance`: how unlikely by luck (over all trials) a trial's held-out accuracy above the commonest class's share must be for it to be chosen.
 */
export const LR_SEARCH = Object.freeze({
  factors: Object.freeze([0.25, 0.5, 1, 2, 4]),
  evalFactors: 3,
  folds: 5,
  minHoldout: 100,
  errorWeight: 2,
  significance: 0.05,
});

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
   * True where no trial could be chosen (see `bestTrial`): none beat `chance` beyond luck,
   * or only the second BatchNorm policy's did and that policy lost, or every trial diverged.
   * fineTune then trains at the centre lr under the model's BatchNorm policy, says why in
   * `reason` and warns (code `TORCHLITE_NO_SIGNAL`).
   */
  abstained?: boolean;
}

/** One of `lrSearch`'s trials: its lr and BatchNorm policy, and its held-out loss (and accuracy, for classification) over all folds. */
export interface LrTrial {
  lr: number;
  bnPolicy: BatchNormPolicy;
  loss: number;
  accuracy?: number;
  /** With class targets: whether its held-out accuracy beats the search's `chance` beyond luck (see `beatsChance`); only such a trial can be chosen. */
  beatsChance?: boolean;
}

/** What the search will run, announced before the first trial (`Callback.onLrSearch`). */
export interface LrSearchPlan {
  /** Trials (lr and BatchNorm policy pairs). */
  trials: number;
  /** Held-out folds each trial runs on. */
  folds: number;
  /** Whole fine-tunes in all, each on the training part of a fold: `trials × folds`. */
  runs: number;
  /**
   * Roughly the seconds the runs will take: the steps of one run times one whole-model step's
   * time, measured before the trials. It errs long (head-only steps cost less).
   */
  estimatedSeconds: number;
}

export type Parts = { train: Dataset<BatchInput, BatchTarget>; val: Dataset<BatchInput, BatchTarget> };

/** Class-index targets under a classification loss: the held-out split is stratified, and the trials report accuracy too. */
export function isClassification(ds: Dataset<BatchInput, BatchTarget>, loss: Loss | undefined): boolean {
  return ds.targetShape.length === 0 && (loss === undefined || loss.classifies);
}

/**
 * The held-out folds the search scores on (a fifth of each class each): one, or all five
 * where one holds out fewer than `minHoldout` samples; a coded error where none can be held out.
 */
export function searchFolds(ds: Dataset<BatchInput, BatchTarget>, loss: Loss | undefined): Parts[] {
  const stratify = isClassification(ds, loss);
  const fold = (index: number): Parts | undefined => {
    try {
      return split(ds, { val: 1 / LR_SEARCH.folds, stratify, fold: index });
    } catch (error) {
      if (error instanceof RangeError) return undefined; // nothing to hold out in this fold
      throw error;
    }
  };
  const first = fold(0);
  if (!first) throw misuse('TORCHLITE_BAD_ARGUMENT', `lrSearch: true cannot apply: ${ds.length} training samples leave none to hold out for the trials; pass lrSearch: false`);
  if (first.val.length >= LR_SEARCH.minHoldout) return [first];
  // Folds of tiny classes can come out empty (a class of 3 fills three folds of one).
  const rest = Array.from({ length: LR_SEARCH.folds - 1 }, (_, i) => fold(i + 1)).filter((parts) => parts !== undefined);
  return [first, ...rest];
}

/** The trials in the order they run: every factor under the first policy, then the lowest `evalFactors` under the second, if any. */
export function trialPlan(centre: number, policies: BatchNormPolicy[]): { lr: number; bnPolicy: BatchNormPolicy }[] {
  const under = (bnPolicy: BatchNormPolicy, factors: readonly number[]) => factors.map((factor) => ({ lr: centre * factor, bnPolicy }));
  return [...under(policies[0], LR_SEARCH.factors), ...(policies.length > 1 ? under(policies[1], LR_SEARCH.factors.slice(0, LR_SEARCH.evalFactors)) : [])];
}

/** The share of the folds' held-out samples in their commonest class: the accuracy of always answering it. */
export function majorityShare(folds: Parts[]): number {
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
 * `holdout` samples) beyond what luck gives: its hit count has a one-sided binomial p-value of
 * at most `significance` divided by the number of `trials` run (Bonferroni). A diverged trial
 * never is. A trial at chance ranks lrs by noise: runs that collapsed to near-uniform outputs
 * score a loss near ln(classes) and can beat runs that learned a little.
 */
export function beatsChance(trial: Pick<LrTrial, 'loss' | 'accuracy'>, holdout: number, chance: number, trials: number): boolean {
  return Number.isFinite(trial.loss) && binomialTail(holdout, Math.round(trial.accuracy! * holdout), chance) <= LR_SEARCH.significance / trials;
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
 * The trial fineTune trains at, or -1 where there is none: the lowest held-out score (the loss
 * plus `errorWeight` × the error rate where trials report accuracy, else the loss) among the
 * trials that neither diverged nor failed to beat chance. Where the trials ran under a second
 * BatchNorm policy, a trial of it wins only if that policy's trials also have the lower mean
 * held-out loss at the lrs both ran; else the first policy's best trial does, if it has one.
 */
export function bestTrial(trials: LrTrial[]): number {
  const first = trials[0]?.bnPolicy;
  const best = lowestScore(trials, () => true);
  if (best < 0 || trials[best].bnPolicy === first || meanPairedLoss(trials, trials[best].bnPolicy) < meanPairedLoss(trials, first)) return best;
  return lowestScore(trials, (t) => t.bnPolicy === first);
}

/** A trial's score, lower is better; what `LrSearchReport.score` names. */
export function trialScore(trial: LrTrial): number {
  return trial.loss + LR_SEARCH.errorWeight * (1 - (trial.accuracy ?? 1));
}

/** The index of the lowest-scoring trial that `among` accepts and that can be chosen (finite loss, not at chance); -1 where none. */
function lowestScore(trials: LrTrial[], among: (trial: LrTrial) => boolean): number {
  const scores = trials.map((t) => (among(t) && Number.isFinite(t.loss) && t.beatsChance !== false ? trialScore(t) : Infinity));
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

/** Why {@link bestTrial} found no trial to choose among `trials`, scored on `holdout` samples against `chance` (none for regression). */
export function whyNoTrial(trials: LrTrial[], holdout: number, chance: number | undefined): string {
  if (chance === undefined) return `every trial's held-out loss diverged, from ${LR_SEARCH.factors[0]} × the centre lr up`;
  const first = trials[0].bnPolicy;
  // Only the second policy's trials beat chance, and that policy lost on mean loss (bestTrial).
  const otherWins = trials.some((t) => t.beatsChance);
  const top = Math.max(...trials.filter((t) => !otherWins || t.bnPolicy === first).map((t) => t.accuracy!));
  const which = otherWins ? ` under bnPolicy '${first}'` : '';
  const other = otherWins ? `, and the '${trials.find((t) => t.bnPolicy !== first)!.bnPolicy}' trials, some of which did, had the higher mean held-out loss` : '';
  return `no trial${which} did better on its ${holdout} held-out samples than always answering the commonest class (${percent(chance)}; the best ${otherWins ? 'of them' : 'trial'} reached ${percent(top)})${other}`;
}

const percent = (share: number) => `${(share * 100).toFixed(1)}%`;
