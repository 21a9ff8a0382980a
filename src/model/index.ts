// The model room: the Model façade and what it is made of (see docs/architecture.md).
export { type EvaluateOptions, type Prediction } from './inference';
export { type Batch, type BatchInput, disposeBatch, inputTensors, type ModelInput, type ModelOutput, ScriptObject, TensorList, tensorList, unwrapInput, batchArgs } from './io';
export { CHECKPOINT_STATE, loadArchive, type LoadOptions, loadPretrained } from './load';
export { Model } from './model';
export { type LoadWeightsOptions, type SaveOptions } from './persist';
export { type DataParallelLink, kDataParallel, kShardGroup, kStepOptimizer, type ShardGroup, type StepOptimizer } from './protocols';
export { type MethodInfo, type ModuleInfo, type ParameterInfo, type TensorInfo } from './snapshot';
export { type TrainStepOptions, type TrainStepResult } from './step';
export { BATCH_NORM_POLICIES, type BatchNormPolicy, type FreezeResult, type ResetClassifierOptions } from './surgery';
