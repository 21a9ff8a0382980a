// fineTune(): the fastai recipe (new head, body frozen, one-cycle; then unfreeze with
// discriminative lrs) on top of fit, with an lr read off a range test or searched (lrsearch.ts).
import { performance } from 'node:perf_hooks';

import { readCheckpointPosition } from './checkpoint';
import type { BatchTarget } from './data/dataset';
import type { Loader } from './data/loader';
import { groupOf } from './distributed';
import { misuse } from './errors';
import { FEATURE_CACHE_BUDGET, type FeatureCache, type FeatureCacheReport, prepareFeatureCache, restoreHead } from './features';
import { findLr, type LrRule, type Snapshot, snapshot } from './findlr';
import { type Callback, callbacksOfThisRank, type EpochRecord, fit, recordTrainingData } from './fit';
import { adapters } from './lora';
import { type Loss, crossEntropy } from './loss';
import { beatsChance, bestTrial, isClassification, type LrSearchPlan, type LrSearchReport, type LrTrial, LR_SEARCH, majorityShare, type Parts, searchFolds, trialPlan, whyNoTrial } from './lrsearch';
import type { MetricSpec } from './metrics';
import { BATCH_NORM_POLICIES, type BatchInput, type BatchNormPolicy, Model } from './model';
import { disposeBatch } from './model/io';
import { adamw, type ParamGroupSpec } from './optim';
import { compilePattern } from './patterns';
import { oneCycle } from './sched';
import { checkFiniteNumber, checkInteger, checkOneOf, checkOptions, checkString, rangeError, typeError } from './validate';

/** fineTune's defaults, each defined once here. */
export const FINE_TUNE_DEFAULTS = Object.freeze({
  /**
   * The head's peak lr. One fixed lr for AdamW's one-cycle, as fastai's `fine_tune` has one:
   * in the recipe sweep it landed within 2 points of the best of a five-point lr grid in 24 of
   * 30 cells (mean gap 1.1, worst 5.8) at the cost of one run, against 18 of 30 (mean 2.2,
   * worst 12.8) for the range test's lr (bench/recipes/README.md).
   */
  lr: 1e-2,
  lrRule: 'valley' as LrRule,
  lrScale: 7,
  minSteps: 128,
  freezeEpochs: 1,
  epochs: 3,
  lrMult: 1,
  weightDecay: 0.01,
});

export interface FineTuneOptions {
  train: Loader<BatchInput, BatchTarget>;
  val?: Loader<BatchInput, BatchTarget>;
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
   * steps (few steps left small sets 10 to 50 points short in the recipe sweep). Epoch counts
   * given explicitly are kept as they are; the counts used are in the result. Defaults to `128`.
   */
  minSteps?: number;
  /**
   * Peak lr of the head (halved after the frozen phase, as fastai does). `'auto'` reads it off
   * an LR range test ({@link findLr}) of the first phase (new head, body frozen): `lrRule`
   * times `lrScale`; the model and the random generator are put back before training, and
   * what the test read is in the result's `lrFinder`. Defaults to `1e-2`.
   */
  lr?: number | 'auto';
  /** How `lr: 'auto'` reads the range test (see {@link LrRule}). Defaults to `'valley'`. */
  lrRule?: LrRule;
  /** Multiplies the lr that `lr: 'auto'` reads off the range test. Defaults to `7`. */
  lrScale?: number;
  /**
   * Chooses the lr by trial around `lr` (the one given, or the range test's): the recipe runs
   * at each of `LR_SEARCH.factors` times it on four fifths of the data, is scored on the held-out
   * fifth (on all five folds where one holds out under 100 samples), and the lr with the lowest
   * held-out loss + 2 × error rate among the trials that beat always answering the commonest
   * class wins; where none does, fineTune trains at `lr` and warns (`TORCHLITE_NO_SIGNAL`).
   * It costs 5 to 40 whole fine-tunes (announced to `Callback.onLrSearch` before it starts),
   * and landed within 2 points of the best grid lr in all 30 cells of the recipe sweep against
   * 24 for the default lr. Defaults to `false`.
   */
  lrSearch?: boolean;
  /**
   * How BatchNorm layers train (see {@link Model.bnPolicy}): a policy, set on the model for
   * this run and left there, or `'auto'`: the model's own policy, except that `lrSearch` also
   * tries `'eval'` at the lower three lrs where a BatchNorm layer trains once the body
   * unfreezes, and keeps it only where it wins (see `LrSearchReport`). Without the search it
   * costs nothing. Defaults to `'auto'`.
   */
  bnPolicy?: BatchNormPolicy | 'auto';
  /**
   * The earliest layers train at `lr / lrMult`, later ones geometrically closer to `lr`
   * (fastai's 100 suits long ImageNet runs; one lr for every block did best on small sets).
   * Defaults to `1`.
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
  /** With `lr: 'auto'`: the rule and scale used, and what each rule read off the range test. */
  lrFinder?: { rule: LrRule; scale: number; suggestions: Record<LrRule, number> };
  /** With `lrSearch: true`: the trials and the choice among them. */
  search?: LrSearchReport;
};

/** What one fineTune trains, whatever the lr and the data: the trials and the final run share it. */
interface Recipe {
  headPath: string;
  /** What the 'all' stage unfreezes: every parameter, or for a model with LoRA adapters those trainable when fineTune began. */
  body?: string[];
  stages: string[];
  freezeEpochs: number;
  epochs: number;
  lrMult: number;
  weightDecay: number;
  pctStart?: number;
  loss?: Loss;
  signal?: AbortSignal;
}

/** Models a fineTune is running on: a second call on one is refused before it changes anything. */
const tuning = new WeakSet<Model>();

/**
 * The fastai recipe: new head, body frozen, one-cycle on the head for `freezeEpochs`;
 * then unfreeze (at once or in stages) with discriminative lrs and one-cycle again. The
 * BatchNorm policy keeps frozen BatchNorm layers in eval mode throughout. One fineTune runs
 * on a model at a time: another call on it rejects with `TORCHLITE_MODEL_BUSY`.
 */
export async function fineTune(model: Model, options: FineTuneOptions): Promise<FineTuneHistory> {
  if (!(model instanceof Model)) throw typeError('a Model', 'model', model);
  // Checked before the first await, so that a second call is refused before it touches the head.
  if (tuning.has(model)) throw misuse('TORCHLITE_MODEL_BUSY', 'fineTune is already running on this model; await it (or abort it through its `signal`) before starting another');
  tuning.add(model);
  try {
    return await tune(model, options);
  } finally {
    tuning.delete(model);
  }
}

async function tune(model: Model, options: FineTuneOptions): Promise<FineTuneHistory> {
  const o = checkOptions<FineTuneOptions>(options, 'options', ['train', 'val', 'numClasses', 'dropout', 'freezeEpochs', 'epochs', 'minSteps', 'lr', 'lrRule', 'lrScale', 'lrSearch', 'bnPolicy', 'lrMult', 'unfreeze', 'weightDecay', 'pctStart', 'cacheFeatures', 'cacheBudgetMB', 'loss', 'metrics', 'callbacks', 'signal', 'resume', 'resumeRng']) as FineTuneOptions;
  const D = FINE_TUNE_DEFAULTS;
  const minSteps = checkInteger(o.minSteps ?? D.minSteps, 'options.minSteps', 0, 'a non-negative integer');
  // Scaling only the defaults keeps an explicit epoch count exact, as the user wrote it.
  const repeat = o.freezeEpochs === undefined && o.epochs === undefined ? Math.max(1, Math.ceil(minSteps / ((D.freezeEpochs + D.epochs) * Math.max(o.train.length, 1)))) : 1;
  const freezeEpochs = checkInteger(o.freezeEpochs ?? D.freezeEpochs * repeat, 'options.freezeEpochs', 0, 'a non-negative integer');
  const epochs = checkInteger(o.epochs ?? D.epochs * repeat, 'options.epochs', 0, 'a non-negative integer');
  const auto = o.lr === 'auto';
  if (!auto && (checkFiniteNumber(o.lr ?? D.lr, 'options.lr') as number) <= 0) throw rangeError("a positive number or 'auto'", 'options.lr', o.lr);
  const rule = checkOneOf(o.lrRule ?? D.lrRule, 'options.lrRule', ['valley', 'peak', 'minimum', 'steepest'] as const);
  const lrScale = checkFiniteNumber(o.lrScale ?? D.lrScale, 'options.lrScale');
  if (lrScale <= 0) throw rangeError('a positive number', 'options.lrScale', lrScale);
  const lrSearch = o.lrSearch ?? false;
  if (typeof lrSearch !== 'boolean') throw typeError('a boolean', 'options.lrSearch', lrSearch);
  const bnPolicy = checkOneOf(o.bnPolicy ?? 'auto', 'options.bnPolicy', ['auto', ...BATCH_NORM_POLICIES] as const);
  const lrMult = checkFiniteNumber(o.lrMult ?? D.lrMult, 'options.lrMult');
  if (lrMult < 1) throw rangeError('a number ≥ 1', 'options.lrMult', lrMult);
  const stages = o.unfreeze === undefined || o.unfreeze === 'all' ? ['all'] : o.unfreeze;
  if (!Array.isArray(stages) || stages.length === 0) throw typeError("'all' or a non-empty array of prefixes", 'options.unfreeze', o.unfreeze);
  // Before anything changes: a search with nothing to hold out cannot run.
  const folds = lrSearch ? searchFolds(o.train.dataset, o.loss) : undefined;
  const resumed = o.resume === undefined ? undefined : await readCheckpointPosition(checkString(o.resume, 'options.resume'));
  const resumeStage = resumed?.stage ?? -1;
  await model.idle(); // operations called before (a data-parallel broadcast) come first
  if (bnPolicy !== 'auto') model.bnPolicy = bnPolicy;
  const head = o.numClasses === undefined ? undefined : model.resetClassifier(o.numClasses, { dropout: o.dropout ?? 0 });
  const headPath = head ?? model.classifierHead();
  if (headPath === undefined) throw new RangeError('Expected a model with a Linear head for `fineTune` but found none; pass `numClasses`');
  // A model with LoRA adapters trains them (and what was left trainable beside them) where
  // another would unfreeze its whole body: its base weights stay frozen.
  const body = adapters(model).length > 0 ? model.parameters().filter((p) => p.requiresGrad).map((p) => p.name) : undefined;
  model.freeze();
  model.unfreeze(headPath);
  const recipe: Recipe = { headPath, ...(body && { body }), stages, freezeEpochs, epochs, lrMult, weightDecay: o.weightDecay ?? D.weightDecay, pctStart: o.pctStart, loss: o.loss, signal: o.signal };
  let { cache, featureCache } = await headOnlyCache(model, headPath, o, freezeEpochs, resumeStage);
  try {
    // A resumed run reuses the lr its checkpoint recorded: a new range test or search on
    // weights already trained would pick another one and break exact resumption.
    const recorded = resumed?.callbacks.fineTune as { lr?: number; bnPolicy?: BatchNormPolicy } | undefined;
    if (bnPolicy === 'auto' && recorded?.bnPolicy !== undefined) model.bnPolicy = recorded.bnPolicy;
    let finder: FineTuneHistory['lrFinder'];
    let search: LrSearchReport | undefined;
    let baseLr = auto ? Number.NaN : ((o.lr as number | undefined) ?? D.lr);
    if (recorded?.lr !== undefined) baseLr = recorded.lr;
    else {
      if (auto) {
        const found = await findLr(cache?.head ?? model, cache?.train ?? o.train, { ...(o.loss && { loss: o.loss }) });
        baseLr = found.suggestions[rule] * lrScale;
        finder = { rule, scale: lrScale, suggestions: found.suggestions };
      }
      if (folds) {
        // The trials train the whole model: the head goes back in now, and the cache is made
        // again after them, under the policy they chose.
        if (cache) await restoreHead(model, headPath, cache.head);
        const policies = bnPolicy === 'auto' && model.bnPolicy !== 'eval' && bodyBatchNormTrains(model, headPath, recipe) ? [model.bnPolicy, 'eval' as const] : [model.bnPolicy];
        ({ lr: baseLr, report: search } = await searchLr(model, recipe, o, { centre: baseLr, folds, policies }));
        ({ cache, featureCache } = await headOnlyCache(model, headPath, o, freezeEpochs, resumeStage));
      }
    }
    const trainedUnder = model.bnPolicy;
    const remember: Callback = {
      name: 'fineTune',
      onEpochEnd: (ctx) => {
        ctx.callbackState.fineTune = { lr: baseLr, bnPolicy: trainedUnder };
      },
    };
    const history: FineTuneHistory = Object.assign([] as EpochRecord[], { lr: baseLr, bnPolicy: trainedUnder, freezeEpochs, epochs, ...(finder && { lrFinder: finder }), ...(search && { search }), ...(featureCache && { featureCache }) });
    await runRecipe(model, recipe, baseLr, { train: o.train, val: o.val, cache, metrics: o.metrics, callbacks: [remember, ...(o.callbacks ?? [])], resume: o.resume, resumeStage, resumeRng: o.resumeRng }, history);
    return history;
  } finally {
    // The trained head goes back into the model, also when training failed.
    if (cache) await restoreHead(model, headPath, cache.head);
  }
}

/**
 * `lrSearch`'s trials (see `trialPlan`), each on the training part of every fold and scored
 * on its held-out part (the loss and accuracy over all folds' held-out samples); the model (new
 * head, body frozen) and the generator are put back before each run and afterwards. Resolves
 * the winner's lr, with the report, and leaves its policy set on the model.
 */
async function searchLr(
  model: Model,
  recipe: Recipe,
  o: FineTuneOptions,
  { centre, folds, policies }: { centre: number; folds: Parts[]; policies: BatchNormPolicy[] },
): Promise<{ lr: number; report: LrSearchReport }> {
  const classification = isClassification(o.train.dataset, o.loss);
  const lossFn = o.loss ?? crossEntropy();
  const plan = trialPlan(centre, policies);
  const callbacks = callbacksOfThisRank(model, o.callbacks ?? []);
  const holdout = folds.reduce((n, parts) => n + parts.val.length, 0);
  const chance = classification ? majorityShare(folds) : undefined;
  const runs = plan.length * folds.length;
  const saved = await snapshot(model, { rng: true });
  // Announced before the first trial, from the time of one whole-model step (then undone):
  // the head-only steps cost less, so this errs long.
  const secondsPerStep = await timeOneStep(model, o.train, o.loss);
  await startOver(model, recipe.headPath, saved);
  const stepsPerRun = (recipe.freezeEpochs + recipe.epochs) * Math.ceil(o.train.length * (1 - holdout / folds.length / o.train.dataset.length));
  const announced: LrSearchPlan = { trials: plan.length, folds: folds.length, runs, estimatedSeconds: Math.max(1, Math.round(runs * stepsPerRun * secondsPerStep)) };
  for (const cb of callbacks) await cb.onLrSearch?.(announced);
  const trials: LrTrial[] = [];
  let ran = 0;
  try {
    for (const [k, { lr, bnPolicy }] of plan.entries()) {
      model.bnPolicy = bnPolicy;
      let [loss, hits] = [0, 0];
      for (const parts of folds) {
        if (o.signal?.aborted) break;
        if (ran++ > 0) await startOver(model, recipe.headPath, saved);
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
      for (const cb of callbacks) await cb.onLrTrial?.(trial, k, plan.length);
    }
  } finally {
    await startOver(model, recipe.headPath, saved);
    saved.dispose();
  }
  if (trials.length === 0) {
    model.bnPolicy = policies[0];
    return { lr: centre, report: { used: false, reason: 'aborted' } };
  }
  const score = classification ? `loss + ${LR_SEARCH.errorWeight} × error rate` : 'loss';
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
    const advice = chance === undefined ? 'Pass a lower lr.' : 'Few labels, or features that do not suit this data: add labels, or start from a model pretrained nearer to it.';
    const policy = model.modules().some((m) => /BatchNorm/.test(m.type)) ? ` under bnPolicy '${policies[0]}'` : '';
    process.emitWarning(`lrSearch: ${reason}, so fineTune trains at lr ${centre.toExponential(2)}${policy}. ${advice}`, { code: 'TORCHLITE_NO_SIGNAL' });
  }
  return { lr: centre, report: { ...report, abstained: true, reason } };
}

/**
 * Trains `recipe` at head lr `baseLr`: the head-only phase (on the feature cache when there
 * is one), then the unfreeze stages; each epoch's record goes into `records`.
 */
async function runRecipe(
  model: Model,
  recipe: Recipe,
  baseLr: number,
  run: { train: Loader<BatchInput, BatchTarget>; val?: Loader<BatchInput, BatchTarget>; cache?: FeatureCache; metrics?: MetricSpec[]; callbacks: Callback[]; resume?: string; resumeStage: number; resumeRng?: boolean },
  records: EpochRecord[],
): Promise<void> {
  const { headPath, signal } = recipe;
  const common = { loss: recipe.loss, metrics: run.metrics, callbacks: run.callbacks, signal };
  const perStage = recipe.stages.map((_, i) => Math.floor(recipe.epochs / recipe.stages.length) + (i < recipe.epochs % recipe.stages.length ? 1 : 0));
  // Each stage's records count on from the stages before it, as the printed progress does.
  const epochOffset = (stage: number) => (stage === 0 ? 0 : recipe.freezeEpochs + perStage.slice(0, stage - 1).reduce((a, b) => a + b, 0));
  const phase = async (stage: number, epochCount: number, groups: ParamGroupSpec[], peak: number[], on = { model, train: run.train, val: run.val }): Promise<void> => {
    // Stages a resumed run already finished only replay their freezing, not their training.
    if (epochCount === 0 || signal?.aborted || stage < run.resumeStage) return;
    using optimizer = adamw(groups, { weightDecay: recipe.weightDecay });
    const scheduler = oneCycle(optimizer, { maxLr: peak, totalSteps: epochCount * on.train.length, ...(recipe.pctStart !== undefined && { pctStart: recipe.pctStart }) });
    const resume = stage === run.resumeStage ? run.resume : undefined;
    const done = await fit(on.model, { ...common, train: on.train, val: on.val, epochs: epochCount, optimizer, scheduler, stage, epochOffset: epochOffset(stage), ...(resume && { resume, resumeRng: run.resumeRng }) });
    records.push(...done);
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
  for (const [i, prefix] of recipe.stages.entries()) {
    if (prefix === 'all') model.unfreeze(recipe.body);
    else model.unfreeze(prefix);
    // Discriminative lrs: each top-level block gets its own group, lr rising geometrically
    // from lr/lrMult (first block) to lr (the head).
    const trainable = topLevel.filter((block) => model.parameters().some((p) => p.requiresGrad && (p.name === block || p.name.startsWith(`${block}.`))));
    const peaks = trainable.map((_, k) => (trainable.length === 1 ? lr : lr / recipe.lrMult ** (1 - k / (trainable.length - 1))));
    await phase(i + 1, perStage[i], trainable.map((block) => ({ params: block })), peaks);
  }
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

/** Seconds of one training step of the whole model on `train`'s first batch; the caller puts the model back. */
async function timeOneStep(model: Model, train: Loader<BatchInput, BatchTarget>, lossFn: Loss | undefined): Promise<number> {
  const batches = train.batches(0)[Symbol.asyncIterator]();
  const first = await batches.next();
  await batches.return?.(undefined);
  if (first.done) return 0;
  model.unfreeze();
  model.train();
  using optimizer = adamw(model, { lr: 0 });
  const started = performance.now();
  await model.trainStep(first.value.input, first.value.target, { loss: lossFn ?? crossEntropy(), optimizer });
  const seconds = (performance.now() - started) / 1000;
  disposeBatch(first.value);
  return seconds;
}

/** The model as fineTune's first phase starts it: saved weights and generator, new head trainable, body frozen. */
async function startOver(model: Model, headPath: string, saved: Snapshot): Promise<void> {
  await saved.restore();
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
