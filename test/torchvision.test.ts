import { join } from 'node:path';

import { beforeAll, describe, expect, it } from 'vitest';

import { loadPretrained, tensor } from '../src';
import { exportTorchvision, hasTorchvision, readF32, relativeDiff } from './helpers';

const NAMES = ['resnet18', 'mobilenet_v3_small'];

describe.skipIf(!hasTorchvision)('torchvision models exported by Python', () => {
  let exported: ReturnType<typeof exportTorchvision>;
  beforeAll(() => {
    exported = exportTorchvision(NAMES);
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
});
