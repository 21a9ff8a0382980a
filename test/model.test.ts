import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { type Batch, loadPretrained, loss, type MetricSpec, type Model, optim, randn, Tensor, tensor, TorchError } from '../src';
import { decode, fixture, maxAbsDiff, outputDiff, refs, root } from './helpers';

const ARCHITECTURES = ['resnet_small', 'mobilenet_small', 'mlp', 'tuple_out', 'text'] as const;
const KINDS = ['scripted', 'traced'] as const;

describe.each(KINDS)('%s fixtures', (kind) => {
  it.each(ARCHITECTURES)('%s: forward matches Python within 1e-5', async (name) => {
    await using model = await loadPretrained(fixture(`${name}.${kind}.pt`));
    expect(model.isTraced).toBe(kind === 'traced');
    const output = await model.forward(decode(refs[name].input));
    expect(outputDiff(output, refs[name].output)).toBeLessThanOrEqual(1e-5);
  });
});

// Exported by PyTorch 2.11 (cu130) on the lent GPU machine (scripts/gpu-check.sh runs
// scripts/fixtures/make_fixtures.py there), with that PyTorch's outputs: the archives a
// current PyTorch writes load here and give its results.
describe('TorchScript written by PyTorch 2.11', () => {
  const refs211: typeof refs = JSON.parse(readFileSync(fixture('torch-2.11/refs.json'), 'utf8'));
  const files = [...ARCHITECTURES.flatMap((name) => KINDS.map((kind) => [name, `${name}.${kind}.pt`])), ['dict_out', 'dict_out.scripted.pt'], ['mlp', 'mlp.frozen.pt']];
  it.each(files)('%s (%s): forward matches PyTorch 2.11 within 1e-5', async (name, file) => {
    await using model = await loadPretrained(fixture(`torch-2.11/${file}`));
    const output = await model.forward(decode(refs211[name].input));
    expect(outputDiff(output, refs211[name].output)).toBeLessThanOrEqual(1e-5);
  });

  it('fine-tunes one and saves an archive that loads again', async () => {
    await using model = await loadPretrained(fixture('torch-2.11/resnet_small.traced.pt'));
    model.resetClassifier(3);
    model.train();
    const x = randn([4, 3, 16, 16]);
    const y = tensor(BigInt64Array.of(0n, 1n, 2n, 0n));
    const optimizer = optim.sgd(model, { lr: 0.1 });
    const first = await model.trainStep(x, y, { loss: loss.crossEntropy(), optimizer });
    for (let i = 0; i < 5; i++) await model.trainStep(x, y, { loss: loss.crossEntropy(), optimizer });
    expect((await model.trainStep(x, y, { loss: loss.crossEntropy(), optimizer })).loss).toBeLessThan(first.loss);
    model.eval();
    const file = join(mkdtempSync(join(tmpdir(), 'torchlite-211-')), 'tuned.pt');
    await model.save(file);
    // Training put it back in NCHW (its downsample cannot train in NHWC): load it the same way.
    expect(model.memoryFormat).toBe('contiguous');
    await using again = await loadPretrained(file, { channelsLast: false });
    expect(maxAbsDiff((await again.forward<Tensor>(x)).toTypedArray() as Float32Array, (await model.forward<Tensor>(x)).toTypedArray() as Float32Array)).toBe(0);
  });
});

describe('outputs', () => {
  it('maps a tuple output to an array of tensors', async () => {
    await using model = await loadPretrained(fixture('tuple_out.scripted.pt'));
    const [logits, embedding] = await model.forward<Tensor[]>(decode(refs.tuple_out.input));
    expect(logits.shape).toEqual([3, 3]);
    expect(embedding.shape).toEqual([3, 8]);
  });

  it('leaves a padded batch\'s repeated rows out of the scores of a tuple output, as of a tensor output', async () => {
    await using model = await loadPretrained(fixture('tuple_out.scripted.pt'));
    const x = decode(refs.tuple_out.input);
    const rows = Array.from(x.toTypedArray() as Float32Array);
    // The first sample again as a distributed shard's padding: evaluate must not score it.
    const padded = tensor([...rows, ...rows.slice(0, 6)], [4, 6]);
    const y = tensor(BigInt64Array.of(0n, 1n, 2n));
    const options = { loss: loss.crossEntropy(), metrics: ['accuracy', 'confusionMatrix'] as MetricSpec[] };
    const plain = await model.evaluate([{ input: x, target: y }], options);
    const withPadding = await model.evaluate([{ input: padded, target: tensor(BigInt64Array.of(0n, 1n, 2n, 0n)), padding: 1 } as Batch], options);
    expect(withPadding).toEqual(plain);
  });

  it('maps a dict output to an object of tensors', async () => {
    await using model = await loadPretrained(fixture('dict_out.scripted.pt'));
    const out = await model.forward<Record<string, Tensor>>(decode(refs.dict_out.input));
    expect(Object.keys(out).sort()).toEqual(['a', 'b']);
    expect(outputDiff(out, refs.dict_out.output)).toBeLessThanOrEqual(1e-5);
  });
});

describe('exported methods', () => {
  it('loads a module without forward and calls its methods, with dict inputs and outputs', async () => {
    await using model = await loadPretrained(fixture('methods.scripted.pt'));
    const encoded = await model.call<Tensor>('encode', tensor([1, 1]));
    expect(Array.from(encoded.toTypedArray() as Float32Array)).toEqual([2, 3]);
    const out = await model.call<Record<string, Tensor>>('generate', { a: tensor([1, 2]), b: tensor([10, 20]) });
    expect(Object.fromEntries(Object.entries(out).map(([k, t]) => [k, Array.from(t.toTypedArray() as Float32Array)]))).toEqual({ sum: [11, 22], scaled: [2, 6] });
    await expect(model.forward(tensor([1, 1]))).rejects.toThrow(
      new TorchError('TORCHLITE_NO_SUCH_METHOD', "the model has no method 'forward'; it exports 'encode', 'generate': call one with model.call(name, ...inputs)"),
    );
    await expect(model.call('decode')).rejects.toThrow(new TorchError('TORCHLITE_NO_SUCH_METHOD', "the model has no method 'decode'; it exports 'encode', 'generate'"));
    await expect(model.call(42 as never)).rejects.toThrow(new TypeError('Expected a non-empty string for `method` but received 42'));
  });
});

describe('Model', () => {
  let model: Model;
  beforeAll(async () => {
    model = await loadPretrained(fixture('resnet_small.scripted.pt'));
  });
  afterAll(() => model.dispose());

  it('lists modules with Python paths and plain type names', () => {
    const modules = model.modules();
    expect(modules[0]).toEqual({ path: '', type: 'ResNetSmall', params: 11122, trainable: 11122 });
    expect(modules.find((m) => m.path === 'layer1.0.conv1')).toEqual({ path: 'layer1.0.conv1', type: 'Conv2d', params: 576, trainable: 576 });
    expect(modules.find((m) => m.path === 'layer2.0.downsample.1')?.type).toBe('BatchNorm2d');
    expect(modules.find((m) => m.path === 'fc')).toEqual({ path: 'fc', type: 'Linear', params: 170, trainable: 170 });
  });

  it('lists parameters, filtered by prefix, glob and RegExp', () => {
    const all = model.parameters();
    expect(all).toHaveLength(32);
    expect(all.reduce((n, p) => n + p.numel, 0)).toBe(11122);
    expect(all.at(-1)).toEqual({ name: 'fc.bias', shape: [10], dtype: 'float32', numel: 10, requiresGrad: true });
    expect(model.parameters('fc').map((p) => p.name)).toEqual(['fc.weight', 'fc.bias']);
    expect(model.parameters('layer1.*.conv*').map((p) => p.name)).toEqual([
      'layer1.0.conv1.weight', 'layer1.0.conv2.weight', 'layer1.1.conv1.weight', 'layer1.1.conv2.weight',
    ]);
    expect(model.parameters(/downsample/).map((p) => p.name)).toEqual([
      'layer2.0.downsample.0.weight', 'layer2.0.downsample.1.weight', 'layer2.0.downsample.1.bias',
    ]);
    expect(model.parameters(['fc.bias', /^bn1\./]).map((p) => p.name)).toEqual(['bn1.weight', 'bn1.bias', 'fc.bias']);
    // A prefix matches whole path segments only.
    expect(() => model.parameters('layer')).toThrow(expect.objectContaining({ code: 'TORCHLITE_NO_MATCH' }));
  });

  it('lists buffers and exposes a state dict', async () => {
    const buffers = model.buffers();
    expect(buffers.map((b) => b.name)).toContain('bn1.running_mean');
    expect(buffers.find((b) => b.name === 'bn1.num_batches_tracked')).toEqual({ name: 'bn1.num_batches_tracked', shape: [], dtype: 'int64', numel: 1 });
    const state = (await model.stateDict());
    expect(Object.keys(state)).toHaveLength(32 + buffers.length);
    expect(state['fc.weight'].shape).toEqual([10, 16]);
    for (const t of Object.values(state)) t.dispose();
  });

  it('prints a summary with totals', () => {
    const summary = model.summary();
    expect(summary).toContain('ResNetSmall (scripted, cpu, eval mode)');
    expect(summary).toMatch(/^ {2}0 {2,}BasicBlock +1,184 {2}yes$/m);
    expect(summary).toContain('Total params:     11,122');
    expect(summary).toContain('Trainable params: 11,122');
    expect(summary).toContain('Frozen params:    0');
  });

  it('switches train and eval, which changes BatchNorm and dropout behaviour', async () => {
    // Its own copy: a train-mode forward updates BatchNorm running statistics.
    await using model = await loadPretrained(fixture('resnet_small.scripted.pt'));
    const input = decode(refs.resnet_small.input);
    expect(model.training).toBe(false);
    const evalOut = await model.forward(input);
    model.train();
    expect(model.training).toBe(true);
    const trainOut = await model.forward(input);
    model.eval();
    expect(outputDiff(evalOut, refs.resnet_small.output)).toBeLessThanOrEqual(1e-5);
    expect(outputDiff(trainOut, refs.resnet_small.output)).toBeGreaterThan(1e-3);
  });

  it('moves to a device', async () => {
    expect(await model.to('cpu')).toBe(model);
    expect(model.device).toBe('cpu');
  });

  it('runs forward off the event loop: timers keep firing', async () => {
    const input = randn([64, 3, 96, 96]);
    let ticks = 0;
    const timer = setInterval(() => ticks++, 5);
    const started = Date.now();
    await Promise.all([model.forward(input), model.forward(input)]);
    clearInterval(timer);
    const elapsed = Date.now() - started;
    expect(elapsed).toBeGreaterThan(100);
    expect(ticks).toBeGreaterThanOrEqual(Math.floor(elapsed / 5 / 4));
  });

  it('serialises calls in call order', async () => {
    const input = decode(refs.resnet_small.input);
    const order: number[] = [];
    const runs = [0, 1, 2, 3, 4].map((i) => model.forward(input).then((out) => (order.push(i), out)));
    const outputs = await Promise.all(runs);
    expect(order).toEqual([0, 1, 2, 3, 4]);
    for (const out of outputs) expect(outputDiff(out, refs.resnet_small.output)).toBeLessThanOrEqual(1e-5);
  });
});

describe('dispose', () => {
  it('is idempotent and waits for queued work', async () => {
    const model = await loadPretrained(fixture('mlp.scripted.pt'));
    const pending = model.forward(decode(refs.mlp.input));
    model.dispose();
    model.dispose();
    expect(outputDiff(await pending, refs.mlp.output)).toBeLessThanOrEqual(1e-5);
    expect(model.disposed).toBe(true);
    await expect(model.forward(decode(refs.mlp.input))).rejects.toMatchObject({ code: 'TORCHLITE_DISPOSED', message: 'Model has been disposed' });
    expect(() => model.parameters()).toThrow(TorchError);
    expect(() => model.train()).toThrow(expect.objectContaining({ code: 'TORCHLITE_DISPOSED' }));
  });

  it('supports await using', async () => {
    let outer: Model;
    {
      await using model = await loadPretrained(fixture('mlp.traced.pt'));
      outer = model;
    }
    expect(outer.disposed).toBe(true);
  });
});

describe('worker_threads', () => {
  it('ending a worker with a job in flight leaves the process and other threads unharmed', () => {
    const lib = JSON.stringify(join(root, 'lib'));
    const mlp = JSON.stringify(fixture('mlp.scripted.pt'));
    const script = `
      const { Worker } = require('node:worker_threads');
      const code = "const t = require(${lib.replace(/"/g, '\\"')}); (async () => { const m = await t.loadPretrained(${mlp.replace(/"/g, '\\"')}); const out = await m.forward(t.randn([2, 12])); require('node:worker_threads').parentPort.postMessage(out.shape); m.forward(t.randn([512, 12])); })();";
      (async () => {
        for (let i = 0; i < 4; i++) {
          const w = new Worker(code, { eval: true });
          await new Promise((resolve, reject) => { w.once('message', resolve); w.once('error', reject); });
          await w.terminate();
        }
        const t = require(${lib});
        const m = await t.loadPretrained(${mlp});
        console.log(JSON.stringify((await m.forward(t.randn([1, 12]))).shape));
      })();`;
    const result = spawnSync('node', ['-e', script], { encoding: 'utf8' });
    expect(result.stderr).toBe('');
    expect(result.status).toBe(0);
    expect(result.stdout.trim()).toBe('[1,4]');
  });
});

describe('methods()', () => {
  it('lists the exported methods with their argument names, TorchScript types, defaults and return types', async () => {
    await using exported = await loadPretrained(fixture('methods.scripted.pt'));
    expect(exported.methods()).toEqual([
      { name: 'encode', arguments: [{ name: 'x', type: 'Tensor' }], returns: 'Tensor' },
      { name: 'generate', arguments: [{ name: 'batch', type: 'Dict[str, Tensor]' }], returns: 'Dict[str, Tensor]' },
    ]);
    await using listed = await loadPretrained(fixture('list_input.scripted.pt'));
    expect(listed.methods()).toEqual([{ name: 'forward', arguments: [{ name: 'parts', type: 'List[Tensor]' }, { name: 'scale', type: 'float', default: '2.' }], returns: 'Tensor' }]);
    const copy = listed.methods();
    copy[0].arguments.pop();
    expect(listed.methods()[0].arguments).toHaveLength(2); // a copy, not the snapshot
    listed.dispose();
    expect(() => listed.methods()).toThrow(expect.objectContaining({ code: 'TORCHLITE_DISPOSED' }));
  });
});
