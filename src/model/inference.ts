// Evaluation: the options, the checks made at the call, and the pass that one queued
// operation runs over the batches (summed over ranks for a sharded loader).
import { CocoEvaluator } from '../cocoeval';
import { misuse, TorchError } from '../errors';
import { Loss } from '../loss';
import { DETECTION_METRICS, MetricAccumulator, type Metrics, type MetricSpec } from '../metrics';
import type { NativeModel } from '../native';
import { classNamesOf } from '../preprocess';
import { Tensor } from '../tensor';
import { checkOneOf, checkOptions, checkPositiveInteger, typeError } from '../validate';
import { type Batch, batchArgs, type BatchInput, inputTensors, type ModelInput, type ModelOutput, wrapOutput } from './io';
import { kShardGroup, type ShardGroup } from './protocols';

export interface EvaluateOptions {
  /** Reports the mean loss over all samples. Defaults to no loss. */
  loss?: Loss;
  /** Metrics to compute. Defaults to `['accuracy']` with a classification loss, else none. */
  metrics?: MetricSpec[];
}

export interface Prediction {
  /** Softmax over dimension 1. */
  probabilities: Tensor;
  /** The most likely class of each sample (int64). */
  argmax: Tensor;
}

/**
 * @internal A batch from a distributed loader: its last `padding` samples repeat earlier ones
 * (so that every rank has as many batches) and are not scored.
 */
export interface PaddedBatch extends Batch {
  padding?: number;
}

/**
 * Refuses to score a model on data whose class names (a loader's `dataset.classes`) are not the
 * model's (`metadata.classes`) in the same order: target 3 would not mean output 3, and the
 * accuracy would be silently wrong.
 */
function checkSameClasses(model: { readonly metadata: unknown }, classes: string[] | undefined): void {
  const own = classNamesOf(model);
  if (classes === undefined || own === undefined || (classes.length === own.length && classes.every((c, i) => c === own[i]))) return;
  const list = (names: string[]) => names.slice(0, 8).map((c) => `'${c}'`).join(', ') + (names.length > 8 ? ', …' : '');
  throw new TorchError('TORCHLITE_BAD_DATA', `the data's classes (${list(classes)}) are not the model's (${list(own)}); read the data with \`like: model\`, which maps folders and labels to the model's classes by name, or map them with \`data.relabel\``);
}

/** @internal An evaluation, checked at the call: the pass to queue, and the place in a group's order of collectives it holds (a sharded loader). */
export interface Evaluation {
  pass(handle: NativeModel): Promise<Metrics>;
  turn?: { ready: Promise<void>; release(): void };
}

/** @internal Checks `evaluate`'s arguments against `model` and prepares its pass. */
export function evaluation(model: { readonly metadata: unknown }, batches: Iterable<Batch> | AsyncIterable<Batch>, options: EvaluateOptions | undefined): Evaluation {
  const o = checkOptions<EvaluateOptions>(options, 'options', ['loss', 'metrics']);
  if (o.loss !== undefined && !(o.loss instanceof Loss)) throw typeError('a Loss from `loss.*`', 'options.loss', o.loss);
  if (o.loss?.fromModel) throw new TypeError("evaluate() computes a loss from the outputs; a model that computes its own (loss.fromModel()) does so in train mode, in trainStep. Leave `loss` out, and score a detector with metrics: ['map']");
  const classification = o.loss === undefined || o.loss.classifies;
  const dataMetrics = (batches as { dataset?: { metrics?: MetricSpec[] } }).dataset?.metrics;
  const specs = o.metrics ?? dataMetrics ?? (o.loss && classification ? (['accuracy'] as MetricSpec[]) : []);
  if (!Array.isArray(specs)) throw typeError('an array of metrics', 'options.metrics', specs);
  specs.forEach((spec, i) => {
    if (typeof spec === 'object' && spec !== null && 'topK' in spec) checkPositiveInteger(spec.topK, `options.metrics[${i}].topK`);
    else checkOneOf(spec, `options.metrics[${i}]`, ['accuracy', 'f1', 'confusionMatrix', 'mae', 'mse', 'miou', 'map', 'maskMap'] as const);
  });
  const detection = specs.filter((spec): spec is (typeof DETECTION_METRICS)[number] => DETECTION_METRICS.includes(spec as never));
  if (detection.length > 0 && (detection.length < specs.length || o.loss))
    throw new TypeError("'map' and 'maskMap' score a detector's boxes and masks: ask for them without a loss or other metrics");
  if (batches === null || typeof batches !== 'object' || !(Symbol.iterator in batches || Symbol.asyncIterator in batches))
    throw typeError('an iterable of { input, target } batches', 'batches', batches);
  checkSameClasses(model, (batches as { dataset?: { classes?: string[] } }).dataset?.classes);
  const shard = (batches as Partial<Record<typeof kShardGroup, ShardGroup>>)[kShardGroup];
  if (detection.length > 0) {
    if (shard) throw misuse('TORCHLITE_BAD_ARGUMENT', 'mAP over a sharded loader is not supported yet: evaluate on one rank with a loader without `distributed`');
    return { pass: (handle) => detectionPass(handle, batches, detection) };
  }
  const metrics = new MetricAccumulator(specs);
  const lossSpec = o.loss?.spec ?? null;
  const turn = shard?.turn();
  const pass = async (handle: NativeModel): Promise<Metrics> => {
    let lossSum = 0;
    let samples = 0;
    let classes = 0;
    for await (const batch of batches as AsyncIterable<PaddedBatch>) {
      const args = batchArgs(batch.input as BatchInput, 'batch.input');
      const target = batch.target as Tensor;
      const padding = batch.padding ?? 0;
      const keep = padding > 0 ? target.shape[0] - padding : undefined;
      // Class indices per pixel (or per token): counted into a confusion matrix natively.
      const dense = target.shape.length >= 2 && !target.dtype.startsWith('float') && specs.length > 0;
      const r = await handle.evalBatch(args, Tensor.handle(target), lossSpec, keep, dense ? 'confusion' : 'scores');
      const n = r.samples!;
      if (r.loss !== undefined) lossSum += r.loss * n;
      samples += n;
      if (dense) {
        const width = Math.round(Math.sqrt(r.confusion!.length));
        classes = Math.max(classes, width);
        metrics.addConfusion(r.confusion!, width);
      } else {
        const shape = r.shape!;
        classes = Math.max(classes, shape[1] ?? 1);
        if (specs.length > 0 && n > 0) metrics.add(r.scores!, r.targets!, shape[1] ?? 1);
      }
    }
    if (shard && turn) {
      // Every rank's sums, padding left out: the metrics of the whole dataset.
      await turn.ready;
      classes = (await shard.reduce(Float64Array.of(classes), 'max'))[0];
      const sums = await shard.reduce(Float64Array.of(lossSum, samples, ...metrics.sums(classes)), 'sum');
      [lossSum, samples] = sums;
      metrics.setSums(sums.subarray(2), classes);
    }
    if (samples === 0) throw new RangeError('Expected at least one batch for `batches` but received none');
    return { ...(o.loss && { loss: lossSum / samples }), ...metrics.result() };
  };
  return { pass, ...(turn && { turn }) };
}

/** The per-image detections in a detector's output: a list of dicts, or torchvision's scripted `(losses, detections)`. */
function detectionsIn(output: ModelOutput): Record<string, Tensor>[] {
  const isList = (value: ModelOutput) => Array.isArray(value) && value.every((item) => item !== null && typeof item === 'object' && !Array.isArray(item) && 'boxes' in item);
  const list = isList(output) ? output : Array.isArray(output) && output.length === 2 && isList(output[1]) ? output[1] : null;
  if (list === null)
    throw new TorchError('TORCHLITE_UNSUPPORTED_OUTPUT', "mAP needs a detector whose eval forward returns a list of per-image dicts of boxes, labels and scores (or torchvision's scripted (losses, detections))");
  return list as Record<string, Tensor>[];
}

/** A detector's pass: its eval outputs against the batches' per-image targets, scored as COCO does. */
async function detectionPass(handle: NativeModel, batches: Iterable<Batch> | AsyncIterable<Batch>, specs: (typeof DETECTION_METRICS)[number][]): Promise<Metrics> {
  const boxes = specs.includes('map') ? new CocoEvaluator('bbox') : undefined;
  const masks = specs.includes('maskMap') ? new CocoEvaluator('segm') : undefined;
  // Read off the event loop: a Mask R-CNN's masks of a batch are megabytes.
  const read = async (t: Tensor | undefined) => (t === undefined ? undefined : ((await t.read()) as ArrayLike<number | bigint> as ArrayLike<number>));
  for await (const batch of batches as AsyncIterable<Batch>) {
    const targets = batch.target as Record<string, Tensor>[];
    if (!Array.isArray(targets) || !targets.every((t) => t !== null && typeof t === 'object' && t.boxes instanceof Tensor && t.labels instanceof Tensor))
      throw typeError('a list of per-image { boxes, labels } targets (as data.coco and data.voc make)', 'batch.target', batch.target);
    const { outputs } = await handle.evalBatch(batchArgs(batch.input as BatchInput, 'batch.input'), null, null, undefined, 'outputs');
    const output = wrapOutput(outputs, (op) => op());
    try {
      const detections = detectionsIn(output);
      if (detections.length !== targets.length)
        throw new TorchError('TORCHLITE_UNSUPPORTED_OUTPUT', `the detector returned ${detections.length} images' detections for a batch of ${targets.length} targets`);
      for (const [i, d] of detections.entries()) {
        const t = targets[i];
        const [gtBoxes, gtLabels, iscrowd, area, dtBoxes, dtLabels, scores] = await Promise.all([t.boxes, t.labels, t.iscrowd, t.area, d.boxes, d.labels, d.scores].map(read));
        const truth = { boxes: gtBoxes!, labels: gtLabels!, iscrowd, area };
        const found = { boxes: dtBoxes!, labels: dtLabels!, scores: scores! };
        boxes?.add(truth, found);
        if (masks) {
          if (!(t.masks instanceof Tensor) || !(d.masks instanceof Tensor)) throw misuse('TORCHLITE_BAD_ARGUMENT', "'maskMap' needs masks in the targets (read with masks: true) and a detector that predicts them (Mask R-CNN)");
          const [height, width] = t.masks.shape.slice(-2);
          masks.add({ ...truth, masks: await read(t.masks) }, { ...found, masks: await read(d.masks) }, { height, width });
        }
      }
    } finally {
      for (const t of inputTensors(output as ModelInput)) t.dispose();
    }
  }
  if ((boxes ?? masks)!.images === 0) throw new RangeError('Expected at least one batch for `batches` but received none');
  const out: Metrics = {};
  if (boxes) {
    const s = boxes.summary();
    Object.assign(out, { map: s.map, map50: s.map50, map75: s.map75, mapSmall: s.mapSmall, mapMedium: s.mapMedium, mapLarge: s.mapLarge, mar100: s.mar100 });
  }
  if (masks) {
    const s = masks.summary();
    Object.assign(out, { maskMap: s.map, maskMap50: s.map50, maskMap75: s.map75 });
  }
  return out;
}
