// The CLI's detection and segmentation: fine-tuning on COCO/VOC data or mask folders, and
// predictions printed as boxes or written as mask PNGs. Public API only.
import { stat } from 'node:fs/promises';
import { basename, extname, join } from 'node:path';
import sharp from 'sharp';

import { data, type Dataset, fineTune, loadPretrained, loss as losses, manualSeed, type Model, type ModelOutput, progressBar, type Tensor, tensorList } from '..';
import type { FinetuneFlags } from './finetune';
import { intFlag, numberFlag } from './flags';

/** A COCO JSON file, or a VOC folder (one with `Annotations/`). */
async function detectionData(spec: string, masks: boolean, augment: boolean, classes?: string[]): Promise<Dataset<data.DetectionInput, data.DetectionTarget[]>> {
  const isDir = await stat(spec).then((s) => s.isDirectory(), () => false);
  const common = { augment, ...(classes && { classes }) };
  return isDir ? data.voc(spec, common) : data.coco(spec, { ...common, masks });
}

/** What the run did, printed or as JSON. */
function report(flags: FinetuneFlags, summary: Record<string, unknown>, line: string): void {
  if (flags.json) console.log(JSON.stringify(summary));
  else console.log(line);
}

/**
 * `finetune --task detect`: a torchvision R-CNN (or any detector computing its own losses)
 * on COCO or VOC data; its predictors are sized for the data's classes, the heads train
 * first, then the whole detector. Validation reports COCO mAP.
 */
export async function finetuneDetector(flags: FinetuneFlags): Promise<void> {
  const seed = intFlag(flags.seed, '--seed', 0);
  manualSeed(seed);
  await using model = await loadPretrained(flags.model, { device: flags.device as 'cpu', ...(flags.weights && { weights: flags.weights }) });
  const masks = model.modules().some((m) => m.path === 'roi_heads.mask_predictor');
  const train = await detectionData(flags.data, masks, flags.augment !== 'none');
  const parts = flags.val ? { train, val: await detectionData(flags.val, masks, false, train.classes) } : data.split(train, { val: 0.1, seed });
  const batchSize = intFlag(flags.batchSize, '--batch-size');
  const history = await fineTune(model, {
    train: data.loader(parts.train, { batchSize, shuffle: true, seed }),
    val: data.loader(parts.val, { batchSize }),
    numClasses: train.classes!.length,
    loss: losses.fromModel(),
    // Detectors diverge at the classifier default of 1e-2 (AdamW on every head).
    lr: flags.lr === undefined ? 1e-4 : numberFlag(flags.lr, '--lr'),
    ...(flags.freezeEpochs !== undefined && { freezeEpochs: intFlag(flags.freezeEpochs, '--freeze-epochs', 0) }),
    ...(flags.epochs !== undefined && { epochs: intFlag(flags.epochs, '--epochs', 0) }),
    callbacks: [progressBar({ enabled: !flags.json, batchSize })],
  });
  const final = history.at(-1)?.val ?? {};
  await model.save(flags.out, { metadata: { ...(model.metadata as object), task: 'detect', recipe: { command: 'torchlite finetune --task detect', data: flags.data, lr: history.lr, freezeEpochs: history.freezeEpochs, epochs: history.epochs, seed, val: final } } });
  const percent = (v: number | undefined) => (v === undefined || v < 0 ? 'n/a' : `${(v * 100).toFixed(1)}`);
  report(flags, { out: flags.out, classes: train.classes, lr: history.lr, history, final }, `validation mAP ${percent(final.map)} (AP50 ${percent(final.map50)}, AP75 ${percent(final.map75)})${final.maskMap === undefined ? '' : `, mask mAP ${percent(final.maskMap)}`}, saved ${flags.out}`);
}

/**
 * `finetune --task segment`: a torchvision segmentation model (FCN, DeepLabV3, LR-ASPP) on
 * image and mask folders; its classifier convolutions are sized for `--classes`, the loss is
 * per-pixel cross-entropy ignoring 255, with the auxiliary output at 0.5 where there is one.
 */
export async function finetuneSegmenter(flags: FinetuneFlags & { masks?: string; size?: string }): Promise<void> {
  if (!flags.masks) throw new TypeError('finetune --task segment needs --masks <dir>: the mask PNGs (class indices), named as the images in --data');
  if (!flags.classes) throw new TypeError('finetune --task segment needs --classes <names>: the class names in mask-value order, e.g. background,road,car');
  const classes = flags.classes.split(',');
  const seed = intFlag(flags.seed, '--seed', 0);
  manualSeed(seed);
  await using model = await loadPretrained(flags.model, { device: flags.device as 'cpu', ...(flags.weights && { weights: flags.weights }) });
  const size = flags.size === undefined ? 224 : intFlag(flags.size, '--size');
  const train = await data.segmentation(flags.data, flags.masks, { size, classes, augment: flags.augment !== 'none' });
  const { train: fitOn, val } = data.split(train, { val: 0.1, seed });
  const batchSize = intFlag(flags.batchSize, '--batch-size');
  const aux = model.modules().some((m) => m.path === 'aux_classifier');
  const history = await fineTune(model, {
    train: data.loader(fitOn, { batchSize, shuffle: true, seed }),
    val: data.loader(val, { batchSize }),
    numClasses: classes.length,
    loss: losses.crossEntropy({ ignoreIndex: 255, ...(aux && { outputs: { out: 1, aux: 0.5 } }) }),
    ...(flags.lr !== undefined && { lr: numberFlag(flags.lr, '--lr') }),
    ...(flags.freezeEpochs !== undefined && { freezeEpochs: intFlag(flags.freezeEpochs, '--freeze-epochs', 0) }),
    ...(flags.epochs !== undefined && { epochs: intFlag(flags.epochs, '--epochs', 0) }),
    callbacks: [progressBar({ enabled: !flags.json, batchSize })],
  });
  const final = history.at(-1)?.val ?? {};
  await model.save(flags.out, { metadata: { ...(model.metadata as object), task: 'segment', recipe: { command: 'torchlite finetune --task segment', data: flags.data, lr: history.lr, seed, val: final } } });
  report(flags, { out: flags.out, classes, lr: history.lr, history, final }, `validation mIoU ${((final.miou ?? 0) * 100).toFixed(1)}, pixel accuracy ${((final.accuracy ?? 0) * 100).toFixed(1)}%, saved ${flags.out}`);
}

/** The per-image detections in a detector's eval output, if it is one. */
function detectionsOf(output: ModelOutput): Record<string, Tensor>[] | undefined {
  const isList = (value: ModelOutput): value is ModelOutput[] => Array.isArray(value) && value.length > 0 && value.every((d) => d !== null && typeof d === 'object' && !Array.isArray(d) && 'boxes' in d);
  if (isList(output)) return output as Record<string, Tensor>[];
  if (Array.isArray(output) && output.length === 2 && isList(output[1])) return output[1] as Record<string, Tensor>[];
  return undefined;
}

/**
 * Predictions of a detector (boxes above `--threshold`) or a segmenter (a mask PNG per image
 * in `--masks-dir`); `undefined` when the model is neither, for the classifier's path.
 */
export async function predictDenseTask(model: Model, images: string[], flags: { threshold?: string; masksDir?: string; json?: boolean }): Promise<boolean> {
  const task = (model.metadata as { task?: string } | null)?.task;
  const names = (model.metadata as { classes?: string[] } | null)?.classes;
  if (task === 'segment') {
    const input = await data.loadImage(images, { like: model });
    const output = (await model.forward(input)) as Record<string, Tensor>;
    const scores = output.out ?? (output as unknown as Tensor);
    const [n, classes, h, w] = scores.shape;
    const values = (await scores.read()) as Float32Array;
    // Each pixel's most likely class.
    const labels = new Uint8Array(n * h * w);
    for (let i = 0; i < n; i++)
      for (let p = 0; p < h * w; p++) {
        let best = 0;
        for (let c = 1; c < classes; c++) if (values[(i * classes + c) * h * w + p] > values[(i * classes + best) * h * w + p]) best = c;
        labels[i * h * w + p] = best;
      }
    const dir = flags.masksDir ?? '.';
    const results = [];
    for (let i = 0; i < n; i++) {
      const file = join(dir, `${basename(images[i], extname(images[i]))}.mask.png`);
      const mask = labels.subarray(i * h * w, (i + 1) * h * w);
      await sharp(Buffer.from(mask), { raw: { width: w, height: h, channels: 1 } }).toColourspace('b-w').png().toFile(file);
      const counts = names?.map((name, c) => ({ class: name, share: mask.filter((v) => v === c).length / mask.length }));
      results.push({ file: images[i], mask: file, ...(counts && { classes: counts }) });
    }
    if (flags.json) console.log(JSON.stringify(results));
    else results.forEach((r) => console.log(`${r.file}: mask ${r.mask}${r.classes ? ` (${r.classes.filter((c) => c.share > 0).map((c) => `${c.class} ${(c.share * 100).toFixed(1)}%`).join(', ')})` : ''}`));
    return true;
  }
  if (task !== 'detect') return false;
  const threshold = flags.threshold === undefined ? 0.5 : Number(flags.threshold);
  if (!(threshold >= 0 && threshold <= 1)) throw new RangeError(`Expected a score from 0 to 1 for \`--threshold\` but received '${flags.threshold}'`);
  const inputs = await Promise.all(images.map((image) => data.readImage(image)));
  const detections = detectionsOf(await model.forward(tensorList(inputs)));
  if (!detections) throw new TypeError(`${images.length} images gave no per-image detections: is the model a detector?`);
  const read = async (t: Tensor) => Array.from((await t.read()) as ArrayLike<number | bigint>, Number);
  const results = await Promise.all(
    detections.map(async (d, i) => {
      const [boxes, labels, scores] = await Promise.all([read(d.boxes), read(d.labels), read(d.scores)]);
      const objects = scores.flatMap((score, k) => (score < threshold ? [] : [{ label: names?.[labels[k]] ?? String(labels[k]), score, box: boxes.slice(4 * k, 4 * k + 4).map((v) => Math.round(v * 10) / 10) }]));
      return { file: images[i], objects };
    }),
  );
  if (flags.json) console.log(JSON.stringify(results));
  else results.forEach((r) => console.log(`${r.file}: ${r.objects.length === 0 ? 'nothing' : r.objects.map((o) => `${o.label} ${(o.score * 100).toFixed(0)}% [${o.box.join(', ')}]`).join('; ')}`));
  return true;
}
