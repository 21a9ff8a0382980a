// fineTune's lr end to end on one small case of the recipe sweep (bench/recipes/sweep.mjs runs
// the whole sweep): the default, the range test (lr: 'auto') and the opt-in search.
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { describe, expect, it } from 'vitest';

import { checkpoint, data, findLr, fineTune, type FineTuneHistory, type FineTuneOptions, loadPretrained, loss, type LrSearchPlan, manualSeed, type Tensor, tensor } from '../../src';
import { beatsChance, bestTrial } from '../../src/lrsearch';
import { fixture, root } from '../helpers';

const SHIPPED = join(root, 'models', 'fashion-cnn.pt');

async function fashion(split: 'train' | 't10k') {
  const ds = await data.idx(fixture(`fashion-5to9-${split}-images.idx.gz`), fixture(`fashion-5to9-${split}-labels.idx.gz`), { mean: 0.286, std: 0.353 });
  return data.subset(ds, { classes: [5, 6, 7, 8, 9], ...(split === 'train' && { perClass: 40 }) });
}

async function tune(options: Partial<FineTuneOptions> = {}) {
  manualSeed(3);
  const model = await loadPretrained(SHIPPED);
  const history = await fineTune(model, { train: data.loader(await fashion('train'), { batchSize: 32, shuffle: true, seed: 3 }), numClasses: 5, freezeEpochs: 1, epochs: 3, ...options });
  const weights = Array.from((await ((await model.stateDict())['classifier.2.weight'] as Tensor).read()) as Float32Array);
  const { accuracy } = await model.evaluate(data.loader(await fashion('t10k'), { batchSize: 250 }), { metrics: ['accuracy'] });
  const { bnPolicy } = model;
  model.dispose();
  return { history, weights, accuracy: accuracy!, bnPolicy };
}

const noSignal = async (run: () => Promise<unknown>) => {
  const warnings: Error[] = [];
  const listen = (w: Error) => warnings.push(w);
  process.on('warning', listen);
  try {
    await run();
    await new Promise((resolve) => setImmediate(resolve));
  } finally {
    process.off('warning', listen);
  }
  return warnings.filter((w) => (w as Error & { code?: string }).code === 'TORCHLITE_NO_SIGNAL').map((w) => w.message);
};

describe('fineTune lr', () => {
  it("lrSearch: true reads the centre off the range test (lr: 'auto'), announces its runs, tries five lrs and three under 'eval', then trains as with the winner given", async () => {
    const plans: LrSearchPlan[] = [];
    const seen: [number, number, number, string][] = [];
    const auto = await tune({ lr: 'auto', lrSearch: true, callbacks: [{ name: 'spy', onLrSearch: (plan) => void plans.push(plan), onLrTrial: (trial, index, count) => void seen.push([index, count, trial.lr, trial.bnPolicy]) }] });
    const finder = auto.history.lrFinder!;
    expect([finder.rule, finder.scale]).toEqual(['valley', 7]);
    const { valley } = finder.suggestions;
    // 200 labels, 40 a class: a fifth holds out 40, under 100, so every lr runs on all five
    // fifths and is scored on all 200.
    const { used, holdout, folds, score, trials } = auto.history.search!;
    expect([used, holdout, folds, score]).toEqual([true, 200, 5, 'loss + 2 × error rate']);
    expect(plans).toEqual([{ trials: 8, folds: 5, runs: 40, estimatedSeconds: expect.any(Number) }]);
    expect(plans[0].estimatedSeconds).toBeGreaterThan(0);
    expect(trials!.map((t) => t.lr / (valley * 7))).toEqual([0.25, 0.5, 1, 2, 4, 0.25, 0.5, 1].map((f) => expect.closeTo(f, 12)));
    expect(trials!.map((t) => t.bnPolicy)).toEqual([...Array(5).fill('frozen-eval'), ...Array(3).fill('eval')]);
    // A trial's loss pools its five runs: each as fineTune given that lr and policy trains on
    // a fold's training part, scored on the fold's held-out part.
    const trial = trials![2];
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
    expect(seen).toEqual(trials!.map((t, i) => [i, 8, t.lr, t.bnPolicy])); // callbacks hear of each trial as it ends
    expect(trials!.map((t) => t.beatsChance)).toEqual(trials!.map((t) => beatsChance(t, 200, 0.2, 8)));
    const best = bestTrial(trials!);
    expect(best).toBeGreaterThanOrEqual(0);
    expect([auto.history.lr, auto.history.bnPolicy, auto.bnPolicy]).toEqual([trials![best].lr, trials![best].bnPolicy, trials![best].bnPolicy]);
    // The trials put the model and the generator back: same weights as a run given the lr and policy.
    const given = await tune({ lr: auto.history.lr, bnPolicy: auto.history.bnPolicy });
    expect(given.history.lrFinder).toBeUndefined();
    expect(given.weights).toEqual(auto.weights);
    expect(auto.accuracy).toBeGreaterThan(0.5); // chance is 20%
  });

  it('a search that diverges scores NaN losses, abstains and trains at the centre lr', async () => {
    let history: FineTuneHistory | undefined;
    const warnings = await noSignal(async () => {
      ({ history } = await tune({ lr: 1e3, lrSearch: true })); // trials at 2.5e2 … 4e3: far past any sane lr
    });
    const search = history!.search!;
    expect(search.trials!.at(-1)!.loss).toBeNaN();
    expect(search.trials!.map((t) => t.beatsChance)).toEqual(Array(search.trials!.length).fill(false));
    expect(search).toMatchObject({ chance: 0.2, abstained: true, reason: expect.stringMatching(/^no trial did better on its 200 held-out samples than always answering the commonest class \(20\.0%; the best trial reached \d+\.\d%\)$/) });
    expect(history!.lr).toBe(1e3);
    expect(warnings).toHaveLength(1);
    expect(warnings[0]).toMatch(/, so fineTune trains at lr 1\.00e\+3 under bnPolicy 'frozen-eval'\. Few labels, or features that do not suit this data/);
  });

  it('a regression search whose every trial diverges trains at the centre lr, says to lower it, and names no BatchNorm policy for a model without BatchNorm', async () => {
    await using mlp = await loadPretrained(fixture('mlp.scripted.pt'));
    const x = Float32Array.from({ length: 200 * 12 }, (_, i) => Math.sin(i));
    const rows = data.tensorDataset(x, tensor(Float32Array.from({ length: 200 }, (_, i) => x[i * 12] * 2), [200, 1]), { inputShape: [12] });
    let history: FineTuneHistory | undefined;
    const warnings = await noSignal(async () => {
      history = await fineTune(mlp, { train: data.loader(rows, { batchSize: 20 }), numClasses: 1, loss: loss.mse(), freezeEpochs: 1, epochs: 1, lr: 1e12, lrSearch: true });
    });
    const search = history!.search!;
    expect(search.trials!.every((t) => !Number.isFinite(t.loss) && t.beatsChance === undefined)).toBe(true);
    expect(search).toMatchObject({ abstained: true, reason: "every trial's held-out loss diverged, from 0.25 × the centre lr up" });
    expect(warnings).toEqual(["lrSearch: every trial's held-out loss diverged, from 0.25 × the centre lr up, so fineTune trains at lr 1.00e+12. Pass a lower lr."]);
  });

  it("by default trains once at lr 1e-2 under the model's BatchNorm policy: no range test, no trials, and a short loader repeats to minSteps", async () => {
    manualSeed(3);
    const model = await loadPretrained(SHIPPED);
    const train = data.loader(await fashion('train'), { batchSize: 32, shuffle: true, seed: 3 });
    expect(train.length).toBe(7); // 200 labels: 4 default epochs would be 28 steps
    const history = await fineTune(model, { train, numClasses: 5 });
    expect([history.lr, history.bnPolicy, history.lrFinder, history.search]).toEqual([1e-2, 'frozen-eval', undefined, undefined]);
    expect([history.freezeEpochs, history.epochs, history.length]).toEqual([5, 15, 20]); // ⌈128 / 28⌉ = 5 times 1 + 3
    const { accuracy } = await model.evaluate(data.loader(await fashion('t10k'), { batchSize: 250 }), { metrics: ['accuracy'] });
    expect(accuracy).toBeGreaterThan(0.6); // chance is 20%
    model.dispose();
    await expect(fineTune(model, { train, minSteps: -1 })).rejects.toThrow(new RangeError('Expected a non-negative integer for `options.minSteps` but received -1'));
  });

  it("lr: 'auto' trains at the range test's valley × 7, as a run given that lr", async () => {
    const auto = await tune({ lr: 'auto' });
    expect(auto.history.lr).toBeCloseTo(auto.history.lrFinder!.suggestions.valley * 7, 12);
    expect(auto.history.search).toBeUndefined();
    const given = await tune({ lr: auto.history.lr });
    expect(given.weights).toEqual(auto.weights); // the range test put the model and generator back
  });

  it('refuses bad values, and a second fineTune on a model already being fine-tuned, before it changes anything', async () => {
    await using model = await loadPretrained(SHIPPED);
    const train = data.loader(await fashion('train'), { batchSize: 32 });
    await expect(fineTune(model, { train, numClasses: 5, lrSearch: 'auto' as never })).rejects.toThrow(new TypeError("Expected a boolean for `options.lrSearch` but received 'auto'"));
    await expect(fineTune(model, { train, numClasses: 5, lr: -1 })).rejects.toThrow(new RangeError("Expected a positive number or 'auto' for `options.lr` but received -1"));
    await expect(fineTune(model, { train, bnPolicy: 'frozen' as never })).rejects.toThrow(new RangeError("Expected one of 'auto', 'frozen-eval', 'eval', 'train' for `options.bnPolicy` but received 'frozen'"));
    // The newcomer's code: two calls without awaiting the first. The second is refused; the first finishes with its own head.
    const first = fineTune(model, { train, numClasses: 5, freezeEpochs: 1, epochs: 1 });
    await expect(fineTune(model, { train, numClasses: 3, freezeEpochs: 1, epochs: 1 })).rejects.toThrow(expect.objectContaining({ code: 'TORCHLITE_MODEL_BUSY', message: 'fineTune is already running on this model; await it (or abort it through its `signal`) before starting another' }));
    const history = await first;
    expect(history).toHaveLength(2);
    expect(model.parameters().find((p) => p.name === 'classifier.2.weight')!.shape[0]).toBe(5);
    expect((await fineTune(model, { train, numClasses: 5, freezeEpochs: 1, epochs: 0 })).length).toBe(1); // once it settled, another may run
  });

  it('a resumed run reuses the lr and BatchNorm policy its checkpoint recorded instead of testing again', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'torchlite-auto-'));
    const train = data.loader(await fashion('train'), { batchSize: 32, shuffle: true, seed: 3 });
    manualSeed(3);
    const first = await loadPretrained(SHIPPED);
    const history = await fineTune(first, { train, numClasses: 5, freezeEpochs: 1, epochs: 1, lr: 'auto', bnPolicy: 'eval', callbacks: [checkpoint({ dir, saveBest: false })] });
    first.dispose();
    const resumed = await loadPretrained(SHIPPED);
    const again = await fineTune(resumed, { train, numClasses: 5, freezeEpochs: 1, epochs: 1, lr: 'auto', resume: join(dir, 'epoch-1.ckpt') });
    expect([again.lr, again.bnPolicy, resumed.bnPolicy]).toEqual([history.lr, 'eval', 'eval']);
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
    expect(found.suggestions.minimum).toBeCloseTo(found.suggestions.peak / 10, 12);
    expect(found.lrs).toHaveLength(found.losses.length);
    model.dispose();
  });
});
