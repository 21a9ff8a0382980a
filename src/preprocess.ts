// The input convention a model carries in its metadata (`metadata.input`), so that
// evaluation, prediction and further fine-tuning prepare images as training did.
import { TorchError } from './errors';

/**
 * How images become a model's input: scaled to [0, 1], resized, normalised per channel.
 * torchlite writes it into `metadata.input` when it trains or exports a model; a model
 * without it gets no preprocessing guessed for it (the CLI asks for `--size`).
 */
export interface InputSpec {
  /** One input, `[channels, height, width]`. */
  shape: number[];
  /** Per-channel mean subtracted after scaling pixels to [0, 1]. */
  mean: number[];
  /** Per-channel standard deviation divided by after the mean. */
  std: number[];
  /** `'center-crop'`: scale the short side to the size and crop the centre (torchvision's Resize + CenterCrop, on a square). */
  resize?: 'center-crop';
  /** The short side's length before the centre crop, where it is larger than the input (torchvision's weights: 256 for a 224 crop). Defaults to the input's side. */
  resizeTo?: number;
}

/** The normalisation used when none is given: ImageNet's mean and std for 3 channels, 0.5 and 0.5 for 1. */
export function defaultNormalisation(channels: 1 | 3): { mean: number[]; std: number[] } {
  return channels === 3 ? { mean: [0.485, 0.456, 0.406], std: [0.229, 0.224, 0.225] } : { mean: [0.5], std: [0.5] };
}

/** The input spec in a model's metadata, if it has a valid one. */
export function inputSpecOf(model: { readonly metadata: unknown }): InputSpec | undefined {
  const input = (model.metadata as { input?: Partial<InputSpec> } | null | undefined)?.input;
  const numbers = (v: unknown): v is number[] => Array.isArray(v) && v.every((x) => typeof x === 'number' && Number.isFinite(x));
  if (!input || !numbers(input.shape) || input.shape.length !== 3 || !numbers(input.mean) || !numbers(input.std)) return undefined;
  if (input.mean.length !== input.shape[0] || input.std.length !== input.shape[0]) return undefined;
  const resizeTo = Number.isInteger(input.resizeTo) && input.resizeTo! >= input.shape[1] ? input.resizeTo : undefined;
  return { shape: input.shape, mean: input.mean, std: input.std, resize: 'center-crop', ...(resizeTo && { resizeTo }) };
}

/** The class names in a model's metadata, if it has them. */
export function classNamesOf(model: { readonly metadata: unknown }): string[] | undefined {
  const classes = (model.metadata as { classes?: unknown } | null | undefined)?.classes;
  return Array.isArray(classes) && classes.every((c) => typeof c === 'string') ? classes : undefined;
}

/**
 * The classes a dataset read `like` a model gets, from the class names `found` in the data
 * (`what` names them in errors): the model's own, in its order, where every name found is one
 * of them, so that targets mean what the model's outputs mean even where the data holds only
 * some of its classes; the names found where none is (new classes, to fine-tune for); and a
 * `TORCHLITE_BAD_DATA` error where some are and some are not, which would evaluate silently wrong.
 */
export function classesLike(model: { readonly metadata: unknown }, found: string[], what: string): string[] | undefined {
  const known = classNamesOf(model);
  if (known === undefined) return undefined;
  const unknown = found.filter((name) => !known.includes(name));
  if (unknown.length === 0) return known;
  if (unknown.length === found.length) return undefined;
  const list = (names: string[]) => names.slice(0, 10).map((c) => `'${c}'`).join(', ') + (names.length > 10 ? ', …' : '');
  throw new TorchError(
    'TORCHLITE_BAD_DATA',
    `${list(unknown)} ${unknown.length === 1 ? 'is' : 'are'} not among the model's classes (${list(known)}), while the data's other ${what} are; fix the names, or pass \`classes\` to say which classes the data has (to fine-tune for new ones)`,
  );
}
