// Learning-rate schedules per param group, with PyTorch's formulas. A group added to
// the optimizer later joins the running schedule with its own base lr (PyTorch #79888).
import type { Optimizer } from './optim';
import { checkFiniteNumber, checkInteger, checkOneOf, checkOptions, checkPositiveInteger, rangeError, typeError } from './validate';

/** The lr of one group at step `t`, from its base lr; may also return a momentum/beta1. */
type Rule = (t: number, base: number, group: number) => { lr: number; momentum?: number };

/** What {@link Scheduler.stateDict} returns. */
export interface SchedulerStateDict {
  step: number;
  baseLrs: number[];
  extra?: unknown;
}

/** Sets each param group's lr (and, for oneCycle, momentum) as training advances. */
export class Scheduler {
  readonly #optimizer: Optimizer;
  readonly #rule: Rule;
  readonly #base: (current: number, group: number) => number;
  #step = 0;
  #baseLrs: number[] = [];
  /** Steps before the lr reaches its peak (linear warm-up, one-cycle's rise); 0 for a schedule without one. */
  readonly warmupSteps: number;

  /** @internal Use the functions of `sched`. */
  constructor(optimizer: Optimizer, rule: Rule, baseLr: (current: number, group: number) => number = (lr) => lr, warmupSteps = 0) {
    this.#optimizer = optimizer;
    this.#rule = rule;
    this.#base = baseLr;
    this.warmupSteps = warmupSteps;
    this.#apply();
  }

  /** Steps taken so far (PyTorch's `last_epoch`). */
  get stepCount(): number {
    return this.#step;
  }

  /** The lr of each group after the last step. */
  get lastLr(): number[] {
    return this.#optimizer.paramGroups.map((g) => g.lr);
  }

  /** Advances one step and sets the new lrs. */
  step(): void {
    this.#step += 1;
    this.#apply();
  }

  #apply(): void {
    const groups = this.#optimizer.paramGroups;
    groups.forEach((group, i) => {
      if (this.#baseLrs[i] === undefined) this.#baseLrs[i] = this.#base(group.lr, i);
      const { lr, momentum } = this.#rule(this.#step, this.#baseLrs[i], i);
      group.lr = lr;
      if (momentum !== undefined) {
        if (this.#optimizer.kind === 'sgd') group.momentum = momentum;
        else group.betas = [momentum, group.betas[1]];
      }
    });
  }

  stateDict(): SchedulerStateDict {
    return { step: this.#step, baseLrs: [...this.#baseLrs] };
  }

  loadStateDict(state: SchedulerStateDict): void {
    if (state === null || typeof state !== 'object' || !Array.isArray(state.baseLrs)) throw typeError('a scheduler state dict', 'state', state);
    this.#step = checkInteger(state.step, 'state.step', 0);
    this.#baseLrs = [...state.baseLrs];
    this.#apply();
  }
}

function options<T extends object>(value: unknown, known: string[]): Partial<T> {
  return checkOptions<T>(value, 'options', known);
}

function gammaOf(value: unknown): number {
  const gamma = checkFiniteNumber(value ?? 0.1, 'options.gamma');
  if (gamma <= 0) throw rangeError('a positive number', 'options.gamma', gamma);
  return gamma;
}

/** Multiplies the lr by `gamma` every `stepSize` steps, like `StepLR`. */
export function step(optimizer: Optimizer, opts: { stepSize: number; gamma?: number }): Scheduler {
  const o = options<typeof opts>(opts, ['stepSize', 'gamma']);
  const size = checkPositiveInteger(o.stepSize, 'options.stepSize');
  const gamma = gammaOf(o.gamma);
  return new Scheduler(optimizer, (t, base) => ({ lr: base * gamma ** Math.floor(t / size) }));
}

/** Multiplies the lr by `gamma` at each milestone step, like `MultiStepLR`. */
export function multiStep(optimizer: Optimizer, opts: { milestones: number[]; gamma?: number }): Scheduler {
  const o = options<typeof opts>(opts, ['milestones', 'gamma']);
  if (!Array.isArray(o.milestones)) throw typeError('an array of step numbers', 'options.milestones', o.milestones);
  const milestones = o.milestones.map((m, i) => checkInteger(m, `options.milestones[${i}]`, 0));
  const gamma = gammaOf(o.gamma);
  return new Scheduler(optimizer, (t, base) => ({ lr: base * gamma ** milestones.filter((m) => m <= t).length }));
}

/** Multiplies the lr by `gamma` every step, like `ExponentialLR`. */
export function exponential(optimizer: Optimizer, opts: { gamma: number }): Scheduler {
  const gamma = gammaOf(options<typeof opts>(opts, ['gamma']).gamma);
  return new Scheduler(optimizer, (t, base) => ({ lr: base * gamma ** t }));
}

function warmupFactor(t: number, steps: number, startFactor: number): number {
  return startFactor + ((1 - startFactor) * Math.min(t, steps)) / steps;
}

function checkStartFactor(value: unknown): number {
  const f = checkFiniteNumber(value ?? 1 / 3, 'options.startFactor');
  if (f <= 0 || f > 1) throw rangeError('a number in (0, 1]', 'options.startFactor', f);
  return f;
}

/** Ramps the lr linearly from `startFactor × lr` to `lr` over `warmupSteps`, like `LinearLR`. `startFactor` defaults to `1/3`. */
export function linearWarmup(optimizer: Optimizer, opts: { warmupSteps: number; startFactor?: number }): Scheduler {
  const o = options<typeof opts>(opts, ['warmupSteps', 'startFactor']);
  const steps = checkPositiveInteger(o.warmupSteps, 'options.warmupSteps');
  const start = checkStartFactor(o.startFactor);
  return new Scheduler(optimizer, (t, base) => ({ lr: base * warmupFactor(t, steps, start) }), undefined, steps);
}

export interface CosineOptions {
  /** Steps of the whole schedule, warmup included. */
  totalSteps: number;
  /** Linear warmup steps before the cosine. Defaults to `0`. */
  warmupSteps?: number;
  /** Where warmup starts, as a fraction of the lr. Defaults to `1/3`. */
  startFactor?: number;
  /** The lr the cosine ends at. Defaults to `0`. */
  minLr?: number;
}

/**
 * Cosine annealing from the lr to `minLr` over `totalSteps - warmupSteps`, after an
 * optional linear warmup: `CosineAnnealingLR`, behind `LinearLR` when warming up.
 */
export function cosine(optimizer: Optimizer, opts: CosineOptions): Scheduler {
  const o = options<CosineOptions>(opts, ['totalSteps', 'warmupSteps', 'startFactor', 'minLr']);
  const total = checkPositiveInteger(o.totalSteps, 'options.totalSteps');
  const warmup = o.warmupSteps === undefined ? 0 : checkInteger(o.warmupSteps, 'options.warmupSteps', 0, 'a non-negative integer');
  if (warmup >= total) throw rangeError(`fewer warmup steps than totalSteps (${total})`, 'options.warmupSteps', warmup);
  const start = checkStartFactor(o.startFactor);
  const minLr = o.minLr === undefined ? 0 : checkFiniteNumber(o.minLr, 'options.minLr');
  return new Scheduler(optimizer, (t, base) => {
    if (t < warmup) return { lr: base * warmupFactor(t, warmup, start) };
    const progress = Math.min(t - warmup, total - warmup) / (total - warmup);
    return { lr: minLr + ((base - minLr) * (1 + Math.cos(Math.PI * progress))) / 2 };
  }, undefined, warmup);
}

export interface OneCycleOptions {
  /** Peak lr, one number or one per param group (a group added later peaks at its own lr). */
  maxLr: number | number[];
  /** Steps of the whole cycle. */
  totalSteps: number;
  /** Fraction of the cycle spent rising. Defaults to `0.3`. */
  pctStart?: number;
  /** Starting lr is `maxLr / divFactor`. Defaults to `25`. */
  divFactor?: number;
  /** Final lr is the starting lr `/ finalDivFactor`. Defaults to `1e4`. */
  finalDivFactor?: number;
  /** Cycle momentum (SGD) or beta1 (Adam) inversely, between `baseMomentum` and `maxMomentum`. Defaults to `true`. */
  cycleMomentum?: boolean;
  /** Defaults to `0.85`. */
  baseMomentum?: number;
  /** Defaults to `0.95`. */
  maxMomentum?: number;
}

function cosAnneal(start: number, end: number, pct: number): number {
  return end + ((start - end) / 2) * (Math.cos(Math.PI * pct) + 1);
}

/** The 1cycle policy with cosine annealing, like `OneCycleLR` (two phases). */
export function oneCycle(optimizer: Optimizer, opts: OneCycleOptions): Scheduler {
  const o = options<OneCycleOptions>(opts, ['maxLr', 'totalSteps', 'pctStart', 'divFactor', 'finalDivFactor', 'cycleMomentum', 'baseMomentum', 'maxMomentum']);
  const maxLrs = Array.isArray(o.maxLr) ? o.maxLr.map((v, i) => checkFiniteNumber(v, `options.maxLr[${i}]`)) : [checkFiniteNumber(o.maxLr, 'options.maxLr')];
  const total = checkPositiveInteger(o.totalSteps, 'options.totalSteps');
  const pct = checkFiniteNumber(o.pctStart ?? 0.3, 'options.pctStart');
  if (pct <= 0 || pct >= 1) throw rangeError('a number in (0, 1)', 'options.pctStart', pct);
  const div = checkFiniteNumber(o.divFactor ?? 25, 'options.divFactor');
  const finalDiv = checkFiniteNumber(o.finalDivFactor ?? 1e4, 'options.finalDivFactor');
  const cycle = o.cycleMomentum ?? true;
  const baseM = checkFiniteNumber(o.baseMomentum ?? 0.85, 'options.baseMomentum');
  const maxM = checkFiniteNumber(o.maxMomentum ?? 0.95, 'options.maxMomentum');
  const phases = [
    { end: pct * total - 1, lr: [0, 1] as const, m: [maxM, baseM] },
    { end: total - 1, lr: [1, 2] as const, m: [baseM, maxM] },
  ];
  // Base lr here is the group's max lr; initial = max/div and min = initial/finalDiv, as OneCycleLR stores them.
  return new Scheduler(
    optimizer,
    (t, maxLr) => {
      if (t > total) throw new RangeError(`Expected at most ${total} oneCycle steps for \`totalSteps\` but received step ${t}`);
      const initial = maxLr / div;
      const points = [initial, maxLr, initial / finalDiv];
      let start = 0;
      for (const [i, phase] of phases.entries()) {
        if (t <= phase.end || i === phases.length - 1) {
          const p = (t - start) / (phase.end - start);
          return {
            lr: cosAnneal(points[phase.lr[0]], points[phase.lr[1]], p),
            ...(cycle && { momentum: cosAnneal(phase.m[0], phase.m[1], p) }),
          };
        }
        start = phase.end;
      }
      return { lr: initial };
    },
    (current, group) => maxLrs[group] ?? (maxLrs.length === 1 ? maxLrs[0] : current),
    Math.ceil(pct * total),
  );
}

export interface PlateauOptions {
  /** Whether the metric should go down (`'min'`, a loss) or up (`'max'`, an accuracy). Defaults to `'min'`. */
  mode?: 'min' | 'max';
  /** Multiplies the lr on a plateau. Defaults to `0.1`. */
  factor?: number;
  /** Steps without improvement before reducing. Defaults to `10`. */
  patience?: number;
  /** Relative improvement that counts. Defaults to `1e-4`. */
  threshold?: number;
  /** Steps to wait after a reduction. Defaults to `0`. */
  cooldown?: number;
  /** Lower bound of the lr. Defaults to `0`. */
  minLr?: number;
}

/** Reduces the lr when a metric stops improving, like `ReduceLROnPlateau` (relative threshold). */
export class PlateauScheduler {
  readonly #optimizer: Optimizer;
  readonly #o: Required<PlateauOptions>;
  #best: number;
  #bad = 0;
  #cooldown = 0;

  /** @internal Use {@link reduceOnPlateau}. */
  constructor(optimizer: Optimizer, o: Required<PlateauOptions>) {
    this.#optimizer = optimizer;
    this.#o = o;
    this.#best = o.mode === 'min' ? Infinity : -Infinity;
  }

  get lastLr(): number[] {
    return this.#optimizer.paramGroups.map((g) => g.lr);
  }

  /** Reports the metric of the epoch just finished. */
  step(metric: number): void {
    checkFiniteNumber(metric, 'metric');
    const { mode, threshold, patience, cooldown, factor, minLr } = this.#o;
    const better = mode === 'min' ? metric < this.#best * (1 - threshold) : metric > this.#best * (1 + threshold);
    if (better) {
      this.#best = metric;
      this.#bad = 0;
    } else {
      this.#bad += 1;
    }
    if (this.#cooldown > 0) {
      this.#cooldown -= 1;
      this.#bad = 0;
    }
    if (this.#bad > patience) {
      for (const group of this.#optimizer.paramGroups) {
        const next = Math.max(group.lr * factor, minLr);
        if (group.lr - next > 1e-8) group.lr = next;
      }
      this.#cooldown = cooldown;
      this.#bad = 0;
    }
  }

  stateDict(): { best: number; bad: number; cooldown: number } {
    return { best: this.#best, bad: this.#bad, cooldown: this.#cooldown };
  }

  loadStateDict(state: { best: number; bad: number; cooldown: number }): void {
    this.#best = state.best;
    this.#bad = state.bad;
    this.#cooldown = state.cooldown;
  }
}

export function reduceOnPlateau(optimizer: Optimizer, opts?: PlateauOptions): PlateauScheduler {
  const o = options<PlateauOptions>(opts, ['mode', 'factor', 'patience', 'threshold', 'cooldown', 'minLr']);
  const factor = checkFiniteNumber(o.factor ?? 0.1, 'options.factor');
  if (factor <= 0 || factor >= 1) throw rangeError('a number in (0, 1)', 'options.factor', factor);
  return new PlateauScheduler(optimizer, {
    mode: checkOneOf(o.mode ?? 'min', 'options.mode', ['min', 'max'] as const),
    factor,
    patience: checkInteger(o.patience ?? 10, 'options.patience', 0, 'a non-negative integer'),
    threshold: checkFiniteNumber(o.threshold ?? 1e-4, 'options.threshold'),
    cooldown: checkInteger(o.cooldown ?? 0, 'options.cooldown', 0, 'a non-negative integer'),
    minLr: checkFiniteNumber(o.minLr ?? 0, 'options.minLr'),
  });
}
