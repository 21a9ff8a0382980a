import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { describe, expect, it } from 'vitest';

import { type Layer, loadPretrained, loss, type Model, manualSeed, nn, optim, randn, type Tensor, tensor, TorchError } from '../src';
import { probeGradients } from '../src/testing';
import { decode, fixture, hasTorch, maxAbsDiff, outputDiff, python, pythonForward, refs } from './helpers';

const out = mkdtempSync(join(tmpdir(), 'torchlite-surgery-'));

interface Case {
  name: string;
  path: string;
  inFeatures: number;
}
const HEADS: Case[] = [
  { name: 'resnet_small', path: 'fc', inFeatures: 16 },
  { name: 'mobilenet_small', path: 'classifier.3', inFeatures: 32 },
];
const REPLACEMENTS: [string, (k: number) => Layer, (k: number) => number][] = [
  ['nn.linear(k, 7)', (k) => nn.linear(k, 7), () => 7],
  ['nn.sequential(nn.dropout(0.2), nn.linear(k, 7))', (k) => nn.sequential(nn.dropout(0.2), nn.linear(k, 7)), () => 7],
  ['nn.identity()', () => nn.identity(), (k) => k],
];

/** Every trainable parameter must receive a gradient, frozen ones none. */
async function expectGradients(model: Model, input: Tensor): Promise<void> {
  const flowed = await probeGradients(model, input);
  for (const p of model.parameters()) expect([p.name, flowed[p.name]]).toEqual([p.name, p.requiresGrad]);
}

async function expectPythonAgrees(model: Model, file: string, input: Tensor): Promise<void> {
  await model.save(file);
  if (!hasTorch) return;
  const ours = (await model.forward<Tensor>(input)).toTypedArray() as Float32Array;
  expect(maxAbsDiff(pythonForward(file, input), ours)).toBeLessThanOrEqual(1e-5);
}

describe.each(['scripted', 'traced'])('%s', (kind) => {
  describe.each(HEADS)('$name head at $path', ({ name, path, inFeatures }) => {
    it.each(REPLACEMENTS)('becomes %s: forward, gradients, save, Python', async (label, make, width) => {
      await using model = await loadPretrained(fixture(`${name}.${kind}.pt`));
      const input = decode(refs[name].input);
      await model.forward(input); // plans built before the swap must not survive it
      model.replace(path, make(inFeatures));
      expect((await model.forward<Tensor>(input)).shape).toEqual([2, width(inFeatures)]);
      await expectGradients(model, input);
      await expectPythonAgrees(model, join(out, `${name}.${kind}.${label.length}.pt`), input);
    });
  });

  it('replaces an inner block whose class is shared by its siblings', async () => {
    await using model = await loadPretrained(fixture(`resnet_small.${kind}.pt`));
    const input = decode(refs.resnet_small.input);
    await model.forward(input);
    model.replace('layer1.0.conv1', nn.identity());
    expect(model.modules().find((m) => m.path === 'layer1.1.conv1')?.type).toBe('Conv2d');
    // Same numbers as the eager Python model with layer1[0].conv1 = Identity().
    const expected = refs.resnet_small_layer1_0_conv1_identity.output;
    expect(outputDiff(await model.forward(input), expected)).toBeLessThanOrEqual(1e-5);
    await expectGradients(model, input);
    expect(model.parameters().some((p) => p.name === 'layer1.0.conv1.weight')).toBe(false);
    await expectPythonAgrees(model, join(out, `inner.${kind}.pt`), input);
  });
});

describe('replace', () => {
  it('works twice on one slot and takes a loaded model as the module', async () => {
    await using model = await loadPretrained(fixture('resnet_small.scripted.pt'));
    await using mlp = await loadPretrained(fixture('mlp.traced.pt'));
    const input = decode(refs.resnet_small.input);
    model.replace('fc', nn.linear(16, 12));
    model.replace('fc', nn.sequential(nn.linear(16, 12), nn.relu(), mlp));
    expect((await model.forward<Tensor>(input)).shape).toEqual([2, 4]);
    expect(model.parameters('fc.2').map((p) => p.name)).toEqual(mlp.parameters().map((p) => `fc.2.${p.name}`));
    await expectGradients(model, input);
    await expectPythonAgrees(model, join(out, 'nested.pt'), input);
    // The source model is copied in and stays usable on its own.
    expect((await mlp.forward<Tensor>(decode(refs.mlp.input))).shape).toEqual([4, 4]);
  });

  it('builds every native layer as TorchScript that Python runs', async () => {
    await using model = await loadPretrained(fixture('resnet_small.scripted.pt'));
    const input = decode(refs.resnet_small.input);
    model.replace('layer2.1.conv1', nn.conv2d(16, 16, 3, { padding: 1, bias: false }));
    model.replace('fc', nn.sequential(nn.linear(16, 8), nn.batchNorm1d(8), nn.gelu(), nn.layerNorm(8), nn.flatten(), nn.linear(8, 5, { bias: false })));
    expect((await model.forward<Tensor>(input)).shape).toEqual([2, 5]);
    await expectGradients(model, input);
    await expectPythonAgrees(model, join(out, 'layers.pt'), input);
  });

  it('initialises layers exactly as PyTorch does under the same seed', async () => {
    // Python: torch.manual_seed(3); l = nn.Linear(16, 2); l.weight[0, :2], l.bias
    manualSeed(3);
    await using model = await loadPretrained(fixture('resnet_small.scripted.pt'));
    const head = nn.linear(16, 2);
    model.replace('fc', head);
    const state = (await model.stateDict());
    const w = state['fc.weight'].toTypedArray() as Float32Array;
    const b = state['fc.bias'].toTypedArray() as Float32Array;
    const python = [-0.24786823987960815, -0.19721531867980957, -0.1803189516067505, -0.2242240607738495];
    expect([w[0], w[1], b[0], b[1]].map((v) => Number(v.toFixed(6)))).toEqual(python.map((v) => Number(v.toFixed(6))));
  });

  it('names the module when a replacement has the wrong shape', async () => {
    await using model = await loadPretrained(fixture('resnet_small.traced.pt'));
    model.replace('fc', nn.linear(32, 7));
    await expect(model.forward(decode(refs.resnet_small.input))).rejects.toMatchObject({
      code: 'TORCH_SHAPE',
      message: "shape mismatch in 'fc' (Linear(32 -> 7)): expected 32 input features in the last dimension but received 16",
    });
  });

  it('refuses bad paths, parents that read the child, and frozen models', async () => {
    await using model = await loadPretrained(fixture('resnet_small.scripted.pt'));
    const code = (fn: () => unknown) => {
      try {
        fn();
      } catch (error) {
        expect(error).toBeInstanceOf(TorchError);
        return [(error as TorchError).code, (error as TorchError).message];
      }
      throw new Error('expected a TorchError');
    };
    expect(code(() => model.replace('layer1.9.conv1', nn.identity()))).toEqual([
      'TORCHLITE_NO_SUCH_MODULE', "cannot replace 'layer1.9.conv1': the model has no submodule 'layer1.9'",
    ]);
    expect(code(() => model.replace('fc.weight', nn.identity()))).toEqual([
      'TORCHLITE_NO_SUCH_MODULE', "cannot replace 'fc.weight': the model has no submodule 'fc.weight'",
    ]);
    await using reads = await loadPretrained(fixture('uses_weight.scripted.pt'));
    expect(code(() => reads.replace('fc', nn.linear(4, 3)))).toEqual([
      'TORCHLITE_UNSUPPORTED_SURGERY', "cannot replace 'fc': its parent reads its attribute 'weight' of it, not only forward",
    ]);
    await using frozen = await loadPretrained(fixture('mlp.frozen.pt'));
    expect(code(() => frozen.replace('net.0', nn.linear(12, 32)))[0]).toBe('TORCHLITE_FROZEN_MODEL');
    expect(() => model.replace('fc', {} as never)).toThrow(new TypeError('Expected an nn layer or a loaded Model for `module` but received an object'));
    expect(() => model.replace('', nn.identity())).toThrow(TypeError);
    await using tuple = await loadPretrained(fixture('tuple_out.scripted.pt'));
    await using twoHeads = await loadPretrained(fixture('tuple_out.traced.pt'));
    expect(code(() => tuple.replace('head', twoHeads))).toEqual([
      'TORCHLITE_INCOMPATIBLE_MODULE', "cannot replace 'head': its forward is (Tensor) -> Tensor but the replacement's is (Tensor) -> Tuple[Tensor, Tensor]",
    ]);
  });

  it('resetClassifier finds the head, optionally behind dropout', async () => {
    await using resnet = await loadPretrained(fixture('resnet_small.traced.pt'));
    expect(resnet.resetClassifier(3)).toBe('fc');
    expect((await resnet.forward<Tensor>(randn([1, 3, 16, 16]))).shape).toEqual([1, 3]);
    await using mobile = await loadPretrained(fixture('mobilenet_small.scripted.pt'));
    expect(mobile.resetClassifier(4, { dropout: 0.3 })).toBe('classifier.3');
    expect(mobile.modules().find((m) => m.path === 'classifier.3.0')?.type).toBe('Dropout');
    expect((await mobile.forward<Tensor>(randn([1, 3, 16, 16]))).shape).toEqual([1, 4]);
    expect(() => mobile.resetClassifier(0)).toThrow(new RangeError('Expected a positive integer for `numClasses` but received 0'));
  });
});

describe('freeze', () => {
  it('freezes all but the head; frozen BatchNorm stays in eval while unfrozen ones train', async () => {
    await using model = await loadPretrained(fixture('resnet_small.scripted.pt'));
    expect(model.freeze()).toEqual({ trainable: 0, frozen: 11122 });
    expect(model.unfreeze(['fc', 'layer2.1.*'])).toEqual({ trainable: 170 + 4672, frozen: 11122 - 170 - 4672 });
    expect(model.parameters().filter((p) => p.requiresGrad).map((p) => p.name)).toEqual([
      'layer2.1.conv1.weight', 'layer2.1.bn1.weight', 'layer2.1.bn1.bias', 'layer2.1.conv2.weight', 'layer2.1.bn2.weight', 'layer2.1.bn2.bias', 'fc.weight', 'fc.bias',
    ]);
    const before = (await model.stateDict());
    const snapshot = Object.fromEntries(Object.entries(before).map(([k, t]) => [k, t.toTypedArray()]));
    model.train();
    for (let i = 0; i < 3; i++) await model.forward(randn([4, 3, 16, 16]));
    const after = (await model.stateDict());
    for (const name of Object.keys(snapshot)) {
      if (!name.includes('running_')) continue;
      const changed = maxAbsDiff(after[name].toTypedArray() as Float32Array, snapshot[name] as Float32Array) > 0;
      expect([name, changed]).toEqual([name, name.startsWith('layer2.1.')]);
    }
    await expectGradients(model, decode(refs.resnet_small.input));
    model.bnPolicy = 'train';
    expect(model.bnPolicy).toBe('train');
    await model.forward(randn([4, 3, 16, 16]));
    const trained = (await model.stateDict());
    expect(maxAbsDiff(trained['bn1.running_mean'].toTypedArray() as Float32Array, snapshot['bn1.running_mean'] as Float32Array)).toBeGreaterThan(0);
    // 'eval': every BatchNorm, trainable or not, normalises by its running statistics and
    // leaves them alone while the model trains.
    model.bnPolicy = 'eval';
    expect([model.bnPolicy, model.training]).toEqual(['eval', true]);
    await model.forward(randn([4, 3, 16, 16]));
    const held = (await model.stateDict());
    for (const name of Object.keys(snapshot)) if (name.includes('running_')) expect([name, held[name].toTypedArray()]).toEqual([name, trained[name].toTypedArray()]);
    model.train();
    expect(model.parameters().filter((p) => p.requiresGrad).length).toBe(8); // its scale and shift still train
    await expectGradients(model, decode(refs.resnet_small.input));
  });

  it('throws TORCHLITE_NO_MATCH for a pattern that matches nothing, naming it', async () => {
    await using model = await loadPretrained(fixture('resnet_small.scripted.pt'));
    expect(() => model.freeze(['fc', 'layer9'])).toThrow(expect.objectContaining({ code: 'TORCHLITE_NO_MATCH', message: 'No parameter matches layer9' }));
    expect(() => model.unfreeze(/^nothing/)).toThrow(expect.objectContaining({ code: 'TORCHLITE_NO_MATCH' }));
    expect(() => model.requiresGrad('fc', 'yes' as never)).toThrow(new TypeError("Expected a boolean for `flag` but received 'yes'"));
    expect(() => model.freeze([])).toThrow(new TypeError('Expected a non-empty pattern array for `patterns` but received an array of length 0'));
    expect(() => { model.bnPolicy = 'frozen' as never; }).toThrow(RangeError);
    expect(model.requiresGrad(/bn\d\.bias$/, false).frozen).toBeGreaterThan(0);
  });
});

describe('traced models after the training-flag fix', () => {
  it('update BatchNorm statistics and drop out in train() only', async () => {
    await using model = await loadPretrained(fixture('resnet_small.traced.pt'));
    expect(model.isTraced).toBe(true);
    const input = decode(refs.resnet_small.input);
    const mean = async () => (await model.stateDict())['bn1.running_mean'].toTypedArray() as Float32Array;
    const start = await mean();
    const evalOut = (await model.forward<Tensor>(input)).toTypedArray() as Float32Array;
    expect(maxAbsDiff(await mean(), start)).toBe(0);
    model.train();
    await model.forward(input);
    expect(maxAbsDiff(await mean(), start)).toBeGreaterThan(0);
    // Dropout: with BatchNorm policy frozen-eval and everything frozen, only dropout differs.
    model.freeze();
    const a = (await model.forward<Tensor>(input)).toTypedArray() as Float32Array;
    const b = (await model.forward<Tensor>(input)).toTypedArray() as Float32Array;
    expect(maxAbsDiff(a, b)).toBeGreaterThan(0);
    model.eval();
    const c = (await model.forward<Tensor>(input)).toTypedArray() as Float32Array;
    const d = (await model.forward<Tensor>(input)).toTypedArray() as Float32Array;
    expect(maxAbsDiff(c, d)).toBe(0);
    expect(maxAbsDiff(c, evalOut)).toBeGreaterThan(0); // statistics moved during the train() forward
  });
});

describe('save', () => {
  it('stores metadata, writes atomically and reports write failures', async () => {
    await using model = await loadPretrained(fixture('mlp.scripted.pt'));
    const file = join(out, 'meta.pt');
    await model.save(file, { metadata: { classes: ['a', 'b'], mean: [0.5] } });
    expect(model.metadata).toEqual({ classes: ['a', 'b'], mean: [0.5] });
    await using again = await loadPretrained(file);
    expect(again.metadata).toEqual({ classes: ['a', 'b'], mean: [0.5] });
    await expect(model.save(join(out, 'missing', 'x.pt'))).rejects.toMatchObject({ code: 'TORCHLITE_FILE_NOT_FOUND' });
    await expect(model.save(out)).rejects.toMatchObject({ code: 'TORCHLITE_IS_DIRECTORY' });
    const cyclic: Record<string, unknown> = {};
    cyclic.self = cyclic;
    await expect(model.save(file, { metadata: cyclic })).rejects.toThrow(TypeError);
    const { readdirSync } = await import('node:fs');
    expect(readdirSync(out).filter((f) => f.includes('.tmp-'))).toEqual([]);
  });
});

describe('resetParameters', () => {
  it.runIf(hasTorch)("draws PyTorch's constructors' weights under the same seed, as a job queued behind a pending step", async () => {
    await using model = await loadPretrained(fixture('mlp.scripted.pt'));
    const expected = JSON.parse(
      python(`import json, torch
torch.manual_seed(3)
layers = [torch.nn.Linear(12, 32), torch.nn.Linear(32, 16), torch.nn.Linear(16, 4)]
print(json.dumps({f"net.{2 * i}.{n}": p.detach().flatten().tolist() for i, l in enumerate(layers) for n, p in l.named_parameters()}))`),
    ) as Record<string, number[]>;
    model.train();
    const step = model.trainStep(randn([4, 12]), tensor(BigInt64Array.of(0n, 1n, 2n, 3n)), { loss: loss.crossEntropy(), optimizer: optim.sgd(model, { lr: 0.5 }) });
    manualSeed(3);
    const reset = model.resetParameters(); // queued behind the step: the step does not touch what it draws
    await Promise.all([step, reset]);
    const state = await model.stateDict();
    for (const [name, values] of Object.entries(expected)) expect(maxAbsDiff(state[name].toTypedArray() as Float32Array, values), name).toBeLessThan(1e-7);
  });
});
