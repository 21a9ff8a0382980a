// Data-parallel training on c10d/Gloo: 2 ranks on 127.0.0.1, one thread each, started by
// `torchlite run` (test/distributed/worker.mjs is one rank). Every child has a deadline,
// so a hang fails a test instead of stalling the suite.
import { spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { describe, expect, it } from 'vitest';

import { cuda, data, distributed, loadPretrained } from '../src';
import { native } from '../src/native';
import { fixture, freePort, hasTorch, PYTHON, root } from './helpers';

const CLI = join(root, 'lib', 'cli', 'main.js');
const WORKER = join(root, 'test', 'distributed', 'worker.mjs');
const JOIN = join(root, 'test', 'distributed', 'join.mjs');

/** Runs a scenario on 2 ranks; resolves the launcher's exit and each rank's JSON. */
function launch(scenario: string, ...args: string[]) {
  const out = mkdtempSync(join(tmpdir(), 'torchlite-dist-'));
  const r = spawnSync(process.execPath, [CLI, 'run', '--nproc', '2', WORKER, scenario, out, ...args], { encoding: 'utf8', timeout: 60_000 });
  const read = (rank: number) => {
    try {
      return JSON.parse(readFileSync(join(out, `rank-${rank}.json`), 'utf8'));
    } catch {
      return undefined;
    }
  };
  return { status: r.status, stdout: r.stdout, stderr: r.stderr, ranks: [read(0), read(1)] };
}

/** ‖a − b‖ / ‖b‖. */
function relative(a: number[], b: number[]): number {
  let diff = 0;
  let norm = 0;
  for (let i = 0; i < b.length; i++) {
    diff += (a[i] - b[i]) ** 2;
    norm += b[i] ** 2;
  }
  return a.length === b.length ? Math.sqrt(diff / norm) : Infinity;
}

/** Starts join.mjs as the given ranks at once; resolves what each printed. */
async function join2(ranks: { rank: number; worldSize: number }[], port: number, initTimeoutMs: number) {
  const runs = ranks.map(
    ({ rank, worldSize }) =>
      new Promise<{ code?: string; message?: string; ok?: boolean }>((resolve) => {
        const child = spawn(process.execPath, [JOIN], {
          env: { ...process.env, RANK: String(rank), WORLD_SIZE: String(worldSize), MASTER_ADDR: '127.0.0.1', MASTER_PORT: String(port), INIT_TIMEOUT_MS: String(initTimeoutMs) },
          timeout: 30_000,
        });
        let text = '';
        child.stdout.on('data', (chunk) => (text += chunk));
        child.on('close', () => resolve(text ? JSON.parse(text) : { code: 'no output' }));
      }),
  );
  return Promise.all(runs);
}

describe('distributed loader', () => {
  const golden = JSON.parse(readFileSync(fixture('distributed-sampler.json'), 'utf8')) as {
    cases: { n: number; worldSize: number; rank: number; shuffle: boolean; dropLast: boolean; seed: number; epochs: number[][] }[];
  };

  it("gives each rank exactly PyTorch's DistributedSampler shard: permutation, padding and dropLast", () => {
    expect(golden.cases.length).toBe(120);
    for (const c of golden.cases) {
      const ds = data.tensorDataset(new Float32Array(c.n), new Int32Array(c.n), { inputShape: [1] });
      const l = data.loader(ds, { batchSize: 2, shuffle: c.shuffle, seed: c.seed, dropLast: c.dropLast, distributed: { rank: c.rank, worldSize: c.worldSize } });
      c.epochs.forEach((expected, epoch) => expect({ ...c, epoch, order: l.order(epoch) }).toEqual({ ...c, epoch, order: expected }));
    }
  });

  it('marks the padding samples of a shard, which evaluate leaves out', async () => {
    // 5 samples on 2 ranks: rank 1 gets 3, 4 and then 0 again as padding.
    const ds = data.tensorDataset(new Float32Array(5), new Int32Array(5), { inputShape: [1] });
    const batches = [];
    for await (const b of data.loader(ds, { batchSize: 2, distributed: { rank: 1, worldSize: 2 } })) batches.push({ indices: b.indices, padding: b.padding });
    expect(batches).toEqual([{ indices: [1, 3], padding: undefined }, { indices: [0], padding: 1 }]);
    expect(() => data.loader(ds, { distributed: { rank: 2, worldSize: 2 } })).toThrow(new RangeError('Expected a rank below the world size 2 for `options.distributed.rank` but received 2'));
  });
});

describe('distributed: process groups and data-parallel training on 2 ranks', () => {
  it('collectives give the known values, in call order even when called together', () => {
    const { status, ranks } = launch('collectives');
    expect(status).toBe(0);
    for (const r of ranks) expect(r).toEqual({ sum: [3, 30], max: 1, avg: 2, broadcast: [4, -1], gathered: [[0, 1], [7, 1]] });
  });

  const plain = new Map<string, number[]>();
  const cases = [['sgd', ''], ['adamw', ''], ['adamw', 'freeze'], ['sgd', 'accumulate'], ['adamw', 'accumulate'], ['sgd', 'overlap'], ['adamw', 'overlap freeze'], ['sgd', 'overlap accumulate']];
  for (const [kind, variant] of cases) {
    it(`2 ranks × B equal 1 process × 2B: ${kind}${variant ? `, ${variant}` : ''}, 5 steps`, () => {
      const { status, stderr, ranks } = launch('equivalence', kind, ...variant.split(' '));
      expect(stderr).toBe('');
      expect(status).toBe(0);
      const [r0, r1] = ranks;
      expect(r1.start).toEqual(r0.start); // rank 1 started from other weights; dataParallel broadcast rank 0's
      expect(r1.weights).toEqual(r0.weights); // the ranks stay identical, bit for bit
      expect(relative(r0.weights, r0.single.weights)).toBeLessThan(1e-5);
      const mean = r0.losses[0].map((l: number, i: number) => (l + r0.losses[1][i]) / 2);
      expect(relative(mean, r0.single.losses)).toBeLessThan(1e-5);
      if (variant.includes('freeze')) expect(r0.weights.slice(0, 10)).toEqual(r0.start.slice(0, 10)); // net.0.bias stays as it was
      // Sending buckets during backward, one per parameter, changes nothing: bit for bit the plain sync's result.
      const key = `${kind} ${variant.replace('overlap', '').trim()}`;
      if (!variant.includes('overlap')) plain.set(key, r0.weights);
      else expect(r0.weights).toEqual(plain.get(key) ?? launch('equivalence', kind, ...variant.replace('overlap', '').split(' ')).ranks[0].weights);
    });
  }

  for (const mode of ['', 'overlap']) {
    it(`a non-finite loss on one rank skips that update on every rank${mode ? ', buckets sent during backward' : ''}`, () => {
      const { status, stderr, ranks } = launch('skip', mode);
      expect(stderr).toBe('');
      expect(status).toBe(0);
      for (const r of ranks) {
        expect(r.skipped).toEqual([false, true, false]);
        expect(r.afterSkip).toEqual(r.beforeSkip); // the skipped update moved nothing
      }
      expect(ranks[1].weights).toEqual(ranks[0].weights);
      expect(ranks[0].weights).not.toEqual(ranks[0].afterSkip); // the step after it trained again
    });
  }

  it('evaluate on a sharded loader reduces over ranks without counting the padding twice', () => {
    const { status, ranks } = launch('metrics');
    expect(status).toBe(0);
    for (const { sharded, whole } of ranks) {
      expect(sharded.loss).toBeCloseTo(whole.loss, 6);
      expect({ ...sharded, loss: 0 }).toEqual({ ...whole, loss: 0 });
    }
  });

  it('a 2-rank fit resumed from its checkpoint equals the uninterrupted run bit for bit (dropout included)', () => {
    const dirs = [mkdtempSync(join(tmpdir(), 'torchlite-ck-')), mkdtempSync(join(tmpdir(), 'torchlite-ck-'))];
    const straight = launch('training', '3', '-', dirs[0]);
    expect(straight.status).toBe(0);
    expect(launch('training', '2', '-', dirs[1]).status).toBe(0);
    const resumed = launch('training', '3', join(dirs[1], 'epoch-2.ckpt'), dirs[1]);
    expect(resumed.stderr).toBe('');
    for (const rank of [0, 1]) {
      expect(resumed.ranks[rank].weights).toEqual(straight.ranks[rank].weights);
      expect(resumed.ranks[rank].history).toEqual(straight.ranks[rank].history);
    }
    expect(straight.ranks[1].weights).toEqual(straight.ranks[0].weights);
  });

  it('a rank that dies fails the other fast with TORCHLITE_DIST_PEER_LOST; the launcher stops and exits with its code', async () => {
    const port = await freePort();
    const out = mkdtempSync(join(tmpdir(), 'torchlite-crash-'));
    const ranks = [0, 1].map(
      (rank) =>
        new Promise<void>((resolve) => {
          spawn(process.execPath, [WORKER, 'crash', out], { env: { ...process.env, RANK: String(rank), WORLD_SIZE: '2', MASTER_PORT: String(port) }, timeout: 30_000 }).on('close', () => resolve());
        }),
    );
    await Promise.all(ranks);
    const survivor = JSON.parse(readFileSync(join(out, 'rank-0.json'), 'utf8'));
    expect(survivor.error).toBe('TORCHLITE_DIST_PEER_LOST');
    expect(survivor.message).toContain('rank 0 lost its connection to rank 1 during allReduce');
    expect(survivor.seconds).toBeLessThan(5);

    const launched = launch('crash');
    expect(launched.status).toBe(3);
    expect(launched.stderr).toContain('torchlite run: rank 1 exited with code 3; stopping the other ranks');
    const orphans = spawnSync('pgrep', ['-f', `${WORKER} crash`], { encoding: 'utf8' }).stdout.trim();
    expect(orphans).toBe('');
  });

  it('init refuses a used port, a world-size mismatch and a missing rank with coded errors', async () => {
    const busy = createServer();
    const port = await new Promise<number>((resolve) => busy.listen(0, '127.0.0.1', () => resolve((busy.address() as { port: number }).port)));
    try {
      const [used] = await join2([{ rank: 0, worldSize: 2 }], port, 2000);
      expect(used.code).toBe('TORCHLITE_DIST_PORT_IN_USE');
      expect(used.message).toContain('Pass another `masterPort`');
    } finally {
      busy.close();
    }
    const mismatch = await join2([{ rank: 0, worldSize: 2 }, { rank: 1, worldSize: 3 }], await freePort(), 10_000);
    for (const r of mismatch) {
      expect(r.code).toBe('TORCHLITE_DIST_WORLD_MISMATCH');
      expect(r.message).toBe('the ranks disagree on the world size: rank 0 has 2, rank 1 has 3; give every process the same WORLD_SIZE');
    }
    const [alone] = await join2([{ rank: 0, worldSize: 3 }], await freePort(), 1500);
    expect(alone.code).toBe('TORCHLITE_DIST_TIMEOUT');
    expect(alone.message).toMatch(/^rank\(s\) 1, 2 did not join 127\.0\.0\.1:\d+ within 1\.5 s \(world size 3\): start them, or lower WORLD_SIZE$/);
  });

  // The example takes fineTune's defaults: one run at lr 1e-2, 4 + 12 epochs of 10 steps a rank.
  it("the README's example fine-tunes on 2 ranks through `torchlite run`, rank 0 alone printing and writing checkpoints", { timeout: 330_000 }, () => {
    const cwd = mkdtempSync(join(tmpdir(), 'torchlite-example-'));
    const r = spawnSync(process.execPath, [CLI, 'run', '--nproc', '2', join(root, 'examples', 'data-parallel.mjs')], { cwd, encoding: 'utf8', timeout: 300_000 });
    expect(r.status).toBe(0);
    expect(r.stdout).toMatch(/^\[rank 0\] validation accuracy \d+\.\d% on 2 ranks$/m);
    expect(r.stdout).not.toContain('[rank 1]'); // progress and results on rank 0 only
    expect(readdirSync(join(cwd, 'ddp-checkpoints')).sort()).toEqual(['best.ckpt', 'epoch-4.ckpt', 'stage-1-epoch-12.ckpt']);
  });

  it.skipIf(!hasTorch)("joins torchrun's agent store (TORCHELASTIC_USE_AGENT_STORE), here served by Python's TCPStore", async () => {
    const port = await freePort();
    const agent = spawn(PYTHON, ['-c', `import time, datetime\nfrom torch.distributed import TCPStore\ns = TCPStore('127.0.0.1', ${port}, 2, True, datetime.timedelta(seconds=30), wait_for_workers=False)\nprint('up', flush=True)\ntime.sleep(20)`], { timeout: 30_000 });
    await new Promise((resolve) => agent.stdout.once('data', resolve));
    try {
      const env = { TORCHELASTIC_USE_AGENT_STORE: 'True', TORCHELASTIC_RESTART_COUNT: '0' };
      const results = await Promise.all(
        [0, 1].map(
          (rank) =>
            new Promise<string>((resolve) => {
              const child = spawn(process.execPath, [JOIN], { env: { ...process.env, ...env, RANK: String(rank), WORLD_SIZE: '2', MASTER_PORT: String(port), INIT_TIMEOUT_MS: '10000' }, timeout: 30_000 });
              let text = '';
              child.stdout.on('data', (chunk) => (text += chunk));
              child.on('close', () => resolve(text.trim()));
            }),
        ),
      );
      expect(results).toEqual(['{"ok":true}', '{"ok":true}']);
    } finally {
      agent.kill();
    }
  });

  it('validates its options before connecting', async () => {
    await expect(distributed.init({ rank: 2, worldSize: 2 })).rejects.toThrow(new RangeError('Expected a rank below the world size 2 but received 2; ranks run from 0 to 1'));
    await expect(distributed.init({ masterPort: 70000 })).rejects.toThrow(new RangeError('Expected a port number (1–65535) for `options.masterPort` but received 70000'));
    if (!cuda.isAvailable())
      await expect(distributed.init({ backend: 'nccl' })).rejects.toMatchObject({
        code: 'TORCHLITE_DIST_UNAVAILABLE',
        message: native.ncclBuild
          ? "backend 'nccl' needs a GPU but no CUDA device is visible; use backend 'gloo' (or 'auto')"
          : "this build of torchlite has no NCCL (it needs a CUDA LibTorch and nccl.h when the addon is built); use backend 'gloo' (or 'auto'), which also reduces CUDA tensors by way of the host",
      });
    expect(() => distributed.dataParallel({} as never, { group: {} as never })).toThrow(new TypeError('Expected a Model for `model` but received an object'));
    await using group = await distributed.init({ rank: 0, worldSize: 1, masterPort: await freePort() });
    await using model = await loadPretrained(fixture('mlp.scripted.pt'));
    expect(() => distributed.dataParallel(model, { group, overlap: 'yes' as never })).toThrow(new TypeError("Expected a boolean for `options.overlap` but received 'yes'"));
    expect(() => distributed.dataParallel(model, { group, bucketCapMb: 0 })).toThrow(new RangeError('Expected a positive number for `options.bucketCapMb` but received 0'));
  });
});
