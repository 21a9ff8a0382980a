import { describe, expect, it } from 'vitest';
import { CocoEvaluator, type Detections, type GroundTruth } from '../src';

// Cases worked out by hand from COCO's rules (pycocotools' COCOeval): greedy matching by
// score at each IoU threshold .50:.05:.95, precision made monotone, then read at 101 recall
// points; crowds and out-of-range areas neither reward nor punish.
const gt = (boxes: number[][], labels: number[], extra: Partial<GroundTruth> = {}): GroundTruth => ({ boxes: boxes.flat(), labels, ...extra });
const dt = (boxes: number[][], labels: number[], scores: number[]): Detections => ({ boxes: boxes.flat(), labels, scores });

/** Each number to 12 places: precision divides by tp + fp + ε, as pycocotools does, so a perfect score is 1 − 2e-16. */
function expectNear(actual: object, expected: Record<string, number> | number[]): void {
  for (const [key, value] of Object.entries(expected)) expect((actual as Record<string, number>)[key], key).toBeCloseTo(value, 12);
}

function summary(images: [GroundTruth, Detections][]) {
  const evaluator = new CocoEvaluator();
  for (const [truth, found] of images) evaluator.add(truth, found);
  return evaluator.summary();
}

describe('COCO mAP', () => {
  it('is 1 for exact boxes, with −1 for size ranges without objects', () => {
    const s = summary([[gt([[0, 0, 10, 10]], [1]), dt([[0, 0, 10, 10]], [1], [0.9])]]);
    expectNear(s, { map: 1, map50: 1, map75: 1, mar1: 1, mar100: 1, mapSmall: 1, mapMedium: -1, mapLarge: -1 });
  });

  it('reads precision at 101 recall points: half the objects found is 51/101', () => {
    const s = summary([[gt([[0, 0, 10, 10], [20, 20, 30, 30]], [1, 1]), dt([[0, 0, 10, 10]], [1], [0.9])]]);
    expect(s.map).toBeCloseTo(51 / 101, 12);
    expect(s.mar100).toBe(0.5);
  });

  it('counts a box as found at the thresholds its IoU reaches: IoU .72 is 5 of 10', () => {
    const s = summary([[gt([[0, 0, 10, 10]], [1]), dt([[0, 0, 10, 7.2]], [1], [0.9])]]);
    expect(s.map).toBeCloseTo(0.5, 12);
    expect(s.map50).toBeCloseTo(1, 12);
    expect(s.map75).toBe(0);
  });

  it('ranks by score: a false positive above the true one halves the precision at every recall', () => {
    const s = summary([[gt([[0, 0, 10, 10]], [1]), dt([[50, 50, 60, 60], [0, 0, 10, 10]], [1, 1], [0.9, 0.8])]]);
    expect(s.map).toBeCloseTo(0.5, 12);
    // Below the true one, it costs nothing.
    expect(summary([[gt([[0, 0, 10, 10]], [1]), dt([[50, 50, 60, 60], [0, 0, 10, 10]], [1, 1], [0.7, 0.8])]]).map).toBeCloseTo(1, 12);
    // Scores rank across images too.
    const across = summary([
      [gt([[0, 0, 10, 10]], [1]), dt([[0, 0, 10, 10]], [1], [0.5])],
      [gt([], []), dt([[0, 0, 10, 10]], [1], [0.9])],
    ]);
    expect(across.map).toBeCloseTo(0.5, 12);
  });

  it('neither rewards nor punishes a detection on a crowd region', () => {
    const boxes = [
      [0, 0, 10, 10],
      [40, 40, 80, 80],
    ];
    const found = dt([[42, 42, 60, 60], [0, 0, 10, 10]], [1, 1], [0.9, 0.8]);
    expect(summary([[gt(boxes, [1, 1], { iscrowd: [0, 1] }), found]]).map).toBeCloseTo(1, 12);
    // Without the crowd flag, the same detection is a miss ranked first and the region an object not found.
    expect(summary([[gt(boxes, [1, 1]), found]]).map).toBeCloseTo((0.5 * 51) / 101, 12);
  });

  it('averages over categories, limits detections per image, and scores sizes by area', () => {
    const two = summary([[gt([[0, 0, 10, 10], [20, 20, 30, 30]], [1, 2]), dt([[0, 0, 10, 10], [0, 0, 10, 10]], [1, 2], [0.9, 0.8])]]);
    expect(two.map).toBeCloseTo(0.5, 12);
    const many = summary([[gt([[0, 0, 10, 10], [20, 20, 30, 30]], [1, 1]), dt([[0, 0, 10, 10], [20, 20, 30, 30]], [1, 1], [0.9, 0.8])]]);
    expect([many.mar1, many.mar10, many.mar100]).toEqual([0.5, 1, 1]);
    // A 40×40 object is medium; given an area of 50, it is small.
    const medium = summary([[gt([[0, 0, 40, 40]], [1]), dt([[0, 0, 40, 40]], [1], [1])]]);
    expectNear([medium.mapSmall, medium.mapMedium], [-1, 1]);
    const small = summary([[gt([[0, 0, 40, 40]], [1], { area: [50] }), dt([[0, 0, 40, 40]], [1], [1])]]);
    expectNear([small.mapSmall, small.mapMedium], [1, -1]);
  });

  it('matches masks by their pixels', () => {
    const evaluator = new CocoEvaluator('segm');
    // A 4×4 image: the object is the left half; the detection covers 6 of its 8 pixels and 2 more.
    const object = [1, 1, 0, 0, 1, 1, 0, 0, 1, 1, 0, 0, 1, 1, 0, 0];
    const found = [0.9, 0.9, 0, 0, 0.9, 0.9, 0, 0, 0.9, 0.9, 0.6, 0, 0.1, 0.2, 0.7, 0];
    evaluator.add({ boxes: [0, 0, 2, 4], labels: [1], masks: object }, { boxes: [0, 0, 3, 4], labels: [1], scores: [1], masks: found }, { height: 4, width: 4 });
    // IoU 6 / 10 = .6: found at .50, .55 and .60.
    expect(evaluator.summary().map).toBeCloseTo(0.3, 12);
    expect(() => evaluator.add({ boxes: [0, 0, 2, 4], labels: [1] }, { boxes: [0, 0, 3, 4], labels: [1], scores: [1] }, { height: 4, width: 4 })).toThrow(
      'mask mAP needs masks in both the targets and the detections, and the image size',
    );
  });
});
