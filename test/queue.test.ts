import { describe, expect, it } from 'vitest';
import { OperationQueue } from '../src/model/queue';

/** A fake operation: records when it starts and ends, and finishes when told. */
function fake(log: string[], name: string) {
  let finish!: (value: string) => void;
  let fail!: (error: Error) => void;
  const done = new Promise<string>((resolve, reject) => {
    finish = resolve;
    fail = reject;
  });
  const op = async () => {
    log.push(`${name} start`);
    try {
      return await done;
    } finally {
      log.push(`${name} end`);
    }
  };
  return { op, finish: () => finish(name), fail: (message: string) => fail(new Error(message)) };
}

const tick = () => new Promise((resolve) => setImmediate(resolve));

describe('OperationQueue', () => {
  it('runs writes one at a time in call order, and reads between two writes together', async () => {
    const q = new OperationQueue();
    const log: string[] = [];
    const w1 = fake(log, 'w1');
    const r1 = fake(log, 'r1');
    const r2 = fake(log, 'r2');
    const w2 = fake(log, 'w2');
    const results = [q.run(w1.op), q.run(r1.op, true), q.run(r2.op, true), q.run(w2.op)];
    expect(q.pending).toBe(4);
    await tick();
    expect(log).toEqual(['w1 start']);
    w1.finish();
    await tick();
    expect(log).toEqual(['w1 start', 'w1 end', 'r1 start', 'r2 start']); // the reads do not wait for each other
    r2.finish();
    await tick();
    expect(log).not.toContain('w2 start'); // a write waits for every read before it
    r1.finish();
    await tick();
    expect(log.at(-1)).toBe('w2 start');
    w2.finish();
    expect(await Promise.all(results)).toEqual(['w1', 'r1', 'r2', 'w2']);
    expect(q.pending).toBe(0);
  });

  it('goes on after a failed operation, which rejects only its own caller', async () => {
    const q = new OperationQueue();
    const log: string[] = [];
    const bad = fake(log, 'bad');
    const next = fake(log, 'next');
    const failed = q.run(bad.op);
    const after = q.run(next.op);
    bad.fail('boom');
    await expect(failed).rejects.toThrow('boom');
    next.finish();
    expect(await after).toBe('next');
    expect(q.pending).toBe(0);
  });

  it('has pending down before the caller resumes, and idle() waits for operations queued meanwhile', async () => {
    const q = new OperationQueue();
    const log: string[] = [];
    const a = fake(log, 'a');
    const b = fake(log, 'b');
    const first = q.run(a.op);
    const seen = first.then(() => q.pending);
    let idle = false;
    const waiting = q.idle().then(() => {
      idle = true;
    });
    const second = q.run(b.op); // queued after idle() started waiting
    a.finish();
    expect(await seen).toBe(1); // only the second is left
    await tick();
    expect(idle).toBe(false);
    b.finish();
    await Promise.all([second, waiting]);
    expect(idle).toBe(true);
    expect(q.pending).toBe(0);
  });

  it('refuses a synchronous method while operations are pending with a TypeError that keeps its code', async () => {
    const q = new OperationQueue();
    const a = fake([], 'a');
    q.requireIdle('replace()');
    const running = q.run(a.op);
    const error = (() => {
      try {
        q.requireIdle('replace()');
      } catch (e) {
        return e;
      }
    })();
    expect(error).toBeInstanceOf(TypeError);
    expect(error).toMatchObject({ code: 'TORCHLITE_MODEL_BUSY', message: 'replace() cannot run while the model has 1 operation pending; await them first (e.g. `await model.idle()`)' });
    a.finish();
    await running;
    expect(() => q.requireIdle('replace()')).not.toThrow();
  });

  it('applies a change at once when idle, and behind pending operations otherwise', async () => {
    const q = new OperationQueue();
    const log: string[] = [];
    q.apply(() => void log.push('now'));
    expect(log).toEqual(['now']);
    const a = fake(log, 'a');
    const running = q.run(a.op);
    q.apply(() => void log.push('later'));
    await tick();
    expect(log).toEqual(['now', 'a start']);
    a.finish();
    await running;
    await q.idle();
    expect(log).toEqual(['now', 'a start', 'a end', 'later']);
  });

  it('gives up a place in a collective order however the operation ends, or when queueing fails', async () => {
    const q = new OperationQueue();
    let released = 0;
    const turn = { release: () => void (released += 1) };
    await q.runInTurn(turn, async () => 1);
    await expect(q.runInTurn(turn, async () => Promise.reject(new Error('failed')))).rejects.toThrow('failed');
    expect(released).toBe(2);
    // The operation's own setup throwing before it queues (a disposed model): released at once.
    const broken = Object.create(q) as OperationQueue;
    broken.run = () => {
      throw new Error('not queued');
    };
    expect(() => broken.runInTurn(turn, async () => 1)).toThrow('not queued');
    expect(released).toBe(3);
  });
});
