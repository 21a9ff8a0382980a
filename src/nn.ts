// Native layers. Each call draws its initial weights at once, exactly as the same
// PyTorch constructor would under the same seed; the TorchScript module itself is built
// inside the target model when the layer is put in place with Model.replace().
import type { Model } from './model';
import { native, type NativeTensor } from './native';
import { checkFiniteNumber, checkInteger, checkOptions, checkPositiveInteger, rangeError, typeError } from './validate';

/** @internal What crosses to the native side. */
export interface LayerSpec {
  kind: string;
  tensors: Record<string, NativeTensor | undefined>;
  children?: LayerSpec[];
  model?: unknown;
  /** The loaded Model behind `model`, for JS-side checks; not read natively. */
  source?: unknown;
  [option: string]: unknown;
}

/** A layer to put into a model with {@link Model.replace}. Made by the functions of `nn`. */
export class Layer {
  /** @internal */
  readonly spec: LayerSpec;
  readonly #label: string;

  /** @internal */
  constructor(spec: LayerSpec, label: string) {
    this.spec = spec;
    this.#label = label;
  }

  /** The layer kind, e.g. `'linear'`. */
  get kind(): string {
    return this.spec.kind;
  }

  toString(): string {
    return this.#label;
  }
}

/** @internal How a loaded Model describes itself as a module to copy in (model.ts implements it). */
export const kLayerSpec = Symbol('torchlite.layerSpec');

/** @internal The spec of a Layer, or of a loaded Model used as a module (copied in). */
export function specOf(module: unknown, name: string): LayerSpec {
  if (module instanceof Layer) return module.spec;
  const source = module as { [kLayerSpec]?: () => LayerSpec } | null;
  if (typeof source?.[kLayerSpec] === 'function') return source[kLayerSpec]();
  throw typeError('an nn layer or a loaded Model', name, module);
}

function plain(kind: string, label: string, options: Record<string, unknown> = {}): Layer {
  return new Layer({ kind, tensors: {}, ...options }, label);
}

export interface LinearOptions {
  /** Whether to learn an additive bias. Defaults to `true`. */
  bias?: boolean;
}

export interface Conv2dOptions {
  /** Stride of the convolution. Defaults to `1`. */
  stride?: number;
  /** Zero padding added on every side. Defaults to `0`. */
  padding?: number;
  /** Whether to learn an additive bias. Defaults to `true`. */
  bias?: boolean;
}

function checkBias(value: unknown, name: string): boolean {
  if (value === undefined) return true;
  if (typeof value !== 'boolean') throw typeError('a boolean', name, value);
  return value;
}

/** `y = x Wᵀ + b`, like `torch.nn.Linear(inFeatures, outFeatures)`. */
export function linear(inFeatures: number, outFeatures: number, options?: LinearOptions): Layer {
  checkPositiveInteger(inFeatures, 'inFeatures');
  checkPositiveInteger(outFeatures, 'outFeatures');
  const bias = checkBias(checkOptions<LinearOptions>(options, 'options', ['bias']).bias, 'options.bias');
  const tensors = native.initLayerParameters([outFeatures, inFeatures], bias);
  return new Layer({ kind: 'linear', inFeatures, outFeatures, tensors }, `Linear(${inFeatures}, ${outFeatures}${bias ? '' : ', bias=false'})`);
}

/** A 2-D convolution with a square kernel, like `torch.nn.Conv2d`. */
export function conv2d(inChannels: number, outChannels: number, kernelSize: number, options?: Conv2dOptions): Layer {
  checkPositiveInteger(inChannels, 'inChannels');
  checkPositiveInteger(outChannels, 'outChannels');
  checkPositiveInteger(kernelSize, 'kernelSize');
  const opts = checkOptions<Conv2dOptions>(options, 'options', ['stride', 'padding', 'bias']);
  const stride = opts.stride === undefined ? 1 : checkPositiveInteger(opts.stride, 'options.stride');
  const padding = opts.padding === undefined ? 0 : checkInteger(opts.padding, 'options.padding', 0, 'a non-negative integer');
  const bias = checkBias(opts.bias, 'options.bias');
  const tensors = native.initLayerParameters([outChannels, inChannels, kernelSize, kernelSize], bias);
  return new Layer(
    { kind: 'conv2d', inChannels, outChannels, stride, padding, tensors },
    `Conv2d(${inChannels}, ${outChannels}, ${kernelSize}, stride=${stride}, padding=${padding})`,
  );
}

/** Zeroes elements with probability `p` in training mode, like `torch.nn.Dropout`. */
export function dropout(p = 0.5): Layer {
  checkFiniteNumber(p, 'p');
  if (p < 0 || p > 1) throw rangeError('a probability between 0 and 1', 'p', p);
  return plain('dropout', `Dropout(p=${p})`, { p });
}

export function relu(): Layer {
  return plain('relu', 'ReLU()');
}

export function gelu(): Layer {
  return plain('gelu', 'GELU()');
}

/** Flattens every dimension after the first. */
export function flatten(): Layer {
  return plain('flatten', 'Flatten()');
}

/** Passes its input through, e.g. to turn a classifier into a feature extractor. */
export function identity(): Layer {
  return plain('identity', 'Identity()');
}

/** Batch normalisation over dimension 1 of `[N, C]` or `[N, C, L]`, like `torch.nn.BatchNorm1d`. */
export function batchNorm1d(numFeatures: number): Layer {
  checkPositiveInteger(numFeatures, 'numFeatures');
  return plain('batchNorm1d', `BatchNorm1d(${numFeatures})`, { features: numFeatures });
}

/** Layer normalisation over the last dimension, like `torch.nn.LayerNorm(n)`. */
export function layerNorm(normalizedShape: number): Layer {
  checkPositiveInteger(normalizedShape, 'normalizedShape');
  return plain('layerNorm', `LayerNorm(${normalizedShape})`, { features: normalizedShape });
}

/** Runs layers (or loaded models) in order; children are named `0`, `1`, … as in PyTorch. */
export function sequential(...layers: (Layer | Model)[]): Layer {
  if (layers.length === 0) throw new RangeError('Expected at least one layer for `layers` but received none');
  const children = layers.map((layer, i) => specOf(layer, `layers[${i}]`));
  return new Layer({ kind: 'sequential', tensors: {}, children }, `Sequential(${layers.map(String).join(', ')})`);
}
