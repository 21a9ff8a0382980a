// The internal protocols through which optim.ts, distributed.ts and the loaders reach a
// model, so that the model imports none of them.
import type { NativeGroupOptions, NativeOptimizer, NativeProcessGroup } from '../native';

/**
 * @internal How a trainStep reaches an optimizer without model.ts importing optim.ts:
 * the optimizer binds to the model and hands over its native handle and its group
 * options as they are now (they travel with the job, so later writes keep call order).
 */
export const kStepOptimizer = Symbol('torchlite.stepOptimizer');

/**
 * @internal How distributed.ts makes a model data-parallel without model.ts importing it:
 * the group its updates sync over, and a place in the group's order of collectives.
 */
export const kDataParallel = Symbol('torchlite.dataParallel');

/** @internal */
export interface DataParallelLink {
  group: NativeProcessGroup;
  broadcastBuffers: boolean;
  overlap: boolean;
  bucketBytes: number;
  turn(): { ready: Promise<void>; release(): void };
  /** The parameters changed on this rank since rank 0's were last broadcast. */
  stale: boolean;
}

/**
 * @internal A batch source sharded over ranks (a distributed loader): `evaluate` adds its
 * sums up over them, in the group's order of collectives.
 */
export const kShardGroup = Symbol('torchlite.shardGroup');

/** @internal */
export interface ShardGroup {
  turn(): { ready: Promise<void>; release(): void };
  reduce(values: Float64Array, op: 'sum' | 'max'): Promise<Float64Array>;
}


/** @internal What an Optimizer is to a model's trainStep (optim.ts implements it). */
export interface StepOptimizer {
  [kStepOptimizer](model: never): { handle: NativeOptimizer; groups: NativeGroupOptions[] };
}

/** @internal */
export function isStepOptimizer(value: unknown): value is StepOptimizer {
  return typeof (value as Partial<StepOptimizer> | null)?.[kStepOptimizer] === 'function';
}
