"""The Python side of bench/detect.mjs: makes the scripted detector both sides train, then
runs the idiomatic loop on it (forward with targets, sum of the losses, zero_grad, backward,
SGD step, loss.item()) on the same images and targets. Prints JSON."""
import json
import sys
import time

import torch
import torchvision

model_path, threads, steps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
torch.set_num_threads(threads)
if sys.argv[4] == "make":
    torch.manual_seed(0)
    m = torchvision.models.detection.fasterrcnn_mobilenet_v3_large_320_fpn(weights=None, weights_backbone=None, num_classes=3)
    torch.jit.script(m).save(model_path)
    sys.exit(0)

model = torch.jit.load(model_path)
for name, p in model.named_parameters():
    if name.startswith("backbone."):
        p.requires_grad_(False)
model.train()


def image(k):
    return (torch.arange(3 * 240 * 320, dtype=torch.float64) * k % 97 / 97).float().view(3, 240, 320)


images = [image(7 + 2 * i) for i in range(4)]
targets = [{"boxes": torch.tensor([[10.0 + 5 * i, 20.0, 120.0, 150.0], [60.0, 70.0, 200.0 + 5 * i, 220.0]]), "labels": torch.tensor([1, 2])} for i in range(4)]
optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.005, momentum=0.9, weight_decay=0.0005)


def step():
    losses, _ = model(images, targets)
    loss = sum(losses.values())
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    loss.item()


torch.manual_seed(1)
for _ in range(2):
    step()  # warm-up: the profiling executor optimises on the first runs
start = time.perf_counter()
for _ in range(steps):
    step()
print(json.dumps({"images_per_s": steps * len(images) / (time.perf_counter() - start)}))
