// `torchlite run`: starts the ranks of a data-parallel job on this machine with torchrun's
// environment, prefixes their output with the rank, and stops them all at the first
// failure (torchrun's behaviour without elastic restarts).
import { type ChildProcess, spawn } from 'node:child_process';
import { createServer } from 'node:net';
import { createInterface } from 'node:readline';

import { intFlag } from './flags';

export interface RunFlags {
  nproc: string;
  nnodes: string;
  nodeRank: string;
  masterAddr: string;
  masterPort?: string;
}

/** A port the system has just called free (a single-node job needs no agreed port). */
function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address() as { port: number };
      server.close(() => resolve(port));
    });
  });
}

function prefixed(stream: NodeJS.ReadableStream, out: NodeJS.WritableStream, rank: number): void {
  createInterface({ input: stream }).on('line', (line) => out.write(`[rank ${rank}] ${line}\n`));
}

export async function runRanks(script: string, args: string[], flags: RunFlags): Promise<void> {
  const nproc = intFlag(flags.nproc, '--nproc');
  const nnodes = intFlag(flags.nnodes, '--nnodes');
  const nodeRank = intFlag(flags.nodeRank, '--node-rank', 0);
  if (nodeRank >= nnodes) throw new RangeError(`Expected a --node-rank below --nnodes ${nnodes} but received ${nodeRank}`);
  if (nnodes > 1 && flags.masterPort === undefined) throw new RangeError('Expected --master-port with --nnodes > 1: every machine must be given the same one');
  const port = flags.masterPort === undefined ? await freePort() : intFlag(flags.masterPort, '--master-port');
  const worldSize = nproc * nnodes;
  const children: ChildProcess[] = [];
  let failed: { rank: number; code: number } | null = null;
  const stopAll = (signal: NodeJS.Signals) => {
    for (const child of children) if (child.exitCode === null && child.signalCode === null) child.kill(signal);
  };
  const exits = Array.from({ length: nproc }, (_, local) => {
    const rank = nodeRank * nproc + local;
    const env = {
      ...process.env,
      RANK: String(rank),
      LOCAL_RANK: String(local),
      GROUP_RANK: String(nodeRank),
      WORLD_SIZE: String(worldSize),
      LOCAL_WORLD_SIZE: String(nproc),
      MASTER_ADDR: flags.masterAddr,
      MASTER_PORT: String(port),
      // torchrun's default: ranks sharing a machine would otherwise each take every core.
      ...(process.env.OMP_NUM_THREADS === undefined && nproc > 1 && { OMP_NUM_THREADS: '1' }),
    };
    const child = spawn(process.execPath, [script, ...args], { env, stdio: ['inherit', 'pipe', 'pipe'] });
    children.push(child);
    prefixed(child.stdout!, process.stdout, rank);
    prefixed(child.stderr!, process.stderr, rank);
    return new Promise<void>((resolve) => {
      child.on('error', (error) => {
        process.stderr.write(`torchlite run: cannot start rank ${rank}: ${error.message}\n`);
        failed ??= { rank, code: 1 };
        stopAll('SIGTERM');
        resolve();
      });
      child.on('exit', (code, signal) => {
        if ((code !== 0 || signal !== null) && failed === null) {
          failed = { rank, code: code ?? 1 };
          process.stderr.write(`torchlite run: rank ${rank} ${signal ? `was killed by ${signal}` : `exited with code ${code}`}; stopping the other ranks\n`);
          stopAll('SIGTERM');
          // A rank stuck in a collective gets a moment to exit cleanly, then is killed.
          setTimeout(() => stopAll('SIGKILL'), 5000).unref();
        }
        resolve();
      });
    });
  });
  const forward = (signal: NodeJS.Signals) => () => stopAll(signal);
  process.on('SIGINT', forward('SIGINT'));
  process.on('SIGTERM', forward('SIGTERM'));
  await Promise.all(exits);
  if (failed !== null) process.exit((failed as { code: number }).code || 1);
}
