// Detection bench: images/s of fine-tuning torchvision's Faster R-CNN (mobilenet_v3 320 FPN,
// backbone frozen, SGD on the losses it computes) in torchlite against the same loop in
// Python on the same scripted model, images and targets, measured in the same run.
//   node bench/detect.mjs          (after npm run build; needs python3-torchvision)
import { execFileSync } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { availableParallelism, cpus, tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

import torchlite from '../lib/index.js';

const { getNumThreads, loadPretrained, loss, manualSeed, optim, tensor, tensorList } = torchlite;
const here = dirname(fileURLToPath(import.meta.url));
const python = process.env.TORCHLITE_PYTHON ?? '/usr/bin/python3';
const threads = getNumThreads();
const STEPS = Number(process.env.STEPS ?? 8);
const dir = mkdtempSync(join(tmpdir(), 'torchlite-detect-bench-'));
const MODEL = join(dir, 'frcnn.pt');
const ref = (...args) => execFileSync(python, [join(here, 'detect_ref.py'), MODEL, String(threads), String(STEPS), ...args], { encoding: 'utf8' });

console.log(`torchlite detection bench: LibTorch ${torchlite.torchVersion}, ${threads} threads, ${cpus()[0]?.model ?? 'cpu'} x${availableParallelism()}`);
ref('make');
const py = JSON.parse(ref('train').trim().split('\n').pop());

const model = await loadPretrained(MODEL, { channelsLast: false });
model.freeze('backbone');
model.train();
const image = (k) => tensor(Float32Array.from({ length: 3 * 240 * 320 }, (_, i) => ((i * k) % 97) / 97), [3, 240, 320]);
const images = tensorList(Array.from({ length: 4 }, (_, i) => image(7 + 2 * i)));
const targets = Array.from({ length: 4 }, (_, i) => ({ boxes: tensor([10 + 5 * i, 20, 120, 150, 60, 70, 200 + 5 * i, 220], [2, 4]), labels: tensor(BigInt64Array.of(1n, 2n)) }));
const optimizer = optim.sgd(model, { lr: 0.005, momentum: 0.9, weightDecay: 0.0005 });
const step = () => model.trainStep([images], targets, { loss: loss.fromModel(), optimizer });
manualSeed(1);
for (let i = 0; i < 2; i++) await step(); // warm-up, as in Python
const start = performance.now();
for (let i = 0; i < STEPS; i++) await step();
const ours = (STEPS * 4) / ((performance.now() - start) / 1000);

const table = [
  { case: 'fine-tune, images/s: torchlite trainStep', value: ours.toFixed(2) },
  { case: 'fine-tune, images/s: PyTorch loop', value: py.images_per_s.toFixed(2) },
  { case: 'ratio (torchlite / PyTorch)', value: (ours / py.images_per_s).toFixed(2) },
];
console.table(table);
const file = join(here, 'results', `detect-${new Date().toISOString().slice(0, 16).replace(':', '')}.json`);
writeFileSync(file, `${JSON.stringify({ machine: `${cpus()[0]?.model} x${availableParallelism()}`, threads, torch: torchlite.torchVersion, images: '4 of 240×320 a step', steps: STEPS, torchlite: ours, python: py.images_per_s, table }, null, 2)}\n`);
console.log(`wrote ${file}`);
