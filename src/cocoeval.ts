// COCO-style detection metrics (box and mask mAP), computed as pycocotools' COCOeval does:
// the same matching, ignore rules, area ranges, detection limits and 101-point
// interpolation, on boxes and bitmaps held in JS (a detector's outputs are small).

/** One image's ground truth: `n` objects. Boxes are `[x1, y1, x2, y2]` in pixels, row-major `n × 4`. */
export interface GroundTruth {
  boxes: ArrayLike<number>;
  labels: ArrayLike<number | bigint>;
  /** 1 marks a crowd region: detections on it are neither rewarded nor punished. Defaults to none. */
  iscrowd?: ArrayLike<number | bigint>;
  /** Each object's area for the small/medium/large ranges (COCO's `area`, the mask's). Defaults to the box's (or the mask's, for masks). */
  area?: ArrayLike<number>;
  /** `n` bitmaps of `height × width`, nonzero inside, for mask mAP. */
  masks?: ArrayLike<number>;
}

/** One image's detections: `n` objects with a score each. Masks are probabilities (kept above 0.5) or bitmaps. */
export interface Detections {
  boxes: ArrayLike<number>;
  labels: ArrayLike<number | bigint>;
  scores: ArrayLike<number>;
  masks?: ArrayLike<number>;
}

/** The summary pycocotools prints, as fractions (−1 where no category has ground truth in the range). */
export interface CocoSummary {
  /** AP at IoU .50:.05:.95, all areas, 100 detections per image. */
  map: number;
  map50: number;
  map75: number;
  mapSmall: number;
  mapMedium: number;
  mapLarge: number;
  /** AR with 1, 10 and 100 detections per image, all areas. */
  mar1: number;
  mar10: number;
  mar100: number;
  marSmall: number;
  marMedium: number;
  marLarge: number;
}

/** numpy's `linspace`, to the last bit: pycocotools compares IoUs and recalls against these. */
function linspace(start: number, stop: number, count: number): number[] {
  const step = (stop - start) / (count - 1);
  return Array.from({ length: count }, (_, i) => (i === count - 1 ? stop : i * step + start));
}

/** COCO's ten IoU thresholds, .50 to .95. */
const IOU_THRESHOLDS = linspace(0.5, 0.95, 10);
/** Recall points 0, .01, …, 1. */
const RECALL_POINTS = linspace(0, 1, 101);
const MAX_DETECTIONS = [1, 10, 100];
/** all, small (< 32²), medium (32² to 96²), large (> 96²). */
const AREA_RANGES: [number, number][] = [
  [0, 1e10],
  [0, 32 ** 2],
  [32 ** 2, 96 ** 2],
  [96 ** 2, 1e10],
];

/** What one image and category give the accumulation: pycocotools' `evaluateImg` result. */
interface ImageResult {
  scores: number[]; // detections by score, at most 100
  matched: boolean[][]; // [threshold][detection]
  ignored: boolean[][]; // [threshold][detection]
  gtIgnored: boolean[];
}

interface Objects {
  boxes: ArrayLike<number>;
  area: number[];
  crowd: boolean[];
  masks?: Uint8Array[];
  scores?: number[];
}

interface ImageEntry {
  gt: Objects;
  dt: Objects;
  gtLabels: number[];
  dtLabels: number[];
}

/** Accumulates images, then {@link summary}: box mAP (`'bbox'`) or mask mAP (`'segm'`). */
export class CocoEvaluator {
  readonly #type: 'bbox' | 'segm';
  /** Per image, per category: ground truth and detections, as indices into the image's objects. */
  readonly #images: ImageEntry[] = [];

  constructor(type: 'bbox' | 'segm' = 'bbox') {
    this.#type = type;
  }

  /** Adds one image. Masks need `height` and `width`. */
  add(truth: GroundTruth, detections: Detections, size?: { height: number; width: number }): void {
    const pixels = size ? size.height * size.width : 0;
    const bitmaps = (source: ArrayLike<number> | undefined, n: number, cut: number): Uint8Array[] | undefined => {
      if (this.#type !== 'segm') return undefined;
      if (!source || !size) throw new TypeError('mask mAP needs masks in both the targets and the detections, and the image size');
      if (source.length !== n * pixels) throw new RangeError(`Expected ${n} masks of ${size.height}×${size.width} but received ${source.length} values`);
      return Array.from({ length: n }, (_, i) => {
        const bitmap = new Uint8Array(pixels);
        for (let p = 0; p < pixels; p++) bitmap[p] = source[i * pixels + p] > cut ? 1 : 0;
        return bitmap;
      });
    };
    const gtCount = truth.labels.length;
    const gtMasks = bitmaps(truth.masks, gtCount, 0);
    const dtCount = detections.labels.length;
    const dtMasks = bitmaps(detections.masks, dtCount, 0.5);
    const areaOf = (boxes: ArrayLike<number>, masks: Uint8Array[] | undefined, i: number) =>
      masks ? masks[i].reduce((a, b) => a + b, 0) : (boxes[i * 4 + 2] - boxes[i * 4]) * (boxes[i * 4 + 3] - boxes[i * 4 + 1]);
    this.#images.push({
      gt: {
        boxes: truth.boxes,
        area: Array.from({ length: gtCount }, (_, i) => (truth.area ? truth.area[i] : areaOf(truth.boxes, gtMasks, i))),
        crowd: Array.from({ length: gtCount }, (_, i) => Number(truth.iscrowd?.[i] ?? 0) !== 0),
        masks: gtMasks,
      },
      dt: {
        boxes: detections.boxes,
        area: Array.from({ length: dtCount }, (_, i) => areaOf(detections.boxes, dtMasks, i)),
        crowd: new Array<boolean>(dtCount).fill(false),
        masks: dtMasks,
        scores: Array.from(detections.scores),
      },
      gtLabels: Array.from(truth.labels, Number),
      dtLabels: Array.from(detections.labels, Number),
    });
  }

  /** How many images were added. */
  get images(): number {
    return this.#images.length;
  }

  /** The twelve numbers of pycocotools' `summarize()`. */
  summary(): CocoSummary {
    const categories = [...new Set(this.#images.flatMap((image) => image.gtLabels))].sort((a, b) => a - b);
    // precision[t][k][a][m] as the mean over recall points (−1: no ground truth), recall likewise.
    const T = IOU_THRESHOLDS.length;
    const precision = new Map<string, number>();
    const recall = new Map<string, number>();
    for (const k of categories) {
      for (const [a, range] of AREA_RANGES.entries()) {
        const results = this.#images.map((image) => this.#evaluateImage(image, k, range)).filter((r): r is ImageResult => r !== null);
        for (const maxDet of MAX_DETECTIONS) {
          const scored: { score: number; image: number; d: number }[] = [];
          results.forEach((r, image) => r.scores.slice(0, maxDet).forEach((score, d) => scored.push({ score, image, d })));
          // numpy's mergesort on −score: stable, so equal scores keep image order.
          scored.sort((x, y) => y.score - x.score);
          const npig = results.reduce((n, r) => n + r.gtIgnored.filter((g) => !g).length, 0);
          if (npig === 0) continue;
          for (let t = 0; t < T; t++) {
            let tp = 0;
            let fp = 0;
            const rc: number[] = [];
            const pr: number[] = [];
            for (const { image, d } of scored) {
              const r = results[image];
              if (r.ignored[t][d]) continue;
              if (r.matched[t][d]) tp += 1;
              else fp += 1;
              rc.push(tp / npig);
              pr.push(tp / (tp + fp + Number.EPSILON));
            }
            recall.set(`${t}/${k}/${a}/${maxDet}`, rc.length > 0 ? rc[rc.length - 1] : 0);
            for (let i = pr.length - 1; i > 0; i--) if (pr[i] > pr[i - 1]) pr[i - 1] = pr[i];
            // For each recall point, the precision at the first rank reaching it (0 past the last).
            let q = 0;
            let at = 0;
            for (const point of RECALL_POINTS) {
              while (at < rc.length && rc[at] < point) at++;
              q += at < rc.length ? pr[at] : 0;
            }
            precision.set(`${t}/${k}/${a}/${maxDet}`, q / RECALL_POINTS.length);
          }
        }
      }
    }
    const mean = (table: Map<string, number>, a: number, maxDet: number, threshold?: number) => {
      const values: number[] = [];
      for (let t = 0; t < T; t++) {
        if (threshold !== undefined && Math.abs(IOU_THRESHOLDS[t] - threshold) > 1e-9) continue;
        for (const k of categories) {
          const v = table.get(`${t}/${k}/${a}/${maxDet}`);
          if (v !== undefined) values.push(v);
        }
      }
      return values.length === 0 ? -1 : values.reduce((x, y) => x + y, 0) / values.length;
    };
    return {
      map: mean(precision, 0, 100),
      map50: mean(precision, 0, 100, 0.5),
      map75: mean(precision, 0, 100, 0.75),
      mapSmall: mean(precision, 1, 100),
      mapMedium: mean(precision, 2, 100),
      mapLarge: mean(precision, 3, 100),
      mar1: mean(recall, 0, 1),
      mar10: mean(recall, 0, 10),
      mar100: mean(recall, 0, 100),
      marSmall: mean(recall, 1, 100),
      marMedium: mean(recall, 2, 100),
      marLarge: mean(recall, 3, 100),
    };
  }

  /** pycocotools' `evaluateImg` for one image, category and area range; null when the image has neither. */
  #evaluateImage(image: ImageEntry, category: number, [low, high]: [number, number]): ImageResult | null {
    const gts = image.gtLabels.flatMap((label, i) => (label === category ? [i] : []));
    const dtAll = image.dtLabels.flatMap((label, i) => (label === category ? [i] : []));
    if (gts.length === 0 && dtAll.length === 0) return null;
    const outside = (area: number) => area < low || area > high;
    const gtIgnoredOf = (g: number) => image.gt.crowd[g] || outside(image.gt.area[g]);
    // Ground truth not ignored first (a stable sort), detections by score, at most 100.
    const gtOrder = [...gts].sort((x, y) => Number(gtIgnoredOf(x)) - Number(gtIgnoredOf(y)));
    const dts = [...dtAll].sort((x, y) => image.dt.scores![y] - image.dt.scores![x]).slice(0, MAX_DETECTIONS[MAX_DETECTIONS.length - 1]);
    const gtIgnored = gtOrder.map(gtIgnoredOf);
    const crowd = gtOrder.map((g) => image.gt.crowd[g]);
    const ious = dts.map((d) => gtOrder.map((g) => this.#iou(image, d, g)));
    const matched = IOU_THRESHOLDS.map(() => new Array<boolean>(dts.length).fill(false));
    const ignored = IOU_THRESHOLDS.map(() => new Array<boolean>(dts.length).fill(false));
    IOU_THRESHOLDS.forEach((threshold, t) => {
      const taken = new Array<boolean>(gtOrder.length).fill(false);
      dts.forEach((_, d) => {
        let best = Math.min(threshold, 1 - 1e-10);
        let m = -1;
        for (let g = 0; g < gtOrder.length; g++) {
          if (taken[g] && !crowd[g]) continue;
          // Past the ground truth that counts, a match already found is not traded for an ignored one.
          if (m > -1 && !gtIgnored[m] && gtIgnored[g]) break;
          if (ious[d][g] < best) continue;
          best = ious[d][g];
          m = g;
        }
        if (m === -1) return;
        ignored[t][d] = gtIgnored[m];
        matched[t][d] = true;
        taken[m] = true;
      });
      // Unmatched detections outside the area range do not count against the range.
      dts.forEach((dt, d) => {
        if (!matched[t][d] && outside(image.dt.area[dt])) ignored[t][d] = true;
      });
    });
    return { scores: dts.map((d) => image.dt.scores![d]), matched, ignored, gtIgnored };
  }

  /** IoU of detection `d` and ground truth `g`; over a crowd region, the share of the detection inside it. */
  #iou(image: ImageEntry, d: number, g: number): number {
    const crowd = image.gt.crowd[g];
    if (this.#type === 'segm') {
      const a = image.dt.masks![d];
      const b = image.gt.masks![g];
      let inter = 0;
      let union = 0;
      for (let p = 0; p < a.length; p++) {
        inter += a[p] & b[p];
        union += a[p] | b[p];
      }
      const denominator = crowd ? image.dt.area[d] : union;
      return denominator === 0 ? 0 : inter / denominator;
    }
    const [x1, y1, x2, y2] = [0, 1, 2, 3].map((i) => image.dt.boxes[d * 4 + i]);
    const [u1, v1, u2, v2] = [0, 1, 2, 3].map((i) => image.gt.boxes[g * 4 + i]);
    const w = Math.min(x2, u2) - Math.max(x1, u1);
    const h = Math.min(y2, v2) - Math.max(y1, v1);
    const inter = w > 0 && h > 0 ? w * h : 0;
    const dtArea = (x2 - x1) * (y2 - y1);
    const union = crowd ? dtArea : dtArea + (u2 - u1) * (v2 - v1) - inter;
    return union <= 0 ? 0 : inter / union;
  }
}
