// Data-parallel bench: step time and scaling of 1 and 2 ranks on this machine (resnet18,
// batch 16 per rank at 64 px, one thread per rank), torchlite (gradients synced after
// backward, and with `overlap: true` during it) against PyTorch's own DDP over Gloo in the
// same run, and the allreduce time of the gradients' size. With 2 ranks on a
// 2-core VM the ranks share the cores, so scaling says little about a cluster; the
// allreduce numbers are what a cluster estimate starts from.
//   node bench/dist.mjs [steps]        (after npm run build:native && npm run build:ts)
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { availableParallelism, cpus, tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

import torchlite from '../lib/index.js';

const here = dirname(fileURLToPath(import.meta.url));
const python = process.env.TORCHLITE_PYTHON ?? '/usr/bin/python3';
const [BATCH, SIZE] = [16, 64];
const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

async function rank(dir, steps, out, overlap) {
  const { distributed: dist, loadPretrained, loss, optim, randn, tensor, zeros } = torchlite;
  torchlite.setNumThreads(1);
  const group = await dist.init();
  const model = dist.dataParallel(await loadPretrained(join(dir, 'resnet18.pt')), { group, overlap });
  model.train();
  const opt = optim.sgd(model, { lr: 0.01, momentum: 0.9 });
  const x = randn([BATCH, 3, SIZE, SIZE]);
  const y = tensor(BigInt64Array.from({ length: BATCH }, (_, i) => BigInt(i % 10)));
  const times = [];
  for (let i = 0; i < steps + 2; i++) {
    const start = performance.now();
    await model.trainStep(x, y, { loss: loss.crossEntropy(), optimizer: opt });
    if (i >= 2) times.push((performance.now() - start) / 1000);
  }
  const flat = zeros([model.parameters().reduce((n, p) => n + p.shape.reduce((a, b) => a * b, 1), 0)]);
  const reduces = [];
  for (let i = 0; i < 5; i++) {
    await group.barrier();
    const start = performance.now();
    await group.allReduce(flat);
    reduces.push((performance.now() - start) / 1000);
  }
  if (group.rank === 0) writeFileSync(out, JSON.stringify({ step: median(times), allreduce: group.worldSize > 1 ? median(reduces) : 0 }));
  await group.destroy();
}

if (process.argv[2] === '--rank') {
  await rank(process.argv[3], Number(process.argv[4]), process.argv[5], process.argv[6] === 'overlap');
} else {
  const steps = Number(process.argv[2] ?? 8);
  const dir = mkdtempSync(join(tmpdir(), 'torchlite-dist-bench-'));
  console.log(`torchlite dist bench: LibTorch ${torchlite.torchVersion}, ${cpus()[0]?.model ?? 'cpu'} x${availableParallelism()}, resnet18 ${BATCH}x3x${SIZE}x${SIZE} per rank, 1 thread per rank, ${steps} steps`);
  const py = JSON.parse(execFileSync(python, [join(here, 'dist_ref.py'), dir, String(steps)], { encoding: 'utf8' }).trim().split('\n').pop());
  const ours = {};
  const runs = [['1', 1, ''], ['2', 2, ''], ['2 overlap', 2, 'overlap']];
  for (const [key, world, mode] of runs) {
    const out = join(dir, `tl-${world}${mode}.json`);
    execFileSync(process.execPath, [join(here, '..', 'lib', 'cli', 'main.js'), 'run', '--nproc', String(world), fileURLToPath(import.meta.url), '--rank', dir, String(steps), out, mode], { stdio: 'inherit' });
    ours[key] = JSON.parse(readFileSync(out, 'utf8'));
  }
  const rows = runs.map(([key, world]) => ({
    ranks: key,
    'torchlite s/step': ours[key].step.toFixed(3),
    'pytorch s/step': py[world].step.toFixed(3),
    'ratio (pt/tl)': (py[world].step / ours[key].step).toFixed(2),
    'torchlite img/s': ((world * BATCH) / ours[key].step).toFixed(1),
    'scaling vs 1 rank': ((world * ours['1'].step) / ours[key].step).toFixed(2),
    'allreduce ms (tl)': (ours[key].allreduce * 1000).toFixed(1),
    'allreduce ms (pt)': (py[world].allreduce * 1000).toFixed(1),
  }));
  console.table(rows);
  const file = join(here, 'results', `dist-${new Date().toISOString().slice(0, 16).replace(':', '')}.json`);
  writeFileSync(file, `${JSON.stringify({ machine: `${cpus()[0]?.model} x${availableParallelism()}`, torch: torchlite.torchVersion, steps, ours, python: py, rows }, null, 2)}\n`);
  console.log(`wrote ${file}`);
}
