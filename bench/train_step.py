"""Python half of the train-step bench: same LibTorch, same models, same batch shapes.

Usage: /usr/bin/python3 bench/train_step.py OUT_DIR THREADS
Exports the models torchlite will load into OUT_DIR, times eager PyTorch on them and
prints one JSON line of results.
"""
import json
import os
import sys
import time

import torch
import torchvision

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "scripts", "fixtures"))
import models  # noqa: E402


def time_steps(model, x, y, opt, steps, warmup):
    loss_fn = torch.nn.CrossEntropyLoss()
    for i in range(warmup + steps):
        if i == warmup:
            start = time.perf_counter()
        loss = loss_fn(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        loss.item()  # torchlite reads the loss every step too
    return (time.perf_counter() - start) / steps


def main():
    out, threads = sys.argv[1], int(sys.argv[2])
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    results = {}
    resnet = torchvision.models.resnet18(num_classes=10).train()
    torch.jit.script(resnet).save(os.path.join(out, "resnet18.pt"))
    for size, steps in ((64, 10), (224, 3)):
        x = torch.randn(16, 3, size, size)
        y = torch.randint(0, 10, (16,))
        opt = torch.optim.SGD(resnet.parameters(), lr=0.01, momentum=0.9)
        results[f"resnet18_{size}"] = 16 / time_steps(resnet, x, y, opt, steps, 2)
    mlp = models.MLP().train()
    torch.jit.script(mlp).save(os.path.join(out, "mlp.pt"))
    x = torch.randn(8, 12)
    y = torch.randint(0, 4, (8,))
    results["mlp"] = 1 / time_steps(mlp, x, y, torch.optim.SGD(mlp.parameters(), lr=0.01), 2000, 200)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
