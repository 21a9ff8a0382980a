// The recipe sweep: does fineTune's default (lr: 'auto') land near the best learning rate
// on data it has never seen? Five small datasets (make_datasets.py), budgets of 10, 50
// and 200 labels per class, two model families pretrained on Fashion-MNIST classes 0-4
// (the shipped CNN, and mobilenet_v3_small from pretrain_mobilenet.py), three seeds. Each
// cell runs the default, the other lr rules, and a five-point lr grid, with the CLI's
// other defaults (1 frozen epoch + 3, batch 32), and scores the 500 validation images.
//
//   node bench/recipes/sweep.mjs [--part defaults|grid|all] [--report]
//
// Results append to $TORCHLITE_RECIPES_DIR/runs.jsonl (default /tmp/torchlite-recipes), so an
// interrupted sweep continues where it stopped; --report writes bench/results/recipes.md.
// A benchmark, not a test: test/recipes.test.ts runs one small cell end to end.
import { execFileSync } from 'node:child_process';
import { appendFileSync, existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

import torchlite from '../../lib/index.js';

const { data, fineTune, inputSpecOf, loadPretrained, manualSeed } = torchlite;
const here = dirname(fileURLToPath(import.meta.url));
const python = process.env.TORCHLITE_PYTHON ?? '/usr/bin/python3';
const cache = process.env.TORCHLITE_RECIPES_DIR ?? '/tmp/torchlite-recipes';
const runsFile = join(cache, 'runs.jsonl');
const args = process.argv.slice(2);
const flag = (name, fallback) => (args.includes(name) ? args[args.indexOf(name) + 1] : fallback);
const part = flag('--part', 'all');

export const DATASETS = ['fashion', 'letters', 'shapes', 'textures', 'colour'];
export const BUDGETS = [10, 50, 200];
export const SEEDS = [0, 1, 2];
export const GRID = [3e-3, 1e-2, 3e-2, 1e-1, 3e-1];
// fineTune's defaults, written into every grid cell so that a change of default makes new
// cells rather than reusing old results (cells without lrMult ran with the old 100).
const DEFAULTS = { lrMult: 3, freezeEpochs: 1, epochs: 3 };
const multOf = (r) => JSON.parse(r.key).lrMult ?? 100;
const MODELS = {
  cnn: { file: join(here, '..', '..', 'models', 'fashion-cnn.pt'), layout: 'grey28', shape: [1, 28, 28] },
  mnv3: { file: join(cache, 'mobilenet_v3_small-fashion04.pt'), layout: 'rgb32', shape: [3, 32, 32] },
};

// --models cnn,mnv3 and --budgets 10,50,200 run a part of the sweep (the rest can follow).
const FAMILIES = flag('--models', 'cnn,mnv3').split(',');
const RUN_BUDGETS = flag('--budgets', BUDGETS.join(',')).split(',').map(Number);

function prepare() {
  mkdirSync(cache, { recursive: true });
  if (!existsSync(join(cache, 'colour.json'))) execFileSync(python, [join(here, 'make_datasets.py'), cache], { stdio: 'inherit' });
  if (FAMILIES.includes('mnv3') && !existsSync(MODELS.mnv3.file)) execFileSync(python, [join(here, 'pretrain_mobilenet.py'), MODELS.mnv3.file], { stdio: 'inherit' });
}

/** The dataset in a model family's layout, normalised as the model expects; train and val parts. */
function load(name, family, model) {
  const meta = JSON.parse(readFileSync(join(cache, `${name}.json`), 'utf8'));
  const bytes = readFileSync(join(cache, `${name}.${MODELS[family].layout}.u8`));
  const { mean, std } = inputSpecOf(model);
  const shape = MODELS[family].shape;
  const size = shape.reduce((a, b) => a * b, 1);
  const plane = shape[1] * shape[2];
  const inputs = Float32Array.from(bytes, (v, i) => {
    const c = Math.floor((i % size) / plane);
    return (v / 255 - mean[c]) / std[c];
  });
  const part = (from, to) => data.tensorDataset(inputs.subarray(from * size, to * size), Int32Array.from(meta.labels.slice(from, to)), { inputShape: shape, classes: meta.classes });
  return { train: part(0, meta.train), val: part(meta.train, meta.train + meta.val) };
}

/** One fine-tuning run; resolves its validation accuracy and the lr used. */
export async function run({ family, dataset, budget, seed, lr, lrRule = 'valley', lrScale = 1, lrMult = 100, freezeEpochs = 1, epochs = 3 }) {
  manualSeed(seed);
  const model = await loadPretrained(MODELS[family].file);
  try {
    const { train, val } = load(dataset, family, model);
    const picked = data.subset(train, { perClass: budget, seed });
    const started = Date.now();
    const history = await fineTune(model, {
      train: data.loader(picked, { batchSize: 32, shuffle: true, seed }),
      numClasses: 5,
      freezeEpochs,
      epochs,
      lr,
      lrRule,
      lrScale,
      lrMult,
    });
    const { accuracy } = await model.evaluate(data.loader(val, { batchSize: 250 }), { metrics: ['accuracy'] });
    return { accuracy, lr: history.lr, suggestions: history.lrFinder?.suggestions, seconds: (Date.now() - started) / 1000 };
  } finally {
    model.dispose();
  }
}

function done() {
  if (!existsSync(runsFile)) return new Set();
  return new Set(readFileSync(runsFile, 'utf8').trim().split('\n').filter(Boolean).map((line) => JSON.parse(line).key));
}

async function sweep(cells) {
  const finished = done();
  let i = 0;
  for (const cell of cells) {
    i += 1;
    const key = JSON.stringify(cell);
    if (finished.has(key)) continue;
    const result = await run(cell);
    appendFileSync(runsFile, `${JSON.stringify({ key, ...cell, ...result })}\n`);
    console.log(`${i}/${cells.length} ${key} -> ${(result.accuracy * 100).toFixed(1)}% at lr ${result.lr.toExponential(2)} (${result.seconds.toFixed(1)}s)`);
  }
}

/** Candidates for the other defaults, on budget 50, seed 0: lr ratio and the split of 4 epochs. */
function defaultsCells() {
  const cells = [];
  for (const family of FAMILIES)
    for (const dataset of DATASETS)
      for (const lrMult of [3, 10, 100])
        for (const [freezeEpochs, epochs] of [[1, 3], [2, 2]]) cells.push({ part: 'defaults', family, dataset, budget: 50, seed: 0, lr: 'auto', lrMult, freezeEpochs, epochs });
  return cells;
}

function gridCells(defaults) {
  const cells = [];
  for (const family of FAMILIES)
    for (const dataset of DATASETS)
      for (const budget of RUN_BUDGETS)
        for (const seed of SEEDS) {
          const base = { part: 'grid', family, dataset, budget, seed, ...defaults };
          // The default (valley × 7), then the plain rules it was chosen against.
          cells.push({ ...base, lr: 'auto', lrRule: 'valley', lrScale: 7 });
          for (const lrRule of ['valley', 'peak']) cells.push({ ...base, lr: 'auto', lrRule });
          for (const lr of GRID) cells.push({ ...base, lr });
        }
  return cells;
}

const mean = (xs) => xs.reduce((a, b) => a + b, 0) / xs.length;

/** A table of cells: the default and the valley rule against the best grid point, averaged over seeds. */
function gridSection(grid, title) {
  if (grid.length === 0) return [];
  const lines = [title, '', `Mean validation accuracy over seeds. Grid: ${GRID.join(', ')}. Acceptance: the default (\`lr: 'auto'\`: the valley rule × 7) within 2 points of the best grid point; the gap column is the default's.`, ''];
  lines.push('| model | dataset | labels/class | default (valley × 7) | valley | peak | best grid lr | best grid | gap | within 2 |', '|---|---|---|---|---|---|---|---|---|---|');
  let met = 0;
  let cellsCount = 0;
  const gaps = { default: [], valley: [], peak: [] };
  for (const family of Object.keys(MODELS))
    for (const dataset of DATASETS)
      for (const budget of BUDGETS) {
        const cell = grid.filter((r) => r.family === family && r.dataset === dataset && r.budget === budget);
        const acc = (pred) => {
          const xs = cell.filter(pred).map((r) => r.accuracy);
          return xs.length ? mean(xs) : NaN;
        };
        const auto = acc((r) => JSON.parse(r.key).lr === 'auto' && r.lrScale === 7);
        const valley = acc((r) => JSON.parse(r.key).lr === 'auto' && r.lrRule === 'valley' && r.lrScale === undefined);
        const peak = acc((r) => JSON.parse(r.key).lr === 'auto' && r.lrRule === 'peak');
        const points = GRID.map((lr) => [lr, acc((r) => JSON.parse(r.key).lr === lr)]).filter(([, a]) => !Number.isNaN(a));
        if (points.length < GRID.length) continue;
        const [bestLr, best] = points.reduce((a, b) => (b[1] > a[1] ? b : a));
        const gap = (best - auto) * 100;
        if (!Number.isNaN(gap)) gaps.default.push(gap);
        if (!Number.isNaN(valley)) gaps.valley.push((best - valley) * 100);
        if (!Number.isNaN(peak)) gaps.peak.push((best - peak) * 100);
        if (!Number.isNaN(gap)) cellsCount += 1;
        if (gap <= 2) met += 1;
        const pct = (v) => (Number.isNaN(v) ? '-' : `${(v * 100).toFixed(1)}%`);
        lines.push(`| ${family} | ${dataset} | ${budget} | ${pct(auto)} | ${pct(valley)} | ${pct(peak)} | ${bestLr} | ${(best * 100).toFixed(1)}% | ${Number.isNaN(gap) ? '-' : gap.toFixed(1)} | ${Number.isNaN(gap) ? '-' : gap <= 2 ? 'yes' : '**no**'} |`);
      }
  const summary = (xs) => (xs.length ? `${mean(xs).toFixed(2)} points (worst ${Math.max(...xs).toFixed(1)})` : '-');
  const within = cellsCount > 0 ? `Within 2 points: ${met} of ${cellsCount} cells. ` : '';
  lines.push('', `${within}Mean gap to the best grid point: the default ${summary(gaps.default)}; valley alone ${summary(gaps.valley)}; peak ${summary(gaps.peak)}.`, '');
  return lines;
}

function report() {
  const runs = readFileSync(runsFile, 'utf8').trim().split('\n').map((line) => JSON.parse(line));
  const lines = ['# Recipe sweep', '', `Machine: ${process.env.TORCHLITE_SWEEP_MACHINE ?? 'this 2-core VM'}; LibTorch ${torchlite.torchVersion}. Made by \`node bench/recipes/sweep.mjs --report\` from ${runs.length} runs.`, ''];
  const defaults = runs.filter((r) => r.part === 'defaults');
  if (defaults.length > 0) {
    lines.push('## Other defaults (budget 50 per class, seed 0, lr auto): mean validation accuracy over the five datasets', '', '| model | lr ratio | frozen + unfrozen epochs | accuracy |', '|---|---|---|---|');
    const keys = [...new Set(defaults.map((r) => `${r.family}|${r.lrMult}|${r.freezeEpochs}+${r.epochs}`))];
    for (const key of keys) {
      const [family, lrMult, split] = key.split('|');
      const group = defaults.filter((r) => `${r.family}|${r.lrMult}|${r.freezeEpochs}+${r.epochs}` === key);
      lines.push(`| ${family} | ${lrMult} | ${split} | ${(mean(group.map((r) => r.accuracy)) * 100).toFixed(1)}% (${group.length} runs) |`);
    }
    lines.push('');
  }
  const now = runs.filter((r) => r.part === 'grid' && multOf(r) === DEFAULTS.lrMult);
  const before = runs.filter((r) => r.part === 'grid' && multOf(r) === 100);
  lines.push(...gridSection(now, `## The default against the best of a five-point lr grid (lr ratio ${DEFAULTS.lrMult}, the default)`));
  lines.push(...gridSection(before, '## The same with the old lr ratio of 100 (before the defaults above were recalibrated)'));
  const out = join(here, '..', 'results', 'recipes.md');
  writeFileSync(out, `${lines.join('\n')}\n`);
  console.log(`wrote ${out}`);
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  if (args.includes('--report')) report();
  else {
    prepare();
    if (part === 'defaults' || part === 'all') await sweep(defaultsCells());
    if (part === 'grid' || part === 'all') {
      await sweep(gridCells(DEFAULTS));
    }
    report();
  }
}
