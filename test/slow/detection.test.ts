import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { loadPretrained, loss, manualSeed, nn, ops, optim, type Tensor, tensor, tensorList } from '../../src';
import { hasTorchvision, pythonJson } from '../helpers';

const relative = (a: number, b: number) => Math.abs(a - b) / Math.abs(b);

// Python's side of fine-tuning with the backbone frozen: `m` scripted as `s`, in train mode
// with its BatchNorms in eval, as torchlite's default policy keeps frozen ones.
const FROZEN_BACKBONE = `for p in m.backbone.parameters():
    p.requires_grad_(False)
s = torch.jit.script(m)
s.train()
for mod in s.modules():
    if mod.original_name == "BatchNorm2d":
        mod.eval()
`;

// torchvision's Faster R-CNN (mobilenet_v3 320 FPN, random weights), scripted by Python,
// then fine-tuned in torchlite as torchvision's tutorial does: the box predictor replaced for
// 3 classes (FastRCNNPredictor), the backbone frozen (its BatchNorms in eval), SGD on the
// losses the model computes. Images of different sizes go as a list, per-image targets as a
// list of dicts; torchvision::nms and roi_align come from torchvision's own ops library.
const DETECTOR = `import sys, json, torch, torchvision
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor
torch.manual_seed(0)
m = torchvision.models.detection.fasterrcnn_mobilenet_v3_large_320_fpn(weights=None, weights_backbone=None, num_classes=91)
torch.jit.script(m).save(sys.argv[1])
torch.manual_seed(5)
m.roi_heads.box_predictor = FastRCNNPredictor(1024, 3)
${FROZEN_BACKBONE}def image(c, h, w, k):
    return (torch.arange(c * h * w, dtype=torch.float64) * k % 97 / 97).float().view(c, h, w)
images = [image(3, 200, 240, 7), image(3, 180, 220, 11)]
targets = [{"boxes": torch.tensor([[10., 20., 100., 120.], [50., 60., 150., 170.]]), "labels": torch.tensor([1, 2])},
           {"boxes": torch.tensor([[30., 30., 90., 100.]]), "labels": torch.tensor([1])}]
opt = torch.optim.SGD([p for p in s.parameters() if p.requires_grad], lr=0.005, momentum=0.9, weight_decay=0.0005)
torch.manual_seed(1)
steps = []
for _ in range(3):
    losses, _ = s(images, targets)
    total = sum(losses.values())
    opt.zero_grad(); total.backward(); opt.step()
    steps.append({k: v.item() for k, v in losses.items()})
print(json.dumps(steps))`;

// Python loads torchlite's fine-tuned detector and runs it on the first image.
const LOAD_DETECTOR = `import sys, json, torch, torchvision  # torchvision registers its ops (nms) for the loader
m = torch.jit.load(sys.argv[1]).eval()
x = (torch.arange(3 * 200 * 240, dtype=torch.float64) * 7 % 97 / 97).float().view(3, 200, 240)
_, d = m([x])
print(json.dumps({"boxes": list(d[0]["boxes"].shape), "max_label": int(d[0]["labels"].max()) if d[0]["labels"].numel() else 0, "classes": m.roi_heads.box_predictor.cls_score.weight.shape[0]}))`;

// LR-ASPP (mobilenet_v3) with its two classifier convolutions replaced for 3 classes, the
// backbone frozen, SGD on per-pixel cross-entropy with ignore index 255.
const SEGMENTER = `import sys, json, torch, torchvision
import torch.nn.functional as F
torch.manual_seed(0)
m = torchvision.models.segmentation.lraspp_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=21)
torch.jit.script(m).save(sys.argv[1])
torch.manual_seed(5)
m.classifier.low_classifier = torch.nn.Conv2d(40, 3, 1)
m.classifier.high_classifier = torch.nn.Conv2d(128, 3, 1)
${FROZEN_BACKBONE}x = (torch.arange(2 * 3 * 64 * 64, dtype=torch.float64) * 13 % 101 / 50 - 1).float().view(2, 3, 64, 64)
y = (torch.arange(2 * 64 * 64) * 7 % 3).view(2, 64, 64)
y[:, :4, :] = 255
opt = torch.optim.SGD([p for p in s.parameters() if p.requires_grad], lr=0.01, momentum=0.9)
steps = []
for _ in range(3):
    loss = F.cross_entropy(s(x)["out"], y, ignore_index=255)
    opt.zero_grad(); loss.backward(); opt.step()
    steps.append(loss.item())
print(json.dumps(steps))`;

describe('fine-tuning torchvision detection and segmentation models', () => {
  it.runIf(hasTorchvision)("a Faster R-CNN with a new box predictor and a frozen backbone gives Python's four losses over 3 steps, and Python loads it", async () => {
    const dir = mkdtempSync(join(tmpdir(), 'torchlite-detection-'));
    const expected = pythonJson<Record<string, number>[]>(DETECTOR, [join(dir, 'frcnn.pt')]);
    await using model = await loadPretrained(join(dir, 'frcnn.pt'), { channelsLast: false }); // Python's layout, for its rounding
    expect(ops.loaded().some((file) => file.includes('torchvision'))).toBe(true);
    manualSeed(5); // FastRCNNPredictor's two layers, drawn in its order
    model.replace('roi_heads.box_predictor.cls_score', nn.linear(1024, 3));
    model.replace('roi_heads.box_predictor.bbox_pred', nn.linear(1024, 12));
    model.freeze('backbone');
    model.train();
    const image = (c: number, h: number, w: number, k: number) => tensor(Float32Array.from({ length: c * h * w }, (_, i) => ((i * k) % 97) / 97), [c, h, w]);
    const images = tensorList([image(3, 200, 240, 7), image(3, 180, 220, 11)]);
    const targets = [
      { boxes: tensor([10, 20, 100, 120, 50, 60, 150, 170], [2, 4]), labels: tensor(BigInt64Array.of(1n, 2n)) },
      { boxes: tensor([30, 30, 90, 100], [1, 4]), labels: tensor(BigInt64Array.of(1n)) },
    ];
    const optimizer = optim.sgd(model, { lr: 0.005, momentum: 0.9, weightDecay: 0.0005 });
    manualSeed(1); // the samplers draw from the generator, as in Python
    for (const step of expected) {
      const r = await model.trainStep([images], targets, { loss: loss.fromModel(), optimizer });
      expect(Object.keys(r.losses!).sort()).toEqual(['loss_box_reg', 'loss_classifier', 'loss_objectness', 'loss_rpn_box_reg']);
      for (const [name, value] of Object.entries(step)) expect(relative(r.losses![name], value), name).toBeLessThan(1e-4);
    }
    model.eval();
    await model.save(join(dir, 'tuned.pt'));
    const loaded = pythonJson<{ boxes: number[]; max_label: number; classes: number }>(LOAD_DETECTOR, [join(dir, 'tuned.pt')]);
    expect(loaded.classes).toBe(3);
    expect(loaded.boxes[1]).toBe(4);
    expect(loaded.max_label).toBeLessThan(3);
  }, 300_000);

  it.runIf(hasTorchvision)("an LR-ASPP with new classifier convolutions gives Python's per-pixel losses over 3 steps", async () => {
    const dir = mkdtempSync(join(tmpdir(), 'torchlite-segmentation-'));
    const expected = pythonJson<number[]>(SEGMENTER, [join(dir, 'lraspp.pt')]);
    await using model = await loadPretrained(join(dir, 'lraspp.pt'), { channelsLast: false });
    manualSeed(5);
    model.replace('classifier.low_classifier', nn.conv2d(40, 3, 1));
    model.replace('classifier.high_classifier', nn.conv2d(128, 3, 1));
    model.freeze('backbone');
    model.train();
    const x = tensor(Float32Array.from({ length: 2 * 3 * 64 * 64 }, (_, i) => ((i * 13) % 101) / 50 - 1), [2, 3, 64, 64]);
    const labels = BigInt64Array.from({ length: 2 * 64 * 64 }, (_, i) => BigInt(((i % 4096) >> 6) < 4 ? 255 : (i * 7) % 3));
    const y = tensor(labels, [2, 64, 64]);
    const optimizer = optim.sgd(model, { lr: 0.01, momentum: 0.9 });
    for (const value of expected) {
      const r = await model.trainStep(x, y, { loss: loss.crossEntropy({ ignoreIndex: 255 }), optimizer });
      expect(relative(r.loss, value)).toBeLessThan(1e-4);
    }
  }, 300_000);
});

// The four torchvision detectors the issue names, scripted by Python with random weights:
// each loads (torchvision's ops found by themselves) and detects in eval mode as Python does.
const ZOO = `import sys, json, torch, torchvision
from torchvision.models import detection as d
builders = {"fasterrcnn_mobilenet_v3_large_320_fpn": d.fasterrcnn_mobilenet_v3_large_320_fpn, "maskrcnn_resnet50_fpn": d.maskrcnn_resnet50_fpn,
            "ssdlite320_mobilenet_v3_large": d.ssdlite320_mobilenet_v3_large, "retinanet_resnet50_fpn": d.retinanet_resnet50_fpn}
x = (torch.arange(3 * 160 * 200, dtype=torch.float64) * 7 % 97 / 97).float().view(3, 160, 200)
out = {}
for name, build in builders.items():
    torch.manual_seed(0)
    m = build(weights=None, weights_backbone=None, num_classes=4).eval()
    s = torch.jit.script(m)
    s.save(sys.argv[1] + "/" + name + ".pt")
    with torch.no_grad():
        _, dets = s([x])
    out[name] = {"boxes": dets[0]["boxes"][:5].flatten().tolist(), "scores": dets[0]["scores"][:5].tolist(), "n": dets[0]["boxes"].shape[0]}
print(json.dumps(out))`;

describe('torchvision detectors', () => {
  it.runIf(hasTorchvision)("load and detect as Python does; a Mask R-CNN's predictors resize for new classes and train with masks", async () => {
    const dir = mkdtempSync(join(tmpdir(), 'torchlite-detectors-'));
    const expected = pythonJson<Record<string, { boxes: number[]; scores: number[]; n: number }>>(ZOO, [dir]);
    const x = tensor(Float32Array.from({ length: 3 * 160 * 200 }, (_, i) => ((i * 7) % 97) / 97), [3, 160, 200]);
    for (const [name, want] of Object.entries(expected)) {
      await using model = await loadPretrained(join(dir, `${name}.pt`), { channelsLast: false });
      const [, [found]] = (await model.forward(tensorList([x]))) as [unknown, Record<string, Tensor>[]];
      expect(found.boxes.shape[0], name).toBe(want.n);
      const boxes = Array.from(found.boxes.toTypedArray() as Float32Array).slice(0, want.boxes.length);
      boxes.forEach((v, i) => expect(Math.abs(v - want.boxes[i]), name).toBeLessThan(1e-2 * Math.max(1, Math.abs(want.boxes[i]))));
    }
    await using mask = await loadPretrained(join(dir, 'maskrcnn_resnet50_fpn.pt'), { channelsLast: false });
    expect(mask.resetClassifier(3)).toBe('roi_heads');
    expect(mask.parameters('roi_heads.mask_predictor.mask_fcn_logits.weight')[0].shape).toEqual([3, 256, 1, 1]);
    mask.freeze('backbone');
    mask.train();
    const masks = new Uint8Array(160 * 200);
    for (let y = 20; y < 90; y++) for (let xx = 30; xx < 120; xx++) masks[y * 200 + xx] = 1;
    const targets = [{ boxes: tensor([30, 20, 120, 90], [1, 4]), labels: tensor(BigInt64Array.of(2n)), masks: tensor(masks, [1, 160, 200]) }];
    const r = await mask.trainStep([tensorList([x])], targets, { loss: loss.fromModel(), optimizer: optim.sgd(mask, { lr: 0.001 }) });
    expect(Object.keys(r.losses!)).toContain('loss_mask');
    expect(Number.isFinite(r.loss)).toBe(true);
    await using retina = await loadPretrained(join(dir, 'retinanet_resnet50_fpn.pt'));
    expect(() => retina.resetClassifier(3)).toThrow(expect.objectContaining({ code: 'TORCHLITE_UNSUPPORTED_SURGERY' }));
  }, 600_000);
});
