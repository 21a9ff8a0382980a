// Pure logic with fakes, no model: metrics, lr schedules, and a distributed loader's shards.
import { describe, expect, it } from 'vitest';

import { data, type Optimizer, sched } from '../src';
import { MetricAccumulator } from '../src/metrics';

describe('metrics', () => {
  it('accuracy, top-k, confusion and macro F1 as torch and scikit-learn count them', () => {
    const m = new MetricAccumulator(['accuracy', { topK: 2 }, 'confusionMatrix', 'f1']);
    // 3 classes; rows are scores. Row 3 ties classes 1 and 2 (argmax takes the lower); row 4 is NaN (class 0); row 5's target is ignored (-100).
    const scores = Float32Array.from([0.9, 0.05, 0.05, 0.1, 0.2, 0.7, 0.3, 0.6, 0.1, 0.1, 0.45, 0.45, Number.NaN, 0, 0, 0.2, 0.3, 0.5]);
    m.add(scores, [0, 2, 0, 2, 1, -100], 3);
    const r = m.result();
    expect(r.accuracy).toBeCloseTo(2 / 5, 12); // rows 0 and 1
    // Top-2: every row. Row 2's truth is second; row 3's ties the best and ranks after the lower
    // index, second; row 4's NaN ranks first and its truth (class 1) beats the tied class 2.
    expect(r.top2).toBe(1);
    expect(r.confusionMatrix).toEqual([
      [1, 1, 0],
      [1, 0, 0],
      [0, 1, 1],
    ]);
    // Per class F1: 2·1/(2+2) = 0.5, 0, 2·1/(2+1) = 0.667 → mean 0.3889.
    expect(r.f1).toBeCloseTo((0.5 + 0 + 2 / 3) / 3, 12);
  });

  it('mean absolute and squared errors for regression, and sums that add up over ranks', () => {
    const a = new MetricAccumulator(['mae', 'mse']);
    a.add(Float32Array.from([1, 2, 3]), [1.5, 2, 1], 1);
    const b = new MetricAccumulator(['mae', 'mse']);
    b.add(Float32Array.from([0]), [2], 1);
    const both = new MetricAccumulator(['mae', 'mse']);
    both.setSums(a.sums(1).map((v, i) => v + b.sums(1)[i]), 1);
    expect(both.result()).toEqual({ mae: (0.5 + 0 + 2 + 2) / 4, mse: (0.25 + 0 + 4 + 4) / 4 });
  });
});

/** An optimizer as a scheduler sees one: param groups and a kind. */
const fakeOptimizer = (lrs: number[]) => ({ kind: 'sgd', paramGroups: lrs.map((lr) => ({ lr, momentum: 0.9, betas: [0.9, 0.999] })) }) as unknown as Optimizer;

describe('schedules', () => {
  it("one-cycle rises over pctStart of the steps, then anneals to max / (div × finalDiv); its warm-up is what early stopping waits out", () => {
    const opt = fakeOptimizer([0]);
    const s = sched.oneCycle(opt, { maxLr: 1, totalSteps: 10, pctStart: 0.3 });
    expect(s.warmupSteps).toBe(3);
    const lrs = [opt.paramGroups[0].lr];
    for (let i = 0; i < 9; i++) {
      s.step();
      lrs.push(opt.paramGroups[0].lr);
    }
    expect(lrs[0]).toBeCloseTo(1 / 25, 12);
    expect(Math.max(...lrs)).toBeCloseTo(1, 12);
    expect(lrs.indexOf(Math.max(...lrs))).toBe(2); // the peak at pct × total - 1, as OneCycleLR
    expect(lrs[9]).toBeCloseTo(1 / 25 / 1e4, 12);
    expect(opt.paramGroups[0].momentum).toBeCloseTo(0.95, 12); // momentum cycles inversely
  });

  it('linear warm-up and cosine report their warm-up; step and exponential have none', () => {
    expect(sched.linearWarmup(fakeOptimizer([1]), { warmupSteps: 4 }).warmupSteps).toBe(4);
    expect(sched.cosine(fakeOptimizer([1]), { totalSteps: 10, warmupSteps: 2 }).warmupSteps).toBe(2);
    expect(sched.step(fakeOptimizer([1]), { stepSize: 2 }).warmupSteps).toBe(0);
    const opt = fakeOptimizer([1, 0.1]);
    const e = sched.exponential(opt, { gamma: 0.5 });
    e.step();
    e.step();
    expect(opt.paramGroups.map((g) => g.lr)).toEqual([0.25, 0.025]);
  });
});

describe('distributed loader shards', () => {
  const ds = data.tensorDataset(new Float32Array(10), Int32Array.from({ length: 10 }, (_, i) => i % 2), { inputShape: [1] });
  it('split an epoch among ranks as DistributedSampler does: padded to equal shards, every sample once', () => {
    const shards = [0, 1, 2].map((rank) => data.loader(ds, { batchSize: 2, shuffle: true, seed: 4, distributed: { rank, worldSize: 3 } }));
    const orders = shards.map((l) => l.order(1));
    expect(orders.map((o) => o.length)).toEqual([4, 4, 4]); // ⌈10 / 3⌉
    expect(new Set(orders.flat()).size).toBe(10);
    expect(orders.flat()).toHaveLength(12); // two samples repeat to even the shards out
    expect(shards[0].order(1)).toEqual(orders[0]); // an epoch's order depends on the seed and epoch alone
    expect(shards[0].order(2)).not.toEqual(orders[0]);
    const cut = [0, 1, 2].map((rank) => data.loader(ds, { batchSize: 1, dropLast: true, distributed: { rank, worldSize: 3 } }).order(0));
    expect(cut.map((o) => o.length)).toEqual([3, 3, 3]); // dropLast: the remainder is cut instead
    expect(new Set(cut.flat()).size).toBe(9);
  });
});
