"""The Python side of bench/text.mjs: the same encoder, the same padded batches, the
idiomatic loop (zero_grad, forward, loss, backward, AdamW step, loss.item()). Prints JSON."""
import json
import sys
import time

import torch
import torch.nn.functional as F

model_path, batches_path, threads, epochs = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
torch.set_num_threads(threads)
torch.manual_seed(0)
model = torch.jit.load(model_path)  # its own head: the target topics are class indices below its count
model.train()
with open(batches_path) as handle:
    raw = json.load(handle)
batches = [(torch.tensor(b["ids"]).view(b["shape"]), torch.tensor(b["mask"]).view(b["shape"]), torch.tensor(b["target"])) for b in raw]
samples = sum(len(b[2]) for b in batches)
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)


def epoch():
    for ids, mask, target in batches:
        optimizer.zero_grad()
        loss = F.cross_entropy(model(ids, mask), target)
        loss.backward()
        optimizer.step()
        loss.item()


epoch()  # warm-up
start = time.perf_counter()
for _ in range(epochs):
    epoch()
print(json.dumps({"samples_per_s": epochs * samples / (time.perf_counter() - start)}))
