// fineTune's automatic learning rate, end to end on one small case of the recipe sweep
// (bench/recipes/sweep.mjs runs the whole sweep; this is its smallest cell).
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { describe, expect, it } from 'vitest';

import { type BatchNormPolicy, checkpoint, data, findLr, fineTune, type FineTuneOptions, loadPretrained, loss, type LrTrial, manualSeed, type Tensor, tensor } from '../src';
import { beatsChance, bestTrial } from '../src/testing';
import { fixture, root } from './helpers';

const SHIPPED = join(root, 'models', 'fashion-cnn.pt');

async function fashion(split: 'train' | 't10k') {
  const ds = await data.idx(fixture(`fashion-5to9-${split}-images.idx.gz`), fixture(`fashion-5to9-${split}-labels.idx.gz`), { mean: 0.286, std: 0.353 });
  return data.subset(ds, { classes: [5, 6, 7, 8, 9], ...(split === 'train' && { perClass: 40 }) });
}

async function tune(lr: number | 'auto', options: Partial<FineTuneOptions> = {}) {
  manualSeed(3);
  const model = await loadPretrained(SHIPPED);
  const history = await fineTune(model, { train: data.loader(await fashion('train'), { batchSize: 32, shuffle: true, seed: 3 }), numClasses: 5, freezeEpochs: 1, epochs: 3, lr, ...options });
  const weights = Array.from((await (model.stateDict()['classifier.2.weight'] as Tensor).read()) as Float32Array);
  const { accuracy } = await model.evaluate(data.loader(await fashion('t10k'), { batchSize: 250 }), { metrics: ['accuracy'] });
  const { bnPolicy } = model;
  model.dispose();
  return { history, weights, accuracy: accuracy!, bnPolicy };
}

describe("fineTune({ lr: 'auto' })", () => {
  it("reads the lr off a range test of the new head, tries five around it on held-out labels and the lower three under bnPolicy 'eval', then trains exactly as with the winner given", async () => {
    const seen: [number, number, number, string][] = [];
    const auto = await tune('auto', { callbacks: [{ name: 'spy', onLrTrial: (trial, index, count) => void seen.push([index, count, trial.lr, trial.bnPolicy]) }] });
    const finder = auto.history.lrFinder!;
    expect(finder.rule).toBe('valley');
    const { valley, peak, minimum, steepest } = finder.suggestions;
    expect(finder.scale).toBe(7);
    expect(minimum).toBeCloseTo(peak / 10, 12);
    for (const lr of [valley, peak, minimum, steepest]) expect(lr).toBeGreaterThan(1e-7);
    // 200 labels, 40 a class: a fifth holds out 40, under 100, so every lr runs on all five
    // fifths and is scored on all 200; trials at the valley × 7 times 1/4 … 4 under the
    // model's policy, then 1/4 … 1 with every BatchNorm layer on its running statistics.
    const { used, holdout, folds, score, trials } = finder.search;
    expect([used, holdout, folds, score]).toEqual([true, 200, 5, 'loss + 2 × error rate']);
    expect(trials!.map((t) => t.lr / (valley * 7))).toEqual([0.25, 0.5, 1, 2, 4, 0.25, 0.5, 1].map((f) => expect.closeTo(f, 12)));
    expect(trials!.map((t) => t.bnPolicy)).toEqual([...Array(5).fill('frozen-eval'), ...Array(3).fill('eval')]);
    for (const t of trials!) {
      expect(t.accuracy! * 200).toBeCloseTo(Math.round(t.accuracy! * 200), 9); // a share of 200 samples
      expect(t.loss).toBeGreaterThan(0);
    }
    // A trial's loss pools its five runs: each as fineTune given that lr and policy trains on
    // a fold's training part, scored on the fold's held-out part.
    for (const trial of [trials![2], trials![7]]) {
      let pooled = 0;
      for (const fold of [0, 1, 2, 3, 4]) {
        manualSeed(3);
        const model = await loadPretrained(SHIPPED);
        const parts = data.split(await fashion('train'), { val: 0.2, stratify: true, fold });
        await fineTune(model, { train: data.loader(parts.train, { batchSize: 32, shuffle: true, seed: 3 }), numClasses: 5, freezeEpochs: 1, epochs: 3, lr: trial.lr, bnPolicy: trial.bnPolicy });
        pooled += (await model.evaluate(data.loader(parts.val, { batchSize: 32, shuffle: true, seed: 3 }), { loss: loss.crossEntropy() })).loss! * parts.val.length;
        model.dispose();
      }
      expect(trial.loss).toBe(pooled / 200);
    }
    expect(trials![7].loss).not.toBe(trials![2].loss); // the same lr under the other policy trains otherwise
    expect(seen).toEqual(trials!.map((t, i) => [i, 8, t.lr, t.bnPolicy])); // callbacks hear of each trial as it ends
    // The lowest held-out loss plus twice the error rate; an 'eval' trial only where the three
    // 'eval' trials also have the lower mean loss than 'frozen-eval' at the same lrs.
    const scores = trials!.map((t) => t.loss + 2 * (1 - t.accuracy!));
    const best = scores.indexOf(Math.min(...scores));
    // Only trials that beat always answering the commonest class (a fifth) by more than luck can be chosen.
    expect(trials!.map((t) => t.beatsChance)).toEqual(trials!.map((t) => beatsChance(t, 200, 0.2, 8)));
    expect(trials![best].beatsChance).toBe(true);
    expect(best).toBe(0); // here 'frozen-eval' at a quarter of the valley × 7 (score 1.74; 'eval' there: 2.26)
    const meanLoss = (from: number) => (trials![from].loss + trials![from + 1].loss + trials![from + 2].loss) / 3;
    expect(meanLoss(5)).toBeLessThan(meanLoss(0)); // though 'eval' has the lower mean: 'frozen-eval' diverges at 4× a quarter
    const picked = best;
    expect([auto.history.lr, auto.history.bnPolicy, auto.bnPolicy]).toEqual([trials![picked].lr, trials![picked].bnPolicy, trials![picked].bnPolicy]);
    expect(new Set(trials!.map((t) => t.accuracy)).size).toBeGreaterThan(1); // the lrs differ on held-out data
    // The trials put the model and the generator back: same weights as a run given the lr and policy.
    const given = await tune(auto.history.lr, { bnPolicy: auto.history.bnPolicy });
    expect(given.history.lrFinder).toBeUndefined();
    expect(given.weights).toEqual(auto.weights);
    expect(auto.accuracy).toBeGreaterThan(0.6); // 200 labels, 4 epochs, deterministic on the CPU; chance is 20%
    expect([auto.history.freezeEpochs, auto.history.epochs]).toEqual([1, 3]); // given counts are kept
  });

  it('a trial that diverges scores a NaN loss and loses, never a perfect score', async () => {
    const { history } = await tune('auto', { lrScale: 1e5 }); // trials at 2.6e2 … 4.1e3: far past any sane lr
    const trials = history.lrFinder!.search.trials!;
    expect(trials.at(-1)!.loss).toBeNaN();
    expect(trials.at(-1)!.accuracy).toBe(0.2); // NaN scores all predict class 0: one class in five
    expect(trials.slice(0, 4).every((t) => Number.isFinite(t.loss))).toBe(true);
    // None beat chance, so the trials found nothing to rank by: the range test's lr, as given.
    expect(trials.map((t) => t.beatsChance)).toEqual(Array(8).fill(false));
    expect(history.lrFinder!.search).toMatchObject({ chance: 0.2, abstained: true, reason: expect.stringMatching(/^no trial did better on its 200 held-out samples than always answering the commonest class \(20\.0%; the best trial reached \d+\.\d%\)$/) });
    expect(history.lr).toBe(history.lrFinder!.suggestions.valley * 1e5);
  });

  it('a regression search whose every trial diverges trains at the range test\'s lr, and says to lower lrScale', async () => {
    await using mlp = await loadPretrained(fixture('mlp.scripted.pt'));
    const x = Float32Array.from({ length: 200 * 12 }, (_, i) => Math.sin(i));
    const rows = data.tensorDataset(x, tensor(Float32Array.from({ length: 200 }, (_, i) => x[i * 12] * 2), [200, 1]), { inputShape: [12] });
    const warnings: Error[] = [];
    const listen = (w: Error) => warnings.push(w);
    process.on('warning', listen);
    const history = await fineTune(mlp, { train: data.loader(rows, { batchSize: 20 }), numClasses: 1, loss: loss.mse(), freezeEpochs: 1, epochs: 1, lrScale: 1e12, lrSearch: true });
    await new Promise((resolve) => setImmediate(resolve));
    process.off('warning', listen);
    const { search } = history.lrFinder!;
    expect(search.trials!.every((t) => !Number.isFinite(t.loss) && t.beatsChance === undefined)).toBe(true);
    expect(search).toMatchObject({ abstained: true, reason: "every trial's held-out loss diverged, from 0.25 × the range test's lr up" });
    expect(history.lr).toBe(history.lrFinder!.suggestions.valley * 1e12);
    expect(warnings.filter((w) => (w as Error & { code?: string }).code === 'TORCHLITE_NO_SIGNAL').map((w) => w.message)).toEqual([
      `lrSearch: every trial's held-out loss diverged, from 0.25 × the range test's lr up, so fineTune trains at the range test's lr ${history.lr.toExponential(2)} under bnPolicy 'frozen-eval'. Pass a lower lrScale, or an lr.`,
    ]);
  });

  it('lets a trial count only where it beats always answering the commonest class beyond luck (binomial, p ≤ 0.05 over all trials)', () => {
    const at = (accuracy: number, loss = 1) => ({ loss, accuracy });
    // 50 held-out samples of five classes, five trials: p ≤ 0.05 / 5 = 0.01 each.
    expect(beatsChance(at(18 / 50), 50, 0.2, 5)).toBe(true); // P(X ≥ 18 | 50, 0.2) = 0.0063
    expect(beatsChance(at(17 / 50), 50, 0.2, 5)).toBe(false); // P(X ≥ 17) = 0.0144
    expect(beatsChance(at(17 / 50), 50, 0.2, 1)).toBe(true); // a single trial needs only 0.05
    // The commonest class sets the bar: 60% of 100 against a class holding 50% is p = 0.028.
    expect(beatsChance(at(0.6), 100, 0.5, 1)).toBe(true);
    expect(beatsChance(at(0.6), 100, 0.5, 2)).toBe(false); // 0.028 > 0.025
    expect(beatsChance(at(1, Number.NaN), 100, 0.2, 1)).toBe(false); // a diverged trial never does
    expect(beatsChance(at(0.3), 4000, 0.2, 1)).toBe(true); // no underflow on large hold-outs (0.8^4000 is 0 in doubles)
    expect(beatsChance(at(1), 10, 1, 1)).toBe(false); // one class held out: nothing to beat
  });

  it('ranks trials by held-out loss plus twice the error rate, or by loss without accuracy', () => {
    const at = (lr: number, loss: number, accuracy?: number): LrTrial => ({ lr, bnPolicy: 'frozen-eval', loss, ...(accuracy !== undefined && { accuracy }) });
    // Near chance, the lower lr's fewer confident mistakes win on loss (1.50 < 1.60), but the
    // higher one gets 20 points more right: 1.50 + 2 × 0.6 = 2.70 against 1.60 + 2 × 0.4 = 2.40.
    expect(bestTrial([at(1, 1.5, 0.4), at(2, 1.6, 0.6)])).toBe(1);
    // Where accuracy is close, loss decides: 0.30 + 2 × 0.10 = 0.50 against 0.45 + 2 × 0.05 = 0.55.
    expect(bestTrial([at(1, 0.3, 0.9), at(2, 0.45, 0.95)])).toBe(0);
    expect(bestTrial([at(1, 0.3), at(2, 0.2), at(4, 0.25)])).toBe(1); // regression: loss alone
    expect(bestTrial([at(1, Number.NaN, 1), at(2, 9, 0.2), at(4, Infinity, 1)])).toBe(1); // diverged trials lose
    expect(bestTrial([at(1, 0.5, 0.8), at(2, 0.5, 0.8)])).toBe(0); // a tie goes to the trial run first (the lower lr)
    // Two policies: the best trial, one of the second policy only where its trials also have the
    // lower mean loss at the lrs both ran; else the first policy's best.
    const under = (bnPolicy: 'eval', t: LrTrial): LrTrial => ({ ...t, bnPolicy });
    const frozen = [at(1, 0.6, 0.8), at(2, 0.5, 0.8), at(4, 0.9, 0.7)]; // scores 1.0, 0.9, 1.5; mean loss at lrs 1, 2: 0.55
    expect(bestTrial([...frozen, under('eval', at(1, 0.3, 0.9)), under('eval', at(2, 0.6, 0.6))])).toBe(3); // 'eval' best (0.5), mean 0.45
    expect(bestTrial([...frozen, under('eval', at(1, 0.3, 0.9)), under('eval', at(2, 1.2, 0.6))])).toBe(1); // best, but mean 0.75
    expect(bestTrial([...frozen, under('eval', at(1, 0.45, 0.7)), under('eval', at(2, 0.55, 0.7))])).toBe(1); // mean 0.5, not best (1.05)
    expect(bestTrial([...frozen, under('eval', at(1, 0.1, 0.9)), under('eval', at(2, Number.NaN, 0.2))])).toBe(1); // a diverged trial: mean infinite
    expect(bestTrial([at(1, Number.NaN), at(2, Infinity)])).toBe(-1); // all diverged: none to choose
  });

  it('chooses only among trials that beat chance, and none where no trial of the winning policy does', () => {
    const at = (lr: number, loss: number, accuracy: number, beatsChance = true, bnPolicy: BatchNormPolicy = 'frozen-eval'): LrTrial => ({ lr, bnPolicy, loss, accuracy, beatsChance });
    // A collapsed run: near-uniform outputs score about ln 5 (1.59 + 2 × 0.72 = 3.03), below a run that learned but is overconfident (2.2 + 2 × 0.6 = 3.4).
    const collapsed = at(2, 1.59, 0.28, false);
    expect(bestTrial([at(1, 2.2, 0.4), collapsed])).toBe(0);
    expect(bestTrial([collapsed, at(4, 1.7, 0.2, false)])).toBe(-1);
    // Two policies: 'eval' holds the best trial that counts and the lower mean paired loss (1.2 against 1.4, at chance or not).
    const frozen = [at(1, 1.5, 0.3, false), at(2, 1.3, 0.3, false), at(4, 1.6, 0.25, false)];
    const evals = [at(1, 1.0, 0.45, true, 'eval'), at(2, 1.4, 0.3, false, 'eval')];
    expect(bestTrial([...frozen, ...evals])).toBe(3);
    // 'eval' loses on mean loss (1.5 against 1.4) and no 'frozen-eval' trial counts: none to choose.
    expect(bestTrial([...frozen, evals[0], { ...evals[1], loss: 2.0 }])).toBe(-1);
    expect(bestTrial([...frozen.map((t) => ({ ...t, beatsChance: true })), evals[0], { ...evals[1], loss: 2.0 }])).toBe(1);
  });

  it('lrSearch: false keeps the range test alone; large sets and bad values say why', async () => {
    const plain = await tune('auto', { lrSearch: false });
    expect(plain.history.lr).toBeCloseTo(plain.history.lrFinder!.suggestions.valley * 7, 12);
    expect(plain.history.lrFinder!.search).toEqual({ used: false, reason: 'lrSearch: false' });
    const model = await loadPretrained(SHIPPED);
    const train = data.loader(await fashion('train'), { batchSize: 32 });
    await expect(fineTune(model, { train, numClasses: 5, lrSearch: 'yes' as never })).rejects.toThrow(new TypeError("Expected true, false or 'auto' for `options.lrSearch` but received 'yes'"));
    const big = data.loader(data.tensorDataset(new Float32Array(2001 * 784), Int32Array.from({ length: 2001 }, (_, i) => i % 5), { inputShape: [1, 28, 28] }), { batchSize: 500 });
    const history = await fineTune(model, { train: big, numClasses: 5, freezeEpochs: 1, epochs: 0 });
    expect(history.lrFinder!.search).toEqual({ used: false, reason: "the training set has 2001 samples, over the 2000 up to which lrSearch: 'auto' searches (pass lrSearch: true to search anyway)" });
    const lone = data.loader(data.subset(await fashion('train'), { perClass: 1 }), { batchSize: 5 });
    await expect(fineTune(model, { train: lone, numClasses: 5, freezeEpochs: 0, epochs: 1, lrSearch: true })).rejects.toThrow(
      expect.objectContaining({ code: 'TORCHLITE_BAD_ARGUMENT', message: "lrSearch: true cannot apply: 5 training samples leave none to hold out for the trials; pass lrSearch: 'auto' (or false)" }),
    );
    const skipped = await fineTune(model, { train: lone, numClasses: 5, freezeEpochs: 0, epochs: 1 });
    expect(skipped.lrFinder!.search).toEqual({ used: false, reason: '5 training samples leave none to hold out for the trials' });
    // Folds: one where a fifth holds out 100 or more; as many as the classes fill otherwise.
    const blank = (perClass: number) => data.loader(data.tensorDataset(new Float32Array(5 * perClass * 784), Int32Array.from({ length: 5 * perClass }, (_, i) => i % 5), { inputShape: [1, 28, 28] }), { batchSize: 500 });
    const searched = async (perClass: number) => (await fineTune(model, { train: blank(perClass), numClasses: 5, freezeEpochs: 1, epochs: 0, lrSearch: true })).lrFinder!.search;
    const warnings: Error[] = [];
    const listen = (w: Error) => warnings.push(w);
    process.on('warning', listen);
    const one = await searched(100);
    await new Promise((resolve) => setImmediate(resolve));
    process.off('warning', listen);
    // Blank images: every trial at chance, so the trials abstain and say so.
    expect(one).toMatchObject({ used: true, holdout: 100, folds: 1, chance: 0.2, abstained: true });
    const ours = warnings.filter((w) => (w as Error & { code?: string }).code === 'TORCHLITE_NO_SIGNAL');
    expect(ours).toHaveLength(1);
    expect(ours[0].message).toMatch(
      /^lrSearch: no trial did better on its 100 held-out samples than always answering the commonest class \(20\.0%; the best trial reached 20\.0%\), so fineTune trains at the range test's lr \d\.\d\de[-+]\d+ under bnPolicy 'frozen-eval'\. Few labels, or features that do not suit this data: add labels, or start from a model pretrained nearer to it\.$/,
    );
    expect(one.trials!.map((t) => t.bnPolicy)).toEqual(Array(5).fill('frozen-eval')); // no unfrozen epochs: the policy cannot matter
    // Stages match as model.unfreeze matches them: the head alone trains no BatchNorm, a glob over the body does.
    const staged = async (unfreeze: string[]) => (await fineTune(model, { train: blank(100), numClasses: 5, freezeEpochs: 1, epochs: 1, unfreeze, lrSearch: true })).lrFinder!.search.trials!.length;
    expect([await staged(['classifier']), await staged(['features.*'])]).toEqual([5, 8]);
    await using mlp = await loadPretrained(fixture('mlp.scripted.pt')); // nor without BatchNorm layers
    const rows = data.loader(data.tensorDataset(new Float32Array(500 * 12), Int32Array.from({ length: 500 }, (_, i) => i % 5), { inputShape: [12] }), { batchSize: 100 });
    const plainTrials = (await fineTune(mlp, { train: rows, numClasses: 5, freezeEpochs: 1, epochs: 1, lrSearch: true })).lrFinder!.search.trials!;
    expect(plainTrials.map((t) => t.bnPolicy)).toEqual(Array(5).fill('frozen-eval'));
    // A policy given is the run's, its trials' and the model's after.
    const given = await fineTune(model, { train: blank(100), numClasses: 5, freezeEpochs: 1, epochs: 1, bnPolicy: 'eval' });
    expect([given.bnPolicy, model.bnPolicy, ...given.lrFinder!.search.trials!.map((t) => t.bnPolicy)]).toEqual(Array(7).fill('eval'));
    await expect(fineTune(model, { train, bnPolicy: 'frozen' as never })).rejects.toThrow(new RangeError("Expected one of 'auto', 'frozen-eval', 'eval', 'train' for `options.bnPolicy` but received 'frozen'"));
    expect(await searched(3)).toMatchObject({ used: true, holdout: 15, folds: 3 }); // 1 a class a fold: folds 3 and 4 hold out nothing
    model.dispose();
  });

  it('with every default, a short loader repeats until the run has at least minSteps steps', async () => {
    manualSeed(3);
    const model = await loadPretrained(SHIPPED);
    const train = data.loader(await fashion('train'), { batchSize: 32, shuffle: true, seed: 3 });
    expect(train.length).toBe(7); // 200 labels: 4 default epochs would be 28 steps
    const history = await fineTune(model, { train, numClasses: 5 });
    expect([history.freezeEpochs, history.epochs, history.length]).toEqual([5, 15, 20]); // ⌈128 / 28⌉ = 5 times 1 + 3
    const { accuracy } = await model.evaluate(data.loader(await fashion('t10k'), { batchSize: 250 }), { metrics: ['accuracy'] });
    expect(accuracy).toBeGreaterThan(0.85); // 90.5% here, against 60% for the same data in 1 + 3 epochs above
    model.dispose();
    await expect(fineTune(model, { train, minSteps: -1 })).rejects.toThrow(new RangeError('Expected a non-negative integer for `options.minSteps` but received -1'));
  });

  it('a resumed run reuses the lr and BatchNorm policy its checkpoint recorded instead of testing again', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'torchlite-auto-'));
    const train = data.loader(await fashion('train'), { batchSize: 32, shuffle: true, seed: 3 });
    manualSeed(3);
    const first = await loadPretrained(SHIPPED);
    const history = await fineTune(first, { train, numClasses: 5, freezeEpochs: 1, epochs: 1, bnPolicy: 'eval', callbacks: [checkpoint({ dir, saveBest: false })] });
    first.dispose();
    const resumed = await loadPretrained(SHIPPED);
    const again = await fineTune(resumed, { train, numClasses: 5, freezeEpochs: 1, epochs: 1, resume: join(dir, 'epoch-1.ckpt') });
    expect([again.lr, again.bnPolicy, resumed.bnPolicy]).toEqual([history.lr, 'eval', 'eval']); // and its BatchNorm policy
    expect(again.lrFinder).toBeUndefined();
    resumed.dispose();
  });

  it('findLr reports every rule, with valley as its suggestion', async () => {
    manualSeed(0);
    const model = await loadPretrained(SHIPPED);
    model.resetClassifier(5);
    model.freeze();
    model.unfreeze('classifier');
    const found = await findLr(model, data.loader(await fashion('train'), { batchSize: 32, shuffle: true }), { steps: 60 });
    expect(Object.keys(found.suggestions).sort()).toEqual(['minimum', 'peak', 'steepest', 'valley']);
    expect(found.suggestion).toBe(found.suggestions.valley);
    expect(found.lrs).toHaveLength(found.losses.length);
    model.dispose();
  });
});
