// Dynamic batching: inference requests for one model that arrive within a few milliseconds of
// each other run as one batch (one job, one forward), and each gets its own rows back.
import { Tensor } from '../tensor';
import { checkOptions, checkPositiveInteger, rangeError, checkFiniteNumber } from '../validate';
import type { QueueAdmission } from './queue';

/** Options of {@link Model.batching}. */
export interface BatchingOptions {
  /** Most rows (samples) in one batch; a request with more runs alone. Defaults to `16`. */
  maxBatch?: number;
  /**
   * Longest the first request of a batch waits for others to join it, in milliseconds. While a
   * batch of the same kind is still running, the next one also gathers until it finishes, so
   * batches grow with the load; with `0`, a request that finds the model idle starts at once.
   * Defaults to `0`.
   */
  maxDelayMs?: number;
}

/** What batching did for a model since it was turned on. */
export interface BatchingStats {
  /** Batches run. */
  batches: number;
  /** Requests answered through them. */
  requests: number;
  /** Mean requests per batch. */
  meanBatch: number;
}

export type BatchKind = 'forward' | 'predict';

interface Waiting {
  input: Tensor;
  admission: QueueAdmission | undefined;
  resolve(value: unknown): void;
  reject(error: unknown): void;
}

interface OpenBatch {
  kind: BatchKind;
  rows: number;
  waiting: Waiting[];
  timer: NodeJS.Timeout;
  /** Its delay is over (or it is full), but the previous batch of its key had not started yet. */
  due: boolean;
}

/** @internal Runs one batch: the inputs in order, one result per input. */
export type RunBatch = (kind: BatchKind, inputs: Tensor[]) => Promise<unknown[]>;

/** @internal The batches being gathered for one model. */
export class Batcher {
  readonly maxBatch: number;
  readonly maxDelayMs: number;
  readonly #run: RunBatch;
  readonly #open = new Map<string, OpenBatch>();
  /** Keys with a batch on its way: the next one of the key waits for it (see #flush). */
  readonly #running = new Set<string>();
  #batches = 0;
  #requests = 0;

  constructor(options: BatchingOptions, run: RunBatch) {
    const o = checkOptions<BatchingOptions>(options, 'options', ['maxBatch', 'maxDelayMs']);
    this.maxBatch = o.maxBatch === undefined ? 16 : checkPositiveInteger(o.maxBatch, 'options.maxBatch');
    const delay = o.maxDelayMs === undefined ? 0 : checkFiniteNumber(o.maxDelayMs, 'options.maxDelayMs');
    if (delay < 0) throw rangeError('a non-negative number', 'options.maxDelayMs', delay);
    this.maxDelayMs = delay;
    this.#run = run;
  }

  /** Requests waiting for their batch to start. */
  get waiting(): number {
    let n = 0;
    for (const batch of this.#open.values()) n += batch.waiting.length;
    return n;
  }

  get stats(): BatchingStats {
    return { batches: this.#batches, requests: this.#requests, meanBatch: this.#batches === 0 ? 0 : this.#requests / this.#batches };
  }

  /** Whether `input` can join a batch: one tensor with a batch dimension, no larger than a batch. */
  takes(input: unknown): input is Tensor {
    return input instanceof Tensor && input.shape.length > 0 && input.shape[0] <= this.maxBatch;
  }

  /** Adds a request to the open batch of its kind and row shape; resolves with its rows of the output. */
  add(kind: BatchKind, input: Tensor, admission: QueueAdmission | undefined): Promise<unknown> {
    const key = `${kind}|${input.dtype}|${input.device}|${input.shape.slice(1).join(',')}`;
    return new Promise((resolve, reject) => {
      let batch = this.#open.get(key);
      if (batch && batch.rows + input.shape[0] > this.maxBatch) {
        this.#flush(key, true);
        batch = undefined;
      }
      if (!batch) {
        batch = { kind, rows: 0, waiting: [], timer: setTimeout(() => this.#flush(key), this.maxDelayMs), due: false };
        this.#open.set(key, batch);
      }
      batch.waiting.push({ input, admission, resolve, reject });
      batch.rows += input.shape[0];
      admission?.refused.catch((error: unknown) => {
        // Refused while it waits for its batch: answered now, left out of the batch.
        const at = batch!.waiting.findIndex((w) => w.resolve === resolve);
        if (at >= 0) {
          batch!.rows -= batch!.waiting[at].input.shape[0];
          batch!.waiting.splice(at, 1);
          reject(error);
        }
      });
      // Full, or nothing to wait for: a request that finds the model idle starts at once.
      if (batch.rows >= this.maxBatch || (this.maxDelayMs === 0 && !this.#running.has(key))) this.#flush(key);
    });
  }

  /** Starts every open batch now (before a write joins the model's queue, so call order holds). */
  flushAll(): void {
    for (const key of [...this.#open.keys()]) this.#flush(key, true);
  }

  /**
   * Starts the open batch of `key`. Unless `force`d, it waits while the previous batch of its
   * key is on its way: a busy model then gathers more requests per batch instead of queueing
   * small batches behind each other (the batch grows with the load, up to `maxBatch`).
   */
  #flush(key: string, force = false): void {
    const batch = this.#open.get(key);
    if (!batch) return;
    if (!force && this.#running.has(key)) {
      batch.due = true;
      return;
    }
    this.#open.delete(key);
    clearTimeout(batch.timer);
    const live = batch.waiting.filter((w) => {
      const refusal = w.admission?.refusal();
      if (refusal !== undefined) w.reject(refusal);
      return refusal === undefined;
    });
    if (live.length === 0) return;
    live.forEach((w) => w.admission?.started());
    this.#batches += 1;
    this.#requests += live.length;
    this.#running.add(key);
    this.#run(
      batch.kind,
      live.map((w) => w.input),
    )
      .then(
        (results) => live.forEach((w, i) => w.resolve(results[i])),
        (error: unknown) => live.forEach((w) => w.reject(error)),
      )
      .finally(() => {
        this.#running.delete(key);
        const next = this.#open.get(key);
        if (next && (next.due || next.rows >= this.maxBatch)) this.#flush(key);
      });
  }
}
