import { readdir } from 'node:fs/promises';
import { extname, join } from 'node:path';

import { readError, TorchError } from '../errors';
import { checkFiniteNumber, checkOptions, checkPositiveInteger, checkString, typeError } from '../validate';
import { defaultNormalisation, inputSpecOf } from '../preprocess';
import type { Dataset, Sample } from './dataset';
import { mix, rng } from './random';

const IMAGE_EXTENSIONS = new Set(['.png', '.jpg', '.jpeg', '.webp', '.gif', '.tif', '.tiff', '.avif', '.bmp']);

export interface ImageFolderOptions {
  /** Side of the square input, in pixels. Defaults to `224`. */
  size?: number;
  /** Per-channel mean subtracted after scaling to [0, 1]. Defaults to ImageNet's `[0.485, 0.456, 0.406]` (or `[0.5]` for 1 channel). */
  mean?: number[];
  /** Per-channel std. Defaults to ImageNet's `[0.229, 0.224, 0.225]` (or `[0.5]` for 1 channel). */
  std?: number[];
  /** Colour channels: `3` (RGB) or `1` (grey). Defaults to `3`. */
  channels?: 1 | 3;
  /** Random resized crop (scale 0.08–1, ratio 3/4–4/3) and horizontal flip, seeded per epoch. Defaults to `false`. */
  augment?: boolean;
  /** Class names in index order. Defaults to the sorted subfolder names. */
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
  const given = checkOptions<ImageFolderOptions>(options, 'options', ['size', 'mean', 'std', 'channels', 'augment', 'classes', 'like']);
  const o = { ...likeOptions(given.like), ...stripUndefined(given) };
  const size = o.size === undefined ? 224 : checkPositiveInteger(o.size, 'options.size');
  const channels = o.channels ?? 3;
  if (channels !== 1 && channels !== 3) throw typeError('1 or 3', 'options.channels', channels);
  const fallback = defaultNormalisation(channels);
  const mean = (o.mean ?? fallback.mean).map((v, i) => checkFiniteNumber(v, `options.mean[${i}]`));
  const std = (o.std ?? fallback.std).map((v, i) => checkFiniteNumber(v, `options.std[${i}]`));
  if (mean.length !== channels || std.length !== channels) throw new RangeError(`Expected ${channels} values for \`options.mean\` and \`options.std\` but received ${mean.length} and ${std.length}`);
  let entries;
  try {
    entries = await readdir(dir, { withFileTypes: true });
  } catch (error) {
    throw readError(error, `cannot read image folder ${dir}`);
  }
  const folders = entries.filter((e) => e.isDirectory()).map((e) => e.name).sort();
  const classes = o.classes ?? folders;
  if (classes.length === 0) throw new TorchError('TORCHLITE_BAD_DATA', `${dir} has no class subfolders`);
  const files: string[] = [];
  const targets: number[] = [];
  for (const [index, name] of classes.entries()) {
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
  const pixels = size * size;
  // Loaded on first use: training on tensors or IDX files needs no image codecs.
  const { default: sharp } = await import('sharp');
  const dataset = (augment: boolean): Dataset => ({
    length: files.length,
    inputShape: [channels, size, size],
    targetShape: [],
    classes,
    target: (i) => targets[i],
    describe: (i) => files[i],
    preprocessing: { shape: [channels, size, size], mean, std, resize: 'center-crop' },
    ...(augment && { withoutAugmentation: () => dataset(false) }),
    get: async (i, epoch): Promise<Sample> => {
      let image = sharp(files[i], { failOn: 'error' }).removeAlpha();
      if (augment) {
        const meta = await sharp(files[i]).metadata();
        const random = rng(mix(i, epoch, 0x9e3779b9));
        const crop = randomResizedCrop(meta.width ?? size, meta.height ?? size, random);
        image = image.extract(crop).resize(size, size, { fit: 'fill' });
        if (random() < 0.5) image = image.flop();
      } else {
        image = image.resize(size, size, { fit: 'cover' });
      }
      image = channels === 1 ? image.greyscale() : image.toColourspace('srgb');
      const { data, info } = await image.raw().toBuffer({ resolveWithObject: true });
      const input = new Float32Array(channels * pixels);
      // HWC bytes to normalised CHW floats.
      for (let p = 0; p < pixels; p++)
        for (let c = 0; c < channels; c++) input[c * pixels + p] = (data[p * info.channels + Math.min(c, info.channels - 1)] / 255 - mean[c]) / std[c];
      return { input, target: targets[i] };
    },
  });
  return dataset(o.augment === true);
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
  return { size, channels, mean: spec.mean, std: spec.std };
}

function stripUndefined<T extends object>(value: T): Partial<T> {
  return Object.fromEntries(Object.entries(value).filter(([, v]) => v !== undefined)) as Partial<T>;
}

/** torchvision's RandomResizedCrop box: area 8–100%, aspect 3/4–4/3, ten tries, then a centre crop. */
function randomResizedCrop(width: number, height: number, random: () => number) {
  const area = width * height;
  for (let attempt = 0; attempt < 10; attempt++) {
    const target = area * (0.08 + random() * 0.92);
    const ratio = Math.exp(Math.log(3 / 4) + random() * (Math.log(4 / 3) - Math.log(3 / 4)));
    const w = Math.round(Math.sqrt(target * ratio));
    const h = Math.round(Math.sqrt(target / ratio));
    if (w > 0 && h > 0 && w <= width && h <= height)
      return { left: Math.floor(random() * (width - w + 1)), top: Math.floor(random() * (height - h + 1)), width: w, height: h };
  }
  const side = Math.min(width, height);
  return { left: Math.floor((width - side) / 2), top: Math.floor((height - side) / 2), width: side, height: side };
}
