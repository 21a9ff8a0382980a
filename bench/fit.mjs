// Throughput bench on in-memory data: torchlite's fit against the idiomatic PyTorch loop
// (a DataLoader over a TensorDataset; zero_grad, forward, loss, backward, step, loss.item())
// on the same LibTorch in the same run, for a tiny MLP and the small CNN (batch 32, 2048
// samples, 2 timed epochs after a warm-up one, 16 for the MLP, whose 2 took ~30 ms), and
// one trainStep per call on the small CNN
// at batch 8. torchlite runs its defaults (the CNN in channels-last, see
// LoadOptions.channelsLast) against PyTorch's idiomatic NCHW; the CNN cases then run again
// with both sides in NCHW (*_nchw) and both in channels-last (*_nhwc, PyTorch's
// channels-last recipe), kernel for kernel. Both sides start from the same initial weights.
//
// This VM's speed drifts by up to 1.7x within minutes (Python's CNN fit read 1,918-3,320
// samples/s in runs minutes apart), so one Python process stays up and the two sides take
// turns case by case, a few seconds apart, for several rounds (who goes first alternates).
// The ratio reported is the median of the per-round ratios; the rates are each side's best.
//   node bench/fit.mjs [--rounds 5]   (after npm run build:native && npm run build:ts)
import { spawn } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { availableParallelism, cpus, tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';

import torchlite from '../lib/index.js';

const { data, fit, getNumThreads, loadPretrained, loss, manualSeed, optim, randn, tensor } = torchlite;
const here = dirname(fileURLToPath(import.meta.url));
const python = process.env.TORCHLITE_PYTHON ?? '/usr/bin/python3';
const threads = getNumThreads();
const dir = mkdtempSync(join(tmpdir(), 'torchlite-fit-bench-'));
const [N, EPOCHS, MLP_EPOCHS] = [2048, 2, 16];
const args = process.argv.slice(2);
const rounds = args.includes('--rounds') ? Number(args[args.indexOf('--rounds') + 1]) : 5;

console.log(`torchlite fit bench: LibTorch ${torchlite.torchVersion}, ${threads} threads, ${cpus()[0]?.model ?? 'cpu'} x${availableParallelism()}, ${rounds} rounds`);

/** The Python side: one process, one case per request. */
const reference = spawn(python, [join(here, 'fit_ref.py'), dir, String(threads)], { stdio: ['pipe', 'pipe', 'inherit'] });
const replies = createInterface({ input: reference.stdout })[Symbol.asyncIterator]();
const reply = async () => {
  const { value, done } = await replies.next();
  if (done) throw new Error('bench/fit_ref.py ended early');
  return value;
};
const pythonRate = async (name) => {
  reference.stdin.write(`${name}\n`);
  return JSON.parse(await reply())[name];
};
if ((await reply()) !== 'ready') throw new Error('bench/fit_ref.py did not start');

function dataset(shape, classes) {
  manualSeed(0);
  const x = randn([N, ...shape]);
  const y = Int32Array.from({ length: N }, (_, i) => (i * 7) % classes);
  return data.tensorDataset(x, y, { inputShape: shape });
}

/** Runs `time` on a fresh copy of the scripted model, in `layout` (LoadOptions.channelsLast), and disposes it after. */
async function timed(file, layout, time) {
  const model = await loadPretrained(join(dir, file), { channelsLast: layout });
  try {
    return await time(model);
  } finally {
    model.dispose();
  }
}

const fitRate = (file, ds, layout = 'auto', epochs = EPOCHS) =>
  timed(file, layout, async (model) => {
    const optimizer = optim.sgd(model, { lr: 0.01, momentum: 0.9 });
    const train = data.loader(ds, { batchSize: 32, shuffle: true });
    await fit(model, { train, epochs: 1, optimizer }); // warm-up
    const start = performance.now();
    await fit(model, { train, epochs, optimizer });
    return (epochs * N) / ((performance.now() - start) / 1000);
  });

const stepRate = (file, count, layout = 'auto') =>
  timed(file, layout, async (model) => {
    model.train();
    const optimizer = optim.sgd(model, { lr: 0.01, momentum: 0.9 });
    const x = randn([8, 1, 28, 28]);
    const y = tensor(BigInt64Array.from({ length: 8 }, (_, i) => BigInt(i % 10)));
    const ce = loss.crossEntropy();
    let start = 0;
    for (let i = 0; i < count + 50; i++) {
      if (i === 50) start = performance.now();
      await model.trainStep(x, y, { loss: ce, optimizer });
    }
    return count / ((performance.now() - start) / 1000);
  });

const mlp = dataset([12], 4);
const images = dataset([1, 28, 28], 10);
const cases = {
  fit_mlp: () => fitRate('mlp.pt', mlp, 'auto', MLP_EPOCHS),
  fit_cnn: () => fitRate('cnn.pt', images),
  step_cnn_b8: () => stepRate('cnn.pt', 300),
  fit_cnn_nchw: () => fitRate('cnn.pt', images, false),
  step_cnn_b8_nchw: () => stepRate('cnn.pt', 300, false),
  fit_cnn_nhwc: () => fitRate('cnn.pt', images, true),
  step_cnn_b8_nhwc: () => stepRate('cnn.pt', 300, true),
};
const runs = Object.fromEntries(Object.keys(cases).map((name) => [name, []]));
for (let round = 0; round < rounds; round++) {
  for (const [name, ours] of Object.entries(cases)) {
    const run = {};
    if (round % 2 === 0) run.python = await pythonRate(name);
    run.ours = await ours();
    if (round % 2 === 1) run.python = await pythonRate(name);
    runs[name].push(run);
  }
}
reference.stdin.end();

const median = (values) => {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = sorted.length >> 1;
  return sorted.length % 2 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
};
const rows = Object.entries(runs).map(([name, list]) => ({
  case: name,
  torchlite: Math.max(...list.map((r) => r.ours)).toFixed(0),
  pytorch: Math.max(...list.map((r) => r.python)).toFixed(0),
  ratio: median(list.map((r) => r.ours / r.python)).toFixed(2),
  'per round': list.map((r) => (r.ours / r.python).toFixed(2)).join(' '),
}));
console.table(rows);
const file = join(here, 'results', `fit-${new Date().toISOString().slice(0, 16).replace(':', '')}.json`);
writeFileSync(file, `${JSON.stringify({ machine: `${cpus()[0]?.model} x${availableParallelism()}`, threads, torch: torchlite.torchVersion, graphExecutor: process.env.TORCHLITE_GRAPH_EXECUTOR ?? 'plain', runs, rows }, null, 2)}\n`);
console.log(`wrote ${file}`);
