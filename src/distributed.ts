// Data-parallel training across processes on PyTorch's own c10d: a TCPStore rendezvous,
// Gloo collectives, and NCCL for CUDA tensors in CUDA builds (binding/distributed.cc). One
// process per rank, started by `torchlite run --nproc N` or torchrun, which pass the rank
// and rendezvous address in torchrun's environment variables.
import { misuse, TorchError } from './errors';
import { callNativeAsync } from './errors';
import { Model } from './model';
import { type DataParallelLink, kDataParallel } from './model/protocols';
import { native, type NativeProcessGroup } from './native';
import { Tensor } from './tensor';
import { checkInteger, checkOneOf, checkOptions, checkPositiveInteger, checkPositiveNumber, checkString, rangeError, typeError } from './validate';

export type ReduceOp = 'sum' | 'avg' | 'max' | 'min' | 'product';

export interface InitOptions {
  /** This process's rank, 0 … worldSize − 1. Defaults to `RANK`, else `0`. */
  rank?: number;
  /** How many processes train together. Defaults to `WORLD_SIZE`, else `1`. */
  worldSize?: number;
  /** Where rank 0 serves the rendezvous. Defaults to `MASTER_ADDR`, else `'127.0.0.1'`. */
  masterAddr?: string;
  /** Its TCP port. Defaults to `MASTER_PORT`, else `29500`. */
  masterPort?: number;
  /**
   * `'gloo'` reduces every tensor with Gloo (CUDA gradients by way of the host); `'nccl'`
   * reduces CUDA tensors with NCCL on the GPUs and CPU tensors with Gloo, as PyTorch's
   * default group does (it needs a CUDA build of torchlite and a visible GPU); `'auto'` is
   * `'nccl'` where that is available, else `'gloo'`. Defaults to `'auto'`.
   */
  backend?: 'gloo' | 'nccl' | 'auto';
  /**
   * How long a collective waits for the other ranks before failing with
   * `TORCHLITE_DIST_TIMEOUT`. It covers the slowest rank's work between two collectives
   * (an evaluation, a checkpoint), so keep it well above that. Defaults to `300000` (5 min;
   * PyTorch's 30 min hides hangs).
   */
  timeoutMs?: number;
  /** How long `init` waits for every rank to join. Defaults to `120000`. */
  initTimeoutMs?: number;
  /** Gloo's threads per process. Defaults to `2`. */
  threads?: number;
}

/** @internal The order collectives take in one group; see {@link ProcessGroup}. */
interface Turn {
  ready: Promise<void>;
  release(): void;
}

/**
 * One process's membership of a group of ranks. Collectives (`allReduce`, `broadcast`,
 * `allGather`, `barrier`, and the gradient sync of a data-parallel model's `trainStep`)
 * go out one at a time in the order they were called, so JS promises running
 * concurrently cannot send them in different orders on different ranks and deadlock.
 * Every rank must call the same collectives in the same order, as in PyTorch.
 */
export class ProcessGroup implements AsyncDisposable {
  /** This process's rank. */
  readonly rank: number;
  /** The number of ranks. */
  readonly worldSize: number;
  /** This process's rank on its machine (`LOCAL_RANK`), e.g. to pick a GPU. */
  readonly localRank: number;
  /** What reduces which tensors, in PyTorch's spelling: `'gloo'`, or `'cpu:gloo,cuda:nccl'`. */
  readonly backend: 'gloo' | 'cpu:gloo,cuda:nccl';
  #native: NativeProcessGroup | null;
  #tail: Promise<void> = Promise.resolve();

  /** @internal Use {@link init}. */
  constructor(handle: NativeProcessGroup, rank: number, worldSize: number, localRank: number, nccl: boolean) {
    this.#native = handle;
    this.rank = rank;
    this.worldSize = worldSize;
    this.localRank = localRank;
    this.backend = nccl ? 'cpu:gloo,cuda:nccl' : 'gloo';
  }

  get #live(): NativeProcessGroup {
    if (this.#native === null) throw new TorchError('TORCHLITE_DISPOSED', 'the process group has been destroyed');
    return this.#native;
  }

  /** @internal The native group, for a data-parallel model's steps. */
  static handle(group: ProcessGroup): NativeProcessGroup {
    return group.#live;
  }

  /**
   * @internal Reserves the next place in this group's order. Taken synchronously when an
   * operation is called; the operation starts its collective once `ready` settles and
   * calls `release` when it is done.
   */
  static turn(group: ProcessGroup): Turn {
    let release!: () => void;
    const done = new Promise<void>((resolve) => {
      release = resolve;
    });
    const ready = group.#tail;
    group.#tail = done;
    return { ready, release };
  }

  #collective<T>(name: string, tensor: Tensor | null, body: (handle: NativeProcessGroup) => Promise<T>): Promise<T> {
    const turn = ProcessGroup.turn(this);
    return callNativeAsync(async () => {
      try {
        const handle = this.#live;
        if (tensor !== null && !(tensor instanceof Tensor)) throw typeError('a Tensor', 'tensor', tensor);
        if (tensor !== null && tensor.device !== 'cpu' && this.backend === 'gloo') throw new TorchError('TORCHLITE_BAD_DEVICE', `${name} with Gloo takes CPU tensors but received one on ${tensor.device}; move it with \`await t.to('cpu')\`, or init the group with backend 'nccl'`);
        await turn.ready;
        return await body(handle);
      } finally {
        turn.release();
      }
    });
  }

  /** Reduces `tensor` over all ranks, in place (`'avg'` sums, then divides: Gloo has no average). Resolves the same tensor. */
  allReduce(tensor: Tensor, op: ReduceOp = 'sum'): Promise<Tensor> {
    const checked = checkOneOf(op, 'op', ['sum', 'avg', 'max', 'min', 'product'] as const);
    return this.#collective('allReduce', tensor, async (handle) => {
      if (checked === 'avg' && !tensor.dtype.startsWith('float')) throw new TorchError('TORCHLITE_BAD_DTYPE', `allReduce 'avg' needs a floating-point tensor but received ${tensor.dtype}; use 'sum' and divide, or convert it first`);
      await handle.allReduce(Tensor.handle(tensor), checked);
      return tensor;
    });
  }

  /** Overwrites `tensor` on every rank with rank `src`'s. Resolves the same tensor. */
  broadcast(tensor: Tensor, src = 0): Promise<Tensor> {
    checkInteger(src, 'src', 0, 'a rank');
    if (src >= this.worldSize) throw rangeError(`a rank below the world size ${this.worldSize}`, 'src', src);
    return this.#collective('broadcast', tensor, async (handle) => {
      await handle.broadcast(Tensor.handle(tensor), src);
      return tensor;
    });
  }

  /** Every rank's `tensor` (all of the same shape), in rank order. */
  allGather(tensor: Tensor): Promise<Tensor[]> {
    return this.#collective('allGather', tensor, async (handle) => (await handle.allGather(Tensor.handle(tensor))).map((t) => new Tensor(t)));
  }

  /** Resolves once every rank has reached it. */
  barrier(): Promise<void> {
    return this.#collective('barrier', null, (handle) => handle.barrier());
  }

  /**
   * Leaves the group once the collectives called before have settled. Idempotent; the
   * group's methods throw `TORCHLITE_DISPOSED` after.
   */
  async destroy(): Promise<void> {
    const turn = ProcessGroup.turn(this);
    await turn.ready;
    this.#native?.destroy();
    this.#native = null;
    turn.release();
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.destroy();
  }
}

const env = (name: string): string | undefined => {
  const value = process.env[name];
  return value === undefined || value === '' ? undefined : value;
};

function envInteger(name: string, fallback: number, min: number): number {
  const raw = env(name);
  if (raw === undefined) return fallback;
  const n = Number(raw);
  if (!Number.isSafeInteger(n) || n < min) throw new RangeError(`Expected an integer ≥ ${min} in the environment variable ${name} but found '${raw}'`);
  return n;
}

/**
 * Joins the group: rank 0 serves the rendezvous at `masterAddr:masterPort` and every rank
 * connects to it. Options left out come from torchrun's environment variables (`RANK`,
 * `WORLD_SIZE`, `MASTER_ADDR`, `MASTER_PORT`, `LOCAL_RANK`; with
 * `TORCHELASTIC_USE_AGENT_STORE=True`, torchrun's own store), and `GLOO_SOCKET_IFNAME`
 * picks the network interfaces. Resolves when all ranks have joined and agree on the world
 * size; fails with a coded error (`TORCHLITE_DIST_TIMEOUT`, `_PORT_IN_USE`,
 * `_WORLD_MISMATCH`, `_BAD_RANK`) otherwise.
 */
export async function init(options?: InitOptions): Promise<ProcessGroup> {
  const o = checkOptions<InitOptions>(options, 'options', ['rank', 'worldSize', 'masterAddr', 'masterPort', 'backend', 'timeoutMs', 'initTimeoutMs', 'threads']);
  const worldSize = o.worldSize === undefined ? envInteger('WORLD_SIZE', 1, 1) : checkPositiveInteger(o.worldSize, 'options.worldSize');
  const rank = o.rank === undefined ? envInteger('RANK', 0, 0) : checkInteger(o.rank, 'options.rank', 0, 'a non-negative integer');
  if (rank >= worldSize) throw new RangeError(`Expected a rank below the world size ${worldSize} but received ${rank}; ranks run from 0 to ${worldSize - 1}`);
  const masterAddr = o.masterAddr === undefined ? (env('MASTER_ADDR') ?? '127.0.0.1') : checkString(o.masterAddr, 'options.masterAddr');
  const masterPort = o.masterPort === undefined ? envInteger('MASTER_PORT', 29500, 1) : checkInteger(o.masterPort, 'options.masterPort', 1, 'a port number');
  if (masterPort > 65535) throw rangeError('a port number (1–65535)', o.masterPort === undefined ? 'MASTER_PORT' : 'options.masterPort', masterPort);
  const backend = checkOneOf(o.backend ?? 'auto', 'options.backend', ['gloo', 'nccl', 'auto'] as const);
  const ncclReady = native.ncclBuild && native.cudaInfo().available;
  if (backend === 'nccl' && !native.ncclBuild) throw new TorchError('TORCHLITE_DIST_UNAVAILABLE', "this build of torchlite has no NCCL (it needs a CUDA LibTorch and nccl.h when the addon is built); use backend 'gloo' (or 'auto'), which also reduces CUDA tensors by way of the host");
  if (backend === 'nccl' && !ncclReady) throw new TorchError('TORCHLITE_DIST_UNAVAILABLE', "backend 'nccl' needs a GPU but no CUDA device is visible; use backend 'gloo' (or 'auto')");
  const nccl = backend === 'nccl' || (backend === 'auto' && ncclReady);
  const timeoutMs = checkPositiveInteger(o.timeoutMs ?? 300_000, 'options.timeoutMs');
  const initTimeoutMs = checkPositiveInteger(o.initTimeoutMs ?? 120_000, 'options.initTimeoutMs');
  const threads = checkPositiveInteger(o.threads ?? 2, 'options.threads');
  if (!native.glooBuild) throw new TorchError('TORCHLITE_DIST_UNAVAILABLE', 'this build of torchlite has no Gloo: install libgloo-dev (scripts/bootstrap.sh does) and rebuild with `npm run build:native`');
  const agent = env('TORCHELASTIC_USE_AGENT_STORE') === 'True';
  const interfaces = env('GLOO_SOCKET_IFNAME')?.split(',').filter(Boolean);
  const handle = await callNativeAsync(() =>
    native.ProcessGroup.init({
      rank,
      worldSize,
      masterAddr,
      masterPort,
      timeoutMs,
      initTimeoutMs,
      threads,
      agentPrefix: agent ? `/worker/attempt_${envInteger('TORCHELASTIC_RESTART_COUNT', 0, 0)}/` : '',
      interfaces: interfaces ?? [],
      nccl,
    }),
  );
  return new ProcessGroup(handle, rank, worldSize, envInteger('LOCAL_RANK', rank, 0), nccl);
}

export interface DataParallelOptions {
  group: ProcessGroup;
  /** Start every step's forward from rank 0's buffers (BatchNorm statistics), as DDP's `broadcast_buffers`. Defaults to `true`. */
  broadcastBuffers?: boolean;
  /**
   * Send the gradients' buckets while backward is still running, as DDP does: each bucket
   * (the first of 1 MB, then up to 25 MB) goes out as soon as backward has finished its
   * grads. The results are the same either way; give every rank the same setting. Defaults to `false`.
   */
  overlap?: boolean;
  /** The size of a gradient bucket, in MiB, as DDP's `bucket_cap_mb` (the first bucket is at most 1 MiB). Defaults to `25`. */
  bucketCapMb?: number;
}

const groups = new WeakMap<Model, ProcessGroup>();

/**
 * Makes `model` train data-parallel in `group` and returns it: rank 0's parameters and
 * buffers are broadcast to every rank (queued, like a training step), and from then on
 * each update of `trainStep`, `trainSteps` and an optimizer's `flush` averages the
 * gradients over the ranks before clipping and stepping (summed, then divided by the
 * world size). Parameters that do not train are not sent. With `accumulate: k` the
 * gradients are synced once per k micro-batches, like DDP's `no_sync`. Each rank
 * normalises BatchNorm over its own shard, as in PyTorch's DDP (no SyncBatchNorm).
 * Changing the model's parameters afterwards (`replace`, `resetClassifier`,
 * `loadStateDict`, `resetParameters`) broadcasts rank 0's again before the next step.
 */
export function dataParallel(model: Model, options: DataParallelOptions): Model {
  if (!(model instanceof Model)) throw typeError('a Model', 'model', model);
  const o = checkOptions<DataParallelOptions>(options, 'options', ['group', 'broadcastBuffers', 'overlap', 'bucketCapMb']);
  if (!(o.group instanceof ProcessGroup)) throw typeError('a ProcessGroup from `distributed.init()`', 'options.group', o.group);
  if (o.broadcastBuffers !== undefined && typeof o.broadcastBuffers !== 'boolean') throw typeError('a boolean', 'options.broadcastBuffers', o.broadcastBuffers);
  if (o.overlap !== undefined && typeof o.overlap !== 'boolean') throw typeError('a boolean', 'options.overlap', o.overlap);
  const bucketCapMb = checkPositiveNumber(o.bucketCapMb ?? 25, 'options.bucketCapMb');
  if (groups.has(model)) throw misuse('TORCHLITE_BAD_ARGUMENT', 'this model is already data-parallel');
  const group = o.group;
  const link: DataParallelLink = {
    group: ProcessGroup.handle(group),
    broadcastBuffers: o.broadcastBuffers ?? true,
    overlap: o.overlap ?? false,
    bucketBytes: Math.max(1, Math.round(bucketCapMb * 2 ** 20)),
    turn: () => ProcessGroup.turn(group),
    stale: true,
  };
  model[kDataParallel](link);
  groups.set(model, group);
  return model;
}

/** The group a data-parallel model trains in, or `undefined`. */
export function groupOf(model: Model): ProcessGroup | undefined {
  return groups.get(model);
}
