// fineTune's automatic learning rate, end to end on one small case of the recipe sweep
// (bench/recipes/sweep.mjs runs the whole sweep; this is its smallest cell).
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { describe, expect, it } from 'vitest';

import { checkpoint, data, findLr, fineTune, type FineTuneOptions, loadPretrained, loss, manualSeed, type Tensor } from '../src';
import { bestTrial } from '../src/testing';
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
  model.dispose();
  return { history, weights, accuracy: accuracy! };
}

describe("fineTune({ lr: 'auto' })", () => {
  it('reads the lr off a range test of the new head, tries five around it on held-out labels, then trains exactly as with the winner given', async () => {
    const seen: [number, number, number][] = [];
    const auto = await tune('auto', { callbacks: [{ name: 'spy', onLrTrial: (trial, index, count) => void seen.push([index, count, trial.lr]) }] });
    const finder = auto.history.lrFinder!;
    expect(finder.rule).toBe('valley');
    const { valley, peak, minimum, steepest } = finder.suggestions;
    expect(finder.scale).toBe(7);
    expect(minimum).toBeCloseTo(peak / 10, 12);
    for (const lr of [valley, peak, minimum, steepest]) expect(lr).toBeGreaterThan(1e-7);
    // 200 labels, 40 a class: a fifth holds out 40, under 100, so every lr runs on all five
    // fifths and is scored on all 200; trials at the valley × 7 times 1/4 … 4.
    const { used, holdout, folds, score, trials } = finder.search;
    expect([used, holdout, folds, score]).toEqual([true, 200, 5, 'loss + 2 × error rate']);
    expect(trials!.map((t) => t.lr / (valley * 7))).toEqual([0.25, 0.5, 1, 2, 4].map((f) => expect.closeTo(f, 12)));
    for (const t of trials!) {
      expect(t.accuracy! * 200).toBeCloseTo(Math.round(t.accuracy! * 200), 9); // a share of 200 samples
      expect(t.loss).toBeGreaterThan(0);
    }
    // A trial's loss pools its five runs: each as fineTune given that lr trains on a fold's
    // training part, scored on the fold's held-out part.
    const middle = trials![2];
    let pooled = 0;
    for (const fold of [0, 1, 2, 3, 4]) {
      manualSeed(3);
      const model = await loadPretrained(SHIPPED);
      const parts = data.split(await fashion('train'), { val: 0.2, stratify: true, fold });
      await fineTune(model, { train: data.loader(parts.train, { batchSize: 32, shuffle: true, seed: 3 }), numClasses: 5, freezeEpochs: 1, epochs: 3, lr: middle.lr });
      pooled += (await model.evaluate(data.loader(parts.val, { batchSize: 32, shuffle: true, seed: 3 }), { loss: loss.crossEntropy() })).loss! * parts.val.length;
      model.dispose();
    }
    expect(middle.loss).toBe(pooled / 200);
    expect(seen).toEqual(trials!.map((t, i) => [i, 5, t.lr])); // callbacks hear of each trial as it ends
    // The lowest held-out loss plus twice the error rate.
    const scores = trials!.map((t) => t.loss + 2 * (1 - t.accuracy!));
    const picked = scores.indexOf(Math.min(...scores));
    expect(picked).toBe(0); // here the smallest, a quarter of the valley × 7
    expect(auto.history.lr).toBe(trials![picked].lr);
    expect(new Set(trials!.map((t) => t.accuracy)).size).toBeGreaterThan(1); // the lrs differ on held-out data
    // The trials put the model and the generator back: same weights as a run given the lr.
    const given = await tune(auto.history.lr);
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
    expect(history.lr).toBe(trials[0].lr); // all at chance: the lowest finite loss
  });

  it('ranks trials by held-out loss plus twice the error rate, or by loss without accuracy', () => {
    // Near chance, the lower lr's fewer confident mistakes win on loss (1.50 < 1.60), but the
    // higher one gets 20 points more right: 1.50 + 2 × 0.6 = 2.70 against 1.60 + 2 × 0.4 = 2.40.
    expect(bestTrial([{ lr: 1, loss: 1.5, accuracy: 0.4 }, { lr: 2, loss: 1.6, accuracy: 0.6 }])).toBe(1);
    // Where accuracy is close, loss decides: 0.30 + 2 × 0.10 = 0.50 against 0.45 + 2 × 0.05 = 0.55.
    expect(bestTrial([{ lr: 1, loss: 0.3, accuracy: 0.9 }, { lr: 2, loss: 0.45, accuracy: 0.95 }])).toBe(0);
    expect(bestTrial([{ lr: 1, loss: 0.3 }, { lr: 2, loss: 0.2 }, { lr: 4, loss: 0.25 }])).toBe(1); // regression: loss alone
    expect(bestTrial([{ lr: 1, loss: Number.NaN, accuracy: 1 }, { lr: 2, loss: 9, accuracy: 0.2 }, { lr: 4, loss: Infinity, accuracy: 1 }])).toBe(1); // diverged trials lose
    expect(bestTrial([{ lr: 1, loss: 0.5, accuracy: 0.8 }, { lr: 2, loss: 0.5, accuracy: 0.8 }])).toBe(0); // a tie goes to the lower lr
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
    expect(await searched(100)).toMatchObject({ used: true, holdout: 100, folds: 1 });
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

  it('a resumed run reuses the lr its checkpoint recorded instead of testing again', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'torchlite-auto-'));
    const train = data.loader(await fashion('train'), { batchSize: 32, shuffle: true, seed: 3 });
    manualSeed(3);
    const first = await loadPretrained(SHIPPED);
    const history = await fineTune(first, { train, numClasses: 5, freezeEpochs: 1, epochs: 1, callbacks: [checkpoint({ dir, saveBest: false })] });
    first.dispose();
    const resumed = await loadPretrained(SHIPPED);
    const again = await fineTune(resumed, { train, numClasses: 5, freezeEpochs: 1, epochs: 1, resume: join(dir, 'epoch-1.ckpt') });
    expect(again.lr).toBe(history.lr);
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
