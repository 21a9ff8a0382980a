import { spawnSync } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import { loadPretrained, type Model, randn, runtime, type Tensor, tensor } from '../src';
import { Model as ModelClass } from '../src/model';
import { fixture, hasTorch, PYTHON, relativeDiff } from './helpers';

// A model that counts its forwards (so a test can tell that a refused request never ran) and
// a slow one that keeps the CPU inference lane busy for a while.
const MAKE = `import sys, torch
class Counter(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.calls = 0
        self.lin = torch.nn.Linear(4, 2)
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.lin(x)
    @torch.jit.export
    def count(self) -> int:
        return self.calls
class Slow(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for _ in range(400):
            x = torch.tanh(x @ x)
        return x
torch.jit.script(Counter()).save(sys.argv[1] + '/counter.pt')
torch.jit.script(Slow()).save(sys.argv[1] + '/slow.pt')
`;

let dir = '';
beforeAll(() => {
  if (!hasTorch) return;
  dir = mkdtempSync(join(tmpdir(), 'torchlite-serving-'));
  writeFileSync(join(dir, 'make.py'), MAKE);
  const run = spawnSync(PYTHON, [join(dir, 'make.py'), dir], { encoding: 'utf8' });
  if (run.status !== 0) throw new Error(run.stderr);
});

afterEach(() => {
  runtime.setQueueLimits({ model: 64, lane: 256 });
});

/** Holds the model's queue with a write that finishes when `open()` is called. */
function hold(model: Model) {
  let open!: () => void;
  const gate = new Promise<void>((resolve) => {
    open = resolve;
  });
  const held = ModelClass.enqueue(model, () => gate);
  return { open, held };
}

const x = () => randn([1, 4]);

describe.runIf(hasTorch)('serving: deadlines, caps and aborts', () => {
  it('a request whose deadline passes while it waits in the model queue rejects with TORCHLITE_TIMEOUT and never runs', async () => {
    await using m = await loadPretrained(join(dir, 'counter.pt'));
    const { open, held } = hold(m);
    const started = performance.now();
    await expect(m.with({ timeoutMs: 40 }).forward(x())).rejects.toMatchObject({ code: 'TORCHLITE_TIMEOUT', message: 'the request could not start within its timeoutMs; it did not run' });
    expect(performance.now() - started).toBeGreaterThanOrEqual(35);
    expect(m.pending).toBe(1); // its place is given up at once; only the held write is left
    open();
    await held;
    expect(await m.call('count')).toBe(0);
    await m.with({ timeoutMs: 1000 }).forward(x()); // in time: it runs
    expect(await m.call('count')).toBe(1);
  });

  it('a request that reaches its lane past its deadline rejects without running, and the lane counts it', async () => {
    await using slow = await loadPretrained(join(dir, 'slow.pt'));
    await using m = await loadPretrained(join(dir, 'counter.pt'));
    const before = runtime.queue().find((l) => l.lane === 'cpu:inference')?.timedOut ?? 0;
    const busy = slow.forward(randn([192, 192]));
    // 20 ms: long enough that a pause on a loaded machine cannot expire it before it is posted
    // (the model's queue would refuse it, uncounted by the lane), short beside the busy forward.
    const late = m.with({ timeoutMs: 20 }).forward(x());
    await expect(late).rejects.toMatchObject({ code: 'TORCHLITE_TIMEOUT' });
    await busy;
    expect(await m.call('count')).toBe(0);
    expect(runtime.queue().find((l) => l.lane === 'cpu:inference')!.timedOut).toBe(before + 1);
  });

  it('the per-model cap refuses at once with TORCHLITE_OVERLOADED, and an aborted request frees its slot', async () => {
    await using m = await loadPretrained(join(dir, 'counter.pt'));
    runtime.setQueueLimits({ model: 2 });
    const { open, held } = hold(m);
    const abort = new AbortController();
    const a = m.with({ signal: abort.signal }).forward(x());
    const b = m.forward(x());
    const refused = m.forward(x());
    await expect(refused).rejects.toMatchObject({ code: 'TORCHLITE_OVERLOADED', message: 'the model already has 2 inference requests waiting; retry later, or raise the limit with runtime.setQueueLimits({ model })' });
    abort.abort();
    await expect(a).rejects.toMatchObject({ name: 'AbortError' });
    const c = m.predict(x()); // a's slot is free again
    open();
    await Promise.all([held, b, c]);
    expect(await m.call('count')).toBe(2); // b and c; a never ran
  });

  it('a signal aborted before the call refuses it at once; a request on its lane can be withdrawn', async () => {
    await using slow = await loadPretrained(join(dir, 'slow.pt'));
    await using m = await loadPretrained(join(dir, 'counter.pt'));
    await expect(m.with({ signal: AbortSignal.abort() }).forward(x())).rejects.toMatchObject({ name: 'AbortError' });
    const busy = slow.forward(randn([160, 160]));
    const abort = new AbortController();
    const waiting = m.with({ signal: abort.signal }).forward(x()); // on the lane, behind the slow job
    await new Promise((resolve) => setTimeout(resolve, 5));
    abort.abort(new Error('client went away'));
    await expect(waiting).rejects.toThrow('client went away');
    await busy;
    expect(await m.call('count')).toBe(0);
  });

  it('the lane cap refuses at once and runtime.queue() counts refusals and reports queue waits', async () => {
    await using slow = await loadPretrained(join(dir, 'slow.pt'));
    await using m = await loadPretrained(join(dir, 'counter.pt'));
    runtime.setQueueLimits({ lane: 1 });
    const lane = () => runtime.queue().find((l) => l.lane === 'cpu:inference')!;
    const rejected = lane()?.rejected ?? 0;
    const busy = slow.forward(randn([160, 160])); // running: not queued
    await new Promise((resolve) => setTimeout(resolve, 5));
    const queued = m.forward(x());
    await expect(m.forward(x())).rejects.toMatchObject({ code: 'TORCHLITE_OVERLOADED' });
    await Promise.all([busy, queued]);
    const after = lane();
    expect(after.rejected).toBe(rejected + 1);
    expect(after.waitP99Ms).toBeGreaterThan(0);
    expect(after.waitP99Ms).toBeGreaterThanOrEqual(after.waitP50Ms);
  });

  it('checks its options', async () => {
    await using m = await loadPretrained(join(dir, 'counter.pt'));
    expect(() => m.with({ timeoutMs: 0 })).toThrow(new RangeError('Expected a positive number for `options.timeoutMs` but received 0'));
    expect(() => m.with({ signal: {} as AbortSignal })).toThrow(new TypeError('Expected an AbortSignal for `options.signal` but received an object'));
    expect(() => runtime.setQueueLimits({ model: -1 })).toThrow(RangeError);
    const y = await m.predict(tensor([1, 2, 3, 4], [1, 4]), { timeoutMs: 1000 });
    expect((y.probabilities as Tensor).shape).toEqual([1, 2]);
  });
});

describe('serving: dynamic batching', () => {
  const values = (t: Tensor) => Array.from(t.toTypedArray() as Float32Array);

  it('runs concurrent requests as one batch; each gets its own rows, equal to running alone', async () => {
    await using m = await loadPretrained(fixture('resnet_small.scripted.pt'));
    m.eval();
    const inputs = [1, 1, 2, 1, 1, 1].map((n) => randn([n, 3, 16, 16]));
    const alone = await Promise.all(inputs.map((x) => m.forward<Tensor>(x)));
    const alonePredict = await Promise.all(inputs.map((x) => m.predict(x)));
    m.batching({ maxBatch: 8, maxDelayMs: 50 });
    const batched = await Promise.all(inputs.map((x) => m.forward<Tensor>(x)));
    expect(m.batchingStats).toEqual({ batches: 1, requests: 6, meanBatch: 6 });
    batched.forEach((out, i) => {
      expect(out.shape).toEqual(alone[i].shape);
      expect(relativeDiff(values(out), values(alone[i]))).toBeLessThan(1e-5);
    });
    // Outputs of different requests differ (no request sees another's rows).
    expect(relativeDiff(values(batched[0]), values(batched[1]))).toBeGreaterThan(1e-3);
    const predicted = await Promise.all(inputs.map((x) => m.predict(x)));
    predicted.forEach((p, i) => {
      expect(relativeDiff(values(p.probabilities), values(alonePredict[i].probabilities))).toBeLessThan(1e-5);
      expect(Array.from(p.argmax.toTypedArray() as BigInt64Array)).toEqual(Array.from(alonePredict[i].argmax.toTypedArray() as BigInt64Array));
    });
    expect(m.batchingStats!.batches).toBe(2);
  });

  it('splits at maxBatch, keeps other row shapes apart, and starts open batches before a later write', async () => {
    await using m = await loadPretrained(fixture('mlp.scripted.pt'));
    m.eval().batching({ maxBatch: 4, maxDelayMs: 1000 });
    const rows = [1, 2, 1, 3].map((n) => randn([n, 12])); // 4 rows fill a batch; the 3-row one waits
    const first = Promise.all(rows.slice(0, 3).map((x) => m.forward<Tensor>(x)));
    const pending = m.forward<Tensor>(rows[3]);
    const out = await first;
    expect(out.map((t) => t.shape)).toEqual([[1, 4], [2, 4], [1, 4]]);
    expect(m.batchingStats).toMatchObject({ batches: 1, requests: 3 });
    m.train(); // a write: the waiting batch starts before it, in eval mode
    expect((await pending).shape).toEqual([3, 4]);
    expect(m.batchingStats).toMatchObject({ batches: 2, requests: 4 });
    expect(() => m.batching({ maxBatch: 0 })).toThrow(new RangeError('Expected a positive integer for `options.maxBatch` but received 0'));
    m.batching(false);
    expect(m.batchingStats).toBeUndefined();
  });
});
