// The model room's public API; torchlite's other modules import its internals from the files
// themselves (see docs/architecture.md).
export { type EvaluateOptions, type Prediction } from './inference';
export { type Batch, type BatchInput, type ModelInput, type ModelOutput, ScriptObject, TensorList, tensorList } from './io';
export { CHECKPOINT_STATE, type LoadOptions, loadPretrained } from './load';
export { type RequestOptions } from './admission';
export { type BatchingOptions, type BatchingStats } from './batching';
export { type InferenceRequests, Model } from './model';
export { type LoadWeightsOptions, type SaveOptions } from './persist';
export { type MethodInfo, type ModuleInfo, type ParameterInfo, type TensorInfo } from './snapshot';
export { type TrainStepOptions, type TrainStepResult } from './step';
export { BATCH_NORM_POLICIES, type BatchNormPolicy, type FreezeResult, type ResetClassifierOptions } from './surgery';
