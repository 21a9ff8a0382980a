import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { loadPretrained, loss, optim, tensor } from '../src';
import { hasTorch, pythonJson, pythonScript } from './helpers';

// A model that computes its own losses from structured targets, as detection models do: a
// list of per-image dicts whose tensors differ in size from image to image.
const MAKE = `import sys, json, torch
from typing import Dict, List, Tuple
class Detector(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.box = torch.nn.Linear(8, 4)
        self.cls = torch.nn.Linear(8, 3)
    def forward(self, images: List[torch.Tensor], targets: List[Dict[str, torch.Tensor]]) -> Tuple[Dict[str, torch.Tensor], List[torch.Tensor]]:
        box_loss = torch.zeros(())
        cls_loss = torch.zeros(())
        outs: List[torch.Tensor] = []
        for image, target in zip(images, targets):
            feature = image.mean(dim=(1, 2)).repeat(2)[:8]
            boxes = self.box(feature)
            logits = self.cls(feature)
            outs.append(boxes)
            box_loss = box_loss + ((boxes.unsqueeze(0) - target["boxes"]) ** 2).mean()
            cls_loss = cls_loss + torch.nn.functional.cross_entropy(logits.unsqueeze(0).expand(target["labels"].shape[0], 3), target["labels"])
        return {"loss_box": box_loss / len(images), "loss_cls": cls_loss / len(images)}, outs
torch.jit.script(Detector()).save(sys.argv[1] + '/detector.pt')
images = [torch.arange(4 * 5 * 6, dtype=torch.float32).view(4, 5, 6) / 100, torch.ones(4, 3, 7) / 3]
targets = [{"boxes": torch.tensor([[0.1, 0.2, 0.3, 0.4], [0.5, 0.5, 0.9, 0.9]]), "labels": torch.tensor([1, 2])},
           {"boxes": torch.tensor([[0.0, 0.1, 0.2, 0.3]]), "labels": torch.tensor([0])}]
m = torch.jit.load(sys.argv[1] + '/detector.pt')
m.train()
opt = torch.optim.SGD(m.parameters(), lr=0.1)
steps = []
for _ in range(3):
    losses, _ = m(images, targets)
    total = losses["loss_box"] * 2 + losses["loss_cls"]
    opt.zero_grad()
    total.backward()
    opt.step()
    steps.append({"loss": total.item(), "loss_box": losses["loss_box"].item(), "loss_cls": losses["loss_cls"].item()})
print(json.dumps(steps))
`;

describe.runIf(hasTorch)('a model that computes its own loss', () => {
  it('trains on structured targets as Python does, reporting each named loss', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'torchlite-model-loss-'));
    const expected = pythonJson<{ loss: number; loss_box: number; loss_cls: number }[]>(MAKE, [dir]);
    await using model = await loadPretrained(join(dir, 'detector.pt'));
    model.train();
    const images = [tensor(Float32Array.from({ length: 120 }, (_, i) => i / 100), [4, 5, 6]), tensor(new Float32Array(84).fill(1 / 3), [4, 3, 7])];
    const targets = [
      { boxes: tensor([0.1, 0.2, 0.3, 0.4, 0.5, 0.5, 0.9, 0.9], [2, 4]), labels: tensor(BigInt64Array.of(1n, 2n)) },
      { boxes: tensor([0.0, 0.1, 0.2, 0.3], [1, 4]), labels: tensor(BigInt64Array.of(0n)) },
    ];
    const fromModel = loss.fromModel({ weights: { loss_box: 2 } });
    const optimizer = optim.sgd(model, { lr: 0.1 });
    const steps = [];
    for (let i = 0; i < 3; i++) steps.push(await model.trainStep([images], targets, { loss: fromModel, optimizer }));
    steps.forEach((step, i) => {
      expect(step.loss).toBeCloseTo(expected[i].loss, 5);
      expect(step.losses!.loss_box).toBeCloseTo(expected[i].loss_box, 5);
      expect(step.losses!.loss_cls).toBeCloseTo(expected[i].loss_cls, 5);
      expect(step.stepped).toBe(true);
    });
    // trainSteps takes the same batches.
    const [again] = await model.trainSteps([{ input: [images], target: targets }], { loss: fromModel, optimizer });
    expect(Object.keys(again.losses!).sort()).toEqual(['loss_box', 'loss_cls']);
  });

  it('says what is wrong when the model does not return losses, and refuses it where it cannot apply', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'torchlite-model-loss-'));
    pythonScript('import sys, torch\ntorch.jit.script(torch.nn.Linear(4, 2)).save(sys.argv[1])\n', [join(dir, 'linear.pt')]);
    await using model = await loadPretrained(join(dir, 'linear.pt'));
    model.train();
    // A Linear takes one argument: the targets as a second one is refused by its schema.
    await expect(model.trainStep(tensor([1, 2, 3, 4], [1, 4]), tensor([0]), { loss: loss.fromModel(), optimizer: optim.sgd(model) })).rejects.toMatchObject({ code: 'TORCH_ARGUMENT' });
    await expect(model.evaluate([], { loss: loss.fromModel() })).rejects.toThrow(
      new TypeError("evaluate() computes a loss from the outputs; a model that computes its own (loss.fromModel()) does so in train mode, in trainStep. Leave `loss` out, and score a detector with metrics: ['map']"),
    );
    await expect(loss.fromModel().compute(tensor([1]), tensor([1]))).rejects.toThrow(TypeError);
    expect(() => loss.fromModel({ weights: { a: Number.NaN } })).toThrow(new RangeError('Expected a finite number for `options.weights.a` but received NaN'));
  });
});

// A Hugging Face-style classifier: named inputs, `labels` optional, a dict with the loss beside the logits.
const HF = `import sys, json, torch
from typing import Dict, Optional
class Classifier(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.embeddings = torch.nn.Embedding(20, 8)
        self.classifier = torch.nn.Linear(8, 3)
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: Optional[torch.Tensor] = None) -> Dict[str, torch.Tensor]:
        mask = attention_mask.unsqueeze(-1).float()
        logits = self.classifier((self.embeddings(input_ids) * mask).sum(1) / mask.sum(1))
        if labels is None:
            return {"logits": logits}
        return {"loss": torch.nn.functional.cross_entropy(logits, labels), "logits": logits}
torch.jit.script(Classifier()).save(sys.argv[1])
m = torch.jit.load(sys.argv[1])
ids = torch.tensor([[1, 2, 3, 0], [4, 5, 0, 0]]); mask = (ids > 0).long(); labels = torch.tensor([2, 0])
opt = torch.optim.SGD(m.parameters(), lr=0.5)
steps = []
for _ in range(3):
    loss = m(ids, mask, labels)["loss"]
    opt.zero_grad(); loss.backward(); opt.step()
    steps.append(loss.item())
print(json.dumps(steps))
`;

describe.runIf(hasTorch)('a Hugging Face-style model that takes labels', () => {
  it('trains on the loss it returns beside its logits, the labels passed by name', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'torchlite-hf-loss-'));
    const expected = pythonJson<number[]>(HF, [join(dir, 'hf.pt')]);
    await using model = await loadPretrained(join(dir, 'hf.pt'));
    model.train();
    const input_ids = tensor(BigInt64Array.of(1n, 2n, 3n, 0n, 4n, 5n, 0n, 0n), [2, 4]);
    const attention_mask = tensor(BigInt64Array.of(1n, 1n, 1n, 0n, 1n, 1n, 0n, 0n), [2, 4]);
    const optimizer = optim.sgd(model, { lr: 0.5 });
    for (const value of expected) {
      const step = await model.trainStep({ input_ids, attention_mask }, tensor(BigInt64Array.of(2n, 0n)), { loss: loss.fromModel({ argument: 'labels' }), optimizer });
      expect(step.loss).toBeCloseTo(value, 5);
    }
  });
});
