// Pretrains the shipped text model, models/fortunes-encoder.pt: a small BERT-shaped encoder
// (scripts/fixtures/text_encoder.py) that classifies English fortunes by topic, over the ten
// SOURCE_TOPICS of src/cli/fortunes.ts. `torchlite demo text` fine-tunes it on five topics
// it has never seen. Needs `apt-get install fortunes`, /usr/bin/python3 with torch (to
// script the random initial encoder) and the dev dependency `tokenizers` (Hugging Face's
// native binding, to train the WordPiece tokenizer); the training itself runs in torchlite.
//
//   node scripts/text/pretrain.mjs [--epochs 6] [--out models/fortunes-encoder.pt]
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

import torchlite from '../../lib/index.js';
import { readFortunes, SOURCE_TOPICS, writeJsonl } from '../../lib/cli/fortunes.js';
import { trainWordPiece } from './wordpiece.mjs';

const { data, fit, loadPretrained, loss, manualSeed, optim, progressBar, sched, text } = torchlite;
const here = dirname(fileURLToPath(import.meta.url));
const args = process.argv.slice(2);
const flag = (name, fallback) => (args.includes(name) ? args[args.indexOf(name) + 1] : fallback);
const out = flag('--out', join(here, '..', '..', 'models', 'fortunes-encoder.pt'));
const epochs = Number(flag('--epochs', '6'));
const VOCAB = 4000;
const MAX_LENGTH = 64;
const work = mkdtempSync(join(tmpdir(), 'torchlite-pretrain-text-'));

manualSeed(0);
torchlite.setNumThreads(2);
const rows = readFortunes(SOURCE_TOPICS);
const tokenizerPath = trainWordPiece(rows.map((r) => r.text), VOCAB, work);
const tok = await text.tokenizer(tokenizerPath, { maxLength: MAX_LENGTH });
const init = join(work, 'init.pt');
execFileSync('/usr/bin/python3', [join(here, '..', 'fixtures', 'text_encoder.py'), '--out', init, '--vocab', String(tok.vocabSize), '--dim', '64', '--heads', '4', '--layers', '2', '--hidden', '128', '--max-length', String(MAX_LENGTH), '--classes', String(SOURCE_TOPICS.length)], { stdio: 'inherit' });
writeJsonl(join(work, 'source.jsonl'), rows);
const all = await data.textDataset(join(work, 'source.jsonl'), { tokenizer: tok, classes: SOURCE_TOPICS });
const { train, val } = data.split(all, { val: 0.1, seed: 0 });
const model = await loadPretrained(init);
const trainLoader = data.loader(train, { batchSize: 32, shuffle: true, seed: 0 });
const optimizer = optim.adamw(model, { lr: 2e-3, weightDecay: 0.01 });
const scheduler = sched.oneCycle(optimizer, { maxLr: 2e-3, totalSteps: epochs * trainLoader.length });
const started = Date.now();
const history = await fit(model, { train: trainLoader, val: data.loader(val, { batchSize: 256 }), epochs, optimizer, scheduler, loss: loss.crossEntropy(), callbacks: [progressBar({ label: 'pretrain' })] });
const accuracy = history.at(-1).val.accuracy;
await model.save(out, {
  metadata: {
    ...model.metadata,
    recipe: { script: 'scripts/text/pretrain.mjs', task: 'English fortunes by topic', texts: train.length, epochs, valAccuracy: accuracy, seconds: (Date.now() - started) / 1000 },
  },
});
rmSync(work, { recursive: true, force: true });
console.log(`wrote ${out}: ${SOURCE_TOPICS.length} topics, ${train.length} texts, validation accuracy ${(accuracy * 100).toFixed(1)}%`);
