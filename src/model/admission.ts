// Admission of inference requests: deadlines (`timeoutMs`), cancellation (`signal`), and the
// per-model cap, checked while a request waits in the model's queue and again on its lane.
import { TorchError } from '../errors';
import { queueLimits } from '../native';
import { checkOptions, checkPositiveNumber, checkString, typeError } from '../validate';

/** Options of one inference request (`predict`, or `model.with(options).forward(...)`). */
export interface RequestOptions {
  /**
   * Milliseconds the request may wait to start, counted from the call. One that cannot start
   * in time rejects with `TORCHLITE_TIMEOUT` and never runs; one that started runs to its end.
   * Defaults to no deadline.
   */
  timeoutMs?: number;
  /** Aborting it rejects the request at once with the signal's reason (an `AbortError`); if it has not started, it never runs. Defaults to none. */
  signal?: AbortSignal;
  /**
   * The LoRA adapter this request runs (see `lora.apply`), without switching the model's: the
   * request sees that adapter from start to end, whatever runs before and after it. Requests
   * naming one are not batched. Defaults to the model's active adapter (`lora.use`).
   */
  adapter?: string;
}

/** @internal What the native job reads: the time left to start (`null`: no deadline), and the adapter (`''`: the active one). */
export interface AdmissionBaton {
  timeoutMs: number | null;
  adapter: string;
}

/** A native job's promise, which can be withdrawn while it waits on its lane. */
type Withdrawable<T> = Promise<T> & { withdraw?: () => void };

/** @internal One inference request on its way to a lane. */
export class Ticket {
  readonly #deadline: number | undefined;
  readonly #signal: AbortSignal | undefined;
  readonly #adapter: string;
  #posted: Withdrawable<unknown> | undefined;
  #started = false;
  #refuse!: (error: unknown) => void;
  #timer: NodeJS.Timeout | undefined;
  readonly #onAbort = () => {
    this.#posted?.withdraw?.();
    this.#refuse(abortReason(this.#signal!));
  };
  /** Rejects when the request is refused while it waits: aborted, or out of time before it reached its lane. */
  readonly refused: Promise<never>;

  constructor(options: RequestOptions | undefined) {
    const o = checkRequestOptions(options);
    this.#signal = o.signal;
    this.#adapter = o.adapter ?? '';
    this.refused = new Promise<never>((_, reject) => {
      this.#refuse = reject;
    });
    this.refused.catch(() => undefined); // observed by the race in `run`; never unhandled
    if (o.timeoutMs !== undefined) {
      this.#deadline = performance.now() + o.timeoutMs;
      // On the lane the native job keeps its own deadline; this one covers the wait in JS.
      this.#timer = setTimeout(() => {
        if (!this.#started) this.#refuse(timeoutError());
      }, o.timeoutMs);
    }
    this.#signal?.addEventListener('abort', this.#onAbort, { once: true });
  }

  /** Why the request must not start now, if it must not. */
  refusal(): unknown {
    if (this.#signal?.aborted) return abortReason(this.#signal);
    if (this.#deadline !== undefined && performance.now() >= this.#deadline) return timeoutError();
    return undefined;
  }

  /** The baton for the native job: the time left to start. */
  baton(): AdmissionBaton {
    return { timeoutMs: this.#deadline === undefined ? null : Math.max(0, this.#deadline - performance.now()), adapter: this.#adapter };
  }

  /** Marks the request as out of the model's queue: from here its deadline is the lane's to check. */
  started(): void {
    this.#started = true;
  }

  /** Keeps the native promise of the request, which can withdraw it from its lane. */
  posted<T>(job: Promise<T>): Promise<T> {
    this.#posted = job;
    return job;
  }

  /** Lets go of the timer and the signal's listener. */
  done(): void {
    clearTimeout(this.#timer);
    this.#signal?.removeEventListener('abort', this.#onAbort);
  }
}

/** @internal `options` checked: a positive `timeoutMs` and an AbortSignal, each optional. */
export function checkRequestOptions(options: RequestOptions | undefined): RequestOptions {
  const o = checkOptions<RequestOptions>(options, 'options', ['timeoutMs', 'signal', 'adapter']);
  if (o.adapter !== undefined) checkString(o.adapter, 'options.adapter');
  if (o.signal !== undefined && !(o.signal instanceof AbortSignal)) throw typeError('an AbortSignal', 'options.signal', o.signal);
  if (o.timeoutMs !== undefined) checkPositiveNumber(o.timeoutMs, 'options.timeoutMs');
  return o;
}

/** Refuses a request at the call when `waiting` requests already wait on its model. */
export function checkModelCapacity(waiting: number): void {
  if (waiting >= queueLimits.model)
    throw new TorchError('TORCHLITE_OVERLOADED', `the model already has ${waiting} inference requests waiting; retry later, or raise the limit with runtime.setQueueLimits({ model })`);
}

function timeoutError(): TorchError {
  return new TorchError('TORCHLITE_TIMEOUT', 'the request could not start within its timeoutMs; it did not run');
}

function abortReason(signal: AbortSignal): unknown {
  return signal.reason ?? new DOMException('This operation was aborted', 'AbortError');
}
