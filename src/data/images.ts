// Images: folders of class subfolders, decoding and augmentation through sharp.
import { readdir } from 'node:fs/promises';
import { extname, join } from 'node:path';

import { readError, TorchError } from '../errors';
import { checkFiniteNumber, checkOptions, checkPositiveInteger, checkString, typeError } from '../validate';
import { classesLike, defaultNormalisation, inputSpecOf } from '../preprocess';
import type { Dataset, Sample } from './dataset';
import { mix, rng } from './random';
import { type Tensor, tensor } from '../tensor';

/** How an image folder augments its training images (see `ImageFolderOptions.augment`). */
export type Augment = 'none' | 'light' | 'default';

/** Each augmentation's crop area and aspect ranges, and whether it flips. */
const AUGMENTS = {
  light: { scale: [0.6, 1], ratio: [9 / 10, 10 / 9], flip: false },
  default: { scale: [0.08, 1], ratio: [3 / 4, 4 / 3], flip: true },
} as const;

const IMAGE_EXTENSIONS = new Set(['.png', '.jpg', '.jpeg', '.webp', '.gif', '.tif', '.tiff', '.avif', '.bmp']);

export interface ImageFolderOptions {
  /** Side of the square input, in pixels. Defaults to `224`. */
  size?: number;
  /** The short side's length before the centre crop (torchvision's 256 for a 224 crop). Defaults to `like`'s where its size is kept, else `size`. */
  resizeTo?: number;
  /** Per-channel mean subtracted after scaling to [0, 1]. Defaults to ImageNet's `[0.485, 0.456, 0.406]` (or `[0.5]` for 1 channel). */
  mean?: number[];
  /** Per-channel std. Defaults to ImageNet's `[0.229, 0.224, 0.225]` (or `[0.5]` for 1 channel). */
  std?: number[];
  /** Colour channels: `3` (RGB) or `1` (grey). Defaults to `3`. */
  channels?: 1 | 3;
  /**
   * Random augmentation, seeded per epoch: `'default'` (or `true`) is torchvision's ImageNet
   * training crop, a random resized crop of 8–100% of the area at aspect 3/4–4/3, and a
   * horizontal flip; `'light'` crops 60–100% at aspect 9/10–10/9 and never flips, which keeps
   * digits, text and other images whose meaning a mirror or a tight crop changes; `'none'` (or
   * `false`) resizes only. Defaults to `'none'`.
   */
  augment?: Augment | boolean;
  /**
   * Class names in index order. Defaults to `like`'s class names where every subfolder is one
   * of them (a folder with some of the model's classes keeps the model's indices), else to the
   * sorted subfolder names (new classes, to fine-tune for); some of each is an error.
   */
  classes?: string[];
  /**
   * A model whose `metadata.input` (size, channels, mean, std) these images should match,
   * as torchlite writes it when it trains or exports a model; explicit options win. A
   * model without one is a `TORCHLITE_NO_INPUT_SPEC` error. Defaults to none.
   */
  like?: { readonly metadata: unknown };
}

/**
 * Images in one subfolder per class (`dir/cat/1.jpg`, `dir/dog/2.png`), decoded, resized
 * (centre crop to a square) and normalised with sharp, off the main thread.
 */
export async function imageFolder(dir: string, options?: ImageFolderOptions): Promise<Dataset> {
  checkString(dir, 'dir');
  const given = checkOptions<ImageFolderOptions>(options, 'options', ['size', 'resizeTo', 'mean', 'std', 'channels', 'augment', 'classes', 'like']);
  const o = withLike(given);
  const spec = pixelSpec(o);
  const { size, channels, mean, std } = spec;
  let entries;
  try {
    entries = await readdir(dir, { withFileTypes: true });
  } catch (error) {
    throw readError(error, `cannot read image folder ${dir}`);
  }
  const folders = entries.filter((e) => e.isDirectory()).map((e) => e.name).sort();
  const classes = o.classes ?? (given.like && classesLike(given.like, folders, 'class folders')) ?? folders;
  if (classes.length === 0) throw new TorchError('TORCHLITE_BAD_DATA', `${dir} has no class subfolders`);
  const files: string[] = [];
  const targets: number[] = [];
  for (const [index, name] of classes.entries()) {
    // Mapped like a model, the data may hold only some of its classes.
    if (o.classes === undefined && !folders.includes(name)) continue;
    const folder = join(dir, name);
    const names = (await readdir(folder).catch(() => {
      throw new TorchError('TORCHLITE_BAD_DATA', `class folder ${folder} does not exist`);
    })).filter((f) => IMAGE_EXTENSIONS.has(extname(f).toLowerCase())).sort();
    if (names.length === 0) throw new TorchError('TORCHLITE_BAD_DATA', `class folder ${folder} has no images`);
    for (const f of names) {
      files.push(join(folder, f));
      targets.push(index);
    }
  }
  const augmentation = o.augment === true ? 'default' : o.augment === false || o.augment === undefined ? 'none' : o.augment;
  if (augmentation !== 'none' && !(augmentation in AUGMENTS)) throw typeError("'none', 'light', 'default' or a boolean", 'options.augment', o.augment);
  const dataset = (augment: Augment): Dataset => ({
    length: files.length,
    inputShape: [channels, size, size],
    targetShape: [],
    classes,
    target: (i) => targets[i],
    describe: (i) => files[i],
    preprocessing: { shape: [channels, size, size], mean, std, resize: 'center-crop', ...(spec.resizeTo && { resizeTo: spec.resizeTo }) },
    ...(augment !== 'none' && { withoutAugmentation: () => dataset('none') }),
    get: async (i, epoch): Promise<Sample> => ({
      input: await pixelsOf(files[i], spec, augment === 'none' ? undefined : { random: rng(mix(i, epoch, 0x9e3779b9)), ...AUGMENTS[augment] }),
      target: targets[i],
    }),
  });
  return dataset(augmentation);
}

/** How pixels become an input: side (after a resize of the short side to `resizeTo`), channels, and per-channel normalisation. */
interface PixelSpec {
  size: number;
  resizeTo?: number;
  channels: 1 | 3;
  mean: number[];
  std: number[];
}

/**
 * An image (a file or encoded bytes) decoded by sharp, off the main thread: resized to a
 * centred square, or cropped at random with `augment`; as normalised CHW floats.
 */
async function pixelsOf(source: string | Buffer, { size, resizeTo, channels, mean, std }: PixelSpec, augment?: { random: () => number; scale: readonly number[]; ratio: readonly number[]; flip: boolean }): Promise<Float32Array> {
  // Loaded on first use: training on tensors or IDX files needs no image codecs.
  const { default: sharp } = await import('sharp');
  let image = sharp(source, { failOn: 'error' }).removeAlpha();
  if (augment) {
    const meta = await sharp(source).metadata();
    const crop = randomResizedCrop(meta.width ?? size, meta.height ?? size, augment.random, augment);
    image = image.extract(crop).resize(size, size, { fit: 'fill' });
    if (augment.flip && augment.random() < 0.5) image = image.flop();
  } else if (resizeTo && resizeTo > size) {
    // torchvision's eval transform: the short side to resizeTo, then the centre size × size.
    const resized = await image.resize(resizeTo, resizeTo, { fit: 'outside' }).raw().toBuffer({ resolveWithObject: true });
    const { width, height, channels: bands } = resized.info;
    image = sharp(resized.data, { raw: { width, height, channels: bands } }).extract({ left: Math.floor((width - size) / 2), top: Math.floor((height - size) / 2), width: size, height: size });
  } else {
    image = image.resize(size, size, { fit: 'cover' });
  }
  image = channels === 1 ? image.greyscale() : image.toColourspace('srgb');
  const { data, info } = await image.raw().toBuffer({ resolveWithObject: true });
  return chwFloats(data, info.channels, channels, mean, std);
}

/**
 * @internal Decoded HWC bytes (of `bands` bands) as `channels` CHW floats in [0, 1],
 * normalised by per-channel `mean` and `std` when given; a grey image fills every channel.
 */
export function chwFloats(data: Buffer, bands: number, channels: number, mean?: number[], std?: number[]): Float32Array {
  const pixels = data.length / bands;
  const out = new Float32Array(channels * pixels);
  for (let p = 0; p < pixels; p++)
    for (let c = 0; c < channels; c++) {
      const value = data[p * bands + Math.min(c, bands - 1)] / 255;
      out[c * pixels + p] = mean && std ? (value - mean[c]) / std[c] : value;
    }
  return out;
}

export interface LoadImageOptions {
  /** The model whose input spec (size, channels, mean, std in `metadata.input`) the images are prepared for. Explicit options win. Defaults to none. */
  like?: { readonly metadata: unknown };
  /** Side of the square input, in pixels. Defaults to `like`'s, else `224`. */
  size?: number;
  /** The short side's length before the centre crop (torchvision's 256 for a 224 crop). Defaults to `like`'s where its size is kept, else `size`. */
  resizeTo?: number;
  /** `3` (RGB) or `1` (grey). Defaults to `like`'s, else `3`. */
  channels?: 1 | 3;
  /** Per-channel mean. Defaults to `like`'s, else ImageNet's (`[0.5]` for 1 channel). */
  mean?: number[];
  /** Per-channel std. Defaults to `like`'s, else ImageNet's (`[0.5]` for 1 channel). */
  std?: number[];
}

/**
 * Images (file paths or encoded bytes: PNG, JPEG, WebP, …) prepared exactly as `imageFolder`
 * prepares its evaluation images (centre crop to a square, resize, normalise), as one batch
 * `[N, channels, size, size]` for `model.predict`. With `like: model`, the model's own input
 * spec is used, so a mismatch cannot creep in. An unreadable image is a `TORCHLITE_BAD_DATA` error.
 */
export async function loadImage(images: string | Buffer | (string | Buffer)[], options?: LoadImageOptions): Promise<Tensor> {
  const list = Array.isArray(images) ? images : [images];
  if (list.length === 0 || list.some((image) => typeof image !== 'string' && !Buffer.isBuffer(image))) throw typeError('an image path or Buffer, or a non-empty array of them', 'images', images);
  const given = checkOptions<LoadImageOptions>(options, 'options', ['like', 'size', 'resizeTo', 'channels', 'mean', 'std']);
  const spec = pixelSpec(withLike(given));
  const inputs = await Promise.all(
    list.map((image, n) =>
      pixelsOf(image, spec).catch((error: Error) => {
        throw new TorchError('TORCHLITE_BAD_DATA', `cannot read image ${typeof image === 'string' ? image : `images[${n}] (${image.length} bytes)`}: ${error.message}`);
      }),
    ),
  );
  const batch = new Float32Array(inputs.reduce((n, input) => n + input.length, 0));
  inputs.forEach((input, n) => batch.set(input, n * input.length));
  return tensor(batch, [list.length, spec.channels, spec.size, spec.size]);
}

/** The checked pixel spec from options (and `like`'s, merged in before). */
function pixelSpec(o: Pick<ImageFolderOptions, 'size' | 'channels' | 'mean' | 'std' | 'resizeTo'>): PixelSpec {
  const size = o.size === undefined ? 224 : checkPositiveInteger(o.size, 'options.size');
  const channels = o.channels ?? 3;
  if (channels !== 1 && channels !== 3) throw typeError('1 or 3', 'options.channels', channels);
  const fallback = defaultNormalisation(channels);
  const mean = (o.mean ?? fallback.mean).map((v, i) => checkFiniteNumber(v, `options.mean[${i}]`));
  const std = (o.std ?? fallback.std).map((v, i) => checkFiniteNumber(v, `options.std[${i}]`));
  if (mean.length !== channels || std.length !== channels) throw new RangeError(`Expected ${channels} values for \`options.mean\` and \`options.std\` but received ${mean.length} and ${std.length}`);
  const resizeTo = o.resizeTo === undefined ? undefined : checkPositiveInteger(o.resizeTo, 'options.resizeTo');
  return { size, channels, mean, std, ...(resizeTo && resizeTo > size && { resizeTo }) };
}

/** Options taken from a model's input spec, for `like`. */
function likeOptions(like: ImageFolderOptions['like']): ImageFolderOptions {
  if (like === undefined) return {};
  if (like === null || typeof like !== 'object' || !('metadata' in like)) throw typeError('a loaded Model', 'options.like', like);
  const spec = inputSpecOf(like);
  if (spec === undefined)
    throw new TorchError('TORCHLITE_NO_INPUT_SPEC', 'the model passed as `like` has no input spec in its metadata (`metadata.input`); pass `size`, `channels`, `mean` and `std`');
  const [channels, size] = spec.shape;
  if (channels !== 1 && channels !== 3) throw new TorchError('TORCHLITE_NO_INPUT_SPEC', `the model's input spec has ${channels} channels; image folders make 1 or 3`);
  return { size, channels, mean: spec.mean, std: spec.std, ...(spec.resizeTo && { resizeTo: spec.resizeTo }) };
}

/** Options given, over `like`'s; `like`'s pre-crop resize only where its size is kept. */
function withLike<T extends ImageFolderOptions | LoadImageOptions>(given: T): T & { resizeTo?: number } {
  const like = likeOptions(given.like);
  const merged = { ...like, ...stripUndefined(given) } as T & { resizeTo?: number };
  if (given.size !== undefined && given.resizeTo === undefined) delete merged.resizeTo;
  return merged;
}

function stripUndefined<T extends object>(value: T): Partial<T> {
  return Object.fromEntries(Object.entries(value).filter(([, v]) => v !== undefined)) as Partial<T>;
}

/** torchvision's RandomResizedCrop box: an area share in `scale`, an aspect in `ratio`, ten tries, then a centre crop. */
function randomResizedCrop(width: number, height: number, random: () => number, { scale, ratio: aspect }: { scale: readonly number[]; ratio: readonly number[] }) {
  const area = width * height;
  for (let attempt = 0; attempt < 10; attempt++) {
    const target = area * (scale[0] + random() * (scale[1] - scale[0]));
    const ratio = Math.exp(Math.log(aspect[0]) + random() * (Math.log(aspect[1]) - Math.log(aspect[0])));
    const w = Math.round(Math.sqrt(target * ratio));
    const h = Math.round(Math.sqrt(target / ratio));
    if (w > 0 && h > 0 && w <= width && h <= height)
      return { left: Math.floor(random() * (width - w + 1)), top: Math.floor(random() * (height - h + 1)), width: w, height: h };
  }
  const side = Math.min(width, height);
  return { left: Math.floor((width - side) / 2), top: Math.floor((height - side) / 2), width: side, height: side };
}

/**
 * An image at its own size as `[3, height, width]` RGB floats in [0, 1], unnormalised: the
 * input torchvision's detectors take (they resize and normalise inside). An unreadable
 * image is a `TORCHLITE_BAD_DATA` error.
 */
export async function readImage(image: string | Buffer): Promise<Tensor> {
  if (typeof image !== 'string' && !Buffer.isBuffer(image)) throw typeError('an image path or Buffer', 'image', image);
  const { default: sharp } = await import('sharp');
  try {
    const { data, info } = await sharp(image, { failOn: 'error' }).removeAlpha().toColourspace('srgb').raw().toBuffer({ resolveWithObject: true });
    return tensor(chwFloats(data, info.channels, 3), [3, info.height, info.width]);
  } catch (error) {
    throw new TorchError('TORCHLITE_BAD_DATA', `cannot read image ${typeof image === 'string' ? image : `(${image.length} bytes)`}: ${(error as Error).message}`);
  }
}
