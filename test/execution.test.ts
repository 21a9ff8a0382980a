// The execution model: call order per model, the busy rule, lanes and priorities,
// snapshots, worker threads, error classification and lifecycle fixes.
import { spawnSync } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Worker } from 'node:worker_threads';

import { afterEach, describe, expect, it } from 'vitest';

import * as api from '../src';
import { checkpoint, data, findLr, fineTune, fit, loadPretrained, loss, manualSeed, type Model, nn, optim, randn, runtime, type Tensor, tensor, TorchError } from '../src';
import { Optimizer } from '../src/optim';
import { fixture, hasTorch, PYTHON, root } from './helpers';

const ce = loss.crossEntropy();
const labels = (n: number, classes: number) => tensor(BigInt64Array.from({ length: n }, (_, i) => BigInt(i % classes)));
const busy = expect.objectContaining({ code: 'TORCHLITE_MODEL_BUSY' });

async function values(t: Tensor): Promise<number[]> {
  return Array.from((await t.read()) as Float32Array);
}

/** Resolves each promise's index in settling order. */
function settleOrder(promises: Promise<unknown>[]): Promise<number[]> {
  const order: number[] = [];
  return Promise.all(promises.map((p, i) => p.then(() => order.push(i)))).then(() => order);
}

afterEach(() => {
  runtime.setInferenceThreads(1);
});

describe('call order', () => {
  it('queues forward, train/eval and freeze in call order and refuses replace while work is pending', async () => {
    const m = await loadPretrained(fixture('mlp.scripted.pt'));
    const x = randn([4, 12]);
    const before = await values(await m.forward<Tensor>(x));
    const pending = m.forward<Tensor>(x);
    expect(() => m.replace('net.4', nn.linear(16, 3))).toThrow(busy);
    expect(() => m.replace('net.4', nn.linear(16, 3))).toThrow(
      'replace() cannot run while the model has 1 operation pending; await them first (e.g. `await model.idle()`)',
    );
    expect(await values(await pending)).toEqual(before);
    await m.idle();
    m.replace('net.4', nn.linear(16, 5));
    expect((await m.forward<Tensor>(x)).shape).toEqual([4, 5]);

    // A step queued before freeze() trains everything; one queued after trains nothing frozen.
    m.train();
    const opt = optim.sgd(m, { lr: 0.1 });
    const w0 = await values((await m.stateDict())['net.0.weight']);
    const first = m.trainStep(x, labels(4, 5), { loss: ce, optimizer: opt });
    const frozen = m.freeze('net.0');
    expect(frozen.frozen).toBe(32 * 12 + 32);
    expect(m.parameters('net.0.weight')[0].requiresGrad).toBe(false);
    expect(m.modules().find((mod) => mod.path === 'net.0')?.trainable).toBe(0);
    await first;
    await m.idle(); // the freeze queued behind the step
    const w1 = await values((await m.stateDict())['net.0.weight']);
    expect(w1).not.toEqual(w0);
    await m.trainStep(x, labels(4, 5), { loss: ce, optimizer: opt });
    expect(await values((await m.stateDict())['net.0.weight'])).toEqual(w1);

    // eval() after a queued forward lands after it; training shows the new mode at once.
    const queued = m.forward(x);
    m.eval();
    expect(m.training).toBe(false);
    await queued;
    expect(m.pending).toBe(1); // the eval() queued behind it
    await m.idle();
    expect(m.pending).toBe(0);
    m.dispose();
  });

  it('refuses synchronous state changes that would overtake pending work, with a TypeError that keeps its code', async () => {
    const m = await loadPretrained(fixture('mlp.scripted.pt'));
    const other = await loadPretrained(fixture('mlp.scripted.pt'));
    const opt = optim.adam(m, { lr: 1e-3 });
    m.train();
    const step = m.trainStep(randn([4, 12]), labels(4, 4), { loss: ce, optimizer: opt });
    expect(() => m.resetClassifier(3)).toThrow(busy);
    expect(() => m.resetClassifier(3)).toThrow(TypeError);
    expect(() => opt.stateDict()).toThrow(busy);
    expect(() => opt.addParamGroup({ params: 'net.4', lr: 1 })).toThrow(busy);
    expect(() => m.memoryFormat).toThrow(busy);
    // A busy model cannot be copied into another either.
    expect(() => other.replace('net.4', m)).toThrow(busy);
    await step;
    expect(() => opt.stateDict()).not.toThrow();
    m.dispose();
    other.dispose();
  });

  it('takes stateDict() as a copy on the queue: it sees the steps called before it and none called after', async () => {
    await using m = await loadPretrained(fixture('mlp.scripted.pt'));
    const opt = optim.sgd(m, { lr: 0.5 });
    m.train();
    const x = randn([4, 12]);
    const before = await values((await m.stateDict())['net.0.weight']);
    const first = m.trainStep(x, labels(4, 4), { loss: ce, optimizer: opt });
    const snapshot = m.stateDict(); // called between the two steps
    const second = m.trainStep(x, labels(4, 4), { loss: ce, optimizer: opt });
    await Promise.all([first, second]);
    const taken = (await snapshot)['net.0.weight'];
    const now = (await m.stateDict())['net.0.weight'];
    expect(await values(taken)).not.toEqual(before); // the first step is in it
    expect(await values(taken)).not.toEqual(await values(now)); // the second is not
    await m.trainStep(x, labels(4, 4), { loss: ce, optimizer: opt });
    expect(await values(now)).not.toEqual(await values((await m.stateDict())['net.0.weight'])); // a copy, not a view
    // loadStateDict queues too: it lands after the step called before it, and is what a read after it sees.
    const stepBefore = m.trainStep(x, labels(4, 4), { loss: ce, optimizer: opt });
    const restored = m.loadStateDict({ 'net.0.weight': taken }, { strict: false });
    await Promise.all([stepBefore, restored]);
    expect(await values((await m.stateDict())['net.0.weight'])).toEqual(await values(taken));
    await expect(m.loadStateDict({ 'net.0.weight': randn([2, 2]) }, { strict: false })).rejects.toMatchObject({
      code: 'TORCHLITE_BAD_STATE',
      message: "'net.0.weight' has shape [2, 2] but the model's has [32, 12]",
    });
  });

  it('refuses to put a model inside itself, directly or in a sequential, instead of hanging', async () => {
    const m = await loadPretrained(fixture('mlp.scripted.pt'));
    const inside = expect.objectContaining({ code: 'TORCHLITE_BAD_ARGUMENT', message: 'A model cannot be put inside itself; load a second copy to use it as a module' });
    expect(() => m.replace('net.4', m)).toThrow(inside);
    expect(() => m.replace('net.4', nn.sequential(nn.identity(), m))).toThrow(inside);
    await expect(m.forward(randn([2, 12]))).resolves.toBeDefined();
    m.dispose();
  });

  it('applies group options as they were when each step was called', async () => {
    manualSeed(0);
    const a = await loadPretrained(fixture('mlp.scripted.pt'));
    const b = await loadPretrained(fixture('mlp.scripted.pt'));
    const x = randn([4, 12]);
    const y = labels(4, 4);
    for (const m of [a, b]) m.train();
    const optA = optim.sgd(a, { lr: 0.5 });
    const optB = optim.sgd(b, { lr: 0.5 });
    // a: the lr changes after the first step was called but before it ran.
    const first = a.trainStep(x, y, { loss: ce, optimizer: optA });
    optA.paramGroups[0].lr = 0.01;
    await first;
    await b.trainStep(x, y, { loss: ce, optimizer: optB });
    expect(await values((await a.stateDict())['net.0.weight'])).toEqual(await values((await b.stateDict())['net.0.weight']));
    a.dispose();
    b.dispose();
  });
});

describe('lanes and priorities', () => {
  it('lets inference overtake queued training, on the shared lane and on its own', async () => {
    for (const threads of [0, 1]) {
      runtime.setInferenceThreads(threads);
      const trainer = await loadPretrained(fixture('resnet_small.scripted.pt'));
      const second = await loadPretrained(fixture('resnet_small.scripted.pt'));
      const server = await loadPretrained(fixture('mlp.scripted.pt'));
      for (const m of [trainer, second]) m.train();
      const x = randn([8, 3, 32, 32]);
      const y = labels(8, 10);
      const batches = Array.from({ length: 6 }, () => ({ input: x, target: y }));
      const long = trainer.trainSteps(batches, { loss: ce, optimizer: optim.sgd(trainer, { lr: 0.01 }) });
      const queuedTraining = second.trainStep(x, y, { loss: ce, optimizer: optim.sgd(second, { lr: 0.01 }) });
      const inference = server.forward(randn([1, 12]));
      const order = await settleOrder([long, queuedTraining, inference]);
      // The prediction neither waits for the multi-step job nor for the training queued before it.
      expect(order[0]).toBe(2);
      expect(order.slice(1)).toEqual([0, 1]);
      for (const m of [trainer, second, server]) m.dispose();
    }
  });

  it('reports queued and running jobs per lane', async () => {
    runtime.setInferenceThreads(0);
    const m = await loadPretrained(fixture('resnet_small.scripted.pt'));
    const other = await loadPretrained(fixture('resnet_small.scripted.pt'));
    m.train();
    other.train();
    const x = randn([8, 3, 32, 32]);
    const batches = Array.from({ length: 4 }, () => ({ input: x, target: labels(8, 10) }));
    const cpuLane = () => runtime.queue().find((lane) => lane.lane === 'cpu')!;
    const load = (lane: api.LaneState) => lane.queuedTraining + (lane.running ? 1 : 0);
    const before = load(cpuLane());
    const running = m.trainSteps(batches, { loss: ce, optimizer: optim.sgd(m, { lr: 0.01 }) });
    const waiting = other.trainStep(x, labels(8, 10), { loss: ce, optimizer: optim.sgd(other, { lr: 0.01 }) });
    await new Promise((resolve) => setImmediate(resolve)); // the jobs reach the lane from a microtask
    expect(before).toBe(0);
    expect(load(cpuLane())).toBe(2);
    await Promise.all([running, waiting]);
    const after = cpuLane();
    expect(after).toMatchObject({ lane: 'cpu', queuedInference: 0, queuedTraining: 0, running: false });
    expect(after.completed).toBeGreaterThanOrEqual(2);
    m.dispose();
    other.dispose();
  });

  it('answers the synchronous getters from a snapshot while a long job runs', async () => {
    const m = await loadPretrained(fixture('resnet_small.scripted.pt'));
    m.train();
    const x = randn([16, 3, 32, 32]);
    const batches = Array.from({ length: 8 }, () => ({ input: x, target: labels(16, 10) }));
    const job = m.trainSteps(batches, { loss: ce, optimizer: optim.sgd(m, { lr: 0.01 }) });
    const started = performance.now();
    for (let i = 0; i < 50; i++) {
      expect(m.training).toBe(true);
      expect(m.device).toBe('cpu');
      expect(m.isTraced).toBe(false);
      expect(m.bnPolicy).toBe('frozen-eval');
      expect(m.parameters().length).toBeGreaterThan(0);
      expect(m.modules()[0].path).toBe('');
      expect(m.buffers().length).toBeGreaterThan(0);
      expect(m.summary()).toContain('Total params');
    }
    const elapsed = performance.now() - started;
    expect(m.pending).toBe(1);
    await job;
    // 50 rounds of every getter, measured against a job of 8 steps that was still running.
    expect(elapsed).toBeLessThan(500);
    m.dispose();
  });

  it('reads CPU tensors off the event loop with read()', async () => {
    const t = tensor([1, 2, 3]);
    expect(Array.from((await t.read()) as Float32Array)).toEqual([1, 2, 3]);
    t.dispose();
    await expect(t.read()).rejects.toThrow(expect.objectContaining({ code: 'TORCHLITE_DISPOSED' }));
  });
});

describe('worker threads', () => {
  it('trains two models in two workers to the same losses as the main thread', async () => {
    const script = `
      const { parentPort, workerData } = require('node:worker_threads');
      const t = require(workerData.lib);
      (async () => {
        const m = await t.loadPretrained(workerData.model);
        m.train();
        const x = t.tensor(Float32Array.from({ length: 48 }, (_, i) => Math.sin(i)), [4, 12]);
        const y = t.tensor(BigInt64Array.from([0n, 1n, 2n, 3n]));
        const opt = t.optim.sgd(m, { lr: 0.1, momentum: 0.9 });
        const losses = [];
        for (let i = 0; i < 30; i++) losses.push((await m.trainStep(x, y, { loss: t.loss.crossEntropy(), optimizer: opt })).loss);
        parentPort.postMessage(losses);
      })();`;
    const run = () =>
      new Promise<number[]>((resolve, reject) => {
        const worker = new Worker(script, { eval: true, workerData: { lib: join(root, 'lib', 'index.js'), model: fixture('mlp.scripted.pt') } });
        worker.once('message', resolve);
        worker.once('error', reject);
      });
    const [a, b] = await Promise.all([run(), run()]);
    const m = await loadPretrained(fixture('mlp.scripted.pt'));
    m.train();
    const x = tensor(Float32Array.from({ length: 48 }, (_, i) => Math.sin(i)), [4, 12]);
    const opt = optim.sgd(m, { lr: 0.1, momentum: 0.9 });
    const losses: number[] = [];
    for (let i = 0; i < 30; i++) losses.push((await m.trainStep(x, labels(4, 4), { loss: ce, optimizer: opt })).loss);
    expect(a).toEqual(losses);
    expect(b).toEqual(losses);
    expect(losses[29]).toBeLessThan(losses[0]);
    m.dispose();
  });
});

describe('the process-wide generator', () => {
  const draw = async () => Array.from((await randn([4]).read()) as Float32Array);
  const setup = async () => {
    const m = await loadPretrained(fixture('mlp.scripted.pt'));
    const train = data.loader(data.tensorDataset(randn([16, 12]), labels(16, 4)), { batchSize: 8, shuffle: true, seed: 0 });
    return { m, train };
  };

  it('findLr puts it back unless told not to touch it', async () => {
    const { m, train } = await setup();
    manualSeed(7);
    const untouched = await draw();
    manualSeed(7);
    await findLr(m, train, { steps: 4 });
    expect(await draw()).toEqual(untouched);
    manualSeed(7);
    const other = randn([1]); // work elsewhere in the process draws meanwhile...
    await findLr(m, train, { steps: 4, restoreRng: false });
    const after = await draw(); // ...and is not rewound
    manualSeed(7);
    randn([1]);
    expect(after).toEqual(await draw());
    other.dispose();
    m.dispose();
  });

  it('fit restores it from a checkpoint unless resumeRng is false', async () => {
    const { m, train } = await setup();
    const dir = mkdtempSync(join(tmpdir(), 'torchlite-rng-'));
    const opt = () => optim.sgd(m, { lr: 0.01 });
    await fit(m, { train, epochs: 1, optimizer: opt(), callbacks: [checkpoint({ dir, saveBest: false })] });
    const file = join(dir, 'epoch-1.ckpt');
    manualSeed(11);
    const expected = await draw();
    manualSeed(11);
    await fit(m, { train, epochs: 1, optimizer: opt(), resume: file, resumeRng: false });
    expect(await draw()).toEqual(expected);
    manualSeed(11);
    await fit(m, { train, epochs: 1, optimizer: opt(), resume: file });
    expect(await draw()).not.toEqual(expected);
    m.dispose();
  });
});

describe('error classification', () => {
  it.runIf(hasTorch)('codes TorchScript exceptions by their type, not their text', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'torchlite-raise-'));
    // From a file: torch.jit.script needs the class's source.
    writeFileSync(
      join(dir, 'make.py'),
      `import sys, torch
class Raises(torch.nn.Module):
    def forward(self, x: torch.Tensor, kind: int) -> torch.Tensor:
        if kind == 0:
            raise ValueError("bad value")
        if kind == 1:
            raise IndexError("bad index")
        if kind == 2:
            raise NotImplementedError("not yet")
        if kind == 3:
            raise TypeError("bad type")
        return x[torch.tensor([5])]
torch.jit.script(Raises()).save(sys.argv[1])
`,
    );
    expect(spawnSync(PYTHON, [join(dir, 'make.py'), join(dir, 'raises.pt')]).status).toBe(0);
    const m = await loadPretrained(join(dir, 'raises.pt'));
    const x = randn([3]);
    const codes = [];
    for (const kind of [0, 1, 2, 3, 4]) codes.push(await m.forward(x, kind).catch((e: TorchError) => [e.code, e.message]));
    expect(codes).toEqual([
      ['TORCH_VALUE', 'bad value'],
      ['TORCH_INDEX', 'bad index'],
      ['TORCH_NOT_IMPLEMENTED', 'not yet'],
      ['TORCH_ARGUMENT', 'bad type'],
      ['TORCH_INDEX', 'index 5 is out of bounds for dimension 0 with size 3'],
    ]);
    m.dispose();
  });

  it('passes errors thrown by a batch iterator through unchanged, codes and all', async () => {
    const m = await loadPretrained(fixture('mlp.scripted.pt'));
    const failure = Object.assign(new Error('ENOENT: no such file'), { code: 'ENOENT' });
    async function* batches() {
      yield { input: randn([2, 12]), target: labels(2, 4) };
      throw failure;
    }
    const error = await m.evaluate(batches(), { loss: ce }).catch((e: unknown) => e);
    expect(error).toBe(failure);
    expect(error).not.toBeInstanceOf(TorchError);
    m.dispose();
  });

  it('checks targets on the device with readLoss: false and reports them at the next read', async () => {
    const m = await loadPretrained(fixture('mlp.scripted.pt'));
    m.train();
    const opt = optim.sgd(m, { lr: 0.1 });
    const x = randn([4, 12]);
    const bad = tensor(BigInt64Array.from([0n, 7n, 1n, 9n]));
    const r = await m.trainStep(x, bad, { loss: ce, optimizer: opt, readLoss: false });
    expect(r.loss).toBeNaN();
    await expect(m.trainStep(x, labels(4, 4), { loss: ce, optimizer: opt })).rejects.toThrow(
      expect.objectContaining({
        code: 'TORCHLITE_BAD_TARGET',
        message: '2 class indices were out of range in the steps since the loss was last read (readLoss: false checks them on the device and ignores them); fix the labels',
      }),
    );
    // Read and cleared: the next step is fine.
    await expect(m.trainStep(x, labels(4, 4), { loss: ce, optimizer: opt })).resolves.toMatchObject({ stepped: true });
    m.dispose();
  });
});

describe('lifecycle', () => {
  it('disposes each fineTune stage optimizer', async () => {
    const m = await loadPretrained(join(root, 'models', 'fashion-cnn.pt'));
    const train = data.loader(data.tensorDataset(randn([8, 1, 28, 28]), labels(8, 3)), { batchSize: 8 });
    const original = Optimizer.prototype.dispose;
    let disposed = 0;
    Optimizer.prototype.dispose = function (this: Optimizer) {
      disposed += 1;
      original.call(this);
    };
    try {
      await fineTune(m, { train, numClasses: 3, freezeEpochs: 1, epochs: 2, lr: 0.01, unfreeze: ['classifier', 'all'] }); // a given lr: no range test and its optimizer
    } finally {
      Optimizer.prototype.dispose = original;
    }
    expect(disposed).toBe(3);
    m.dispose();
  });

  it('leaves the optimizer untouched when loadStateDict gets a bad dict', async () => {
    const m = await loadPretrained(fixture('mlp.scripted.pt'));
    m.train();
    const opt = optim.adam(m, { lr: 0.01 });
    for (let i = 0; i < 2; i++) await m.trainStep(randn([4, 12]), labels(4, 4), { loss: ce, optimizer: opt });
    const good = opt.stateDict();
    const names = Object.keys(good.state);
    const last = names[names.length - 1];
    const bad = { ...good, groups: good.groups.map((g) => ({ ...g, lr: 0.5 })), state: { ...good.state, [last]: { ...good.state[last], exp_avg: randn([99]) } } };
    expect(() => opt.loadStateDict(bad)).toThrow(expect.objectContaining({ code: 'TORCHLITE_BAD_STATE' }));
    const after = opt.stateDict();
    expect(after.groups[0].lr).toBe(0.01);
    expect(await values(after.state[names[0]].exp_avg as Tensor)).toEqual(await values(good.state[names[0]].exp_avg as Tensor));
    expect(after.state[names[0]].step).toBe(2);
    // A good dict restores every group option, betas included.
    opt.loadStateDict({ ...good, groups: good.groups.map((g) => ({ ...g, lr: 0.02, beta1: 0.8 })) });
    expect(opt.paramGroups[0].lr).toBe(0.02);
    expect(opt.paramGroups[0].betas).toEqual([0.8, 0.999]);
    m.dispose();
  });

  it('rejects flush(0)', async () => {
    const m = await loadPretrained(fixture('mlp.scripted.pt'));
    const opt = optim.sgd(m, { lr: 0.1 });
    await expect(opt.flush(0)).rejects.toThrow(new RangeError('Expected a positive integer for `accumulate` but received 0'));
    m.dispose();
  });

  it('keeps test hooks off the public surface', async () => {
    const m: Model = await loadPretrained(fixture('mlp.scripted.pt'));
    expect('probeGradients' in m).toBe(false);
    expect(Object.keys(api)).not.toContain('externalMemory');
    expect(Object.keys(api)).not.toContain('probeGradients');
    m.dispose();
  });
});
