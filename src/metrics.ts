// Metrics accumulated over batches from model outputs and targets, on the JS side:
// outputs are small ([N, C]) next to the forward that produced them.

/** A metric name, or `{ topK: k }` for top-k accuracy. */
export type MetricSpec = 'accuracy' | 'f1' | 'confusionMatrix' | 'mae' | 'mse' | { topK: number };

/** What `evaluate` returns: the mean loss (when a loss was given) and each requested metric. */
export interface Metrics {
  loss?: number;
  accuracy?: number;
  f1?: number;
  confusionMatrix?: number[][];
  mae?: number;
  mse?: number;
  [topK: `top${number}`]: number;
}

/** Whether class `a` comes before class `b` by score: NaN above any number (as in torch.argmax), ties to the lower index. */
function outranks(row: Float32Array, a: number, b: number): boolean {
  const [x, y] = [row[a], row[b]];
  if (Number.isNaN(x) || Number.isNaN(y)) return Number.isNaN(x) && (!Number.isNaN(y) || a < b);
  return x > y || (x === y && a < b);
}

export function metricName(spec: MetricSpec): string {
  return typeof spec === 'string' ? spec : `top${spec.topK}`;
}

/** Accumulates classification or regression metrics over batches. */
export class MetricAccumulator {
  readonly #specs: MetricSpec[];
  #count = 0;
  #correct = new Map<number, number>(); // k -> hits
  #confusion: number[][] | null = null;
  #absError = 0;
  #sqError = 0;
  #elements = 0;

  constructor(specs: MetricSpec[]) {
    this.#specs = specs;
  }

  /** `scores` is `[N, C]` row-major for classification, or any shape matching `targets` for regression. */
  add(scores: Float32Array, targets: ArrayLike<number | bigint>, classes: number): void {
    const n = targets.length;
    if (this.#classifies()) {
      this.#confusion ??= Array.from({ length: classes }, () => new Array<number>(classes).fill(0));
      const ks = this.#specs.map((s) => (typeof s === 'string' ? 1 : s.topK));
      for (let i = 0; i < n; i++) {
        const row = scores.subarray(i * classes, (i + 1) * classes);
        const truth = Number(targets[i]);
        if (truth < 0 || truth >= classes) continue; // ignored targets
        // The truth's rank in the order torch.argmax and topk pick classes: NaN first, ties to
        // the lower index. A row of equal (or NaN) scores predicts class 0, not every class.
        let rank = 0;
        for (let c = 0; c < classes; c++) if (c !== truth && outranks(row, c, truth)) rank += 1;
        for (const k of new Set(ks)) if (rank < k) this.#correct.set(k, (this.#correct.get(k) ?? 0) + 1);
        let best = 0;
        for (let c = 1; c < classes; c++) if (outranks(row, c, best)) best = c;
        this.#confusion[truth][best] += 1;
        this.#count += 1;
      }
    } else {
      for (let i = 0; i < scores.length; i++) {
        const d = scores[i] - Number(targets[i]);
        this.#absError += Math.abs(d);
        this.#sqError += d * d;
      }
      this.#elements += scores.length;
    }
  }

  /** @internal Every sum behind the metrics, as one array to add up over ranks, with the confusion matrix at `classes` × `classes`. */
  sums(classes: number): number[] {
    if (!this.#classifies()) classes = 0;
    const confusion = Array.from({ length: classes }, (_, i) => Array.from({ length: classes }, (_, j) => this.#confusion?.[i]?.[j] ?? 0));
    return [this.#count, ...this.#ks().map((k) => this.#correct.get(k) ?? 0), ...confusion.flat(), this.#absError, this.#sqError, this.#elements];
  }

  /** @internal Takes sums back, laid out as {@link sums} gives them. */
  setSums(values: ArrayLike<number>, classes: number): void {
    let at = 0;
    const next = () => values[at++];
    this.#count = next();
    for (const k of this.#ks()) this.#correct.set(k, next());
    if (this.#classifies()) this.#confusion = Array.from({ length: classes }, () => Array.from({ length: classes }, next));
    this.#absError = next();
    this.#sqError = next();
    this.#elements = next();
  }

  #classifies(): boolean {
    return this.#specs.some((s) => typeof s !== 'string' || ['accuracy', 'f1', 'confusionMatrix'].includes(s));
  }

  #ks(): number[] {
    return [...new Set(this.#specs.map((s) => (typeof s === 'string' ? 1 : s.topK)))].sort((a, b) => a - b);
  }

  result(): Metrics {
    const out: Metrics = {};
    for (const spec of this.#specs) {
      const name = metricName(spec);
      if (spec === 'mae') out.mae = this.#absError / this.#elements;
      else if (spec === 'mse') out.mse = this.#sqError / this.#elements;
      else if (spec === 'confusionMatrix') out.confusionMatrix = this.#confusion ?? [];
      else if (spec === 'f1') out.f1 = macroF1(this.#confusion ?? []);
      else if (spec === 'accuracy') out.accuracy = (this.#correct.get(1) ?? 0) / this.#count;
      else out[name as `top${number}`] = (this.#correct.get(spec.topK) ?? 0) / this.#count;
    }
    return out;
  }
}

/** Macro F1 over the classes that occur in targets or predictions, as scikit-learn computes it. */
function macroF1(confusion: number[][]): number {
  const scores: number[] = [];
  confusion.forEach((row, c) => {
    const tp = row[c];
    const actual = row.reduce((a, b) => a + b, 0);
    const predicted = confusion.reduce((a, r) => a + r[c], 0);
    if (actual === 0 && predicted === 0) return;
    scores.push(actual + predicted === 0 ? 0 : (2 * tp) / (actual + predicted));
  });
  return scores.length === 0 ? 0 : scores.reduce((a, b) => a + b, 0) / scores.length;
}
