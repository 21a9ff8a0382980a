"""Python half of bench/fit.mjs: the idiomatic PyTorch loop on in-memory data.

Usage: /usr/bin/python3 bench/fit_ref.py OUT_DIR THREADS
Scripts the models torchlite will load into OUT_DIR, prints "ready", then times each case
named on a line of stdin and prints its rate as one JSON line: in samples per second, a
DataLoader over a TensorDataset (shuffled) with zero_grad, forward, loss, backward, step
and loss.item() per batch (fit_mlp, fit_cnn), and in steps per second one train step per
call on the small CNN at batch 8 (step_cnn_b8), all in NCHW (the *_nchw cases are the same);
the CNN cases again in channels-last layout (model and each batch converted, as PyTorch's
channels-last recipe does: *_nhwc). Each case starts from a fresh model with the same
initial weights.
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
MLP_EPOCHS = 16  # the MLP's 2 epochs take ~30 ms, too short to time on a drifting VM


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


def fit(model, x, y, batch, layout=torch.contiguous_format, epochs=EPOCHS):
    loader = DataLoader(TensorDataset(x, y), batch_size=batch, shuffle=True)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    loss_fn = torch.nn.CrossEntropyLoss()
    model.train()
    for epoch in range(epochs + 1):
        if epoch == 1:
            start = time.perf_counter()
        for xb, yb in loader:
            step(model, opt, loss_fn, xb.to(memory_format=layout), yb)
    return epochs * N / (time.perf_counter() - start)


def steps(model, x, y, count):
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    loss_fn = torch.nn.CrossEntropyLoss()
    model.train()
    for i in range(count + 50):
        if i == 50:
            start = time.perf_counter()
        step(model, opt, loss_fn, x, y)
    return count / (time.perf_counter() - start)


def fresh(kind, layout=torch.contiguous_format):
    torch.manual_seed(0)
    return (models.MLP() if kind == "mlp" else models.FashionCNN(num_classes=10)).to(memory_format=layout)


def cases():
    nhwc = torch.channels_last
    x, y = data((1, 28, 28), 10)
    nchw = {
        "fit_cnn": lambda: fit(fresh("cnn"), x, y, 32),
        "step_cnn_b8": lambda: steps(fresh("cnn"), x[:8], y[:8], 300),
    }
    return {
        "fit_mlp": lambda: fit(fresh("mlp"), *data((12,), 4), 32, epochs=MLP_EPOCHS),
        **nchw,
        **{f"{name}_nchw": run for name, run in nchw.items()},
        "fit_cnn_nhwc": lambda: fit(fresh("cnn", nhwc), x, y, 32, nhwc),
        "step_cnn_b8_nhwc": lambda: steps(fresh("cnn", nhwc), x[:8].to(memory_format=nhwc), y[:8], 300),
    }


def main():
    out, threads = sys.argv[1], int(sys.argv[2])
    torch.set_num_threads(threads)
    torch.jit.script(fresh("mlp")).save(os.path.join(out, "mlp.pt"))
    torch.jit.script(fresh("cnn")).save(os.path.join(out, "cnn.pt"))
    run = cases()
    print("ready", flush=True)
    for line in sys.stdin:
        name = line.strip()
        print(json.dumps({name: run[name]()}), flush=True)


if __name__ == "__main__":
    main()
