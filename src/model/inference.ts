// Evaluation: the options, the checks made at the call, and the pass that one queued
// operation runs over the batches (summed over ranks for a sharded loader).
import { TorchError } from '../errors';
import { Loss } from '../loss';
import { MetricAccumulator, type Metrics, type MetricSpec } from '../metrics';
import type { NativeModel } from '../native';
import { classNamesOf } from '../preprocess';
import { Tensor } from '../tensor';
import { checkOneOf, checkOptions, checkPositiveInteger, typeError } from '../validate';
import { type Batch, batchArgs, type BatchInput } from './io';
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
  if (o.loss?.fromModel) throw new TypeError('evaluate() computes a loss from the outputs; a model that computes its own (loss.fromModel()) does so in train mode, in trainStep');
  const classification = o.loss === undefined || o.loss.classifies;
  const specs = o.metrics ?? (o.loss && classification ? (['accuracy'] as MetricSpec[]) : []);
  if (!Array.isArray(specs)) throw typeError('an array of metrics', 'options.metrics', specs);
  specs.forEach((spec, i) => {
    if (typeof spec === 'object' && spec !== null && 'topK' in spec) checkPositiveInteger(spec.topK, `options.metrics[${i}].topK`);
    else checkOneOf(spec, `options.metrics[${i}]`, ['accuracy', 'f1', 'confusionMatrix', 'mae', 'mse'] as const);
  });
  if (batches === null || typeof batches !== 'object' || !(Symbol.iterator in batches || Symbol.asyncIterator in batches))
    throw typeError('an iterable of { input, target } batches', 'batches', batches);
  checkSameClasses(model, (batches as { dataset?: { classes?: string[] } }).dataset?.classes);
  const metrics = new MetricAccumulator(specs);
  const lossSpec = o.loss?.spec ?? null;
  const shard = (batches as Partial<Record<typeof kShardGroup, ShardGroup>>)[kShardGroup];
  const turn = shard?.turn();
  const pass = async (handle: NativeModel): Promise<Metrics> => {
    let lossSum = 0;
    let samples = 0;
    let classes = 0;
    for await (const batch of batches as AsyncIterable<PaddedBatch>) {
      const args = batchArgs(batch.input as BatchInput, 'batch.input');
      const padding = batch.padding ?? 0;
      const keep = padding > 0 ? (batch.target as Tensor).shape[0] - padding : undefined;
      const { scores, shape, targets, loss } = await handle.evalBatch(args, Tensor.handle(batch.target as Tensor), lossSpec, keep);
      const n = shape[0] ?? 1;
      if (loss !== undefined) lossSum += loss * n;
      samples += n;
      classes = Math.max(classes, shape[1] ?? 1);
      if (specs.length > 0 && n > 0) metrics.add(scores, targets!, shape[1] ?? 1);
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
