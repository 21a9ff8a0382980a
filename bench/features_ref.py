"""Python half of bench/features.mjs: head-only fine-tuning of a frozen ResNet-18, eagerly.

Usage: /usr/bin/python3 bench/features_ref.py OUT_DIR THREADS TRAIN VAL
Scripts resnet18 (random weights; timing only) into OUT_DIR, then trains a new 10-class
head for 3 epochs on TRAIN Fashion-MNIST images upscaled to 3x64x64 (nearest), AdamW
lr 0.01, batch 32, body frozen, and prints one JSON line: seconds and val accuracy.
"""
import gzip
import json
import os
import sys
import time

import numpy as np
import torch
import torchvision

IDX = "/usr/share/datasets/fashion-mnist"


def images(name, count):
    with gzip.open(os.path.join(IDX, name)) as f:
        raw = np.frombuffer(f.read(), dtype=np.uint8, offset=16)[: count * 784].reshape(count, 1, 28, 28)
    x = torch.from_numpy(raw.astype(np.float32) / 255.0)
    x = torch.nn.functional.interpolate(x, size=64, mode="nearest").repeat(1, 3, 1, 1)
    return (x - 0.286) / 0.353


def labels(name, count):
    with gzip.open(os.path.join(IDX, name)) as f:
        return torch.from_numpy(np.frombuffer(f.read(), dtype=np.uint8, offset=8)[:count].astype(np.int64))


def main():
    out, threads, n_train, n_val = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = torchvision.models.resnet18()
    torch.jit.script(model).save(os.path.join(out, "resnet18.pt"))
    x, y = images("train-images-idx3-ubyte.gz", n_train), labels("train-labels-idx1-ubyte.gz", n_train)
    vx, vy = images("t10k-images-idx3-ubyte.gz", n_val), labels("t10k-labels-idx1-ubyte.gz", n_val)
    model.fc = torch.nn.Linear(512, 10)
    for name, p in model.named_parameters():
        p.requires_grad = name.startswith("fc.")
    model.eval()  # frozen BatchNorm on its running statistics, as torchlite's frozen-eval policy
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.01, weight_decay=0.01)
    loss_fn = torch.nn.CrossEntropyLoss()
    start = time.perf_counter()
    for epoch in range(3):
        order = torch.randperm(n_train)
        for i in range(0, n_train, 32):
            idx = order[i : i + 32]
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(x[idx]), y[idx])
            loss.backward()
            opt.step()
            loss.item()
        with torch.no_grad():
            correct = sum((model(vx[i : i + 256]).argmax(1) == vy[i : i + 256]).sum().item() for i in range(0, n_val, 256))
    print(json.dumps({"seconds": time.perf_counter() - start, "accuracy": correct / n_val}))


if __name__ == "__main__":
    main()
