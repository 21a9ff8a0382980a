// Pretrains the shipped text model, models/fortunes-encoder.pt: a small BERT-shaped encoder
// (scripts/fixtures/text_encoder.py) trained as BERT was, first as a masked language model on
// fortunes in English, German, Spanish and Italian (up to --per-language of each), then to
// tell English fortunes' topics apart: the SOURCE_TOPICS of src/cli/fortunes.ts. No stage
// sees a language label, and neither reads the fortunes `isHeldOut` keeps for
// `torchlite demo text`, which fine-tunes it to identify the language. Needs
// `apt-get install fortunes fortunes-de fortunes-es fortunes-it`, /usr/bin/python3 with torch
// (to script the random initial models) and the dev dependency `tokenizers` (Hugging Face's
// native binding, to train the WordPiece tokenizer); the training itself runs in torchlite.
//
//   node scripts/text/pretrain.mjs [--per-language 6000] [--vocab 6000] [--mlm-epochs 10] [--mlm-lr 5e-3] [--epochs 3]
//                                  [--out models/fortunes-encoder.pt]
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

import torchlite from '../../lib/index.js';
import { isHeldOut, LANGUAGES, readFortunes, readLanguages, SOURCE_TOPICS, writeJsonl } from '../../lib/cli/fortunes.js';
import { trainWordPiece } from './wordpiece.mjs';

const { data, fit, loadPretrained, loss, manualSeed, optim, progressBar, sched, tensor, text } = torchlite;
const here = dirname(fileURLToPath(import.meta.url));
const args = process.argv.slice(2);
const flag = (name, fallback) => (args.includes(name) ? args[args.indexOf(name) + 1] : fallback);
const out = flag('--out', join(here, '..', '..', 'models', 'fortunes-encoder.pt'));
const perLanguage = Number(flag('--per-language', '6000'));
const VOCAB = Number(flag('--vocab', '6000'));
const mlmEpochs = Number(flag('--mlm-epochs', '10'));
const mlmLr = Number(flag('--mlm-lr', '5e-3'));
const epochs = Number(flag('--epochs', '3'));
const [MAX_LENGTH, BATCH, MASK_ID] = [64, 32, 4];
const SIZES = ['--dim', '64', '--heads', '4', '--layers', '2', '--hidden', '128', '--max-length', String(MAX_LENGTH)];
const work = mkdtempSync(join(tmpdir(), 'torchlite-pretrain-text-'));
const started = Date.now();

/** A scripted, randomly initialised encoder from text_encoder.py. */
function initial(name, extra) {
  const file = join(work, `${name}.pt`);
  execFileSync('/usr/bin/python3', [join(here, '..', 'fixtures', 'text_encoder.py'), '--out', file, '--vocab', String(VOCAB), ...SIZES, ...extra], { stdio: 'inherit' });
  return file;
}

/** mulberry32: the masking's own seeded generator, so the pretraining repeats exactly. */
function random(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = Math.imul(a ^ (a >>> 15), 1 | a);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/**
 * One masked-language-model batch, as BERT masks: 15% of the real tokens (at least one a
 * text) are scored; of those, 80% become [MASK], 10% a random piece, 10% stay. Inputs are
 * named (forward(input_ids, attention_mask, masked)), the target is the original pieces.
 */
function maskedBatch(rows, rand) {
  const length = Math.max(...rows.map((r) => r.length));
  const ids = new BigInt64Array(rows.length * length);
  const mask = new BigInt64Array(rows.length * length);
  const masked = [];
  const target = [];
  rows.forEach((row, b) => {
    const picks = [];
    for (let i = 1; i < row.length - 1; i++) if (rand() < 0.15) picks.push(i);
    if (picks.length === 0 && row.length > 2) picks.push(1 + Math.floor(rand() * (row.length - 2)));
    for (let i = 0; i < row.length; i++) {
      ids[b * length + i] = BigInt(row[i]);
      mask[b * length + i] = 1n;
    }
    for (const i of picks) {
      masked.push(b * length + i);
      target.push(row[i]);
      const r = rand();
      if (r < 0.8) ids[b * length + i] = BigInt(MASK_ID);
      else if (r < 0.9) ids[b * length + i] = BigInt(5 + Math.floor(rand() * (VOCAB - 5)));
    }
  });
  return {
    input: { input_ids: tensor(ids, [rows.length, length]), attention_mask: tensor(mask, [rows.length, length]), masked: tensor(BigInt64Array.from(masked, BigInt)) },
    target: tensor(BigInt64Array.from(target, BigInt)),
  };
}

/** Fisher-Yates with the seeded generator. */
function shuffle(items, rand) {
  const order = [...items];
  for (let i = order.length - 1; i > 0; i--) {
    const j = Math.floor(rand() * (i + 1));
    [order[i], order[j]] = [order[j], order[i]];
  }
  return order;
}

manualSeed(0);
torchlite.setNumThreads(2);
const rand = random(0);
const corpus = LANGUAGES.flatMap((language) =>
  shuffle(
    readLanguages([language]).filter((r) => !isHeldOut(r.text)),
    rand,
  ).slice(0, perLanguage),
);
const tok = await text.tokenizer(trainWordPiece(corpus.map((r) => r.text), VOCAB, work), { maxLength: MAX_LENGTH });

// Stage 1: a masked language model over the four languages' fortunes, unlabelled.
const mlm = await loadPretrained(initial('mlm', ['--mlm']));
mlm.train();
const texts = corpus.map((r) => tok.ids(r.text)).filter((ids) => ids.length > 2);
const stepsPerEpoch = Math.ceil(texts.length / BATCH);
const mlmOptimizer = optim.adamw(mlm, { lr: mlmLr, weightDecay: 0.01 });
const mlmSchedule = sched.oneCycle(mlmOptimizer, { maxLr: mlmLr, totalSteps: mlmEpochs * stepsPerEpoch, pctStart: 0.1 });
const ce = loss.crossEntropy();
for (let epoch = 0; epoch < mlmEpochs; epoch++) {
  const order = shuffle(texts.keys(), rand);
  let sum = 0;
  for (let s = 0; s < stepsPerEpoch; s++) {
    const { input, target } = maskedBatch(order.slice(s * BATCH, (s + 1) * BATCH).map((i) => texts[i]), rand);
    sum += (await mlm.trainStep(input, target, { loss: ce, optimizer: mlmOptimizer })).loss;
    mlmSchedule.step();
  }
  console.log(`masked LM epoch ${epoch + 1}/${mlmEpochs}: loss ${(sum / stepsPerEpoch).toFixed(3)} (${((Date.now() - started) / 1000).toFixed(0)} s)`);
}

// Stage 2: the topics, starting from the language model's body.
const model = await loadPretrained(initial('classifier', ['--classes', String(SOURCE_TOPICS.length)]));
const body = Object.fromEntries(Object.entries((await mlm.stateDict())).filter(([name]) => !/^(lm_|pooler\.|classifier\.)/.test(name)));
await model.loadStateDict(body, { strict: false });
mlm.dispose();
writeJsonl(join(work, 'source.jsonl'), readFortunes(SOURCE_TOPICS).filter((r) => !isHeldOut(r.text)));
const all = await data.textDataset(join(work, 'source.jsonl'), { tokenizer: tok, classes: SOURCE_TOPICS });
const { train, val } = data.split(all, { val: 0.1, seed: 0 });
const trainLoader = data.loader(train, { batchSize: BATCH, shuffle: true, seed: 0 });
const optimizer = optim.adamw(model, { lr: 1e-3, weightDecay: 0.01 });
const scheduler = sched.oneCycle(optimizer, { maxLr: 1e-3, totalSteps: epochs * trainLoader.length });
const history = await fit(model, { train: trainLoader, val: data.loader(val, { batchSize: 256 }), epochs, optimizer, scheduler, loss: ce, callbacks: [progressBar({ label: 'topics' })] });
const accuracy = history.at(-1).val.accuracy;
await model.save(out, {
  metadata: {
    ...model.metadata,
    recipe: { script: 'scripts/text/pretrain.mjs', task: 'a masked language model on English, German, Spanish and Italian fortunes, then English fortunes by topic', mlmTexts: texts.length, texts: train.length, vocab: VOCAB, mlmEpochs, mlmLr, epochs, valAccuracy: accuracy, seconds: (Date.now() - started) / 1000 },
  },
});
rmSync(work, { recursive: true, force: true });
console.log(`wrote ${out}: ${SOURCE_TOPICS.length} topics, ${train.length} texts, validation accuracy ${(accuracy * 100).toFixed(1)}%`);
