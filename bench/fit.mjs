// Throughput bench on in-memory data: torchlite's fit against the idiomatic PyTorch loop
// (a DataLoader over a TensorDataset; zero_grad, forward, loss, backward, step, loss.item())
// on the same LibTorch in the same run, for a tiny MLP and the small CNN (batch 32, 2048
// samples, 2 timed epochs after a warm-up one), and one trainStep per call on the small CNN
// at batch 8. Prints samples/s (steps/s for the single steps) and the ratios.
// This VM's rates drift by up to 1.6x within minutes (Python's CNN fit read 1,918-3,079
// samples/s in runs minutes apart), so the two sides alternate over several rounds and
// each is scored by its best round, as timeit scores by the fastest repeat; the per-round
// ratios are printed too.
//   node bench/fit.mjs [--rounds 3]   (after npm run build:native && npm run build:ts)
import { execFileSync } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { availableParallelism, cpus, tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

import torchlite from '../lib/index.js';

const { data, fit, getNumThreads, loadPretrained, loss, manualSeed, optim, randn, tensor } = torchlite;
const here = dirname(fileURLToPath(import.meta.url));
const python = process.env.TORCHLITE_PYTHON ?? '/usr/bin/python3';
const threads = getNumThreads();
const dir = mkdtempSync(join(tmpdir(), 'torchlite-fit-bench-'));
const [N, EPOCHS] = [2048, 2];
const args = process.argv.slice(2);
const rounds = args.includes('--rounds') ? Number(args[args.indexOf('--rounds') + 1]) : 3;

console.log(`torchlite fit bench: LibTorch ${torchlite.torchVersion}, ${threads} threads, ${cpus()[0]?.model ?? 'cpu'} x${availableParallelism()}, ${rounds} rounds`);
const reference = () => JSON.parse(execFileSync(python, [join(here, 'fit_ref.py'), dir, String(threads)], { encoding: 'utf8' }).trim().split('\n').pop());

function dataset(shape, classes) {
  manualSeed(0);
  const x = randn([N, ...shape]);
  const y = Int32Array.from({ length: N }, (_, i) => (i * 7) % classes);
  return data.tensorDataset(x, y, { inputShape: shape });
}

async function fitRate(file, ds) {
  const model = await loadPretrained(join(dir, file));
  const optimizer = optim.sgd(model, { lr: 0.01, momentum: 0.9 });
  const train = data.loader(ds, { batchSize: 32, shuffle: true });
  await fit(model, { train, epochs: 1, optimizer }); // warm-up: the profiling executor settles
  const start = performance.now();
  await fit(model, { train, epochs: EPOCHS, optimizer });
  return (EPOCHS * N) / ((performance.now() - start) / 1000);
}

async function stepRate(file, count) {
  const model = await loadPretrained(join(dir, file));
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
}

const measure = async () => ({
  fit_mlp: await fitRate('mlp.pt', dataset([12], 4)),
  fit_cnn: await fitRate('cnn.pt', dataset([1, 28, 28], 10)),
  step_cnn_b8: await stepRate('cnn.pt', 300),
});
const perRound = [];
for (let round = 0; round < rounds; round++) {
  const python = reference(); // also (re)writes the scripted models torchlite loads
  perRound.push({ python, ours: await measure() });
}
const best = (side, name) => Math.max(...perRound.map((r) => r[side][name]));
const names = Object.keys(perRound[0].ours);
const ours = Object.fromEntries(names.map((name) => [name, best('ours', name)]));
const py = Object.fromEntries(names.map((name) => [name, best('python', name)]));
const rows = names.map((name) => ({
  case: name,
  torchlite: ours[name].toFixed(0),
  pytorch: py[name].toFixed(0),
  ratio: (ours[name] / py[name]).toFixed(2),
  'ratio per round': perRound.map((r) => (r.ours[name] / r.python[name]).toFixed(2)).join(' '),
}));
console.table(rows);
const file = join(here, 'results', `fit-${new Date().toISOString().slice(0, 16).replace(':', '')}.json`);
writeFileSync(file, `${JSON.stringify({ machine: `${cpus()[0]?.model} x${availableParallelism()}`, threads, torch: torchlite.torchVersion, graphExecutor: process.env.TORCHLITE_GRAPH_EXECUTOR ?? 'legacy', ours, python: py, rounds: perRound, rows }, null, 2)}\n`);
console.log(`wrote ${file}`);
