import { spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { crc32, deflateSync } from 'node:zlib';
import sharp from 'sharp';
import { describe, expect, it } from 'vitest';
import { data, fit, loadPretrained, loss, optim, tensor } from '../src';
import { hasTorch, pythonJson, pythonScript, root } from './helpers';

/** An 8-bit palette PNG holding `indices` as they are (sharp would write colours). */
function palettePng(indices: Uint8Array, width: number, height: number): Buffer {
  const chunk = (type: string, body: Buffer) => {
    const head = Buffer.alloc(4);
    head.writeUInt32BE(body.length);
    const typed = Buffer.concat([Buffer.from(type, 'latin1'), body]);
    const crc = Buffer.alloc(4);
    crc.writeUInt32BE(crc32(typed));
    return Buffer.concat([head, typed, crc]);
  };
  const header = Buffer.alloc(13);
  header.writeUInt32BE(width, 0);
  header.writeUInt32BE(height, 4);
  header[8] = 8;
  header[9] = 3;
  const rows = Buffer.alloc(height * (width + 1));
  // Row filter 1 (each byte less its left neighbour), so the reader's unfiltering is exercised.
  for (let y = 0; y < height; y++)
    for (let x = 0; x < width; x++) rows[y * (width + 1) + 1 + x] = (indices[y * width + x] - (x > 0 ? indices[y * width + x - 1] : 0)) & 0xff;
  for (let y = 0; y < height; y++) rows[y * (width + 1)] = 1;
  const palette = Buffer.alloc(256 * 3);
  return Buffer.concat([Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]), chunk('IHDR', header), chunk('PLTE', palette), chunk('IDAT', deflateSync(rows)), chunk('IEND', Buffer.alloc(0))]);
}

/**
 * 40×30 pictures: the left half bright (class 1), a dark band at the bottom right (class 2),
 * the rest grey (class 0), a 255 border row at the top.
 */
async function folder(count: number, maskFormat: 'palette' | 'grey' = 'palette'): Promise<{ images: string; masks: string }> {
  const dir = mkdtempSync(join(tmpdir(), 'torchlite-seg-'));
  const images = join(dir, 'images');
  const masks = join(dir, 'masks');
  mkdirSync(images);
  mkdirSync(masks);
  const [width, height] = [40, 30];
  for (let i = 0; i < count; i++) {
    const pixels = Buffer.alloc(width * height * 3);
    const mask = new Uint8Array(width * height);
    for (let y = 0; y < height; y++)
      for (let x = 0; x < width; x++) {
        const cls = x < 20 ? 1 : y >= 20 ? 2 : 0;
        pixels.fill(cls === 1 ? 230 : cls === 2 ? 10 : 120, (y * width + x) * 3, (y * width + x + 1) * 3);
        mask[y * width + x] = y === 0 ? 255 : cls;
      }
    await sharp(pixels, { raw: { width, height, channels: 3 } }).png().toFile(join(images, `${i}.png`));
    if (maskFormat === 'palette') writeFileSync(join(masks, `${i}.png`), palettePng(mask, width, height));
    else await sharp(Buffer.from(mask), { raw: { width, height, channels: 1 } }).toColourspace('b-w').png().toFile(join(masks, `${i}.png`));
  }
  return { images, masks };
}

describe('data.segmentation', () => {
  it('reads class indices from palette and greyscale masks, cropped with the image', async () => {
    for (const format of ['palette', 'grey'] as const) {
      const { images, masks } = await folder(2, format);
      const ds = await data.segmentation(images, masks, { size: 16, classes: ['background', 'bright', 'dark'] });
      expect(ds.metrics).toEqual(['miou', 'accuracy']);
      const batches = [];
      for await (const batch of data.loader(ds, { batchSize: 2, strict: true })) batches.push(batch);
      const { input, target } = batches[0];
      expect(input.shape).toEqual([2, 3, 16, 16]);
      expect(target.shape).toEqual([2, 16, 16]);
      expect(target.dtype).toBe('int64');
      const labels = Array.from(target.toTypedArray() as BigInt64Array, Number).slice(0, 256);
      // The centre 30×30 of the 40×30 image: columns 5–34, so class 1 (x < 20) fills output columns 0–7.
      expect(labels.slice(0, 16)).toEqual(new Array(16).fill(255));
      expect(labels.slice(5 * 16, 6 * 16)).toEqual([...new Array(8).fill(1), ...new Array(8).fill(0)]);
      expect(labels.slice(15 * 16, 16 * 16)).toEqual([...new Array(8).fill(1), ...new Array(8).fill(2)]);
    }
  });

  it('augments image and mask together', async () => {
    const { images, masks } = await folder(1);
    const ds = await data.segmentation(images, masks, { size: 24, augment: true });
    for (let epoch = 0; epoch < 6; epoch++) {
      const sample = await ds.get(0, epoch);
      const input = sample.input as Float32Array;
      const mask = (sample.target as data.TargetParts).mask.data as Uint8Array;
      // The red channel, normalised: bright above 1, dark below −1.
      let agree = 0;
      let scored = 0;
      for (let p = 0; p < 24 * 24; p++) {
        if (mask[p] === 255) continue;
        const value = input[p];
        const seen = value > 1 ? 1 : value < -1 ? 2 : 0;
        agree += Number(seen === mask[p]);
        scored++;
      }
      expect(agree / scored).toBeGreaterThan(0.93);
    }
  });

  it('refuses options it cannot apply', async () => {
    const { images, masks } = await folder(1);
    await expect(data.segmentation(images, masks, { augment: { crop: 1.5 } })).rejects.toThrow(new RangeError('Expected a share in (0, 1] for `options.augment.crop` but received 1.5'));
    await expect(data.segmentation(images, masks, { ignoreIndex: 300 })).rejects.toThrow(new RangeError('Expected an integer from 0 to 255 for `options.ignoreIndex` but received 300'));
    await expect(data.segmentation(images, masks, { mean: [0.5] })).rejects.toThrow(new RangeError('Expected 3 values for `options.mean` and `options.std` but received 1 and 3'));
  });

  it('names the mask that is wrong', async () => {
    const { images, masks } = await folder(1);
    const ds = await data.segmentation(images, masks, { size: 8, classes: ['background', 'bright'] });
    await expect(ds.get(0, 0)).rejects.toMatchObject({
      code: 'TORCHLITE_BAD_ANNOTATION',
      message: `mask ${join(masks, '0.png')} has class 2, beyond the 2 classes (and not the ignore index 255)`,
    });
    await sharp(Buffer.alloc(10 * 10 * 3), { raw: { width: 10, height: 10, channels: 3 } }).png().toFile(join(masks, '0.png'));
    await expect((await data.segmentation(images, masks)).get(0, 0)).rejects.toMatchObject({
      code: 'TORCHLITE_BAD_ANNOTATION',
      message: `mask ${join(masks, '0.png')} is not an 8-bit greyscale or palette (indexed) PNG, not interlaced, holding class indices`,
    });
    writeFileSync(join(masks, '0.png'), palettePng(new Uint8Array(100), 10, 10));
    await expect((await data.segmentation(images, masks)).get(0, 0)).rejects.toMatchObject({ code: 'TORCHLITE_BAD_ANNOTATION', message: `mask ${join(masks, '0.png')} is 10×10 but its image is 40×30` });
    await sharp(Buffer.alloc(4 * 4 * 3), { raw: { width: 4, height: 4, channels: 3 } }).png().toFile(join(images, 'extra.png'));
    await expect(data.segmentation(images, masks)).rejects.toMatchObject({ code: 'TORCHLITE_BAD_DATA', message: `image ${join(images, 'extra.png')} has no mask ${join(masks, 'extra.png')}` });
  });
});

// A segmentation model with torchvision's output: {"out": scores, "aux": auxiliary scores}, both at the input's size.
const MAKE = `import sys, json, torch
import torch.nn.functional as F
from typing import Dict
class Seg(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.body = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.head = torch.nn.Conv2d(8, 3, 1)
        self.aux = torch.nn.Conv2d(8, 3, 1)
    def forward(self, x) -> Dict[str, torch.Tensor]:
        f = F.relu(self.body(F.avg_pool2d(x, 2)))
        size = x.shape[-2:]
        return {"out": F.interpolate(self.head(f), size=size, mode="bilinear", align_corners=False),
                "aux": F.interpolate(self.aux(f), size=size, mode="bilinear", align_corners=False)}
torch.jit.script(Seg()).save(sys.argv[1])
m = torch.jit.load(sys.argv[1])
g = torch.Generator().manual_seed(3)
x = torch.randn(2, 3, 8, 8, generator=g)
y = torch.randint(0, 3, (2, 8, 8), generator=g)
y[:, 0, :] = 255
x.numpy().astype("float32").tofile(sys.argv[1] + ".x")
y.numpy().astype("uint8").tofile(sys.argv[1] + ".y")
opt = torch.optim.SGD(m.parameters(), lr=0.5)
steps = []
for _ in range(3):
    o = m(x)
    parts = {k: F.cross_entropy(o[k], y, ignore_index=255) for k in ("out", "aux")}
    total = parts["out"] + 0.5 * parts["aux"]
    opt.zero_grad(); total.backward(); opt.step()
    steps.append({"loss": total.item(), "out": parts["out"].item(), "aux": parts["aux"].item()})
m.eval()
with torch.no_grad():
    pred = m(x)["out"].argmax(1)
valid = y != 255
cm = torch.bincount(y[valid] * 3 + pred[valid], minlength=9).view(3, 3).double()
iou = cm.diag() / (cm.sum(0) + cm.sum(1) - cm.diag())
print(json.dumps({"steps": steps, "confusion": cm.tolist(), "iou": iou.tolist(), "accuracy": (cm.diag().sum() / cm.sum()).item()}))
`;

describe.runIf(hasTorch)('segmentation training', () => {
  it("trains on out and aux with torchvision's weights, per-pixel with ignoreIndex 255, and scores mIoU as Python", async () => {
    const dir = mkdtempSync(join(tmpdir(), 'torchlite-seg-'));
    const expected = pythonJson<{ steps: { loss: number; out: number; aux: number }[]; confusion: number[][]; iou: number[]; accuracy: number }>(MAKE, [join(dir, 'seg.pt')]);
    const { readFileSync } = await import('node:fs');
    const raw = readFileSync(join(dir, 'seg.pt.x'));
    const xs = new Float32Array(raw.buffer.slice(raw.byteOffset, raw.byteOffset + raw.length));
    const ys = new Uint8Array(readFileSync(join(dir, 'seg.pt.y')));
    await using model = await loadPretrained(join(dir, 'seg.pt'), { channelsLast: false });
    model.train();
    const x = tensor(xs, [2, 3, 8, 8]);
    const y = tensor(ys, [2, 8, 8], { dtype: 'int64' });
    const perPixel = loss.crossEntropy({ ignoreIndex: 255, outputs: { out: 1, aux: 0.5 } });
    const optimizer = optim.sgd(model, { lr: 0.5 });
    for (const step of expected.steps) {
      const r = await model.trainStep(x, y, { loss: perPixel, optimizer });
      expect(r.loss).toBeCloseTo(step.loss, 5);
      expect(r.losses!.out).toBeCloseTo(step.out, 5);
      expect(r.losses!.aux).toBeCloseTo(step.aux, 5);
      // Accuracy counts pixels, not images, and leaves the ignored row out.
      expect(r.scored).toBe(2 * 7 * 8);
    }
    const metrics = await model.evaluate([{ input: x, target: y }], { metrics: ['miou', 'accuracy', 'confusionMatrix'] });
    expect(metrics.confusionMatrix).toEqual(expected.confusion);
    metrics.iou!.forEach((v, i) => expect(v).toBeCloseTo(expected.iou[i], 12));
    expect(metrics.miou).toBeCloseTo(expected.iou.reduce((a, b) => a + b, 0) / 3, 12);
    expect(metrics.accuracy).toBeCloseTo(expected.accuracy, 12);
    // The validation loss weighs the outputs as training does.
    const withLoss = await model.evaluate([{ input: x, target: y }], { loss: perPixel, metrics: ['miou'] });
    expect(withLoss.loss).toBeGreaterThan(0);
    await expect(model.evaluate([{ input: x, target: y }], { metrics: [{ topK: 2 }] })).rejects.toThrow('top-k accuracy needs one class-score row a sample');
    await expect(model.trainStep(x, y, { loss: loss.crossEntropy({ outputs: { main: 1 } }), optimizer })).rejects.toMatchObject({
      code: 'TORCHLITE_UNSUPPORTED_OUTPUT',
      message: "the loss weighs the output 'main', but the model's dict output has 'out', 'aux'; name those in `outputs`",
    });
    expect(() => loss.crossEntropy({ outputs: {} })).toThrow('Expected a record of output names to weights, e.g. { out: 1, aux: 0.5 } for `options.outputs` but received an object');
  });

  it('fits a segmentation folder: pixel accuracy and mIoU on validation', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'torchlite-seg-'));
    pythonScript(MAKE, [join(dir, 'seg.pt')]);
    const { images, masks } = await folder(4);
    const train = data.loader(await data.segmentation(images, masks, { size: 16, augment: true, classes: ['background', 'bright', 'dark'] }), { batchSize: 2, shuffle: true });
    const val = data.loader(await data.segmentation(images, masks, { size: 16, classes: ['background', 'bright', 'dark'] }), { batchSize: 2 });
    await using model = await loadPretrained(join(dir, 'seg.pt'));
    const history = await fit(model, { train, val, epochs: 4, optimizer: optim.adamw(model, { lr: 0.05 }), loss: loss.crossEntropy({ ignoreIndex: 255, outputs: { out: 1, aux: 0.5 } }) });
    for (const record of history) {
      expect(record.trainAccuracy).toBeGreaterThanOrEqual(0);
      expect(record.trainAccuracy).toBeLessThanOrEqual(1);
      expect(Object.keys(record.trainLosses!).sort()).toEqual(['aux', 'out']);
      expect(Object.keys(record.val!).sort()).toEqual(['accuracy', 'iou', 'loss', 'miou']);
    }
    expect(history[3].val!.miou).toBeGreaterThan(history[0].val!.miou! - 1e-9);
    expect(history[3].trainLoss).toBeLessThan(history[0].trainLoss);
  }, 60_000);
});

// torchvision's FCN layout in miniature: a body, then classifier and aux_classifier heads whose
// fifth layer (index 4) is the 1×1 convolution that sizes the classes.
const FCN = `import sys, torch
import torch.nn.functional as F
from typing import Dict
def head():
    return torch.nn.Sequential(torch.nn.Conv2d(8, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(), torch.nn.Dropout(0.1), torch.nn.Conv2d(8, 21, 1))
class FCN(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.backbone = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.classifier = head()
        self.aux_classifier = head()
    def forward(self, x) -> Dict[str, torch.Tensor]:
        f = F.relu(self.backbone(x))
        return {"out": self.classifier(f), "aux": self.aux_classifier(f)}
torch.jit.script(FCN()).save(sys.argv[1])
`;

describe.runIf(hasTorch)('torchlite finetune --task segment', () => {
  it('sizes the classifier convolutions for --classes, trains on out and aux, and predicts mask PNGs', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'torchlite-seg-cli-'));
    pythonScript(FCN, [join(dir, 'fcn.pt')]);
    const { images, masks } = await folder(10);
    const cli = (...args: string[]) => spawnSync('node', [join(root, 'lib', 'cli', 'main.js'), ...args], { encoding: 'utf8', cwd: dir });
    const out = join(dir, 'tuned.pt');
    const run = cli('finetune', '--model', join(dir, 'fcn.pt'), '--task', 'segment', '--data', images, '--masks', masks, '--classes', 'background,bright,dark', '--size', '16', '--epochs', '1', '--freeze-epochs', '1', '--batch-size', '4', '--out', out, '--json');
    expect(run.status, run.stderr).toBe(0);
    const result = JSON.parse(run.stdout.trim().split('\n').pop()!) as { classes: string[]; final: { miou: number; accuracy: number }; history: { trainLosses: Record<string, number> }[] };
    expect(result.classes).toEqual(['background', 'bright', 'dark']);
    expect(Object.keys(result.history[0].trainLosses).sort()).toEqual(['aux', 'out']);
    expect(result.final.miou).toBeGreaterThanOrEqual(0);
    const predicted = cli('predict', out, join(images, '0.png'), '--masks-dir', dir, '--json');
    expect(predicted.status, predicted.stderr).toBe(0);
    const [answer] = JSON.parse(predicted.stdout) as { mask: string; classes: { class: string; share: number }[] }[];
    expect(answer.mask).toBe(join(dir, '0.mask.png'));
    expect(answer.classes.map((c) => c.class)).toEqual(['background', 'bright', 'dark']);
    expect(await sharp(answer.mask).metadata()).toMatchObject({ width: 16, height: 16 });
    const missing = cli('finetune', '--model', join(dir, 'fcn.pt'), '--task', 'segment', '--data', images, '--classes', 'a,b');
    expect(missing.status).not.toBe(0);
    expect(missing.stderr).toContain('finetune --task segment needs --masks <dir>');
  }, 120_000);
});
