// One-run lr rules scored on the recorded sweep (bench/results/recipes-runs.jsonl.gz), with no
// new runs: a fixed lr is a grid point, so each seed's grid run at it is exactly the run that
// rule makes; the range test's lr (valley × 7) is the `trials` part's run at factor 1 under
// 'frozen-eval'. Gaps are against the best grid lr of the cell's mean, paired by seed, on the
// seeds that have every run the comparison needs.
//
//   node bench/recipes/one-run.mjs     prints the markdown table bench/recipes/README.md holds
import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { gunzipSync } from 'node:zlib';

const here = dirname(fileURLToPath(import.meta.url));
const runs = gunzipSync(readFileSync(join(here, '..', 'results', 'recipes-runs.jsonl.gz'))).toString().trim().split('\n').map((line) => JSON.parse(line));
const GRID = [3e-3, 1e-2, 3e-2, 1e-1, 3e-1];
const current = runs.filter((r) => r.sweep === 2);
const seedKey = (r) => [r.family, r.dataset, r.budget, r.seed].join('|');
const cellKey = (r) => [r.family, r.dataset, r.budget].join('|');
const mean = (xs) => xs.reduce((a, b) => a + b, 0) / xs.length;

/** Each seed's grid: accuracy and seconds by lr, from plain grid runs (no search, the model's BatchNorm policy). */
const grids = new Map();
for (const r of current.filter((r) => r.part === 'grid' && typeof r.lr === 'number' && r.lrSearch === undefined && r.bnPolicy === undefined)) {
  if (!grids.has(seedKey(r))) grids.set(seedKey(r), { cell: cellKey(r), seed: r.seed, runs: {} });
  grids.get(seedKey(r)).runs[r.lr] = r;
}
const fullGrids = [...grids.values()].filter((g) => GRID.every((lr) => g.runs[lr]));

/** The range test's lr per seed (the suggestion the default's search recorded), run alone. */
const rangeTest = new Map();
for (const d of current.filter((r) => r.part === 'grid' && r.lrSearch !== undefined && r.suggestions)) {
  const lr = d.suggestions.valley * 7;
  const run = current.find((t) => t.part === 'trials' && (t.bnPolicy ?? 'frozen-eval') === 'frozen-eval' && seedKey(t) === seedKey(d) && Math.abs(t.lr / lr - 1) < 1e-6);
  if (run) rangeTest.set(seedKey(d), run);
}
/** Today's search default as the sweep report derives it: the accuracy and cost of each seed's real or derived run. */
const searched = new Map(current.filter((r) => r.part === 'grid' && r.lrSearch !== undefined && r.search?.trials).map((r) => [seedKey(r), r]));

const rules = {
  'lr 1e-2 (the default)': (g) => g.runs[1e-2],
  "lr: 'auto' (valley × 7)": (g) => rangeTest.get(`${g.cell}|${g.seed}`),
};
const rows = [];
const summary = {};
for (const [name, pick] of Object.entries(rules)) {
  const byCell = new Map();
  for (const g of fullGrids) {
    const run = pick(g);
    if (!run) continue;
    if (!byCell.has(g.cell)) byCell.set(g.cell, []);
    byCell.get(g.cell).push({ g, run });
  }
  const gaps = [];
  for (const [cell, seeds] of byCell) {
    const gridMeans = GRID.map((lr) => mean(seeds.map((s) => s.g.runs[lr].accuracy)));
    const best = GRID[gridMeans.indexOf(Math.max(...gridMeans))];
    const diffs = seeds.map((s) => s.g.runs[best].accuracy - s.run.accuracy);
    const gap = mean(diffs);
    const se = Math.sqrt(diffs.reduce((a, d) => a + (d - gap) ** 2, 0) / Math.max(diffs.length - 1, 1) / diffs.length);
    gaps.push(gap);
    rows.push({ name, cell, seeds: seeds.length, accuracy: mean(seeds.map((s) => s.run.accuracy)), best: Math.max(...gridMeans), gap, se, seconds: mean(seeds.map((s) => s.run.seconds)) });
  }
  summary[name] = { within: gaps.filter((g) => g <= 0.02).length, cells: gaps.length, mean: mean(gaps), worst: Math.max(...gaps) };
}
const pct = (x) => `${(x * 100).toFixed(1)}%`;
const pts = (x) => (x * 100).toFixed(1);
console.log('| model | dataset | labels/class | seeds | best grid lr | lr 1e-2 | gap | range test | gap | one run (s) | the search default (s) |');
console.log('|---|---|---|---|---|---|---|---|---|---|---|');
const cells = [...new Set(rows.map((r) => r.cell))];
for (const cell of cells) {
  const [fixed, auto] = Object.keys(rules).map((name) => rows.find((r) => r.name === name && r.cell === cell));
  const searchSeconds = mean([...searched.values()].filter((r) => cellKey(r) === cell).map((r) => r.seconds));
  const [family, dataset, budget] = cell.split('|');
  console.log(`| ${family} | ${dataset} | ${budget} | ${fixed.seeds} | ${pct(fixed.best)} | ${pct(fixed.accuracy)} | ${pts(fixed.gap)} ± ${pts(fixed.se)} | ${auto ? pct(auto.accuracy) : '–'} | ${auto ? `${pts(auto.gap)} ± ${pts(auto.se)}` : '–'} | ${fixed.seconds.toFixed(1)} | ${searchSeconds.toFixed(1)} |`);
}
console.log('');
for (const [name, s] of Object.entries(summary)) console.log(`- ${name}: within 2 points in ${s.within} of ${s.cells} cells, mean gap ${pts(s.mean)}, worst ${pts(s.worst)}.`);
