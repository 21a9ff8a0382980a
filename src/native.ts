// Loads the addon and types its raw surface. Nothing here is exported to users.
import { existsSync, readdirSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import { join, resolve } from 'node:path';

import { TorchError } from './errors';
import { checkInteger, checkPositiveInteger } from './validate';

/** A new tensor's options: `dtype` null keeps the data's own. */
export interface NativeTensorOptions {
  dtype: string | null;
  device: string;
}

export interface NativeConversion {
  dtype: string;
  device: string;
}

export interface NativeTensor {
  shape(): number[];
  dtype(): string;
  device(): string;
  numel(): number;
  toTypedArray(): ArrayBufferView;
  read(): Promise<ArrayBufferView>;
  item(): number | boolean;
  to(options: NativeConversion): NativeTensor;
  toAsync(options: NativeConversion): Promise<NativeTensor>;
  rows(indices: Int32Array): Promise<NativeTensor>;
  dispose(): void;
}

export interface NativeTensorClass {
  new (handle: never): NativeTensor;
  fromArray(data: ArrayBufferView, shape: number[], options: NativeTensorOptions): NativeTensor;
  full(shape: number[], value: number, options: NativeTensorOptions): NativeTensor;
  randn(shape: number[], options: NativeTensorOptions): NativeTensor;
  arange(start: number, end: number, step: number, options: NativeTensorOptions): NativeTensor;
  manualSeed(seed: number): void;
}

export interface NativeModuleInfo {
  path: string;
  type: string;
  params: number;
  trainable: number;
}

export interface NativeTensorInfo {
  name: string;
  shape: number[];
  dtype: string;
  numel: number;
}

/** A method's inputs: positional (an array) or named by its arguments (an object). */
export type NativeInputs = unknown[] | Record<string, unknown>;

export interface NativeModel {
  forward(inputs: unknown[], admission: { timeoutMs: number | null } | null): Promise<unknown>;
  inferenceCopy(probe: NativeTensor): Promise<NativeModel | null>;
  probeGradients(inputs: unknown[]): Promise<Record<string, boolean>>;
  trainStep(batches: [NativeInputs, NativeTensor | null][], options: object): Promise<NativeStepResult[]>;
  call(method: string, inputs: unknown[], admission: { timeoutMs: number | null }): Promise<unknown>;
  evalBatch(inputs: NativeInputs, target: NativeTensor | null, loss: object | null, keep: number | undefined, mode: 'scores' | 'confusion' | 'outputs'): Promise<NativeEvalBatch>;
  predict(inputs: NativeInputs, admission: { timeoutMs: number | null }): Promise<{ probabilities: NativeTensor; argmax: NativeTensor }>;
  forwardBatch(inputs: NativeTensor[], kind: 'forward' | 'predict'): Promise<unknown[]>;
  to(device: string): Promise<void>;
  modules(): NativeModuleInfo[];
  methods(): { name: string; arguments: { name: string; type: string; default?: string }[]; returns: string }[];
  parameters(): (NativeTensorInfo & { requiresGrad: boolean })[];
  buffers(): NativeTensorInfo[];
  stateDict(): Promise<Record<string, NativeTensor>>;
  setTraining(on: boolean): void;
  info(): { training: boolean; traced: boolean; device: string; metadata: string; bnPolicy: string; channelsLast: boolean; warnings: string[] };
  replace(path: string, spec: object): void;
  setRequiresGrad(names: string[], flag: boolean): void;
  setBatchNormPolicy(policy: string): void;
  save(path: string, metadata: string, extras?: Record<string, Buffer>): Promise<void>;
  loadStateDict(dict: Record<string, NativeTensor>, strict: boolean): Promise<void>;
  resetParameters(plan: { name: string; init: 'kaiming' | 'ones' | 'zeros'; bias: string | null }[]): Promise<void>;
  loadWeights(entries: { name: string; file: string; offset: number; bytes: number; dtype: string; shape: number[]; keep: boolean }[]): Promise<void>;
  saveWeights(path: string, header: Buffer, names: string[]): Promise<void>;
  materialize(layout: 'auto' | 'on' | 'off'): Promise<number>;
  reshape(shapes: Record<string, number[]>, values: Record<string, number>): void;
  extras(): Record<string, Buffer>;
  setChannelsLast(on: boolean): Promise<void>;
  dispose(): void;
}

export interface NativeGroupOptions {
  lr: number;
  momentum: number;
  dampening: number;
  weightDecay: number;
  beta1: number;
  beta2: number;
  eps: number;
  nesterov: boolean;
  amsgrad: boolean;
}

export interface NativeOptimizer {
  addGroup(names: string[], options: NativeGroupOptions): void;
  groups(): (NativeGroupOptions & { params: string[] })[];
  stateDict(): { state: Record<string, Record<string, unknown>>; pending: number };
  loadStateDict(state: Record<string, Record<string, unknown>>, pending: number): void;
  flush(window: number, groups: NativeGroupOptions[], sync: NativeSync | null): Promise<boolean>;
  dispose(): void;
}

export interface NativeOptimizerClass {
  create(model: NativeModel, kind: string, groups: { names: string[]; options: NativeGroupOptions }[]): NativeOptimizer;
}

/** One evaluation batch: what its mode asks for ("scores", "confusion" or "outputs"). */
export interface NativeEvalBatch {
  samples?: number;
  scores?: Float32Array;
  shape?: number[];
  targets?: Float64Array;
  confusion?: Float64Array;
  outputs?: unknown;
  loss?: number;
}

export interface NativeStepResult {
  loss: number;
  losses?: Record<string, number>;
  correct?: number;
  scored?: number;
  skipped: boolean;
  stepped: boolean;
  gradNorm?: number;
}

export interface NativeInitOptions {
  rank: number;
  worldSize: number;
  masterAddr: string;
  masterPort: number;
  timeoutMs: number;
  initTimeoutMs: number;
  threads: number;
  agentPrefix?: string;
  interfaces?: string[];
  nccl?: boolean;
}

/** How a data-parallel model's training jobs sync (binding/distributed.h, SyncOptions). */
export interface NativeSync {
  group: NativeProcessGroup;
  buffers: boolean;
  overlap: boolean;
  bucketBytes: number;
}

export interface NativeProcessGroup {
  allReduce(tensor: NativeTensor, op: string): Promise<void>;
  broadcast(tensor: NativeTensor, src: number): Promise<void>;
  allGather(tensor: NativeTensor): Promise<NativeTensor[]>;
  barrier(): Promise<void>;
  broadcastModel(model: NativeModel): Promise<void>;
  destroy(): void;
}

export interface NativeProcessGroupClass {
  init(options: NativeInitOptions): Promise<NativeProcessGroup>;
}

/** An instance of a TorchScript class, returned by a model's method. */
export interface NativeScriptObject {
  type(): string;
  methods(): string[];
  call(method: string, inputs: unknown[]): Promise<unknown>;
  dispose(): void;
}

export interface NativeModelClass {
  load(path: string, device: string, extraNames: string[], channelsLast: 'auto' | 'on' | 'off'): Promise<NativeModel>;
  fromLayer(spec: object): NativeModel;
}

export interface NativeAddon {
  Tensor: NativeTensorClass;
  Model: NativeModelClass;
  Optimizer: NativeOptimizerClass;
  ProcessGroup: NativeProcessGroupClass;
  ScriptObject: abstract new (...args: never[]) => NativeScriptObject;
  computeLoss(spec: object, output: NativeTensor, target: NativeTensor): Promise<NativeTensor>;
  classifyMessage(message: string): string;
  loadOpsLibrary(path: string): Promise<void>;
  torchLibraryPath(): string | null;
  setNumThreads(n: number): void;
  getNumThreads(): number;
  setInferenceThreads(n: number): void;
  getInferenceThreads(): number;
  queue(): { lane: string; queuedInference: number; queuedTraining: number; running: boolean; completed: number; rejected: number; timedOut: number; waitP50Ms: number; waitP99Ms: number }[];
  setMaxQueuedInference(limit: number): void;
  setTrainingThreadsWhileServing(threads: number): void;
  externalMemory(): number;
  getRngState(): Buffer;
  setRngState(state: Buffer): void;
  initLayerParameters(shape: number[], bias: boolean): { weight: NativeTensor; bias?: NativeTensor };
  loraUse(model: NativeModel, name: string): Promise<void>;
  loraMerge(model: NativeModel, name: string): Promise<void>;
  loraUnmerge(model: NativeModel): Promise<void>;
  randperm(n: number, seed: number): Float64Array;
  cudaInfo(): { available: boolean; deviceCount: number };
  cudaMemory(device: string, resetPeak: boolean): { allocated: number; reserved: number; peak: number };
  cudaEmptyCache(): void;
  cudaSynchronize(device: string): Promise<void>;
  setSpeedOptions(options: { cudnnBenchmark?: boolean; tf32?: boolean }): { cudnnBenchmark: boolean; tf32: boolean };
  torchVersion: string;
  cudaBuild: boolean;
  glooBuild: boolean;
  ncclBuild: boolean;
}

const root = resolve(__dirname, '..');

// A local build first, then prebuilds, as node-gyp-build orders them: a build made on
// this machine is linked against its LibTorch, and a stale prebuild must not shadow it.
// A candidate that fails to load (another LibTorch, another ABI) leaves the next its turn.
function candidates(): string[] {
  const found = [join(root, 'build', 'Release', 'torchlite.node')];
  const prebuilds = join(root, 'prebuilds', `${process.platform}-${process.arch}`);
  if (existsSync(prebuilds))
    for (const file of readdirSync(prebuilds).sort()) if (file.endsWith('.node')) found.push(join(prebuilds, file));
  return found;
}

function load(): NativeAddon {
  const failures: string[] = [];
  for (const file of candidates()) {
    if (!existsSync(file)) {
      failures.push(`  - ${file}: not found`);
      continue;
    }
    try {
      return require(file) as NativeAddon;
    } catch (error) {
      failures.push(`  - ${file}: ${(error as Error).message.split('\n')[0]}`);
    }
  }
  throw new TorchError(
    'TORCHLITE_ADDON_LOAD',
    [
      'torchlite could not load its native addon. Tried:',
      ...failures,
      'A prebuild only loads with the LibTorch it was built against (same version, CPU or CUDA, C++ ABI). To fix:',
      '  - build from source for the LibTorch on this machine: npm run build:native',
      '  - on Debian/Ubuntu, install LibTorch and build: bash scripts/bootstrap.sh',
      '  - point the build at another LibTorch with LIBTORCH=/path/to/libtorch or TORCHLITE_PYTHON=/path/to/python',
      '  - "libtorch*.so: cannot open shared object file" means that LibTorch was moved or removed; rebuild',
    ].join('\n'),
  );
}

export const native: NativeAddon = load();

// Debian's LibTorch starts with half the cores (it assumes SMT), which costs ~40% on a
// 2-core box. TORCHLITE_NUM_THREADS lets a user who shares the machine choose fewer.
const threads = process.env.TORCHLITE_NUM_THREADS;
native.setNumThreads(
  threads === undefined ? availableParallelism() : checkPositiveInteger(Number(threads), 'TORCHLITE_NUM_THREADS'),
);
/**
 * How many inference requests may wait: on one model (in its queue, behind its training), and
 * on one lane. More are refused at the call with `TORCHLITE_OVERLOADED`, so that an overloaded
 * server pushes back instead of queueing without bound. See `runtime.setQueueLimits`.
 */
export const queueLimits = { model: 64, lane: 256 };
native.setMaxQueuedInference(queueLimits.lane);

// 'auto' (-1): while serving requests run on the CPU, training leaves the inference lane its threads.
const whileServing = process.env.TORCHLITE_TRAINING_THREADS_WHILE_SERVING;
native.setTrainingThreadsWhileServing(
  whileServing === undefined || whileServing === 'auto' ? -1 : checkInteger(Number(whileServing), 'TORCHLITE_TRAINING_THREADS_WHILE_SERVING', 0, "a non-negative integer or 'auto'"),
);

const inferenceThreads = process.env.TORCHLITE_INFERENCE_THREADS;
if (inferenceThreads !== undefined)
  native.setInferenceThreads(checkInteger(Number(inferenceThreads), 'TORCHLITE_INFERENCE_THREADS', 0, 'a non-negative integer'));
