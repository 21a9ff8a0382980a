// Semantic segmentation data: a folder of images and a folder of masks holding class indices
// per pixel, decoded and augmented together so every label stays on its pixel.
import { readdir, readFile } from 'node:fs/promises';
import { basename, extname, join } from 'node:path';

import { readError, TorchError } from '../errors';
import { defaultNormalisation } from '../preprocess';
import { type Tensor, tensor } from '../tensor';
import { checkFiniteNumber, checkInteger, checkOptions, checkPositiveInteger, checkString, rangeError, typeError } from '../validate';
import type { Dataset, Sample, TargetParts } from './dataset';
import { chwFloats } from './images';
import { checkCropFlip, type Placement, placeMask, randomCrop } from './masks';
import { pngIndices } from './png';
import { mix, rng } from './random';

const IMAGE_EXTENSIONS = new Set(['.png', '.jpg', '.jpeg', '.webp', '.tif', '.tiff', '.bmp']);

export interface SegmentationAugment {
  /** Mirrors left-right with probability 0.5. Defaults to `true`. */
  flip?: boolean;
  /** Crops a random rectangle whose sides are each a random share in [`crop`, 1] of the image's, before the resize. Defaults to `0.5`. */
  crop?: number;
}

export interface SegmentationDataOptions {
  /** Side of the square input and mask, in pixels. Defaults to `224`. */
  size?: number;
  /** Per-channel mean subtracted after scaling to [0, 1]. Defaults to ImageNet's, as torchvision's segmentation weights expect. */
  mean?: number[];
  /** Per-channel std. Defaults to ImageNet's. */
  std?: number[];
  /**
   * Class names in index order: mask value `i` is `classes[i]`. A mask value beyond them
   * (other than `ignoreIndex`) is a `TORCHLITE_BAD_ANNOTATION` error. Defaults to none (any
   * value is taken).
   */
  classes?: string[];
  /** The mask value of pixels that count for nothing (borders, unlabelled): pass the same to `loss.crossEntropy`. Defaults to `255`, as Pascal VOC's masks use. */
  ignoreIndex?: number;
  /**
   * Random augmentation, seeded per epoch, applied to image and mask alike: `'default'` (or
   * `true`) crops 50–100% of each side and mirrors half the images; an object sets both;
   * `'none'` (or `false`) none. Without it (and for validation), the short side is scaled to
   * `size` and the centre cropped, as `loadImage` prepares images. Defaults to `'none'`.
   */
  augment?: 'none' | 'default' | boolean | SegmentationAugment;
}

function augmentOf(value: SegmentationDataOptions['augment']): Required<SegmentationAugment> | null {
  if (value === undefined || value === false || value === 'none') return null;
  if (value === true || value === 'default') return { flip: true, crop: 0.5 };
  if (value === null || typeof value !== 'object') throw typeError("'none', 'default', a boolean or { flip, crop }", 'options.augment', value);
  return checkCropFlip(checkOptions<SegmentationAugment>(value, 'options.augment', ['flip', 'crop']), 0.5);
}

/** Where an image of `width` × `height` goes: a random crop and flip with `augment`, else the centre square; then `size` × `size`. */
function placementOf(width: number, height: number, size: number, augment: Required<SegmentationAugment> | null, random: () => number): Placement {
  if (!augment) {
    const side = Math.min(width, height);
    return { crop: { left: Math.floor((width - side) / 2), top: Math.floor((height - side) / 2), width: side, height: side }, width: size, height: size, flip: false };
  }
  return { crop: randomCrop(width, height, augment.crop, random), width: size, height: size, flip: augment.flip && random() < 0.5 };
}

/**
 * Images in `imagesDir` and their masks in `masksDir`, paired by name (`a.jpg` with
 * `a.png`). A mask is an 8-bit greyscale or palette PNG whose values are class indices (as
 * Pascal VOC's `SegmentationClass` holds them). Batches are normalised images `[B, 3, size,
 * size]` and int64 masks `[B, size, size]`, for `loss.crossEntropy({ ignoreIndex: 255 })`;
 * `evaluate` scores them with mIoU and pixel accuracy.
 */
export async function segmentation(imagesDir: string, masksDir: string, options?: SegmentationDataOptions): Promise<Dataset<Tensor, Tensor>> {
  checkString(imagesDir, 'imagesDir');
  checkString(masksDir, 'masksDir');
  const o = checkOptions<SegmentationDataOptions>(options, 'options', ['size', 'mean', 'std', 'classes', 'ignoreIndex', 'augment']);
  const size = o.size === undefined ? 224 : checkPositiveInteger(o.size, 'options.size');
  const fallback = defaultNormalisation(3);
  const mean = (o.mean ?? fallback.mean).map((v, i) => checkFiniteNumber(v, `options.mean[${i}]`));
  const std = (o.std ?? fallback.std).map((v, i) => checkFiniteNumber(v, `options.std[${i}]`));
  if (mean.length !== 3 || std.length !== 3) throw new RangeError(`Expected 3 values for \`options.mean\` and \`options.std\` but received ${mean.length} and ${std.length}`);
  const ignoreIndex = o.ignoreIndex === undefined ? 255 : checkInteger(o.ignoreIndex, 'options.ignoreIndex', 0, 'an integer from 0 to 255');
  // Masks hold bytes: a larger index would never match a pixel.
  if (ignoreIndex > 255) throw rangeError('an integer from 0 to 255', 'options.ignoreIndex', ignoreIndex);
  if (o.classes !== undefined && (!Array.isArray(o.classes) || o.classes.some((c) => typeof c !== 'string'))) throw typeError('an array of class names', 'options.classes', o.classes);
  const list = async (dir: string) => {
    try {
      return (await readdir(dir)).sort();
    } catch (error) {
      throw readError(error, `cannot read folder ${dir}`);
    }
  };
  const masks = new Set((await list(masksDir)).filter((f) => extname(f).toLowerCase() === '.png'));
  const pairs = (await list(imagesDir))
    .filter((f) => IMAGE_EXTENSIONS.has(extname(f).toLowerCase()))
    .map((f) => {
      const mask = `${basename(f, extname(f))}.png`;
      if (!masks.has(mask)) throw new TorchError('TORCHLITE_BAD_DATA', `image ${join(imagesDir, f)} has no mask ${join(masksDir, mask)}`);
      return { image: join(imagesDir, f), mask: join(masksDir, mask) };
    });
  if (pairs.length === 0) throw new TorchError('TORCHLITE_BAD_DATA', `${imagesDir} has no images`);
  const spec = { size, mean, std, ignoreIndex, classes: o.classes };
  const dataset = (augment: Required<SegmentationAugment> | null): Dataset<Tensor, Tensor> => ({
    length: pairs.length,
    inputShape: [3, size, size],
    targetShape: [size, size],
    ...(o.classes && { classes: o.classes }),
    metrics: ['miou', 'accuracy'],
    preprocessing: { shape: [3, size, size], mean, std, resize: 'center-crop' },
    target: () => 0,
    describe: (i) => pairs[i].image,
    ...(augment && { withoutAugmentation: () => dataset(null) }),
    get: (i, epoch) => segmentationSample(pairs[i], spec, augment, rng(mix(i, epoch, 0x27d4eb2f))),
    collateTargets: (targets) => {
      const all = new Uint8Array(targets.length * size * size);
      targets.forEach((t, k) => all.set((t as TargetParts).mask.data as Uint8Array, k * size * size));
      return tensor(all, [targets.length, size, size], { dtype: 'int64' });
    },
  });
  return dataset(augmentOf(o.augment));
}

async function segmentationSample(
  pair: { image: string; mask: string },
  { size, mean, std, ignoreIndex, classes }: { size: number; mean: number[]; std: number[]; ignoreIndex: number; classes?: string[] },
  augment: Required<SegmentationAugment> | null,
  random: () => number,
): Promise<Sample> {
  const { default: sharp } = await import('sharp');
  let bytes;
  try {
    bytes = await readFile(pair.mask);
  } catch (error) {
    throw readError(error, `cannot read mask ${pair.mask}`);
  }
  const mask = await pngIndices(bytes).catch((error: Error) => {
    throw new TorchError('TORCHLITE_BAD_ANNOTATION', `mask ${pair.mask} is not ${error.message}`);
  });
  const meta = await sharp(pair.image).metadata();
  if (meta.width !== mask.width || meta.height !== mask.height)
    throw new TorchError('TORCHLITE_BAD_ANNOTATION', `mask ${pair.mask} is ${mask.width}×${mask.height} but its image is ${meta.width}×${meta.height}`);
  if (classes) {
    const bad = mask.data.find((v) => v >= classes.length && v !== ignoreIndex);
    if (bad !== undefined) throw new TorchError('TORCHLITE_BAD_ANNOTATION', `mask ${pair.mask} has class ${bad}, beyond the ${classes.length} classes (and not the ignore index ${ignoreIndex})`);
  }
  const placement = placementOf(mask.width, mask.height, size, augment, random);
  let image = sharp(pair.image, { failOn: 'error' }).removeAlpha().toColourspace('srgb').extract(placement.crop).resize(size, size, { fit: 'fill' });
  if (placement.flip) image = image.flop();
  const { data, info } = await image.raw().toBuffer({ resolveWithObject: true });
  return { input: chwFloats(data, info.channels, 3, mean, std), target: { mask: { data: placeMask(mask.data, mask.width, placement), shape: [size, size] } } };
}
