import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { describe, expect, it } from 'vitest';

import { checkpoint, data, earlyStopping, findLr, fineTune, fit, type FitEvent, jsonlLogger, loadPretrained, manualSeed, type Model, optim, randn, sched } from '../src';
import { loadCheckpoint } from '../src/checkpoint';
import { fixture, root } from './helpers';

const SHIPPED = join(root, 'models', 'fashion-cnn.pt');
const MEAN = 0.286;
const STD = 0.353;

async function fashion(split: 'train' | 't10k') {
  const ds = await data.idx(fixture(`fashion-5to9-${split}-images.idx.gz`), fixture(`fashion-5to9-${split}-labels.idx.gz`), { mean: MEAN, std: STD });
  return data.subset(ds, { classes: [5, 6, 7, 8, 9] }); // targets 0..4
}

async function setup(seed = 0) {
  manualSeed(seed);
  const model = await loadPretrained(SHIPPED);
  model.resetClassifier(5, { dropout: 0.3 });
  const optimizer = optim.adamw(model, { lr: 2e-3 });
  const train = data.loader(await fashion('train'), { batchSize: 50, shuffle: true, seed: 1 });
  const val = data.loader(await fashion('t10k'), { batchSize: 100 });
  const scheduler = sched.cosine(optimizer, { totalSteps: 4 * train.length });
  return { model, optimizer, train, val, scheduler };
}

const weightsOf = async (model: Model) => Object.fromEntries(Object.entries(await model.stateDict()).map(([k, t]) => [k, Array.from(t.toTypedArray() as Float32Array)]));

describe('fit', () => {
  it('trains, evaluates each epoch, and streams typed events', async () => {
    const { model, optimizer, train, val, scheduler } = await setup();
    const events: FitEvent[] = [];
    for await (const event of fit(model, { train, val, epochs: 2, optimizer, scheduler, metrics: ['accuracy', 'f1'] })) events.push(event);
    const ends = events.filter((e) => e.type === 'epochEnd');
    expect(ends).toHaveLength(2);
    expect(events.filter((e) => e.type === 'batchEnd')).toHaveLength(2 * train.length);
    expect(events[0]).toEqual({ type: 'epochStart', epoch: 0, batches: 10, stage: 0 });
    const last = ends[1].type === 'epochEnd' ? ends[1].record : undefined;
    expect(last?.val?.accuracy).toBeGreaterThan(0.6); // chance is 0.2
    expect(last?.trainAccuracy).toBeGreaterThan(0.5);
    expect(last?.lr[0]).toBeLessThan(2e-3);
    model.dispose();
  });

  it('stops cleanly between steps on abort', async () => {
    const { model, optimizer, train } = await setup();
    const controller = new AbortController();
    const events: FitEvent[] = [];
    for await (const event of fit(model, { train, epochs: 3, optimizer, signal: controller.signal })) {
      events.push(event);
      if (event.type === 'batchEnd' && event.batch === 2) controller.abort();
    }
    expect(events.filter((e) => e.type === 'batchEnd')).toHaveLength(3);
    expect(events.at(-1)).toEqual({ type: 'stopped', reason: 'aborted' });
    model.dispose();
  });

  it('early stopping ends the run and the JSONL logger records each epoch', async () => {
    const { model, train, val } = await setup();
    const optimizer = optim.sgd(model, { lr: 0 }); // nothing improves
    const log = join(mkdtempSync(join(tmpdir(), 'torchlite-log-')), 'run.jsonl');
    const history = await fit(model, { train, val, epochs: 5, optimizer, callbacks: [earlyStopping({ monitor: 'val.loss', patience: 1 }), jsonlLogger(log)] });
    expect(history).toHaveLength(3);
    expect(readFileSync(log, 'utf8').trim().split('\n').map((l) => JSON.parse(l).epoch)).toEqual([0, 1, 2]);
    model.dispose();
  });

  it('resumes bit-exactly: 4 epochs straight equal 2 + resume + 2', async () => {
    const straight = await setup();
    const { model: _m, ...run } = straight;
    await fit(straight.model, { ...run, epochs: 4 });
    const expected = await weightsOf(straight.model);
    straight.model.dispose();

    const dir = mkdtempSync(join(tmpdir(), 'torchlite-ckpt-'));
    const first = await setup();
    const { model: _f, ...firstRun } = first;
    await fit(first.model, { ...firstRun, epochs: 2, callbacks: [checkpoint({ dir, keepLast: 1 })] });
    first.model.dispose();
    expect(existsSync(join(dir, 'epoch-2.ckpt'))).toBe(true);
    expect(existsSync(join(dir, 'epoch-1.ckpt'))).toBe(false);
    expect(existsSync(join(dir, 'best.ckpt'))).toBe(true);

    const second = await setup(999); // another seed: everything must come from the checkpoint
    const { model: _s, ...secondRun } = second;
    const history = await fit(second.model, { ...secondRun, epochs: 4, resume: join(dir, 'epoch-2.ckpt') });
    expect(history.map((r) => r.epoch)).toEqual([0, 1, 2, 3]);
    expect(await weightsOf(second.model)).toEqual(expected);
    second.model.dispose();
  });

  it('a checkpoint write killed midway leaves the previous checkpoint loadable', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'torchlite-kill-'));
    const path = join(dir, 'run.ckpt');
    const script = join(dir, 'writer.cjs');
    writeFileSync(
      script,
      `const t = require(${JSON.stringify(join(root, 'lib'))});
       const { saveCheckpoint } = require(${JSON.stringify(join(root, 'lib', 'checkpoint.js'))});
       (async () => {
         const model = await t.loadPretrained(${JSON.stringify(fixture('resnet_small.scripted.pt'))});
         const optimizer = t.optim.sgd(model, { lr: 0.1, momentum: 0.9 });
         const position = { epoch: 1, step: 1, stage: 0, history: [], callbacks: {} };
         await saveCheckpoint(${JSON.stringify(path)}, { model, optimizer, position });
         process.stdout.write('first\\n');
         for (let i = 2; ; i++) { position.epoch = i; await saveCheckpoint(${JSON.stringify(path)}, { model, optimizer, position }); }
       })();`,
    );
    const child = spawn('node', [script], { stdio: ['ignore', 'pipe', 'inherit'] });
    await new Promise<void>((resolve) => child.stdout.once('data', () => resolve()));
    await new Promise((r) => setTimeout(r, 150));
    child.kill('SIGKILL');
    await new Promise((r) => child.once('exit', r));
    await using model = await loadPretrained(fixture('resnet_small.scripted.pt'));
    const position = await loadCheckpoint(path, { model, optimizer: optim.sgd(model, { lr: 0.1, momentum: 0.9 }) });
    expect(position.epoch).toBeGreaterThanOrEqual(1);
  });

  it('validates its options', async () => {
    const { model, optimizer, train } = await setup();
    expect(() => fit(model, { train: [] as never, epochs: 1, optimizer })).toThrow(new TypeError('Expected a Loader from `data.loader` for `options.train` but received an array of length 0'));
    expect(() => fit(model, { train, epochs: 0, optimizer })).toThrow(new RangeError('Expected a positive integer for `options.epochs` but received 0'));
    await expect(fit(model, { train, epochs: 1, optimizer, resume: fixture('mlp.scripted.pt') })).rejects.toMatchObject({ code: 'TORCHLITE_BAD_STATE' });
    model.dispose();
  });
});

/** The staged recipe both fineTune tests run: head for 1 epoch, then features.8, then all. */
async function stagedRecipe() {
  return {
    train: data.loader(await fashion('train'), { batchSize: 50, shuffle: true }),
    numClasses: 5,
    freezeEpochs: 1,
    epochs: 2,
    unfreeze: ['features.8', 'all'],
    lr: 1e-2,
    lrMult: 10,
  };
}

describe('fineTune', () => {
  it('trains the head frozen, then unfreezes in stages with discriminative lrs', async () => {
    manualSeed(0);
    await using model = await loadPretrained(SHIPPED);
    const val = data.loader(await fashion('t10k'), { batchSize: 100 });
    const frozenStats: number[][] = [];
    const history = await fineTune(model, {
      ...(await stagedRecipe()),
      val,
      callbacks: [{ name: 'probe', onEpochEnd: (ctx) => void frozenStats.push(ctx.optimizer.paramGroups.map((g) => g.lr)) }],
    });
    expect(history.map((r) => [r.epoch, r.stage])).toEqual([[0, 0], [1, 1], [2, 2]]);
    expect(frozenStats[0]).toHaveLength(1); // head only
    expect(frozenStats[2].length).toBeGreaterThan(1); // one group per top-level block
    expect(frozenStats[2][0]).toBeLessThan(frozenStats[2].at(-1)!); // earlier blocks train slower
    expect(history.at(-1)!.val!.accuracy).toBeGreaterThan(0.5); // chance is 0.2; 30 steps on 500 images
    expect(model.parameters().every((p) => p.requiresGrad)).toBe(true);
  });
});

describe('fineTune resume', () => {
  it('an interrupted staged run resumed from its checkpoint ends with the same weights', async () => {
    const options = stagedRecipe;
    // The uninterrupted run writes checkpoints too: a checkpoint callback rules out the
    // feature cache (whose frozen copy gives the head-only stage float noise), so both runs
    // train the same way and must end bit for bit alike.
    manualSeed(0);
    const straight = await loadPretrained(SHIPPED);
    await fineTune(straight, { ...(await options()), callbacks: [checkpoint({ dir: mkdtempSync(join(tmpdir(), 'torchlite-ft-')) })] });
    const expected = await weightsOf(straight);
    straight.dispose();

    const dir = mkdtempSync(join(tmpdir(), 'torchlite-ft-'));
    const controller = new AbortController();
    manualSeed(0);
    const first = await loadPretrained(SHIPPED);
    const stopAfterStage1 = { name: 'stop', onEpochEnd: (_ctx: unknown, r: { stage: number }) => void (r.stage === 1 && controller.abort()) };
    const partial = await fineTune(first, { ...(await options()), callbacks: [checkpoint({ dir }), stopAfterStage1], signal: controller.signal });
    first.dispose();
    expect(partial.map((r) => r.stage)).toEqual([0, 1]);
    expect(existsSync(join(dir, 'stage-1-epoch-1.ckpt'))).toBe(true);

    manualSeed(42);
    const second = await loadPretrained(SHIPPED);
    const rest = await fineTune(second, { ...(await options()), resume: join(dir, 'stage-1-epoch-1.ckpt') });
    expect(rest.map((r) => r.stage)).toEqual([1, 2]);
    expect(await weightsOf(second)).toEqual(expected);
    second.dispose();
  });
});

describe('findLr', () => {
  it('sweeps the lr, suggests one inside the swept range, plots, and restores the model', async () => {
    const { model, train } = await setup();
    const before = await weightsOf(model);
    const result = await findLr(model, train, { steps: 40, startLr: 1e-5, endLr: 1 });
    expect(result.lrs.length).toBeGreaterThan(10);
    expect(result.lrs[0]).toBeCloseTo(1e-5, 12);
    expect(result.suggestion).toBeGreaterThan(1e-5);
    expect(result.suggestion).toBeLessThan(1);
    expect(await weightsOf(model)).toEqual(before);
    const svg = join(mkdtempSync(join(tmpdir(), 'torchlite-lr-')), 'lr.svg');
    await result.plot(svg);
    expect(readFileSync(svg, 'utf8')).toContain('<svg');
    await expect(findLr(model, train, { startLr: 1, endLr: 0.1 })).rejects.toThrow(RangeError);
    model.dispose();
  });
});

describe('fit on in-memory data (many steps per native job)', () => {
  manualSeed(3);
  const ds = data.tensorDataset(randn([200, 12]), Int32Array.from({ length: 200 }, (_, i) => i % 4), { inputShape: [12] });

  async function run(dataset: typeof ds, extra: Partial<Parameters<typeof fit>[1]> = {}, fromPatterns = false) {
    manualSeed(1);
    const model = await loadPretrained(fixture('mlp.scripted.pt'));
    // From patterns, an optimizer binds at its first step, inside the first window.
    const optimizer = fromPatterns ? optim.adamw([{ params: /^net\.[24]\./ }], { lr: 0.01 }) : optim.adamw(model, { lr: 0.01 });
    const train = data.loader(dataset, { batchSize: 8, shuffle: true, seed: 4 });
    const scheduler = sched.oneCycle(optimizer, { maxLr: 0.05, totalSteps: 3 * train.length });
    const events: number[][] = [];
    const log = { name: 'log', observesBatches: true, onBatchEnd: (_: unknown, e: { step: number; loss: number; lr: number }) => void events.push([e.step, e.loss, e.lr]) };
    const history = await fit(model, { train, val: data.loader(ds, { batchSize: 50 }), epochs: 3, optimizer, scheduler, callbacks: [log], ...extra });
    const result = { history: history.map((r) => [r.trainLoss, r.val, r.lr]), weights: await weightsOf(model), events };
    model.dispose();
    return result;
  }

  it('equals the one-step-per-job loop bit for bit, schedule and per-step events included', async () => {
    const windowed = await run(ds);
    const stepwise = await run({ ...ds }); // a spread dataset batches through `get`, one step per job
    expect(windowed.events).toHaveLength(75);
    expect(windowed).toEqual(stepwise);
    expect(await run(ds, {}, true)).toEqual(await run({ ...ds }, {}, true));
  });

  it('stops within one window of an abort', async () => {
    const controller = new AbortController();
    const stopper = { name: 'stopper', observesBatches: true, onBatchEnd: () => controller.abort() };
    manualSeed(1);
    const model = await loadPretrained(fixture('mlp.scripted.pt'));
    const events: FitEvent[] = [];
    for await (const e of fit(model, { train: data.loader(ds, { batchSize: 8 }), epochs: 3, optimizer: optim.sgd(model, { lr: 0.01 }), callbacks: [stopper], signal: controller.signal })) events.push(e);
    expect(events.filter((e) => e.type === 'batchEnd')).toHaveLength(16); // the first window, then the abort
    expect(events.at(-1)).toEqual({ type: 'stopped', reason: 'aborted' });
    model.dispose();
  });
});
