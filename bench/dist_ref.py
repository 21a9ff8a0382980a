"""Python reference for bench/dist.mjs: DistributedDataParallel (Gloo) on the same machine.

  /usr/bin/python3 bench/dist_ref.py <dir> <steps>
Writes <dir>/resnet18.pt (scripted, random weights) if missing, then for 1 and 2 ranks
(one thread each) prints one JSON line: seconds per step and per allreduce of the
gradients' size, medians.
"""
import json
import os
import socket
import statistics
import sys
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torchvision

BATCH, SIZE = 16, 64


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rank_main(rank, world, port, path, steps, out):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    model = torch.jit.load(path)
    model.train()
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(BATCH, 3, SIZE, SIZE)
    y = torch.arange(BATCH) % 10
    times = []
    for i in range(steps + 2):
        start = time.perf_counter()
        opt.zero_grad()
        torch.nn.functional.cross_entropy(ddp(x), y).backward()
        opt.step()
        if i >= 2:
            times.append(time.perf_counter() - start)
    flat = torch.zeros(sum(p.numel() for p in model.parameters()))
    reduce_times = []
    for _ in range(5):
        dist.barrier()
        start = time.perf_counter()
        dist.all_reduce(flat)
        reduce_times.append(time.perf_counter() - start)
    if rank == 0:
        with open(out, "w") as f:
            json.dump({"step": statistics.median(times), "allreduce": statistics.median(reduce_times) if world > 1 else 0}, f)
    dist.destroy_process_group()


if __name__ == "__main__":
    folder, steps = sys.argv[1], int(sys.argv[2])
    path = os.path.join(folder, "resnet18.pt")
    if not os.path.exists(path):
        torch.jit.script(torchvision.models.resnet18(num_classes=10)).save(path)
    results = {}
    for world in (1, 2):
        out = os.path.join(folder, f"py-{world}.json")
        mp.spawn(rank_main, args=(world, free_port(), path, steps, out), nprocs=world, join=True)
        with open(out) as f:
            results[world] = json.load(f)
    print(json.dumps(results))
