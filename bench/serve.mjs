// Serving while training, in one process: model A answers predict (batch 1, 64 px) at a
// steady 20 requests/s, or back to back, while model B (torchvision's mobilenet_v3_small,
// random weights) trains at batch 16 on 64 px and 224 px inputs. Prints predict p50/p99
// idle and during training, and B's step rate alone and while serving; compares CPU
// inference on its own lane (the default) with inference on the training lane.
// Writes bench/results/serve-<host>-<date>.json.
//   node bench/serve.mjs            (after npm run build:native && npm run build:ts)
import { execFileSync } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { availableParallelism, cpus, hostname, tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

import torchlite from '../lib/index.js';

const { loadPretrained, loss, optim, randn, runtime, tensor, getNumThreads, torchVersion } = torchlite;
const here = dirname(fileURLToPath(import.meta.url));
const python = process.env.TORCHLITE_PYTHON ?? '/usr/bin/python3';
const dir = mkdtempSync(join(tmpdir(), 'torchlite-serve-'));
execFileSync(python, [join(here, '..', 'scripts', 'fixtures', 'export_torchvision.py'), dir, 'mobilenet_v3_small'], { stdio: 'ignore' });
const file = join(dir, 'mobilenet_v3_small.scripted.pt');

const RATE = 20; // requests per second
const REQUESTS = 100;
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const percentile = (sorted, p) => sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))];
const stats = (latencies) => {
  const sorted = [...latencies].sort((a, b) => a - b);
  return { p50: percentile(sorted, 50), p99: percentile(sorted, 99) };
};

const server = await loadPretrained(file);
server.eval();
const request = randn([1, 3, 64, 64]);

/** Open loop: request i is due at start + i/RATE; latency counts from when it was due. */
async function paced(n = REQUESTS) {
  const latencies = [];
  const start = performance.now();
  const inflight = [];
  for (let i = 0; i < n; i++) {
    const due = start + (i * 1000) / RATE;
    const wait = due - performance.now();
    if (wait > 0) await sleep(wait);
    inflight.push(server.predict(request).then((p) => {
      latencies.push(performance.now() - due);
      p.probabilities.dispose();
      p.argmax.dispose();
    }));
  }
  await Promise.all(inflight);
  return stats(latencies);
}

/** Closed loop: the next request goes out when the last one answered. */
async function backToBack(seconds) {
  const latencies = [];
  const until = performance.now() + seconds * 1000;
  while (performance.now() < until) {
    const sent = performance.now();
    const p = await server.predict(request);
    latencies.push(performance.now() - sent);
    p.probabilities.dispose();
    p.argmax.dispose();
  }
  return { ...stats(latencies), requests: latencies.length };
}

/** Trains B until `stop()` resolves; returns steps/s over that window. */
async function trainWhile(trainer, size, stop) {
  const x = randn([16, 3, size, size]);
  const y = tensor(BigInt64Array.from({ length: 16 }, (_, i) => BigInt(i % 10)));
  const opt = optim.sgd(trainer, { lr: 0.01, momentum: 0.9 });
  const ce = loss.crossEntropy();
  for (let i = 0; i < 2; i++) await trainer.trainStep(x, y, { loss: ce, optimizer: opt }); // warm-up
  let done = false;
  let steps = 0;
  const start = performance.now();
  const loop = (async () => {
    while (!done) {
      await trainer.trainStep(x, y, { loss: ce, optimizer: opt });
      steps += 1;
    }
  })();
  const result = await stop();
  done = true;
  await loop;
  const rate = steps / ((performance.now() - start) / 1000);
  x.dispose();
  y.dispose();
  opt.dispose();
  return { rate, result };
}

const rows = [];
for (let i = 0; i < 20; i++) await server.predict(request); // warm-up
const idle = await paced();
const idleBackToBack = await backToBack(3);
for (const inferenceThreads of [1, 0]) {
  runtime.setInferenceThreads(inferenceThreads);
  for (const size of [64, 224]) {
    const trainer = await loadPretrained(file);
    trainer.train();
    // The rate alone is measured before and after the serving windows and averaged: on a
    // shared VM it drifts by ~10% between windows of a few seconds.
    const window = size === 64 ? 4 : 8;
    const before = await trainWhile(trainer, size, () => sleep(window * 1000));
    const serving = await trainWhile(trainer, size, () => paced());
    const contended = await trainWhile(trainer, size, () => backToBack(window));
    const after = await trainWhile(trainer, size, () => sleep(window * 1000));
    trainer.dispose();
    rows.push({
      lane: inferenceThreads === 0 ? 'shared' : `own (${inferenceThreads} thread)`,
      size,
      paced: serving.result,
      backToBack: contended.result,
      trainAlone: (before.rate + after.rate) / 2,
      trainAloneRange: [before.rate, after.rate],
      trainServing: serving.rate,
      trainBackToBack: contended.rate,
    });
  }
}

const ms = (v) => v.toFixed(1).padStart(7);
console.log(`serve bench: LibTorch ${torchVersion}, ${getNumThreads()} threads, ${cpus()[0]?.model ?? 'cpu'} x${availableParallelism()}`);
console.log(`predict mobilenet_v3_small 64 px batch 1, idle: ${RATE} req/s p50 ${idle.p50.toFixed(1)} ms, p99 ${idle.p99.toFixed(1)} ms; back to back p50 ${idleBackToBack.p50.toFixed(1)} ms, p99 ${idleBackToBack.p99.toFixed(1)} ms`);
console.log(`\n${'inference lane'.padEnd(16)}${'train'.padStart(6)}${'p50'.padStart(8)}${'p99'.padStart(8)}${'p99/idle'.padStart(9)}${'train kept'.padStart(11)}   back to back: ${'p50'.padStart(7)}${'p99'.padStart(8)}${'train kept'.padStart(11)}`);
for (const r of rows) {
  const ratio = r.paced.p99 / idle.p99;
  const kept = r.trainServing / r.trainAlone;
  console.log(
    `${r.lane.padEnd(16)}${`${r.size}px`.padStart(6)}${ms(r.paced.p50)} ${ms(r.paced.p99)}${ratio.toFixed(2).padStart(9)}${`${(kept * 100).toFixed(0)}%`.padStart(11)}   ${' '.repeat(14)}${ms(r.backToBack.p50)} ${ms(r.backToBack.p99)}${`${((r.trainBackToBack / r.trainAlone) * 100).toFixed(0)}%`.padStart(11)}` +
      `   (${r.trainAlone.toFixed(2)} steps/s alone; targets p99 ≤ 3× idle: ${ratio <= 3 ? 'met' : 'NOT met'}, train ≥ 85%: ${kept >= 0.85 ? 'met' : 'NOT met'})`,
  );
}
const out = join(here, 'results', `serve-${hostname()}-${new Date().toISOString().slice(0, 16).replace(/:/g, '')}.json`);
writeFileSync(out, `${JSON.stringify({ torchVersion, threads: getNumThreads(), cpu: cpus()[0]?.model, rate: RATE, idle, idleBackToBack, rows }, null, 2)}\n`);
console.log(`wrote ${out}`);
server.dispose();
