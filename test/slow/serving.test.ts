import { spawnSync } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { loadPretrained, loss, optim, randn, runtime, type Tensor, tensor, TorchError } from '../../src';
import { fixture, PYTHON } from '../helpers';

// 30 seconds of mixed load on one served model: plain and batched forwards, predicts with
// deadlines, random aborts, writes (saves) in between, while a second model trains. Every
// request's input is its own number, and the model computes 2x + 1, so an answer can be
// checked exactly against the request that asked.
describe('serving under a mixed load', () => {
  it('loses no request, answers each once with its own output, and refuses only as documented', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'torchlite-mixed-'));
    writeFileSync(
      join(dir, 'make.py'),
      `import sys, torch
class Affine(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 2 + 1
torch.jit.script(Affine()).save(sys.argv[1])
`,
    );
    expect(spawnSync(PYTHON, [join(dir, 'make.py'), join(dir, 'affine.pt')]).status).toBe(0);
    await using served = await loadPretrained(join(dir, 'affine.pt'));
    await using trained = await loadPretrained(fixture('mlp.scripted.pt'));
    served.eval().batching({ maxBatch: 8, maxDelayMs: 1 });
    trained.train();
    const opt = optim.sgd(trained, { lr: 0.01 });
    let training = true;
    const trainer = (async () => {
      let steps = 0;
      while (training) {
        await trained.trainStep(randn([32, 12]), tensor(BigInt64Array.from({ length: 32 }, (_, i) => BigInt(i % 4))), { loss: loss.crossEntropy(), optimizer: opt });
        steps += 1;
      }
      return steps;
    })();

    const outcomes = { ok: 0, wrong: 0, aborted: 0, timedOut: 0, overloaded: 0, other: 0, settledTwice: 0 };
    const settled = new Set<number>();
    const wrongs: { id: number; kind: string; expected: number[]; got: number[] }[] = [];
    const inflight: Promise<void>[] = [];
    let issued = 0;
    const end = performance.now() + 30_000;
    let seed = 1;
    const random = () => ((seed = (seed * 48271) % 2147483647) / 2147483647);
    while (performance.now() < end) {
      const id = issued++;
      const rows = 1 + Math.floor(random() * 3);
      const x = tensor(Float32Array.from({ length: rows * 2 }, (_, k) => id + k / 10), [rows, 2]);
      const abort = random() < 0.1 ? new AbortController() : undefined;
      const timeoutMs = random() < 0.2 ? 1 + random() * 20 : undefined;
      const kind = random();
      const request: Promise<Tensor> =
        kind < 0.6
          ? served.with({ signal: abort?.signal, ...(timeoutMs && { timeoutMs }) }).forward<Tensor>(x)
          : served.with({ signal: abort?.signal }).call<Tensor>('forward', x);
      if (abort) setTimeout(() => abort.abort(), random() * 5);
      inflight.push(
        request.then(
          (out) => {
            if (settled.has(id)) outcomes.settledTwice += 1;
            settled.add(id);
            // In float32, as the model computes it: 2x + 1 of a small x with tenths is not a float32 in double arithmetic.
            const expected = Array.from(x.toTypedArray() as Float32Array, (v) => Math.fround(v * 2 + 1));
            const got = Array.from(out.toTypedArray() as Float32Array);
            if (got.length === expected.length && got.every((v, k) => v === expected[k])) outcomes.ok += 1;
            else {
              outcomes.wrong += 1;
              wrongs.push({ id, kind: kind < 0.6 ? 'forward' : 'call', expected, got });
            }
          },
          (error: unknown) => {
            if (settled.has(id)) outcomes.settledTwice += 1;
            settled.add(id);
            const code = (error as TorchError).code;
            if ((error as Error).name === 'AbortError') outcomes.aborted += 1;
            else if (code === 'TORCHLITE_TIMEOUT') outcomes.timedOut += 1;
            else if (code === 'TORCHLITE_OVERLOADED') outcomes.overloaded += 1;
            else outcomes.other += 1;
          },
        ),
      );
      if (id % 200 === 199) void served.save(join(dir, 'copy.pt'));
      // About 400 requests per second, in bursts that sometimes fill the model's queue.
      if (id % 20 === 19) await new Promise((resolve) => setTimeout(resolve, 50));
    }
    await Promise.all(inflight);
    training = false;
    const steps = await trainer;
    const answered = outcomes.ok + outcomes.wrong + outcomes.aborted + outcomes.timedOut + outcomes.overloaded + outcomes.other;
    if (wrongs.length > 0) console.log(`wrong answers: ${JSON.stringify(wrongs.slice(0, 3))}`);
    expect({ answered, wrong: outcomes.wrong, other: outcomes.other, settledTwice: outcomes.settledTwice }).toEqual({ answered: issued, wrong: 0, other: 0, settledTwice: 0 });
    expect(settled.size).toBe(issued);
    expect(outcomes.ok).toBeGreaterThan(issued / 2);
    expect(outcomes.aborted).toBeGreaterThan(0);
    expect(steps).toBeGreaterThan(0);
    expect(served.pending).toBe(0);
    expect(served.batchingStats!.meanBatch).toBeGreaterThan(1);
    const lanes = runtime.queue();
    expect(lanes.every((l) => l.queuedInference === 0)).toBe(true);
    console.log(`mixed load: ${issued} requests, ${JSON.stringify(outcomes)}, ${steps} training steps, batches of ${served.batchingStats!.meanBatch.toFixed(2)} on average`);
  }, 120_000);
});
