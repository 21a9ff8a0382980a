// What a default fineTune costs against the other lr choices, in wall time and test accuracy:
// the shipped CNN on the demo's data (Fashion-MNIST classes 5-9, `--per-class` labelled images
// a class, the 5,000 test images), and with `--sweep` on one recipe-sweep dataset per model
// family (bench/recipes: make_datasets.py and pretrain_mobilenet.py write them under
// $TORCHLITE_RECIPES_DIR). A benchmark, not a test.
//
//   node bench/finetune-cost.mjs [--per-class 20] [--seeds 0,1,2] [--sweep] [--sets demo,cnn,mnv3]
import { existsSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

import torchlite from '../lib/index.js';

const { data, fineTune, inputSpecOf, loadPretrained, manualSeed } = torchlite;
const here = dirname(fileURLToPath(import.meta.url));
const args = process.argv.slice(2);
const flag = (name, fallback) => (args.includes(name) ? args[args.indexOf(name) + 1] : fallback);
const perClass = Number(flag('--per-class', '20'));
const seeds = flag('--seeds', '0,1,2').split(',').map(Number);
const recipes = process.env.TORCHLITE_RECIPES_DIR ?? '/tmp/torchlite-recipes';

const CHOICES = {
  default: {},
  "lr: 'auto'": { lr: 'auto' },
  'lrSearch: true': { lrSearch: true },
  "lr: 'auto', lrSearch: true (the default before)": { lr: 'auto', lrSearch: true },
};

async function fashion() {
  const file = (name) => `/usr/share/datasets/fashion-mnist/${name}-ubyte.gz`;
  const norm = { mean: 0.286, std: 0.353 };
  const all = await data.idx(file('train-images-idx3'), file('train-labels-idx1'), norm);
  const test = data.subset(await data.idx(file('t10k-images-idx3'), file('t10k-labels-idx1'), norm), { classes: [5, 6, 7, 8, 9] });
  return { name: `demo data (${perClass * 5} labels)`, model: join(here, '..', 'models', 'fashion-cnn.pt'), train: (seed) => data.subset(all, { classes: [5, 6, 7, 8, 9], perClass, seed }), test };
}

/** A recipe-sweep dataset in a model family's layout, as bench/recipes/sweep.mjs loads it. */
async function sweepSet(name, family) {
  const layouts = { cnn: { file: join(here, '..', 'models', 'fashion-cnn.pt'), layout: 'grey28', shape: [1, 28, 28] }, mnv3: { file: join(recipes, 'mobilenet_v3_small-fashion04.pt'), layout: 'rgb32', shape: [3, 32, 32] } };
  const { file, layout, shape } = layouts[family];
  if (!existsSync(file) || !existsSync(join(recipes, `${name}.json`))) return undefined;
  const meta = JSON.parse(readFileSync(join(recipes, `${name}.json`), 'utf8'));
  const bytes = readFileSync(join(recipes, `${name}.${layout}.u8`));
  const model = await loadPretrained(file);
  const { mean, std } = inputSpecOf(model);
  model.dispose();
  const size = shape.reduce((a, b) => a * b, 1);
  const plane = shape[1] * shape[2];
  const inputs = Float32Array.from(bytes, (v, i) => (v / 255 - mean[Math.floor((i % size) / plane)]) / std[Math.floor((i % size) / plane)]);
  const part = (from, to) => data.tensorDataset(inputs.subarray(from * size, to * size), Int32Array.from(meta.labels.slice(from, to)), { inputShape: shape, classes: meta.classes });
  const train = part(0, meta.train);
  return { name: `${family} on ${name} (${perClass * 5} labels)`, model: file, train: (seed) => data.subset(train, { perClass, seed }), test: part(meta.train, meta.train + meta.val) };
}

const wanted = flag('--sets', args.includes('--sweep') ? 'demo,cnn,mnv3' : 'demo').split(',');
const sets = [
  ...(wanted.includes('demo') ? [await fashion()] : []),
  ...(wanted.includes('cnn') ? [await sweepSet('letters', 'cnn')] : []),
  ...(wanted.includes('mnv3') ? [await sweepSet('textures', 'mnv3')] : []),
].filter(Boolean);
for (const set of sets) {
  console.log(`\n${set.name}, seeds ${seeds.join(', ')}:`);
  console.log('| lr choice | runs | seconds | test accuracy | cost against the default |');
  console.log('|---|---|---|---|---|');
  let base;
  for (const [label, options] of Object.entries(CHOICES)) {
    const seconds = [];
    const accuracy = [];
    let runs = 1;
    for (const seed of seeds) {
      manualSeed(seed);
      const model = await loadPretrained(set.model);
      const started = performance.now();
      const history = await fineTune(model, { train: data.loader(set.train(seed), { batchSize: 32, shuffle: true, seed }), numClasses: 5, ...options, callbacks: [{ name: 'count', onLrSearch: (plan) => void (runs = plan.runs + 1) }] });
      seconds.push((performance.now() - started) / 1000);
      accuracy.push((await model.evaluate(data.loader(set.test, { batchSize: 500 }), { metrics: ['accuracy'] })).accuracy);
      void history;
      model.dispose();
    }
    const mean = (xs) => xs.reduce((a, b) => a + b, 0) / xs.length;
    base ??= mean(seconds);
    console.log(`| ${label} | ${runs} | ${mean(seconds).toFixed(1)} | ${(mean(accuracy) * 100).toFixed(1)}% | ${(mean(seconds) / base).toFixed(2)}× |`);
  }
}
