// Serving under load: a model answers predict (batch 1) at a steady rate, open loop, with a
// deadline per request, while a second model fine-tunes in the same process; with and
// without an outside CPU hog (a separate process spinning on every core). Prints p50/p99/max
// latency, requests refused (deadline, cap), the training rate kept and the event loop's p99,
// for each thread policy. Then dynamic batching at 200 req/s. Not a test: figures to record.
//   node bench/serve-load.mjs            (after npm run build:native && npm run build:ts)
// Each measurement runs in a child process, so that OpenMP's wait policy (read once, when
// LibTorch loads) can differ between them.
import { execFileSync, spawn } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { availableParallelism, cpus, hostname } from 'node:os';
import { dirname, join } from 'node:path';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const percentile = (sorted, p) => sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))] ?? NaN;

async function measure({ served, rate, clients, seconds, train, deadlineMs, batching }) {
  const { default: torchlite } = await import('../lib/index.js');
  const { loadPretrained, loss, optim, randn, runtime, tensor } = torchlite;
  const server = await loadPretrained(`torchvision:${served}`, { weights: 'none' });
  server.eval();
  if (batching) server.batching(batching);
  const request = randn([1, 3, 64, 64]);
  for (let i = 0; i < 10; i++) await server.predict(request);

  let steps = 0;
  let training = train;
  const trainer = train ? await loadPretrained('torchvision:mobilenet_v3_small', { weights: 'none' }) : null;
  const trainLoop = (async () => {
    if (!trainer) return;
    trainer.train();
    const x = randn([16, 3, 64, 64]);
    const y = tensor(BigInt64Array.from({ length: 16 }, (_, i) => BigInt(i % 10)));
    const opt = optim.sgd(trainer, { lr: 0.01, momentum: 0.9 });
    const ce = loss.crossEntropy();
    await trainer.trainStep(x, y, { loss: ce, optimizer: opt });
    while (training) {
      await trainer.trainStep(x, y, { loss: ce, optimizer: opt });
      steps += 1;
    }
  })();
  await sleep(500);
  const loop = monitorEventLoopDelay({ resolution: 1 });
  loop.enable();
  const latencies = [];
  const refused = { timeout: 0, overloaded: 0, other: 0 };
  const start = performance.now();
  const inflight = [];
  const send = (due) =>
    server.predict(request, deadlineMs ? { timeoutMs: deadlineMs } : undefined).then(
      (p) => {
        latencies.push(performance.now() - due);
        p.probabilities.dispose();
        p.argmax.dispose();
      },
      (e) => {
        if (e.code === 'TORCHLITE_TIMEOUT') refused.timeout += 1;
        else if (e.code === 'TORCHLITE_OVERLOADED') refused.overloaded += 1;
        else refused.other += 1;
      },
    );
  if (clients) {
    // Closed loop: each client sends its next request when its last one answered.
    const until = start + seconds * 1000;
    const client = async () => {
      while (performance.now() < until) await send(performance.now());
    };
    await Promise.all(Array.from({ length: clients }, client));
  } else {
    const n = Math.round(rate * seconds);
    for (let i = 0; i < n; i++) {
      const due = start + (i * 1000) / rate;
      const wait = due - performance.now();
      if (wait > 0) await sleep(wait);
      inflight.push(send(due));
    }
  }
  await Promise.all(inflight);
  const elapsed = (performance.now() - start) / 1000;
  loop.disable();
  training = false;
  await trainLoop;
  const sorted = latencies.sort((a, b) => a - b);
  const lanes = runtime.queue();
  return {
    served,
    rate,
    answered: latencies.length,
    refused,
    p50: percentile(sorted, 50),
    p99: percentile(sorted, 99),
    max: sorted.at(-1) ?? NaN,
    throughput: latencies.length / elapsed,
    trainRate: steps / elapsed,
    loopP99: loop.percentile(99) / 1e6,
    batching: server.batchingStats,
    laneWaitP99: Math.max(...lanes.map((l) => l.waitP99Ms)),
  };
}

/** One measurement in a child process with `env` (thread policy) added. */
function child(config, env) {
  return new Promise((resolve, reject) => {
    const proc = spawn(process.execPath, [fileURLToPath(import.meta.url), '--measure', JSON.stringify(config)], { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'inherit'] });
    let out = '';
    proc.stdout.on('data', (chunk) => (out += chunk));
    proc.on('exit', (code) => (code === 0 ? resolve(JSON.parse(out.trim().split('\n').pop())) : reject(new Error(`child exited ${code}`))));
  });
}

/** A process spinning on every core until stopped, as other tenants of a shared server do. */
function hog() {
  const procs = Array.from({ length: availableParallelism() }, () => spawn(process.execPath, ['-e', 'for (;;) {}'], { stdio: 'ignore' }));
  return () => procs.forEach((p) => p.kill());
}

if (process.argv[2] === '--measure') {
  console.log(JSON.stringify(await measure(JSON.parse(process.argv[3]))));
  process.exit(0);
}

const SECONDS = Number(process.env.SERVE_SECONDS ?? 8);
const BATCHING = { maxBatch: 16 };
// 'full team': training keeps every thread while serving (the behaviour before the 'auto'
// default); 'omp passive' was also measured and gained nothing (see the README).
const POLICIES = {
  'full team': { env: { TORCHLITE_TRAINING_THREADS_WHILE_SERVING: '0' } },
  default: { env: {} },
  batching: { env: {}, batching: BATCHING },
};
const selected = (process.env.SERVE_POLICIES ?? Object.keys(POLICIES).join(',')).split(',');
const rows = [];
const fmt = (v) => (Number.isFinite(v) ? v.toFixed(1) : '-').padStart(8);
console.log(`serve-load bench: ${cpus()[0]?.model ?? 'cpu'} x${availableParallelism()}, ${SECONDS} s per window, deadline 1000 ms`);
console.log(`${'model'.padEnd(20)}${'req/s'.padStart(6)}${'hog'.padStart(5)}  ${'policy'.padEnd(24)}${'p50'.padStart(8)}${'p99'.padStart(8)}${'max'.padStart(8)}${'p99/idle'.padStart(9)}${'refused'.padStart(8)}${'train kept'.padStart(11)}${'loop p99'.padStart(9)}`);
for (const served of ['resnet18', 'mobilenet_v3_small']) {
  const idle = await child({ served, rate: 20, seconds: SECONDS, train: false, deadlineMs: 1000 }, {});
  const idleBatched = await child({ served, rate: 20, seconds: SECONDS, train: false, deadlineMs: 1000, batching: BATCHING }, {});
  const alone = await child({ served, rate: 0.5, seconds: 4, train: true, deadlineMs: 1000 }, {});
  for (const rate of [20, 50]) {
    for (const withHog of [false, true]) {
      for (const policy of selected) {
        const stop = withHog ? hog() : () => undefined;
        const r = await child({ served, rate, seconds: SECONDS, train: true, deadlineMs: 1000, batching: POLICIES[policy].batching }, POLICIES[policy].env);
        stop();
        const kept = r.trainRate / alone.trainRate;
        const idleP99 = POLICIES[policy].batching ? idleBatched.p99 : idle.p99;
        rows.push({ ...r, hog: withHog, policy, idleP99, trainAlone: alone.trainRate, kept });
        const refused = r.refused.timeout + r.refused.overloaded + r.refused.other;
        console.log(`${served.padEnd(20)}${String(rate).padStart(6)}${(withHog ? 'yes' : 'no').padStart(5)}  ${policy.padEnd(24)}${fmt(r.p50)}${fmt(r.p99)}${fmt(r.max)}${(r.p99 / idleP99).toFixed(2).padStart(9)}${String(refused).padStart(8)}${`${(kept * 100).toFixed(0)}%`.padStart(11)}${fmt(r.loopP99)}`);
      }
    }
  }
}
if (process.env.SERVE_BATCHING !== '0') {
  console.log('\ndynamic batching, mobilenet_v3_small, no training: open loop at 200 req/s, then 32 clients back to back');
  for (const load of [{ rate: 200 }, { clients: 32 }]) {
    for (const batching of [undefined, BATCHING]) {
      const r = await child({ served: 'mobilenet_v3_small', ...load, seconds: SECONDS, train: false, deadlineMs: 1000, batching }, {});
      rows.push({ ...r, ...load, policy: batching ? 'batching' : 'unbatched' });
      console.log(`  ${(load.rate ? '200 req/s' : '32 clients').padEnd(12)}${(batching ? `batching ${JSON.stringify(batching)}` : 'unbatched').padEnd(30)} answered ${r.throughput.toFixed(0)}/s, p50 ${r.p50.toFixed(1)} ms, p99 ${r.p99.toFixed(1)} ms, refused ${r.refused.timeout + r.refused.overloaded}${r.batching ? `, mean batch ${r.batching.meanBatch.toFixed(1)}` : ''}`);
    }
  }
}
const out = join(here, 'results', `serve-load-${hostname()}-${new Date().toISOString().slice(0, 16).replace(/:/g, '')}.json`);
writeFileSync(out, `${JSON.stringify({ cpu: cpus()[0]?.model, cores: availableParallelism(), seconds: SECONDS, rows }, null, 2)}\n`);
console.log(`wrote ${out}`);
