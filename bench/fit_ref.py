"""Python half of bench/fit.mjs: the idiomatic PyTorch loop on in-memory data.

Usage: /usr/bin/python3 bench/fit_ref.py OUT_DIR THREADS
Scripts the models torchlite will load into OUT_DIR, then times, in samples per second,
a DataLoader over a TensorDataset (shuffled) with zero_grad, forward, loss, backward, step
and loss.item() per batch, and one train step per call on the small CNN at batch 8.
Prints one JSON line.
"""
import json
import os
import sys
import time

import torch
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "scripts", "fixtures"))
import models  # noqa: E402

N, EPOCHS = 2048, 2


def data(shape, classes):
    g = torch.Generator().manual_seed(0)
    return torch.randn(N, *shape, generator=g), torch.randint(0, classes, (N,), generator=g)


def step(model, opt, loss_fn, x, y):
    """The idiomatic step, reading the loss back as torchlite does."""
    opt.zero_grad(set_to_none=True)
    loss = loss_fn(model(x), y)
    loss.backward()
    opt.step()
    return loss.item()


def fit(model, x, y, batch):
    loader = DataLoader(TensorDataset(x, y), batch_size=batch, shuffle=True)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    loss_fn = torch.nn.CrossEntropyLoss()
    model.train()
    for epoch in range(EPOCHS + 1):
        if epoch == 1:
            start = time.perf_counter()
        for xb, yb in loader:
            step(model, opt, loss_fn, xb, yb)
    return EPOCHS * N / (time.perf_counter() - start)


def steps(model, x, y, count):
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    loss_fn = torch.nn.CrossEntropyLoss()
    model.train()
    for i in range(count + 50):
        if i == 50:
            start = time.perf_counter()
        step(model, opt, loss_fn, x, y)
    return count / (time.perf_counter() - start)


def main():
    out, threads = sys.argv[1], int(sys.argv[2])
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    results = {}
    mlp, cnn = models.MLP(), models.FashionCNN(num_classes=10)
    torch.jit.script(mlp).save(os.path.join(out, "mlp.pt"))
    torch.jit.script(cnn).save(os.path.join(out, "cnn.pt"))
    results["fit_mlp"] = fit(mlp, *data((12,), 4), 32)
    results["fit_cnn"] = fit(cnn, *data((1, 28, 28), 10), 32)
    x, y = data((1, 28, 28), 10)
    results["step_cnn_b8"] = steps(cnn, x[:8], y[:8], 300)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
