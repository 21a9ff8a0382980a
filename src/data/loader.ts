import { TorchError } from '../errors';
import { Tensor, tensor } from '../tensor';
import { checkInteger, checkOptions, checkPositiveInteger, typeError } from '../validate';
import type { Dataset, Sample } from './dataset';
import { mix, permutation } from './random';

export interface LoaderOptions {
  /** Samples per batch. Defaults to `32`. */
  batchSize?: number;
  /** Reshuffle every epoch; the order depends only on `seed` and the epoch. Defaults to `false`. */
  shuffle?: boolean;
  /** Seeds shuffling and augmentation. Defaults to `0`. */
  seed?: number;
  /** Drop a last incomplete batch. Defaults to `false`. */
  dropLast?: boolean;
  /** Batches prepared ahead of the one being trained on. Defaults to `2`. */
  prefetch?: number;
  /** Fail on an unreadable sample instead of skipping it with a warning. Defaults to `false`. */
  strict?: boolean;
}

/** A batch: inputs `[B, ...inputShape]` and targets (int64 `[B]` or float `[B, ...]`). */
export interface LoaderBatch {
  input: Tensor;
  target: Tensor;
  /** Dataset indices in the batch, in order. */
  indices: number[];
}

/**
 * Batches a dataset as an async iterable, preparing the next batches while the current one
 * trains. Each `for await` runs one epoch; epoch `e`'s order depends only on `seed` and `e`.
 */
export class Loader implements AsyncIterable<LoaderBatch> {
  readonly dataset: Dataset;
  readonly batchSize: number;
  readonly #o: Required<Omit<LoaderOptions, 'batchSize'>>;
  /** The epoch the next `for await` runs. */
  epoch = 0;
  readonly #warned = new Set<number>();

  /** @internal Use {@link loader}. */
  constructor(dataset: Dataset, batchSize: number, options: Required<Omit<LoaderOptions, 'batchSize'>>) {
    this.dataset = dataset;
    this.batchSize = batchSize;
    this.#o = options;
  }

  /** Batches per epoch. */
  get length(): number {
    const n = this.dataset.length / this.batchSize;
    return this.#o.dropLast ? Math.floor(n) : Math.ceil(n);
  }

  /** The sample order of `epoch`. */
  order(epoch: number): number[] {
    return this.#o.shuffle ? permutation(this.dataset.length, mix(this.#o.seed, epoch)) : Array.from({ length: this.dataset.length }, (_, i) => i);
  }

  [Symbol.asyncIterator](): AsyncIterator<LoaderBatch> {
    return this.batches(this.epoch++);
  }

  /** The batches of `epoch`, starting at batch `from` (to resume mid-epoch). */
  async *batches(epoch: number, from = 0): AsyncGenerator<LoaderBatch> {
    const order = this.order(epoch);
    const count = this.length;
    const ahead: Promise<LoaderBatch | null>[] = [];
    let next = from;
    const fill = () => {
      while (ahead.length <= this.#o.prefetch && next < count) {
        const indices = order.slice(next * this.batchSize, (next + 1) * this.batchSize);
        const batch = this.#collate(indices, epoch);
        // Rejections surface when the batch is awaited; until then they must not count as unhandled.
        batch.catch(() => undefined);
        ahead.push(batch);
        next++;
      }
    };
    fill();
    while (ahead.length > 0) {
      const batch = await ahead.shift()!;
      fill();
      if (batch) yield batch;
    }
  }

  async #collate(indices: number[], epoch: number): Promise<LoaderBatch | null> {
    const ds = this.dataset;
    const settled = await Promise.allSettled(indices.map(async (i) => ds.get(i, epoch)));
    const samples: Sample[] = [];
    const kept: number[] = [];
    settled.forEach((result, k) => {
      if (result.status === 'fulfilled') {
        samples.push(result.value);
        kept.push(indices[k]);
        return;
      }
      const reason = result.reason as Error;
      const message = `cannot read ${ds.describe(indices[k])}: ${reason.message}`;
      if (this.#o.strict) throw new TorchError('TORCHLITE_BAD_DATA', message, { cause: reason });
      if (!this.#warned.has(indices[k])) process.emitWarning(`${message}; skipped (pass strict: true to fail instead)`, { code: 'TORCHLITE_BAD_DATA' });
      this.#warned.add(indices[k]);
    });
    if (samples.length === 0) return null;
    const inputSize = ds.inputShape.reduce((a, b) => a * b, 1);
    const input = new Float32Array(samples.length * inputSize);
    samples.forEach((s, k) => input.set(s.input, k * inputSize));
    const floatTargets = typeof samples[0].target !== 'number';
    const target = floatTargets
      ? tensor(concat(samples.map((s) => s.target as Float32Array)), [samples.length, ...ds.targetShape])
      : tensor(BigInt64Array.from(samples, (s) => BigInt(s.target as number)));
    return { input: tensor(input, [samples.length, ...ds.inputShape]), target, indices: kept };
  }
}

function concat(parts: Float32Array[]): Float32Array {
  const out = new Float32Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const part of parts) {
    out.set(part, at);
    at += part.length;
  }
  return out;
}

/** Batches `dataset`; see {@link LoaderOptions}. */
export function loader(dataset: Dataset, options?: LoaderOptions): Loader {
  if (dataset === null || typeof dataset !== 'object' || typeof dataset.get !== 'function') throw typeError('a Dataset from `data.*`', 'dataset', dataset);
  const o = checkOptions<LoaderOptions>(options, 'options', ['batchSize', 'shuffle', 'seed', 'dropLast', 'prefetch', 'strict']);
  const flag = (value: unknown, name: string) => {
    if (value !== undefined && typeof value !== 'boolean') throw typeError('a boolean', name, value);
    return value === true;
  };
  return new Loader(dataset, o.batchSize === undefined ? 32 : checkPositiveInteger(o.batchSize, 'options.batchSize'), {
    shuffle: flag(o.shuffle, 'options.shuffle'),
    seed: checkInteger(o.seed ?? 0, 'options.seed', 0, 'a non-negative integer'),
    dropLast: flag(o.dropLast, 'options.dropLast'),
    prefetch: checkInteger(o.prefetch ?? 2, 'options.prefetch', 0, 'a non-negative integer'),
    strict: flag(o.strict, 'options.strict'),
  });
}
