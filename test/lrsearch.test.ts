// lrSearch's rules (src/lrsearch.ts), on trials made up by hand: no training.
import { describe, expect, it } from 'vitest';

import { type BatchNormPolicy, data, type LrTrial } from '../src';
import { beatsChance, bestTrial, LR_SEARCH, searchFolds, trialPlan } from '../src/lrsearch';

describe('lrSearch rules', () => {
  it('lets a trial count only where it beats always answering the commonest class beyond luck (binomial, p ≤ 0.05 over all trials)', () => {
    const at = (accuracy: number, loss = 1) => ({ loss, accuracy });
    // 50 held-out samples of five classes, five trials: p ≤ 0.05 / 5 = 0.01 each.
    expect(beatsChance(at(18 / 50), 50, 0.2, 5)).toBe(true); // P(X ≥ 18 | 50, 0.2) = 0.0063
    expect(beatsChance(at(17 / 50), 50, 0.2, 5)).toBe(false); // P(X ≥ 17) = 0.0144
    expect(beatsChance(at(17 / 50), 50, 0.2, 1)).toBe(true); // a single trial needs only 0.05
    // The commonest class sets the bar: 60% of 100 against a class holding 50% is p = 0.028.
    expect(beatsChance(at(0.6), 100, 0.5, 1)).toBe(true);
    expect(beatsChance(at(0.6), 100, 0.5, 2)).toBe(false); // 0.028 > 0.025
    expect(beatsChance(at(1, Number.NaN), 100, 0.2, 1)).toBe(false); // a diverged trial never does
    expect(beatsChance(at(0.3), 4000, 0.2, 1)).toBe(true); // no underflow on large hold-outs (0.8^4000 is 0 in doubles)
    expect(beatsChance(at(1), 10, 1, 1)).toBe(false); // one class held out: nothing to beat
  });

  it('ranks trials by held-out loss plus twice the error rate, or by loss without accuracy', () => {
    const at = (lr: number, loss: number, accuracy?: number): LrTrial => ({ lr, bnPolicy: 'frozen-eval', loss, ...(accuracy !== undefined && { accuracy }) });
    // Near chance, the lower lr's fewer confident mistakes win on loss (1.50 < 1.60), but the
    // higher one gets 20 points more right: 1.50 + 2 × 0.6 = 2.70 against 1.60 + 2 × 0.4 = 2.40.
    expect(bestTrial([at(1, 1.5, 0.4), at(2, 1.6, 0.6)])).toBe(1);
    // Where accuracy is close, loss decides: 0.30 + 2 × 0.10 = 0.50 against 0.45 + 2 × 0.05 = 0.55.
    expect(bestTrial([at(1, 0.3, 0.9), at(2, 0.45, 0.95)])).toBe(0);
    expect(bestTrial([at(1, 0.3), at(2, 0.2), at(4, 0.25)])).toBe(1); // regression: loss alone
    expect(bestTrial([at(1, Number.NaN, 1), at(2, 9, 0.2), at(4, Infinity, 1)])).toBe(1); // diverged trials lose
    expect(bestTrial([at(1, 0.5, 0.8), at(2, 0.5, 0.8)])).toBe(0); // a tie goes to the trial run first (the lower lr)
    // Two policies: the best trial, one of the second policy only where its trials also have the
    // lower mean loss at the lrs both ran; else the first policy's best.
    const under = (bnPolicy: 'eval', t: LrTrial): LrTrial => ({ ...t, bnPolicy });
    const frozen = [at(1, 0.6, 0.8), at(2, 0.5, 0.8), at(4, 0.9, 0.7)]; // scores 1.0, 0.9, 1.5; mean loss at lrs 1, 2: 0.55
    expect(bestTrial([...frozen, under('eval', at(1, 0.3, 0.9)), under('eval', at(2, 0.6, 0.6))])).toBe(3); // 'eval' best (0.5), mean 0.45
    expect(bestTrial([...frozen, under('eval', at(1, 0.3, 0.9)), under('eval', at(2, 1.2, 0.6))])).toBe(1); // best, but mean 0.75
    expect(bestTrial([...frozen, under('eval', at(1, 0.45, 0.7)), under('eval', at(2, 0.55, 0.7))])).toBe(1); // mean 0.5, not best (1.05)
    expect(bestTrial([...frozen, under('eval', at(1, 0.1, 0.9)), under('eval', at(2, Number.NaN, 0.2))])).toBe(1); // a diverged trial: mean infinite
    expect(bestTrial([at(1, Number.NaN), at(2, Infinity)])).toBe(-1); // all diverged: none to choose
  });

  it('chooses only among trials that beat chance, and none where no trial of the winning policy does', () => {
    const at = (lr: number, loss: number, accuracy: number, beatsChance = true, bnPolicy: BatchNormPolicy = 'frozen-eval'): LrTrial => ({ lr, bnPolicy, loss, accuracy, beatsChance });
    // A collapsed run: near-uniform outputs score about ln 5 (1.59 + 2 × 0.72 = 3.03), below a run that learned but is overconfident (2.2 + 2 × 0.6 = 3.4).
    const collapsed = at(2, 1.59, 0.28, false);
    expect(bestTrial([at(1, 2.2, 0.4), collapsed])).toBe(0);
    expect(bestTrial([collapsed, at(4, 1.7, 0.2, false)])).toBe(-1);
    // Two policies: 'eval' holds the best trial that counts and the lower mean paired loss (1.2 against 1.4, at chance or not).
    const frozen = [at(1, 1.5, 0.3, false), at(2, 1.3, 0.3, false), at(4, 1.6, 0.25, false)];
    const evals = [at(1, 1.0, 0.45, true, 'eval'), at(2, 1.4, 0.3, false, 'eval')];
    expect(bestTrial([...frozen, ...evals])).toBe(3);
    // 'eval' loses on mean loss (1.5 against 1.4) and no 'frozen-eval' trial counts: none to choose.
    expect(bestTrial([...frozen, evals[0], { ...evals[1], loss: 2.0 }])).toBe(-1);
    expect(bestTrial([...frozen.map((t) => ({ ...t, beatsChance: true })), evals[0], { ...evals[1], loss: 2.0 }])).toBe(1);
  });

  it('plans every factor under the model\'s policy, then the lowest three under the second', () => {
    expect(trialPlan(0.01, ['frozen-eval']).map((t) => [t.lr, t.bnPolicy])).toEqual(LR_SEARCH.factors.map((f) => [0.01 * f, 'frozen-eval']));
    const both = trialPlan(0.04, ['frozen-eval', 'eval']);
    expect(both.map((t) => t.bnPolicy)).toEqual([...Array(5).fill('frozen-eval'), ...Array(3).fill('eval')]);
    expect(both.slice(5).map((t) => t.lr)).toEqual([0.01, 0.02, 0.04]);
  });

  it('holds out one fifth of each class, on five folds where one fifth is under 100 samples', () => {
    const rows = (perClass: number) => data.tensorDataset(new Float32Array(5 * perClass), Int32Array.from({ length: 5 * perClass }, (_, i) => i % 5), { inputShape: [1] });
    expect(searchFolds(rows(100), undefined).map((p) => p.val.length)).toEqual([100]);
    expect(searchFolds(rows(40), undefined).map((p) => p.val.length)).toEqual([40, 40, 40, 40, 40]);
    expect(searchFolds(rows(3), undefined).map((p) => p.val.length)).toEqual([5, 5, 5]); // folds 3 and 4 of a class of 3 hold out nothing
    expect(() => searchFolds(rows(1), undefined)).toThrow(expect.objectContaining({ code: 'TORCHLITE_BAD_ARGUMENT', message: 'lrSearch: true cannot apply: 5 training samples leave none to hold out for the trials; pass lrSearch: false' }));
  });
});
