import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { loadPretrained, loss, manualSeed, ops, optim, tensor, tensorList } from '../../src';
import { hasTorchvision, python } from '../helpers';

// torchvision's Faster R-CNN (mobilenet_v3 320 FPN, random weights, 3 classes), scripted by
// Python, fine-tuned in torchlite with the losses it computes itself: images of different
// sizes as a list, per-image targets as a list of dicts, torchvision::nms and roi_align from
// torchvision's own ops library.
describe('detection: a torchvision Faster R-CNN computes its own losses', () => {
  it.runIf(hasTorchvision)('its first step gives Python\'s four losses, and training lowers them', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'torchlite-detection-'));
    const image = (c: number, h: number, w: number, k: number) => Float32Array.from({ length: c * h * w }, (_, i) => ((i * k) % 97) / 97);
    const sizes: [number, number][] = [
      [200, 240],
      [180, 220],
    ];
    writeFileSync(
      join(dir, 'make.py'),
      `import sys, json, torch, torchvision
torch.manual_seed(0)
m = torchvision.models.detection.fasterrcnn_mobilenet_v3_large_320_fpn(weights=None, weights_backbone=None, num_classes=3)
s = torch.jit.script(m)
s.save(sys.argv[1])
def image(c, h, w, k):
    return (torch.arange(c * h * w, dtype=torch.float64) * k % 97 / 97).float().view(c, h, w)
images = [image(3, 200, 240, 7), image(3, 180, 220, 11)]
targets = [{"boxes": torch.tensor([[10., 20., 100., 120.], [50., 60., 150., 170.]]), "labels": torch.tensor([1, 2])},
           {"boxes": torch.tensor([[30., 30., 90., 100.]]), "labels": torch.tensor([1])}]
s.train()
torch.manual_seed(1)
losses, _ = s(images, targets)
print(json.dumps({k: v.item() for k, v in losses.items()}))`,
    );
    const expected = JSON.parse(python('import runpy, sys; sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name="__main__")', [join(dir, 'make.py'), join(dir, 'frcnn.pt')]).trim().split('\n').pop()!) as Record<string, number>;
    await using model = await loadPretrained(join(dir, 'frcnn.pt'), { channelsLast: false }); // Python's layout, for its rounding
    expect(ops.loaded().some((file) => file.includes('torchvision'))).toBe(true);
    model.train();
    const images = tensorList(sizes.map(([h, w], i) => tensor(image(3, h, w, i === 0 ? 7 : 11), [3, h, w])));
    const targets = [
      { boxes: tensor([10, 20, 100, 120, 50, 60, 150, 170], [2, 4]), labels: tensor(BigInt64Array.of(1n, 2n)) },
      { boxes: tensor([30, 30, 90, 100], [1, 4]), labels: tensor(BigInt64Array.of(1n)) },
    ];
    const optimizer = optim.sgd(model, { lr: 0.005, momentum: 0.9 });
    manualSeed(1); // the samplers draw from the generator, as in Python
    const first = await model.trainStep([images], targets, { loss: loss.fromModel(), optimizer });
    expect(Object.keys(first.losses!).sort()).toEqual(['loss_box_reg', 'loss_classifier', 'loss_objectness', 'loss_rpn_box_reg']);
    for (const [name, value] of Object.entries(expected)) expect(Math.abs(first.losses![name] - value) / Math.abs(value)).toBeLessThan(1e-4);
    const second = await model.trainStep([images], targets, { loss: loss.fromModel(), optimizer });
    const third = await model.trainStep([images], targets, { loss: loss.fromModel(), optimizer });
    expect(third.loss).toBeLessThan(first.loss);
    expect(Number.isFinite(second.loss)).toBe(true);
  }, 300_000);
});
