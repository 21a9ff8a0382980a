// torchlite's public API.
export { TorchError, type TorchErrorCode } from './errors';
export {
  loadPretrained,
  Model,
  type Batch,
  type BatchInput,
  type BatchNormPolicy,
  type EvaluateOptions,
  type Prediction,
  type TrainStepOptions,
  type TrainStepResult,
  type FreezeResult,
  type LoadOptions,
  type LoadWeightsOptions,
  type ResetClassifierOptions,
  type SaveOptions,
  type ModelInput,
  type ModelOutput,
  type MethodInfo,
  type ModuleInfo,
  type ParameterInfo,
  ScriptObject,
  type TensorInfo,
  TensorList,
  tensorList,
  type RequestOptions,
  type InferenceRequests,
  type BatchingOptions,
  type BatchingStats,
} from './model';
export type { TrainingPosition } from './checkpoint';
export * as data from './data';
export * as distributed from './distributed';
export type { DataParallelOptions, InitOptions, ProcessGroup, ReduceOp } from './distributed';
export type { Augment, Dataset, ImageFolderOptions, Loader, LoaderBatch, LoadImageOptions, Sample, TextDatasetOptions } from './data';
export type { FeatureCacheReport } from './features';
export { findLr, type FindLrOptions, type LrFinderResult, type LrRule } from './findlr';
export { classNamesOf, defaultNormalisation, inputSpecOf, type InputSpec } from './preprocess';
export { progressBar } from './progress';
export * as text from './text';
export type { EncodedTexts, TextInput, TextSpec, TextTokenizer, TokenizerOptions } from './text';
export { lineChart, type Series } from './chart';
export * as lora from './lora';
export type { LoraOptions, LoraResult } from './lora';
export * as loss from './loss';
export type { Loss } from './loss';
export type { Metrics, MetricSpec } from './metrics';
export { CocoEvaluator, type CocoSummary, type Detections, type GroundTruth } from './cocoeval';
export * as nn from './nn';
export * as optim from './optim';
export type { Optimizer, OptimizerStateDict, ParamGroup } from './optim';
export * as sched from './sched';
export type { PlateauScheduler, Scheduler } from './sched';
export type { Layer } from './nn';
export type { Pattern } from './patterns';
export { cuda, type CudaMemory, getNumThreads, type LaneState, type QueueLimits, setNumThreads, type SpeedOptions, torchVersion } from './runtime';
export * as runtime from './runtime';
export * as ops from './ops';
export {
  arange,
  type Device,
  type Dtype,
  manualSeed,
  ones,
  randn,
  Tensor,
  type TensorArray,
  type TensorData,
  tensor,
  type TensorOptions,
  zeros,
} from './tensor';
export { type Callback, type EpochRecord, type FitContext, type FitEvent, type FitOptions, type FitRun, fit } from './fit';
export { checkpoint, type CheckpointOptions, earlyStopping, type EarlyStoppingOptions, jsonlLogger } from './callbacks';
export { type FineTuneHistory, type FineTuneOptions, fineTune } from './finetune';
export type { LrSearchPlan, LrSearchReport, LrTrial } from './lrsearch';
export { type HubFileOptions, hubFile } from './hub';
export { pull, zooNames } from './zoo';
export type { LoadWeightsResult } from './weights';
