"""Pretrains torchvision's mobilenet_v3_small on Fashion-MNIST classes 0-4 at 3x32x32:
the second model family of the recipe sweep (the first is models/fashion-cnn.pt, trained
on the same source task by scripts/fixtures/pretrain.py).

Usage: /usr/bin/python3 pretrain_mobilenet.py OUT.pt
Writes a scripted TorchScript archive with torchlite metadata (classes, input spec).
"""
import json
import os
import sys
import torch
import torchvision
from torch import nn

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "scripts", "fixtures"))
from pretrain import CLASSES, MEAN, STD, source_task, train  # noqa: E402


def grow(x):
    """[N, 1, 28, 28] normalised grey to [N, 3, 32, 32], as the sweep feeds it."""
    return nn.functional.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False).expand(-1, 3, -1, -1).contiguous()


def main():
    x, y, xt, yt = source_task()
    x, xt = grow(x), grow(xt)
    model = torchvision.models.mobilenet_v3_small(num_classes=5)
    # torchvision's BatchNorm momentum of 0.01 suits ImageNet-length runs; in three short
    # epochs the running statistics lag far behind (measured: eval accuracy 20%, then 51%,
    # against a training loss of 0.35), so PyTorch's default 0.1 is used.
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.momentum = 0.1
    epochs = 3
    accuracy = train(model, x, y, xt, yt, epochs)
    metadata = {
        "classes": CLASSES[:5],
        "input": {"shape": [3, 32, 32], "mean": [MEAN] * 3, "std": [STD] * 3, "resize": "center-crop"},
        "recipe": {"data": "Fashion-MNIST train, classes 0-4, grey upscaled to 3x32x32", "epochs": epochs, "testAccuracy": accuracy},
    }
    torch.jit.script(model.eval()).save(sys.argv[1], _extra_files={"torchlite.json": json.dumps(metadata)})


if __name__ == "__main__":
    main()
