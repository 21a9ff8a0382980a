"""Pretrains torchvision's mobilenet_v3_small on Fashion-MNIST classes 0-4 at 3x32x32:
the second model family of the recipe sweep (the first is models/fashion-cnn.pt, trained
on the same source task by scripts/fixtures/pretrain.py).

Usage: /usr/bin/python3 pretrain_mobilenet.py OUT.pt
Writes a scripted TorchScript archive with torchlite metadata (classes, input spec).
"""
import json
import os
import sys
import time

import torch
import torchvision
from torch import nn

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "scripts", "fixtures"))
from pretrain import CLASSES, MEAN, STD, load  # noqa: E402


def grow(x):
    """[N, 1, 28, 28] normalised grey to [N, 3, 32, 32], as the sweep feeds it."""
    return nn.functional.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False).expand(-1, 3, -1, -1).contiguous()


def main():
    torch.manual_seed(0)
    torch.set_num_threads(os.cpu_count() or 1)
    keep = [0, 1, 2, 3, 4]
    x, y = load("train", keep)
    xt, yt = load("t10k", keep)
    x, xt = grow(x), grow(xt)
    model = torchvision.models.mobilenet_v3_small(num_classes=5)
    # torchvision's BatchNorm momentum of 0.01 suits ImageNet-length runs; in three short
    # epochs the running statistics lag far behind (measured: eval accuracy 20%, then 51%,
    # against a training loss of 0.35), so PyTorch's default 0.1 is used.
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.momentum = 0.1
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    epochs, batch = 3, 128
    steps = epochs * (len(x) // batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
    loss_fn = nn.CrossEntropyLoss()
    start = time.time()
    for epoch in range(epochs):
        model.train()
        perm = torch.randperm(len(x))
        for i in range(len(x) // batch):
            idx = perm[i * batch : (i + 1) * batch]
            loss = loss_fn(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        model.eval()
        with torch.no_grad():
            accuracy = (model(xt).argmax(1) == yt).float().mean().item()
        print(f"epoch {epoch + 1}: loss {loss.item():.3f}, test accuracy {accuracy:.4f}, {time.time() - start:.0f}s", flush=True)
    metadata = {
        "classes": CLASSES[:5],
        "input": {"shape": [3, 32, 32], "mean": [MEAN] * 3, "std": [STD] * 3, "resize": "center-crop"},
        "recipe": {"data": "Fashion-MNIST train, classes 0-4, grey upscaled to 3x32x32", "epochs": epochs, "testAccuracy": accuracy},
    }
    torch.jit.script(model.eval()).save(sys.argv[1], _extra_files={"torchlite.json": json.dumps(metadata)})


if __name__ == "__main__":
    main()
