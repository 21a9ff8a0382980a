import { describe, expect, it } from 'vitest';
import { loadPretrained, loss, optim, randn, Tensor, tensor } from '../src';
import { Model } from '../src/model';
import { stepBaton } from '../src/model/step';
import type { NativeInputs, NativeTensor } from '../src/native';
import { fixture } from './helpers';

// JS owns every default (loss.ts, optim.ts, model/step.ts); the addon reads each field of the
// baton with no fallback. These tests send batons that lack one field each.
const missing = (path: string) =>
  expect.objectContaining({ code: 'TORCHLITE_INTERNAL', message: `${path} is missing in what torchlite's JS passed to its addon; this is a bug in torchlite, please report it` });

describe('batons', () => {
  it('the native step refuses a baton that lacks any field, naming it, and trains on a whole one', async () => {
    await using model = await loadPretrained(fixture('mlp.scripted.pt'));
    model.train();
    const optimizer = optim.sgd(model, { lr: 0.1 });
    const baton = { ...stepBaton({ loss: loss.crossEntropy(), optimizer }, model), sync: null };
    const handle = Model.handle(model);
    const batch: [NativeInputs, NativeTensor] = [[Tensor.handle(randn([2, 12]))], Tensor.handle(tensor(BigInt64Array.of(0n, 1n)))];
    const step = (options: object) => handle.trainStep([batch], options);
    const without = <T extends object>(object: T, field: string) => Object.fromEntries(Object.entries(object).filter(([key]) => key !== field));
    for (const field of Object.keys(baton)) expect(() => step(without(baton, field)), field).toThrow(missing(`trainStep options.${field}`));
    for (const field of Object.keys(baton.loss)) expect(() => step({ ...baton, loss: without(baton.loss, field) }), field).toThrow(missing(`trainStep options.loss.${field}`));
    for (const field of Object.keys(baton.groups[0])) expect(() => step({ ...baton, groups: [without(baton.groups[0], field)] }), field).toThrow(missing(`group options.${field}`));
    const [result] = await step(baton);
    expect(Number.isFinite(result.loss)).toBe(true);
  });

  it('the defaults live in JS: every field of the step, loss and optimizer batons is filled', async () => {
    await using model = await loadPretrained(fixture('mlp.scripted.pt'));
    const baton = stepBaton({ loss: loss.crossEntropy(), optimizer: optim.adamw(model) }, model);
    expect(baton).toMatchObject({ accumulate: 1, clipGradNorm: null, amp: 'none', nonFinite: 'skip', readLoss: true, groupsPerStep: null });
    expect(baton.loss).toEqual({ kind: 'crossEntropy', classifies: true, reduction: 'mean', labelSmoothing: 0, ignoreIndex: -100, beta: 1, delta: 1, weight: null, posWeight: null, lossWeights: null, outputWeights: null });
    expect(baton.groups).toEqual([{ lr: 1e-3, momentum: 0, dampening: 0, weightDecay: 1e-2, beta1: 0.9, beta2: 0.999, eps: 1e-8, nesterov: false, amsgrad: false }]);
    expect(loss.mse().classifies).toBe(false);
  });
});
