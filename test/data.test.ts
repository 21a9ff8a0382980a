import { mkdirSync, mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import sharp from 'sharp';
import { describe, expect, it } from 'vitest';

import { data, TorchError, type Dataset } from '../src';
import { fixture } from './helpers';

const images = fixture('fashion-5to9-train-images.idx.gz');
const labels = fixture('fashion-5to9-train-labels.idx.gz');

describe('datasets', () => {
  it('reads gzipped IDX files and normalises pixels', async () => {
    const raw = await data.readIdx(images);
    const ds = await data.idx(images, labels, { mean: 0.5, std: 0.25 });
    expect(ds.length).toBe(500);
    expect(ds.inputShape).toEqual([1, 28, 28]);
    const sample = await ds.get(7, 0);
    expect(sample.input[300]).toBeCloseTo((raw.data[7 * 784 + 300] / 255 - 0.5) / 0.25, 6);
    expect(sample.target).toBe(ds.target(7));
    expect(ds.target(7)).toBeGreaterThanOrEqual(5);
    await expect(data.idx(images, fixture('fashion-5to9-t10k-labels.idx.gz'))).rejects.toMatchObject({ code: 'TORCHLITE_BAD_DATA' });
    await expect(data.idx(images, labels, { classes: ['a', 'b'] })).rejects.toThrow(/label \d out of range|out of range for 2 classes/);
    await expect(data.idx('/nonexistent.gz', labels)).rejects.toMatchObject({ code: 'TORCHLITE_FILE_NOT_FOUND' });
  });

  it('wraps typed arrays with class or float targets', async () => {
    const cls = data.tensorDataset(new Float32Array(12), [0, 1, 2], { inputShape: [2, 2] });
    expect(cls.targetShape).toEqual([]);
    expect((await cls.get(2, 0)).target).toBe(2);
    const reg = data.tensorDataset(new Float32Array(6), new Float32Array([0.5, 1.5, 2.5]));
    expect(await reg.get(1, 0)).toEqual({ input: new Float32Array(2), target: new Float32Array([1.5]) });
    expect(() => data.tensorDataset(new Float32Array(7), [0, 1, 2], { inputShape: [2, 2] })).toThrow(
      new RangeError('Expected inputs of 3 samples × 4 values for `inputs` but received 7 values'),
    );
    expect(() => data.tensorDataset(new Float32Array(3), [0, 5, 1], { classes: ['a', 'b'] })).toThrow(
      expect.objectContaining({ code: 'TORCHLITE_BAD_DATA', message: 'target 5 of sample 1 is out of range for 2 classes' }),
    );
  });

  it('splits and takes class-balanced subsets, renumbering chosen classes', async () => {
    const ds = await data.idx(images, labels);
    const { train, val } = data.split(ds, { val: 0.2, seed: 1 });
    expect([train.length, val.length]).toEqual([400, 100]);
    const small = data.subset(ds, { perClass: 10, classes: [9, 5], seed: 2 });
    expect(small.length).toBe(20);
    const targets = Array.from({ length: 20 }, (_, i) => small.target(i));
    expect(targets.filter((t) => t === 0)).toHaveLength(10); // class 9 became 0
    expect(new Set(targets)).toEqual(new Set([0, 1]));
    expect((await small.get(0, 0)).target).toBe(small.target(0));
    expect(() => data.subset(ds, { classes: [3] })).toThrow(expect.objectContaining({ code: 'TORCHLITE_BAD_DATA', message: 'class 3 has no samples in the dataset' }));
    expect(() => data.split(ds, { val: 1 })).toThrow(RangeError);
  });

  it('a stratified split takes the share of every class, and leaves a lone sample in train', async () => {
    const ds = await data.idx(images, labels);
    const counts = (part: typeof ds) => Array.from({ length: part.length }, (_, i) => part.target(i)).reduce((m, t) => m.set(t, (m.get(t) ?? 0) + 1), new Map<number, number>());
    const picked = data.subset(ds, { perClass: 7, seed: 4 }); // 7 a class: 1.4 of them is 1
    const { train, val } = data.split(picked, { val: 0.2, seed: 1, stratify: true });
    expect([...counts(val).values()]).toEqual(Array(counts(picked).size).fill(1));
    expect([...counts(train).values()]).toEqual(Array(counts(picked).size).fill(6));
    const plain = data.split(picked, { val: 0.2, seed: 1 });
    expect(plain.val.length).toBe(7); // 35 × 0.2, from any class
    const lone = data.subset(ds, { perClass: 1 });
    expect(() => data.split(lone, { val: 0.2, stratify: true })).toThrow(new RangeError(`Expected a split that leaves both parts non-empty for \`options.val\` but received 0.2 of ${lone.length} samples`));
    const floats = data.tensorDataset(new Float32Array(20), Float32Array.from({ length: 10 }, (_, i) => i + 0.5), { inputShape: [2] });
    expect(() => data.split(floats, { val: 0.2, stratify: true })).toThrow(expect.objectContaining({ code: 'TORCHLITE_BAD_ARGUMENT' }));
    expect(() => data.split(picked, { val: 0.2, stratify: 'yes' as never })).toThrow(new TypeError("Expected a boolean for `options.stratify` but received 'yes'"));
  });

  it('folds hold out disjoint shares that together cover the data, of every class with stratify', async () => {
    const ids = Float32Array.from({ length: 50 }, (_, i) => i);
    const ds = data.tensorDataset(ids, Int32Array.from(ids, (i) => i % 5), { inputShape: [1] });
    const heldOut = (options: { val: number; stratify?: boolean; fold?: number }) => {
      const { val } = data.split(ds, { seed: 3, ...options });
      return Promise.all(Array.from({ length: val.length }, async (_, i) => ((await val.get(i, 0)).input as Float32Array)[0]));
    };
    const all = [...ids];
    const stratified = await Promise.all([0, 1, 2, 3, 4].map((fold) => heldOut({ val: 0.2, stratify: true, fold })));
    expect(stratified.flat().sort((a, b) => a - b)).toEqual(all);
    for (const fold of stratified) expect(fold.map((id) => id % 5).sort()).toEqual([0, 0, 1, 1, 2, 2, 3, 3, 4, 4]);
    expect(stratified[0]).toEqual(await heldOut({ val: 0.2, stratify: true })); // fold 0 is the plain split
    const plain = await Promise.all([0, 1, 2, 3].map((fold) => heldOut({ val: 0.25, fold })));
    expect(plain.map((fold) => fold.length)).toEqual([13, 13, 13, 11]);
    expect(plain.flat().sort((a, b) => a - b)).toEqual(all);
    expect(() => data.split(ds, { val: 0.3, fold: 3 })).toThrow(new RangeError('Expected a fold from 0 to 2 (val 0.3 makes 3) for `options.fold` but received 3'));
    expect(() => data.split(ds, { val: 0.2, fold: 1.5 })).toThrow(new RangeError('Expected a non-negative integer for `options.fold` but received 1.5'));
  });
});

describe('loader', () => {
  it('batches, shuffles per (seed, epoch) and drops the last batch on request', async () => {
    const ds = await data.idx(images, labels);
    const loader = data.loader(ds, { batchSize: 64, shuffle: true, seed: 3 });
    expect(loader.length).toBe(8);
    const first: number[][] = [];
    for await (const batch of loader) {
      expect(batch.input.shape.slice(1)).toEqual([1, 28, 28]);
      expect(batch.target.dtype).toBe('int64');
      first.push(batch.indices);
    }
    expect(first.at(-1)).toHaveLength(500 - 7 * 64);
    const again: number[][] = [];
    for await (const batch of data.loader(ds, { batchSize: 64, shuffle: true, seed: 3 })) again.push(batch.indices);
    expect(again).toEqual(first);
    const second: number[][] = [];
    for await (const batch of loader) second.push(batch.indices);
    expect(second).not.toEqual(first); // epoch 1 reshuffles
    expect(data.loader(ds, { batchSize: 64, dropLast: true }).length).toBe(7);
    expect(() => data.loader(ds, { batchSize: 0 })).toThrow(new RangeError('Expected a positive integer for `options.batchSize` but received 0'));
  });

  it('prepares batches ahead, so data time hides behind compute', async () => {
    const delay = (ms: number) => new Promise((r) => setTimeout(r, ms));
    const slow: Dataset = {
      ...data.tensorDataset(new Float32Array(64), Array.from({ length: 64 }, (_, i) => i % 2)),
      get: async (i) => {
        await delay(15); // decoding
        return { input: new Float32Array(1), target: i % 2 };
      },
    };
    const waits: number[] = [];
    let asked = performance.now();
    for await (const _batch of data.loader(slow, { batchSize: 8, prefetch: 2 })) {
      waits.push(performance.now() - asked);
      await delay(40); // the train step
      asked = performance.now();
    }
    expect(waits).toHaveLength(8);
    // After the first batch, data is always ready when the step asks for it.
    for (const wait of waits.slice(1)) expect(wait).toBeLessThan(10);
    expect(waits[0]).toBeGreaterThanOrEqual(10);
  });
});

describe('imageFolder', () => {
  async function folder(): Promise<string> {
    const dir = mkdtempSync(join(tmpdir(), 'torchlite-images-'));
    const raw = await data.readIdx(images);
    const lab = await data.readIdx(labels);
    const counts = new Map<number, number>();
    for (let i = 0; i < raw.shape[0] && [...counts.values()].reduce((a, b) => a + b, 0) < 6; i++) {
      const label = lab.data[i];
      if (label > 6 || (counts.get(label) ?? 0) >= 3) continue;
      counts.set(label, (counts.get(label) ?? 0) + 1);
      mkdirSync(join(dir, `class${label}`), { recursive: true });
      await sharp(Buffer.from(raw.data.subarray(i * 784, (i + 1) * 784)), { raw: { width: 28, height: 28, channels: 1 } })
        .png()
        .toFile(join(dir, `class${label}`, `${i}.png`));
    }
    return dir;
  }

  it('decodes, resizes and normalises with class names from folders', async () => {
    const dir = await folder();
    const ds = await data.imageFolder(dir, { size: 28, channels: 1, mean: [0], std: [1] });
    expect(ds.classes).toEqual(['class5', 'class6']);
    expect(ds.length).toBe(6);
    expect(ds.inputShape).toEqual([1, 28, 28]);
    const sample = await ds.get(0, 0);
    expect(Math.max(...sample.input)).toBeLessThanOrEqual(1);
    const rgb = await data.imageFolder(dir, { size: 16 });
    expect((await rgb.get(0, 0)).input).toHaveLength(3 * 16 * 16);
    const aug = await data.imageFolder(dir, { size: 20, augment: true });
    const a = (await aug.get(1, 0)).input;
    expect((await aug.get(1, 0)).input).toEqual(a); // same epoch, same crop
    expect((await aug.get(1, 1)).input).not.toEqual(a);
  });

  it('skips a bad image with a warning, or fails naming it when strict; refuses empty classes', async () => {
    const dir = await folder();
    writeFileSync(join(dir, 'class5', 'broken.png'), 'not a png');
    const ds = await data.imageFolder(dir, { size: 28, channels: 1 });
    const warnings: string[] = [];
    const onWarning = (w: Error) => warnings.push(w.message);
    process.on('warning', onWarning);
    let seen = 0;
    for await (const batch of data.loader(ds, { batchSize: 4 })) seen += batch.target.shape[0];
    await new Promise((r) => setImmediate(r));
    process.off('warning', onWarning);
    expect(seen).toBe(6);
    expect(warnings.some((w) => w.includes('broken.png'))).toBe(true);
    const strict = data.loader(ds, { batchSize: 4, strict: true });
    await expect((async () => { for await (const _ of strict) void _; })()).rejects.toThrow(/cannot read .*broken\.png/);
    mkdirSync(join(dir, 'class9'));
    await expect(data.imageFolder(dir)).rejects.toEqual(new TorchError('TORCHLITE_BAD_DATA', `class folder ${join(dir, 'class9')} has no images`));
  });
});
