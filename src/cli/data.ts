// Turns --data arguments into datasets shaped for a given model.
import { existsSync } from 'node:fs';
import { join } from 'node:path';

import { data, type Dataset, type Model } from '..';

const { idx, imageFolder, subset } = data;

export const FASHION_DIR = '/usr/share/datasets/fashion-mnist';
export const FASHION_CLASSES = ['T-shirt/top', 'Trouser', 'Pullover', 'Dress', 'Coat', 'Sandal', 'Shirt', 'Sneaker', 'Bag', 'Ankle boot'];

/** Preprocessing recorded in a model's metadata by torchlite (or the pretraining script). */
export interface InputSpec {
  shape: number[];
  mean: number[];
  std: number[];
}

export function inputSpec(model: Model): InputSpec {
  const meta = model.metadata as { input?: InputSpec } | undefined;
  return meta?.input ?? { shape: [3, 224, 224], mean: [0.485, 0.456, 0.406], std: [0.229, 0.224, 0.225] };
}

export function parseClasses(text: string | undefined): number[] | undefined {
  if (text === undefined) return undefined;
  const classes = text.split(',').map((part) => Number(part.trim()));
  if (classes.some((c) => !Number.isInteger(c) || c < 0)) throw new RangeError(`Expected comma-separated class indices for \`--classes\` but received '${text}'`);
  return classes;
}

/**
 * `fashion-mnist` (the Debian package's IDX files), a folder holding Fashion-MNIST-style
 * IDX files (`train-images-idx3-ubyte.gz`, …; split 'train' or 't10k'), or a folder with
 * one subfolder per class.
 */
export async function loadDataset(spec: string, split: 'train' | 't10k', input: InputSpec, options: { classes?: number[]; augment?: boolean } = {}): Promise<Dataset> {
  const dir = spec === 'fashion-mnist' ? FASHION_DIR : spec;
  if (spec === 'fashion-mnist' || existsSync(join(dir, `${split}-images-idx3-ubyte.gz`))) {
    const ds = await idx(join(dir, `${split}-images-idx3-ubyte.gz`), join(dir, `${split}-labels-idx1-ubyte.gz`), {
      mean: input.mean[0],
      std: input.std[0],
      classes: FASHION_CLASSES,
    });
    return options.classes ? subset(ds, { classes: options.classes }) : ds;
  }
  const [channels, size] = input.shape;
  return imageFolder(spec, { size, channels: channels === 1 ? 1 : 3, mean: input.mean, std: input.std, augment: options.augment ?? false });
}
