// `torchlite demo detect`: a small detector pretrained on five Fashion-MNIST classes placed
// in scenes, then fine-tuned on five other classes from a small budget, against the same
// detector trained from scratch on them. COCO mAP on held-out scenes.
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';

import { data, type EpochRecord, fit, loadPretrained, loss, manualSeed, type Metrics, nn, optim, progressBar, tensor } from '..';
import { FASHION_CLASSES, FASHION_DIR } from './data';
import { type DemoBaseFlags, intFlag } from './flags';
import { textTable } from './report';
import { readFashion, writeScenes } from './scenes';

/** The demo's architecture, random weights (scripts/detect/tinydet.py writes it). */
export const DETECT_MODEL = resolve(__dirname, '..', '..', 'models', 'tinydet.pt');
const SIZE = 96;
const PRETRAIN_CLASSES = [0, 1, 2, 3, 4];
const NEW_CLASSES = [5, 6, 7, 8, 9];
/** The heatmap's starting logit: a 0.1 prior on every cell, as CenterNet (and tinydet.py) start. */
const HEATMAP_PRIOR = -2.19;

interface Outcome {
  name: string;
  metrics: Metrics;
  seconds: number;
  history: EpochRecord[];
}

export async function runDetectDemo(flags: DemoBaseFlags): Promise<void> {
  const quick = flags.quick === true;
  const budget = intFlag(flags.budget ?? (quick ? '60' : '120'), '--budget');
  const epochs = intFlag(flags.epochs ?? (quick ? '6' : '25'), '--epochs');
  const say = (line: string) => !flags.json && console.log(line);
  const work = mkdtempSync(join(tmpdir(), 'torchlite-demo-detect-'));
  const pool = await readFashion(flags.dataDir ?? FASHION_DIR);
  const scenes = (name: string, classes: number[], count: number, seed: number, part: 'train' | 'test') => writeScenes(pool, join(work, name), { classes, count, seed, size: SIZE, part });
  const [pretrainFile, trainFile, testFile] = await Promise.all([
    scenes('pretrain', PRETRAIN_CLASSES, quick ? 300 : 1500, 1, 'train'),
    scenes('train', NEW_CLASSES, budget, 2, 'train'),
    scenes('test', NEW_CLASSES, quick ? 100 : 300, 3, 'test'),
  ]);
  say(`torchlite demo detect: ${SIZE}×${SIZE} scenes of 1-3 Fashion-MNIST items pasted on textures tiled from other Fashion-MNIST images, with exact boxes (in ${work})`);
  const train = await data.coco(trainFile, { augment: true });
  const test = data.loader(await data.coco(testFile), { batchSize: 50 });
  const bar = (label: string) => progressBar({ enabled: !flags.json, label });
  const run = async (model: Awaited<ReturnType<typeof loadPretrained>>, ds: data.Dataset<data.DetectionInput, data.DetectionTarget[]>, runEpochs: number, lr: number, label: string) => {
    const started = Date.now();
    const history = await fit(model, { train: data.loader(ds, { batchSize: 16, shuffle: true }), epochs: runEpochs, optimizer: optim.adamw(model, { lr, weightDecay: 1e-4 }), loss: loss.fromModel(), callbacks: [bar(label)] });
    return { history, seconds: (Date.now() - started) / 1000 };
  };

  manualSeed(0);
  const pretrainEpochs = quick ? 4 : 12;
  say(`pretraining on ${PRETRAIN_CLASSES.map((c) => FASHION_CLASSES[c]).join(', ')}: ${pretrainEpochs} epochs of ${quick ? 300 : 1500} scenes`);
  const pretrained = join(work, 'pretrained.pt');
  {
    await using model = await loadPretrained(DETECT_MODEL);
    await run(model, await data.coco(pretrainFile, { augment: true }), pretrainEpochs, 2e-3, 'pretrain');
    await model.save(pretrained);
  }
  say(`\nnew classes ${NEW_CLASSES.map((c) => FASHION_CLASSES[c]).join(', ')}: ${train.length} labelled scenes, ${epochs} epochs, tested on ${test.dataset.length} scenes\n`);
  const outcomes: Outcome[] = [];
  for (const [name, file] of [
    ['fine-tune the pretrained detector', pretrained],
    ['same detector from scratch', DETECT_MODEL],
  ] as const) {
    manualSeed(1);
    await using model = await loadPretrained(file);
    if (file === pretrained) {
      // The class heatmap for the new classes, from the prior: box size and offset heads keep what they learnt.
      model.replace('heatmap.2', nn.conv2d(64, NEW_CLASSES.length, 1));
      await model.loadStateDict({ 'heatmap.2.bias': tensor(new Array(NEW_CLASSES.length).fill(HEATMAP_PRIOR)) }, { strict: false });
    }
    const { history, seconds } = await run(model, train, epochs, 2e-3, name);
    const metrics = await model.evaluate(test);
    outcomes.push({ name, metrics, seconds, history });
    if (file === pretrained) await model.save(flags.out, { metadata: { task: 'detect', classes: ['__background__', ...NEW_CLASSES.map((c) => FASHION_CLASSES[c])] } });
  }
  const percent = (v: number | undefined) => (v === undefined || v < 0 ? 'n/a' : `${(v * 100).toFixed(1)}`);
  if (flags.json) {
    console.log(JSON.stringify({ budget: train.length, epochs, outcomes: outcomes.map(({ name, metrics, seconds }) => ({ name, ...metrics, seconds })), out: flags.out }));
    return;
  }
  console.log(
    textTable(
      ['approach', 'mAP', 'AP50', 'AP75', 'AR100', 'seconds'],
      outcomes.map((o) => [o.name, percent(o.metrics.map), percent(o.metrics.map50), percent(o.metrics.map75), percent(o.metrics.mar100), o.seconds.toFixed(0)]),
    ),
  );
  console.log(`\nCOCO mAP (pycocotools' conventions) on ${test.dataset.length} held-out scenes; saved ${flags.out}`);
}
