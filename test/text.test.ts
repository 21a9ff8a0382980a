// Text and multi-input models: batch inputs of several tensors (by position or by name),
// explicit List[Tensor] arguments, tokenizers, text datasets, and a BERT-shaped encoder
// (scripts/fixtures/text_encoder.py) checked against Python.
import { spawnSync } from 'node:child_process';
import { createRequire } from 'node:module';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { describe, expect, it } from 'vitest';

import { data, fit, loadPretrained, loss, manualSeed, optim, ScriptObject, type Tensor, tensor, tensorList, text, TorchError } from '../src';
import { fixture, hasTorch, python, PYTHON, relativeDiff, root } from './helpers';

const refs = JSON.parse(readFileSync(fixture('text.json'), 'utf8')) as {
  batches: { ids: number[][]; mask: number[][]; target: number[] }[];
  losses: number[];
  params: Record<string, number[]>;
  eval: number[][];
};
const dir = mkdtempSync(join(tmpdir(), 'torchlite-text-'));
const int64 = (rows: number[][]) => tensor(rows.flat(), [rows.length, rows[0].length], { dtype: 'int64' });
const batch = (k: number) => ({ ids: int64(refs.batches[k].ids), mask: int64(refs.batches[k].mask), target: tensor(refs.batches[k].target, [refs.batches[k].target.length], { dtype: 'int64' }) });
const rowsOf = async (t: Tensor) => {
  const flat = Array.from((await t.read()) as BigInt64Array, Number);
  return Array.from({ length: t.shape[0] }, (_, r) => flat.slice(r * t.shape[1], (r + 1) * t.shape[1]));
};
const values = async (t: Tensor) => Array.from((await t.read()) as Float32Array);
const write = (name: string, content: string) => {
  writeFileSync(join(dir, name), content);
  return join(dir, name);
};
function warningsDuring<T>(run: () => Promise<T>): Promise<{ result: T; warnings: string[] }> {
  const warnings: string[] = [];
  const onWarning = (w: Error) => warnings.push(w.message);
  process.on('warning', onWarning);
  // Warnings are emitted on the next tick.
  const settled = () => new Promise((resolve) => setImmediate(resolve)).finally(() => process.off('warning', onWarning));
  return run().then(
    async (result) => {
      await settled();
      return { result, warnings };
    },
    async (error) => {
      await settled();
      throw error;
    },
  );
}

describe('several inputs', () => {
  it('trains the BERT-shaped encoder with a padding mask as Python does: 10 AdamW steps with dropout, inputs by position and by name', async () => {
    await using model = await loadPretrained(fixture('encoder.scripted.pt'));
    model.train();
    const optimizer = optim.adamw(model, { lr: 1e-3, weightDecay: 0.01 });
    manualSeed(5);
    const losses: number[] = [];
    for (let step = 0; step < 10; step++) {
      const { ids, mask, target } = batch(step % 3);
      const input = step % 2 === 0 ? { input_ids: ids, attention_mask: mask } : [ids, mask];
      losses.push((await model.trainStep(input, target, { loss: loss.crossEntropy(), optimizer })).loss);
    }
    expect(relativeDiff(losses, refs.losses)).toBeLessThan(1e-5);
    const state = (await model.stateDict());
    for (const [name, expected] of Object.entries(refs.params)) expect(relativeDiff(await values(state[name]), expected)).toBeLessThan(1e-5);
    model.eval();
    const { ids, mask } = batch(0);
    expect(relativeDiff(await values(await model.forward(ids, mask)), refs.eval.flat())).toBeLessThan(1e-5);
  });

  it('evaluates and predicts on batch inputs of two tensors; padding does not change a text', async () => {
    await using model = await loadPretrained(fixture('encoder.scripted.pt'));
    model.eval();
    const { ids, mask, target } = batch(0);
    const metrics = await model.evaluate([{ input: [ids, mask], target }], { loss: loss.crossEntropy() });
    expect(metrics.accuracy).toBeGreaterThanOrEqual(0);
    const { probabilities } = await model.predict({ attention_mask: mask, input_ids: ids });
    expect(probabilities.shape).toEqual([4, 3]);
    // Row 0 alone, and padded with 5 more tokens that the mask hides: the same scores.
    const row = refs.batches[0].ids[0].slice(0, refs.batches[0].mask[0].reduce((a, b) => a + b, 0));
    const alone = await model.forward(int64([row]), int64([row.map(() => 1)]));
    const padded = await model.forward(int64([[...row, 0, 0, 0, 0, 0]]), int64([[...row.map(() => 1), 0, 0, 0, 0, 0]]));
    expect(relativeDiff(await values(padded), await values(alone))).toBeLessThan(1e-5);
  });

  it('says which names are wrong or missing, and what forward takes', async () => {
    await using model = await loadPretrained(fixture('encoder.scripted.pt'));
    const { ids, mask, target } = batch(0);
    const step = { loss: loss.crossEntropy(), optimizer: optim.sgd(model, { lr: 0.1 }) };
    await expect(model.trainStep({ ids, attention_mask: mask }, target, step)).rejects.toMatchObject({
      code: 'TORCHLITE_BAD_ARGUMENT',
      message: "the input names 'ids', which is not an argument of forward(input_ids, attention_mask); name the inputs by these arguments, or pass an array to give them by position",
    });
    await expect(model.predict({ input_ids: ids })).rejects.toMatchObject({
      code: 'TORCHLITE_BAD_ARGUMENT',
      message: "the input names no 'attention_mask', an argument of forward(input_ids, attention_mask) without a default; add it to the input object",
    });
    await expect(model.trainStep(42 as never, target, step)).rejects.toThrow(new TypeError('Expected a Tensor, an array of arguments, an object of named arguments or a TensorList for `input` but received 42'));
  });

  it('passes a List[Tensor] argument only when said explicitly; named inputs take forward defaults', async () => {
    await using model = await loadPretrained(fixture('list_input.scripted.pt'));
    const a = tensor([1, 2, 3, 4], [2, 2]);
    const b = tensor([5, 6, 7, 8], [2, 2]);
    const listed = await values(await model.forward(tensorList([a, b])));
    expect(await values(await model.forward(tensorList([a, b]), 2))).toEqual(listed);
    const [p] = await Promise.all([model.predict({ parts: tensorList([a, b]) }), model.predict([tensorList([a, b]), 2])]);
    expect(p.probabilities.shape).toEqual([2, 2]);
    await expect(model.predict([a, b])).rejects.toMatchObject({ code: 'TORCH_ARGUMENT', message: expect.stringContaining("Expected a value of type 'List[Tensor]' for argument 'parts'") });
    const step = { loss: loss.crossEntropy(), optimizer: optim.sgd(model, { lr: 0.1 }) };
    const target = tensor([0, 1], [2], { dtype: 'int64' });
    expect((await model.trainStep(tensorList([a, b]), target, step)).stepped).toBe(true);
    expect((await model.trainStep({ parts: tensorList([a, b]), scale: 0.5 }, target, step)).stepped).toBe(true);
    expect(() => tensorList([a, 3 as never])).toThrow(new TypeError('Expected an array of Tensors for `tensors` but received an array of length 2'));
  });

  it('resetParameters redraws the weights but keeps the position ids, a buffer that is no statistic', async () => {
    await using model = await loadPretrained(fixture('encoder.scripted.pt'));
    const before = await values((await model.stateDict())['tokens.weight']);
    await model.resetParameters();
    const after = (await model.stateDict());
    expect(Array.from(after.position_ids.toTypedArray() as BigInt64Array, Number)).toEqual(Array.from({ length: 32 }, (_, i) => i));
    expect(await values(after['tokens.weight'])).not.toEqual(before);
    expect(await values(after['embedding_norm.weight'])).toEqual(Array(16).fill(1));
  });

  it("a traced encoder keeps forward's argument names, and its dropout switches with train() and eval()", async () => {
    await using traced = await loadPretrained(fixture('encoder.traced.pt'));
    await using scripted = await loadPretrained(fixture('encoder.scripted.pt'));
    expect(traced.isTraced).toBe(true);
    const { ids, mask } = batch(1);
    traced.eval();
    scripted.eval();
    const once = await values(await traced.predict({ input_ids: ids, attention_mask: mask }).then((p) => p.probabilities));
    expect(relativeDiff(once, await values(await scripted.predict([ids, mask]).then((p) => p.probabilities)))).toBeLessThan(1e-5);
    expect(await values(await traced.forward(ids, mask))).toEqual(await values(await traced.forward(ids, mask)));
    traced.train();
    const [x, y] = [await values(await traced.forward(ids, mask)), await values(await traced.forward(ids, mask))];
    expect(relativeDiff(x, y)).toBeGreaterThan(1e-3);
  });
});

describe('tokenizers', () => {
  it('loads a tokenizer.json, truncates keeping [SEP], pads to the longest, and decodes back', async () => {
    const tok = await text.tokenizer(fixture('tokenizer.json'), { maxLength: 8 });
    expect([tok.vocabSize, tok.padId, tok.maxLength]).toEqual([300, 0, 8]);
    const long = 'the quick brown fox jumps over the lazy dog again and again';
    const ids = tok.ids(long);
    expect(ids).toHaveLength(8);
    expect([ids[0], ids[7]]).toEqual([2, 3]);
    expect(tok.decode(tok.ids('Hello, World!', 100))).toBe('hello, world!');
    const { ids: batchIds, mask } = tok.encode(['a b', long]);
    expect(batchIds.shape).toEqual([2, 8]);
    expect(batchIds.dtype).toBe('int64');
    expect(Array.from((await mask.read()) as BigInt64Array, Number)).toEqual([1, 1, 1, 1, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1]);
    expect(Number(((await batchIds.read()) as BigInt64Array)[7])).toBe(0);
  });

  it("gives the ids of Hugging Face's native binding, truncation included", async () => {
    const texts = readFileSync('/usr/share/games/fortunes/fortunes', 'utf8').split(/\n%\n/).slice(0, 200);
    const native = createRequire(__filename)('tokenizers') as { Tokenizer: { fromFile(path: string): { setTruncation(n: number): void; encodeBatch(t: string[]): Promise<{ getIds(): number[] }[]> } } };
    const reference = native.Tokenizer.fromFile(fixture('tokenizer.json'));
    reference.setTruncation(24);
    const expected = (await reference.encodeBatch(texts)).map((e) => e.getIds());
    const tok = await text.tokenizer(fixture('tokenizer.json'), { maxLength: 24 });
    expect(texts.map((t) => tok.ids(t))).toEqual(expected);
  });

  it('refuses files that are not tokenizers, with coded errors', async () => {
    await expect(text.tokenizer(join(dir, 'none.json'))).rejects.toMatchObject({ code: 'TORCHLITE_FILE_NOT_FOUND' });
    await expect(text.tokenizer(write('bad.json', '{"version": 1}'))).rejects.toMatchObject({ code: 'TORCHLITE_BAD_DATA', message: `${join(dir, 'bad.json')} is not a tokenizer.json (it has no "model")` });
    await expect(text.tokenizer(fixture('tokenizer.json'), { maxLength: 2 })).rejects.toThrow(new RangeError('Expected a maxLength above the 2 special tokens for `options.maxLength` but received 2'));
  });
});

describe('data.textDataset', () => {
  const jsonl = () =>
    write('reviews.jsonl', ['{"text": "great food, would eat again", "label": "good"}', '{"text": "cold soup and a rude waiter", "label": "bad"}', '', '{"text": "lovely staff", "label": "good"}'].join('\n'));

  it('reads JSONL, numbers classes by sorted label, and batches padded to the longest text of each batch', async () => {
    const tok = await text.tokenizer(fixture('tokenizer.json'));
    const ds = await data.textDataset(jsonl(), { tokenizer: tok });
    expect([ds.length, ds.classes, ds.describe(2)]).toEqual([3, ['bad', 'good'], `${join(dir, 'reviews.jsonl')}:4`]);
    const lengths: number[][] = [];
    for await (const b of data.loader(ds, { batchSize: 2 })) {
      const [ids, mask] = b.input as [Tensor, Tensor];
      expect(mask.shape).toEqual(ids.shape);
      lengths.push(ids.shape);
      expect(Array.from((await b.target.read()) as BigInt64Array, Number)).toEqual(b.indices.map((i) => [1, 0, 1][i]));
    }
    const longest = Math.max(tok.ids('great food, would eat again').length, tok.ids('cold soup and a rude waiter').length);
    expect(lengths).toEqual([[2, longest], [1, tok.ids('lovely staff').length]]);
    const named = await data.textDataset(jsonl(), { tokenizer: tok, inputs: ['input_ids', 'attention_mask'], classes: ['good', 'bad'] });
    const first = await data.loader(named, { batchSize: 3 }).batches(0).next();
    expect(Object.keys(first.value!.input)).toEqual(['input_ids', 'attention_mask']);
    expect(named.target(1)).toBe(1);
  });

  it('reads CSV with quoted fields over several lines, and names the line of a bad row', async () => {
    const tok = await text.tokenizer(fixture('tokenizer.json'));
    const csv = write('t.csv', '\uFEFFlabel,text\r\npos,"a ""fine"" day,\nreally"\r\nneg,grim\nneg\n');
    await expect(data.textDataset(csv, { tokenizer: tok })).rejects.toMatchObject({
      code: 'TORCHLITE_BAD_DATA',
      message: `${csv}:5: the row has 1 fields where the header has 2; fix it, or skip bad rows (skipBadRows: true, or --skip-bad-rows)`,
    });
    const { result: ds, warnings } = await warningsDuring(() => data.textDataset(csv, { tokenizer: tok, skipBadRows: true }));
    expect(warnings).toEqual([`${csv}: skipped 1 bad row (line 5)`]);
    expect([ds.length, ds.classes, ds.describe(1)]).toEqual([2, ['neg', 'pos'], `${csv}:4`]);
    expect(tok.decode(Array.from((await ds.get(0, 0)).input))).toBe('a " fine " day, really');
  });

  it('refuses bad rows with their line: invalid JSON, no text, a label outside the classes', async () => {
    const tok = await text.tokenizer(fixture('tokenizer.json'));
    const file = write('bad.jsonl', '{"text": "ok", "label": "a"}\n{"text": "ok", "label": "a"\n{"label": "b"}\n{"text": "x", "label": "c"}\n');
    await expect(data.textDataset(file, { tokenizer: tok })).rejects.toMatchObject({ code: 'TORCHLITE_BAD_DATA', message: expect.stringMatching(new RegExp(`^${file}:2: the row is not valid JSON \\(.*\\); fix it, or skip bad rows \\(skipBadRows: true, or --skip-bad-rows\\)$`)) });
    const { result, warnings } = await warningsDuring(() => data.textDataset(file, { tokenizer: tok, skipBadRows: true, classes: ['a', 'b'] }));
    expect(warnings).toEqual([`${file}: skipped 3 bad rows (lines 2, 3, 4)`]);
    expect(result.length).toBe(1);
    const outside = write('label.jsonl', '{"text": "ok", "label": "a"}\n');
    await expect(data.textDataset(outside, { tokenizer: tok, classes: ['b'] })).rejects.toMatchObject({ message: `${outside}:1: the row has the label 'a', which is not one of the classes ('b'); fix it, or skip bad rows (skipBadRows: true, or --skip-bad-rows)` });
    await expect(data.textDataset(write('x.txt', ''), { tokenizer: tok })).rejects.toThrow(new TypeError("Expected 'jsonl' or 'csv' (the file's extension does not say) for `options.format` but received undefined"));
    await expect(data.textDataset(file, {} as never)).rejects.toThrow(TypeError);
  });
});

describe('text models end to end', () => {
  it.runIf(hasTorch)('exports the encoder scripted and traced with its tokenizer, fine-tunes it on a text file, and Python loads the result', async () => {
    // The fixture encoder with an embedding table for the tokenizer's 300 pieces.
    write('textnets.py', `import sys\nsys.path.insert(0, ${JSON.stringify(join(root, 'scripts', 'fixtures'))})\nfrom text_encoder import Encoder\ndef encoder():\n    return Encoder(vocab=300, max_length=32)\n`);
    const exporter = (...args: string[]) => spawnSync(PYTHON, [join(root, 'scripts', 'export_model.py'), ...args], { encoding: 'utf8', cwd: dir });
    const mismatched = spawnSync(PYTHON, [join(root, 'scripts', 'export_model.py'), 'text_encoder:encoder', '--text', '--tokenizer', fixture('tokenizer.json'), '--out', 'x.pt'], { encoding: 'utf8', cwd: join(root, 'scripts', 'fixtures') });
    expect(mismatched.stderr.trim()).toBe("export_model.py: the model fails on token ids below the tokenizer's 300 (index out of range in self); does its embedding table match the tokenizer?");
    const scripted = exporter('textnets:encoder', '--text', '--tokenizer', fixture('tokenizer.json'), '--max-length', '32', '--out', join(dir, 'enc.pt'));
    expect(scripted.stdout.trim()).toBe(`scripted textnets:encoder -> ${join(dir, 'enc.pt')}: text up to 32 tokens, 3 outputs, no class names`);
    const traced = exporter('textnets:encoder', '--text', '--trace', '--tokenizer', fixture('tokenizer.json'), '--max-length', '32', '--out', join(dir, 'enc-traced.pt'));
    expect(traced.stdout.trim()).toBe(`traced textnets:encoder -> ${join(dir, 'enc-traced.pt')}: text up to 32 tokens, 3 outputs, no class names`);
    expect(spawnSync(PYTHON, [join(root, 'scripts', 'export_model.py'), 'text_encoder:encoder', '--text', '--out', 'x.pt'], { encoding: 'utf8', cwd: join(root, 'scripts', 'fixtures') }).stderr.trim()).toBe('export_model.py: --text needs --tokenizer tokenizer.json');

    for (const file of ['enc.pt', 'enc-traced.pt']) {
      await using model = await loadPretrained(join(dir, file));
      expect(text.textSpecOf(model)?.maxLength).toBe(32);
      expect(text.textSpecOf(model)?.inputs).toEqual(['input_ids', 'attention_mask']);
      const ds = await data.textDataset(write('three.jsonl', ['a', 'b', 'c'].flatMap((label, k) => [0, 1, 2, 3].map((i) => JSON.stringify({ text: `${label} ${'xyz '.repeat(k + i)}`, label }))).join('\n')), { like: model });
      manualSeed(0);
      model.resetClassifier(3);
      const history = await fit(model, { train: data.loader(ds, { batchSize: 4, shuffle: true }), epochs: 2, optimizer: optim.adamw(model, { lr: 1e-3 }) });
      expect(history).toHaveLength(2);
      expect(model.training).toBe(false);
      await model.save(join(dir, `tuned-${file}`));
    }
    await using tuned = await loadPretrained(join(dir, 'tuned-enc-traced.pt'));
    expect((tuned.metadata as { classes: string[] }).classes).toEqual(['a', 'b', 'c']);
    const tok = text.tokenizerOf(tuned)!;
    const { ids, mask } = tok.encode(['a xyz', 'c']);
    const ours = await values(await tuned.forward(ids, mask));
    const theirs = JSON.parse(
      python(
        `import torch, json, sys
m = torch.jit.load(sys.argv[1]).eval()
ids = torch.tensor(json.loads(sys.argv[2])); mask = torch.tensor(json.loads(sys.argv[3]))
print(json.dumps(m(ids, mask).flatten().tolist()))`,
        [join(dir, 'tuned-enc-traced.pt'), JSON.stringify(await rowsOf(ids)), JSON.stringify(await rowsOf(mask))],
      ),
    ) as number[];
    expect(relativeDiff(ours, theirs)).toBeLessThan(1e-5);
  });

  it('refuses a model without a tokenizer as `like`, saying what to pass', async () => {
    await using model = await loadPretrained(fixture('encoder.scripted.pt'));
    await expect(data.textDataset(write('one.jsonl', '{"text": "a", "label": "x"}'), { like: model })).rejects.toEqual(
      new TorchError('TORCHLITE_NO_INPUT_SPEC', 'the model passed as `like` has no tokenizer in its metadata (`metadata.text`); pass `tokenizer: await text.tokenizer(path)`'),
    );
  });
});

describe('the kinds of TorchScript file tch-rs loads (scripts/fixtures/tch_cases.py)', () => {
  const load = (n: number) => loadPretrained(fixture(`tch/case${n}.pt`));
  const numbers = async (t: unknown) => Array.from(((await (t as Tensor).read()) as Float32Array));
  const x = () => tensor([3, 1, 4, 1, 5]);
  const y = () => tensor([7]);

  it('runs all nine: buffers, traced inputs and tuples, loops, scalars, strings, objects and dicts', async () => {
    await using m1 = await load(1);
    expect(await numbers(await m1.forward(x(), y()))).toEqual([55, 51, 57, 51, 59]);
    await using m2 = await load(2);
    expect(await numbers(await m2.forward(tensor([42]), tensor([1337])))).toEqual([1421]);
    await using m3 = await load(3);
    const [sum, difference] = await m3.forward<Tensor[]>(tensor([42]), tensor([1337]));
    expect([await numbers(sum), await numbers(difference)]).toEqual([[1421], [-1295]]);
    await using m4 = await load(4);
    expect(await numbers(await m4.forward(tensor([1, 2, 3, 4, 5])))).toEqual([120]);
    await using m5 = await load(5);
    expect(await m5.forward<number>([2, 3, 4])).toBe(14);
    await using m6 = await load(6);
    expect(await m6.forward<string[]>(['foo', 'bar', 'foobar'])).toEqual(['fo', 'ba', 'fooba']);
    await using m7 = await load(7);
    using doubler = await m7.forward<ScriptObject>(tensor([3, 4, 5]));
    expect(doubler).toBeInstanceOf(ScriptObject);
    expect(doubler.type).toBe('__torch__.Doubler');
    expect(doubler.methods()).toEqual(['y']);
    const doubled = doubler.call('y');
    expect(m7.pending).toBe(1); // queued on the model that made it, as model.call is
    expect(await numbers(await doubled)).toEqual([6, 8, 10]);
    await expect(doubler.call('z')).rejects.toMatchObject({ code: 'TORCHLITE_NO_SUCH_METHOD', message: "the Doubler object has no method 'z'; it has 'y'" });
    await using m8 = await load(8);
    const pair = await m8.call<ScriptObject>('make_input_object', tensor([1, 2, 3]), tensor([4, 5, 6]));
    expect(await numbers(await m8.call('add_them', pair))).toEqual([5, 7, 9]);
    const kept = await m8.call<ScriptObject>('make_input_object', tensor([1]), tensor([2]));
    m8.dispose();
    await expect(kept.call('anything')).rejects.toMatchObject({ code: 'TORCHLITE_DISPOSED' });
    pair.dispose();
    pair.dispose();
    expect(() => pair.type).toThrow(expect.objectContaining({ code: 'TORCHLITE_DISPOSED' }));
    await using m9 = await load(9);
    const [foo, bar] = await m9.call<Tensor[]>('generate', { bar: tensor([1, 7]), foo: tensor([1, 2, 3]) });
    expect([await numbers(foo), await numbers(bar)]).toEqual([[1, 2, 3], [1, 7]]);
  });
});

describe("the README's text example", () => {
  it("reads new labels `like` the shipped encoder: its tokenizer, the data's classes; and the model's own labels in the model's order", async () => {
    await using model = await loadPretrained(join(root, 'models', 'fortunes-encoder.pt'));
    const tickets = write('tickets.jsonl', ['billing', 'bug', 'billing', 'refund'].map((label, i) => JSON.stringify({ text: `ticket ${i} about ${label}`, label })).join('\n'));
    const train = await data.textDataset(tickets, { like: model });
    expect(train.classes).toEqual(['billing', 'bug', 'refund']);
    expect(Array.from({ length: train.length }, (_, i) => train.target(i))).toEqual([0, 1, 0, 2]);
    expect(train.text).toMatchObject({ maxLength: text.textSpecOf(model)!.maxLength }); // the model's tokenizer
    const known = await data.textDataset(write('known.jsonl', ['perl', 'art'].map((label) => JSON.stringify({ text: `about ${label}`, label })).join('\n')), { like: model });
    expect(known.classes).toEqual(text.textSpecOf(model) && (model.metadata as { classes: string[] }).classes);
    expect([known.target(0), known.target(1)]).toEqual([23, 0]); // 'perl' and 'art' as the model numbers them
    await expect(data.textDataset(write('mixed.jsonl', ['perl', 'billing'].map((label) => JSON.stringify({ text: label, label })).join('\n')), { like: model })).rejects.toThrow(
      expect.objectContaining({ code: 'TORCHLITE_BAD_DATA', message: expect.stringMatching(/^'billing' is not among the model's classes \('art', 'computers', .*\), while the data's other labels are; fix the names, or pass `classes`/) }),
    );
  });
});
