// Detection data: COCO-format JSON and Pascal VOC XML read into per-image records, decoded by
// sharp with augmentations that move boxes and masks with the pixels, and collated as
// torchvision's detection collate does (lists, not stacked).
import { readdir, readFile } from 'node:fs/promises';
import { basename, extname, join } from 'node:path';

import { readError, TorchError } from '../errors';
import { type TensorList, tensorList } from '../model/io';
import { type Tensor, tensor } from '../tensor';
import { checkOptions, checkString, typeError } from '../validate';
import type { Dataset, Sample, TargetParts } from './dataset';
import { chwFloats } from './images';
import { checkCropFlip, decodeRle, type Placement, placeBoxes, placeMask, polygonMask, randomCrop, type Rle } from './masks';
import { mix, rng } from './random';

/** Geometric augmentation of detection images; boxes and masks move with the pixels. */
export interface DetectionAugment {
  /** Mirrors left-right with probability 0.5. Defaults to `true`. */
  flip?: boolean;
  /**
   * Crops a random rectangle whose sides are each a random share in [`crop`, 1] of the
   * image's; boxes are clipped to it, and those left without area are dropped. Defaults to
   * `1` (no crop).
   */
  crop?: number;
  /** Rescales by a random factor in [min, max] (after the crop). Defaults to `[1, 1]`. */
  scale?: [number, number];
}

export interface DetectionDataOptions {
  /** The folder the annotations' file names are relative to. Defaults to the annotation file's folder (COCO) or `<dir>/JPEGImages` (VOC). */
  images?: string;
  /** Reads each object's mask (COCO polygons or RLE), for Mask R-CNN; VOC has none. Defaults to `false`. */
  masks?: boolean;
  /**
   * Random augmentation, seeded per epoch: `'default'` (or `true`) mirrors half the images as
   * torchvision's detection reference does (`hflip`); an object sets flips, crops and
   * rescaling; `'none'` (or `false`) none. Defaults to `'none'`.
   */
  augment?: 'none' | 'default' | boolean | DetectionAugment;
  /**
   * The class names in label order, label 0 being the background. Defaults to
   * `'__background__'` then COCO's categories by id, or VOC's object names sorted.
   * An object whose class is not listed is a `TORCHLITE_BAD_ANNOTATION` error.
   */
  classes?: string[];
  /** VOC: the image list `ImageSets/Main/<split>.txt` to read. Defaults to every file in `Annotations/`. */
  split?: string;
}

/** One image and its objects, as read from the annotations. */
interface ImageRecord {
  file: string;
  width: number;
  height: number;
  boxes: number[]; // x1, y1, x2, y2 in pixels
  labels: number[];
  crowd: number[];
  area: number[];
  /** Each object's mask, decoded on use. */
  masks?: (() => Uint8Array)[];
}

/** The input of a detection batch: the images, of any sizes, as one `List[Tensor]` argument. */
export type DetectionInput = [TensorList];

/** One image's target, as torchvision's detection models take it. */
export type DetectionTarget = {
  /** `[n, 4]` float32, `x1, y1, x2, y2` in pixels. */
  boxes: Tensor;
  /** `[n]` int64, 1 and up (0 is the background). */
  labels: Tensor;
  /** `[n]` int64, 1 for a crowd region (COCO) or a difficult object (VOC): not scored. */
  iscrowd: Tensor;
  /** `[n]` float32, the objects' areas (COCO's `area`, else the box's), for mAP's size ranges. */
  area: Tensor;
  /** `[n, H, W]` uint8, with `masks: true`. */
  masks?: Tensor;
};

const BACKGROUND = '__background__';

function badAnnotation(message: string): TorchError {
  return new TorchError('TORCHLITE_BAD_ANNOTATION', message);
}

async function readText(file: string, what: string): Promise<string> {
  let text;
  try {
    text = await readFile(file, 'utf8');
  } catch (error) {
    throw readError(error, `cannot read ${what} ${file}`);
  }
  if (text.trim() === '') throw new TorchError('TORCHLITE_BAD_DATA', `${what} ${file} is empty`);
  return text;
}

/**
 * A box given as `[x1, y1, x2, y2]`, checked against its image: one reaching more than a
 * pixel outside is an error (the annotation or the image is wrong); within a pixel, it is
 * clipped, as rounding in annotation tools leaves it.
 */
function checkBox(box: number[], width: number, height: number, where: string): number[] {
  const [x1, y1, x2, y2] = box;
  if (!box.every(Number.isFinite) || x2 < x1 || y2 < y1) throw badAnnotation(`${where}: the box [${box.join(', ')}] is not a box (x2 ≥ x1, y2 ≥ y1)`);
  if (x1 < -1 || y1 < -1 || x2 > width + 1 || y2 > height + 1)
    throw badAnnotation(`${where}: the box [${box.map((v) => Math.round(v * 10) / 10).join(', ')}] lies outside the ${width}×${height} image; fix the annotation, or the image's width and height`);
  return [Math.max(0, x1), Math.max(0, y1), Math.min(width, x2), Math.min(height, y2)];
}

function resolveClasses(found: string[], given: string[] | undefined): string[] {
  if (given === undefined) return [BACKGROUND, ...found];
  if (!Array.isArray(given) || given.some((c) => typeof c !== 'string')) throw typeError('an array of class names', 'options.classes', given);
  return given;
}

/**
 * A COCO-format detection dataset: `annotations` is the JSON file (`images`, `annotations`
 * with `bbox` as `[x, y, width, height]`, and `categories`), the images in `options.images`.
 * Categories become labels 1…K by id (0 is the background); boxes become `[x1, y1, x2, y2]`.
 * Boxes without area are dropped, as torchvision's reference does. A box outside its image,
 * an unknown image or category, or an empty file is a coded error naming the annotation.
 */
export async function coco(annotations: string, options?: DetectionDataOptions): Promise<Dataset<DetectionInput, DetectionTarget[]>> {
  checkString(annotations, 'annotations');
  const o = checkOptions<DetectionDataOptions>(options, 'options', ['images', 'masks', 'augment', 'classes']);
  const text = await readText(annotations, 'COCO annotation file');
  let json: { images?: unknown; annotations?: unknown; categories?: unknown };
  try {
    json = JSON.parse(text);
  } catch (error) {
    throw new TorchError('TORCHLITE_BAD_DATA', `COCO annotation file ${annotations} is not JSON: ${(error as Error).message}`);
  }
  for (const key of ['images', 'annotations', 'categories'] as const)
    if (!Array.isArray(json[key])) throw new TorchError('TORCHLITE_BAD_DATA', `COCO annotation file ${annotations} has no \`${key}\` array`);
  const categories = (json.categories as { id: number; name: string }[]).slice().sort((a, b) => a.id - b.id);
  const classes = resolveClasses(categories.map((c) => c.name), o.classes);
  const labelOf = new Map<number, number>();
  for (const c of categories) {
    const label = classes.indexOf(c.name);
    if (label > 0) labelOf.set(c.id, label);
  }
  const folder = o.images ?? join(annotations, '..');
  const records = new Map<number, ImageRecord>();
  for (const image of json.images as { id: number; file_name: string; width: number; height: number }[]) {
    if (typeof image.file_name !== 'string' || !(image.width > 0) || !(image.height > 0))
      throw badAnnotation(`image ${JSON.stringify(image.id)} in ${annotations} needs a file_name, width and height`);
    records.set(image.id, { file: join(folder, image.file_name), width: image.width, height: image.height, boxes: [], labels: [], crowd: [], area: [], ...(o.masks && { masks: [] }) });
  }
  for (const a of json.annotations as { id: number; image_id: number; category_id: number; bbox: number[]; iscrowd?: number; area?: number; segmentation?: unknown }[]) {
    const record = records.get(a.image_id);
    const where = `annotation ${a.id} in ${annotations}`;
    if (!record) throw badAnnotation(`${where} refers to image ${a.image_id}, which \`images\` does not list`);
    if (!categories.some((c) => c.id === a.category_id)) throw badAnnotation(`${where} has category ${a.category_id}, which \`categories\` does not list`);
    const label = labelOf.get(a.category_id);
    if (label === undefined) {
      const name = categories.find((c) => c.id === a.category_id)!.name;
      throw badAnnotation(`${where} has category '${name}', which \`options.classes\` does not list`);
    }
    if (!Array.isArray(a.bbox) || a.bbox.length !== 4) throw badAnnotation(`${where} needs a bbox [x, y, width, height]`);
    const [x, y, w, h] = a.bbox;
    const box = checkBox([x, y, x + w, y + h], record.width, record.height, `${where} (image ${record.file})`);
    if (box[2] <= box[0] || box[3] <= box[1]) continue;
    record.boxes.push(...box);
    record.labels.push(label);
    record.crowd.push(a.iscrowd ? 1 : 0);
    record.area.push(typeof a.area === 'number' && a.area > 0 ? a.area : (box[2] - box[0]) * (box[3] - box[1]));
    if (record.masks) record.masks.push(maskReader(a.segmentation, record.height, record.width, where));
  }
  return detectionDataset([...records.values()], classes, o, annotations);
}

/** An object's mask from COCO's `segmentation`: polygons, or RLE (counts as numbers or compressed). */
function maskReader(segmentation: unknown, height: number, width: number, where: string): () => Uint8Array {
  if (Array.isArray(segmentation)) {
    if (segmentation.length === 0 || !segmentation.every((p) => Array.isArray(p) && p.length >= 6 && p.length % 2 === 0 && p.every(Number.isFinite)))
      throw badAnnotation(`${where} has a segmentation that is not a list of polygons [x1, y1, x2, y2, x3, y3, …]`);
    return () => polygonMask(segmentation as number[][], height, width);
  }
  const rle = segmentation as Rle | null;
  if (rle === null || typeof rle !== 'object' || !Array.isArray(rle.size) || !(typeof rle.counts === 'string' || Array.isArray(rle.counts)))
    throw badAnnotation(`${where} has no segmentation (polygons or RLE); read without masks: true, or add one`);
  if (rle.size[0] !== height || rle.size[1] !== width) throw badAnnotation(`${where} has an RLE mask of ${rle.size[0]}×${rle.size[1]} for a ${height}×${width} image`);
  return () => {
    try {
      return decodeRle(rle);
    } catch (error) {
      throw badAnnotation(`${where} has a broken RLE mask: expected ${(error as Error).message}`);
    }
  };
}

/** The text of `<tag>` in `xml` (the first one), or undefined. */
function tagText(xml: string, tag: string): string | undefined {
  return new RegExp(`<${tag}>\\s*([^<]*?)\\s*</${tag}>`).exec(xml)?.[1];
}

/**
 * A Pascal VOC detection dataset: `dir` holds `Annotations/*.xml` and `JPEGImages/`.
 * Coordinates are VOC's 1-based pixel indices, made 0-based edges as Detectron2 reads them
 * (`xmin − 1, ymin − 1, xmax, ymax`). `difficult` objects are marked `iscrowd`, so mAP
 * neither rewards nor punishes them, as VOC's own evaluation does.
 */
export async function voc(dir: string, options?: DetectionDataOptions): Promise<Dataset<DetectionInput, DetectionTarget[]>> {
  checkString(dir, 'dir');
  const o = checkOptions<DetectionDataOptions>(options, 'options', ['images', 'augment', 'classes', 'split']);
  const annotationsDir = join(dir, 'Annotations');
  let files: string[];
  if (o.split !== undefined) {
    const list = await readText(join(dir, 'ImageSets', 'Main', `${checkString(o.split, 'options.split')}.txt`), 'VOC image list');
    files = list.split(/\r?\n/).map((line) => line.trim().split(/\s+/)[0]).filter(Boolean).map((id) => `${id}.xml`);
  } else {
    try {
      files = (await readdir(annotationsDir)).filter((f) => extname(f) === '.xml').sort();
    } catch (error) {
      throw readError(error, `cannot read VOC annotations folder ${annotationsDir}`);
    }
  }
  if (files.length === 0) throw new TorchError('TORCHLITE_BAD_DATA', `${annotationsDir} has no .xml annotations`);
  const parsed = await Promise.all(
    files.map(async (f) => {
      const file = join(annotationsDir, f);
      const xml = await readText(file, 'VOC annotation');
      const width = Number(tagText(xml, 'width'));
      const height = Number(tagText(xml, 'height'));
      if (!(width > 0) || !(height > 0)) throw badAnnotation(`${file} has no <size> with a positive <width> and <height>`);
      const objects = [...xml.matchAll(/<object>([\s\S]*?)<\/object>/g)].map((m, k) => {
        const body = m[1];
        const name = tagText(body, 'name');
        const box = ['xmin', 'ymin', 'xmax', 'ymax'].map((tag) => Number(tagText(body, tag)));
        if (name === undefined || box.some((v) => !Number.isFinite(v))) throw badAnnotation(`object ${k} in ${file} needs a <name> and a <bndbox> with xmin, ymin, xmax and ymax`);
        return { name, box: [box[0] - 1, box[1] - 1, box[2], box[3]], difficult: tagText(body, 'difficult') === '1', where: `object ${k} ('${name}') in ${file}` };
      });
      return { file: join(o.images ?? join(dir, 'JPEGImages'), tagText(xml, 'filename') ?? `${basename(f, '.xml')}.jpg`), width, height, objects };
    }),
  );
  const classes = resolveClasses([...new Set(parsed.flatMap((p) => p.objects.map((obj) => obj.name)))].sort(), o.classes);
  const records = parsed.map((p): ImageRecord => {
    const record: ImageRecord = { file: p.file, width: p.width, height: p.height, boxes: [], labels: [], crowd: [], area: [] };
    for (const obj of p.objects) {
      const label = classes.indexOf(obj.name);
      if (label <= 0) throw badAnnotation(`${obj.where} has class '${obj.name}', which \`options.classes\` does not list`);
      const box = checkBox(obj.box, p.width, p.height, obj.where);
      if (box[2] <= box[0] || box[3] <= box[1]) continue;
      record.boxes.push(...box);
      record.labels.push(label);
      record.crowd.push(obj.difficult ? 1 : 0);
      record.area.push((box[2] - box[0]) * (box[3] - box[1]));
    }
    return record;
  });
  return detectionDataset(records, classes, o, dir);
}

/** The augmentation an option asks for, checked; null for none. */
function augmentOf(value: DetectionDataOptions['augment']): Required<DetectionAugment> | null {
  if (value === undefined || value === false || value === 'none') return null;
  if (value === true || value === 'default') return { flip: true, crop: 1, scale: [1, 1] };
  if (value === null || typeof value !== 'object') throw typeError("'none', 'default', a boolean or { flip, crop, scale }", 'options.augment', value);
  const a = checkOptions<DetectionAugment>(value, 'options.augment', ['flip', 'crop', 'scale']);
  const scale = a.scale ?? [1, 1];
  if (!Array.isArray(scale) || scale.length !== 2 || !scale.every((v) => Number.isFinite(v) && v > 0) || scale[0] > scale[1])
    throw typeError('[min, max] positive factors', 'options.augment.scale', a.scale);
  return { ...checkCropFlip(a, 1), scale: [scale[0], scale[1]] };
}

/** Where `augment` takes an image of `width` × `height` (no change without it). */
function placementOf(width: number, height: number, augment: Required<DetectionAugment> | null, random: () => number): Placement {
  if (!augment) return { crop: { left: 0, top: 0, width, height }, width, height, flip: false };
  const crop = randomCrop(width, height, augment.crop, random);
  const factor = augment.scale[0] + random() * (augment.scale[1] - augment.scale[0]);
  return { crop, width: Math.max(1, Math.round(crop.width * factor)), height: Math.max(1, Math.round(crop.height * factor)), flip: augment.flip && random() < 0.5 };
}

function detectionDataset(records: ImageRecord[], classes: string[], o: DetectionDataOptions, source: string): Dataset<DetectionInput, DetectionTarget[]> {
  if (records.length === 0) throw new TorchError('TORCHLITE_BAD_DATA', `${source} lists no images`);
  const masks = o.masks === true;
  const augmentation = augmentOf(o.augment);
  const dataset = (augment: Required<DetectionAugment> | null): Dataset<DetectionInput, DetectionTarget[]> => ({
    length: records.length,
    inputShape: [3, -1, -1],
    targetShape: [],
    classes,
    metrics: masks ? ['map', 'maskMap'] : ['map'],
    target: (i) => records[i].labels[0] ?? 0,
    describe: (i) => records[i].file,
    ...(augment && { withoutAugmentation: () => dataset(null) }),
    get: (i, epoch) => detectionSample(records[i], placementOf(records[i].width, records[i].height, augment, rng(mix(i, epoch, 0x5bd1e995))), masks),
    collate: (_, samples) => [tensorList(samples.map((s) => tensor(s.input as Float32Array, s.shape!)))],
    collateTargets: (targets) =>
      (targets as TargetParts[]).map((parts) => Object.fromEntries(Object.entries(parts).map(([name, part]) => [name, tensor(part.data, part.shape)])) as DetectionTarget),
  });
  return dataset(augmentation);
}

/** One image decoded and placed, as [0, 1] RGB floats (torchvision's detectors normalise inside), with its objects placed alike. */
async function detectionSample(record: ImageRecord, placement: Placement, masks: boolean): Promise<Sample> {
  const { default: sharp } = await import('sharp');
  const meta = await sharp(record.file).metadata();
  if (meta.width !== record.width || meta.height !== record.height)
    throw badAnnotation(`the image is ${meta.width}×${meta.height} but its annotations say ${record.width}×${record.height}`);
  const { crop, width, height, flip } = placement;
  let image = sharp(record.file, { failOn: 'error' }).removeAlpha().toColourspace('srgb');
  if (crop.width !== record.width || crop.height !== record.height) image = image.extract(crop);
  if (width !== crop.width || height !== crop.height) image = image.resize(width, height, { fit: 'fill' });
  if (flip) image = image.flop();
  const { data, info } = await image.raw().toBuffer({ resolveWithObject: true });
  const pixels = width * height;
  const input = chwFloats(data, info.channels, 3);
  const { boxes, kept } = placeBoxes(record.boxes, placement);
  const n = kept.length;
  const target: TargetParts = {
    boxes: { data: Float32Array.from(boxes), shape: [n, 4] },
    labels: { data: BigInt64Array.from(kept, (k) => BigInt(record.labels[k])), shape: [n] },
    iscrowd: { data: BigInt64Array.from(kept, (k) => BigInt(record.crowd[k])), shape: [n] },
    // Areas scale with the pixels, and a box the crop cut shrinks to at most its own area.
    area: { data: Float32Array.from(kept, (k, j) => Math.min((record.area[k] * width * height) / (crop.width * crop.height), (boxes[4 * j + 2] - boxes[4 * j]) * (boxes[4 * j + 3] - boxes[4 * j + 1]))), shape: [n] },
  };
  if (masks) {
    const bitmaps = new Uint8Array(n * pixels);
    kept.forEach((k, j) => bitmaps.set(placeMask(record.masks![k](), record.width, placement), j * pixels));
    target.masks = { data: bitmaps, shape: [n, height, width] };
  }
  return { input, target, shape: [3, height, width] };
}
