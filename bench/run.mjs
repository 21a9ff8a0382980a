// Train-step bench: torchlite against eager PyTorch on the same LibTorch, measured in
// the same run. Prints images/s (steps/s for the MLP), the ratios and the RSS drift of
// 5,000 tiny steps, and writes bench/results/<host>-<date>.json.
//   node bench/run.mjs            (after npm run build:native && npm run build:ts)
import { execFileSync } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { availableParallelism, cpus, hostname, tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

import torchlite from '../lib/index.js';

const { loadPretrained, loss, optim, randn, tensor, getNumThreads, torchVersion } = torchlite;
const here = dirname(fileURLToPath(import.meta.url));
const python = process.env.TORCHLITE_PYTHON ?? '/usr/bin/python3';
const threads = getNumThreads();
const dir = mkdtempSync(join(tmpdir(), 'torchlite-bench-'));

console.log(`torchlite bench: LibTorch ${torchVersion}, ${threads} threads, ${cpus()[0]?.model ?? 'cpu'} x${availableParallelism()}`);
const py = JSON.parse(execFileSync(python, [join(here, 'train_step.py'), dir, String(threads)], { encoding: 'utf8' }).trim().split('\n').pop());

async function timeSteps(model, x, y, opt, steps, warmup) {
  const ce = loss.crossEntropy();
  let start = 0;
  for (let i = 0; i < warmup + steps; i++) {
    if (i === warmup) start = performance.now();
    await model.trainStep(x, y, { loss: ce, optimizer: opt });
  }
  return (performance.now() - start) / 1000 / steps;
}

const ours = {};
const resnet = await loadPretrained(join(dir, 'resnet18.pt'));
resnet.train();
for (const [size, steps] of [[64, 10], [224, 3]]) {
  const opt = optim.sgd(resnet, { lr: 0.01, momentum: 0.9 });
  const x = randn([16, 3, size, size]);
  const y = tensor(BigInt64Array.from({ length: 16 }, (_, i) => BigInt(i % 10)));
  ours[`resnet18_${size}`] = 16 / (await timeSteps(resnet, x, y, opt, steps, 2));
}
resnet.dispose();

const mlp = await loadPretrained(join(dir, 'mlp.pt'));
mlp.train();
const mlpOpt = optim.sgd(mlp, { lr: 0.01 });
const mx = randn([8, 12]);
const my = tensor(BigInt64Array.from({ length: 8 }, (_, i) => BigInt(i % 4)));
ours.mlp = 1 / (await timeSteps(mlp, mx, my, mlpOpt, 2000, 200));
// The same steps, 16 per native job (model.trainSteps): one thread hand-off per 16 steps.
{
  const batches = Array.from({ length: 16 }, () => ({ input: mx, target: my }));
  const ce = loss.crossEntropy();
  for (let i = 0; i < 20; i++) await mlp.trainSteps(batches, { loss: ce, optimizer: mlpOpt });
  const start = performance.now();
  for (let i = 0; i < 125; i++) await mlp.trainSteps(batches, { loss: ce, optimizer: mlpOpt });
  ours.mlp16 = 2000 / ((performance.now() - start) / 1000);
}

// Memory: RSS after warm-up against RSS after 5,000 more tiny steps.
for (let i = 0; i < 500; i++) await mlp.trainStep(mx, my, { loss: loss.crossEntropy(), optimizer: mlpOpt });
globalThis.gc?.();
const rssBefore = process.memoryUsage().rss;
const ce = loss.crossEntropy();
for (let i = 0; i < 5000; i++) await mlp.trainStep(mx, my, { loss: ce, optimizer: mlpOpt });
globalThis.gc?.();
const rssGrowth = process.memoryUsage().rss / rssBefore - 1;

const rows = [
  ['resnet18 64² bs16 (img/s)', 'resnet18_64', 1.05],
  ['resnet18 224² bs16 (img/s)', 'resnet18_224', 1.05],
  ['tiny MLP bs8 (steps/s)', 'mlp', 1.5],
  ['tiny MLP, 16 steps per call', 'mlp16', 1.5, 'mlp'],
];
console.log(`\n${'bench'.padEnd(28)}${'torchlite'.padStart(11)}${'python'.padStart(11)}${'ratio'.padStart(8)}  target`);
for (const [label, key, target, pyKey = key] of rows) {
  const ratio = ours[key] / py[pyKey];
  console.log(`${label.padEnd(28)}${ours[key].toFixed(1).padStart(11)}${py[pyKey].toFixed(1).padStart(11)}${ratio.toFixed(2).padStart(8)}  ≥ ${target} ${ratio >= target ? 'met' : 'NOT met'}`);
}
console.log(`RSS growth over 5,000 tiny steps: ${(rssGrowth * 100).toFixed(2)}% (target < 5%: ${rssGrowth < 0.05 ? 'met' : 'NOT met'})`);
// Stamped to the minute: one host may run it several times a day, on other hardware each time.
const file = join(here, 'results', `${hostname()}-${new Date().toISOString().slice(0, 16).replace(/:/g, '')}.json`);
writeFileSync(file, `${JSON.stringify({ torchVersion, threads, cpu: cpus()[0]?.model, torchlite: ours, python: py, rssGrowth }, null, 2)}\n`);
console.log(`wrote ${file}`);
