// fineTune's cached backbone features: the head-only phase on cached features must equal
// training the whole model, and every case where that would not hold falls back, saying why.
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { describe, expect, it } from 'vitest';

import { checkpoint, data, fineTune, type FineTuneOptions, loadPretrained, loss, manualSeed, type Model, nn, randn, type Tensor } from '../src';
import { fixture, maxAbsDiff, relativeDiff } from './helpers';

manualSeed(5);
const inputs = randn([96, 3, 32, 32]);
const train = data.tensorDataset(inputs, Int32Array.from({ length: 96 }, (_, i) => i % 3), { inputShape: [3, 32, 32] });
const val = data.tensorDataset(randn([40, 3, 32, 32]), Int32Array.from({ length: 40 }, (_, i) => i % 3), { inputShape: [3, 32, 32] });

/** resnet_small (its dropout acts right before `fc`), fine-tuned 3 + 1 epochs; `body` changes it first. */
async function tune(options: Partial<FineTuneOptions>, body?: (model: Model) => void, file = 'resnet_small.scripted.pt') {
  manualSeed(1);
  const model = await loadPretrained(fixture(file));
  body?.(model);
  const history = await fineTune(model, {
    train: data.loader(train, { batchSize: 16, shuffle: true, seed: 2 }),
    val: data.loader(val, { batchSize: 20 }),
    numClasses: 3,
    freezeEpochs: 3,
    epochs: 1,
    lrSearch: false, // random data: the cache is under test here, not the search (test/recipes.test.ts)
    ...options,
  });
  const dict = (await model.stateDict());
  const weights = Object.fromEntries(await Promise.all(Object.entries(dict).map(async ([name, t]: [string, Tensor]) => [name, Array.from((await t.read()) as ArrayLike<number | bigint>, Number)] as const)));
  const types = model.modules().map((m) => `${m.path}:${m.type}`);
  model.dispose();
  return { history, weights, types };
}

describe('fineTune({ cacheFeatures })', () => {
  for (const [name, body] of [
    ['with the dropout before the head replayed from the same generator draws', undefined],
    ['without dropout', (model: Model) => model.replace('dropout', nn.identity())],
  ] as const) {
    it(`trains the head-only phase on cached features as the whole model within float noise, LR range test included: ${name}`, async () => {
      const whole = await tune({ cacheFeatures: false }, body);
      const cached = await tune({}, body);
      expect(whole.history.featureCache).toEqual({ used: false, reason: 'cacheFeatures: false' });
      // The body ran as a frozen copy, BatchNorm folded into its convolutions: its features
      // differ in the last bits, and so do the three head-only epochs, no more.
      expect(cached.history.featureCache).toMatchObject({ used: true, bytes: 136 * 16 * 4, optimized: true });
      expect(cached.history.lr).toBe(whole.history.lr);
      const losses = (h: typeof whole.history) => h.slice(0, 3).flatMap((r) => [r.trainLoss, r.val!.loss!]);
      expect(relativeDiff(losses(cached.history), losses(whole.history))).toBeLessThan(1e-6);
      expect(cached.history.map((r) => r.val?.accuracy)).toEqual(whole.history.map((r) => r.val?.accuracy));
      expect(cached.types).toEqual(whole.types); // the head is a plain Linear again
      // The unfrozen epoch after it trains the whole model at the range test's lr (0.086),
      // where its loss rises: that amplifies any difference (a weight moves by 8%). At a
      // stable lr the losses of all four epochs stay within 1e-6. The weights differ more:
      // AdamW moves each weight by about lr per step whatever its gradient's size, so where
      // a gradient is near zero (BatchNorm biases) a 1e-7 difference in the features turns
      // into up to 1.5e-4 of the 6e-3 those six steps can move a weight.
      const [steadyWhole, steadyCached] = [await tune({ cacheFeatures: false, lr: 1e-3 }, body), await tune({ lr: 1e-3 }, body)];
      expect(steadyCached.history.featureCache).toMatchObject({ used: true, optimized: true });
      const all = (h: typeof whole.history) => h.flatMap((r) => [r.trainLoss, r.val!.loss!]);
      expect(relativeDiff(all(steadyCached.history), all(steadyWhole.history))).toBeLessThan(1e-6);
      for (const [name, weights] of Object.entries(steadyWhole.weights)) expect(maxAbsDiff(steadyCached.weights[name], weights), name).toBeLessThan(5e-4);
    });
  }

  it('keeps float targets of every shape on the cached features (regression)', async () => {
    for (const outputs of [1, 2]) {
      const rows = data.tensorDataset(inputs, randn([96, outputs]), { inputShape: [3, 32, 32] });
      const run = async (cacheFeatures: boolean) => {
        manualSeed(1);
        await using model = await loadPretrained(fixture('resnet_small.scripted.pt'));
        return await fineTune(model, { train: data.loader(rows, { batchSize: 16, shuffle: true, seed: 2 }), numClasses: outputs, loss: loss.mse(), freezeEpochs: 2, epochs: 0, lr: 1e-3, cacheFeatures });
      };
      const [whole, cached] = [await run(false), await run(true)];
      expect(cached.featureCache).toMatchObject({ used: true });
      expect(relativeDiff(cached.map((r) => r.trainLoss), whole.map((r) => r.trainLoss))).toBeLessThan(1e-6);
    }
  });

  it('checks the frozen copy of the body first, and computes the features with the model where the copy is wrong', async () => {
    const [whole, cached] = [await tune({ cacheFeatures: false, epochs: 0 }, undefined, 'mobilenet_small.scripted.pt'), await tune({ epochs: 0 }, undefined, 'mobilenet_small.scripted.pt')];
    expect(cached.history.featureCache).toMatchObject({ used: true });
    // Whether the copy is right depends on the CPU's kernels: LibTorch 1.13's inference passes
    // got this MobileNetV3 wrong on one VM (outputs off by 1e-2, and an "output ... was
    // resized" warning) and right on an AMD EPYC one. The cache used the copy exactly where
    // the model's own copy agrees on the same probe (the first 16 training samples), and its
    // losses are the whole model's either way.
    const model = await loadPretrained(fixture('mobilenet_small.scripted.pt'));
    let copied: boolean;
    try {
      model.eval();
      const probe = (await data.loader(train, { batchSize: 16 }).batches(0).next()).value!;
      const copy = await model.inferenceCopy(probe.input as Tensor);
      copied = copy !== undefined;
      copy?.dispose();
    } finally {
      model.dispose();
    }
    expect(cached.history.featureCache?.optimized).toBe(copied);
    const losses = (h: typeof whole.history) => h.flatMap((r) => [r.trainLoss, r.val!.loss!]);
    expect(relativeDiff(losses(cached.history), losses(whole.history))).toBeLessThan(1e-6);
  });

  it('falls back to the whole model, saying why, wherever the cache would not be exact', async () => {
    const early = (model: Model) => model.replace('relu', nn.sequential(nn.relu(), nn.dropout(0.3)));
    expect((await tune({}, early)).history.featureCache).toEqual({ used: false, reason: "the body has dropout in several places ('relu.1', 'dropout'), so the head's inputs change every epoch" });
    const onlyEarly = (model: Model) => {
      early(model);
      model.replace('dropout', nn.identity());
    };
    expect((await tune({}, onlyEarly)).history.featureCache).toEqual({ used: false, reason: "the body's dropout ('relu.1') is not right before the head, so the head's inputs change every epoch" });
    expect((await tune({ dropout: 0.2 })).history.featureCache?.reason).toBe('dropout before the new head draws new masks every epoch');
    const dir = mkdtempSync(join(tmpdir(), 'torchlite-cache-'));
    expect((await tune({ callbacks: [checkpoint({ dir })] })).history.featureCache?.reason).toBe('a checkpoint callback saves the whole model every epoch');
    expect((await tune({ cacheBudgetMB: 0.005 })).history.featureCache?.reason).toBe('the cache would take 8.5 KiB, over the 5.1 KiB budget (cacheBudgetMB)');
    const misuse = await tune({ cacheFeatures: true }, early).catch((e: unknown) => e);
    expect(misuse).toBeInstanceOf(TypeError);
    expect(misuse).toMatchObject({
      code: 'TORCHLITE_BAD_ARGUMENT',
      message: "cacheFeatures: true cannot apply: the body has dropout in several places ('relu.1', 'dropout'), so the head's inputs change every epoch; pass cacheFeatures: 'auto' (or false) to train the whole model instead",
    });
  });
});
