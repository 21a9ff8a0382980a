// Runs on the lent GPU machine through scripts/gpu-check.sh; skipped where there is no CUDA.
import { join } from 'node:path';

import { describe, expect, it } from 'vitest';

import { cuda, distributed, loadPretrained, lora, loss, manualSeed, nn, optim, randn, runtime, type Tensor, tensor, tensorList, TorchError } from '../../src';
import { native } from '../../src/native';
import { exportTorchvision, fixture, freePort, hasTorchvision, maxAbsDiff, python, readF32, relativeDiff } from '../helpers';

const values = async (t: Tensor) => (await t.read()) as Float32Array;
const longs = (xs: number[]) => tensor(BigInt64Array.from(xs.map(BigInt)));

describe.skipIf(!cuda.isAvailable())('CUDA', () => {
  it('forward on the GPU matches the CPU: 1e-4 relative in fp32, 1e-2 in bf16', async () => {
    cuda.setOptions({ tf32: false });
    await using cpu = await loadPretrained(fixture('resnet_small.scripted.pt'));
    await using gpu = await loadPretrained(fixture('resnet_small.scripted.pt'), { device: 'cuda' });
    expect(gpu.device).toBe('cuda:0');
    const x = randn([8, 3, 32, 32]);
    const expected = await values(await cpu.forward<Tensor>(x));
    expect(relativeDiff(await values(await gpu.forward<Tensor>(x.to('cuda'))), expected)).toBeLessThanOrEqual(1e-4);
    // bf16: the loss of a zero-lr step under autocast against the CPU's fp32 loss.
    const y = longs([0, 1, 2, 3, 4, 5, 6, 7]);
    const ce = loss.crossEntropy();
    const cpuLoss = (await cpu.evaluate([{ input: x, target: y }], { loss: ce })).loss!;
    const bf16 = await gpu.trainStep(x, y, { loss: ce, optimizer: optim.sgd(gpu, { lr: 0 }), amp: 'bf16' });
    expect(Math.abs(bf16.loss - cpuLoss) / cpuLoss).toBeLessThanOrEqual(1e-2);
  });

  it('a train step on the GPU learns, from pinned CPU batches copied without blocking', async () => {
    manualSeed(0);
    await using model = await loadPretrained(fixture('resnet_small.scripted.pt'), { device: 'cuda' });
    model.train();
    const opt = optim.adamw(model, { lr: 1e-2 });
    const x = randn([16, 3, 16, 16]); // on the CPU: trainStep stages it through pinned memory
    const y = longs(Array.from({ length: 16 }, (_, i) => i % 10));
    const first = await model.trainStep(x, y, { loss: loss.crossEntropy(), optimizer: opt });
    let last = first;
    for (let i = 0; i < 30; i++) last = await model.trainStep(x, y, { loss: loss.crossEntropy(), optimizer: opt, readLoss: i % 10 === 9 });
    expect(last.loss).toBeLessThan(first.loss / 2);
    model.eval(); // the fixture has dropout: only eval-mode forwards can be compared
    const onDevice = await model.forward<Tensor>(x.to('cuda'));
    const fromHost = await model.forward<Tensor>(x);
    expect(maxAbsDiff(await values(onDevice), await values(fromHost))).toBe(0);
  });

  it('fp16 AMP skips steps on overflow and recovers', async () => {
    await using model = await loadPretrained(fixture('mlp.scripted.pt'), { device: 'cuda' });
    model.train();
    const opt = optim.sgd(model, { lr: 1e-6 });
    const x = randn([8, 12]);
    const huge = tensor(new Float32Array(32).fill(3000), [8, 4]); // MSE ~1e7, × 65536 overflows fp16 grads
    const results = [];
    for (let i = 0; i < 40; i++) results.push(await model.trainStep(x, huge, { loss: loss.mse(), optimizer: opt, amp: 'fp16' }));
    expect(results[0].skipped).toBe(true);
    const recovered = results.findIndex((r) => r.stepped);
    expect(recovered).toBeGreaterThan(0);
    expect(results.slice(recovered).every((r) => Number.isFinite(r.loss))).toBe(true);
  });

  it('runs on the device lane, inference between the steps of a multi-step job, and reads off the event loop', async () => {
    await using trainer = await loadPretrained(fixture('resnet_small.scripted.pt'), { device: 'cuda' });
    await using server = await loadPretrained(fixture('mlp.scripted.pt'), { device: 'cuda' });
    trainer.train();
    const x = randn([64, 3, 32, 32]).to('cuda');
    const y = longs(Array.from({ length: 64 }, (_, i) => i % 10)).to('cuda');
    const batches = Array.from({ length: 20 }, () => ({ input: x, target: y }));
    const order: string[] = [];
    const long = trainer.trainSteps(batches, { loss: loss.crossEntropy(), optimizer: optim.sgd(trainer, { lr: 0.01 }), readLoss: false }).then(() => order.push('train'));
    const answer = server.forward<Tensor>(randn([1, 12])).then((t) => {
      order.push('predict');
      return t;
    });
    const [, out] = await Promise.all([long, answer]);
    expect(order).toEqual(['predict', 'train']);
    expect(runtime.queue().map((lane) => lane.lane)).toContain('cuda:0');
    expect(() => out.toTypedArray()).toThrow(expect.objectContaining({ code: 'TORCHLITE_DEVICE_SYNC' }));
    expect(() => out.to('cpu')).toThrow(expect.objectContaining({ code: 'TORCHLITE_DEVICE_SYNC', message: "to('cpu') of a cuda:0 tensor would block the event loop until the device is done; use `await tensor.toAsync('cpu')`" }));
    expect((await out.toAsync('cpu')).device).toBe('cpu');
    expect((await out.read()).length).toBe(4);
    await cuda.synchronize();
  });

  it('two models train on one GPU at once', async () => {
    await using a = await loadPretrained(fixture('resnet_small.scripted.pt'), { device: 'cuda' });
    await using b = await loadPretrained(fixture('mobilenet_small.scripted.pt'), { device: 'cuda' });
    for (const m of [a, b]) m.train();
    const x = randn([8, 3, 16, 16]);
    const y = longs([0, 1, 2, 3, 4, 5, 6, 7]);
    const [ra, rb] = await Promise.all([
      a.trainStep(x, y, { loss: loss.crossEntropy(), optimizer: optim.sgd(a, { lr: 0.1 }) }),
      b.trainStep(x, y, { loss: loss.crossEntropy(), optimizer: optim.sgd(b, { lr: 0.1 }) }),
    ]);
    expect(ra.stepped && rb.stepped).toBe(true);
  });

  it('survives an out-of-memory step and keeps training at a smaller batch', async () => {
    await using model = await loadPretrained(fixture('resnet_small.scripted.pt'), { device: 'cuda' });
    model.train();
    const opt = optim.sgd(model, { lr: 0.01 });
    const big = randn([4096, 3, 512, 512], { device: 'cuda' }); // 12 GiB of input; activations are far larger
    const error = await model.trainStep(big, longs(Array.from({ length: 4096 }, () => 0)), { loss: loss.crossEntropy(), optimizer: opt }).catch((e: unknown) => e);
    big.dispose();
    expect(error).toBeInstanceOf(TorchError);
    expect((error as TorchError).code).toBe('TORCH_OOM');
    cuda.emptyCache();
    const ok = await model.trainStep(randn([8, 3, 16, 16]), longs([0, 1, 2, 3, 4, 5, 6, 7]), { loss: loss.crossEntropy(), optimizer: opt });
    expect(ok.stepped).toBe(true);
    const memory = cuda.memory('cuda', { resetPeak: true });
    expect(memory.reserved).toBeGreaterThanOrEqual(memory.allocated);
  });

  it('a zoo model loads onto the GPU from safetensors, matches its CPU twin, trains and saves weights', async () => {
    cuda.setOptions({ tf32: false });
    manualSeed(3);
    await using cpu = await loadPretrained('torchvision:mobilenet_v3_small', { weights: 'none' });
    const dir = (await import('node:fs')).mkdtempSync(join((await import('node:os')).tmpdir(), 'torchlite-zoo-cuda-'));
    await cpu.saveWeights(join(dir, 'w.safetensors'));
    await using gpu = await loadPretrained('torchvision:mobilenet_v3_small', { weights: join(dir, 'w.safetensors'), device: 'cuda' });
    expect(gpu.device).toBe('cuda:0');
    const x = randn([4, 3, 64, 64]);
    expect(relativeDiff(await values(await gpu.forward<Tensor>(x.to('cuda'))), await values(await cpu.forward<Tensor>(x)))).toBeLessThanOrEqual(1e-4);
    gpu.train();
    const { loss: l } = await gpu.trainStep(x, longs([1, 2, 3, 4]), { loss: loss.crossEntropy(), optimizer: optim.adamw(gpu, { lr: 1e-3 }) });
    expect(Number.isFinite(l)).toBe(true);
    await gpu.saveWeights(join(dir, 'trained.safetensors'));
    await using back = await loadPretrained('torchvision:mobilenet_v3_small', { weights: join(dir, 'trained.safetensors') });
    expect(back.parameters().length).toBe(cpu.parameters().length);
  });

  it('cuda:N past the last device is a clear error', async () => {
    const index = cuda.deviceCount();
    await expect(loadPretrained(fixture('mlp.scripted.pt'), { device: `cuda:${index}` })).rejects.toMatchObject({
      code: 'TORCHLITE_CUDA_UNAVAILABLE',
      message: `device 'cuda:${index}' requested but only ${index} CUDA device(s) are visible`,
    });
  });

  it.skipIf(!hasTorchvision)('fine-tunes traced and scripted torchvision models on the GPU; Python loads the results', async () => {
    const { dir, shapes } = exportTorchvision(['resnet18']);
    for (const kind of ['scripted', 'traced']) {
      await using model = await loadPretrained(join(dir, `resnet18.${kind}.pt`), { device: 'cuda' });
      model.channelsLast();
      cuda.setOptions({ cudnnBenchmark: true, tf32: true });
      model.resetClassifier(4);
      model.train();
      const opt = optim.adamw(model, { lr: 1e-3 });
      const x = tensor(readF32(join(dir, 'resnet18.input.f32')), shapes.resnet18.input);
      for (let i = 0; i < 3; i++) await model.trainStep(x, longs([1, 3]), { loss: loss.crossEntropy(), optimizer: opt, amp: 'bf16' });
      model.eval();
      const file = join(dir, `tuned.${kind}.pt`);
      await model.save(file);
      const ours = await values(await model.forward<Tensor>(x));
      const theirs = JSON.parse(python(`import sys, json, numpy, torch
m = torch.jit.load(sys.argv[1], map_location='cuda').eval()
x = torch.from_numpy(numpy.fromfile(sys.argv[2], dtype='<f4').reshape(2, 3, 64, 64)).cuda()
with torch.no_grad(): print(json.dumps(m(x).float().flatten().tolist()))`, [file, join(dir, 'resnet18.input.f32')]));
      expect(relativeDiff(ours, theirs)).toBeLessThanOrEqual(1e-3);
      cuda.setOptions({ cudnnBenchmark: false, tf32: false });
    }
  });

  it.skipIf(!native.ncclBuild)('NCCL, world size 1: collectives on CUDA tensors, and data-parallel steps (with and without overlap) equal plain ones', async () => {
    await using group = await distributed.init({ rank: 0, worldSize: 1, masterPort: await freePort(), backend: 'nccl' });
    expect(group.backend).toBe('cpu:gloo,cuda:nccl');
    const t = tensor(Float32Array.of(1, 2, 3)).to('cuda');
    await group.allReduce(t, 'avg');
    await group.broadcast(t, 0);
    expect(Array.from(await values(t))).toEqual([1, 2, 3]);
    const gathered = await group.allGather(t);
    expect(gathered.map((g) => g.device)).toEqual(['cuda:0']);
    expect((await group.allReduce(tensor(Float64Array.of(4)), 'sum')).toTypedArray()).toEqual(Float64Array.of(4)); // CPU: Gloo
    await group.barrier();

    const batches = Array.from({ length: 3 }, () => ({ input: randn([8, 12]), target: randn([8, 4]) }));
    const run = async (parallel: boolean, overlap = false) => {
      manualSeed(0);
      await using model = await loadPretrained(fixture('mlp.scripted.pt'), { device: 'cuda' });
      // With overlap, one bucket a parameter, sent from autograd's device thread during backward.
      if (parallel) distributed.dataParallel(model, { group, ...(overlap && { overlap, bucketCapMb: 1e-4 }) });
      model.train();
      const opt = optim.sgd(model, { lr: 0.1, momentum: 0.9 });
      const losses = [];
      for (const b of batches) losses.push((await model.trainStep(b.input, b.target, { loss: loss.mse(), optimizer: opt })).loss);
      const weights = [];
      for (const p of Object.values((await model.stateDict()))) weights.push(...(await values(p)));
      return { losses, weights };
    };
    const plain = await run(false);
    for (const parallel of [await run(true), await run(true, true)]) {
      expect(parallel.losses).toEqual(plain.losses);
      expect(maxAbsDiff(Float32Array.from(parallel.weights), Float32Array.from(plain.weights))).toBeLessThanOrEqual(1e-6);
    }
  });

  it('a layer replaced on the GPU lands on the GPU', async () => {
    await using model = await loadPretrained(fixture('resnet_small.scripted.pt'), { device: 'cuda' });
    model.replace('fc', nn.linear(16, 3));
    expect((await model.forward<Tensor>(randn([2, 3, 16, 16], { device: 'cuda' }))).device).toBe('cuda:0');
  });
});

describe.skipIf(!cuda.isAvailable())('CUDA: detection and LoRA', () => {
  it('a detector trains on the GPU from per-image targets on the CPU, and scores mAP', async () => {
    // Tensors made here: the device machine's node_modules carries no sharp to decode images.
    const image = (k: number) => {
      const pixels = new Float32Array(3 * 96 * 96).fill(0.1);
      for (let c = 0; c < 3; c++) for (let yy = 10 + k * 5; yy < 50 + k * 5; yy++) pixels.fill(0.9, c * 9216 + yy * 96 + 20, c * 9216 + yy * 96 + 60);
      return tensor(pixels, [3, 96, 96]);
    };
    const batches = [0, 1].map((b) => ({
      input: [tensorList([image(2 * b), image(2 * b + 1)])],
      target: [2 * b, 2 * b + 1].map((k) => ({ boxes: tensor([20, 10 + k * 5, 60, 50 + k * 5], [1, 4]), labels: longs([1]) })),
    }));
    await using model = await loadPretrained(join(__dirname, '..', '..', 'models', 'tinydet.pt'), { device: 'cuda' });
    const optimizer = optim.adamw(model, { lr: 1e-3 });
    model.train();
    for (let epoch = 0; epoch < 3; epoch++)
      for (const batch of batches) {
        const r = await model.trainStep(batch.input, batch.target, { loss: loss.fromModel(), optimizer });
        expect(Object.keys(r.losses!).sort()).toEqual(['loss_heatmap', 'loss_offset', 'loss_size']);
      }
    model.eval();
    const metrics = await model.evaluate(batches, { metrics: ['map'] });
    expect(metrics.map).toBeGreaterThanOrEqual(0);
  });

  it('LoRA on the GPU trains as on the CPU, merges and unmerges exactly, and serves per-request adapters', async () => {
    const encoder = join(__dirname, '..', '..', 'models', 'fortunes-encoder.pt');
    const ids = tensor(BigInt64Array.from({ length: 4 * 12 }, (_, i) => BigInt(1 + ((i * 37) % 900))), [4, 12]);
    const mask = tensor(new BigInt64Array(48).fill(1n), [4, 12]);
    const y = longs([0, 1, 2, 3]);
    const losses: number[][] = [];
    for (const device of ['cpu', 'cuda'] as const) {
      await using model = await loadPretrained(encoder, { device });
      manualSeed(3);
      lora.apply(model, { targets: /attention\.(query|value)$/, r: 8, alpha: 16 });
      model.eval(); // no dropout: the devices' generators differ
      const optimizer = optim.adamw(model, { lr: 1e-2 });
      const run = [];
      for (let i = 0; i < 3; i++) run.push((await model.trainStep([ids, mask], y, { loss: loss.crossEntropy(), optimizer })).loss);
      losses.push(run);
      if (device === 'cuda') {
        const name = 'layers.0.attention.query.base_layer.weight';
        const before = await values((await model.stateDict())[name]);
        await lora.merge(model);
        await lora.unmerge(model);
        expect(Array.from(await values((await model.stateDict())[name]))).toEqual(Array.from(before));
        const plain = await values((await model.predict([ids, mask], { adapter: 'default' })).probabilities);
        expect(plain.length).toBe(4 * model.parameters('classifier.weight')[0].shape[0]);
      }
    }
    expect(relativeDiff(losses[1], losses[0])).toBeLessThan(1e-4);
  });
});
