// The order a model's operations run in: one queue per model, in call order, with
// consecutive reads (inference) allowed to run together.
import { busyError } from '../errors';

/** What can refuse a queued operation: a request's deadline or abort (see admission.ts). */
export interface QueueAdmission {
  /** Why the operation must not start now, if it must not. */
  refusal(): unknown;
  /** Rejects when the operation is refused while it waits. */
  readonly refused: Promise<never>;
  /** Told when the operation leaves the wait (its deadline is then the lane's to check). */
  started(): void;
  /** Told when the operation has settled, however it ended. */
  done(): void;
}

/**
 * Runs operations in call order. Consecutive reads (inference) do not wait for each other:
 * they reach their lane together and run back to back there, in call order, so a server's
 * requests are not each held up by a training step on a shared lane. Any other operation
 * (a write) waits for everything before it, and everything after it waits for it.
 * Knows nothing of models: its operations are plain async functions (tests use fakes).
 */
export class OperationQueue {
  #lastWrite: Promise<unknown> = Promise.resolve();
  #reads: Promise<unknown>[] = [];
  #pending = 0;
  #pendingReads = 0;

  /**
   * Runs before every write joins the queue, before a synchronous change, and before the queue
   * is checked idle or awaited: what the owner holds back from the queue (requests waiting for
   * a batch) joins it first, so call order holds.
   */
  beforeWrite: () => void = () => undefined;

  /** How many operations are queued or running. */
  get pending(): number {
    return this.#pending;
  }

  /** How many of them are reads. */
  get pendingReads(): number {
    return this.#pendingReads;
  }

  /**
   * Queues `op` behind the operations queued before it (behind the last write only, for a
   * read). With `admission`, `op` is not started if it is refused by then, and the returned
   * promise rejects as soon as it is refused while waiting (its place is given up at once).
   */
  run<T>(op: () => Promise<T>, read = false, admission?: QueueAdmission): Promise<T> {
    if (!read) this.beforeWrite();
    this.#pending += 1;
    if (read) this.#pendingReads += 1;
    const before = read ? this.#lastWrite : this.everything();
    const start = () => {
      const refusal = admission?.refusal();
      if (refusal !== undefined) throw refusal;
      admission?.started();
      return op();
    };
    const run = admission ? Promise.race([before.then(start), admission.refused]) : before.then(start);
    // Registered before the caller's own reaction, so `pending` is down when it resumes.
    const done = () => {
      this.#pending -= 1;
      if (read) this.#pendingReads -= 1;
      admission?.done();
    };
    const settled = run.then(done, done);
    if (read) {
      this.#reads.push(settled);
      void settled.then(() => {
        const at = this.#reads.indexOf(settled);
        if (at >= 0) this.#reads.splice(at, 1);
      });
    } else {
      this.#lastWrite = settled;
      this.#reads = [];
    }
    return run;
  }

  /**
   * Queues `op`, which holds a place in a process group's order of collectives (taken at the
   * call, awaited by `op` where its collective starts): the place is given up however `op`
   * ends, or at once if queueing fails, so the group's later collectives never wait on it.
   */
  runInTurn<T>(turn: { release(): void }, op: () => Promise<T>, read = false): Promise<T> {
    try {
      return this.run(async () => {
        try {
          return await op();
        } finally {
          turn.release();
        }
      }, read);
    } catch (error) {
      turn.release();
      throw error;
    }
  }

  /** Runs a cheap synchronous change now when nothing is queued, else queues it as a write. */
  apply(change: () => void): void {
    this.beforeWrite();
    if (this.#pending === 0) change();
    else void this.run(async () => change()).catch(() => undefined);
  }

  /** Throws `TORCHLITE_MODEL_BUSY` (a TypeError) when operations are pending: `what` would overtake them. */
  requireIdle(what: string): void {
    this.beforeWrite();
    if (this.#pending > 0)
      throw busyError(`${what} cannot run while the model has ${this.#pending} operation${this.#pending === 1 ? '' : 's'} pending; await them first (e.g. \`await model.idle()\`)`);
  }

  /** Settles when everything queued so far has. */
  everything(): Promise<unknown> {
    return this.#reads.length === 0 ? this.#lastWrite : Promise.all([this.#lastWrite, ...this.#reads]);
  }

  /** Resolves when every operation queued so far, and any queued meanwhile, has settled. */
  async idle(): Promise<void> {
    this.beforeWrite();
    while (this.#pending > 0) await this.everything();
  }
}
