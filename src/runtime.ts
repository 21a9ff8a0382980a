// Process-wide settings: thread budgets, speed options, the lanes' queues and CUDA memory.
import { callNative, callNativeAsync } from './errors';
import { native, queueLimits } from './native';
import type { Device } from './tensor';
import { checkDevice, checkInteger, checkOptions, checkPositiveInteger, typeError } from './validate';

/**
 * Sets LibTorch's intra-op thread count for training, and for CPU inference while no
 * training runs. Process-wide: it applies to every model and worker thread, from each
 * lane's next job. Defaults to the cores available to Node (or `TORCHLITE_NUM_THREADS`).
 */
export function setNumThreads(n: number): void {
  native.setNumThreads(checkPositiveInteger(n, 'n'));
}

export function getNumThreads(): number {
  return native.getNumThreads();
}

/**
 * Intra-op threads of CPU inference (`forward`, `predict`, `evaluate`) while a training
 * job runs beside it on its own lane; `0` runs CPU inference on the training lane instead
 * (ahead of queued training, but after the running step). Process-wide. Defaults to `1`
 * (or `TORCHLITE_INFERENCE_THREADS`).
 */
export function setInferenceThreads(n: number): void {
  native.setInferenceThreads(checkInteger(n, 'n', 0, 'a non-negative integer'));
}

export function getInferenceThreads(): number {
  return native.getInferenceThreads();
}

/** One lane of the executor: a thread that runs the jobs of one device (and, on the CPU, of one kind). */
export interface LaneState {
  /** `'cpu'` (training, and inference when it has no lane of its own), `'cpu:inference'`, or `'cuda:N'`. */
  lane: string;
  /** Inference jobs (forward, predict, evaluate, reads) waiting; they run first. */
  queuedInference: number;
  /** Training jobs (steps, saves, moves, loads) waiting, including a multi-step job between two steps. */
  queuedTraining: number;
  /** Whether a job is running now. */
  running: boolean;
  /** Jobs finished since the process started. */
  completed: number;
  /** Inference requests refused with `TORCHLITE_OVERLOADED` because this lane's queue was full. */
  rejected: number;
  /** Inference requests that reached this lane past their deadline and did not run (`TORCHLITE_TIMEOUT`). */
  timedOut: number;
  /** How long the last (up to 1,024) inference jobs waited in this lane's queue, median and 99th percentile, in ms. */
  waitP50Ms: number;
  waitP99Ms: number;
}

/**
 * Intra-op threads of CPU training while serving requests (`forward`, `call`, `predict`) have
 * run on the CPU in the last second. `'auto'` leaves the inference lane its threads (the
 * training count less {@link setInferenceThreads}', at least 1); `0` keeps the full count;
 * `n` uses `n`. Measured on a 2-core VM serving mobilenet_v3_small at 50 req/s while another
 * model trained: `'auto'` kept predict's p99 at 1.14x idle (1.31x with the full count) and
 * training at 104% of its rate alone (63%). On a machine with many cores, leaving one costs
 * training up to 1/cores of its threads while requests flow. Process-wide. Defaults to
 * `'auto'` (or `TORCHLITE_TRAINING_THREADS_WHILE_SERVING`).
 */
export function setTrainingThreadsWhileServing(threads: number | 'auto'): void {
  native.setTrainingThreadsWhileServing(threads === 'auto' ? -1 : checkInteger(threads, 'threads', 0, "a non-negative integer or 'auto'"));
}

/** Caps on waiting inference requests; see {@link setQueueLimits}. */
export interface QueueLimits {
  /** Requests waiting on one model (behind its other operations, or on its lane). Defaults to `64`. */
  model?: number;
  /** Inference jobs queued on one lane, from every model. Defaults to `256`. */
  lane?: number;
}

/**
 * Caps the inference requests (`forward`, `call`, `predict`) that may wait, process-wide: one
 * more is refused at once with `TORCHLITE_OVERLOADED`, so an overloaded server can answer 503
 * instead of letting its queue, and every request's latency, grow without bound. Returns the
 * limits now in force.
 */
export function setQueueLimits(limits: QueueLimits): Required<QueueLimits> {
  const o = checkOptions<QueueLimits>(limits, 'limits', ['model', 'lane']);
  if (o.model !== undefined) queueLimits.model = checkPositiveInteger(o.model, 'limits.model');
  if (o.lane !== undefined) {
    queueLimits.lane = checkPositiveInteger(o.lane, 'limits.lane');
    native.setMaxQueuedInference(queueLimits.lane);
  }
  return { ...queueLimits };
}

/** Jobs queued and running on each lane, process-wide (all worker threads). Lanes appear on first use. */
export function queue(): LaneState[] {
  return native.queue();
}

/** The LibTorch version the addon was built against, e.g. `'1.13.0'`. */
export const torchVersion: string = native.torchVersion;

/** Bytes held by LibTorch's CUDA caching allocator. */
export interface CudaMemory {
  /** Bytes in live tensors. */
  allocated: number;
  /** Bytes reserved from the driver (allocated plus cached). */
  reserved: number;
  /** Highest `allocated` since start or the last `resetPeak`. */
  peak: number;
}

/** Global speed switches. */
export interface SpeedOptions {
  /** Let cuDNN time its algorithms and keep the fastest: a win when input shapes are fixed. Defaults to `false`. */
  cudnnBenchmark?: boolean;
  /** TF32 tensor cores for float32 matmuls and convolutions on Ampere and newer (about 10 mantissa bits). Defaults to LibTorch's setting. */
  tf32?: boolean;
}

/** CUDA queries and switches. Without CUDA they throw `TORCHLITE_CUDA_UNAVAILABLE`, except `isAvailable`/`deviceCount`. */
export const cuda = {
  /** Memory of `device` (default `'cuda'`); `resetPeak` starts a new peak measurement after reading. */
  memory(device: Device = 'cuda', options?: { resetPeak?: boolean }): CudaMemory {
    const target = checkDevice(device, 'device');
    const { resetPeak = false } = checkOptions<{ resetPeak?: boolean }>(options, 'options', ['resetPeak']);
    return callNative(() => native.cudaMemory(target, resetPeak));
  },
  /** Returns cached, unused blocks to the driver. */
  emptyCache(): void {
    callNative(() => native.cudaEmptyCache());
  },
  /** Resolves when all work queued on `device` (default `'cuda'`) is done; the wait runs off the event loop. */
  synchronize(device: Device = 'cuda'): Promise<void> {
    return callNativeAsync(async () => {
      const target = checkDevice(device, 'device');
      await native.cudaSynchronize(target);
    });
  },
  /** Sets speed switches (see {@link SpeedOptions}) and returns the current state. */
  setOptions(options: SpeedOptions): Required<SpeedOptions> {
    const o = checkOptions<SpeedOptions>(options, 'options', ['cudnnBenchmark', 'tf32']);
    for (const [key, value] of Object.entries(o)) if (typeof value !== 'boolean') throw typeError('a boolean', `options.${key}`, value);
    return native.setSpeedOptions(o);
  },
  /** Whether this LibTorch build has CUDA and a GPU is visible. */
  isAvailable(): boolean {
    return native.cudaInfo().available;
  },
  /** Number of visible CUDA devices; 0 without CUDA. */
  deviceCount(): number {
    return native.cudaInfo().deviceCount;
  },
};
