import { spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { data, fineTune, loadPretrained, lora, loss, manualSeed, optim, type Tensor, tensor } from '../src';
import { fixture, hasTorch, PYTHON, root } from './helpers';

const ENCODER = join(root, 'models', 'fortunes-encoder.pt');
const REFERENCE = join(root, 'scripts', 'fixtures', 'lora_reference.py');

function reference<T>(...args: string[]): T {
  const dir = mkdtempSync(join(tmpdir(), 'torchlite-lora-'));
  const out = join(dir, 'out.json');
  const run = spawnSync(PYTHON, [REFERENCE, ...args.map((a) => a.replace('<out>', out).replace('<dir>', dir))], { encoding: 'utf8' });
  if (run.status !== 0) throw new Error(run.stderr);
  return { ...(JSON.parse(readFileSync(out, 'utf8')) as object), dir } as T;
}

/** The largest difference relative to the largest value expected: factors that start at zero have entries near it. */
const relative = (actual: ArrayLike<number>, expected: ArrayLike<number>) => {
  let worst = 0;
  let scale = 0;
  for (let i = 0; i < expected.length; i++) {
    worst = Math.max(worst, Math.abs(actual[i] - expected[i]));
    scale = Math.max(scale, Math.abs(expected[i]));
  }
  return worst / scale;
};

interface TextReference {
  losses: number[];
  A: number[];
  B: number[];
  batches: { ids: number[]; mask: number[]; target: number[] }[];
  logits?: number[];
  config?: Record<string, unknown>;
  keys?: string[];
}

describe.runIf(hasTorch)('LoRA', () => {
  it("trains the text encoder's attention projections as PEFT does: 10 AdamW steps, losses and adapter weights", async () => {
    const expected = reference<TextReference>('text', ENCODER, '<out>', '-');
    await using model = await loadPretrained(ENCODER);
    manualSeed(7);
    const applied = lora.apply(model, { targets: /attention\.(query|value)$/, r: 8, alpha: 16 });
    expect(applied.modules).toEqual(['layers.0.attention.query', 'layers.0.attention.value', 'layers.1.attention.query', 'layers.1.attention.value']);
    // 4 modules × (8 × 64 + 64 × 8) adapter parameters train; everything else is frozen.
    expect(applied.trainable).toBe(4 * 2 * 8 * 64);
    expect(model.parameters().filter((p) => p.requiresGrad).map((p) => p.name)).toEqual([
      'layers.0.attention.query.lora_A.default.weight',
      'layers.0.attention.query.lora_B.default.weight',
      'layers.0.attention.value.lora_A.default.weight',
      'layers.0.attention.value.lora_B.default.weight',
      'layers.1.attention.query.lora_A.default.weight',
      'layers.1.attention.query.lora_B.default.weight',
      'layers.1.attention.value.lora_A.default.weight',
      'layers.1.attention.value.lora_B.default.weight',
    ]);
    expect(model.summary()).toContain('LoraLayer');
    const batches = expected.batches.map((b) => ({ input: [tensor(BigInt64Array.from(b.ids, BigInt), [8, 12]), tensor(BigInt64Array.from(b.mask, BigInt), [8, 12])], target: tensor(BigInt64Array.from(b.target, BigInt)) }));
    const optimizer = optim.adamw(model, { lr: 1e-3, weightDecay: 0.01 });
    model.train();
    manualSeed(11); // dropout's draws, as in Python
    const losses = [];
    for (let step = 0; step < 10; step++) losses.push((await model.trainStep(batches[step % 2].input, batches[step % 2].target, { loss: loss.crossEntropy(), optimizer })).loss);
    losses.forEach((value, i) => expect(Math.abs(value - expected.losses[i]) / Math.abs(expected.losses[i])).toBeLessThan(1e-5));
    const state = await model.stateDict();
    expect(relative(state['layers.0.attention.query.lora_A.default.weight'].toTypedArray() as Float32Array, expected.A)).toBeLessThan(1e-5);
    expect(relative(state['layers.0.attention.query.lora_B.default.weight'].toTypedArray() as Float32Array, expected.B)).toBeLessThan(1e-5);

    // Saved as PEFT saves it, loaded by the reference into a fresh base: the same logits.
    const dir = mkdtempSync(join(tmpdir(), 'torchlite-adapter-'));
    await lora.save(model, dir, { baseModel: 'fortunes-encoder' });
    model.eval();
    const mine = (await model.forward(...(batches[0].input as Tensor[]))) as Tensor;
    const loaded = reference<TextReference>('text', ENCODER, '<out>', dir);
    expect(loaded.keys).toContain('base_model.model.layers.0.attention.query.lora_A.weight');
    expect(loaded.keys).toHaveLength(8);
    expect(loaded.config).toMatchObject({ peft_type: 'LORA', r: 8, lora_alpha: 16, lora_dropout: 0, bias: 'none', base_model_name_or_path: 'fortunes-encoder', target_modules: applied.modules });
    expect(relative(mine.toTypedArray() as Float32Array, loaded.logits!)).toBeLessThan(1e-5);

    // Merged, the base weights carry the adapter: the same logits, and unmerging restores them bit for bit.
    const before = (state['layers.0.attention.query.base_layer.weight'].toTypedArray() as Float32Array).slice();
    await lora.merge(model);
    const merged = (await model.forward(...(batches[0].input as Tensor[]))) as Tensor;
    expect(relative(merged.toTypedArray() as Float32Array, mine.toTypedArray() as Float32Array)).toBeLessThan(1e-5);
    const folded = (await model.stateDict())['layers.0.attention.query.base_layer.weight'].toTypedArray() as Float32Array;
    expect(Array.from(folded)).not.toEqual(Array.from(before));
    await expect(lora.merge(model)).rejects.toMatchObject({ code: 'TORCHLITE_BAD_STATE' });
    await lora.unmerge(model);
    expect(Array.from((await model.stateDict())['layers.0.attention.query.base_layer.weight'].toTypedArray() as Float32Array)).toEqual(Array.from(before));

    // The whole model, wrappers and all, saves as TorchScript that Python runs.
    await model.save(join(dir, 'with-adapter.pt'));
    const ids = batches[0].input[0].toTypedArray() as BigInt64Array;
    const masks = batches[0].input[1].toTypedArray() as BigInt64Array;
    const python = spawnSync(
      PYTHON,
      ['-c', 'import sys, json, torch\nm = torch.jit.load(sys.argv[1]).eval()\nids = torch.tensor(json.loads(sys.argv[2])).view(8, 12)\nmask = torch.tensor(json.loads(sys.argv[3])).view(8, 12)\nprint(json.dumps(m(ids, mask).flatten().tolist()))', join(dir, 'with-adapter.pt'), JSON.stringify(Array.from(ids, Number)), JSON.stringify(Array.from(masks, Number))],
      { encoding: 'utf8' },
    );
    expect(python.status, python.stderr).toBe(0);
    expect(relative(JSON.parse(python.stdout) as number[], mine.toTypedArray() as Float32Array)).toBeLessThan(1e-5);

    // Loaded back onto a fresh base by torchlite: the same logits.
    await using again = await loadPretrained(ENCODER);
    const result = await lora.load(again, dir);
    expect(result.modules).toEqual(applied.modules);
    again.eval();
    const reloaded = (await again.forward(...(batches[0].input as Tensor[]))) as Tensor;
    expect(relative(reloaded.toTypedArray() as Float32Array, mine.toTypedArray() as Float32Array)).toBeLessThan(1e-6);
  }, 60_000);

  it("trains a CNN's Conv2d layers as PEFT does", async () => {
    const dir = mkdtempSync(join(tmpdir(), 'torchlite-lora-cnn-'));
    const expected = reference<{ losses: number[]; A: number[]; B: number[]; batches: { x: number[]; y: number[] }[] }>('cnn', join(dir, 'cnn.pt'), '<out>');
    await using model = await loadPretrained(join(dir, 'cnn.pt'), { channelsLast: false });
    manualSeed(7);
    const applied = lora.apply(model, { targets: /^conv/, r: 4, alpha: 8 });
    expect(applied.modules).toEqual(['conv1', 'conv2', 'conv3']);
    const batches = expected.batches.map((b) => ({ x: tensor(b.x, [4, 3, 12, 12]), y: tensor(BigInt64Array.from(b.y, BigInt)) }));
    const optimizer = optim.adamw(model, { lr: 1e-3, weightDecay: 0.01 });
    model.train();
    const losses = [];
    for (let step = 0; step < 10; step++) losses.push((await model.trainStep(batches[step % 2].x, batches[step % 2].y, { loss: loss.crossEntropy(), optimizer })).loss);
    losses.forEach((value, i) => expect(Math.abs(value - expected.losses[i]) / Math.abs(expected.losses[i])).toBeLessThan(1e-5));
    const state = await model.stateDict();
    expect(state['conv2.lora_A.default.weight'].shape).toEqual([4, 8, 3, 3]);
    expect(state['conv2.lora_B.default.weight'].shape).toEqual([16, 4, 1, 1]);
    expect(relative(state['conv2.lora_A.default.weight'].toTypedArray() as Float32Array, expected.A)).toBeLessThan(1e-5);
    expect(relative(state['conv2.lora_B.default.weight'].toTypedArray() as Float32Array, expected.B)).toBeLessThan(1e-5);
    // Merging a convolution's adapter folds B·A over its kernel.
    model.eval();
    const plain = (await model.forward(batches[0].x)) as Tensor;
    await lora.merge(model);
    const merged = (await model.forward(batches[0].x)) as Tensor;
    expect(relative(merged.toTypedArray() as Float32Array, plain.toTypedArray() as Float32Array)).toBeLessThan(1e-5);
  }, 60_000);

  it('serves two adapters chosen per request while a third trains, each answer as that adapter alone gives it, and unloads them', async () => {
    await using model = await loadPretrained(ENCODER);
    manualSeed(1);
    lora.apply(model, { targets: /attention\.(query|value)$/, name: 'a' });
    lora.apply(model, { targets: /attention\.(query|value)$/, name: 'b' });
    // Non-zero B factors, so that the adapters differ from the base and from each other.
    const state = await model.stateDict();
    const update: Record<string, Tensor> = {};
    for (const [name, value] of Object.entries(state))
      if (/lora_B\.(a|b)\.weight$/.test(name)) update[name] = tensor(Float32Array.from({ length: value.shape[0] * value.shape[1] }, (_, i) => Math.sin(i + (name.includes('.a.') ? 1 : 2)) / 10), value.shape);
    await model.loadStateDict(update, { strict: false });
    lora.apply(model, { targets: /attention\.(query|value)$/, name: 'c' });
    await lora.use(model, 'c');
    model.eval();
    const ids = tensor(BigInt64Array.from({ length: 4 * 10 }, (_, i) => BigInt(1 + ((i * 37) % 500))), [4, 10]);
    const mask = tensor(new BigInt64Array(40).fill(1n), [4, 10]);
    // predict runs in eval mode whatever the model's mode, so the requests below see no dropout while c trains.
    const alone = async (adapter: string) => Array.from((await model.predict([ids, mask], { adapter })).probabilities.toTypedArray() as Float32Array);
    const [a, b] = [await alone('a'), await alone('b')];
    expect(relative(a, b)).toBeGreaterThan(1e-4);
    // c trains (the optimizer holds its factors only) while requests for a and b interleave.
    model.train();
    const optimizer = optim.adamw(model, { lr: 1e-2 });
    const target = tensor(BigInt64Array.of(0n, 1n, 2n, 3n));
    const training = (async () => {
      for (let step = 0; step < 6; step++) await model.trainStep([ids, mask], target, { loss: loss.crossEntropy(), optimizer });
    })();
    const answers = await Promise.all(Array.from({ length: 12 }, (_, i) => (i % 2 === 0 ? 'a' : 'b')).map(async (adapter) => ({ adapter, out: await alone(adapter) })));
    await training;
    model.eval();
    for (const { adapter, out } of answers) expect(relative(out, adapter === 'a' ? a : b)).toBeLessThan(1e-6);
    // The model still runs c, which trained; a request for an adapter it lacks is refused.
    const c = Array.from((await model.predict([ids, mask])).probabilities.toTypedArray() as Float32Array);
    expect(relative(c, a)).toBeGreaterThan(1e-4);
    await expect(model.predict([ids, mask], { adapter: 'd' })).rejects.toMatchObject({ code: 'TORCHLITE_NO_MATCH', message: "the model has no LoRA adapter 'd' (it has 'a', 'b', 'c')" });
    expect(lora.adapters(model)).toEqual(['a', 'b', 'c']);

    // Unloaded one by one, the model keeps serving the others, then gets its own layers back.
    await model.idle();
    lora.remove(model, 'a');
    expect(lora.adapters(model)).toEqual(['b', 'c']);
    expect(model.parameters().some((p) => p.name.includes('.lora_A.a.'))).toBe(false);
    expect(relative(await alone('b'), b)).toBeLessThan(1e-6);
    await expect(model.predict([ids, mask], { adapter: 'a' })).rejects.toMatchObject({ code: 'TORCHLITE_NO_MATCH' });
    lora.remove(model, 'b');
    lora.remove(model, 'c');
    expect(model.modules().filter((m) => m.type === 'LoraLayer')).toEqual([]);
    expect(model.parameters('layers.0.attention.query.weight')).toHaveLength(1);
    await using base = await loadPretrained(ENCODER);
    base.eval();
    expect(relative(Array.from((await model.predict([ids, mask])).probabilities.toTypedArray() as Float32Array), Array.from((await base.predict([ids, mask])).probabilities.toTypedArray() as Float32Array))).toBe(0);
    expect(() => lora.remove(model, 'c')).toThrow(expect.objectContaining({ code: 'TORCHLITE_NO_MATCH' }));
  }, 60_000);

  it('wraps the Linears of a traced model too, and trains them', async () => {
    await using model = await loadPretrained(fixture('mlp.traced.pt'));
    const linears = model.modules().filter((m) => m.type === 'Linear').map((m) => m.path);
    const applied = lora.apply(model, { targets: linears, r: 2 });
    expect(applied.modules).toEqual(linears);
    const x = tensor(Float32Array.from({ length: 4 * model.parameters()[0].shape[1] }, (_, i) => Math.sin(i)), [4, model.parameters()[0].shape[1]]);
    const before = Array.from(((await model.forward(x)) as Tensor).toTypedArray() as Float32Array);
    model.train();
    const optimizer = optim.sgd(model, { lr: 0.1 });
    for (let i = 0; i < 3; i++) await model.trainStep(x, tensor(BigInt64Array.of(0n, 1n, 0n, 1n)), { loss: loss.crossEntropy(), optimizer });
    model.eval();
    const after = Array.from(((await model.forward(x)) as Tensor).toTypedArray() as Float32Array);
    expect(relative(after, before)).toBeGreaterThan(1e-4);
    // Only the adapters moved.
    expect(model.parameters().filter((p) => p.requiresGrad).every((p) => p.name.includes('.lora_'))).toBe(true);
  });

  it('says what is wrong', async () => {
    await using model = await loadPretrained(ENCODER);
    expect(() => lora.apply(model, { targets: 'nothing.here' })).toThrow(expect.objectContaining({ code: 'TORCHLITE_NO_MATCH', message: 'No Linear or Conv2d module matches nothing.here (LoRA wraps those)' }));
    expect(() => lora.apply(model, { targets: '*.query', name: 'tenant-a' })).toThrow("Expected a name of letters, digits and _, not starting with a digit for `options.name` but received 'tenant-a'");
    expect(() => lora.apply(model, { targets: '*.query', dropout: 1 })).toThrow(RangeError);
    lora.apply(model, { targets: 'layers.*.attention.query', name: 'a' });
    expect(() => lora.apply(model, { targets: 'layers.*.attention.query', name: 'a' })).toThrow("The model already has the LoRA adapter 'a'; pass another name");
    await expect(lora.use(model, 'b')).rejects.toMatchObject({ code: 'TORCHLITE_NO_MATCH', message: "The model has no LoRA adapter 'b' (it has 'a')" });
    await expect(model.predict([tensor(BigInt64Array.of(1n), [1, 1]), tensor(BigInt64Array.of(1n), [1, 1])], { adapter: 3 as never })).rejects.toThrow(new TypeError('Expected a non-empty string for `options.adapter` but received 3'));
    // An adapter for another base: its shapes name the module.
    const dir = mkdtempSync(join(tmpdir(), 'torchlite-adapter-'));
    await lora.save(model, dir, { name: 'a' });
    writeFileSync(join(dir, 'adapter_config.json'), JSON.stringify({ peft_type: 'LORA', r: 4, lora_alpha: 8, target_modules: ['layers.0.attention.query', 'layers.1.attention.query'] }));
    await using other = await loadPretrained(ENCODER);
    await expect(lora.load(other, dir)).rejects.toMatchObject({
      code: 'TORCHLITE_WEIGHTS_MISMATCH',
      message: "the adapter's base_model.model.layers.0.attention.query.lora_A.weight has shape [8, 64] but 'layers.0.attention.query' takes [4, 64] (r 4): the adapter was trained on another base model",
    });
    writeFileSync(join(dir, 'adapter_config.json'), JSON.stringify({ peft_type: 'LORA', r: 8, target_modules: ['encoder.layer.0.attention.self.query'] }));
    await expect(lora.load(other, dir)).rejects.toMatchObject({ code: 'TORCHLITE_WEIGHTS_MISMATCH', message: `the adapter in ${dir} targets 'encoder.layer.0.attention.self.query', which the model does not have: is it the adapter's base model?` });
  });
});

describe('LoRA from the Hub cache', () => {
  it("loads an adapter named hf:owner/name from the cache, offline, as huggingface_hub lays it out", async () => {
    await using model = await loadPretrained(ENCODER);
    manualSeed(2);
    lora.apply(model, { targets: /attention\.value$/, r: 4 });
    const cache = mkdtempSync(join(tmpdir(), 'torchlite-hub-'));
    const commit = 'a'.repeat(40);
    const folder = join(cache, 'models--someone--encoder-lora');
    await lora.save(model, join(folder, 'snapshots', commit));
    mkdirSync(join(folder, 'refs'));
    writeFileSync(join(folder, 'refs', 'main'), commit);
    const saved = { cache: process.env.HF_HUB_CACHE, offline: process.env.HF_HUB_OFFLINE };
    Object.assign(process.env, { HF_HUB_CACHE: cache, HF_HUB_OFFLINE: '1' });
    try {
      await using other = await loadPretrained(ENCODER);
      const result = await lora.load(other, 'hf:someone/encoder-lora');
      expect(result.modules).toEqual(['layers.0.attention.value', 'layers.1.attention.value']);
      const a = (await model.stateDict())['layers.1.attention.value.lora_A.default.weight'].toTypedArray();
      expect((await other.stateDict())['layers.1.attention.value.lora_A.default.weight'].toTypedArray()).toEqual(a);
      await expect(lora.load(other, 'hf:someone/missing', { name: 'b' })).rejects.toMatchObject({ code: 'TORCHLITE_NOT_CACHED' });
    } finally {
      for (const [key, value] of [['HF_HUB_CACHE', saved.cache], ['HF_HUB_OFFLINE', saved.offline]] as const) {
        if (value === undefined) delete process.env[key];
        else process.env[key] = value;
      }
    }
  });
});

describe('LoRA with fineTune', () => {
  it('trains the adapters and the head, never the base weights', async () => {
    await using model = await loadPretrained(fixture('mlp.scripted.pt'));
    const head = model.classifierHead()!;
    const linears = model.modules().filter((m) => m.type === 'Linear' && m.path !== head).map((m) => m.path);
    lora.apply(model, { targets: linears, r: 2, modulesToSave: head });
    const before = await model.stateDict();
    const inputs = model.parameters(`${linears[0]}.base_layer.weight`)[0].shape[1];
    const x = Float32Array.from({ length: 64 * inputs }, (_, i) => Math.sin(i * 0.37));
    const classes = model.parameters(`${head}.weight`)[0].shape[0];
    const ds = data.tensorDataset(tensor(x, [64, inputs]), Int32Array.from({ length: 64 }, (_, i) => i % classes));
    await fineTune(model, { train: data.loader(ds, { batchSize: 16 }), freezeEpochs: 1, epochs: 2, lr: 1e-2 });
    const after = await model.stateDict();
    const moved = (name: string) => Array.from(after[name].toTypedArray() as Float32Array).some((v, i) => v !== (before[name].toTypedArray() as Float32Array)[i]);
    for (const name of Object.keys(before)) {
      if (name.includes('.lora_B.') || name.startsWith(`${head}.`)) expect(moved(name), name).toBe(true);
      else if (!name.includes('.lora_A.')) expect(moved(name), name).toBe(false);
    }
  });
});
