// The event loop while fit trains: ResNet-18 (torchvision's architecture, random weights) at
// 96 px on in-memory data, batch 512, with a timer asking for the loop every millisecond.
// Prints the loop's delay (perf_hooks.monitorEventLoopDelay: p50, p99, max) during fit, and
// the step time. Target (issue 35): p99 under 10 ms. Not a test: a figure to record.
//   node bench/event-loop.mjs [steps]      (after npm run build:native && npm run build:ts)
import { monitorEventLoopDelay } from 'node:perf_hooks';
import { cpus } from 'node:os';

import torchlite from '../lib/index.js';

const { data, fit, getNumThreads, loadPretrained, loss, manualSeed, optim, randn, tensor, torchVersion } = torchlite;
const STEPS = Number(process.argv[2] ?? 3);
const BATCH = 512;
const SIZE = 96;

manualSeed(0);
const model = await loadPretrained('torchvision:resnet18', { weights: 'none' });
model.resetClassifier(10);
const n = BATCH * STEPS;
const inputs = randn([n, 3, SIZE, SIZE]);
const targets = tensor(BigInt64Array.from({ length: n }, (_, i) => BigInt(i % 10)));
const train = data.loader(data.tensorDataset(inputs, targets), { batchSize: BATCH, shuffle: true, seed: 0 });

const delay = monitorEventLoopDelay({ resolution: 1 });
const ticker = setInterval(() => undefined, 1); // a server's work: the loop must answer it
const steps = [];
let last = performance.now();
delay.enable();
await fit(model, {
  train,
  epochs: 1,
  loss: loss.crossEntropy(),
  optimizer: optim.sgd(model, { lr: 0.01, momentum: 0.9 }),
  callbacks: [
    {
      onBatchEnd() {
        const now = performance.now();
        steps.push(now - last);
        last = now;
      },
    },
  ],
});
delay.disable();
clearInterval(ticker);
const ms = (ns) => (ns / 1e6).toFixed(1);
console.log(`torchlite ${torchVersion}, ${cpus().length} CPUs (${cpus()[0]?.model}), ${getNumThreads()} threads`);
console.log(`fit: ResNet-18, ${SIZE} px, batch ${BATCH}, ${steps.length} steps, ${(steps.reduce((a, b) => a + b, 0) / steps.length / 1000).toFixed(1)} s per step`);
console.log(`event-loop delay during fit: p50 ${ms(delay.percentile(50))} ms, p99 ${ms(delay.percentile(99))} ms, max ${ms(delay.max)} ms (target: p99 < 10 ms)`);
model.dispose();
