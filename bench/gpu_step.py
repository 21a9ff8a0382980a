"""Python half of the GPU bench: ResNet-50 at 224², batch 64, TF32 and bf16 autocast, each
with the loss read every step and without (the GPU then runs ahead of the host).

Usage: python3 bench/gpu_step.py WORK_DIR
Exports resnet50 as TorchScript for torchlite into WORK_DIR and prints one JSON line of img/s.
"""
import json
import os
import sys
import time

import torch
import torchvision

STEPS, WARMUP, BATCH = 30, 3, 64


def bench(model, amp, read_loss):
    x = torch.randn(BATCH, 3, 224, 224, device="cuda")
    y = torch.randint(0, 1000, (BATCH,), device="cuda")
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    for i in range(WARMUP + STEPS):
        if i == WARMUP:
            torch.cuda.synchronize()
            start = time.perf_counter()
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
            loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if read_loss:
            loss.item()
    torch.cuda.synchronize()
    return BATCH * STEPS / (time.perf_counter() - start)


def main():
    out = sys.argv[1]
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cudnn.benchmark = True
    model = torchvision.models.resnet50().cuda().train()
    torch.jit.script(model.cpu()).save(os.path.join(out, "resnet50.pt"))
    model.cuda()
    result = {"card": torch.cuda.get_device_name(), "driver_cuda": torch.version.cuda, "torch": torch.__version__}
    for name, amp in (("tf32", False), ("bf16", True)):
        result[name] = bench(model, amp, True)
        result[name + "-nosync"] = bench(model, amp, False)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
