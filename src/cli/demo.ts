// The README's main job: fine-tune the shipped Fashion-MNIST (classes 0-4) model on
// classes 5-9 from a small labelled budget, and compare it honestly with training the
// head alone and with the same architecture trained from scratch.
import { resolve } from 'node:path';

import { data, type EpochRecord, fineTune, fit, lineChart, loadPretrained, loss as losses, manualSeed, type Model, optim, progressBar, sched, tensor } from '..';
import { FASHION_CLASSES, inputSpec, loadDataset } from './data';
import { type DemoBaseFlags, intFlag, numberFlag } from './flags';
import { stepRecorder, textTable, writeReport } from './report';

const { loader, subset } = data;

export const SHIPPED_MODEL = resolve(__dirname, '..', '..', 'models', 'fashion-cnn.pt');

export interface DemoFlags extends DemoBaseFlags {
  target: string;
  report: string;
}

interface Outcome {
  name: string;
  history: EpochRecord[];
  accuracy: number;
  stepsToTarget: number | null;
  seconds: number;
}

function stepsTo(history: EpochRecord[], target: number, stepsPerEpoch: number): number | null {
  const hit = history.findIndex((r) => (r.val?.accuracy ?? 0) >= target);
  return hit < 0 ? null : (hit + 1) * stepsPerEpoch;
}

export async function runDemo(flags: DemoFlags): Promise<void> {
  const quick = flags.quick === true;
  const budget = intFlag(quick ? '200' : (flags.budget ?? '100'), '--budget');
  const epochs = intFlag(quick ? '5' : (flags.epochs ?? '12'), '--epochs', 2);
  const target = numberFlag(flags.target, '--target');
  const say = (line: string) => !flags.json && console.log(line);
  const classes = [5, 6, 7, 8, 9];
  const names = classes.map((c) => FASHION_CLASSES[c]);
  await using probe = await loadPretrained(SHIPPED_MODEL);
  const input = inputSpec(probe, {}, SHIPPED_MODEL);
  const data = flags.dataDir ?? 'fashion-mnist';
  const full = await loadDataset(data, 'train', input, { classes });
  const train = subset(full, { perClass: Math.max(1, Math.floor(budget / 5)), seed: 0 });
  const testAll = await loadDataset(data, 't10k', input, { classes });
  const test = quick ? subset(testAll, { perClass: 100, seed: 0 }) : testAll;
  const batchSize = 32;
  const trainLoader = loader(train, { batchSize, shuffle: true, seed: 0 });
  const testLoader = loader(test, { batchSize: 500 });
  const loss = losses.crossEntropy({ labelSmoothing: 0.1 });
  say(`torchlite demo: ${SHIPPED_MODEL} (pretrained on Fashion-MNIST ${(probe.metadata as { classes: string[] }).classes.join(', ')})`);
  say(`fine-tuning to ${names.join(', ')} with ${train.length} labelled images, ${epochs} epochs, testing on ${test.length} images\n`);
  const outcomes: Outcome[] = [];
  const allSteps: Record<string, { step: number; loss: number; lr: number }[]> = {};
  async function approach(name: string, train: (model: Model, callbacks: ReturnType<typeof progressBar>[]) => Promise<EpochRecord[]>, prepare: (model: Model) => void): Promise<Model> {
    manualSeed(0);
    const model = await loadPretrained(SHIPPED_MODEL);
    prepare(model);
    const steps = stepRecorder();
    const started = Date.now();
    const history = await train(model, [progressBar({ label: name, enabled: !flags.json, batchSize }), steps]);
    const seconds = (Date.now() - started) / 1000;
    outcomes.push({ name, history, accuracy: history.at(-1)?.val?.accuracy ?? 0, stepsToTarget: stepsTo(history, target, trainLoader.length), seconds });
    allSteps[name] = steps.steps;
    return model;
  }
  const oneCycleFit = (lr: number) => async (model: Model, callbacks: ReturnType<typeof progressBar>[]) => {
    const optimizer = optim.adamw(model, { lr, weightDecay: 0.01 });
    const scheduler = sched.oneCycle(optimizer, { maxLr: lr, totalSteps: epochs * trainLoader.length });
    return fit(model, { train: trainLoader, val: testLoader, epochs, optimizer, scheduler, loss, callbacks });
  };
  const headOnly = await approach('head only', oneCycleFit(1e-2), (model) => {
    const head = model.resetClassifier(5, { dropout: 0.2 });
    model.freeze();
    model.unfreeze(head);
  });
  headOnly.dispose();
  const tuned = await approach(
    'fine-tune (gradual unfreezing)',
    (model, callbacks) => fineTune(model, { train: trainLoader, val: testLoader, numClasses: 5, dropout: 0.2, freezeEpochs: 1, epochs: epochs - 1, lr: 2e-2, lrMult: 3, unfreeze: ['features.8', 'all'], loss, callbacks }),
    () => undefined,
  );
  const scratch = await approach('from scratch', oneCycleFit(3e-3), async (model) => {
    model.resetClassifier(5, { dropout: 0.2 });
    await model.resetParameters();
  });
  scratch.dispose();

  const final = await tuned.evaluate(testLoader, { loss, metrics: ['accuracy', 'f1', 'confusionMatrix'] });
  await tuned.save(flags.out, { metadata: { classes: names, input, recipe: { command: 'torchlite demo', budget: train.length, epochs, testAccuracy: final.accuracy } } });

  const pct = (v: number) => `${(v * 100).toFixed(1)}%`;
  const rows = outcomes.map((o) => [o.name, pct(o.accuracy), o.stepsToTarget === null ? 'never' : String(o.stepsToTarget), `${o.seconds.toFixed(1)}s`]);
  const table = textTable(['approach', 'test accuracy', `steps to ${pct(target)}`, 'time'], rows);
  const [head, tune, fromScratch] = outcomes;
  const claims = [
    tune.accuracy > fromScratch.accuracy
      ? `Better results: fine-tuning beats training from scratch by ${((tune.accuracy - fromScratch.accuracy) * 100).toFixed(1)} points with the same ${train.length} images and epochs.`
      : `Not shown here: training from scratch matched fine-tuning (${pct(fromScratch.accuracy)} vs ${pct(tune.accuracy)}).`,
    (tune.stepsToTarget ?? Infinity) < (fromScratch.stepsToTarget ?? Infinity)
      ? `Faster training: fine-tuning reached ${pct(target)} after ${tune.stepsToTarget} steps; from scratch ${fromScratch.stepsToTarget === null ? 'never did' : `needed ${fromScratch.stepsToTarget}`}.`
      : `Not shown here: fine-tuning did not reach ${pct(target)} sooner than training from scratch.`,
    `Less data: ${train.length} labelled images (${Math.floor(budget / 5)} per class) ${tune.accuracy >= target ? 'were enough' : 'were not enough'} for ${pct(target)} with the pretrained body.`,
    `Unfreezing: full fine-tuning ${tune.accuracy > head.accuracy ? 'beat' : 'did not beat'} training the head alone (${pct(tune.accuracy)} vs ${pct(head.accuracy)}).`,
  ];
  if (flags.json) {
    console.log(JSON.stringify({ budget: train.length, epochs, target, outcomes: outcomes.map(({ history: _h, ...o }) => o), claims, out: flags.out, report: flags.report }));
  } else {
    console.log(`\n${table}\n`);
    for (const claim of claims) console.log(`- ${claim}`);
  }
  await writeReport(flags.report, {
    title: 'torchlite demo: fine-tuning a pretrained CNN on Fashion-MNIST classes 5-9',
    summary: [`${train.length} labelled training images, ${test.length} test images, ${epochs} epochs each`, ...table.split('\n'), '', ...claims, '', `saved ${flags.out}`],
    history: tune.history,
    steps: allSteps[tune.name],
    confusion: { matrix: final.confusionMatrix ?? [], classes: names },
    extra: lineChart(
      'Test accuracy per epoch, all approaches',
      'epoch',
      outcomes.map((o, i) => ({ name: o.name, color: ['#2e7d32', '#1565c0', '#c62828'][i], points: o.history.map((r, e) => [e + 1, r.val?.accuracy ?? Number.NaN] as [number, number]) })),
    ),
  });

  // A few test images through the fine-tuned model, top-3 labels with class names.
  const shown = Math.min(5, test.length);
  const samples = await Promise.all(Array.from({ length: shown }, (_, i) => test.get(i, 0)));
  const size = input.shape.reduce((a, b) => a * b, 1);
  const batch = new Float32Array(shown * size);
  samples.forEach((s, i) => batch.set(s.input, i * size));
  const { probabilities } = await tuned.predict(tensor(batch, [shown, ...input.shape]));
  const probs = probabilities.toTypedArray() as Float32Array;
  if (!flags.json) {
    console.log('');
    samples.forEach((s, i) => {
      const top = Array.from(probs.subarray(i * 5, i * 5 + 5), (p, c) => [p, c] as const).sort((a, b) => b[0] - a[0]).slice(0, 3);
      console.log(`test image ${i + 1}  true: ${names[s.target as number].padEnd(11)} top-3: ${top.map(([p, c]) => `${names[c]} ${(p * 100).toFixed(1)}%`).join(', ')}`);
    });
    console.log(`\nsaved ${flags.out} and ${flags.report}`);
  }
  tuned.dispose();
}
