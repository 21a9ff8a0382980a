// Results on the user's own data: preprocessing that travels, mode hygiene, splits that
// augment only training, and errors that say what to change.
import { mkdirSync, mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import sharp from 'sharp';
import { describe, expect, it } from 'vitest';

import { data, fit, inputSpecOf, loadPretrained, loss, optim, randn, tensor, TorchError } from '../src';
import { fixture, root } from './helpers';

const shipped = join(root, 'models', 'fashion-cnn.pt');
const ce = loss.crossEntropy();

async function folder(classes: string[], perClass: number, size = 40): Promise<string> {
  const dir = mkdtempSync(join(tmpdir(), 'torchlite-results-'));
  for (const [c, name] of classes.entries()) {
    mkdirSync(join(dir, name));
    for (let i = 0; i < perClass; i++) {
      const pixels = Buffer.alloc(size * size * 3, (c * 80 + i * 7) % 256);
      for (let p = 0; p < pixels.length; p += 5) pixels[p] = (p * 13 + i) % 256; // texture, so crops differ
      await sharp(pixels, { raw: { width: size, height: size, channels: 3 } }).png().toFile(join(dir, name, `${i}.png`));
    }
  }
  return dir;
}

describe('errors that say what to change', () => {
  it('float labels: say int64, and how to make them', async () => {
    const m = await loadPretrained(fixture('mlp.scripted.pt'));
    m.train();
    const opt = optim.sgd(m, { lr: 0.1 });
    await expect(m.trainStep(randn([4, 12]), tensor([0, 1, 2, 3]), { loss: ce, optimizer: opt })).rejects.toThrow(
      expect.objectContaining({
        code: 'TORCHLITE_BAD_TARGET',
        message: "crossEntropy expects class indices of dtype int64 but received float32 targets of shape [4] for outputs [4, 4]; make them with tensor(BigInt64Array.from(labels, BigInt)) or tensor(labels, undefined, { dtype: 'int64' })",
      }),
    );
    await expect(m.trainStep(randn([4, 12]), tensor([0, 1, 2, 3]), { loss: loss.nll(), optimizer: opt })).rejects.toThrow(/^nll expects class indices of dtype int64 but received float32/);
    // The suggested fix works.
    await expect(m.trainStep(randn([4, 12]), tensor([0, 1, 2, 3], undefined, { dtype: 'int64' }), { loss: ce, optimizer: opt })).resolves.toMatchObject({ stepped: true });
    m.dispose();
  });

  it('float64 input: say the weights are float32, and how to convert', async () => {
    const m = await loadPretrained(shipped);
    const x = tensor(new Float64Array(2 * 28 * 28), [2, 1, 28, 28]);
    const error = await m.forward(x).catch((e: TorchError) => e);
    expect(error).toBeInstanceOf(TorchError);
    expect((error as TorchError).code).toBe('TORCH_DTYPE');
    expect((error as TorchError).message).toMatch(/\. The input is float64 but the model's weights are float32: build the input from a Float32Array, or convert it with `input\.to\('float32'\)`$/);
    await expect(m.forward(x.to('float32'))).resolves.toBeDefined();
    m.dispose();
  });

  it('a missing batch dimension: say so, with the shape to use', async () => {
    const m = await loadPretrained(shipped);
    const error = await m.predict(randn([1, 28, 28])).catch((e: TorchError) => e);
    expect((error as TorchError).code).toBe('TORCH_SHAPE');
    expect((error as TorchError).message).toMatch(/\. The input has shape \[1, 28, 28\], without a batch dimension: the model takes \[N, C, H, W\]; for one sample use shape \[1, 1, 28, 28\]$/);
    m.dispose();
  });

  it('wrong channels: TORCH_SHAPE, with the channel count to load', async () => {
    const m = await loadPretrained(shipped);
    const error = await m.forward(randn([2, 3, 28, 28])).catch((e: TorchError) => e);
    expect((error as TorchError).code).toBe('TORCH_SHAPE');
    expect((error as TorchError).message).toMatch(/\. The model's first convolution takes 1-channel input but the input has 3 channels \(shape \[2, 3, 28, 28\]\); load images with `channels: 1`$/);
    m.dispose();
  });
});

describe('mode hygiene', () => {
  it('fit leaves the model in eval mode; a step in eval mode warns once', async () => {
    const m = await loadPretrained(fixture('mlp.scripted.pt'));
    const train = data.loader(data.tensorDataset(randn([8, 12]), tensor(BigInt64Array.from([0n, 1n, 2n, 3n, 0n, 1n, 2n, 3n]))), { batchSize: 4 });
    await fit(m, { train, epochs: 1, optimizer: optim.sgd(m, { lr: 0.01 }) });
    expect(m.training).toBe(false);
    const warnings: Error[] = [];
    const listen = (w: Error) => warnings.push(w);
    process.on('warning', listen);
    const opt = optim.sgd(m, { lr: 0.01 });
    for (let i = 0; i < 3; i++) await m.trainStep(randn([4, 12]), tensor(BigInt64Array.from([0n, 1n, 2n, 3n])), { loss: ce, optimizer: opt });
    await new Promise((resolve) => setImmediate(resolve));
    process.off('warning', listen);
    const ours = warnings.filter((w) => (w as Error & { code?: string }).code === 'TORCHLITE_EVAL_MODE_STEP');
    expect(ours).toHaveLength(1);
    expect(ours[0].message).toMatch(/^trainStep\(\) on a model in eval mode: .* Call model\.train\(\) first/);
    m.dispose();
  });
});

describe('preprocessing that travels with the model', () => {
  it('split augments the training part only', async () => {
    const dir = await folder(['a', 'b'], 5);
    const all = await data.imageFolder(dir, { size: 24, augment: true });
    const plain = await data.imageFolder(dir, { size: 24 });
    const { train, val } = data.split(all, { val: 0.4, seed: 0 });
    for (let i = 0; i < val.length; i++) {
      const [e0, e1] = [(await val.get(i, 0)).input, (await val.get(i, 1)).input];
      expect(e1).toEqual(e0);
      const index = Array.from({ length: plain.length }, (_, j) => j).find((j) => plain.describe(j) === val.describe(i))!;
      expect(e0).toEqual((await plain.get(index, 0)).input);
    }
    // The training part still augments: some sample differs between epochs.
    const changes = await Promise.all(Array.from({ length: train.length }, async (_, i) => String((await train.get(i, 0)).input) !== String((await train.get(i, 1)).input)));
    expect(changes.some(Boolean)).toBe(true);
  });

  it('fit records the classes and input spec, save writes them, and imageFolder({ like }) reuses them', async () => {
    const dir = await folder(['cat', 'dog', 'owl'], 4);
    const m = await loadPretrained(fixture('resnet_small.scripted.pt'));
    expect(inputSpecOf(m)).toBeUndefined();
    await expect(data.imageFolder(dir, { like: m })).rejects.toThrow(expect.objectContaining({ code: 'TORCHLITE_NO_INPUT_SPEC' }));
    m.resetClassifier(3);
    const ds = await data.imageFolder(dir, { size: 32, mean: [0.5, 0.5, 0.5], std: [0.25, 0.25, 0.25] });
    await fit(m, { train: data.loader(ds, { batchSize: 6 }), epochs: 1, optimizer: optim.sgd(m, { lr: 0.01 }) });
    expect(m.metadata).toEqual({ input: { shape: [3, 32, 32], mean: [0.5, 0.5, 0.5], std: [0.25, 0.25, 0.25], resize: 'center-crop' }, classes: ['cat', 'dog', 'owl'] });
    const file = join(dir, 'model.pt');
    await m.save(file);
    const loaded = await loadPretrained(file);
    expect(loaded.training).toBe(false);
    const again = await data.imageFolder(dir, { like: loaded });
    expect(again.inputShape).toEqual([3, 32, 32]);
    expect((await again.get(0, 0)).input).toEqual((await ds.get(0, 0)).input);
    expect((await data.imageFolder(dir, { like: loaded, size: 16 })).inputShape).toEqual([3, 16, 16]); // explicit options win
    const scored = data.relabel(await data.imageFolder(dir, { like: loaded, classes: ['owl', 'cat'] }), ['cat', 'dog', 'owl']);
    expect(Array.from({ length: scored.length }, (_, i) => scored.target(i))).toEqual([2, 2, 2, 2, 0, 0, 0, 0]);
    m.dispose();
    loaded.dispose();
  });
});
