// Every zoo architecture against Python eager, from safetensors and from torch.save files:
// random weights (BatchNorm statistics too), eval mode, within 1e-5 relative.
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { loadPretrained, tensor, zooNames } from '../../src';
import { hasTorchvision, PYTHON, readF32, relativeDiff, root } from '../helpers';

const ZOO = zooNames();
const dir = mkdtempSync(join(tmpdir(), 'torchlite-zoo-all-'));
let shapes: Record<string, number[]> = {};

beforeAll(() => {
  const r = spawnSync(PYTHON, [join(root, 'scripts', 'fixtures', 'zoo_parity.py'), dir, '64', ...ZOO], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`zoo_parity.py failed: ${r.stderr}`);
  shapes = JSON.parse(r.stdout);
}, 900_000);
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe.skipIf(!hasTorchvision)('every zoo architecture', () => {
  it('ships the architectures the issue names', () => {
    expect(ZOO).toEqual(['convnext_tiny', 'densenet121', 'efficientnet_b0', 'efficientnet_b1', 'efficientnet_b2', 'efficientnet_b3', 'mobilenet_v2', 'mobilenet_v3_large', 'mobilenet_v3_small', 'regnet_y_400mf', 'resnet101', 'resnet18', 'resnet34', 'resnet50', 'resnext50_32x4d', 'vit_b_16', 'wide_resnet50_2']);
  });
  for (const name of ZOO)
    it.for(['safetensors', 'pth'])(`${name} from .%s matches Python eager within 1e-5`, async (format) => {
      await using model = await loadPretrained(`torchvision:${name}`, { weights: join(dir, `${name}.${format}`) });
      const out = await model.forward(tensor(readF32(join(dir, `${name}.input.f32`)), shapes[name]));
      expect(relativeDiff((out as ReturnType<typeof tensor>).toTypedArray() as Float32Array, readF32(join(dir, `${name}.output.f32`)))).toBeLessThan(1e-5);
    });
});
