// Turns --data arguments into datasets shaped for a given model.
import { existsSync, statSync } from 'node:fs';
import { join } from 'node:path';

import { type Augment, type BatchInput, classNamesOf, data, type Dataset, defaultNormalisation, type InputSpec, inputSpecOf, type Model, text, type TextInput, TorchError } from '..';
import { intFlag } from './flags';

const { idx, imageFolder, subset } = data;

export const FASHION_DIR = '/usr/share/datasets/fashion-mnist';
export const FASHION_CLASSES = ['T-shirt/top', 'Trouser', 'Pullover', 'Dress', 'Coat', 'Sandal', 'Shirt', 'Sneaker', 'Bag', 'Ankle boot'];

/** Flags that say how images become a model's input when its metadata does not. */
export interface InputFlags {
  size?: string;
  channels?: string;
}

/**
 * The model's input spec: `--size`/`--channels` when given (ImageNet's mean and std for
 * 3 channels, 0.5 for 1), else the model's `metadata.input`. A model with neither is an
 * error: guessing 224 px would silently resize the user's images.
 */
export function inputSpec(model: Model, flags: InputFlags, modelPath: string): InputSpec {
  const saved = inputSpecOf(model);
  if (flags.size === undefined && flags.channels === undefined) {
    if (saved) return saved;
    throw new TorchError(
      'TORCHLITE_NO_INPUT_SPEC',
      `${modelPath} does not say how images become its input (no \`input\` in its metadata); pass --size (and --channels 1 for grey images), or export it with scripts/export_model.py`,
    );
  }
  const size = flags.size === undefined ? saved?.shape[1] : intFlag(flags.size, '--size');
  if (size === undefined) throw new RangeError('Expected `--size` with `--channels` for a model without an input spec but received none');
  const channels = flags.channels === undefined ? (saved?.shape[0] ?? 3) : intFlag(flags.channels, '--channels');
  if (channels !== 1 && channels !== 3) throw new RangeError(`Expected 1 or 3 for \`--channels\` but received ${channels}`);
  const { mean, std } = saved && saved.shape[0] === channels ? saved : defaultNormalisation(channels);
  return { shape: [channels, size, size], mean, std, resize: 'center-crop' };
}

/**
 * The data relabelled to the model's class names when it has them (a folder may hold
 * some of them, in any order), else checked to have as many classes as the model has
 * outputs.
 */
export function matchClasses<I extends BatchInput>(model: Model, ds: Dataset<I>): { ds: Dataset<I>; names: string[] } {
  const names = classNamesOf(model);
  if (names) return { ds: data.relabel(ds, names), names };
  const head = model.classifierHead();
  const outputs = head === undefined ? undefined : model.parameters(`${head}.weight`)[0].shape[0];
  const found = ds.classes?.length;
  if (outputs !== undefined && found !== undefined && found !== outputs)
    throw new TorchError(
      'TORCHLITE_UNKNOWN_CLASSES',
      `the model has ${outputs} outputs and no class names in its metadata, but the data has ${found} classes; only data with the model's classes, in its order, can be scored`,
    );
  return { ds, names: ds.classes ?? Array.from({ length: outputs ?? 0 }, (_, i) => String(i)) };
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
export async function loadDataset(spec: string, split: 'train' | 't10k', input: InputSpec, options: { classes?: number[]; augment?: Augment } = {}): Promise<Dataset> {
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
  return imageFolder(spec, { size, channels: channels === 1 ? 1 : 3, mean: input.mean, std: input.std, augment: options.augment ?? 'none' });
}

/** Flags that say where a text model's tokenizer comes from when its metadata does not. */
export interface TextFlags {
  text?: boolean;
  tokenizer?: string;
  skipBadRows?: boolean;
}

/** Whether `--data` names labelled texts: `--text`, or a .jsonl/.json/.ndjson/.csv file. */
export function isTextData(spec: string, flags: TextFlags): boolean {
  if (flags.text || flags.tokenizer !== undefined) return true;
  return data.textFormatOf(spec) !== undefined && existsSync(spec) && statSync(spec).isFile();
}

/**
 * The model's tokenizer: `--tokenizer` when given, else its `metadata.text`. A model with
 * neither is an error that says how to give one.
 */
export async function textTokenizer(model: Model, flags: TextFlags, modelPath: string): Promise<text.TextTokenizer> {
  if (flags.tokenizer !== undefined) return text.tokenizer(flags.tokenizer);
  const saved = text.tokenizerOf(model);
  if (saved) return saved;
  throw new TorchError('TORCHLITE_NO_INPUT_SPEC', `${modelPath} has no tokenizer in its metadata (\`text\`); pass --tokenizer tokenizer.json, or export it with scripts/export_model.py --text`);
}

/** Labelled texts for a text model, tokenized as it expects; `classes` numbers them as another part of the data did. */
export async function loadTextDataset(spec: string, model: Model, tokenizer: text.TextTokenizer, flags: TextFlags, classes?: string[]): Promise<Dataset<TextInput>> {
  const saved = text.textSpecOf(model);
  return data.textDataset(spec, { tokenizer, skipBadRows: flags.skipBadRows === true, ...(saved && { maxLength: saved.maxLength }), ...(saved?.inputs && { inputs: saved.inputs }), ...(classes && { classes }) });
}
