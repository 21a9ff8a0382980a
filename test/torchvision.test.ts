import { join } from 'node:path';

import { beforeAll, describe, expect, it } from 'vitest';

import { loadPretrained, type Tensor, tensor } from '../src';
import { probeGradients } from '../src/testing';
import { exportTorchvision, hasTorchvision, readF32, relativeDiff } from './helpers';

const NAMES = ['resnet18', 'mobilenet_v3_small'];
const HEADS: Record<string, string> = { resnet18: 'fc', mobilenet_v3_small: 'classifier.3', efficientnet_b0: 'classifier.1', densenet121: 'classifier' };

describe.skipIf(!hasTorchvision)('torchvision models exported by Python', () => {
  let exported: ReturnType<typeof exportTorchvision>;
  beforeAll(() => {
    exported = exportTorchvision(Object.keys(HEADS));
  });

  describe.each(NAMES)('%s', (name) => {
    it.each(['scripted', 'traced'])('%s: forward matches Python within 1e-4 relative', async (kind) => {
      await using model = await loadPretrained(join(exported.dir, `${name}.${kind}.pt`));
      expect(model.isTraced).toBe(kind === 'traced');
      const { input, output } = exported.shapes[name];
      const out = await model.forward(tensor(readF32(join(exported.dir, `${name}.input.f32`)), input));
      expect(out.shape).toEqual(output);
      expect(relativeDiff(out.toTypedArray() as Float32Array, readF32(join(exported.dir, `${name}.output.f32`)))).toBeLessThanOrEqual(1e-4);
    });
  });

  describe.each(Object.keys(HEADS))('%s', (name) => {
    it.each(['scripted', 'traced'])('%s: resetClassifier replaces the head and it trains', async (kind) => {
      await using model = await loadPretrained(join(exported.dir, `${name}.${kind}.pt`));
      expect(model.resetClassifier(7, { dropout: 0.1 })).toBe(HEADS[name]);
      const input = tensor(readF32(join(exported.dir, `${name}.input.f32`)), exported.shapes[name].input);
      expect((await model.forward<Tensor>(input)).shape).toEqual([2, 7]);
      model.freeze();
      model.unfreeze(HEADS[name]);
      const flowed = await probeGradients(model, input);
      expect(Object.keys(flowed).filter((k) => flowed[k])).toEqual([`${HEADS[name]}.1.weight`, `${HEADS[name]}.1.bias`]);
    });
  });
});
