// fineTune's automatic learning rate, end to end on one small case of the recipe sweep
// (bench/recipes/sweep.mjs runs the whole sweep; this is its smallest cell).
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { describe, expect, it } from 'vitest';

import { checkpoint, data, findLr, fineTune, loadPretrained, manualSeed, type Tensor } from '../src';
import { fixture, root } from './helpers';

const SHIPPED = join(root, 'models', 'fashion-cnn.pt');

async function fashion(split: 'train' | 't10k') {
  const ds = await data.idx(fixture(`fashion-5to9-${split}-images.idx.gz`), fixture(`fashion-5to9-${split}-labels.idx.gz`), { mean: 0.286, std: 0.353 });
  return data.subset(ds, { classes: [5, 6, 7, 8, 9], ...(split === 'train' && { perClass: 40 }) });
}

async function tune(lr: number | 'auto') {
  manualSeed(3);
  const model = await loadPretrained(SHIPPED);
  const history = await fineTune(model, { train: data.loader(await fashion('train'), { batchSize: 32, shuffle: true, seed: 3 }), numClasses: 5, freezeEpochs: 1, epochs: 3, lr });
  const weights = Array.from((await (model.stateDict()['classifier.2.weight'] as Tensor).read()) as Float32Array);
  const { accuracy } = await model.evaluate(data.loader(await fashion('t10k'), { batchSize: 250 }), { metrics: ['accuracy'] });
  model.dispose();
  return { history, weights, accuracy: accuracy! };
}

describe("fineTune({ lr: 'auto' })", () => {
  it('reads the lr off a range test of the new head, then trains exactly as with that lr given', async () => {
    const auto = await tune('auto');
    expect(auto.history.lrFinder?.rule).toBe('valley');
    const { valley, peak, minimum, steepest } = auto.history.lrFinder!.suggestions;
    expect(auto.history.lrFinder?.scale).toBe(7);
    expect(auto.history.lr).toBeCloseTo(valley * 7, 12);
    expect(minimum).toBeCloseTo(peak / 10, 12);
    for (const lr of [valley, peak, minimum, steepest]) expect(lr).toBeGreaterThan(1e-7);
    expect(auto.history.lr).toBeLessThan(10);
    // The range test put the model and the generator back: same weights as a run given the lr.
    const given = await tune(auto.history.lr);
    expect(given.history.lrFinder).toBeUndefined();
    expect(given.weights).toEqual(auto.weights);
    expect(auto.accuracy).toBeGreaterThan(0.5); // 200 labels, 4 epochs: 60% here, deterministic on the CPU; chance is 20%
    expect([auto.history.freezeEpochs, auto.history.epochs]).toEqual([1, 3]); // given counts are kept
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
