// Metrics accumulated over batches from model outputs and targets, on the JS side:
// outputs are small ([N, C]) next to the forward that produced them.

/**
 * A metric name, or `{ topK: k }` for top-k accuracy. `'miou'` is the mean intersection over
 * union of the classes (per pixel for segmentation); `'map'` and `'maskMap'` are COCO's box and
 * mask mAP of a detector (see `Metrics.map`).
 */
export type MetricSpec = 'accuracy' | 'f1' | 'confusionMatrix' | 'mae' | 'mse' | 'miou' | 'map' | 'maskMap' | { topK: number };

/** The metrics that score a detector's boxes and masks rather than class scores. */
export const DETECTION_METRICS = ['map', 'maskMap'] as const;

/** What `evaluate` returns: the mean loss (when a loss was given) and each requested metric. */
export interface Metrics {
  loss?: number;
  accuracy?: number;
  f1?: number;
  confusionMatrix?: number[][];
  mae?: number;
  mse?: number;
  /**
   * Mean IoU over the classes that occur in the targets or the predictions (a class in
   * neither has no IoU and is left out, as `nanmean` leaves it).
   */
  miou?: number;
  /** Each class's IoU, with `NaN` for a class in neither targets nor predictions; with `miou`. */
  iou?: number[];
  /** COCO box AP at IoU .50:.05:.95 (all areas, 100 detections an image), with `'map'`. */
  map?: number;
  /** Box AP at IoU .50, with `'map'`. */
  map50?: number;
  /** Box AP at IoU .75, with `'map'`. */
  map75?: number;
  /** Box AP of small (< 32² px), medium and large objects, with `'map'`; −1 where no object has that size. */
  mapSmall?: number;
  mapMedium?: number;
  mapLarge?: number;
  /** Box AR with 100 detections an image, with `'map'`. */
  mar100?: number;
  /** COCO mask AP at IoU .50:.05:.95, .50 and .75, with `'maskMap'`. */
  maskMap?: number;
  maskMap50?: number;
  maskMap75?: number;
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

  /**
   * Adds a confusion matrix (`classes` × `classes`, rows: targets) counted natively from
   * per-element class scores, such as a segmentation batch's pixels.
   */
  addConfusion(cells: ArrayLike<number>, classes: number): void {
    if (this.#specs.some((s) => typeof s !== 'string')) throw new TypeError('top-k accuracy needs one class-score row a sample; per-pixel targets have a confusion matrix only: ask for accuracy, f1, miou or confusionMatrix');
    this.#confusion ??= [];
    while (this.#confusion.length < classes) this.#confusion.push([]);
    for (const row of this.#confusion) while (row.length < classes) row.push(0);
    let trace = 0;
    let total = 0;
    for (let i = 0; i < classes; i++)
      for (let j = 0; j < classes; j++) {
        const n = cells[i * classes + j];
        this.#confusion[i][j] += n;
        total += n;
        if (i === j) trace += n;
      }
    this.#count += total;
    this.#correct.set(1, (this.#correct.get(1) ?? 0) + trace);
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
    return this.#specs.some((s) => typeof s !== 'string' || ['accuracy', 'f1', 'confusionMatrix', 'miou'].includes(s));
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
      else if (spec === 'miou') Object.assign(out, meanIou(this.#confusion ?? []));
      else if (spec === 'accuracy') out.accuracy = (this.#correct.get(1) ?? 0) / this.#count;
      else if (typeof spec === 'object') out[name as `top${number}`] = (this.#correct.get(spec.topK) ?? 0) / this.#count;
    }
    return out;
  }
}

/** Each class's IoU from a confusion matrix (NaN for a class in neither targets nor predictions), and their mean over the rest. */
function meanIou(confusion: number[][]): { miou: number; iou: number[] } {
  const iou = confusion.map((row, c) => {
    const union = row.reduce((a, b) => a + b, 0) + confusion.reduce((a, r) => a + r[c], 0) - row[c];
    return union === 0 ? Number.NaN : row[c] / union;
  });
  const present = iou.filter((v) => !Number.isNaN(v));
  return { miou: present.length === 0 ? Number.NaN : present.reduce((a, b) => a + b, 0) / present.length, iou };
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
