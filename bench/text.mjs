// Text bench: tokenization throughput of the library torchlite reads tokenizer.json with
// (@huggingface/tokenizers, pure JS) against Hugging Face's native binding (`tokenizers`,
// a dev dependency), on every English fortune; and fine-tuning samples/s of the shipped
// text encoder (models/fortunes-encoder.pt) on a text dataset against the same loop in
// Python on the same batches (zero_grad, forward, loss, backward, AdamW step, loss.item()).
//   node bench/text.mjs            (after npm run build:native && npm run build:ts; apt-get install fortunes)
import { execFileSync } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { availableParallelism, cpus, tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

import torchlite from '../lib/index.js';
import { readFortunes, SOURCE_TOPICS, TARGET_TOPICS, writeJsonl } from '../lib/cli/fortunes.js';

const { data, fit, getNumThreads, loadPretrained, manualSeed, optim, text } = torchlite;
const here = dirname(fileURLToPath(import.meta.url));
const python = process.env.TORCHLITE_PYTHON ?? '/usr/bin/python3';
const threads = getNumThreads();
const dir = mkdtempSync(join(tmpdir(), 'torchlite-text-bench-'));
const MODEL = join(here, '..', 'models', 'fortunes-encoder.pt');
const [BATCH, EPOCHS] = [32, 2];

console.log(`torchlite text bench: LibTorch ${torchlite.torchVersion}, ${threads} threads, ${cpus()[0]?.model ?? 'cpu'} x${availableParallelism()}`);
const model = await loadPretrained(MODEL);
const tok = text.tokenizerOf(model);
const tokenizerFile = join(dir, 'tokenizer.json');
writeFileSync(tokenizerFile, JSON.stringify(tok.json));
const texts = readFortunes([...SOURCE_TOPICS, ...TARGET_TOPICS]).map((r) => r.text);

/** Texts per second of `encode` over all texts, best of three passes. */
async function rate(encode) {
  let best = Infinity;
  for (let pass = 0; pass < 3; pass++) {
    const start = performance.now();
    await encode();
    best = Math.min(best, performance.now() - start);
  }
  return texts.length / (best / 1000);
}
const native = createRequire(import.meta.url)('tokenizers').Tokenizer.fromFile(tokenizerFile);
native.setTruncation(tok.maxLength);
const tokenize = {
  torchlite_ids: await rate(() => texts.map((t) => tok.ids(t))),
  native_encodeBatch: await rate(() => native.encodeBatch(texts)),
  native_encode_one_by_one: await rate(async () => {
    for (const t of texts) await native.encode(t);
  }),
};

// Fine-tuning: the target topics' fortunes, batches of 32, the whole encoder training.
const rows = readFortunes(TARGET_TOPICS);
writeJsonl(join(dir, 'train.jsonl'), rows);
const ds = await data.textDataset(join(dir, 'train.jsonl'), { like: model, classes: TARGET_TOPICS });
const loader = data.loader(ds, { batchSize: BATCH });
const batches = [];
for await (const b of loader) batches.push({ ids: Array.from(b.input[0].toTypedArray(), Number), shape: b.input[0].shape, mask: Array.from(b.input[1].toTypedArray(), Number), target: Array.from(b.target.toTypedArray(), Number) });
writeFileSync(join(dir, 'batches.json'), JSON.stringify(batches));
const py = JSON.parse(execFileSync(python, [join(here, 'text_ref.py'), MODEL, join(dir, 'batches.json'), String(threads), String(EPOCHS)], { encoding: 'utf8' }).trim().split('\n').pop());
manualSeed(0);
model.train(); // its own head, as in Python: the target topics are class indices below its count
const optimizer = optim.adamw(model, { lr: 1e-4 });
await fit(model, { train: loader, epochs: 1, optimizer }); // warm-up: the profiling executor settles
const start = performance.now();
await fit(model, { train: loader, epochs: EPOCHS, optimizer });
const ours = (EPOCHS * ds.length) / ((performance.now() - start) / 1000);

const table = [
  { case: 'tokenize, texts/s: torchlite (@huggingface/tokenizers)', value: tokenize.torchlite_ids.toFixed(0) },
  { case: 'tokenize, texts/s: native tokenizers, encodeBatch', value: tokenize.native_encodeBatch.toFixed(0) },
  { case: 'tokenize, texts/s: native tokenizers, one await a text', value: tokenize.native_encode_one_by_one.toFixed(0) },
  { case: 'fine-tune, samples/s: torchlite fit', value: ours.toFixed(1) },
  { case: 'fine-tune, samples/s: PyTorch loop', value: py.samples_per_s.toFixed(1) },
  { case: 'fine-tune ratio (torchlite / PyTorch)', value: (ours / py.samples_per_s).toFixed(2) },
];
console.table(table);
const file = join(here, 'results', `text-${new Date().toISOString().slice(0, 16).replace(':', '')}.json`);
writeFileSync(file, `${JSON.stringify({ machine: `${cpus()[0]?.model} x${availableParallelism()}`, threads, torch: torchlite.torchVersion, texts: texts.length, tokenize, fineTune: { torchlite: ours, python: py.samples_per_s, samples: ds.length, epochs: EPOCHS, batch: BATCH }, table }, null, 2)}\n`);
console.log(`wrote ${file}`);
