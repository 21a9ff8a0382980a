// The defects a newcomer hit in the first hour (issue 33), each from the newcomer's own code.
import { mkdirSync, mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import sharp from 'sharp';
import { describe, expect, it } from 'vitest';

import { checkpoint, data, earlyStopping, type EpochRecord, fineTune, fit, type FitContext, loadPretrained, loss, optim, sched, tensor } from '../src';
import { classesLike } from '../src/preprocess';
import { fixture } from './helpers';

/** A folder of 8×8 grey PNGs, one subfolder per class, two images each. */
async function folder(classes: string[]): Promise<string> {
  const dir = mkdtempSync(join(tmpdir(), 'torchlite-newcomer-'));
  for (const [k, name] of classes.entries()) {
    mkdirSync(join(dir, name));
    for (const n of [0, 1]) {
      const pixels = Buffer.from(Array.from({ length: 64 }, (_, i) => (i * 7 + k * 40 + n * 9) % 256));
      await sharp(pixels, { raw: { width: 8, height: 8, channels: 1 } }).png().toFile(join(dir, name, `${n}.png`));
    }
  }
  return dir;
}

const digits = { metadata: { input: { shape: [1, 8, 8], mean: [0.5], std: [0.25], resize: 'center-crop' }, classes: ['0', '1', '2', '3', '4', '5', '6', '7', '8', '9'] } };

describe('data read `like` a model', () => {
  it("maps an image folder's classes to the model's by name, takes new ones as new, and refuses a mix", async () => {
    const some = await data.imageFolder(await folder(['3', '7']), { like: digits });
    expect(some.classes).toEqual(digits.metadata.classes);
    expect(Array.from({ length: some.length }, (_, i) => some.target(i))).toEqual([3, 3, 7, 7]); // not 0 and 1
    const fresh = await data.imageFolder(await folder(['cat', 'dog']), { like: digits });
    expect(fresh.classes).toEqual(['cat', 'dog']);
    await expect(data.imageFolder(await folder(['3', 'hat']), { like: digits })).rejects.toThrow(
      expect.objectContaining({ code: 'TORCHLITE_BAD_DATA', message: "'hat' is not among the model's classes ('0', '1', '2', '3', '4', '5', '6', '7', '8', '9'), while the data's other class folders are; fix the names, or pass `classes` to say which classes the data has (to fine-tune for new ones)" }),
    );
  });

  it('leaves labels that are all new to the data (a text model fine-tuned for new classes)', () => {
    const model = { metadata: { classes: ['art', 'computers'] } };
    expect(classesLike(model, ['billing', 'refund'], 'labels')).toBeUndefined(); // the labels found are the classes
    expect(classesLike(model, ['computers'], 'labels')).toEqual(['art', 'computers']);
    expect(() => classesLike(model, ['art', 'billing'], 'labels')).toThrow(expect.objectContaining({ code: 'TORCHLITE_BAD_DATA' }));
    expect(classesLike({ metadata: {} }, ['x'], 'labels')).toBeUndefined();
  });

  it('data.loadImage prepares files and buffers exactly as imageFolder prepares its images', async () => {
    const dir = await folder(['3', '7']);
    const ds = await data.imageFolder(dir, { like: digits });
    const file = join(dir, '7', '1.png');
    const batch = await data.loadImage([join(dir, '3', '0.png'), await sharp(file).toBuffer()], { like: digits });
    expect(batch.shape).toEqual([2, 1, 8, 8]);
    const values = batch.toTypedArray() as Float32Array;
    expect(Array.from(values.subarray(0, 64))).toEqual(Array.from((await ds.get(0, 0)).input as Float32Array));
    expect(Array.from(values.subarray(64))).toEqual(Array.from((await ds.get(3, 0)).input as Float32Array));
    await expect(data.loadImage(Buffer.from('not an image'), { like: digits })).rejects.toThrow(expect.objectContaining({ code: 'TORCHLITE_BAD_DATA' }));
    await expect(data.loadImage([] as string[])).rejects.toThrow(TypeError);
  });

  it("light augmentation crops without flipping; 'none' resizes only", async () => {
    const dir = await folder(['a']);
    const none = await data.imageFolder(dir, { size: 8, channels: 1, augment: 'none' });
    expect(none.withoutAugmentation).toBeUndefined();
    const light = await data.imageFolder(dir, { size: 8, channels: 1, augment: 'light' });
    expect(light.withoutAugmentation).toBeDefined();
    await expect(data.imageFolder(dir, { augment: 'heavy' as never })).rejects.toThrow(new TypeError("Expected 'none', 'light', 'default' or a boolean for `options.augment` but received 'heavy'"));
  });

  it("model.evaluate refuses data whose classes are not the model's", async () => {
    await using mlp = await loadPretrained(fixture('mlp.scripted.pt'));
    mlp.metadata = { classes: ['a', 'b', 'c', 'd'] };
    const rows = data.tensorDataset(new Float32Array(8 * 12), Int32Array.from([0, 1, 0, 1, 0, 1, 0, 1]), { inputShape: [12], classes: ['c', 'd'] });
    await expect(mlp.evaluate(data.loader(rows, { batchSize: 4 }))).rejects.toThrow(expect.objectContaining({ code: 'TORCHLITE_BAD_DATA', message: expect.stringMatching(/^the data's classes \('c', 'd'\) are not the model's \('a', 'b', 'c', 'd'\)/) }));
  });
});

describe('earlyStopping', () => {
  const record = (epoch: number, loss: number): EpochRecord => ({ epoch, trainLoss: loss, val: { loss }, lr: [0.01], seconds: 0, stage: 0 });
  const context = (model: FitContext['model'], scheduler: FitContext['scheduler'], epochs: number) => {
    const state = { epoch: 0, step: 0, stopped: null as string | null };
    const ctx = {
      model,
      scheduler,
      epochs,
      history: [],
      callbackState: {},
      get epoch() {
        return state.epoch;
      },
      get step() {
        return state.step;
      },
      stop: (reason: string) => void (state.stopped ??= reason),
      get stopping() {
        return state.stopped !== null;
      },
    } as unknown as FitContext;
    return { ctx, state };
  };

  it("never stops inside one-cycle's warm-up, and not before minEpochs", async () => {
    await using mlp = await loadPretrained(fixture('mlp.scripted.pt'));
    const opt = optim.adamw(mlp, { lr: 0.01 });
    const cycle = sched.oneCycle(opt, { maxLr: 0.01, totalSteps: 200 }); // warm-up: 60 steps
    expect(cycle.warmupSteps).toBe(60);
    const cb = earlyStopping({ patience: 1 });
    const { ctx, state } = context(mlp, cycle, 20);
    // The newcomer's run: val loss dips while the lr climbs (10 steps an epoch), then recovers.
    const losses = [1.0, 1.2, 1.4, 1.5, 1.3, 1.1, 0.9, 0.8];
    for (const [epoch, loss] of losses.entries()) {
      state.epoch = epoch + 1;
      state.step = (epoch + 1) * 10;
      await cb.onEpochEnd!(ctx, record(epoch, loss));
    }
    expect(state.stopped).toBeNull(); // the dip was all before step 60
    for (const [k, loss] of [2.0, 2.1].entries()) {
      state.epoch = 9 + k;
      state.step = (9 + k) * 10;
      await cb.onEpochEnd!(ctx, record(8 + k, loss));
    }
    expect(state.stopped).toBe('early stopping: val.loss did not improve for 1 epochs after epoch 8');
    const late = earlyStopping({ patience: 0, minEpochs: 3 });
    const second = context(mlp, undefined, 20);
    for (const epoch of [0, 1]) {
      second.state.epoch = epoch + 1;
      await late.onEpochEnd!(second.ctx, record(epoch, epoch === 0 ? 1 : 2));
    }
    expect(second.state.stopped).toBeNull();
    expect(() => earlyStopping({ minEpochs: -1 })).toThrow(new RangeError('Expected a non-negative integer for `options.minEpochs` but received -1'));
  });

  it('restoreBest puts back the best epoch’s weights when the run ends', async () => {
    await using mlp = await loadPretrained(fixture('mlp.scripted.pt'));
    const weights = async () => Array.from((await mlp.stateDict())['net.0.weight'].toTypedArray() as Float32Array);
    const cb = earlyStopping({ patience: 5, restoreBest: true });
    const { ctx, state } = context(mlp, undefined, 2);
    state.epoch = 1;
    await cb.onEpochEnd!(ctx, record(0, 0.5));
    const best = await weights();
    mlp.train();
    const opt = optim.sgd(mlp, { lr: 0.5 });
    await mlp.trainStep(tensor(new Float32Array(4 * 12).fill(1), [4, 12]), tensor(BigInt64Array.from([0n, 1n, 2n, 3n])), { loss: loss.crossEntropy(), optimizer: opt });
    expect(await weights()).not.toEqual(best);
    state.epoch = 2; // the last epoch, and a worse one
    await cb.onEpochEnd!(ctx, record(1, 0.9));
    expect(await weights()).toEqual(best);
  });
});

describe('fineTune epochs', () => {
  it('numbers epochs as its history does in what callbacks see and print, across stages', async () => {
    await using model = await loadPretrained(fixture('resnet_small.scripted.pt'));
    const rows = data.tensorDataset(new Float32Array(32 * 3 * 32 * 32), Int32Array.from({ length: 32 }, (_, i) => i % 3), { inputShape: [3, 32, 32] });
    const seen: [number, number][] = [];
    const history = await fineTune(model, {
      train: data.loader(rows, { batchSize: 16 }),
      numClasses: 3,
      freezeEpochs: 2,
      epochs: 3,
      unfreeze: ['layer2', 'all'],
      callbacks: [{ name: 'spy', onEpochEnd: (_ctx, record) => void seen.push([record.epoch, record.stage]) }],
    });
    expect(history.map((r) => [r.epoch, r.stage])).toEqual([[0, 0], [1, 0], [2, 1], [3, 1], [4, 2]]);
    expect(seen).toEqual(history.map((r) => [r.epoch, r.stage]));
  });
});

describe('the best checkpoint', () => {
  it('loads with loadPretrained, in eval mode, though it was written mid-training', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'torchlite-best-'));
    await using model = await loadPretrained(fixture('mlp.scripted.pt'));
    const rows = data.tensorDataset(new Float32Array(16 * 12).map((_, i) => Math.sin(i)), Int32Array.from({ length: 16 }, (_, i) => i % 4), { inputShape: [12] });
    await fit(model, { train: data.loader(rows, { batchSize: 8 }), val: data.loader(rows, { batchSize: 8 }), epochs: 2, optimizer: optim.sgd(model, { lr: 0.1 }), callbacks: [checkpoint({ dir })] });
    await using best = await loadPretrained(join(dir, 'best.ckpt'));
    expect(best.training).toBe(false);
    expect(best.parameters().map((p) => p.name)).toEqual(model.parameters().map((p) => p.name));
  });
});
