import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { describe, expect, inject, it } from 'vitest';

import { cuda, loadPretrained, loss, manualSeed, type Model, nn, optim, randn, sched, type Tensor, tensor, TorchError, torchVersion } from '../src';
import { readIdx } from '../src/data/idx';
import { fixture, hasTorch, python, relativeDiff, root } from './helpers';

// Written by Python on this machine for this run (test/setup/references.ts).
const refs = JSON.parse(readFileSync(inject('trainingRefs'), 'utf8'));

function relClose(actual: ArrayLike<number>, expected: ArrayLike<number>, tolerance: number): void {
  expect(actual.length).toBe(expected.length);
  for (let i = 0; i < expected.length; i++) {
    const scale = Math.max(Math.abs(expected[i]), 1e-6);
    if (Math.abs(actual[i] - expected[i]) / scale > tolerance)
      throw new Error(`element ${i}: ${actual[i]} vs ${expected[i]} (relative ${Math.abs(actual[i] - expected[i]) / scale})`);
  }
}

const values = (t: Tensor) => Array.from(t.toTypedArray() as Float32Array);
const longs = (xs: number[]) => tensor(BigInt64Array.from(xs.map(BigInt)));

describe('losses match PyTorch', () => {
  const { inputs, values: expected } = refs.losses;
  const logits = tensor(inputs.logits, [6, 4]);
  const classes = longs(inputs.classes);
  const pred = tensor(inputs.pred, [6, 3]);
  const target = tensor(inputs.target, [6, 3]);
  const weight = [1, 2, 0.5, 1.5];
  const cases: [string, () => Promise<Tensor>][] = [
    ['crossEntropy', () => loss.crossEntropy().compute(logits, classes)],
    ['crossEntropy_smooth_weight_sum', () => loss.crossEntropy({ weight, labelSmoothing: 0.2, reduction: 'sum' }).compute(logits, classes)],
    ['crossEntropy_soft', () => loss.crossEntropy().compute(logits, tensor(inputs.soft, [6, 4]))],
    ['nll', () => loss.nll({ weight }).compute(tensor(values(logits), [6, 4]).to('float64').to('float32'), classes)],
    ['bceWithLogits', () => loss.bceWithLogits({ posWeight: [1, 3, 0.5, 2] }).compute(logits, tensor(inputs.multi, [6, 4]))],
    ['mse', () => loss.mse().compute(pred, target)],
    ['l1_sum', () => loss.l1({ reduction: 'sum' }).compute(pred, target)],
    ['smoothL1', () => loss.smoothL1({ beta: 0.5 }).compute(pred, target)],
    ['huber_none', () => loss.huber({ delta: 0.7, reduction: 'none' }).compute(pred, target)],
  ];
  it.each(cases.filter(([name]) => name !== 'nll'))('%s', async (name, compute) => relClose(values(await compute()), expected[name], 1e-6));

  it('nll over log-probabilities', async () => {
    // log_softmax computed by a model-free path: softmax's log from the same logits.
    const logp = values(logits).map((v, i, all) => {
      const row = all.slice(Math.floor(i / 4) * 4, Math.floor(i / 4) * 4 + 4);
      const max = Math.max(...row);
      return v - max - Math.log(row.reduce((s, x) => s + Math.exp(x - max), 0));
    });
    relClose(values(await loss.nll({ weight }).compute(tensor(logp, [6, 4]), classes)), expected.nll, 1e-6);
  });

  it('rejects bad targets with coded errors', async () => {
    const ce = loss.crossEntropy();
    const code = (fn: () => Promise<unknown>) =>
      fn().then(
        () => 'no error',
        (e: TorchError) => `${e.code}: ${e.message}`,
      );
    expect(await code(() => ce.compute(logits, longs([0, 1, 2, 4, 0, 0])))).toBe('TORCHLITE_BAD_TARGET: class index 4 at target position 3 is out of range for 4 classes');
    expect(await code(() => ce.compute(logits, longs([0, 1, 2])))).toBe('TORCHLITE_BAD_TARGET: crossEntropy expects class-index targets of shape [6] for outputs [6, 4] but received [3]');
    expect(await code(() => loss.nll().compute(logits, tensor([0, 1, 2, 3, 0, 1])))).toBe("TORCHLITE_BAD_TARGET: nll expects class indices of dtype int64 but received float32 targets of shape [6] for outputs [6, 4]; make them with tensor(BigInt64Array.from(labels, BigInt)) or tensor(labels, undefined, { dtype: 'int64' })");
    expect(await code(() => loss.mse().compute(pred, tensor(new Float32Array(6), [6, 1])))).toBe('TORCHLITE_BAD_TARGET: mse expects a target of the output\'s shape [6, 3] but received [6, 1]');
    expect(await code(() => loss.crossEntropy({ weight: [1, 2] }).compute(logits, classes))).toBe('TORCHLITE_BAD_TARGET: crossEntropy has a class weight of 2 entries for 4 classes');
    expect(() => loss.crossEntropy({ labelSmoothing: 1 })).toThrow(new RangeError('Expected a number in [0, 1) for `options.labelSmoothing` but received 1'));
    expect(() => loss.mse({ reduction: 'avg' as never })).toThrow(RangeError);
  });
});

/** A one-group fake optimizer would not exercise the native path; use a model with one parameter group per request. */
async function schedulerRun(kind: 'sgd' | 'adamw', groups: number, make: (o: ReturnType<typeof optim.sgd>) => { step(m?: number): void }, steps: number, metrics?: number[]) {
  const model = await loadPretrained(fixture('mlp.scripted.pt'));
  const specs = ['net.0', 'net.2', 'net.4'].slice(0, groups).map((params, i) => ({ params, lr: 0.1 * (i + 1) }));
  const opt = kind === 'sgd' ? optim.sgd(specs, { lr: 0.1, momentum: 0.9 }) : optim.adamw(specs, { lr: 0.1 });
  const x = randn([2, 12]);
  const y = longs([0, 1]);
  await model.trainStep(x, y, { loss: loss.crossEntropy(), optimizer: opt }); // binds before the scheduler reads groups
  const s = make(opt);
  const lr: number[][] = [];
  const momentum: number[][] = [];
  for (let i = 0; i < steps; i++) {
    lr.push(opt.paramGroups.map((g) => g.lr));
    momentum.push(opt.paramGroups.map((g) => (kind === 'sgd' ? g.momentum : g.betas[0])));
    s.step(metrics?.[i]);
  }
  model.dispose();
  return { lr, momentum };
}

describe('schedules match PyTorch', () => {
  const r = refs.schedules;
  const cases: [string, 'sgd' | 'adamw', number, (o: ReturnType<typeof optim.sgd>) => { step(m?: number): void }, number][] = [
    ['step', 'sgd', 2, (o) => sched.step(o, { stepSize: 3, gamma: 0.5 }), 12],
    ['multiStep', 'sgd', 1, (o) => sched.multiStep(o, { milestones: [2, 5, 9], gamma: 0.3 }), 12],
    ['exponential', 'sgd', 1, (o) => sched.exponential(o, { gamma: 0.9 }), 12],
    ['linearWarmup', 'sgd', 2, (o) => sched.linearWarmup(o, { warmupSteps: 4, startFactor: 0.25 }), 8],
    ['cosine', 'sgd', 2, (o) => sched.cosine(o, { totalSteps: 12, minLr: 0.001 }), 13],
    ['oneCycle', 'sgd', 2, (o) => sched.oneCycle(o, { maxLr: [0.5, 0.05], totalSteps: 25 }), 25],
    ['oneCycleAdamW', 'adamw', 1, (o) => sched.oneCycle(o, { maxLr: 0.3, totalSteps: 10, pctStart: 0.4 }), 10],
  ];
  it.each(cases)('%s', async (name, kind, groups, make, steps) => {
    const run = await schedulerRun(kind, groups, make, steps);
    relClose(run.lr.flat(), r[name].lr.flat(), 1e-9);
    if (name.startsWith('oneCycle')) relClose(run.momentum.flat(), r[name].momentum.flat(), 1e-9);
  });

  it('reduceOnPlateau', async () => {
    const run = await schedulerRun('sgd', 1, (o) => sched.reduceOnPlateau(o, { factor: 0.5, patience: 2, cooldown: 1 }), 15, r.reduceOnPlateau.metrics);
    relClose(run.lr.flat(), r.reduceOnPlateau.lr.flat(), 1e-12);
  });

  it('a group added later joins the running schedule with its own base lr', async () => {
    await using model = await loadPretrained(fixture('mlp.scripted.pt'));
    const opt = optim.sgd([{ params: 'net.4' }], { lr: 0.1 });
    await model.trainStep(randn([2, 12]), longs([0, 1]), { loss: loss.crossEntropy(), optimizer: opt });
    const s = sched.step(opt, { stepSize: 2, gamma: 0.5 });
    s.step();
    s.step(); // t = 2: 0.05
    opt.addParamGroup({ params: 'net.0', lr: 0.01 });
    s.step(); // t = 3
    expect(opt.paramGroups.map((g) => g.lr)).toEqual([0.05, 0.005]);
  });
});

function setup(name: string, model: Model) {
  const ce = loss.crossEntropy();
  switch (name) {
    case 'sgd_nesterov_wd':
      return { opt: optim.sgd(model, { lr: 0.05, momentum: 0.9, nesterov: true, weightDecay: 1e-3 }), lossFn: ce };
    case 'adam':
      return { opt: optim.adam(model, { lr: 1e-2, weightDecay: 1e-4 }), lossFn: ce };
    case 'adamw_groups_onecycle': {
      // Made from patterns: it binds at the first step, after the schedule set its lrs.
      const opt = optim.adamw([{ params: 'net.0', lr: 1e-3 }, { params: /^net\.[24]\./, lr: 5e-3 }], { weightDecay: 0.05 });
      return { opt, lossFn: ce, schedule: sched.oneCycle(opt, { maxLr: [1e-2, 5e-2], totalSteps: 20 }) };
    }
    case 'adamw_amsgrad':
      return { opt: optim.adamw(model, { lr: 5e-3, weightDecay: 0.01, amsgrad: true }), lossFn: ce };
    case 'label_smoothing':
      return { opt: optim.sgd(model, { lr: 0.1 }), lossFn: loss.crossEntropy({ labelSmoothing: 0.1 }) };
    default:
      return { opt: optim.sgd(model, { lr: 0.05, momentum: 0.5 }), lossFn: loss.mse() };
  }
}

function batch(i: number, regression = false) {
  const { xs, ys, regress } = refs.training;
  return {
    x: tensor(xs.slice(i * 96, (i + 1) * 96), [8, 12]),
    y: regression ? tensor(regress.slice(i * 32, (i + 1) * 32), [8, 4]) : longs(ys.slice(i * 8, (i + 1) * 8)),
  };
}

// PyTorch 2.0 rewrote Adam's first moment as a lerp, so Adam's references hold only for
// the major version that wrote them: torchlite follows the LibTorch it links, and a build
// against 2.x checks Adam against a 2.x reference Python (TORCHLITE_PYTHON, as gpu-check.sh does).
const major = (version: string) => version.split('.')[0];
const sameFormulas = (name: string) => !name.startsWith('adam') || major(refs.torch) === major(torchVersion);

describe('20 training steps match PyTorch within 1e-5 relative', () => {
  it.for(Object.keys(refs.training.runs))('%s', async (name, { skip }) => {
    if (!sameFormulas(name)) skip(`references written by PyTorch ${refs.torch}, whose Adam differs from ${torchVersion}'s`);
    await using model = await loadPretrained(fixture('mlp.scripted.pt'));
    model.train();
    const { opt, lossFn, schedule } = setup(name, model);
    const losses: number[] = [];
    for (let i = 0; i < 20; i++) {
      const { x, y } = batch(i, name === 'mse');
      losses.push((await model.trainStep(x, y, { loss: lossFn, optimizer: opt })).loss);
      schedule?.step();
    }
    const expected = refs.training.runs[name];
    relClose(losses, expected.losses, 1e-5);
    const state = (await model.stateDict());
    for (const [param, weights] of Object.entries(expected.weights as Record<string, number[]>)) relClose(values(state[param]), weights, 1e-5);
  });
});

describe('trainStep', () => {
  it('never moves frozen parameters, through momentum and weight decay, after a late freeze', async () => {
    await using model = await loadPretrained(fixture('mlp.scripted.pt'));
    model.train();
    const opt = optim.sgd(model, { lr: 0.1, momentum: 0.9, weightDecay: 1e-4 });
    const ce = loss.crossEntropy();
    for (let i = 0; i < 3; i++) await model.trainStep(batch(i).x, batch(i).y, { loss: ce, optimizer: opt });
    model.freeze();
    model.unfreeze('net.4');
    const before = Object.fromEntries(Object.entries((await model.stateDict())).map(([k, t]) => [k, values(t)]));
    for (let i = 3; i < 8; i++) await model.trainStep(batch(i).x, batch(i).y, { loss: ce, optimizer: opt });
    const after = (await model.stateDict());
    for (const [name, weights] of Object.entries(before)) {
      if (name.startsWith('net.4.')) expect(values(after[name])).not.toEqual(weights);
      else expect(values(after[name])).toEqual(weights); // bit-identical
    }
  });

  it('accumulates gradients: two halves with accumulate 2 equal one full batch', async () => {
    const ce = loss.crossEntropy();
    const { x, y } = batch(0);
    await using full = await loadPretrained(fixture('mlp.scripted.pt'));
    const fullOpt = optim.sgd(full, { lr: 0.5 });
    await full.trainStep(x, y, { loss: ce, optimizer: fullOpt });
    await using halves = await loadPretrained(fixture('mlp.scripted.pt'));
    const halfOpt = optim.sgd(halves, { lr: 0.5 });
    const xs = values(x);
    const ys = refs.training.ys.slice(0, 8);
    const first = await halves.trainStep(tensor(xs.slice(0, 48), [4, 12]), longs(ys.slice(0, 4)), { loss: ce, optimizer: halfOpt, accumulate: 2 });
    expect(first.stepped).toBe(false);
    const second = await halves.trainStep(tensor(xs.slice(48), [4, 12]), longs(ys.slice(4)), { loss: ce, optimizer: halfOpt, accumulate: 2 });
    expect(second.stepped).toBe(true);
    relClose(values((await halves.stateDict())['net.0.weight']), values((await full.stateDict())['net.0.weight']), 1e-5);
    // A partial window: flush averages over the micro-batches it holds.
    await using partial = await loadPretrained(fixture('mlp.scripted.pt'));
    const partialOpt = optim.sgd(partial, { lr: 0.5 });
    await partial.trainStep(x, y, { loss: ce, optimizer: partialOpt, accumulate: 4 });
    expect(await partialOpt.flush(4)).toBe(true);
    expect(await partialOpt.flush(4)).toBe(false);
    relClose(values((await partial.stateDict())['net.0.weight']), values((await full.stateDict())['net.0.weight']), 1e-5);
  });

  it('skips a non-finite loss, or throws when asked', async () => {
    await using model = await loadPretrained(fixture('mlp.scripted.pt'));
    const opt = optim.sgd(model, { lr: 0.1 });
    const bad = tensor(new Float32Array(96).fill(Number.NaN), [8, 12]);
    const before = values((await model.stateDict())['net.0.weight']);
    const result = await model.trainStep(bad, batch(0).y, { loss: loss.crossEntropy(), optimizer: opt });
    expect(result).toMatchObject({ skipped: true, stepped: false });
    expect(Number.isNaN(result.loss)).toBe(true);
    expect(values((await model.stateDict())['net.0.weight'])).toEqual(before);
    await expect(model.trainStep(bad, batch(0).y, { loss: loss.crossEntropy(), optimizer: opt, nonFinite: 'throw' })).rejects.toMatchObject({ code: 'TORCH_NONFINITE_LOSS' });
    expect((await model.trainStep(batch(0).x, batch(0).y, { loss: loss.crossEntropy(), optimizer: opt })).stepped).toBe(true);
  });

  it('clips the gradient norm and reports it', async () => {
    await using model = await loadPretrained(fixture('mlp.scripted.pt'));
    const opt = optim.sgd(model, { lr: 0.1 });
    const r = await model.trainStep(batch(0).x, batch(0).y, { loss: loss.crossEntropy(), optimizer: opt, clipGradNorm: 1e-3 });
    expect(r.gradNorm).toBeGreaterThan(1e-3);
  });

  it('trains in bf16 autocast on the CPU and refuses fp16 there', async () => {
    await using model = await loadPretrained(fixture('resnet_small.scripted.pt'));
    const opt = optim.adam(model, { lr: 1e-3 });
    const x = randn([4, 3, 16, 16]);
    const y = longs([1, 2, 3, 4]);
    const r = await model.trainStep(x, y, { loss: loss.crossEntropy(), optimizer: opt, amp: 'bf16' });
    expect(Number.isFinite(r.loss)).toBe(true);
    await expect(model.trainStep(x, y, { loss: loss.crossEntropy(), optimizer: opt, amp: 'fp16' })).rejects.toMatchObject({
      code: 'TORCHLITE_AMP_UNSUPPORTED',
      message: "amp 'fp16' needs a CUDA model; on the CPU use amp 'bf16'",
    });
  });

  it('an optimizer built before replace() fails clearly instead of training nothing', async () => {
    await using model = await loadPretrained(fixture('mlp.scripted.pt'));
    const opt = optim.sgd(model, { lr: 0.1 });
    model.replace('net.4', nn.linear(16, 4));
    await expect(model.trainStep(batch(0).x, batch(0).y, { loss: loss.crossEntropy(), optimizer: opt })).rejects.toMatchObject({
      code: 'TORCHLITE_STALE_OPTIMIZER',
      message: "the optimizer trains 'net.4.weight', which replace() removed from the model; create the optimizer after replacing modules",
    });
  });

  it('validates its options', async () => {
    await using model = await loadPretrained(fixture('mlp.scripted.pt'));
    const opt = optim.sgd(model, { lr: 0.1 });
    const { x, y } = batch(0);
    await expect(model.trainStep(x, y, { loss: 'ce' as never, optimizer: opt })).rejects.toThrow(new TypeError("Expected a Loss from `loss.*` for `options.loss` but received 'ce'"));
    await expect(model.trainStep(x, y, { loss: loss.mse(), optimizer: opt, accumulate: 0 })).rejects.toThrow(new RangeError('Expected a positive integer for `options.accumulate` but received 0'));
    await expect(model.trainStep(x, y, { loss: loss.mse(), optimizer: opt, amp: 'fp8' as never })).rejects.toThrow(RangeError);
    await using other = await loadPretrained(fixture('mlp.scripted.pt'));
    await expect(other.trainStep(x, y, { loss: loss.crossEntropy(), optimizer: opt })).rejects.toMatchObject({ code: 'TORCHLITE_BAD_ARGUMENT' });
    expect(() => optim.sgd(model, { nesterov: true })).toThrow(new RangeError('Expected `options.momentum` > 0 and `options.dampening` = 0 for `options.nesterov` but received momentum 0, dampening 0'));
    expect(() => optim.adam(model, { betas: [0.9, 1] })).toThrow(new RangeError('Expected a number in [0, 1) for `options.betas[1]` but received 1'));
    expect(() => optim.sgd([{ params: 'net.9' }], {})).not.toThrow(); // resolved at bind time
    await expect(model.trainStep(x, y, { loss: loss.crossEntropy(), optimizer: optim.sgd([{ params: 'net.9' }]) })).rejects.toMatchObject({ code: 'TORCHLITE_NO_MATCH' });
    expect(() => opt.addParamGroup({ params: 'net.0' })).toThrow(expect.objectContaining({ code: 'TORCHLITE_BAD_ARGUMENT', message: "parameter 'net.0.weight' is already in another param group" }));
  });

  it('is bit-reproducible on the CPU under manualSeed, dropout included', async () => {
    async function run() {
      manualSeed(123);
      await using model = await loadPretrained(fixture('resnet_small.scripted.pt'));
      model.train();
      model.replace('fc', nn.sequential(nn.dropout(0.5), nn.linear(16, 10)));
      const opt = optim.adamw(model, { lr: 1e-2 });
      for (let i = 0; i < 3; i++) await model.trainStep(randn([4, 3, 16, 16]), longs([1, 2, 3, 4]), { loss: loss.crossEntropy(), optimizer: opt });
      return values((await model.stateDict())['fc.1.weight']);
    }
    expect(await run()).toEqual(await run());
  });
});

describe('optimizer state', () => {
  it('round-trips through stateDict by parameter name, group options included', async () => {
    const ce = loss.crossEntropy();
    await using a = await loadPretrained(fixture('mlp.scripted.pt'));
    const optA = optim.adam(a, { lr: 1e-2, noDecay: true, weightDecay: 0.1 });
    expect(optA.paramGroups.map((g) => [g.params.length, g.weightDecay])).toEqual([[3, 0.1], [3, 0]]);
    for (let i = 0; i < 3; i++) await a.trainStep(batch(i).x, batch(i).y, { loss: ce, optimizer: optA });
    optA.paramGroups[1].lr = 0.004;
    const saved = optA.stateDict();
    expect(Object.keys(saved.state)).toContain('net.0.weight');
    expect(saved.state['net.0.weight'].step).toBe(3);
    expect(saved.groups[1].lr).toBe(0.004);
    const weights = values((await a.stateDict())['net.0.weight']);
    await using b = await loadPretrained(fixture('mlp.scripted.pt'));
    // c continues from a's weights (saved and reloaded) with a's optimizer state.
    const file = join(mkdtempSync(join(tmpdir(), 'torchlite-opt-')), 'a.pt');
    await a.save(file);
    await using c = await loadPretrained(file);
    const optC = optim.adam(c, { lr: 1e-2, noDecay: true, weightDecay: 0.1 });
    optC.loadStateDict(saved);
    expect(optC.paramGroups[1].lr).toBe(0.004);
    for (let i = 3; i < 5; i++) {
      await a.trainStep(batch(i).x, batch(i).y, { loss: ce, optimizer: optA });
      await c.trainStep(batch(i).x, batch(i).y, { loss: ce, optimizer: optC });
    }
    expect(values((await c.stateDict())['net.2.weight'])).toEqual(values((await a.stateDict())['net.2.weight']));
    expect(weights).not.toEqual(values((await a.stateDict())['net.0.weight']));
    expect(() => optim.sgd(b).loadStateDict(saved)).toThrow(TypeError);
  });
});

describe('evaluate and predict', () => {
  it('computes loss and metrics in eval mode and restores the mode', async () => {
    await using model = await loadPretrained(fixture('mlp.scripted.pt'));
    model.train();
    const batches = [batch(0), batch(1)].map(({ x, y }) => ({ input: x, target: y }));
    const result = await model.evaluate(batches, { loss: loss.crossEntropy(), metrics: ['accuracy', { topK: 2 }, 'f1', 'confusionMatrix'] });
    expect(model.training).toBe(true);
    const preds = await Promise.all(batches.map((b) => model.predict(b.input)));
    const predicted = preds.flatMap((p) => Array.from(p.argmax.toTypedArray() as BigInt64Array, Number));
    const truth = refs.training.ys.slice(0, 16);
    const accuracy = predicted.filter((p, i) => p === truth[i]).length / 16;
    expect(result.accuracy).toBeCloseTo(accuracy, 10);
    expect(result.confusionMatrix!.flat().reduce((a, b) => a + b, 0)).toBe(16);
    expect(result.top2).toBeGreaterThanOrEqual(result.accuracy!);
    expect(result.f1).toBeGreaterThanOrEqual(0);
    expect(result.loss).toBeGreaterThan(0);
    const probs = values(preds[0].probabilities);
    expect(probs.slice(0, 4).reduce((a, b) => a + b, 0)).toBeCloseTo(1, 6);
    const regression = await model.evaluate([{ input: batch(0).x, target: tensor(new Float32Array(32), [8, 4]) }], { loss: loss.mse(), metrics: ['mse', 'mae'] });
    expect(regression.mse).toBeCloseTo(regression.loss!, 5);
    await expect(model.evaluate([], { loss: loss.mse() })).rejects.toThrow(RangeError);
  });

  it('scores tied or NaN outputs as torch.argmax does (class 0), and reports a NaN loss as NaN', async () => {
    // A diverged model used to score 100% with a loss of 0: every class counted as the truth's
    // equal, and a NaN loss was taken for "no loss".
    await using model = await loadPretrained(fixture('mlp.scripted.pt'));
    const dict = (await model.stateDict());
    const { x, y } = batch(0);
    const truth = refs.training.ys.slice(0, 8) as number[];
    const share = (classes: number[]) => truth.filter((t) => classes.includes(t)).length / 8;
    for (const value of [0, Number.NaN]) {
      const filled = (name: string) => tensor(new Float32Array(dict[name].shape.reduce((a, b) => a * b, 1)).fill(value), dict[name].shape);
      await model.loadStateDict({ ...dict, 'net.4.weight': filled('net.4.weight'), 'net.4.bias': filled('net.4.bias') });
      const result = await model.evaluate([{ input: x, target: y }], { loss: loss.crossEntropy(), metrics: ['accuracy', { topK: 2 }, 'confusionMatrix'] });
      expect(result.accuracy).toBe(share([0]));
      expect(result.top2).toBe(share([0, 1]));
      expect(result.confusionMatrix!.map((row) => row.slice(1).every((n) => n === 0))).toEqual([true, true, true, true]); // all predicted class 0
      if (value === 0) expect(result.loss).toBeCloseTo(Math.log(4), 6);
      else expect(result.loss).toBeNaN();
    }
    expect(share([0])).toBeLessThan(1); // the old count would have said 100%
  });
});

describe('a real task', () => {
  it('fine-tunes the pretrained CNN on Fashion-MNIST classes 5-9 far above chance in seconds', async () => {
    const load = async (split: string) => {
      const images = await readIdx(fixture(`fashion-5to9-${split}-images.idx.gz`));
      const labels = await readIdx(fixture(`fashion-5to9-${split}-labels.idx.gz`));
      const x = Float32Array.from(images.data, (v) => (v / 255 - 0.286) / 0.353);
      return { x, y: Array.from(labels.data, (v) => v - 5), n: labels.shape[0] };
    };
    const train = await load('train');
    const test = await load('t10k');
    manualSeed(0);
    await using model = await loadPretrained(join(root, 'models', 'fashion-cnn.pt'));
    expect(model.resetClassifier(5)).toBe('classifier.2');
    model.train();
    const opt = optim.adamw(model, { lr: 2e-3 });
    const started = Date.now();
    for (let epoch = 0; epoch < 3; epoch++)
      for (let i = 0; i + 50 <= train.n; i += 50)
        await model.trainStep(tensor(train.x.subarray(i * 784, (i + 50) * 784), [50, 1, 28, 28]), longs(train.y.slice(i, i + 50)), { loss: loss.crossEntropy(), optimizer: opt });
    const seconds = (Date.now() - started) / 1000;
    const { accuracy } = await model.evaluate([{ input: tensor(test.x, [test.n, 1, 28, 28]), target: longs(test.y) }], { metrics: ['accuracy'] });
    expect(accuracy).toBeGreaterThan(0.7); // chance is 0.2
    expect(seconds).toBeLessThan(60);
  });
});

describe('device options', () => {
  it('on the CPU, models with convolutions run channels-last by default, with NCHW results, and save NCHW weights', async () => {
    // MobileNet: resnet_small has a layer that must not train in NHWC (see the next test).
    await using plain = await loadPretrained(fixture('mobilenet_small.scripted.pt'), { channelsLast: false });
    await using nhwc = await loadPretrained(fixture('mobilenet_small.scripted.pt'));
    await using mlp = await loadPretrained(fixture('mlp.scripted.pt'));
    expect([plain.memoryFormat, nhwc.memoryFormat, mlp.memoryFormat]).toEqual(['contiguous', 'channelsLast', 'contiguous']);
    const x = randn([4, 3, 16, 16]);
    relClose(values(await nhwc.forward<Tensor>(x)), values(await plain.forward<Tensor>(x)), 1e-4);
    for (const model of [plain, nhwc]) {
      model.train();
      manualSeed(1); // the same dropout draws
      const opt = optim.sgd(model, { lr: 0.01, momentum: 0.9 });
      for (let step = 0; step < 3; step++) expect((await model.trainStep(x, longs([1, 2, 3, 4]), { loss: loss.crossEntropy(), optimizer: opt })).stepped).toBe(true);
    }
    expect(nhwc.memoryFormat).toBe('channelsLast'); // trained in NHWC
    const [a, b] = [(await plain.stateDict()), (await nhwc.stateDict())];
    for (const name of Object.keys(a)) expect(relativeDiff(Array.from(b[name].toTypedArray() as ArrayLike<number>, Number), Array.from(a[name].toTypedArray() as ArrayLike<number>, Number))).toBeLessThan(1e-5);
    nhwc.channelsLast(false); // a job on the lane: memoryFormat reads the model once it has run
    expect(() => nhwc.memoryFormat).toThrow(expect.objectContaining({ code: 'TORCHLITE_MODEL_BUSY' }));
    await nhwc.idle();
    expect(nhwc.memoryFormat).toBe('contiguous');
    await expect(loadPretrained(fixture('mlp.scripted.pt'), { channelsLast: 'yes' as never })).rejects.toThrow(
      new TypeError("Expected a boolean or 'auto' for `options.channelsLast` but received 'yes'"),
    );
    nhwc.channelsLast(true);
    const file = join(mkdtempSync(join(tmpdir(), 'torchlite-nhwc-')), 'nhwc.pt');
    await nhwc.save(file);
    expect(nhwc.memoryFormat).toBe('channelsLast');
    if (hasTorch) expect(python('import sys, torch; print(all(p.is_contiguous() for p in torch.jit.load(sys.argv[1]).parameters()))', [file]).trim()).toBe('True');
  });

  it.skipIf(!hasTorch)('a model that views a convolution output falls back to NCHW on its first forward, exactly as if it had never tried', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'torchlite-view-'));
    const file = join(dir, 'view.pt');
    // TorchScript reads the class's source, so the script is a file.
    writeFileSync(
      join(dir, 'view.py'),
      `import sys, torch
from torch import nn
class ViewNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.bn, self.drop, self.fc = nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.Dropout(0.5), nn.Linear(144, 2)
    def forward(self, x):
        x = self.drop(torch.relu(self.bn(self.conv(x))))  # BatchNorm statistics and dropout draws before the view
        return self.fc(x.view(x.size(0), -1))
torch.manual_seed(0)
torch.jit.script(ViewNet()).save(sys.argv[1])
`,
    );
    python('import runpy, sys; sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name="__main__")', [join(dir, 'view.py'), file]);
    const x = randn([4, 3, 6, 6]);
    const y = longs([0, 1, 1, 0]);
    const run = async (options: { channelsLast: boolean } | undefined) => {
      const model = await loadPretrained(file, options);
      const before = model.memoryFormat;
      model.train();
      const opt = optim.sgd(model, { lr: 0.1 });
      manualSeed(3);
      const losses = [];
      for (let step = 0; step < 2; step++) losses.push((await model.trainStep(x, y, { loss: loss.crossEntropy(), optimizer: opt })).loss);
      const state = Object.fromEntries(Object.entries((await model.stateDict())).map(([name, t]) => [name, Array.from(t.toTypedArray() as ArrayLike<number>, Number)]));
      const after = model.memoryFormat;
      model.dispose();
      return { before, after, losses, state };
    };
    const tried = await run(undefined);
    const plain = await run({ channelsLast: false });
    expect([tried.before, tried.after]).toEqual(['channelsLast', 'contiguous']);
    expect(tried.losses).toEqual(plain.losses);
    expect(tried.state).toEqual(plain.state); // running statistics included
    await using forced = await loadPretrained(file, { channelsLast: true });
    await expect(forced.forward(x)).rejects.toThrow('this graph\'s view() cannot run: load it with `{ channelsLast: false }` or call `model.channelsLast(false)`');
  });

  it("trains a 1x1 stride-2 convolution over fewer than 16 channels in NCHW, which oneDNN's NHWC kernel corrupts memory on", async () => {
    // resnet_small's layer2.0.downsample.0 is one (8 input channels). In NHWC its weight
    // gradient overran a oneDNN buffer and killed the process at 3, 5, 9 or 16 threads.
    const x = randn([8, 3, 32, 32]);
    const y = longs([0, 1, 2, 3, 4, 5, 6, 7]);
    const train = async (model: Model) => {
      model.train();
      const opt = optim.sgd(model, { lr: 0.01, momentum: 0.9 });
      manualSeed(5);
      const losses = [];
      for (let step = 0; step < 2; step++) losses.push((await model.trainStep(x, y, { loss: loss.crossEntropy(), optimizer: opt })).loss);
      return losses;
    };
    for (const file of ['resnet_small.scripted.pt', 'resnet_small.traced.pt']) {
      await using auto = await loadPretrained(fixture(file));
      await using plain = await loadPretrained(fixture(file), { channelsLast: false });
      expect(auto.memoryFormat).toBe('channelsLast'); // inference in NHWC is safe
      expect(await train(auto)).toEqual(await train(plain)); // an automatic choice goes back to NCHW for training
      expect(auto.memoryFormat).toBe('contiguous');
    }
    await using forced = await loadPretrained(fixture('resnet_small.scripted.pt'), { channelsLast: true });
    forced.train();
    const opt = optim.sgd(forced, { lr: 0.01 });
    await expect(forced.trainStep(x, y, { loss: loss.crossEntropy(), optimizer: opt })).rejects.toThrow(
      new TorchError('TORCHLITE_UNSAFE_LAYOUT',
        "training 'layer2.0.downsample.0' (a 1x1 convolution with stride > 1 over 8 input channels) in channels-last on the CPU corrupts memory inside LibTorch's oneDNN kernels; call model.channelsLast(false) before training on the CPU (inference in channels-last is safe), or train on a GPU",
      ),
    );
    expect((await forced.channelsLast(false).trainStep(x, y, { loss: loss.crossEntropy(), optimizer: opt })).stepped).toBe(true);
    // A layer put in later is checked too: MobileNet trains in NHWC until one arrives.
    await using mobile = await loadPretrained(fixture('mobilenet_small.scripted.pt'));
    await train(mobile);
    expect(mobile.memoryFormat).toBe('channelsLast');
    mobile.replace('features.6', nn.conv2d(8, 16, 1, { stride: 2 }));
    await train(mobile);
    expect(mobile.memoryFormat).toBe('contiguous');
    // The crash itself, where it happened: a separate process at 3 threads.
    const script = `const t = require('./lib'); t.setNumThreads(3);
      t.loadPretrained('${fixture('resnet_small.scripted.pt')}').then(async (m) => {
        m.train();
        const opt = t.optim.sgd(m, { lr: 0.01 });
        for (let i = 0; i < 3; i++) await m.trainStep(t.randn([8, 3, 32, 32]), t.tensor(BigInt64Array.of(0n, 1n, 2n, 3n, 4n, 5n, 6n, 7n)), { loss: t.loss.crossEntropy(), optimizer: opt });
        console.log(m.memoryFormat);
      });`;
    const child = spawnSync(process.execPath, ['-e', script], { cwd: root, encoding: 'utf8', timeout: 60_000 });
    expect({ status: child.status, signal: child.signal, stdout: child.stdout.trim() }).toEqual({ status: 0, signal: null, stdout: 'contiguous' });
  });

  it('readLoss: false skips the host read and the next read averages the steps since', async () => {
    await using model = await loadPretrained(fixture('mlp.scripted.pt'));
    const opt = optim.sgd(model, { lr: 0 }); // lr 0 keeps the loss constant per batch
    const ce = loss.crossEntropy();
    const losses = [] as number[];
    for (let i = 0; i < 3; i++) losses.push((await model.evaluate([{ input: batch(i).x, target: batch(i).y }], { loss: ce })).loss!);
    const a = await model.trainStep(batch(0).x, batch(0).y, { loss: ce, optimizer: opt, readLoss: false });
    const b = await model.trainStep(batch(1).x, batch(1).y, { loss: ce, optimizer: opt, readLoss: false });
    expect(Number.isNaN(a.loss) && Number.isNaN(b.loss)).toBe(true);
    const c = await model.trainStep(batch(2).x, batch(2).y, { loss: ce, optimizer: opt });
    expect(c.lossSteps).toBe(3);
    expect(c.loss).toBeCloseTo((losses[0] + losses[1] + losses[2]) / 3, 5);
  });

  it.skipIf(cuda.isAvailable())('CUDA calls explain themselves on a CPU build', async () => {
    expect(cuda.isAvailable()).toBe(false);
    expect(cuda.deviceCount()).toBe(0);
    expect(() => cuda.memory()).toThrow(expect.objectContaining({ code: 'TORCHLITE_CUDA_UNAVAILABLE' }));
    await expect(cuda.synchronize('cuda:1')).rejects.toThrow(expect.objectContaining({ code: 'TORCHLITE_CUDA_UNAVAILABLE' }));
    expect(() => cuda.memory('gpu' as never)).toThrow(RangeError);
    const state = cuda.setOptions({ cudnnBenchmark: true });
    expect(state.cudnnBenchmark).toBe(true);
    cuda.setOptions({ cudnnBenchmark: false });
  });
});

describe('trainSteps', () => {
  it('runs several steps in one job with the same results as one call each', async () => {
    const ce = loss.crossEntropy();
    await using a = await loadPretrained(fixture('mlp.scripted.pt'));
    await using b = await loadPretrained(fixture('mlp.scripted.pt'));
    const optA = optim.adam(a, { lr: 1e-2 });
    const optB = optim.adam(b, { lr: 1e-2 });
    const batches = [0, 1, 2, 3].map((i) => ({ input: batch(i).x, target: batch(i).y }));
    const one: number[] = [];
    for (const { input, target } of batches) one.push((await a.trainStep(input, target, { loss: ce, optimizer: optA })).loss);
    const many = await b.trainSteps(batches, { loss: ce, optimizer: optB });
    expect(many.map((r) => r.loss)).toEqual(one);
    expect(values((await b.stateDict())['net.4.weight'])).toEqual(values((await a.stateDict())['net.4.weight']));
    await expect(b.trainSteps([], { loss: ce, optimizer: optB })).rejects.toThrow(new TypeError('Expected a non-empty array of { input, target } batches for `batches` but received an array of length 0'));
  });
});
