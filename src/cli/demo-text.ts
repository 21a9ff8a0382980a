// `torchlite demo text`: the shipped text encoder (scripts/text/pretrain.mjs: a masked
// language model on fortunes in four languages, then English fortunes by topic; never a
// language label) fine-tuned to tell a fortune's language from a few labelled ones each,
// against training the head alone and the same architecture from scratch, all tested on
// fortunes the pretraining never read. Every approach reads the same JSONL files through
// data.textDataset.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';

import { data, type EpochRecord, fineTune, fit, loadPretrained, loss as losses, manualSeed, type Model, optim, sched, text, TorchError } from '..';
import { type DemoBaseFlags, intFlag } from './flags';
import { FORTUNES_DIR, isHeldOut, type LabelledText, LANGUAGES, readLanguages, writeJsonl } from './fortunes';
import { textTable } from './report';

export const TEXT_MODEL = resolve(__dirname, '..', '..', 'models', 'fortunes-encoder.pt');

export interface TextDemoFlags extends DemoBaseFlags {
  model?: string;
}

/** Test fortunes per language; the labelled budget is drawn from the rest. */
const TEST_PER_CLASS = 60;

/** Each language's held-out fortunes in a fixed shuffled order, cut into a test part and a pool to label from. */
function splitClasses(rows: LabelledText[], testPerClass: number): { pool: LabelledText[]; test: LabelledText[] } {
  const pool: LabelledText[] = [];
  const test: LabelledText[] = [];
  for (const language of LANGUAGES) {
    const mine = rows.filter((r) => r.label === language);
    // A fixed interleaving rather than the file order, whose neighbours share authors and themes.
    const order = mine.map((_, i) => i).sort((a, b) => ((a * 7919) % mine.length) - ((b * 7919) % mine.length));
    order.forEach((i, k) => (k < testPerClass ? test : pool).push(mine[i]));
  }
  return { pool, test };
}

export async function runTextDemo(flags: TextDemoFlags): Promise<void> {
  const quick = flags.quick === true;
  const perClass = intFlag(flags.budget ?? '8', '--budget');
  const epochs = intFlag(quick ? '3' : (flags.epochs ?? '10'), '--epochs', 2);
  const say = (line: string) => !flags.json && console.log(line);
  const work = mkdtempSync(join(tmpdir(), 'torchlite-demo-text-'));
  try {
    const heldOut = readLanguages(LANGUAGES, flags.dataDir ?? FORTUNES_DIR).filter((r) => isHeldOut(r.text));
    const testPerClass = quick ? 20 : TEST_PER_CLASS;
    const { pool, test } = splitClasses(heldOut, testPerClass);
    writeJsonl(join(work, 'pool.jsonl'), pool);
    writeJsonl(join(work, 'test.jsonl'), test);
    const modelPath = flags.model ?? TEXT_MODEL;
    await using probe = await loadPretrained(modelPath);
    if (!text.tokenizerOf(probe)) throw new TorchError('TORCHLITE_NO_INPUT_SPEC', `${modelPath} has no tokenizer in its metadata (\`text\`): --model takes a text encoder that scripts/text/pretrain.mjs wrote`);
    const trainAll = await data.textDataset(join(work, 'pool.jsonl'), { like: probe, classes: [...LANGUAGES] });
    const train = data.subset(trainAll, { perClass, seed: 0 });
    const testSet = await data.textDataset(join(work, 'test.jsonl'), { like: probe, classes: [...LANGUAGES] });
    const trainLoader = data.loader(train, { batchSize: 16, shuffle: true, seed: 0 });
    const testLoader = data.loader(testSet, { batchSize: 128 });
    const loss = losses.crossEntropy({ labelSmoothing: 0.1 });
    const source = (probe.metadata as { classes: string[] }).classes;
    say(`torchlite demo text: ${modelPath} (pretrained as a masked language model on fortunes in ${LANGUAGES.join(', ')}, then to tell English fortunes of ${source.length} topics apart; never told a language)`);
    say(`fine-tuning it to name a fortune's language with ${train.length} labelled fortunes (${perClass} a language), ${epochs} epochs, testing on ${testSet.length} it has never read\n`);

    const outcomes: { name: string; accuracy: number; f1: number; seconds: number; history: EpochRecord[] }[] = [];
    const approach = async (name: string, prepare: (model: Model) => void, train: (model: Model) => PromiseLike<EpochRecord[]>): Promise<Model> => {
      manualSeed(0);
      const model = await loadPretrained(modelPath);
      prepare(model);
      const started = Date.now();
      const history = await train(model);
      const { accuracy = 0, f1 = 0 } = await model.evaluate(testLoader, { metrics: ['accuracy', 'f1'] });
      outcomes.push({ name, accuracy, f1, seconds: (Date.now() - started) / 1000, history });
      say(`${name}: ${(accuracy * 100).toFixed(1)}%`);
      return model;
    };
    const oneCycleFit = (lr: number) => (model: Model) => {
      const optimizer = optim.adamw(model, { lr, weightDecay: 0.01 });
      return fit(model, { train: trainLoader, epochs, optimizer, scheduler: sched.oneCycle(optimizer, { maxLr: lr, totalSteps: epochs * trainLoader.length }), loss });
    };
    (
      await approach(
        'head only',
        (model) => {
          const head = model.resetClassifier(LANGUAGES.length);
          model.freeze();
          model.unfreeze(head);
        },
        oneCycleFit(1e-2),
      )
    ).dispose();
    // The scratch baseline's lr and epochs, so that only the starting weights differ (lr: 'auto'
    // chooses 0.018-0.030 on these 32 fortunes and trains 64 epochs; see the README).
    const tuned = await approach('fine-tune', () => undefined, (model) => fineTune(model, { train: trainLoader, numClasses: LANGUAGES.length, epochs: epochs - 1, freezeEpochs: 1, lr: 1e-2, loss }));
    (
      await approach(
        'from scratch',
        async (model) => {
          model.resetClassifier(LANGUAGES.length);
          await model.resetParameters();
        },
        oneCycleFit(1e-2),
      )
    ).dispose();
    await tuned.save(flags.out, { metadata: { ...(tuned.metadata as object), recipe: { command: 'torchlite demo text', perClass, epochs } } });

    const pct = (v: number) => `${(v * 100).toFixed(1)}%`;
    const table = textTable(['approach', 'test accuracy', 'macro F1', 'time'], outcomes.map((o) => [o.name, pct(o.accuracy), o.f1.toFixed(3), `${o.seconds.toFixed(1)}s`]));
    const [head, tune, scratch] = outcomes;
    const claims = [
      tune.accuracy > scratch.accuracy
        ? `Better results: the pretrained encoder beats the same model trained from scratch by ${((tune.accuracy - scratch.accuracy) * 100).toFixed(1)} points with the same ${train.length} fortunes and epochs.`
        : `Not shown here: training from scratch ${scratch.accuracy > tune.accuracy ? 'beat' : 'matched'} fine-tuning (${pct(scratch.accuracy)} vs ${pct(tune.accuracy)}) with ${perClass} fortunes a language.`,
      `Unfreezing: full fine-tuning ${tune.accuracy > head.accuracy ? 'beat' : 'did not beat'} training the head alone (${pct(tune.accuracy)} vs ${pct(head.accuracy)}).`,
    ];
    // A few test fortunes through the fine-tuned model, with their tokenizer from its metadata.
    const shown = test.filter((_, i) => i % testPerClass === 0);
    const tok = text.tokenizerOf(tuned)!;
    const { probabilities } = await tuned.predict(text.textInput(tok.encode(shown.map((s) => s.text)), text.textSpecOf(tuned)?.inputs));
    const probs = (await probabilities.read()) as Float32Array;
    const classes = LANGUAGES.length;
    const predicted = shown.map((s, i) => {
      const row = probs.subarray(i * classes, (i + 1) * classes);
      return { text: s.text, label: s.label, predicted: LANGUAGES[row.indexOf(Math.max(...row))] };
    });
    if (flags.json) {
      console.log(JSON.stringify({ perClass, train: train.length, test: testSet.length, epochs, outcomes: outcomes.map(({ history: _h, ...o }) => o), claims, examples: predicted, out: flags.out }));
    } else {
      console.log(`\n${table}\n`);
      for (const claim of claims) console.log(`- ${claim}`);
      console.log('');
      for (const p of predicted) console.log(`${p.label.padEnd(9)} -> ${p.predicted.padEnd(9)} ${p.text.length > 70 ? `${p.text.slice(0, 67)}...` : p.text}`);
      console.log(`\nsaved ${flags.out}`);
    }
    tuned.dispose();
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
}
