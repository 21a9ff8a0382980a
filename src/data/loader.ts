// The loader: shuffled, prefetched batches, sharded over ranks.
import { ProcessGroup } from '../distributed';
import { TorchError } from '../errors';
import type { BatchInput } from '../model';
import { kShardGroup, type ShardGroup } from '../model/protocols';
import { native } from '../native';
import { Tensor, tensor } from '../tensor';
import { checkInteger, checkOptions, checkPositiveInteger, typeError } from '../validate';
import type { BatchTarget, Dataset, Sample } from './dataset';
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
  /**
   * Gives this rank its shard of every epoch, exactly as PyTorch's `DistributedSampler`
   * (`torch.randperm` seeded with `seed + epoch`, padded by wrapping round to a multiple of
   * the world size, or cut with `dropLast`, then every world-size-th sample from the
   * rank's): the same samples on the same rank as a Python run. A group from
   * `distributed.init()`, or `{ rank, worldSize }` to shard without one. With a group,
   * `evaluate` on this loader adds its metrics up over the ranks, leaving the padding out.
   * Defaults to no sharding.
   */
  distributed?: ProcessGroup | { rank: number; worldSize: number };
}

/** Where a distributed loader's shard comes from. */
interface Shard {
  rank: number;
  worldSize: number;
  group?: ProcessGroup;
}

/** A batch: inputs `[B, ...inputShape]` (or what the dataset's `collate` makes) and targets (int64 `[B]`, float `[B, ...]`, or what its `collateTargets` makes). */
export interface LoaderBatch<I extends BatchInput = Tensor, T extends BatchTarget = Tensor> {
  input: I;
  target: T;
  /** Dataset indices in the batch, in order. */
  indices: number[];
  /** How many trailing samples repeat earlier ones to even out a distributed shard; `evaluate` leaves them out. */
  padding?: number;
}

/**
 * Batches a dataset as an async iterable, preparing the next batches while the current one
 * trains. Each `for await` runs one epoch; epoch `e`'s order depends only on `seed` and `e`.
 */
export class Loader<I extends BatchInput = Tensor, T extends BatchTarget = Tensor> implements AsyncIterable<LoaderBatch<I, T>> {
  readonly dataset: Dataset<I, T>;
  readonly batchSize: number;
  readonly #o: Required<Omit<LoaderOptions, 'batchSize' | 'distributed'>>;
  readonly #shard: Shard | undefined;
  /** The epoch the next `for await` runs. */
  epoch = 0;
  readonly #warned = new Set<number>();

  /** @internal Use {@link loader}. */
  constructor(dataset: Dataset<I, T>, batchSize: number, options: Required<Omit<LoaderOptions, 'batchSize' | 'distributed'>>, shard?: Shard) {
    this.dataset = dataset;
    this.batchSize = batchSize;
    this.#o = options;
    this.#shard = shard;
    const group = shard?.group;
    if (group) {
      const reducer: ShardGroup = {
        turn: () => ProcessGroup.turn(group),
        reduce: async (values, op) => {
          const t = tensor(values);
          try {
            await ProcessGroup.handle(group).allReduce(Tensor.handle(t), op);
            return t.toTypedArray() as Float64Array;
          } finally {
            t.dispose();
          }
        },
      };
      Object.defineProperty(this, kShardGroup, { value: reducer });
    }
  }

  /** @internal The same batching (size, shuffle, seed, sharding) over another dataset: the feature cache, or a part of this one. */
  withDataset(dataset: Dataset<I, T>): Loader<I, T> {
    return new Loader(dataset, this.batchSize, this.#o, this.#shard);
  }

  /** Samples per epoch: this rank's shard when distributed. */
  get #samples(): number {
    const n = this.dataset.length;
    if (!this.#shard) return n;
    const { worldSize } = this.#shard;
    // DistributedSampler's num_samples.
    return this.#o.dropLast && n % worldSize !== 0 ? Math.ceil((n - worldSize) / worldSize) : Math.ceil(n / worldSize);
  }

  /** Batches per epoch. */
  get length(): number {
    const n = this.#samples / this.batchSize;
    return this.#o.dropLast ? Math.floor(n) : Math.ceil(n);
  }

  /** The sample order of `epoch` (this rank's shard when distributed). */
  order(epoch: number): number[] {
    const n = this.dataset.length;
    if (this.#shard) {
      const { rank, worldSize } = this.#shard;
      const all = this.#o.shuffle ? Array.from(native.randperm(n, this.#o.seed + epoch)) : Array.from({ length: n }, (_, i) => i);
      const total = this.#samples * worldSize;
      const padded = all.length >= total ? all.slice(0, total) : Array.from({ length: total }, (_, i) => all[i % n]);
      return padded.filter((_, i) => i % worldSize === rank);
    }
    return this.#o.shuffle ? permutation(n, mix(this.#o.seed, epoch)) : Array.from({ length: n }, (_, i) => i);
  }

  /** How many of the first `position` samples of this rank's order are real, not padding. */
  #real(position: number): number {
    if (!this.#shard) return position;
    const { rank, worldSize } = this.#shard;
    // Shard element j sits at rank + j·worldSize of the padded order; from n on it is padding.
    return Math.min(position, Math.max(0, Math.ceil((this.dataset.length - rank) / worldSize)));
  }

  [Symbol.asyncIterator](): AsyncIterator<LoaderBatch<I, T>> {
    return this.batches(this.epoch++);
  }

  /** The batches of `epoch`, starting at batch `from` (to resume mid-epoch). */
  async *batches(epoch: number, from = 0): AsyncGenerator<LoaderBatch<I, T>> {
    const order = this.order(epoch);
    const count = this.length;
    const ahead: Promise<LoaderBatch<I, T> | null>[] = [];
    let next = from;
    const fill = () => {
      while (ahead.length <= this.#o.prefetch && next < count) {
        const indices = order.slice(next * this.batchSize, (next + 1) * this.batchSize);
        const start = next * this.batchSize;
        const end = start + indices.length;
        const batch = this.#collate(indices, epoch, end - start - (this.#real(end) - this.#real(start)));
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

  async #collate(indices: number[], epoch: number, padding: number): Promise<LoaderBatch<I, T> | null> {
    const ds = this.dataset;
    if (ds.rows) return { ...(await ds.rows(indices)), indices, ...(padding > 0 && { padding }) };
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
    const floatTargets = typeof samples[0].target !== 'number';
    const target = ds.collateTargets
      ? ds.collateTargets(samples.map((s) => s.target))
      : ((floatTargets
          ? tensor(concat(samples.map((s) => s.target as Float32Array)), [samples.length, ...ds.targetShape])
          : tensor(BigInt64Array.from(samples, (s) => BigInt(s.target as number)))) as T);
    // A padding sample that failed to load was dropped with the rest; count only those kept.
    const padded = Math.min(padding, kept.length);
    return { input: ds.collate ? ds.collate(samples.map((s) => s.input), samples) : (stack(samples, ds.inputShape) as I), target, indices: kept, ...(padded > 0 && { padding: padded }) };
  }
}

/** Float inputs of one shape as one `[B, ...shape]` tensor. */
function stack(samples: Sample[], shape: number[]): Tensor {
  const size = shape.reduce((a, b) => a * b, 1);
  const input = new Float32Array(samples.length * size);
  samples.forEach((s, k) => input.set(s.input as Float32Array, k * size));
  return tensor(input, [samples.length, ...shape]);
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
export function loader<I extends BatchInput = Tensor, T extends BatchTarget = Tensor>(dataset: Dataset<I, T>, options?: LoaderOptions): Loader<I, T> {
  if (dataset === null || typeof dataset !== 'object' || typeof dataset.get !== 'function') throw typeError('a Dataset from `data.*`', 'dataset', dataset);
  const o = checkOptions<LoaderOptions>(options, 'options', ['batchSize', 'shuffle', 'seed', 'dropLast', 'prefetch', 'strict', 'distributed']);
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
  }, o.distributed === undefined ? undefined : shardOf(o.distributed));
}

function shardOf(value: unknown): Shard {
  if (value instanceof ProcessGroup) return { rank: value.rank, worldSize: value.worldSize, group: value };
  const v = value as { rank?: unknown; worldSize?: unknown } | null;
  if (v === null || typeof v !== 'object') throw typeError('a ProcessGroup or { rank, worldSize }', 'options.distributed', value);
  const worldSize = checkPositiveInteger(v.worldSize, 'options.distributed.worldSize');
  const rank = checkInteger(v.rank, 'options.distributed.rank', 0, 'a non-negative integer');
  if (rank >= worldSize) throw new RangeError(`Expected a rank below the world size ${worldSize} for \`options.distributed.rank\` but received ${rank}`);
  return { rank, worldSize };
}
