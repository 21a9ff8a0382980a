import { spawnSync } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import sharp from 'sharp';
import { describe, expect, it } from 'vitest';
import { CocoEvaluator, data, fineTune, fit, type FitEvent, loadPretrained, loss, optim, type Tensor, tensorList } from '../src';
import { hasTorch, PYTHON, pythonScript, root } from './helpers';

// A detector small enough for the fast suite, with torchvision's interface: forward(images,
// targets=None) returns (losses, detections), the losses only in train mode. It predicts one
// box an image from pooled features.
const MAKE = `import sys, torch
from typing import Dict, List, Optional, Tuple
import torch.nn.functional as F
class TinyDetector(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.features = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.box = torch.nn.Linear(8, 4)
        self.cls = torch.nn.Linear(8, 3)
    def forward(self, images: List[torch.Tensor], targets: Optional[List[Dict[str, torch.Tensor]]] = None) -> Tuple[Dict[str, torch.Tensor], List[Dict[str, torch.Tensor]]]:
        box_loss = torch.zeros(())
        cls_loss = torch.zeros(())
        detections: List[Dict[str, torch.Tensor]] = []
        for i, image in enumerate(images):
            h, w = float(image.shape[-2]), float(image.shape[-1])
            f = F.relu(self.features(image.unsqueeze(0))).mean(dim=(2, 3))[0]
            r = torch.sigmoid(self.box(f))
            box = torch.stack([r[0] * w * 0.5, r[1] * h * 0.5, (0.5 + r[2] * 0.5) * w, (0.5 + r[3] * 0.5) * h])
            logits = self.cls(f)
            if targets is not None:
                t = targets[i]
                if t["boxes"].shape[0] > 0:
                    box_loss = box_loss + F.smooth_l1_loss(box, t["boxes"][0]) / len(images)
                    cls_loss = cls_loss + F.cross_entropy(logits.unsqueeze(0), t["labels"][:1]) / len(images)
            score, label = torch.softmax(logits, 0)[1:].max(0)
            detections.append({"boxes": box.unsqueeze(0), "labels": (label + 1).unsqueeze(0), "scores": score.unsqueeze(0)})
        losses: Dict[str, torch.Tensor] = {}
        if self.training:
            losses = {"loss_box": box_loss, "loss_cls": cls_loss}
        return losses, detections
torch.jit.script(TinyDetector()).save(sys.argv[1])
`;

/** Six 48×40 pictures, each with one white box (class 'box') or grey one (class 'slab') at its own place. */
async function boxes(dir: string): Promise<string> {
  const images = [];
  const annotations = [];
  for (let i = 0; i < 6; i++) {
    const [x, y, w, h] = [4 + 5 * i, 3 + 3 * i, 14, 12];
    const pixels = Buffer.alloc(48 * 40 * 3, 20);
    const value = i % 2 === 0 ? 255 : 128;
    for (let yy = y; yy < y + h; yy++) pixels.fill(value, (yy * 48 + x) * 3, (yy * 48 + x + w) * 3);
    await sharp(pixels, { raw: { width: 48, height: 40, channels: 3 } }).png().toFile(join(dir, `${i}.png`));
    images.push({ id: i, file_name: `${i}.png`, width: 48, height: 40 });
    annotations.push({ id: 100 + i, image_id: i, category_id: i % 2 === 0 ? 1 : 2, bbox: [x, y, w, h], area: w * h, iscrowd: 0 });
  }
  const file = join(dir, 'train.json');
  writeFileSync(file, JSON.stringify({ images, annotations, categories: [{ id: 1, name: 'box' }, { id: 2, name: 'slab' }] }));
  return file;
}

describe.runIf(hasTorch)('fine-tuning a detector on COCO-format data', () => {
  it('fits with the losses it computes, reports each, and scores COCO mAP on validation', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'torchlite-detect-'));
    pythonScript(MAKE, [join(dir, 'tiny.pt')]);
    const file = await boxes(dir);
    const train = data.loader(await data.coco(file, { augment: true }), { batchSize: 2, shuffle: true });
    const val = data.loader(await data.coco(file), { batchSize: 3 });
    await using model = await loadPretrained(join(dir, 'tiny.pt'));
    const optimizer = optim.adamw(model, { lr: 0.01 });
    const events: FitEvent[] = [];
    for await (const event of fit(model, { train, val, epochs: 3, optimizer, loss: loss.fromModel() })) events.push(event);
    const batchEnds = events.filter((e): e is Extract<FitEvent, { type: 'batchEnd' }> => e.type === 'batchEnd');
    expect(batchEnds).toHaveLength(9);
    for (const e of batchEnds) {
      expect(Object.keys(e.losses!).sort()).toEqual(['loss_box', 'loss_cls']);
      expect(e.loss).toBeCloseTo(e.losses!.loss_box + e.losses!.loss_cls, 5);
    }
    const history = events.flatMap((e) => (e.type === 'epochEnd' ? [e.record] : []));
    expect(history).toHaveLength(3);
    for (const record of history) {
      expect(record.trainLoss).toBeCloseTo(record.trainLosses!.loss_box + record.trainLosses!.loss_cls, 5);
      expect(Object.keys(record.val!).sort()).toEqual(['map', 'map50', 'map75', 'mapLarge', 'mapMedium', 'mapSmall', 'mar100']);
    }
    expect(history[2].trainLoss).toBeLessThan(history[0].trainLoss);
    expect(model.metadata).toMatchObject({ classes: ['__background__', 'box', 'slab'] });

    // The pass feeds the evaluator what the model's forward gives.
    const metrics = await model.evaluate(val);
    const evaluator = new CocoEvaluator();
    for await (const batch of val) {
      const [, detections] = (await model.forward(...batch.input)) as [unknown, Record<string, Tensor>[]];
      detections.forEach((d, i) => {
        const t = batch.target[i];
        const read = (x: Tensor) => Array.from(x.toTypedArray() as ArrayLike<number | bigint>, Number);
        evaluator.add({ boxes: read(t.boxes), labels: read(t.labels), iscrowd: read(t.iscrowd), area: read(t.area) }, { boxes: read(d.boxes), labels: read(d.labels), scores: read(d.scores) });
      });
    }
    expect(metrics.map).toBe(evaluator.summary().map);
    expect(metrics.map).toBe(history[2].val!.map);

    // Saved, it loads in Python and gives the same boxes.
    await model.save(join(dir, 'tuned.pt'));
    const [first] = (await (async () => {
      for await (const batch of val) return batch.input[0].tensors;
    })())!;
    const [, [mine]] = (await model.forward(tensorList([first]))) as [unknown, Record<string, Tensor>[]];
    writeFileSync(join(dir, 'image.bin'), Buffer.from((first.toTypedArray() as Float32Array).buffer));
    const python = spawnSync(
      PYTHON,
      ['-c', `import sys, torch, json, numpy\nm = torch.jit.load(sys.argv[1]).eval()\nx = torch.from_numpy(numpy.fromfile(sys.argv[2], dtype=numpy.float32)).view(3, 40, 48)\n_, d = m([x])\nprint(json.dumps(d[0]["boxes"].flatten().tolist()))`, join(dir, 'tuned.pt'), join(dir, 'image.bin')],
      { encoding: 'utf8' },
    );
    expect(python.status, python.stderr).toBe(0);
    const expected = JSON.parse(python.stdout) as number[];
    Array.from(mine.boxes.toTypedArray() as Float32Array).forEach((v, i) => expect(v).toBeCloseTo(expected[i], 4));
  }, 60_000);

  it("fineTune trains a new head for the data's classes first, then the whole detector", async () => {
    const dir = mkdtempSync(join(tmpdir(), 'torchlite-detect-'));
    pythonScript(MAKE, [join(dir, 'tiny.pt')]);
    const file = await boxes(dir);
    const ds = await data.coco(file);
    await using model = await loadPretrained(join(dir, 'tiny.pt'));
    const history = await fineTune(model, { train: data.loader(ds, { batchSize: 2 }), val: data.loader(ds, { batchSize: 3 }), numClasses: ds.classes!.length, loss: loss.fromModel(), freezeEpochs: 1, epochs: 1, lr: 1e-3 });
    expect(history.map((r) => r.stage)).toEqual([0, 1]);
    expect(history.featureCache).toMatchObject({ used: false });
    for (const record of history) {
      expect(Object.keys(record.trainLosses!).sort()).toEqual(['loss_box', 'loss_cls']);
      expect(record.val!.map).toBeGreaterThanOrEqual(0);
    }
    expect(model.parameters('cls.weight')[0].shape).toEqual([3, 8]);
  });

  it('torchlite finetune --task detect and predict print boxes with class names', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'torchlite-detect-cli-'));
    pythonScript(MAKE, [join(dir, 'tiny.pt')]);
    const file = await boxes(dir);
    const cli = (...args: string[]) => spawnSync('node', [join(root, 'lib', 'cli', 'main.js'), ...args], { encoding: 'utf8', cwd: dir });
    const out = join(dir, 'tuned.pt');
    const run = cli('finetune', '--model', join(dir, 'tiny.pt'), '--task', 'detect', '--data', file, '--val', file, '--epochs', '1', '--freeze-epochs', '1', '--batch-size', '2', '--out', out, '--json');
    expect(run.status, run.stderr).toBe(0);
    const result = JSON.parse(run.stdout.trim().split('\n').pop()!) as { classes: string[]; final: { map: number } };
    expect(result.classes).toEqual(['__background__', 'box', 'slab']);
    expect(result.final.map).toBeGreaterThanOrEqual(0);
    const predicted = cli('predict', out, join(dir, '0.png'), join(dir, '1.png'), '--threshold', '0', '--json');
    expect(predicted.status, predicted.stderr).toBe(0);
    const badThreshold = cli('predict', out, join(dir, '0.png'), '--threshold', '2');
    expect(badThreshold.status).not.toBe(0);
    expect(badThreshold.stderr).toContain("Expected a score from 0 to 1 for `--threshold` but received '2'");
    const answers = JSON.parse(predicted.stdout) as { file: string; objects: { label: string; score: number; box: number[] }[] }[];
    expect(answers.map((a) => a.file)).toEqual([join(dir, '0.png'), join(dir, '1.png')]);
    for (const answer of answers) {
      expect(answer.objects).toHaveLength(1);
      expect(['box', 'slab']).toContain(answer.objects[0].label);
      expect(answer.objects[0].box).toHaveLength(4);
    }
  }, 60_000);

  it('torchlite demo detect pretrains, fine-tunes and trains from scratch, and reports COCO mAP', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'torchlite-demo-detect-'));
    const run = spawnSync('node', [join(root, 'lib', 'cli', 'main.js'), 'demo', 'detect', '--quick', '--json', '--out', join(dir, 'det.pt')], { encoding: 'utf8', cwd: dir });
    expect(run.status, run.stderr).toBe(0);
    const result = JSON.parse(run.stdout.trim().split('\n').pop()!) as { budget: number; outcomes: { name: string; map: number; map50: number }[] };
    expect(result.budget).toBe(60);
    expect(result.outcomes.map((o) => o.name)).toEqual(['fine-tune the pretrained detector', 'same detector from scratch']);
    for (const o of result.outcomes) for (const v of [o.map, o.map50]) expect(v >= 0 && v <= 1).toBe(true);
    // The demo's detector takes its 96×96 scenes.
    await sharp(Buffer.alloc(96 * 96 * 3, 90), { raw: { width: 96, height: 96, channels: 3 } }).png().toFile(join(dir, 'scene.png'));
    const predicted = spawnSync('node', [join(root, 'lib', 'cli', 'main.js'), 'predict', join(dir, 'det.pt'), join(dir, 'scene.png'), '--threshold', '0', '--json'], { encoding: 'utf8', cwd: dir });
    expect(predicted.status, predicted.stderr).toBe(0);
    const [answer] = JSON.parse(predicted.stdout) as { objects: { label: string }[] }[];
    expect(answer.objects.length).toBeGreaterThan(0);
    expect(['Sandal', 'Shirt', 'Sneaker', 'Bag', 'Ankle boot']).toContain(answer.objects[0].label);
  }, 120_000);

  it("refuses mAP with a loss, and a loss the model computes in evaluate", async () => {
    const dir = mkdtempSync(join(tmpdir(), 'torchlite-detect-'));
    pythonScript(MAKE, [join(dir, 'tiny.pt')]);
    const val = data.loader(await data.coco(await boxes(dir)), { batchSize: 3 });
    await using model = await loadPretrained(join(dir, 'tiny.pt'));
    await expect(model.evaluate(val, { loss: loss.crossEntropy() })).rejects.toThrow("'map' and 'maskMap' score a detector's boxes and masks: ask for them without a loss or other metrics");
    await expect(model.evaluate(val, { loss: loss.fromModel() })).rejects.toThrow('evaluate() computes a loss from the outputs');
    await expect(model.evaluate(val, { metrics: ['maskMap'] })).rejects.toMatchObject({ code: 'TORCHLITE_BAD_ARGUMENT', message: "'maskMap' needs masks in the targets (read with masks: true) and a detector that predicts them (Mask R-CNN)" });
  });
});
