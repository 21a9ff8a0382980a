// Cached backbone features: fineTune's head-only stage (3 epochs, a new 10-class head on a
// frozen ResNet-18, AdamW lr 0.01, batch 32) on Fashion-MNIST images upscaled to 3x64x64,
// with the cache and without, against the same head-only training in eager PyTorch in the
// same run. Prints wall time and validation accuracy.
//   node bench/features.mjs [train images] [val images]     (defaults 3000, 1000)
import { execFileSync } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { availableParallelism, cpus, tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

import torchlite from '../lib/index.js';

const { data, fineTune, getNumThreads, loadPretrained, manualSeed } = torchlite;
const here = dirname(fileURLToPath(import.meta.url));
const python = process.env.TORCHLITE_PYTHON ?? '/usr/bin/python3';
const [nTrain, nVal] = [Number(process.argv[2] ?? 3000), Number(process.argv[3] ?? 1000)];
const dir = mkdtempSync(join(tmpdir(), 'torchlite-features-bench-'));
const IDX = '/usr/share/datasets/fashion-mnist';

console.log(`torchlite feature-cache bench: LibTorch ${torchlite.torchVersion}, ${getNumThreads()} threads, ${cpus()[0]?.model ?? 'cpu'} x${availableParallelism()}, ${nTrain} + ${nVal} images`);
const py = JSON.parse(execFileSync(python, [join(here, 'features_ref.py'), dir, String(getNumThreads()), String(nTrain), String(nVal)], { encoding: 'utf8' }).trim().split('\n').pop());

/** Fashion-MNIST images as 3x64x64 (nearest upscaling, normalised), as the Python half makes them. */
async function images(prefix, count) {
  const pixels = await data.readIdx(join(IDX, `${prefix}-images-idx3-ubyte.gz`));
  const labels = await data.readIdx(join(IDX, `${prefix}-labels-idx1-ubyte.gz`));
  const x = new Float32Array(count * 3 * 64 * 64);
  for (let n = 0; n < count; n++)
    for (let c = 0; c < 3; c++)
      for (let i = 0; i < 64; i++)
        for (let j = 0; j < 64; j++) {
          const v = pixels.data[n * 784 + Math.floor((i * 28) / 64) * 28 + Math.floor((j * 28) / 64)] / 255;
          x[((n * 3 + c) * 64 + i) * 64 + j] = (v - 0.286) / 0.353;
        }
  return data.tensorDataset(x, Int32Array.from(labels.data.subarray(0, count)), { inputShape: [3, 64, 64] });
}

const train = await images('train', nTrain);
const val = await images('t10k', nVal);
const ours = {};
for (const cacheFeatures of [false, 'auto']) {
  manualSeed(0);
  const model = await loadPretrained(join(dir, 'resnet18.pt'));
  const start = performance.now();
  const history = await fineTune(model, { train: data.loader(train, { batchSize: 32, shuffle: true }), val: data.loader(val, { batchSize: 256 }), numClasses: 10, freezeEpochs: 3, epochs: 0, lr: 0.01, cacheFeatures });
  ours[cacheFeatures ? 'cached' : 'whole model'] = { seconds: (performance.now() - start) / 1000, accuracy: history.at(-1).val.accuracy, featureCache: history.featureCache };
  model.dispose();
}
const rows = [
  { run: 'torchlite, whole model', seconds: ours['whole model'].seconds.toFixed(1), 'val accuracy': ours['whole model'].accuracy.toFixed(4) },
  { run: 'torchlite, cached features', seconds: ours.cached.seconds.toFixed(1), 'val accuracy': ours.cached.accuracy.toFixed(4) },
  { run: 'PyTorch eager, whole model', seconds: py.seconds.toFixed(1), 'val accuracy': py.accuracy.toFixed(4) },
];
console.table(rows);
console.log(`cached vs whole model: ${(ours['whole model'].seconds / ours.cached.seconds).toFixed(2)}x less wall time; vs PyTorch: ${(py.seconds / ours.cached.seconds).toFixed(2)}x`);
const file = join(here, 'results', `features-${new Date().toISOString().slice(0, 16).replace(':', '')}.json`);
writeFileSync(file, `${JSON.stringify({ machine: `${cpus()[0]?.model} x${availableParallelism()}`, threads: getNumThreads(), torch: torchlite.torchVersion, nTrain, nVal, ours, python: py, rows }, null, 2)}\n`);
console.log(`wrote ${file}`);
