// One rank of the data-parallel tests (test/distributed.test.ts), started by `torchlite run`.
// `node worker.mjs <scenario> <out-dir> [args]` writes rank-<r>.json into out-dir.
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';

import torchlite from '../../lib/index.js';

const { data, distributed: dist, fit, checkpoint, loadPretrained, loss, manualSeed, optim, tensor } = torchlite;
const [scenario, out, ...rest] = process.argv.slice(2);
const MLP = new URL('../fixtures/mlp.scripted.pt', import.meta.url).pathname;
torchlite.setNumThreads(1);

const flat = async (model) => {
  const values = [];
  for (const [name, t] of Object.entries((await model.stateDict())).sort(([a], [b]) => a.localeCompare(b))) {
    values.push(...(await t.read()));
    t.dispose();
  }
  return values;
};

/** A fixed regression-free classification set: 2B samples of 12 features, 4 classes. */
function batch(from, count) {
  const x = Float32Array.from({ length: count * 12 }, (_, i) => Math.sin(0.37 * (from * 12 + i)) + 0.1 * ((from * 12 + i) % 7));
  const y = BigInt64Array.from({ length: count }, (_, i) => BigInt((from + i) % 4));
  return { x: tensor(x, [count, 12]), y: tensor(y) };
}

const optimizers = {
  sgd: (m) => optim.sgd(m, { lr: 0.1, momentum: 0.9 }),
  adamw: (m) => optim.adamw(m, { lr: 0.01, weightDecay: 0.01 }),
};

/** Five steps of 2 ranks × B against one process × 2B (rank 0 computes both). */
async function equivalence(group, kind, { freeze = false, accumulate = 1, overlap = false } = {}) {
  const B = 8;
  const model = await loadPretrained(MLP);
  if (group.rank === 1) await model.resetParameters(); // starts different: dataParallel broadcasts rank 0's
  // With overlap, buckets of ~100 bytes: every parameter its own, sent as backward finishes it.
  dist.dataParallel(model, { group, ...(overlap && { overlap, bucketCapMb: 1e-4 }) });
  await model.idle();
  const start = await flat(model);
  if (freeze) model.freeze('net.0');
  model.train();
  const opt = optimizers[kind](model);
  const lossFn = loss.crossEntropy();
  const losses = [];
  for (let step = 0; step < 5; step++) {
    const micro = B / accumulate;
    for (let k = 0; k < accumulate; k++) {
      const { x, y } = batch(step * 2 * B + group.rank * B + k * micro, micro);
      const r = await model.trainStep(x, y, { loss: lossFn, optimizer: opt, accumulate });
      losses.push(r.loss);
    }
  }
  const weights = await flat(model);
  const all = await group.allGather(tensor(Float64Array.from(losses)));
  const result = { start, weights, losses: all.map((t) => Array.from(t.toTypedArray())) };
  if (group.rank === 0) {
    const single = await loadPretrained(MLP);
    if (freeze) single.freeze('net.0');
    single.train();
    const sopt = optimizers[kind](single);
    const singleLosses = [];
    for (let step = 0; step < 5; step++) {
      // One process, the two ranks' micro-batches in one batch of 2B (accumulated as they were).
      for (let k = 0; k < accumulate; k++) {
        const micro = B / accumulate;
        const parts = [0, 1].map((r) => batch(step * 2 * B + r * B + k * micro, micro));
        const x = tensor(Float32Array.from([...parts[0].x.toTypedArray(), ...parts[1].x.toTypedArray()]), [2 * micro, 12]);
        const y = tensor(BigInt64Array.from([...parts[0].y.toTypedArray(), ...parts[1].y.toTypedArray()]));
        singleLosses.push((await single.trainStep(x, y, { loss: lossFn, optimizer: sopt, accumulate })).loss);
      }
    }
    result.single = { losses: singleLosses, weights: await flat(single) };
  }
  return result;
}

/** Three SGD steps; rank 1's second batch is NaN, so its loss is not finite: every rank must skip that update. */
async function skip(group, overlap) {
  const model = await loadPretrained(MLP);
  dist.dataParallel(model, { group, ...(overlap && { overlap, bucketCapMb: 1e-4 }) });
  await model.idle();
  model.train();
  const opt = optimizers.sgd(model);
  const lossFn = loss.crossEntropy();
  const skipped = [];
  const snapshots = [];
  for (let step = 0; step < 3; step++) {
    const { x, y } = batch(step * 16 + group.rank * 8, 8);
    const input = step === 1 && group.rank === 1 ? tensor(new Float32Array(96).fill(Number.NaN), [8, 12]) : x;
    snapshots.push(await flat(model));
    skipped.push((await model.trainStep(input, y, { loss: lossFn, optimizer: opt })).skipped);
  }
  return { skipped, beforeSkip: snapshots[1], afterSkip: snapshots[2], weights: await flat(model) };
}

async function collectives(group) {
  const x = tensor(Float32Array.of(group.rank + 1, 10 * (group.rank + 1)));
  await group.allReduce(x);
  const m = tensor(Float32Array.of(group.rank));
  const y = tensor(Float64Array.of(group.rank * 3 + 1, -group.rank));
  // Called together, resolved in call order on every rank.
  const [mx, avg, b] = await Promise.all([group.allReduce(m, 'max'), group.allReduce(tensor(Float32Array.of(group.rank * 4)), 'avg'), group.broadcast(y, 1)]);
  const parts = await group.allGather(tensor(Int32Array.of(group.rank * 7, 1)));
  await group.barrier();
  return { sum: Array.from(x.toTypedArray()), max: mx.toTypedArray()[0], avg: avg.toTypedArray()[0], broadcast: Array.from(b.toTypedArray()), gathered: parts.map((p) => Array.from(p.toTypedArray())) };
}

/** evaluate on a distributed loader over 5 samples (uneven: 3 + 2 real, 1 padding) against the whole set on one process. */
async function metrics(group) {
  const model = await loadPretrained(MLP);
  const { x, y } = batch(0, 5);
  const ds = data.tensorDataset(x.toTypedArray(), Int32Array.from(y.toTypedArray(), Number), { inputShape: [12] });
  const spec = { loss: loss.crossEntropy(), metrics: ['accuracy', 'confusionMatrix', 'f1'] };
  const sharded = await model.evaluate(data.loader(ds, { batchSize: 2, distributed: group }), spec);
  const whole = await model.evaluate(data.loader(ds, { batchSize: 5 }), spec);
  return { sharded, whole };
}

/** fit with a checkpoint per epoch; `rest[0]` epochs, resuming from `rest[1]` when given. */
async function training(group) {
  const [epochs, resume, dir] = [Number(rest[0]), rest[1] === '-' ? undefined : rest[1], rest[2]];
  manualSeed(7);
  const model = await loadPretrained(MLP);
  model.replace('net.1', torchlite.nn.sequential(torchlite.nn.relu(), torchlite.nn.dropout(0.3))); // a random stream per rank
  dist.dataParallel(model, { group });
  manualSeed(100 + group.rank);
  const { x, y } = batch(0, 40);
  const ds = data.tensorDataset(x.toTypedArray(), Int32Array.from(y.toTypedArray(), Number), { inputShape: [12] });
  const opt = optim.adamw(model, { lr: 0.01 });
  const history = await fit(model, {
    train: data.loader(ds, { batchSize: 4, shuffle: true, distributed: group }),
    val: data.loader(ds, { batchSize: 8, distributed: group }),
    epochs,
    optimizer: opt,
    callbacks: [checkpoint({ dir, saveBest: false, keepLast: 5 })],
    ...(resume && { resume }),
  });
  return { weights: await flat(model), history: history.map((r) => ({ trainLoss: r.trainLoss, val: r.val })) };
}

const group = await dist.init({ timeoutMs: 20000, initTimeoutMs: 20000 });
const scenarios = {
  collectives: () => collectives(group),
  equivalence: () => equivalence(group, rest[0], { freeze: rest.includes('freeze'), accumulate: rest.includes('accumulate') ? 2 : 1, overlap: rest.includes('overlap') }),
  metrics: () => metrics(group),
  skip: () => skip(group, rest.includes('overlap')),
  training: () => training(group),
  crash: async () => {
    if (group.rank === 1) process.exit(3);
    const started = Date.now();
    try {
      await group.allReduce(tensor(Float32Array.of(1)));
      await group.barrier();
      return { error: null };
    } catch (error) {
      return { error: error.code, seconds: (Date.now() - started) / 1000, message: error.message };
    }
  },
};
const result = await scenarios[scenario]();
writeFileSync(join(out, `rank-${group.rank}.json`), JSON.stringify(result));
await group.destroy();
